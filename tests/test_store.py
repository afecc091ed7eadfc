import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import m3rcr_xr
from m3rcr_xr import store


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_scene_round_trip_keeps_values_and_crs(tmp_path, small_scene):
    m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    assert back.rio.crs == small_scene.rio.crs
    assert back.rio.transform() == small_scene.rio.transform()
    xr.testing.assert_identical(back.compute(), small_scene.compute())
    assert back.cloudy.encoding["chunks"] == (4, 300, 420)  # all bands of a pixel in a chunk
    assert zarr.open_group(tmp_path / "s.zarr").metadata.zarr_format == 3


def test_scene_chunks_follow_the_option(tmp_path):
    scene = m3rcr_xr.synthetic_scene((200, 300), chunks=64)
    with m3rcr_xr.set_options(scene_chunk=128):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert m3rcr_xr.open_zarr(tmp_path / "s.zarr").sar.encoding["chunks"] == (2, 128, 128)


def test_collection_round_trip(tmp_path, samples_dir):
    collection = m3rcr_xr.open_m3rcr(samples_dir / "test")
    m3rcr_xr.to_zarr(collection, tmp_path / "c.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "c.zarr")
    xr.testing.assert_identical(back.compute(), collection.compute())
    assert back.source.dtype.kind == "U"


def test_any_fsspec_url(small_scene):
    m3rcr_xr.to_zarr(small_scene, "memory://round-trip/s.zarr")
    back = m3rcr_xr.open_zarr("memory://round-trip/s.zarr")
    xr.testing.assert_identical(back.compute(), small_scene.compute())


def test_a_complete_store_is_not_replaced_silently(tmp_path, small_scene):
    m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    with pytest.raises(m3rcr_xr.StoreError, match="complete store exists"):
        m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    other = m3rcr_xr.synthetic_scene((100, 100))
    m3rcr_xr.to_zarr(other, tmp_path / "s.zarr", overwrite=True)
    assert m3rcr_xr.open_zarr(tmp_path / "s.zarr").sizes["x"] == 100


def test_missing_store():
    with pytest.raises(m3rcr_xr.StoreError, match="no Zarr store"):
        m3rcr_xr.open_zarr("memory://nothing-here.zarr")


def _failing_at(ds: xr.Dataset, patch: int) -> xr.Dataset:
    """``ds`` whose ``cloudy`` raises when the block holding ``patch`` is computed."""

    def maybe_fail(block, block_info=None):
        start, stop = block_info[0]["array-location"][0]
        if start <= patch < stop:
            raise OSError("disk went away")
        return block

    failing = ds.cloudy.data.map_blocks(maybe_fail, dtype=ds.cloudy.dtype)
    return ds.assign(cloudy=ds.cloudy.copy(data=failing))


def test_failed_write_is_incomplete_then_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CHUNKS_PER_STEP", 1)
    collection = m3rcr_xr.synthetic_collection(6, 48, seed=5)
    with m3rcr_xr.set_options(patches_per_chunk=2):
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(_failing_at(collection, 4), tmp_path / "c.zarr")
        assert not m3rcr_xr.is_complete(tmp_path / "c.zarr")
        with pytest.raises(m3rcr_xr.StoreError, match=r"incomplete \(2 step"):
            m3rcr_xr.open_zarr(tmp_path / "c.zarr")
        with pytest.raises(Exception):  # noqa: B017 - plain xarray must not open it either
            xr.open_zarr(tmp_path / "c.zarr", consolidated=True)

        written = []
        original = store._write_step
        monkeypatch.setattr(
            store,
            "_write_step",
            lambda ds, st, dim, region, **kw: (
                written.append(region),
                original(ds, st, dim, region),
            ),
        )
        m3rcr_xr.to_zarr(collection, tmp_path / "c.zarr")
        assert written == [slice(4, 6)]  # only the step that had not been written
        monkeypatch.setattr(store, "_write_step", original)
        m3rcr_xr.to_zarr(collection, tmp_path / "fresh.zarr")
    assert _files(tmp_path / "c.zarr") == _files(tmp_path / "fresh.zarr")


WRITER = textwrap.dedent("""
    import sys, time
    import m3rcr_xr
    from m3rcr_xr import store
    store.CHUNKS_PER_STEP = 1

    def slow(block):
        time.sleep(0.4)
        return block

    collection = m3rcr_xr.synthetic_collection(10, 48, seed=9)
    collection = collection.assign(cloudy=collection.cloudy.copy(
        data=collection.cloudy.data.map_blocks(slow)))
    with m3rcr_xr.set_options(patches_per_chunk=1, progress=False):
        m3rcr_xr.to_zarr(collection, sys.argv[1])
""")


def test_killed_write_resumes_to_an_identical_store(tmp_path, monkeypatch):
    target = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = _steps_done(target)
            if done >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the writer finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    done = _steps_done(target)
    assert 3 <= done < 10
    with pytest.raises(m3rcr_xr.StoreError, match="incomplete"):
        m3rcr_xr.open_zarr(target)

    monkeypatch.setattr(store, "CHUNKS_PER_STEP", 1)
    collection = m3rcr_xr.synthetic_collection(10, 48, seed=9)
    with m3rcr_xr.set_options(patches_per_chunk=1):
        m3rcr_xr.to_zarr(collection, target)
        m3rcr_xr.to_zarr(collection, tmp_path / "fresh.zarr")
    assert _files(target) == _files(tmp_path / "fresh.zarr")
    back = m3rcr_xr.open_zarr(target)
    np.testing.assert_array_equal(back.cloudy.values, collection.cloudy.values)


def _steps_done(target: Path) -> int:
    try:
        return len(zarr.open_group(target, mode="r").attrs.get(store.PROGRESS, []))
    except Exception:  # not created yet, or being rewritten
        return 0
