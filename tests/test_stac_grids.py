"""The scene's grid (m3rcr_xr.stac.grids): the first optical item's, or a ``bbox``'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from odc.geo.geobox import GeoBox

from m3rcr_xr.stac import grids
from m3rcr_xr.testing import stac_item
from tests.test_stac import OPTICAL, ZONE32, scene_files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return scene_files(tmp_path_factory.mktemp("stac-files"))


def test_a_bbox_of_numpy_numbers_covers_the_items_it_names(files):
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    geobox = grids.optical_geobox([item], "ortho_analytic_4b_sr", bbox=np.array(item.bbox))
    assert geobox.crs == ZONE32 and geobox.extent.contains(GeoBox((96, 96), OPTICAL, ZONE32).extent)
    assert geobox.shape[0] < 96 + 10 and geobox.shape[1] < 96 + 10


def test_the_scene_grid_is_the_first_items_grid(files):
    item = stac_item("p", {"ortho_analytic_4b_sr": files["cloudy"]})
    geobox = grids.optical_geobox([item], "ortho_analytic_4b_sr")
    assert geobox.transform == OPTICAL and geobox.shape == (96, 96)
    half = grids.optical_geobox([item], "ortho_analytic_4b_sr", resolution=6.0)
    assert half.shape == (48, 48) and half.transform.a == 6.0
