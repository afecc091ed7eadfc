"""Which device a network runs on: ``"auto"`` resolved, a named device checked.

Shared by training and inference, and below both: nothing here knows of tiles or crops.
The autocast dtype of a precision on a device is decided here too
(:func:`autocast_dtype`), once for both.

Examples
--------
>>> check_device("cpu")
'cpu'
>>> check_device("cuda:99", here=False)  # parsed, not looked for
'cuda:99'
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from typing import Any

from .exceptions import UsageError, argument

log = logging.getLogger(__name__)

#: the precisions below float32 that a CUDA GPU runs under autocast
REDUCED_PRECISIONS = ("bf16", "fp16")


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


def autocast_dtype(precision: str, device: str, name: str = "precision") -> Any:
    """The torch dtype a network runs in under autocast on ``device``; None: float32.

    ``precision`` is ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"``: bf16 on GPUs that
    compute it natively (compute capability 8 and up: A100, H100, RTX 30xx...), float32
    elsewhere. An explicit ``"bf16"`` on an older GPU (V100, T4) runs, emulated and
    slower than float32: a warning says so, naming the argument ``name``, once per
    device and process. The capability decides, not ``torch.cuda.is_bf16_supported()``,
    which counts emulation as support. A CPU always runs float32 (refusing a reduced
    precision there is the caller's).

    Examples
    --------
    >>> autocast_dtype("bf16", "cpu") is None
    True
    """
    import torch

    if not device.startswith("cuda") or precision == "fp32":
        return None
    native = torch.cuda.get_device_capability(device)[0] >= 8
    if precision == "auto":
        return torch.bfloat16 if native else None
    if precision == "bf16" and not native:
        _warn_emulated_bf16(device, name)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@functools.cache
def _warn_emulated_bf16(device: str, name: str) -> None:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    log.warning(
        "%s on %s (compute capability %d.%d): this GPU has no native bf16, which runs "
        "emulated and slower than float32; %s takes float32 here, 'fp16' is native",
        argument(name, "bf16"),
        device,
        major,
        minor,
        argument(name, "auto"),
    )


#: streams made once per process, by (purpose, device) (:func:`side_stream`)
_STREAMS: dict[tuple[str, str], Any] = {}
_STREAMS_LOCK = threading.Lock()


def side_stream(device: str, purpose: str) -> Any:
    """This process's CUDA stream on ``device`` for ``purpose`` (``"uploads"``,
    ``"captures"``...), made on first use: one each, not one a call (a stream that runs
    matrix products gets a cuBLAS workspace of its own)."""
    import torch

    with _STREAMS_LOCK:
        key = (purpose, device)
        if key not in _STREAMS:
            _STREAMS[key] = torch.cuda.Stream(device)
        return _STREAMS[key]
