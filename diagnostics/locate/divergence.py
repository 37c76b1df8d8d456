"""`first_divergence`: the module that introduces a difference between two recordings,
not one that merely inherits it. Every check that localises a numeric difference uses this."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .culprit import Culprit, module_label
from .hooks import ModuleCall, ModuleRecorder


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


