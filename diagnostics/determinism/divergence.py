"""`first_divergence` at a scale-aware tolerance: a tensor differs when some element is off by more
than `rel` x the tensor's largest magnitude (integers: at all). Recordings are first aligned (a
batched run's rows onto a sample run alone) and divided by that scale, then handed to
`locate.first_divergence` with an absolute tolerance of `rel`."""
from __future__ import annotations

from typing import Sequence

import torch

from ..locate.divergence import Divergence, first_divergence
from ..locate.hooks import ModuleCall
from .batch import Align, comparable


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    return a, b


def _scaled(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Both sides in units of b's largest finite magnitude (complex as magnitudes); integers as they are."""
    out_a, out_b = {}, {}
    for key, tb in b.items():
        ta = a.get(key)
        if ta is None:
            out_b[key] = tb  # a key missing on one side: never close
            continue
        if not (comparable(ta) and comparable(tb)):
            continue
        if ta.is_floating_point() or tb.is_floating_point() or ta.is_complex():
            da = (ta.abs() if ta.is_complex() else ta).detach().double()
            db = (tb.abs() if tb.is_complex() else tb).detach().double()
            finite = db[torch.isfinite(db)]
            scale = float(finite.abs().max()) if finite.numel() else 0.0
            ta, tb = (da / scale, db / scale) if scale > 0 else (da, db)
        out_a[key], out_b[key] = ta, tb
    return out_a, out_b


def scaled_divergence(calls_a: Sequence[ModuleCall], calls_b: Sequence[ModuleCall], rel: float,
                      align: Align = _same) -> Divergence | None:
    """First call (finishing order of `calls_b`) whose outputs differ while its inputs agree; else the
    first whose outputs differ at all. `align(a, b)` maps a's tensors onto b's (e.g. one sample's rows).
    `max_abs` of the result is the difference relative to the output's scale."""
    by_name = {c.name: c for c in calls_a}
    first_any: Divergence | None = None
    for cb in calls_b:  # one call scaled at a time: float64 copies of a whole recording would double its memory
        ca = by_name.get(cb.name)
        if ca is None:
            continue
        out_a, out_b = _scaled(*align(ca.outputs, cb.outputs))
        in_a, in_b = _scaled(*align(ca.inputs, cb.inputs))
        found = first_divergence([ModuleCall(cb.name, cb.module_type, in_b, out_b, cb.order)],
                                 [ModuleCall(cb.name, ca.module_type, in_a, out_a, ca.order)], rtol=0.0, atol=rel)
        if found is not None and found.input_equal:
            return found
        first_any = first_any or found
    return first_any
