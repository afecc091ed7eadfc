"""Where the data lives (m3rcr_xr.href): joins that stay under the data root."""

import pytest

from m3rcr_xr import href
from m3rcr_xr.exceptions import InputFileError, UnsafePathError

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
