"""Where the data lives: local paths, and remote hrefs (``https://``, ``s3://``, any fsspec URL).

The readers take a remote href wherever they take a path. Rasters are read by GDAL
(rasterio turns ``https://`` into ``/vsicurl/`` and ``s3://`` into ``/vsis3/``); other
files (``.npy`` masks, file lists, STAC JSON) through fsspec (:func:`filesystem`: a URL
is requested as written, its query string too). Credentials and endpoints
come from where GDAL and s3fs look for them: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3`` (s3fs) and ``AWS_S3_ENDPOINT``,
``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING`` (GDAL), or the machine's role.

A remote href is kept as the string the user wrote: ``Path("https://h/a.tif")`` would
collapse its ``//``.

Examples
--------
>>> is_remote("s3://bucket/cloudy.tif"), is_remote("data/cloudy.tif")
(True, False)
>>> join("https://example.org/m3rcr/test", "S1/a.tif")
'https://example.org/m3rcr/test/S1/a.tif'
>>> redacted("https://alice:S3CRET@example.org/a.tif?X-Amz-Signature=ab12&v=2")
'https://alice@example.org/a.tif?X-Amz-Signature=...&v=2'
>>> join("https://example.org/m3rcr/test", "../train/a.tif")
Traceback (most recent call last):
...
m3rcr_xr.exceptions.UnsafePathError: ../train/a.tif: path escapes the data root https://example.org/m3rcr/test
"""

from __future__ import annotations

import glob as globbing
import posixpath
import re
import sys
from collections.abc import Callable, Iterator
from http import HTTPStatus
from os import PathLike
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from urllib.request import url2pathname

import fsspec

from .exceptions import AccessDeniedError, InputFileError, UnsafePathError

PathType = str | PathLike
#: a URL scheme (``s3://``, ``https://``); ``file://`` is a local path
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
#: a URL within a text (a message, an error of GDAL or fsspec that quotes one), without
#: the punctuation that follows it in a sentence
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]]*[^\s'\"<>()\[\]:.,;]")
#: a URL's password and the query parameters that hold credentials (presigned URLs:
#: ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``sig``, ``token``)
_PASSWORD = re.compile(r"^(?P<user>[^:@/]*):[^/]*@")  # to the last "@" (one may be in it)
_SECRET_PARAMETER = re.compile(
    r"(?P<key>(?:^|&)[^=&]*(?:sig|token|credential|secret|passw|key|auth)[^=&]*=)[^&]*",
    re.IGNORECASE,
)
#: the statuses of a server that refuses access: credentials missing or refused (401),
#: access forbidden (403: S3's answer to a presigned URL whose signature has expired)
_REFUSED = (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)
#: how GDAL's ``/vsicurl/`` reports a status (``HTTP response code: 403 - ...``)
_GDAL_STATUS = re.compile(r"HTTP response code: (?P<status>\d{3})\b")
#: the query parameters that make a URL presigned, a signature that expires: AWS
#: (Signature Version 4 and 2), Google Cloud Storage, an Azure shared access signature
_PRESIGNED = frozenset(
    {"x-amz-signature", "x-amz-expires", "signature", "x-goog-signature", "sig", "se"}
)
#: what a URL may hold as written (RFC 3986: reserved, unreserved, percent escapes);
#: anything else (a space, non-ASCII) is percent-encoded before it is requested
_URL_CHARACTERS = "!#$%&'()*+,/:;=?@[]~"


def has_scheme(href: PathType) -> TypeGuard[str]:
    """True for a URL, ``file://`` included (:func:`is_remote` leaves it out).

    Examples
    --------
    >>> has_scheme("file:///data/w.pth"), has_scheme("data/w.pth"), has_scheme("a/b://c")
    (True, False, False)
    """
    return isinstance(href, str) and _SCHEME.match(href) is not None


def is_remote(href: PathType) -> bool:
    """True for a URL with a scheme other than ``file://``."""
    match = _SCHEME.match(str(href)) if isinstance(href, str) else None
    return match is not None and match["scheme"].lower() != "file"


def redacted(text: object) -> str:
    """``text`` (a URL, or a message that quotes URLs) with their credentials hidden: the
    password of ``user:password@`` dropped, the values of credential-like query
    parameters (signatures, tokens, keys) as ``...``; for messages and logs.

    Examples
    --------
    >>> redacted("https://h/a.tif?sig=x%2By&sv=2022: HTTP 403 (/vsicurl/https://u:p@h/b)")
    'https://h/a.tif?sig=...&sv=2022: HTTP 403 (/vsicurl/https://u@h/b)'
    """
    return _URL.sub(lambda match: _redacted_url(match[0]), str(text))


def _redacted_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    location, mark, query = _PASSWORD.sub(r"\g<user>@", rest).partition("?")
    query = _SECRET_PARAMETER.sub(r"\g<key>...", query)
    return f"{scheme}://{location}{mark}{query}"


def local_path(href: PathType) -> Path:
    """A local href as a :class:`~pathlib.Path`; a ``file://`` URL as the path it names.

    Examples
    --------
    >>> local_path("file:///data/m3rcr%20test/a.tif").as_posix()
    '/data/m3rcr test/a.tif'

    Raises
    ------
    InputFileError
        A URL naming another host (``file://server/data/a.tif``), outside Windows
        (where it is the share ``\\\\server\\data\\a.tif``): not this machine's path
        ``/data/a.tif``, which would be read or written in its place.
    """
    if not has_scheme(href):
        return Path(href)
    url = urlsplit(href)  # file://, the only local scheme
    if url.netloc.lower() in ("", "localhost"):
        return Path(url2pathname(url.path))
    if sys.platform == "win32":
        return Path(url2pathname(f"//{url.netloc}{url.path}"))
    raise InputFileError(
        f"{redacted(href)}: a file:// URL of the host {url.netloc!r}: only this machine's "
        "files can be named so (file:///path, file://localhost/path); mount its folder "
        "and give the local path"
    )


def as_href(href: PathType) -> str | Path:
    """A remote href unchanged, anything else as a :class:`~pathlib.Path`."""
    return str(href) if is_remote(href) else local_path(href)


def name_of(href: PathType) -> PurePosixPath:
    """The path part of ``href`` (for ``.stem``, ``.suffix``, ``.name``)."""
    if is_remote(href):
        return PurePosixPath(urlsplit(str(href)).path)
    return PurePosixPath(local_path(href).as_posix())


def is_file(href: PathType, what: str = "") -> bool:
    """True when ``href`` is a file (a remote one is asked for, once).

    Raises
    ------
    AccessDeniedError
        A server refused access to it (:func:`raise_if_refused`, naming ``what`` it
        holds): whether it exists cannot be told.
    """
    if not is_remote(href):
        return local_path(href).is_file()
    # its info, not fsspec's isfile: that answers False for any error, a refusal too
    return _asked(href, what, lambda fs, path: fs.info(path)["type"] == "file")


def is_dir(href: PathType, what: str = "") -> bool:
    """True when ``href`` is a folder (an object-store prefix holding objects); raises
    as :func:`is_file` does."""
    if not is_remote(href):
        return local_path(href).is_dir()
    return _asked(href, what, lambda fs, path: fs.isdir(path))


def _asked(url: PathType, what: str, test: Callable[[Any, str], bool]) -> bool:
    """``test(fs, path)`` on the file system of ``url``: False where it cannot be read."""
    fs, path = filesystem(url)
    try:
        return test(fs, path)
    except read_errors() as err:  # unreachable host, an S3 key refused: not one we can read
        raise_if_refused(url, err, what)  # a server that refuses access says nothing of it
        return False


def filesystem(href: PathType) -> tuple[Any, str]:
    """The fsspec file system of ``href`` and its path there, naming exactly ``href``.

    fsspec's HTTP file system would re-encode a URL (aiohttp decodes ``%2F`` in a query
    string): a presigned URL's signature, computed over the URL as issued, would no
    longer match. Here an ``https://`` URL is requested as written; only characters no
    URL may hold (a space, non-ASCII) are percent-encoded, as curl and requests do. The
    path is never a glob pattern: open it with ``fs.open``, never ``fsspec.open_files``
    (a ``?`` is part of an S3 key, a ``[`` of a query string).

    Examples
    --------
    >>> fs, path = filesystem("https://h/a b.json?X-Amz-Credential=K%2F2024&X-Amz-Signature=9f")
    >>> path
    'https://h/a%20b.json?X-Amz-Credential=K%2F2024&X-Amz-Signature=9f'
    """
    url = str(href)
    if _SCHEME.match(url) and url.split(":", 1)[0].lower() in ("http", "https"):
        return fsspec.core.url_to_fs(quote(url, safe=_URL_CHARACTERS), encoded=True)
    return fsspec.core.url_to_fs(url)


def read_errors() -> tuple[type[Exception], ...]:
    """The errors that mean a file cannot be read: ``OSError`` (s3fs raises botocore's
    errors as these), ``ValueError``, and aiohttp's ``ClientError`` (fsspec's HTTP raises
    it for a status other than 404: an expired signature's 403) once aiohttp is in use."""
    aiohttp = sys.modules.get("aiohttp")
    return (OSError, ValueError, *((aiohttp.ClientError,) if aiohttp else ()))


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the errors it chains (its cause, or the error it was raised in)."""
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def cause(err: BaseException) -> BaseException | None:
    """``err`` as the cause of an error that wraps it (``raise ... from cause(err)``), or
    None where it, or an error it chains, quotes a credential (:func:`redacted`): a
    traceback prints the messages of the whole chain, a wrapping error's message only
    ``redacted`` (:class:`~m3rcr_xr.exceptions.M3RCRError`).

    Examples
    --------
    >>> cause(OSError("https://h/a.json: 403")) is None
    False
    >>> cause(OSError("https://h/a.json?X-Amz-Signature=9f: 403")) is None
    True
    """
    for link in _chain(err):
        texts = [str(link), *(str(arg) for arg in link.args)]
        if any(redacted(text) != text for text in texts):
            return None
    return err


def refused_status(err: BaseException) -> HTTPStatus | None:
    """The status (401, 403) of the server that refused the request ``err`` reports, or
    an error it chains: aiohttp's error (fsspec's HTTP raises ``FileNotFoundError`` from
    it), GDAL's message, or an object store's ``PermissionError`` (s3fs, gcsfs and adlfs
    raise it for a 403, S3's ``AccessDenied``); None for any other failure (a 404
    included). Only a remote read's errors are asked: a local ``PermissionError`` is no
    server's.

    Examples
    --------
    >>> refused_status(OSError("HTTP response code: 403 - Failure writing output"))
    <HTTPStatus.FORBIDDEN: 403>
    >>> refused_status(OSError("HTTP response code: 404")) is None
    True
    """
    aiohttp = sys.modules.get("aiohttp")
    links = list(_chain(err))
    for link in links:  # a status the server sent, first
        if aiohttp and isinstance(link, aiohttp.ClientResponseError):
            status = link.status
        elif found := _GDAL_STATUS.search(str(link)):
            status = int(found["status"])
        else:
            continue
        return HTTPStatus(status) if status in _REFUSED else None
    refused = any(isinstance(link, PermissionError) for link in links)
    return HTTPStatus.FORBIDDEN if refused else None


def is_presigned(url: PathType) -> bool:
    """True for a URL whose query string carries a signature that expires: S3's
    ``X-Amz-Signature``, ``X-Amz-Expires`` or ``Signature``, Google's
    ``X-Goog-Signature``, an Azure SAS's ``sig`` or ``se``.

    Examples
    --------
    >>> is_presigned("https://b.s3.amazonaws.com/a.tif?X-Amz-Expires=60&X-Amz-Signature=9f")
    True
    >>> is_presigned("https://h/a.tif?version=2")
    False
    """
    query = urlsplit(str(url)).query if is_remote(url) else ""
    return any(key.lower() in _PRESIGNED for key, _ in parse_qsl(query, keep_blank_values=True))


def raise_if_refused(url: PathType, err: BaseException, what: str = "") -> None:
    """Raise :class:`~m3rcr_xr.exceptions.AccessDeniedError` naming ``url`` (and
    ``what`` it holds: "cloudy", "STAC JSON") when ``err`` says a server refused access
    (:func:`refused_status`), saying that a presigned URL's signature may have expired;
    return otherwise. A reader calls it where it catches a read error, before it raises
    its own: a refusal must not read as a file that is missing or damaged.

    Examples
    --------
    >>> raise_if_refused("https://h/a.tif?X-Amz-Signature=9f", OSError("HTTP response code: 403"))
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.AccessDeniedError: https://h/a.tif?X-Amz-Signature=...: cannot be
    read: access refused (HTTP 403 Forbidden); the URL is presigned: its signature may have expired
    """
    status = refused_status(err) if is_remote(url) else None
    if status is None:
        return
    expired = "; the URL is presigned: its signature may have expired" if is_presigned(url) else ""
    role = f"{what} " if what else ""
    raise AccessDeniedError(
        f"{url}: {role}cannot be read: access refused (HTTP {status.value} {status.phrase})"
        f"{expired}"
    ) from cause(err)


def read_bytes(href: PathType, what: str) -> bytes:
    """The bytes of a local or remote file; :class:`InputFileError` naming it otherwise."""
    fs, path = filesystem(href)
    try:
        with fs.open(path, "rb") as handle:
            return handle.read()
    except read_errors() as err:
        raise_if_refused(href, err, what)
        raise InputFileError(f"{href}: {what} cannot be read ({err})") from cause(err)


def join(root: PathType, relative: str) -> str | Path:
    """``root / relative``, refusing anything outside ``root``.

    A file list names files under its data root only: an absolute path or URL, or one
    that resolves (``..``, symbolic links for local roots) outside the root, raises
    :class:`UnsafePathError`, as does a NUL byte (no file system takes one). A remote
    root is held to the same rules on its URL path, also once percent-decoded
    (``%2e%2e/``, ``%00``): a server may decode it before it normalises the path.
    """
    if "\0" in relative:
        raise UnsafePathError(f"{relative!r}: a NUL byte in a file list path")
    if Path(relative).is_absolute() or _SCHEME.match(relative):
        raise UnsafePathError(f"{relative}: absolute path in a file list (must be under {root})")
    if not is_remote(root):
        resolved = (local_path(root) / relative).resolve()
        if not resolved.is_relative_to(local_path(root).resolve()):
            raise UnsafePathError(f"{relative}: path escapes the data root {root}")
        return resolved
    base = str(root).rstrip("/")
    if "\0" in unquote(relative):
        raise UnsafePathError(f"{relative!r}: a percent-encoded NUL byte in a file list path")
    for path in (relative, unquote(relative)):
        joined = posixpath.normpath(posixpath.join(urlsplit(base).path or "/", path))
        if not (joined + "/").startswith(urlsplit(base).path.rstrip("/") + "/"):
            raise UnsafePathError(f"{relative}: path escapes the data root {root}")
    return f"{base}/{posixpath.normpath(relative)}"


def glob(root: PathType, pattern: str) -> list[str]:
    """Paths under ``root`` that match ``pattern``, relative to ``root``, sorted."""
    if not is_remote(root):
        folder = local_path(root)
        return sorted(p.relative_to(folder).as_posix() for p in folder.glob(pattern))
    fs, path = filesystem(root)
    base = path.rstrip("/") + "/"  # a pattern below it: its own "[", "?" or "*" escaped
    return sorted(found[len(base) :] for found in fs.glob(globbing.escape(base) + pattern))
