"""The exceptions of m3rcr_xr: one hierarchy, rooted at :class:`M3RCRError`.

Each class also derives from the built-in exception a caller would expect
(``ValueError``, ``FileNotFoundError``...), so generic handlers keep working.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Integral, Real
from types import MappingProxyType
from typing import Any


class M3RCRError(Exception):
    """Root of every error raised by m3rcr_xr.

    Its message shows no credentials of the URLs it names (a password, a presigned
    URL's signature or token: :func:`m3rcr_xr.href.redacted`).
    """

    def __init__(self, *args: object) -> None:
        from .href import redacted  # href raises these errors: imported once one is made

        super().__init__(*(redacted(arg) if isinstance(arg, str) else arg for arg in args))


class SchemaError(M3RCRError, ValueError):
    """A scene or collection does not follow the m3rcr_xr data model."""


class InputFileError(M3RCRError, ValueError):
    """An input file is missing, unreadable, truncated or of the wrong form."""


class MissingFileError(InputFileError, FileNotFoundError):
    """An input file does not exist."""


class AccessDeniedError(InputFileError, PermissionError):
    """A server refused to serve an input (HTTP 401 or 403): credentials missing or
    refused, or a presigned URL whose signature has expired."""


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


class UnknownModelError(ModelConfigError, UsageError):
    """A model name that is not one of :func:`m3rcr_xr.models.available` (listed)."""


class M3RCRWarning(UserWarning):
    """Something unusual that m3rcr_xr handled (duplicate rows, filled holes...)."""


# --------------------------------------------------------------- naming arguments
#: True while the command line runs: errors then name flags, not Python arguments
_COMMAND_LINE: ContextVar[bool] = ContextVar("m3rcr_command_line", default=False)
#: arguments a caller passed on under another name (:func:`argument_names`)
_RENAMED: ContextVar[Mapping[str, str]] = ContextVar(
    "m3rcr_renamed_arguments", default=MappingProxyType({})
)
_UNSET = object()


@contextmanager
def command_line_names(on: bool = True) -> Iterator[None]:
    """Within this block, :func:`argument` names command-line flags (the CLI uses it);
    with ``on=False``, Python arguments, whoever called (the fields of a file)."""
    token = _COMMAND_LINE.set(on)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


@contextmanager
def argument_names(**renamed: str) -> Iterator[None]:
    """Within this block, :func:`argument` names an argument as the caller called it:
    ``renamed[name]`` (a function that passes its ``classifier`` on as ``checkpoint``).

    Examples
    --------
    >>> with argument_names(checkpoint="classifier"):
    ...     argument("checkpoint", "x.pt")
    "classifier='x.pt'"
    """
    token = _RENAMED.set({**_RENAMED.get(), **renamed})
    try:
        yield
    finally:
        _RENAMED.reset(token)


def argument(name: str, value: Any = _UNSET) -> str:
    """How an error message names an argument, for whoever called.

    ``batch_size=0`` from Python, ``--batch-size 0`` from the command line, so that a
    message tells the user what to change where they typed it. On the command line a
    list is an option's values as typed, spaced (``--bbox 1 2 3 4``), a tuple its
    comma-separated names (``--udm2-classes cloud,shadow``), a mapping the option
    once for each ``KEY=VALUE`` (``--config level=2``), and None the word ``none``, as
    the options that can go without a value take it (``--landcover none``).

    Examples
    --------
    >>> argument("batch_size", 0), argument("landcover", None)
    ('batch_size=0', 'landcover=None')
    >>> with command_line_names():
    ...     argument("batch_size", 0), argument("overwrite"), argument("bbox", [1, 2, 3, 4])
    ('--batch-size 0', '--overwrite', '--bbox 1 2 3 4')
    >>> with command_line_names():
    ...     argument("landcover", None), argument("strata", ("all",)), argument("strata", ())
    ('--landcover none', '--strata all', "--strata ''")
    """
    name = _RENAMED.get().get(name, name)
    if _COMMAND_LINE.get():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, dict):
            return " ".join(f"{flag} {key}={item}" for key, item in value.items())
        if isinstance(value, list | tuple):
            value = (" " if isinstance(value, list) else ",").join(map(str, value))
        if value is None:
            value = "none"
        if value == "":  # as a shell takes an empty value
            value = "''"
        return flag if value is _UNSET or value is True else f"{flag} {value}"
    return name if value is _UNSET else f"{name}={value!r}"


def check_integer(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int``, if it is an integer in ``[minimum, maximum]``.

    Integers of any kind count (numpy's too); bools, floats (even ``16.0``) and strings
    do not, so that a typo never silently becomes another number.

    Raises
    ------
    UsageError
        Naming the argument as the caller wrote it (see :func:`argument`).

    Examples
    --------
    >>> check_integer("batch_size", 8)
    8
    >>> check_integer("batch_size", 0)
    Traceback (most recent call last):
    ...
    m3rcr_xr.exceptions.UsageError: batch_size=0: must be an integer >= 1
    """
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise UsageError(
            f"{argument(name, value)}: must be an integer {bounds}, not {type(value).__name__}"
        )
    if int(value) < minimum or (maximum is not None and int(value) > maximum):
        raise UsageError(f"{argument(name, value)}: must be an integer {bounds}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a ``float``, if it is a finite real number above 0 (not a bool).

    Raises
    ------
    UsageError
        Naming the argument as the caller wrote it (see :func:`argument`).
    """
    if not isinstance(value, Real) or isinstance(value, bool) or not 0 < float(value) < math.inf:
        raise UsageError(f"{argument(name, value)}: must be a finite number > 0")
    return float(value)


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (numpy's too): ``"yes"`` or ``1`` is no switch.

    Raises
    ------
    UsageError
        Naming the argument as the caller wrote it (see :func:`argument`).
    """
    numpy_bool = getattr(getattr(value, "dtype", None), "kind", None) == "b" and not getattr(
        value, "shape", None
    )
    if not (isinstance(value, bool) or numpy_bool):
        raise UsageError(f"{argument(name, value)}: must be True or False")
    return bool(value)
