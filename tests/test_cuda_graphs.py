"""CUDA graphs of forward passes (m3rcr_xr/cuda_graphs.py): the cache and its fallback.

A capture needs a GPU (``benchmarks/gpu_check.py`` compares graphed and eager outputs
there); here :func:`~m3rcr_xr.cuda_graphs.capture` is replaced by a stand-in whose
``replay`` runs the forward pass on the CPU into the same output buffer.
"""

from __future__ import annotations

import gc
import logging
import weakref

import pytest
import torch

import m3rcr_xr
from m3rcr_xr import cuda_graphs, models, runner
from m3rcr_xr.cuda_graphs import GraphedForward, GraphKey

KEY = GraphKey("cuda:0", (2, 3, 4, 4), torch.bfloat16)


def double(model, batch):
    return model(batch) * 2


class _Replay:
    """A CUDA graph's stand-in: each replay recomputes the output buffer in place."""

    def __init__(self, model, forward, static_input, static_output):
        self.model = weakref.ref(model)  # as a real graph, it does not keep the model
        self.forward, self.static_input, self.static_output = forward, static_input, static_output

    def replay(self):
        self.static_output.copy_(self.forward(self.model(), self.static_input))


@pytest.fixture
def captures(monkeypatch):
    """The keys captured, in order; a capture fails while ``failing`` holds a reason."""
    made: list[GraphKey] = []
    failing: list[str] = []

    def capture(model, key, forward):
        made.append(key)
        if failing:
            return failing[0]
        static_input = torch.zeros(key.shape)
        static_output = forward(model, static_input)
        return GraphedForward(
            _Replay(model, forward, static_input, static_output), static_input, static_output
        )

    monkeypatch.setattr(cuda_graphs, "capture", capture)
    monkeypatch.setattr(cuda_graphs, "_FAILED", [])
    cuda_graphs.clear()
    yield made, failing
    cuda_graphs.clear()


def test_one_capture_per_model_device_shape_and_dtype(captures):
    made, _ = captures
    net, other = torch.nn.Identity(), torch.nn.Identity()
    first = cuda_graphs.graphed_forward(net, KEY, double)
    assert cuda_graphs.graphed_forward(net, KEY, double) is first
    assert made == [KEY]
    keys = [
        GraphKey("cuda:1", KEY.shape, KEY.dtype),
        GraphKey(KEY.device, (1, 3, 4, 4), KEY.dtype),
        GraphKey(KEY.device, KEY.shape, None),
    ]
    assert len({id(cuda_graphs.graphed_forward(net, key, double)) for key in keys}) == 3
    assert cuda_graphs.graphed_forward(other, KEY, double) is not first
    assert made == [KEY, *keys, KEY]
    assert len(cuda_graphs.cuda_graph_report()) == 5


def test_a_replay_copies_the_batch_in_and_returns_the_graphs_output(captures):
    net = torch.nn.Identity()
    graphed = cuda_graphs.graphed_forward(net, KEY, double)
    batches = torch.rand((2, *KEY.shape))
    out = graphed(batches[0])
    torch.testing.assert_close(out, batches[0] * 2)
    assert graphed(batches[1]).data_ptr() == out.data_ptr()  # read before the next replay
    torch.testing.assert_close(out, batches[1] * 2)


def test_a_shorter_batch_fills_the_first_rows_of_the_graphs_input(captures):
    net = torch.nn.Identity()
    graphed = cuda_graphs.graphed_forward(net, KEY, double)
    graphed(torch.full(KEY.shape, 7.0))
    short = torch.rand((1, *KEY.shape[1:]))
    out = graphed(short)
    assert out.shape == short.shape
    torch.testing.assert_close(out, short * 2)


def test_the_option_off_captures_nothing(captures):
    made, _ = captures
    with m3rcr_xr.set_options(cuda_graphs=False):
        assert cuda_graphs.graphed_forward(torch.nn.Identity(), KEY, double) is None
    assert made == [] and cuda_graphs.cuda_graph_report() == []


def test_a_failed_capture_turns_graphs_off_in_the_process(captures, caplog):
    made, failing = captures
    net, other = torch.nn.Identity(), torch.nn.Identity()
    kept = cuda_graphs.graphed_forward(other, KEY, double)
    failing.append("RuntimeError: operation not permitted when stream is capturing")
    shorter = GraphKey(KEY.device, (1, 3, 4, 4), KEY.dtype)
    with caplog.at_level(logging.WARNING, logger="m3rcr_xr.cuda_graphs"):
        assert cuda_graphs.graphed_forward(net, shorter, double) is None
        assert cuda_graphs.graphed_forward(net, shorter, double) is None  # not tried again
        assert cuda_graphs.graphed_forward(net, KEY, double) is None  # nor another
        assert cuda_graphs.graphed_forward(other, KEY, double) is None  # nor one made
    assert made == [KEY, shorter] and kept is not None
    (record,) = caplog.records
    assert "Identity" in record.message and "1x3x4x4" in record.message
    assert "not permitted" in record.message and "off in this process" in record.message
    failed = [e for e in cuda_graphs.cuda_graph_report() if not e["captured"]]
    assert [e["error"][:21] for e in failed] == ["RuntimeError: operati"]


def test_a_failures_reason_names_the_error_it_followed():
    try:
        try:
            raise ValueError("a host sync (.item()) during the capture")
        except ValueError:
            raise RuntimeError("operation failed due to a previous error") from None
    except RuntimeError as error:
        reason = cuda_graphs._reason(error)  # as Python shows it: without the context
        assert reason == "RuntimeError: operation failed due to a previous error"
    try:
        try:
            raise ValueError("a host sync during the capture")
        except ValueError:
            raise RuntimeError("capture invalidated")  # noqa: B904 - the implicit context
    except RuntimeError as error:
        assert cuda_graphs._reason(error) == (
            "RuntimeError: capture invalidated (after ValueError: a host sync during the capture)"
        )


def test_graphs_are_dropped_with_their_model_or_by_clear(captures):
    net = torch.nn.Identity()
    cuda_graphs.graphed_forward(net, KEY, double)
    del net
    gc.collect()
    assert cuda_graphs.cuda_graph_report() == []
    kept = torch.nn.Identity()
    cuda_graphs.graphed_forward(kept, KEY, double)
    runner.clear_model_cache()  # the models' graphs go with the models
    assert cuda_graphs.cuda_graph_report() == []


@pytest.mark.parametrize("name", ["dsen2_cr", "glf_cr", "align_cr", "landcover_unet"])
def test_each_network_computes_each_tile_on_its_own(name):
    """What a shorter batch in a graph's first rows relies on: the rows after it (the
    previous batch's tiles) change nothing in its outputs."""
    torch.manual_seed(0)
    model = models.build(name, preset="small").eval()
    sar = 0 if model.spec.task == "landcover" else 2
    batch = torch.rand(3, model.spec.optical_channels + sar, 32, 32)
    with torch.inference_mode():
        alone = runner._forward(model, batch[:1])
        padded = runner._forward(model, batch)[:1]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
