"""Which files make each patch's quartet: the :class:`Quartet` record, from a published
file list (:func:`read_filelist`) or by walking the dataset's layout (:func:`discover`)."""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path, PurePosixPath

from .. import href
from ..exceptions import InputFileError, M3RCRWarning, MissingFileError
from ..href import PathType

#: column order of the published file lists (no header)
FILELIST_COLUMNS = ("cloudfree", "cloudy", "sar", "landcover", "cloudmask")
#: folder prefix of each layer in the dataset's layout
LAYOUT_PREFIX = {
    "cloudy": "planet_cloudy",
    "cloudfree": "planet_cloudfree",
    "sar": "S1",
    "landcover": "landcover",
    "cloudmask": "cloudmask",
}
_PATCH_NAME = re.compile(r"^planet_cloudy_(?P<season>[A-Za-z]+)_(?P<aoi>\w+?)_p_(?P<n>\d+)$")
_LAYERS = "|".join(LAYOUT_PREFIX.values())
#: a file named as the dataset names them: ``{layer prefix}_{season}_{aoi}_p_{n}``
_LAYER_NAME = re.compile(rf"^(?P<prefix>{_LAYERS})_(?P<patch>[A-Za-z]+_\w+?_p_\d+)$")
#: a folder of the dataset's layout: ``{layer prefix}_{season}[_{aoi}]``
_LAYER_FOLDER = re.compile(rf"^(?P<prefix>{_LAYERS})_[A-Za-z]+(?:_\w+)?$")


@dataclass(frozen=True)
class Quartet:
    """The files of one patch, relative to the dataset root."""

    cloudy: str
    cloudfree: str | None = None
    sar: str | None = None
    landcover: str | None = None
    cloudmask: str | None = None

    @property
    def patch_id(self) -> str:
        stem = Path(self.cloudy).stem
        match = _PATCH_NAME.match(stem)
        if match is None:
            return stem
        return f"{match['season']}_{match['aoi']}_p_{match['n']}"

    @property
    def season(self) -> str:
        match = _PATCH_NAME.match(Path(self.cloudy).stem)
        return match["season"] if match else ""

    @property
    def aoi(self) -> str:
        match = _PATCH_NAME.match(Path(self.cloudy).stem)
        return match["aoi"] if match else ""

    def paths(self, root: PathType) -> dict[str, str | Path]:
        """Paths (or URLs) of the present layers, each checked to stay inside ``root``."""
        return {name: href.join(root, rel) for name, rel in vars(self).items() if rel}

    def mismatch(self) -> str | None:
        """What shows that the files are not one patch's layers, or None.

        Only files named as the dataset names them (``S1_fall_1_p_457.tif`` in
        ``S1_fall/S1_fall_1/``) are checked: each must carry its own layer's prefix (in
        its name and in such folders), and all must name one patch. Files named
        otherwise (a user's own) are taken as given.

        Examples
        --------
        >>> Quartet("planet_cloudy_fall_1_p_1.tif", "planet_cloudfree_fall_1_p_2.tif").mismatch()
        'files of different patches: fall_1_p_1 (cloudy); fall_1_p_2 (cloudfree)'
        >>> Quartet("my_cloudy.tif", "planet_cloudfree_fall_1_p_2.tif").mismatch() is None
        True
        """
        patches: dict[str, list[str]] = {}
        for column, relative in vars(self).items():
            path = PurePosixPath(relative or "")
            match = _LAYER_NAME.match(path.stem)
            if match is None:
                continue
            folders = (_LAYER_FOLDER.match(part) for part in path.parent.parts)
            found = {match["prefix"], *(m["prefix"] for m in folders if m)}
            found.discard(LAYOUT_PREFIX[column])
            if found:
                return (
                    f"column {column!r} holds {relative!r}, a {' and '.join(sorted(found))} "
                    f"file (expected the {LAYOUT_PREFIX[column]}_ prefix); the columns are "
                    f"{', '.join(FILELIST_COLUMNS)}"
                )
            patches.setdefault(match["patch"], []).append(column)
        if len(patches) < 2:
            return None
        listed = (f"{patch} ({', '.join(columns)})" for patch, columns in patches.items())
        return f"files of different patches: {'; '.join(listed)}"


def _read_utf8(path: str | Path) -> str:
    """The text of ``path`` as UTF-8, without a byte-order mark (spreadsheets write one).

    Raises InputFileError naming the line of the first byte that is not UTF-8.
    """
    data = href.read_bytes(path, "file list")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputFileError(
            f"{path}:{line}: file list is not UTF-8 text "
            f"(byte {data[err.start]:#04x} at offset {err.start}); save it as UTF-8"
        ) from err


def _csv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """The line number and stripped cells of each row of the CSV at ``path``.

    Raises InputFileError naming the line that the csv module cannot parse.
    """
    reader = csv.reader(StringIO(_read_utf8(path), newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a cell over csv.field_size_limit()
            raise InputFileError(f"{path}:{reader.line_num}: not a CSV row: {err}") from err
        yield reader.line_num, [cell.strip() for cell in row]


def read_filelist(path: PathType) -> list[Quartet]:
    """Read a published file list (CSV, no header; cloudfree, cloudy, S1, landcover,
    cloudmask). Duplicate rows give a warning and are kept once.

    The CSV must be UTF-8 (a byte-order mark is ignored); blank rows are skipped, and
    every other row needs a path in each of the five columns, as the published lists
    have. Files named as the dataset names them (``planet_cloudy_fall_1_p_457.tif``,
    ``S1_fall_1_p_457.tif``...) must be in their layer's column and of the row's patch
    (:meth:`Quartet.mismatch`); files named otherwise are taken as given.

    Raises
    ------
    InputFileError
        Naming the CSV and the line: not UTF-8, not parsable as CSV, a wrong number of
        columns, an empty path (and its column), a dataset-named file in another
        layer's column or of another patch.
    """
    path = href.as_href(path)
    if not href.is_file(path, "file list"):
        raise MissingFileError(f"{path}: file list does not exist")
    quartets: list[Quartet] = []
    for line, row in _csv_rows(path):
        if not any(row):
            continue
        if len(row) != len(FILELIST_COLUMNS):
            raise InputFileError(
                f"{path}:{line}: expected {len(FILELIST_COLUMNS)} columns "
                f"({', '.join(FILELIST_COLUMNS)}), got {len(row)}"
            )
        fields = dict(zip(FILELIST_COLUMNS, row, strict=True))
        empty = [name for name, value in fields.items() if not value]
        if empty:
            raise InputFileError(
                f"{path}:{line}: empty path in column {empty[0]!r} "
                f"(columns: {', '.join(FILELIST_COLUMNS)})"
            )
        quartet = Quartet(**fields)
        mismatch = quartet.mismatch()
        if mismatch:
            raise InputFileError(f"{path}:{line}: {mismatch}")
        quartets.append(quartet)
    unique = list(dict.fromkeys(quartets))
    if len(unique) < len(quartets):
        warnings.warn(
            f"{path}: {len(quartets) - len(unique)} duplicate row(s) ignored",
            M3RCRWarning,
            stacklevel=2,
        )
    return unique


def discover(root: PathType) -> list[Quartet]:
    """Find the quartets of a split folder by walking the dataset's layout."""
    found = href.glob(root, "planet_cloudy_*/planet_cloudy_*/planet_cloudy_*.tif")
    present = {top.split("/")[0] for top in href.glob(root, "*")}
    quartets = []
    for relative in found:
        layers: dict[str, str | None] = {}
        for name, prefix in LAYOUT_PREFIX.items():
            if name == "cloudy":
                continue
            other = relative.replace("planet_cloudy", prefix)
            if name == "cloudmask":
                other = other[: -len(".tif")] + ".npy"
            layers[name] = other if other.split("/")[0] in present else None
        quartets.append(Quartet(relative, **layers))
    return quartets
