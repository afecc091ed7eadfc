"""``m3rcr decloud``: remove the clouds of a scene or collection store into another
store, and with ``--cog`` write GeoTIFFs of it.

Every argument and destination is checked before the input's data are read: the
config against each checkpoint's model, the output store, the GeoTIFFs. A rerun on the
complete store of a run cut off while it wrote the GeoTIFFs takes that store as it is,
once it holds this run's data, and keeps the GeoTIFFs written from it already.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Hashable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..exceptions import StoreError, argument, argument_names
from .arguments import (
    MODEL_HELP,
    OVERWRITE_HELP,
    add_config_argument,
    add_scheduler_arguments,
    check_model_config,
    check_output_file,
    check_suffix,
    parse_config,
)

if TYPE_CHECKING:
    import xarray

#: the suffixes of a scene's --cog GeoTIFF (a collection's is a folder)
COG_SUFFIXES = (".tif", ".tiff")


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
    checkpoint cannot take is refused
    (:func:`~m3rcr_xr.cli.arguments.check_model_config`)."""
    from .. import href
    from ..weights.resolve import known_model

    config = parse_config(args.config)
    checkpoints = args.checkpoint or [None]
    for checkpoint in checkpoints:
        check_model_config(known_model(args.model, checkpoint), config)
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
    :func:`~m3rcr_xr.cli.arguments.check_output_file` does; a URL by its suffix only (its
    bucket and object are :func:`m3rcr_xr.cog.check_cog_destination`'s)."""
    from .. import href

    if not href.is_remote(cog):
        path = str(href.local_path(cog))  # a file:// URL as the path it names
        check_output_file(path, "cog", COG_SUFFIXES, overwrite=overwrite)
    else:
        flag = argument("cog", href.redacted(cog))
        check_suffix(flag, href.name_of(cog).suffix, COG_SUFFIXES)


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
    with argument_names(path="cog"):  # to_cogs' messages name --cog
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


def add_decloud(sub: argparse._SubParsersAction) -> None:
    """Add ``m3rcr decloud`` to the subcommands ``sub``."""
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
    add_config_argument(p)
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
    add_scheduler_arguments(p)
    p.set_defaults(func=_decloud)
