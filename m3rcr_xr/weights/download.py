"""Getting weights files: from a path, a ``file://`` URL, or a download into the cache.

Downloads go through `pooch <https://www.fatiando.org/pooch>`_: http(s), ftp and DOI
URLs with its own downloaders, any other fsspec protocol (``s3://``, ``gs://``...) by
streaming through fsspec. pooch writes a temporary file beside the destination and
moves it into place only once its SHA-256 matches, so an interrupted or failed download
leaves nothing behind, and a file in the cache is always a whole one.

Without a hash, only the transfer can tell a whole file: an HTTP response with neither
``Content-Length`` nor chunked encoding ends when the server closes the connection, and
a download cut short looks whole. Such a download (no hash given, none recorded) is
used once, from ``unverified-NAME`` beside the URL's file in the cache, with a warning:
its hash is not recorded and the next fetch without a hash downloads it again.

The cache is the ``weights_cache`` option if set, else the ``M3RCR_CACHE`` environment
variable, else ``pooch.os_cache("m3rcr_xr")`` (``~/.cache/m3rcr_xr`` on Linux). Workers
of a cluster use their own (set the variable in their environment to share one).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..exceptions import CheckpointError, UsageError, argument
from ..href import local_path, redacted
from ..options import OPTIONS

__all__ = ["CACHE_ENV", "cache_dir", "cached_file", "fetch_url", "file_sha256", "split_url"]

log = logging.getLogger(__name__)

#: environment variable naming the download cache (the ``weights_cache`` option wins)
CACHE_ENV = "M3RCR_CACHE"
#: URL schemes pooch downloads itself; any other goes through fsspec
_POOCH_SCHEMES = frozenset({"http", "https", "ftp", "sftp", "doi"})
_SHA256 = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file (hex), so that a worker never runs weights that changed.

    Raises
    ------
    CheckpointError
        The file is missing or unreadable.
    """
    from ..models.checkpoint import open_verified

    with open_verified(path, digest=True) as opened:
        return str(opened.sha256)


def check_sha256(value: str | None, name: str = "known_hash") -> str | None:
    """``value`` as 64 lower-case hex digits (``"sha256:"`` prefix allowed), or None.

    Raises
    ------
    UsageError
        Not a SHA-256, naming the argument.
    """
    if value is None:
        return None
    match = _SHA256.fullmatch(str(value).strip())
    if match is None:
        raise UsageError(f"{argument(name, value)}: not a SHA-256 (64 hex digits)")
    return match.group(1).lower()


def split_url(url: str) -> tuple[str, str | None]:
    """A URL without its ``#sha256=HEX`` fragment, and that hash (None without one).

    Examples
    --------
    >>> split_url("https://example.org/w.pth#sha256=" + "ab" * 32)[0]
    'https://example.org/w.pth'
    >>> split_url("s3://bucket/w.pth")
    ('s3://bucket/w.pth', None)
    """
    parts = urlsplit(url)
    if not parts.fragment:
        return url, None
    key, _, value = parts.fragment.partition("=")
    if key != "sha256":
        raise UsageError(f"{url}: the only URL fragment understood is #sha256=HEX")
    if _SHA256.fullmatch(value) is None:
        raise UsageError(f"{url}: the #sha256= fragment is not a SHA-256 (64 hex digits)")
    return urlunsplit(parts._replace(fragment="")), check_sha256(value)


def cache_dir() -> Path:
    """Where downloaded weights go: option ``weights_cache``, else ``$M3RCR_CACHE``, else
    ``pooch.os_cache("m3rcr_xr")``."""
    import pooch

    chosen = OPTIONS["weights_cache"] or os.environ.get(CACHE_ENV)
    return Path(chosen).expanduser() if chosen else Path(pooch.os_cache("m3rcr_xr"))


def cached_file(url: str) -> Path:
    """The file a download of ``url`` lands in (whether it is there yet or not)."""
    import pooch

    return cache_dir() / pooch.utils.unique_file_name(split_url(url)[0])


def _local_path(url: str) -> Path:
    """The file a ``file://`` URL names (:func:`~m3rcr_xr.href.local_path`), which must
    be on this machine: no host but ``localhost``."""
    if urlsplit(url).netloc not in ("", "localhost"):
        raise CheckpointError(f"{url}: a file:// URL must name a local file (no host)")
    return local_path(url)


def check_file(path: Path, known_hash: str | None, source: str) -> str:
    """The SHA-256 of an existing file, checked against ``known_hash`` when given.

    Raises
    ------
    CheckpointError
        The file does not exist, or its hash is not ``known_hash`` (both named). The file
        is left alone: it is the user's.
    """
    from ..models.checkpoint import check_digest, check_is_file

    check_is_file(path, source)
    actual = file_sha256(path)
    check_digest(source, known_hash, actual)
    return actual


def _fsspec_download(url: str, output_file: str, pooch_obj: Any, check_only: bool = False) -> Any:
    """A pooch downloader for any fsspec URL (``s3://`` with s3fs...)."""
    import fsspec

    if check_only:
        return fsspec.core.url_to_fs(url)[0].exists(url)
    with fsspec.open(url, "rb") as source, open(output_file, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    return None


class _Recorder:
    """Wraps a pooch downloader to keep the hash of what it wrote: pooch deletes a file
    whose hash does not match, and our error names the hash it had. For HTTP, also
    whether the response's length was known (:meth:`framing`)."""

    def __init__(self, download: Callable[..., Any] = _fsspec_download) -> None:
        self.download = download
        self.sha256: str | None = None
        self.whole = True  # False: nothing told where the body ends, but a closed connection

    def framing(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        """A requests response hook: a body with neither ``Content-Length`` nor chunked
        encoding ends when the server closes the connection, so a download cut short
        looks whole (requests raises for a short body of the other two)."""
        encoding = response.headers.get("Transfer-Encoding", "").lower()
        self.whole = "Content-Length" in response.headers or "chunked" in encoding
        return response

    def __call__(self, url: str, output_file: str, pooch_obj: Any, **kwargs: Any) -> Any:
        result = self.download(url, output_file, pooch_obj, **kwargs)
        self.sha256 = file_sha256(output_file)
        return result


def fetch_url(url: str, known_hash: str | None = None) -> tuple[Path, str]:
    """The local file of ``url`` and its SHA-256, downloaded into the cache if needed.

    A ``file://`` URL is read in place. A download whose hash is not ``known_hash`` is
    deleted; a cached file whose hash is not ``known_hash`` is downloaded again. Without
    ``known_hash`` (nor a ``#sha256=`` fragment), the hash of the first download is
    recorded beside it in the cache and stands for ``known_hash`` from then on: a cached
    file changed since is downloaded again, and a URL that now serves another file is
    refused. An HTTP download without a hash whose length the server did not give (see
    the module's docstring) is neither recorded nor kept as the URL's file.

    Raises
    ------
    CheckpointError
        Naming the URL: a hash mismatch (expected and actual), or a download that
        failed (nothing is left in the cache).
    """
    url, fragment_hash = split_url(url)
    if known_hash and fragment_hash and known_hash != fragment_hash:
        raise CheckpointError(f"{url}: two different hashes given ({known_hash}, {fragment_hash})")
    known_hash = known_hash or fragment_hash
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        path = _local_path(url)
        return path, check_file(path, known_hash, url)
    record = _hash_record(url)
    recorded = record.read_text().strip() if known_hash is None and record.is_file() else None
    if recorded is not None and _SHA256.fullmatch(recorded) is None:
        raise CheckpointError(f"{record}: not a SHA-256; delete it to fetch {url} anew")
    path, sha256, whole = _download(url, known_hash or recorded, scheme, recorded is not None)
    if known_hash is None and recorded is None:
        if not whole:
            return _unproven(url, path), sha256
        _record(url, record, sha256)
    return path, sha256


def _record(url: str, record: Path, sha256: str) -> None:
    """Keep ``sha256`` in ``record``, checked by every later fetch of ``url`` without a
    hash; a cache that cannot be written (a read-only shared one) only loses that check."""
    try:
        record.write_text(sha256 + "\n")
    except OSError as exc:
        log.warning(
            "%s: cannot record its SHA-256 in %s (%s); later fetches without a hash will "
            "not check the cached file",
            redacted(url),
            record,
            exc,
        )


def _hash_record(url: str) -> Path:
    """Where the hash of ``url``'s first download (fetched without one) is kept."""
    cached = cached_file(url)
    return cached.with_name(f"{cached.name}.sha256")


def _download(
    url: str, known_hash: str | None, scheme: str, recorded: bool
) -> tuple[Path, str, bool]:
    """``url`` into the cache through pooch (again if the cached file is not
    ``known_hash``, which was ``recorded`` at its first download or given), its SHA-256,
    and False for a download whose end only a closed connection marked (see
    :meth:`_Recorder.framing`)."""
    import pooch

    recorder = _Recorder()
    show = OPTIONS["progress"] and scheme != "doi"
    if scheme in ("http", "https"):
        hooks = {"response": recorder.framing}
        recorder.download = pooch.HTTPDownloader(progressbar=show, hooks=hooks)
    elif scheme in _POOCH_SCHEMES:
        recorder.download = pooch.downloaders.choose_downloader(url, progressbar=show)
    # pooch logs through a stderr handler of its own, bound to the stream of the moment;
    # the download is logged here, through logging, instead
    pooch.get_logger().setLevel(logging.WARNING)
    log.info("fetching %s into %s", redacted(url), cache_dir())
    try:
        path = pooch.retrieve(
            url,
            known_hash=None if known_hash is None else f"sha256:{known_hash}",
            path=cache_dir(),
            downloader=recorder,
        )
    except ValueError as exc:
        if recorder.sha256 is None or recorder.sha256 == known_hash:
            raise CheckpointError(f"{url}: cannot download ({exc})") from exc
        first = " (recorded at its first download)" if recorded else ""
        raise CheckpointError(
            f"{url}: SHA-256 mismatch: expected {known_hash}{first}, downloaded "
            f"{recorder.sha256} (the download was deleted)"
        ) from exc
    except Exception as exc:  # requests, botocore, fsspec, OS errors: all mean "not here"
        raise CheckpointError(f"{url}: cannot download ({type(exc).__name__}: {exc})") from exc
    sha256 = known_hash or recorder.sha256 or file_sha256(path)
    return Path(path), sha256, recorder.whole


def _unproven(url: str, path: Path) -> Path:
    """A download of no known hash that may have been cut short, moved off the URL's
    cache file (to ``unverified-NAME`` beside it) and not recorded: the next fetch
    without a hash downloads it again."""
    log.warning(
        "%s: the server gave no length, so a download cut short cannot be told from a "
        "whole one; give the file's SHA-256 (known_hash= or #sha256=) to have it checked "
        "and cached",
        redacted(url),
    )
    return path.replace(path.with_name(f"unverified-{path.name}"))
