"""`device_parity` (CUDA only): CUDA outputs against CPU within an fp64-calibrated tolerance, and which
setting (TF32, cuDNN algorithms, the SDPA backend) explains a difference."""
from __future__ import annotations

import copy
from typing import Any, Callable

from torch_diagnose.compare import calibrated_tolerances, compare, ratio_rule
from torch_diagnose.context import Context
from torch_diagnose.locate import Culprit
from torch_diagnose.locate.culprit import OPTION
from torch_diagnose.parity import (
    divergence_culprit,
    divergent_module,
    explain_difference,
    parity_settings,
    to_cpu,
    uses_sdpa,
)
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult


@register(
    "device_parity",
    family="cuda",
    title="CUDA outputs match CPU within an fp64-calibrated tolerance",
    order=86,
    needs_cuda=True,
    options=(Option("explain", bool, True, "when outputs differ, re-run under stricter settings to find which explains it"),),
)
def device_parity(ctx: Context, opts: CheckOptions) -> CheckResult:
    """CUDA outputs against CPU outputs, within a tolerance calibrated from the fp64 reference.

    The tolerance per output comes from the CPU fp32 error against fp64 (two correct fp32 runs differ
    by about that much). When CUDA differs beyond it, the model is re-run with TF32 off, with cuDNN
    deterministic and benchmark off, and on each SDPA backend, one at a time: the setting that brings
    the outputs back within tolerance is reported, and the first module that diverges is named.
    """
    # measure
    cuda_out = to_cpu(ctx.reference)
    cpu_model = copy.deepcopy(ctx.model).to("cpu")
    cpu_inputs = to_cpu(ctx.inputs)
    cpu_out = ctx.forward(cpu_inputs, cpu_model)
    fp64 = ctx.fp64
    fp64_out = to_cpu(fp64.outputs) if fp64.outputs is not None else None
    if fp64_out is not None:
        tolerances = calibrated_tolerances(cpu_out, fp64_out)
        tol_note = "calibrated from the CPU fp32 error against fp64"
    else:
        tolerances = {}
        tol_note = f"fp32 defaults (no fp64 reference: {fp64.error})"
    comp = compare(cuda_out, cpu_out, leaf_tolerances=tolerances)
    metrics: dict[str, Any] = comp.metrics("cuda_vs_cpu_")
    if fp64_out is not None:
        verdicts = ratio_rule(cuda_out, cpu_out, fp64_out)
        if verdicts:
            metrics["cuda_rmse_vs_fp64_over_cpu"] = max(v.ratio for v in verdicts)
    details: dict[str, Any] = {"tolerance": tol_note, "comparison": comp.describe(),
                               "tolerances": {k: str(v) for k, v in tolerances.items()}}
    # judge
    if comp.passed:
        return CheckResult.passed(f"CUDA outputs match CPU within tolerance ({tol_note}): {comp.describe()}",
                                  metrics=metrics, details=details)
    explained = None
    if opts.explain:
        def run_with(factory: Callable[[], Any]) -> Any:
            with factory():
                return ctx.forward()

        def judge(out: Any) -> tuple[bool, float]:
            c = compare(to_cpu(out), cpu_out, leaf_tolerances=tolerances)
            return c.passed, c.max_abs

        explained, details["settings"] = explain_difference(
            run_with, parity_settings(uses_sdpa(ctx.model, ctx.inputs, ctx.forward)), judge)
    tol = tolerances.get(comp.worst.name) if comp.worst else None
    div = divergent_module(ctx, cpu_model, cpu_inputs, atol=tol.atol if tol else 1e-5)
    if div:
        details["first_divergent_module"] = div.label
    # explain
    start = f"`{div.name}`" if div else ""
    return _explain(comp.describe(), explained, divergence_culprit(ctx.model, div), start, metrics, details)


def _explain(described: str, explained: dict[str, Any] | None, culprit: Culprit | None, start: str,
             metrics: dict[str, Any], details: dict[str, Any]) -> CheckResult:
    """`start`: the first divergent module in backquotes, "" when none was found."""
    if explained and explained["setting"] == "baseline":
        return CheckResult.failed(
            f"CUDA differs from CPU beyond tolerance ({described}), but a second CUDA run agrees with CPU: "
            "the result changes from run to run",
            culprit=culprit,
            hint="the difference does not reproduce: look for non-deterministic CUDA kernels (atomics in scatter_add/index_add, "
            "cuDNN benchmark picking different algorithms: run the determinism check on CUDA) or state kept between calls"
            + (f", starting in {start}" if start else ""),
            metrics=metrics, details=details,
        )
    if explained:
        trade = explained["setting"].startswith(("tf32", "sdpa"))
        result = CheckResult.warned if trade else CheckResult.failed
        return result(
            f"CUDA differs from CPU beyond tolerance ({described}); {explained['what']} brings it back within tolerance",
            culprit=culprit or Culprit.named(explained["what"], OPTION),
            hint=(f"the difference comes from {explained['setting']}: {explained['what']} restores CPU parity. "
                  + ("TF32/SDPA kernels trade precision for speed: keep them if the accuracy is acceptable (see the precision checks), "
                     "otherwise set `torch.backends.cuda.matmul.fp32_precision = 'ieee'` / `torch.backends.cudnn.conv.fp32_precision = 'ieee'`"
                     if trade else "set it in deployment, or accept the difference")),
            metrics=metrics, details=details,
        )
    return CheckResult.failed(
        f"CUDA differs from CPU beyond tolerance ({described}) and no setting explains it",
        culprit=culprit,
        hint=("none of TF32 off, cuDNN deterministic or another SDPA backend restores parity: look for device-dependent "
              "code (`if x.is_cuda`), custom CUDA kernels, uninitialised memory or non-deterministic atomics"
              + (f" starting in {start}" if start else "")),
        metrics=metrics, details=details,
    )
