"""Every ```python block of README.md runs, in order, in one namespace, as a reader would
paste them into one session (a doctest of the README that checks that nothing raises).

The README shows real sizes, real paths and a real Slurm cluster; :data:`SUBSTITUTIONS`
turns them into what runs here in seconds (README.md, Development, explains it). A block
that cannot run anywhere is marked in the README with ``<!-- skip-test: reason -->`` on
the line before it; such marks must stay rare (:data:`MAX_SKIPPED`).
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import m3rcr_xr
from m3rcr_xr import weights
from m3rcr_xr.weights import default_checkpoint
from m3rcr_xr.weights.download import file_sha256
from tests.test_stac import scene_files, write_catalog

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(
    r"(?:<!--\s*skip-test:\s*(?P<reason>[^>]*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```",
    re.S | re.M,
)
MAX_SKIPPED = 1
TRAIN = "train/planet_cloudy_fall/planet_cloudy_fall_1/planet_cloudy_fall_1_p_457.tif"


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    return [
        Block(text.count("\n", 0, m.start("code")) + 1, m["code"], m["reason"])
        for m in BLOCK.finditer(text)
    ]


def _layer(prefix: str, suffix: str = ".tif") -> str:
    """The train quartet's file of one layer, relative to the samples folder."""
    return TRAIN.replace("planet_cloudy", prefix).removesuffix(".tif") + suffix


#: (regular expression, replacement, why): applied to each block before it runs;
#: ``{samples}`` in a replacement is the samples folder, ../shared/data/m3rcr-samples
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"\(4096, 4096\)", "(256, 256)", "small sizes: the same code in seconds"),
    (r'"cloudy\.tif"', f'"{{samples}}/{TRAIN}"', "the real train quartet of the samples"),
    (r'"cloudfree\.tif"', f'"{{samples}}/{_layer("planet_cloudfree")}"', "its other layers"),
    (r'"s1\.tif"', f'"{{samples}}/{_layer("S1")}"', ""),
    (r'"lc\.tif"', f'"{{samples}}/{_layer("landcover")}"', ""),
    (r'"mask\.npy"', f'"{{samples}}/{_layer("cloudmask", ".npy")}"', ""),
    (r'"M3M-CR/', '"{samples}/', "the dataset root: the samples, in its layout"),
    (r'"train\.csv"', '"{samples}/one_train_sample.csv"', "the samples' file list"),
    (
        r"m3rcr_xr\.slurm_cluster\(.*?\n\)",
        "LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=':0')",
        "no Slurm login node here: a small local cluster, its worker in this process so that "
        "it imports nothing again (tests/test_slurm.py runs slurm_cluster on a real Slurm)",
    ),
    (r"from distributed import Client\n", "from distributed import Client, LocalCluster\n", ""),
    (r"print\(cluster\.job_script\(\)\)", "print(cluster)", "a local cluster has no job"),
    (r"cluster\.scale\(jobs=4\)", "cluster.scale(1)", "one worker"),
    (r"client\.wait_for_workers\(4\)", "client.wait_for_workers(1)", ""),
    (
        r"num_workers=4, sampler=range\(10_000\)",
        "num_workers=0, sampler=range(16)",
        "a few crops, read in this process",
    ),
    (r'"planet/items\.json"', '"stac/planet/catalog.json"', "a local catalog written by the test"),
    (r'"s1-rtc/catalog\.json"', '"stac/s1/catalog.json"', ""),
    (r'"worldcover\.json"', '"stac/worldcover/catalog.json"', ""),
    (
        r'"dsen2_cr", \["a\.pth", "b\.pth", "c\.pth"\],',
        '"dsen2_cr", ["a.pth", "b.pth", "c.pth"], config={"preset": "small"},',
        "an ensemble of three small networks with seeded weights, written by the test",
    ),
    (r"/scratch/m3rcr/", "scratch/", "the test's folder; test.zarr: the samples' test split"),
    (
        r'"https://data\.example\.org/dsen2cr-v1\.pth"',
        '"{weights_url}"',
        "the lab's weights: the demo weights served by a server on 127.0.0.1",
    ),
    (r'sha256="9f86d0[0-9a-f]*"', 'sha256="{weights_sha256}"', "and their hash"),
    (r'config=\{"n_feats": 256\}', "config={weights_config}", "and their configuration"),
    (
        r'"glf_cr", "GLF-CR\.pth"',
        'checkpoint="dsen2_cr-demo"',
        "the demo weights of the Quick start, not the published ones",
    ),
]


def substitute(code: str, samples: Path, **values: str) -> str:
    """``code`` with every substitution applied; ``values`` fill the ``{name}`` fields."""
    values = {"samples": str(samples), **values}
    for pattern, replacement, _ in SUBSTITUTIONS:
        for name, value in values.items():
            replacement = replacement.replace("{" + name + "}", value)
        code = re.sub(pattern, lambda _, text=replacement: text, code, flags=re.S)
    return code


def _ensemble_members(names: tuple[str, ...]) -> None:
    """Small DSen2-CRs with different seeded weights at ``names``: an ensemble."""
    import torch

    from m3rcr_xr import models

    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        torch.save(models.build("dsen2_cr", preset="small").state_dict(), name)


@pytest.fixture
def demo_weights_served(tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    """The demo weights at ``http://127.0.0.1:PORT/...``, their hash and configuration, a
    fresh weights cache, and the README's example entry unregistered afterwards."""
    ckpt = default_checkpoint()
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    folder = str(ckpt.path.parent)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=folder),
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield {
            "weights_url": f"http://127.0.0.1:{httpd.server_address[1]}/{ckpt.path.name}",
            "weights_sha256": file_sha256(ckpt.path),
            "weights_config": repr(ckpt.config),
        }
    finally:
        httpd.shutdown()
        httpd.server_close()
        if any(entry.name == "lab-dsen2_cr-v1" for entry in weights.available()):
            weights.unregister("lab-dsen2_cr-v1")


def _close_clusters(namespace: dict) -> None:
    """Close what a failed block left open (the README closes its own)."""
    from distributed import Client
    from distributed.deploy import Cluster

    for value in namespace.values():
        if isinstance(value, Client | Cluster):
            value.close()


@pytest.mark.slow
def test_the_readme_blocks_run_in_order(samples_dir, tmp_path, monkeypatch, demo_weights_served):
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    m3rcr_xr.to_zarr(m3rcr_xr.open_m3rcr(samples_dir / "test"), scratch / "test.zarr")
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_collection(2, 160, seed=3), "train.zarr")
    _ensemble_members(("a.pth", "b.pth", "c.pth"))
    (tmp_path / "stac").mkdir()
    write_catalog(tmp_path / "stac", scene_files(tmp_path))
    namespace: dict = {"__name__": "readme"}
    ran = 0
    try:
        for block in readme_blocks(README.read_text()):
            if block.skip is not None:
                continue
            code = substitute(block.code, samples_dir, **demo_weights_served)
            exec(compile(code, f"README.md, block at line {block.line}", "exec"), namespace)
            ran += 1
    finally:
        _close_clusters(namespace)
    assert ran >= 3
    assert (scratch / "decloud.zarr").is_dir()  # the Slurm block's output, here
    assert namespace["decloud"].shape == (4, 256, 256)


def test_every_substitution_still_applies():
    code = "\n".join(block.code for block in readme_blocks(README.read_text()))
    unused = [pattern for pattern, _, _ in SUBSTITUTIONS if not re.search(pattern, code, re.S)]
    assert not unused, f"README.md no longer has {unused}: update tests/test_readme.py"


def test_skipped_blocks_are_rare_and_say_why():
    skipped = [b for b in readme_blocks(README.read_text()) if b.skip is not None]
    assert len(skipped) <= MAX_SKIPPED
    assert all(block.skip for block in skipped)


def test_blocks_and_skip_marks_are_found():
    text = "a\n```python\nx = 1\n```\n<!-- skip-test: needs Slurm -->\n```python\ny\n```\n"
    assert readme_blocks(text) == [Block(3, "x = 1\n", None), Block(7, "y\n", "needs Slurm")]
