"""CropDataset: random and centre crops of scenes and collections, loader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import m3rcr_xr
from m3rcr_xr.exceptions import SchemaError, UsageError
from m3rcr_xr.normalize import normalize_optical
from m3rcr_xr.train import CropDataset

from .train_runs import TILE


def test_random_crops_of_a_collection(collection_store):
    data = CropDataset(collection_store, TILE, seed=1)
    assert len(data) == 4
    item = data[5]
    assert item["cloudy"].shape == (4, TILE, TILE) and item["target"].shape == (4, TILE, TILE)
    assert item["sar"].shape == (2, TILE, TILE) and item["cloudmask"].shape == (TILE, TILE)
    assert all(v.dtype == torch.float32 for k, v in item.items() if k != "window")
    for key in ("cloudy", "sar", "target"):
        assert float(item[key].min()) >= 0.0 and float(item[key].max()) <= 1.0
    # every epoch visits each patch once, at offsets inside the patch
    for epoch in range(3):
        windows = [data.window(epoch * 4 + i) for i in range(4)]
        assert sorted(w[0] for w in windows) == [0, 1, 2, 3]
        assert all(0 <= y <= 96 - TILE and 0 <= x <= 96 - TILE for _, y, x in windows)
    assert data.window(7) == CropDataset(collection_store, TILE, seed=1).window(7)
    assert [data.window(i) for i in range(8)] != [
        CropDataset(collection_store, TILE, seed=2).window(i) for i in range(8)
    ]


def test_crop_values_are_the_store_normalised(collection_store):
    data = CropDataset(collection_store, TILE, seed=4)
    patch, y0, x0 = data.window(2)
    ds = m3rcr_xr.open_zarr(collection_store).isel(
        patch=patch, y=slice(y0, y0 + TILE), x=slice(x0, x0 + TILE)
    )
    item = data[2]
    expected = normalize_optical(ds["cloudfree"].values.astype(np.float32))
    np.testing.assert_array_equal(item["target"].numpy(), expected)
    np.testing.assert_array_equal(item["cloudmask"].numpy() > 0.5, ds["cloudmask"].values)
    assert item["window"].tolist() == [patch, y0, x0]


def test_crops_mark_nodata_invalid():
    """``valid`` is 0 on the data model's nodata: every band of ``cloudy`` 0, or a band
    of ``cloudfree`` 0; a classifier's labels are ignored where its input has none."""
    from m3rcr_xr.landcover import worldcover_labels

    ds = m3rcr_xr.synthetic_collection(1, 64, seed=2).compute()
    ds["cloudy"][{"x": slice(0, 16)}] = 0  # outside the footprint
    ds["cloudfree"][{"band": 1, "y": slice(40, None)}] = 0  # the target lacks a band
    ds["cloudy"][{"band": 0, "y": slice(0, 8)}] = 0  # one dark band: data all the same
    item = CropDataset(ds, 64, mode="center")[0]
    target_valid = np.ones((64, 64), dtype=bool)
    target_valid[40:] = False
    expected = target_valid.copy()
    expected[:, :16] = False
    assert item["valid"].dtype == torch.float32
    np.testing.assert_array_equal(item["valid"].numpy(), expected)
    labelled = CropDataset(ds, 64, mode="center", level=1)[0]
    np.testing.assert_array_equal(labelled["valid"].numpy(), target_valid)
    labels = worldcover_labels(ds["landcover"].values[0], 1)
    np.testing.assert_array_equal(labelled["labels"].numpy()[target_valid], labels[target_valid])
    assert (labelled["labels"].numpy()[~target_valid] == 255).all()


def test_the_british_centre_still_works_with_a_warning(val_store):
    with pytest.warns(DeprecationWarning, match="use 'center'"):
        data = CropDataset(val_store, 160, mode="centre")
    center = CropDataset(val_store, 160, mode="center")
    assert data.mode == "center" and data.window(0) == center.window(0)


def test_centre_crop_is_the_published_one(val_store):
    data = CropDataset(val_store, 160, mode="center")
    assert len(data) == 2
    assert [data.window(i) for i in range(2)] == [(0, 70, 70), (1, 70, 70)]
    crop = data.read(1)
    whole = m3rcr_xr.open_zarr(val_store).isel(patch=1)
    np.testing.assert_array_equal(crop["cloudy"].values, whole["cloudy"].values[:, 70:230, 70:230])
    with pytest.raises(IndexError):
        data.window(2)


def test_scene_crops():
    scene = m3rcr_xr.synthetic_scene((100, 140), seed=2, chunks=64)
    data = CropDataset(scene, TILE, seed=0)
    assert len(data) == (100 // TILE) * (140 // TILE)
    windows = [data.window(i) for i in range(20)]
    assert all(p is None and 0 <= y <= 100 - TILE and 0 <= x <= 140 - TILE for p, y, x in windows)
    centre = CropDataset(scene, TILE, mode="center")
    assert [centre.window(i) for i in (0, 1, 4)] == [(None, 0, 0), (None, 0, 32), (None, 32, 0)]
    assert centre[4]["cloudy"].shape == (4, TILE, TILE)


def test_dataset_errors(collection_store):
    with pytest.raises(SchemaError, match="smaller than the crop"):
        CropDataset(collection_store, 128)
    with pytest.raises(UsageError):
        CropDataset(collection_store, TILE, mode="sideways")
    scene = m3rcr_xr.synthetic_scene((64, 64)).drop_vars("cloudfree")
    with pytest.raises(SchemaError, match="cloudfree"):
        CropDataset(scene, TILE)


def test_real_samples_store(samples_dir, tmp_path):
    store = tmp_path / "real.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.open_m3rcr(samples_dir / "test"), store, progress=False)
    centre = CropDataset(store, 160, mode="center")
    assert len(centre) == 1 and centre.window(0) == (0, 70, 70)
    item = centre[0]
    assert item["cloudy"].shape == (4, 160, 160) and item["sar"].shape == (2, 160, 160)
    assert torch.isfinite(item["sar"]).all() and item["cloudmask"].shape == (160, 160)
    random_item = CropDataset(store, 160, seed=3)[10]
    assert random_item["target"].shape == (4, 160, 160)


def test_loader_workers_give_the_same_batches(collection_store):
    data = CropDataset(collection_store, TILE, seed=9)
    data[0]  # opened in this process: workers must open their own
    state = pickle.loads(pickle.dumps(data)).__dict__
    assert state["_ds"] is None
    loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=2, sampler=list(range(6)))
    batches = list(loader)
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        for i in range(3):
            np.testing.assert_array_equal(batch["cloudy"][i], data[3 * b + i]["cloudy"])
