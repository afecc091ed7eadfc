"""Shared fixtures: the reference data beside the checkout, and small synthetic scenes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import m3rcr_xr
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


#: the dask setting that says how a nanny starts its worker process
START_METHOD = "distributed.worker.multiprocessing-method"


@dataclass(frozen=True)
class ForkServer:
    """A started fork server: its ``context`` starts processes, ``environ`` is theirs."""

    context: multiprocessing.context.BaseContext
    environ: dict[str, str]


@pytest.fixture(scope="session")
def fork_server() -> ForkServer:
    """Processes forked from a server that imported m3rcr_xr and torch once.

    A fresh interpreter imports them anew: seconds a process on 2 cores. Forked from the
    server (as distributed's own test suite starts its workers), a process is still a
    new one that gets its target and arguments pickled, and ``sys.path`` and the working
    directory as spawn passes them, with none of this process's state. The server starts
    here, in this session's environment and Dask nannies' ``pre-spawn-environ`` (one
    thread for OpenMP and BLAS, as a Dask worker gets), which its processes inherit.
    """
    import multiprocessing.forkserver

    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({START_METHOD: "forkserver"}):
        context = get_mp_context()  # sets distributed's own preload list, once
    context.set_forkserver_preload(["distributed", "m3rcr_xr", "torch"])
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dask.config.get("distributed.nanny.pre-spawn-environ").items():
            patch.setenv(name, str(value))
        multiprocessing.forkserver.ensure_running()
        return ForkServer(context, dict(os.environ))


@pytest.fixture(scope="session")
def forked_workers(fork_server) -> Callable[[], AbstractContextManager]:
    """A context under which Dask's worker processes start from :func:`fork_server`.

    A spawned worker inherits the test's environment; a forked one the server's, so the
    context hands the nannies every variable set or changed since
    (``distributed.nanny.environ``), which they set before the worker starts. What still
    differs: a variable that the preloaded modules read on import (``DASK_*``), and a
    removed one, which the context refuses.
    """
    import dask

    server = fork_server.environ
    pre_spawn = dask.config.get("distributed.nanny.pre-spawn-environ")

    def forked() -> AbstractContextManager:
        removed = sorted(set(server) - set(os.environ) - set(pre_spawn))
        if removed:
            raise RuntimeError(f"a forked worker would still see {removed}: spawn them")
        changed = {name: value for name, value in os.environ.items() if server.get(name) != value}
        environ = {**dask.config.get("distributed.nanny.environ"), **changed}
        return dask.config.set({START_METHOD: "forkserver", "distributed.nanny.environ": environ})

    return forked


def run_script(code: str, *argv: str, stderr: Path) -> None:
    """Run ``code`` as ``python -c code *argv`` would, its stderr into the file
    ``stderr``: the target of a process started from :func:`fork_server`."""
    with open(stderr, "w") as err:
        os.dup2(err.fileno(), 2)
    sys.argv = ["-c", *argv]
    exec(code, {"__name__": "__main__"})


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


# ------------------------------------------------------------ S3 on loopback
@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    """An S3 endpoint on loopback (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str, monkeypatch, tmp_path) -> Iterator[str]:
    """A fresh bucket; credentials and endpoint only in the environment, where s3fs
    (``AWS_ENDPOINT_URL_S3``) and GDAL (``AWS_S3_ENDPOINT``, plain HTTP, path-style
    addresses) look for them."""
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "m3rcr-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "m3rcr-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_S3_ENDPOINT", endpoint.removeprefix("http://"))
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    s3fs.S3FileSystem.clear_instance_cache()
    name = f"m3rcr-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()


def forbid_head_bucket(monkeypatch) -> None:
    """s3fs's HeadBucket answered by the 403 AWS gives a principal allowed a prefix but
    not the bucket (``s3:ListBucket`` with an ``s3:prefix`` condition): listing and
    writing under the prefix still work."""
    import s3fs
    from botocore.exceptions import ClientError

    call = s3fs.S3FileSystem._call_s3

    async def refused(self, method, *args, **kwargs):
        if method == "head_bucket":
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadBucket")
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", refused)
    s3fs.S3FileSystem.clear_instance_cache()


def killed_writer() -> dict[str, Any]:
    """The marker record of a writer on this machine that was killed (SIGKILL) since:
    this process's record with the pid and start time of a child gone (and reaped)."""
    from m3rcr_xr import locks

    if locks._machine() is None:
        pytest.skip("needs Linux's /proc to tell that a writer no longer runs")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record = {**locks._owner(), "pid": child.pid, "started": locks._started(child.pid)}
    child.kill()
    child.wait()
    return record


def left_marker(record: dict) -> tuple[str, str]:
    """A new store's URL on the memory file system and its marker, holding ``record``."""
    import json

    import fsspec

    from m3rcr_xr.locks import LOCK

    marker = f"/{uuid.uuid4().hex}/s.zarr/{LOCK}"
    fsspec.filesystem("memory").pipe_file(marker, json.dumps(record).encode())
    return f"memory:/{marker.removesuffix(f'/{LOCK}')}", marker


# ------------------------------------------------------------ presigned URLs
#: the query string of a presigned URL, as issued: percent escapes that aiohttp would
#: decode (%2F) or a server would read otherwise (%2B), credentials that must not show
PRESIGNED = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-east-1"
    "&X-Amz-Signature=S1GN%2B%2FSECRET"
)
#: the same URL with an expired signature: the server answers 403
EXPIRED = PRESIGNED.replace("S1GN", "OLDS1GN")


def assert_no_credential(err: BaseException) -> None:
    """Neither the message nor the full traceback of ``err`` (its chain included) shows
    a credential of :data:`PRESIGNED`."""
    shown = "".join(traceback.format_exception(err))
    assert "S1GN" not in shown and "AKIDEXAMPLE" not in shown, shown
    assert "X-Amz-Signature=..." in str(err)


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


def geotiff_scene(folder: Path, value: int) -> dict[str, Path]:
    """cloudy and sar GeoTIFFs on one 64 x 48 grid, cloudy filled with ``value``."""
    import numpy as np
    from affine import Affine

    from tests.rasters import write_raster

    transform = Affine(3.0, 0, 500000, 0, -3.0, 4000000)
    cloudy = np.full((4, 64, 48), value, dtype="uint16")
    sar = np.full((2, 64, 48), -12.5, dtype="float32")
    return {
        "cloudy": write_raster(folder / "cloudy.tif", cloudy, transform, "EPSG:32632"),
        "sar": write_raster(folder / "sar.tif", sar, transform, "EPSG:32632"),
    }


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
    """Count the tile tasks, their predictions (:func:`m3rcr_xr.blending.predict_tiles`,
    within the task's :func:`m3rcr_xr.runner.tile_task_slot`) and the forward passes that
    run at once in this process.

    ``exclusive_cpu`` treats the CPU as a GPU would be treated (one tile task's device
    work at a time); ``patch`` is ``monkeypatch.setattr`` in a test, plain ``setattr``
    in a throw-away worker process (:func:`start_worker_probe`).
    """
    from m3rcr_xr import blending, engine, runner

    global _PROBE
    probe = _PROBE = ConcurrencyProbe()
    real_cached_model = blending.cached_model

    def cached_model(ref):
        model, device = real_cached_model(ref)
        probed = probe.wrap("forward", model, delay)
        probed.spec = model.spec  # type: ignore[attr-defined]  # the engine reads it
        return probed, device

    if exclusive_cpu:
        patch(runner, "CONCURRENT_DEVICE_TYPES", frozenset())
    patch(blending, "cached_model", cached_model)
    patch(engine, "accumulate", probe.wrap("task", engine.accumulate))
    patch(blending, "predict_tiles", probe.wrap("predict", blending.predict_tiles, delay))
    return probe


def start_worker_probe(exclusive_cpu: bool) -> None:
    """:func:`probe_tile_tasks` in a worker process (for ``client.run``)."""
    probe_tile_tasks(exclusive_cpu)


def worker_probe_peaks() -> dict[str, int]:
    """The peaks counted by :func:`start_worker_probe` (for ``client.run``)."""
    assert _PROBE is not None
    return dict(_PROBE.peak)


@pytest.fixture(scope="session")
def collection_store(tmp_path_factory) -> Path:
    """Four 96x96 synthetic patches (cloudy ones among them) in a Zarr store: training data."""
    path = tmp_path_factory.mktemp("train") / "train.zarr"
    m3rcr_xr.to_zarr(
        m3rcr_xr.synthetic_collection(4, 96, seed=11, cloud_cover=0.6), path, progress=False
    )
    return path


@pytest.fixture(scope="session")
def val_store(tmp_path_factory) -> Path:
    """Two 300x300 synthetic patches, as M3R-CR's: for the published centre crop."""
    path = tmp_path_factory.mktemp("val") / "val.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(2, 300, seed=500), path, progress=False)
    return path
