"""Where GeoTIFFs go, and how they are replaced: the destination checked before any work
(:func:`check_cog_destination`, :func:`check_replaceable`), the hidden partial files a
write goes to and what a killed write left of them, and the renames that replace the
files all or none (:func:`commit`)."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import xarray as xr

from ..exceptions import StoreError, UsageError, argument
from ..files import hidden_copies, hidden_path, left_behind, remove_stale, versions
from ..href import is_remote, local_path, redacted
from ..location import Target, check_apart, check_bucket, listing, reaching
from ..locks import locked_file
from .records import SOFTWARE, SOFTWARE_TAG, tiff_tags

log = logging.getLogger(__name__)


def std_cog_path(path: str, *, collection: bool = False) -> str:
    """Where ``m3rcr decloud --uncertainty --cog PATH`` writes ``decloud_std``: ``NAME_std.tif``
    beside a scene's ``NAME.tif``; for a collection, the folder ``PATH_std`` beside the
    folder ``PATH``, with the same file names (one kind of raster in each folder, so that
    ``gdalbuildvrt`` or a glob over ``PATH/*.tif`` never mixes the two).

    Raises
    ------
    UsageError
        ``PATH`` is a bucket root (``s3://bucket/``, any fsspec protocol) or a filesystem
        root (``/``, a drive): nothing is beside it (``s3://bucket_std`` would be another
        bucket, bucket names being global).

    Examples
    --------
    >>> std_cog_path("out/decloud.tif")
    'out/decloud_std.tif'
    >>> std_cog_path("out/cogs/", collection=True)
    'out/cogs_std'
    >>> std_cog_path("s3://bucket/cogs/", collection=True)
    's3://bucket/cogs_std'
    >>> std_cog_path("s3://bucket/", collection=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.UsageError: cog='s3://bucket/': a bucket root has no folder beside ...
    """
    remote = is_remote(path)
    if remote:  # a URL keeps its scheme's "//": only its last name changes
        root, suffix = path.rstrip("/"), ""
        if not collection:
            root, suffix = posixpath.splitext(root)
        named = bool(urlsplit(path).path.strip("/"))  # the netloc is the bucket (or host)
    else:
        out = Path(path)
        out = out if out.name not in ("", "..") else out.resolve()  # "." or "..": name the folder
        named = bool(out.name)  # "/" or a drive resolves to no name
    if not named:
        what, inside = ("a bucket root", "the bucket") if remote else ("the filesystem root", "it")
        wanted = f"a folder inside {inside}" if collection else f"a GeoTIFF file in {inside}"
        raise UsageError(
            f"{argument('cog', path)}: {what} has no folder beside it for decloud_std; "
            f"give {wanted}"
        )
    if remote:
        return f"{root}_std{suffix}"
    return str(out.with_name(f"{out.name}_std" if collection else f"{out.stem}_std{out.suffix}"))


def _files(path: Path, names: Sequence[str] | None) -> list[Path]:
    return [path] if names is None else [path / name for name in names]


def check_cog_destination(
    path: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    inputs: Sequence[Any] = (),
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> list[Any]:
    """Refuse a destination :func:`to_cog` would not write, before any work is done.

    Parameters
    ----------
    path
        A GeoTIFF file (a scene), or a folder (a collection: give ``names``).
    names
        File names in the folder (:func:`patch_file_names`); None for a scene.
    inputs
        Paths or URLs of the inputs; a destination that overlaps one is refused.
    overwrite
        Allow replacing existing files of those names that this library wrote.
    storage_options
        fsspec options for a URL destination (credentials, endpoint).

    Returns
    -------
    list of Path or str
        The files to write: paths, or URLs for object storage.

    Raises
    ------
    StoreError
        A folder (or bucket) that does not exist or is not writable, a file where a
        folder is needed or the reverse, an existing file (without ``overwrite``; with
        it, one of other software: :func:`check_replaceable`), GDAL's mask or overviews
        beside a file (:func:`check_no_sidecars`), or an overlap with an input.
    """
    if names is None and str(path).endswith(("/", os.sep)):  # "cogs/" was written as a file
        raise StoreError(
            f"{path}: a scene is written to one GeoTIFF file, not a folder (a folder is "
            "for a collection, one GeoTIFF a patch)"
        )
    check_apart(path, inputs)
    target = Target.of(path, storage_options)
    if not target.local:
        return _check_remote(target, names, overwrite)
    path = local_path(path)  # a file:// URL as the path it names
    folder = path if names is not None else path.parent
    if names is not None and path.exists() and not path.is_dir():
        raise StoreError(f"{path}: is a file; a collection is written to a folder")
    parent = folder.parent if names is not None and not folder.exists() else folder
    if not parent.is_dir():
        raise StoreError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{path}: folder {parent} is not writable")
    files = _files(path, names)
    present = set(os.listdir(folder)) if folder.is_dir() else set()  # one listing, not 4 a file
    for file in files:
        if file.is_dir():
            raise StoreError(f"{file}: is a folder, not a GeoTIFF")
        if file.exists() or file.is_symlink():
            check_replaceable(file, overwrite=overwrite)
        check_no_sidecars(str(file), lambda sidecar: os.path.basename(sidecar) in present)
    return files


def _check_remote(target: Target, names: Sequence[str] | None, overwrite: bool) -> list[str]:
    """:func:`check_cog_destination` on object storage: the objects' URLs."""
    fs = target.fs
    fs.invalidate_cache()  # s3fs answers from cached listings
    check_bucket(target)
    keys = [target.path] if names is None else [target.key(name) for name in names]
    with reaching(target, "the destination"):  # one listing for all, not requests a file
        entries = listing(fs, posixpath.dirname(keys[0]))
    for key in keys:
        url, entry = fs.unstrip_protocol(key), entries.get(posixpath.basename(key))
        if entry is not None and entry.get("type") == "directory":
            raise StoreError(f"{url}: is a folder, not a GeoTIFF")
        if entry is not None:
            check_replaceable(url, overwrite=overwrite, fs=fs)
        check_no_sidecars(url, lambda sidecar: posixpath.basename(sidecar) in entries)
    return [fs.unstrip_protocol(key) for key in keys]


def check_replaceable(file: str | os.PathLike, *, overwrite: bool, fs: Any = None) -> None:
    """Refuse to replace the existing ``file`` unless ``overwrite`` and it is a GeoTIFF
    of this library (its TIFF ``Software`` tag names :data:`SOFTWARE`): a user's file
    of the same name is never replaced, whatever its content.

    Raises
    ------
    StoreError
        ``file`` without ``overwrite``; else a file of other software, one that is no
        TIFF, or a symbolic link.
    """
    if not overwrite:
        raise StoreError(f"{file}: exists; pass {argument('overwrite', True)} to replace it")
    only_ours = (
        f"{argument('overwrite', True)} replaces only GeoTIFFs of m3rcr_xr: remove it "
        "yourself or choose another name"
    )
    if fs is None and os.path.islink(file):
        raise StoreError(f"{file}: is a symbolic link; {only_ours}")
    try:
        with open(file, "rb") if fs is None else fs.open(file, "rb") as handle:
            software = tiff_tags(handle).get(SOFTWARE_TAG, "")
    except OSError as err:
        raise StoreError(f"{file}: cannot be read to check who wrote it ({err})") from None
    if not software.startswith(SOFTWARE):
        raise StoreError(
            f"{file}: was not written by m3rcr_xr (TIFF Software tag: {software or 'none'}); "
            f"{only_ours}"
        )


class Plan(NamedTuple):
    """One destination of a write, checked: a scene's file or a collection's folder."""

    target: Target
    #: the files, as :func:`to_cog` returns them: paths, or URLs on object storage
    files: list[Any]
    #: their names, in their folder
    names: list[str]
    scenes: list[xr.DataArray]
    #: what each file is written from (:func:`source_records`)
    records: list[str]
    #: their local folder; None on object storage (a temporary one, :func:`uploaded`)
    folder: Path | None


#: the suffix of GDAL's sidecar of a raster (``OUT.tif.aux.xml``): what GDAL or QGIS
#: computed of it (statistics, histograms) or was told (nodata, a colour table)
SIDECAR = ".aux.xml"


#: GDAL's sidecars that change what a raster holds when GDAL opens it (``OUT.tif.msk``:
#: which pixels are valid; ``OUT.tif.ovr``: its overviews, shown when zoomed out), with
#: what each is, for messages; GDAL also looks for them in capitals
READ_WITH = {".msk": "external mask (which pixels are valid)", ".ovr": "external overviews"}


def check_no_sidecars(file: str, exists: Callable[[str], bool]) -> None:
    """Refuse to write ``file`` where ``exists`` finds a GDAL sidecar of that name that
    GDAL would read as part of the new file (:data:`READ_WITH`): one of a file removed
    or about to be replaced, it would mask the new pixels or show the old ones. It is
    not this library's to remove.

    Raises
    ------
    StoreError
        Naming the sidecar and what GDAL would make of it.
    """
    for suffix, what in READ_WITH.items():
        for sidecar in (f"{file}{suffix}", f"{file}{suffix.upper()}"):
            if exists(sidecar):
                raise StoreError(
                    f"{redacted(sidecar)}: GDAL's {what} of {redacted(file)}, which GDAL "
                    f"and QGIS would read with the GeoTIFF written there; remove it (it is "
                    "not m3rcr_xr's to remove) or choose another name"
                )


def warn_of_sidecar(file: str, exists: Callable[[str], bool]) -> None:
    """Log a warning for GDAL's sidecar of ``file``, just replaced, where ``exists`` finds
    one: it describes the file replaced, and GDAL (QGIS) reads it with the new one. It
    stays: this library did not write it."""
    sidecar = f"{file}{SIDECAR}"
    if exists(sidecar):
        log.warning(
            "%s: a GDAL sidecar of %s, which was just replaced: it describes the replaced "
            "file (statistics, histograms, nodata), and GDAL and QGIS read it with the new "
            "one; remove it (m3rcr_xr did not write it, and leaves it as it is)",
            redacted(sidecar),
            redacted(file),
        )


def partial_path(file: Path) -> Path:
    """The hidden partial file ``file`` is written to before it is renamed over it
    (:func:`m3rcr_xr.files.hidden_path`, of this process)."""
    return hidden_path(file, "partial")


#: the suffix of odc-geo's folder of the parts of a file ``F``: ``.F.parts``
_PARTS = ".parts"


def _remove_partial(partial: Path) -> None:
    """Remove a partial file and odc-geo's folder of its parts (``.PARTIAL.parts``),
    those there: odc-geo writes the parts, then renames the first to the partial file
    and appends the others to it."""
    partial.unlink(missing_ok=True)
    parts = partial.with_name(f".{partial.name}{_PARTS}")
    if parts.is_dir() and not parts.is_symlink():
        for part in parts.iterdir():
            part.unlink(missing_ok=True)
        parts.rmdir()


@contextlib.contextmanager
def cleaned(partials: Sequence[Path], folders: Sequence[Path]) -> Iterator[None]:
    """Remove the partial files (and odc-geo's part folders) and the folders this call
    made, when the block fails."""
    created = [folder for folder in dict.fromkeys(folders) if not folder.exists()]
    try:
        yield
    except BaseException:
        for partial in partials:
            _remove_partial(partial)
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def remove_stale_writes(folder: Path, names: Collection[str]) -> None:
    """Remove what a killed write of the files ``names`` of ``folder`` left (its
    :func:`cleaned` never ran): its hidden copies (:func:`m3rcr_xr.files.remove_stale`:
    ``.NAME.<machine>-<pid>.partial`` and ``.previous``, those of a process of this
    machine that no longer runs, or of this one) and odc-geo's folders of the parts of
    such a partial file (``..NAME.<machine>-<pid>.partial.parts``)."""
    remove_stale(folder, names)
    for parts in hidden_copies(folder, names, hidden_of=_parts_of):
        if parts.kind == "partial" and left_behind(parts):
            with contextlib.suppress(FileNotFoundError):  # another rerun removed it first
                _remove_partial(parts.path.with_name(parts.path.name[1 : -len(_PARTS)]))


def _parts_of(entry: os.DirEntry[str]) -> str | None:
    """The partial file whose parts the folder ``entry`` holds (``.PARTIAL.parts``), or
    None for another entry."""
    parts = entry.name.startswith("..") and entry.name.endswith(_PARTS)
    return entry.name[1 : -len(_PARTS)] if parts and entry.is_dir(follow_symlinks=False) else None


def commit(
    partials: Sequence[Path],
    files: Sequence[Path],
    overwrite: bool,
    before: Sequence[tuple[int, ...] | None],
) -> None:
    """Rename each partial file over its file, all or none: an existing file is first
    set aside under a hidden name, and if a rename fails, the files already renamed are
    put back as they were (those that did not exist are removed). A file written since
    ``before`` (:func:`~m3rcr_xr.files.versions` of ``files`` when the work began) is
    refused (:func:`_check_unchanged`); each existing file is checked again
    (:func:`check_replaceable`), those there first, so that the renames follow one
    another and a kill finds them done or not, but for a moment. The renames hold the OS
    lock of the first file (:func:`~m3rcr_xr.locks.locked_file`): two runs' never
    interleave."""
    with locked_file(files[0], "path", StoreError):
        _check_unchanged(files, before, overwrite)
        _rename(partials, files, overwrite)


def _check_unchanged(
    files: Sequence[Path], before: Sequence[tuple[int, ...] | None], overwrite: bool
) -> None:
    """Refuse a file of ``files`` written (made, replaced, rewritten) since ``before``,
    ``overwrite`` or not: another run writing the same GeoTIFFs (``decloud.tif`` and
    ``decloud_std.tif``) would otherwise end with one's file beside the other's. A
    user's file, or one without ``overwrite``, is named as :func:`check_replaceable`
    does; one removed meanwhile is no obstacle.

    Raises
    ------
    StoreError
        Naming the file.
    """
    for file, was, now in zip(files, before, versions(files), strict=True):
        if now is not None and now != was:
            check_replaceable(file, overwrite=overwrite)
            raise written_meanwhile(file)


def written_meanwhile(file: str | os.PathLike) -> StoreError:
    """The refusal of ``file``, written while this run computed."""
    return StoreError(
        f"{file}: written while this run computed (by another run writing the same file?): "
        "it is left as it is, and nothing of this run was written; run again to replace it"
    )


def _rename(partials: Sequence[Path], files: Sequence[Path], overwrite: bool) -> None:
    """:func:`commit`'s renames."""
    checked = [file.exists() or file.is_symlink() for file in files]
    for file, exists in zip(files, checked, strict=True):
        if exists:
            check_replaceable(file, overwrite=overwrite)
    done: list[tuple[Path, Path | None]] = []
    try:
        for partial, file, was in zip(partials, files, checked, strict=True):
            exists = file.exists() or file.is_symlink()
            if exists and not was:  # it came meanwhile
                check_replaceable(file, overwrite=overwrite)
            previous = hidden_path(file, "previous") if exists else None
            if previous is not None:
                os.replace(file, previous)
            done.append((file, previous))
            os.replace(partial, file)
    except BaseException:
        _undo(done)
        raise
    for file, previous in done:
        if previous is not None:
            previous.unlink()
            warn_of_sidecar(str(file), os.path.exists)


def _undo(done: Sequence[tuple[Path, Path | None]]) -> None:
    """Undo :func:`commit`'s renames ``done`` (each file and the copy it set aside, or
    None), last first: a file that did not exist is removed, another gets its copy back."""
    for file, previous in reversed(done):
        if previous is None:
            file.unlink(missing_ok=True)
        elif previous.exists():
            os.replace(previous, file)
