import pytest

import m3rcr_xr
from m3rcr_xr.options import OPTIONS
from m3rcr_xr.store import store_chunks


def test_set_options_in_a_block_restores_the_old_values():
    before = m3rcr_xr.get_options()
    with m3rcr_xr.set_options(scene_chunk=256, torch_threads=2):
        assert OPTIONS["scene_chunk"] == 256 and m3rcr_xr.get_options()["torch_threads"] == 2
    assert m3rcr_xr.get_options() == before


def test_set_options_globally(monkeypatch):
    monkeypatch.setitem(OPTIONS, "patches_per_chunk", OPTIONS["patches_per_chunk"])
    m3rcr_xr.set_options(patches_per_chunk=3)
    assert m3rcr_xr.get_options()["patches_per_chunk"] == 3


def test_get_options_is_a_copy():
    m3rcr_xr.get_options()["scene_chunk"] = 1
    assert OPTIONS["scene_chunk"] != 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("scene_chunk", True),
        ("scene_chunk", 8),
        ("scene_chunk", 512.0),
        ("patches_per_chunk", False),
        ("patches_per_chunk", 0),
        ("torch_threads", True),
        ("torch_threads", 0),
        ("max_raster_bytes", True),
        ("progress", 1),
        ("cuda_graphs", "yes"),
    ],
)
def test_refuses_bad_values(name, value):
    with pytest.raises(m3rcr_xr.OptionError, match=f"option {name!r} cannot be {value!r}"):
        m3rcr_xr.set_options(**{name: value})
    assert OPTIONS[name] is not value


def test_refuses_unknown_options():
    with pytest.raises(m3rcr_xr.OptionError, match="unknown option 'scene_chunks'"):
        m3rcr_xr.set_options(scene_chunks=256)


def test_a_refused_call_changes_nothing():
    before = m3rcr_xr.get_options()
    with pytest.raises(m3rcr_xr.OptionError):
        m3rcr_xr.set_options(scene_chunk=256, torch_threads=-1)
    assert m3rcr_xr.get_options() == before


def test_option_error_is_a_value_error():
    assert issubclass(m3rcr_xr.OptionError, ValueError)
    assert issubclass(m3rcr_xr.UsageError, ValueError)


def test_chunk_options_set_the_store_chunks():
    scene, collection = m3rcr_xr.synthetic_scene((32, 32)), m3rcr_xr.synthetic_collection(2, 32)
    with m3rcr_xr.set_options(scene_chunk=64, patches_per_chunk=5):
        assert store_chunks(scene)["y"] == store_chunks(scene)["x"] == 64
        assert store_chunks(collection)["patch"] == 5
