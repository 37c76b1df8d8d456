"""Running a model in fp16/bf16 two ways (autocast, whole-model cast) and judging each way against
fp64 with the ratio rule (`compare.ratio_rule`); see `checks/precision/fp16_bf16.py` for the rule's
constants and how they were chosen."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import inputs as inp
from ..budget import OverBudget, deadline
from ..compare import Comparison, RatioVerdict, compare, eps, ratio_rule, rmse
from ..context import Context, Variant
from ..locate.culprit import Culprit
from ..registry import CheckOptions
from ..tree import flatten
from .error_table import LayerError, error_table, record_io
from .raising import RaiseSite, run_locating_raise
from .ranges import ModuleRange, record_ranges

WAYS = ("autocast", "cast")
#: Without an fp64 reference: rms error vs fp32 must stay below this many eps(dtype) of the output's RMS.
FALLBACK_ULPS = 16.0


@dataclass
class WayRun:
    way: str
    outputs: Any = None
    raised: RaiseSite | None = None
    verdicts: list[RatioVerdict] = field(default_factory=list)
    comparison: Comparison | None = None  # against fp64 (fp32 when fp64 is unavailable)
    vs_fp32: Comparison | None = None
    fixed: Comparison | None = None  # against fp32 with the user's --atol/--rtol
    mismatched: list[str] = field(default_factory=list)  # non-floating leaves that differ
    noisy: list[str] = field(default_factory=list)  # output leaves whose SQNR vs the reference is below the floor
    seconds: float = 0.0
    stopped: str | None = None  # ran past its time budget: not judged

    @property
    def ran(self) -> bool:
        return self.raised is None and self.stopped is None

    @property
    def within_budget(self) -> bool:
        return self.ran and all(v.passed for v in self.verdicts)

    @property
    def fixed_ok(self) -> bool:
        return self.fixed is None or self.fixed.passed

    @property
    def acceptable(self) -> bool:
        return self.within_budget and self.fixed_ok and not self.noisy

    def problems(self, reference: str, opts: CheckOptions) -> list[str]:
        """Why this way is not acceptable, in words."""
        out = []
        if not self.within_budget:
            worst = max(self.verdicts, key=lambda v: v.error / v.budget if v.budget > 0 else math.inf)
            out.append(f"`{worst.name}` rmse vs {reference} {worst.error:.3g} > budget {worst.budget:.3g}"
                       + (f" ({worst.ratio:.3g} x the fp32 error floor, allowed {opts.multiplier:g})"
                          if reference == "fp64" and math.isfinite(worst.ratio) else ""))
        over = {f"`{v.name}`" for v in self.verdicts if not v.passed}
        sqnr = {f"`{leaf.name}`": leaf.sqnr_db for leaf in self.comparison.tensor_leaves} if self.comparison is not None else {}
        noisy = [n for n in self.noisy if n not in over]
        if noisy:
            out.append(", ".join(f"{n} SQNR {sqnr.get(n, math.nan):.1f} dB" for n in noisy)
                       + f" < {opts.min_sqnr_db:g} dB (too noisy to use)")
        if not self.fixed_ok and self.fixed is not None:
            out.append(f"outside the tolerance you set: {self.fixed.describe()}")
        return out

    @property
    def budget_use(self) -> float:
        """Worst leaf's error / budget (<= 1 passes)."""
        uses = [v.error / v.budget if v.budget > 0 else (0.0 if v.error == 0 else math.inf) for v in self.verdicts]
        return max(uses, default=0.0)

    @property
    def ratio(self) -> float:
        return max((v.ratio for v in self.verdicts), default=0.0)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ran": self.ran, "seconds": self.seconds}
        if self.stopped:
            out["stopped"] = self.stopped
            return out
        if self.raised:
            out["raised"] = self.raised.to_dict()
            return out
        out.update(acceptable=self.acceptable, within_budget=self.within_budget, budget_use=self.budget_use,
                   ratio_to_fp32_error=self.ratio)
        out["leaves"] = [{"leaf": v.name, "passed": v.passed, **v.metrics()} for v in self.verdicts]
        if self.comparison is not None:
            out["metrics"] = self.comparison.metrics()
        if self.mismatched:
            out["non_float_mismatches"] = self.mismatched
        return out


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype).replace("torch.", ""))


def autocast(ctx: Context, dtype: torch.dtype) -> Callable[[], Any]:
    return lambda: torch.autocast(device_type=ctx.device.type, dtype=dtype)


def cast_model(ctx: Context, dtype: torch.dtype) -> torch.nn.Module:
    """The whole model cast to `dtype`, built once per run and shared (the Context key is public)."""
    return ctx.cached(f"precision:{dtype_name(dtype)}:cast-model", lambda: ctx.model_copy().to(dtype))


def run_way(ctx: Context, way: str, dtype: torch.dtype, budget_s: float = 0.0) -> WayRun:
    """Run the model one way; a raise is recorded with the module and line, never propagated. Past
    `budget_s` the way is stopped and said (fp16 on a CPU without fast half kernels can take minutes
    a forward where fp32 takes seconds)."""
    run = WayRun(way)
    start = time.perf_counter()
    try:
        with deadline(budget_s):
            _run_way(ctx, run, dtype)
    except OverBudget:
        run.outputs, run.raised = None, None
        run.stopped = (f"stopped after {budget_s:g} s (way_budget_s) on {ctx.device.type}: {dtype_name(dtype)} kernels are slow "
                       f"there; judge it on the device you deploy to (--device cuda) or raise -o way_budget_s")
    run.seconds = time.perf_counter() - start
    return run


def _run_way(ctx: Context, run: WayRun, dtype: torch.dtype) -> None:
    if run.way == "cast":
        try:
            model = cast_model(ctx, dtype)
        except Exception as exc:
            run.raised = RaiseSite(Culprit.module("", ctx.model), f"{type(exc).__name__}: {exc}")
            return
        x = inp.cast_floats(ctx.inputs, dtype)
        run.outputs, run.raised = run_locating_raise(model, lambda: ctx.forward(x, model))
        return
    if not torch.amp.is_autocast_available(ctx.device.type):
        run.raised = RaiseSite(Culprit.module("", ctx.model), f"autocast is not available on {ctx.device.type}")
        return

    def call() -> Any:
        with autocast(ctx, dtype)():
            return ctx.forward(ctx.inputs, ctx.model)

    run.outputs, run.raised = run_locating_raise(ctx.model, call)


def _rms(t: torch.Tensor) -> float:
    t = t.detach().to("cpu", torch.float64)
    t = t[torch.isfinite(t)]
    return float(t.pow(2).mean().sqrt()) if t.numel() else 0.0


def _finite_part(act: torch.Tensor, base: torch.Tensor, r64: Any) -> tuple[torch.Tensor, torch.Tensor, Any, bool]:
    """The elements where fp32 (and fp64) are finite, and whether `act` is non-finite where fp32 is
    not: a model whose fp32 output already has NaN/Inf is judged on the rest."""
    ok = torch.isfinite(base)
    if isinstance(r64, torch.Tensor) and r64.shape == base.shape:
        ok = ok & torch.isfinite(r64)
    else:
        r64 = None
    act_ok = torch.isfinite(act)
    if bool(ok.all()):
        return act, base, r64, not bool(act_ok.all())
    if bool((ok & ~act_ok).any()):
        return act, base, r64, True
    return act[ok], base[ok], (r64[ok] if r64 is not None else None), False


def _leaf_verdict(name: str, act: Any, base: torch.Tensor, r64: Any, dtype: torch.dtype, opts: CheckOptions) -> RatioVerdict:
    """The ratio rule for one floating output leaf (a fixed budget against fp32 without fp64)."""
    if not isinstance(act, torch.Tensor) or act.shape != base.shape:
        return RatioVerdict(name, False, math.inf, math.nan, 0.0, math.inf)
    act, base, r64, nonfinite = _finite_part(act, base, r64)
    if isinstance(r64, torch.Tensor):
        floor = opts.floor_ulps * eps(dtype) * _rms(r64)
        verdict = ratio_rule(act, base, r64, multiplier=opts.multiplier, eps_scale=eps(dtype) / eps(torch.float32),
                             abs_floor=floor)[0]
        verdict.name = name
    else:
        err = rmse(act, base)
        unit = eps(dtype) * _rms(base)
        budget = FALLBACK_ULPS * unit + opts.floor_ulps * unit
        verdict = RatioVerdict(name, err <= budget, err, math.nan, budget, err / unit if unit > 0 else (0.0 if err == 0 else math.inf))
    if nonfinite:  # Inf/NaN where fp32 is finite
        verdict.passed, verdict.error, verdict.ratio = False, math.inf, math.inf
    return verdict


def judge(ctx: Context, run: WayRun, dtype: torch.dtype, opts: CheckOptions, ref32: Any, ref64: Any | None) -> None:
    """Fill the run's ratio verdicts (per floating leaf), comparisons and noisy leaves."""
    out, f32 = flatten(run.outputs), flatten(ref32)
    f64 = flatten(ref64) if ref64 is not None else {}
    run.verdicts = [_leaf_verdict(name, out.get(name), base, f64.get(name), dtype, opts) for name, base in f32.items()
                    if isinstance(base, torch.Tensor) and base.is_floating_point()]
    run.comparison = compare(run.outputs, ref64 if ref64 is not None else ref32)
    run.noisy = [f"`{leaf.name}`" for leaf in run.comparison.tensor_leaves
                 if leaf.dtype is not None and "float" in leaf.dtype and leaf.sqnr_db < opts.min_sqnr_db]
    run.vs_fp32 = compare(run.outputs, ref32)
    for leaf in run.vs_fp32.leaves:
        exp = f32.get(leaf.name)
        floating = isinstance(exp, torch.Tensor) and exp.is_floating_point()
        if not floating and not leaf.passed:
            run.mismatched.append(f"{leaf.name}: {leaf.message}")
    if ctx.options.atol is not None or ctx.options.rtol is not None:
        run.fixed = compare(run.outputs, ref32, rtol=ctx.options.rtol, atol=ctx.options.atol)


def best_way(runs: list[WayRun]) -> WayRun | None:
    """The acceptable way, else the one closest to its budget (autocast first on a tie)."""
    ran = [r for r in runs if r.ran]
    if not ran:
        return None
    return min(ran, key=lambda r: (not r.acceptable, not r.within_budget, r.budget_use, WAYS.index(r.way) if r.way in WAYS else 9))


def _timed(ctx: Context, forwards: int, build: Callable[[], Any]) -> Any:
    """Run `build` counting its forwards and time in the run's stats."""
    start = time.perf_counter()
    try:
        return build()
    finally:
        ctx.stats.calls += forwards
        ctx.stats.seconds += time.perf_counter() - start


def fp32_ranges(ctx: Context) -> list[ModuleRange]:
    """Every module call's fp32 output range, recorded once per run."""
    return ctx.cached("layers:fp32-ranges", lambda: _timed(ctx, 1, lambda: record_ranges(ctx.model, ctx.inputs)))


def layer_rows(ctx: Context, run: WayRun, dtype: torch.dtype) -> tuple[list[LayerError], str | None]:
    """The per-layer error table of one way (three hooked forwards)."""
    def build() -> tuple[list[LayerError], str | None]:
        recorded = record_io(ctx.model, ctx.inputs)
        top = torch.finfo(dtype).max
        if run.way == "cast":
            twin, twin_inputs = cast_model(ctx, dtype), inp.cast_floats(ctx.inputs, dtype)
            return error_table(twin, twin_inputs, recorded, cast=lambda t: t.to(dtype), max_value=top)
        return error_table(ctx.model, ctx.inputs, recorded, context=autocast(ctx, dtype), max_value=top)

    return _timed(ctx, 3, build)


def publish_variant(ctx: Context, run: WayRun, dtype: torch.dtype, status: str, note: str) -> None:
    """The way that ran, for the benchmark (named `fp16` / `bf16`)."""
    name = dtype_name(dtype)
    if run.way == "cast":
        model = cast_model(ctx, dtype)

        def go(inputs: Any) -> Any:
            with torch.inference_mode():
                return inp.call_model(model, inp.cast_floats(inputs, dtype))
    else:
        model = ctx.model

        def go(inputs: Any) -> Any:
            with torch.inference_mode(), autocast(ctx, dtype)():
                return inp.call_model(model, inputs)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    ctx.add_variant(Variant(name=name, run=go, source_check=name, verdict=status,
                            max_error=run.vs_fp32.max_abs if run.vs_fp32 is not None else None, size_bytes=size, note=note))
