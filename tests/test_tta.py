"""Test-time augmentation (m3rcr_xr/tta.py): the transforms and their inverses.

decloud's ``tta`` is tested through decloud (tests/test_uncertainty.py)."""

import numpy as np
import pytest

from m3rcr_xr.tta import TTA, invert_transform, transform_tiles


@pytest.mark.parametrize("tta", sorted(TTA, key=str))
def test_transforms_are_undone_exactly(tta):
    tiles = np.random.default_rng(0).random((2, 3, 5, 5))
    for turn in TTA[tta]:
        moved = transform_tiles(tiles, turn)
        assert turn == (0, False) or not np.array_equal(moved, tiles)
        np.testing.assert_array_equal(invert_transform(moved, turn), tiles)
    distinct = {transform_tiles(tiles, turn).tobytes() for turn in TTA[tta]}
    assert len(distinct) == len(TTA[tta])  # no transform twice
