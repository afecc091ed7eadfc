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
#: the semantic scores of an ``evaluate(..., semantic=True)`` result that make its
#: per-class table (source, stratum, landcover_class); see :func:`split_semantic`
SEMANTIC_SCORES: tuple[str, ...] = ("OA", "mIoU", "n_labelled", "IoU", "F1")
CONFUSION_DIMS = ("true_class", "predicted_class")


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


def split_semantic(result: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """An ``evaluate(..., semantic=True)`` result as two tables: the metrics by
    (stratum, landcover_class), and the semantic scores by (source, stratum,
    landcover_class) (:data:`SEMANTIC_SCORES`; OA and mIoU repeated on each class row,
    on class ``"all"`` only as they are class means). The confusion matrices and the
    agreement stay in ``result``.

    Examples
    --------
    >>> import m3rcr_xr
    >>> scene = m3rcr_xr.synthetic_scene((64, 64))
    >>> result = m3rcr_xr.evaluate(scene, "cloudfree", "cloudfree", semantic=True,
    ...     classifier="landcover_unet-demo", classify_options={"tile": 32})
    >>> metrics, semantic = split_semantic(result)
    >>> sorted(semantic.dims)
    ['landcover_class', 'source', 'stratum']
    """
    semantic_vars = [v for v in result.data_vars if "source" in result[v].dims]
    semantic_vars += [v for v in result.data_vars if str(v).startswith("agreement")]
    semantic = result[list(SEMANTIC_SCORES)]
    per_class = ("OA", "mIoU", "n_labelled")
    semantic = semantic.assign(
        {v: semantic[v].where(semantic.landcover_class == "all") for v in per_class}
    )
    metrics = result.drop_vars(semantic_vars)
    metrics = metrics.drop_dims([d for d in ("source", *CONFUSION_DIMS) if d in metrics.dims])
    return metrics, semantic.assign_attrs(result.attrs)
