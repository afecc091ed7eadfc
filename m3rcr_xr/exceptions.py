"""The exceptions of m3rcr_xr: one hierarchy, rooted at :class:`M3RCRError`.

Each class also derives from the built-in exception a caller would expect
(``ValueError``, ``FileNotFoundError``...), so generic handlers keep working.
"""

from __future__ import annotations


class M3RCRError(Exception):
    """Root of every error raised by m3rcr_xr."""


class SchemaError(M3RCRError, ValueError):
    """A scene or collection does not follow the m3rcr_xr data model."""


class InputFileError(M3RCRError, ValueError):
    """An input file is missing, unreadable, truncated or of the wrong form."""


class MissingFileError(InputFileError, FileNotFoundError):
    """An input file does not exist."""


class UnsafePathError(InputFileError):
    """A path from a file list points outside the data root."""


class AlignmentError(M3RCRError, ValueError):
    """A layer cannot be put onto the optical grid (no overlap, bad CRS, bad shape)."""


class StoreError(M3RCRError, ValueError):
    """A Zarr store is incomplete, inconsistent or cannot be written."""


class CheckpointError(M3RCRError, ValueError):
    """A checkpoint cannot be loaded safely or does not match the model."""


class ModelConfigError(M3RCRError, ValueError):
    """A model configuration or tile size that the model cannot take."""


class OptionError(M3RCRError, ValueError):
    """An unknown option, or a value it cannot take."""


class UsageError(M3RCRError, ValueError):
    """Arguments that cannot be used together (command line or API)."""


class M3RCRWarning(UserWarning):
    """Something unusual that m3rcr_xr handled (duplicate rows, filled holes...)."""
