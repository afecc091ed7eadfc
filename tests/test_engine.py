"""The tiling engine's graph (m3rcr_xr/engine.py): where tile tasks fill forward batches.

decloud's graph as a whole is tested through decloud (tests/test_inference.py)."""

import pytest

from m3rcr_xr import engine
from m3rcr_xr.blending import TileJob
from m3rcr_xr.runner import ModelRef
from m3rcr_xr.tiling import make_plan

SMALL = {"preset": "small"}


class _FakeClient:
    def __init__(self, *workers):
        self.workers = {f"tcp://w{i}": info for i, info in enumerate(workers)}

    def scheduler_info(self):
        return {"workers": self.workers}


@pytest.mark.parametrize(
    ("workers", "resources", "fills"),
    [
        ([{"resources": {}}, {}], None, False),  # a CPU cluster: the demo's, the CLI's
        ([{"resources": {}}, {"resources": {"GPU": 1}}], None, True),  # local_cluster(gpus=)
        ([{"resources": {}, "gpu": {"name": "H100"}}], None, True),  # dask-cuda, NVML
        ([{"resources": {}}], (("GPU", 1.0),), True),  # the tasks ask for one
    ],
)
def test_with_device_auto_tasks_fill_batches_only_on_a_cluster_with_gpus(
    monkeypatch, workers, resources, fills
):
    monkeypatch.setattr(engine, "distributed_client", lambda: _FakeClient(*workers))
    member = ModelRef.create("dsen2_cr", "untrained", SMALL, "auto", "fp32")
    plan = make_plan(48, 6, 64, 64)
    job = TileJob(plan=plan, members=(member,), batch_size=8, resources=resources)
    assert engine._fills_batches(job) is fills
