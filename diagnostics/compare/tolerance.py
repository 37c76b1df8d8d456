"""Tolerances: assert_close's per-dtype defaults, and tolerances calibrated from a model's own
fp32-vs-fp64 error."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..tree import flatten

#: (rtol, atol) per dtype, as torch.testing.assert_close uses them.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
    torch.complex64: (1.3e-6, 1e-5),
    torch.complex128: (1e-7, 1e-7),
}
#: The relative-error floor: |e| below REL_FLOOR * rms(expected) counts as that, not as ~0.
REL_FLOOR = 1e-3


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def __str__(self) -> str:
        return f"rtol={self.rtol:.3g}, atol={self.atol:.3g}"


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """assert_close's defaults for `dtype`; exact (0, 0) for integer and bool dtypes."""
    if dtype in DEFAULT_TOLERANCES:
        return Tolerance(*DEFAULT_TOLERANCES[dtype])
    if dtype.is_floating_point:  # float8 and friends: be generous
        return Tolerance(1.25e-1, 1e-2)
    return Tolerance(0.0, 0.0)


def atol_fraction(dtype: torch.dtype) -> float:
    """The largest atol, as a fraction of the reference's RMS, a default tolerance may use.

    At RMS 1 a dtype's default atol is this fraction or less, so outputs at the usual scale keep
    assert_close's behaviour; smaller outputs get a proportionally smaller atol (an atol of 1e-5
    on outputs of size 1e-8 would pass anything).
    """
    base = default_tolerance(dtype)
    return max(base.rtol, base.atol)


def scaled_atol(atol: float, dtype: torch.dtype, rms: float) -> float:
    """`atol` capped at `atol_fraction(dtype) * rms` (unchanged when the reference RMS is 0)."""
    if rms > 0 and math.isfinite(rms):
        return min(atol, atol_fraction(dtype) * rms)
    return atol


def rms_of(t: torch.Tensor) -> float:
    """Root mean square of the finite elements (0.0 for an empty or non-floating tensor)."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0.0
    v = t.detach().to("cpu", torch.complex128 if t.is_complex() else torch.float64)
    v = v[torch.isfinite(v)]
    return float(v.abs().pow(2).mean().sqrt()) if v.numel() else 0.0


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (1.0 for integer dtypes)."""
    return torch.finfo(dtype).eps if dtype.is_floating_point else 1.0


def less_precise(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    if not a.is_floating_point:
        return b
    if not b.is_floating_point:
        return a
    return a if eps(a) >= eps(b) else b


def calibrated_tolerances(fp32: Any, fp64: Any, *, factor: float = 8.0) -> dict[str, Tolerance]:
    """Per-leaf tolerances for comparing two fp32 runs of the same model, from its own fp32-vs-fp64 error.

    Two fp32 runs that differ only in summation order (threads, layouts, batch sizes) differ by
    about as much as fp32 differs from fp64; `factor` gives headroom. The atol is at least fp32's
    default scaled to the output (`scaled_atol`), so exact outputs are not judged bitwise and tiny
    outputs are not waved through.
    """
    base = default_tolerance(torch.float32)
    tolerances = {}
    f32, f64 = flatten(fp32), flatten(fp64)
    for name, ref in f64.items():
        a = f32.get(name)
        if not isinstance(ref, torch.Tensor) or not isinstance(a, torch.Tensor) or not ref.is_floating_point():
            continue
        if a.shape != ref.shape or ref.numel() == 0:
            tolerances[name] = base
            continue
        d = (a.detach().cpu().double() - ref.detach().cpu().double()).abs()
        d = d[torch.isfinite(d)]
        max_err = float(d.max()) if d.numel() else 0.0
        floor = scaled_atol(base.atol, torch.float32, rms_of(ref))
        tolerances[name] = Tolerance(max(base.rtol, 4 * eps(torch.float32)), max(floor, factor * max_err))
    return tolerances
