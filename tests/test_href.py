"""Where the data lives (m3rcr_xr.href): joins that stay under the data root."""

import traceback

import fsspec
import pytest
import s3fs

from m3rcr_xr import href
from m3rcr_xr.exceptions import AccessDeniedError, InputFileError, UnsafePathError
from m3rcr_xr.testing import serve_directory
from tests.conftest import EXPIRED, PRESIGNED, assert_no_credential

ROOT = "https://example.org/m3rcr/test"


@pytest.mark.parametrize(
    "relative", ["%2e%2e/train/a.tif", "%2E%2E/train/a.tif", "..%2ftrain/a.tif"]
)
def test_percent_encoded_dot_segments_cannot_escape_a_remote_root(relative):
    with pytest.raises(UnsafePathError, match=f"{relative}: path escapes the data root {ROOT}"):
        href.join(ROOT, relative)


def test_percent_encoded_names_under_a_remote_root_are_kept():
    assert href.join(ROOT, "S1/a%20b.tif") == f"{ROOT}/S1/a%20b.tif"


@pytest.mark.parametrize("remote", [False, True])
def test_a_nul_byte_is_refused_naming_the_entry(tmp_path, remote):
    with pytest.raises(UnsafePathError, match=r"'a/c\\x00m.npy': a NUL byte"):
        href.join(ROOT if remote else tmp_path, "a/c\0m.npy")


def test_a_percent_encoded_nul_byte_is_refused_under_a_remote_root_only(tmp_path):
    with pytest.raises(UnsafePathError, match="'a/c%00m.npy': a percent-encoded NUL byte"):
        href.join(ROOT, "a/c%00m.npy")
    assert href.join(tmp_path, "a/c%00m.npy") == tmp_path.resolve() / "a/c%00m.npy"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:S3CRET@h/a.tif", "https://alice@h/a.tif"),
        ("https://alice:S3@CRET@h/a@b.tif", "https://alice@h/a@b.tif"),  # "@" in it
        (
            "https://b.s3.amazonaws.com/a.tif?X-Amz-Credential=AKID&X-Amz-Signature=S3CRET"
            "&X-Amz-Security-Token=T0K&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/a.tif?X-Amz-Credential=...&X-Amz-Signature=..."
            "&X-Amz-Security-Token=...&X-Amz-Expires=60",
        ),
        ("https://h/a.tif?sv=2022&sig=S3CRET", "https://h/a.tif?sv=2022&sig=..."),
        ("https://h/a.tif?token=S3CRET", "https://h/a.tif?token=..."),
        ("s3://bucket/a.tif", "s3://bucket/a.tif"),
        ("data/a.tif", "data/a.tif"),
    ],
)
def test_redacted_hides_passwords_and_presigned_credentials(url, shown):
    assert href.redacted(url) == shown


def test_no_error_message_holds_a_url_credential():
    cause = "HTTP 403 (/vsicurl/https://u:S3CRET@h/a.tif?sig=S3CRET)"
    err = InputFileError(f"https://u:S3CRET@h/a.tif?token=S3CRET: cannot be read ({cause})")
    assert "S3CRET" not in str(err)
    assert str(err).startswith("https://u@h/a.tif?token=...: cannot be read")


# ------------------------------------------------------------ presigned URLs
def test_a_presigned_url_is_requested_as_written(tmp_path):
    """Its query string byte for byte (aiohttp would decode %2F: the signature fails)."""
    (tmp_path / "item.json").write_bytes(b'{"type": "Feature"}')
    with serve_directory(tmp_path, query=PRESIGNED) as url:
        assert href.is_file(f"{url}/item.json?{PRESIGNED}")
        assert href.read_bytes(f"{url}/item.json?{PRESIGNED}", "STAC JSON") == (
            b'{"type": "Feature"}'
        )


@pytest.mark.parametrize(("status", "phrase"), [(403, "Forbidden"), (401, "Unauthorized")])
def test_a_refused_url_is_access_denied_not_missing(tmp_path, status, phrase):
    """A 401 or 403 says nothing of the file: it is no "does not exist"; a presigned
    URL's message says its signature may have expired. A 404 is still no file."""
    (tmp_path / "item.json").write_bytes(b"{}")
    refused = f"cannot be read: access refused \\(HTTP {status} {phrase}\\)"
    expired = "; the URL is presigned: its signature may have expired"
    with serve_directory(tmp_path, query=PRESIGNED, refuse=status) as url:
        with pytest.raises(AccessDeniedError, match=f"item.json\\?.*: {refused}{expired}$") as err:
            href.is_file(f"{url}/item.json?{EXPIRED}")
        assert_no_credential(err.value)
        with pytest.raises(AccessDeniedError, match=f"STAC JSON {refused}{expired}$") as err:
            href.read_bytes(f"{url}/item.json?{EXPIRED}", "STAC JSON")
        assert_no_credential(err.value)
        with pytest.raises(AccessDeniedError, match=f"^{url}/item.json: folder {refused}$"):
            href.is_dir(f"{url}/item.json", "folder")  # not presigned: nothing may expire
        assert not href.is_file(f"{url}/gone.json?{PRESIGNED}")
    assert isinstance(err.value, PermissionError)


def test_an_object_store_that_refuses_access_is_access_denied(tmp_path, monkeypatch):
    """s3fs, gcsfs and adlfs raise ``PermissionError`` for a 403 (S3's AccessDenied): a
    key that may not be read is no key that does not exist. A local file that may not be
    read is no server's refusal."""

    class Refusing:
        def info(self, path):
            raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(href, "filesystem", lambda url: (Refusing(), str(url)[5:]))
    refused = r"^s3://b/mask.tif: cloudmask cannot be read: access refused \(HTTP 403 Forbidden\)$"
    with pytest.raises(AccessDeniedError, match=refused):
        href.is_file("s3://b/mask.tif", "cloudmask")
    href.raise_if_refused(tmp_path / "a.tif", PermissionError(13, "Permission denied"))


@pytest.mark.parametrize(
    ("query", "presigned"),
    [
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=60&X-Amz-Signature=9f", True),
        ("AWSAccessKeyId=AKID&Expires=1700000000&Signature=9f%3D", True),  # S3 V2
        ("X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=9f", True),
        ("sv=2022-11-02&se=2024-01-01T00%3A00Z&sp=r&sig=9f%3D", True),  # Azure SAS
        ("x-amz-signature=9f", True),
        ("version=2&signed=true", False),
        ("", False),
    ],
)
def test_a_presigned_url_is_told_by_its_signature_parameters(query, presigned):
    assert href.is_presigned(f"https://h/a.tif?{query}") is presigned
    assert not href.is_presigned(f"data/a.tif?{query}")  # a local name may hold a "?"


def test_a_url_is_requested_with_only_what_no_url_may_hold_encoded():
    _, path = href.filesystem("https://h/m3rcr test/é.json?sig=a%2Fb+c&v=[1]")
    assert path == "https://h/m3rcr%20test/%C3%A9.json?sig=a%2Fb+c&v=[1]"


def test_a_glob_under_a_root_takes_its_name_literally():
    fs = fsspec.filesystem("memory")
    fs.pipe({"/m3rcr/t?st[1]/a.tif": b"1", "/m3rcr/tzst1/b.tif": b"2"})
    try:
        assert href.glob("memory://m3rcr/t?st[1]", "*.tif") == ["a.tif"]
    finally:
        fs.rm("/m3rcr", recursive=True)


def test_a_cause_quoting_a_credential_is_left_out_of_the_traceback():
    def wrapped(cause: Exception) -> InputFileError:
        try:
            raise cause
        except OSError as err:
            try:
                raise InputFileError(f"a.json: cannot be read ({err})") from href.cause(err)
            except InputFileError as wrapper:
                return wrapper

    plain = wrapped(OSError("https://h/a.json: 404"))
    assert plain.__cause__ is not None
    assert "OSError: https://h/a.json: 404" in "".join(traceback.format_exception(plain))
    inner = ValueError(f"https://h/a.json?{PRESIGNED}")  # deeper in the chain
    outer = OSError("HTTP error")
    outer.__cause__ = inner
    for secret in (OSError(f"https://h/a.json?{PRESIGNED}: 403"), outer):
        assert "S1GN" not in "".join(traceback.format_exception(wrapped(secret)))


def test_an_s3_key_with_glob_characters_is_read_as_named(bucket):
    s3fs.S3FileSystem().pipe(f"{bucket}/a?b[1].json", b"{}")
    assert href.is_file(f"s3://{bucket}/a?b[1].json")
    assert href.read_bytes(f"s3://{bucket}/a?b[1].json", "STAC JSON") == b"{}"


def test_a_file_url_of_another_host_is_refused_not_read_as_a_local_path(tmp_path):
    """``file://server/data/a.tif`` named ``/data/a.tif`` of this machine (and fsspec
    took ``file://localhost/p`` for ``./localhost/p``): another file than the one meant."""
    assert href.local_path(f"file://localhost{tmp_path}/a.tif") == tmp_path / "a.tif"
    assert href.local_path(f"file://LOCALHOST{tmp_path}/a.tif") == tmp_path / "a.tif"
    with pytest.raises(InputFileError, match=r"^file://server/data/a.tif: a file:// URL of"):
        href.local_path("file://server/data/a.tif")
