import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

from m3rcr_xr.progress import compute_with_progress


def test_threaded_scheduler_shows_a_bar(capsys):
    (total,) = compute_with_progress(da.ones((100, 100), chunks=10).sum(), show=True)
    assert total == 10_000
    assert "100% Completed" in capsys.readouterr().err


def test_distributed_cluster_shows_a_bar(capsys):
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        (values,) = compute_with_progress(da.arange(50, chunks=5) * 2, show=True)
    np.testing.assert_array_equal(values, np.arange(50) * 2)
    captured = capsys.readouterr()
    assert "100%" in captured.out + captured.err


def test_quiet_when_asked(capsys):
    compute_with_progress(da.ones(10, chunks=5).sum(), show=False)
    assert capsys.readouterr().err == ""
