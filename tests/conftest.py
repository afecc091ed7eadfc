"""Shared fixtures: the reference data beside the checkout, and small synthetic scenes."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from m3rcr_xr.testing import (  # noqa: F401 - the tests import them from here too
    TINY,
    CountingScheduler,
    raise_if_dask_computes,
    seeded_checkpoint,
)
from m3rcr_xr.testing import small_scene as small_scene_of

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _require_shared() -> bool:
    return os.environ.get("M3RCR_REQUIRE_SHARED") == "1"


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the checkout; skips when absent, fails under CI."""
    if not SHARED.is_dir():
        message = f"reference data not found at {SHARED}"
        if _require_shared():
            pytest.fail(message + " (M3RCR_REQUIRE_SHARED=1)")
        pytest.skip(message)
    return SHARED


@pytest.fixture
def samples_dir(shared_dir: Path) -> Path:
    """The two real M3R-CR quartets, in the dataset's own layout."""
    return shared_dir / "data" / "m3rcr-samples"


@pytest.fixture(autouse=True)
def _quiet_progress():
    """No progress bars in test output."""
    import m3rcr_xr

    with m3rcr_xr.set_options(progress=False):
        yield


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A small DSen2-CR (``preset="small"``) with seeded random weights, saved to disk."""
    return seeded_checkpoint(tmp_path_factory.mktemp("weights") / "dsen2-small.pt", preset="small")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A DSen2-CR of :data:`TINY` with seeded random weights, saved to disk."""
    return seeded_checkpoint(tmp_path_factory.mktemp("weights") / "dsen2-tiny.pt", **TINY)


@pytest.fixture
def small_scene():
    """A lazy 300 x 420 synthetic scene in 128-pixel chunks."""
    return small_scene_of()


@pytest.fixture
def train_quartet(samples_dir: Path) -> dict[str, Path]:
    """The files of the real ``fall_1_p_457`` quartet (train split)."""
    return _quartet(samples_dir / "train", "fall", "1", "457")


@pytest.fixture
def test_quartet(samples_dir: Path) -> dict[str, Path]:
    """The files of the real ``summer_33_p_1`` quartet (test split)."""
    return _quartet(samples_dir / "test", "summer", "33", "1")


def _quartet(root: Path, season: str, aoi: str, n: str) -> dict[str, Path]:
    def path(prefix: str, ext: str = "tif") -> Path:
        return (
            root
            / f"{prefix}_{season}"
            / f"{prefix}_{season}_{aoi}"
            / (f"{prefix}_{season}_{aoi}_p_{n}.{ext}")
        )

    return {
        "cloudy": path("planet_cloudy"),
        "cloudfree": path("planet_cloudfree"),
        "sar": path("S1"),
        "landcover": path("landcover"),
        "cloudmask": path("cloudmask", "npy"),
    }


# ------------------------------------------------------- data-safety helpers
def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (or ``root`` itself when a file) with its bytes: what a
    data-safety test compares before and after."""
    if root.is_file():
        return {"": root.read_bytes()}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def a_file(path: Path) -> Path:
    """A file where a store might be expected."""
    path.write_bytes(b"GeoTIFF, say")
    return path


def user_folder(root: Path) -> Path:
    """A folder of a user's files, one of them in a subfolder."""
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("my notes")
    (root / "sub" / "cloudy.tif").write_bytes(bytes(range(256)))
    return root


def foreign_store(root: Path) -> Path:
    """A Zarr store written by other software: no m3rcr_* attributes."""
    import zarr

    group = zarr.open_group(root, mode="w", attributes={"title": "theirs"})
    group.create_array("values", shape=(4,), dtype="int32")[:] = [1, 2, 3, 4]
    return root


def unconsolidated_store(root: Path) -> Path:
    """A store of m3rcr_xr marked complete whose consolidated metadata was removed."""
    import json

    import m3rcr_xr

    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((32, 32)), root)
    doc = json.loads((root / "zarr.json").read_text())
    del doc["consolidated_metadata"]
    (root / "zarr.json").write_text(json.dumps(doc))
    return root


# ------------------------------------------------------------- concurrent tile tasks
class ConcurrencyProbe:
    """Counts, per label, how many calls of the functions it wraps run at once."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self._lock = threading.Lock()

    def wrap(self, label: str, func: Callable, delay: float = 0.0) -> Callable:
        """``func``, counted under ``label``; ``delay`` seconds longer, so that calls
        that may overlap do."""

        def probed(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.active[label] += 1
                self.peak[label] = max(self.peak[label], self.active[label])
            try:
                time.sleep(delay)
                return func(*args, **kwargs)
            finally:
                with self._lock:
                    self.active[label] -= 1

        return probed


_PROBE: ConcurrencyProbe | None = None


def probe_tile_tasks(
    exclusive_cpu: bool, delay: float = 0.02, patch: Callable[..., None] = setattr
) -> ConcurrencyProbe:
    """Count the tile tasks and the forward passes that run at once in this process.

    ``exclusive_cpu`` treats the CPU as a GPU would be treated (one tile task's device
    work at a time); ``patch`` is ``monkeypatch.setattr`` in a test, plain ``setattr``
    in a throw-away worker process (:func:`start_worker_probe`).
    """
    from m3rcr_xr import inference

    global _PROBE
    probe = _PROBE = ConcurrencyProbe()
    real_cached_model = inference.cached_model

    def cached_model(ref):
        model, device = real_cached_model(ref)
        probed = probe.wrap("forward", model, delay)
        probed.spec = model.spec  # type: ignore[attr-defined]  # the engine reads it
        return probed, device

    if exclusive_cpu:
        patch(inference, "CONCURRENT_DEVICE_TYPES", frozenset())
    patch(inference, "cached_model", cached_model)
    patch(inference, "accumulate", probe.wrap("task", inference.accumulate))
    return probe


def start_worker_probe(exclusive_cpu: bool) -> None:
    """:func:`probe_tile_tasks` in a worker process (for ``client.run``)."""
    probe_tile_tasks(exclusive_cpu)


def worker_probe_peaks() -> dict[str, int]:
    """The peaks counted by :func:`start_worker_probe` (for ``client.run``)."""
    assert _PROBE is not None
    return dict(_PROBE.peak)
