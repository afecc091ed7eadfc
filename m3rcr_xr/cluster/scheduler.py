"""A client of a Dask cluster that is already running (:func:`connect`), found by its
scheduler's address or the file the scheduler wrote it to.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..exceptions import InputFileError, MissingFileError, UsageError, argument, check_positive

log = logging.getLogger(__name__)

#: seconds :func:`connect` waits for a scheduler (``m3rcr --scheduler-timeout``)
SCHEDULER_TIMEOUT = 10.0


def _scheduler_file_address(path: Path, deadline: float) -> str:
    """The address in a scheduler file (``dask scheduler --scheduler-file``), waiting
    until ``deadline`` for the file to appear, as a batch job writes it when it starts."""
    while not path.is_file():
        if time.monotonic() > deadline:
            raise MissingFileError(f"scheduler file {path} does not exist")
        time.sleep(0.1)
    try:
        address = json.loads(path.read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputFileError(
            f"scheduler file {path} is not a Dask scheduler file (no address in it: {err!r})"
        ) from err
    if not isinstance(address, str):
        raise InputFileError(f"scheduler file {path}: address {address!r} is not a string")
    return address


def connect(
    address: str | None = None,
    *,
    scheduler_file: str | os.PathLike[str] | None = None,
    timeout: float = SCHEDULER_TIMEOUT,
):
    """A ``distributed.Client`` of a running Dask cluster, made the default scheduler.

    Give the scheduler's ``address`` (``tcp://host:8786``) or the ``scheduler_file`` it
    wrote (``dask scheduler --scheduler-file``, ``dask_jobqueue``, ``dask-mpi``). Work
    computed while the client is open (``decloud``, ``to_zarr``, ``evaluate``) runs on
    the cluster's workers, which must see the same files as this process (inputs,
    checkpoint, local stores: a shared file system or object storage). Close the client
    when done, or use it as a context manager.

    Parameters
    ----------
    address
        The scheduler's address.
    scheduler_file
        A JSON file with the scheduler's address, instead of ``address``. It may appear
        while :func:`connect` waits (a batch job that is starting).
    timeout
        Seconds to wait for the file and for the scheduler to answer.

    Raises
    ------
    UsageError
        Both or neither of ``address`` and ``scheduler_file``, a bad ``timeout``, or no
        scheduler answered at the address within ``timeout`` (the message names it).
    MissingFileError, InputFileError
        The scheduler file did not appear within ``timeout``, or holds no address.

    Examples
    --------
    >>> from m3rcr_xr.cluster import connect
    >>> with connect("tcp://10.0.0.5:8786") as client:  # doctest: +SKIP
    ...     m3rcr_xr.to_zarr(scene.m3rcr.decloud("dsen2_cr", "weights.pth").to_dataset(),
    ...                      "/shared/decloud.zarr")
    """
    from distributed import Client

    if (address is None) == (scheduler_file is None):
        raise UsageError(
            f"give {argument('address')} or {argument('scheduler_file')}, one of them, "
            f"not {'both' if address is not None else 'neither'}"
        )
    seconds = check_positive("timeout", timeout)
    deadline = time.monotonic() + seconds
    if scheduler_file is not None:
        address = _scheduler_file_address(Path(scheduler_file), deadline)
        where = f"{address} (from {scheduler_file})"
    else:
        where = str(address)
    try:
        client = Client(address, timeout=max(deadline - time.monotonic(), 0.1))
    except (OSError, TimeoutError, ValueError) as err:
        raise UsageError(
            f"no Dask scheduler answered at {where} within {seconds:g} s ({err})"
        ) from err
    log.info("connected to the Dask scheduler at %s (dashboard %s)", where, client.dashboard_link)
    return client
