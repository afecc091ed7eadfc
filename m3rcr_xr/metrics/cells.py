"""From group sums to (stratum, land-cover class) cells, by adding groups.

A group is a (cloud, land-cover code) pair (:data:`~m3rcr_xr.metrics.kernels.GROUP_CODES`);
a stratum adds cloud states and a class adds codes, each as a 0/1 matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

from ..exceptions import UsageError, argument
from ..landcover import class_codes, class_names
from .kernels import GROUP_CODES

STRATA: tuple[str, ...] = ("all", "cloudy", "clear")
ALL_CLASSES = "all"


def check_strata(level: int | None, strata: Sequence[str]) -> tuple[str, ...]:
    """``strata`` as a tuple of distinct values of :data:`STRATA`, and ``level`` checked.

    Raises
    ------
    UsageError
        Naming the argument as the caller wrote it.
    """
    strata = (strata,) if isinstance(strata, str) else tuple(strata)
    problem = _strata_problem(strata)
    if problem is not None:
        raise UsageError(
            f"{argument('strata', strata)}: {problem}; strata are distinct values of "
            f"{', '.join(STRATA)}"
        )
    if level is not None:
        class_names(level)  # raises UsageError for a level other than 1 or 2
    return strata


def needs_cloudmask(strata: Sequence[str]) -> bool:
    """Whether ``strata`` (checked: :func:`check_strata`) need a cloud mask: any but
    ``all``."""
    return any(s != "all" for s in strata)


def _strata_problem(strata: tuple[str, ...]) -> str | None:
    """What is wrong with ``strata``, for a message; None: nothing."""
    if not strata:
        return "no stratum given"
    unknown = [s for s in strata if s not in STRATA]
    if unknown:
        return f"unknown stratum {unknown[0]!r}"
    twice = [s for s in STRATA if strata.count(s) > 1]
    return f"{twice[0]!r} given twice" if twice else None


def strata_matrix(strata: Sequence[str]) -> xr.DataArray:
    rows = {"all": [1.0, 1.0], "cloudy": [0.0, 1.0], "clear": [1.0, 0.0]}
    return xr.DataArray(
        [rows[s] for s in strata],
        dims=("stratum", "cloud"),
        coords={"stratum": list(strata), "cloud": [False, True]},
    )


def _class_matrix(level: int | None) -> xr.DataArray:
    codes = list(GROUP_CODES)
    groups = list(zip(class_names(level), class_codes(level), strict=True)) if level else []
    rows = [[1.0 if c in members else 0.0 for c in codes] for _, members in groups]
    rows.append([1.0] * len(codes))
    names = [name for name, _ in groups] + [ALL_CLASSES]
    return xr.DataArray(
        rows, dims=("landcover_class", "code"), coords={"landcover_class": names, "code": codes}
    )


def cell_sums(
    sums: xr.DataArray, level: int | None = 1, strata: Sequence[str] = STRATA
) -> xr.DataArray:
    """Group sums added up into (stratum, landcover_class) cells.

    ``level`` None keeps only the class ``"all"``.
    """
    by_stratum = xr.dot(sums, strata_matrix(strata), dim="cloud")
    cells = xr.dot(by_stratum, _class_matrix(level), dim="code")
    order = [
        "quantity",
        *(["patch"] if "patch" in cells.dims else []),
        "stratum",
        "landcover_class",
    ]
    return cells.transpose(*order)
