"""The result of :func:`~m3rcr_xr.metrics.evaluate` as a file: CSV or JSON."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..exceptions import StoreError, UsageError, argument
from ..files import replace_together

#: file suffixes :func:`write_table` writes
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".json")
#: the semantic scores of an ``evaluate(..., semantic=True)`` result that make its
#: per-class table (source, stratum, landcover_class); see :func:`split_semantic`
SEMANTIC_SCORES: tuple[str, ...] = ("OA", "mIoU", "n_labelled", "IoU", "F1")
CONFUSION_DIMS = ("true_class", "predicted_class")


def write_table(result: xr.Dataset, path: str | Any) -> None:
    """Write an :func:`evaluate` result as CSV (``.csv``) or JSON (``.json``).

    The JSON holds ``{"attrs": ..., "rows": [one object per (stratum, class)]}`` with
    NaN as null; the CSV has one row per (stratum, class). An existing file at ``path``
    is replaced only when it is such a table (:func:`check_table_replaceable`), and
    only once the new one is complete: a failure leaves the old file as it was.

    Raises
    ------
    UsageError
        ``path`` with another suffix.
    StoreError
        ``path`` an existing file that is not a table of this library, or a link.
    """
    write_tables([(result, path)])


def write_tables(
    tables: Sequence[tuple[xr.Dataset, str | os.PathLike[str]]],
    *,
    remove: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = True,
) -> None:
    """Write tables that belong together (the metrics and semantic tables of one
    result, :func:`split_semantic`), each as :func:`write_table` does, and remove the
    earlier tables of ``remove`` (a semantic table beside a metrics table replaced by
    one without): a kill at any moment leaves the old first table alone, or the first
    new ones, never a table of this run beside one of another
    (:func:`m3rcr_xr.files.replace_together`).

    With ``overwrite`` False, no file is replaced or removed: one there is refused, and
    so is one that appeared by the time the tables are renamed in (another run's,
    written while this one computed), which stays as it is.

    Raises
    ------
    UsageError
        A path with another suffix than :data:`TABLE_SUFFIXES`.
    StoreError
        A path (or one of ``remove``) that is a file but no table of this library, or a
        link; without ``overwrite``, any file there.
    """
    paths = [Path(path) for _, path in tables]
    removed = [Path(path) for path in remove]
    check = check_table_replaceable if overwrite else _check_free
    for path in paths:
        _check_suffix(path)
    for path in [*paths, *removed]:
        check(path)
    writers = [
        (path, functools.partial(Path.write_text, data=_table_text(result, path)))
        for (result, _), path in zip(tables, paths, strict=True)
    ]
    replace_together(writers, remove=removed, check=check)


def _check_free(path: Path) -> None:
    """Refuse any file at ``path`` (a link too): one written since the caller looked,
    by another run perhaps, is never replaced unasked."""
    if path.exists() or path.is_symlink():
        raise StoreError(
            f"{path}: exists (another run may have written it meanwhile); "
            f"pass {argument('overwrite', True)} to replace it"
        )


def _check_suffix(path: Path) -> None:
    """Refuse a table ``path`` whose suffix is not one of :data:`TABLE_SUFFIXES`."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UsageError(
            f"{path}: write {' or '.join(TABLE_SUFFIXES)}, not {suffix or 'no suffix'!r}"
        )


def _table_text(result: xr.Dataset, path: Path) -> str:
    """``result`` as the text of the table ``path``: CSV or JSON by its suffix."""
    table = result.to_dataframe().reset_index()
    if path.suffix.lower() == ".csv":
        return str(table.to_csv(index=False))
    rows = json.loads(table.to_json(orient="records", double_precision=15))
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in result.attrs.items()}
    return json.dumps({"attrs": attrs, "rows": rows}, indent=1)


def check_table_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` unless it is absent or a table :func:`write_table` wrote: a CSV
    whose header names the columns ``stratum`` and ``landcover_class`` (every
    :func:`evaluate` table has both), or a JSON object of ``attrs`` and ``rows``. A
    user's file of that name is never replaced.

    Raises
    ------
    StoreError
        Naming the file: another file, a folder or a symbolic link.
    """
    path = Path(path)
    if path.is_symlink():
        raise StoreError(f"{path}: is a symbolic link; {_ONLY_TABLES}")
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{path}: is not a file; {_ONLY_TABLES}")
    if not _is_table(path):
        raise StoreError(f"{path}: is not a table m3rcr_xr wrote; {_ONLY_TABLES}")


_ONLY_TABLES = (
    "only tables of m3rcr_xr evaluate are replaced: remove it yourself or choose another name"
)
#: a JSON larger than this is no table of ours (they hold a few hundred rows)
_MAX_TABLE_BYTES = 64 * 2**20


def _is_table(path: Path) -> bool:
    return _columns(path) is not None


def _columns(path: Path) -> set[str] | None:
    """The columns of ``path`` when it is a table :func:`write_table` wrote (of a JSON
    table: those of its first row, none without rows), else None."""
    try:
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8") as handle:
                columns = set(handle.readline(4096).strip().split(","))
            return columns if {"stratum", "landcover_class"} <= columns else None
        if path.stat().st_size > _MAX_TABLE_BYTES:
            return None
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(content, dict) and set(content) == {"attrs", "rows"}):
        return None
    rows = content["rows"]
    first = rows[0] if isinstance(rows, list) and rows else None
    return set(first) if isinstance(first, dict) else set()


def is_semantic_table(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a table of semantic scores :func:`write_table` wrote: the
    second table of :func:`split_semantic`, the one with a column ``source`` (not a
    link)."""
    path = Path(path)
    return path.is_file() and not path.is_symlink() and "source" in (_columns(path) or ())


def semantic_table_path(path: str) -> str:
    """Where ``m3rcr evaluate --semantic --out PATH`` writes the semantic table:
    ``NAME_semantic.SUFFIX`` beside ``PATH``.

    Examples
    --------
    >>> semantic_table_path("out/table.csv")
    'out/table_semantic.csv'
    """
    out = Path(path)
    return str(out.with_name(f"{out.stem}_semantic{out.suffix}"))


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
