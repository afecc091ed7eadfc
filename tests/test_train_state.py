"""Checkpoints: the published layout, exact resume, refusals, exports; files that are
not this library's are never replaced."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
import zarr

import m3rcr_xr
from m3rcr_xr import models
from m3rcr_xr.cli import main
from m3rcr_xr.exceptions import CheckpointError, StoreError, UsageError
from m3rcr_xr.identity import FINGERPRINT
from m3rcr_xr.testing import raise_if_dask_computes, serve_directory
from m3rcr_xr.train import (
    CropDataset,
    TrainSettings,
    export_weights,
    loop,
    read_training_checkpoint,
    train,
)

from .conftest import run_script, snapshot
from .train_runs import SMALL, TILE, run_settings, weights


def test_checkpoint_layout_and_round_trip(collection_store, tmp_path):
    result = train(collection_store, tmp_path / "run.pth", run_settings(2), progress=False)
    raw = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert {"network", "optimizer", "scheduler", "step"} <= set(raw)
    assert raw["step"] == 2 and all(k.startswith("module.") for k in raw["network"])
    assert raw["sampler"]["next"] == 4  # 2 steps of 2 crops
    loaded = models.load("dsen2_cr", result.checkpoint, **SMALL)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, raw["network"][f"module.{key}"], rtol=0, atol=0)
    assert sorted(result.losses) == [1, 2]
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        torch.save(raw["network"], tmp_path / "bare.pth")
        read_training_checkpoint(tmp_path / "bare.pth")


def test_resume_is_exact(collection_store, val_store, tmp_path):
    """Stopped at step 2 and resumed (with loader workers): the same losses and weights
    as an uninterrupted run, validation at the checkpoint included."""
    whole = train(
        collection_store,
        tmp_path / "whole.pth",
        run_settings(4, checkpoint_every=2),
        val=val_store,
        progress=False,
    )
    first = train(collection_store, tmp_path / "part.pth", run_settings(2), progress=False)
    second = train(
        collection_store,
        tmp_path / "resumed.pth",
        TrainSettings("dsen2_cr", 4, num_workers=2),
        resume=first.checkpoint,
        progress=False,
    )
    assert {**first.losses, **second.losses} == whole.losses
    resumed, reference = weights(second.checkpoint), weights(whole.checkpoint)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert set(whole.metrics) == {"model", "input"}
    assert set(whole.metrics["model"]) == {"all", "cloudy", "clear"}


def test_resume_refuses_otherrun_settings(collection_store, tmp_path):
    first = train(collection_store, tmp_path / "a.pth", run_settings(1), progress=False)
    with pytest.raises(UsageError, match="batch_size"):
        train(
            collection_store,
            tmp_path / "b.pth",
            TrainSettings("dsen2_cr", 2, batch_size=3),
            resume=first.checkpoint,
            progress=False,
        )
    with pytest.raises(UsageError, match="model"):
        train(
            collection_store,
            tmp_path / "b.pth",
            TrainSettings("glf_cr", 2),
            resume=first.checkpoint,
            progress=False,
        )


class _Planted:
    """A pickle that, were it ever unpickled, would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _users_file(kind: str, path: Path) -> bytes:
    """Write a file of the user's at ``path``, of ``kind``; its bytes."""
    if kind == "text":
        path.write_bytes(b"MY PRECIOUS WEIGHTS\n")
    elif kind == "state_dict":  # readable, but no training state
        torch.save({"module.weight": torch.ones(3)}, path)
    elif kind == "pickle":  # code that weights_only=True must refuse, never run
        torch.save({"network": _Planted(path.with_name("unpickled"))}, path)
    elif kind == "safetensors":  # weights, but not exported by this library
        safetensors.torch.save_file({"weight": torch.ones(3)}, str(path), metadata={"a": "b"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def one_step(collection_store, tmp_path_factory) -> Path:
    """A checkpoint of a one-step run (copy it before writing over it)."""
    out = tmp_path_factory.mktemp("one_step") / "run.pth"
    return train(collection_store, out, run_settings(1), progress=False).checkpoint


def test_out_replaces_the_run_resumed_and_another_only_with_overwrite(
    collection_store, one_step, tmp_path
):
    """The run resumed goes on in its own file (named any way); another run's checkpoint
    there is refused before any work, byte for byte as it was, and replaced only with
    overwrite."""
    out = Path(shutil.copy(one_step, tmp_path / "run.pth"))
    link = tmp_path / "link.pth"
    link.symlink_to(out.name)  # the checkpoint resumed, by another name
    resumed = train(collection_store, out, run_settings(2), resume=link, progress=False)
    assert sorted(resumed.losses) == [2] and read_training_checkpoint(out)["step"] == 2
    before = out.read_bytes()
    with pytest.raises(CheckpointError) as caught:  # the data is not even opened
        train(tmp_path / "missing.zarr", out, run_settings(1, seed=4), progress=False)
    assert str(caught.value) == (
        f"out={str(out)!r}: the file holds another run, a training checkpoint of dsen2_cr "
        f"at step 2 trained on {collection_store}; pass resume={str(out)!r} to continue it, "
        "overwrite=True to replace it, or choose another out"
    )
    assert out.read_bytes() == before
    fresh = train(collection_store, out, run_settings(1, seed=4), progress=False, overwrite=True)
    assert read_training_checkpoint(out)["settings"]["seed"] == 4 and fresh.checkpoint == out
    assert sorted(os.listdir(tmp_path)) == ["link.pth", "run.pth"]  # no temporary file left


def test_a_resume_into_another_runs_checkpoint_is_refused(collection_store, one_step, tmp_path):
    other = Path(shutil.copy(one_step, tmp_path / "other.pth"))
    before = other.read_bytes()
    with pytest.raises(CheckpointError, match=r"other.pth'?: the file holds another run, .*step 1"):
        train(collection_store, other, run_settings(2), resume=one_step, progress=False)
    assert other.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["other.pth"]


@pytest.mark.parametrize("store", ["train", "val"])
def test_out_inside_a_store_it_reads_is_refused(collection_store, val_store, store):
    """A checkpoint in the training or validation store would change its listing (and
    so its identity: the resume would be refused as a store rewritten in place)."""
    inside = (collection_store if store == "train" else val_store) / "run.pth"
    role = {"train": "training store", "val": "validation store"}[store]
    before = snapshot(inside.parent)
    with pytest.raises(StoreError, match=f"the destination lies inside the {role} "):
        train(collection_store, inside, run_settings(1), val=val_store, progress=False)
    assert snapshot(inside.parent) == before


@pytest.mark.parametrize("kind", ["text", "state_dict", "pickle", "safetensors"])
def test_out_refuses_a_users_file_before_any_work(tmp_path, kind):
    mine = tmp_path / "mine.pth"
    before = _users_file(kind, mine)
    with pytest.raises(CheckpointError) as caught:  # the data is not even opened
        train(tmp_path / "missing.zarr", mine, run_settings(1), progress=False)
    assert str(caught.value) == (
        f"out={str(mine)!r}: the file exists and is not a training checkpoint written by "
        "m3rcr_xr; choose another out or remove it"
    )
    assert mine.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["mine.pth"]  # nothing unpickled, nothing written


def test_out_refuses_a_folder(tmp_path):
    (tmp_path / "run.pth").mkdir()
    with pytest.raises(CheckpointError, match=r"run.pth': a folder; give the path of a file$"):
        train(tmp_path / "missing.zarr", tmp_path / "run.pth", run_settings(1), progress=False)


def test_an_interrupted_checkpoint_leaves_the_last_one(
    collection_store, one_step, tmp_path, monkeypatch
):
    out = Path(shutil.copy(one_step, tmp_path / "run.pth"))
    before = out.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(before[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(collection_store, out, run_settings(2), resume=out, progress=False)
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["run.pth"]


def test_export_replaces_only_weights_it_exported_with_overwrite(one_step, tmp_path):
    exported = export_weights(one_step, tmp_path / "w.safetensors")
    before = exported.read_bytes()
    with pytest.raises(CheckpointError) as caught:
        export_weights(one_step, exported)
    assert str(caught.value) == (
        f"out={str(exported)!r}: the file holds weights exported by m3rcr_xr (dsen2_cr, "
        "step 1); pass overwrite=True to replace them, or choose another out"
    )
    assert exported.read_bytes() == before
    assert export_weights(one_step, exported, overwrite=True) == exported  # its own: replaced
    for kind in ("text", "state_dict", "safetensors"):
        mine = tmp_path / f"{kind}.safetensors"
        before = _users_file(kind, mine)
        with pytest.raises(CheckpointError, match="is not weights exported by m3rcr_xr; choose"):
            export_weights(one_step, mine, overwrite=True)
        assert mine.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["w.safetensors", "text.safetensors", "state_dict.safetensors", "safetensors.safetensors"]
    )


def test_an_interrupted_export_leaves_the_old_file(one_step, tmp_path, monkeypatch):
    exported = export_weights(one_step, tmp_path / "w.safetensors")
    before = exported.read_bytes()

    def disk_full(partial: Path, data: bytes) -> None:
        with open(partial, "wb") as handle:
            handle.write(data[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_weights(one_step, exported, overwrite=True)
    assert exported.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def _raised(function: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException | None:
    """Call ``function`` in another thread; what it raised (None: nothing)."""
    raised: list[BaseException] = []

    def call() -> None:
        try:
            function(*args, **kwargs)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    return raised[0] if raised else None


def _after_each_checkpoint(monkeypatch, then: Callable[[Path, dict], None]) -> None:
    """Run ``then(path, payload)`` after :func:`train` writes each of its checkpoints."""
    save = loop.save_checkpoint

    def save_then(path: Path, payload: dict, found: str | None) -> str | None:
        written = save(path, payload, found)
        then(path, payload)
        return written

    monkeypatch.setattr(loop, "save_checkpoint", save_then)


def test_a_second_run_on_a_file_of_a_running_one_is_refused_at_its_start(
    collection_store, tmp_path, monkeypatch
):
    """Two runs on one out (or export) mixed their files: each checkpoint replaced the
    other's, and the export was the other run's weights. A run holds the lock of its
    files from start to end: a second one, started while the first runs, is refused,
    naming the file; the files are the first run's alone, and no lock file is left."""
    out, exported = tmp_path / "run.pth", tmp_path / "w.safetensors"
    refused: list[BaseException | None] = []

    def second_runs(path: Path, payload: dict) -> None:
        if refused:
            return
        for other_out, other_export in [
            (out, tmp_path / "b.safetensors"),
            (tmp_path / "b.pth", exported),
        ]:
            settings = run_settings(1, seed=4)
            refused.append(
                _raised(
                    train,
                    collection_store,
                    other_out,
                    settings,
                    export=other_export,
                    progress=False,
                )
            )

    _after_each_checkpoint(monkeypatch, second_runs)
    first = train(
        collection_store, out, run_settings(2, checkpoint_every=1), export=exported, progress=False
    )
    assert [type(error) for error in refused] == [CheckpointError, CheckpointError]
    for error, (name, path) in zip(refused, [("out", out), ("export", exported)], strict=True):
        assert str(error) == (
            f"{name}={str(path)!r}: another run is writing this file (it holds "
            f"{path.with_name(f'.{path.name}.m3rcr-lock')}); wait for it to end or choose "
            f"another {name}"
        )
    payload = read_training_checkpoint(out)
    assert (payload["settings"]["seed"], payload["step"]) == (3, 2)
    assert first.export == exported
    mine = weights(out)
    theirs = models.load("dsen2_cr", exported, **SMALL).state_dict()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)
    assert sorted(os.listdir(tmp_path)) == ["run.pth", "w.safetensors"]


def test_export_is_the_runs_weights_not_the_file_at_out(
    collection_store, one_step, tmp_path, monkeypatch, capsys
):
    """--export was read back from --out after the run: a file put there meanwhile
    (another run's checkpoint) was exported as this run's weights. The export is the
    weights the run ends with."""
    ckpt, exported = tmp_path / "run.pth", tmp_path / "w.safetensors"
    written: list[dict] = []

    def replaced(path: Path, payload: dict) -> None:
        written.append(payload)
        shutil.copy(one_step, path)

    _after_each_checkpoint(monkeypatch, replaced)
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--config", "preset=small"]
    argv += ["--steps", "2", "--batch-size", "2", "--crop", str(TILE), "--seed", "5"]
    assert main([*argv, "--out", str(ckpt), "--export", str(exported)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {exported}"
    runs = models.extract_state_dict(written[-1])
    header = safetensors.torch.load_file(exported)
    assert header.keys() == runs.keys() and all(torch.equal(header[k], runs[k]) for k in runs)
    assert not torch.equal(header["head.0.weight"], weights(one_step)["head.0.weight"])


def test_a_users_file_at_export_during_the_run_is_kept_naming_export(
    collection_store, tmp_path, monkeypatch, capsys
):
    """A file of the user's put at --export while the run trains is checked again, kept,
    and the refusal names --export (it said --out)."""
    ckpt, exported = tmp_path / "run.pth", tmp_path / "w.safetensors"
    _after_each_checkpoint(monkeypatch, lambda *_: exported.write_bytes(b"MY WEIGHTS\n"))
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--config", "preset=small"]
    argv += ["--steps", "1", "--crop", str(TILE), "--out", str(ckpt), "--export", str(exported)]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (  # after the progress bar
        f"m3rcr train: error: --export {exported}: the file exists and is not weights "
        "exported by m3rcr_xr; choose another --export or remove it"
    )
    assert exported.read_bytes() == b"MY WEIGHTS\n"
    assert sorted(os.listdir(tmp_path)) == ["run.pth", "w.safetensors"]


EXPORT = "import sys; from m3rcr_xr.train import export_weights; export_weights(*sys.argv[1:])"


def test_exported_weights_are_the_same_bytes_in_every_process(one_step, tmp_path, fork_server):
    """Weights are known by their hash: the same checkpoint exported in two processes (and
    twice in this one) gave other bytes, safetensors writing the metadata in a random
    order. It is sorted now, first in the header."""
    files = [tmp_path / f"{n}.safetensors" for n in range(4)]
    processes = [
        fork_server.context.Process(
            target=run_script,
            args=(EXPORT, str(one_step), str(path)),
            kwargs={"stderr": tmp_path / f"err{n}"},
        )
        for n, path in enumerate(files[:2])
    ]
    for process in processes:
        process.start()
    for path in files[2:]:
        export_weights(one_step, path)
    for n, process in enumerate(processes):
        process.join(60)
        assert process.exitcode == 0, (tmp_path / f"err{n}").read_text()
    first = files[0].read_bytes()
    assert [path.read_bytes() == first for path in files] == [True] * 4
    header = json.loads(first[8 : 8 + int.from_bytes(first[:8], "little")])
    metadata = header["__metadata__"]
    assert next(iter(header)) == "__metadata__" and list(metadata) == sorted(metadata)
    assert metadata["model"] == "dsen2_cr" and metadata["step"] == "1"
    exported, trained = safetensors.torch.load_file(files[0]), weights(one_step)
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)


@pytest.fixture(scope="module")
def other_store(tmp_path_factory) -> Path:
    """Other training data: two synthetic patches, not those of ``collection_store``."""
    path = tmp_path_factory.mktemp("other") / "other.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(2, 64, seed=99), path, progress=False)
    return path


def test_the_checkpoint_records_its_data(collection_store, one_step):
    recorded = read_training_checkpoint(one_step)["data"]
    assert recorded == {"train": CropDataset(collection_store, TILE).identity(), "val": None}
    assert recorded["train"]["source"] == str(collection_store)


def test_identity_of_a_dataset_follows_its_data():
    """Sizes, variables, patch ids and values: other images of the same layout are
    other data."""
    ds = m3rcr_xr.synthetic_collection(2, 64, seed=1)
    same = CropDataset(m3rcr_xr.synthetic_collection(2, 64, seed=1), TILE).identity()
    assert CropDataset(ds, TILE).identity() == same == {**same, "source": "dataset"}
    renamed = ds.assign_coords(patch=["a", "b"])
    other_values = m3rcr_xr.synthetic_collection(2, 64, seed=2).assign_coords(patch=ds.patch)
    changed = ds.compute()
    changed["cloudfree"][0, 0, 0, 0] += 1  # in memory: a hash of the values
    others = [renamed, ds.isel(x=slice(0, 48)), ds.drop_vars("cloudmask"), other_values]
    fingerprints = {
        CropDataset(d, TILE).identity()["fingerprint"] for d in [ds, *others, ds.compute(), changed]
    }
    assert len(fingerprints) == 7


def test_identity_of_an_opened_store_reads_no_data(collection_store):
    """The Dataset of an opened store: its graph and the store's own fingerprint."""
    data = CropDataset(m3rcr_xr.open_zarr(collection_store), TILE)
    with raise_if_dask_computes():
        identity = data.identity()
    assert identity == CropDataset(m3rcr_xr.open_zarr(collection_store), TILE).identity()
    assert identity["source"] == "dataset"


def test_resume_on_a_dataset_of_other_values_is_refused(tmp_path, caplog):
    first = m3rcr_xr.synthetic_collection(2, TILE, seed=1).compute()
    other = m3rcr_xr.synthetic_collection(2, TILE, seed=2).compute()
    run = train(first, tmp_path / "a.pth", run_settings(1), progress=False)
    with pytest.raises(UsageError, match="training data is dataset .* not dataset"):
        train(other, tmp_path / "b.pth", run_settings(2), resume=run.checkpoint, progress=False)
    legacy = read_training_checkpoint(run.checkpoint)  # by layout only, as before
    legacy["data"]["train"]["fingerprint"] = "0" * 64
    torch.save(legacy, tmp_path / "old.pth")
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.train"):
        resumed = train(
            first, tmp_path / "b.pth", run_settings(2), resume=tmp_path / "old.pth", progress=False
        )
    assert sorted(resumed.losses) == [2]
    assert "by its sizes, variables and patch ids only" in caplog.text


def test_resume_refuses_other_data(collection_store, other_store, val_store, one_step, tmp_path):
    """A run resumed on another store (or validated on another one) would not go on as
    it would have: refused before any step, naming both."""
    with pytest.raises(UsageError) as caught:
        train(other_store, tmp_path / "b.pth", run_settings(2), resume=one_step, progress=False)
    message = str(caught.value)
    assert f"resume={str(one_step)!r}: the checkpoint's training data is " in message
    assert str(collection_store) in message and f"not {other_store} (fingerprint" in message
    assert "written from the same data" not in message
    first = train(
        collection_store, tmp_path / "v.pth", run_settings(1), val=val_store, progress=False
    )
    with pytest.raises(UsageError, match="the checkpoint's validation data is"):
        train(
            collection_store,
            tmp_path / "b.pth",
            run_settings(2),
            val=other_store,
            resume=first.checkpoint,
            progress=False,
        )
    assert sorted(os.listdir(tmp_path)) == ["v.pth"]


def test_resume_on_a_store_rewritten_in_place_is_refused(collection_store, tmp_path, caplog):
    """A chunk rewritten in place (an xarray region write) keeps the store's own
    fingerprint (the data it was written from): its listing tells. An older checkpoint,
    which kept that fingerprint alone, cannot tell: it resumes, with a warning."""
    path = tmp_path / "train.zarr"
    shutil.copytree(collection_store, path)
    run = train(path, tmp_path / "a.pth", run_settings(1), progress=False)
    cloudfree = zarr.open_group(path, mode="r+")["cloudfree"]
    cloudfree[0] = np.asarray(cloudfree[0]) // 2 + 1  # every pixel of a patch, in place
    refused = r"training data is .*train.zarr \(fingerprint .*, listing .*\), not .*, listing"
    with pytest.raises(UsageError, match=refused + ".*written from the same data, but its"):
        train(path, tmp_path / "b.pth", run_settings(2), resume=run.checkpoint, progress=False)
    assert not (tmp_path / "b.pth").exists()
    older = read_training_checkpoint(run.checkpoint)
    written_from = zarr.open_group(path, mode="r").attrs[FINGERPRINT]
    older["data"]["train"] = {"source": str(path), "fingerprint": written_from}
    torch.save(older, tmp_path / "old.pth")
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.train"):
        resumed = train(
            path, tmp_path / "b.pth", run_settings(2), resume=tmp_path / "old.pth", progress=False
        )
    assert sorted(resumed.losses) == [2]
    assert "a store, by the data it was written from (not its chunks) only" in caplog.text


def test_a_copy_of_the_store_resumes_where_it_kept_the_times(collection_store, one_step, tmp_path):
    """A store moved to other disks with its modification times (cp -a) is the same
    data; one copied without them (cp -r) cannot be told from one rewritten in place:
    refused, saying so."""
    kept = shutil.copytree(collection_store, tmp_path / "kept.zarr")
    resumed = train(kept, tmp_path / "b.pth", run_settings(2), resume=one_step, progress=False)
    assert sorted(resumed.losses) == [2]
    lost = shutil.copytree(collection_store, tmp_path / "lost.zarr", copy_function=shutil.copyfile)
    for file in filter(Path.is_file, lost.rglob("*")):  # a later second: other times
        os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
    with pytest.raises(UsageError, match="same data, but its files changed since.*cp -a"):
        train(lost, tmp_path / "c.pth", run_settings(2), resume=one_step, progress=False)


def test_resume_on_data_with_no_version_is_refused(tmp_path, caplog):
    """A source that reports no version (an HTTP server with neither ETag nor
    Last-Modified) could be replaced by a file of the same size unseen: the first run
    warns, its checkpoint records it, and a resume is refused, as to_zarr refuses."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.tif").write_bytes(b"A" * 100)
    ds = m3rcr_xr.synthetic_collection(2, TILE, seed=1)
    with serve_directory(served, last_modified=False) as url:
        ds.encoding["source"] = f"{url}/a.tif"
        with caplog.at_level(logging.WARNING, logger="m3rcr_xr.train"):
            run = train(ds, tmp_path / "a.pth", run_settings(1), progress=False)
        assert f"dataset: the input {url}/a.tif reports its size but no version" in caplog.text
        assert "if this run is interrupted, it cannot be resumed" in caplog.text
        recorded = read_training_checkpoint(run.checkpoint)["data"]["train"]
        assert recorded["unversioned"] == [f"{url}/a.tif"]
        refused = rf"^resume=.*: cannot resume on this training data: the input {url}/a.tif "
        with pytest.raises(UsageError, match=refused + "reports its size but no version"):
            train(ds, tmp_path / "a.pth", run_settings(2), resume=run.checkpoint, progress=False)
    assert read_training_checkpoint(run.checkpoint)["step"] == 1


def test_an_older_checkpoint_without_its_data_resumes(collection_store, one_step, tmp_path, caplog):
    payload = read_training_checkpoint(one_step)
    del payload["data"]
    torch.save(payload, tmp_path / "old.pth")
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.train"):
        result = train(
            collection_store,
            tmp_path / "b.pth",
            run_settings(2),
            resume=tmp_path / "old.pth",
            progress=False,
        )
    assert sorted(result.losses) == [2]
    assert "records no identity of its training data" in caplog.text
    with pytest.raises(CheckpointError, match=r"at step 1 \(its training data not recorded\);"):
        train(collection_store, tmp_path / "old.pth", run_settings(1), progress=False)


def test_cli_resume_on_other_data_is_refused(other_store, one_step, tmp_path, capsys):
    argv = ["train", str(other_store), "--model", "dsen2_cr", "--steps", "2"]
    assert main([*argv, "--resume", str(one_step), "--out", str(tmp_path / "b.pth")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"m3rcr train: error: --resume {one_step}: the checkpoint's training")
    assert not (tmp_path / "b.pth").exists()


def test_resume_refuses_fewer_steps_than_the_checkpoint(collection_store, tmp_path, capsys):
    """Resumed to fewer steps than its checkpoint has run, a run has nothing to go on
    with (its checkpoint would hold the later step): refused; to as many, the checkpoint
    is written again, and the command line says which step it holds."""
    two = train(collection_store, tmp_path / "two.pth", run_settings(2), progress=False)
    with pytest.raises(UsageError) as caught:
        train(collection_store, tmp_path / "b.pth", run_settings(1), resume=two.checkpoint)
    assert str(caught.value) == (
        f"steps=1 is below the step of resume={str(two.checkpoint)!r}, 2: there is nothing "
        "to go on with (ask for 2 steps or more)"
    )
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--resume", str(two.checkpoint)]
    out = tmp_path / "c.pth"
    assert main([*argv, "--steps", "1", "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("m3rcr train: error: --steps 1 is below the step of --resume ")
    assert sorted(os.listdir(tmp_path)) == ["two.pth"]
    assert main([*argv, "--steps", "2", "--out", str(out)]) == 0
    assert f"wrote {out} (step 2, " in capsys.readouterr().out
    assert read_training_checkpoint(out)["step"] == 2


def test_a_chmod_of_out_during_the_run_is_no_other_file(collection_store, tmp_path, monkeypatch):
    """The checkpoint made read-only for others while the run trains (its change time
    moves, its data does not) is the run's own: the next checkpoint replaces it."""
    ckpt = tmp_path / "run.pth"
    _after_each_checkpoint(monkeypatch, lambda path, _: path.chmod(0o640))
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--config", "preset=small"]
    argv += ["--steps", "2", "--checkpoint-every", "1", "--crop", str(TILE), "--out", str(ckpt)]
    assert main(argv) == 0


def test_a_users_file_at_out_during_the_run_is_kept(
    collection_store, tmp_path, monkeypatch, capsys
):
    """A file put at --out while the run trained (after its first checkpoint) was
    replaced by the next checkpoint. It is kept now, and the run stops naming --out."""
    ckpt = tmp_path / "run.pth"
    _after_each_checkpoint(monkeypatch, lambda path, _: path.write_bytes(b"MY NOTES\n"))
    argv = ["train", str(collection_store), "--model", "dsen2_cr", "--config", "preset=small"]
    argv += ["--steps", "2", "--checkpoint-every", "1", "--crop", str(TILE), "--out", str(ckpt)]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"m3rcr train: error: --out {ckpt}: another file was put there while this run "
        "trained; it is left as it is, and this run stops: train again with another --out"
    )
    assert ckpt.read_bytes() == b"MY NOTES\n"
    assert sorted(os.listdir(tmp_path)) == ["run.pth"]
