"""The GPUs this process may use, and those a cluster's workers are given.

Ids are ``CUDA_VISIBLE_DEVICES`` entries (a batch job's allocation), counted by torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..exceptions import UsageError, argument, check_integer

GpuSpec = str | int | Sequence[int | str]


def visible_devices() -> list[str] | None:
    """The ids of ``CUDA_VISIBLE_DEVICES``, or None when it is not set.

    CUDA stops at the first invalid entry (``-1`` hides every device).
    """
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    ids: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        ids.append(entry)
    return ids


def torch_gpu_count() -> int:
    """CUDA devices torch sees in this process."""
    import torch

    return int(torch.cuda.device_count())


def gpu_devices() -> list[str]:
    """CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    The count comes from torch (``torch.cuda.device_count()``); the ids from
    ``CUDA_VISIBLE_DEVICES`` when it is set (so a batch job's allocation is kept), else
    ``0 .. n-1``.

    Examples
    --------
    >>> gpu_devices()  # doctest: +SKIP
    ['0', '1']
    """
    count = torch_gpu_count()
    visible = visible_devices()
    if visible is None:
        return [str(index) for index in range(count)]
    return visible[:count]


def select_gpus(gpus: GpuSpec) -> list[str]:
    """``"auto"``: every visible GPU; an int: the first ``n`` of them; a list: those ids,
    each among :func:`gpu_devices` (a ``CUDA_VISIBLE_DEVICES`` entry, not torch's index
    within it)."""
    if isinstance(gpus, str):
        if gpus != "auto":
            raise UsageError(f"gpus must be 'auto', a count or a list of ids, not {gpus!r}")
        return gpu_devices()
    found = gpu_devices()
    if isinstance(gpus, int):
        check_integer("gpus", gpus, minimum=0)  # True is no count of GPUs
        if not 0 <= gpus <= len(found):
            raise UsageError(f"gpus={gpus}: this machine has {len(found)} GPU(s) {found}")
        return found[:gpus]
    chosen = [str(device) for device in gpus]
    # a worker given an id it cannot see would advertise GPU=1 and run on the CPU, or
    # on a GPU outside the job's allocation
    unknown = [device for device in chosen if device not in found]
    if unknown:
        raise UsageError(
            f"{argument('gpus', list(gpus))}: no GPU {', '.join(unknown)} here; this process "
            f"may use {found or 'none'} (CUDA_VISIBLE_DEVICES ids)"
        )
    return chosen
