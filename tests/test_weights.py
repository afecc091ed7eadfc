import pytest

from m3rcr_xr.weights import default_checkpoint


def test_the_shipped_checkpoint_names_its_model_file_and_config():
    ckpt = default_checkpoint()
    assert ckpt.model == "dsen2_cr"
    assert ckpt.path.name == "dsen2_cr_demo.safetensors" and ckpt.path.is_file()
    assert ckpt.config and ckpt.metadata["model"] == ckpt.model


def test_unpacking_drops_the_model_and_is_deprecated():
    ckpt = default_checkpoint()
    with pytest.warns(FutureWarning, match=r"drops its model .* read \.model, \.path"):
        path, config = ckpt
    assert (path, config) == (ckpt.path, ckpt.config)
