"""The ``m3rcr`` command line: ``ingest``, ``info``, ``demo``.

Bad input ends with exit status 2 and one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .exceptions import M3RCRError

log = logging.getLogger("m3rcr_xr")
EXIT_BAD_INPUT = 2


def _ingest(args: argparse.Namespace) -> int:
    from .io import open_m3rcr, open_quartet
    from .store import to_zarr

    source = Path(args.src)
    if source.is_dir():
        ds = open_m3rcr(source, align=args.align)
    elif source.suffix.lower() == ".csv":
        ds = open_m3rcr(args.root or source.parent, source, align=args.align)
    else:
        ds = open_quartet(source, args.cloudfree, args.sar, args.landcover, args.cloudmask,
                          align=args.align)
    to_zarr(ds, args.dest, overwrite=args.overwrite)
    print(f"wrote {args.dest}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .store import open_zarr
    from .summary import describe

    print(describe(open_zarr(args.store), stats=args.stats))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), size=args.size)
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="read M3R-CR files into a Zarr store")
    p.add_argument("src", help="a split folder (train/, test/), a file-list CSV, or a cloudy "
                               "GeoTIFF (then give the other layers as options)")
    p.add_argument("dest", help="the Zarr store to write (path or fsspec URL)")
    p.add_argument("--root", help="data root of a CSV's paths (default: the CSV's folder)")
    p.add_argument("--cloudfree", help="cloud-free GeoTIFF of a quartet")
    p.add_argument("--sar", help="Sentinel-1 GeoTIFF of a quartet")
    p.add_argument("--landcover", help="WorldCover GeoTIFF of a quartet")
    p.add_argument("--cloudmask", help="cloud mask (.npy or GeoTIFF) of a quartet")
    p.add_argument("--align", choices=("coords", "shape"), default="coords",
                   help="put the 10 m layers on the 3 m grid by coordinates or by shape")
    p.add_argument("--overwrite", action="store_true", help="replace a complete store")
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
    p.set_defaults(func=_demo)


#: each adds one subcommand; later commands (decloud, evaluate, train) add theirs here
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest, _add_info, _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3rcr", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``m3rcr``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except M3RCRError as err:
        print(f"m3rcr {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
