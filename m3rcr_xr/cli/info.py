"""``m3rcr info``: describe a Zarr store (:func:`m3rcr_xr.summary.describe`; with
``--stats``, its cloud fraction and land-cover shares too)."""

from __future__ import annotations

import argparse


def _info(args: argparse.Namespace) -> int:
    from ..store import open_zarr
    from ..summary import describe

    print(describe(open_zarr(args.store), stats=args.stats))
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    """Add ``m3rcr info`` to the subcommands ``sub``."""
    p = sub.add_parser("info", help="describe a Zarr store")
    p.add_argument("store")
    p.add_argument("--stats", action="store_true", help="also compute cloud and class shares")
    p.set_defaults(func=_info)
