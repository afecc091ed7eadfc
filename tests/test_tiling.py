"""The tile grid (m3rcr_xr/tiling.py): the plan, the blending window, mirror padding."""

import dask
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import m3rcr_xr
from m3rcr_xr import tiling
from m3rcr_xr.tiling import make_plan, window


def test_plan_covers_the_scene_with_positive_weights():
    plan = make_plan(160, 20, 1000, 301)
    assert plan.stride == 140
    assert plan.shape == (7, 3)  # starts 0, 140, ... 840: the last tile ends at 1000
    assert plan.padded_shape[0] >= 1000 and plan.padded_shape[0] - 1000 < plan.stride
    assert (window(160) > 0).all()
    with pytest.raises(m3rcr_xr.ModelConfigError, match="overlap"):
        make_plan(32, 16, 100, 100)


def _pad_in_rounds(array: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Oracle: numpy's symmetric pad, in rounds of at most the array's size (one
    reflection each)."""
    while array.shape[-2:] != target:
        widths = [(0, 0)] * (array.ndim - 2) + [
            (0, min(goal - size, size)) for goal, size in zip(target, array.shape[-2:], strict=True)
        ]
        array = np.pad(array, widths, mode="symmetric")
    return array


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    tile=st.sampled_from([16, 32, 64]),
    chunk=st.integers(3, 40),
    seed=st.integers(0, 2**16),
)
def test_padding_equals_numpy_symmetric_pad_in_rounds(height, width, tile, chunk, seed):
    plan = make_plan(tile, tile // 8, height, width)
    array = np.random.default_rng(seed).random((2, height, width), dtype=np.float32)
    expected = _pad_in_rounds(array, plan.padded_shape)
    np.testing.assert_array_equal(tiling.pad(array, plan), expected)
    lazy = tiling.pad(dask.array.from_array(array, chunks=(2, chunk, chunk)), plan)
    np.testing.assert_array_equal(lazy.compute(), expected)
    assert len(lazy.chunks[1]) <= len(range(0, height, chunk)) + 1  # one block added


def test_mirror_index_repeats_the_edge_with_period_twice_the_size():
    assert tiling.mirror_index(1, 4).tolist() == [0, 0, 0, 0]
    assert tiling.mirror_index(3, 10).tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]
    np.testing.assert_array_equal(
        tiling.mirror_index(5, 37), np.pad(np.arange(5), (0, 32), mode="symmetric")
    )


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 700),
    tile=st.sampled_from([16, 32, 160, 256]),
    share=st.floats(0, 0.49),
    group=st.integers(1, 5),
)
def test_the_grid_covers_each_pixel_once_or_twice_and_groups_split_it(size, tile, share, group):
    plan = make_plan(tile, int(tile * share), size, size)
    count, padded = plan.count(size), plan.padded(size)
    covered = np.zeros(padded, int)
    for start in range(0, count * plan.stride, plan.stride):
        covered[start : start + tile] += 1
    assert len(covered) == padded and covered.min() >= 1
    assert covered.max() <= 2  # overlap < tile / 2: no pixel under three tiles
    assert padded >= size and (count == 1 or padded - size < plan.stride)  # no spare tile
    runs = tiling.groups(count, group)
    assert [i for run in runs for i in run] == list(range(count))
    assert all(len(run) == group for run in runs[:-1])


@given(
    sizes=st.lists(st.integers(1, 40), max_size=30),
    batch_size=st.integers(1, 64),
)
def test_runs_are_the_fewest_groups_that_fill_a_batch(sizes, batch_size):
    found = tiling.runs(sizes, batch_size)
    assert [i for run in found for i in run] == list(range(len(sizes)))  # each once, in order
    for index, run in enumerate(found):
        tiles = sum(sizes[i] for i in run)
        if index + 1 < len(found):
            assert tiles >= batch_size  # a full batch at least
        assert tiles - sizes[run[-1]] < batch_size  # without its last group, none
