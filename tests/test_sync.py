"""diagnostics.sync: which calls force a host-device sync, the Python-level wrappers and their restoration."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from torch_diagnose.sync import COPY, EXPLICIT, SCALAR, SHAPE, SyncSpy, dispatch_syncs, matches_allow

_ORIGINAL_TENSOR_ATTRS = {name: torch.Tensor.__dict__.get(name) for name in ("tolist", "numpy", "cpu", "to")}


class Probe(nn.Module):
    """Runs one snippet as its forward, so each case is attributed to module `inner`."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.inner = _Inner(fn)

    def forward(self, x: torch.Tensor):
        return self.inner(x)


class _Inner(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor):
        return self.fn(x)


CASES = {
    "item": (lambda x: x.sum().item(), SCALAR),
    "float": (lambda x: float(x.sum()), SCALAR),
    "int": (lambda x: int(x.argmax()), SCALAR),
    "if": (lambda x: 1 if x.sum() > 0 else 0, SCALAR),
    "equal": (lambda x: torch.equal(x, x), SCALAR),
    "nonzero": (lambda x: x.nonzero(), SHAPE),
    "where1": (lambda x: torch.where(x > 0), SHAPE),
    "mask_index": (lambda x: x[x > 0], SHAPE),
    "mask_assign": (lambda x: x.clone().masked_fill(x > 0, 0).__setitem__(x > 0, 1.0), SHAPE),
    "masked_select": (lambda x: torch.masked_select(x, x > 0), SHAPE),
    "unique": (lambda x: torch.unique(x), SHAPE),
    "repeat_interleave": (lambda x: torch.repeat_interleave(x, (x > 0).long().flatten() + 1, dim=0), SHAPE),
    "tolist": (lambda x: x.tolist(), COPY),
    "numpy": (lambda x: x.numpy(), COPY),
    "np_asarray": (lambda x: np.asarray(x), COPY),
    "cpu": (lambda x: x.cpu(), COPY),
    "to_cpu": (lambda x: x.to("cpu"), COPY),
    "synchronize": (lambda x: torch.cuda.synchronize(), EXPLICIT),
}


@pytest.mark.parametrize("grad_mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_sync_kind_is_caught_once_with_module_and_line(case: str, grad_mode: str) -> None:
    fn, kind = CASES[case]
    model = Probe(fn).eval()
    mode = torch.inference_mode() if grad_mode == "inference_mode" else torch.no_grad()
    with mode, SyncSpy(model) as spy:
        model(torch.randn(6))
    points = spy.points()
    assert len(points) == 1, [p.as_row() for p in points]
    point = points[0]
    assert point.kind == kind
    assert point.module_label == "inner (_Inner)"
    assert point.event.file and point.event.file.endswith("test_sync.py")
    assert f'"{case}"' in point.event.code


def test_clean_ops_are_not_sync_points() -> None:
    def clean(x: torch.Tensor) -> torch.Tensor:
        y = torch.where(x > 0, x, torch.zeros_like(x))  # three-argument where
        y = y[torch.tensor([0, 2])]  # integer index
        y = y.masked_fill(y > 1, 1.0)
        idx = torch.nonzero_static(x > 0, size=3)  # fixed size: no sync
        return y.topk(2).values + x.sort().values[:2] + idx.sum()

    model = Probe(clean).eval()
    with torch.inference_mode(), SyncSpy(model) as spy:
        model(torch.randn(6))
    assert spy.points() == []


def test_host_side_helper_tensors_are_not_sync_points() -> None:
    """`torch.tensor(python_number)` lives on the host in a GPU deployment too: reading it costs nothing."""

    def helpers(x: torch.Tensor) -> torch.Tensor:
        scale = float(torch.tensor(3.0).log2().round())  # host-only: no sync
        sizes = torch.tensor([2, 3]).tolist()  # host-only: no sync
        return x * scale * sizes[0] + (x * torch.tensor(2.0)).sum().item()  # mixed with a device tensor: sync

    model = Probe(helpers).eval()
    with torch.inference_mode(), SyncSpy(model) as spy:
        model(torch.randn(6))
    (point,) = spy.points()
    assert point.kind == SCALAR
    assert "(x * torch.tensor(2.0)).sum().item()" in point.event.code


def test_sync_inside_library_code_points_at_the_library_line() -> None:
    """With the calling tool's folder skipped, a sync inside torch's own module is located in torch."""
    import os

    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=True).eval()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    here = os.path.dirname(os.path.abspath(__file__))
    with torch.inference_mode(), SyncSpy(encoder, skip_dirs=(here,)) as spy, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        encoder(torch.randn(2, 5, 16), src_key_padding_mask=mask)
    points = spy.points()
    assert points and all("nested_tensor" in p.op for p in points), [p.as_row() for p in points]
    assert all(p.event.file.endswith(os.path.join("nn", "modules", "transformer.py")) for p in points), [p.event.file for p in points]


def test_repeated_calls_are_one_point_with_a_count() -> None:
    def loop(x: torch.Tensor) -> float:
        total = 0.0
        for row in x:
            total += row.sum().item()
        return total

    model = Probe(loop).eval()
    with torch.inference_mode(), SyncSpy(model) as spy:
        model(torch.randn(5, 3))
    (point,) = spy.points()
    assert point.count == 5


def test_wrappers_are_restored_even_when_forward_raises() -> None:
    def boom(x: torch.Tensor) -> None:
        x.tolist()
        raise RuntimeError("boom")

    model = Probe(boom).eval()
    sync_before = torch.cuda.synchronize
    with pytest.raises(RuntimeError, match="boom"):
        with SyncSpy(model):
            model(torch.randn(2))
    for name, original in _ORIGINAL_TENSOR_ATTRS.items():
        assert torch.Tensor.__dict__.get(name) is original, name
    assert torch.cuda.synchronize is sync_before
    assert torch.randn(3).tolist  # still works


def test_torch_internal_host_helpers_on_cpu_are_not_reported() -> None:
    """torch's own Python code calling .tolist() on CPU-side helper tensors is not the model's sync."""
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2, mode="bilinear"), nn.AdaptiveAvgPool2d(2)).eval()
    with torch.inference_mode(), SyncSpy(conv) as spy:
        conv(torch.randn(1, 3, 16, 16))
    assert spy.points() == []


def test_other_threads_are_not_recorded() -> None:
    model = Probe(lambda x: x * 2).eval()
    with SyncSpy(model) as spy:
        worker = threading.Thread(target=lambda: torch.randn(3).tolist())
        worker.start()
        worker.join()
        model(torch.randn(2))
    assert spy.points() == []


def test_dispatch_rules_need_the_arguments() -> None:
    x = torch.randn(4)
    assert dispatch_syncs("index", (x, [x > 0]), {})
    assert not dispatch_syncs("index", (x, [torch.tensor([0, 1])]), {})
    assert dispatch_syncs("where", (x > 0,), {})
    assert not dispatch_syncs("where", (x > 0, x, x), {})
    assert not dispatch_syncs("repeat_interleave", (x, torch.ones(4, dtype=torch.long)), {"output_size": 4})
    assert not dispatch_syncs("_to_copy", (x,), {"device": torch.device("cpu")})  # CPU -> CPU


def test_allowlist_matches_op_module_type_and_location() -> None:
    def post(x: torch.Tensor) -> torch.Tensor:
        return x[x > 0]

    model = Probe(post).eval()
    with torch.inference_mode(), SyncSpy(model) as spy:
        model(torch.randn(6))
    (point,) = spy.points()
    line = f"test_sync.py:{point.event.line}"
    assert matches_allow(point, ["index"]) == "index"
    assert matches_allow(point, ["inner"]) == "inner"
    assert matches_allow(point, ["_Inner"]) == "_Inner"
    assert matches_allow(point, [line]) == line
    assert matches_allow(point, ["data-dependent shape"]) == "data-dependent shape"
    assert matches_allow(point, ["nonzero", "item", "other", "inne"]) is None


# ---------------------------------------------------------------------------------------------
# The real CUDA path (skipped without a GPU)


@pytest.mark.cuda
def test_cuda_sync_debug_mode_confirms_item_and_restores_the_mode() -> None:
    model = Probe(lambda x: x.sum().item()).eval().cuda()
    before = torch.cuda.get_sync_debug_mode()
    with torch.inference_mode(), SyncSpy(model) as spy:
        model(torch.randn(6, device="cuda"))
    assert torch.cuda.get_sync_debug_mode() == before
    (point,) = spy.points()
    assert point.kind == SCALAR
    assert spy.cuda_warnings, "set_sync_debug_mode('warn') should have warned about .item()"
    assert point.confirmed_on_cuda


@pytest.mark.cuda
def test_cuda_device_to_host_copy_is_caught_in_dispatch_and_wrappers() -> None:
    model = Probe(lambda x: (x.cpu(), x.to("cpu"), x.tolist(), x.to(torch.device("cpu")))).eval().cuda()
    with torch.inference_mode(), SyncSpy(model) as spy:
        model(torch.randn(6, device="cuda"))
    points = spy.points()
    assert {p.kind for p in points} == {COPY}
    # one point per op on the line, not doubled by the dispatch-level copy; the two .to calls share one
    assert sorted((p.op, p.count) for p in points) == [("Tensor.cpu", 1), ("Tensor.to", 2), ("Tensor.tolist", 1)]
