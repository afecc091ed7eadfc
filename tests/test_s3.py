"""Zarr stores on S3-compatible object storage, through fsspec/s3fs.

An S3 server (moto in server mode: real HTTP; fixtures ``endpoint`` and ``bucket`` in
conftest) runs on loopback; the library is given nothing but ``s3://`` URLs, and s3fs
takes the credentials and the endpoint from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3``), as it would on a cloud machine or an
HPC login node.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import s3fs
import xarray as xr
from distributed import Client

import m3rcr_xr
from m3rcr_xr import identity, locks
from m3rcr_xr.cli import main
from m3rcr_xr.cluster import local_cluster
from m3rcr_xr.exceptions import StoreError
from m3rcr_xr.location import Target
from m3rcr_xr.store import writing
from tests.conftest import TINY, forbid_head_bucket, killed_writer


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    xr.testing.assert_identical(
        a.drop_vars("spatial_ref").compute(), b.drop_vars("spatial_ref").compute()
    )
    assert a.rio.crs == b.rio.crs and a.rio.transform() == b.rio.transform()


def test_a_scene_goes_to_s3_and_back(bucket):
    scene = m3rcr_xr.synthetic_scene((300, 260), seed=5, chunks=128)
    url = f"s3://{bucket}/scene.zarr"
    m3rcr_xr.to_zarr(scene, url)
    assert m3rcr_xr.is_complete(url)
    assert "scene.zarr/zarr.json" in " ".join(s3fs.S3FileSystem().ls(f"{bucket}/scene.zarr"))
    _same(m3rcr_xr.open_zarr(url), scene)


def _dies_on_second_step(monkeypatch) -> list[slice]:
    """Every step of the writes that follow recorded (the regions of the list returned),
    and the second one raised instead of written."""
    write_step = writing._write_step
    calls: list[slice] = []

    def dies_on_second_step(ds, where, dim, region, show=False):
        calls.append(region)
        if len(calls) == 2:
            raise RuntimeError("killed half-way")
        write_step(ds, where, dim, region, show)

    monkeypatch.setattr(writing, "_write_step", dies_on_second_step)
    return calls


def test_an_interrupted_write_to_s3_resumes(bucket, monkeypatch):
    scene = m3rcr_xr.synthetic_scene((144, 16), seed=6, chunks=16)
    url = f"s3://{bucket}/resumed.zarr"
    write_step = writing._write_step
    with m3rcr_xr.set_options(scene_chunk=16):
        calls = _dies_on_second_step(monkeypatch)
        with pytest.raises(RuntimeError, match="half-way"):
            m3rcr_xr.to_zarr(scene, url)
        with pytest.raises(StoreError, match="incomplete"):
            m3rcr_xr.open_zarr(url)
        monkeypatch.setattr(writing, "_write_step", write_step)
        m3rcr_xr.to_zarr(scene, url)
    assert len(calls) == 2
    _same(m3rcr_xr.open_zarr(url), scene)


def test_the_command_line_ingests_a_split_to_s3(bucket, samples_dir, capsys):
    url = f"s3://{bucket}/test.zarr"
    assert main(["ingest", str(samples_dir / "test"), url]) == 0
    assert main(["info", url]) == 0
    assert "collection: 1 patches of 300x300 px; EPSG [32736]" in capsys.readouterr().out
    assert m3rcr_xr.open_zarr(url).patch.values.tolist() == ["summer_33_p_1"]


def test_no_store_there_is_a_store_error(bucket):
    with pytest.raises(StoreError, match="no Zarr store"):
        m3rcr_xr.open_zarr(f"s3://{bucket}/missing.zarr")


@pytest.mark.slow
def test_decloud_and_evaluate_on_s3_from_worker_processes(bucket, tiny_checkpoint, forked_workers):
    """Workers in other processes read and write S3 with the environment's credentials."""
    scene = m3rcr_xr.synthetic_scene((256, 256), seed=7, chunks=128)
    with m3rcr_xr.set_options(scene_chunk=128):
        m3rcr_xr.to_zarr(scene, f"s3://{bucket}/scene.zarr")
    with (
        forked_workers(),  # the credentials reach them as the test's environment
        local_cluster(2, gpus=0, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        ds = m3rcr_xr.open_zarr(f"s3://{bucket}/scene.zarr")
        out = m3rcr_xr.decloud(ds, "dsen2_cr", tiny_checkpoint, config=TINY, tile=64)
        m3rcr_xr.to_zarr(out.to_dataset(), f"s3://{bucket}/decloud.zarr")
        pred = m3rcr_xr.open_zarr(f"s3://{bucket}/decloud.zarr", validate_schema=False)
        remote = m3rcr_xr.evaluate(ds.assign(decloud=pred["decloud"]))
    local_pred = m3rcr_xr.decloud(scene, "dsen2_cr", tiny_checkpoint, config=TINY, tile=64).compute(
        scheduler="threads"
    )
    np.testing.assert_allclose(pred["decloud"].values, local_pred.values, atol=0.1)
    local = m3rcr_xr.evaluate(scene.assign(decloud=local_pred))
    xr.testing.assert_allclose(remote, local, rtol=1e-4)
    assert float(remote.PSNR.sel(stratum="all", landcover_class="all")) > 0


def test_s3_keeps_other_objects_and_one_writer(bucket):
    """The destination rules and the writer's marker (a conditional write) on S3."""
    fs = s3fs.S3FileSystem()
    scene = m3rcr_xr.synthetic_scene((64, 48), seed=8)
    fs.pipe_file(f"{bucket}/theirs/notes.txt", b"my notes")
    with pytest.raises(StoreError, match="a folder of other files"):
        m3rcr_xr.to_zarr(scene, f"s3://{bucket}/theirs", overwrite=True)
    assert fs.ls(f"{bucket}/theirs", refresh=True) == [f"{bucket}/theirs/notes.txt"]
    assert fs.cat_file(f"{bucket}/theirs/notes.txt") == b"my notes"

    url = f"s3://{bucket}/scene.zarr"
    held = pytest.raises(StoreError, match="another writer is writing this store.*delete the")
    with locks.locked(Target.of(url)), held:
        m3rcr_xr.to_zarr(scene, url)
    m3rcr_xr.to_zarr(scene, url)
    assert m3rcr_xr.is_complete(url)
    assert not fs.exists(f"{bucket}/scene.zarr/{locks.LOCK}")


def test_a_write_killed_on_s3_resumes_over_the_marker_it_left(bucket, monkeypatch, caplog):
    """A writer killed (SIGKILL, the OOM killer) leaves its marker; a rerun on the same
    machine takes it over, with a warning, and resumes."""
    scene = m3rcr_xr.synthetic_scene((144, 16), seed=6, chunks=16)
    url, marker = f"s3://{bucket}/killed.zarr", f"{bucket}/killed.zarr/{locks.LOCK}"
    with m3rcr_xr.set_options(scene_chunk=16):
        calls = _dies_on_second_step(monkeypatch)
        with pytest.raises(RuntimeError, match="half-way"):
            m3rcr_xr.to_zarr(scene, url)
        dead = killed_writer()  # a kill, unlike this error, leaves the marker
        s3fs.S3FileSystem().pipe_file(marker, json.dumps(dead).encode())
        m3rcr_xr.to_zarr(scene, url)
    assert calls[0] not in calls[2:] and len(calls) > 2  # the step written is kept
    _same(m3rcr_xr.open_zarr(url), scene)
    assert not s3fs.S3FileSystem().exists(marker)
    assert not s3fs.S3FileSystem().exists(marker.replace(locks.LOCK, locks.TAKEOVER))
    assert f"of a writer that is no longer running (host {dead['host']}, pid {dead['pid']}" in (
        caplog.text
    )


def _options_only(monkeypatch, endpoint: str) -> dict:
    """The bucket's credentials and endpoint as storage_options, none in the environment."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # nothing leaves this machine
    s3fs.S3FileSystem.clear_instance_cache()
    return {
        "key": "m3rcr-test-key",
        "secret": "m3rcr-test-secret",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def test_storage_options_reach_the_file_system(bucket, endpoint, monkeypatch):
    """Credentials and endpoint given as storage_options, none in the environment."""
    options = _options_only(monkeypatch, endpoint)
    scene = m3rcr_xr.synthetic_scene((64, 48), seed=9)
    url = f"s3://{bucket}/options.zarr"
    m3rcr_xr.to_zarr(scene, url, storage_options=options)
    assert m3rcr_xr.is_complete(url, storage_options=options)
    _same(m3rcr_xr.open_zarr(url, storage_options=options), scene)
    with pytest.raises(StoreError, match="a complete store exists"):
        m3rcr_xr.to_zarr(scene, url, storage_options=options)


def test_data_read_with_storage_options_can_be_written(bucket, endpoint, monkeypatch, tmp_path):
    """The source is reached again, to identify it, with the options it was opened
    with, also through decloud; the secret is neither printed nor written."""
    options = _options_only(monkeypatch, endpoint)
    scene = m3rcr_xr.synthetic_scene((64, 64), seed=10)
    m3rcr_xr.to_zarr(scene, f"s3://{bucket}/src.zarr", storage_options=options)
    ds = m3rcr_xr.open_zarr(f"s3://{bucket}/src.zarr", storage_options=options)
    out = m3rcr_xr.decloud(
        ds, "dsen2_cr", checkpoint="untrained", config={"n_resblocks": 1, "n_feats": 8}, tile=32
    )
    m3rcr_xr.to_zarr(ds, tmp_path / "copy.zarr")
    m3rcr_xr.to_zarr(out.to_dataset(), tmp_path / "decloud.zarr")
    _same(m3rcr_xr.open_zarr(tmp_path / "copy.zarr"), scene)
    secret = options["secret"]
    assert secret not in repr(ds.encoding) + repr(ds["cloudy"].encoding) + str(
        identity.sources(out)
    )
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20 and not any(secret.encode() in data for data in written)


def test_a_source_out_of_reach_is_a_store_error_naming_it(bucket, endpoint, monkeypatch, tmp_path):
    """A source named without its options (as xarray's own open_zarr records it) and no
    credentials in the environment: it cannot be identified, and nothing is written."""
    _options_only(monkeypatch, endpoint)
    url = f"s3://{bucket}/src.zarr"
    scene = m3rcr_xr.synthetic_scene((64, 48), seed=11)
    scene.encoding["source"] = url
    message = rf"^{url}: cannot reach the input \(Unable to locate credentials\)$"
    with pytest.raises(StoreError, match=message):
        m3rcr_xr.to_zarr(scene, tmp_path / "copy.zarr")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_bucket_is_named_before_anything_is_written(bucket, tmp_path, capsys):
    """Not the client's FileNotFoundError from the writer's first object (its lock)."""
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=12)
    url = "s3://no-such-bucket/s.zarr"
    with pytest.raises(StoreError, match=rf"^{url}: bucket no-such-bucket does not exist$"):
        m3rcr_xr.to_zarr(scene, url)
    m3rcr_xr.to_zarr(scene, tmp_path / "in.zarr")
    argv = ["decloud", str(tmp_path / "in.zarr"), url, "--checkpoint", "untrained"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"m3rcr decloud: error: {url}: bucket no-such-bucket does not exist\n"


def test_a_principal_that_may_not_query_the_bucket_writes_under_its_prefix(bucket, monkeypatch):
    """Only a bucket that does not exist is refused; a 403 on the bucket itself is not
    (the user may write the prefix): the write decides."""
    forbid_head_bucket(monkeypatch)
    with pytest.raises(PermissionError):  # the refusal is in place
        s3fs.S3FileSystem().info(bucket)
    scene = m3rcr_xr.synthetic_scene((32, 32), seed=3)
    url = f"s3://{bucket}/team-a/scene.zarr"
    m3rcr_xr.to_zarr(scene, url)
    _same(m3rcr_xr.open_zarr(url), scene)
