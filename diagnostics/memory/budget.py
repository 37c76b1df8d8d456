"""What `cuda_oom` measures: peak memory at the batches that matter, the module at the peak, the real search.

`BudgetPlan` holds the deployment's numbers (batch, budget, reserve, margin); `measure_batches`
measures a peak per batch size (CUDA statistics on a GPU; on CPU a tracked real run for small
batches and fake tensors above the example's batch); `confirm_on_cuda` runs the real search.
`ByteSize` and `Margin` are option types: the registry parses and validates them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import inputs as inp
from ..context import Context
from ..locate.culprit import Culprit
from ..locate.source import class_frame
from ..options import parse_size
from ..results import SkipCheck
from ..text import GiB, format_bytes, one_line
from .peak import PeakMeasurement, cuda_try, measure_peak_cuda, measure_peak_dispatch, measure_peak_fake
from .search import SearchResult, fit_linear, free_cuda_memory, is_oom, memory_fraction, search_max_batch
from .tracker import model_bytes

#: Real CPU runs are skipped when the fit predicts more than this (fake tensors or the fit are used instead).
MAX_REAL_RUN_BYTES = 2 * GiB


class ByteSize(int):
    """An option in bytes, written `8GB`, `512MiB` or a plain number (see `options.parse_size`)."""

    def __new__(cls, raw: Any) -> "ByteSize | None":  # type: ignore[misc]
        value = parse_size(raw if isinstance(raw, int) else str(raw))
        return None if value is None else super().__new__(cls, value)  # "" means unset


class Margin(float):
    """A safety margin: a fraction >= 0 (0.25 = 25%)."""

    def __new__(cls, raw: Any) -> "Margin":
        value = float(raw)
        if not value >= 0:
            raise ValueError(f"a margin must be >= 0, got {raw!r}")
        return super().__new__(cls, value)


@dataclass
class BudgetPlan:
    """The deployment the check judges: its batch, the memory it may use, and how it was measured."""

    on_cuda: bool
    example: int  # the example inputs' batch
    deploy: int  # the deployment batch
    budget: int | None
    budget_source: str  # "given" or "device total"
    reserve: int
    margin: float
    dims: Any = None  # BatchDims: the one batch policy (`inputs.run_batch_dims`)
    unit: str = "sample"  # what one sample is: `image` for a list of images
    rejected: dict[int, str] = field(default_factory=dict)  # batches the model refuses to run, and why

    def batch_text(self, n: int) -> str:
        """`batch 4`, or `batch of 4 images` when the batch is a list of images."""
        return f"batch {n}" if self.unit == "sample" else f"batch of {n} {self.unit}{'s' if n != 1 else ''}"

    @property
    def rejection(self) -> str:
        """`the model rejects batch 1, 4: <error> at <line>` ("" when it runs every batch tried)."""
        if not self.rejected:
            return ""
        first = next(iter(self.rejected.values()))
        return f"the model rejects batch {', '.join(map(str, self.rejected))}: {first}"

    @property
    def batches(self) -> list[int]:
        return sorted({1, 2, 4, self.example, self.deploy})

    @property
    def method(self) -> str:
        return ("measured on CUDA (max_memory_allocated)" if self.on_cuda
                else "estimated on CPU from live tensor bytes during forward")

    @property
    def caveat(self) -> str:
        """What a CPU estimate leaves out ("" on CUDA)."""
        return ("" if self.on_cuda else
                "a CPU estimate leaves out the CUDA context (typically 0.3-1 GiB per process), cuDNN/cuBLAS workspaces and "
                f"allocator fragmentation; a {self.margin:.0%} margin is applied")

    @property
    def not_counted(self) -> str:
        return self.caveat or ("max_memory_allocated does not count the CUDA context (typically 0.3-1 GiB per process): "
                               f"set `reserve` for it; a {self.margin:.0%} margin covers fragmentation")

    @property
    def usable(self) -> float:
        """Bytes the peak may reach: the budget less the reserve, divided by the margin."""
        return (self.budget - self.reserve) / (1.0 + self.margin) if self.budget is not None else float("inf")

    @property
    def budget_line(self) -> str:
        return (f"budget {format_bytes(self.budget)}" + (f" - reserve {format_bytes(self.reserve)}" if self.reserve else "")
                + f" ({self.budget_source})")


def example_batch(ctx: Context) -> int:
    """The example inputs' batch size; skips the check when the inputs share no batch dimension."""
    dims, _source = inp.run_batch_dims(ctx)
    size = inp.batch_size(ctx.inputs, dims)
    if size is None or size < 1:
        raise SkipCheck(f"the example inputs have no common batch dimension {dims} (got {inp.describe(ctx.inputs)}): "
                        "peak memory cannot be related to a batch size")
    return size


def measure_batches(ctx: Context, batches: list[int], on_cuda: bool,
                    rejected: dict[int, str] | None = None) -> tuple[list[PeakMeasurement], list[str]]:
    """Peak per batch: CUDA statistics on a GPU; on CPU a real tracked run for small batches and fake
    tensors (falling back to a real run) above the example's batch. A batch other than the example's
    that the model refuses (`x.view(2, -1)`) goes into `rejected` (batch -> why) instead of ending the check."""
    example = example_batch(ctx)
    dims, _source = inp.run_batch_dims(ctx)
    measured: list[PeakMeasurement] = []
    notes: list[str] = []
    rejected = {} if rejected is None else rejected
    fake_ok = True
    for batch in batches:
        x = inp.resize_batch(ctx.inputs, batch, dims)
        try:
            fake_ok = _measure_one(ctx, x, batch, example, on_cuda, fake_ok, measured, notes)
        except Exception as exc:
            if batch == example or is_oom(exc):
                raise
            rejected[batch] = inp.rejection(exc)
    return measured, notes


def _measure_one(ctx: Context, x: Any, batch: int, example: int, on_cuda: bool, fake_ok: bool,
                 measured: list[PeakMeasurement], notes: list[str]) -> bool:
    """Measure one batch into `measured`; returns whether fake tensors still work for this model."""
    if on_cuda:
        _measure_on_cuda(ctx, x, batch, measured, notes)
        return fake_ok
    if batch > max(example, 4) and fake_ok:
        try:
            measured.append(measure_peak_fake(ctx.model, x, batch=batch))
            return fake_ok
        except Exception as exc:
            fake_ok = False
            notes.append(f"fake tensors cannot run this model ({one_line(exc, 120)}); larger batches were run for real")
    if len(measured) >= 2 and batch > example:
        predicted = fit_linear([(m.batch, m.peak_bytes) for m in measured]).predict(batch)
        if predicted > MAX_REAL_RUN_BYTES:
            notes.append(f"batch {batch} was not run on CPU (predicted {predicted / GiB:.1f} GiB): its peak is extrapolated")
            return fake_ok
    measured.append(measure_peak_dispatch(ctx.model, x, batch=batch, run=lambda m, xi: ctx.forward(xi, m)))
    return fake_ok


def _measure_on_cuda(ctx: Context, x: Any, batch: int, measured: list[PeakMeasurement], notes: list[str]) -> None:
    try:
        measured.append(measure_peak_cuda(ctx.model, x, batch=batch))
    except Exception as exc:
        if not is_oom(exc):
            raise
        notes.append(f"batch {batch} ran out of memory on the device while measuring")
        free_cuda_memory()


def peak_culprit(ctx: Context, measured: list[PeakMeasurement], deploy_m: PeakMeasurement | None) -> Culprit | None:
    """The module running when activation memory peaks (CUDA statistics do not say: track one small batch),
    with where its forward is written when that is the user's code."""
    found = (deploy_m.peak_at if deploy_m and deploy_m.peak_at else None) or next((m.peak_at for m in measured if m.peak_at), None)
    if found is None:
        try:
            found = measure_peak_dispatch(ctx.model, ctx.inputs, batch=0, run=lambda m, xi: ctx.forward(xi, m)).peak_at
        except Exception as exc:  # even the example batch does not fit: the verdict says so, the name is a courtesy
            if not is_oom(exc):
                raise
            free_cuda_memory()
            return None
    name, type_name = found
    try:
        module = ctx.model.get_submodule(name)
    except AttributeError:
        module = None
    return Culprit.module(name, type_name or None, class_frame(module))


def confirm_on_cuda(ctx: Context, budget: int, deploy: int, estimate: int | None, max_batch: int) -> SearchResult:
    """The real search on CUDA under a per-process memory fraction equal to the budget."""

    dims, _source = inp.run_batch_dims(ctx)

    def make(batch: int) -> Any:
        return inp.resize_batch(ctx.inputs, batch, dims)

    start = max(1, min(deploy, estimate or deploy))
    # Other things this run keeps on the device (the fp64 copy, reference outputs) are not the deployment's:
    # give the allocator the budget on top of them.
    free_cuda_memory()
    others = max(torch.cuda.memory_reserved(ctx.device) - model_bytes(ctx.model), 0)
    with memory_fraction(budget + others, ctx.device):
        return search_max_batch(cuda_try(ctx.model, make), start=start, limit=max(max_batch, deploy))
