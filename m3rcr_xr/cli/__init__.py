"""The ``m3rcr`` command line: ``ingest`` M3R-CR files or STAC items into Zarr, ``info``
on a store, ``decloud`` it, ``evaluate`` a prediction, ``train`` a network, list or
fetch ``weights``, or run the whole job on synthetic data (``demo``).

Bad input ends with exit status 2 and one line naming the file and the problem.

Each command is a module of this package that adds its parser and runs it
(:mod:`~m3rcr_xr.cli.ingest`, :mod:`~m3rcr_xr.cli.info`, :mod:`~m3rcr_xr.cli.decloud`,
:mod:`~m3rcr_xr.cli.evaluate`, :mod:`~m3rcr_xr.cli.demo`, :mod:`~m3rcr_xr.cli.train`,
:mod:`~m3rcr_xr.cli.weights`); :mod:`~m3rcr_xr.cli.arguments` holds the arguments they
share and their checks. Here: the parser of them all, the command's logging, and
:func:`main`, which turns an error, Ctrl-C or a closed pipe into one line and an exit
status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

from ..exceptions import M3RCRError, command_line_names
from .arguments import MODEL_HELP, OVERWRITE_HELP, scheduler_client
from .decloud import COG_SUFFIXES, add_decloud
from .demo import add_demo
from .evaluate import add_evaluate
from .info import add_info
from .ingest import INGEST_FLAGS, STAC_SUFFIXES, add_ingest
from .train import CHECKPOINT_SUFFIXES, EXPORT_SUFFIXES, TASK_MODELS, add_train
from .weights import add_weights

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "COG_SUFFIXES",
    "EXIT_BAD_INPUT",
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXPORT_SUFFIXES",
    "INGEST_FLAGS",
    "MODEL_HELP",
    "OVERWRITE_HELP",
    "RESUMING",
    "STAC_SUFFIXES",
    "SUBCOMMANDS",
    "TASK_MODELS",
    "build_parser",
    "command_logging",
    "log",
    "main",
]

log = logging.getLogger("m3rcr_xr")
EXIT_BAD_INPUT = 2
#: the exit status after Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130
#: the exit status when the reader of the output went away (as Python's own)
EXIT_BROKEN_PIPE = 1
#: what an interrupted command leaves, by command (a store is resumed, never mixed)
RESUMING = {
    command: "; what was written is kept: the same command (without --overwrite) goes on"
    for command in ("ingest", "decloud")
} | {
    "demo": "; run it again to start over",
    "train": "; a run goes on from the checkpoint it last wrote with --resume RUN.pth (none "
    "is written before its end without --checkpoint-every N)",
}


def _resuming(args: argparse.Namespace) -> str:
    """What the line of an interrupted command says of how to go on (:data:`RESUMING`).

    ``m3rcr decloud --cog ... --overwrite`` cut off left the GeoTIFFs of an earlier run
    as they were (they are replaced all or none): the same command without --overwrite
    refuses them (it keeps only those written from its complete store), so they are to
    be removed first; with --overwrite the run starts over.
    """
    if args.command != "decloud" or not (args.cog and args.overwrite):
        return RESUMING.get(args.command, "")
    from ..href import redacted

    std = " (and its _std beside it)" if args.uncertainty else ""
    return (
        "; what was written is kept: the same command without --overwrite goes on once "
        f"the GeoTIFFs an earlier run left at {redacted(args.cog)}{std} are removed (else "
        "it may refuse them); with --overwrite it starts over"
    )


#: each adds one subcommand; later commands (decloud, evaluate, train) add theirs here
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_ingest,
    add_info,
    add_decloud,
    add_evaluate,
    add_demo,
    add_train,
    add_weights,
]


def build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split()).replace("``", "")
    parser = argparse.ArgumentParser(prog="m3rcr", description=summary)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


@contextlib.contextmanager
def command_logging(verbose: bool) -> Iterator[None]:
    """While a command runs: this library's log on stderr, warnings only (``verbose``:
    INFO too), distributed's included; everything as it was afterwards.

    Only the ``m3rcr_xr`` logger gets a level and a handler (its own, never a second
    one), so that ``main`` called again in the same process, with or without ``-v``,
    logs as asked and leaves the caller's logging alone. distributed sets its loggers
    to INFO when it is first imported, from dask's ``logging.distributed`` setting: a
    cluster started by a command would otherwise print its start-up chatter.
    """
    import dask

    level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler()  # sys.stderr of now: pytest's capture, a caller's
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    distributed_log = logging.getLogger("distributed")
    before = log.level, distributed_log.level
    log.setLevel(level)
    log.addHandler(handler)
    try:
        if verbose:
            yield
            return
        with dask.config.set({"logging.distributed": "warning"}):  # before its import
            distributed_log.setLevel(logging.WARNING)  # or after it
            yield
    finally:
        log.removeHandler(handler)
        log.setLevel(before[0])
        distributed_log.setLevel(before[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``m3rcr``; returns the exit status.

    Without ``argv`` (the console script: the command line of this process, which ends
    when this returns), Ctrl-C is ignored once the command is over: its work is done
    and said, and Python's shutdown would report it as a traceback and exit 0 all the
    same. Given ``argv`` (a caller's Python, the tests), the handler is left as it is.
    """
    args = build_parser().parse_args(argv)
    try:
        with command_logging(args.verbose), command_line_names(), scheduler_client(args):
            status = args.func(args)
            sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
            return status
    except M3RCRError as err:
        print(f"m3rcr {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback through dask
        print(f"m3rcr {args.command}: interrupted{_resuming(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `m3rcr info STORE | head -1`: the reader went away
        # what is left to flush at exit goes nowhere, rather than raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        # only the main thread may set a handler (main() may run in another one)
        if argv is None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
