"""Tolerances: assert_close's per-dtype defaults, and tolerances calibrated from a model's own
fp32-vs-fp64 error."""
from __future__ import annotations

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
    about as much as fp32 differs from fp64; `factor` gives headroom. The atol is at least
    fp32's default so tiny outputs are not judged bitwise.
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
        tolerances[name] = Tolerance(max(base.rtol, 4 * eps(torch.float32)), max(base.atol, factor * max_err))
    return tolerances
