"""Weights by name, path and URL (m3rcr_xr.weights): the registry, fetching into the
cache with SHA-256 checks, resolution for decloud, and workers that fetch for themselves.

Everything is served on loopback: an HTTP server started here and the moto S3 server of
conftest; the cache is a temporary folder named by ``$M3RCR_CACHE``.
"""

from __future__ import annotations

import http.server
import json
import pickle
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import m3rcr_xr
from m3rcr_xr import runner, weights
from m3rcr_xr.cli import main
from m3rcr_xr.exceptions import CheckpointError, ModelConfigError, UsageError
from m3rcr_xr.weights import WeightsEntry, default_checkpoint
from m3rcr_xr.weights.download import cached_file, file_sha256
from tests.conftest import TINY, seeded_checkpoint

DEMO = "dsen2_cr-demo"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Downloads go to a fresh folder; no registry file from the environment."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(folder))
    monkeypatch.delenv(weights.REGISTRY_ENV, raising=False)
    return folder


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, str]:
    """A small checkpoint in a folder of its own, and its SHA-256."""
    (tmp_path / "served").mkdir()
    path = seeded_checkpoint(tmp_path / "served" / "tiny.pt", **TINY)
    return path, file_sha256(path)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith("/nolength/"):  # a body that ends when the connection closes
            body = Path(self.directory, self.path.removeprefix("/nolength/")).read_bytes()
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tiny) -> Iterator[tuple[str, list[str]]]:
    """``http://127.0.0.1:PORT`` serving the folder of ``tiny``, and the paths requested."""
    folder = str(tiny[0].parent)
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=folder)
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lab_entry(tiny) -> Iterator[WeightsEntry]:
    """``tiny`` registered as ``lab-tiny`` (TINY config) for this test only."""
    path, sha256 = tiny
    entry = WeightsEntry("lab-tiny", "dsen2_cr", (path.as_uri(),), sha256, config=TINY)
    yield weights.register(entry)
    weights.unregister("lab-tiny")


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ------------------------------------------------------------------------- registry
def test_the_demo_entry_is_the_shipped_file():
    entry = weights.entry(DEMO)
    shipped = default_checkpoint()
    assert weights.available()[0] == entry and not entry.default
    assert (entry.model, dict(entry.config)) == (shipped.model, shipped.config)
    assert entry.sha256 == file_sha256(shipped.path)
    assert entry.size == shipped.path.stat().st_size
    assert weights.fetch(DEMO) == shipped.path
    assert "For demonstrations and tests only" in entry.card()


def test_the_demo_classifier_entry_is_the_shipped_file():
    entry = weights.entry("landcover_unet-demo")
    path = weights.fetch("landcover_unet-demo")
    header = weights.read_weights(path)
    assert entry.model == header.model == "landcover_unet" and not entry.default
    assert dict(entry.config) == header.config and header.config["level"] == 1
    assert entry.sha256 == file_sha256(path) and entry.size == path.stat().st_size < 2**20
    card = entry.card()
    assert "For demonstrations and tests only" in card and entry.sha256 in card
    assert [e.name for e in weights.available("landcover_unet")] == ["landcover_unet-demo"]


def test_unpacking_drops_the_model_and_is_deprecated():
    ckpt = default_checkpoint()
    with pytest.warns(FutureWarning, match=r"drops its model .* read \.model, \.path"):
        path, config = ckpt
    assert (path, config) == (ckpt.path, ckpt.config)


def test_an_unknown_name_lists_the_registered_ones(lab_entry):
    with pytest.raises(
        CheckpointError,
        match=f"'nope': neither .* registered: {DEMO}, landcover_unet-demo, lab-tiny",
    ):
        weights.fetch("nope")
    with pytest.raises(
        CheckpointError, match=f"no weights registered .* {DEMO}, landcover_unet-demo, lab-tiny"
    ):
        weights.entry("nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "a/b"}, "without '/'"),
        ({"name": "untrained"}, "not 'untrained'"),
        ({"urls": "weights.pt"}, "give one or more URLs"),
        ({"urls": "mirror/weights.pt?from=s3://b"}, "give one or more URLs"),  # a path
        ({"sha256": "abc"}, "sha256='abc': not a SHA-256"),
    ],
)
def test_a_bad_entry_is_refused(kwargs, match):
    fields = {"name": "x", "model": "dsen2_cr", "urls": "file:///w.pt", "sha256": "0" * 64}
    with pytest.raises(UsageError, match=match):
        WeightsEntry(**{**fields, **kwargs})


def test_register_refuses_a_taken_name_and_a_second_default(lab_entry, tiny):
    with pytest.raises(UsageError, match="'lab-tiny': .* already registered"):
        weights.register(lab_entry)
    with pytest.raises(UsageError, match=f"'{DEMO}': .* already registered"):
        weights.register(WeightsEntry(DEMO, "dsen2_cr", lab_entry.urls, tiny[1]))
    first = WeightsEntry("d1", "dsen2_cr", lab_entry.urls, tiny[1], default=True)
    weights.register(first)
    try:
        with pytest.raises(UsageError, match="two default weights, 'd1' and 'd2'"):
            weights.register(WeightsEntry("d2", "dsen2_cr", lab_entry.urls, tiny[1], default=True))
        weights.register(first, replace=True)
    finally:
        weights.unregister("d1")
    with pytest.raises(m3rcr_xr.UnknownModelError, match="unknown model 'unet'"):
        weights.register(WeightsEntry("u", "unet", lab_entry.urls, tiny[1]))


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_registry_file_named_by_the_environment(tmp_path, monkeypatch, tiny, suffix):
    path, sha256 = tiny
    table = {"name": "from-file", "model": "glf_cr", "urls": [path.as_uri()], "sha256": sha256}
    file = tmp_path / f"registry{suffix}"
    if suffix == ".json":
        file.write_text(json.dumps({"weights": [table]}))
    else:
        file.write_text(
            f'[[weights]]\nname = "from-file"\nmodel = "glf_cr"\n'
            f'urls = ["{path.as_uri()}"]\nsha256 = "{sha256}"\n'
        )
    monkeypatch.setenv(weights.REGISTRY_ENV, str(file))
    assert [e.name for e in weights.available("glf_cr")] == ["from-file"]
    assert weights.fetch("from-file") == path


def test_a_bad_registry_file_is_named(tmp_path, monkeypatch):
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"weights": [{"name": "x", "model": "dsen2_cr", "url": "y"}]}))
    monkeypatch.setenv(weights.REGISTRY_ENV, str(file))
    with pytest.raises(CheckpointError, match=r"bad.json: entry 'x': unknown fields \['url'\]"):
        weights.available()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("config", "abc", "config='abc': must be a table of architecture arguments"),
        ("size", "big", "size='big': must be a number of bytes"),
        ("name", 5, "name=5: must be text"),
        ("model", ["a"], "model=['a']: must be text"),
        ("urls", 5, "urls=5: must be a URL or a list of URLs"),
        ("urls", ["file:///w.pt", 5], "must be a URL or a list of URLs"),
        ("default", "yes", "default='yes': must be true or false"),
        ("sha256", "abc", "sha256='abc': not a SHA-256"),  # a field, not a --flag
        ("model", "nosuch", "entry 'x': unknown model 'nosuch'; available: dsen2_cr"),
    ],
)
def test_a_registry_field_of_the_wrong_type_is_one_line_naming_it(
    tmp_path, monkeypatch, capsys, field, value, says
):
    table = {"name": "x", "model": "dsen2_cr", "urls": "file:///w.pt", "sha256": "0" * 64}
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"weights": [{**table, field: value}]}))
    monkeypatch.setenv(weights.REGISTRY_ENV, str(file))
    with pytest.raises(CheckpointError, match=re.escape("bad.json: entry ")) as error:
        weights.available()
    assert says in str(error.value)
    assert main(["weights", "list"]) == 2  # every command reads the registry: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_every_registry_field_has_its_type_check():
    from dataclasses import fields

    from m3rcr_xr.weights.registry import _FIELD_CHECKS

    assert set(_FIELD_CHECKS) == {f.name for f in fields(WeightsEntry)}


# --------------------------------------------------------------------------- fetching
def test_a_path_and_a_file_url_are_read_in_place(tiny, cache):
    path, sha256 = tiny
    assert weights.fetch(path) == path
    assert weights.fetch(path.as_uri(), known_hash=f"sha256:{sha256.upper()}") == path
    assert weights.fetch(f"{path.as_uri()}#sha256={sha256}") == path
    with pytest.raises(CheckpointError, match=f"expected {'0' * 64}, the file has {sha256}"):
        weights.fetch(path, known_hash="0" * 64)
    assert path.is_file() and _files(cache) == []  # a user's file is never removed


def test_a_file_url_is_decoded_once_and_names_a_local_file(tiny, cache):
    """As every file:// URL of the library (href.local_path): a file named ``a%20b.pt``
    is ``a%2520b.pt`` in its URL, not ``a b.pt``; a URL with a host is refused."""
    path = tiny[0].rename(tiny[0].with_name("a%20b.pt"))
    assert weights.fetch(path.as_uri()) == path
    with pytest.raises(CheckpointError, match="must name a local file"):
        weights.fetch(f"file://server{path}")


def test_http_downloads_once_into_the_cache(server, tiny, cache):
    base, requests = server
    path, sha256 = tiny
    url = f"{base}/tiny.pt"
    got = weights.fetch(url, known_hash=sha256)
    assert got.parent == cache and got.read_bytes() == path.read_bytes()
    assert weights.fetch(f"{url}#sha256={sha256}") == got
    assert weights.fetch(url) == got
    assert requests == ["/tiny.pt"]  # the cached file is reused, checked by its hash


def test_a_url_without_a_hash_is_held_to_its_first_download(server, tiny, cache):
    base, requests = server
    path, sha256 = tiny
    url = f"{base}/tiny.pt"
    got = weights.fetch(url)
    got.write_bytes(b"tampered")  # the cached file changed: fetched again
    assert weights.fetch(url).read_bytes() == path.read_bytes()
    assert requests == ["/tiny.pt", "/tiny.pt"]
    path.write_bytes(path.read_bytes() + b"changed")  # the URL serves another file now
    got.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match=f"expected {sha256} .recorded at its first"):
        weights.fetch(url)


def test_a_read_only_cache_only_loses_the_record(server, tiny, cache, monkeypatch, caplog):
    """A shared cache filled ahead of a job, then read-only: a URL fetched without a
    hash is used with a warning, as its hash cannot be recorded."""
    url = f"{server[0]}/tiny.pt"
    got = weights.fetch(url, known_hash=tiny[1])  # filled as a registered entry would be
    write_text = Path.write_text

    def read_only(self, *args, **kwargs):
        if self.parent == cache:
            raise PermissionError(13, "Permission denied", str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert weights.fetch(url) == got
    assert "cannot record its SHA-256" in caplog.text and _files(cache) == [got.name]


def test_a_download_of_unknown_length_is_never_trusted_later(server, tiny, cache, caplog):
    """Without Content-Length (nor chunks) a download cut short looks whole: with no
    hash, it is used once, neither recorded nor cached as the URL's file."""
    base, requests = server
    url = f"{base}/nolength/tiny.pt"
    first = weights.fetch(url)
    assert first.read_bytes() == tiny[0].read_bytes()
    assert "the server gave no length" in caplog.text
    assert first != cached_file(url) and not cached_file(url).exists()
    assert not any(name.endswith(".sha256") for name in _files(cache))
    assert weights.fetch(url) == first and requests == ["/nolength/tiny.pt"] * 2
    assert weights.fetch(url, known_hash=tiny[1]) == cached_file(url)  # a hash proves it


def test_a_local_path_may_hold_a_hash_sign(tiny, tmp_path):
    path = tmp_path / "w#1.pt"
    path.write_bytes(tiny[0].read_bytes())
    found = weights.resolve(None, path.as_posix(), TINY)
    assert (found.path, found.sha256, found.label) == (path, tiny[1], path.as_posix())


def test_a_hash_mismatch_removes_the_download(server, tiny, cache):
    url, wrong = f"{server[0]}/tiny.pt", "ab" * 32
    with pytest.raises(CheckpointError) as info:
        weights.fetch(url, known_hash=wrong)
    message = str(info.value)
    assert url in message and wrong in message and tiny[1] in message
    assert _files(cache) == []


def test_an_unreachable_url_leaves_nothing_in_the_cache(closed_port, cache):
    url = f"http://127.0.0.1:{closed_port}/w.pt"
    with pytest.raises(CheckpointError, match=f"{url}: cannot download"):
        weights.fetch(url, known_hash="ab" * 32)
    assert _files(cache) == []


def test_s3_downloads_through_fsspec(bucket, tiny, cache):
    import s3fs

    path, sha256 = tiny
    s3fs.S3FileSystem().put(str(path), f"{bucket}/w/tiny.pt")
    got = weights.fetch(f"s3://{bucket}/w/tiny.pt", known_hash=sha256)
    assert got.parent == cache and file_sha256(got) == sha256
    with pytest.raises(CheckpointError, match=f"s3://{bucket}/w/other.pt: cannot download"):
        weights.fetch(f"s3://{bucket}/w/other.pt")
    assert _files(cache) == [got.name]


def test_the_cache_option_wins_over_the_environment(tmp_path):
    with m3rcr_xr.set_options(weights_cache=str(tmp_path / "opt")):
        assert weights.cache_dir() == tmp_path / "opt"
    with pytest.raises(m3rcr_xr.OptionError):
        m3rcr_xr.set_options(weights_cache=3)


# ------------------------------------------------------------------------- resolving
def test_no_checkpoint_and_no_default_says_how_to_get_weights(small_scene):
    with pytest.raises(CheckpointError) as info:
        m3rcr_xr.decloud(small_scene)
    message = str(info.value)
    for needle in (DEMO, "m3rcr train", "not released", "checkpoint='untrained'"):
        assert needle in message
    with pytest.raises(CheckpointError, match=r"glf_cr \(none\)"):
        m3rcr_xr.decloud(small_scene, "glf_cr")


def test_untrained_only_when_asked(small_scene):
    out = m3rcr_xr.decloud(small_scene, "dsen2_cr", "untrained", config=TINY)
    assert out.attrs["checkpoint"] == "untrained" and out.attrs["checkpoint_sha256"] == ""


def test_a_default_entry_stands_for_none(small_scene, tiny):
    path, sha256 = tiny
    default = WeightsEntry("lab-default", "dsen2_cr", path.as_uri(), sha256, TINY, default=True)
    weights.register(default)
    try:
        out = m3rcr_xr.decloud(small_scene)
    finally:
        weights.unregister("lab-default")
    assert out.attrs["checkpoint"] == "lab-default" and out.attrs["checkpoint_sha256"] == sha256
    expected = m3rcr_xr.decloud(small_scene, "dsen2_cr", path, config=TINY)
    np.testing.assert_array_equal(out.values, expected.values)


def test_the_entry_gives_model_and_config(lab_entry):
    found = weights.resolve(None, "lab-tiny")
    assert (found.model, found.config, found.sha256) == ("dsen2_cr", TINY, lab_entry.sha256)
    assert found.sources == ("lab-tiny", *lab_entry.urls)
    # the same architecture written otherwise (a default value spelt out) is accepted
    assert weights.resolve("DSen2-CR", "lab-tiny", {**TINY, "res_scale": 0.1}).config == TINY
    with pytest.raises(ModelConfigError, match=r"config=\{'n_feats': 16\}: .* 'lab-tiny'"):
        weights.resolve(None, "lab-tiny", {"n_feats": 16})
    with pytest.raises(ModelConfigError, match="model='glf_cr': the weights 'lab-tiny' are for"):
        weights.resolve("glf_cr", "lab-tiny")


def test_a_url_records_its_hash_and_source(server, tiny):
    url = f"{server[0]}/tiny.pt"
    ref = runner.ModelRef.create("dsen2_cr", url, TINY, "cpu")
    assert (ref.sha256, ref.sources, ref.weights) == (tiny[1], (url,), url)
    assert len(pickle.dumps(ref)) < 1000


@pytest.mark.parametrize(
    ("netloc", "query", "secret"),
    [
        ("alice:s3cret@", "", "s3cret"),
        ("", "?X-Amz-Credential=AKIDX&X-Amz-Signature=beef", "AKIDX"),
    ],
)
def test_credentials_of_a_url_stay_out_of_results(server, tiny, tmp_path, netloc, query, secret):
    url = server[0].replace("://", f"://{netloc}") + f"/tiny.pt{query}"
    found = weights.resolve(None, url, TINY)
    assert secret not in found.label and found.sources == (url,)  # workers download it
    out = m3rcr_xr.decloud(m3rcr_xr.synthetic_scene((32, 32)), checkpoint=url, config=TINY)
    assert secret not in repr(out.attrs) and out.attrs["checkpoint"] == found.label
    m3rcr_xr.to_zarr(out.to_dataset(), tmp_path / "o.zarr")
    assert not [
        f
        for f in (tmp_path / "o.zarr").rglob("*")
        if f.is_file() and secret.encode() in f.read_bytes()
    ]


def test_workers_fetch_for_themselves(server, tiny, cache, tmp_path):
    """The graph carries the URL and the hash; a worker with an empty cache downloads,
    checks and builds the model, and gives the local result."""
    from distributed import Client, LocalCluster

    demo = default_checkpoint().path
    shutil.copy(demo, tiny[0].parent / "demo.safetensors")
    base, requests = server
    entry = WeightsEntry(
        "served-demo",
        "dsen2_cr",
        f"{base}/demo.safetensors",
        file_sha256(demo),
        {"n_resblocks": 4, "n_feats": 32},
    )
    weights.register(entry)
    try:
        scene = m3rcr_xr.synthetic_scene((96, 80), seed=4, chunks=48)
        out = m3rcr_xr.decloud(scene, checkpoint="served-demo", tile=64)
    finally:
        weights.unregister("served-demo")  # the workers never see the registration
    graph = len(pickle.dumps(dict(out.__dask_graph__())))
    assert graph < demo.stat().st_size / 4
    expected = m3rcr_xr.decloud(scene, checkpoint=DEMO, tile=64).compute(scheduler="sync")
    shutil.rmtree(cache)
    runner.clear_model_cache()
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        got = out.compute()
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-6)
    assert requests == ["/demo.safetensors", "/demo.safetensors"]  # client, then worker
    runner.clear_model_cache()


# --------------------------------------------------------------------- command line
@pytest.fixture
def scene_store(tmp_path) -> Path:
    path = tmp_path / "scene.zarr"
    m3rcr_xr.to_zarr(m3rcr_xr.synthetic_scene((40, 40), seed=2), path)
    return path


def _fails(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"m3rcr {argv[0]}: error:"), err
    assert all(needle in err[0] for needle in needles), err[0]


def test_weights_lists_and_fetches(capsys, lab_entry, tiny):
    assert main(["weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "model", "size", "license", "cached", "default"]
    assert lines[1].split() == [DEMO, "dsen2_cr", "0.3", "MiB", "MIT", "local"]
    assert lines[2].split() == [
        "landcover_unet-demo",
        "landcover_unet",
        "0.5",
        "MiB",
        "MIT",
        "local",
    ]
    assert lines[3].split()[:2] == ["lab-tiny", "dsen2_cr"]
    assert main(["weights", "list", "--model", "glf_cr"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["weights", "fetch", "lab-tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tiny[0])


@pytest.mark.parametrize(
    "argv",
    [
        ["weights", "--model", "landcover_unet"],
        ["weights", "--model", "landcover_unet", "list"],
        ["weights", "list", "--model", "landcover_unet"],
    ],
)
def test_weights_model_filters_before_or_after_list(capsys, argv):
    assert main(argv) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [["landcover_unet-demo", "landcover_unet"]]


@pytest.mark.parametrize(
    "argv", [["weights", "--model", "bogus", "list"], ["weights", "list", "--model", "bogus"]]
)
def test_weights_of_an_unknown_model_are_refused_before_or_after_list(capsys, argv):
    _fails(capsys, argv, "unknown model 'bogus'")


def test_decloud_by_name_on_the_command_line(scene_store, tmp_path, capsys):
    assert main(["decloud", str(scene_store), str(tmp_path / "o.zarr"), "--checkpoint", DEMO]) == 0
    out = m3rcr_xr.open_zarr(tmp_path / "o.zarr")["decloud"]
    assert out.attrs["checkpoint"] == DEMO


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        ([], ("no checkpoint given", "--checkpoint untrained")),
        (["--checkpoint", "nope"], ("'nope': neither registered weights nor a file", DEMO)),
        (["--checkpoint", DEMO, "--config", "n_feats=8"], ("--config", DEMO)),
        (["--checkpoint", DEMO, "--model", "glf_cr"], ("--model glf_cr", DEMO)),
        (["--checkpoint", "http://127.0.0.1:{port}/w.pt"], ("cannot download",)),
        (
            ["--checkpoint", "file:///nowhere/w.pt#sha256=12"],
            ("#sha256= fragment is not a SHA-256",),
        ),
    ],
)
def test_bad_weights_exit_2_before_writing(
    scene_store, tmp_path, capsys, closed_port, flags, needles
):
    flags = [f.format(port=closed_port) for f in flags]
    _fails(capsys, ["decloud", str(scene_store), str(tmp_path / "o.zarr"), *flags], *needles)
    assert not (tmp_path / "o.zarr").exists()


def test_weights_fetch_exits_2_on_bad_input(capsys, closed_port, cache):
    _fails(capsys, ["weights", "fetch", "nope"], "'nope'", DEMO)
    _fails(capsys, ["weights", "fetch", DEMO, "--known-hash", "xyz"], "--known-hash xyz")
    _fails(capsys, ["weights", "--model", "unet"], "unknown model 'unet'")
    url = f"http://127.0.0.1:{closed_port}/w.pt"
    _fails(capsys, ["weights", "fetch", url], url)
    assert _files(cache) == []


def test_an_exported_file_brings_its_model_and_configuration(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = torch.load(seeded_checkpoint(tmp_path / "w.pt", **TINY), weights_only=True)
    header = {"model": "dsen2_cr", "config": json.dumps(TINY), "task": "cloud_removal"}
    header["format"] = weights.EXPORT_FORMAT
    exported = tmp_path / "run.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, exported, metadata=header)
    found = weights.resolve(None, exported)
    assert (found.model, found.config) == ("dsen2_cr", TINY)  # as m3rcr train --export wrote
    scene = m3rcr_xr.synthetic_scene((32, 32))
    assert m3rcr_xr.decloud(scene, checkpoint=exported, tile=32).shape == (4, 32, 32)
    with pytest.raises(ModelConfigError, match="the weights .*run.safetensors' are for dsen2_cr"):
        weights.resolve("glf_cr", exported)
    with pytest.raises(ModelConfigError, match="were trained with"):
        weights.resolve(None, exported, {"n_resblocks": 9})
    plain = tmp_path / "plain.safetensors"  # no header of ours: the arguments given apply
    save_file({k: v.contiguous() for k, v in state.items()}, plain)
    assert weights.resolve(None, plain, TINY).config == TINY


def _training_checkpoint(path: Path, settings: object) -> Path:
    """The TINY weights in the layout of a checkpoint of ``m3rcr train``, with these
    ``settings`` (the optimiser state and the rest are not read for decloud)."""
    import torch

    state = torch.load(seeded_checkpoint(path.with_suffix(".w"), **TINY), weights_only=True)
    network = {f"module.{k}": v for k, v in state.items()}
    torch.save({"network": network, "step": 1, "settings": settings}, path)
    return path


def test_a_training_checkpoint_brings_its_model_and_configuration(tmp_path):
    """Its settings count as an exported header's: a run trained with res_scale=1 loads
    strictly under the default 0.1 (no shape changes) and would be silently wrong."""
    trained = {**TINY, "res_scale": 1.0}
    run = _training_checkpoint(tmp_path / "run.pth", {"model": "DSen2-CR", "config": trained})
    found = weights.resolve(None, run)
    assert (found.model, found.config, found.sha256) == ("dsen2_cr", trained, file_sha256(run))
    assert weights.resolve("dsen2_cr", run, trained).config == trained
    with pytest.raises(ModelConfigError, match=r"'.*run.pth' were trained with .*'res_scale': 1"):
        weights.resolve("dsen2_cr", run, TINY)
    with pytest.raises(ModelConfigError, match="the weights .*run.pth' are for dsen2_cr"):
        weights.resolve("glf_cr", run)
    scene = m3rcr_xr.synthetic_scene((32, 32))
    out = m3rcr_xr.decloud(scene, checkpoint=run, tile=32)
    assert out.attrs["config"] == repr(dict(sorted(trained.items())))
    expected = m3rcr_xr.decloud(scene, "dsen2_cr", run, config=trained, tile=32)
    np.testing.assert_array_equal(out.values, expected.values)
    plain = _training_checkpoint(tmp_path / "plain.pth", None)  # no settings: those given
    assert weights.resolve(None, plain, trained).config == trained


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"model": "nosuch", "config": {}}, "run.pth: the training settings name an unknown"),
        ({"model": "dsen2_cr", "config": [1]}, "run.pth: the training settings' config is not"),
    ],
)
def test_wrong_training_settings_are_named(tmp_path, settings, says):
    with pytest.raises(CheckpointError, match=says):
        weights.resolve(None, _training_checkpoint(tmp_path / "run.pth", settings))


def test_a_misspelt_key_is_refused_with_weights_of_their_own(tmp_path):
    """Not taken as agreeing with the weights' configuration, which lacks it."""
    run = _training_checkpoint(tmp_path / "run.pth", {"model": "dsen2_cr", "config": TINY})
    exported = _safetensors(
        tmp_path / "run.safetensors",
        model="dsen2_cr",
        config=json.dumps(TINY),
        format=weights.EXPORT_FORMAT,
    )
    for checkpoint in (run, exported):
        with pytest.raises(ModelConfigError, match="unknown configuration key 'res_scal'"):
            weights.resolve(None, checkpoint, {**TINY, "res_scal": 1.0})
        with pytest.raises(ModelConfigError, match="res_scale=None must be a number"):
            weights.resolve(None, checkpoint, {**TINY, "res_scale": None})


def _safetensors(path: Path, **metadata: str) -> Path:
    """The TINY weights as a safetensors file with this header."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(seeded_checkpoint(path.with_suffix(".pt"), **TINY), weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=metadata)
    return path


@pytest.mark.parametrize("config", ["{not json", "[1, 2]", "null"])
def test_an_exported_header_with_a_bad_config_is_named(tmp_path, capsys, scene_store, config):
    path = _safetensors(
        tmp_path / "run.safetensors", model="dsen2_cr", config=config, format=weights.EXPORT_FORMAT
    )
    says = "run.safetensors: the header config is not a JSON object"
    with pytest.raises(CheckpointError, match=says):
        weights.read_weights(path)
    with pytest.raises(CheckpointError, match=says):
        weights.resolve(None, path)
    _fails(
        capsys,
        ["decloud", str(scene_store), str(tmp_path / "o.zarr"), "--checkpoint", str(path)],
        says,
    )


def test_an_exported_header_of_an_unknown_model_is_named(tmp_path):
    path = _safetensors(
        tmp_path / "run.safetensors", model="nosuch", config="{}", format="m3rcr_xr"
    )
    with pytest.raises(
        CheckpointError, match="run.safetensors: the header names an unknown model 'nosuch'"
    ):
        weights.resolve(None, path)


def test_another_tools_header_naming_its_model_is_not_ours(tmp_path):
    path = _safetensors(tmp_path / "lab.safetensors", format="pt", model="DSen2-CR (our lab)")
    assert weights.exported_weights(path) is None
    found = weights.resolve("dsen2_cr", path, TINY)
    assert (found.model, found.config, found.path) == ("dsen2_cr", TINY, path)
    assert m3rcr_xr.decloud(
        m3rcr_xr.synthetic_scene((32, 32)), checkpoint=path, config=TINY, tile=32
    ).shape == (4, 32, 32)


@pytest.mark.parametrize("name", [DEMO, "landcover_unet-demo"])
def test_the_shipped_weights_are_exported_ones(name):
    header = weights.exported_weights(weights.fetch(name))
    assert header is not None and header.metadata["format"] == weights.EXPORT_FORMAT
    assert (header.model, header.config) == (
        weights.entry(name).model,
        dict(weights.entry(name).config),
    )


def test_a_configuration_that_leaves_derived_arguments_out_agrees():
    demo = {"depth": 2, "features": 16}  # the demo classifier's, n_classes from its level
    assert weights.resolve(None, "landcover_unet-demo", demo).config["n_classes"] == 7
    with pytest.raises(ModelConfigError, match="were trained with"):
        weights.resolve(None, "landcover_unet-demo", {**demo, "level": 2})


# ----------------------------------------- an entry agrees with what its file carries
@pytest.fixture
def entry_of() -> Iterator[Callable[..., str]]:
    """Registers a file under a new name with a model and config, for this test only."""
    names: list[str] = []

    def registered(path: Path, config: dict, model: str = "dsen2_cr") -> str:
        names.append(f"lab-{len(names)}")
        sha256 = file_sha256(path)
        weights.register(WeightsEntry(names[-1], model, (path.as_uri(),), sha256, config=config))
        return names[-1]

    yield registered
    for name in names:
        weights.unregister(name)


def _carrying(kind: str, folder: Path, config: Mapping[str, object]) -> Path:
    """The TINY weights in a file that says they were trained with ``config``: exported
    by ``m3rcr train --export``, or a checkpoint of ``m3rcr train``."""
    if kind == "exported":
        return _safetensors(
            folder / "run.safetensors",
            model="dsen2_cr",
            config=json.dumps(config),
            format=weights.EXPORT_FORMAT,
        )
    return _training_checkpoint(folder / "run.pth", {"model": "dsen2_cr", "config": config})


@pytest.mark.parametrize("kind", ["exported", "training"])
@pytest.mark.parametrize(
    ("model", "config", "says"),
    [  # res_scale leaves the shapes alone: the weights would load and run another network
        ("dsen2_cr", {**TINY, "res_scale": 1.0}, "dsen2_cr with config {'n_resblocks': 1, "),
        ("glf_cr", {}, "glf_cr with config {}"),
    ],
    ids=["res_scale", "model"],
)
def test_an_entry_that_its_file_contradicts_is_refused(
    tmp_path, entry_of, kind, model, config, says
):
    path = _carrying(kind, tmp_path, TINY)
    name = entry_of(path, config, model)
    needles = (
        f"weights '{name}' (registered by m3rcr_xr.weights.register() in this process): "
        f"the entry says {says}",
        f"but its file {path} was trained as dsen2_cr with config {dict(TINY)}",
    )
    for call in (
        lambda: weights.resolve(None, name),
        lambda: m3rcr_xr.decloud(m3rcr_xr.synthetic_scene((32, 32)), checkpoint=name, tile=32),
    ):
        with pytest.raises(ModelConfigError) as caught:
            call()
        assert all(needle in str(caught.value) for needle in needles), caught.value


def test_the_refusal_of_an_entry_names_its_registry_file(
    tmp_path, monkeypatch, capsys, scene_store
):
    path = _carrying("exported", tmp_path, TINY)
    table = {"name": "from-file", "model": "dsen2_cr", "urls": [path.as_uri()]}
    table |= {"sha256": file_sha256(path), "config": {**TINY, "res_scale": 1.0}}
    file = tmp_path / "registry.json"
    file.write_text(json.dumps({"weights": [table]}))
    monkeypatch.setenv(weights.REGISTRY_ENV, str(file))
    says = f"weights 'from-file' (listed in {file} (${weights.REGISTRY_ENV})): the entry says"
    with pytest.raises(ModelConfigError, match=re.escape(says)):
        weights.resolve(None, "from-file")
    argv = ["decloud", str(scene_store), str(tmp_path / "o.zarr"), "--checkpoint", "from-file"]
    _fails(capsys, argv, says, str(path))
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("kind", ["exported", "training"])
@pytest.mark.parametrize("config", [TINY, {**TINY, "res_scale": 0.1, "kernel_size": 3}])
def test_an_entry_that_agrees_with_its_file_up_to_defaults_is_taken(
    tmp_path, entry_of, kind, config
):
    path = _carrying(kind, tmp_path, TINY)
    found = weights.resolve(None, entry_of(path, config))
    assert (found.model, found.config, found.path) == ("dsen2_cr", config, path)
    scene = m3rcr_xr.synthetic_scene((32, 32))
    by_name = m3rcr_xr.decloud(scene, checkpoint=found.label, tile=32)
    np.testing.assert_array_equal(
        by_name.values, m3rcr_xr.decloud(scene, checkpoint=path, tile=32).values
    )


@pytest.mark.parametrize("kind", ["bare", "published", "another tool's"])
def test_an_entry_of_a_file_that_carries_no_configuration_is_taken(tmp_path, tiny, entry_of, kind):
    """Nothing to compare: the entry's configuration applies, as before."""
    path = {
        "bare": lambda: tiny[0],
        "published": lambda: _training_checkpoint(tmp_path / "published.pth", None),
        "another tool's": lambda: _safetensors(tmp_path / "lab.safetensors", format="pt"),
    }[kind]()
    config = {**TINY, "res_scale": 1.0}
    assert weights.resolve(None, entry_of(path, config)).config == config


# ------------------------------------------- the bytes loaded are the bytes checked
def _replaced_after_hashing(monkeypatch, path: Path, other: Path) -> None:
    """Another process replaces ``path`` by ``other`` just after its hash is taken (a
    shared cache, a concurrent download of the same URL)."""
    from m3rcr_xr.weights import download

    def hash_then_replace(target):
        digest = file_sha256(target)
        shutil.copy(other, path)
        return digest

    monkeypatch.setattr(download, "file_sha256", hash_then_replace)


def test_a_checkpoint_replaced_after_its_hash_is_checked_is_never_loaded(
    tiny, tmp_path, monkeypatch
):
    import torch

    path, sha256 = tiny
    ref = runner.ModelRef.create("dsen2_cr", path, TINY)
    state = torch.load(path, weights_only=True)
    forged = tmp_path / "forged.pt"  # the same shapes: it would load unnoticed
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, forged)
    _replaced_after_hashing(monkeypatch, path, forged)
    runner.clear_model_cache()
    with pytest.raises(CheckpointError, match=f"expected {sha256}.*changed since it was checked"):
        ref.build()
    runner.clear_model_cache()


def test_an_exported_header_is_read_from_the_bytes_hashed(tmp_path, monkeypatch):
    """The configuration comes from the bytes whose hash the workers check, not from a
    file that replaced them (whose weights they would refuse, or, with the same shapes
    and another ``res_scale``, run under the wrong configuration)."""
    first = _safetensors(
        tmp_path / "run.safetensors",
        model="dsen2_cr",
        config=json.dumps(TINY),
        format=weights.EXPORT_FORMAT,
    )
    other = _safetensors(
        tmp_path / "other.safetensors",
        model="dsen2_cr",
        config=json.dumps({**TINY, "res_scale": 9.0}),
        format=weights.EXPORT_FORMAT,
    )
    _replaced_after_hashing(monkeypatch, first, other)
    with pytest.raises(CheckpointError, match="run.safetensors: SHA-256 mismatch"):
        weights.resolve(None, first)


def test_described_weights_load_the_bytes_described(tmp_path):
    path = weights.default_checkpoint().path
    mine = tmp_path / "demo.safetensors"
    shutil.copy(path, mine)
    described = weights.read_weights(mine)
    assert described.sha256 == file_sha256(path)
    assert described.load() is not None
    _safetensors(mine, model="dsen2_cr", config=json.dumps(TINY), format=weights.EXPORT_FORMAT)
    with pytest.raises(CheckpointError, match="demo.safetensors: SHA-256 mismatch"):
        described.load()


def test_an_exported_header_is_read_without_the_tensors(tmp_path):
    """Only the header is read (the tensors cut off do not matter), and the file hashed
    only where a hash is given."""
    path = _safetensors(
        tmp_path / "run.safetensors",
        model="dsen2_cr",
        config=json.dumps(TINY),
        format=weights.EXPORT_FORMAT,
    )
    data = path.read_bytes()
    path.write_bytes(data[: 8 + int.from_bytes(data[:8], "little") + 1])
    header = weights.exported_weights(path)
    assert (header.model, header.config, header.sha256) == ("dsen2_cr", TINY, None)
    sha256 = file_sha256(path)
    assert weights.exported_weights(path, sha256=sha256).sha256 == sha256
    assert weights.read_weights(path).sha256 == sha256


def test_training_settings_are_read_with_the_tensors_mapped(tmp_path, monkeypatch):
    """resolve looks at a training checkpoint's settings without reading its weights
    into memory (the workers load them)."""
    import torch

    run = _training_checkpoint(tmp_path / "run.pth", {"model": "dsen2_cr", "config": TINY})
    loads = []
    real = torch.load

    def recorded(*args, **kwargs):
        loads.append(kwargs.get("mmap"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recorded)
    assert weights.resolve(None, run).config == TINY
    assert loads == [True]


# ------------------------------------------- configurations refused at the entry
def test_a_configuration_is_refused_before_any_weights_are_fetched(closed_port):
    url = f"http://127.0.0.1:{closed_port}/w.pt"
    says = "unknown configuration key 'n_resblock'; known: n_resblocks, n_feats"
    for model, checkpoint in [("dsen2_cr", url), (None, "untrained"), (None, DEMO)]:
        with pytest.raises(ModelConfigError, match=says):
            weights.resolve(model, checkpoint, {"n_resblock": 4})
    with pytest.raises(ModelConfigError, match="118,016,000,023,300 parameters"):
        weights.resolve(None, "untrained", {"n_resblocks": 100_000_000})


def test_decloud_refuses_a_configuration_before_opening_the_data(tmp_path, capsys, monkeypatch):
    from m3rcr_xr import store

    def no_data(*args, **kwargs):
        raise AssertionError("the data were opened")

    monkeypatch.setattr(store, "open_zarr", no_data)
    argv = ["decloud", str(tmp_path / "in.zarr"), str(tmp_path / "o.zarr")]
    _fails(capsys, [*argv, "--config", "n_resblock=4"], "'n_resblock'", "known: n_resblocks")
    _fails(capsys, [*argv, "--checkpoint", DEMO, "--config", "n_feats=0.5"], "n_feats=0.5")
    _fails(capsys, [*argv, "--config", "n_resblocks=100000000"], "parameters, more than")
    _fails(
        capsys,
        ["evaluate", str(tmp_path / "s.zarr"), "--semantic", "--classifier-config", "dept=2"],
        "'dept'",
        "known: level, n_classes, depth, features",
    )
    assert not (tmp_path / "o.zarr").exists()
