"""Land-cover classification on the tiling engine (m3rcr_xr/classify.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import m3rcr_xr
from m3rcr_xr import CheckpointError, ModelConfigError, SchemaError, UsageError, models
from m3rcr_xr.classify import classify
from m3rcr_xr.landcover import IGNORE_INDEX, class_names
from m3rcr_xr.normalize import normalize_optical
from m3rcr_xr.runner import clear_model_cache
from m3rcr_xr.testing import classifier_checkpoint, raise_if_dask_computes
from m3rcr_xr.tiling import mirror_index, window

SMALL = {"preset": "small"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(classifier_checkpoint(tmp_path_factory.mktemp("unet") / "unet.pt", **SMALL))


def test_building_the_graph_computes_nothing(checkpoint):
    scene = m3rcr_xr.synthetic_scene((70, 50), chunks=32)
    with raise_if_dask_computes():
        labels = scene.cloudfree.m3rcr.classify(checkpoint=checkpoint, config=SMALL, tile=32)
    assert labels.dims == ("y", "x") and labels.dtype == np.uint8 and labels.chunks
    assert labels.rio.crs == scene.rio.crs
    np.testing.assert_array_equal(labels.x, scene.x)
    assert labels.attrs["flag_meanings"].split() == [
        name.replace(" ", "_") for name in class_names(1)
    ]
    assert labels.attrs["level"] == 1 and labels.attrs["tile"] == 32


def _blended_reference(optical: np.ndarray, checkpoint: str, tile: int, overlap: int):
    """Softmax of each tile, blended with the window, argmax: what classify must give."""
    net = models.load("landcover_unet", checkpoint, **SMALL)
    height, width = optical.shape[1:]
    stride = tile - overlap
    rows, cols = (-(-max(n - tile, 0) // stride) + 1 for n in (height, width))
    ys, xs = ((count - 1) * stride + tile for count in (rows, cols))
    padded = optical[:, mirror_index(height, ys)][:, :, mirror_index(width, xs)]
    inputs = torch.from_numpy(normalize_optical(padded.astype(np.float32)))
    canvas = np.zeros((len(class_names(1)), ys, xs))
    weights = window(tile)
    with torch.inference_mode():
        for r in range(rows):
            for c in range(cols):
                y, x = r * stride, c * stride
                crop = inputs[None, :, y : y + tile, x : x + tile]
                probabilities = net(crop).softmax(1)[0].numpy()
                canvas[:, y : y + tile, x : x + tile] += weights * probabilities
    return canvas[:, :height, :width].argmax(0)


def test_labels_are_the_argmax_of_blended_probabilities(checkpoint):
    scene = m3rcr_xr.synthetic_scene((52, 40), seed=4, chunks=64)
    labels = classify(scene.cloudfree, checkpoint=checkpoint, config=SMALL, tile=32, overlap=8)
    expected = _blended_reference(scene.cloudfree.values, checkpoint, 32, 8)
    np.testing.assert_array_equal(labels.values, expected)
    assert len(np.unique(expected)) > 2


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(5, 72),
    width=st.integers(5, 72),
    chunk=st.integers(24, 64),
    overlap=st.sampled_from([0, 4, 12]),
)
def test_labels_do_not_depend_on_the_chunking(checkpoint, height, width, chunk, overlap):
    optical = m3rcr_xr.synthetic_scene((height, width), seed=height).cloudfree.compute()
    kwargs = {"checkpoint": checkpoint, "config": SMALL, "tile": 32, "overlap": overlap}
    eager = classify(optical, **kwargs)
    assert eager.chunks is None  # in memory in, in memory out
    lazy = classify(optical.chunk({"y": chunk, "x": chunk + 8}), **kwargs)
    xr.testing.assert_identical(lazy.compute(), eager)


def test_pixels_without_data_are_ignored(checkpoint):
    optical = m3rcr_xr.synthetic_scene((40, 40), chunks=40).cloudy
    optical = optical.where((optical.x != optical.x[2]) | (optical.band != "red"), 0)
    labels = classify(optical.astype("uint16"), checkpoint=checkpoint, config=SMALL, tile=32)
    column = labels.isel(x=2).values
    np.testing.assert_array_equal(column, IGNORE_INDEX)
    assert (labels.drop_isel(x=2) < len(class_names(1))).all()
    floats = optical.astype("float32").where(optical.x != optical.x[5])
    labels = classify(floats, checkpoint=checkpoint, config=SMALL, tile=32)
    np.testing.assert_array_equal(labels.isel(x=5), IGNORE_INDEX)
    assert int(labels.isel(x=2)[0]) != IGNORE_INDEX  # 0 is reflectance in floats


def test_a_pixel_without_data_leaves_its_neighbours_labels_alone(checkpoint):
    """A decloud result has NaN where its input had no data: only those pixels change."""
    optical = m3rcr_xr.synthetic_scene((40, 40), chunks=20).cloudfree.astype("float32")
    hole = xr.zeros_like(optical.isel(band=0, drop=True), dtype=bool)
    hole[10:14, 7] = True
    for nan_in in (optical.band.notnull(), optical.band == "nir"):  # every band, or one
        missing = hole & nan_in
        # the network sees reflectance 0 there (floats: data, not nodata), as in the hole
        zeros = classify(optical.where(~missing, 0), checkpoint=checkpoint, config=SMALL, tile=32)
        labels = classify(optical.where(~missing), checkpoint=checkpoint, config=SMALL, tile=32)
        labels, zeros = labels.values, zeros.values
        np.testing.assert_array_equal(labels[hole.values], IGNORE_INDEX)
        np.testing.assert_array_equal(labels[~hole.values], zeros[~hole.values])


def test_a_collection_is_classified_patch_by_patch(checkpoint):
    collection = m3rcr_xr.synthetic_collection(3, 40).chunk({"patch": 2})
    kwargs = {"checkpoint": checkpoint, "config": SMALL, "tile": 32}
    labels = classify(collection.cloudfree, **kwargs)
    assert labels.dims == ("patch", "y", "x") and labels.chunks
    alone = classify(collection.cloudfree.isel(patch=1).compute(), **kwargs)
    np.testing.assert_array_equal(labels.isel(patch=1).values, alone.values)


def test_bands_are_taken_in_the_classifiers_order(checkpoint):
    optical = m3rcr_xr.synthetic_scene((32, 32)).cloudfree
    kwargs = {"checkpoint": checkpoint, "config": SMALL, "tile": 32}
    reversed_bands = optical.isel(band=slice(None, None, -1))
    xr.testing.assert_identical(classify(reversed_bands, **kwargs), classify(optical, **kwargs))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("dsen2_cr",), {}, ModelConfigError, "dsen2_cr is a cloud_removal model"),
        ((), {"checkpoint": None}, CheckpointError, "landcover_unet has no default weights"),
        ((), {"level": 2}, ModelConfigError, "built for WorldCover level 1"),
        ((), {"tile": 30}, ModelConfigError, "multiples of 4, got 30x30"),
        ((), {"overlap": 16}, ModelConfigError, "overlap=16"),
        ((), {"device": "cuda:7"}, UsageError, "device='cuda:7'"),
        (("nonet",), {}, ModelConfigError, "unknown model 'nonet'"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(args, kwargs, error, match):
    optical = m3rcr_xr.synthetic_scene((64, 64), chunks=32).cloudfree
    with raise_if_dask_computes(), pytest.raises(error, match=match):
        options = {"checkpoint": "untrained", "config": None if args else SMALL, "tile": 32}
        classify(optical, *args, **{**options, **kwargs})


def test_inputs_that_are_not_optical_bands_are_refused():
    scene = m3rcr_xr.synthetic_scene((32, 32))
    with pytest.raises(SchemaError, match="sar: dims .* must be"):
        classify(scene.sar, checkpoint="untrained", config=SMALL)
    with pytest.raises(SchemaError, match="3 bands"):
        classify(scene.cloudfree.isel(band=slice(0, 3)), checkpoint="untrained", config=SMALL)
    with pytest.raises(UsageError, match=r"classify\(\) needs a DataArray"):
        scene.m3rcr.classify(config=SMALL)


def test_decloud_refuses_a_classifier():
    scene = m3rcr_xr.synthetic_scene((32, 32), chunks=32)
    with (
        raise_if_dask_computes(),
        pytest.raises(ModelConfigError, match="landcover_unet is a landcover model; decloud needs"),
    ):
        m3rcr_xr.decloud(scene, "landcover_unet", "untrained", config=SMALL)


def test_the_model_is_built_once_per_process(checkpoint, caplog):
    clear_model_cache()
    optical = m3rcr_xr.synthetic_scene((64, 64), chunks=32).cloudfree
    with caplog.at_level("INFO", logger="m3rcr_xr.runner"):
        classify(optical, checkpoint=checkpoint, config=SMALL, tile=32).compute()
    assert sum("built landcover_unet" in r.getMessage() for r in caplog.records) == 1
