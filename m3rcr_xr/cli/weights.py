"""``m3rcr weights``: list the registered weights (and whether each is in the cache),
or fetch them into the cache."""

from __future__ import annotations

import argparse


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


def add_weights(sub: argparse._SubParsersAction) -> None:
    """Add ``m3rcr weights`` to the subcommands ``sub``."""
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
