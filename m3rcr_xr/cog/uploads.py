"""GeoTIFFs on object storage: written to a temporary local folder, then uploaded all
or none (:func:`uploaded`), and the folders a killed upload left removed."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..files import OWNER, hidden_name, no_longer_runs, owner
from ..location import listing, reason, version_of
from .destinations import Plan, check_replaceable, warn_of_sidecar, written_meanwhile

log = logging.getLogger(__name__)


@contextlib.contextmanager
def uploaded(fs: Any, plans: Sequence[Plan], overwrite: bool) -> Iterator[list[Path]]:
    """A temporary local folder for each plan (a collection's files and its ``_std``
    folder's have the same names); on success the files written there (the plan's
    ``names``) are uploaded to the plan's URLs on ``fs``, each in one request or
    multipart upload, which S3 makes visible only once complete. All or none, as
    :func:`commit` locally: an existing object is first copied aside, under a hidden
    name beside it; if an upload fails, the copies are put back and the objects that did
    not exist are removed; once all are uploaded, the copies are removed. Objects
    written since the work began (by another run) are refused before any upload
    (:func:`_check_unchanged_objects`): one listing of each folder before the work (the
    destination's check made one too) and one after it.

    The folder (in ``TMPDIR``, :data:`UPLOADS`) is named for this process and machine:
    those a killed upload left, full-size GeoTIFFs, are removed first
    (:func:`_remove_stale_uploads`)."""
    _remove_stale_uploads(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{UPLOADS}{owner()}-") as temporary:
        folders = [Path(temporary, str(index)) for index in range(len(plans))]
        urls = [url for plan in plans for url in plan.files]
        before = _entries(fs, urls)
        yield folders
        local = {
            url: folder / name
            for plan, folder in zip(plans, folders, strict=True)
            for url, name in zip(plan.files, plan.names, strict=True)
        }
        now = _entries(fs, urls)
        existing = [url for url in urls if url in now]
        _check_unchanged_objects(fs, existing, (before, now), overwrite)
        done: list[tuple[str, str | None]] = []
        try:
            for url in urls:
                previous = _beside(url, "previous") if url in existing else None
                if previous is not None:
                    fs.cp_file(url, previous)  # server-side; not copy: it globs
                done.append((url, previous))
                fs.put_file(str(local[url]), url)
        except BaseException as err:
            left = _put_back(fs, done)
            if left:  # the upload's error stays the one raised; these say what to repair
                note = "not rolled back: " + "; ".join(left)
                log.error("%s", note)
                err.add_note(note)
            raise
        for url, previous in done:
            if previous is not None:
                fs.rm_file(previous)
                warn_of_sidecar(url, now.__contains__)  # its neighbours were listed too


def _entries(fs: Any, urls: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The listing entries (fsspec ``info``) of the objects of the folders of ``urls``
    that exist, by URL: one listing a folder, not one or two requests an object."""
    found: dict[str, dict[str, Any]] = {}
    for folder in dict.fromkeys(posixpath.dirname(url) for url in urls):
        found.update({f"{folder}/{name}": entry for name, entry in listing(fs, folder).items()})
    return found


def _check_unchanged_objects(
    fs: Any,
    urls: Sequence[str],
    listings: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]],
    overwrite: bool,
) -> None:
    """Refuse to upload over an object of ``urls`` (those there now) that is not as it
    was when the work began (``listings``: :func:`_entries` then and now): another run
    wrote it meanwhile, and this one's files would end beside that one's
    (``decloud.tif`` of one, ``decloud_std.tif`` of the other). One unchanged was
    checked when the destination was (:func:`check_replaceable`), and is not read
    again. Checked before any upload: two runs whose uploads overlap in time can still
    interleave (object stores have no lock that ends with a process here).

    Raises
    ------
    StoreError
        Naming the object: a user's, or one there without ``overwrite``, as
        :func:`check_replaceable` does; else
        :func:`~m3rcr_xr.cog.destinations.written_meanwhile`.
    """
    before, now = listings
    for url in urls:
        was = before.get(url)
        if was is not None and version_of(was) == version_of(now[url]):
            continue
        check_replaceable(url, overwrite=overwrite, fs=fs)
        raise written_meanwhile(url)


def _put_back(fs: Any, done: Sequence[tuple[str, str | None]]) -> list[str]:
    """Undo the uploads ``done`` by :func:`uploaded` (each URL and its copy aside, None
    for an object that did not exist), the last first: each copy put back and removed,
    each new object removed. One that fails (the network that broke the upload is
    often still down) does not stop the others; returns what is left, and where."""
    left: list[str] = []
    for url, previous in reversed(done):
        try:
            if previous is None:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(url)
            else:
                fs.cp_file(previous, url)
        except Exception as err:
            what = f"not put back from {previous}" if previous else "not removed"
            left.append(f"{url}: {what} ({reason(err)})")
            continue
        if previous is None:
            continue
        try:
            fs.rm_file(previous)
        except Exception as err:
            left.append(f"{url}: put back, its copy {previous} not removed ({reason(err)})")
    return left


#: the start of the name of :func:`uploaded`'s temporary folders, in ``TMPDIR``:
#: ``.m3rcr-cog-<machine>-<pid>-<random>`` (:func:`m3rcr_xr.files.owner`)
UPLOADS = ".m3rcr-cog-"
_UPLOAD = re.compile(rf"{re.escape(UPLOADS)}{OWNER}-.+", re.DOTALL)


def _remove_stale_uploads(root: Path) -> None:
    """Remove the temporary folders of :func:`uploaded` in ``root`` (``TMPDIR``) that a
    killed upload left: of this user, named for a process of this machine that no
    longer runs (:func:`m3rcr_xr.files.no_longer_runs`). Another machine's (a
    ``TMPDIR`` shared), or a live process's (this one's other uploads too), stay; so do
    those of earlier versions (``.m3rcr-cog-<random>``: no process to tell by)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        found = _UPLOAD.fullmatch(entry.name)
        if found is None or not no_longer_runs(found["machine"], int(found["pid"])):
            continue
        with contextlib.suppress(OSError):  # removed meanwhile by another upload's cleanup
            ours = entry.stat(follow_symlinks=False).st_uid == os.getuid()
            if ours and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)


def _beside(url: str, kind: str) -> str:
    """:func:`m3rcr_xr.files.hidden_name` of the object ``url``, in its folder."""
    folder, name = posixpath.split(url)
    return f"{folder}/{hidden_name(name, kind)}"
