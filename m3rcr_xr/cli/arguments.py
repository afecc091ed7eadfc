"""The arguments several ``m3rcr`` commands share, and their checks: the output files
a command writes (suffix, folder, an existing file), ``--scheduler`` (a running Dask
cluster), ``--config KEY=VALUE`` (a model's architecture), comma-separated names.

Each check runs before any work and raises :class:`~m3rcr_xr.exceptions.UsageError`
naming the flag, so that a typo fails now, not after hours of computing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..exceptions import UsageError, argument

#: the names live in the model records (m3rcr_xr.models.records), which import torch;
#: the command line reads them only when a name is refused, so that --help stays fast
MODEL_HELP = "model name, e.g. dsen2_cr (an unknown name is refused with the known ones)"
OVERWRITE_HELP = "replace a store or GeoTIFF written by m3rcr (other folders and files never are)"


def check_output_file(
    path: str, name: str, suffixes: Sequence[str], *, overwrite: bool | None = None
) -> Path:
    """Check, before any work, that the file ``path`` (given as ``--name``) can be written.

    Its suffix must be one of ``suffixes`` and its folder must exist and be writable
    (a typo in a folder name fails now, not after hours of computing). With ``overwrite``
    False, an existing file is refused: the command replaces only what the user asked
    it to; with None, the command checks it itself (train replaces only its own
    checkpoints and exported weights).

    Raises
    ------
    UsageError
        Naming the flag and the path.
    """
    from ..store import dangling_link

    target = Path(path)
    flag = argument(name, path)
    check_suffix(flag, target.suffix, suffixes)
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{flag}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: folder {folder} is not writable")
    if target.is_dir():
        raise UsageError(f"{flag}: {target} is a folder")
    link = dangling_link(target)
    if link is not None:
        raise UsageError(f"{flag}: {link}")
    if overwrite is False and target.exists():
        raise UsageError(f"{flag}: {target} exists; pass {argument('overwrite')} to replace it")
    return target


def check_suffix(flag: str, suffix: str, suffixes: Sequence[str]) -> None:
    """Refuse a file ``suffix`` (any case) not in ``suffixes``, naming ``flag``."""
    if suffix.lower() not in suffixes:
        raise UsageError(
            f"{flag}: write a {'/'.join(suffixes)} file, not {suffix or 'no suffix'!r}"
        )


def name_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return seconds


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scheduler ADDRESS | --scheduler-file FILE``: compute on a running Dask cluster."""
    from ..cluster import SCHEDULER_TIMEOUT

    group = parser.add_argument_group("running Dask cluster (default: this machine's cores)")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler", metavar="ADDRESS", help="compute on this scheduler (tcp://host:8786)"
    )
    where.add_argument(
        "--scheduler-file",
        metavar="FILE",
        help="compute on the scheduler this file names (dask scheduler --scheduler-file)",
    )
    group.add_argument(
        "--scheduler-timeout",
        type=_positive_seconds,
        default=SCHEDULER_TIMEOUT,
        metavar="SECONDS",
        help=f"fail if no scheduler answers within this time (default {SCHEDULER_TIMEOUT:g})",
    )


def scheduler_client(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """A client of the cluster the command names, open for the command; else nothing."""
    address = getattr(args, "scheduler", None)
    scheduler_file = getattr(args, "scheduler_file", None)
    if address is None and scheduler_file is None:
        return contextlib.nullcontext()
    from ..cluster import connect

    return connect(address, scheduler_file=scheduler_file, timeout=args.scheduler_timeout)


def parse_config(items: Sequence[str], flag: str = "--config") -> dict[str, object]:
    """``["n_feats=16", "preset=small"]`` to a dict, numbers as numbers."""
    import ast

    config: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            config[key] = ast.literal_eval(text)
        # what literal_eval raises on text that is no literal: {[1]: 2} (an unhashable
        # key), an expression nested too deep, one too big to hold
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            config[key] = text
    return config


def check_model_config(model: str | None, config: dict[str, object]) -> None:
    """Refuse a ``config`` that ``model`` cannot take (an unknown key, a wrong type, a size
    out of range, too many parameters: :func:`m3rcr_xr.models.check_config`) before any
    data are opened or weights fetched; None: a model known only from the weights."""
    if config and model is not None:
        from ..models import check_config

        check_config(model, config)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config KEY=VALUE``, repeatable: a model's architecture (:func:`parse_config`)."""
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument, repeatable (e.g. preset=small)",
    )
