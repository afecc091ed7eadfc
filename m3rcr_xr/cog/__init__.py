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
of a process of this machine that no longer runs
(:func:`~m3rcr_xr.cog.destinations.remove_stale_writes`), and the next upload the
temporary folders of such a process (:func:`~m3rcr_xr.cog.uploads._remove_stale_uploads`).
Each file records what it was written from (its data's identity and the options) in its
``ImageDescription`` tag, so that :func:`written_from` tells whether it is what a call
would write again.

Its modules: :mod:`~m3rcr_xr.cog.arrays` prepares an array for a GeoTIFF,
:mod:`~m3rcr_xr.cog.records` makes and reads the tags that record who wrote a file and
what from, :mod:`~m3rcr_xr.cog.destinations` checks where files go and replaces them all
or none, :mod:`~m3rcr_xr.cog.uploads` does so on object storage, and
:mod:`~m3rcr_xr.cog.graph` makes odc-geo's graph of one file.
"""

from __future__ import annotations

import logging
import os
import posixpath
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import xarray as xr

from ..exceptions import UsageError, argument, check_integer
from ..files import versions
from ..href import local_path, redacted
from ..identity import check_since_open, sources
from ..location import Target, check_apart, write_errors
from ..options import OPTIONS
from ..progress import compute_with_progress
from ..schema import is_collection
from .arrays import (
    LOSSLESS,
    LOSSY_8BIT,
    SUFFIX,
    array_to_write,
    patch_file_names,
    patch_scene,
    with_nodata,
    writable,
)
from .destinations import (
    SIDECAR,
    Plan,
    check_cog_destination,
    check_replaceable,
    cleaned,
    commit,
    partial_path,
    remove_stale_writes,
    std_cog_path,
)
from .graph import MAX_PARTS, SPILL_BYTES, WRITES_PER_TASK, cog_graph
from .records import SOFTWARE, SOFTWARE_TAG, SOURCE_TAG, source_records, written_from
from .uploads import UPLOADS, uploaded

__all__ = [
    "LOSSLESS",
    "LOSSY_8BIT",
    "MAX_PARTS",
    "SIDECAR",
    "SOFTWARE",
    "SOFTWARE_TAG",
    "SOURCE_TAG",
    "SPILL_BYTES",
    "SUFFIX",
    "UPLOADS",
    "WRITES_PER_TASK",
    "check_cog_destination",
    "check_replaceable",
    "patch_file_names",
    "std_cog_path",
    "to_cog",
    "to_cogs",
    "written_from",
]

log = logging.getLogger(__name__)


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
        GDAL's external mask or overviews of a file to write (``OUT.tif.msk``,
        ``OUT.tif.ovr``: GDAL would read them with the new file) are refused.
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
    InputFileError
        Before any work: a file of ``obj`` changed since it was opened (as
        :func:`m3rcr_xr.to_zarr` refuses it); open it again.
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
    """The options of :func:`to_cog` that shape a file (and its record: :func:`source_records`)."""

    compress: str
    level: int | None
    blocksize: int
    overview_resampling: str


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
    before any work, committed together (:func:`commit`, :func:`uploaded`)."""
    blocksize = check_integer("blocksize", shape.blocksize, minimum=16)
    if blocksize % 16:
        raise UsageError(f"{argument('blocksize', blocksize)}: must be a multiple of 16")
    shape = shape._replace(blocksize=blocksize)
    plans = [
        _plan(obj, variable, path, shape, overwrite, storage_options, identities)
        for obj, variable, path in writes
    ]
    _check_together(plans)
    # once for all (each file asked once); a record may name none of them (a variable
    # of a scene: only the scene does)
    check_since_open(dict.fromkeys(i for obj, _, _ in writes for i in sources(obj)))
    if not plans:
        return []
    show = OPTIONS["progress"] if progress is None else progress
    target = plans[0].target
    if target.local:
        folders = [plan.folder for plan in plans if plan.folder is not None]
        _write(plans, folders, shape, show, overwrite)
    else:
        with write_errors(target), uploaded(target.fs, plans, overwrite) as folders:
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
) -> Plan:
    """What :func:`to_cog` writes of ``obj`` (its ``variable``) to ``path``, checked
    before any work (see its Raises)."""
    source = array_to_write(obj, variable)
    array = writable(source, shape.compress, shape.overview_resampling)
    collection = is_collection(array)
    names = patch_file_names(array) if collection else None
    inputs = sources(obj)
    files = check_cog_destination(
        path, names=names, inputs=inputs, overwrite=overwrite, storage_options=storage_options
    )
    scenes = [patch_scene(array, i) for i in range(len(files))] if collection else [array]
    scenes = [with_nodata(scene) for scene in scenes]
    records = source_records(source, names, *shape, identities)
    target = Target.of(path, storage_options)
    folder = None
    if target.local:
        folder = local_path(path) if collection else local_path(path).parent
    if names is None:  # a scene: its file's name
        names = [files[0].name if target.local else posixpath.basename(files[0])]
    return Plan(target, files, names, scenes, records, folder)


def _check_together(plans: Sequence[Plan]) -> None:
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
    plans: Sequence[Plan], folders: Sequence[Path], shape: _Shape, show: bool, overwrite: bool
) -> None:
    """Write the files of each plan in its local folder of ``folders`` under partial
    names (:func:`_write_partials`), one plan after the other, then rename them all at
    once (:func:`commit`): a failure, or a kill, before the renames leaves every file
    there as it was. On failure nothing is left (:func:`cleaned`)."""
    files = [
        folder / name for plan, folder in zip(plans, folders, strict=True) for name in plan.names
    ]
    partials = [partial_path(file) for file in files]
    before = versions(files)
    with cleaned(partials, folders):
        for plan, folder in zip(plans, folders, strict=True):
            with write_errors(plan.target):
                _write_partials(plan, folder, shape, show)
        with write_errors(plans[0].target):
            commit(partials, files, overwrite, before)


def _write_partials(plan: Plan, folder: Path, shape: _Shape, show: bool) -> None:
    """Write each scene of ``plan`` to the partial file of its file in ``folder`` (made
    if missing), its record of what it is written from (:func:`source_records`) as its
    ``ImageDescription``, once what a killed write of these files left there is removed
    (:func:`remove_stale_writes`)."""
    folder.mkdir(exist_ok=True)
    remove_stale_writes(folder, plan.names)
    graphs = [
        cog_graph(
            scene,
            partial_path(folder / name),
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
