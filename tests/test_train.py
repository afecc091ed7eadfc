"""Training end to end: the package's names, the command line and the shipped demo weights."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import xarray as xr

import m3rcr_xr
import m3rcr_xr.train
from m3rcr_xr import models
from m3rcr_xr.cli import main
from m3rcr_xr.exceptions import CheckpointError
from m3rcr_xr.locks import locked_file
from m3rcr_xr.testing import raise_if_dask_computes

from .train_runs import SMALL, TILE, run_settings, weights


def test_the_package_keeps_the_names_of_the_module():
    """train.py became a package: every name its callers import is still there."""
    names = {
        "PUBLISHED",
        "CHECKPOINT_KEYS",
        "CropDataset",
        "TrainResult",
        "TrainSettings",
        "autocast_dtype",
        "export_weights",
        "loss_function",
        "make_optimizer",
        "make_scheduler",
        "read_training_checkpoint",
        "train",
        "train_step",
        "validate_model",
    }
    assert names <= set(m3rcr_xr.train.__all__)
    assert all(callable(getattr(m3rcr_xr.train, n)) or n.isupper() for n in names)
    assert m3rcr_xr.train.CropDataset.__module__ == "m3rcr_xr.train.data"


def test_cli_train(collection_store, val_store, tmp_path, capsys):
    ckpt, exported_path = tmp_path / "cli.pth", tmp_path / "cli.safetensors"
    argv = [
        "train",
        str(collection_store),
        "--model",
        "dsen2_cr",
        "--config",
        "preset=small",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--crop",
        str(TILE),
        "--val",
        str(val_store),
        "--out",
        str(ckpt),
        "--export",
        str(exported_path),
        "--seed",
        "1",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "validation all: PSNR" in out
    from safetensors import safe_open

    with safe_open(str(exported_path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["model"] == "dsen2_cr" and json.loads(meta["config"]) == SMALL
    reference = weights(ckpt)
    exported = models.load("dsen2_cr", exported_path, **SMALL).state_dict()
    assert all(torch.equal(exported[k], reference[k]) for k in reference)
    status = main(
        [
            "train",
            str(tmp_path / "missing.zarr"),
            "--model",
            "dsen2_cr",
            "--steps",
            "1",
            "--out",
            str(ckpt),
        ]
    )
    assert status == 2 and "error" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--out", "--export"])
def test_cli_train_refuses_a_users_file(collection_store, tmp_path, capsys, flag):
    """A file at --out or --export that m3rcr did not write: exit 2, one line naming it,
    before any training (no checkpoint written), the file byte for byte as it was."""
    ckpt, exported = tmp_path / "run.pth", tmp_path / "w.safetensors"
    mine = ckpt if flag == "--out" else exported
    mine.write_bytes(b"MY PRECIOUS WEIGHTS\n")
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--config", "preset=small"]
    argv += ["--steps", "1", "--crop", str(TILE), "--out", str(ckpt), "--export", str(exported)]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"m3rcr train: error: {flag} {mine}: the file exists and is not "
        + ("a training checkpoint written" if flag == "--out" else "weights exported")
        + f" by m3rcr_xr; choose another {flag} or remove it"
    ]
    assert mine.read_bytes() == b"MY PRECIOUS WEIGHTS\n"
    assert sorted(os.listdir(tmp_path)) == [mine.name]


def test_cli_train_replaces_another_run_only_with_overwrite(collection_store, tmp_path, capsys):
    """A second run into --out and --export of a finished one: exit 2, one line saying
    what the file holds and the ways on, both files byte for byte as they were; the run
    resumed writes its own checkpoint; --overwrite replaces them."""
    ckpt, exported = tmp_path / "run.pth", tmp_path / "w.safetensors"
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--config", "preset=small"]
    argv += ["--crop", str(TILE), "--batch-size", "2", "--out", str(ckpt)]
    assert main([*argv, "--steps", "1", "--export", str(exported)]) == 0
    capsys.readouterr()
    before = {path: path.read_bytes() for path in (ckpt, exported)}
    assert main([*argv, "--steps", "1", "--seed", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"m3rcr train: error: --out {ckpt}: the file holds another run, a training checkpoint "
        f"of dsen2_cr at step 1 trained on {collection_store}; pass --resume {ckpt} to "
        "continue it, --overwrite to replace it, or choose another --out"
    ]
    resumed = [*argv, "--steps", "2", "--resume", str(ckpt), "--export", str(exported)]
    assert main(resumed) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"m3rcr train: error: --export {exported}: the file holds weights exported by "
        "m3rcr_xr (dsen2_cr, step 1); pass --overwrite to replace them, or choose another "
        "--export"
    ]
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(os.listdir(tmp_path)) == ["run.pth", "w.safetensors"]
    assert main(resumed[:-2]) == 0  # the run resumed goes on in its own file
    assert m3rcr_xr.train.read_training_checkpoint(ckpt)["step"] == 2
    assert main([*resumed, "--overwrite"]) == 0
    from m3rcr_xr.weights import read_weights

    assert read_weights(exported).metadata["step"] == "2"
    assert main([*argv, "--steps", "1", "--seed", "2", "--overwrite"]) == 0
    saved = m3rcr_xr.train.read_training_checkpoint(ckpt)
    assert (saved["step"], saved["settings"]["seed"]) == (1, 2)


@pytest.mark.parametrize("flag", ["--out", "--export"])
def test_cli_train_refuses_a_file_another_run_is_writing(collection_store, tmp_path, capsys, flag):
    """Another run holds --out or --export (its lock, as a run holds it from its start to
    its end): exit 2 before any training, one line naming the flag and the file, nothing
    written (both runs trained and replaced each other's files)."""
    ckpt, exported = tmp_path / "run.pth", tmp_path / "w.safetensors"
    held = ckpt if flag == "--out" else exported
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--config", "preset=small"]
    argv += ["--steps", "1", "--crop", str(TILE), "--out", str(ckpt), "--export", str(exported)]
    with locked_file(held, "another run", CheckpointError):
        assert main(argv) == 2
        lock = held.with_name(f".{held.name}.m3rcr-lock")
        assert capsys.readouterr().err.splitlines() == [
            f"m3rcr train: error: {flag} {held}: another run is writing this file (it holds "
            f"{lock}); wait for it to end or choose another {flag}"
        ]
        assert os.listdir(tmp_path) == [lock.name]  # the other run's


def test_shipped_weights_beat_the_cloudy_input():
    from m3rcr_xr.weights import default_checkpoint

    ckpt = default_checkpoint()
    path, config = ckpt.path, ckpt.config
    assert ckpt.model == "dsen2_cr" and path.stat().st_size <= 5 * 2**20
    models.load(ckpt.model, path, **config)  # safetensors: tensors only, nothing executed
    scene = m3rcr_xr.synthetic_scene((192, 192), seed=90210, chunks=192, cloud_cover=0.5)
    scene = scene.assign(
        decloud=m3rcr_xr.decloud(scene, ckpt.model, path, config=config, device="cpu"),
        identity=scene["cloudy"].astype("float32"),
    ).compute()
    assert scene["cloudmask"].mean() > 0.1
    ours, base = (
        m3rcr_xr.evaluate(scene, var, level=None, strata=("all",)).sel(
            stratum="all", landcover_class="all"
        )
        for var in ("decloud", "identity")
    )
    assert float(ours["PSNR"]) > float(base["PSNR"])
    assert float(ours["MAE"]) < float(base["MAE"])


# ------------------------------------------------------------------- the landcover task
LANDCOVER = {"preset": "small"}


def _landcover_settings(steps: int, **kwargs) -> m3rcr_xr.train.TrainSettings:
    base = {"config": LANDCOVER, "batch_size": 2, "crop": TILE, "lr": 3e-3, "seed": 5}
    return m3rcr_xr.train.TrainSettings("landcover_unet", steps, device="cpu", **{**base, **kwargs})


def test_landcover_loss_ignores_nodata_and_unknown():
    from m3rcr_xr.landcover import worldcover_labels
    from m3rcr_xr.train import loss_function

    # nodata, a non-WorldCover code and level 1's "unknown" (snow and ice) are ignored
    codes = np.array([[10, 0, 30, 70], [77, 50, 80, 10]], dtype=np.uint8)
    labels = torch.from_numpy(worldcover_labels(codes, 1).astype(np.int64))[None]
    logits = torch.randn(1, 7, 2, 4, generator=torch.Generator().manual_seed(0))
    ignored = labels == 255
    assert int(ignored.sum()) == 3
    changed = logits.clone()
    changed[:, :, ignored[0]] = 100.0  # anything at the ignored pixels: the same loss
    unused = torch.zeros(1)
    for weight in (None, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])):
        loss = loss_function("landcover_unet", weight)
        value = loss(logits, labels, unused, unused)
        assert torch.equal(value, loss(changed, labels, unused, unused))
        kept = ~ignored[0]
        expected = torch.nn.functional.cross_entropy(
            logits[0].permute(1, 2, 0)[kept], labels[0][kept], weight=weight
        )
        assert torch.allclose(value, expected)


def test_balanced_class_weights_follow_the_label_counts():
    from m3rcr_xr.landcover import worldcover_labels
    from m3rcr_xr.train.data import balanced_class_weights

    scene = m3rcr_xr.synthetic_collection(2, 64, seed=4)
    # no optical data there: the crops' labels are 255, and the counts leave them out
    empty = xr.DataArray([True, False], dims="patch") & xr.DataArray(np.arange(64) < 40, dims="x")
    scene["cloudfree"] = scene["cloudfree"].where(~empty, 0)
    data = m3rcr_xr.train.CropDataset(scene, TILE, level=1)
    labels = worldcover_labels(scene.landcover.values, 1)
    labels = np.concatenate([labels[0, :, 40:].ravel(), labels[1].ravel()])
    counts = np.bincount(labels[labels < 7], minlength=7)
    with raise_if_dask_computes(1):  # one pass over the chunks, counted chunk by chunk
        weights = balanced_class_weights(data).numpy()
    present = counts > 0
    expected = counts.sum() / (7 * counts[present])
    np.testing.assert_allclose(weights[present], expected, rtol=1e-6)
    assert np.all(weights[~present] == 1.0)


def test_landcover_checkpoint_resume_and_export(collection_store, tmp_path, capsys):
    """The header records task, level and classes; a resumed run is the uninterrupted
    one bit for bit; the export loads and its header is checked against its config."""
    from m3rcr_xr.exceptions import CheckpointError
    from m3rcr_xr.train import export_weights, read_training_checkpoint, train
    from m3rcr_xr.weights import read_weights

    whole = train(
        collection_store, tmp_path / "whole.pth", _landcover_settings(3, class_weights="balanced"),
        task="landcover", level=1,
    )  # fmt: skip
    saved = read_training_checkpoint(whole.checkpoint)["settings"]
    assert saved["task"] == "landcover" and saved["level"] == 1
    assert saved["config"]["n_classes"] == 7 and saved["class_weights"] == "balanced"
    first = train(
        collection_store, tmp_path / "first.pth", _landcover_settings(2, class_weights="balanced"),
        level=1,
    )  # fmt: skip
    second = train(
        collection_store,
        tmp_path / "second.pth",
        _landcover_settings(3, config=None),
        resume=first.checkpoint,
    )
    assert second.losses == {3: whole.losses[3]}
    # "none" on the command line is a value, not "the checkpoint's": refused, as typed
    argv = ["train", str(collection_store), "--task", "landcover", "--steps", "3"]
    argv += ["--class-weights", "none", "--resume", str(first.checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "none.pth")]) == 2
    assert "error: --class-weights none differs from the checkpoint's 'balanced'" in (
        capsys.readouterr().err
    )
    config = {**LANDCOVER, "level": 1}
    resumed = models.load("landcover_unet", second.checkpoint, **config).state_dict()
    reference = models.load("landcover_unet", whole.checkpoint, **config).state_dict()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)

    # the checkpoint itself classifies with its own configuration (small, level 1)
    optical = m3rcr_xr.synthetic_collection(1, TILE, seed=8).cloudfree
    expected = m3rcr_xr.classify(optical, checkpoint=whole.checkpoint, config=config, tile=TILE)
    got = m3rcr_xr.classify(optical, checkpoint=whole.checkpoint, tile=TILE)
    np.testing.assert_array_equal(got.values, expected.values)
    exported = export_weights(whole.checkpoint, tmp_path / "lc.safetensors")
    header = read_weights(exported)
    assert header.model == "landcover_unet" and header.config["level"] == 1
    assert header.metadata["task"] == "landcover" and header.metadata["n_classes"] == "7"
    net = header.load()
    assert all(torch.equal(net.state_dict()[k], reference[k]) for k in reference)
    with pytest.raises(CheckpointError, match=r"classify.bias \(checkpoint \(7,\), model \(11,\)"):
        models.load("landcover_unet", exported, **LANDCOVER, level=2)
    from safetensors.torch import load_file, save_file

    forged = tmp_path / "forged.safetensors"
    save_file(load_file(str(exported)), str(forged), metadata={**header.metadata, "level": "2"})
    with pytest.raises(CheckpointError, match="level=2"):
        read_weights(forged)


def test_landcover_settings_are_checked():
    from m3rcr_xr.exceptions import UsageError

    with pytest.raises(UsageError, match="task='landcover': dsen2_cr is a cloud_removal model"):
        m3rcr_xr.train.TrainSettings("dsen2_cr", 1, task="landcover").resolved()
    with pytest.raises(UsageError, match="level=2: for the landcover task only"):
        m3rcr_xr.train.TrainSettings("dsen2_cr", 1, level=2).resolved()
    with pytest.raises(UsageError, match="class_weights='inverse'"):
        _landcover_settings(1, class_weights="inverse").resolved()
    with pytest.raises(UsageError, match="level=2 differs"):
        _landcover_settings(1, config={"level": 1}, level=2).resolved()


def test_cli_train_landcover(collection_store, val_store, tmp_path, capsys):
    ckpt, exported = tmp_path / "lc.pth", tmp_path / "lc.safetensors"
    argv = ["train", str(collection_store), "--task", "landcover", "--level", "2"]
    argv += ["--config", "preset=small", "--steps", "1", "--batch-size", "2", "--crop", "64"]
    argv += ["--class-weights", "none", "--val", str(val_store), "--device", "cpu"]
    assert main([*argv, "--out", str(ckpt), "--export", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "validation all: OA" in out and "mIoU" in out
    from m3rcr_xr.weights import read_weights

    assert read_weights(exported).config["n_classes"] == 11
    one = ["train", str(collection_store), "--task", "landcover", "--steps", "1", "--crop", "16"]
    assert main([*one, "--batch-size", "1", "--out", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "error: --crop 16 with --batch-size 1: landcover_unet of depth 4 " in err
    assert "use --batch-size 2 or more, or --crop 32 or more" in err
    bad = ["train", str(collection_store), "--level", "2", "--steps", "1"]
    assert main([*bad, "--out", str(tmp_path / "x.pth")]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main([*bad, "--model", "dsen2_cr", "--out", str(tmp_path / "x.pth")]) == 2
    assert "--level 2: for the landcover task only" in capsys.readouterr().err


def _unreachable(block: np.ndarray) -> np.ndarray:
    raise OSError("connection reset while reading the validation store")


def test_a_validation_that_fails_loses_no_training(tmp_path):
    """The checkpoint is written before the validation: a read error of the validation
    data leaves the run's state, complete and resumable."""
    scenes = m3rcr_xr.synthetic_collection(2, TILE, seed=3).compute()
    val = m3rcr_xr.synthetic_collection(1, TILE, seed=500)
    val["cloudfree"] = val["cloudfree"].copy(
        data=val["cloudfree"].data.map_blocks(_unreachable, dtype="uint16")
    )
    out = tmp_path / "run.pth"
    with pytest.raises(OSError, match="connection reset"):
        m3rcr_xr.train.train(scenes, out, run_settings(1), val=val, progress=False)
    saved = m3rcr_xr.train.read_training_checkpoint(out)
    assert saved["step"] == 1 and "metrics" not in saved
    resumed = m3rcr_xr.train.train(scenes, out, run_settings(2), resume=out, progress=False)
    assert sorted(resumed.losses) == [2]


def _nan_from_step(step: int):
    """The loss of the small DSen2-CR run, NaN from its ``step``-th call on."""
    calls = []

    def make(model, weights):
        loss = m3rcr_xr.train.loss_function(model, weights)

        def nan_later(*args, **kwargs):
            calls.append(1)
            value = loss(*args, **kwargs)
            return value * float("nan") if len(calls) >= step else value

        return nan_later

    return make


def test_a_loss_that_is_not_finite_stops_the_run_keeping_the_last_checkpoint(tmp_path, monkeypatch):
    """No checkpoint of NaN weights: the run stops at the step, the file keeps the last
    good one (resumable), and the weights had no step with NaN gradients."""
    from m3rcr_xr.exceptions import UsageError
    from m3rcr_xr.train import loop

    scenes = m3rcr_xr.synthetic_collection(2, TILE, seed=3).compute()
    out = tmp_path / "run.pth"
    monkeypatch.setattr(loop, "loss_function", _nan_from_step(3))
    with pytest.raises(UsageError, match=rf"step 3: the loss is nan, .*{out.name} keeps step 2"):
        m3rcr_xr.train.train(scenes, out, run_settings(4, checkpoint_every=2), progress=False)
    saved = m3rcr_xr.train.read_training_checkpoint(out)
    assert saved["step"] == 2
    assert all(bool(v.isfinite().all()) for v in weights(out).values())
    monkeypatch.setattr(loop, "loss_function", _nan_from_step(1))
    with pytest.raises(UsageError, match=r"step 1: .*nothing was written to .*new.pth"):
        m3rcr_xr.train.train(scenes, tmp_path / "new.pth", run_settings(2), progress=False)
    assert not (tmp_path / "new.pth").exists()


def test_train_step_takes_no_step_on_a_loss_that_is_not_finite():
    from m3rcr_xr.exceptions import UsageError
    from m3rcr_xr.train import CropDataset, make_optimizer, train_step

    model = models.build("dsen2_cr", **SMALL).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = CropDataset(m3rcr_xr.synthetic_collection(1, TILE, seed=3), TILE, mode="center")
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=1)))
    loss = m3rcr_xr.train.loss_function("dsen2_cr", None)

    def infinite(*args, **kwargs):
        return loss(*args, **kwargs) * float("inf")

    with pytest.raises(UsageError, match="the loss is inf, not a finite number"):
        train_step(model, batch, make_optimizer(model, 1e-3), infinite)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_training_on_a_gpu_leaves_cudnn_as_it_found_it(monkeypatch):
    # a decloud after training keeps cuDNN's autotuned algorithms; no GPU needed to set them
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", True)
    monkeypatch.setattr(cudnn, "deterministic", False)
    with m3rcr_xr.train.loop.reproducible_cudnn("cuda:0"):
        assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
    assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
    with pytest.raises(RuntimeError), m3rcr_xr.train.loop.reproducible_cudnn("cuda"):
        raise RuntimeError("a run that fails")
    assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
    with m3rcr_xr.train.loop.reproducible_cudnn("cpu"):  # nothing on a CPU
        assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
