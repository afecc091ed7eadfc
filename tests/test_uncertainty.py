"""Test-time augmentation, checkpoint ensembles and ``decloud_std`` (m3rcr_xr.inference)."""

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import m3rcr_xr
from m3rcr_xr import cli, models, runner, tiling
from m3rcr_xr.exceptions import CheckpointError, ModelConfigError, UsageError
from m3rcr_xr.inference import decloud
from m3rcr_xr.runner import ModelRef
from m3rcr_xr.testing import TINY, seeded_checkpoint
from tests.conftest import raise_if_dask_computes

#: a per-pixel DSen2-CR (1x1 convolutions): exactly equivariant under flips and turns
POINTWISE = {**TINY, "kernel_size": 1}


def _save(net: torch.nn.Module, path) -> str:
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def zero_members(tmp_path_factory):
    """Two zero-residual DSen2-CR of :data:`TINY` with different (seeded) weights."""
    folder = tmp_path_factory.mktemp("zero")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = models.zero_residual_(models.build("dsen2_cr", **TINY))
        paths.append(_save(net, folder / f"zero-{seed}.pt"))
    return paths


@pytest.fixture(scope="module")
def tiny_members(tmp_path_factory):
    """Two DSen2-CR of :data:`TINY` with different seeded random weights."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(_save(models.build("dsen2_cr", **TINY), folder / f"tiny-{seed}.pt"))
    return paths


@pytest.mark.parametrize("tta", [None, "flips", "d4"])
def test_zero_residual_returns_the_input_and_std_zero(zero_members, tta):
    scene = m3rcr_xr.synthetic_scene((70, 90), seed=5, chunks=48)
    out = decloud(scene, "dsen2_cr", zero_members, config=TINY, tile=32, tta=tta, uncertainty=True)
    np.testing.assert_array_equal(out.decloud.values, scene.cloudy.values.astype(np.float32))
    assert (out.decloud_std.values == 0).all()
    assert out.decloud_std.dtype == np.float32 and out.decloud_std.dims == ("band", "y", "x")


def test_a_pointwise_model_has_no_spread_under_flips(tmp_path):
    scene = m3rcr_xr.synthetic_scene((60, 70), seed=6, chunks=64)
    path = seeded_checkpoint(tmp_path / "pointwise.pt", **POINTWISE)
    for tta in ("flips", "d4"):
        out = decloud(scene, "dsen2_cr", path, config=POINTWISE, tile=32, tta=tta, uncertainty=True)
        assert float(out.decloud_std.max()) <= 1e-3  # reflectance x10000: float rounding
        once = decloud(scene, "dsen2_cr", path, config=POINTWISE, tile=32)
        np.testing.assert_allclose(out.decloud.values, once.values, atol=1e-2)


def test_a_model_that_is_not_equivariant_has_a_spread(tiny_checkpoint):
    scene = m3rcr_xr.synthetic_scene((60, 70), seed=6, chunks=64)
    out = decloud(
        scene, "dsen2_cr", tiny_checkpoint, config=TINY, tile=32, tta="flips", uncertainty=True
    )
    std = out.decloud_std.values
    assert (std >= 0).all() and (std > 1).mean() > 0.5
    once = decloud(scene, "dsen2_cr", tiny_checkpoint, config=TINY, tile=32).values
    differs = np.abs(out.decloud.values - once) > 1
    assert (std[differs] > 0).all()  # where the transforms disagree, a spread


def test_ensemble_mean_and_spread_of_two_members(tiny_members):
    scene = m3rcr_xr.synthetic_scene((50, 40), seed=7, chunks=64)
    each = [decloud(scene, "dsen2_cr", p, config=TINY, tile=32).values for p in tiny_members]
    both = decloud(scene, "dsen2_cr", tiny_members, config=TINY, tile=32, uncertainty=True)
    np.testing.assert_allclose(both.decloud.values, (each[0] + each[1]) / 2, atol=0.05)
    # one tile per pixel away from the overlaps: the population std of two is half the gap
    inner = (slice(None), slice(0, 20), slice(0, 20))
    np.testing.assert_allclose(
        both.decloud_std.values[inner], np.abs(each[0] - each[1])[inner] / 2, atol=0.05
    )
    assert both.decloud.attrs["members"] == 2 and both.decloud_std.attrs["tta"] == "none"


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(20, 120),
    width=st.integers(20, 120),
    chunk=st.integers(16, 80),
    overlap=st.integers(0, 7),
)
def test_decloud_and_std_do_not_depend_on_chunking(tiny_checkpoint, height, width, chunk, overlap):
    scene = m3rcr_xr.synthetic_scene((height, width), seed=height, chunks=chunk)
    run = dict(config=TINY, tile=24, overlap=overlap, tta="flips", uncertainty=True)
    chunked = decloud(scene, "dsen2_cr", tiny_checkpoint, **run).compute()
    whole = decloud(scene.chunk({"y": -1, "x": -1}), "dsen2_cr", tiny_checkpoint, **run).compute()
    for name in ("decloud", "decloud_std"):
        assert np.abs(chunked[name].values - whole[name].values).max() <= 0.1


def test_forward_passes_are_tiles_times_members_times_transforms(tiny_members):
    scene = m3rcr_xr.synthetic_scene((100, 130), chunks=40)
    runner.tile_counts(reset=True)
    out = decloud(scene, "dsen2_cr", tiny_members, config=TINY, tile=32, overlap=4, tta="d4")
    out.compute()
    plan = tiling.make_plan(32, 4, 100, 130)
    tiles = plan.shape[0] * plan.shape[1]
    assert sum(runner.tile_counts().values()) == tiles * 2 * 8


def test_collection_with_uncertainty(zero_members, tiny_members):
    patches = m3rcr_xr.synthetic_collection(3, 40, seed=1)
    zero = decloud(
        patches, "dsen2_cr", zero_members, config=TINY, tile=32, tta="flips", uncertainty=True
    )
    np.testing.assert_array_equal(zero.decloud.values, patches.cloudy.values.astype(np.float32))
    assert (zero.decloud_std.values == 0).all()
    out = decloud(patches, "dsen2_cr", tiny_members, config=TINY, tile=32, uncertainty=True)
    assert out.decloud_std.dims == ("patch", "band", "y", "x")
    assert float(out.decloud_std.min()) >= 0 and float(out.decloud_std.max()) > 0


def test_building_the_graph_computes_nothing(small_scene, tiny_members):
    with raise_if_dask_computes():
        out = small_scene.m3rcr.decloud(
            "dsen2_cr", tiny_members, config=TINY, tta="d4", uncertainty=True
        )
    assert isinstance(out, xr.Dataset) and list(out.data_vars) == ["decloud", "decloud_std"]
    assert out.decloud_std.chunks is not None and out.decloud_std.rio.crs == small_scene.rio.crs
    assert out.decloud_std.attrs["units"] == "reflectance x10000"


def test_composite_keeps_the_input_with_no_spread(small_scene, tiny_checkpoint):
    scene = small_scene.isel(y=slice(0, 64), x=slice(0, 64))
    out = decloud(
        scene,
        "dsen2_cr",
        tiny_checkpoint,
        config=TINY,
        tta="flips",
        uncertainty=True,
        composite=True,
    )
    clear = ~scene.cloudmask.values
    assert (out.decloud_std.values[:, clear] == 0).all()
    assert (out.decloud_std.values[:, ~clear] > 0).any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tta": "rot90"}, UsageError, "tta='rot90': must be one of flips, d4"),
        ({"uncertainty": True}, UsageError, "uncertainty=True needs several predictions"),
        ({"checkpoint": []}, UsageError, "checkpoint=\\[\\]: an ensemble needs checkpoints"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(small_scene, kwargs, error, match):
    runner.tile_counts(reset=True)
    with raise_if_dask_computes(), pytest.raises(error, match=match):
        decloud(small_scene, "dsen2_cr", **{"config": TINY, **kwargs})
    assert runner.tile_counts() == {}


def test_an_ensemble_of_mismatched_members_is_refused(small_scene, tiny_members, small_checkpoint):
    with pytest.raises(CheckpointError):  # weights of another configuration
        decloud(small_scene, "dsen2_cr", [tiny_members[0], small_checkpoint], config=TINY)
    with pytest.raises(UsageError, match="the same weights appear twice"):
        decloud(small_scene, "dsen2_cr", [tiny_members[0], tiny_members[0]], config=TINY)
    with pytest.raises(UsageError, match="the same weights appear twice"):  # one network
        decloud(small_scene, "dsen2_cr", ["untrained", "untrained"], config=TINY)


def test_members_resolved_to_other_families_are_refused(small_scene, tiny_members, monkeypatch):
    # as a weights registry may resolve a name to a model family: one per member
    real_create = ModelRef.create.__func__
    names = iter(["dsen2_cr", "glf_cr"])

    def create(cls, name, checkpoint=None, config=None, *args):
        ref = real_create(cls, name, checkpoint, config, *args)
        return ref if next(names) == "dsen2_cr" else ModelRef(**{**ref.__dict__, "name": "glf_cr"})

    monkeypatch.setattr(ModelRef, "create", classmethod(create))
    monkeypatch.setattr(ModelRef, "spec", lambda self: models.model_spec("dsen2_cr", **TINY))
    with pytest.raises(ModelConfigError, match="one model family and configuration: .*glf_cr"):
        decloud(small_scene, "dsen2_cr", tiny_members, config=TINY)


def test_the_command_line_writes_both_variables(tmp_path, tiny_members, capsys):
    scene = m3rcr_xr.synthetic_scene((40, 50), chunks=32)
    m3rcr_xr.to_zarr(scene, tmp_path / "in.zarr")
    config = ["--config", "n_resblocks=1", "--config", "n_feats=8", "--tile", "32"]
    args = ["decloud", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), *config]
    ensemble = ["--checkpoint", tiny_members[0], "--checkpoint", tiny_members[1]]
    assert cli.main([*args, *ensemble, "--tta", "flips", "--uncertainty"]) == 0
    out = m3rcr_xr.open_zarr(tmp_path / "out.zarr")
    assert set(out.data_vars) == {"decloud", "decloud_std"}
    assert out.decloud.attrs["members"] == 2 and out.decloud.attrs["tta"] == "flips"
    assert float(out.decloud_std.max()) > 0


def test_the_command_line_names_the_flags(tmp_path, tiny_checkpoint, capsys):
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((16, 16)), tmp_path / "in.zarr")
    args = ["decloud", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")]
    args += ["--checkpoint", str(tiny_checkpoint), "--config", "n_resblocks=1"]
    assert cli.main([*args, "--config", "n_feats=8", "--uncertainty"]) == 2
    assert "m3rcr decloud: error: --uncertainty needs several" in capsys.readouterr().err
    assert cli.main([*args, "--tta", "spin"]) == 2
    assert "--tta spin: must be one of" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_the_graph_carries_one_reference_per_member(small_scene, tmp_path):
    import pickle

    paths = []
    for seed in (1, 2):  # the published DSen2-CR: about 5 MB of weights each
        torch.manual_seed(seed)
        paths.append(_save(models.build("dsen2_cr"), tmp_path / f"default-{seed}.pt"))
    one = decloud(small_scene, "dsen2_cr", paths[0])
    both = decloud(small_scene, "dsen2_cr", paths, tta="d4", uncertainty=True)
    graph = {
        label: len(pickle.dumps(dict(out.__dask_graph__())))
        for label, out in (("one", one), ("both", both))
    }
    weights = (tmp_path / "default-1.pt").stat().st_size
    assert graph["both"] < 1.3 * graph["one"] and graph["both"] < weights / 10


def test_the_same_weights_in_two_formats_are_one_member(small_scene, tiny_members, tmp_path):
    # the file hashes differ; the tensors do not: one network, whose spread would be 0
    from safetensors.torch import save_file

    state = torch.load(tiny_members[0], weights_only=True)
    copy = tmp_path / "copy.safetensors"
    save_file(state, copy)
    published = tmp_path / "published.pth"  # the published layout, as nn.DataParallel saves
    torch.save({"network": {f"module.{k}": v for k, v in state.items()}}, published)
    for twin in (copy, published):
        with pytest.raises(UsageError, match=f"{tiny_members[0]} and {twin} hold the same"):
            decloud(small_scene, "dsen2_cr", [tiny_members[0], twin], config=TINY)
    out = decloud(small_scene, "dsen2_cr", [copy, tiny_members[1]], config=TINY, uncertainty=True)
    assert out.decloud.attrs["members"] == 2
