"""Precision family, reduced precision: can this model ship in fp16 / bf16, and if not, which layer breaks?

`fp16` and `bf16` run the model two ways, under autocast and cast whole (`.half()` /
`.to(torch.bfloat16)`), on the run's device, and judge each against an fp64 run of the same model
and inputs (`ctx.fp64`) with the ratio rule of `diagnostics.compare.ratio_rule`:

    rmse(low, fp64) <= multiplier * eps(dtype)/eps(fp32) * rmse(fp32, fp64) + floor_ulps * eps(dtype) * rms(fp64)

i.e. the reduced-precision error may be `multiplier` times what fp32's own error would be if it had
the dtype's resolution, plus one unit of the dtype's resolution (so a model that fp32 computes
exactly, an identity, is not asked to be exact in fp16). Multiplier 4 was chosen from measurements
(torch 2.14, CPU, budget use = error / budget): twelve clean models (resnet18/50, squeezenet, a
2-layer ViT, LSTM, GRU, MLP, a transformer with a padding mask, a single Linear, an identity) use
at most 0.21 of it (the identity's output rounding; deep models 0.04-0.14), so passing has a 4.7x
margin; the faulty models are 48x (underflow) to 149x (an overflowing square in a norm) to
infinitely (overflow to Inf) over it. The ratio rule accepts any error that scales with eps, so an
output that fp32 already computes poorly (a large offset that cancels) may be noise in bf16 and
still "scale"; an absolute floor therefore also fails any output below `min_sqnr_db` (20 dB) vs
fp64 (clean models: 40-52 dB in bf16, 60-71 dB in fp16).

A way that raises is reported and the other way judges; the check fails only when no way runs or
the best way is out of budget, under the SQNR floor or outside a user-set --atol/--rtol; another
way that raised or failed warns ("deploy with autocast"). Every module's fp32 output range is
recorded with hooks, and the headroom to the dtype's largest finite value is reported.
On a failure or warning a per-layer table (each module's error carried forward, and with its
inputs taken from the fp32 run) names the culprit: the first module, in execution order, whose
output is Inf/NaN or whose fp32 range exceeds the dtype; else the first whose values sit below
the dtype's normal range; else the module that loses the most precision on its own.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from torch_diagnose import inputs as inp
from torch_diagnose.compare import Comparison, RatioVerdict, compare, eps, ratio_rule, rmse
from torch_diagnose.context import Context, Variant
from torch_diagnose.layers import (
    LayerError, ModuleRange, RaiseSite, error_plot, error_table, pick_local_culprit, record_io, record_ranges,
    run_locating_raise,
)
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import FAIL, PASS, WARN, CheckResult
from torch_diagnose.tree import flatten

WAYS = ("autocast", "cast")
#: The ratio rule's multiplier (see the module docstring for how it was chosen).
MULTIPLIER = 4.0
#: An output with less SQNR than this is too noisy to ship, even when fp32 is as ill-conditioned (dB).
MIN_SQNR_DB = 20.0
#: Without an fp64 reference: rms error vs fp32 must stay below this many eps(dtype) of the output's RMS.
FALLBACK_ULPS = 16.0

_OPTIONS = (
    Option("ways", list, list(WAYS), "ways to run in reduced precision: autocast, cast (whole model cast)"),
    Option("multiplier", float, MULTIPLIER,
           "error budget: rmse(low, fp64) <= multiplier * eps(dtype)/eps(fp32) * rmse(fp32, fp64) + floor"),
    Option("floor_ulps", float, 1.0, "the budget's floor, in eps(dtype) x the output's RMS"),
    Option("min_sqnr_db", float, MIN_SQNR_DB,
           "fail when an output's SQNR vs fp64 is below this, however large fp32's own error (the output is too noisy to use)"),
    Option("min_headroom", float, 4.0, "warn when a module's fp32 output comes within this factor of the dtype's largest value"),
    Option("layer_table", bool, True, "on a warning or failure, compute the per-layer error table (two extra hooked runs)"),
)


@dataclass
class _WayRun:
    way: str
    outputs: Any = None
    raised: RaiseSite | None = None
    verdicts: list[RatioVerdict] = field(default_factory=list)
    comparison: Comparison | None = None  # against fp64 (fp32 when fp64 is unavailable)
    vs_fp32: Comparison | None = None
    fixed: Comparison | None = None  # against fp32 with the user's --atol/--rtol
    mismatched: list[str] = field(default_factory=list)  # non-floating leaves that differ
    seconds: float = 0.0
    _noisy: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.raised is None

    @property
    def within_budget(self) -> bool:
        return self.ran and all(v.passed for v in self.verdicts)

    @property
    def fixed_ok(self) -> bool:
        return self.fixed is None or self.fixed.passed

    @property
    def noisy(self) -> list[str]:
        """Output leaves whose SQNR vs the reference is below the floor (set by `_judge`)."""
        return self._noisy

    @property
    def acceptable(self) -> bool:
        return self.within_budget and self.fixed_ok and not self._noisy

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
        noisy = [n for n in self._noisy if n not in over]
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


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype).replace("torch.", ""))


def _autocast(ctx: Context, dtype: torch.dtype) -> Callable[[], Any]:
    return lambda: torch.autocast(device_type=ctx.device.type, dtype=dtype)


def _cast_model(ctx: Context, dtype: torch.dtype) -> torch.nn.Module:
    """The whole model cast to `dtype`, built once per run and shared."""
    return ctx.cached(f"precision:{_dtype_name(dtype)}:cast-model", lambda: ctx.model_copy().to(dtype))


def _run_way(ctx: Context, way: str, dtype: torch.dtype) -> _WayRun:
    run = _WayRun(way)
    start = time.perf_counter()
    if way == "cast":
        try:
            model = _cast_model(ctx, dtype)
        except Exception as exc:
            run.raised = RaiseSite("", type(ctx.model).__name__, f"{type(exc).__name__}: {exc}")
            return run
        x = inp.cast_floats(ctx.inputs, dtype)
        run.outputs, run.raised = run_locating_raise(model, lambda: ctx.forward(x, model))
    else:
        if not torch.amp.is_autocast_available(ctx.device.type):
            run.raised = RaiseSite("", type(ctx.model).__name__, f"autocast is not available on {ctx.device.type}")
            return run
        model = ctx.model

        def call() -> Any:
            with _autocast(ctx, dtype)():
                return ctx.forward(ctx.inputs, model)

        run.outputs, run.raised = run_locating_raise(model, call)
    run.seconds = time.perf_counter() - start
    return run


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


def _judge(ctx: Context, run: _WayRun, dtype: torch.dtype, opts: CheckOptions, ref32: Any, ref64: Any | None) -> None:
    """Fill the run's ratio verdicts (per floating leaf) and comparisons."""
    scale = eps(dtype) / eps(torch.float32)
    out, f32 = flatten(run.outputs), flatten(ref32)
    f64 = flatten(ref64) if ref64 is not None else None
    for name, base in f32.items():
        if not (isinstance(base, torch.Tensor) and base.is_floating_point()):
            continue
        act = out.get(name)
        if not isinstance(act, torch.Tensor) or act.shape != base.shape:
            run.verdicts.append(RatioVerdict(name, False, math.inf, math.nan, 0.0, math.inf))
            continue
        act, base, r64_leaf, nonfinite = _finite_part(act, base, f64.get(name) if f64 is not None else None)
        if isinstance(r64_leaf, torch.Tensor):
            r64 = r64_leaf
            floor = opts.floor_ulps * eps(dtype) * _rms(r64)
            verdict = ratio_rule(act, base, r64, multiplier=opts.multiplier, eps_scale=scale, abs_floor=floor)[0]
            verdict.name = name
        else:  # no fp64 reference: a fixed budget in units of the dtype's resolution, against fp32
            err = rmse(act, base)
            unit = eps(dtype) * _rms(base)
            budget = FALLBACK_ULPS * unit + opts.floor_ulps * unit
            verdict = RatioVerdict(name, err <= budget, err, math.nan, budget, err / unit if unit > 0 else (0.0 if err == 0 else math.inf))
        if nonfinite:  # Inf/NaN where fp32 is finite
            verdict.passed, verdict.error, verdict.ratio = False, math.inf, math.inf
        run.verdicts.append(verdict)
    run.comparison = compare(run.outputs, ref64 if ref64 is not None else ref32)
    run._noisy = [f"`{leaf.name}`" for leaf in run.comparison.tensor_leaves
                  if leaf.dtype is not None and "float" in leaf.dtype and leaf.sqnr_db < opts.min_sqnr_db]
    run.vs_fp32 = compare(run.outputs, ref32)
    for leaf in run.vs_fp32.leaves:
        exp = f32.get(leaf.name)
        floating = isinstance(exp, torch.Tensor) and exp.is_floating_point()
        if not floating and not leaf.passed:
            run.mismatched.append(f"{leaf.name}: {leaf.message}")
    if ctx.options.atol is not None or ctx.options.rtol is not None:
        run.fixed = compare(run.outputs, ref32, rtol=ctx.options.rtol, atol=ctx.options.atol)


def _best(runs: list[_WayRun]) -> _WayRun | None:
    ran = [r for r in runs if r.ran]
    if not ran:
        return None
    return min(ran, key=lambda r: (not r.acceptable, not r.within_budget, r.budget_use, WAYS.index(r.way) if r.way in WAYS else 9))


# ---------------------------------------------------------------------------------------------
# Hints


def _raise_hint(site: RaiseSite, dtype: torch.dtype, device: torch.device) -> str:
    name = _dtype_name(dtype)
    msg = site.exception
    low = msg.lower()
    where = f"`{site.module or '<root>'}` ({site.module_type})"
    code = f" (`{site.code}`)" if site.code else ""
    if "without overflow" in low:
        return (f"a constant in {where}{code} does not fit in {name}: use `torch.finfo(x.dtype).min` (or `.max`) "
                f"instead of a literal like -1e9, so the value follows the tensor's dtype")
    if not site.in_user_code and "transformer" in (site.file or "").lower():
        return (f"{where} raises in PyTorch's fast path for nn.TransformerEncoder/MultiheadAttention, which does not support "
                f"{name} this way: ship the whole-model cast (`model.to(torch.{str(dtype).replace('torch.', '')})`), or "
                f"disable the fast path with `torch.backends.mha.set_fastpath_enabled(False)`"
                + (f" (the encoder is called at {site.called_from})" if site.called_from else ""))
    dtype_clash = ("dtype" in low or "scalar type" in low or "should be the same" in low) and any(
        w in low for w in ("half", "bfloat16", "float", "double", "same"))
    if dtype_clash:
        return (f"{where}{code} mixes {name} with a tensor of another dtype: a tensor made inside forward without "
                f"`dtype=` (torch.zeros/ones/arange/tensor), a buffer or parameter kept in fp32, or an explicit `.float()`. "
                f"Create it with `dtype=x.dtype, device=x.device`, or cast it with `.to(x.dtype)` where it meets the input")
    if "not implemented for" in low:
        return (f"an operator in {where}{code} has no {name} kernel on {device.type}: run this module in fp32 "
                f"(autocast: `with torch.autocast('{device.type}', enabled=False): y = module(x.float())`), or use the other dtype")
    return (f"{where}{code} raises in {name}: make its forward dtype-agnostic (derive dtypes from the inputs, `x.dtype`, "
            f"instead of hard-coding float32 or fp32-only constants), or keep it in fp32")


def _keep_fp32(name: str, device: torch.device) -> str:
    return (f"keep `{name}` in fp32 (autocast: call it inside `with torch.autocast('{device.type}', enabled=False):` on "
            f"`x.float()`; whole-model cast: `model.get_submodule('{name}').float()` and cast its input and output)")


@dataclass
class _Culprit:
    label: str
    location: str | None
    hint: str
    reason: str


def _layer_culprit(rows: list[LayerError], dtype: torch.dtype, device: torch.device) -> _Culprit | None:
    """Overflow first (execution order), then values below the normal range, then the largest local error."""
    info = torch.finfo(dtype)
    name = _dtype_name(dtype)
    for r in rows:
        over = math.isfinite(r.fp32_absmax) and r.fp32_absmax > info.max
        if over or r.carried_nonfinite:
            if over:
                reason = f"{r.label} produces values up to {r.fp32_absmax:.3g} in fp32, beyond {name}'s largest finite value {info.max:.5g}"
                hint = (f"{reason}: {_keep_fp32(r.name, device)}, scale its weights or inputs down so its activations stay well "
                        f"below {info.max:.5g}" + (", or use bf16 (the range of fp32)" if dtype == torch.float16 else ""))
            else:
                reason = (f"{r.label} outputs Inf/NaN in {name} although its fp32 output (max |x| {r.fp32_absmax:.3g}) fits: an "
                          f"intermediate inside its forward (a square, exp, sum or product of large values) overflows")
                hint = (f"{reason}; compute that part in fp32 (`x.float()` ... `.to(x.dtype)`) or {_keep_fp32(r.name, device)}"
                        + (", or use bf16" if dtype == torch.float16 else ""))
            return _Culprit(r.label, r.call_site, hint, reason)
    for r in rows:
        if 0 < r.fp32_absmax < info.tiny:
            reason = (f"{r.label} outputs values of at most {r.fp32_absmax:.3g} in fp32, below {name}'s smallest normal number "
                      f"{info.tiny:.3g}, so they lose precision or flush to zero")
            hint = (f"{reason}: rescale (normalise) the activations or weights feeding it, {_keep_fp32(r.name, device)}"
                    + (", or use bf16 (the range of fp32)" if dtype == torch.float16 else ""))
            return _Culprit(r.label, r.call_site, hint, reason)
    best = pick_local_culprit(rows)
    if best is None or best.local_rms_rel is None:
        return None
    units = best.local_rms_rel / eps(dtype)
    if best.local_nonfinite or best.local_rms_rel >= 0.5:
        reason = (f"{best.label} gives a wrong output in {name} even from exact fp32 inputs (relative RMS error "
                  f"{best.local_rms_rel:.3g}): an intermediate inside its forward loses its significant bits (an overflowing "
                  f"square or exp, an underflow, or a large offset that cancels)")
        hint = (f"{reason}; compute that part in fp32 (e.g. `x.float().pow(2).mean()` for a variance), or "
                f"{_keep_fp32(best.name, device)}")
    elif units < 8:
        reason = (f"no module loses much precision on its own (largest: {best.label}, {units:.1f} x eps({name})); the error "
                  f"accumulates over the depth of the model")
        hint = f"{reason}: keep the longest accumulating path (residual stream, recurrent state) in fp32, or use autocast instead of a whole-model cast"
    else:
        reason = f"{best.label} loses the most precision on its own: {best.local_rms_rel:.3g} relative RMS error from fp32 inputs ({units:.0f} x eps({name}))"
        hint = (f"{reason}; {_keep_fp32(best.name, device)}, or compute its precision-sensitive part in fp32 (large integers "
                f"such as positions, sums of squares, exponentials)")
    return _Culprit(best.label, best.call_site, hint, reason)


# ---------------------------------------------------------------------------------------------


def _headroom(ranges: list[ModuleRange], dtype: torch.dtype) -> tuple[float, ModuleRange | None]:
    finite = [r for r in ranges if math.isfinite(r.absmax)]
    if not finite:
        return math.inf, None
    top = max(finite, key=lambda r: r.absmax)
    return (torch.finfo(dtype).max / top.absmax if top.absmax > 0 else math.inf), top


def _ranges(ctx: Context) -> list[ModuleRange]:
    def build() -> list[ModuleRange]:
        start = time.perf_counter()
        try:
            return record_ranges(ctx.model, ctx.inputs)
        finally:
            ctx.stats.calls += 1
            ctx.stats.seconds += time.perf_counter() - start

    return ctx.cached("layers:fp32-ranges", build)


def _layer_rows(ctx: Context, run: _WayRun, dtype: torch.dtype) -> tuple[list[LayerError], str | None]:
    start = time.perf_counter()
    try:
        recorded = record_io(ctx.model, ctx.inputs)
        if run.way == "cast":
            twin, twin_inputs = _cast_model(ctx, dtype), inp.cast_floats(ctx.inputs, dtype)
            return error_table(twin, twin_inputs, recorded, cast=lambda t: t.to(dtype), max_value=torch.finfo(dtype).max)
        return error_table(ctx.model, ctx.inputs, recorded, context=_autocast(ctx, dtype), max_value=torch.finfo(dtype).max)
    finally:
        ctx.stats.calls += 3
        ctx.stats.seconds += time.perf_counter() - start


def _variant(ctx: Context, run: _WayRun, dtype: torch.dtype, status: str, note: str) -> None:
    name = _dtype_name(dtype)
    if run.way == "cast":
        model = _cast_model(ctx, dtype)

        def go(inputs: Any) -> Any:
            with torch.inference_mode():
                return inp.call_model(model, inp.cast_floats(inputs, dtype))
    else:
        model = ctx.model

        def go(inputs: Any) -> Any:
            with torch.inference_mode(), _autocast(ctx, dtype)():
                return inp.call_model(model, inputs)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    ctx.add_variant(Variant(name=name, run=go, source_check=name, verdict=status,
                            max_error=run.vs_fp32.max_abs if run.vs_fp32 is not None else None, size_bytes=size, note=note))


def _way_details(run: _WayRun) -> dict[str, Any]:
    out: dict[str, Any] = {"ran": run.ran, "seconds": run.seconds}
    if run.raised:
        out["raised"] = run.raised.to_dict()
        return out
    out["acceptable"] = run.acceptable
    out["within_budget"] = run.within_budget
    out["budget_use"] = run.budget_use
    out["ratio_to_fp32_error"] = run.ratio
    out["leaves"] = [{"leaf": v.name, "passed": v.passed, **v.metrics()} for v in run.verdicts]
    if run.comparison is not None:
        out["metrics"] = run.comparison.metrics()
    if run.mismatched:
        out["non_float_mismatches"] = run.mismatched
    return out


def _verdict(best: _WayRun, runs: list[_WayRun], headroom: float, top: ModuleRange | None, opts: CheckOptions,
             dtype: torch.dtype, reference: str) -> tuple[str, list[str], _WayRun | None]:
    """Status, reasons, and the way the layer table should explain. The best way out of budget, too
    noisy or outside a user tolerance fails; another way that raised or is not acceptable, low
    headroom or differing non-floating outputs warn."""
    name, info = _dtype_name(dtype), torch.finfo(dtype)
    status, reasons, explain = PASS, [], None
    if not best.acceptable:
        status, explain = FAIL, best
        reasons.append(f"{name} ({best.way}) fails: " + "; ".join(best.problems(reference, opts)))
    warnings = [f"{r.way} raised in {r.raised.label}: {r.raised.exception}" for r in runs if r.raised]
    for r in runs:
        if r.ran and r is not best and not r.acceptable:
            warnings.append(f"{r.way} is not acceptable: {'; '.join(r.problems(reference, opts))}; {best.way} is, so deploy "
                            f"with {best.way}" if best.acceptable else f"{r.way} fails too")
            explain = explain or r
    if headroom < opts.min_headroom and top is not None and status != FAIL:
        warnings.append(f"{top.label} reaches {top.absmax:.3g} in fp32, " + (
            f"within {headroom:.3g}x of {name}'s largest value {info.max:.5g}" if headroom >= 1 else
            f"beyond {name}'s largest value {info.max:.5g} (the {best.way} run survived it: the op ran in fp32 there)"))
    if best.mismatched:
        warnings.append(f"non-floating outputs differ in {name}: " + "; ".join(best.mismatched[:3]))
    if warnings and status == PASS:
        status = WARN
    return status, reasons + warnings, explain


def _culprit(status: str, rows: list[LayerError], explain: _WayRun | None, runs: list[_WayRun], headroom: float,
             top: ModuleRange | None, opts: CheckOptions, dtype: torch.dtype, device: torch.device) -> _Culprit | None:
    """A way that is not acceptable is explained by its layer table; else a way that raised; else the headroom."""
    if status == PASS:
        return None
    if explain is not None and rows:
        found = _layer_culprit(rows, dtype, device)
        if found is not None:
            return found
    site = next((r.raised for r in runs if r.raised), None)
    if site is not None and (status == WARN or not any(r.ran for r in runs)):
        return _Culprit(site.label, site.location, _raise_hint(site, dtype, device), "")
    if status == WARN and headroom < opts.min_headroom and top is not None:
        return _Culprit(top.label, top.call_site,
                        f"{top.label} comes within {headroom:.3g}x of {_dtype_name(dtype)}'s largest value: inputs a little larger "
                        f"than the example overflow; {_keep_fp32(top.name, device)} or scale its activations down", "")
    return None


def check_precision(ctx: Context, opts: CheckOptions, dtype: torch.dtype) -> CheckResult:
    """Run and judge one reduced dtype (shared by `fp16` and `bf16`)."""
    name = _dtype_name(dtype)
    info = torch.finfo(dtype)
    ways = [w for w in (str(w).strip().lower() for w in opts.ways) if w]
    unknown = [w for w in ways if w not in WAYS]
    if unknown or not ways:
        from torch_diagnose.errors import UsageError

        raise UsageError(f"{name}.ways: unknown way {unknown[0] if unknown else '(none)'!r}; use autocast and/or cast")
    ref32 = ctx.reference
    fp64 = ctx.fp64
    ref64 = fp64.outputs if fp64.error is None else None
    ranges = _ranges(ctx)
    headroom, top = _headroom(ranges, dtype)

    runs = [_run_way(ctx, way, dtype) for way in ways]
    for run in runs:
        if run.ran:
            _judge(ctx, run, dtype, opts, ref32, ref64)
    best = _best(runs)
    raised = [r for r in runs if not r.ran]
    rule = (f"rmse vs fp64 <= {opts.multiplier:g} x eps({name})/eps(fp32) x rmse(fp32 vs fp64) + {opts.floor_ulps:g} x eps({name}) x rms"
            if ref64 is not None else
            f"fp64 reference unavailable ({fp64.error}): rmse vs fp32 <= {FALLBACK_ULPS + opts.floor_ulps:g} x eps({name}) x rms")
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"budget_rule": rule, "ways": {r.way: _way_details(r) for r in runs}}
    if top is not None:
        details["largest_fp32_activation"] = {"module": top.label, "max_abs": top.absmax, "call_site": top.call_site}

    if best is None:  # no way ran at all
        site = next((r.raised for r in raised if r.raised and r.raised.in_user_code), None) or runs[-1].raised
        assert site is not None
        metrics.update({f"{r.way}.ran": False for r in runs})
        return CheckResult(
            status=FAIL,
            summary=f"the model cannot run in {name}: " + "; ".join(f"{r.way} raised {r.raised.exception}" for r in raised if r.raised),
            culprit=site.label, location=site.location, hint=_raise_hint(site, dtype, ctx.device),
            metrics=metrics, details=details,
        )

    metrics["way"] = best.way
    metrics["budget_use"] = best.budget_use
    metrics["ratio_to_fp32_error"] = best.ratio
    metrics["multiplier"] = opts.multiplier
    metrics["reference"] = "fp64" if ref64 is not None else "fp32"
    assert best.comparison is not None
    metrics.update({k: v for k, v in best.comparison.metrics().items() if not k.endswith("frac_outside")})
    metrics["headroom"] = headroom
    metrics["max_fp32_activation"] = top.absmax if top else 0.0
    for r in runs:
        metrics[f"{r.way}.ran"] = r.ran
        if r.ran:
            metrics[f"{r.way}.budget_use"] = r.budget_use

    status, reasons, explain = _verdict(best, runs, headroom, top, opts, dtype, metrics["reference"])
    rows: list[LayerError] = []
    if status != PASS and opts.layer_table:
        table_way = explain or best
        rows, problem = _layer_rows(ctx, table_way, dtype)
        details["layers_way"] = table_way.way
        details["layers"] = [r.row() for r in rows]
        details["plot"] = error_plot(rows, f"{name} ({table_way.way}): per-module error vs fp32", eps=eps(dtype))
        if problem:
            details["layer_table_problem"] = problem
    culprit = _culprit(status, rows, explain, runs, headroom, top, opts, dtype, ctx.device)
    if culprit and culprit.reason and explain is not None:
        reasons.append(culprit.reason)

    others = [r for r in runs if r is not best and r.ran]
    note = f"ran by {'whole-model cast' if best.way == 'cast' else 'autocast'}" + "".join(
        f" ({r.way} also ran: {r.budget_use:.2g} of budget)" for r in others) + (
        f"; {', '.join(r.way for r in raised)} raised" if raised else "")
    _variant(ctx, best, dtype, status, note)

    comp = best.comparison
    numbers = (f"max abs {comp.max_abs:.3g}, rms rel {comp.max_rms_rel:.3g}, SQNR {comp.min_sqnr_db:.1f} dB"
               + (f", top-1 agreement {metrics['top1_agreement']:.0%}" if "top1_agreement" in metrics else ""))
    if status == PASS:
        room = f"headroom {headroom:.3g}x to {info.max:.5g}" if math.isfinite(headroom) else "no finite activations to bound"
        summary = f"{name} {note}: within budget ({best.budget_use:.2g} of it; {numbers} vs {metrics['reference']}); {room}"
    else:
        summary = "; ".join(reasons) + f" [{name} {note}; {numbers}]"
    return CheckResult(
        status=status, summary=summary, metrics=metrics, details=details,
        culprit=culprit.label if culprit else None, location=culprit.location if culprit else None,
        hint=culprit.hint if culprit else (None if status == PASS else f"see details['ways'] for each way's errors ({rule})"),
    )


@register("fp16", family="precision", title="the model runs in fp16 within an error budget derived from fp32",
          options=_OPTIONS, order=40)
def fp16(ctx: Context, opts: CheckOptions) -> CheckResult:
    """FP16 against FP32: autocast and whole-model `.half()`, judged against an fp64 run.

    Passes when the better way's error stays within `multiplier` (default 4) x the fp32 error
    floor scaled by eps(fp16)/eps(fp32), plus one fp16 unit of the output's RMS, and every output
    keeps `min_sqnr_db` (20 dB) against fp64. Reports max abs,
    RMS-relative error, cosine, SQNR and top-1 agreement per output, and each module's fp32
    headroom to 65504. Fails naming the first module whose output overflows to Inf/NaN (or whose
    fp32 range exceeds fp16), the module whose values fall below fp16's normal range, the module
    that loses most precision on its own, or the innermost module that raises, with its line.
    """
    return check_precision(ctx, opts, torch.float16)


@register("bf16", family="precision", title="the model runs in bf16 within an error budget derived from fp32",
          options=_OPTIONS, order=41)
def bf16(ctx: Context, opts: CheckOptions) -> CheckResult:
    """BF16 against FP32: autocast and whole-model `.to(torch.bfloat16)`, judged against an fp64 run.

    Same rule as `fp16` with eps(bf16) = 2^-7: bf16 keeps fp32's range (no overflow below
    3.4e38) but has 3 fewer significant digits, so precision loss, not range, is what fails it.
    """
    return check_precision(ctx, opts, torch.bfloat16)

