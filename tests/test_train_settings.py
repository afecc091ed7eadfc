"""TrainSettings: checked, and resolved once into ResolvedSettings."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from m3rcr_xr.exceptions import ModelConfigError, UsageError, command_line_names
from m3rcr_xr.train import ResolvedSettings, TrainSettings, train

from .train_runs import run_settings


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps=0: must be an integer >= 1"),
        ({"steps": 2.5}, "steps=2.5: .* not float"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"crop": 0}, "crop=0"),
        ({"crop": True}, "crop=True"),
        ({"lr": 0}, "lr=0: must be a finite number > 0"),
        ({"lr": float("inf")}, "lr=inf"),
        ({"lr_step": 0}, "lr_step=0"),
        ({"lr_decay_start": -1}, "lr_decay_start=-1: must be an integer >= 0"),
        ({"seed": -1}, "seed=-1"),
        ({"checkpoint_every": 0}, "checkpoint_every=0"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"amp": "fp8"}, "amp='fp8': use auto, off, bf16 or fp16"),
    ],
)
def test_settings_out_of_range_are_named(kwargs, match):
    settings = TrainSettings("dsen2_cr", **{"steps": 10, **kwargs})
    with pytest.raises(UsageError, match=match):
        settings.resolved()


def test_bad_model_settings_fail_before_writing(collection_store, tmp_path):
    out = tmp_path / "run.pth"
    with pytest.raises(ModelConfigError, match="n_feats=16.5 must be an integer"):
        train(collection_store, out, run_settings(1, config={"n_feats": 16.5}), progress=False)
    with pytest.raises(UsageError, match="device='cuda:99'"):
        train(collection_store, out, run_settings(1, device="cuda:99"), progress=False)
    assert not out.exists()


def test_published_defaults_resolve_once_into_concrete_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resolved = TrainSettings("Align-CR", 30).resolved()
    assert isinstance(resolved, ResolvedSettings)
    assert (resolved.batch_size, resolved.lr, resolved.seed) == (2, 1e-4, 7)
    assert (resolved.lr_decay_start, resolved.lr_step) == (10, 5)
    assert (resolved.model, resolved.crop, resolved.device) == ("align_cr", 160, "cpu")
    # None by design: a checkpoint at the end only; no land-cover level or class weights
    optional = ("checkpoint_every", "level", "class_weights")
    assert all(v is not None for k, v in vars(resolved).items() if k not in optional)
    assert (resolved.task, resolved.level) == ("cloud_removal", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.lr = 1.0  # type: ignore[misc]


def test_crop_defaults_to_the_tile_size_of_the_configuration():
    assert TrainSettings("glf_cr", 3, config={"preset": "small"}).resolved().crop == 32
    assert TrainSettings("dsen2_cr", 3, crop=64).resolved().crop == 64
    assert TrainSettings("dsen2_cr", 3).resolved().crop == 160  # any size: the published


def test_resolved_run_fields_resume_to_the_same_settings():
    resolved = run_settings(6, lr_step=None, seed=None).resolved()
    again = TrainSettings("dsen2_cr", 6).merged(resolved.run_fields()).resolved()
    assert again == resolved
    fields = resolved.run_fields()
    assert (fields["model"], fields["seed"], fields["lr_step"], fields["crop"]) == (
        "dsen2_cr",
        7,
        1,
        32,
    )


def test_a_configuration_is_refused_before_the_data_even_with_a_crop() -> None:
    settings = TrainSettings("dsen2_cr", steps=1, crop=32, config={"n_resblock": 4})
    with pytest.raises(ModelConfigError, match="unknown configuration key 'n_resblock'"):
        settings.resolved()


def test_a_crop_the_model_cannot_take_is_refused_naming_the_settings_that_would_do() -> None:
    """Before the data: a GLF-CR is built for one tile size, the crop's or its own."""
    settings = TrainSettings("glf_cr", 1, config={"preset": "small"}, crop=48)
    says = "use crop=32 or build it with config={'preset': 'small', 'input_size': 48}"
    with pytest.raises(ModelConfigError, match=f"got 48x48; {re.escape(says)}$"):
        settings.resolved()
    built = dataclasses.replace(settings, config={"preset": "small", "input_size": 48})
    assert built.resolved().crop == 48


def test_a_drop_path_rate_of_one_is_refused_before_the_data() -> None:
    settings = TrainSettings("glf_cr", 1, config={"preset": "small", "drop_path_rate": 1.0})
    with pytest.raises(ModelConfigError, match=r"drop_path_rate=1.0 must be in \[0, 1\)"):
        settings.resolved()


@pytest.mark.parametrize(("crop", "batch_size", "depth"), [(16, 1, 4), (4, 1, 2)])
def test_a_batch_the_unet_pools_to_one_pixel_is_refused(crop, batch_size, depth) -> None:
    """Its batch norm would fail in training (one value per channel at the bottom)."""
    config = {"depth": depth, "features": 2}
    settings = TrainSettings("landcover_unet", 1, config=config, crop=crop, batch_size=batch_size)
    with pytest.raises(
        UsageError,
        match=rf"crop={crop} with batch_size=1: .* use batch_size 2 or more, or crop "
        rf"{2 ** (depth + 1)} or more",
    ):
        settings.resolved()
    bigger = dataclasses.replace(settings, crop=2 ** (depth + 1))
    assert dataclasses.replace(settings, batch_size=2).resolved().batch_size == 2
    assert bigger.resolved().crop == 2 ** (depth + 1)


def test_merged_refuses_a_conflicting_value_named_as_the_caller_wrote_it():
    """ "none" is a value of its own: against a balanced run it conflicts (None keeps the
    checkpoint's); conflicts name the argument as typed, in Python or on the CLI."""
    saved = TrainSettings("landcover_unet", 2, class_weights="balanced").resolved().run_fields()
    plain = TrainSettings("landcover_unet", 2).resolved().run_fields()
    assert plain["class_weights"] is None  # as checkpoints have always recorded it
    with pytest.raises(UsageError, match=r"^class_weights='none' differs .* 'balanced'"):
        TrainSettings("landcover_unet", 3, class_weights="none").merged(saved)
    with command_line_names(), pytest.raises(UsageError, match=r"^--class-weights none differs"):
        TrainSettings("landcover_unet", 3, class_weights="none").merged(saved)
    with command_line_names(), pytest.raises(UsageError, match=r"^--level 2 differs .* 1;"):
        TrainSettings("landcover_unet", 3, level=2).merged(saved)
    with pytest.raises(UsageError, match=r"^model='dsen2_cr' does not match"):
        TrainSettings("dsen2_cr", 3).merged(saved)
    resumed = TrainSettings("landcover_unet", 3, class_weights="none").merged(plain)
    assert resumed.resolved().class_weights is None
    assert TrainSettings("landcover_unet", 3).merged(saved).resolved().class_weights == "balanced"
    assert TrainSettings("dsen2_cr", 3, class_weights="none").resolved().class_weights is None
