"""Synthetic scenes: the embedded default data of the demo, tests and benchmarks.

:func:`synthetic_scene` draws a scene with all five variables, lazily, chunk by chunk.
Every value is a pure function of the seed and of the pixel's global position (hashed
lattice noise), so a 40,000 x 40,000 scene costs nothing until computed and any
chunking gives identical values.

What it looks like:
- land cover: regions of several WorldCover classes from smooth relief, moisture and
  settlement fields, with rectangular crop parcels;
- optical: per-class spectra with texture; clouds with thick cores, thin edges and
  shadows cast to the south-east; a cloud mask that covers clouds and deep shadows;
- SAR and land cover: made on a 10 m grid offset by (1, -2) m from the 3 m optical
  grid, per-class backscatter with speckle, then aligned to the optical grid by
  coordinates exactly as :func:`m3rcr_xr.align.align_to` does for real data.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from .align import containing_index
from .exceptions import UsageError, argument, check_integer
from .schema import BANDS, POLARIZATIONS, validate

#: the ``title`` attribute of a synthetic scene
SYNTHETIC_TITLE = "m3rcr_xr synthetic scene"

OPTICAL_RES = 3.0
COARSE_RES = 10.0
#: the 10 m grid starts this far (x, y) from the optical origin, as in M3R-CR's files
COARSE_OFFSET = (1.0, -2.0)
ORIGIN = (400_000.0, 5_000_000.0)

#: class code -> reflectance x10000 (blue, green, red, nir)
SPECTRA: dict[int, tuple[float, float, float, float]] = {
    10: (250, 450, 300, 3100),
    20: (450, 650, 700, 2400),
    30: (420, 720, 620, 2900),
    40: (520, 820, 760, 3600),
    50: (1150, 1200, 1280, 1800),
    60: (1500, 1750, 2050, 2500),
    80: (520, 430, 260, 140),
    90: (380, 560, 430, 1600),
}
#: class code -> mean backscatter in dB (VV, VH)
BACKSCATTER: dict[int, tuple[float, float]] = {
    10: (-7.5, -13.0),
    20: (-9.5, -16.0),
    30: (-11.0, -18.0),
    40: (-10.0, -16.5),
    50: (-2.5, -9.0),
    60: (-13.5, -22.5),
    80: (-21.0, -27.5),
    90: (-12.0, -19.0),
}
_MASK64 = (1 << 64) - 1


# -------------------------------------------------------------------------- noise
def _hash_uniform(seed: int, layer: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A float32 in [0, 1) for every (row, col): splitmix64 of the position and seed."""
    key = np.uint64((seed * 0x165667B19E3779F9 + layer * 0x27D4EB2F165667C5) & _MASK64)
    x = rows.astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x = x ^ (cols.astype(np.int64).view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)) ^ key
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def _split(positions: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    scaled = positions / scale
    index = np.floor(scaled).astype(np.int64)
    return index, (scaled - index).astype(np.float32)


def value_noise(rows: np.ndarray, cols: np.ndarray, scale: float, seed: int, layer: int):
    """Smooth noise in [0, 1) on the grid ``rows x cols`` (global pixel positions).

    Lattice values every ``scale`` pixels, interpolated with a smoothstep; separable,
    so the cost is a few passes over the output.
    """
    row_index, row_t = _split(rows, scale)
    col_index, col_t = _split(cols, scale)
    r0, c0 = row_index.min(), col_index.min()
    lattice = _hash_uniform(
        seed,
        layer,
        np.arange(r0, row_index.max() + 2)[:, None],
        np.arange(c0, col_index.max() + 2)[None, :],
    )
    a, b = row_index - r0, col_index - c0
    col_w = _smoothstep(col_t)
    across = lattice[:, b] + (lattice[:, b + 1] - lattice[:, b]) * col_w
    top = across[a]
    return top + (across[a + 1] - top) * _smoothstep(row_t)[:, None]


def fbm(rows: np.ndarray, cols: np.ndarray, scale: float, octaves: int, seed: int, layer: int):
    """Fractal (multi-octave) value noise, mapped to roughly uniform on [0, 1]."""
    total = np.zeros((rows.size, cols.size), dtype=np.float32)
    weight = 0.0
    for octave in range(octaves):
        amplitude = 0.5**octave
        total += amplitude * value_noise(rows, cols, scale / 2**octave, seed, layer * 16 + octave)
        weight += amplitude
    # the sum is near-normal around 0.5; a logistic squash spreads it to ~uniform
    std = 0.13 if octaves > 2 else 0.2
    return 1.0 / (1.0 + np.exp(-1.7 * (total / weight - 0.5) / std))


# --------------------------------------------------------------------------- fields
def _classes(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """WorldCover code at each (row, col), in optical pixel units."""
    relief = fbm(rows, cols, 700.0, 4, seed, 1)
    moisture = fbm(rows, cols, 450.0, 4, seed, 2)
    settlement = fbm(rows, cols, 160.0, 3, seed, 3)
    parcel = _hash_uniform(seed, 4, np.floor(rows / 45)[:, None], np.floor(cols / 70)[None, :])
    codes = np.full(relief.shape, 20, dtype=np.uint8)
    codes[parcel < 0.8] = 30
    codes[parcel < 0.5] = 40
    codes[moisture > 0.62] = 10
    codes[relief > 0.88] = 60
    codes[(settlement > 0.86) & (relief > 0.25)] = 50
    codes[(relief < 0.22) & (moisture > 0.5)] = 90
    codes[relief < 0.15] = 80
    return codes


def _lookup(table: Mapping[int, Sequence[float]], codes: np.ndarray) -> np.ndarray:
    """Per-class values, (n_values, *codes.shape)."""
    lut = np.zeros((256, len(next(iter(table.values())))), dtype=np.float32)
    for code, values in table.items():
        lut[code] = values
    return np.moveaxis(lut[codes], -1, 0)


def _cloud(rows: np.ndarray, cols: np.ndarray, seed: int, cover: float) -> np.ndarray:
    """Cloud opacity in [0, 1]: thick cores at 1, thin edges in between."""
    field = fbm(rows, cols, 220.0, 5, seed, 5)
    return np.clip((field - (1.0 - cover)) / 0.2 + 0.05, 0.0, 1.0) * (field > 1.0 - cover)


@functools.lru_cache(maxsize=4)
def _optical_block(seed: int, cover: float, y0: int, x0: int, h: int, w: int):
    """cloudfree, cloudy (band, y, x) and cloudmask (y, x) of one block."""
    rows = np.arange(y0, y0 + h, dtype=np.float64)
    cols = np.arange(x0, x0 + w, dtype=np.float64)
    spectra = _lookup(SPECTRA, _classes(rows, cols, seed))
    texture = fbm(rows, cols, 24.0, 3, seed, 6) - 0.5
    grain = _hash_uniform(seed, 7, rows[:, None], cols[None, :]) - 0.5
    tint = np.array([0.6, 0.8, 1.0, 1.3], dtype=np.float32)[:, None, None]
    cloudfree = spectra * (1 + 0.35 * texture * tint + 0.06 * grain)
    opacity = _cloud(rows, cols, seed, cover)
    shadow = _cloud(rows - 28.0, cols - 36.0, seed, cover) * (1 - opacity)
    brightness = 7200 + 1800 * (fbm(rows, cols, 40.0, 3, seed, 8) - 0.5)
    cloudy = (cloudfree * (1 - 0.65 * shadow)) * (1 - opacity) + brightness * opacity
    mask = (opacity > 0.1) | (shadow > 0.35)
    return _to_reflectance(cloudfree), _to_reflectance(cloudy), mask


def _to_reflectance(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 1, 10000).astype(np.uint16)


def _coarse_block(seed: int, y0: int, x0: int, h: int, w: int):
    """SAR (polarization, y, x) in dB and land cover (y, x), made at 10 m and put on
    the optical pixels of the block by coordinates."""
    ys = ORIGIN[1] - (np.arange(y0, y0 + h) + 0.5) * OPTICAL_RES
    xs = ORIGIN[0] + (np.arange(x0, x0 + w) + 0.5) * OPTICAL_RES
    top, left = ORIGIN[1] + COARSE_OFFSET[1], ORIGIN[0] + COARSE_OFFSET[0]
    big = 1 << 40  # the coarse grid is unbounded: the scene decides its extent
    rows = containing_index(ys, top, -COARSE_RES, big)
    cols = containing_index(xs, left, COARSE_RES, big)
    urows, row_inverse = np.unique(rows, return_inverse=True)
    ucols, col_inverse = np.unique(cols, return_inverse=True)
    # coarse pixel centres, in optical pixel units
    centre_rows = (ORIGIN[1] - (top - (urows + 0.5) * COARSE_RES)) / OPTICAL_RES - 0.5
    centre_cols = (left + (ucols + 0.5) * COARSE_RES - ORIGIN[0]) / OPTICAL_RES - 0.5
    codes = _classes(centre_rows, centre_cols, seed)
    looks = [_hash_uniform(seed, 20 + k, urows[:, None], ucols[None, :]) for k in range(8)]
    speckle = np.stack(
        [
            10 * np.log10(np.mean([-np.log1p(-u) for u in looks[p * 4 : (p + 1) * 4]], axis=0))
            for p in range(2)
        ]
    )
    sar = _lookup(BACKSCATTER, codes) + speckle.astype(np.float32)
    take = np.ix_(row_inverse, col_inverse)
    return sar[:, take[0], take[1]].astype(np.float32), codes[take]


# ---------------------------------------------------------------------------- scene
def _positive_pair(name: str, value: Any, *, one_for_both: bool = False) -> tuple[int, int]:
    """``value`` as two ints >= 1: a pair of integers, or with ``one_for_both`` one
    integer for both (a chunk edge).

    Raises
    ------
    UsageError
        Anything else, before any work: a float, a bool, 0, a negative size.
    """
    pair = (value, value) if one_for_both and isinstance(value, Integral) else value
    a_pair = (
        isinstance(pair, Sequence | np.ndarray) and not isinstance(pair, str) and len(pair) == 2
    )
    if a_pair and all(
        isinstance(n, Integral) and not isinstance(n, bool) and int(n) >= 1 for n in pair
    ):
        return int(pair[0]), int(pair[1])
    what = "an integer >= 1 or (y, x), two of them" if one_for_both else "two integers >= 1"
    raise UsageError(f"{argument(name, value)}: must be {what}")


def _check_cloud_cover(value: Any) -> float:
    """``cloud_cover`` as a float, if it is a number in [0, 1] (not NaN, not a bool)."""
    if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= float(value) <= 1:
        raise UsageError(f"{argument('cloud_cover', value)}: must be a number from 0 to 1")
    return float(value)


def _render_block(render, block_info: dict[Any, Any]) -> np.ndarray:
    (y0, y1), (x0, x1) = block_info[None]["array-location"][-2:]
    return render(y0, x0, y1 - y0, x1 - x0)


def _lazy(
    render,
    name: str,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    lead: int | None,
    dtype: str,
    token: str,
) -> da.Array:
    """A Dask array whose block at (y0, x0) is ``render(y0, x0, h, w)``."""
    spatial = da.core.normalize_chunks(chunks, shape)
    full_chunks = spatial if lead is None else ((lead,), *spatial)
    return da.map_blocks(
        _render_block,
        render,
        chunks=full_chunks,
        dtype=dtype,
        name=f"{name}-{token}",
        meta=np.empty((0,) * len(full_chunks), dtype=dtype),
    )


def _optical_part(index: int, seed: int, cover: float, y0: int, x0: int, h: int, w: int):
    return _optical_block(seed, cover, y0, x0, h, w)[index]


def _coarse_part(index: int, seed: int, y0: int, x0: int, h: int, w: int):
    return _coarse_block(seed, y0, x0, h, w)[index]


def synthetic_scene(
    shape: tuple[int, int] = (1024, 1024),
    *,
    seed: int = 0,
    chunks: int | tuple[int, int] = 1024,
    cloud_cover: float = 0.4,
    crs: str = "EPSG:32632",
) -> xr.Dataset:
    """A lazy synthetic scene with all five variables (see :mod:`m3rcr_xr.schema`).

    Parameters
    ----------
    shape
        (height, width) in optical pixels (3 m).
    seed
        An integer >= 0 (numpy's too); everything is a function of the seed and the
        pixel position.
    chunks
        Dask chunk edge (or (y, x)); values do not depend on it.
    cloud_cover
        Rough fraction of the scene under cloud, in [0, 1].
    crs
        CRS of the grid; the origin is at (400000, 5000000) in its units.

    Raises
    ------
    UsageError
        Before any work: ``shape`` or ``chunks`` not integers >= 1, ``seed`` not an
        integer >= 0, ``cloud_cover`` not a number in [0, 1].

    Examples
    --------
    >>> scene = synthetic_scene((256, 256), seed=1, chunks=128)
    >>> sorted(scene.data_vars)
    ['cloudfree', 'cloudmask', 'cloudy', 'landcover', 'sar']
    """
    height, width = _positive_pair("shape", shape)
    seed = check_integer("seed", seed, minimum=0)
    chunk_yx = _positive_pair("chunks", chunks, one_for_both=True)
    cover = _check_cloud_cover(cloud_cover)
    token = tokenize(seed, height, width, chunk_yx, cover)

    def optical(index: int):
        return functools.partial(_optical_part, index, seed, cover)

    def coarse(index: int):
        return functools.partial(_coarse_part, index, seed)

    size = (height, width)
    data = {
        "cloudy": (
            ("band", "y", "x"),
            _lazy(optical(1), "cloudy", size, chunk_yx, 4, "uint16", token),
        ),
        "cloudfree": (
            ("band", "y", "x"),
            _lazy(optical(0), "cloudfree", size, chunk_yx, 4, "uint16", token),
        ),
        "sar": (
            ("polarization", "y", "x"),
            _lazy(coarse(0), "sar", size, chunk_yx, 2, "float32", token),
        ),
        "landcover": (
            ("y", "x"),
            _lazy(coarse(1), "landcover", size, chunk_yx, None, "uint8", token),
        ),
        "cloudmask": (
            ("y", "x"),
            _lazy(optical(2), "cloudmask", size, chunk_yx, None, "bool", token),
        ),
    }
    coords = {
        "band": list(BANDS),
        "polarization": list(POLARIZATIONS),
        "y": ORIGIN[1] - (np.arange(height) + 0.5) * OPTICAL_RES,
        "x": ORIGIN[0] + (np.arange(width) + 0.5) * OPTICAL_RES,
    }
    ds = xr.Dataset(
        data,
        coords=coords,
        attrs={"title": SYNTHETIC_TITLE, "seed": seed, "cloud_cover": cover},
    )
    ds = ds.rio.write_crs(crs).rio.write_transform()
    return validate(ds)


def synthetic_collection(
    n_patches: int = 4, patch_size: int = 300, *, seed: int = 0, cloud_cover: float = 0.4
) -> xr.Dataset:
    """A lazy collection of synthetic patches (patch ``i`` drawn with seed ``seed + i``),
    in the form :func:`m3rcr_xr.open_m3rcr` returns.

    Raises
    ------
    UsageError
        Before any work: ``n_patches`` or ``patch_size`` not an integer >= 1, or
        ``seed`` and ``cloud_cover`` as :func:`synthetic_scene` refuses them.

    Examples
    --------
    >>> synthetic_collection(3, 64).sizes["patch"]
    3
    """
    from .io import stack_scenes

    n_patches = check_integer("n_patches", n_patches)
    patch_size = check_integer("patch_size", patch_size)
    seed = check_integer("seed", seed, minimum=0)
    _check_cloud_cover(cloud_cover)
    scenes = [
        synthetic_scene(
            (patch_size, patch_size), seed=seed + i, chunks=patch_size, cloud_cover=cloud_cover
        )
        for i in range(n_patches)
    ]
    ids = [f"synthetic_{seed + i}_p_0" for i in range(n_patches)]
    meta = {
        "patch": ids,
        "season": ["synthetic"] * n_patches,
        "aoi": [str(seed + i) for i in range(n_patches)],
        "split": ["synthetic"] * n_patches,
        "source": [f"synthetic/{pid}" for pid in ids],
    }
    return validate(stack_scenes(scenes, meta))
