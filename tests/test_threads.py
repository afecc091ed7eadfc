"""m3rcr_xr.threads: torch's CPU threads shared among the tile tasks, and given back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dask
import dask.system
import pytest
import torch
from distributed import Client, LocalCluster

import m3rcr_xr
from m3rcr_xr import runner, threads
from m3rcr_xr.inference import decloud

SMALL = {"preset": "small"}


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(dask.system, "CPU_COUNT", 8)


@pytest.fixture
def torch_at_three():
    """Torch at 3 threads, as a caller might have set it; its own count back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def threads_in_forwards(monkeypatch) -> list[int]:
    """Torch's thread count in each forward pass of a tile task."""
    seen: list[int] = []
    forward = runner._forward

    def counting(model, batch):
        seen.append(torch.get_num_threads())
        return forward(model, batch)

    monkeypatch.setattr(runner, "_forward", counting)
    return seen


def test_torch_threads_follow_the_option(eight_cores):
    with m3rcr_xr.set_options(torch_threads=3):
        assert threads.torch_threads() == 3
    with dask.config.set(num_workers=2):
        assert threads.torch_threads() == 4  # the cores shared among the tasks
    with dask.config.set(num_workers=16):
        assert threads.torch_threads() == 1  # never none


def test_a_decloud_here_leaves_torch_as_it_found_it(
    eight_cores, torch_at_three, threads_in_forwards, small_scene, small_checkpoint
):
    out = decloud(small_scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=64)
    with dask.config.set(num_workers=2):
        out.compute(scheduler="threads")
    assert threads_in_forwards and set(threads_in_forwards) == {4}
    assert torch.get_num_threads() == 3


@pytest.mark.slow
def test_the_workers_of_a_host_share_its_cores(
    eight_cores, torch_at_three, threads_in_forwards, small_checkpoint
):
    # two workers of one thread each: 4 threads a task, not 8 (each worker's own count)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        scene = m3rcr_xr.synthetic_scene((200, 200), chunks=100)
        out = decloud(scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=64)
        client.compute(out).result()
    assert threads_in_forwards and set(threads_in_forwards) == {4}
    assert torch.get_num_threads() == 3


def test_tile_threads_set_this_threads_count_and_give_it_back(torch_at_three):
    with threads.tile_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(KeyError), threads.tile_threads(2):
        raise KeyError("a task that fails")
    assert torch.get_num_threads() == 3


def test_a_pool_thread_that_ran_torch_before_gets_the_count_too(torch_at_three):
    # torch's count is per thread: setting it once (where the model is built) left the
    # threads that had run torch with their own
    def count() -> int:
        with threads.tile_threads(2):
            return torch.get_num_threads()

    def stale() -> int:
        torch.set_num_threads(5)
        return count()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(stale).result() == 2
        assert pool.submit(torch.get_num_threads).result() == 5


def test_one_task_at_a_time_gets_every_core(
    eight_cores, threads_in_forwards, small_scene, small_checkpoint
):
    out = decloud(small_scene, "dsen2_cr", small_checkpoint, config=SMALL, tile=64)
    for setting in ({"scheduler": "synchronous"}, {"scheduler": "threads", "num_workers": 1}):
        threads_in_forwards.clear()
        with dask.config.set(setting):
            out.data.compute()
        assert set(threads_in_forwards) == {8}, setting
    threads_in_forwards.clear()
    out.data.compute(scheduler="threads")  # as many tasks at once as cores
    assert set(threads_in_forwards) == {1}
