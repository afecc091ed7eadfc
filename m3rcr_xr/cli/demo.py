"""``m3rcr demo``: the whole job on a synthetic scene, in one folder
(:func:`m3rcr_xr.demo.run_demo`: written to Zarr, decloud-ed, evaluated and drawn)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), size=args.size, tta=args.tta)
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    """Add ``m3rcr demo`` to the subcommands ``sub``."""
    p = sub.add_parser("demo", help="run the whole job on a synthetic scene")
    p.add_argument("--out", default="demo-output", help="output folder")
    p.add_argument("--size", type=int, default=2048, help="scene edge in pixels")
    p.add_argument(
        "--tta",
        default="flips",
        help="test-time augmentation and its uncertainty layer: flips (default), d4 or none",
    )
    p.set_defaults(func=_demo)
