import errno
import json
import os
import signal
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import m3rcr_xr
from m3rcr_xr import identity, locks, store
from m3rcr_xr.location import Target
from m3rcr_xr.store import layout, writing
from m3rcr_xr.store.root import ROOT_TMP, set_attrs
from m3rcr_xr.testing import raise_if_dask_computes, serve_directory
from tests.conftest import (
    ForkServer,
    a_file,
    foreign_store,
    geotiff_scene,
    killed_writer,
    left_marker,
    run_script,
    snapshot,
    unconsolidated_store,
    user_folder,
)


def test_scene_round_trip_keeps_values_and_crs(tmp_path, small_scene):
    m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    assert back.rio.crs == small_scene.rio.crs
    assert back.rio.transform() == small_scene.rio.transform()
    xr.testing.assert_identical(back.compute(), small_scene.compute())
    assert back.cloudy.encoding["chunks"] == (4, 300, 420)  # all bands of a pixel in a chunk
    assert zarr.open_group(tmp_path / "s.zarr").metadata.zarr_format == 3


@pytest.mark.parametrize("collection", [False, True], ids=["scene", "collection"])
def test_variables_without_the_written_dim_round_trip(tmp_path, collection):
    """A per-band gain or count has no y (no patch): no step writes it, so it is written
    with the metadata, lazy or not, rather than left as the fill value."""
    ds = (
        m3rcr_xr.synthetic_collection(3, 32, seed=1)
        if collection
        else m3rcr_xr.synthetic_scene((40, 32), seed=1)
    )
    ds["band_gain"] = xr.DataArray(da.from_array(np.array([1.5, 2.5, 3.5, 4.5])), dims="band")
    ds["saturated"] = ("band", np.array([12, 0, 7, 3], "int32"))
    m3rcr_xr.to_zarr(ds, tmp_path / "s.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    xr.testing.assert_identical(back.compute(), ds.compute())


@pytest.mark.parametrize(
    "name", ["vv/vh", "..", "", identity.ID_OBJECT, locks.LOCK, locks.TAKEOVER]
)
def test_a_variable_name_that_is_a_path_is_refused_before_anything_is_written(tmp_path, name):
    scene = m3rcr_xr.synthetic_scene((32, 32)).rename(sar=name)
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.SchemaError, match="rename it"):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("spelling", ["~/s.zarr", "file://{home}/s.zarr", "local://{home}/s.zarr"])
def test_a_local_store_written_as_a_url_or_from_home_is_written_there(
    tmp_path, monkeypatch, spelling
):
    monkeypatch.setenv("HOME", str(tmp_path))
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)
    m3rcr_xr.to_zarr(scene, spelling.format(home=tmp_path))
    assert m3rcr_xr.is_complete(tmp_path / "s.zarr")
    xr.testing.assert_identical(m3rcr_xr.open_zarr(tmp_path / "s.zarr").compute(), scene.compute())


def test_given_encodings_are_kept_and_chunks_are_the_stores(tmp_path):
    from zarr.codecs import BloscCodec

    scene = m3rcr_xr.synthetic_scene((64, 48), chunks=16)
    decloud = scene.cloudy.astype("float32").where(scene.x > scene.x[3])
    decloud = decloud.rio.write_nodata(np.nan, encoded=True)
    decloud.encoding.update(compressors=(BloscCodec(cname="lz4", clevel=3),), chunks=(1, 8, 8))
    cloudy = scene.cloudy.copy()
    cloudy.encoding = {"dtype": "uint16", "_FillValue": 0, "source": "elsewhere.tif"}
    m3rcr_xr.to_zarr(scene.assign(decloud=decloud, cloudy=cloudy), tmp_path / "s.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    assert np.isnan(back.decloud.encoding["_FillValue"]) and np.isnan(back.decloud.rio.nodata)
    (codec,) = back.decloud.encoding["compressors"]
    assert isinstance(codec, BloscCodec) and codec.cname.value == "lz4"
    assert back.decloud.encoding["chunks"] == (4, 64, 48)  # the store's chunks, not (1, 8, 8)
    assert back.cloudy.dtype == np.uint16  # an integer _FillValue would mask it to floats
    assert back.cloudy.encoding["source"] != "elsewhere.tif"
    np.testing.assert_array_equal(back.decloud.values, decloud.values)
    assert "_FillValue" not in back.decloud.attrs


def test_a_nodata_declared_in_attrs_as_rioxarray_does_is_written(tmp_path):
    """rioxarray.open_rasterio declares nodata in ``attrs["_FillValue"]``, which xarray
    refuses next to an encoded one: a float's is encoded (NaN when read), an
    integer's kept as ``attrs["nodata"]`` (the integers are not masked)."""
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)
    scene["sar"][0, 0, 0] = -9999.0
    scene["sar"].attrs["_FillValue"] = np.float32(-9999.0)
    # and the packing rioxarray reads by default, in attrs, changing nothing; an
    # encoded one too, as xarray's rasterio engine gives it
    scene["cloudy"].attrs.update(_FillValue=np.uint16(0), scale_factor=1.0, add_offset=0.0)
    scene["sar"].encoding.update(scale_factor=1.0, add_offset=0.0)
    m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "s.zarr").compute()
    assert back.sar.encoding["_FillValue"] == -9999.0 and "_FillValue" not in back.sar.attrs
    assert np.isnan(back.sar[0, 0, 0]) and back.sar.dtype == np.float32
    np.testing.assert_array_equal(back.sar.values.ravel()[1:], scene.sar.values.ravel()[1:])
    assert back.cloudy.dtype == np.uint16 and back.cloudy.attrs == {"nodata": 0}
    xr.testing.assert_equal(back.cloudy, scene.cloudy)
    assert "scale_factor" not in back.sar.encoding
    assert scene["cloudy"].attrs["_FillValue"] == 0  # the caller's scene is unchanged


@pytest.mark.parametrize(
    ("name", "encoding", "named"),
    [
        (
            "sar",
            {"dtype": "int16", "scale_factor": np.float32(0.01), "_FillValue": np.int16(-1)},
            "scale_factor=0.01",
        ),
        ("sar", {"dtype": "float16"}, "dtype=float16"),
        ("cloudy", {"add_offset": 1}, "add_offset=1"),
    ],
)
def test_an_encoding_that_would_not_read_back_in_the_schema_dtype_is_refused(
    tmp_path, name, encoding, named
):
    """The store would be complete, and open_zarr would refuse it; a variable outside
    the schema keeps such an encoding."""
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)
    scene[name].encoding.update(encoding)
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.SchemaError, match=f"{name}: .*{named}"):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    m3rcr_xr.to_zarr(scene.rename({name: "extra"}), tmp_path / "s.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "s.zarr")
    assert {key: back.extra.encoding[key] for key in encoding} == encoding


def test_scene_chunks_follow_the_option(tmp_path):
    scene = m3rcr_xr.synthetic_scene((200, 300), chunks=64)
    with m3rcr_xr.set_options(scene_chunk=128):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert m3rcr_xr.open_zarr(tmp_path / "s.zarr").sar.encoding["chunks"] == (2, 128, 128)


def test_chunks_of_only_the_fill_value_are_written_too(tmp_path):
    scene = m3rcr_xr.synthetic_scene((256, 256), chunks=128)
    with m3rcr_xr.set_options(scene_chunk=128):
        m3rcr_xr.to_zarr(scene.assign(cloudmask=scene.cloudmask & False), tmp_path / "s.zarr")
    chunks = [
        path for path in (tmp_path / "s.zarr" / "cloudmask" / "c").rglob("*") if path.is_file()
    ]
    assert len(chunks) == 4  # all False, zarr's default would have skipped each one
    assert not m3rcr_xr.open_zarr(tmp_path / "s.zarr").cloudmask.values.any()


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


def _content(root: Path) -> dict[str, bytes]:
    """:func:`snapshot` of a store of this library less its identifier (random, one a
    store): what two writes of the same data share, byte for byte."""
    files = snapshot(root)
    store_id = files.pop(identity.ID_OBJECT)
    files["zarr.json"] = files["zarr.json"].replace(store_id, b"")
    return files


#: the real step writer, before any test wraps it
WRITE_STEP = writing._write_step


def _recording(monkeypatch, fail_at: int | None = None) -> list[slice]:
    """Record the regions ``to_zarr`` writes; the one starting at ``fail_at`` fails as
    a disk that goes away would. The data (and so its fingerprint) is left alone."""
    regions: list[slice] = []

    def write_step(ds, where, dim, region, show=False):
        regions.append(region)
        if region.start == fail_at:
            raise OSError("disk went away")
        WRITE_STEP(ds, where, dim, region, show)

    monkeypatch.setattr(writing, "_write_step", write_step)
    return regions


def _failed_write(monkeypatch, target: Path, patches: int, fail_at: int) -> xr.Dataset:
    """A collection of ``patches`` whose write to ``target`` (one chunk of patches a
    step, under ``patches_per_chunk``) failed at the step starting at ``fail_at``."""
    monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
    collection = m3rcr_xr.synthetic_collection(patches, 48, seed=5)
    _recording(monkeypatch, fail_at=fail_at)
    with pytest.raises(OSError, match="disk went away"):
        m3rcr_xr.to_zarr(collection, target)
    return collection


def test_failed_write_is_incomplete_then_resumes(tmp_path, monkeypatch):
    with m3rcr_xr.set_options(patches_per_chunk=2):
        collection = _failed_write(monkeypatch, tmp_path / "c.zarr", 6, fail_at=4)
        assert not m3rcr_xr.is_complete(tmp_path / "c.zarr")
        with pytest.raises(m3rcr_xr.StoreError, match=r"incomplete \(2 step"):
            m3rcr_xr.open_zarr(tmp_path / "c.zarr")
        with pytest.raises(Exception):  # noqa: B017 - plain xarray must not open it either
            xr.open_zarr(tmp_path / "c.zarr", consolidated=True)

        written = _recording(monkeypatch)
        m3rcr_xr.to_zarr(collection, tmp_path / "c.zarr")
        assert written == [slice(4, 6)]  # only the step that had not been written
        m3rcr_xr.to_zarr(collection, tmp_path / "fresh.zarr")
    assert _content(tmp_path / "c.zarr") == _content(tmp_path / "fresh.zarr")


def test_a_resume_removes_the_temporary_files_of_writes_that_were_cut_off(tmp_path, monkeypatch):

    with m3rcr_xr.set_options(patches_per_chunk=2):
        collection = _failed_write(monkeypatch, tmp_path / "c.zarr", 4, fail_at=2)
        # what zarr leaves of a chunk and a metadata write when its process is killed
        cut_off = [
            tmp_path / "c.zarr" / "cloudy" / "c" / "1" / f"0.{uuid.uuid4().hex}.partial",
            tmp_path / "c.zarr" / "sar" / f"zarr.{uuid.uuid4().hex}.partial",
        ]
        for path in cut_off:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half a chunk")
        _recording(monkeypatch)
        m3rcr_xr.to_zarr(collection, tmp_path / "c.zarr")
        m3rcr_xr.to_zarr(collection, tmp_path / "fresh.zarr")
    assert not any(path.exists() for path in cut_off)
    assert _content(tmp_path / "c.zarr") == _content(tmp_path / "fresh.zarr")


#: writes a collection slowly (every task waits: the graph, and so the data's
#: fingerprint, stays that of the plain collection); argv: store, seed
WRITER = textwrap.dedent("""
    import sys, time
    from dask.callbacks import Callback
    import m3rcr_xr
    from m3rcr_xr.store import layout
    layout.CHUNKS_PER_STEP = 1
    Callback(posttask=lambda *args: time.sleep(0.03)).register()

    collection = m3rcr_xr.synthetic_collection(10, 48, seed=int(sys.argv[2]))
    with m3rcr_xr.set_options(patches_per_chunk=1, progress=False):
        m3rcr_xr.to_zarr(collection, sys.argv[1])
""")


def _script_process(fork_server: ForkServer, code: str, *argv: str, stderr: Path):
    """A started process that runs ``code`` with ``argv``, forked from the fork server
    (a fresh interpreter would spend seconds importing m3rcr_xr)."""
    args = (code, *argv)
    process = fork_server.context.Process(target=run_script, args=args, kwargs={"stderr": stderr})
    process.start()
    return process


def test_killed_write_resumes_to_an_identical_store(tmp_path, monkeypatch, fork_server):
    target = tmp_path / "killed.zarr"
    proc = _script_process(fork_server, WRITER, str(target), "9", stderr=tmp_path / "err")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = _steps_done(target)
            if done >= 3:
                break
            time.sleep(0.05)
        assert proc.is_alive(), "the writer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    finally:
        proc.kill()
    done = _steps_done(target)
    assert 3 <= done < 10
    with pytest.raises(m3rcr_xr.StoreError, match="incomplete"):
        m3rcr_xr.open_zarr(target)

    monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
    collection = m3rcr_xr.synthetic_collection(10, 48, seed=9)
    with m3rcr_xr.set_options(patches_per_chunk=1):
        m3rcr_xr.to_zarr(collection, target)
        m3rcr_xr.to_zarr(collection, tmp_path / "fresh.zarr")
    assert _content(target) == _content(tmp_path / "fresh.zarr")
    back = m3rcr_xr.open_zarr(target)
    np.testing.assert_array_equal(back.cloudy.values, collection.cloudy.values)


def _steps_done(target: Path) -> int:
    try:
        return len(zarr.open_group(target, mode="r").attrs.get(store.PROGRESS, []))
    except Exception:  # not created yet, or being rewritten
        return 0


# ------------------------------------------------------------------ data safety
# Every test that refuses a destination snapshots what was there (all files, bytes)
# and checks it is all still there, unchanged, and nothing was added.


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (user_folder, "a folder of other files, not a store written by m3rcr_xr"),
        (foreign_store, "a Zarr store of other software"),
    ],
    ids=["user-folder", "foreign-zarr"],
)
def test_what_this_library_did_not_write_is_never_written_over(
    tmp_path, small_scene, make, message, overwrite
):
    target = make(tmp_path / "dest")
    before = snapshot(target)
    with pytest.raises(m3rcr_xr.StoreError, match=message):
        m3rcr_xr.to_zarr(small_scene, target, overwrite=overwrite)
    assert snapshot(target) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_is_not_a_destination(tmp_path, small_scene, overwrite):
    target = tmp_path / "scene.zarr"
    target.write_bytes(b"not a store")
    with pytest.raises(m3rcr_xr.StoreError, match="is a file, not a Zarr store"):
        m3rcr_xr.to_zarr(small_scene, target, overwrite=overwrite)
    assert target.read_bytes() == b"not a store"


def test_an_empty_folder_is_written_and_keeps_no_lock(tmp_path, small_scene):
    (tmp_path / "empty.zarr").mkdir()
    m3rcr_xr.to_zarr(small_scene, tmp_path / "empty.zarr")
    assert m3rcr_xr.is_complete(tmp_path / "empty.zarr")
    assert locks.LOCK not in os.listdir(tmp_path / "empty.zarr")


@pytest.mark.filterwarnings("ignore:Object at README.txt is not recognized")
def test_overwrite_replaces_only_the_stores_own_keys(tmp_path, small_scene):
    target = tmp_path / "s.zarr"
    m3rcr_xr.to_zarr(small_scene, target)
    (target / "README.txt").write_text("kept beside the arrays")
    (tmp_path / "notes.txt").write_text("kept beside the store")
    smaller = m3rcr_xr.synthetic_scene((64, 80), seed=4)[["cloudy"]]
    m3rcr_xr.to_zarr(smaller, target, overwrite=True)
    back = m3rcr_xr.open_zarr(target)
    xr.testing.assert_identical(back.compute(), smaller.compute())
    assert (target / "README.txt").read_text() == "kept beside the arrays"
    assert (tmp_path / "notes.txt").read_text() == "kept beside the store"
    assert not (target / "sar").exists()  # the old store's arrays are gone
    assert sorted(os.listdir(target)) == sorted(
        ["README.txt", "zarr.json", identity.ID_OBJECT, *map(str, smaller.variables)]
    )


def test_written_from_is_a_complete_store_of_the_same_data(tmp_path, small_scene):
    target = tmp_path / "s.zarr"
    assert not store.written_from(small_scene, target)  # nothing there
    m3rcr_xr.to_zarr(small_scene, target)
    assert store.written_from(small_scene, target)
    assert not store.written_from(small_scene[["cloudy"]], target)
    assert not store.written_from(m3rcr_xr.synthetic_scene((64, 80), seed=4), target)
    set_attrs(Target.of(target), {store.COMPLETE: False})  # unfinished
    assert not store.written_from(small_scene, target)


@pytest.mark.filterwarnings("ignore:Object at README.txt is not recognized")
def test_remove_store_removes_only_the_stores_own_keys(tmp_path, small_scene):
    kept, gone = tmp_path / "kept.zarr", tmp_path / "gone.zarr"
    for target in (kept, gone):
        m3rcr_xr.to_zarr(small_scene, target)
    (kept / "README.txt").write_text("mine")
    store.remove_store(kept)
    store.remove_store(gone)
    assert os.listdir(kept) == ["README.txt"] and not gone.exists()
    store.remove_store(gone)  # nothing there: nothing to do
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    with pytest.raises(m3rcr_xr.StoreError, match="is a folder of other files"):
        store.remove_store(folder)
    assert snapshot(folder) == before


@pytest.mark.filterwarnings("ignore:Object at README.txt is not recognized")
def test_fsspec_destinations_follow_the_same_rules(small_scene):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/user-folder/notes.txt", b"my notes")
    with pytest.raises(m3rcr_xr.StoreError, match="folder of other files"):
        m3rcr_xr.to_zarr(small_scene, "memory://user-folder", overwrite=True)
    assert fs.ls("/user-folder", detail=False) == ["/user-folder/notes.txt"]
    assert fs.cat_file("/user-folder/notes.txt") == b"my notes"

    m3rcr_xr.to_zarr(small_scene, "memory://safety/s.zarr")
    fs.pipe_file("/safety/s.zarr/README.txt", b"mine")
    fs.pipe_file("/safety/notes.txt", b"beside")
    m3rcr_xr.to_zarr(small_scene[["cloudy"]], "memory://safety/s.zarr", overwrite=True)
    assert set(m3rcr_xr.open_zarr("memory://safety/s.zarr").data_vars) == {"cloudy"}
    assert fs.cat_file("/safety/s.zarr/README.txt") == b"mine"
    assert fs.cat_file("/safety/notes.txt") == b"beside"
    assert not fs.exists("/safety/s.zarr/sar")


def _their_array(root: Path) -> Path:
    """A user's own Zarr array, put in the folder of a store of this library."""
    zarr.create_array(root / "my_labels", shape=(4,), dtype="int32")[:] = [1, 2, 3, 4]
    return root / "my_labels"


@pytest.mark.parametrize("written_by", ["this version", "an older version"])
def test_overwrite_removes_the_stores_own_arrays_only(tmp_path, small_scene, written_by):
    import json

    target = tmp_path / "s.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((32, 32)), target)
    if written_by == "an older version":  # no list of members: the consolidated metadata
        doc = json.loads((target / "zarr.json").read_text())
        del doc["attributes"][store.MEMBERS]
        (target / "zarr.json").write_text(json.dumps(doc))
    theirs = _their_array(target)
    (target / "notes.txt").write_text("mine")
    before = snapshot(theirs)
    m3rcr_xr.to_zarr(small_scene, target, overwrite=True)
    assert snapshot(theirs) == before and (target / "notes.txt").read_text() == "mine"
    xr.testing.assert_identical(m3rcr_xr.open_zarr(target).compute(), small_scene.compute())


@pytest.mark.parametrize("kind", ["array", "file"])
def test_a_variable_named_as_a_users_array_in_the_folder_is_refused(tmp_path, kind):
    """The user's ``my_labels`` beside the store's arrays: writing a variable of that
    name would write into it (and list it as the store's), or remove it on failure."""
    target = tmp_path / "s.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((32, 32)), target)
    if kind == "array":
        _their_array(target)
    else:
        (target / "my_labels").write_text("mine")
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=5)
    scene = scene.assign(my_labels=scene["cloudy"].isel(band=0).astype("float32"))
    before = snapshot(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match="'my_labels' in its folder is not the"):
        m3rcr_xr.to_zarr(scene, target, overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_store_inside_a_store_is_refused(tmp_path, small_scene):
    m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    before = snapshot(tmp_path / "s.zarr")
    for inner in ("inner.zarr", "cloudy/inner.zarr"):
        with pytest.raises(m3rcr_xr.StoreError, match=r"lies inside .*s\.zarr, a store of this"):
            m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr" / inner)
    assert snapshot(tmp_path / "s.zarr") == before


def _users_copy(source: str, copy: str) -> None:
    """What a user of xarray does with a store of this library: open it, edit it, add a
    variable and write it elsewhere; xarray keeps the root's m3rcr_* attributes."""
    with warnings.catch_warnings():  # zarr: consolidated metadata has no v3 spec
        warnings.simplefilter("ignore")
        mine = xr.open_zarr(source)
        mine["cloudy"] = mine.cloudy.clip(0, 3000)
        mine["ndvi"] = mine.cloudfree.sel(band="nir") - mine.cloudfree.sel(band="red")
        mine.to_zarr(copy)
    assert identity.STORE_ID in zarr.open_group(copy, mode="r").attrs  # kept by xarray


COPIED = "a copy of a store of m3rcr_xr written by other software"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_copy_that_xarray_wrote_is_not_a_store_of_this_library(tmp_path, overwrite):
    """Taken for the library's own, it was complete and replaced by --overwrite."""
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)
    m3rcr_xr.to_zarr(scene, tmp_path / "scene.zarr")
    mine = tmp_path / "mine.zarr"
    _users_copy(str(tmp_path / "scene.zarr"), str(mine))
    before = snapshot(mine)
    assert not m3rcr_xr.is_complete(mine)
    with pytest.raises(m3rcr_xr.StoreError, match=f"{COPIED}.*never written over"):
        m3rcr_xr.to_zarr(scene, mine, overwrite=overwrite)
    with pytest.raises(m3rcr_xr.StoreError, match=COPIED):
        store.remove_store(mine)
    with pytest.raises(m3rcr_xr.StoreError, match=f"{COPIED}.*xarray.open_zarr"):
        m3rcr_xr.open_zarr(mine)
    assert snapshot(mine) == before
    assert m3rcr_xr.is_complete(tmp_path / "scene.zarr")  # the store copied is still ours


def test_a_byte_copy_stays_a_store_of_this_library(tmp_path, monkeypatch):
    """cp -a, rsync -a: the identifier's object travels with the attributes."""
    import shutil

    with m3rcr_xr.set_options(patches_per_chunk=2):
        collection = _failed_write(monkeypatch, tmp_path / "c.zarr", 6, fail_at=4)
        shutil.copytree(tmp_path / "c.zarr", tmp_path / "copy.zarr")
        store_id = _root_attrs(tmp_path / "copy.zarr")[identity.STORE_ID]
        written = _recording(monkeypatch)
        m3rcr_xr.to_zarr(collection, tmp_path / "copy.zarr")  # resumed
        assert written == [slice(4, 6)]
        assert _root_attrs(tmp_path / "copy.zarr")[identity.STORE_ID] == store_id  # kept
        shutil.copytree(tmp_path / "copy.zarr", tmp_path / "again.zarr")
        assert m3rcr_xr.is_complete(tmp_path / "again.zarr")
        m3rcr_xr.to_zarr(collection.isel(patch=[0]), tmp_path / "again.zarr", overwrite=True)
    assert m3rcr_xr.open_zarr(tmp_path / "again.zarr").sizes["patch"] == 1
    store.remove_store(tmp_path / "copy.zarr")
    assert not (tmp_path / "copy.zarr").exists()


def _root_attrs(root: Path) -> dict:
    import json

    return json.loads((root / "zarr.json").read_text())["attributes"]


def _as_written_by_an_earlier_version(root: Path) -> None:
    """A store of this library as versions before the identifier wrote it."""
    import json

    doc = json.loads((root / "zarr.json").read_text())
    del doc["attributes"][identity.STORE_ID]
    (root / "zarr.json").write_text(json.dumps(doc))
    (root / identity.ID_OBJECT).unlink()


def test_a_store_of_an_earlier_version_is_still_a_store_of_this_library(tmp_path, monkeypatch):
    complete = tmp_path / "s.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((32, 32), seed=1), complete)
    _as_written_by_an_earlier_version(complete)
    assert m3rcr_xr.is_complete(complete) and m3rcr_xr.open_zarr(complete).sizes["y"] == 32
    with m3rcr_xr.set_options(patches_per_chunk=2):
        collection = _failed_write(monkeypatch, tmp_path / "c.zarr", 6, fail_at=4)
        _as_written_by_an_earlier_version(tmp_path / "c.zarr")
        written = _recording(monkeypatch)
        m3rcr_xr.to_zarr(collection, tmp_path / "c.zarr")  # resumed
        assert written == [slice(4, 6)] and m3rcr_xr.is_complete(tmp_path / "c.zarr")
        m3rcr_xr.to_zarr(collection, complete, overwrite=True)
    assert identity.STORE_ID in _root_attrs(complete)  # replaced: a store of this version
    store.remove_store(tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


def test_a_copy_on_object_storage_is_told_from_the_store_and_a_synced_one(bucket):
    import fsspec

    fs, root = fsspec.filesystem("s3"), f"s3://{bucket}"
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)[["cloudy", "cloudfree"]]
    m3rcr_xr.to_zarr(scene, f"{root}/s.zarr")
    assert fs.exists(f"{bucket}/s.zarr/{identity.ID_OBJECT}")
    fs.copy(f"{bucket}/s.zarr", f"{bucket}/synced.zarr", recursive=True)  # aws s3 sync
    assert m3rcr_xr.is_complete(f"{root}/synced.zarr")
    _users_copy(f"{root}/s.zarr", f"{root}/mine.zarr")
    before = fs.find(f"{bucket}/mine.zarr")
    assert not m3rcr_xr.is_complete(f"{root}/mine.zarr")
    with pytest.raises(m3rcr_xr.StoreError, match=COPIED):
        m3rcr_xr.to_zarr(scene, f"{root}/mine.zarr", overwrite=True)
    with pytest.raises(m3rcr_xr.StoreError, match=COPIED):
        store.remove_store(f"{root}/mine.zarr")
    assert fs.find(f"{bucket}/mine.zarr") == before
    store.remove_store(f"{root}/synced.zarr")
    assert fs.find(f"{bucket}/synced.zarr") == []


def test_member_names_that_leave_the_store_are_refused(tmp_path, small_scene):
    import json

    target = tmp_path / "s.zarr"
    m3rcr_xr.to_zarr(small_scene, target)
    doc = json.loads((target / "zarr.json").read_text())
    doc["attributes"][store.MEMBERS] = ["cloudy", "../elsewhere"]
    (target / "zarr.json").write_text(json.dumps(doc))
    (tmp_path / "elsewhere").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(m3rcr_xr.StoreError, match="m3rcr_members names '../elsewhere'"):
        m3rcr_xr.to_zarr(small_scene, target, overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_write_cut_off_while_its_arrays_are_created_starts_over(tmp_path, monkeypatch):
    """A kill after the root and before every array exists: the next run starts over
    (it failed on every run with xarray's "non-pre-existing variables")."""
    real_set = zarr.storage.LocalStore.set

    async def killed_at_sar(self, key, value, *args, **kwargs):
        if key == "sar/zarr.json":
            raise OSError("killed")
        return await real_set(self, key, value, *args, **kwargs)

    scene = m3rcr_xr.synthetic_scene((64, 64), seed=4)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", killed_at_sar)
    with pytest.raises(OSError, match="killed"):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    monkeypatch.setattr(zarr.storage.LocalStore, "set", real_set)
    assert not m3rcr_xr.is_complete(tmp_path / "s.zarr")
    m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    m3rcr_xr.to_zarr(scene, tmp_path / "fresh.zarr")
    assert _content(tmp_path / "s.zarr") == _content(tmp_path / "fresh.zarr")


# ---------------------------------------------------------- point 2: own input
@pytest.mark.parametrize(
    ("where", "how"),
    [("in.zarr", "is"), ("in.zarr/out.zarr", "lies inside"), (".", "contains")],
)
def test_a_destination_overlapping_an_input_is_refused(tmp_path, where, how):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64), seed=1), tmp_path / "in.zarr")
    before = snapshot(tmp_path)
    scene = m3rcr_xr.open_zarr(tmp_path / "in.zarr")
    out = m3rcr_xr.decloud(
        scene, "dsen2_cr", checkpoint="untrained", config={"n_resblocks": 1, "n_feats": 8}, tile=32
    )
    assert identity.sources(out) == [str(tmp_path / "in.zarr")]  # decloud keeps its input's
    for data in (scene, out.to_dataset()):
        with pytest.raises(m3rcr_xr.StoreError, match=f"the destination {how} the input"):
            m3rcr_xr.to_zarr(data, tmp_path / where, overwrite=True)
    assert snapshot(tmp_path) == before


def test_a_destination_holding_the_input_files_is_refused(tmp_path, train_quartet):
    import shutil

    folder = tmp_path / "quartet"
    folder.mkdir()
    files = {name: shutil.copy(path, folder) for name, path in train_quartet.items()}
    before = snapshot(folder)
    scene = m3rcr_xr.open_quartet(**files)
    assert identity.sources(scene) == sorted(map(str, files.values()))
    for overwrite in (False, True):
        with pytest.raises(m3rcr_xr.StoreError, match="the destination contains the input"):
            m3rcr_xr.to_zarr(scene, folder, overwrite=overwrite)
    assert snapshot(folder) == before


# ----------------------------------------------------- point 3: resume identity
def _cut_off_then_other_data(monkeypatch, target: Path, fail_at: int) -> xr.Dataset:
    """A collection of 4 patches (a step each) whose write to ``target`` failed at the
    step starting at ``fail_at``; returned: a collection of other values, same grid."""
    monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
    first, other = (m3rcr_xr.synthetic_collection(4, 32, seed=s) for s in (5, 6))
    _recording(monkeypatch, fail_at=fail_at)
    with pytest.raises(OSError, match="disk went away"):
        m3rcr_xr.to_zarr(first, target)
    return other


#: a scene of ten chunk rows of 16 x 40 pixels (option scene_chunk=16)
STEP_SCENE = (160, 40)


def _chunk_rows_a_step(monkeypatch, rows: int) -> None:
    """The step plan of a new store: ``rows`` chunk rows of :data:`STEP_SCENE` a step."""
    monkeypatch.setattr(layout, "PIXELS_PER_STEP", rows * 16 * STEP_SCENE[1])


def test_a_step_holds_at_most_pixels_per_step_and_the_store_records_its_steps(
    tmp_path, monkeypatch
):
    """A step is one compute, whose memory grows with its pixels: a wide scene writes
    fewer chunk rows a step (one at least), and the store records how many."""
    scene = m3rcr_xr.synthetic_scene(STEP_SCENE, seed=2)
    written = _recording(monkeypatch)
    with m3rcr_xr.set_options(scene_chunk=16):
        _chunk_rows_a_step(monkeypatch, 3)
        m3rcr_xr.to_zarr(scene, tmp_path / "a.zarr")
        assert written == [slice(0, 48), slice(48, 96), slice(96, 144), slice(144, 160)]
        assert zarr.open_group(tmp_path / "a.zarr").attrs[store.STEP_CHUNKS] == 3
        written.clear()
        monkeypatch.setattr(layout, "PIXELS_PER_STEP", 1)  # less than a chunk row: one
        m3rcr_xr.to_zarr(scene, tmp_path / "b.zarr")
        assert written == [slice(start, start + 16) for start in range(0, 160, 16)]
        written.clear()
        monkeypatch.setattr(layout, "PIXELS_PER_STEP", 10**12)  # CHUNKS_PER_STEP still holds
        m3rcr_xr.to_zarr(scene, tmp_path / "c.zarr")
        assert written == [slice(0, 128), slice(128, 160)]


def _arrays(root: Path) -> dict[str, bytes]:
    """The arrays of a store (its chunks and their metadata): the data, whatever the
    root records of how it was written."""
    return {key: value for key, value in _content(root).items() if key != "zarr.json"}


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "an earlier version's"])
def test_a_resume_writes_the_steps_the_store_began_with(tmp_path, monkeypatch, recorded):
    """Whatever the plan of the version that resumes it: its steps done are counted in
    the store's own steps, and a store of an earlier version, which records none, made
    steps of 8 chunks."""
    scene = m3rcr_xr.synthetic_scene(STEP_SCENE, seed=3)
    target = tmp_path / "s.zarr"
    with m3rcr_xr.set_options(scene_chunk=16):
        _chunk_rows_a_step(monkeypatch, 2 if recorded else 8)
        _recording(monkeypatch, fail_at=64 if recorded else 128)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(scene, target)
        if not recorded:
            root = json.loads((target / "zarr.json").read_text())
            del root["attributes"][store.STEP_CHUNKS]
            (target / "zarr.json").write_text(json.dumps(root))
        _chunk_rows_a_step(monkeypatch, 8 if recorded else 2)
        written = _recording(monkeypatch)
        m3rcr_xr.to_zarr(scene, target)
        assert written == (
            [slice(64, 96), slice(96, 128), slice(128, 160)] if recorded else [slice(128, 160)]
        )
        m3rcr_xr.to_zarr(scene, tmp_path / "fresh.zarr")
    assert _arrays(target) == _arrays(tmp_path / "fresh.zarr")
    xr.testing.assert_identical(m3rcr_xr.open_zarr(target).compute(), scene.compute())


@pytest.mark.parametrize("steps", [0, "2", 2.0, True])
def test_a_store_whose_steps_are_unknown_is_not_resumed(tmp_path, monkeypatch, steps):
    scene = m3rcr_xr.synthetic_scene(STEP_SCENE, seed=3)
    target = tmp_path / "s.zarr"
    with m3rcr_xr.set_options(scene_chunk=16):
        _chunk_rows_a_step(monkeypatch, 2)
        _recording(monkeypatch, fail_at=64)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(scene, target)
        set_attrs(Target.of(target), {store.STEP_CHUNKS: steps})
        written = _recording(monkeypatch)
        with pytest.raises(m3rcr_xr.StoreError, match=f"{store.STEP_CHUNKS}.*overwrite=True"):
            m3rcr_xr.to_zarr(scene, target)
        assert written == []
        m3rcr_xr.to_zarr(scene, target, overwrite=True)
    xr.testing.assert_identical(m3rcr_xr.open_zarr(target).compute(), scene.compute())


def test_an_unfinished_store_of_other_data_is_not_resumed(tmp_path, monkeypatch):
    target = tmp_path / "c.zarr"
    with m3rcr_xr.set_options(patches_per_chunk=1):
        other = _cut_off_then_other_data(monkeypatch, target, fail_at=2)
        written = _recording(monkeypatch)
        before = snapshot(target)
        with pytest.raises(
            m3rcr_xr.StoreError, match="unfinished store of other data.*overwrite=True"
        ):
            m3rcr_xr.to_zarr(other, target)  # same grid, other values
        assert snapshot(target) == before and written == []
        m3rcr_xr.to_zarr(other, target, overwrite=True)
        assert len(written) == 4  # started over, nothing kept from the first data
        m3rcr_xr.to_zarr(other, tmp_path / "fresh.zarr")
    assert _content(target) == _content(tmp_path / "fresh.zarr")


def test_an_unfinished_store_with_no_step_written_is_started_over_for_any_data(
    tmp_path, monkeypatch
):
    """It holds none of its data (killed before its first step was recorded): writing
    other data there starts it over rather than asking for overwrite=True."""
    target = tmp_path / "c.zarr"
    with m3rcr_xr.set_options(patches_per_chunk=1):
        other = _cut_off_then_other_data(monkeypatch, target, fail_at=0)
        assert not m3rcr_xr.is_complete(target)
        written = _recording(monkeypatch)
        m3rcr_xr.to_zarr(other, target)
        assert len(written) == 4
        m3rcr_xr.to_zarr(other, tmp_path / "fresh.zarr")
    assert _content(target) == _content(tmp_path / "fresh.zarr")


def test_a_store_whose_arrays_could_not_be_created_is_taken_back(tmp_path):
    """zarr refuses an encoding (a Zarr v2 codec in a v3 store) while the arrays are
    created: nothing is left, and the corrected call writes the store."""
    import numcodecs

    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)
    scene["cloudy"].encoding["compressors"] = [numcodecs.Blosc()]
    with pytest.raises(TypeError):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    del scene["cloudy"].encoding["compressors"]
    m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert m3rcr_xr.is_complete(tmp_path / "s.zarr")


def test_corrected_input_files_are_not_resumed(tmp_path, monkeypatch):
    files = geotiff_scene(tmp_path / "in", 100)
    with m3rcr_xr.set_options(scene_chunk=16):
        monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
        _recording(monkeypatch, fail_at=32)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "s.zarr")
        written = _recording(monkeypatch)
        geotiff_scene(tmp_path / "in", 200)  # the same files, corrected
        with pytest.raises(m3rcr_xr.StoreError, match="unfinished store of other data"):
            m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "s.zarr")
        assert written == []


def _rewritten_in_place(path: Path) -> None:
    """Other pixels written into the GeoTIFF at ``path`` (its inode kept), as an editor
    or ``gdal_calc`` does."""
    import rasterio

    with rasterio.open(path, "r+") as raster:
        raster.write(raster.read()[:, ::-1] + 1)


def _interrupted_quartet(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """GeoTIFF inputs whose write to ``tmp_path / "s.zarr"`` failed after two steps."""
    files = geotiff_scene(tmp_path / "in", 100)
    monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
    _recording(monkeypatch, fail_at=32)
    with pytest.raises(OSError, match="disk went away"):
        m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "s.zarr")
    return files


def test_untouched_input_files_are_resumed(tmp_path, monkeypatch):
    """Reopened unchanged (read meanwhile, which moves no change time), the files are
    the same data: the resume writes the steps left only."""
    with m3rcr_xr.set_options(scene_chunk=16):
        files = _interrupted_quartet(tmp_path, monkeypatch)
        m3rcr_xr.open_quartet(**files).load()
        written = _recording(monkeypatch)
        m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "s.zarr")
    assert written == [slice(32, 48), slice(48, 64)]
    assert m3rcr_xr.is_complete(tmp_path / "s.zarr")


def test_an_input_replaced_with_its_size_and_times_kept_is_not_resumed(tmp_path, monkeypatch):
    """Its size and modification time as they were (``cp -p`` then ``mv``), the file's
    inode tells it apart: the resume would have mixed the rows of both files. A
    ``chmod`` of the inputs (read-only raw data) changes no data: the resume goes on."""
    with m3rcr_xr.set_options(scene_chunk=16):
        files = _interrupted_quartet(tmp_path, monkeypatch)
        files["cloudy"].chmod(0o444)
        stat = files["cloudy"].stat()
        _replaced(files["cloudy"])
        os.utime(files["cloudy"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert files["cloudy"].stat().st_size == stat.st_size
        written, before = _recording(monkeypatch), snapshot(tmp_path / "s.zarr")
        with pytest.raises(m3rcr_xr.StoreError, match="unfinished store of other data"):
            m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "s.zarr")
    assert written == [] and snapshot(tmp_path / "s.zarr") == before


def test_a_chmod_of_the_inputs_does_not_stop_a_resume(tmp_path, monkeypatch):
    """Made read-only while the write was cut off (their change time moves), the files
    hold the same data: the resume writes the steps left."""
    with m3rcr_xr.set_options(scene_chunk=16):
        files = _interrupted_quartet(tmp_path, monkeypatch)
        for path in files.values():
            path.chmod(0o444)
        written = _recording(monkeypatch)
        m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "s.zarr")
    assert written == [slice(32, 48), slice(48, 64)]


def _replaced(path: Path) -> None:
    """The GeoTIFF at ``path`` replaced by another (written beside it, renamed over it,
    as a download or a re-export does)."""
    import rasterio

    with rasterio.open(path) as raster:
        profile, values = raster.profile, raster.read()
    with rasterio.open(path.with_suffix(".new.tif"), "w", **profile) as raster:
        raster.write(values[:, ::-1] + 1)
    os.replace(path.with_suffix(".new.tif"), path)


@pytest.mark.parametrize("change", [_rewritten_in_place, _replaced], ids=["in place", "replaced"])
def test_a_scene_whose_file_changed_since_it_was_opened_is_refused(tmp_path, change):
    """The lazy scene read its top rows (GDAL caches their blocks; rioxarray keeps the
    file open) before the file changed: the store held rows of the old file (all of
    them, a file replaced) and rows of the new one, and was complete."""
    files = geotiff_scene(tmp_path / "in", 100)
    with m3rcr_xr.set_options(scene_chunk=16):
        scene = m3rcr_xr.open_quartet(**files)
        scene["cloudy"][:, :32].compute()  # a look at the top of the scene
        change(files["cloudy"])
        with pytest.raises(m3rcr_xr.InputFileError, match=r"cloudy\.tif: changed since it was"):
            m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
        assert not (tmp_path / "s.zarr").exists()
        m3rcr_xr.to_zarr(m3rcr_xr.open_quartet(**files), tmp_path / "s.zarr")  # opened again
    assert (m3rcr_xr.open_zarr(tmp_path / "s.zarr")["cloudy"][:, 0].values == 101).all()


@pytest.mark.parametrize(
    "change", [_rewritten_in_place, _replaced, Path.unlink], ids=["in place", "replaced", "removed"]
)
def test_a_loaded_scene_is_written_whatever_became_of_its_files(tmp_path, change):
    """In memory (``.load()``), a scene cannot mix a file's old and new data: it is
    written as it was loaded (it was refused as changed since it was opened)."""
    files = geotiff_scene(tmp_path / "in", 100)
    scene = m3rcr_xr.open_quartet(**files).load()
    change(files["cloudy"])
    m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert (m3rcr_xr.open_zarr(tmp_path / "s.zarr")["cloudy"].values == 100).all()


def test_a_lazy_scene_whose_file_was_removed_is_refused_saying_so(tmp_path):
    files = geotiff_scene(tmp_path / "in", 100)
    scene = m3rcr_xr.open_quartet(**files)
    scene["cloudy"] = scene["cloudy"].load()  # sar is still to be read
    files["sar"].unlink()
    with pytest.raises(m3rcr_xr.InputFileError, match=r"sar\.tif: removed since it was opened"):
        m3rcr_xr.to_zarr(scene, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def _their_scene(path: Path) -> xr.Dataset:
    """A scene in a Zarr store written by xarray itself (no m3rcr_* attributes), opened
    as a user of xarray opens it."""
    if not path.exists():
        with warnings.catch_warnings():  # zarr: fixed-width strings have no v3 spec
            warnings.simplefilter("ignore")
            scene = m3rcr_xr.synthetic_scene((64, 16), seed=1)
            scene.to_zarr(path, zarr_format=3, consolidated=False)
    return xr.open_zarr(path, consolidated=False, decode_coords="all")


def _source_scene(path: Path, writer: str) -> xr.Dataset:
    """A scene in a Zarr store of ``writer`` ("xarray" or "m3rcr_xr"), opened."""
    if writer == "xarray":
        return _their_scene(path)
    if not path.exists():
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 16), seed=1), path)
    return m3rcr_xr.open_zarr(path)


@pytest.mark.parametrize("writer", ["xarray", "m3rcr_xr"])
def test_a_zarr_store_corrected_in_place_is_not_resumed(tmp_path, monkeypatch, writer):
    """xarray's token of such a store covers its top folder's modification time only,
    which a chunk rewritten in place leaves alone, and so does the fingerprint a store
    of this library keeps (the data it was written from); the store's listing does not."""
    source, target = tmp_path / "source.zarr", tmp_path / "copy.zarr"
    with m3rcr_xr.set_options(scene_chunk=16):
        _source_scene(source, writer)
        monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
        _recording(monkeypatch, fail_at=32)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(_source_scene(source, writer), target)
        assert identity.sources(_source_scene(source, writer)) == [str(source)]

        def fingerprint() -> str:
            ds = _source_scene(source, writer)
            return identity.data_fingerprint(layout.prepare(ds), identity.sources(ds))

        first = fingerprint()
        assert fingerprint() == first  # reopened unchanged: a resume is allowed
        cloudy = zarr.open_array(source / "cloudy", mode="r+")
        cloudy[:, 32:48] = cloudy[:, 32:48] + 1000  # the rows not yet copied, corrected
        assert fingerprint() != first
        written, before = _recording(monkeypatch), snapshot(target)
        with pytest.raises(m3rcr_xr.StoreError, match="unfinished store of other data"):
            m3rcr_xr.to_zarr(_source_scene(source, writer), target)
        assert written == [] and snapshot(target) == before


def test_an_input_replaced_while_it_is_read_leaves_the_store_unfinished(tmp_path, monkeypatch):
    """Another process re-ingests the input (here: between two steps): the store held
    rows of both versions, and was marked complete."""
    source, target = tmp_path / "in.zarr", tmp_path / "out.zarr"
    with m3rcr_xr.set_options(scene_chunk=16):
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 16), seed=1), source)
        monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)

        def reingested_after_the_first_step(ds, where, dim, region, show=False):
            WRITE_STEP(ds, where, dim, region, show)
            if region.start == 0:
                monkeypatch.setattr(writing, "_write_step", WRITE_STEP)
                new = m3rcr_xr.synthetic_scene((64, 16), seed=2)
                m3rcr_xr.to_zarr(new, source, overwrite=True)
                monkeypatch.setattr(writing, "_write_step", reingested_after_the_first_step)

        monkeypatch.setattr(writing, "_write_step", reingested_after_the_first_step)
        with pytest.raises(m3rcr_xr.StoreError, match=r"input .*in\.zarr changed while it"):
            m3rcr_xr.to_zarr(m3rcr_xr.open_zarr(source)[["cloudy"]], target)
        assert not m3rcr_xr.is_complete(target)
        regions = _recording(monkeypatch)
        with pytest.raises(m3rcr_xr.StoreError, match="unfinished store of other data"):
            m3rcr_xr.to_zarr(m3rcr_xr.open_zarr(source)[["cloudy"]], target)  # no resume
        assert regions == []
        m3rcr_xr.to_zarr(m3rcr_xr.open_zarr(source)[["cloudy"]], target, overwrite=True)
    xr.testing.assert_identical(
        m3rcr_xr.open_zarr(target).cloudy.compute(), m3rcr_xr.open_zarr(source).cloudy.compute()
    )


def _http_input(served: Path, url: str) -> xr.Dataset:
    """A scene read (as far as to_zarr can tell) from ``served/a.tif``, served at ``url``."""
    scene = m3rcr_xr.synthetic_scene((64, 16), seed=1)
    scene.encoding["source"] = f"{url}/a.tif"
    return scene


def test_a_resume_sees_an_http_input_replaced(tmp_path, monkeypatch):
    """An HTTP input replaced by a file of the same size: its Last-Modified (all that
    Python's server sends) tells them apart, its size alone would not."""
    served, target = tmp_path / "served", tmp_path / "s.zarr"
    served.mkdir()
    (served / "a.tif").write_bytes(b"A" * 100)
    first = os.stat(served / "a.tif").st_mtime_ns
    with serve_directory(served) as url, m3rcr_xr.set_options(scene_chunk=16):
        monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
        _recording(monkeypatch, fail_at=16)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(_http_input(served, url), target)
        written = _recording(monkeypatch)
        (served / "a.tif").write_bytes(b"B" * 100)  # replaced: same size, a later date
        os.utime(served / "a.tif", ns=(first + 10**10, first + 10**10))
        with pytest.raises(m3rcr_xr.StoreError, match="unfinished store of other data"):
            m3rcr_xr.to_zarr(_http_input(served, url), target)
        (served / "a.tif").write_bytes(b"A" * 100)  # the first file again: resumed
        os.utime(served / "a.tif", ns=(first, first))
        m3rcr_xr.to_zarr(_http_input(served, url), target)
    assert written == [slice(16, 32), slice(32, 48), slice(48, 64)]


def test_a_resume_from_an_input_with_no_version_is_refused(tmp_path, monkeypatch, caplog):
    """A server that sends neither ETag nor Last-Modified: a change of the input could
    not be seen, so the first write warns and a resume is refused."""
    served, target = tmp_path / "served", tmp_path / "s.zarr"
    served.mkdir()
    (served / "a.tif").write_bytes(b"A" * 100)
    with (
        serve_directory(served, last_modified=False) as url,
        m3rcr_xr.set_options(scene_chunk=16),
    ):
        monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
        _recording(monkeypatch, fail_at=16)
        with pytest.raises(OSError, match="disk went away"):
            m3rcr_xr.to_zarr(_http_input(served, url), target)
        assert f"{url}/a.tif reports its size but no version" in caplog.text
        assert "if this write is interrupted, it cannot be resumed" in caplog.text
        written, before = _recording(monkeypatch), snapshot(target)
        refused = rf"{target}: cannot resume .*: the input {url}/a.tif reports .*overwrite=True"
        with pytest.raises(m3rcr_xr.StoreError, match=refused):
            m3rcr_xr.to_zarr(_http_input(served, url), target)
        assert written == [] and snapshot(target) == before
        m3rcr_xr.to_zarr(_http_input(served, url), target, overwrite=True)
    assert m3rcr_xr.is_complete(target) and len(written) == 4


@pytest.mark.parametrize("where", ["memory", "s3"])
def test_overwrite_keeps_an_array_a_variables_glob_characters_would_match(tmp_path, request, where):
    """fsspec's rm takes x[1] for a pattern, which matches a user's array x1 (a
    local store is removed with shutil, which takes none)."""
    import fsspec

    if where == "s3":
        root = f"s3://{request.getfixturevalue('bucket')}"  # moto on loopback
    else:
        root = f"memory://glob-{tmp_path.name}"
    fs, path = fsspec.core.url_to_fs(root)
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)
    ds = scene[["landcover"]].rename(landcover="x[1]")  # few arrays: few requests
    m3rcr_xr.to_zarr(ds, f"{root}/s.zarr")
    theirs = zarr.create_array(f"{root}/s.zarr/x1", shape=(4,), chunks=(2,), dtype="i4")
    theirs[:] = np.arange(4)
    before = fs.find(f"{path}/s.zarr/x1")
    m3rcr_xr.to_zarr(ds, f"{root}/s.zarr", overwrite=True)
    assert fs.find(f"{path}/s.zarr/x1") == before and len(before) == 3
    np.testing.assert_array_equal(zarr.open_array(f"{root}/s.zarr/x1")[:], np.arange(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: x1 is no member of the store's group
        back = m3rcr_xr.open_zarr(f"{root}/s.zarr", validate_schema=False).compute()
    xr.testing.assert_identical(back, ds.compute())


# ---------------------------------------------------------- point 4: one writer
def test_a_second_writer_in_this_process_is_refused(tmp_path, small_scene):
    target = Target.of(tmp_path / "s.zarr")
    busy = pytest.raises(m3rcr_xr.StoreError, match="another writer is writing this store")
    with locks.locked(target), busy:
        m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")  # the lock went with its holder
    assert m3rcr_xr.is_complete(tmp_path / "s.zarr")


def test_object_stores_keep_one_writer_with_a_marker(small_scene):
    import fsspec

    fs = fsspec.filesystem("memory")
    marker = f"/one-writer/s.zarr/{locks.LOCK}"
    fs.pipe_file(marker, b'{"host": "node-7", "pid": 4242}')
    with pytest.raises(m3rcr_xr.StoreError, match="node-7.*delete the marker"):
        m3rcr_xr.to_zarr(small_scene, "memory://one-writer/s.zarr")
    assert fs.ls("/one-writer/s.zarr", detail=False) == [marker]
    fs.rm(marker)
    m3rcr_xr.to_zarr(small_scene, "memory://one-writer/s.zarr")
    assert m3rcr_xr.is_complete("memory://one-writer/s.zarr") and not fs.exists(marker)


@pytest.mark.parametrize("how", ["killed", "its pid reused"])
def test_the_marker_of_a_writer_gone_from_this_machine_is_taken_over(small_scene, caplog, how):
    mine = locks._owner()
    dead = killed_writer() if how == "killed" else {**mine, "started": mine["started"] + 1}
    url, marker = left_marker(dead)
    m3rcr_xr.to_zarr(small_scene, url)
    fs = Target.of(url).fs
    assert m3rcr_xr.is_complete(url) and not fs.exists(marker)
    assert not fs.exists(marker.replace(locks.LOCK, locks.TAKEOVER))
    assert (
        f"{url}: removed the marker {fs.unstrip_protocol(marker)} of a writer that is no "
        "longer running "
        f"(host {dead['host']}, pid {dead['pid']}, since {dead['since']})"
    ) in caplog.text


#: markers whose writer may still run: how each is made of a killed writer's record
_NO_PROOF = {
    "alive": lambda dead: locks._owner(),
    "of another host": lambda dead: {**dead, "host": "node-7"},
    "of another boot": lambda dead: {**dead, "boot_id": "another-boot"},
    "of another pid namespace": lambda dead: {**dead, "pid_namespace": 1},
    "of no start time": lambda dead: {k: v for k, v in dead.items() if k != "started"},
    "of an earlier version": lambda dead: {k: dead[k] for k in ("host", "pid", "since")},
    "read without /proc": lambda dead: dead,
}


@pytest.mark.parametrize("how", list(_NO_PROOF))
def test_a_marker_of_a_writer_that_may_still_run_is_refused_and_kept(small_scene, monkeypatch, how):
    record = _NO_PROOF[how](killed_writer())
    url, marker = left_marker(record)
    if how == "read without /proc":
        monkeypatch.setattr(locks, "_machine", lambda: None)
    with pytest.raises(m3rcr_xr.StoreError, match=f"{url}: another writer.*delete the marker"):
        m3rcr_xr.to_zarr(small_scene, url)
    fs = Target.of(url).fs
    assert fs.ls(marker.removesuffix(f"/{locks.LOCK}"), detail=False) == [marker]
    assert json.loads(fs.cat_file(marker)) == record


def test_a_takeover_cut_off_is_refused_naming_its_object(small_scene):
    """A rerun killed while it took over a stale marker leaves the takeover's object:
    no rerun may take the marker over then (the first may still run), until it is
    deleted."""
    url, marker = left_marker(killed_writer())
    taker = marker.replace(locks.LOCK, locks.TAKEOVER)
    fs = Target.of(url).fs
    fs.pipe_file(taker, json.dumps(killed_writer()).encode())
    with pytest.raises(
        m3rcr_xr.StoreError,
        match=f"{url}: another writer.*a rerun taking over its stale marker holds "
        f"{fs.unstrip_protocol(taker)} from .*that takeover was cut off.*delete that object",
    ):
        m3rcr_xr.to_zarr(small_scene, url)
    assert sorted(fs.ls(marker.removesuffix(f"/{locks.LOCK}"), detail=False)) == [marker, taker]
    assert store.store_state(url) == "empty"
    fs.rm_file(taker)
    m3rcr_xr.to_zarr(small_scene, url)
    assert m3rcr_xr.is_complete(url) and not fs.exists(marker) and not fs.exists(taker)


@pytest.mark.parametrize(
    ("name", "what"),
    [
        (locks.LOCK, "lock file"),
        (ROOT_TMP, "root's temporary file"),
        (identity.ID_OBJECT, "store's identifier"),
    ],
)
@pytest.mark.parametrize("target_exists", [False, True], ids=["dangling", "to-a-file"])
def test_a_file_of_the_store_that_is_a_symbolic_link_is_refused_and_not_followed(
    tmp_path, small_scene, name, what, target_exists
):
    (tmp_path / "s.zarr").mkdir()
    elsewhere = tmp_path / "thesis.txt"
    if target_exists:
        elsewhere.write_text("a user's thesis")
    (tmp_path / "s.zarr" / name).symlink_to(elsewhere)
    with pytest.raises(m3rcr_xr.StoreError, match=f"{what} is a symbolic link; remove it"):
        m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    # the link's target was neither created nor written
    assert elsewhere.exists() == target_exists
    assert not target_exists or elsewhere.read_text() == "a user's thesis"
    assert sorted(os.listdir(tmp_path / "s.zarr")) in ([name], sorted([name, locks.LOCK]))


#: imports m3rcr_xr as on Windows (no fcntl; msvcrt faked with flock, which also
#: refuses a second lock from the same process), then writes a store while another
#: handle holds its lock, and once more when it is free
AS_ON_WINDOWS = textwrap.dedent("""
    import fcntl, importlib.abc, os, sys, types
    import dask.array, distributed, fsspec, numpy, odc.geo, odc.stac, pystac, rioxarray, zarr

    def locking(fd, mode, nbytes):
        assert (mode, nbytes) == (msvcrt.LK_NBLCK, 1)
        try:
            flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PermissionError(13, "Permission denied") from None  # Windows' error

    class NoFcntl(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "fcntl":
                raise ModuleNotFoundError("No module named 'fcntl'")

    flock = fcntl.flock
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_NBLCK, msvcrt.locking = 2, locking
    sys.modules["msvcrt"] = msvcrt
    del sys.modules["fcntl"]
    sys.meta_path.insert(0, NoFcntl())
    sys.platform, platform = "win32", sys.platform
    import m3rcr_xr
    from m3rcr_xr import locks
    sys.platform = platform
    assert not hasattr(locks, "fcntl")

    target = os.path.join(sys.argv[1], "s.zarr")
    scene = m3rcr_xr.synthetic_scene((64, 64), seed=3)
    os.makedirs(target)
    held = os.open(os.path.join(target, locks.LOCK), os.O_RDWR | os.O_CREAT)
    locking(held, msvcrt.LK_NBLCK, 1)
    try:
        m3rcr_xr.to_zarr(scene, target)
    except m3rcr_xr.StoreError as error:
        assert "another writer is writing this store" in str(error), error
    else:
        raise AssertionError("a held lock did not refuse the writer")
    os.close(held)
    m3rcr_xr.to_zarr(scene, target)
    assert m3rcr_xr.is_complete(target) and locks.LOCK not in os.listdir(target)
""")


def test_imports_and_locks_without_fcntl_as_on_windows(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", AS_ON_WINDOWS, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


#: one of two writers of a collection to one store; argv: store, seed, role, signals.
#: The first pauses after its first step until the test says go; the second waits
#: until the first is writing, then tries.
TWO_WRITERS = textwrap.dedent("""
    import os, sys, time
    import m3rcr_xr
    from m3rcr_xr.store import layout, writing
    target, seed, role, signals = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    layout.CHUNKS_PER_STEP = 1
    write_step = writing._write_step

    def wait_for(name):
        while not os.path.exists(os.path.join(signals, name)):
            time.sleep(0.02)

    def paused(ds, where, dim, region, show=False):
        if region.start == 1:
            open(os.path.join(signals, "writing"), "w").close()
            wait_for("go")
        write_step(ds, where, dim, region, show)

    if role == "first":
        writing._write_step = paused
    else:
        wait_for("writing")
    collection = m3rcr_xr.synthetic_collection(3, 32, seed=seed)
    with m3rcr_xr.set_options(patches_per_chunk=1, progress=False):
        m3rcr_xr.to_zarr(collection, target)
""")


@pytest.mark.slow
def test_two_writing_processes_one_is_refused_and_nothing_mixes(tmp_path, monkeypatch, fork_server):
    target, signals = tmp_path / "s.zarr", tmp_path / "signals"
    signals.mkdir()

    def writer(seed: int, role: str):
        argv = (str(target), str(seed), role, str(signals))
        return _script_process(fork_server, TWO_WRITERS, *argv, stderr=tmp_path / role)

    first, second = writer(9, "first"), writer(10, "second")
    try:
        second.join(timeout=120)
        (signals / "go").touch()
        first.join(timeout=120)
    finally:
        first.kill()
        second.kill()
    assert first.exitcode == 0, (tmp_path / "first").read_text()
    refused = (tmp_path / "second").read_text()
    assert second.exitcode not in (0, None), refused  # None: still running
    assert "StoreError" in refused and "another writer is writing this store" in refused
    monkeypatch.setattr(layout, "CHUNKS_PER_STEP", 1)
    with m3rcr_xr.set_options(patches_per_chunk=1):
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(3, 32, seed=9), tmp_path / "fresh.zarr")
    assert _content(target) == _content(tmp_path / "fresh.zarr")  # the first writer's only


# ------------------------------------------------------ point 5: completion last
def test_a_kill_while_completing_leaves_a_store_that_finishes(tmp_path, monkeypatch, small_scene):
    write_root = writing.write_root

    def killed_while_completing(target, doc):
        if doc["attributes"].get(store.COMPLETE):  # half a new root, never renamed
            (Path(target.path) / ROOT_TMP).write_bytes(b'{"attributes": {"m3r')
            raise RuntimeError("killed")
        write_root(target, doc)

    monkeypatch.setattr(writing, "write_root", killed_while_completing)
    with pytest.raises(RuntimeError, match="killed"):
        m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    assert not m3rcr_xr.is_complete(tmp_path / "s.zarr")
    with pytest.raises(m3rcr_xr.StoreError, match="incomplete"):
        m3rcr_xr.open_zarr(tmp_path / "s.zarr")

    monkeypatch.setattr(writing, "write_root", write_root)
    written = _recording(monkeypatch)
    m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    assert written == []  # every step was there: only the completion was missing
    m3rcr_xr.to_zarr(small_scene, tmp_path / "fresh.zarr")
    assert _content(tmp_path / "s.zarr") == _content(tmp_path / "fresh.zarr")


@pytest.mark.filterwarnings("ignore:Object at .m3rcr-store is not recognized")
def test_the_consolidated_metadata_is_zarrs_own(tmp_path, small_scene):
    import json
    import shutil

    m3rcr_xr.to_zarr(small_scene, tmp_path / "ours.zarr")
    shutil.copytree(tmp_path / "ours.zarr", tmp_path / "zarrs.zarr")
    with pytest.warns(UserWarning, match="Consolidated metadata"):
        zarr.consolidate_metadata(tmp_path / "zarrs.zarr")
    ours, zarrs = (
        json.loads((tmp_path / n / "zarr.json").read_text()) for n in ("ours.zarr", "zarrs.zarr")
    )
    assert ours == zarrs


# -------------------------------------------------- reading what is not ours
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (a_file, "not a store written by m3rcr_xr \\(a file\\)"),
        (user_folder, "not a store written by m3rcr_xr \\(no zarr.json\\)"),
        (lambda root: root.mkdir() or root, "not a store written by m3rcr_xr \\(an empty folder"),
        (foreign_store, "not a store written by m3rcr_xr \\(a Zarr store without m3rcr_"),
        (unconsolidated_store, "no consolidated metadata.*overwrite=True"),
    ],
    ids=["file", "user-folder", "empty-folder", "foreign-zarr", "unconsolidated"],
)
def test_open_zarr_says_what_is_there(tmp_path, make, message):
    target = make(tmp_path / "in.zarr")
    with pytest.raises(m3rcr_xr.StoreError, match=message):
        m3rcr_xr.open_zarr(target)
    assert not m3rcr_xr.is_complete(target) or make is unconsolidated_store


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_file_system_is_a_store_error(tmp_path, monkeypatch, small_scene, code):
    def unwritable(ds, where, dim, region, show=False):
        raise OSError(code, os.strerror(code), str(where))

    monkeypatch.setattr(writing, "_write_step", unwritable)
    with pytest.raises(
        m3rcr_xr.StoreError, match=f"s.zarr: writing the store failed: {os.strerror(code)}"
    ):
        m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("link", "link is a symbolic link to .*nowhere, which does not exist"),
        ("link/s.zarr", "no store can be made there \\(.*link is a symbolic link to"),
        ("a" * 300 + ".zarr", "no store can be made there \\(File name too long\\)"),
        ("file/s.zarr", "no store can be made there \\(Not a directory\\)"),
    ],
    ids=["dangling-link", "below-a-dangling-link", "name-too-long", "below-a-file"],
)
def test_a_destination_where_no_folder_can_be_made_is_refused_before_any_work(
    tmp_path, small_scene, dest, message
):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("a user's file")
    before = snapshot(tmp_path)
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.StoreError, match=message):
        m3rcr_xr.to_zarr(small_scene, tmp_path / dest)
    assert snapshot(tmp_path) == before and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG])
def test_a_path_error_is_the_stores_only_on_its_own_path(tmp_path, monkeypatch, small_scene, code):
    """Raised on the store's path (a link changed under the writer): a StoreError naming
    it; on another path (an input that went away): the error itself."""
    where: list[str] = []

    def fails(ds, store, dim, region, show=False):
        raise OSError(code, os.strerror(code), where[0])

    monkeypatch.setattr(writing, "_write_step", fails)
    where.append(str(tmp_path / "s.zarr" / "cloudy" / "c"))
    with pytest.raises(
        m3rcr_xr.StoreError, match=f"s.zarr: writing the store failed: {os.strerror(code)}"
    ):
        m3rcr_xr.to_zarr(small_scene, tmp_path / "s.zarr")
    where[0] = str(tmp_path / "input.tif")
    with pytest.raises(OSError) as raised:
        m3rcr_xr.to_zarr(small_scene, tmp_path / "t.zarr")
    assert not isinstance(raised.value, m3rcr_xr.StoreError) and raised.value.errno == code


def test_a_location_fsspec_cannot_open_is_a_store_error(monkeypatch, small_scene):
    from fsspec.registry import known_implementations

    monkeypatch.setitem(  # a protocol whose backend is not installed (gcsfs for gs://)
        known_implementations, "m3rcrtest", {"class": "no_such_module.FS", "err": "pip install it"}
    )
    with pytest.raises(m3rcr_xr.StoreError, match="foo://x.zarr: cannot open this location"):
        m3rcr_xr.open_zarr("foo://x.zarr")
    assert not m3rcr_xr.is_complete("foo://x.zarr")
    with pytest.raises(m3rcr_xr.StoreError, match=r"m3rcrtest://x.zarr: .* \(pip install it\)"):
        m3rcr_xr.to_zarr(small_scene, "m3rcrtest://x.zarr")


def test_no_object_store_credentials_is_a_store_error(monkeypatch, tmp_path, small_scene):
    """botocore's NoCredentialsError is no OSError; nothing leaves this machine (no
    instance metadata, an endpoint on loopback that nothing listens on)."""
    s3fs = pytest.importorskip("s3fs")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    s3fs.S3FileSystem.clear_instance_cache()
    options = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}}
    message = "s3://b/s.zarr: cannot reach the store \\(Unable to locate credentials\\)"
    with pytest.raises(m3rcr_xr.StoreError, match=message):
        m3rcr_xr.to_zarr(small_scene, "s3://b/s.zarr", storage_options=options)
    with pytest.raises(m3rcr_xr.StoreError, match=message):
        m3rcr_xr.open_zarr("s3://b/s.zarr", storage_options=options)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_a_store_error(tmp_path, small_scene):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(m3rcr_xr.StoreError, match="Permission denied"):
            m3rcr_xr.to_zarr(small_scene, tmp_path / "ro" / "s.zarr")
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert os.listdir(tmp_path / "ro") == []


def _cache_probe(seen: list) -> xr.Dataset:
    """A small scene whose cloudy chunks record GDAL's block-cache limit when computed."""
    from rasterio._env import get_gdal_config

    def record(block):
        seen.append(int(get_gdal_config("GDAL_CACHEMAX")))
        return block

    scene = m3rcr_xr.synthetic_scene((64, 64), chunks=32)
    data = scene["cloudy"].data
    scene["cloudy"] = scene["cloudy"].copy(data=data.map_blocks(record, meta=data._meta))
    return scene


def test_writes_hold_gdal_block_cache_small_then_restore_it(tmp_path):
    from rasterio._env import get_gdal_config

    before, seen = get_gdal_config("GDAL_CACHEMAX"), []
    m3rcr_xr.to_zarr(_cache_probe(seen), tmp_path / "s.zarr")
    assert seen and set(seen) == {store.READ_CACHE_BYTES}
    assert get_gdal_config("GDAL_CACHEMAX") == before


def test_writes_leave_a_users_gdal_cachemax_alone(tmp_path, monkeypatch):
    from rasterio._env import get_gdal_config

    monkeypatch.setenv("GDAL_CACHEMAX", "512")
    before, seen = get_gdal_config("GDAL_CACHEMAX"), []
    m3rcr_xr.to_zarr(_cache_probe(seen), tmp_path / "s.zarr")
    assert seen and set(seen) == {before}


def test_a_store_at_a_file_url_with_a_host_is_written_where_it_names_or_refused(
    tmp_path, monkeypatch
):
    """fsspec took ``file://localhost/p`` (and ``file://server/p``) for ``./localhost/p``:
    the store went into a folder of the working directory."""
    monkeypatch.chdir(tmp_path)
    ds = m3rcr_xr.synthetic_scene((32, 32))
    m3rcr_xr.to_zarr(ds, f"file://localhost{tmp_path}/s.zarr")
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]
    assert m3rcr_xr.is_complete(tmp_path / "s.zarr")
    with pytest.raises(m3rcr_xr.InputFileError, match=r"a file:// URL of the host 'server'"):
        m3rcr_xr.to_zarr(ds, f"file://server{tmp_path}/t.zarr")
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]
