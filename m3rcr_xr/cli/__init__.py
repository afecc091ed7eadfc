"""The ``m3rcr`` command line: ``ingest`` M3R-CR files or STAC items into Zarr, ``info``
on a store, ``decloud`` it, ``evaluate`` a prediction, ``train`` a network, list or
fetch ``weights``, or run the whole job on synthetic data (``demo``).

Bad input ends with exit status 2 and one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..exceptions import (
    M3RCRError,
    SchemaError,
    StoreError,
    UsageError,
    argument,
    command_line_names,
)

if TYPE_CHECKING:
    import xarray

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
#: file suffixes of the files the commands write besides their stores
COG_SUFFIXES = (".tif", ".tiff")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
EXPORT_SUFFIXES = (".safetensors",)
#: an ingest source with one of these is STAC JSON (an item, item collection or catalog)
STAC_SUFFIXES = (".json", ".geojson")
#: the names live in the model records (m3rcr_xr.models.records), which import torch;
#: the command line reads them only when a name is refused, so that --help stays fast
MODEL_HELP = "model name, e.g. dsen2_cr (an unknown name is refused with the known ones)"


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


def _check_output_file(
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
    _check_suffix(flag, target.suffix, suffixes)
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


def _check_suffix(flag: str, suffix: str, suffixes: Sequence[str]) -> None:
    """Refuse a file ``suffix`` (any case) not in ``suffixes``, naming ``flag``."""
    if suffix.lower() not in suffixes:
        raise UsageError(
            f"{flag}: write a {'/'.join(suffixes)} file, not {suffix or 'no suffix'!r}"
        )


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _name_or_none(text: str) -> str | None:
    """A variable name, or None for ``none`` (go without that variable)."""
    return None if text == "none" else text


OVERWRITE_HELP = "replace a store or GeoTIFF written by m3rcr (other folders and files never are)"


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return seconds


def _add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
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


def _scheduler_client(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """A client of the cluster the command names, open for the command; else nothing."""
    address = getattr(args, "scheduler", None)
    scheduler_file = getattr(args, "scheduler_file", None)
    if address is None and scheduler_file is None:
        return contextlib.nullcontext()
    from ..cluster import connect

    return connect(address, scheduler_file=scheduler_file, timeout=args.scheduler_timeout)


#: the ``ingest`` options each kind of source takes (any other given is refused)
INGEST_FLAGS = {
    "STAC items": ("sar", "landcover", "bbox", "crs", "sar_unit"),
    "a split folder": ("align",),
    "a file-list CSV": ("root", "align"),
    "a cloudy GeoTIFF": ("cloudfree", "sar", "landcover", "cloudmask", "udm2_classes", "align"),
}


def _ingest_source(source: str | Path) -> str:
    """The kind of an ``ingest`` source: a key of :data:`INGEST_FLAGS`."""
    from .. import href

    suffix = href.name_of(source).suffix.lower()
    if suffix in STAC_SUFFIXES:
        return "STAC items"
    if href.is_dir(source):
        return "a split folder"
    return "a file-list CSV" if suffix == ".csv" else "a cloudy GeoTIFF"


def _check_ingest_flags(args: argparse.Namespace, kind: str) -> None:
    """Refuse an option that ``kind`` of source does not take: it would be ignored (the
    reader refuses ``--udm2-classes`` without a UDM2 ``--cloudmask`` itself)."""
    for flag in sorted({flag for flags in INGEST_FLAGS.values() for flag in flags}):
        value = getattr(args, flag)
        if value is not None and flag not in INGEST_FLAGS[kind]:
            takes = " or ".join(k for k, flags in INGEST_FLAGS.items() if flag in flags)
            raise UsageError(f"{argument(flag, value)}: not with {kind} (only with {takes})")


def _ingest(args: argparse.Namespace) -> int:
    from .. import href
    from ..io import ESTIMATE, open_m3rcr, open_quartet
    from ..store import check_destination, to_zarr

    source = href.as_href(args.src)
    kind = _ingest_source(source)
    _check_ingest_flags(args, kind)
    mask = None if args.cloudmask == ESTIMATE else args.cloudmask
    inputs = (args.src, args.root, args.cloudfree, args.sar, args.landcover, mask)
    check_destination(args.dest, inputs=[p for p in inputs if p], overwrite=args.overwrite)
    align = {"align": args.align} if args.align else {}  # else the readers' default
    if kind == "STAC items":
        from ..stac import open_stac

        unit = {"sar_unit": args.sar_unit} if args.sar_unit else {}  # else open_stac's
        ds = open_stac(
            source,
            sar_items=args.sar,
            landcover_items=args.landcover,
            bbox=args.bbox,
            crs=args.crs,
            **unit,
        )
    elif kind == "a split folder":
        ds = open_m3rcr(source, **align)
    elif kind == "a file-list CSV":
        root = args.root or (source.rsplit("/", 1)[0] if isinstance(source, str) else source.parent)
        ds = open_m3rcr(root, source, **align)
    else:
        ds = open_quartet(
            source,
            args.cloudfree,
            args.sar,
            args.landcover,
            args.cloudmask,
            udm2_classes=args.udm2_classes,
            **align,
        )
    to_zarr(ds, args.dest, overwrite=args.overwrite)
    print(f"wrote {href.redacted(args.dest)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..store import open_zarr
    from ..summary import describe

    print(describe(open_zarr(args.store), stats=args.stats))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), size=args.size, tta=args.tta)
    return 0


def _parse_config(items: Sequence[str], flag: str = "--config") -> dict[str, object]:
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


def _check_config(model: str | None, config: dict[str, object]) -> None:
    """Refuse a ``config`` that ``model`` cannot take (an unknown key, a wrong type, a size
    out of range, too many parameters: :func:`m3rcr_xr.models.check_config`) before any
    data are opened or weights fetched; None: a model known only from the weights."""
    if config and model is not None:
        from ..models import check_config

        check_config(model, config)


def _decloud(args: argparse.Namespace) -> int:
    import xarray as xr

    from ..inference import decloud
    from ..store import open_zarr

    config, checkpoints, inputs = _decloud_inputs(args)  # arguments first, then the data
    reused = _check_decloud_store(args, inputs)
    ds = open_zarr(args.input)
    cogs, kept, output = _check_decloud_cogs(args, ds, inputs, reused=reused)
    result = decloud(
        ds,
        args.model,
        checkpoints[0] if len(checkpoints) == 1 else checkpoints,
        config=config or None,  # no --config: the registered weights bring theirs
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        composite=args.composite,
        precision=args.precision,
        tta=args.tta,
        uncertainty=args.uncertainty,
    )
    result = result if isinstance(result, xr.Dataset) else result.to_dataset()
    _write_decloud(args, result, cogs, kept, output)
    return 0


def _decloud_inputs(
    args: argparse.Namespace,
) -> tuple[dict[str, object], list[str | None], list[str]]:
    """The ``--config`` of ``m3rcr decloud``, its checkpoints (None: the model's
    registered weights) and the inputs no output may overlap (the input store and the
    checkpoint files), checked before any data are read: a config the model of each
    checkpoint cannot take is refused (:func:`_check_config`)."""
    from .. import href
    from ..weights.resolve import known_model

    config = _parse_config(args.config)
    checkpoints = args.checkpoint or [None]
    for checkpoint in checkpoints:
        _check_config(known_model(args.model, checkpoint), config)
    # a registered name, a URL or "untrained" is no file the output could overlap
    local = [c for c in checkpoints if c and not href.is_remote(c) and href.local_path(c).exists()]
    return config, checkpoints, [args.input, *local]


def _check_decloud_store(args: argparse.Namespace, inputs: Sequence[str]) -> bool:
    """Check the output store of ``m3rcr decloud`` before the input is read
    (:func:`m3rcr_xr.store.check_destination`); True where it is taken as it is: a
    complete store with ``--cog`` and without ``--overwrite``, a run cut off while it
    wrote the GeoTIFFs, perhaps (:func:`_check_reused` checks it holds this run's data).
    """
    from ..store import check_destination, is_complete

    reused = bool(args.cog) and not args.overwrite and is_complete(args.output)
    check_destination(args.output, inputs=inputs, overwrite=args.overwrite or reused)
    return reused


class _Output(NamedTuple):
    """The output store of ``m3rcr decloud``, opened, and the identities of its data's
    inputs (:func:`m3rcr_xr.identity.source_identities` of the store), taken once a
    command for all its GeoTIFFs and the records of what they are written from (each
    GeoTIFF opened the store again, and listed it again)."""

    store: xarray.Dataset
    identities: dict[str, tuple[str, bool]]


def _open_output(output: str) -> _Output:
    """The complete output store ``output``, opened and identified (:class:`_Output`)."""
    from ..identity import source_identities, sources
    from ..store import open_zarr

    store = open_zarr(output)
    return _Output(store, source_identities(sources(store)))


def _check_decloud_cogs(
    args: argparse.Namespace, ds: xarray.Dataset, inputs: Sequence[str], *, reused: bool
) -> tuple[dict[str, str], set[str], _Output | None]:
    """Check, before any work, the GeoTIFFs ``m3rcr decloud --cog`` writes from ``ds``;
    return them (:func:`_decloud_cogs`), the variables whose GeoTIFF a ``reused`` store
    keeps (:func:`_kept_cogs`; those are not checked as destinations again), and that
    store, opened (None where the output is to be written)."""
    from ..cog import check_cog_destination, patch_file_names
    from ..location import check_apart
    from ..schema import is_collection

    collection = is_collection(ds)
    cogs = _decloud_cogs(args, collection)
    output = _open_output(args.output) if reused else None
    kept = _kept_cogs(output, cogs) if output is not None else set()
    names = patch_file_names(ds) if cogs and collection else None
    for variable, cog in cogs.items():  # a file for a scene, a folder for a collection
        check_apart(cog, [args.output], role="output store")
        if names is None and cog == args.cog:  # its suffix and folder are the _std file's
            overwrite = None if variable in kept else args.overwrite  # kept: checked
            _check_cog_file(cog, overwrite=overwrite)
        if variable not in kept:
            check_cog_destination(cog, names=names, inputs=inputs, overwrite=args.overwrite)
    return cogs, kept, output


def _check_cog_file(cog: str, *, overwrite: bool | None) -> None:
    """Check the GeoTIFF file ``--cog`` of a scene: a path (or ``file://`` URL) as
    :func:`_check_output_file` does; a URL by its suffix only (its bucket and object are
    :func:`m3rcr_xr.cog.check_cog_destination`'s)."""
    from .. import href

    if not href.is_remote(cog):
        path = str(href.local_path(cog))  # a file:// URL as the path it names
        _check_output_file(path, "cog", COG_SUFFIXES, overwrite=overwrite)
    else:
        flag = argument("cog", href.redacted(cog))
        _check_suffix(flag, href.name_of(cog).suffix, COG_SUFFIXES)


def _write_decloud(
    args: argparse.Namespace,
    result: xarray.Dataset,
    cogs: dict[str, str],
    kept: set[str],
    reused: _Output | None,
) -> None:
    """Write ``result`` to the output store of ``m3rcr decloud`` (a ``reused`` store,
    opened: check that it holds ``result``'s data instead), then the GeoTIFFs ``cogs``
    from the store written, but those ``kept``, replaced together
    (:func:`m3rcr_xr.cog.to_cogs`: a cut-off run leaves no pair of two runs); print
    each."""
    from .. import href
    from ..cog import to_cogs
    from ..store import to_zarr

    if reused is not None:
        _check_reused(result, args.output, cogs, reused.store.data_vars)
        print(f"{href.redacted(args.output)} is complete: its GeoTIFFs come from it")
    else:
        to_zarr(result, args.output, overwrite=args.overwrite, progress=True)
        print(f"wrote {href.redacted(args.output)}")
    if not cogs:
        return
    written, identities = reused or _open_output(args.output)
    paths = {variable: cog for variable, cog in cogs.items() if variable not in kept}
    for cog in (cog for variable, cog in cogs.items() if variable in kept):
        print(f"kept {href.redacted(cog)}: written from this store already")
    to_cogs(written, paths, overwrite=args.overwrite, identities=identities)
    for cog in paths.values():
        print(f"wrote {href.redacted(cog)}")


def _kept_cogs(output: _Output, cogs: dict[str, str]) -> set[str]:
    """The variables of ``cogs`` whose GeoTIFF a rerun on the complete store ``output``
    keeps: written from the store's variable with the options ``m3rcr decloud`` writes
    with (:func:`m3rcr_xr.cog.written_from`), by a run cut off before the next one. Any
    other file there is checked as before any write (and refused without --overwrite).
    """
    from ..cog import written_from

    store, identities = output
    return {
        variable
        for variable, cog in cogs.items()
        if variable in store.data_vars and written_from(store[variable], cog, identities=identities)
    }


def _check_reused(
    result: xarray.Dataset, output: str, cogs: dict[str, str], held: Collection[Hashable]
) -> None:
    """Refuse to write the GeoTIFFs from the complete store ``output`` unless it was
    written from ``result``'s data (the same inputs and settings: the fingerprint
    :func:`m3rcr_xr.to_zarr` keeps), saying how to write them from it as it is (its
    variables ``held``).

    Raises
    ------
    StoreError
        ``output`` holds other data.
    """
    from ..href import redacted
    from ..store import written_from

    if written_from(result, output):
        return
    name = redacted(output)
    calls = "; ".join(
        f"m3rcr_xr.to_cog(m3rcr_xr.open_zarr({name!r})[{variable!r}], {redacted(cog)!r})"
        for variable, cog in cogs.items()
        if variable in held
    )
    raise StoreError(
        f"{name}: a complete store of other data exists (other inputs or settings than "
        f"this run's); pass {argument('overwrite')} to replace it, or write the GeoTIFFs "
        f"of the store as it is: {calls}"
    )


def _decloud_cogs(args: argparse.Namespace, collection: bool) -> dict[str, str]:
    """The variables ``m3rcr decloud --cog`` writes as GeoTIFF, and where."""
    from ..cog import std_cog_path

    if not args.cog:
        return {}
    cogs = {"decloud": args.cog}
    if args.uncertainty:
        cogs["decloud_std"] = std_cog_path(args.cog, collection=collection)
    return cogs


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture argument, repeatable (e.g. preset=small)",
    )


def _add_decloud(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decloud", help="remove clouds from a scene or collection store")
    p.add_argument("input", help="Zarr store with cloudy and sar (from m3rcr ingest)")
    p.add_argument("output", help="Zarr store to write the decloud variable to")
    p.add_argument("--model", help=MODEL_HELP + "; default: the weights' own, else dsen2_cr")
    p.add_argument(
        "--checkpoint",
        action="append",
        help="weights: a registered name (m3rcr weights), a file (.pth published layout, "
        "state dict, .safetensors), a URL (https://, s3://, file://; end it with "
        "#sha256=HEX to check the download), or 'untrained' (random weights); repeat it "
        "for an ensemble of one model family and configuration, averaged",
    )
    _add_config_argument(p)
    p.add_argument("--tile", type=int, help="tile size (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: tile // 8)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--precision", default="fp32", help="on a GPU: fp32 (default), bf16, fp16 or auto"
    )
    p.add_argument(
        "--composite", action="store_true", help="keep the cloudy input outside the cloud mask"
    )
    p.add_argument(
        "--tta",
        help="test-time augmentation: flips (4 passes a tile) or d4 (8), averaged; "
        "none (the default) runs each tile once",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write decloud_std, the spread over ensemble members and TTA transforms",
    )
    p.add_argument(
        "--cog",
        help="also write a Cloud-Optimised GeoTIFF here (a .tif for a scene, a folder of "
        "one per patch for a collection); with --uncertainty, decloud_std beside it: "
        "NAME_std.tif for a scene, the folder DIR_std (same file names) for a collection",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_scheduler_arguments(p)
    p.set_defaults(func=_decloud)


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    with command_line_names():
        takes = "; ".join(
            f"with {kind}: {', '.join(argument(flag) for flag in flags)}"
            for kind, flags in INGEST_FLAGS.items()
        )
    p = sub.add_parser(
        "ingest",
        help="read M3R-CR files into a Zarr store",
        epilog=f"Options by source (others are refused): {takes}.",
    )
    p.add_argument(
        "src",
        help="a split folder (train/, test/), a file-list CSV, a cloudy GeoTIFF (then "
        "give the other layers as options), or STAC JSON of PlanetScope items (then "
        "--sar and --landcover take STAC JSON too); paths or http(s)/s3 URLs",
    )
    p.add_argument("dest", help="the Zarr store to write (path or fsspec URL)")
    p.add_argument("--root", help="data root of a CSV's paths (default: the CSV's folder)")
    p.add_argument("--cloudfree", help="cloud-free GeoTIFF of a quartet")
    p.add_argument("--sar", help="Sentinel-1 GeoTIFF of a quartet (STAC JSON with STAC)")
    p.add_argument("--landcover", help="WorldCover GeoTIFF of a quartet (STAC JSON with STAC)")
    p.add_argument(
        "--cloudmask",
        help="cloud mask of a quartet: .npy, 1-band GeoTIFF, a Planet UDM2 GeoTIFF (8 bands; "
        "its blackfill becomes nodata 0 in cloudy) or 'estimate' (a spectral test on "
        "cloudy; a warning says so)",
    )
    p.add_argument(
        "--udm2-classes",
        type=_names,
        metavar="CLASS,...",
        help="with a UDM2 --cloudmask: the classes that count as cloud, of clear, snow, "
        "shadow, light_haze, heavy_haze, cloud (default cloud,heavy_haze,shadow; add "
        "light_haze for the haze of UDM2.1)",
    )
    p.add_argument(
        "--bbox",
        type=float,
        nargs=4,
        metavar=("WEST", "SOUTH", "EAST", "NORTH"),
        help="STAC: the scene's extent in degrees (default: the optical items')",
    )
    p.add_argument("--crs", help="STAC: the scene's CRS (default: the first optical item's)")
    p.add_argument(
        "--sar-unit",
        choices=("power", "dB"),
        help="STAC: what the --sar items' vv, vh assets hold: linear power (default; "
        "converted to dB) or dB",
    )
    p.add_argument(
        "--align",
        choices=("coords", "shape"),
        help="not STAC: put the 10 m layers on the 3 m grid by coordinates (default) or by shape",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_scheduler_arguments(p)
    p.set_defaults(func=_ingest)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a Zarr store")
    p.add_argument("store")
    p.add_argument("--stats", action="store_true", help="also compute cloud and class shares")
    p.set_defaults(func=_info)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole job on a synthetic scene")
    p.add_argument("--out", default="demo-output", help="output folder")
    p.add_argument("--size", type=int, default=2048, help="scene edge in pixels")
    p.add_argument(
        "--tta",
        default="flips",
        help="test-time augmentation and its uncertainty layer: flips (default), d4 or none",
    )
    p.set_defaults(func=_demo)


def _evaluate(args: argparse.Namespace) -> int:
    from ..metrics import STRATA, evaluate
    from ..metrics.cells import check_strata

    strata = check_strata(args.level, STRATA if args.strata is None else args.strata)
    paths, earlier = _evaluate_tables(args)
    classifier_config = _classifier_config(args)
    stores = _open_stores(args.store)
    _check_prediction_held(args, stores)
    result = evaluate(
        stores,
        args.pred,
        args.target,
        level=args.level,
        protocol=args.protocol,
        strata=strata,
        landcover=args.landcover,
        cloudmask=args.cloudmask,
        semantic=args.semantic,
        classifier=args.classifier,
        classifier_config=classifier_config or None,
    )
    _print_tables(result, paths, earlier, semantic=args.semantic, overwrite=args.overwrite)
    return 0


def _evaluate_tables(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Where ``m3rcr evaluate`` writes its tables (none without ``--out``): the metrics,
    then with ``--semantic`` the semantic scores beside them
    (:func:`m3rcr_xr.metrics.semantic_table_path`); and the earlier table it removes:
    without ``--semantic``, the semantic table of an earlier run there, which would
    be left beside this run's metrics. Each checked before any work.

    Raises
    ------
    UsageError
        A path that cannot be written, or one that exists without ``--overwrite``.
    StoreError
        A path inside a store it reads, or a file that is no table of ``evaluate``.
    """
    from ..location import check_apart
    from ..metrics import (
        TABLE_SUFFIXES,
        check_table_replaceable,
        is_semantic_table,
        semantic_table_path,
    )

    if not args.out:
        return [], []
    semantic_out = semantic_table_path(args.out)
    outputs = [args.out, semantic_out] if args.semantic else [args.out]
    earlier = [semantic_out] if not args.semantic and is_semantic_table(semantic_out) else []
    for path in outputs:
        _check_output_file(path, "out", TABLE_SUFFIXES, overwrite=args.overwrite)
        check_apart(path, args.store)  # a file in a store is no part of it
        check_table_replaceable(path)  # --overwrite replaces only an earlier table
    if earlier and not args.overwrite:  # a table of ours beside --out: checked with it
        raise UsageError(
            f"{argument('out', args.out)}: {earlier[0]} holds the semantic scores of an "
            "earlier run, which would be left beside this run's table (no --semantic); "
            f"pass {argument('overwrite')} to remove it"
        )
    return outputs, earlier


def _classifier_config(args: argparse.Namespace) -> dict[str, object]:
    """The ``--classifier-config`` of ``m3rcr evaluate``, refused (with ``--classifier``)
    without ``--semantic``, and where the classifier's model cannot take it."""
    if not args.semantic and (args.classifier or args.classifier_config):
        raise UsageError("--classifier and --classifier-config go with --semantic")
    classifier_config = _parse_config(args.classifier_config or [], "--classifier-config")
    if classifier_config:  # the classifier's model, known without its weights, takes it
        from ..metrics.semantic import resolve_classifier

        _check_config(resolve_classifier(args.classifier, classifier_config)[0], classifier_config)
    return classifier_config


def _check_prediction_held(args: argparse.Namespace, stores: xarray.Dataset) -> None:
    """Refuse the default ``--pred decloud`` missing from the one store given: the
    decloud store was left out, perhaps; say how to give both.

    Raises
    ------
    SchemaError
        Naming the store, its variables and the command with both stores.
    """
    left_out = args.pred == "decloud" and len(args.store) == 1  # the decloud store, perhaps
    if left_out and args.pred not in stores.data_vars:
        raise SchemaError(
            f"{argument('pred', args.pred)}: {args.store[0]} has no variable {args.pred!r} "
            f"(it has {sorted(map(str, stores.data_vars))}); give the store that holds the "
            "prediction too: m3rcr evaluate SCENE.zarr DECLOUD.zarr"
        )


def _print_tables(
    result: xarray.Dataset,
    paths: Sequence[str],
    earlier: Sequence[str],
    *,
    semantic: bool,
    overwrite: bool,
) -> None:
    """Print the table(s) of ``result`` (with ``semantic``: the metrics, then the
    semantic scores) and write them to ``paths`` (none: print only), together
    (:func:`m3rcr_xr.metrics.write_tables`: a kill leaves no table beside one of another
    run), removing the ``earlier`` semantic table. Without ``overwrite``, a table that
    another run wrote there meanwhile is refused and kept."""
    from ..metrics import split_semantic, write_tables

    tables = split_semantic(result) if semantic else (result,)
    for table in tables:
        print(table.to_dataframe().to_string())
    if paths:
        write_tables(list(zip(tables, paths, strict=True)), remove=earlier, overwrite=overwrite)
    for path in earlier:
        print(f"removed {path}: the semantic table of an earlier run")
    for path in paths:
        print(f"wrote {path}")


def _open_stores(paths: Sequence[str]) -> xarray.Dataset:
    """The variables of the stores ``paths`` as one Dataset (``m3rcr evaluate
    scene.zarr decloud.zarr``: the target in one, the prediction in the other).

    Raises
    ------
    SchemaError
        A variable in two of them, or stores on other grids (coordinates that differ).
    """
    import xarray as xr

    from ..store import open_zarr

    stores = {path: open_zarr(path) for path in paths}
    if len(stores) == 1:
        return next(iter(stores.values()))
    seen: dict[str, str] = {}
    for path, ds in stores.items():
        for name in map(str, ds.data_vars):
            if name in seen:
                raise SchemaError(f"{name}: a variable of both {seen[name]} and {path}")
            seen[name] = path
    try:  # coordinates are read at open: comparing them computes no data variable
        return xr.merge(
            list(stores.values()), join="exact", compat="equals", combine_attrs="override"
        )
    except (ValueError, xr.MergeError) as err:
        raise SchemaError(
            f"{', '.join(stores)}: not on one grid, so not evaluated together ({err})"
        ) from None


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics per land-cover class of a prediction")
    p.add_argument(
        "store",
        nargs="+",
        help="the Zarr store(s) holding the prediction and the target, their variables "
        "merged: e.g. the scene store, then the decloud store written from it",
    )
    p.add_argument("--pred", default="decloud", help="prediction variable (default decloud)")
    p.add_argument("--target", default="cloudfree", help="target variable (default cloudfree)")
    p.add_argument(
        "--level",
        type=int,
        choices=(1, 2),
        default=1,
        help="WorldCover class level: 1 (7 groups) or 2 (11 classes)",
    )
    p.add_argument(
        "--protocol",
        choices=("pooled", "per_patch"),
        default="pooled",
        help="pool all pixels, or average per-patch metrics (collections)",
    )
    p.add_argument(
        "--landcover",
        type=_name_or_none,
        default="landcover",
        metavar="VAR|none",
        help="land-cover variable (default landcover), or none: no classes, only all",
    )
    p.add_argument(
        "--cloudmask", default="cloudmask", help="cloud-mask variable (default cloudmask)"
    )
    p.add_argument(
        "--strata",
        type=_names,
        metavar="STRATUM,...",
        help="cloud strata, of all, cloudy, clear (default all three); all alone needs no "
        "cloud mask",
    )
    p.add_argument(
        "--out",
        help="also write the table: a .csv or .json path (with --semantic, the semantic "
        "table too, beside it: NAME_semantic.csv)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the --out table(s) of an earlier evaluate (other files never are)",
    )
    p.add_argument(
        "--semantic",
        action="store_true",
        help="also classify the prediction, the target and the cloudy input and score "
        "their land cover against WorldCover (OA, mIoU, IoU and F1 per class)",
    )
    p.add_argument(
        "--classifier",
        metavar="NAME|CKPT",
        help="with --semantic: registered weights (landcover_unet-demo: synthetic data "
        "only), a checkpoint of landcover_unet, or 'untrained' (random weights: tests)",
    )
    p.add_argument(
        "--classifier-config",
        action="append",
        metavar="KEY=VALUE",
        help="with --semantic: the classifier's architecture (repeatable), as --config",
    )
    _add_scheduler_arguments(p)
    p.set_defaults(func=_evaluate)


#: the model ``m3rcr train --task`` takes without ``--model`` (None: --model is required)
TASK_MODELS = {"cloud_removal": None, "landcover": "landcover_unet"}


def _train(args: argparse.Namespace) -> int:
    from ..train import TrainSettings, train

    # and train checks they are its own to write, and holds them for the run
    _check_output_file(args.out, "out", CHECKPOINT_SUFFIXES)
    if args.export:
        _check_output_file(args.export, "export", EXPORT_SUFFIXES)
    # each setting is the option of its name (--batch-size: batch_size), but --workers
    options = {
        field.name: getattr(args, "workers" if field.name == "num_workers" else field.name)
        for field in dataclasses.fields(TrainSettings)
    }
    options["model"] = args.model or TASK_MODELS.get(args.task or "cloud_removal")
    if options["model"] is None:
        raise UsageError("--model is required (dsen2_cr, glf_cr or align_cr)")
    settings = TrainSettings(**{**options, "config": _parse_config(args.config)})
    result = train(
        args.store,
        args.out,
        settings,
        val=args.val,
        resume=args.resume,
        progress=True,
        overwrite=args.overwrite,
        export=args.export,
    )
    print(f"wrote {result.checkpoint} (step {result.step}, {result.wall_s:.0f} s)")
    for stratum, values in result.metrics.get("model", {}).items():
        if "input" not in result.metrics:  # a classifier
            print(f"validation {stratum}: OA {values['OA']:.4g}, mIoU {values['mIoU']:.4g}")
            continue
        baseline = result.metrics["input"][stratum]
        print(
            f"validation {stratum}: "
            + ", ".join(
                f"{name} {values[name]:.4g} (cloudy input {baseline[name]:.4g})"
                for name in ("PSNR", "SSIM", "SAM", "MAE")
            )
        )
    if result.export is not None:
        print(f"wrote {result.export}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network on a Zarr store (published recipe)")
    p.add_argument("store", help="training data: a scene or collection store")
    p.add_argument("--model", help=f"{MODEL_HELP} (--task landcover: landcover_unet)")
    _add_config_argument(p)
    p.add_argument(
        "--task",
        choices=("cloud_removal", "landcover"),
        help="cloud_removal (cloudy + sar to cloudfree; default) or landcover "
        "(a classifier: cloudfree to the WorldCover classes of landcover)",
    )
    p.add_argument(
        "--level", type=int, choices=(1, 2), help="landcover: WorldCover level (default 1)"
    )
    p.add_argument(
        "--class-weights",
        choices=("balanced", "none"),
        help="landcover: weigh the classes in the loss (default none)",
    )
    p.add_argument("--steps", type=int, required=True, help="optimiser steps in all")
    p.add_argument("--out", required=True, help="checkpoint to write (.pth)")
    p.add_argument("--batch-size", type=int, help="crops per step (published: 1, Align-CR 2)")
    p.add_argument("--crop", type=int, help="crop side (default: the model's tile, else 160)")
    p.add_argument("--lr", type=float, help="learning rate (published: 1e-4)")
    p.add_argument("--lr-step", type=int, help="halve the rate every N steps (default steps/6)")
    p.add_argument(
        "--lr-decay-start", type=int, help="first halving after this step (default steps/3)"
    )
    p.add_argument("--seed", type=int, help="seed of weights and crops (published: 7)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="write the checkpoint (and validate) every N steps",
    )
    p.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue the run of this checkpoint (it may be the --out file itself)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the --out checkpoint of another run and --export weights of m3rcr "
        "(other files never are)",
    )
    p.add_argument("--val", metavar="STORE", help="validation store (centre crops)")
    p.add_argument(
        "--workers", "--num-workers", type=int, default=0, help="DataLoader worker processes"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision on a GPU (never on the CPU); auto: bf16 where the GPU has it "
        "natively (compute capability 8 and up), else float32 (default auto)",
    )
    p.add_argument(
        "--export",
        metavar="FILE.safetensors",
        help="also write the final weights as safetensors (model and config in its metadata)",
    )
    p.set_defaults(func=_train)


def _weights_list(args: argparse.Namespace) -> int:
    from ..weights import available
    from ..weights.download import cached_file

    rows = [("name", "model", "size", "license", "cached", "default")]
    for e in available(args.model):
        local = e.urls[0].startswith("file://")
        here = "local" if local else ("yes" if cached_file(e.urls[0]).is_file() else "no")
        size = "?" if e.size is None else f"{e.size / 2**20:.1f} MiB"
        rows.append((e.name, e.model, size, e.license, here, "yes" if e.default else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _weights_fetch(args: argparse.Namespace) -> int:
    from ..weights import fetch

    print(fetch(args.name, known_hash=args.known_hash))
    return 0


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list the registered weights, or fetch them")
    p.add_argument("--model", help="list only the weights of this model")
    p.set_defaults(func=_weights_list)
    actions = p.add_subparsers(dest="action")
    listing = actions.add_parser("list", help="the registered weights (the default)")
    # SUPPRESS: absent here, the subparser's default would replace ``weights --model X``
    listing.add_argument(
        "--model", default=argparse.SUPPRESS, help="list only the weights of this model"
    )
    listing.set_defaults(func=_weights_list)
    get = actions.add_parser("fetch", help="download weights into the cache; print the file")
    get.add_argument("name", help="a registered name or a URL")
    get.add_argument("--known-hash", help="the expected SHA-256 of a URL's file")
    get.set_defaults(func=_weights_fetch)


#: each adds one subcommand; later commands (decloud, evaluate, train) add theirs here
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest,
    _add_info,
    _add_decloud,
    _add_evaluate,
    _add_demo,
    _add_train,
    _add_weights,
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
        with command_logging(args.verbose), command_line_names(), _scheduler_client(args):
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

