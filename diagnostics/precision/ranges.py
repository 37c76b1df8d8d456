"""Every module call's output range in one hooked fp32 forward (finishing order: inner modules
before the block that contains them), with the line that called the module."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from .. import inputs as inp
from ..locate.code import Frame
from .hooks import ModuleCallView, ModuleHooks, call_site, depth, float_leaves, tensor_range


@dataclass
class ModuleRange(ModuleCallView):
    """One module call's floating outputs in the recorded run."""

    name: str  # dotted path, `#k` for the k-th call of a module
    module_type: str
    order: int  # finishing order
    depth: int
    absmax: float  # largest |x| over finite values (inf when the output has Inf/NaN)
    min_nonzero: float  # smallest non-zero |x| (0.0 when all are zero)
    finite: bool
    numel: int
    call_site: Frame | None = None


class _RangeRecorder(ModuleHooks):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.rows: list[ModuleRange] = []
        self.sites: dict[str, Frame | None] = {}

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if name:
            self.sites[key] = call_site()
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        leaves = float_leaves(output)
        if not leaves:
            return
        absmax, minnz, finite, numel = 0.0, math.inf, True, 0
        for t in leaves.values():
            hi, lo, ok = tensor_range(t)
            absmax = max(absmax, hi if ok else math.inf)
            if lo > 0:
                minnz = min(minnz, lo)
            finite = finite and ok
            numel += t.numel()
        self.rows.append(ModuleRange(key, type(module).__name__, len(self.rows), depth(name), absmax,
                                     0.0 if minnz == math.inf else minnz, finite, numel, self.sites.get(key)))


def record_ranges(model: torch.nn.Module, inputs: Any, *, context: Callable[[], ContextManager[Any]] | None = None) -> list[ModuleRange]:
    """Every module call's output range (finishing order) and call site, in one hooked forward."""
    with _RangeRecorder(model) as rec, torch.no_grad(), (context() if context else contextlib.nullcontext()):
        inp.call_model(model, inputs)
    return rec.rows
