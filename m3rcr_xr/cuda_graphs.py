"""Forward passes replayed from CUDA graphs: one capture per model, device, batch shape
and precision, made on first use and kept with the model.

Why: a forward pass of the attention networks (GLF-CR, Align-CR) at their default tile
is some 4,000 small kernels a batch, and the host's launches bound it. On an H200
(``benchmarks/gpu_threads.py``, 2026-11-27, bf16, batch 8) a raw PyTorch loop over
144 tiles of GLF-CR took 1.28 s, and under torch's profiler the device was busy for
1.19 s of its run; replaying a graph of the same forward pass took 1.19 s. In decloud
the launching thread also shares the interpreter with the threads that crop and
blend, which slowed it to 0.90 of the raw loop (Align-CR: 0.80). A replay is one
launch a batch, which no thread holds up.

The tile path (:func:`m3rcr_xr.runner.run_tiles`) runs every batch through the graph of
its full batch size: a shorter last batch fills the first rows of the graph's input
(the networks compute each tile on its own, so the rows left over change nothing), so
that no eager pass needs memory beside the graph's. The ``cuda_graphs`` option
(:func:`m3rcr_xr.set_options`) turns this off. A capture that fails is logged, and
graphs are off in the process from then on (a failed capture can leave torch's memory
allocator believing a capture is under way): its batches run eagerly, as they would
without this module.

The cost is memory: each graph keeps the intermediate tensors of one batch in a pool of
its own for as long as the model lives (:func:`clear` frees them), about the memory
of one eager batch (:func:`cuda_graph_report` lists the graphs).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .devices import side_stream
from .options import OPTIONS

log = logging.getLogger(__name__)

#: eager passes on the capture's stream before it (the device's lazy initialisation,
#: cuDNN's choice of algorithms), as PyTorch's CUDA-graph notes advise
WARMUP_PASSES = 3


@dataclass(frozen=True)
class GraphKey:
    """What a graph is captured for: the device, the batch's shape and the autocast dtype
    (``None``: float32)."""

    device: str
    shape: tuple[int, ...]
    dtype: Any


@dataclass
class GraphedForward:
    """A captured forward pass: copy a batch into the first rows of ``static_input``,
    replay, read as many rows of ``static_output``.

    Both buffers are shared by every call: the next call overwrites them. Call it, and
    read its output, on one stream (the tile path queues everything on the device's
    default stream, under the device's lock), so that a replay starts only once the
    previous output has been read.
    """

    graph: Any
    static_input: Any
    static_output: Any

    def __call__(self, batch):
        rows = len(batch)
        self.static_input[:rows].copy_(batch)
        self.graph.replay()
        return self.static_output[:rows]


#: per model (dropped with it), per key: the graph, or why it could not be captured
_GRAPHS: weakref.WeakKeyDictionary[Any, dict[GraphKey, GraphedForward | str]] = (
    weakref.WeakKeyDictionary()
)
#: why graphs are off in this process since a capture failed; empty while they are on
_FAILED: list[str] = []
_LOCK = threading.Lock()  # guards the two above


def graphed_forward(
    model, key: GraphKey, forward: Callable[[Any, Any], Any]
) -> GraphedForward | None:
    """The graph of ``forward(model, batch)`` for batches of ``key``, captured on first
    use (:func:`capture`); ``None`` where the ``cuda_graphs`` option is off or a
    capture failed in this process (logged once; its batches then run eagerly).

    Call it with the device's lock held (:func:`m3rcr_xr.runner.device_lock`), within
    ``torch.inference_mode()``: a capture needs the device to itself, and the graph's
    buffers are shared by every call.
    """
    with _LOCK:
        if not OPTIONS["cuda_graphs"] or _FAILED:
            return None
        known = _GRAPHS.setdefault(model, {}).get(key)
    if known is None:
        known = capture(model, key, forward)
        with _LOCK:
            _GRAPHS.setdefault(model, {})[key] = known
            if isinstance(known, str):
                _FAILED.append(known)
        if isinstance(known, str):
            log.warning(
                "no CUDA graph of %s for batches %s on %s (%s); CUDA graphs are off in "
                "this process from now on, and its batches run eagerly",
                type(model).__name__,
                "x".join(map(str, key.shape)),
                key.device,
                known,
            )
    return known if isinstance(known, GraphedForward) else None


def capture(model, key: GraphKey, forward: Callable[[Any, Any], Any]) -> GraphedForward | str:
    """Capture ``forward(model, batch)`` on a batch of zeros of ``key``'s shape, after
    :data:`WARMUP_PASSES` eager passes on the capture's stream; where the capture
    fails, the reason. An error of the warm-up, the network's own, is raised.

    Autocast runs inside the capture without its cache of cast weights (a cached cast
    made during a capture would not outlive it). Only this thread's calls are checked
    during the capture (``capture_error_mode="thread_local"``): other threads go on
    staging tiles in page-locked memory meanwhile.
    """
    import torch

    current = torch.cuda.current_stream(key.device)
    static_input = torch.zeros(key.shape, device=key.device)  # on the current stream
    stream = side_stream(key.device, "captures")
    stream.wait_stream(current)

    def run():
        enabled = key.dtype is not None
        with torch.autocast("cuda", dtype=key.dtype, enabled=enabled, cache_enabled=False):
            return forward(model, static_input)

    with torch.cuda.stream(stream):
        for _ in range(WARMUP_PASSES):
            run()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            static_output = run()
    except Exception as error:  # whatever the capture refused: these batches run eagerly
        # torch.cuda.graph leaves its stream current where the capture's end fails
        torch.cuda.set_stream(current)
        return _reason(error)
    finally:
        current.wait_stream(stream)
    return GraphedForward(graph, static_input, static_output)


def _reason(error: BaseException) -> str:
    """``error`` in one line, with the error it followed: a failed capture's own message
    is often only that an earlier operation failed during the capture."""
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return text if cause is None else f"{text} (after {type(cause).__name__}: {cause})"


def cuda_graph_report() -> list[dict[str, Any]]:
    """The graphs of this process: each model's class, device, batch shape, dtype, and
    whether it was captured (else ``error`` says why).

    Examples
    --------
    >>> cuda_graph_report()  # doctest: +SKIP
    [{'model': 'GLFCR', 'device': 'cuda:0', 'shape': [8, 6, 160, 160],
      'dtype': 'torch.bfloat16', 'captured': True, 'error': None}]
    """
    with _LOCK:
        entries = [(model, dict(graphs)) for model, graphs in _GRAPHS.items()]
    return [
        {
            "model": type(model).__name__,
            "device": key.device,
            "shape": list(key.shape),
            "dtype": str(key.dtype),
            "captured": isinstance(known, GraphedForward),
            "error": None if isinstance(known, GraphedForward) else known,
        }
        for model, graphs in entries
        for key, known in graphs.items()
    ]


def clear() -> None:
    """Forget the graphs of this process, freeing their memory pools once nothing else
    holds them. Graphs stay off where a capture failed."""
    with _LOCK:
        _GRAPHS.clear()
