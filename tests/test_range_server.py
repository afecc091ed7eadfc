"""The test file server of m3rcr_xr.testing.serve_directory: HTTP range requests."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest

from m3rcr_xr.testing import serve_directory


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "f.bin").write_bytes(bytes(range(100)))
    with serve_directory(root) as url:
        yield urlsplit(url)


def _get(server, byte_range: str) -> tuple[int, str | None, bytes]:
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=10)
    try:
        connection.request("GET", "/f.bin", headers={"Range": byte_range})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Range"), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("byte_range", "status", "content_range", "body"),
    [
        ("bytes=10-19", 206, "bytes 10-19/100", bytes(range(10, 20))),
        ("bytes=95-", 206, "bytes 95-99/100", bytes(range(95, 100))),
        ("bytes=10-5", 200, None, bytes(range(100))),  # invalid: ignored (RFC 9110)
    ],
    ids=["closed", "open-ended", "reversed"],
)
def test_a_range_is_served_and_an_invalid_one_ignored(
    server, byte_range, status, content_range, body
):
    assert _get(server, byte_range) == (status, content_range, body)


@pytest.mark.parametrize("refuse", [403, 401])
def test_a_required_query_string_is_compared_as_sent(tmp_path, refuse):
    (tmp_path / "f.bin").write_bytes(b"data")
    with serve_directory(tmp_path, query="sig=a%2Fb", refuse=refuse) as url:
        served = urlsplit(url)
        statuses = []
        for target in ("/f.bin?sig=a%2Fb", "/f.bin?sig=a/b", "/f.bin"):
            connection = http.client.HTTPConnection(served.hostname, served.port, timeout=10)
            connection.request("GET", target)
            statuses.append(connection.getresponse().status)
            connection.close()
    assert statuses == [200, refuse, refuse]
