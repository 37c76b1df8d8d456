"""`compare`: the user's own artifact (or recording) computes what the reference model computes."""
from __future__ import annotations

from torch_diagnose.context import Context
from torch_diagnose.crosscheck.candidate import load_candidate
from torch_diagnose.export.pipeline import COMMON_OPTIONS
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult, SkipCheck

OPTIONS = (Option("candidate", str, "", "the candidate (default: the run's --compare / `diagnose compare REF CAND`)"),
           *[o for o in COMMON_OPTIONS if o.name != "optional_dims_budget_s"])


@register("compare", family="compare", title="A candidate artifact (ONNX, TorchScript, .pt2, checkpoint, recording) equals the reference",
          options=OPTIONS, default=False, order=90, requires=("deterministic",), compares_outputs=True)
def compare(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Run the candidate over the export sweep (the example, other values, and other sizes of the
    dimensions it declares dynamic: an ONNX dim_param, a symbolic .pt2 dim; every size eager accepts
    for TorchScript and other targets) or on its recorded inputs, and judge it against the reference
    with the calibrated tolerances. A mismatch is shrunk (hypothesis), bundled, and localised: the first
    diverging ONNX node and its module, the parameters that differ and the first module whose output
    moves (another checkpoint), the first diverging node (.pt2), or the first moving module of a
    recording made with `torch_diagnose.record`.
    """
    spec = opts.candidate or getattr(ctx.options, "compare", None)
    if not spec:
        raise SkipCheck("give a candidate: diagnose compare REFERENCE CANDIDATE (or --compare CANDIDATE)")
    from torch_diagnose.crosscheck.fit import fit_to_candidate, reference_refuses
    from torch_diagnose.crosscheck.review import compare_recording, compare_runnable

    cand = load_candidate(spec, ctx.options)
    if cand.kind == "recording":
        return compare_recording(ctx, cand)
    fitted, note = fit_to_candidate(ctx, cand)
    refused = reference_refuses(fitted, note)
    if refused is not None:
        return refused
    result = compare_runnable(fitted, opts, cand)
    if note:
        result.summary += f" ({note})"
        result.details.setdefault("candidate", {})["fitted"] = note
    return result
