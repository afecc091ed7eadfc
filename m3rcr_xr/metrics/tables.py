"""The result of :func:`~m3rcr_xr.metrics.evaluate` as a file: CSV or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..exceptions import UsageError

#: file suffixes :func:`write_table` writes
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".json")


def write_table(result: xr.Dataset, path: str | Any) -> None:
    """Write an :func:`evaluate` result as CSV (``.csv``) or JSON (``.json``).

    The JSON holds ``{"attrs": ..., "rows": [one object per (stratum, class)]}`` with
    NaN as null; the CSV has one row per (stratum, class).
    """
    path = Path(path)
    table = result.to_dataframe().reset_index()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix == ".json":
        rows = json.loads(table.to_json(orient="records", double_precision=15))
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in result.attrs.items()}
        path.write_text(json.dumps({"attrs": attrs, "rows": rows}, indent=1))
    else:
        raise UsageError(
            f"{path}: write {' or '.join(TABLE_SUFFIXES)}, not {suffix or 'no suffix'!r}"
        )
