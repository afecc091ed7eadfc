"""metrics.maps: per-pixel maps, and the halo exchange as an oracle for the streamed sums."""

from __future__ import annotations

import numpy as np
import xarray as xr

from m3rcr_xr import metrics
from tests.metrics_scenes import make_scene


def test_ssim_map_is_one_for_identical_images_and_chunk_independent():
    rng = np.random.default_rng(1)
    img = xr.DataArray(rng.random((2, 40, 50), dtype="float32"), dims=("band", "y", "x"))
    other = (img + xr.DataArray(rng.normal(0, 0.05, img.shape), dims=img.dims)).clip(0, 1)
    np.testing.assert_allclose(metrics.ssim_map(img, img).values, 1.0, rtol=1e-5)
    whole = metrics.ssim_map(other, img)
    chunked = metrics.ssim_map(other.chunk(y=7, x=13), img.chunk(y=7, x=13))
    assert chunked.chunks is not None
    np.testing.assert_array_equal(chunked.values, whole.values)


def test_sam_map_clips_norms_and_is_in_degrees():
    pred = xr.DataArray(
        np.array([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]], "float32"), dims=("pixel", "band")
    )
    target = xr.DataArray(
        np.array([[0.0, 1.0], [0.3, 0.4], [0.2, 0.2]], "float32"), dims=("pixel", "band")
    )
    np.testing.assert_allclose(metrics.sam_map(pred, target).values, [90.0, 90.0, 0.0], atol=1e-3)


def test_streamed_sums_equal_flox_map_reduce_over_a_halo_exchange():
    import flox

    ds = make_scene((70, 90), seed=24).chunk(y=32, x=40)
    labels = metrics.group_labels(ds.landcover, ds.cloudmask, like=ds.cloudfree)
    streamed = metrics.grouped_sums(ds.decloud, ds.cloudfree, labels)
    quantities = metrics.pixel_quantities(ds.decloud, ds.cloudfree)
    assert quantities.chunks is not None
    sums, _ = flox.groupby_reduce(
        quantities.data,
        labels.data,
        func="sum",
        expected_groups=np.arange(metrics.N_LABELS),
        axis=(1, 2),
        method="map-reduce",
        fill_value=0.0,
        dtype=np.float64,
    )
    np.testing.assert_allclose(streamed.values.reshape(sums.shape), sums.compute(), rtol=1e-12)


def test_the_maps_are_lazy_and_equal_the_numpy_ones():
    """Building either map computes nothing and keeps the chunks (np.clip, for one, would
    load both images whole)."""
    from m3rcr_xr.testing import raise_if_dask_computes

    ds = make_scene((40, 48), seed=5)
    pred, target = ds.decloud.astype("float32") / 1e4, ds.cloudfree.astype("float32") / 1e4
    for draw in (metrics.sam_map, metrics.ssim_map):
        with raise_if_dask_computes():
            lazy = draw(pred.chunk(y=16, x=24), target.chunk(y=16, x=24))
        assert lazy.chunks is not None
        np.testing.assert_allclose(lazy.values, draw(pred, target).values, rtol=1e-6)
