"""An HTTP file server with range requests, for :func:`m3rcr_xr.testing.serve_directory`.

Run as a script (``python _range_server.py ROOT [--query QUERY] [--refuse STATUS]
[--no-last-modified]``): it prints its port, then serves the files under ROOT on
127.0.0.1 until killed. Python's own server answers a range request with the whole
file; GDAL's ``/vsicurl/`` reads files by ranges. With QUERY, a request whose query
string is not exactly QUERY, byte for byte, is refused with STATUS (403, as S3 answers
a presigned URL whose signature does not match or has expired; 401, as a server that
wants credentials).
Python's server sends ``Last-Modified`` and no ``ETag``; with ``--no-last-modified``,
neither, as a server that tells nothing of a file's version.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class _RangeRequestHandler(SimpleHTTPRequestHandler):
    """Python's file server, plus the HTTP range requests GDAL's ``/vsicurl/`` makes."""

    #: the query string every request must carry; None: any
    query: str | None = None
    #: the status that refuses a request without that query string
    refuse = 403
    #: whether responses carry the file's Last-Modified header
    last_modified = True

    def send_header(self, keyword: str, value: str) -> None:
        if self.last_modified or keyword.lower() != "last-modified":
            super().send_header(keyword, value)

    def send_head(self) -> Any:
        if self.query is not None and urlsplit(self.path).query != self.query:
            self.send_error(self.refuse, "signature does not match or has expired")
            return None
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if wanted and wanted[2] and int(wanted[2]) < int(wanted[1]):
            wanted = None  # an invalid range (end before start): ignored (RFC 9110), whole file
        path = self.translate_path(self.path)
        if wanted is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(wanted[1])
        end = min(int(wanted[2]) if wanted[2] else size - 1, size - 1)
        if start >= size:
            self.send_error(416, "range not satisfiable")
            return None
        with open(path, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the files, not the log."""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--query")
    parser.add_argument("--refuse", type=int, default=403)
    parser.add_argument("--no-last-modified", dest="last_modified", action="store_false")
    args = parser.parse_args(argv)
    _RangeRequestHandler.query = args.query
    _RangeRequestHandler.refuse = args.refuse
    _RangeRequestHandler.last_modified = args.last_modified
    handler = partial(_RangeRequestHandler, directory=args.root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
