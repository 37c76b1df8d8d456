"""`first_divergence`: the module that introduces a difference between two recordings,
not one that merely inherits it. Every check that localises a numeric difference uses this."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from ..text import format_bytes
from .culprit import Culprit, module_label
from .hooks import ModuleCall, ModuleRecorder, default_budget


def _tensors_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float) -> bool:
    if a.keys() != b.keys():
        return False
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            return False
        if ta.is_floating_point() or tb.is_floating_point():
            if not torch.allclose(ta.double(), tb.double(), rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif not torch.equal(ta, tb):
            return False
    return True


@dataclass
class Divergence:
    """The module that introduced a difference between two recordings."""

    name: str
    module_type: str
    max_abs: float
    input_equal: bool = True

    @property
    def label(self) -> str:
        return module_label(self.name, self.module_type)

    @property
    def culprit(self) -> Culprit:
        return Culprit.module(self.name.split("#", 1)[0], self.module_type)


def first_divergence(
    a: ModuleRecorder | list[ModuleCall],
    b: ModuleRecorder | list[ModuleCall],
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    input_map: Callable[[ModuleCall], dict[str, torch.Tensor]] | None = None,
) -> Divergence | None:
    """The first module (finishing order) whose outputs differ while its inputs agree.

    Tolerances 0 mean bitwise. `input_map` lets a caller compare inputs after a transformation
    (e.g. selecting one sample of a batch). Falls back to the first module whose output differs
    at all when no module has equal inputs and different outputs.
    """
    calls_a = a.calls if isinstance(a, ModuleRecorder) else a
    calls_b = {c.name: c for c in (b.calls if isinstance(b, ModuleRecorder) else b)}
    first_any: Divergence | None = None
    for ca in calls_a:
        cb = calls_b.get(ca.name)
        if cb is None:
            continue
        if _tensors_close(ca.outputs, cb.outputs, rtol, atol):
            continue
        diff = max(
            (float((ca.outputs[k].double() - cb.outputs[k].double()).abs().max()) for k in ca.outputs
             if k in cb.outputs and ca.outputs[k].shape == cb.outputs[k].shape and ca.outputs[k].numel()),
            default=float("inf"),
        )
        inputs_a = input_map(ca) if input_map else ca.inputs
        inputs_b = input_map(cb) if input_map else cb.inputs
        same_in = _tensors_close(inputs_a, inputs_b, rtol, atol)
        found = Divergence(ca.name, ca.module_type, diff, same_in)
        if same_in:
            return found
        if first_any is None:
            first_any = found
    return first_any




#: Windows of module calls a localisation records before it gives up (each costs a forward of both runs).
MAX_WINDOWS = 3


def recorded_divergence(
    model: torch.nn.Module,
    run_a: Callable[[], Any],
    run_b: Callable[[], Any],
    compare: Callable[[list[ModuleCall], list[ModuleCall]], Divergence | None],
    *,
    wrap_b: Callable[[], ContextManager[Any]] | None = None,
    model_b: torch.nn.Module | None = None,
    budget_bytes: int | None = None,
    max_windows: int = MAX_WINDOWS,
) -> tuple[Divergence | None, str]:
    """Record both runs module by module within a memory budget and `compare` the recordings:
    (the divergence, "" or why none could be named).

    A model whose activations exceed the budget is recorded in windows of calls: a window is only
    followed by the next when no output in it differed, so the first window with a difference holds
    the first divergence. `wrap_b` wraps each run of `run_b` (a spy that must see that run only);
    `model_b` is the model `run_b` calls when it is another one (two checkpoints).
    """
    start, windows = 0, 0
    while windows < max_windows:
        windows += 1
        with ModuleRecorder(model, start=start, budget_bytes=budget_bytes) as rec_a:
            run_a()
        with (wrap_b() if wrap_b else contextlib.nullcontext()), \
                ModuleRecorder(model_b if model_b is not None else model, start=start, budget_bytes=budget_bytes) as rec_b:
            run_b()
        found = compare(rec_a.calls, rec_b.calls)
        partial = [r for r in (rec_a, rec_b) if not r.complete]
        if found is not None or not partial:
            return found, ""
        start = min(r.next_start for r in partial)
        del rec_a, rec_b
    budget = format_bytes(budget_bytes if budget_bytes is not None else default_budget())
    return None, (f"the first {start} module calls agree; later ones were not recorded (module outputs exceed the "
                  f"{budget} recording budget after {windows} windows): run on smaller inputs to localise further")
