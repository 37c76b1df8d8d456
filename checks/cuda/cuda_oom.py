"""`cuda_oom`: peak memory per batch size, fitted against the batch, judged against the memory budget."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from torch_diagnose import inputs as inp
from torch_diagnose.context import Context
from torch_diagnose.locate import Culprit, module_label
from torch_diagnose.locate.culprit import STATE
from torch_diagnose.memory import LinearFit, PeakMeasurement, SearchResult, fit_linear
from torch_diagnose.memory.budget import ByteSize, BudgetPlan, Margin, confirm_on_cuda, example_batch, measure_batches, peak_culprit
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult, SkipCheck
from torch_diagnose.text import MiB, format_bytes


@register(
    "cuda_oom",
    family="cuda",
    title="the deployment batch fits in the memory budget",
    order=82,
    options=(
        Option("batch_size", int, None, "deployment batch (default: --batch-size, else the example's batch)"),
        Option("memory_budget", ByteSize, None, "device memory the deployment may use, e.g. 8GB (default: --memory-budget; "
               "on CUDA the device's total memory)"),
        Option("margin", Margin, None, "safety margin on the peak: 0.25 for a CPU estimate, 0.10 when measured on CUDA"),
        Option("reserve", ByteSize, "0", "memory set aside for the CUDA context, other models and processes, e.g. 500MiB"),
        Option("max_batch", int, 4096, "largest batch the real CUDA search tries"),
        Option("search", bool, True, "on CUDA with a budget, confirm the largest batch with a real out-of-memory search"),
    ),
)
def cuda_oom(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Peak memory per batch size, fitted as a + b * batch, against the budget at the deployment batch.

    Measured on CUDA (`max_memory_allocated` after `reset_peak_memory_stats`); estimated elsewhere by
    counting the bytes of live tensors during forward (parameters + inputs + activations alive at the
    worst moment; fake tensors for large batches where the model allows). Batches 1, 2, 4, the
    example's and the deployment batch are measured. With `--memory-budget` it fails when the
    deployment batch (`--batch-size`) does not fit with the margin, and always reports the largest
    batch that does; on CUDA a real search (doubling, then bisection, catching
    `torch.OutOfMemoryError`) under the budget confirms it. A CPU figure is an estimate: it leaves out
    the CUDA context, cuDNN/cuBLAS workspaces and allocator fragmentation, so a margin is applied.
    """
    # measure
    plan = _plan(ctx, opts)
    measured, notes = measure_batches(ctx, plan.batches, plan.on_cuda, plan.rejected)
    if not measured:
        raise SkipCheck("no batch size could be measured: " + "; ".join(notes))
    fit = fit_linear([(m.batch, m.peak_bytes) for m in measured])
    deploy_m = {m.batch: m for m in measured}.get(plan.deploy)
    deploy_peak = deploy_m.peak_bytes if deploy_m else fit.predict(plan.deploy)
    metrics, details = _report(plan, measured, notes, fit, deploy_peak)
    peak_at = peak_culprit(ctx, measured, deploy_m)
    per_sample = _per_sample(plan, measured, fit, deploy_peak)
    if plan.deploy in plan.rejected:
        return CheckResult.warned(
            f"{plan.batch_text(plan.deploy)} cannot be measured: {plan.rejection}; peak {per_sample}",
            culprit=peak_at, hint="the model runs only at the batch sizes it was written for: serve at a batch it accepts, "
            "or make its reshapes use the input's batch (e.g. `x.view(x.shape[0], -1)`)", metrics=metrics, details=details)
    if plan.budget is None:
        metrics["memory_budget_bytes"] = None
        return CheckResult.passed(
            f"peak memory {per_sample}, {plan.method}; no --memory-budget given, so no verdict",
            hint="pass --memory-budget SIZE (and --batch-size N) to learn whether the deployment batch fits and the largest "
            "batch that does" + (f"; {plan.caveat}" if plan.caveat else ""),
            metrics=metrics, details=details,
        )
    # judge
    verdict = _judge(ctx, opts, plan, fit, deploy_peak, metrics, details)
    # explain
    return _explain(ctx, plan, verdict, fit, measured[0], peak_at, per_sample, metrics, details)


def _plan(ctx: Context, opts: CheckOptions) -> BudgetPlan:
    """The deployment batch and budget, from the check's options, then the run's, then the device."""
    on_cuda = ctx.device is not None and ctx.device.type == "cuda"
    example = example_batch(ctx)
    budget = opts.memory_budget or ctx.options.memory_budget
    budget_source = "given"
    if budget is None and on_cuda:
        budget = torch.cuda.get_device_properties(ctx.device).total_memory
        budget_source = "device total"
    margin = float(opts.margin) if opts.margin is not None else (0.10 if on_cuda else 0.25)
    dims, _source = inp.run_batch_dims(ctx)
    return BudgetPlan(on_cuda, example, opts.batch_size or ctx.options.batch_size or example,
                      None if budget is None else int(budget), budget_source, int(opts.reserve or 0), margin,
                      dims, inp.batch_unit(ctx.inputs, dims))


def _per_sample(plan: BudgetPlan, measured: list[PeakMeasurement], fit: LinearFit, deploy_peak: float) -> str:
    """`X at batch 4 (A fixed + B per sample)`; with one batch measured, why the others were not."""
    head = f"{format_bytes(deploy_peak)} at {plan.batch_text(plan.deploy)}"
    if len(measured) == 1:
        only = measured[0].batch
        return f"{format_bytes(measured[0].peak_bytes)} at {plan.batch_text(only)} ({plan.rejection}; only batch {only} measured)"
    return (f"{head} ({format_bytes(fit.intercept)} fixed + {format_bytes(fit.slope)} per {plan.unit})"
            + (f" ({plan.rejection})" if plan.rejection else ""))


def _report(plan: BudgetPlan, measured: list[PeakMeasurement], notes: list[str], fit: LinearFit,
            deploy_peak: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and details every verdict shares: the measurements, the fit and its plot."""
    metrics: dict[str, Any] = {
        "deployment_batch": plan.deploy,
        "deployment_peak_bytes": int(deploy_peak),
        "bytes_per_sample": int(round(fit.slope)) if len(fit.points) > 1 else None,  # one batch: growth unknown
        "fixed_bytes": int(round(fit.intercept)) if len(fit.points) > 1 else None,
        "param_bytes": measured[0].param_bytes,
        "fit_max_rel_residual": round(fit.max_rel_residual, 4),
        "margin": plan.margin,
        "method": "cuda" if plan.on_cuda else ",".join(sorted({m.method for m in measured})),
        "estimate": not plan.on_cuda,
    }
    x = [m.batch for m in measured]
    details: dict[str, Any] = {
        "measurements": [m.as_row() for m in measured],
        "fit": {"intercept_bytes": fit.intercept, "slope_bytes_per_sample": fit.slope, "max_rel_residual": fit.max_rel_residual},
        "method": plan.method,
        "not_included": plan.not_counted,
        "notes": notes,
        "rejected_batches": {str(b): why for b, why in plan.rejected.items()},
        "plot": {"kind": "line", "title": "peak memory vs batch size", "x": x,
                 "series": {"measured peak": [m.peak_bytes / MiB for m in measured],
                            f"fit {format_bytes(fit.intercept)} + {format_bytes(fit.slope)}/sample": [fit.predict(b) / MiB for b in x]},
                 "xlabel": "batch size", "ylabel": "MiB", "logy": False, "always": True},
    }
    return metrics, details


@dataclass
class _Verdict:
    largest: int | None  # the largest batch the fit allows within the margin
    confirmed: SearchResult | None  # the real search on CUDA, when it ran
    fits_with_margin: bool
    fits_bare: bool
    advice: int | None  # the batch to recommend: within the margin, never above what really ran
    largest_text: str


def _judge(ctx: Context, opts: CheckOptions, plan: BudgetPlan, fit: LinearFit, deploy_peak: float,
           metrics: dict[str, Any], details: dict[str, Any]) -> _Verdict:
    budget, reserve, margin = plan.budget, plan.reserve, plan.margin
    largest = fit.largest_fitting(plan.usable, limit=1 << 30)
    if len(fit.points) == 1:  # one batch ran: nothing says how memory grows with the batch
        largest = fit.points[0][0] if fit.predict(0) <= plan.usable else None
    details["plot"]["series"]["usable budget"] = [plan.usable / MiB for _ in details["plot"]["x"]]
    metrics.update({"memory_budget_bytes": budget, "reserve_bytes": reserve, "usable_bytes": int(plan.usable),
                    "largest_batch_estimate": largest if largest is not None else 0,
                    "headroom_bytes": int(plan.usable - deploy_peak)})
    details["budget_source"] = plan.budget_source
    confirmed = None
    if plan.on_cuda and opts.search and plan.budget_source == "given" and not plan.rejected:
        confirmed = confirm_on_cuda(ctx, budget - reserve, plan.deploy, largest, opts.max_batch)
        details["search"] = confirmed.as_rows()
        metrics["largest_batch_confirmed"] = confirmed.largest_ok or 0
        metrics["search_tries"] = len(confirmed.tries)
    text = f"the largest batch that fits with the margin is {largest}" if largest else "not even batch 1 fits with the margin"
    if len(fit.points) == 1:
        text = (f"batch {largest} fits with the margin; larger batches could not be measured" if largest
                else f"batch {fit.points[0][0]} does not fit with the margin")
    fits_with_margin = deploy_peak * (1 + margin) + reserve <= budget
    fits_bare = deploy_peak + reserve <= budget
    advice = largest
    if confirmed is not None:  # a real out-of-memory search outranks the arithmetic
        real = confirmed.largest_ok
        text += (f"; a real search on CUDA under the budget ran up to batch {real}" if real
                 else "; on CUDA not even batch 1 ran under the budget") + f" ({len(confirmed.tries)} tries)"
        fits_bare = real is not None and real >= plan.deploy
        fits_with_margin = fits_with_margin and fits_bare
        advice = min(largest, real) if largest and real else None
    return _Verdict(largest, confirmed, fits_with_margin, fits_bare, advice, text)


def _explain(ctx: Context, plan: BudgetPlan, v: _Verdict, fit: LinearFit, first: PeakMeasurement,
             peak_at: Culprit | None, per_sample: str, metrics: dict[str, Any], details: dict[str, Any]) -> CheckResult:
    deploy, margin, caveat = plan.deploy, plan.margin, plan.caveat
    tail = f"{plan.budget_line}; {v.largest_text}; {plan.method}"
    if v.fits_with_margin and v.fits_bare:
        return CheckResult.passed(f"{plan.batch_text(deploy)} fits: peak {per_sample}, {tail}", hint=caveat or None,
                                  metrics=metrics, details=details)
    if v.fits_bare:
        return CheckResult.warned(
            f"{plan.batch_text(deploy)} fits only without the {margin:.0%} margin: peak {per_sample}, {tail}",
            culprit=peak_at,
            hint=(f"run at batch <= {v.advice} to keep the margin" if v.advice else "even batch 1 does not keep the margin: shrink the model")
            + (f", or raise the budget; {caveat}" if caveat else ", or raise the budget"),
            metrics=metrics, details=details,
        )
    culprit = peak_at
    reduce = (f"serve at batch <= {v.advice}" if v.advice else
              "the model does not fit even at batch 1: shrink it (fp16/bf16, quantization) or use a larger device")
    where = f"; activations peak in {peak_at.label}" if peak_at else ""
    if first.param_bytes * (1 + margin) + plan.reserve > plan.budget:
        culprit = Culprit.named(f"{module_label('', ctx.model)} parameters", STATE)
        where = f"; the weights alone take {format_bytes(first.param_bytes)}"
    if fit.max_rel_residual > 0.1:
        where += f"; peak memory is not linear in the batch (fit residual {fit.max_rel_residual:.0%}), so the largest batch is approximate"
    return CheckResult.failed(
        f"{plan.batch_text(deploy)} does not fit: peak {per_sample} x (1 + {margin:.0%} margin) > {tail}",
        culprit=culprit,
        hint=f"{reduce}{where}; or lower activation memory (fp16/bf16 activations, smaller inputs, in-place activations, "
        "chunking the batch)" + (f". Note: {caveat}" if caveat else ""),
        metrics=metrics, details=details,
    )
