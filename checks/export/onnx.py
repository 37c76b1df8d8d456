"""`onnx`: the ONNX model under ONNX Runtime equals eager at swept shapes and values."""
from __future__ import annotations

from torch_diagnose.context import Context
from torch_diagnose.export.findings import dimension_culprit
from torch_diagnose.export.guards import site_hints, site_text
from torch_diagnose.export.messages import library_hint
from torch_diagnose.export.pipeline import (COMMON_OPTIONS, Exporter, Review, counterexample, failed_build, finish,
                                            first_mismatch, get_sweep, review)
from torch_diagnose.locate.culprit import Culprit
from torch_diagnose.locate.source import module_at
from torch_diagnose.registry import CheckOptions, register
from torch_diagnose.results import CheckResult, SkipCheck

ONNX = Exporter("onnx", "onnxruntime", "ONNX model", "ONNX model (ONNX Runtime)", "ONNX Runtime vs eager", "onnx")
LEGACY = Exporter("onnx", "onnxruntime", "ONNX model", "ONNX model from the legacy exporter (dynamo=False, ONNX Runtime)",
                  "ONNX Runtime (legacy exporter) vs eager", "onnx")

_FAILED_HINTS = {
    "data-dependent": "the ONNX exporter goes through torch.export: replace Python `if` on tensor values with torch.where / torch.cond",
    "constraint": "a dimension that must stay dynamic is pinned by the code: see the torch_export check for the line",
    "checker": "the exported graph is invalid: update onnx/onnxscript/torch, or report it with the exporter's message",
    "outputs": "return only tensors from forward (move strings, None and Python numbers to a wrapper outside the export)",
}


def _legacy_findings(ctx: Context, rv: Review) -> None:
    """The dynamo exporter failed and the legacy one worked: a warning, with why, when its model is right."""
    built = rv.built
    why = built.extra.get("dynamo_error") or "it fails"
    if rv.findings.failures:  # neither exporter gives a right model
        rv.findings.failures[0] += f"; and the dynamo exporter (torch.onnx.export's default) fails: {why}"
    else:
        rv.findings.warnings.insert(0, f"the dynamo exporter (torch.onnx.export's default) fails: {why}; the legacy exporter "
                                       f"(dynamo=False) works and its ONNX model is the one judged here")
    fix = (library_hint(built.frame, "the dynamo ONNX export") or _FAILED_HINTS.get(built.extra.get("dynamo_error_kind") or "")
           or "fix the line the dynamo exporter stops at")
    rv.hints.append(fix if rv.findings.failures else
                    f"{fix}; meanwhile torch.onnx.export(..., dynamo=False) (the legacy TorchScript-based exporter, deprecated) "
                    f"gives a model that matches eager at the swept sizes and values")
    rv.details["dynamo_error"] = why
    frame = built.frame
    if frame is not None and rv.findings.culprit is None:
        found = module_at(ctx.model, frame.file, frame.line)
        rv.findings.blame(found.with_frame(frame) if found is not None else Culprit.at(frame))


def _static_graph_inputs(rv: Review) -> list[str]:
    """The exporter can emit a static shape although dynamic shapes were asked for: read the graph.
    A required dimension held static fails."""
    dims = rv.built.extra.get("dims", {})
    static: list[str] = []
    for g in rv.sweep.groups:
        if not (g.dynamic or g.required):
            continue
        fixed = [(leaf, d) for leaf, d in g.refs if leaf in dims and d < len(dims[leaf]) and isinstance(dims[leaf][d], int)]
        if not fixed:
            continue
        leaf, d = fixed[0]
        text = f"the ONNX graph fixes input `{leaf}` dim {d} at {dims[leaf][d]}"
        static.append(g.name)
        if g.required:
            site = rv.sites.get(g.name)
            if not any(text in f for f in rv.findings.failures):
                rv.findings.failures.append(f"{text} although it is {g.role} and must stay dynamic{site_text(site)}")
            rv.findings.blame(dimension_culprit(g, site.frame if site else g.rejected_frame))
    return static


def _localise_mismatch(ctx: Context, opts: CheckOptions, rv: Review) -> None:
    """Shrink, write the bundle, and name the first ONNX operator that computes differently."""
    from torch_diagnose.export.onnx_build import divergence

    case, folder = counterexample(ctx, opts, rv)
    div = divergence(ctx, rv.built, case, rv.details)
    failing = first_mismatch(rv.outcome)
    if div is None and "divergence_error" in rv.details and failing is not None and failing.case is not case:
        div = divergence(ctx, rv.built, failing.case, rv.details)  # the shrunk input can leave the exported range
    if div is not None:
        rv.findings.culprit = div.culprit
        # only optional dims differ: the divergence explains a warning, it is not a failure of its own
        (rv.findings.failures if rv.findings.failures else rv.findings.warnings).insert(0, div.describe())
        rv.hints.append(f"the exported program agrees with eager; ONNX node {div.label} computes `{div.output}` differently"
                        + (f" (source {div.location} `{div.code}`)" if div.location else "")
                        + ": check the op's semantics in ONNX (tie-breaking, rounding, casting, NaN handling) or rewrite that line")
    elif "divergence" in rv.details:
        rv.hints.append(str(rv.details["divergence"]))
    if folder:
        rv.hints.append(f"repro bundle: {folder}")


def _pooling_hint(ctx: Context, rv: Review) -> None:
    """Adaptive pooling to several bins is exported with windows computed from the example's size:
    exact only at the example's grid. Name the layers and what avoids it."""
    import torch.nn as nn

    pools = [name for name, m in ctx.model.named_modules()
             if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                               nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d))
             and any(s not in (1, None) for s in (m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)))]
    wrong = [gv.group for gv in rv.outcome.groups if gv.verdict == "wrong" and any(d >= 2 for _, d in gv.group.refs)]
    if not pools or not wrong:
        return
    rv.details["adaptive_pooling"] = pools
    if rv.findings.culprit is None or rv.findings.culprit.kind != "module":
        rv.findings.culprit = Culprit.module(pools[0], ctx.model.get_submodule(pools[0]))
    rv.hints.append(f"adaptive pooling to several bins ({', '.join(pools[:4])}) is exported with windows computed from the "
                    f"example's size, so it is exact only at the example's grid: export with static H/W at the size you serve, "
                    f"or resize the features to a fixed grid (F.interpolate(x, size=...)) before the adaptive pooling")


@register("onnx", family="export", title="ONNX model under ONNX Runtime equals eager at swept shapes and values",
          options=COMMON_OPTIONS, order=62)
def onnx_check(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Export with the dynamo exporter (onnxscript) keeping the sweep's dynamic dimensions (from the
    torch.export program when there is one, else from the model with dims given as names so errors
    surface), run `onnx.checker`, run under ONNX Runtime (CPU provider; CUDA provider on a CUDA
    device) and compare with eager over the sweep. A graph input the exporter silently made static
    although it had to stay dynamic fails. When outputs differ, intermediate values of both graphs
    are compared in execution order to name the first diverging ONNX operator and its source line.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise SkipCheck(f"needs onnx, onnxscript and onnxruntime ({exc.name} is not installed): pip install onnx onnxscript onnxruntime")
    from torch_diagnose.export.onnx_build import build_onnx

    sweep = get_sweep(ctx)
    built = ctx.cached("export:onnx", lambda: build_onnx(ctx, sweep, float(opts.optional_dims_budget_s)))
    if not built.ok:
        hint = _FAILED_HINTS.get(built.error_kind or "", "read the exporter's message; torch.onnx.export(..., report=True) writes a full report")
        hint = library_hint(built.frame, "the ONNX export") or hint
        result = failed_build(ctx, ONNX, built, sweep, hint, "ONNX export (dynamo exporter)")
        if built.extra.get("legacy"):
            result.summary += f"; the legacy exporter (dynamo=False) {built.extra['legacy']}"
        return result
    program = built.extra.get("ep_built")
    legacy = built.extra.get("exporter") == "legacy"
    rv = review(ctx, LEGACY if legacy else ONNX, sweep, built,
                program.extra.get("sites", {}) if program is not None and not legacy else {})
    if legacy:
        _legacy_findings(ctx, rv)
    static = _static_graph_inputs(rv)
    rv.details["onnx_input_dims"] = built.extra.get("dims", {})
    rv.details["exporter"] = rv.metrics["exporter"] = "legacy (dynamo=False)" if legacy else "dynamo"
    rv.details["providers"] = built.extra.get("providers")
    rv.metrics["static_graph_inputs"] = ",".join(static) or "none"
    rv.metrics["provider"] = (built.extra.get("providers") or ["?"])[0]
    failing = [gv.group.name for gv in rv.outcome.groups if gv.verdict in ("static", "partial", "wrong")]
    rv.hints.extend(site_hints(sweep, failing, rv.sites))
    if rv.outcome.mismatches:
        _localise_mismatch(ctx, opts, rv)
        _pooling_hint(ctx, rv)
    if any("must stay dynamic" in f for f in rv.findings.failures):
        rv.hints.append("the ONNX file cannot serve other sizes of a dimension that must stay dynamic; fix the line that pins it (see torch_export)")
    return finish(ctx, rv, note=",".join(built.extra.get("providers") or []))
