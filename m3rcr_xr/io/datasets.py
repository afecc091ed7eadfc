"""An M3R-CR split folder as a collection: :func:`open_m3rcr` opens its quartets and
:func:`stack_scenes` stacks their scenes along ``patch``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import href
from ..align import AlignMethod
from ..exceptions import InputFileError, MissingFileError, SchemaError
from ..href import PathType
from ..schema import repeated, validate
from .quartets import Quartet, discover, read_filelist
from .scenes import open_quartet


def open_m3rcr(
    root: PathType,
    filelist: PathType | None = None,
    *,
    chunks: Mapping[str, int] | None = None,
    align: AlignMethod = "coords",
) -> xr.Dataset:
    """Open an M3R-CR split folder (``train/``, ``test/``) as a lazy collection.

    Parameters
    ----------
    root
        The split folder, holding ``planet_cloudy_{season}/...`` and its siblings.
    filelist
        A CSV in the published format, paths relative to ``root``, checked as in
        :func:`read_filelist`. Without it, the quartets are found by walking the layout.
    chunks
        Dask chunks of the result, e.g. ``{"patch": 16}``; default one patch a chunk.
    align
        As in :func:`open_quartet`.

    Returns
    -------
    xr.Dataset
        A collection: the scene variables with a leading ``patch`` dim, per-patch grids
        ``x(patch, x)``, ``y(patch, y)``, ``epsg(patch)`` and ``season``, ``aoi``,
        ``split`` (the name of ``root``, also when given as ``.``), ``source`` (cloudy
        path relative to ``root``).
    """
    root = href.as_href(root)
    if not href.is_dir(root, "dataset root"):
        raise MissingFileError(f"{root}: dataset root is not a folder")
    quartets = read_filelist(filelist) if filelist is not None else discover(root)
    if not quartets:
        raise InputFileError(f"{root}: no quartets found")
    _check_patch_ids(quartets, root if filelist is None else filelist)
    scenes = [_open_patch(q, root, align) for q in quartets]
    meta = {
        "patch": [q.patch_id for q in quartets],
        "season": [q.season for q in quartets],
        "aoi": [q.aoi for q in quartets],
        "split": [_split_name(root)] * len(quartets),
        "source": [q.cloudy for q in quartets],
    }
    collection = stack_scenes(scenes, meta)
    collection.encoding["source"] = [path for s in scenes for path in s.encoding["source"]]
    if chunks:
        collection = collection.chunk(dict(chunks))
    return validate(collection)


def _split_name(root: str | Path) -> str:
    """The name of the split folder ``root``: ``train`` also for ``.`` inside it."""
    if href.is_remote(root):
        return href.name_of(root).name
    return href.local_path(root).resolve().name


def _check_patch_ids(quartets: Sequence[Quartet], source: PathType) -> None:
    """Refuse quartets whose cloudy files give one patch id (:attr:`Quartet.patch_id`),
    naming the files, before any is opened."""
    twice = repeated(quartet.patch_id for quartet in quartets)
    if twice:
        files = "; ".join(
            f"{patch!r} from {', '.join(q.cloudy for q in quartets if q.patch_id == patch)}"
            for patch in twice
        )
        raise InputFileError(
            f"{source}: patch ids (the cloudy file's name) must be unique; repeated: {files}; "
            "rename the files"
        )


def _open_patch(quartet: Quartet, root: str | Path, align: AlignMethod) -> xr.Dataset:
    paths: dict[str, Any] = quartet.paths(root)
    return open_quartet(**paths, chunks={"y": -1, "x": -1}, align=align)


def stack_scenes(scenes: Sequence[xr.Dataset], meta: Mapping[str, Sequence[str]]) -> xr.Dataset:
    """Stack same-shape scenes along ``patch``, each keeping its grid as coordinates.

    Parameters
    ----------
    scenes
        Scenes of one shape and one set of variables, in any CRS.
    meta
        Per-patch labels: ``patch`` (ids), ``season``, ``aoi``, ``split``, ``source``.

    Raises
    ------
    SchemaError
        Scenes of several shapes or sets of variables, or one whose CRS has no EPSG code.
    """
    epsg = [_epsg(scene, label) for scene, label in zip(scenes, meta["source"], strict=True)]
    shapes = {(s.sizes["y"], s.sizes["x"]) for s in scenes}
    if len(shapes) > 1:
        raise SchemaError(f"patches differ in shape {sorted(shapes)}; a collection needs one")
    names = [set(s.data_vars) for s in scenes]
    if any(n != names[0] for n in names):
        raise SchemaError("patches differ in their variables; a collection needs the same set")
    bare = [s.drop_vars(["x", "y", "spatial_ref"]) for s in scenes]
    stacked = xr.concat(
        bare, dim="patch", coords="minimal", compat="override", combine_attrs="drop_conflicts"
    )
    labels = {name: ("patch", list(meta[name])) for name in ("season", "aoi", "split", "source")}
    return stacked.assign_coords(
        {
            "patch": list(meta["patch"]),
            "y": (("patch", "y"), np.stack([s["y"].values for s in scenes])),
            "x": (("patch", "x"), np.stack([s["x"].values for s in scenes])),
            "epsg": ("patch", np.array(epsg, np.int32)),
            **labels,
        }
    )


def _epsg(scene: xr.Dataset, label: str) -> int:
    """The EPSG code of a scene's CRS; :class:`SchemaError` naming its file if none."""
    code = scene.rio.crs.to_epsg()
    if code is None:
        file = (scene.encoding.get("source") or [label])[0]
        raise SchemaError(
            f"{file}: CRS {scene.rio.crs.to_string()!r} has no EPSG code; a collection "
            "records each patch's CRS as an EPSG code (reproject the patch to one, or "
            "open it alone with open_quartet)"
        )
    return code
