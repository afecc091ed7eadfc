"""``m3rcr ingest``: M3R-CR files (a split folder, a file-list CSV, a quartet of
GeoTIFFs) or STAC items into a Zarr store; the options each kind of source takes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..exceptions import UsageError, argument, command_line_names
from .arguments import OVERWRITE_HELP, add_scheduler_arguments, name_list

#: an ingest source with one of these is STAC JSON (an item, item collection or catalog)
STAC_SUFFIXES = (".json", ".geojson")


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


def add_ingest(sub: argparse._SubParsersAction) -> None:
    """Add ``m3rcr ingest`` to the subcommands ``sub``."""
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
        type=name_list,
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
    add_scheduler_arguments(p)
    p.set_defaults(func=_ingest)
