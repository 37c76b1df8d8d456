"""One leaf compared: the statistics of two tensors (or the equality of two plain values)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .tolerance import REL_FLOOR, Tolerance, default_tolerance, less_precise, scaled_atol


@dataclass
class LeafComparison:
    """How one named leaf of `actual` compares with the same leaf of `expected`."""

    name: str
    kind: str  # "tensor", "value" (non-tensor compared for equality), "missing", "extra", "mismatch"
    passed: bool
    message: str = ""
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    numel: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    rms_rel: float = 0.0
    rmse: float = 0.0
    cosine: float = 1.0
    sqnr_db: float = math.inf
    frac_outside: float = 0.0
    worst_index: tuple[int, ...] | None = None
    nan_actual: int = 0
    nan_expected: int = 0
    inf_actual: int = 0
    inf_expected: int = 0
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    min_rtol: float = 0.0  # smallest rtol that passes at the given atol
    min_atol: float = 0.0  # smallest atol that passes at the given rtol
    rtol: float = 0.0
    atol: float = 0.0

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kind != "tensor":
            return {"equal": self.passed}
        for key in ("max_abs", "max_rel", "rms_rel", "cosine", "sqnr_db", "frac_outside"):
            out[key] = getattr(self, key)
        for key in ("nan_actual", "inf_actual"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.top1_agreement is not None:
            out["top1_agreement"] = self.top1_agreement
        return out



def compare_leaf(
    name: str,
    act: Any,
    exp: Any,
    *,
    tol: Tolerance | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    equal_nan: bool = True,
    check_dtype: bool = False,
) -> LeafComparison:
    ta = act if isinstance(act, torch.Tensor) else None
    te = exp if isinstance(exp, torch.Tensor) else None
    if ta is None or te is None:
        if (ta is None) != (te is None):
            return LeafComparison(name, "mismatch", False, f"type differs: {type(act).__name__} vs {type(exp).__name__}")
        if isinstance(act, torch.device) and isinstance(exp, torch.device):
            # where a cache says it lives (transformers' `layers[i].device`), not what it holds:
            # tensors are compared on the CPU wherever they ran
            return LeafComparison(name, "value", True)
        try:
            equal = bool(act == exp)
        except Exception:
            equal = repr(act) == repr(exp)
        if not equal and equal_nan and isinstance(act, float) and isinstance(exp, float):
            equal = math.isnan(act) and math.isnan(exp)
        return LeafComparison(name, "value", equal, "" if equal else f"values differ: {act!r} vs {exp!r}")
    if ta.shape != te.shape:
        return LeafComparison(
            name, "mismatch", False, f"shape differs: {tuple(ta.shape)} vs expected {tuple(te.shape)}",
            shape=tuple(te.shape), dtype=str(te.dtype).replace("torch.", ""),
        )
    if check_dtype and ta.dtype != te.dtype:
        return LeafComparison(name, "mismatch", False, f"dtype differs: {ta.dtype} vs expected {te.dtype}")
    scale_dtype = None
    if tol is None:
        dtype = less_precise(ta.dtype, te.dtype)
        base = default_tolerance(dtype)
        tol = Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)
        scale_dtype = dtype if atol is None else None  # a default atol follows the output's scale
    return _compare_tensors(name, ta, te, tol, equal_nan, scale_dtype)

@dataclass
class _Diff:
    """Element-wise view of two tensors in float64 (complex128): what every statistic is built on."""

    a: torch.Tensor
    e: torch.Tensor
    diff: torch.Tensor  # |a - e| where both are finite, else 0 (at least 1 where integers differ)
    abs_e: torch.Tensor  # |e| where both are finite, else 0
    finite: torch.Tensor
    bad: torch.Tensor  # non-finite elements that do not match (NaN vs number, +inf vs -inf, ...)
    rms_e: float
    mse: float

    @property
    def any_bad(self) -> bool:
        return bool(self.bad.any())


def _as_wide(ta: torch.Tensor, te: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Both tensors on the CPU in float64 (complex128 when either is complex), and for integer
    tensors where they differ exactly (integers beyond 2**53 collide in float64)."""
    a, e = ta.detach().to("cpu"), te.detach().to("cpu")
    a = a.dequantize() if a.is_quantized else a
    e = e.dequantize() if e.is_quantized else e
    exact_ne = None
    if not (a.is_floating_point() or a.is_complex() or e.is_floating_point() or e.is_complex()):
        common = torch.promote_types(a.dtype, e.dtype)
        exact_ne = a.to(common) != e.to(common)
    # Complex leaves are compared element by element on the magnitude of the difference, as
    # assert_close does; every statistic is then per complex element.
    wide = torch.complex128 if a.is_complex() or e.is_complex() else torch.float64
    return a.to(wide), e.to(wide), exact_ne


def _diff(out: LeafComparison, ta: torch.Tensor, te: torch.Tensor, equal_nan: bool) -> tuple[_Diff, torch.Tensor | None]:
    """The element-wise differences; records the NaN/Inf counts on `out`."""
    a, e, exact_ne = _as_wide(ta, te)
    nan_a, nan_e, inf_a, inf_e = torch.isnan(a), torch.isnan(e), torch.isinf(a), torch.isinf(e)
    out.nan_actual, out.nan_expected = int(nan_a.sum()), int(nan_e.sum())
    out.inf_actual, out.inf_expected = int(inf_a.sum()), int(inf_e.sum())
    # Same NaN positions are equal when equal_nan; same infinities are equal.
    both_nan = nan_a & nan_e
    special_ok = (both_nan if equal_nan else torch.zeros_like(both_nan)) | (inf_a & inf_e & (a == e))
    bad = (nan_a | nan_e | inf_a | inf_e) & ~special_ok
    finite = torch.isfinite(a) & torch.isfinite(e)
    zeros = torch.zeros(a.shape, dtype=torch.float64)
    diff = torch.where(finite, (a - e).abs(), zeros)
    if exact_ne is not None:
        diff = torch.where(exact_ne, diff.clamp_min(1.0), diff)
    ef = e[finite]
    err = (a - e)[finite].abs()
    rms_e = float(ef.abs().pow(2).mean().sqrt()) if ef.numel() else 0.0
    mse = float(err.pow(2).mean()) if err.numel() else 0.0
    return _Diff(a, e, diff, torch.where(finite, e.abs(), zeros), finite, bad, rms_e, mse), exact_ne


def _error_stats(out: LeafComparison, d: _Diff) -> None:
    """max abs/rel error, RMSE relative to the reference RMS, cosine similarity and SQNR."""
    floor = max(REL_FLOOR * d.rms_e, torch.finfo(torch.float64).tiny)
    out.max_abs = float(d.diff.max())
    out.max_rel = float((d.diff / d.abs_e.clamp_min(floor)).max())
    out.rmse = math.sqrt(d.mse)
    if d.any_bad:
        out.max_abs = out.max_rel = out.rmse = math.inf
    out.rms_rel = out.rmse / d.rms_e if d.rms_e > 0 else (0.0 if out.rmse == 0 else math.inf)
    af, ef = d.a[d.finite], d.e[d.finite]
    if not af.numel() or d.any_bad:
        out.cosine = 0.0 if d.any_bad else 1.0
        out.sqnr_db = -math.inf if d.any_bad else math.inf
        return
    na, ne = float(torch.linalg.vector_norm(af)), float(torch.linalg.vector_norm(ef))
    if d.mse == 0 or (na == 0 and ne == 0):  # identical finite values (the dot product may round to 1 - ulp)
        out.cosine = 1.0
    elif na == 0 or ne == 0:
        out.cosine = 0.0
    else:
        dot = (af * ef.conj()).sum() if af.is_complex() else (af * ef).sum()
        out.cosine = min(1.0, max(-1.0, float(dot.real) / (na * ne)))
    signal = float(ef.abs().pow(2).mean())
    out.sqnr_db = math.inf if d.mse == 0 else (10 * math.log10(signal / d.mse) if signal > 0 else -math.inf)


def _tolerance_stats(out: LeafComparison, d: _Diff, tol: Tolerance) -> torch.Tensor:
    """The fraction outside (rtol, atol) and the smallest atol/rtol that pass; returns the outside mask."""
    diff, abs_e, finite = d.diff, d.abs_e, d.finite
    outside = (diff > tol.atol + tol.rtol * abs_e) | d.bad
    out.frac_outside = int(outside.sum()) / diff.numel()
    excess = torch.where(finite, diff - tol.rtol * abs_e, torch.zeros_like(diff))
    out.min_atol = math.inf if d.any_bad else max(float(excess.max()), 0.0)
    tiny = torch.finfo(torch.float64).tiny
    ratio = torch.where(finite & (abs_e > 0), (diff - tol.atol) / abs_e.clamp_min(tiny), torch.zeros_like(diff))
    zero_ref_bad = finite & (abs_e == 0) & (diff > tol.atol)
    out.min_rtol = math.inf if (d.any_bad or zero_ref_bad.any()) else max(float(ratio.max()), 0.0)
    # The subtraction/division above can round a hair low; step up until the value really passes,
    # so `compare(..., atol=min_atol)` (or rtol=min_rtol) at the other tolerance unchanged passes.
    out.min_atol = _smallest_passing(out.min_atol, lambda v: not bool((diff > v + tol.rtol * abs_e).any()))
    out.min_rtol = _smallest_passing(out.min_rtol, lambda v: not bool((diff > tol.atol + v * abs_e).any()))
    return outside


def _topk_agreement(out: LeafComparison, d: _Diff, te: torch.Tensor) -> None:
    """Top-1/top-5 agreement for logits-like leaves: (batch, classes) or (batch, seq, vocab). A 1-D
    leaf is a batch of scalars more often than one row of logits; an argmax over the batch means nothing."""
    if not (2 <= te.dim() <= 3 and te.dtype.is_floating_point and te.shape[-1] >= 2) or d.any_bad:
        return
    a2, e2 = d.a.reshape(-1, te.shape[-1]), d.e.reshape(-1, te.shape[-1])
    out.top1_agreement = float((a2.argmax(-1) == e2.argmax(-1)).double().mean())
    if te.shape[-1] >= 10:
        ta5, te5 = a2.topk(5, -1).indices, e2.topk(5, -1).indices
        out.top5_overlap = float((ta5.unsqueeze(-1) == te5.unsqueeze(-2)).any(-1).double().mean())


def _describe_failure(out: LeafComparison, d: _Diff, outside: torch.Tensor, ta: torch.Tensor, te: torch.Tensor,
                      tol: Tolerance, exact: bool) -> None:
    """Mark `out` failed, with the worst element and the tolerances that would pass, as assert_close words it."""
    n_out = int(outside.sum())
    flat_diff = d.diff.reshape(-1)
    badness = torch.where(d.bad.reshape(-1), torch.full_like(flat_diff, math.inf), flat_diff)
    flat_idx = int(torch.where(outside.reshape(-1), badness, torch.full_like(flat_diff, -1.0)).argmax())
    idx = tuple(int(i) for i in _unravel(flat_idx, te.shape))
    out.passed, out.worst_index = False, idx
    # integer leaves: the float64 copies may have rounded, so take the values as they are
    av, ev = (ta, te) if exact else (d.a, d.e)
    av, ev = av.reshape(-1)[flat_idx].item(), ev.reshape(-1)[flat_idx].item()
    out.message = (
        f"{n_out} of {te.numel()} elements ({100 * out.frac_outside:.3g}%) outside {tol}; "
        f"greatest difference {abs(av - ev):.4g} at index {idx} "
        f"({_fmt(av)} vs expected {_fmt(ev)}); "
        f"passes with atol>={_round_up(out.min_atol):.3g} or rtol>={_round_up(out.min_rtol):.3g}"
    )
    if out.nan_actual or out.inf_actual:
        out.message += f"; actual has {out.nan_actual} NaN and {out.inf_actual} Inf"


def _compare_tensors(name: str, ta: torch.Tensor, te: torch.Tensor, tol: Tolerance, equal_nan: bool,
                     scale_dtype: torch.dtype | None = None) -> LeafComparison:
    """`scale_dtype`: the default atol was taken for this dtype; cap it by the reference's RMS."""
    out = LeafComparison(
        name, "tensor", True, shape=tuple(te.shape), dtype=str(te.dtype).replace("torch.", ""),
        numel=te.numel(), rtol=tol.rtol, atol=tol.atol,
    )
    if te.numel() == 0:
        return out
    d, exact_ne = _diff(out, ta, te, equal_nan)
    if scale_dtype is not None:
        tol = Tolerance(tol.rtol, scaled_atol(tol.atol, scale_dtype, d.rms_e))
        out.atol = tol.atol
    _error_stats(out, d)
    outside = _tolerance_stats(out, d, tol)
    _topk_agreement(out, d, te)
    if outside.any():
        _describe_failure(out, d, outside, ta, te, tol, exact_ne is not None)
    return out


def _smallest_passing(value: float, passes: Any) -> float:
    """`value`, nudged up by a few ulps until `passes(value)` (float rounding can leave it just short)."""
    if not math.isfinite(value):
        return value
    for _ in range(64):
        if passes(value):
            return value
        value = max(math.nextafter(value, math.inf), value * (1 + 4 * torch.finfo(torch.float64).eps))
    return value


def _round_up(x: float, digits: int = 3) -> float:
    """`x` rounded *up* to `digits` significant digits, so a printed bound still passes."""
    if not math.isfinite(x) or x <= 0:
        return x
    v = float(f"{x:.{digits}g}")
    if v < x:
        v = float(f"{v + 10 ** (math.floor(math.log10(v)) - digits + 1):.{digits}g}")
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, complex):
        return f"{v:.6g}"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _unravel(index: int, shape: torch.Size) -> list[int]:
    coords: list[int] = []
    for size in reversed(list(shape)):
        coords.append(index % size if size else 0)
        index = index // size if size else 0
    return list(reversed(coords))
