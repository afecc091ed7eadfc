import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from dask.callbacks import Callback
from dask.sizeof import sizeof
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import m3rcr_xr
from m3rcr_xr import (
    blending,
    cli,
    devices,
    engine,
    ensembles,
    inference,
    models,
    runner,
    tiling,
    tta,
)
from m3rcr_xr.exceptions import SchemaError, UsageError
from m3rcr_xr.inference import decloud
from m3rcr_xr.runner import ModelRef
from m3rcr_xr.tiling import make_plan
from tests.conftest import probe_tile_tasks, raise_if_dask_computes

SMALL = {"preset": "small"}


@pytest.fixture(scope="module")
def zero_checkpoints(tmp_path_factory):
    """Small models whose residual is zero: they return their cloudy input."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for name in ("dsen2_cr", "glf_cr"):
        net = models.zero_residual_(models.build(name, **SMALL))
        paths[name] = folder / f"{name}-zero.pt"
        torch.save(net.state_dict(), paths[name])
    return paths


def test_building_the_graph_computes_nothing(small_scene):
    with raise_if_dask_computes():
        out = small_scene.m3rcr.decloud("dsen2_cr", checkpoint="untrained", config=SMALL)
    assert out.name == "decloud" and out.dims == ("band", "y", "x")
    assert out.dtype == np.float32 and out.chunks is not None
    assert out.rio.crs == small_scene.rio.crs
    np.testing.assert_array_equal(out.x, small_scene.x)


def test_a_prediction_records_the_store_it_was_made_from(tmp_path):
    """The fingerprint of the one store of this library its input came from, on every
    output variable, read without computing; none for a scene of memory or of several
    stores, whose origin no fingerprint tells."""
    from m3rcr_xr.identity import FINGERPRINT
    from m3rcr_xr.testing import TINY

    for seed in (1, 2):
        m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64), seed=seed), tmp_path / f"{seed}.zarr")
    root = json.loads((tmp_path / "1.zarr" / "zarr.json").read_text())
    scene = m3rcr_xr.open_zarr(tmp_path / "1.zarr")
    tiny = {"checkpoint": "untrained", "config": TINY, "tile": 32}
    with raise_if_dask_computes():
        out = decloud(scene, "dsen2_cr", tta="flips", uncertainty=True, **tiny)
    for name in ("decloud", "decloud_std"):
        assert out[name].attrs["input_fingerprint"] == root["attributes"][FINGERPRINT]
    other = m3rcr_xr.open_zarr(tmp_path / "2.zarr").sar
    for ds in (scene.assign(sar=other), scene.load().drop_encoding()):
        assert "input_fingerprint" not in decloud(ds, "dsen2_cr", **tiny).attrs


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(5, 150),
    width=st.integers(5, 150),
    chunk=st.integers(16, 96),
    tile=st.sampled_from([16, 24, 40]),
    overlap=st.integers(0, 7),
)
@example(height=150, width=150, chunk=32, tile=16, overlap=0)  # groups that spill nothing
def test_zero_residual_returns_the_input_exactly(
    zero_checkpoints, height, width, chunk, tile, overlap
):
    scene = m3rcr_xr.synthetic_scene((height, width), seed=height, chunks=chunk)
    out = decloud(
        scene, "dsen2_cr", zero_checkpoints["dsen2_cr"], config=SMALL, tile=tile, overlap=overlap
    ).values
    np.testing.assert_array_equal(out, scene.cloudy.values.astype(np.float32))


def test_zero_residual_with_a_fixed_size_model(zero_checkpoints):
    scene = m3rcr_xr.synthetic_scene((75, 101), chunks=40)
    out = decloud(scene, "glf_cr", zero_checkpoints["glf_cr"], config=SMALL, overlap=6)
    np.testing.assert_array_equal(out.values, scene.cloudy.values.astype(np.float32))


def test_weights_that_do_not_sum_to_one_would_show(zero_checkpoints, monkeypatch):
    monkeypatch.setattr(blending, "window", lambda tile: np.full((tile, tile), 1.0))
    real_accumulate = engine.accumulate

    def leaky(*args, **kwargs):
        canvases = real_accumulate(*args, **kwargs)
        for canvas in canvases:
            canvas[-1] *= 1.001  # a weight sum off by 0.1 %
        return canvases

    monkeypatch.setattr(engine, "accumulate", leaky)
    scene = m3rcr_xr.synthetic_scene((64, 64), chunks=64)
    out = decloud(scene, "dsen2_cr", zero_checkpoints["dsen2_cr"], config=SMALL, tile=32)
    assert np.abs(out.values - scene.cloudy.values).max() > 1


def test_result_does_not_depend_on_chunking(small_checkpoint):
    scene = m3rcr_xr.synthetic_scene((600, 530), seed=4, chunks=256)
    chunked = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=96).values
    whole = decloud(
        scene.chunk({"y": -1, "x": -1}), "dsen2_cr", small_checkpoint, config=SMALL, tile=96
    ).values
    assert np.abs(chunked - whole).max() <= 0.1  # reflectance x10000
    assert np.abs(chunked - whole).max() / 10000 <= 1e-5
    odd = decloud(
        scene.chunk({"y": 77, "x": 130}), "dsen2_cr", small_checkpoint, config=SMALL, tile=96
    ).values
    assert np.abs(odd - whole).max() <= 0.1


@pytest.mark.parametrize("composite", [False, True])
def test_the_output_blocks_are_the_tile_groups_whatever_the_input_chunks(composite):
    """The nodata mask (and composite's cloud mask and input) take the output's blocks:
    on the input's chunks the where cut each group's block into slivers."""
    scene = m3rcr_xr.synthetic_scene((300, 260), chunks=100)
    with raise_if_dask_computes():
        out = decloud(scene, "dsen2_cr", "untrained", config=SMALL, tile=48, composite=composite)
    plan = make_plan(48, 6, 300, 260)
    group = tiling.group_size(100, plan.stride)
    for axis, size in ((1, 300), (2, 260)):
        starts = [rows.start * plan.stride for rows in tiling.groups(plan.count(size), group)]
        assert out.chunks[axis] == tuple(np.diff([*starts, size])), out.chunks


def test_what_a_tile_task_hands_on_is_about_its_block_not_its_canvas():
    """A group's float64 canvas (weighted sums and weights: 2.6 times its float32 block)
    waited for the blocks of all its neighbours, which Dask's order may run much later:
    most of a decloud's memory. The tile task now finishes what no neighbour reaches and
    hands on that and thin strips (:class:`blending.Cut`)."""
    scene = m3rcr_xr.synthetic_scene((560, 560), chunks=256)
    out = decloud(scene, "dsen2_cr", "untrained", config=SMALL, tile=64)
    handed_on = []

    def record(key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        if name.startswith("decloud-tiles-") and not name.startswith("decloud-tiles-run-"):
            handed_on.append(sizeof(result))

    with Callback(posttask=record):
        out.data.compute(scheduler="threads")
    stride = make_plan(64, 8, 560, 560).stride
    side = tiling.group_size(256, stride) * stride  # of a group's block
    block = 4 * out.sizes["band"] * side**2  # float32
    assert len(handed_on) == 4 and max(handed_on) < 1.3 * block, (handed_on, block)


def test_dask_result_equals_in_memory_result(small_checkpoint, small_scene):
    lazy = decloud(small_scene, "dsen2_cr", small_checkpoint, config=SMALL)
    eager = decloud(small_scene.compute(), "dsen2_cr", small_checkpoint, config=SMALL)
    assert eager.chunks is None
    np.testing.assert_allclose(lazy.values, eager.values, atol=0.1)


def test_scene_smaller_than_a_tile_and_odd_edges(small_checkpoint):
    tiny = m3rcr_xr.synthetic_scene((13, 29), chunks=8)
    out = decloud(tiny, "dsen2_cr", small_checkpoint, config=SMALL, tile=64)
    assert out.shape == (4, 13, 29) and np.isfinite(out.values).all()


def test_composite_keeps_clear_pixels(small_checkpoint, small_scene):
    out = decloud(small_scene, "dsen2_cr", small_checkpoint, config=SMALL, composite=True).values
    clear = ~small_scene.cloudmask.values
    cloudy = small_scene.cloudy.values.astype(np.float32)
    np.testing.assert_array_equal(out[:, clear], cloudy[:, clear])
    assert (out[:, ~clear] != cloudy[:, ~clear]).mean() > 0.9


def test_optical_nodata_is_nan_in_decloud_lazily_and_eagerly(small_checkpoint, small_scene):
    """Pixels whose cloudy bands are all 0 (a footprint's edge) are NaN, the nodata
    declared the rioxarray way; a single 0 band is data."""
    cloudy = small_scene.cloudy.where(small_scene.x > small_scene.x[9], 0)
    cloudy = cloudy.where((small_scene.band != "blue") | (small_scene.y != small_scene.y[50]), 0)
    scene = small_scene.assign(cloudy=cloudy.astype("uint16"))
    with raise_if_dask_computes():
        lazy = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL)
    eager = decloud(scene.compute(), "dsen2_cr", small_checkpoint, config=SMALL)
    for out in (lazy, eager):
        assert out.dtype == np.float32 and np.isnan(out.rio.encoded_nodata)
        assert "_FillValue" not in out.attrs
    values = lazy.values
    assert np.isnan(values[:, :, :10]).all() and np.isfinite(values[:, :, 10:]).all()
    np.testing.assert_allclose(eager.values, values, atol=0.1, equal_nan=True)


def test_collection_patches_are_decloud_ed_one_by_one(small_checkpoint):
    collection = m3rcr_xr.synthetic_collection(3, 70, seed=1).chunk({"patch": 2})
    out = decloud(collection, "dsen2_cr", small_checkpoint, config=SMALL, tile=48)
    assert out.dims == ("patch", "band", "y", "x")
    scene = collection.isel(patch=1).drop_vars(
        ["patch", "epsg", "season", "aoi", "split", "source"]
    )
    scene = scene.assign_coords(x=scene.x.values, y=scene.y.values).rio.write_crs("EPSG:32632")
    alone = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=48)
    np.testing.assert_allclose(out.values[1], alone.values, atol=0.1)


def test_graph_carries_a_reference_not_the_weights(small_scene, tmp_path):
    sizes = {}
    for label, config in {"small": SMALL, "default": {}}.items():
        path = tmp_path / f"{label}.pt"
        torch.save(models.build("dsen2_cr", **config).state_dict(), path)
        out = decloud(small_scene, "dsen2_cr", path, config=config)
        sizes[label] = (len(pickle.dumps(dict(out.__dask_graph__()))), path.stat().st_size)
    (small_graph, small_weights), (default_graph, default_weights) = sizes.values()
    assert default_weights > 100 * small_weights  # the published DSen2-CR is ~5 MB
    assert default_graph < 1.05 * small_graph  # the graph does not grow with it
    assert default_graph < default_weights / 10


def test_each_process_builds_the_model_once(small_checkpoint, monkeypatch):
    runner.clear_model_cache()
    builds = []
    real_build = ModelRef.build
    monkeypatch.setattr(ModelRef, "build", lambda self: builds.append(1) or real_build(self))
    scene = m3rcr_xr.synthetic_scene((300, 300), chunks=64)
    decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=48).compute(scheduler="threads")
    assert len(builds) == 1  # none on the client (it checks on the meta device), one for the tasks


def test_changed_checkpoint_is_refused(small_scene, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(models.build("dsen2_cr", **SMALL).state_dict(), path)
    out = decloud(small_scene, "dsen2_cr", path, config=SMALL)
    torch.manual_seed(1)
    torch.save(models.build("dsen2_cr", **SMALL).state_dict(), path)
    runner.clear_model_cache()
    with pytest.raises(m3rcr_xr.CheckpointError, match="changed since decloud began"):
        out.compute()


# ---------------------------------------------------------------------------- bad input
def test_missing_sar(small_scene):
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.SchemaError, match="sar: decloud"):
        decloud(small_scene.drop_vars("sar"))


def test_composite_needs_a_cloudmask(small_scene):
    with pytest.raises(m3rcr_xr.SchemaError, match="cloudmask"):
        decloud(
            small_scene.drop_vars("cloudmask"), checkpoint="untrained", config=SMALL, composite=True
        )


def test_tile_size_the_model_cannot_take(small_scene):
    with pytest.raises(m3rcr_xr.ModelConfigError, match="built for 32x32 tiles only"):
        decloud(small_scene, "glf_cr", checkpoint="untrained", config=SMALL, tile=64)


def test_checkpoint_that_does_not_match(small_scene, small_checkpoint):
    with pytest.raises(m3rcr_xr.CheckpointError, match="missing|unexpected|shape"):
        decloud(small_scene, "dsen2_cr", small_checkpoint, config={"n_feats": 32})


def test_missing_checkpoint(small_scene, tmp_path):
    with pytest.raises(m3rcr_xr.CheckpointError, match="does not exist"):
        decloud(small_scene, "dsen2_cr", tmp_path / "none.pt")


@pytest.mark.parametrize(("cuda", "expected"), [(False, "cpu"), (True, "cuda")])
def test_device_auto_is_cuda_when_there_is_one(monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert devices.resolve_device("auto") == expected
    assert devices.resolve_device("cpu") == "cpu"


def test_result_round_trips_through_zarr(small_checkpoint, small_scene, tmp_path):
    out = decloud(small_scene, "dsen2_cr", small_checkpoint, config=SMALL)
    m3rcr_xr.to_zarr(out.to_dataset(), tmp_path / "d.zarr")
    back = m3rcr_xr.open_zarr(tmp_path / "d.zarr")
    assert back.rio.crs == small_scene.rio.crs
    xr.testing.assert_allclose(back.decloud, out.compute())


# ------------------------------------------------------------------------- tiny scenes
def _tasks(shape: tuple[int, int]) -> int:
    scene = m3rcr_xr.synthetic_scene(shape, seed=1)
    return len(
        decloud(scene, "dsen2_cr", checkpoint="untrained", config=SMALL, tile=64).__dask_graph__()
    )


def test_a_one_pixel_scene_costs_about_one_tile(zero_checkpoints):
    # padding in rounds made the graph of a 1x1 scene a million tasks (~400 s); one step
    # keeps it near that of a scene of one tile (the time is in benchmarks/bench_decloud)
    assert _tasks((1, 1)) <= 4 * _tasks((64, 64))
    for shape in [(1, 1), (1, 5), (5, 3)]:
        scene = m3rcr_xr.synthetic_scene(shape, seed=2)
        out = decloud(scene, "dsen2_cr", zero_checkpoints["dsen2_cr"], config=SMALL, tile=64)
        np.testing.assert_array_equal(out.values, scene.cloudy.values.astype(np.float32))


def test_a_collection_of_one_pixel_patches(zero_checkpoints, small_checkpoint):
    collection = m3rcr_xr.synthetic_collection(3, 1, seed=5)
    cloudy = collection.cloudy.values.astype(np.float32)
    for name, path in zero_checkpoints.items():  # glf_cr: fixed 32x32 tiles
        out = decloud(collection, name, path, config=SMALL)
        np.testing.assert_array_equal(out.values, cloudy)
    trained = decloud(collection, "dsen2_cr", small_checkpoint, config=SMALL, tile=32)
    assert trained.shape == (3, 4, 1, 1) and np.isfinite(trained.values).all()


# -------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size=0: must be an integer >= 1"),
        ({"batch_size": -3}, "batch_size=-3"),
        ({"batch_size": 2.5}, "batch_size=2.5: .* not float"),
        ({"batch_size": True}, "batch_size=True: .* not bool"),
        ({"batch_size": "8"}, "batch_size='8'"),
        ({"tile": 0}, "tile=0: must be an integer >= 1"),
        ({"tile": 32.0}, "tile=32.0"),
        ({"tile": -32}, "tile=-32"),
        ({"overlap": -1}, "overlap=-1: must be an integer >= 0"),
        ({"overlap": 2.5}, "overlap=2.5"),
        ({"device": "gpu"}, "device='gpu': not a device"),
        ({"device": "cuda:x"}, "device='cuda:x': not a device"),
        ({"device": "meta"}, "device='meta': this process has 0 meta device"),
        (
            {"device": f"cuda:{torch.cuda.device_count()}"},
            r"device='cuda:\d+': this process has \d+ cuda",
        ),
        ({"resources": "GPU"}, "resources='GPU': must map resource names to amounts"),
        ({"resources": {"GPU": "x"}}, r"resources\['GPU'\]='x': must be a finite number > 0"),
        ({"resources": {"GPU": 0}}, r"resources\['GPU'\]=0"),
        ({"composite": "yes"}, "composite='yes': must be True or False"),
        ({"uncertainty": 1, "tta": "flips"}, "uncertainty=1: must be True or False"),
        ({"tile": 100_000}, "tile=100000: one tile needs 671 GiB .* max_raster_bytes"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(small_scene, kwargs, match):
    with raise_if_dask_computes(), pytest.raises(UsageError, match=match):
        decloud(small_scene, "dsen2_cr", checkpoint="untrained", config=SMALL, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"checkpoint": 5}, "checkpoint=5: must be a file, URL or registered name"),
        ({"checkpoint": ["untrained", 5]}, "checkpoint=5: must be a file"),
        ({"checkpoint": "untrained", "config": "small"}, "config='small': must map settings"),
    ],
)
def test_checkpoints_and_configs_of_another_type_are_refused(small_scene, kwargs, match):
    with raise_if_dask_computes(), pytest.raises(UsageError, match=match):
        decloud(small_scene, "dsen2_cr", **kwargs)


def test_an_empty_scene_is_refused_before_any_work(small_scene):
    with pytest.raises(SchemaError, match=r"the scene has no pixels \(0 x 420\)"):
        decloud(small_scene.isel(y=slice(0, 0)), checkpoint="untrained", config=SMALL)


def test_tta_none_is_no_tta(small_scene):
    once = decloud(small_scene, checkpoint="untrained", config=SMALL, tta="none")
    xr.testing.assert_identical(once, decloud(small_scene, checkpoint="untrained", config=SMALL))


def test_a_device_this_process_does_not_have(small_scene, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU machine
    with pytest.raises(UsageError, match="device='cuda': this process has 0 cuda"):
        decloud(small_scene, checkpoint="untrained", config=SMALL, device="cuda")
    with pytest.raises(UsageError, match="device='cuda'"):
        devices.resolve_device("cuda")


def test_numpy_integers_and_torch_devices_are_fine(zero_checkpoints):
    scene = m3rcr_xr.synthetic_scene((40, 40), chunks=40)
    out = decloud(
        scene,
        "dsen2_cr",
        zero_checkpoints["dsen2_cr"],
        config={"preset": "small", "n_feats": np.int64(16)},
        tile=np.int32(32),
        overlap=np.int64(4),
        batch_size=np.uint8(2),
        device=torch.device("cpu"),
    )
    assert (out.attrs["tile"], out.attrs["overlap"]) == (32, 4)
    assert type(out.attrs["tile"]) is int
    np.testing.assert_array_equal(out.values, scene.cloudy.values.astype(np.float32))


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"n_feats": 16.5}, "n_feats=16.5 must be an integer"),
        ({"n_feats": "16"}, "n_feats='16' must be an integer"),
        ({"n_resblocks": 2, "n_blocks": 3}, "unknown configuration key 'n_blocks'"),
        ({"kernel_size": 2}, "odd kernel_size"),
    ],
)
def test_config_the_model_cannot_take_names_the_key(small_scene, config, match):
    with raise_if_dask_computes(), pytest.raises(m3rcr_xr.ModelConfigError, match=match):
        decloud(small_scene, "dsen2_cr", checkpoint="untrained", config=config)


def test_with_a_distributed_client_the_workers_check_the_device(small_scene):
    from distributed import Client, LocalCluster

    absent = f"cuda:{torch.cuda.device_count()}"  # e.g. a GPU of the workers, not here
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        out = decloud(
            small_scene.isel(x=slice(64), y=slice(64)),
            checkpoint="untrained",
            config=SMALL,
            device=absent,
        )
        with pytest.raises(UsageError, match=f"device='{absent}'"):
            out.compute()
    with pytest.raises(UsageError, match=f"device='{absent}'"):
        decloud(
            small_scene, checkpoint="untrained", config=SMALL, device=absent
        )  # no client: checked here


# ------------------------------------------------------------ GPU path, on the CPU
# There is no GPU here: the per-device lock and slots are shown with the CPU treated as a
# GPU is, and the rest of the GPU path (streams, page-locked copies, autocast) runs in
# benchmarks/gpu_check.py on a GPU.
@pytest.mark.parametrize("exclusive", [True, False])
def test_one_tile_task_at_a_time_per_exclusive_device(small_checkpoint, monkeypatch, exclusive):
    probe = probe_tile_tasks(exclusive, patch=monkeypatch.setattr)
    scene = m3rcr_xr.synthetic_scene((300, 300), chunks=64)  # 16 groups of 2 x 2 tiles
    out = decloud(
        scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=48, batch_size=2, device="cpu"
    )
    out.compute(scheduler="threads", num_workers=8)
    assert probe.peak["task"] > 1  # the other threads go on cropping and blending
    if exclusive:
        assert probe.peak["forward"] == 1
        # a pipeline of tasks in their host work, no more: the others wait for a slot
        assert 1 < probe.peak["predict"] <= runner.TILE_TASKS_PER_DEVICE
    else:  # the probe does see forward passes and predictions overlap where they may
        assert probe.peak["forward"] > 1
        assert probe.peak["predict"] > runner.TILE_TASKS_PER_DEVICE


def test_the_batch_size_and_resources_leave_the_data_the_same(small_checkpoint, tmp_path):
    """They change how tiles run, not what comes out: the same keys (so a write cut off
    by running out of GPU memory resumes with a smaller batch), the same values."""
    scene = m3rcr_xr.synthetic_scene((96, 80), chunks=48)
    runs = [
        decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=48, **options)
        for options in ({"batch_size": 8}, {"batch_size": 2}, {"resources": {"GPU": 1}})
    ]
    assert len({run.data.name for run in runs}) == 1
    other = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=48, tta="flips")
    assert other.data.name != runs[0].data.name
    np.testing.assert_array_equal(runs[0].values, runs[1].values)


#: the key of a small decloud, printed by another process
KEY_ELSEWHERE = """
import m3rcr_xr
scene = m3rcr_xr.synthetic_scene((40, 40), seed=1)
print(m3rcr_xr.decloud(scene, checkpoint="untrained", config={"preset": "small"}).data.name)
"""


def test_the_decloud_keys_are_the_same_in_every_process():
    """They make a decloud store's fingerprint: a run started again after a Ctrl-C (a new
    process) finds the same, to resume the store or write its GeoTIFFs from it. Each
    process used to hash the address of the output's function into them."""
    scene = m3rcr_xr.synthetic_scene((40, 40), seed=1)
    here = decloud(scene, checkpoint="untrained", config=SMALL).data.name
    there = subprocess.run(
        [sys.executable, "-c", KEY_ELSEWHERE],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert there.stdout.split()[-1] == here


def test_tile_counts_count_each_tile_once_per_device(small_checkpoint):
    runner.tile_counts(reset=True)
    scene = m3rcr_xr.synthetic_scene((300, 300), chunks=64)
    out = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=48, device="cpu")
    out.compute(scheduler="threads")
    rows, cols = make_plan(48, 6, 300, 300).shape
    assert runner.tile_counts(reset=True) == {"cpu": rows * cols}
    assert runner.tile_counts() == {}


@pytest.mark.parametrize(
    ("precision", "device", "message"),
    [
        ("fp64", "auto", "precision='fp64': must be one of fp32, bf16, fp16, auto"),
        ("bf16", "cpu", "precision='bf16' runs on a CUDA GPU only, not with device='cpu'"),
    ],
)
def test_precision_is_checked_before_any_work(small_scene, precision, device, message):
    with raise_if_dask_computes(), pytest.raises(UsageError, match=re.escape(message)):
        decloud(
            small_scene, "dsen2_cr", "untrained", config=SMALL, precision=precision, device=device
        )


def test_the_command_line_names_the_precision_flag(tmp_path, capsys):
    store = tmp_path / "scene.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((64, 64), chunks=64), store)
    args = ["decloud", str(store), str(tmp_path / "out.zarr"), "--config", "preset=small"]
    assert cli.main([*args, "--precision", "fp64"]) == 2
    assert "error: --precision fp64: must be one of" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_a_cpu_runs_float32_whatever_the_precision(small_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # device="auto" is the CPU
    seen = []
    real_run_tiles = blending.run_tiles
    monkeypatch.setattr(blending, "run_tiles", lambda *a: seen.append(a[4]) or real_run_tiles(*a))
    scene = m3rcr_xr.synthetic_scene((100, 100), chunks=64)
    fp32, bf16 = (
        decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, precision=p).values
        for p in ("fp32", "bf16")
    )
    assert set(seen) == {"fp32", "bf16"}  # the precision reaches the tile tasks
    np.testing.assert_array_equal(bf16, fp32)


@pytest.mark.parametrize("name", ["dsen2_cr", "glf_cr", "align_cr"])
def test_networks_give_the_same_output_in_channels_last(name):
    """The layout decloud runs the networks in on a GPU, checked on the CPU."""
    torch.manual_seed(0)
    net = models.build(name, **SMALL)
    x = torch.rand(2, 6, 32, 32)
    with torch.inference_mode():
        plain = net(x[:, :4], x[:, 4:])
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        last = net(x[:, :4], x[:, 4:])
    torch.testing.assert_close(last, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("tile_counts", runner),
        ("clear_model_cache", runner),
        ("mirror_index", tiling),
        ("transform_tiles", tta),
        ("accumulate", blending),
        ("OPTICAL_CHANNELS", blending),
        ("TILE_BYTES_PER_PIXEL", engine),
    ],
)
def test_names_that_moved_are_still_found_here_with_a_warning(name, home):
    moved = rf"m3rcr_xr\.inference\.{name} is now {home.__name__}\.{name}"
    with pytest.warns(DeprecationWarning, match=moved):
        assert getattr(inference, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        inference.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("TTA", tta),  # decloud's API
        ("DEFAULT_TILE", engine),
        ("Checkpoint", ensembles),
        ("check_tta", tta),  # what decloud's code imports
        ("TileJob", blending),
        ("plan_tiles", engine),
        ("tile_scene", engine),
    ],
)
def test_names_decloud_uses_are_found_here_without_a_warning(name, home, recwarn):
    assert getattr(inference, name) is getattr(home, name)
    assert not recwarn.list


# ------------------------------------------------------------- forward batches
class _PlainNet:
    """A network stand-in, exact per tile whatever it runs with: the forward batches
    decloud makes are counted without the cost of a real network at default tiles."""

    spec = models.model_spec("dsen2_cr", preset="small")

    def __call__(self, optical, sar):
        return optical * 0.5 + sar.mean(1, keepdim=True)


def _count_batches(monkeypatch) -> list[list[int]]:
    """The forward batches of each tile task (one list per task), as they run."""
    tasks: list[list[int]] = []
    real_run_tiles, real_forward = blending.run_tiles, runner._forward

    def run_tiles(*args, **kwargs):
        tasks.append([])
        return real_run_tiles(*args, **kwargs)

    def forward(model, batch):
        tasks[-1].append(len(batch))
        return real_forward(model, batch)

    monkeypatch.setattr(blending, "cached_model", lambda ref: (_PlainNet(), "cpu"))
    monkeypatch.setattr(blending, "run_tiles", run_tiles)
    monkeypatch.setattr(runner, "_forward", forward)
    return tasks


@pytest.mark.parametrize("name", ["dsen2_cr", "glf_cr", "align_cr"])  # default tiles
@pytest.mark.parametrize("chunk", [1024, 2048])
def test_forward_batches_are_full_but_the_last_of_a_task(monkeypatch, name, chunk):
    monkeypatch.setattr(runner, "CONCURRENT_DEVICE_TYPES", frozenset())  # the CPU as a GPU
    tasks = _count_batches(monkeypatch)
    scene = m3rcr_xr.synthetic_scene((700, 680), seed=1, chunks=chunk)[["cloudy", "sar"]]
    results = {}
    for batch_size in (8, 32):
        tasks.clear()
        out = decloud(scene, name, "untrained", batch_size=batch_size, device="cpu")
        results[batch_size] = out.data.compute(scheduler="synchronous")
        assert all(size == batch_size for task in tasks for size in task[:-1]), tasks
        assert all(0 < task[-1] <= batch_size for task in tasks)
        short = [task for task in tasks if sum(task) < batch_size]
        assert len(short) <= 1, tasks  # a task joins groups until they fill a batch
        plan = make_plan(out.attrs["tile"], out.attrs["overlap"], 700, 680)
        assert sum(map(sum, tasks)) == plan.shape[0] * plan.shape[1]
    # the same groups blend the same way: the batch size changes nothing
    np.testing.assert_array_equal(results[8], results[32])


def test_on_this_process_cpu_a_task_runs_one_group(monkeypatch):
    """Tasks share the cores there: more, smaller tasks keep them busy."""
    tasks = _count_batches(monkeypatch)
    scene = m3rcr_xr.synthetic_scene((300, 300), seed=1, chunks=64)[["cloudy", "sar"]]
    out = decloud(scene, "dsen2_cr", "untrained", config=SMALL, tile=48, batch_size=8)
    out.data.compute(scheduler="synchronous")
    rows, cols = make_plan(48, 6, 300, 300).shape
    group = tiling.group_size(64, 42)
    assert len(tasks) == len(tiling.groups(rows, group)) * len(tiling.groups(cols, group))


def test_a_collection_runs_the_tiles_of_all_its_patches_together(monkeypatch):
    collection = m3rcr_xr.synthetic_collection(8, 64, seed=1)[["cloudy", "sar"]]
    collection = collection.chunk({"patch": 8})
    seen: list[int] = []
    real_forward = runner._forward
    monkeypatch.setattr(runner, "_forward", lambda m, b: seen.append(len(b)) or real_forward(m, b))

    def run():
        seen.clear()
        out = decloud(collection, "dsen2_cr", "untrained", config=SMALL, tile=64, batch_size=8)
        return out.values

    expected = run()
    assert seen == [1] * 8  # on this process's CPU, one patch at a time: faster there
    monkeypatch.setattr(runner, "CONCURRENT_DEVICE_TYPES", frozenset())  # the CPU as a GPU
    np.testing.assert_allclose(run(), expected, rtol=1e-6, atol=1e-6 * 10000)
    assert seen == [8]  # was eight batches of one tile, one per patch


def test_a_collection_runs_one_tile_task_at_a_time_per_exclusive_device(monkeypatch):
    probe = probe_tile_tasks(True, patch=monkeypatch.setattr)
    collection = m3rcr_xr.synthetic_collection(6, 40, seed=1).chunk({"patch": 1})
    out = decloud(collection, "dsen2_cr", "untrained", config=SMALL, tile=40, device="cpu")
    out.compute(scheduler="threads", num_workers=6)
    assert probe.peak["task"] > 1 and probe.peak["forward"] == 1
