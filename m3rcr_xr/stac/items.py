"""STAC items from what a user gives (items, an item collection, a catalog, or the path or
URL of their JSON, read through fsspec), and an item's asset by name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from os import PathLike

import pystac

from .. import href
from ..exceptions import InputFileError, UsageError, argument

ItemsLike = (
    pystac.Item | pystac.ItemCollection | pystac.Catalog | Iterable[pystac.Item] | str | PathLike
)


class _FsspecStacIO(pystac.stac_io.DefaultStacIO):
    """pystac reads through fsspec: local paths, ``https://`` and ``s3://`` alike."""

    def read_text_from_href(self, href_: str) -> str:
        return href.read_bytes(href_, "STAC JSON").decode("utf-8")


def read_items(source: ItemsLike) -> list[pystac.Item]:
    """The STAC items of ``source``: an item, an item collection, a catalog (all its
    items, recursively), a sequence of items, or the path or URL of any of them as JSON.

    Raises
    ------
    InputFileError
        Naming the file or URL: it cannot be read, or is not STAC JSON.
    """
    if isinstance(source, pystac.Item):
        return [source]
    if isinstance(source, pystac.Catalog):
        return list(source.get_items(recursive=True))
    if isinstance(source, str | PathLike):
        return _read_json_items(source)
    items = list(source)
    wrong = [type(item).__name__ for item in items if not isinstance(item, pystac.Item)]
    if wrong:
        raise UsageError(f"expected STAC items, got {wrong[0]}")
    return items


def _read_json_items(source: str | PathLike) -> list[pystac.Item]:
    location = str(source) if href.is_remote(source) else os.path.abspath(href.local_path(source))
    stac_io = _FsspecStacIO()
    try:
        doc = json.loads(stac_io.read_text_from_href(location))
        if doc.get("type") == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(doc))
            for item in items:  # relative asset hrefs: relative to the collection's file
                if item.get_self_href() is None:
                    item.set_self_href(location)
            return items
        found = pystac.read_file(location, stac_io=stac_io)
        return [found] if isinstance(found, pystac.Item) else list(found.get_items(recursive=True))  # type: ignore[attr-defined]
    except InputFileError:  # a file that cannot be read, already named
        raise
    except (ValueError, KeyError, AttributeError, pystac.STACError, pystac.STACTypeError) as err:
        raise InputFileError(
            f"{source}: not a STAC item, item collection or catalog ({err})"
        ) from href.cause(err)


def item_asset(item: pystac.Item, asset_name: str) -> pystac.Asset:
    """The item's asset ``asset_name``, or :class:`InputFileError` naming the item, the
    assets it has and the ``assets=`` argument that names another."""
    if asset_name not in item.assets:
        raise InputFileError(
            f"STAC item {item.id!r}: no asset {asset_name!r} (it has {sorted(item.assets)}); "
            f"name the asset with {argument('assets', {'LAYER': 'NAME'})}"
        )
    return item.assets[asset_name]
