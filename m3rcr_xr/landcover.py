"""ESA WorldCover 2020 classes, and the class groupings of the M3R-CR evaluation.

One table, used by the readers (valid codes, :func:`to_worldcover`), the synthetic
scenes (which classes to draw), metrics (grouping by class) and plots (official colours).

- level 2: the eleven WorldCover classes in code order;
- level 1: seven groups, as in the reference evaluation: forest land (10),
  rangeland (20, 30), agriculture (40), urban (50), barren (60), water (80, 90),
  unknown (70, 95, 100).

Examples
--------
>>> class_names(1)
('forest land', 'rangeland', 'agriculture', 'urban', 'barren', 'water', 'unknown')
>>> int(code_to_index(1)[30])
1
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import numpy as np

from .exceptions import M3RCRWarning, UsageError, argument


class WorldCoverClass(NamedTuple):
    code: int
    name: str
    color: str


WORLDCOVER: tuple[WorldCoverClass, ...] = (
    WorldCoverClass(10, "tree cover", "#006400"),
    WorldCoverClass(20, "shrubland", "#ffbb22"),
    WorldCoverClass(30, "grassland", "#ffff4c"),
    WorldCoverClass(40, "cropland", "#f096ff"),
    WorldCoverClass(50, "built-up", "#fa0000"),
    WorldCoverClass(60, "bare / sparse vegetation", "#b4b4b4"),
    WorldCoverClass(70, "snow and ice", "#f0f0f0"),
    WorldCoverClass(80, "permanent water bodies", "#0064c8"),
    WorldCoverClass(90, "herbaceous wetland", "#0096a0"),
    WorldCoverClass(95, "mangroves", "#00cf75"),
    WorldCoverClass(100, "moss and lichen", "#fae6a0"),
)
WORLDCOVER_CODES: tuple[int, ...] = tuple(c.code for c in WORLDCOVER)
NODATA_CODE = 0

LEVEL1_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("forest land", (10,)),
    ("rangeland", (20, 30)),
    ("agriculture", (40,)),
    ("urban", (50,)),
    ("barren", (60,)),
    ("water", (80, 90)),
    ("unknown", (70, 95, 100)),
)


def _groups(level: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if level == 1:
        return LEVEL1_GROUPS
    if level == 2:
        return tuple((c.name, (c.code,)) for c in WORLDCOVER)
    raise UsageError(f"{argument('level', level)}: must be 1 or 2")


def class_names(level: int) -> tuple[str, ...]:
    """Names of the classes at ``level`` (1: seven groups, 2: eleven classes)."""
    return tuple(name for name, _ in _groups(level))


def class_codes(level: int) -> tuple[tuple[int, ...], ...]:
    """WorldCover codes that make up each class at ``level``, in class order."""
    return tuple(codes for _, codes in _groups(level))


def is_code(values: np.ndarray) -> np.ndarray:
    """Where ``values`` can be land-cover codes: whole numbers from 0 to 255 (NaN,
    negative, fractional and larger values cannot), whatever their dtype.

    Examples
    --------
    >>> is_code(np.array([10, 300, -1, 10.5, np.nan, 0])).tolist()
    [True, False, False, False, False, True]
    """
    values = np.asarray(values)
    inside = (values >= 0) & (values <= 255)
    if values.dtype.kind == "f":
        inside &= values == np.round(values)
    return inside


def code_to_index(level: int) -> np.ndarray:
    """A lookup table of 256 entries: WorldCover code to class index, -1 for none.

    Index it with a uint8 land-cover array: ``code_to_index(1)[landcover]``.
    """
    table = np.full(256, -1, dtype=np.int8)
    for index, codes in enumerate(class_codes(level)):
        table[list(codes)] = index
    return table


#: class index of a pixel that has no label: land-cover nodata (0), a code that is not a
#: WorldCover class, and at level 1 the "unknown" group (see :func:`worldcover_labels`)
IGNORE_INDEX = 255


def ignored_classes(level: int) -> tuple[str, ...]:
    """Classes of ``level`` that never serve as labels: ``("unknown",)`` at level 1.

    The level-1 "unknown" group (snow and ice, mangroves, moss and lichen) gathers
    classes the reference evaluation does not judge; a classifier still has an output
    for it (its class list is that of the level), but no pixel is labelled with it.
    """
    class_names(level)  # raises UsageError for a level other than 1 or 2
    return ("unknown",) if level == 1 else ()


def worldcover_labels(codes, level: int):
    """Class indices at ``level`` of WorldCover ``codes``, :data:`IGNORE_INDEX` where none.

    Pixels of nodata (0), codes that are not WorldCover classes and, at level 1, the
    "unknown" group (:func:`ignored_classes`) are ignored: in a loss
    (``ignore_index=IGNORE_INDEX``) and in the semantic metrics alike. Works on NumPy
    and Dask arrays and on DataArrays (uint8 in, uint8 out).

    Examples
    --------
    >>> worldcover_labels(np.array([10, 0, 30, 95, 7], dtype="uint8"), 1)
    array([  0, 255,   1, 255, 255], dtype=uint8)
    >>> worldcover_labels(np.array([95, 100]), 2)
    array([ 9, 10], dtype=uint8)
    """
    table = code_to_index(level).astype(np.int16)
    for name in ignored_classes(level):
        table[table == class_names(level).index(name)] = -1
    lookup = np.where(table < 0, IGNORE_INDEX, table).astype(np.uint8)
    return _apply_lookup(lookup, codes, label_attrs(level))


def label_attrs(level: int) -> dict[str, object]:
    """The attributes of an array of class indices at ``level`` (CF flags).

    :data:`IGNORE_INDEX` is its ``nodata``: a pixel without a label, which a GeoTIFF
    (:func:`m3rcr_xr.to_cog`) then masks. Index 0 is a class.

    Examples
    --------
    >>> label_attrs(1)["flag_meanings"]
    'forest_land rangeland agriculture urban barren water unknown'
    """
    classes = class_names(level)
    return {
        "long_name": "land-cover class",
        "flag_values": np.arange(len(classes), dtype=np.uint8),
        "flag_meanings": " ".join(name.replace(" ", "_") for name in classes),
        "classes": ", ".join(classes),
        "level": level,
        "ignore_index": IGNORE_INDEX,
        "nodata": IGNORE_INDEX,
    }


def _apply_lookup(lookup: np.ndarray, codes, attrs: dict[str, object] | None = None):
    """``lookup[codes]`` for NumPy, Dask and xarray objects (values that are no code:
    negative, fractional, NaN, above 255: ignored); a DataArray's result has ``attrs``
    only, none of the codes' (their nodata 0 is a class index here)."""
    import xarray as xr

    if isinstance(codes, xr.DataArray):
        data = _apply_lookup(lookup, codes.data)
        return xr.DataArray(data, codes.coords, codes.dims, codes.name, attrs)
    if not isinstance(codes, np.ndarray) and hasattr(codes, "map_blocks"):
        return codes.map_blocks(functools.partial(_apply_lookup, lookup), dtype=np.uint8)
    codes = np.asarray(codes)
    inside = is_code(codes)  # the lookup has an entry for each of the 256 codes
    labels = lookup[np.where(inside, codes, 0).astype(np.intp)]
    return np.where(inside, labels, IGNORE_INDEX).astype(np.uint8)


def to_worldcover(
    values: np.ndarray, *, nodata: float | None = None, source: str = "landcover"
) -> np.ndarray:
    """Land-cover values as uint8 WorldCover codes, anything else as :data:`NODATA_CODE`.

    Never cast blindly: code 266 in a uint16 file would become 10 (tree cover). NaN and
    the declared ``nodata`` become 0 silently; values that are not WorldCover codes
    become 0 with an :class:`M3RCRWarning` naming ``source`` and the codes (no count:
    this runs on one chunk at a time, and the same message from every chunk is shown
    once; on a distributed cluster it is in the worker's log).
    :func:`m3rcr_xr.metrics.evaluate` counts land-cover nodata pixels.

    Examples
    --------
    >>> to_worldcover(np.array([10, 0, 95, 255], dtype="uint16"), nodata=255)
    array([10,  0, 95,  0], dtype=uint8)
    """
    values = np.asarray(values)
    declared = np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    if nodata is not None:
        declared |= values == nodata
    known = np.isin(values, (NODATA_CODE, *WORLDCOVER_CODES))
    unknown = ~known & ~declared
    if unknown.any():
        codes = [f"{code:.10g}" for code in np.unique(values[unknown]).tolist()]
        shown = ", ".join(codes[:8]) + (", ..." if len(codes) > 8 else "")
        warnings.warn(
            f"{source}: code(s) {shown} are not ESA WorldCover classes; "
            f"read as nodata {NODATA_CODE}",
            M3RCRWarning,
            stacklevel=2,
        )
    return np.where(known & ~declared, values, NODATA_CODE).astype(np.uint8)


def colors(level: int = 2) -> tuple[str, ...]:
    """Colours of the classes; a level-1 group takes the colour of its first code."""
    by_code = {c.code: c.color for c in WORLDCOVER}
    return tuple(by_code[codes[0]] for codes in class_codes(level))
