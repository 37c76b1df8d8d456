"""Peak memory of one forward pass (parameters + inputs + activations), at any batch size.

Measured with `max_memory_allocated` on CUDA; estimated with the live-bytes tracker elsewhere, on
fake tensors (no data, no compute) where the model allows, else on real ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..inputs import as_args_kwargs, call_model, resize_batch, tensors  # noqa: F401  (resize_batch: the one batch policy)
from ..locate.culprit import module_label
from ..text import format_bytes
from ..tree import map_leaves
from .search import free_cuda_memory
from .tracker import LiveBytesTracker, input_bytes, model_bytes


@dataclass
class PeakMeasurement:
    """Peak memory of one forward pass at one batch size."""

    batch: int
    peak_bytes: int  # parameters + inputs + activations alive at the worst moment
    param_bytes: int
    input_bytes: int
    activation_peak: int  # peak_bytes - param_bytes - input_bytes
    method: str  # "cuda" (max_memory_allocated), "fake" (fake tensors), "dispatch" (real CPU run)
    #: (dotted path, type name) of the module running at the peak; None when not tracked (CUDA)
    peak_at: tuple[str, str] | None = None
    peak_op: str = ""

    @property
    def peak_module(self) -> str:
        """`act (ReLU)`: the module running at the peak, "" when unknown."""
        return module_label(self.peak_at[0], self.peak_at[1] or None) if self.peak_at else ""

    def as_row(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "peak_bytes": self.peak_bytes, "peak": format_bytes(self.peak_bytes),
            "activations": format_bytes(self.activation_peak), "method": self.method,
            "peak_module": self.peak_module, "peak_op": self.peak_op,
        }


def run_forward(model: torch.nn.Module, inputs: Any, grad: bool) -> Any:
    """One call: with autograd when `grad`, else under inference_mode."""
    if grad:
        with torch.enable_grad():
            return call_model(model, inputs)
    with torch.inference_mode():
        return call_model(model, inputs)


def _from_tracker(batch: int, params: int, ins: int, tracker: LiveBytesTracker, method: str) -> PeakMeasurement:
    return PeakMeasurement(batch, params + ins + tracker.peak, params, ins, tracker.peak, method,
                           tracker.peak_module, tracker.peak_op)


def measure_peak_dispatch(model: torch.nn.Module, inputs: Any, *, batch: int, grad: bool = False,
                          run: Callable[[torch.nn.Module, Any], Any] | None = None) -> PeakMeasurement:
    """Peak from a real run with the live-bytes tracker (any device); `run(model, inputs)` calls the model
    (default: under inference_mode, or with autograd when `grad`)."""
    params, ins = model_bytes(model), input_bytes(inputs)
    tracker = LiveBytesTracker(model)
    with tracker:
        out = run(model, inputs) if run is not None else run_forward(model, inputs, grad)
    del out
    return _from_tracker(batch, params, ins, tracker, "dispatch")


def measure_peak_fake(model: torch.nn.Module, inputs: Any, *, batch: int, grad: bool = False) -> PeakMeasurement:
    """Peak from a run on fake tensors: shapes only, no data and no arithmetic (fast at any batch).

    Raises when the model needs data (`.item()`, `nonzero`, data-dependent control flow).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    params, ins = model_bytes(model), input_bytes(inputs)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    state = {name: fake_mode.from_tensor(t) for name, t in
             [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    fake_inputs = map_leaves(inputs, lambda t: fake_mode.from_tensor(t) if isinstance(t, torch.Tensor) else t)
    args, kwargs = as_args_kwargs(fake_inputs)
    tracker = LiveBytesTracker(model)
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx, fake_mode, tracker:
        out = torch.func.functional_call(model, state, args, kwargs, tie_weights=True)
    del out
    return _from_tracker(batch, params, ins, tracker, "fake")


def measure_peak_cuda(model: torch.nn.Module, inputs: Any, *, batch: int, grad: bool = False) -> PeakMeasurement:
    """Peak from CUDA's allocator statistics (model and inputs already on the device)."""
    device = next((t.device for t in tensors(inputs) if t.is_cuda), None) or next(
        (p.device for p in model.parameters() if p.is_cuda), torch.device("cuda"))
    params, ins = model_bytes(model), input_bytes(inputs)
    free_cuda_memory()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = run_forward(model, inputs, grad)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    # `base` holds the parameters and inputs and anything else already resident (other models).
    activations = max(peak - base, 0)
    return PeakMeasurement(batch, params + ins + activations, params, ins, activations, "cuda")


def measure_peak(model: torch.nn.Module, inputs: Any, *, batch: int, method: str = "auto", grad: bool = False) -> PeakMeasurement:
    """Peak memory of one forward pass, by `method`: cuda | fake | dispatch | auto.

    auto: CUDA statistics when the model runs on CUDA; else fake tensors, and a real run with the
    tracker when the model needs real data.
    """
    on_cuda = any(t.is_cuda for t in [*tensors(inputs), *model.parameters()])
    if method == "cuda" or (method == "auto" and on_cuda):
        return measure_peak_cuda(model, inputs, batch=batch, grad=grad)
    if method in ("fake", "auto"):
        try:
            return measure_peak_fake(model, inputs, batch=batch, grad=grad)
        except Exception:
            if method == "fake":
                raise
    return measure_peak_dispatch(model, inputs, batch=batch, grad=grad)


# ---------------------------------------------------------------------------------------------
# One try of the out-of-memory search (see `search.search_max_batch`)


def simulated_try(model: torch.nn.Module, make_inputs: Callable[[int], Any], allocator: Any,
                  *, grad: bool = False) -> Callable[[int], None]:
    """A `try_batch` that runs the real model on CPU against a `BudgetAllocator`.

    Inputs count against the allocator while the try runs; parameters should be its `resident` bytes.
    """

    def try_batch(batch: int) -> None:
        inputs = make_inputs(batch)
        nbytes = input_bytes(inputs)
        allocator.alloc(nbytes)
        try:
            with LiveBytesTracker(model, on_alloc=allocator.alloc, on_free=allocator.free):
                out = run_forward(model, inputs, grad)
            del out
        finally:
            allocator.free(nbytes)

    return try_batch


def cuda_try(model: torch.nn.Module, make_inputs: Callable[[int], Any], *, grad: bool = False) -> Callable[[int], None]:
    """A `try_batch` that runs the model on CUDA for real."""

    def try_batch(batch: int) -> None:
        inputs = make_inputs(batch)
        out = run_forward(model, inputs, grad)
        torch.cuda.synchronize()
        del out, inputs

    return try_batch
