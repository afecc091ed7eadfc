"""Test-time augmentation: the transforms a tile runs under, and their inverses.

With ``tta``, :func:`m3rcr_xr.decloud` runs each tile under every transform of
:data:`TTA` (:func:`transform_tiles`), transforms each output back
(:func:`invert_transform`) and averages them (:func:`m3rcr_xr.blending.predict_tiles`).
"""

from __future__ import annotations

import numpy as np

from .exceptions import UsageError, argument

#: Test-time augmentation: each transform as (quarter turns, mirrored left-right), the
#: mirror first. Tiles are always square (one side in
#: :class:`~m3rcr_xr.tiling.TilePlan`; a model's ``tile_size`` is height = width), so the
#: quarter turns of ``"d4"`` keep every tile valid for every model. ``"flips"``:
#: identity, left-right, up-down (mirror then half turn) and both (half turn).
TTA: dict[str | None, tuple[tuple[int, bool], ...]] = {
    None: ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((turns, mirror) for turns in range(4) for mirror in (False, True)),
}


def check_tta(tta: str | None) -> str | None:
    """``tta`` as a key of :data:`TTA`: ``"none"`` (as the CLI and the ``tta``
    attribute spell it) is None.

    Raises
    ------
    UsageError
        An unknown name, naming the argument as the caller wrote it.
    """
    name = None if tta == "none" else tta
    if name not in TTA:
        raise UsageError(f"{argument('tta', tta)}: must be one of flips, d4 or none")
    return name


def transform_tiles(tiles: np.ndarray, turn: tuple[int, bool]) -> np.ndarray:
    """``tiles`` (…, y, x) mirrored left-right if ``turn[1]``, then turned ``turn[0]``
    quarter turns anticlockwise; :func:`invert_transform` undoes it.

    Examples
    --------
    >>> tiles = np.arange(6).reshape(1, 2, 3)
    >>> back = invert_transform(transform_tiles(tiles, (1, True)), (1, True))
    >>> bool((back == tiles).all())
    True
    """
    turns, mirror = turn
    return np.rot90(tiles[..., ::-1] if mirror else tiles, turns, axes=(-2, -1))


def invert_transform(tiles: np.ndarray, turn: tuple[int, bool]) -> np.ndarray:
    """The inverse of :func:`transform_tiles` with the same ``turn``."""
    turns, mirror = turn
    tiles = np.rot90(tiles, -turns, axes=(-2, -1))
    return tiles[..., ::-1] if mirror else tiles
