"""The three networks: golden parity, state-dict layout, checkpoints, specs, losses."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from benchmarks.reference import fill_reference_parameters_
from m3rcr_xr.exceptions import (
    CheckpointError,
    M3RCRError,
    ModelConfigError,
    SchemaError,
    UnknownModelError,
    UsageError,
)
from m3rcr_xr.models import (
    GLFCR,
    MODELS,
    PRESETS,
    RECORDS,
    AlignCR,
    CARLLoss,
    DSen2CR,
    ECCharbonnierLoss,
    LandCoverUNet,
    available,
    build,
    carl_loss,
    check_tile,
    ec_charbonnier_loss,
    extract_state_dict,
    load,
    model_record,
    model_spec,
    read_checkpoint,
    registry,
    zero_residual_,
)

NAMES = ("dsen2_cr", "glf_cr", "align_cr")
CLASSIFIERS = ("landcover_unet",)
CLASSES = {"dsen2_cr": DSen2CR, "glf_cr": GLFCR, "align_cr": AlignCR}
TOL = 1e-4


@functools.cache
def _filled_default(name: str) -> torch.nn.Module:
    # Built once per session: the default networks are large.
    return fill_reference_parameters_(build(name))


def _reference(shared_dir: Path) -> Path:
    return shared_dir / "reference"


def _load_npy(path: Path) -> torch.Tensor:
    if not path.is_file():
        pytest.fail(f"reference file missing: {path}")
    return torch.from_numpy(np.load(path))


def _inputs(size: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 4, size, size, generator=gen), torch.rand(
        batch, 2, size, size, generator=gen
    )


# --- golden parity ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_default_model_reproduces_golden_output(shared_dir: Path, name: str) -> None:
    golden = _reference(shared_dir) / "golden"
    cloudy = _load_npy(golden / "input_cloudy.npy")
    sar = _load_npy(golden / "input_sar.npy")
    expected = _load_npy(golden / f"output_{name}.npy")
    model = _filled_default(name)
    with torch.inference_mode():
        out = model(cloudy, sar)
    assert out.shape == expected.shape == (1, 4, 160, 160)
    diff = (out - expected).abs().max().item()
    assert diff < TOL, f"{name}: max abs difference {diff:.3g} to the golden output"


@pytest.mark.slow
def test_align_cr_sfalign0_reproduces_reference_case(shared_dir: Path) -> None:
    path = _reference(shared_dir) / "golden" / "align_cr_sfalign0_case.npz"
    if not path.is_file():
        pytest.fail(f"reference file missing: {path}")
    case = np.load(path)
    src, ref, expected = (torch.from_numpy(case[k]) for k in ("src", "ref", "out"))
    block = _filled_default("align_cr").SFAlign[0]
    with torch.inference_mode():
        out = block(src, ref)
    assert (out - expected).abs().max().item() < TOL


# --- state-dict layout --------------------------------------------------------------------


@pytest.fixture
def reference_state_dicts(shared_dir: Path) -> dict:
    path = _reference(shared_dir) / "state_dicts.json"
    if not path.is_file():
        pytest.fail(f"reference file missing: {path}")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", NAMES)
def test_default_state_dict_keys_and_shapes_are_published(
    reference_state_dicts: dict, name: str
) -> None:
    ref = reference_state_dicts[name]
    model = build(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["state_dict"]
    assert list(ours) == list(ref["state_dict"])  # same order too
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]


@pytest.mark.parametrize("name", NAMES)
def test_published_layout_of_default_loads(reference_state_dicts: dict, name: str) -> None:
    # A checkpoint exactly as published: {'network': DataParallel state dict, ...}.
    shapes = reference_state_dicts[name]["state_dict"]
    checkpoint = {
        "network": {f"module.{k}": torch.full(s, 0.5) for k, s in shapes.items()},
        "epoch": 10,
    }
    model = load(name, checkpoint)
    assert not model.training
    assert all(torch.all(p == 0.5) for p in model.parameters())


def test_align_cr_legacy_weight_norm_and_buffers() -> None:
    keys = build("align_cr").state_dict().keys()
    assert "SFE_module.0.body.0.weight_g" in keys and "SFE_module.0.body.0.weight_v" in keys
    assert not any(k.endswith("body.0.weight") for k in keys if k.startswith("SFE_module"))
    # Shifted blocks (odd stages) carry the attention mask; all carry the position index.
    assert "RDBs.1.SwinTransformerBlock.attn_mask" in keys
    assert "RDBs.0.SwinTransformerBlock.attn_mask" not in keys
    assert "RDBs.0.SwinTransformerBlock.attn.relative_position_index" in keys


# --- checkpoints --------------------------------------------------------------------------


def _small_trained(name: str) -> torch.nn.Module:
    model = build(name, preset="small")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model


def _assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    cloudy, sar = _inputs(32)
    with torch.inference_mode():
        torch.testing.assert_close(a(cloudy, sar), b(cloudy, sar), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["published", "bare", "bare_prefixed", "safetensors", "mapping"])
def test_load_checkpoint_formats(tmp_path: Path, name: str, layout: str) -> None:
    source = _small_trained(name)
    state = source.state_dict()
    if layout == "published":
        path = tmp_path / "10_net_CR.pth"
        torch.save(
            {
                "network": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "epoch": 10,
            },
            path,
        )
        checkpoint: object = path
    elif layout == "bare":
        checkpoint = tmp_path / "bare.pt"
        torch.save(state, checkpoint)
    elif layout == "bare_prefixed":
        checkpoint = str(tmp_path / "bare_prefixed.pth")
        torch.save({f"module.{k}": v for k, v in state.items()}, checkpoint)
    elif layout == "safetensors":
        checkpoint = tmp_path / "weights.bin"  # sniffed by content, not by suffix
        save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    else:
        checkpoint = {"network": {f"module.{k}": v.clone() for k, v in state.items()}}
    loaded = load(name, checkpoint, preset="small", device="cpu")
    assert not loaded.training
    _assert_same_outputs(source.eval(), loaded)


def test_load_strict_mismatch_lists_missing_and_unexpected(tmp_path: Path) -> None:
    state = build("glf_cr", preset="small").state_dict()
    state.pop("GFF.0.weight")
    state.pop("UPNet.2.bias")
    state["extra.weight"] = torch.zeros(1)
    state["SFENet2.bias"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save({"network": state}, path)
    with pytest.raises(CheckpointError) as info:
        load("glf_cr", path, preset="small")
    message = str(info.value)
    assert "missing keys (2): GFF.0.weight, UPNet.2.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "SFENet2.bias (checkpoint (3,), model (16,))" in message


def test_load_with_wrong_architecture_fails_clearly() -> None:
    state = build("dsen2_cr", preset="small").state_dict()
    with pytest.raises(CheckpointError, match="missing keys"):
        load("dsen2_cr", state)  # default has 16 blocks, the small one 2


class _Exploit:
    """Unpickling this would write a marker file: the code must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        code = f"open({str(self.marker)!r}, 'w').write('pwned')"
        return (exec, (code,))


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain_pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pth"
    payload = {"network": {"head.0.weight": torch.zeros(1)}, "hook": _Exploit(marker)}
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        # No tensor here: a plainly pickled tensor would be refused before the exploit.
        path.write_bytes(pickle.dumps({"network": {}, "hook": _Exploit(marker)}, protocol=2))
    # The file really is dangerous: unrestricted unpickling runs the code.
    if kind == "plain_pickle":
        pickle.loads(path.read_bytes())
        assert marker.read_text() == "pwned"
        marker.unlink()
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load("dsen2_cr", path, preset="small")
    assert not marker.exists(), "checkpoint loading executed code from the pickle"
    assert "weights_only=True" in str(info.value) and "exec" in str(info.value)


class _SystemCall:
    """Unpickling this would run a shell command (``os.system``, module ``posix``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_blocked_module_is_refused_without_torchs_advice(tmp_path: Path) -> None:
    """torch words a blocked module "unsupported GLOBAL ... is blocked", after its advice
    to rerun with weights_only=False, which is never passed on."""
    marker = tmp_path / "executed.txt"
    path = tmp_path / "evil.pth"
    torch.save({"network": {"head.0.weight": torch.zeros(1)}, "hook": _SystemCall(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load("dsen2_cr", path, preset="small")
    message = str(info.value)
    assert "system" in message and "re-save trusted ones as a bare state dict" in message
    assert "False" not in message and not marker.exists()


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint file does not exist"):
        load("dsen2_cr", tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load("dsen2_cr", garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load("dsen2_cr", listed)
    with pytest.raises(CheckpointError, match="not tensors"):
        load("dsen2_cr", {"network": {"head.0.weight": 1.0}}, preset="small")
    with pytest.raises(CheckpointError, match="no state dict"):
        load("dsen2_cr", {}, preset="small")
    assert issubclass(CheckpointError, M3RCRError) and issubclass(CheckpointError, ValueError)


def test_extract_state_dict_renames_new_weight_norm() -> None:
    state = extract_state_dict(
        {
            "module.a.parametrizations.weight.original0": torch.zeros(1),
            "module.a.parametrizations.weight.original1": torch.zeros(1),
            "module.a.bias": torch.zeros(1),
        }
    )
    assert sorted(state) == ["a.bias", "a.weight_g", "a.weight_v"]


# --- build, spec and tiles ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_spec_of_defaults(name: str) -> None:
    model = build(name)
    assert isinstance(model, CLASSES[name])
    assert model.name == model.spec.name == name
    assert model.optical_bands == model.spec.optical_bands == ("blue", "green", "red", "nir")
    assert model.sar_polarizations == model.spec.sar_polarizations == ("VV", "VH")
    assert model.normalization == model.spec.normalization == "m3rcr"
    with pytest.warns(DeprecationWarning, match="use normalization"):
        assert model.normalisation == model.spec.normalisation == "m3rcr"
    assert model.spec.residual
    if name == "dsen2_cr":
        assert model.tile_size is None and model.tile_multiple == 1
        assert model.config == {
            "n_resblocks": 16,
            "n_feats": 256,
            "res_scale": 0.1,
            "kernel_size": 3,
        }
    else:
        assert model.tile_size == 160 and 160 % model.tile_multiple == 0
        assert model.config["input_size"] == 160


@pytest.mark.parametrize("name", NAMES)
def test_small_presets_run_and_keep_shape(name: str) -> None:
    model = build(name, preset="small")
    size = model.tile_size or 24
    cloudy, sar = _inputs(size, batch=2)
    with torch.inference_mode():
        out = model(cloudy, sar)
    assert out.shape == cloudy.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.equal(out, cloudy)


@pytest.mark.parametrize(
    ("name", "config", "size"),
    [
        ("glf_cr", {"input_size": 64}, 64),
        ("glf_cr", {"input_size": 16, "window_size": 8}, 16),  # window covers the map
        ("glf_cr", {"input_size": 48, "window_size": 8}, 48),
        ("align_cr", {"input_size": 64}, 64),
        ("align_cr", {"input_size": 16, "window_size": 8}, 16),
        ("align_cr", {"input_size": 48, "window_size": 4}, 48),
        ("dsen2_cr", {}, 37),
    ],
)
def test_valid_size_combinations(name: str, config: dict, size: int) -> None:
    model = build(name, preset="small", **config)
    check_tile(model, size)
    cloudy, sar = _inputs(size)
    with torch.inference_mode():
        assert model(cloudy, sar).shape == cloudy.shape


@pytest.mark.parametrize("name", ["glf_cr", "align_cr"])
def test_windowed_models_reject_other_tile_sizes(name: str) -> None:
    model = build(name, preset="small")
    for size in (16, 48, 33):
        with pytest.raises(ModelConfigError, match="32x32 tiles only"):
            check_tile(model, size)
        cloudy, sar = _inputs(size)
        with pytest.raises(ModelConfigError, match="tiles only"):
            model(cloudy, sar)
    with pytest.raises(ModelConfigError):
        check_tile(model, (32, 16))
    check_tile(model, (32, 32))


def test_dsen2cr_takes_any_size_and_checks_inputs() -> None:
    model = build("dsen2_cr", preset="small")
    for size in (1, 7, 30):
        check_tile(model, size)
    check_tile(model, (5, 9))
    with pytest.raises(ModelConfigError, match="positive"):
        check_tile(model, 0)
    cloudy, sar = _inputs(8)
    with pytest.raises(ModelConfigError, match=r"cloudy must be \(B, 4, H, W\)"):
        model(cloudy[:, :3], sar)
    with pytest.raises(ModelConfigError, match=r"sar must be \(B, 2, H, W\)"):
        model(cloudy, sar[:, :1])
    with pytest.raises(ModelConfigError, match="optical grid"):
        model(cloudy, sar[..., :4, :4])


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("glf_cr", {"input_size": 33}, "even"),
        ("glf_cr", {"input_size": 36, "window_size": 4}, "multiple of window_size"),
        ("glf_cr", {"growth_rate": 6, "num_heads": 4}, "multiple of num_heads"),
        ("glf_cr", {"dynamic_kernel_size": 4}, "odd"),
        ("align_cr", {"input_size": 36, "window_size": 2}, "multiple of 8"),
        ("align_cr", {"deformable_groups": 3}, "deformable_groups"),
        ("align_cr", {"up_feats": 10}, "multiple of 4"),
        ("dsen2_cr", {"kernel_size": 2}, "odd"),
        ("dsen2_cr", {"n_blocks": 3}, "unknown configuration key 'n_blocks'; known: n_resblocks"),
        ("dsen2_cr", {"n_feats": 16.5}, "n_feats=16.5 must be an integer"),
        ("dsen2_cr", {"n_feats": True}, "n_feats=True must be an integer"),
        ("dsen2_cr", {"res_scale": "0.1"}, "res_scale='0.1' must be a number"),
        ("glf_cr", {"mlp_ratio": None}, "mlp_ratio=None must be a number"),
        ("dsen2_cr", {"res_scale": float("inf")}, "res_scale=inf must be a finite number"),
        ("dsen2_cr", {"res_scale": 1e999}, "res_scale=inf must be a finite number"),
        ("glf_cr", {"drop_path_rate": np.float64("nan")}, "drop_path_rate=.*nan.* finite"),
        ("glf_cr", {"drop_path_rate": 1.0}, r"drop_path_rate=1.0 must be in \[0, 1\)"),
        ("glf_cr", {"drop_path_rate": 1.5}, r"drop_path_rate=1.5 must be in \[0, 1\)"),
        ("glf_cr", {"drop_path_rate": -0.5}, r"drop_path_rate=-0.5 must be in \[0, 1\)"),
        ("align_cr", {"mlp_ratio": -np.inf}, "mlp_ratio=-inf must be a finite number"),
        ("align_cr", {"deform_backend": "cuda"}, "deform_backend='cuda' must be one of 'auto'"),
    ],
)
def test_invalid_configs_raise(name: str, config: dict, match: str) -> None:
    with pytest.raises(ModelConfigError, match=match):
        build(name, preset="small", **config)


def test_numbers_of_any_integer_type_build() -> None:
    model = build("dsen2_cr", n_resblocks=np.int64(1), n_feats=np.int32(8), res_scale=1)
    assert model.head[0].out_channels == 8


def test_errors_of_the_constructor_become_config_errors(monkeypatch) -> None:
    class Broken(DSen2CR):
        def __init__(self, n_feats: int = 8) -> None:
            raise ValueError("out_channels must be divisible by groups")  # as torch's

    record = dataclasses.replace(RECORDS["dsen2_cr"], cls=Broken)
    monkeypatch.setattr(registry, "model_record", lambda name: record)
    with pytest.raises(ModelConfigError, match="dsen2_cr: cannot be built with .*n_feats.*groups"):
        build("dsen2_cr", n_feats=7)


def test_registry_names_and_errors() -> None:
    assert available() == NAMES + CLASSIFIERS
    assert available("cloud_removal") == NAMES
    assert available("landcover") == CLASSIFIERS
    assert set(PRESETS) == set(NAMES + CLASSIFIERS)
    assert isinstance(build("Align-CR", preset="small"), AlignCR)
    with pytest.raises(
        UnknownModelError, match="unknown model 'unet'; available: dsen2_cr, glf_cr"
    ):
        build("unet")
    with pytest.raises(ModelConfigError, match="unknown preset"):
        build("glf_cr", preset="huge")
    with pytest.raises(ModelConfigError, match="no model spec"):
        check_tile(torch.nn.Conv2d(1, 1, 1), 32)
    assert issubclass(ModelConfigError, ValueError)


def test_dsen2cr_keeps_published_argument_names() -> None:
    model = DSen2CR(n_resblocks=3, n_feats=8, res_scale=0.5)
    assert len(model.body) == 4 and model.body[0].res_scale == 0.5
    assert model.head[0].out_channels == 8


@pytest.mark.parametrize("name", NAMES)
def test_zero_residual_gives_identity(name: str) -> None:
    model = zero_residual_(build(name, preset="small"))
    cloudy, sar = _inputs(model.tile_size or 20, batch=2, seed=3)
    with torch.inference_mode():
        assert torch.equal(model(cloudy, sar), cloudy)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_autocast(name: str) -> None:
    model = build(name, preset="small")
    cloudy, sar = _inputs(model.tile_size or 24, batch=2)
    with torch.inference_mode():
        reference = model(cloudy, sar)
    model_cl = build(name, preset="small").to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    cl = torch.channels_last
    with torch.inference_mode():
        out = model_cl(cloudy.contiguous(memory_format=cl), sar.contiguous(memory_format=cl))
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(cloudy, sar)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max().item() < 0.05


@pytest.mark.parametrize("name", NAMES)
def test_small_models_train(name: str) -> None:
    model = build(name, preset="small").train()
    cloudy, sar = _inputs(model.tile_size or 16, batch=2)
    target = torch.rand_like(cloudy)
    mask = (torch.rand(2, *cloudy.shape[-2:]) > 0.5).float()
    pred = model(cloudy, sar)
    loss = ec_charbonnier_loss(pred, target, mask) + carl_loss(pred, target, cloudy, mask)
    loss.backward()
    # The SAR update after the last stage feeds nothing (as published): no gradient there.
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    if name == "dsen2_cr":
        assert not no_grad
    else:
        assert no_grad == {"opt_distribute_1x1conv.1.weight", "opt_distribute_1x1conv.1.bias"}


# --- losses -------------------------------------------------------------------------------


def test_ec_charbonnier_hand_computed() -> None:
    pred = torch.tensor([[[[0.0, 0.0]]]])
    target = torch.tensor([[[[0.0, 1.0]]]])
    mask = torch.tensor([[[0.0, 1.0]]])  # (B, H, W), as the published loader gives it
    expected = (1.0 * (1e-6) ** 0.45 + 6.0 * (1.0 + 1e-6) ** 0.45) / 2
    assert ec_charbonnier_loss(pred, target, mask).item() == pytest.approx(expected, rel=1e-6)
    assert ECCharbonnierLoss()(pred, target, mask.unsqueeze(1)).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_carl_hand_computed() -> None:
    pred = torch.tensor([[[[0.5, 0.5]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    cloudy = torch.tensor([[[[0.0, 0.5]]]])
    mask = torch.tensor([[[1.0, 0.0]]])
    # cloudy pixel vs target: 0.5; clear pixel vs cloudy input: 0; L1 to target: 0.5.
    assert carl_loss(pred, target, cloudy, mask).item() == pytest.approx(0.25 + 0.5)
    assert CARLLoss(weight=0.0)(pred, target, cloudy, mask).item() == pytest.approx(0.25)


def _published_ec(pred, target, mask):  # transcription of Align-CR/losses.py
    loss = 0.0
    for i in range(pred.shape[0]):
        weight = torch.ones_like(mask[i]) + 5.0 * mask[i]
        loss += torch.mean(weight * torch.pow((pred[i] - target[i]) ** 2 + 1e-3**2, 0.45))
    return loss / pred.shape[0]


def _published_carl(pred, target, cloudy, mask):  # transcription of DSen2-CR/losses.py
    loss = 0.0
    for i in range(pred.shape[0]):
        clear = torch.ones_like(mask[i]) - mask[i]
        loss += torch.mean(
            clear * torch.abs(pred[i] - cloudy[i]) + mask[i] * torch.abs(pred[i] - target[i])
        ) + torch.mean(torch.abs(pred[i] - target[i]))
    return loss / pred.shape[0]


def test_losses_match_published_loops_on_batches() -> None:
    gen = torch.Generator().manual_seed(5)
    pred, target, cloudy = (
        torch.rand(3, 4, 6, 5, generator=gen, dtype=torch.float64) for _ in range(3)
    )
    mask = (torch.rand(3, 6, 5, generator=gen) > 0.4).double()
    torch.testing.assert_close(
        ec_charbonnier_loss(pred, target, mask), _published_ec(pred, target, mask)
    )
    torch.testing.assert_close(
        carl_loss(pred, target, cloudy, mask), _published_carl(pred, target, cloudy, mask)
    )
    with pytest.raises(SchemaError, match=r"cloudmask \(2, 1, 6, 5\) does not fit pred \(3, 4"):
        ec_charbonnier_loss(pred, target, mask[:2])
    with pytest.raises(SchemaError, match=r"valid \(2, 1, 6, 5\) does not fit pred"):
        carl_loss(pred, target, cloudy, mask, valid=mask[:2])


@pytest.mark.parametrize("name", NAMES)
def test_losses_leave_nodata_out(name: str) -> None:
    """With ``valid``, a loss is the loss of the valid pixels alone; a sample without
    one contributes nothing; every pixel valid: the published loss, bit for bit."""
    loss = RECORDS[name].loss.function
    gen = torch.Generator().manual_seed(6)
    pred, target, cloudy = (
        torch.rand(2, 4, 6, 6, generator=gen, dtype=torch.float64) for _ in range(3)
    )
    mask = (torch.rand(2, 6, 6, generator=gen) > 0.4).double()
    published = loss(pred, target, cloudy, mask)
    assert torch.equal(loss(pred, target, cloudy, mask, valid=torch.ones(2, 6, 6)), published)
    valid = torch.ones(2, 6, 6)
    valid[..., :2] = 0  # the first two columns: no data

    def part(x: torch.Tensor, samples: slice = slice(None)) -> torch.Tensor:
        return x[samples, ..., 2:]

    masked = loss(pred, target, cloudy, mask, valid=valid)
    torch.testing.assert_close(masked, loss(part(pred), part(target), part(cloudy), part(mask)))
    changed = pred.clone()
    changed[..., :2] = 100.0
    assert torch.equal(loss(changed, target, cloudy, mask, valid=valid), masked)
    valid[1] = 0  # the second sample: no data at all
    first = slice(0, 1)
    torch.testing.assert_close(
        loss(pred, target, cloudy, mask, valid=valid),
        loss(*(part(x, first) for x in (pred, target, cloudy, mask))),
    )
    pred.requires_grad_(True)
    nothing = loss(pred, target, cloudy, mask, valid=torch.zeros(2, 6, 6))
    nothing.backward()
    assert float(nothing.detach()) == 0.0 and pred.grad is not None and not pred.grad.any()


def test_one_record_per_model() -> None:
    assert tuple(RECORDS) == NAMES + CLASSIFIERS
    for name, record in RECORDS.items():
        assert record.name == name == record.cls.name
        assert MODELS[name] is record.cls
        assert PRESETS[name] == {k: dict(v) for k, v in record.presets.items()}
        assert model_record(name.upper().replace("_", "-")) is record
        assert model_record(record.cls.__name__.lower()) is record  # dsen2cr, glfcr, aligncr
    assert [model_spec(n).tile_size for n in NAMES] == [None, 160, 160]  # published
    assert [RECORDS[n].published_batch_size for n in NAMES] == [1, 1, 2]
    assert [RECORDS[n].loss.name for n in NAMES] == ["carl", "l1", "ec_charbonnier"]
    assert not RECORDS["glf_cr"].loss.needs_cloudmask


def test_unknown_model_is_one_error_for_every_caller() -> None:
    assert issubclass(UnknownModelError, ModelConfigError)
    assert issubclass(UnknownModelError, UsageError)
    with pytest.raises(UnknownModelError, match="available: dsen2_cr, glf_cr, align_cr"):
        model_record("unet")


def test_param_groups_follow_the_record() -> None:
    net = build("align_cr", preset="small")
    base, align = RECORDS["align_cr"].param_groups(net, 1.0)
    assert align["lr"] == pytest.approx(0.1) and base["lr"] == 1.0
    assert len(base["params"]) + len(align["params"]) == len(list(net.parameters()))
    assert {id(p) for p in align["params"]} == {id(p) for p in net.SFAlign.parameters()}
    (only,) = RECORDS["dsen2_cr"].param_groups(build("dsen2_cr", preset="small"), 1.0)
    assert only["lr"] == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_model_spec_builds_nothing_and_checks_like_load(name, tmp_path) -> None:
    spec = model_spec(name, preset="small")
    assert spec == build(name, preset="small").spec
    assert spec.config == build(name, preset="small").config
    path = tmp_path / "w.pt"
    torch.save(build(name, preset="small").state_dict(), path)
    assert model_spec(name, path, preset="small") == spec
    with pytest.raises(CheckpointError, match="does not match"):
        model_spec(name, path)  # the default architecture: other shapes
    with pytest.raises(ModelConfigError, match="unknown configuration key"):
        model_spec(name, preset="small", n_feets=3)


def test_model_spec_allocates_no_parameters(monkeypatch) -> None:
    built = []
    real = registry._construct
    monkeypatch.setattr(registry, "_construct", lambda *a: built.append(real(*a)) or built[-1])
    registry._cached_meta.cache_clear()
    model_spec("dsen2_cr")
    assert built and all(p.is_meta for model in built for p in model.parameters())


def test_fusion_networks_share_their_config_and_keep_their_signatures():
    """GLF-CR and Align-CR take a config dataclass's fields, keyword or positional in
    the published order, and show them as their signature."""
    from m3rcr_xr.models.aligncr import AlignCRConfig
    from m3rcr_xr.models.fusion_rdn import FusionConfig
    from m3rcr_xr.models.glfcr import GLFCRConfig

    shared = [f.name for f in dataclasses.fields(FusionConfig)]
    for cls, config in ((GLFCR, GLFCRConfig), (AlignCR, AlignCRConfig)):
        names = list(inspect.signature(cls).parameters)
        assert names[: len(shared)] == shared and issubclass(config, FusionConfig)
        assert names == [f.name for f in dataclasses.fields(config)]
    assert list(inspect.signature(AlignCR).parameters)[-4:] == [
        "n_sfe_blocks",
        "deformable_groups",
        "up_feats",
        "deform_backend",
    ]
    with torch.device("meta"):  # shapes only
        positional = GLFCR(32, 16, 2, 2, 8, 2, 4, 2.0, 5, 16, 0.1)
    values = (32, 16, 2, 2, 8, 2, 4, 2.0, 5, 16, 0.1)
    names = [*shared, "up_feats", "drop_path_rate"]
    assert positional.config == dict(zip(names, values, strict=True))
    assert AlignCRConfig().mlp_ratio == 4.0 and GLFCRConfig().mlp_ratio == 2.0


# ------------------------------------------------------------------ land-cover U-Net
@pytest.mark.parametrize(("level", "classes"), [(1, 7), (2, 11)])
def test_landcover_unet_outputs_one_logit_per_class(level, classes) -> None:
    net = build("landcover_unet", preset="small", level=level)
    assert isinstance(net, LandCoverUNet) and not net.training
    with torch.inference_mode():
        for size in ((32, 32), (20, 44)):  # any multiple of 2 ** depth
            assert net(torch.rand(2, 4, *size)).shape == (2, classes, *size)
    spec = net.spec
    assert spec.task == "landcover" and spec.output_channels == classes
    assert spec.tile_size is None and spec.tile_multiple == 4 and spec.sar_channels == 0
    assert net.config == {"level": level, "n_classes": classes, "depth": 2, "features": 8}
    assert RECORDS["landcover_unet"].task == "landcover"
    assert RECORDS["landcover_unet"].loss.name == "cross_entropy"
    assert all(RECORDS[n].task == "cloud_removal" for n in NAMES)


def test_landcover_unet_checks_its_configuration_and_input() -> None:
    with pytest.raises(ModelConfigError, match="n_classes=11 does not fit level=1, which has 7"):
        build("landcover_unet", n_classes=11)
    with pytest.raises(ModelConfigError, match="level=3 must be 1 or 2"):
        build("landcover_unet", level=3)
    with pytest.raises(ModelConfigError, match="level=1.5 must be an integer"):
        build("landcover_unet", level=1.5)
    net = build("landcover_unet", preset="small")
    with pytest.raises(ModelConfigError, match="multiples of 4, got 30x32"):
        net(torch.rand(1, 4, 30, 32))
    with pytest.raises(ModelConfigError, match=r"optical must be \(B, 4, H, W\)"):
        net(torch.rand(1, 6, 32, 32))
    with pytest.raises(ModelConfigError, match="takes no SAR"):
        net(torch.rand(1, 4, 32, 32), torch.rand(1, 2, 32, 32))


def test_landcover_unet_checkpoints_record_the_classes(tmp_path) -> None:
    torch.manual_seed(0)
    net = build("landcover_unet", preset="small", level=2)
    path = tmp_path / "unet.pt"
    torch.save(net.state_dict(), path)
    loaded = load("landcover_unet", path, preset="small", level=2)
    x = torch.rand(1, 4, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net(x))
    assert model_spec("landcover_unet", path, preset="small", level=2).classes[-1] == (
        "moss and lichen"
    )
    with pytest.raises(CheckpointError, match="n_classes"):
        model_spec("landcover_unet", path, preset="small")  # level 1: 7 classes


def test_the_cross_entropy_loss_ignores_unlabelled_pixels() -> None:
    loss = RECORDS["landcover_unet"].loss.function
    logits = torch.zeros(1, 7, 2, 2)
    logits[0, 3] = 5.0  # every pixel says class 3
    labels = torch.tensor([[[3, 255], [255, 255]]], dtype=torch.uint8)
    none = torch.zeros(1, 2, 2)
    expected = torch.nn.functional.cross_entropy(logits[..., :1, :1], labels[..., :1, :1].long())
    torch.testing.assert_close(loss(logits, labels, none, none), expected)


def test_the_cross_entropy_loss_of_no_labelled_pixel_is_zero() -> None:
    """Not torch's NaN (a mean over no pixel), which would ruin the weights."""
    loss = RECORDS["landcover_unet"].loss.function
    logits = torch.randn(2, 7, 2, 2, requires_grad=True)
    labels = torch.full((2, 2, 2), 255, dtype=torch.uint8)
    none = torch.zeros(2, 2, 2)
    value = loss(logits, labels, none, none)
    assert float(value.detach()) == 0.0
    value.backward()  # still part of the graph
    assert logits.grad is not None and not logits.grad.any()


# ------------------------------------------------- configurations checked before building
@pytest.mark.parametrize("name", NAMES)
def test_check_config_counts_the_parameters_of_the_network(name) -> None:
    count = registry.check_config(name, {"preset": "small"})
    assert count == sum(p.numel() for p in build(name, preset="small").parameters())


@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("dsen2_cr", {"n_resblocks": 5}),
        ("glf_cr", {"n_blocks": 4, "n_layers": 4}),
        ("align_cr", {"n_blocks": 4, "n_layers": 3, "n_sfe_blocks": 4}),
    ],
)
def test_large_layer_counts_are_extrapolated_exactly(monkeypatch, name, counts) -> None:
    """The count interpolated from networks of 1, 2 and 3 layers is the count itself."""
    real = sum(p.numel() for p in build(name, preset="small", **counts).parameters())
    monkeypatch.setattr(registry, "_COUNTED_LAYERS", 3)
    assert registry.parameter_count(name, preset="small", **counts) == real


def test_a_network_too_large_is_refused_without_building_it(monkeypatch) -> None:
    built = []
    real = registry._construct
    monkeypatch.setattr(registry, "_construct", lambda *a: built.append(real(*a)) or built[-1])
    says = r"dsen2_cr: \{'n_resblocks': 100000000\} makes a network of 118,016,000,023,300"
    with pytest.raises(ModelConfigError, match=says):
        build("dsen2_cr", n_resblocks=100_000_000)
    assert len(built) <= 3  # networks of 1, 2 and 3 blocks, on the meta device
    assert all(p.is_meta for model in built for p in model.parameters())
    with pytest.raises(ModelConfigError, match="more than the 2,147,483,648"):
        registry.check_config("dsen2_cr", {"n_feats": 100_000})  # wide, not deep
    with pytest.raises(ModelConfigError, match="need 1 <= depth <= 16"):
        registry.check_config("landcover_unet", {"depth": 10**6})


def test_drop_path_rate_is_checked_before_a_build() -> None:
    """1 would drop every path (0/0: NaN in training); the published 0.2 and rates
    just below 1 train to finite outputs."""
    with pytest.raises(ModelConfigError, match="drop_path_rate=1"):
        registry.check_config("glf_cr", {"preset": "small", "drop_path_rate": 1})
    torch.manual_seed(0)
    net = build("glf_cr", preset="small", drop_path_rate=0.99).train()
    assert bool(net(*_inputs(32)).isfinite().all())


def test_check_config_names_what_is_wrong() -> None:
    with pytest.raises(ModelConfigError, match="unknown configuration key 'n_resblock'; known"):
        registry.check_config("dsen2_cr", {"n_resblock": 4})
    with pytest.raises(ModelConfigError, match="n_feats='8' must be an integer"):
        registry.check_config("dsen2_cr", {"n_feats": "8"})
    with pytest.raises(ModelConfigError, match="n_feats >= 1"):
        registry.check_config("dsen2_cr", {"n_feats": 0})
    with pytest.raises(ModelConfigError, match="unknown preset 'tiny'"):
        registry.check_config("glf_cr", {"preset": "tiny"})


def test_read_checkpoint_checks_the_bytes_it_loads(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(build("dsen2_cr", preset="small").state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(read_checkpoint(path, sha256=digest)) == set(
        build("dsen2_cr", preset="small").state_dict()
    )
    with pytest.raises(CheckpointError, match=f"w.pt: SHA-256 mismatch: expected {'0' * 64}"):
        load("dsen2_cr", path, preset="small", sha256="0" * 64)


def _small_state() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in build("dsen2_cr", preset="small").state_dict().items()}


def _saved(path: Path, state: dict[str, torch.Tensor], **save: object) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path, **save)
    return path


def _replaced_once_hashed(monkeypatch, path: Path, other: Path, *, rename: bool) -> None:
    """Another process replaces ``path`` by ``other`` just after it was opened and hashed:
    by a rename (pooch, this library's writers), or rewriting it in place."""
    from m3rcr_xr.models import checkpoint

    class Replaced(checkpoint.VerifiedFile):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            if rename:
                os.replace(other, path)
            else:
                path.write_bytes(other.read_bytes())
                stat = path.stat()  # a clock too coarse to tell the writes apart is no excuse
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    monkeypatch.setattr(checkpoint, "VerifiedFile", Replaced)


@pytest.mark.parametrize(
    ("name", "mmap", "rename"),
    [
        ("w.safetensors", False, True),  # mapped through the path
        ("w.pt", True, True),  # the settings of a training checkpoint, mapped
        ("w.pt", False, False),  # read from the descriptor hashed, rewritten in place
    ],
)
def test_a_checkpoint_changed_once_hashed_is_never_used(tmp_path, monkeypatch, name, mmap, rename):
    state = _small_state()
    path = _saved(tmp_path / name, state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    forged = _saved(tmp_path / f"forged{path.suffix}", {k: v + 1 for k, v in state.items()})
    _replaced_once_hashed(monkeypatch, path, forged, rename=rename)
    with pytest.raises(CheckpointError, match=f"{name}: the file changed since it was checked"):
        read_checkpoint(path, sha256=digest, mmap=mmap)


def test_a_checkpoint_renamed_over_once_hashed_loads_what_was_hashed(tmp_path, monkeypatch):
    """Read from the descriptor hashed: a file renamed over the path is not what is read."""
    state = _small_state()
    path = _saved(tmp_path / "w.pt", state)
    forged = _saved(tmp_path / "forged.pt", {k: v + 1 for k, v in state.items()})
    _replaced_once_hashed(monkeypatch, path, forged, rename=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = read_checkpoint(path, sha256=digest)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def _counted_hashes(monkeypatch) -> list[str]:
    """The files that :mod:`m3rcr_xr.models.checkpoint` hashes from now on, one entry a
    SHA-256 computed."""
    from types import SimpleNamespace

    from m3rcr_xr.models import checkpoint

    hashed: list[str] = []

    def sha256(*args: bytes) -> object:
        hashed.append("sha256")
        return hashlib.sha256(*args)

    monkeypatch.setattr(checkpoint, "hashlib", SimpleNamespace(sha256=sha256))
    return hashed


def test_decloud_hashes_a_checkpoint_given_by_path_once(tmp_path, monkeypatch):
    """Resolved (its hash, then its training settings read from the bytes hashed), checked
    on the meta device and loaded by a task in this process: it was hashed at each step,
    three times before the first task ran."""
    import m3rcr_xr
    from m3rcr_xr import runner
    from m3rcr_xr.testing import TINY, seeded_checkpoint

    path = seeded_checkpoint(tmp_path / "w.pth", **TINY)
    runner.clear_model_cache()
    hashed = _counted_hashes(monkeypatch)
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=1)
    out = m3rcr_xr.decloud(scene, "dsen2_cr", str(path), config=TINY, tile=32)
    assert len(hashed) == 1
    out.compute(scheduler="synchronous")
    assert len(hashed) == 1
    runner.clear_model_cache()


def test_a_checkpoint_rewritten_in_place_is_hashed_again(tmp_path, monkeypatch):
    """Even with its size and modification time set back: its change time moved."""
    import time

    state = _small_state()
    path = _saved(tmp_path / "w.pt", state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    hashed = _counted_hashes(monkeypatch)
    read_checkpoint(path, sha256=digest)
    read_checkpoint(path, sha256=digest)  # unchanged: not hashed again
    assert len(hashed) == 1
    stat = path.stat()
    time.sleep(0.05)  # past a coarse clock's tick
    (tmp_path / "forged").mkdir()  # w.pt too: torch.save names its archive after the file
    forged = _saved(tmp_path / "forged" / "w.pt", {k: v + 1 for k, v in state.items()})
    path.write_bytes(forged.read_bytes())  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    with pytest.raises(CheckpointError, match=f"expected {digest}"):
        read_checkpoint(path, sha256=digest)
    assert len(hashed) == 2


@pytest.mark.parametrize("zipped", [True, False])
def test_read_checkpoint_maps_tensors_where_asked(tmp_path, zipped):
    state = _small_state()
    path = _saved(tmp_path / "w.pt", state, _use_new_zipfile_serialization=zipped)
    loaded = read_checkpoint(path, mmap=True)  # the legacy format is read whole
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
