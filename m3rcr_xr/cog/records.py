"""What a GeoTIFF of this library records in its TIFF tags: who wrote it (``Software``),
and what from (``ImageDescription``: a digest of the data's identity, the options and
the version), and :func:`written_from`, which reads them back."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import xarray as xr

from ..identity import data_fingerprint, sources
from ..location import Target
from ..schema import is_collection
from .arrays import array_to_write, patch_file_names

#: the start of the TIFF ``Software`` tag of each file :func:`to_cog` writes
SOFTWARE = "m3rcr_xr"


def software_tag() -> str:
    """The TIFF ``Software`` tag of a file this version writes: :data:`SOFTWARE` and the
    version."""
    from .. import __version__

    return f"{SOFTWARE} {__version__}"


#: the TIFF tags of a file :func:`to_cog` wrote: who wrote it (:func:`check_replaceable`),
#: and what from (``ImageDescription``: :func:`written_from`)
SOFTWARE_TAG, SOURCE_TAG = 305, 270


def tiff_tags(handle: Any) -> dict[int, str]:
    """The ``Software`` and ``ImageDescription`` tags of an open file, those it has;
    none for no TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(handle) as tiff:
            tags = tiff.pages.first.tags
            return {
                code: str(tags[code].value) for code in (SOFTWARE_TAG, SOURCE_TAG) if code in tags
            }
    except Exception:  # a malformed file (tifffile raises many kinds of error): no tag
        return {}


def source_records(
    array: xr.DataArray,
    names: Sequence[str] | None,
    compress: str,
    level: int | None,
    blocksize: int,
    overview_resampling: str,
    identities: dict[str, tuple[str, bool]] | None = None,
) -> list[str]:
    """What each file :func:`to_cog` writes of ``array`` (one per name of ``names`` for a
    collection) is written from, as its ``ImageDescription`` records it: a digest of the
    data's identity (:func:`m3rcr_xr.identity.data_fingerprint`: a store's own fingerprint,
    a lazy graph's inputs, given their ``identities`` or reached here), of the options
    that shape the file, of this library's version, and of the patch's file name. The
    same in every process."""
    name = array.name if array.name is not None else "data"
    data = data_fingerprint(array.to_dataset(name=name), sources(array), identities=identities)
    shaping = [software_tag(), data, str(compress).lower(), level, blocksize, overview_resampling]
    common = json.dumps(shaping)
    return [
        f"{SOFTWARE} source {hashlib.sha256(f'{common}{file}'.encode()).hexdigest()}"
        for file in names or [""]
    ]


def written_from(
    obj: xr.DataArray | xr.Dataset,
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    compress: str = "deflate",
    level: int | None = None,
    blocksize: int = 512,
    overview_resampling: str = "nearest",
    storage_options: dict[str, Any] | None = None,
    identities: dict[str, tuple[str, bool]] | None = None,
) -> bool:
    """Whether ``path`` holds what :func:`to_cog` writes of ``obj`` with these options
    (those of :func:`to_cog`, ``identities`` too): each of its files (one per patch for
    a collection) is a GeoTIFF of this library recording the same data, options and
    version in its TIFF ``ImageDescription``. A file of an earlier version records
    nothing: False. Reads the files' first tags, and of ``obj`` what
    :func:`m3rcr_xr.identity.data_fingerprint` reads (metadata and listings, but none
    given as ``identities``; an array in memory is hashed; coordinates are computed).

    Raises
    ------
    UsageError
        ``variable`` not in the Dataset.
    StoreError
        An input of ``obj`` out of reach.
    """
    array = array_to_write(obj, variable)
    names = patch_file_names(array) if is_collection(array) else None
    target = Target.of(path, storage_options)
    keys = [target.path] if names is None else [target.key(name) for name in names]
    records = source_records(
        array, names, compress, level, blocksize, overview_resampling, identities
    )
    for key, record in zip(keys, records, strict=True):
        try:
            with target.fs.open(key, "rb") as handle:
                tags = tiff_tags(handle)
        except OSError:  # missing, a folder, out of reach
            return False
        if not tags.get(SOFTWARE_TAG, "").startswith(SOFTWARE) or tags.get(SOURCE_TAG) != record:
            return False
    return True
