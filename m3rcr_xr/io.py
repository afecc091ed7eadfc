"""Readers: M3R-CR quartets (and whole scenes) from GeoTIFF and ``.npy`` into xarray.

:func:`open_quartet` returns a *scene* and :func:`open_m3rcr` a *collection* (see
:mod:`m3rcr_xr.schema`). Everything stays lazy (Dask-backed): a scene tens of thousands
of pixels a side is never read whole; only headers are read at open time, plus one
block of each raster to catch truncated files early.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.errors import RasterioError

from .align import AlignMethod, align_to, fill_nan_with_mean
from .exceptions import (
    AlignmentError,
    InputFileError,
    M3RCRWarning,
    MissingFileError,
    SchemaError,
    UnsafePathError,
)
from .options import OPTIONS
from .schema import BANDS, OPTICAL_NODATA, POLARIZATIONS, validate

log = logging.getLogger(__name__)

PathType = str | PathLike
#: column order of the published file lists (no header)
FILELIST_COLUMNS = ("cloudfree", "cloudy", "sar", "landcover", "cloudmask")
#: folder prefix of each layer in the dataset's layout
LAYOUT_PREFIX = {
    "cloudy": "planet_cloudy",
    "cloudfree": "planet_cloudfree",
    "sar": "S1",
    "landcover": "landcover",
    "cloudmask": "cloudmask",
}
_PATCH_NAME = re.compile(r"^planet_cloudy_(?P<season>[A-Za-z]+)_(?P<aoi>\w+?)_p_(?P<n>\d+)$")


# ----------------------------------------------------------------------------- rasters
def _spatial_chunks(chunks: Any) -> Any:
    """Translate the user's ``chunks`` into rioxarray's form (all bands in one chunk)."""
    if chunks is None:
        return None
    if chunks == "auto":
        chunks = OPTIONS["scene_chunk"]
    if isinstance(chunks, int):
        return {"band": -1, "y": chunks, "x": chunks}
    if isinstance(chunks, Mapping):
        return {"band": -1, **{k: v for k, v in chunks.items() if k in ("y", "x")}}
    raise SchemaError(f"chunks: expected 'auto', an int, a dict or None, not {chunks!r}")


def _check_readable(path: Path, src: rasterio.DatasetReader) -> None:
    """Read the last block: a truncated GeoTIFF fails here, not in the middle of a job."""
    block_h, block_w = src.block_shapes[0]
    row = max(src.height - block_h, 0)
    col = max(src.width - block_w, 0)
    window = rasterio.windows.Window(col, row, min(block_w, src.width), min(block_h, src.height))
    src.read(window=window)


def open_raster(path: PathType, name: str, count: int, chunks: Any = "auto") -> xr.DataArray:
    """Open one GeoTIFF lazily as (band, y, x), after checking that it is whole.

    Raises
    ------
    MissingFileError, InputFileError
        The file is missing, unreadable or truncated, or has not ``count`` bands.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: {name} file does not exist")
    try:
        with rasterio.open(path) as src:
            if src.count != count:
                raise InputFileError(f"{path}: {name} has {src.count} band(s), expected {count}")
            _check_readable(path, src)
        array = rioxarray.open_rasterio(
            path, chunks=_spatial_chunks(chunks), mask_and_scale=False, lock=False
        )
    except RasterioError as err:
        raise InputFileError(f"{path}: {name} is not a readable GeoTIFF ({err})") from err
    array.attrs = {}
    array.encoding = {"source": str(path)}  # xarray's convention; see store.sources
    array.name = name
    return array


def read_cloudmask(path: PathType, shape: tuple[int, int]) -> np.ndarray:
    """Read a boolean cloud mask from ``.npy`` (never unpickling) or a GeoTIFF."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: cloudmask file does not exist")
    if path.suffix.lower() == ".npy":
        try:
            mask = np.load(path, allow_pickle=False)
        except ValueError as err:  # object arrays need pickle: refused
            raise InputFileError(f"{path}: cloudmask is not a plain array ({err})") from err
        except (OSError, EOFError) as err:
            raise InputFileError(f"{path}: cloudmask is not a readable .npy file ({err})") from err
    else:
        mask = open_raster(path, "cloudmask", 1, chunks=None).values[0]
    if mask.shape != shape:
        raise InputFileError(f"{path}: cloudmask has shape {mask.shape}, optical grid is {shape}")
    if mask.dtype.kind not in "biu":
        raise InputFileError(f"{path}: cloudmask has dtype {mask.dtype}, expected bool")
    return mask.astype(bool)


# ------------------------------------------------------------------------------ quartet
def _optical(path: PathType, name: str, chunks: Any) -> xr.DataArray:
    array = open_raster(path, name, len(BANDS), chunks)
    if array.dtype.kind not in "ui":
        raise InputFileError(f"{path}: {name} has dtype {array.dtype}, expected uint16")
    array = array.astype("uint16") if array.dtype != np.uint16 else array
    array = array.assign_coords(band=list(BANDS))
    array.attrs = {
        "long_name": f"{name} surface reflectance",
        "units": "reflectance x10000",
        "nodata": OPTICAL_NODATA,
    }
    return array


def _sar(path: PathType, optical: xr.DataArray, chunks: Any, align: AlignMethod) -> xr.DataArray:
    array = open_raster(path, "sar", len(POLARIZATIONS), chunks)
    array = array.astype("float32").rename(band="polarization")
    array = array.assign_coords(polarization=list(POLARIZATIONS))
    # the published loader fills holes with one mean over the image; by coordinates we
    # fill each polarization with its own mean
    array = fill_nan_with_mean(array, per_band=align != "shape")
    aligned = align_to(array, optical, method=align, fill=np.nan)
    aligned.attrs = {
        "long_name": "Sentinel-1 backscatter",
        "units": "dB",
        "nan_fill": array.attrs["nan_fill"],
        "align": align,
    }
    return aligned


def _landcover(path: PathType, optical: xr.DataArray, chunks: Any, align: AlignMethod):
    array = open_raster(path, "landcover", 1, chunks).isel(band=0, drop=True)
    array = array.astype("uint8")
    aligned = align_to(array, optical, method=align, fill=0)
    aligned.attrs = {"long_name": "ESA WorldCover 2020 class code", "nodata": 0, "align": align}
    return aligned


def _rechunk_like(array: xr.DataArray, like: xr.DataArray) -> xr.DataArray:
    if like.chunks is None:
        return array.compute()
    return array.chunk({"y": like.chunksizes["y"], "x": like.chunksizes["x"]})


def open_quartet(
    cloudy: PathType,
    cloudfree: PathType | None = None,
    sar: PathType | None = None,
    landcover: PathType | None = None,
    cloudmask: PathType | None = None,
    *,
    chunks: Any = "auto",
    align: AlignMethod = "coords",
) -> xr.Dataset:
    """Open one M3R-CR quartet (or any scene in that form) as a lazy scene.

    Parameters
    ----------
    cloudy, cloudfree
        4-band PlanetScope GeoTIFFs (blue, green, red, NIR; reflectance x10000).
    sar
        2-band Sentinel-1 GeoTIFF (VV, VH in dB), at any resolution and CRS.
    landcover
        1-band ESA WorldCover GeoTIFF, at any resolution and CRS.
    cloudmask
        Boolean mask on the optical grid, ``.npy`` or GeoTIFF.
    chunks
        ``"auto"`` (the ``scene_chunk`` option, 1024 px), an int, a dict of ``y``/``x``
        chunk sizes, or ``None`` to load into memory.
    align
        ``"coords"``: the 10 m layers go onto the optical grid by coordinates;
        ``"shape"``: by array shape, as the published loader does.

    Returns
    -------
    xr.Dataset
        A scene (see :mod:`m3rcr_xr.schema`).

    Examples
    --------
    >>> ds = open_quartet("cloudy.tif", sar="s1.tif", landcover="lc.tif")  # doctest: +SKIP
    >>> ds.sar.sel(polarization="VV")  # doctest: +SKIP
    """
    optical = _optical(cloudy, "cloudy", chunks)
    layers: dict[str, xr.DataArray] = {"cloudy": optical}
    if cloudfree is not None:
        layers["cloudfree"] = _optical(cloudfree, "cloudfree", chunks)
        _check_same_grid(layers["cloudfree"], optical, cloudfree)
    if sar is not None:
        layers["sar"] = _rechunk_like(_sar(sar, optical, chunks, align), optical)
    if landcover is not None:
        layers["landcover"] = _rechunk_like(_landcover(landcover, optical, chunks, align), optical)
    if cloudmask is not None:
        shape = (optical.sizes["y"], optical.sizes["x"])
        mask = read_cloudmask(cloudmask, shape)
        if optical.chunks is not None:
            mask = da.from_array(mask, chunks=optical.data.chunks[1:])
        layers["cloudmask"] = xr.DataArray(
            mask, dims=("y", "x"), attrs={"long_name": "cloud mask, True = cloud"}
        )
    ds = _assemble(layers, optical)
    ds.encoding["source"] = [str(p) for p in (cloudy, cloudfree, sar, landcover, cloudmask) if p]
    return validate(ds)


def _check_same_grid(array: xr.DataArray, optical: xr.DataArray, path: PathType) -> None:
    if array.rio.crs != optical.rio.crs:
        raise AlignmentError(f"{path}: CRS {array.rio.crs} differs from cloudy's {optical.rio.crs}")
    if array.shape != optical.shape or array.rio.transform() != optical.rio.transform():
        raise AlignmentError(
            f"{path}: grid differs from cloudy's (shape {array.shape}, "
            f"transform {tuple(array.rio.transform())[:6]})"
        )


def _assemble(layers: dict[str, xr.DataArray], optical: xr.DataArray) -> xr.Dataset:
    coords = {"y": optical["y"].values, "x": optical["x"].values}
    variables = {}
    for name, array in layers.items():
        array = array.drop_vars([c for c in array.coords if c not in array.dims])
        variables[name] = array.assign_coords(coords)
    ds = xr.Dataset(variables)
    ds["y"].attrs = {"units": "metre", "long_name": "y coordinate of pixel centre"}
    ds["x"].attrs = {"units": "metre", "long_name": "x coordinate of pixel centre"}
    return ds.rio.write_crs(optical.rio.crs).rio.write_transform(optical.rio.transform())


# --------------------------------------------------------------------------- collection
@dataclass(frozen=True)
class Quartet:
    """The files of one patch, relative to the dataset root."""

    cloudy: str
    cloudfree: str | None = None
    sar: str | None = None
    landcover: str | None = None
    cloudmask: str | None = None

    @property
    def patch_id(self) -> str:
        stem = Path(self.cloudy).stem
        match = _PATCH_NAME.match(stem)
        if match is None:
            return stem
        return f"{match['season']}_{match['aoi']}_p_{match['n']}"

    @property
    def season(self) -> str:
        match = _PATCH_NAME.match(Path(self.cloudy).stem)
        return match["season"] if match else ""

    @property
    def aoi(self) -> str:
        match = _PATCH_NAME.match(Path(self.cloudy).stem)
        return match["aoi"] if match else ""

    def paths(self, root: Path) -> dict[str, Path]:
        """Absolute paths of the present layers, each checked to stay inside ``root``."""
        return {name: safe_join(root, rel) for name, rel in vars(self).items() if rel}


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that resolves outside ``root``."""
    if Path(relative).is_absolute():
        raise UnsafePathError(f"{relative}: absolute path in a file list (must be under {root})")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UnsafePathError(f"{relative}: path escapes the data root {root}")
    return resolved


def read_filelist(path: PathType) -> list[Quartet]:
    """Read a published file list (CSV, no header; cloudfree, cloudy, S1, landcover,
    cloudmask). Duplicate rows give a warning and are kept once."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file list does not exist")
    quartets: list[Quartet] = []
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            row = [cell.strip() for cell in row]
            if not any(row):
                continue
            if len(row) != len(FILELIST_COLUMNS):
                raise InputFileError(
                    f"{path}:{line}: expected {len(FILELIST_COLUMNS)} columns "
                    f"({', '.join(FILELIST_COLUMNS)}), got {len(row)}"
                )
            fields = dict(zip(FILELIST_COLUMNS, row, strict=True))
            quartets.append(Quartet(**{k: v or None for k, v in fields.items()}))  # type: ignore[arg-type]
    unique = list(dict.fromkeys(quartets))
    if len(unique) < len(quartets):
        warnings.warn(
            f"{path}: {len(quartets) - len(unique)} duplicate row(s) ignored",
            M3RCRWarning,
            stacklevel=2,
        )
    return unique


def discover(root: PathType) -> list[Quartet]:
    """Find the quartets of a split folder by walking the dataset's layout."""
    root = Path(root)
    found = sorted(root.glob("planet_cloudy_*/planet_cloudy_*/planet_cloudy_*.tif"))
    quartets = []
    for cloudy in found:
        relative = cloudy.relative_to(root).as_posix()
        layers: dict[str, str | None] = {"cloudy": relative}
        for name, prefix in LAYOUT_PREFIX.items():
            if name == "cloudy":
                continue
            other = relative.replace("planet_cloudy", prefix)
            if name == "cloudmask":
                other = other[: -len(".tif")] + ".npy"
            top = root / other.split("/")[0]
            layers[name] = other if top.is_dir() else None
        quartets.append(Quartet(**layers))
    return quartets


def open_m3rcr(
    root: PathType,
    filelist: PathType | None = None,
    *,
    chunks: Mapping[str, int] | None = None,
    align: AlignMethod = "coords",
) -> xr.Dataset:
    """Open an M3R-CR split folder (``train/``, ``test/``) as a lazy collection.

    Parameters
    ----------
    root
        The split folder, holding ``planet_cloudy_{season}/...`` and its siblings.
    filelist
        A CSV in the published format, paths relative to ``root``. Without it, the
        quartets are found by walking the layout.
    chunks
        Dask chunks of the result, e.g. ``{"patch": 16}``; default one patch a chunk.
    align
        As in :func:`open_quartet`.

    Returns
    -------
    xr.Dataset
        A collection: the scene variables with a leading ``patch`` dim, per-patch grids
        ``x(patch, x)``, ``y(patch, y)``, ``epsg(patch)`` and ``season``, ``aoi``,
        ``split``, ``source`` (cloudy path relative to ``root``).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: dataset root is not a folder")
    quartets = read_filelist(filelist) if filelist is not None else discover(root)
    if not quartets:
        raise InputFileError(f"{root}: no quartets found")
    scenes = [_open_patch(q, root, align) for q in quartets]
    meta = {
        "patch": [q.patch_id for q in quartets],
        "season": [q.season for q in quartets],
        "aoi": [q.aoi for q in quartets],
        "split": [root.name] * len(quartets),
        "source": [q.cloudy for q in quartets],
    }
    collection = stack_scenes(scenes, meta)
    collection.encoding["source"] = [path for s in scenes for path in s.encoding["source"]]
    if chunks:
        collection = collection.chunk(dict(chunks))
    return validate(collection)


def _open_patch(quartet: Quartet, root: Path, align: AlignMethod) -> xr.Dataset:
    paths = quartet.paths(root)
    return open_quartet(**paths, chunks={"y": -1, "x": -1}, align=align)


def stack_scenes(scenes: Sequence[xr.Dataset], meta: Mapping[str, Sequence[str]]) -> xr.Dataset:
    """Stack same-shape scenes along ``patch``, each keeping its grid as coordinates.

    Parameters
    ----------
    scenes
        Scenes of one shape and one set of variables, in any CRS.
    meta
        Per-patch labels: ``patch`` (ids), ``season``, ``aoi``, ``split``, ``source``.
    """
    shapes = {(s.sizes["y"], s.sizes["x"]) for s in scenes}
    if len(shapes) > 1:
        raise SchemaError(f"patches differ in shape {sorted(shapes)}; a collection needs one")
    names = [set(s.data_vars) for s in scenes]
    if any(n != names[0] for n in names):
        raise SchemaError("patches differ in their variables; a collection needs the same set")
    bare = [s.drop_vars(["x", "y", "spatial_ref"]) for s in scenes]
    stacked = xr.concat(
        bare, dim="patch", coords="minimal", compat="override", combine_attrs="drop_conflicts"
    )
    labels = {name: ("patch", list(meta[name])) for name in ("season", "aoi", "split", "source")}
    return stacked.assign_coords(
        patch=list(meta["patch"]),
        y=(("patch", "y"), np.stack([s["y"].values for s in scenes])),
        x=(("patch", "x"), np.stack([s["x"].values for s in scenes])),
        epsg=("patch", np.array([s.rio.crs.to_epsg() or -1 for s in scenes], dtype=np.int32)),
        **labels,
    )
