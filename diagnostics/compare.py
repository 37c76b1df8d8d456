"""The comparison core: every numeric check compares two outputs through `compare()`.

Per named leaf (see `tree.py`) it reports max abs error, max relative error (with a floor, so
near-zero references do not explode it), error relative to the reference RMS, cosine similarity,
SQNR in dB, the fraction of elements outside (rtol, atol), top-k agreement for logits-like
leaves, NaN/Inf counts, and the smallest (rtol, atol) that would have passed. Non-tensor leaves
are compared for equality. Default tolerances follow `torch.testing.assert_close`'s per-dtype
table. `ratio_rule()` judges a low-precision result against an fp64 reference the way
`torch._dynamo.utils.same(fp64_ref=...)` does: by how its error compares with fp32's own error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .tree import flatten

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


@dataclass
class Comparison:
    """The comparison of every leaf; `passed` when every leaf passed."""

    leaves: list[LeafComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(leaf.passed for leaf in self.leaves)

    def leaf(self, name: str) -> LeafComparison:
        for leaf in self.leaves:
            if leaf.name == name:
                return leaf
        raise KeyError(name)

    @property
    def tensor_leaves(self) -> list[LeafComparison]:
        return [leaf for leaf in self.leaves if leaf.kind == "tensor"]

    @property
    def worst(self) -> LeafComparison | None:
        """The failing leaf with the largest error, or the leaf with the largest error."""
        if not self.leaves:
            return None
        failing = [leaf for leaf in self.leaves if not leaf.passed]
        pool = failing or self.leaves
        return max(pool, key=lambda leaf: (not leaf.passed, _finite(leaf.rms_rel), _finite(leaf.max_abs)))

    @property
    def max_abs(self) -> float:
        return max((leaf.max_abs for leaf in self.tensor_leaves), default=0.0)

    @property
    def min_sqnr_db(self) -> float:
        return min((leaf.sqnr_db for leaf in self.tensor_leaves), default=math.inf)

    @property
    def min_cosine(self) -> float:
        return min((leaf.cosine for leaf in self.tensor_leaves), default=1.0)

    @property
    def max_rms_rel(self) -> float:
        return max((leaf.rms_rel for leaf in self.tensor_leaves), default=0.0)

    def metrics(self, prefix: str = "") -> dict[str, Any]:
        """Flat metrics: whole-output summaries, then per-leaf ones when there are several leaves."""
        out: dict[str, Any] = {
            f"{prefix}max_abs": self.max_abs,
            f"{prefix}max_rms_rel": self.max_rms_rel,
            f"{prefix}min_cosine": self.min_cosine,
            f"{prefix}min_sqnr_db": self.min_sqnr_db,
        }
        top1 = [leaf.top1_agreement for leaf in self.tensor_leaves if leaf.top1_agreement is not None]
        if top1:
            out[f"{prefix}top1_agreement"] = min(top1)
        if len(self.leaves) > 1:
            for leaf in self.leaves:
                for key, value in leaf.metrics().items():
                    out[f"{prefix}{leaf.name}.{key}"] = value
        return out

    def describe(self) -> str:
        """One line per failing leaf, in the manner of assert_close's messages."""
        failing = [leaf for leaf in self.leaves if not leaf.passed]
        if not failing:
            worst = self.worst
            return "all outputs match" + (f" (largest abs diff {worst.max_abs:.3g} in `{worst.name}`)" if worst and worst.kind == "tensor" else "")
        return "; ".join(f"`{leaf.name}`: {leaf.message}" for leaf in failing)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e300


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    return None


def compare(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    leaf_tolerances: Mapping[str, Tolerance] | None = None,
    equal_nan: bool = True,
    check_dtype: bool = False,
) -> Comparison:
    """Compare two (possibly nested) outputs leaf by leaf.

    Tolerances: `leaf_tolerances[name]` if given, else `rtol`/`atol` if given, else the default of
    the *less precise* of the two dtypes (comparing fp16 against fp32 uses fp16's tolerance).
    """
    flat_a, flat_e = flatten(actual), flatten(expected)
    leaves: list[LeafComparison] = []
    for name, exp in flat_e.items():
        if name not in flat_a:
            leaves.append(LeafComparison(name, "missing", False, "missing from the actual output"))
            continue
        act = flat_a[name]
        tol = (leaf_tolerances or {}).get(name)
        leaves.append(compare_leaf(name, act, exp, tol=tol, rtol=rtol, atol=atol, equal_nan=equal_nan, check_dtype=check_dtype))
    for name in flat_a:
        if name not in flat_e:
            leaves.append(LeafComparison(name, "extra", False, "present in the actual output but not in the expected one"))
    return Comparison(leaves)


def _less_precise(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    if not a.is_floating_point:
        return b
    if not b.is_floating_point:
        return a
    return a if eps(a) >= eps(b) else b


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
    ta, te = _as_tensor(act), _as_tensor(exp)
    if ta is None or te is None:
        if (ta is None) != (te is None):
            return LeafComparison(name, "mismatch", False, f"type differs: {type(act).__name__} vs {type(exp).__name__}")
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
    if tol is None:
        base = default_tolerance(_less_precise(ta.dtype, te.dtype))
        tol = Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)
    return _compare_tensors(name, ta, te, tol, equal_nan)


def _compare_tensors(name: str, ta: torch.Tensor, te: torch.Tensor, tol: Tolerance, equal_nan: bool) -> LeafComparison:
    out = LeafComparison(
        name, "tensor", True, shape=tuple(te.shape), dtype=str(te.dtype).replace("torch.", ""),
        numel=te.numel(), rtol=tol.rtol, atol=tol.atol,
    )
    if te.numel() == 0:
        return out
    a = ta.detach().to("cpu")
    e = te.detach().to("cpu")
    a = a.dequantize() if a.is_quantized else a
    e = e.dequantize() if e.is_quantized else e
    # Integers beyond 2**53 collide in float64: compare them exactly, so a difference is at least 1.
    exact_ne = None
    if not (a.is_floating_point() or a.is_complex() or e.is_floating_point() or e.is_complex()):
        common = torch.promote_types(a.dtype, e.dtype)
        exact_ne = a.to(common) != e.to(common)
    if a.is_complex() or e.is_complex():
        # Complex leaves are compared element by element on the magnitude of the difference,
        # as assert_close does; every statistic below is per complex element.
        a, e = a.to(torch.complex128), e.to(torch.complex128)
    else:
        a, e = a.to(torch.float64), e.to(torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    inf_a, inf_e = torch.isinf(a), torch.isinf(e)
    out.nan_actual, out.nan_expected = int(nan_a.sum()), int(nan_e.sum())
    out.inf_actual, out.inf_expected = int(inf_a.sum()), int(inf_e.sum())

    # Non-finite handling: same NaN positions are equal when equal_nan; same infinities are equal.
    both_nan = nan_a & nan_e
    same_inf = inf_a & inf_e & (a == e)
    special_ok = (both_nan if equal_nan else torch.zeros_like(both_nan)) | same_inf
    nonfinite_bad = (nan_a | nan_e | inf_a | inf_e) & ~special_ok
    finite = torch.isfinite(a) & torch.isfinite(e)

    zeros = torch.zeros(a.shape, dtype=torch.float64)
    diff = torch.where(finite, (a - e).abs(), zeros)
    if exact_ne is not None:
        diff = torch.where(exact_ne, diff.clamp_min(1.0), diff)
    abs_e = torch.where(finite, e.abs(), zeros)
    ef = e[finite]
    rms_e = float(ef.abs().pow(2).mean().sqrt()) if ef.numel() else 0.0
    floor = max(REL_FLOOR * rms_e, torch.finfo(torch.float64).tiny)
    rel = diff / abs_e.clamp_min(floor)

    out.max_abs = float(diff.max())
    out.max_rel = float(rel.max())
    err = (a - e)[finite].abs()
    mse = float(err.pow(2).mean()) if err.numel() else 0.0
    out.rmse = math.sqrt(mse)
    if nonfinite_bad.any():
        out.max_abs = math.inf
        out.max_rel = math.inf
        out.rmse = math.inf
    out.rms_rel = out.rmse / rms_e if rms_e > 0 else (0.0 if out.rmse == 0 else math.inf)
    af = a[finite]
    if af.numel() and not nonfinite_bad.any():
        na, ne = float(torch.linalg.vector_norm(af)), float(torch.linalg.vector_norm(ef))
        if mse == 0:  # identical finite values (the dot product below may round to 1 - ulp)
            out.cosine = 1.0
        elif na == 0 and ne == 0:
            out.cosine = 1.0
        elif na == 0 or ne == 0:
            out.cosine = 0.0
        else:
            dot = (af * ef.conj()).sum() if af.is_complex() else (af * ef).sum()
            out.cosine = min(1.0, max(-1.0, float(dot.real) / (na * ne)))
        signal = float(ef.abs().pow(2).mean())
        out.sqnr_db = math.inf if mse == 0 else (10 * math.log10(signal / mse) if signal > 0 else -math.inf)
    else:
        out.cosine = 0.0 if nonfinite_bad.any() else 1.0
        out.sqnr_db = -math.inf if nonfinite_bad.any() else math.inf

    allowed = tol.atol + tol.rtol * abs_e
    outside = (diff > allowed) | nonfinite_bad
    n_out = int(outside.sum())
    out.frac_outside = n_out / te.numel()
    excess = torch.where(finite, diff - tol.rtol * abs_e, torch.zeros_like(diff))
    out.min_atol = math.inf if nonfinite_bad.any() else max(float(excess.max()), 0.0)
    ratio = torch.where(finite & (abs_e > 0), (diff - tol.atol) / abs_e.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(diff))
    zero_ref_bad = finite & (abs_e == 0) & (diff > tol.atol)
    out.min_rtol = math.inf if (nonfinite_bad.any() or zero_ref_bad.any()) else max(float(ratio.max()), 0.0)
    # The subtraction/division above can round a hair low; step up until the value really passes,
    # so `compare(..., atol=min_atol)` (or rtol=min_rtol) at the other tolerance unchanged passes.
    out.min_atol = _smallest_passing(out.min_atol, lambda v: not bool((diff > v + tol.rtol * abs_e).any()))
    out.min_rtol = _smallest_passing(out.min_rtol, lambda v: not bool((diff > tol.atol + v * abs_e).any()))

    # Top-k agreement for logits-like leaves: (batch, classes) or (batch, seq, vocab). A 1-D leaf is
    # a batch of scalars more often than one row of logits, and an argmax over the batch means nothing.
    if 2 <= te.dim() <= 3 and te.dtype.is_floating_point and te.shape[-1] >= 2 and not nonfinite_bad.any():
        a2, e2 = a.reshape(-1, te.shape[-1]), e.reshape(-1, te.shape[-1])
        out.top1_agreement = float((a2.argmax(-1) == e2.argmax(-1)).double().mean())
        if te.shape[-1] >= 10:
            ta5, te5 = a2.topk(5, -1).indices, e2.topk(5, -1).indices
            overlap = (ta5.unsqueeze(-1) == te5.unsqueeze(-2)).any(-1).double().mean()
            out.top5_overlap = float(overlap)

    if n_out:
        out.passed = False
        flat_idx = int(torch.where(outside.reshape(-1), torch.where(nonfinite_bad.reshape(-1), torch.full_like(diff.reshape(-1), math.inf), diff.reshape(-1)), torch.full_like(diff.reshape(-1), -1.0)).argmax())
        idx = tuple(int(i) for i in _unravel(flat_idx, te.shape))
        out.worst_index = idx
        av, ev = a.reshape(-1)[flat_idx].item(), e.reshape(-1)[flat_idx].item()
        gap = abs(av - ev)
        if exact_ne is not None:  # the float64 copies may have rounded: take the values as they are
            av, ev = ta.reshape(-1)[flat_idx].item(), te.reshape(-1)[flat_idx].item()
            gap = abs(av - ev)
        out.message = (
            f"{n_out} of {te.numel()} elements ({100 * out.frac_outside:.3g}%) outside {tol}; "
            f"greatest difference {gap:.4g} at index {idx} "
            f"({_fmt(av)} vs expected {_fmt(ev)}); "
            f"passes with atol>={_round_up(out.min_atol):.3g} or rtol>={_round_up(out.min_rtol):.3g}"
        )
        if out.nan_actual or out.inf_actual:
            out.message += f"; actual has {out.nan_actual} NaN and {out.inf_actual} Inf"
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


def is_logits_like(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 2 and t.shape[-1] >= 2


# ---------------------------------------------------------------------------------------------
# Calibration against an fp64 reference


@dataclass
class RatioVerdict:
    """The fp64 ratio rule for one leaf: error of `actual` vs fp64, against fp32's own error."""

    name: str
    passed: bool
    error: float  # RMSE of actual against fp64
    fp32_error: float  # RMSE of fp32 against fp64
    budget: float
    ratio: float  # error / (fp32_error * eps_scale), inf when the fp32 error is 0 and error is not

    def metrics(self) -> dict[str, Any]:
        return {"rmse_vs_fp64": self.error, "fp32_rmse_vs_fp64": self.fp32_error, "budget": self.budget, "ratio": self.ratio}


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    d = a.detach().cpu().double() - b.detach().cpu().double()
    if d.numel() == 0:
        return 0.0
    if not torch.isfinite(d).all():
        return math.inf
    return float(d.pow(2).mean().sqrt())


def ratio_rule(
    actual: Any,
    fp32: Any,
    fp64: Any,
    *,
    multiplier: float = 2.0,
    eps_scale: float = 1.0,
    abs_floor: float | None = None,
) -> list[RatioVerdict]:
    """Judge `actual` by how its error against `fp64` compares with `fp32`'s error against `fp64`.

    Passes a leaf when `rmse(actual, fp64) <= multiplier * eps_scale * rmse(fp32, fp64) + abs_floor`.
    `eps_scale` is eps(low dtype) / eps(float32) when `actual` ran in a lower precision, so the
    budget grows with the dtype's resolution (torch._dynamo uses multiplier 2 with eps_scale 1 for
    fp32-vs-fp32 checks). `abs_floor` defaults to 1e-4 x the fp64 reference's RMS, so exact
    references (error 0) do not demand exact results.
    """
    fa, f32, f64 = flatten(actual), flatten(fp32), flatten(fp64)
    verdicts = []
    for name, ref in f64.items():
        if not isinstance(ref, torch.Tensor) or not ref.is_floating_point() or name not in fa or name not in f32:
            continue
        act, base = fa[name], f32[name]
        if not isinstance(base, torch.Tensor) or base.shape != ref.shape:
            continue  # no usable fp32 baseline for this leaf: nothing to judge against
        if not isinstance(act, torch.Tensor) or act.shape != ref.shape:
            verdicts.append(RatioVerdict(name, False, math.inf, math.nan, 0.0, math.inf))
            continue
        err = rmse(act, ref)
        err32 = rmse(base, ref)
        ref_rms = float(ref.detach().cpu().double().pow(2).mean().sqrt()) if ref.numel() else 0.0
        floor = 1e-4 * ref_rms if abs_floor is None else abs_floor
        budget = multiplier * eps_scale * err32 + floor
        denom = err32 * eps_scale
        ratio = err / denom if denom > 0 else (0.0 if err == 0 else math.inf)
        # A non-finite error never passes, even when fp32's own error is non-finite (budget inf).
        verdicts.append(RatioVerdict(name, math.isfinite(err) and err <= budget, err, err32, budget, ratio))
    return verdicts


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
