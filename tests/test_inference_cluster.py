"""Decloud on real distributed clusters: process workers, GPU resources, a killed worker."""

import os
import signal
import time

import dask.system
import numpy as np
import pytest
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, get_task_stream

import m3rcr_xr
from m3rcr_xr import threads
from m3rcr_xr.inference import decloud
from tests.conftest import start_worker_probe, worker_probe_peaks

SMALL = {"preset": "small"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def process_cluster(forked_workers):
    with (
        forked_workers(),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_two_process_workers_give_the_threaded_result(process_cluster, small_checkpoint):
    scene = m3rcr_xr.synthetic_scene((400, 380), chunks=128)
    out = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=64)
    with get_task_stream(process_cluster) as stream:
        distributed = process_cluster.compute(out).result()
    threaded = out.compute(scheduler="threads")
    np.testing.assert_allclose(distributed.values, threaded.values, atol=0.1)
    assert len({event["worker"] for event in stream.data}) == 2
    # a plain LocalCluster's workers share the cores: torch's threads of the two together
    shares = process_cluster.run(threads.torch_threads)
    assert set(shares.values()) == {max(1, dask.system.CPU_COUNT // 2)}


def test_a_killed_worker_does_not_change_the_result(process_cluster, small_checkpoint):
    scene = m3rcr_xr.synthetic_scene((800, 800), seed=2, chunks=200)
    out = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=64, batch_size=2)
    expected = out.compute(scheduler="threads").values
    future = process_cluster.compute(out)
    pids = process_cluster.run(os.getpid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _some_tiles_done(process_cluster):
        time.sleep(0.05)
    assert not future.done(), "finished before a worker could be killed"
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    result = future.result(timeout=180)
    np.testing.assert_allclose(result.values, expected, atol=0.1)


def _some_tiles_done(client: Client) -> bool:
    return any(key.startswith("decloud-tiles") for key in map(str, client.who_has()))


def test_gpu_annotated_tasks_run_only_where_the_resource_is(
    small_checkpoint, tmp_path, forked_workers
):
    workers = {
        "plain": {"cls": Nanny, "options": {"nthreads": 1, "dashboard": False}},
        "gpu": {
            "cls": Nanny,
            "options": {"nthreads": 1, "dashboard": False, "resources": {"GPU": 1}},
        },
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with (
        forked_workers(),
        SpecCluster(workers=workers, scheduler=scheduler) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        gpu_worker = next(
            addr
            for addr, info in client.scheduler_info()["workers"].items()
            if info["resources"].get("GPU")
        )
        scene = m3rcr_xr.synthetic_scene((300, 300), chunks=100)
        out = decloud(
            scene,
            "dsen2_cr",
            small_checkpoint,
            config=SMALL,
            tile=48,
            resources={"GPU": 1},
            device="cpu",
        )
        with get_task_stream(client) as stream:
            client.compute(out.data, optimize_graph=False).result()
        tiles = [e["worker"] for e in stream.data if str(e["key"]).count("decloud-tiles")]
        assert len(tiles) > 4
        assert set(tiles) == {gpu_worker}
        # writing the result keeps the placement (dask.array.store drops annotations)
        with get_task_stream(client) as stream:
            m3rcr_xr.to_zarr(out.to_dataset(), tmp_path / "d.zarr")
        tiles = [e["worker"] for e in stream.data if str(e["key"]).count("decloud-tiles")]
        assert len(tiles) > 4
        assert set(tiles) == {gpu_worker}


def test_a_worker_runs_one_tile_task_at_a_time_on_its_device(small_checkpoint, forked_workers):
    # the CPU treated as a GPU is: 4 threads, one tile task's forward passes at a time
    with (
        forked_workers(),
        LocalCluster(
            n_workers=1, threads_per_worker=4, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(start_worker_probe, True)
        scene = m3rcr_xr.synthetic_scene((300, 300), chunks=64)
        out = decloud(
            scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=48, batch_size=2, device="cpu"
        )
        client.compute(out).result()
        (peaks,) = client.run(worker_probe_peaks).values()
    assert peaks["forward"] == 1
    assert peaks["task"] > 1
