"""m3rcr_xr.cluster.layout: cores and GPUs shared among worker processes."""

from __future__ import annotations

import pytest

from m3rcr_xr import cluster as mc
from m3rcr_xr.exceptions import UsageError


@pytest.mark.parametrize(
    ("cores", "n_workers", "threads", "expected"),
    [
        (2, None, None, (2, 1, 1)),
        (32, None, None, (8, 4, 1)),
        (8, 2, None, (2, 4, 1)),
        (8, None, 2, (4, 2, 1)),
        (8, 2, 1, (2, 1, 4)),
        (1, 1, 1, (1, 1, 1)),
    ],
)
def test_cpu_layout_never_oversubscribes(cores, n_workers, threads, expected):
    layout = mc.cpu_layout(cores, n_workers, threads)
    assert (layout.n_workers, layout.threads_per_worker, layout.torch_threads) == expected
    assert layout.n_workers * layout.threads_per_worker * layout.torch_threads <= max(
        cores, layout.n_workers * layout.threads_per_worker
    )


def test_gpu_layout_is_one_worker_per_gpu():
    layout = mc.gpu_layout(16, ["0", "1", "2", "3"])
    assert (layout.n_workers, layout.threads_per_worker, layout.gpus) == (
        4,
        4,
        ("0", "1", "2", "3"),
    )
    assert mc.gpu_layout(16, ["0", "1", "2", "3"], n_workers=2).gpus == ("0", "1")
    with pytest.raises(UsageError, match="one worker per GPU"):
        mc.gpu_layout(16, ["0"], n_workers=2)
    with pytest.raises(UsageError, match="n_workers=0: must be an integer >= 1"):
        mc.cpu_layout(4, n_workers=0)
    with pytest.raises(UsageError, match="threads_per_worker=True: must be an integer"):
        mc.gpu_layout(4, ["0"], threads_per_worker=True)
