"""Running tiles on a device (m3rcr_xr/runner.py): locks, precision, the model cache."""

import contextlib
import hashlib
import subprocess
import sys

import torch

from m3rcr_xr import models, runner
from m3rcr_xr.runner import ModelRef

SMALL = {"preset": "small"}


def test_device_lock_is_one_per_device_and_none_on_the_cpu():
    assert isinstance(runner.device_lock("cpu"), contextlib.nullcontext)
    lock = runner.device_lock("cuda:0")
    assert lock is runner.device_lock("cuda:0")
    assert lock is not runner.device_lock("cuda:1")


def test_one_cached_model_whatever_the_precision(small_checkpoint):
    runner.clear_model_cache()
    fp32, bf16 = (
        runner.cached_model(ModelRef.create("dsen2_cr", small_checkpoint, SMALL, "cpu", p))[0]
        for p in ("fp32", "auto")
    )
    assert fp32 is bf16


def _digest(ref: ModelRef) -> str:
    weights = ref.build().state_dict().values()
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in weights)).hexdigest()


def test_untrained_weights_are_the_same_in_every_process():
    ref = ModelRef.create("dsen2_cr", "untrained", SMALL, "cpu")
    torch.manual_seed(1)
    first = _digest(ref)
    after = torch.rand(1)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after)  # the caller's random stream is left alone
    torch.manual_seed(2)
    assert _digest(ref) == first
    code = (
        "from m3rcr_xr.runner import ModelRef; from tests.test_runner import _digest; "
        "print(_digest(ModelRef.create('dsen2_cr', 'untrained', {'preset': 'small'}, 'cpu')))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == first
    deeper = ModelRef.create("dsen2_cr", "untrained", {**SMALL, "n_resblocks": 3}, "cpu")
    assert deeper.untrained_seed() != ref.untrained_seed()


def test_a_rewritten_checkpoint_replaces_its_cached_model(tmp_path):
    runner.clear_model_cache()
    path = tmp_path / "run.pt"
    for seed in range(3):  # as training rewrites its checkpoint
        torch.manual_seed(seed)
        torch.save(models.build("dsen2_cr", **SMALL).state_dict(), path)
        runner.cached_model(ModelRef.create("dsen2_cr", path, SMALL, "cpu"))
    assert len(runner._CACHE) == 1
