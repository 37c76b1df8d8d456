"""Running int8 models: the quantized engine, the MHA fast path, sizes and CPU latency, and
`QuantMode`, one int8 variant from build to verdict."""
from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .. import inputs as inp
from ..compare import Comparison
from ..results import PASS
from ..tree import map_leaves


@contextlib.contextmanager
def quantized_engine() -> Iterator[str]:
    """Use the x86 engine (fbgemm, qnnpack as fallbacks) and restore the previous one."""
    old = torch.backends.quantized.engine
    supported = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in supported:
            torch.backends.quantized.engine = name
            break
    try:
        yield torch.backends.quantized.engine
    finally:
        torch.backends.quantized.engine = old


@contextlib.contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def has_attention(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) for m in model.modules())


def to_cpu(obj: Any) -> Any:
    return map_leaves(obj, lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t)


def rows(inputs: Any, batch_dim: int) -> int:
    """Samples in a batch (1 when it has no batch dimension)."""
    return inp.batch_size(inputs, batch_dim) or 1


def state_size(model: nn.Module, *, graph_constants: bool = False) -> int:
    """Bytes of the serialized weights: the state dict, or for a PT2E graph (whose state dict still
    holds the unused float weights) the tensors its graph reads."""
    graph = getattr(model, "graph", None)
    if not graph_constants or graph is None:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.tell()
    seen: set[int] = set()
    total = 0
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        obj: Any = model
        for part in str(node.target).split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor) and obj.data_ptr() not in seen:
            seen.add(obj.data_ptr())
            total += obj.numel() * obj.element_size()
    return total


def latency(fn: Callable[[], Any], *, budget_s: float = 0.3, max_reps: int = 20) -> float:
    """Best seconds per call after one warm-up call (the minimum: on a shared machine the median
    measures the neighbours; the minimum is what the kernels can do)."""
    with torch.inference_mode():
        fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_reps and (time.perf_counter() - start < budget_s or len(times) < 3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


@dataclass
class QuantMode:
    """One int8 variant: how it was built, what it output, and its verdict."""

    mode: str  # "dynamic" | "static"
    flow: str = ""
    model: Any = None
    outputs: Any = None
    comparison: Comparison | None = None
    layers: list[str] = field(default_factory=list)
    error: str | None = None  # could not build or run
    not_applicable: str | None = None
    fastpath_off: bool = False
    flow_errors: dict[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    latency_s: float | None = None
    accuracy: float | None = None
    status: str = PASS
    reasons: list[str] = field(default_factory=list)
    numeric: bool = False  # warned or failed on its numbers (not only for its calibration or a build error)
    decided_top1: float | None = None

    @property
    def ran(self) -> bool:
        return self.comparison is not None

    @property
    def sqnr_db(self) -> float:
        return self.comparison.min_sqnr_db if self.comparison is not None else math.nan

    @property
    def top1(self) -> float | None:
        vals = [leaf.top1_agreement for leaf in self.comparison.tensor_leaves if leaf.top1_agreement is not None] if self.comparison is not None else []
        return min(vals) if vals else None

    def call(self, inputs: Any) -> Any:
        with quantized_engine(), torch.inference_mode(), (_mha_fastpath(False) if self.fastpath_off else contextlib.nullcontext()):
            return inp.call_model(self.model, to_cpu(inputs))

    def call_rows(self, inputs: Any, size: int, batch_dim: int) -> Any:
        """Run in chunks of `size` rows (a PT2E graph is exported for the example's batch size; the
        last chunk is padded by repeating its last row, and the padding is dropped)."""
        total = rows(inputs, batch_dim)
        if self.flow != "pt2e" or total == size:
            return self.call(inputs)
        parts = []
        for start in range(0, total, size):
            idx = [min(i, total - 1) for i in range(start, start + size)]
            parts.append(self.call(inp.select_batch(inputs, idx, batch_dim)))
        return inp.select_batch(inp.concat_batch(parts, batch_dim), list(range(total)), batch_dim)

    def run(self, x: Any) -> Any:
        """Run the quantized model; retry with the MHA fast path off (it cannot run quantized linears)."""
        try:
            return self.call(x)
        except Exception:
            if not has_attention(self.model) or self.fastpath_off:
                raise
            self.fastpath_off = True
            return self.call(x)
