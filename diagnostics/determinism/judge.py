"""Judging one run against its expected output: bitwise first (free), then within the tolerance
calibrated from the model's own fp32-vs-fp64 error, asked for only when bitwise fails."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..compare import Comparison, Tolerance, compare, default_tolerance, eps, rms_of, scaled_atol
from ..context import Context
from ..text import one_line
from ..tree import flatten
from . import TOLERANCE_KEY

#: fp32 arithmetic is off from fp64 by ~1e-7..1e-5 of the output's scale; an fp32-vs-fp64 difference
#: above this fraction means the fp64 copy computed something else (state changed between the runs,
#: randomness), so its "calibration" would excuse real differences.
_IMPLAUSIBLE_FP32_ERROR = 1e-3


@dataclass
class Tol:
    """Per-leaf tolerances for fp32-vs-fp32 comparisons, and where they came from."""

    leaves: dict[str, Tolerance]
    source: str


def _scale(t: torch.Tensor) -> float:
    finite = t[torch.isfinite(t)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _fallback_tolerances(reference: Any) -> dict[str, Tolerance]:
    out: dict[str, Tolerance] = {}
    for name, t in flatten(reference).items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            base = default_tolerance(t.dtype)
            atol = scaled_atol(base.atol, t.dtype, rms_of(t))  # a tiny output gets a proportionally tiny floor
            out[name] = Tolerance(max(base.rtol, 16 * eps(t.dtype)), max(atol, 64 * eps(t.dtype) * _scale(t)))
    return out


def _implausible_calibration(reference: Any, fp64: Any) -> list[str]:
    """Leaves whose fp32-vs-fp64 difference is far beyond what rounding in their dtype produces."""
    found = []
    f64 = flatten(fp64) if fp64 is not None else {}
    for name, t in flatten(reference).items():
        r = f64.get(name)
        if not (isinstance(t, torch.Tensor) and isinstance(r, torch.Tensor)) or not t.is_floating_point() or t.shape != r.shape or not t.numel():
            continue
        d = (t.detach().double() - r.detach().double()).abs()
        d = d[torch.isfinite(d)]
        scale = _scale(r.double())
        limit = min(0.1, _IMPLAUSIBLE_FP32_ERROR * eps(t.dtype) / eps(torch.float32))
        if d.numel() and scale > 0 and float(d.max()) > limit * scale:
            found.append(f"`{name}` {float(d.max()):.3g} of max {scale:.3g}")
    return found


def tolerances(ctx: Context) -> Tol:
    """ctx.tolerances() (fp32-vs-fp64 calibration), built once and only when a comparison is not bitwise.

    Falls back to dtype-derived tolerances scaled by the output when there is no fp64 reference,
    or when the fp32-vs-fp64 difference is too large to be rounding (then the calibration is void).
    """

    def build() -> Tol:
        error = None
        try:
            leaves = ctx.tolerances()
        except Exception as exc:  # the fp64 copy could not be built or run
            leaves, error = {}, one_line(exc)
        if ctx.options.atol is not None or ctx.options.rtol is not None:
            return Tol(leaves, "fixed by --atol/--rtol")
        fallback = _fallback_tolerances(ctx.reference)
        if leaves:
            implausible = _implausible_calibration(ctx.reference, ctx.fp64.outputs)
            if not implausible:
                return Tol(leaves, "calibrated from the model's own fp32-vs-fp64 error (ctx.tolerances())")
            error = ("the fp32-vs-fp64 difference is too large to be rounding (" + ", ".join(implausible[:3])
                     + "): the fp64 copy computed something else (state changed between runs? randomness?)")
        error = error or ctx.fp64.error or "no floating-point outputs"
        return Tol(fallback, f"fallback, no usable fp64 calibration ({error}): rtol 16 eps, atol 64 eps x max|output|")

    return ctx.cached(TOLERANCE_KEY, build)


@dataclass
class Row:
    """One comparison of a run with its expected output, as shown in details["comparisons"]."""

    comparison: str
    expected: str  # "bitwise" or "within tolerance"
    bitwise: bool
    within_tolerance: bool | None
    max_abs: float
    tolerance: str | None = None
    message: str = ""
    comp: Comparison | None = None
    configs: tuple[Any, Any] | None = None  # (base, other) run configurations, for localisation
    covers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bitwise or (self.expected != "bitwise" and bool(self.within_tolerance))

    @property
    def sort_abs(self) -> float:
        """max_abs for picking the worst row, with NaN/Inf last-resort large."""
        return self.max_abs if math.isfinite(self.max_abs) else 1e300

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "comparison": self.comparison, "expected": self.expected, "bitwise": self.bitwise,
            "within_tolerance": self.within_tolerance, "max_abs": self.max_abs,
        }
        if self.tolerance:
            out["tolerance"] = self.tolerance
        if self.covers:
            out["covers"] = self.covers
        if self.message:
            out["message"] = self.message
        return out


def judge(ctx: Context, label: str, actual: Any, expected: Any, *, bitwise_only: bool = False) -> Row:
    """Bitwise first (free); the calibrated tolerance is asked for only when that fails."""
    exact = compare(actual, expected, rtol=0.0, atol=0.0)
    kind = "bitwise" if bitwise_only else "within tolerance"
    if exact.passed:
        return Row(label, kind, True, True, exact.max_abs, comp=exact)
    if bitwise_only:
        return Row(label, kind, False, False, exact.max_abs, message=exact.describe(), comp=exact)
    comp = compare(actual, expected, leaf_tolerances=tolerances(ctx).leaves)
    worst = comp.worst
    text = f"rtol={worst.rtol:.3g}, atol={worst.atol:.3g}" if worst is not None and worst.kind == "tensor" else None
    return Row(label, kind, False, comp.passed, comp.max_abs, text, "" if comp.passed else comp.describe(), comp)


def rel_for(row: Row, reference: Any) -> float:
    """The relative tolerance for comparing intermediate tensors: a tenth of the observed output error."""
    scale = max((float(t.detach().abs().max()) for t in flatten(reference).values()
                 if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and torch.isfinite(t).all()), default=1.0)
    observed = row.max_abs / scale if scale > 0 and math.isfinite(row.max_abs) else 1.0
    return min(1e-4, max(50 * eps(torch.float32), 0.1 * observed))
