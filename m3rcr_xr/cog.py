"""Cloud-Optimised GeoTIFFs of scenes and collections, streamed from Dask.

:func:`to_cog` writes a (lazy) ``(band, y, x)`` array to a COG with odc-geo's
``save_cog_with_dask``: each block and each overview block is computed and compressed
in its own task, written to a part file, and the parts are joined at the end, with no
Zarr round trip and without holding the raw scene. Bands are interleaved by pixel.
Peak memory grows with the width of the scene, not its area: while the overviews are
built, about two rows of blocks wait for the rows below them (``2 * width * blocksize``
pixels of every band; a smaller ``blocksize`` holds less), and the graph takes some
16 KiB a block (see ``benchmarks/quick.py``, part ``cog``, and the README: 108, 153
and 221 MiB at 2048, 4096 and 8192 pixels square, four float32 bands).

The file's grid is odc-geo's COG layout: the scene's transform and CRS, the width and
height rounded up (with nodata) to a multiple of ``2**levels`` so that each overview
halves the one above exactly; overviews go down to one block, but stop while every side
keeps 2 pixels (a side of one pixel is grown to 2: odc-geo cannot write one). A
collection (a ``patch`` dim) becomes a folder of one GeoTIFF per patch, named by the
``patch`` coordinate (the id :func:`m3rcr_xr.open_m3rcr` takes from the cloudy file's
name).

Safety rules, as for :func:`m3rcr_xr.to_zarr`: an existing file is replaced only with
``overwrite=True``, and only a GeoTIFF of this library (:func:`check_replaceable`: its
TIFF ``Software`` tag; other files of a destination folder are never touched); a
destination that is, contains or lies inside an input is refused; and each file is
written under a hidden temporary name in its own folder and renamed once every file is
complete, all or none, so a failure leaves nothing half-written and no mix of old and new
(:func:`to_cogs`: of several variables, ``decloud`` and ``decloud_std``, renamed together).
A killed write leaves its hidden files; the next write of the same files removes those
of a process of this machine that no longer runs (:func:`_remove_stale`), and the next
upload the temporary folders of such a process (:func:`_remove_stale_uploads`).
Each file records what it was written from (its data's identity and the options) in its
``ImageDescription`` tag, so that :func:`written_from` tells whether it is what a call
would write again.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import dask
import numpy as np
import xarray as xr
from dask.base import is_dask_collection
from dask.utils import key_split

from .exceptions import (
    SchemaError,
    StoreError,
    UnsafePathError,
    UsageError,
    argument,
    check_integer,
)
from .files import (
    OWNER,
    hidden_copies,
    hidden_name,
    hidden_path,
    left_behind,
    no_longer_runs,
    owner,
    remove_stale,
)
from .href import is_remote, local_path, redacted
from .identity import data_fingerprint, sources
from .location import Target, check_apart, check_bucket, reaching, reason, write_errors
from .options import OPTIONS
from .progress import compute_with_progress
from .schema import check_patch_ids, is_collection, repeated

log = logging.getLogger(__name__)

#: file suffix of the GeoTIFFs a collection is written to
SUFFIX = ".tif"


def _array(obj: xr.Dataset | xr.DataArray, variable: str | None) -> xr.DataArray:
    """The DataArray to write: ``obj`` itself, or its ``variable`` (default ``decloud``),
    its coordinates in memory (:func:`_coordinates_loaded`)."""
    if isinstance(obj, xr.DataArray):
        return _coordinates_loaded(obj)
    name = variable or "decloud"
    if name not in obj.data_vars:
        raise UsageError(
            f"{argument('variable', name)}: not a variable of the dataset "
            f"(it has {sorted(map(str, obj.data_vars))})"
        )
    return _coordinates_loaded(obj[name])


def _coordinates_loaded(array: xr.DataArray) -> xr.DataArray:
    """``array`` with its Dask-backed coordinates (a collection's ``y``, ``x`` and
    ``epsg`` after ``xr.open_zarr`` or ``.chunk()``) computed together, in one graph:
    the record of what a file is written from, the patches' names and their grids each
    read them, which computed each coordinate again each time."""
    lazy = [name for name, coord in array.coords.items() if coord.chunks is not None]
    if not lazy:
        return array
    loaded = dask.compute(*(array.coords[name].variable for name in lazy))
    return array.assign_coords(dict(zip(lazy, loaded, strict=True)))


def _with_nodata(array: xr.DataArray) -> xr.DataArray:
    """``array`` with its nodata in ``encoding`` (the rioxarray way): the one it
    declares (rioxarray's, else this library's ``attrs["nodata"]``), else NaN for
    floats; integers without one get none. An encoded nodata is written as
    ``rio.to_raster`` writes it: NaN filled with it, and the dtype of the encoding (a
    masked read of uint16 is uint16 again), see :func:`_encoded`. :class:`UsageError`
    for a nodata that does not fit the array's dtype."""
    try:  # rioxarray casts a declared nodata to the dtype as it reads it
        nodata = array.rio.encoded_nodata
        if nodata is not None:
            return _encoded(array, nodata).rio.write_nodata(nodata, encoded=True)
        for fallback in (array.rio.nodata, array.attrs.get("nodata")):
            nodata = fallback if nodata is None else nodata
        if nodata is None and array.dtype.kind == "f":
            nodata = np.nan
        return array if nodata is None else array.rio.write_nodata(nodata, encoded=True)
    except (OverflowError, ValueError) as err:
        raise UsageError(
            f"{array.name or 'array'}: its nodata is no value of its dtype {array.dtype} ({err})"
        ) from None


def _encoded(array: xr.DataArray, nodata: float) -> xr.DataArray:
    """``array`` (decoded: nodata as NaN) with NaN as ``nodata`` again, in the integer
    dtype of its encoding (``encoding["dtype"]``) where it has one and no scale or
    offset: the pixels carry the nodata the file declares, and GDAL masks them.
    Lazy; a block with a value that dtype cannot hold is a :class:`UsageError`."""
    if array.dtype.kind != "f" or np.isnan(nodata):
        return array
    filled = array.fillna(nodata)
    dtype = np.dtype(array.encoding.get("dtype", array.dtype))
    scaled = (array.encoding.get("scale_factor", 1), array.encoding.get("add_offset", 0))
    if dtype.kind not in "iu" or scaled != (1, 0):
        return filled
    cast = partial(_exactly, dtype=dtype, name=str(array.name or "array"))
    data = filled.data
    data = data.map_blocks(cast, dtype=dtype) if is_dask_collection(data) else cast(data)
    return filled.copy(data=data)


def _exactly(block: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """``block`` as ``dtype``, or :class:`UsageError` for a value it changes."""
    cast = block.astype(dtype)
    if not np.array_equal(cast, block):
        raise UsageError(
            f"{name}: has values its encoding's dtype {dtype} cannot hold; drop "
            f'encoding["dtype"] to write them as {block.dtype}'
        )
    return cast


#: TIFF codecs that keep every value (no ``none``: odc-geo cannot write a COG uncompressed)
LOSSLESS = ("deflate", "zstd", "lzw", "lzma", "packbits")
#: lossy codecs, and the band counts they take, for 8-bit data only
LOSSY_8BIT = {"jpeg": (1, 3), "webp": (3, 4)}


def _writable(array: xr.DataArray, compress: str, overview_resampling: str) -> xr.DataArray:
    """``array`` as a COG takes it, or :class:`UsageError` before any work: a CRS; its
    bands as a ``band`` dim (:func:`_with_band_dim`); bool as uint8 (TIFF has no
    one-byte bool: it would be written as bits, and read back scrambled); no
    ``long_name`` but one name a band (see :func:`_band_names_kept`); a ``compress``
    that keeps its values; an ``overview_resampling`` GDAL knows."""
    from odc.geo.warp import resampling_s2rio

    if not is_collection(array) and array.rio.crs is None:
        raise UsageError(f"{array.name or 'array'}: has no CRS; set one with rio.write_crs")
    array = _with_band_dim(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    array = _band_names_kept(array)
    codec = str(compress).lower()
    bands = array.sizes.get("band", 1)
    if codec not in LOSSLESS and not (
        array.dtype == np.uint8 and bands in LOSSY_8BIT.get(codec, ())
    ):
        what = (
            f"not for {bands} band(s) of {array.dtype}"
            if codec in LOSSY_8BIT
            else "not a compression to_cog writes"
        )
        raise UsageError(
            f"{argument('compress', compress)}: {what}; use one of {', '.join(LOSSLESS)} "
            "(jpeg: 1 or 3 bands of uint8, webp: 3 or 4; none: odc-geo writes no "
            "uncompressed COG)"
        )
    try:
        resampling_s2rio(overview_resampling)
    except ValueError:
        raise UsageError(
            f"{argument('overview_resampling', overview_resampling)}: not a resampling "
            "method (nearest, average, bilinear, mode...)"
        ) from None
    return array


def _with_band_dim(array: xr.DataArray) -> xr.DataArray:
    """``array`` with its bands as the ``band`` dim odc-geo writes as bands (and names
    from a string coordinate): a scalar ``band`` coordinate becomes one band, and another
    dim than ``patch``, ``y`` and ``x`` is the bands (a scene's ``sar``: ``polarization``,
    VV and VH). odc-geo took such a dim for bands but named them from ``long_name``.

    Raises
    ------
    UsageError
        No ``y`` or ``x`` dim, or more than one other dim: not an image of bands.
    """
    bands = [dim for dim in array.dims if dim not in ("patch", "y", "x")]
    if "band" in array.coords and "band" not in array.dims:
        bands.append("band")
    spatial = {"y", "x"} <= set(array.dims)
    if not spatial or len(bands) > 1:
        what = f"bands along {' and '.join(map(str, bands))}" if spatial else "not both y and x"
        raise UsageError(
            f"{array.name or 'array'}: dims {array.dims}, {what}; to_cog writes "
            "([patch,] [band,] y, x), the bands along one dim of any name (select or "
            "stack the others)"
        )
    if "band" in array.coords and "band" not in array.dims:
        return array.expand_dims("band", axis=array.dims.index("y"))
    return array.rename({bands[0]: "band"}) if bands and bands[0] != "band" else array


def _band_names_kept(array: xr.DataArray) -> xr.DataArray:
    """``array`` without a ``long_name`` that is not one name a band (rioxarray reads a
    GeoTIFF's name tag into a string ``long_name``, which odc-geo would take for the
    names of the bands, and refuse for another count of bands). Band descriptions come
    from a string ``band`` coordinate, else from such a ``long_name``."""
    long_name = array.attrs.get("long_name")
    if long_name is None:
        return array
    names = np.atleast_1d(np.asarray(long_name, dtype=object))
    if names.ndim == 1 and names.size == array.sizes.get("band", 1):
        return array
    kept = array.copy(deep=False)
    kept.attrs = {key: value for key, value in array.attrs.items() if key != "long_name"}
    return kept


def _patch_scene(collection: xr.DataArray, index: int) -> xr.DataArray:
    """Patch ``index`` of a collection as a scene: its own grid and CRS (``epsg``).

    Raises
    ------
    SchemaError
        Its ``epsg`` is no EPSG code: -1, which earlier versions recorded for a CRS
        without one (a store written then has lost that patch's georeference).
    """
    patch = collection.isel(patch=index)
    crs = int(patch["epsg"])
    if crs <= 0:
        raise SchemaError(
            f"patch {patch['patch'].item()}: epsg {crs} is no EPSG code, so its CRS is "
            "unknown; a collection records each patch's CRS as an EPSG code (open the "
            "patch's files again, reprojected to a CRS that has one)"
        )
    patch = patch.drop_vars([name for name in patch.coords if patch[name].ndim == 0])
    # its y and x (rows of the collection's 2-D coordinates) indexed, as a scene's: not
    # indexed, the write's chunking made them lazy, and odc-geo computed them twice
    for dim in ("y", "x"):
        if dim in patch.coords and dim not in patch.xindexes:
            patch = patch.set_xindex(dim)
    return patch.rio.write_crs(crs)


def patch_file_names(collection: xr.Dataset | xr.DataArray) -> list[str]:
    """The file name of each patch of a collection: its ``patch`` id and ``.tif``.

    Raises
    ------
    SchemaError
        Repeated patch ids.
    UnsafePathError
        A patch id that is not a plain file name (a path separator, ``..``).
    StoreError
        Patch ids that differ only by case: one file on macOS and Windows.
    """
    check_patch_ids(collection)
    names = [f"{patch}{SUFFIX}" for patch in np.asarray(collection["patch"].values).tolist()]
    for name in names:
        if Path(name).name != name or name.startswith("."):
            raise UnsafePathError(f"patch {name[: -len(SUFFIX)]!r}: not a plain file name")
    folded = repeated(name.casefold() for name in names)
    if folded:
        clash = [name for name in names if name.casefold() in folded]
        raise StoreError(
            f"{', '.join(clash)}: file names that differ only by case are one file on "
            "macOS and Windows; patch ids must differ by more than case"
        )
    return names


def std_cog_path(path: str, *, collection: bool = False) -> str:
    """Where ``m3rcr decloud --uncertainty --cog PATH`` writes ``decloud_std``: ``NAME_std.tif``
    beside a scene's ``NAME.tif``; for a collection, the folder ``PATH_std`` beside the
    folder ``PATH``, with the same file names (one kind of raster in each folder, so that
    ``gdalbuildvrt`` or a glob over ``PATH/*.tif`` never mixes the two).

    Raises
    ------
    UsageError
        ``PATH`` is a bucket root (``s3://bucket/``, any fsspec protocol) or a filesystem
        root (``/``, a drive): nothing is beside it (``s3://bucket_std`` would be another
        bucket, bucket names being global).

    Examples
    --------
    >>> std_cog_path("out/decloud.tif")
    'out/decloud_std.tif'
    >>> std_cog_path("out/cogs/", collection=True)
    'out/cogs_std'
    >>> std_cog_path("s3://bucket/cogs/", collection=True)
    's3://bucket/cogs_std'
    >>> std_cog_path("s3://bucket/", collection=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.UsageError: cog='s3://bucket/': a bucket root has no folder beside ...
    """
    remote = is_remote(path)
    if remote:  # a URL keeps its scheme's "//": only its last name changes
        root, suffix = path.rstrip("/"), ""
        if not collection:
            root, suffix = posixpath.splitext(root)
        named = bool(urlsplit(path).path.strip("/"))  # the netloc is the bucket (or host)
    else:
        out = Path(path)
        out = out if out.name not in ("", "..") else out.resolve()  # "." or "..": name the folder
        named = bool(out.name)  # "/" or a drive resolves to no name
    if not named:
        what, inside = ("a bucket root", "the bucket") if remote else ("the filesystem root", "it")
        wanted = f"a folder inside {inside}" if collection else f"a GeoTIFF file in {inside}"
        raise UsageError(
            f"{argument('cog', path)}: {what} has no folder beside it for decloud_std; "
            f"give {wanted}"
        )
    if remote:
        return f"{root}_std{suffix}"
    return str(out.with_name(f"{out.name}_std" if collection else f"{out.stem}_std{out.suffix}"))


def _files(path: Path, names: Sequence[str] | None) -> list[Path]:
    return [path] if names is None else [path / name for name in names]


def check_cog_destination(
    path: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    inputs: Sequence[Any] = (),
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> list[Any]:
    """Refuse a destination :func:`to_cog` would not write, before any work is done.

    Parameters
    ----------
    path
        A GeoTIFF file (a scene), or a folder (a collection: give ``names``).
    names
        File names in the folder (:func:`patch_file_names`); None for a scene.
    inputs
        Paths or URLs of the inputs; a destination that overlaps one is refused.
    overwrite
        Allow replacing existing files of those names that this library wrote.
    storage_options
        fsspec options for a URL destination (credentials, endpoint).

    Returns
    -------
    list of Path or str
        The files to write: paths, or URLs for object storage.

    Raises
    ------
    StoreError
        A folder (or bucket) that does not exist or is not writable, a file where a
        folder is needed or the reverse, an existing file (without ``overwrite``; with
        it, one of other software: :func:`check_replaceable`), or an overlap with an
        input.
    """
    if names is None and str(path).endswith(("/", os.sep)):  # "cogs/" was written as a file
        raise StoreError(
            f"{path}: a scene is written to one GeoTIFF file, not a folder (a folder is "
            "for a collection, one GeoTIFF a patch)"
        )
    check_apart(path, inputs)
    target = Target.of(path, storage_options)
    if not target.local:
        return _check_remote(target, names, overwrite)
    path = local_path(path)  # a file:// URL as the path it names
    folder = path if names is not None else path.parent
    if names is not None and path.exists() and not path.is_dir():
        raise StoreError(f"{path}: is a file; a collection is written to a folder")
    parent = folder.parent if names is not None and not folder.exists() else folder
    if not parent.is_dir():
        raise StoreError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: folder {parent} is not writable")
    files = _files(path, names)
    for file in files:
        if file.is_dir():
            raise StoreError(f"{file}: is a folder, not a GeoTIFF")
        if file.exists() or file.is_symlink():
            check_replaceable(file, overwrite=overwrite)
    return files


def _check_remote(target: Target, names: Sequence[str] | None, overwrite: bool) -> list[str]:
    """:func:`check_cog_destination` on object storage: the objects' URLs."""
    fs = target.fs
    fs.invalidate_cache()  # s3fs answers from cached listings
    check_bucket(target)
    keys = [target.path] if names is None else [target.key(name) for name in names]
    for key in keys:
        with reaching(target, "the destination"):  # the listing the upload needs
            folder = fs.isdir(key)
        if folder:
            raise StoreError(f"{fs.unstrip_protocol(key)}: is a folder, not a GeoTIFF")
        if fs.exists(key):
            check_replaceable(fs.unstrip_protocol(key), overwrite=overwrite, fs=fs)
    return [fs.unstrip_protocol(key) for key in keys]


def check_replaceable(file: str | os.PathLike, *, overwrite: bool, fs: Any = None) -> None:
    """Refuse to replace the existing ``file`` unless ``overwrite`` and it is a GeoTIFF
    of this library (its TIFF ``Software`` tag names :data:`SOFTWARE`): a user's file
    of the same name is never replaced, whatever its content.

    Raises
    ------
    StoreError
        ``file`` without ``overwrite``; else a file of other software, one that is no
        TIFF, or a symbolic link.
    """
    if not overwrite:
        raise StoreError(f"{file}: exists; pass {argument('overwrite', True)} to replace it")
    only_ours = (
        f"{argument('overwrite', True)} replaces only GeoTIFFs of m3rcr_xr: remove it "
        "yourself or choose another name"
    )
    if fs is None and os.path.islink(file):
        raise StoreError(f"{file}: is a symbolic link; {only_ours}")
    try:
        with open(file, "rb") if fs is None else fs.open(file, "rb") as handle:
            software = _tags(handle).get(SOFTWARE_TAG, "")
    except OSError as err:
        raise StoreError(f"{file}: cannot be read to check who wrote it ({err})") from None
    if not software.startswith(SOFTWARE):
        raise StoreError(
            f"{file}: was not written by m3rcr_xr (TIFF Software tag: {software or 'none'}); "
            f"{only_ours}"
        )


#: the start of the TIFF ``Software`` tag of each file :func:`to_cog` writes
SOFTWARE = "m3rcr_xr"


def _software_tag() -> str:
    from . import __version__

    return f"{SOFTWARE} {__version__}"


#: the TIFF tags of a file :func:`to_cog` wrote: who wrote it (:func:`check_replaceable`),
#: and what from (``ImageDescription``: :func:`written_from`)
SOFTWARE_TAG, SOURCE_TAG = 305, 270


def _tags(handle: Any) -> dict[int, str]:
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


def _records(
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
    shaping = [_software_tag(), data, str(compress).lower(), level, blocksize, overview_resampling]
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
    array = _array(obj, variable)
    names = patch_file_names(array) if is_collection(array) else None
    target = Target.of(path, storage_options)
    keys = [target.path] if names is None else [target.key(name) for name in names]
    records = _records(array, names, compress, level, blocksize, overview_resampling, identities)
    for key, record in zip(keys, records, strict=True):
        try:
            with target.fs.open(key, "rb") as handle:
                tags = _tags(handle)
        except OSError:  # missing, a folder, out of reach
            return False
        if not tags.get(SOFTWARE_TAG, "").startswith(SOFTWARE) or tags.get(SOURCE_TAG) != record:
            return False
    return True


@contextlib.contextmanager
def _uploaded(fs: Any, plans: Sequence[_Plan], overwrite: bool) -> Iterator[list[Path]]:
    """A temporary local folder for each plan (a collection's files and its ``_std``
    folder's have the same names); on success the files written there (the plan's
    ``names``) are uploaded to the plan's URLs on ``fs``, each in one request or
    multipart upload, which S3 makes visible only once complete. All or none, as
    :func:`_commit` locally: an existing object is first copied aside, under a hidden
    name beside it; if an upload fails, the copies are put back and the objects that did
    not exist are removed; once all are uploaded, the copies are removed. Objects that
    exist by then are checked again (:func:`check_replaceable`) before any upload.

    The folder (in ``TMPDIR``, :data:`UPLOADS`) is named for this process and machine:
    those a killed upload left, full-size GeoTIFFs, are removed first
    (:func:`_remove_stale_uploads`)."""
    _remove_stale_uploads(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{UPLOADS}{owner()}-") as temporary:
        folders = [Path(temporary, str(index)) for index in range(len(plans))]
        yield folders
        local = {
            url: folder / name
            for plan, folder in zip(plans, folders, strict=True)
            for url, name in zip(plan.files, plan.names, strict=True)
        }
        urls = list(local)
        fs.invalidate_cache()
        existing = [url for url in urls if fs.exists(url)]
        for url in existing:
            check_replaceable(url, overwrite=overwrite, fs=fs)
        done: list[tuple[str, str | None]] = []
        try:
            for url in urls:
                previous = _beside(url, "previous") if url in existing else None
                if previous is not None:
                    fs.cp_file(url, previous)  # server-side; not copy: it globs
                done.append((url, previous))
                fs.put_file(str(local[url]), url)
        except BaseException as err:
            left = _put_back(fs, done)
            if left:  # the upload's error stays the one raised; these say what to repair
                note = "not rolled back: " + "; ".join(left)
                log.error("%s", note)
                err.add_note(note)
            raise
        for url, previous in done:
            if previous is not None:
                fs.rm_file(previous)
                _warn_of_sidecar(url, fs.exists)


#: the suffix of GDAL's sidecar of a raster (``OUT.tif.aux.xml``): what GDAL or QGIS
#: computed of it (statistics, histograms) or was told (nodata, a colour table)
SIDECAR = ".aux.xml"


def _warn_of_sidecar(file: str, exists: Callable[[str], bool]) -> None:
    """Log a warning for GDAL's sidecar of ``file``, just replaced, where ``exists`` finds
    one: it describes the file replaced, and GDAL (QGIS) reads it with the new one. It
    stays: this library did not write it."""
    sidecar = f"{file}{SIDECAR}"
    if exists(sidecar):
        log.warning(
            "%s: a GDAL sidecar of %s, which was just replaced: it describes the replaced "
            "file (statistics, histograms, nodata), and GDAL and QGIS read it with the new "
            "one; remove it (m3rcr_xr did not write it, and leaves it as it is)",
            redacted(sidecar),
            redacted(file),
        )


def _put_back(fs: Any, done: Sequence[tuple[str, str | None]]) -> list[str]:
    """Undo the uploads ``done`` by :func:`_uploaded` (each URL and its copy aside, None
    for an object that did not exist), the last first: each copy put back and removed,
    each new object removed. One that fails (the network that broke the upload is
    often still down) does not stop the others; returns what is left, and where."""
    left: list[str] = []
    for url, previous in reversed(done):
        try:
            if previous is None:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(url)
            else:
                fs.cp_file(previous, url)
        except Exception as err:
            what = f"not put back from {previous}" if previous else "not removed"
            left.append(f"{url}: {what} ({reason(err)})")
            continue
        if previous is None:
            continue
        try:
            fs.rm_file(previous)
        except Exception as err:
            left.append(f"{url}: put back, its copy {previous} not removed ({reason(err)})")
    return left


#: the start of the name of :func:`_uploaded`'s temporary folders, in ``TMPDIR``:
#: ``.m3rcr-cog-<machine>-<pid>-<random>`` (:func:`m3rcr_xr.files.owner`)
UPLOADS = ".m3rcr-cog-"
_UPLOAD = re.compile(rf"{re.escape(UPLOADS)}{OWNER}-.+", re.DOTALL)


def _remove_stale_uploads(root: Path) -> None:
    """Remove the temporary folders of :func:`_uploaded` in ``root`` (``TMPDIR``) that a
    killed upload left: of this user, named for a process of this machine that no
    longer runs (:func:`m3rcr_xr.files.no_longer_runs`). Another machine's (a
    ``TMPDIR`` shared), or a live process's (this one's other uploads too), stay; so do
    those of earlier versions (``.m3rcr-cog-<random>``: no process to tell by)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        found = _UPLOAD.fullmatch(entry.name)
        if found is None or not no_longer_runs(found["machine"], int(found["pid"])):
            continue
        with contextlib.suppress(OSError):  # removed meanwhile by another upload's cleanup
            ours = entry.stat(follow_symlinks=False).st_uid == os.getuid()
            if ours and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)


def _beside(url: str, kind: str) -> str:
    """:func:`m3rcr_xr.files.hidden_name` of the object ``url``, in its folder."""
    folder, name = posixpath.split(url)
    return f"{folder}/{hidden_name(name, kind)}"


def _partial(file: Path) -> Path:
    return hidden_path(file, "partial")


#: the suffix of odc-geo's folder of the parts of a file ``F``: ``.F.parts``
_PARTS = ".parts"


def _remove_partial(partial: Path) -> None:
    """Remove a partial file and odc-geo's folder of its parts (``.PARTIAL.parts``),
    those there: odc-geo writes the parts, then renames the first to the partial file
    and appends the others to it."""
    partial.unlink(missing_ok=True)
    parts = partial.with_name(f".{partial.name}{_PARTS}")
    if parts.is_dir() and not parts.is_symlink():
        for part in parts.iterdir():
            part.unlink(missing_ok=True)
        parts.rmdir()


@contextlib.contextmanager
def _cleaned(partials: Sequence[Path], folders: Sequence[Path]) -> Iterator[None]:
    """Remove the partial files (and odc-geo's part folders) and the folders this call
    made, when the block fails."""
    created = [folder for folder in dict.fromkeys(folders) if not folder.exists()]
    try:
        yield
    except BaseException:
        for partial in partials:
            _remove_partial(partial)
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _remove_stale(folder: Path, names: Collection[str]) -> None:
    """Remove what a killed write of the files ``names`` of ``folder`` left (its
    :func:`_cleaned` never ran): its hidden copies (:func:`m3rcr_xr.files.remove_stale`:
    ``.NAME.<machine>-<pid>.partial`` and ``.previous``, those of a process of this
    machine that no longer runs, or of this one) and odc-geo's folders of the parts of
    such a partial file (``..NAME.<machine>-<pid>.partial.parts``)."""
    remove_stale(folder, names)
    for parts in hidden_copies(folder, names, hidden_of=_parts_of):
        if parts.kind == "partial" and left_behind(parts):
            with contextlib.suppress(FileNotFoundError):  # another rerun removed it first
                _remove_partial(parts.path.with_name(parts.path.name[1 : -len(_PARTS)]))


def _parts_of(entry: os.DirEntry[str]) -> str | None:
    """The partial file whose parts the folder ``entry`` holds (``.PARTIAL.parts``), or
    None for another entry."""
    parts = entry.name.startswith("..") and entry.name.endswith(_PARTS)
    return entry.name[1 : -len(_PARTS)] if parts and entry.is_dir(follow_symlinks=False) else None


#: compressed bytes a part of odc-geo's writer gathers before it goes to disk
SPILL_BYTES = 4 * 2**20
#: part numbers odc-geo's file writer allows, and at most how many each task may use
MAX_PARTS, WRITES_PER_TASK = 10_000, 4


def _cog_graph(array: xr.DataArray, dst: Path, compress: str, size: int, **kwargs: Any) -> Any:
    """odc-geo's graph writing ``array`` to ``dst`` (a Dask ``Delayed``).

    Bands are interleaved by pixel (``(y, x, band)``, GDAL's COG default): one tile
    holds every band, so each block of the scene is compressed once and let go. Band
    by band (``(band, y, x)``), odc-geo compresses each band in its own stream, and
    every block, which holds all bands, stayed in memory until the last band's stream
    reached it: the whole raw scene, at worst. And odc-geo gives each compression task
    a single part number, so no task could write on its own and compressed tiles
    gathered in memory (20 MiB, then a whole tree of merges); several part numbers a
    task and a smaller spill let each write as it goes, within the writer's 10 000 parts.
    """
    from odc.geo.cog import save_cog_with_dask

    array = _two_pixels_at_least(array)
    array = array.chunk({"y": size, "x": size, **({"band": -1} if "band" in array.dims else {})})
    if "band" in array.dims:
        # one band stays a plane: tifffile refuses a single sample interleaved by pixel
        many = array.sizes["band"] > 1
        array = array.transpose(*(("y", "x", "band") if many else ("band", "y", "x")))
    # no band statistics: odc-geo computes them from an overview level in a graph of
    # their own, which ran every block of the source twice (a lazy decloud's network too)
    blocksize = _blocksizes((array.sizes["y"], array.sizes["x"]), size)
    kwargs = {"compression": compress, "blocksize": blocksize, "stats": False, **kwargs}
    kwargs["software"] = _software_tag()  # what overwrite=True checks (check_replaceable)
    if str(compress).lower() not in LOSSY_8BIT:
        # bands, not colours: odc-geo tags 3 or 4 samples as RGB(A), and GDAL then takes
        # the fourth (NIR) for an alpha mask and the first (blue) for red
        kwargs["photometric"] = "minisblack"
    tasks = sum(bag.npartitions for bag in save_cog_with_dask(array, "", **kwargs)["tiles"])
    writes = max(1, min(WRITES_PER_TASK, (MAX_PARTS - 1) // max(tasks, 1)))
    graph = save_cog_with_dask(array, dst, writes_per_chunk=writes, spill_sz=SPILL_BYTES, **kwargs)
    return _seeds_fused(graph)


def _two_pixels_at_least(array: xr.DataArray) -> xr.DataArray:
    """``array`` with a side of one pixel grown by a pixel of its nodata (0 for
    integers without one) on the bottom or right, as odc-geo grows the image: odc-geo
    computes the grid of a level below its last, which has a side of 0 pixels there."""
    short = [dim for dim in ("y", "x") if array.sizes[dim] == 1]
    if not short:
        return array
    transform = array.rio.transform()
    origin_step = {"x": (transform.c, transform.a), "y": (transform.f, transform.e)}
    nodata = array.rio.encoded_nodata
    grown = array.pad({dim: (0, 1) for dim in short}, constant_values=nodata or 0)
    centres = np.arange(2) + 0.5
    grown = grown.assign_coords(
        {dim: origin_step[dim][0] + origin_step[dim][1] * centres for dim in short}
    ).assign_attrs(array.attrs)
    return grown if nodata is None else grown.rio.write_nodata(nodata, encoded=True)


def _blocksizes(shape: tuple[int, int], size: int) -> list[int]:
    """odc-geo's ``blocksize``: ``size`` at each level, and overviews down to one
    block, as odc-geo makes them, but never down to a side of one pixel.

    odc-geo makes as many levels as the last block size of the list needs to fit the
    image, and computes the grid of the level below the last one too: a side of one
    pixel in the last level is a side of 0 there, and a ``ZeroDivisionError``. So the
    levels stop while every side keeps 2 pixels (odc-geo rounds the sides up to a
    multiple of ``2**levels``), and the list ends with a block size (never a level's
    block) that gives odc-geo that many levels.
    """
    levels = 0
    while size < max(shape) >> levels:  # odc-geo's count: halve until one block
        levels += 1
    levels = min(levels, (min(shape) - 1).bit_length() - 1)
    last = -(-max(max(shape) >> levels, 1) // 16) * 16  # a multiple of 16 fitting it
    return [size] * (levels + 1) + [last]


def _seeds_fused(graph: Any) -> Any:
    """``graph`` (a ``Delayed``) with each seed of odc-geo's writer copied, and fused
    into the task that appends to it.

    The writer starts each part of the file from a seed (an empty ``MPUChunk``, a root
    task), which joins the graph where a batch of compressed tiles is appended to it:
    ``mpu.append`` tasks. Dask's ordering ran these roots, and so the appends, late: at
    8192x8192 (four float32 bands, 512-pixel blocks) 14 batches of four compressed
    tiles, 196 MiB, waited for theirs. And the seed is a value held by the graph, which
    the append grows in place: the tiles a part did not write in its own task (a batch
    under ``SPILL_BYTES``, an overview level of fewer than 20 tiles, which odc-geo does
    not batch) stayed referenced until the whole write was done. Fused, a batch is
    appended once it is compressed; copied, what the append holds is let go with it.
    """
    from dask._task_spec import Task, convert_legacy_graph
    from dask.core import reverse_dict
    from dask.delayed import Delayed

    dsk = convert_legacy_graph(dict(graph.__dask_graph__()))
    dependents = reverse_dict({key: task.dependencies for key, task in dsk.items()})
    for root in [key for key, task in dsk.items() if not task.dependencies]:
        users = list(dependents[root])
        if len(users) == 1 and key_split(users[0]).startswith("mpu.append"):
            seed = Task(root, copy.deepcopy, dsk.pop(root))
            dsk[users[0]] = Task.fuse(seed, dsk[users[0]], key=users[0])
    return Delayed(graph.key, dsk)


def to_cog(
    obj: xr.DataArray | xr.Dataset,
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    overwrite: bool = False,
    compress: str = "deflate",
    level: int | None = None,
    blocksize: int = 512,
    overview_resampling: str = "nearest",
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
    identities: dict[str, tuple[str, bool]] | None = None,
) -> list[Any]:
    """Write a scene (or each patch of a collection) to Cloud-Optimised GeoTIFF.

    Streams a lazy array through Dask (odc-geo's ``save_cog_with_dask``): blocks and
    overview blocks are computed and compressed in parallel tasks, never the whole
    raw scene at once. odc-geo extends the image on its right and bottom edges to a
    multiple of ``2 ** overview levels`` pixels (fewer than ``blocksize`` at most; none
    for a scene within one block), with the nodata value, so that each overview halves
    it exactly. Bands are tagged as bands (``MINISBLACK``), not as colours: GDAL would
    take a fourth band for alpha. Overviews go down to one block, but stop while every
    side keeps 2 pixels (a side of one pixel is grown to 2 with nodata). The bands are
    the ``band`` dim, or the one dim other than ``patch``, ``y`` and ``x`` (``sar``:
    ``polarization``). Band descriptions come from that dim's string coordinate (VV,
    VH; else from a ``long_name`` of one name a band; another ``long_name``, such as
    the name tag rioxarray reads, is left out), nodata from the array
    (``rio.encoded_nodata`` or ``rio.nodata``; NaN for floats that declare none), the
    georeference from its CRS and coordinates. An
    encoded nodata is written as ``rio.to_raster`` writes it: a masked read (NaN for
    nodata, ``encoding["dtype"]`` uint16) is written with NaN as its encoded nodata, in
    the dtype of its encoding. Several variables of a Dataset that go together
    (``decloud`` and ``decloud_std``) are replaced all or none by :func:`to_cogs`.

    Parameters
    ----------
    obj
        A DataArray ``([patch,] [band,] y, x)`` with a CRS, its bands along ``band`` or
        another dim (``polarization``), or a Dataset (then ``variable`` is written).
    path
        A ``.tif`` file for a scene; a folder for a collection (one
        ``<patch id>.tif`` each). A path or an fsspec URL (``s3://bucket/key.tif``):
        there each file is written to a temporary local folder, then uploaded.
    variable
        The variable of a Dataset to write; default ``"decloud"``.
    overwrite
        Replace existing files of the same names that this library wrote (their TIFF
        ``Software`` tag starts with ``m3rcr_xr``); a file of other software is refused
        even then, and nothing else is ever touched: GDAL's sidecar of a file replaced
        (``OUT.tif.aux.xml``), which describes that file, stays, and a warning names it.
        Each file records what it was written from in its TIFF ``ImageDescription``
        (``m3rcr_xr source`` and a digest of the data's identity,
        :func:`m3rcr_xr.identity.data_fingerprint`: a store's fingerprint, a lazy
        graph's inputs; of the options that shape the file; of this library's version;
        and of a patch's file name): :func:`written_from` tells whether an existing file
        holds what a call would write (``m3rcr decloud --cog`` run again keeps such a
        file).
    compress
        TIFF compression, as rioxarray's ``to_raster`` names it: ``"deflate"``,
        ``"zstd"``, ``"lzw"``, ``"lzma"``, ``"packbits"`` (``"jpeg"``, ``"webp"``:
        8-bit data only; not ``"none"``: odc-geo writes no uncompressed COG). A bool
        array (a cloud mask) is written as uint8 0/1.
    level
        Compression level; default the codec's.
    blocksize
        Side of the square blocks of the image and its overviews (a multiple of 16).
    overview_resampling
        How overviews are made: ``"nearest"``, ``"average"``...
    progress
        Show a progress bar; default: the ``progress`` option.
    storage_options
        fsspec options for a URL ``path`` (credentials, endpoint), as for
        :func:`m3rcr_xr.to_zarr`.
    identities
        The identities of ``obj``'s inputs, as
        ``source_identities(sources(obj))`` (:mod:`m3rcr_xr.identity`) gives them, for
        the record: taken once by a caller that writes (or checks, with
        :func:`written_from`) several variables of one store, where each call would
        list the store again. Default: reached here.

    Returns
    -------
    list of Path or str
        The files written: paths, or URLs on object storage.

    Raises
    ------
    StoreError
        Before any work: see :func:`check_cog_destination`; while writing: a full or
        read-only file system (nothing is left behind).
    UsageError
        Before any work: ``blocksize`` not a positive multiple of 16; ``variable`` not in
        the Dataset; no CRS; dims other than ``([patch,] [band,] y, x)`` (bands along
        two dims); a ``compress`` that would change the values (a lossy codec
        other than for 8-bit data: :data:`LOSSLESS`, :data:`LOSSY_8BIT`); an unknown
        ``overview_resampling``; a nodata that is no value of the dtype. While writing
        (nothing is left behind): values of a masked array that the integer dtype of
        its encoding cannot hold (drop ``encoding["dtype"]`` to write floats).

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((1024, 1024))
    >>> m3rcr_xr.to_cog(scene["cloudy"], "cloudy.tif")  # doctest: +SKIP
    [PosixPath('cloudy.tif')]
    """
    (files,) = _write_cogs(
        [(obj, variable, path)],
        overwrite=overwrite,
        shape=_Shape(compress, level, blocksize, overview_resampling),
        progress=progress,
        storage_options=storage_options,
        identities=identities,
    )
    return files


def to_cogs(
    ds: xr.Dataset,
    paths: Mapping[str, str | os.PathLike],
    *,
    overwrite: bool = False,
    compress: str = "deflate",
    level: int | None = None,
    blocksize: int = 512,
    overview_resampling: str = "nearest",
    progress: bool | None = None,
    storage_options: dict[str, Any] | None = None,
    identities: dict[str, tuple[str, bool]] | None = None,
) -> dict[str, list[Any]]:
    """Write several variables of ``ds`` to GeoTIFFs, each as :func:`to_cog` writes it,
    and replace them all or none: ``decloud`` and its ``decloud_std`` are never left
    from two different writes (``m3rcr decloud --uncertainty --cog`` writes them so).

    Every destination is checked before any work; the files are written one variable
    after the other under hidden partial names, and renamed together once all are
    complete (on object storage: uploaded together, see :func:`to_cog`). A failure, or
    Ctrl-C, leaves the files that were there as they were.

    Parameters
    ----------
    ds
        The Dataset of the variables.
    paths
        Each variable to write, and where (a file for a scene, a folder for a
        collection, as ``path`` of :func:`to_cog`): all local, or all on one object store.
    overwrite, compress, level, blocksize, overview_resampling
        As for :func:`to_cog`, for every file.
    progress, storage_options, identities
        As for :func:`to_cog`.

    Returns
    -------
    dict
        The files written of each variable: paths, or URLs on object storage.

    Raises
    ------
    UsageError
        ``ds`` no Dataset, or paths on several file systems (or local and remote); else
        as :func:`to_cog`.
    StoreError
        Two paths that are, contain or lie inside one another; else as :func:`to_cog`.
    """
    if not isinstance(ds, xr.Dataset):
        raise UsageError(f"to_cogs writes variables of a Dataset, not a {type(ds).__name__}")
    written = _write_cogs(
        [(ds, variable, path) for variable, path in paths.items()],
        overwrite=overwrite,
        shape=_Shape(compress, level, blocksize, overview_resampling),
        progress=progress,
        storage_options=storage_options,
        identities=identities,
    )
    return dict(zip(paths, written, strict=True))


class _Shape(NamedTuple):
    """The options of :func:`to_cog` that shape a file (and its record: :func:`_records`)."""

    compress: str
    level: int | None
    blocksize: int
    overview_resampling: str


class _Plan(NamedTuple):
    """One destination of a write, checked: a scene's file or a collection's folder."""

    target: Target
    #: the files, as :func:`to_cog` returns them: paths, or URLs on object storage
    files: list[Any]
    #: their names, in their folder
    names: list[str]
    scenes: list[xr.DataArray]
    #: what each file is written from (:func:`_records`)
    records: list[str]
    #: their local folder; None on object storage (a temporary one, :func:`_uploaded`)
    folder: Path | None


def _write_cogs(
    writes: Sequence[tuple[xr.DataArray | xr.Dataset, str | None, str | os.PathLike]],
    *,
    overwrite: bool,
    shape: _Shape,
    progress: bool | None,
    storage_options: dict[str, Any] | None,
    identities: dict[str, tuple[str, bool]] | None,
) -> list[list[Any]]:
    """:func:`to_cog` of each ``(obj, variable, path)`` of ``writes``, all checked
    before any work, committed together (:func:`_commit`, :func:`_uploaded`)."""
    blocksize = check_integer("blocksize", shape.blocksize, minimum=16)
    if blocksize % 16:
        raise UsageError(f"{argument('blocksize', blocksize)}: must be a multiple of 16")
    shape = shape._replace(blocksize=blocksize)
    plans = [
        _plan(obj, variable, path, shape, overwrite, storage_options, identities)
        for obj, variable, path in writes
    ]
    _check_together(plans)
    if not plans:
        return []
    show = OPTIONS["progress"] if progress is None else progress
    target = plans[0].target
    if target.local:
        folders = [plan.folder for plan in plans if plan.folder is not None]
        _write(plans, folders, shape, show, overwrite)
    else:
        with write_errors(target), _uploaded(target.fs, plans, overwrite) as folders:
            _write(plans, folders, shape, show, overwrite)
    for plan in plans:
        log.info("wrote %d GeoTIFF(s) to %s", len(plan.files), redacted(plan.target.name))
    return [plan.files for plan in plans]


def _plan(
    obj: xr.DataArray | xr.Dataset,
    variable: str | None,
    path: str | os.PathLike,
    shape: _Shape,
    overwrite: bool,
    storage_options: dict[str, Any] | None,
    identities: dict[str, tuple[str, bool]] | None,
) -> _Plan:
    """What :func:`to_cog` writes of ``obj`` (its ``variable``) to ``path``, checked
    before any work (see its Raises)."""
    source = _array(obj, variable)
    array = _writable(source, shape.compress, shape.overview_resampling)
    collection = is_collection(array)
    names = patch_file_names(array) if collection else None
    files = check_cog_destination(
        path,
        names=names,
        inputs=sources(obj),
        overwrite=overwrite,
        storage_options=storage_options,
    )
    scenes = [_patch_scene(array, i) for i in range(len(files))] if collection else [array]
    scenes = [_with_nodata(scene) for scene in scenes]
    records = _records(source, names, *shape, identities)
    target = Target.of(path, storage_options)
    folder = None
    if target.local:
        folder = local_path(path) if collection else local_path(path).parent
    if names is None:  # a scene: its file's name
        names = [files[0].name if target.local else posixpath.basename(files[0])]
    return _Plan(target, files, names, scenes, records, folder)


def _check_together(plans: Sequence[_Plan]) -> None:
    """Refuse plans that :func:`_write_cogs` cannot commit together: destinations that
    are, contain or lie inside one another (their files would clash), or on more than
    one file system (local and object storage: no rename or upload spans both).

    Raises
    ------
    StoreError
        Overlapping destinations.
    UsageError
        Several file systems.
    """
    for index, plan in enumerate(plans):
        check_apart(
            plan.target.name,
            [other.target.name for other in plans[:index]],
            "GeoTIFF of another variable",
        )
    if len({plan.target.fs for plan in plans}) > 1:
        raise UsageError(
            f"{', '.join(redacted(plan.target.name) for plan in plans)}: GeoTIFFs written "
            "together are all local, or all on one object store"
        )


def _write(
    plans: Sequence[_Plan], folders: Sequence[Path], shape: _Shape, show: bool, overwrite: bool
) -> None:
    """Write the files of each plan in its local folder of ``folders`` under partial
    names (:func:`_write_partials`), one plan after the other, then rename them all at
    once (:func:`_commit`): a failure, or a kill, before the renames leaves every file
    there as it was. On failure nothing is left (:func:`_cleaned`)."""
    files = [
        folder / name for plan, folder in zip(plans, folders, strict=True) for name in plan.names
    ]
    partials = [_partial(file) for file in files]
    with _cleaned(partials, folders):
        for plan, folder in zip(plans, folders, strict=True):
            with write_errors(plan.target):
                _write_partials(plan, folder, shape, show)
        with write_errors(plans[0].target):
            _commit(partials, files, overwrite)


def _write_partials(plan: _Plan, folder: Path, shape: _Shape, show: bool) -> None:
    """Write each scene of ``plan`` to the partial file of its file in ``folder`` (made
    if missing), its record of what it is written from (:func:`_records`) as its
    ``ImageDescription``, once what a killed write of these files left there is removed
    (:func:`_remove_stale`)."""
    folder.mkdir(exist_ok=True)
    _remove_stale(folder, plan.names)
    graphs = [
        _cog_graph(
            scene,
            _partial(folder / name),
            shape.compress,
            shape.blocksize,
            description=record,
            level=shape.level,
            overview_resampling=shape.overview_resampling,
        )
        for scene, name, record in zip(plan.scenes, plan.names, plan.records, strict=True)
    ]
    with warnings.catch_warnings():
        # odc-geo warps overviews between bare arrays, which rasterio warns about
        warnings.filterwarnings("ignore", message="Dataset has no geotransform")
        compute_with_progress(*graphs, show=show)


def _commit(partials: Sequence[Path], files: Sequence[Path], overwrite: bool) -> None:
    """Rename each partial file over its file, all or none: an existing file is first
    set aside under a hidden name, and if a rename fails, the files already renamed are
    put back as they were (those that did not exist are removed). Each existing file is
    checked again (:func:`check_replaceable`): it may have come while the work ran;
    those there before the first rename are checked first, so that the renames follow
    one another and a kill finds them done or not, but for a moment."""
    checked = [file.exists() or file.is_symlink() for file in files]
    for file, exists in zip(files, checked, strict=True):
        if exists:
            check_replaceable(file, overwrite=overwrite)
    done: list[tuple[Path, Path | None]] = []
    try:
        for partial, file, was in zip(partials, files, checked, strict=True):
            exists = file.exists() or file.is_symlink()
            if exists and not was:  # it came meanwhile
                check_replaceable(file, overwrite=overwrite)
            previous = hidden_path(file, "previous") if exists else None
            if previous is not None:
                os.replace(file, previous)
            done.append((file, previous))
            os.replace(partial, file)
    except BaseException:
        for file, previous in reversed(done):
            if previous is None:
                file.unlink(missing_ok=True)
            elif previous.exists():
                os.replace(previous, file)
        raise
    for file, previous in done:
        if previous is not None:
            previous.unlink()
            _warn_of_sidecar(str(file), os.path.exists)
