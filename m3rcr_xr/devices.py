"""Which device a network runs on: ``"auto"`` resolved, a named device checked.

Shared by training and inference, and below both: nothing here knows of tiles or crops.

Examples
--------
>>> check_device("cpu")
'cpu'
>>> check_device("cuda:99", here=False)  # parsed, not looked for
'cuda:99'
"""

from __future__ import annotations

import os
from typing import Any

from .exceptions import UsageError, argument


def resolve_device(device: str = "auto") -> str:
    """``"auto"``: this process's CUDA GPU when there is one, else the CPU; any other
    device is checked (:func:`check_device`) and returned as is.

    Raises
    ------
    UsageError
        Not a device, or a device this process does not have.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


def _device_count(kind: str) -> int:
    """Devices of type ``kind`` (``"cuda"``, ``"mps"``, ``"xpu"``...) in this process."""
    import torch

    if kind == "cpu":
        return 1
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)  # torch.cuda, torch.xpu: same interface
    if backend is None or not hasattr(backend, "device_count"):
        return 0  # "meta" and other types that do not run a model
    return int(backend.device_count()) if backend.is_available() else 0


def check_device(device: Any, *, here: bool = True) -> str:
    """``device`` as a string, checked: ``"auto"``, or a device torch can parse
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...) that, with ``here``, this
    process has (``"cuda:3"`` on a machine with one GPU is refused).

    Raises
    ------
    UsageError
        Naming the argument as the caller wrote it (``device='cuda'`` or ``--device cuda``).
    """
    import torch

    text = str(device)
    if text == "auto":
        return text
    try:
        parsed = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(
            f"{argument('device', device)}: not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if here:
        count = _device_count(parsed.type)
        if count <= (parsed.index or 0):
            raise UsageError(
                f"{argument('device', device)}: this process has {count} {parsed.type} "
                f"device(s) (pid {os.getpid()}); use {argument('device', 'auto')} or "
                f"{argument('device', 'cpu')}"
            )
    return text


def _device_name(device: str) -> str:
    """One name per device (``"cuda"`` is ``"cuda:<current>"``), for locks and counts."""
    import torch

    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return device
