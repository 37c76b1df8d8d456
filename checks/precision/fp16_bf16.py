"""Precision family, reduced precision: can this model ship in fp16 / bf16, and if not, which layer breaks?

`fp16` and `bf16` run the model two ways, under autocast and cast whole (`.half()` /
`.to(torch.bfloat16)`), on the run's device, and judge each against an fp64 run of the same model
and inputs (`ctx.fp64`) with the ratio rule of `torch_diagnose.compare.ratio_rule`:

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
from typing import Any

import torch

from torch_diagnose.compare import eps
from torch_diagnose.context import Context
from torch_diagnose.degenerate import RAISED
from torch_diagnose.errors import UsageError
from torch_diagnose.precision.error_table import LayerError, error_plot
from torch_diagnose.precision.explain import culprit, headroom, raise_hint, verdict
from torch_diagnose.precision.ranges import ModuleRange
from torch_diagnose.precision.reduced import (
    FALLBACK_ULPS, WAYS, WayRun, best_way, dtype_name, fp32_ranges, judge, layer_rows, publish_variant, run_way,
)
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import PASS, CheckResult

#: The ratio rule's multiplier (see the module docstring for how it was chosen).
MULTIPLIER = 4.0
#: An output with less SQNR than this is too noisy to ship, even when fp32 is as ill-conditioned (dB).
MIN_SQNR_DB = 20.0
#: Seconds one way may take. Clean models take well under a second a way; Mask R-CNN on 2 CPU cores takes
#: 51 s for both bf16 ways and over 10 minutes for fp16 (CPU half kernels), which ended in the run's timeout.
WAY_BUDGET_S = 90.0

def _ways(raw: Any) -> list[str]:
    """`autocast,cast` or a list -> lower-case names; at least one."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    ways = [str(w).strip().lower() for w in items if str(w).strip()]
    if not ways:
        raise UsageError("give at least one way: autocast and/or cast")
    return ways


_OPTIONS = (
    Option("ways", list, list(WAYS), "ways to run in reduced precision: autocast, cast (whole model cast)",
           choices=tuple(WAYS), parse=_ways),
    Option("multiplier", float, MULTIPLIER,
           "error budget: rmse(low, fp64) <= multiplier * eps(dtype)/eps(fp32) * rmse(fp32, fp64) + floor"),
    Option("floor_ulps", float, 1.0, "the budget's floor, in eps(dtype) x the output's RMS"),
    Option("min_sqnr_db", float, MIN_SQNR_DB,
           "fail when an output's SQNR vs fp64 is below this, however large fp32's own error (the output is too noisy to use)"),
    Option("min_headroom", float, 4.0, "warn when a module's fp32 output comes within this factor of the dtype's largest value"),
    Option("layer_table", bool, True, "on a warning or failure, compute the per-layer error table (two extra hooked runs)"),
    Option("way_budget_s", float, WAY_BUDGET_S,
           "seconds one way (autocast, cast) may run; past it the way is stopped and said (0: no limit)"),
)


def _rule_text(opts: CheckOptions, name: str, fp64_error: str | None) -> str:
    if fp64_error is None:
        return (f"rmse vs fp64 <= {opts.multiplier:g} x eps({name})/eps(fp32) x rmse(fp32 vs fp64) + "
                f"{opts.floor_ulps:g} x eps({name}) x rms")
    return f"fp64 reference unavailable ({fp64_error}): rmse vs fp32 <= {FALLBACK_ULPS + opts.floor_ulps:g} x eps({name}) x rms"


def _cannot_run(ctx: Context, runs: list[WayRun], dtype: torch.dtype, details: dict[str, Any]) -> CheckResult:
    """No way ran at all: the raise in the model's code (else the last one) is the culprit."""
    raised = [r.raised for r in runs if r.raised]
    site = next((s for s in raised if s.in_model_code), None) or raised[-1]
    return CheckResult.failed(
        f"the model cannot run in {dtype_name(dtype)}: " + "; ".join(f"{r.way} raised {r.raised.exception}" for r in runs if r.raised)
        + "".join(f"; {r.way} {r.stopped}" for r in runs if r.stopped),
        culprit=site.culprit, hint=raise_hint(site, dtype, ctx.device),
        metrics={f"{r.way}.ran": False for r in runs}, details={**details, RAISED: True},
    )


def _metrics(best: WayRun, runs: list[WayRun], opts: CheckOptions, room: float, top: ModuleRange | None,
             reference: str) -> dict[str, Any]:
    assert best.comparison is not None
    metrics: dict[str, Any] = {"way": best.way, "budget_use": best.budget_use, "ratio_to_fp32_error": best.ratio,
                               "multiplier": opts.multiplier, "reference": reference}
    metrics.update({k: v for k, v in best.comparison.metrics().items() if not k.endswith("frac_outside")})
    metrics["headroom"] = room
    metrics["max_fp32_activation"] = top.absmax if top else 0.0
    for r in runs:
        metrics[f"{r.way}.ran"] = r.ran
        if r.ran:
            metrics[f"{r.way}.budget_use"] = r.budget_use
    return metrics


def _layer_table(ctx: Context, way: WayRun, dtype: torch.dtype, details: dict[str, Any]) -> list[LayerError]:
    """The per-layer table of the way to explain, into `details` (rows, plot, a pass that raised)."""
    rows, problem = layer_rows(ctx, way, dtype)
    details["layers_way"] = way.way
    details["layers"] = [r.row() for r in rows]
    details["plot"] = error_plot(rows, f"{dtype_name(dtype)} ({way.way}): per-module error vs fp32", eps=eps(dtype))
    if problem:
        details["layer_table_problem"] = problem
    return rows


def _note(best: WayRun, runs: list[WayRun]) -> str:
    raised = [r.way for r in runs if r.raised]
    stopped = [r.way for r in runs if r.stopped]
    return (f"ran by {'whole-model cast' if best.way == 'cast' else 'autocast'}"
            + "".join(f" ({r.way} also ran: {r.budget_use:.2g} of budget)" for r in runs if r is not best and r.ran)
            + (f"; {', '.join(raised)} raised" if raised else "")
            + (f"; {', '.join(stopped)} stopped at way_budget_s, not judged" if stopped else ""))


def _summary(status: str, reasons: list[str], best: WayRun, metrics: dict[str, Any], room: float, dtype: torch.dtype,
             note: str) -> str:
    name, comp = dtype_name(dtype), best.comparison
    assert comp is not None
    numbers = (f"max abs {comp.max_abs:.3g}, rms rel {comp.max_rms_rel:.3g}, SQNR {comp.min_sqnr_db:.1f} dB"
               + (f", top-1 agreement {metrics['top1_agreement']:.0%}" if "top1_agreement" in metrics else ""))
    if status != PASS:
        return "; ".join(reasons) + f" [{name} {note}; {numbers}]"
    top = torch.finfo(dtype).max
    bound = f"headroom {room:.3g}x to {top:.5g}" if math.isfinite(room) else "no finite activations to bound"
    return f"{name} {note}: within budget ({best.budget_use:.2g} of it; {numbers} vs {metrics['reference']}); {bound}"


def check_precision(ctx: Context, opts: CheckOptions, dtype: torch.dtype) -> CheckResult:
    """Run and judge one reduced dtype (shared by `fp16` and `bf16`)."""
    ways = list(opts.ways)
    fp64 = ctx.fp64
    ref64 = fp64.outputs if fp64.error is None else None
    room, top = headroom(fp32_ranges(ctx), dtype)
    # measure: every way, judged against fp64
    runs = [run_way(ctx, way, dtype, opts.way_budget_s) for way in ways]
    for run in runs:
        if run.ran:
            judge(ctx, run, dtype, opts, ctx.reference, ref64)
    rule = _rule_text(opts, dtype_name(dtype), None if ref64 is not None else fp64.error)
    details: dict[str, Any] = {"budget_rule": rule, "ways": {r.way: r.details() for r in runs}}
    if top is not None:
        details["largest_fp32_activation"] = {"module": top.label, "max_abs": top.absmax,
                                              "call_site": top.call_site.location if top.call_site else None}
    best = best_way(runs)
    if best is None and all(r.stopped for r in runs):
        return CheckResult.skipped(f"not judged: {dtype_name(dtype)} ran past its budget every way ({runs[0].stopped})",
                                   metrics={f"{r.way}.ran": False for r in runs}, details=details)
    if best is None:
        return _cannot_run(ctx, runs, dtype, details)
    # judge
    metrics = _metrics(best, runs, opts, room, top, "fp64" if ref64 is not None else "fp32")
    status, reasons, explain = verdict(best, runs, room, top, opts, dtype, metrics["reference"])
    # explain: the per-layer table names the culprit
    rows = _layer_table(ctx, explain or best, dtype, details) if status != PASS and opts.layer_table else []
    blame = culprit(status, rows, explain, runs, room, top, opts, dtype, ctx.device)
    if blame and blame.reason and explain is not None:
        reasons.append(blame.reason)
    note = _note(best, runs)
    publish_variant(ctx, best, dtype, status, note)
    hint = blame.hint if blame else (None if status == PASS else f"see details['ways'] for each way's errors ({rule})")
    return CheckResult(status=status, summary=_summary(status, reasons, best, metrics, room, dtype, note), metrics=metrics,
                       details=details, culprit=blame.culprit if blame else None, hint=hint)


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
