"""Tests of m3rcr_xr/metrics/tables.py: tables written whole, a user's file kept."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import m3rcr_xr
from m3rcr_xr.exceptions import StoreError
from m3rcr_xr.metrics import (
    check_table_replaceable,
    is_semantic_table,
    write_table,
    write_tables,
)


@pytest.fixture(scope="module")
def result():
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=3)
    return m3rcr_xr.evaluate(scene, "cloudy", "cloudfree").compute()


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_write_table_replaces_its_own_table(result, tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    write_table(result.isel(landcover_class=[0]), path)
    first = path.read_text()
    write_table(result, path)
    assert path.read_text() != first
    if suffix == ".csv":
        assert len(pd.read_csv(path)) == result.sizes["stratum"] * result.sizes["landcover_class"]
    else:
        assert set(json.loads(path.read_text())) == {"attrs", "rows"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("m.csv", "my,own\n1,2\n"),
        ("m.csv", "stratum,value\nall,3\n"),  # one of our columns is not enough
        ("m.json", '{"rows": [1, 2]}'),
        ("m.json", '{"attrs": {}, "rows": [], "mine": 1}'),
        ("m.json", "not json"),
    ],
)
def test_write_table_never_replaces_a_users_file(result, tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(StoreError, match=f"{path}: is not a table m3rcr_xr wrote"):
        write_table(result, path)
    assert path.read_text() == content
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_write_table_refuses_a_link_and_a_folder(result, tmp_path):
    (tmp_path / "theirs.csv").write_text("stratum,landcover_class\n")
    link = tmp_path / "m.csv"
    link.symlink_to(tmp_path / "theirs.csv")
    with pytest.raises(StoreError, match="is a symbolic link"):
        write_table(result, link)
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(StoreError, match="is not a file"):
        check_table_replaceable(tmp_path / "d.csv")


def test_write_table_keeps_a_file_that_appears_while_it_writes(result, tmp_path, monkeypatch):
    from m3rcr_xr.metrics import tables

    path = tmp_path / "m.csv"
    replace_together = tables.replace_together

    def user_writes_meanwhile(writers, **kwargs):
        def both(partial):
            path.write_text("my,own\n")
            write(partial)

        ((target, write),) = writers
        replace_together([(target, both)], **kwargs)

    monkeypatch.setattr(tables, "replace_together", user_writes_meanwhile)
    with pytest.raises(StoreError, match="is not a table"):
        write_table(result, path)
    assert path.read_text() == "my,own\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_write_table_leaves_the_old_table_when_writing_fails(result, tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    write_table(result, path)
    before = path.read_text()
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_table(result, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_write_tables_writes_a_pair_and_removes_an_earlier_semantic_table(result, tmp_path, suffix):
    metrics, semantic = result, result.expand_dims(source=["pred"])  # as split_semantic's
    pair = [tmp_path / f"m{suffix}", tmp_path / f"m_semantic{suffix}"]
    write_tables(list(zip((metrics, semantic), pair, strict=True)))
    assert [is_semantic_table(path) for path in pair] == [False, True]
    write_tables([(metrics, pair[0])], remove=[pair[1]])
    assert [p.name for p in tmp_path.iterdir()] == [pair[0].name]
    assert not is_semantic_table(tmp_path / f"absent{suffix}")


def test_write_tables_never_removes_a_users_file(result, tmp_path):
    theirs = tmp_path / "m_semantic.csv"
    theirs.write_text("source,mine\n")
    with pytest.raises(StoreError, match=f"{theirs}: is not a table m3rcr_xr wrote"):
        write_tables([(result, tmp_path / "m.csv")], remove=[theirs])
    assert [p.name for p in tmp_path.iterdir()] == [theirs.name]
    assert not is_semantic_table(theirs)


def test_write_tables_without_overwrite_keeps_a_table_written_meanwhile(
    result, tmp_path, monkeypatch
):
    """A table of this library that appeared after the start (another run's) was taken
    for one to replace; without ``overwrite`` it is refused, at the rename too, and kept."""
    from m3rcr_xr.metrics import tables

    path = tmp_path / "m.csv"
    table_text = tables._table_text

    def another_run_writes_meanwhile(table, target):
        path.write_text(table_text(result.isel(landcover_class=[0]), path))
        return table_text(table, target)

    monkeypatch.setattr(tables, "_table_text", another_run_writes_meanwhile)
    said = re.escape(f"{path}: exists (another run may have written it meanwhile); pass ")
    said += "overwrite=True to replace it"
    with pytest.raises(StoreError, match=said):
        write_tables([(result, path)], overwrite=False)
    theirs = path.read_text()
    assert len(pd.read_csv(path)) == 1 * result.sizes["stratum"]  # the other run's
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]
    monkeypatch.undo()
    with pytest.raises(StoreError, match=said):  # there from the start
        write_tables([(result, path)], overwrite=False)
    write_tables([(result, path)])  # overwrite: its own table is replaced
    assert path.read_text() != theirs
