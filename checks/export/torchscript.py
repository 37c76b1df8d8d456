"""`torchscript`: the TorchScript trace equals eager away from the example input."""
from __future__ import annotations

from typing import Any

from torch_diagnose.context import Context
from torch_diagnose.degenerate import COMPARED
from torch_diagnose.export.pipeline import (COMMON_OPTIONS, Exporter, Review, counterexample, failed_build, finish,
                                            get_sweep, review)
from torch_diagnose.export.program import sites_if_needed
from torch_diagnose.export.run import evaluate
from torch_diagnose.export.guards import site_hints
from torch_diagnose.export.torchscript import DEPRECATION, build_torchscript, like_eager
from torch_diagnose.inputs import call_model
from torch_diagnose.locate.code import Frame
from torch_diagnose.locate.source import module_at
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult
from torch_diagnose.text import one_line

TRACE = Exporter("torchscript", "torchscript", "trace", "TorchScript trace", "TorchScript trace vs eager", "torchscript")


def _script_sweep(ctx: Context, sweep: Any, script_mod: Any) -> tuple[list[dict[str, Any]], bool, int]:
    """Is `torch.jit.script` a working TorchScript route? (sweep rows, matches everywhere, cases)."""
    out = evaluate(ctx, sweep, lambda inputs: like_eager(call_model(script_mod, inputs), ctx.reference), artifact="script")
    return out.rows(), not out.failed and not out.failed_groups, len(out.results)


def _untraceable(ctx: Context, sweep: Any, built: Any) -> CheckResult:
    script_state = built.extra.get("script", "not tried")
    script_words, rows, ok = f"torch.jit.script: {script_state}", None, False
    if built.extra.get("script_module") is not None:
        rows, ok, n = _script_sweep(ctx, sweep, built.extra["script_module"])
        script_words = (f"torch.jit.script works and matches eager at all {n} sweep cases: script instead of trace" if ok
                        else "torch.jit.script runs but differs from eager or rejects sizes")
    hint = (("return only tensors from forward (strings, None and Python numbers belong outside the traced model); "
             if built.error_kind == "outputs" else "") + f"torch.jit.trace cannot trace this model; {script_words}. " + DEPRECATION)
    result = failed_build(ctx, TRACE, built, sweep, hint, "torch.jit.trace")
    result.details["script"] = script_state
    if rows is not None:
        result.details["script_sweep"] = rows
        result.details[COMPARED] = True  # warn or fail hangs on whether the script's outputs match eager
    if ok:  # TorchScript works, through script: the trace's failure is a warning with the route that works
        result.status = "warn"
        result.summary = f"{script_words}; {result.summary}"
    return result


def _roundtrip(ctx: Context, rv: Review) -> None:
    """The example differs: is it the trace itself, or the save/load round trip?"""
    example = next((r for r in rv.outcome.results if r.case.kind == "example"), None)
    if example is None or example.status == "ok" or not rv.built.path:
        return
    try:
        trace = rv.built.extra["trace"]
        in_memory = evaluate(ctx, rv.sweep, lambda inputs: call_model(trace, inputs), cases=[example.case])
        if in_memory.results[0].status == "ok":
            rv.details["roundtrip"] = "the in-memory trace matches eager but the saved and reloaded one does not"
            rv.findings.failures.insert(0, "the torch.jit.save / torch.jit.load round trip changes the results on the example")
    except Exception as exc:
        rv.details["roundtrip_error"] = one_line(exc)


def _blame_tracer_warning(ctx: Context, rv: Review) -> None:
    """The first TracerWarning inside a module names the module and the line, when values broke
    (or nothing else was blamed)."""
    for w in rv.built.warnings:
        module = module_at(ctx.model, w["file"], w["line"])
        if module is not None:
            if rv.outcome.value_failures or rv.findings.culprit is None:
                rv.findings.culprit = module.with_frame(Frame(w["file"], w["line"], "", w["code"]))
            return


def _explain_failures(ctx: Context, opts: CheckOptions, rv: Review, causes: list[str]) -> None:
    _blame_tracer_warning(ctx, rv)
    rv.hints.extend(f"{c} (TracerWarning)" for c in causes[:3])
    outcome = rv.outcome
    failing_dims = [gv.group.name for gv in outcome.groups if gv.verdict in ("wrong", "static", "partial")]
    if failing_dims and not rv.built.warnings:
        rv.hints.append("the trace recorded no warning: a Python loop over a dimension (`for i in range(x.size(1))`) is unrolled "
                        "and literal sizes are baked in silently")
    rv.hints.extend(site_hints(rv.sweep, failing_dims, rv.sites))
    script_mod, script_state = rv.built.extra.get("script_module"), rv.built.extra.get("script", "not tried")
    only_eager = (all(gv.verdict in ("eager-static", "dynamic", "untested") for gv in outcome.groups)
                  and not outcome.mismatches and not outcome.raised)
    if only_eager:
        pass  # eager itself is the problem: scripting cannot help
    elif script_mod is not None:
        rv.details["script_sweep"], ok, n = _script_sweep(ctx, rv.sweep, script_mod)
        rv.hints.append(f"torch.jit.script matches eager at all {n} sweep cases: script instead of trace" if ok
                        else "torch.jit.script also differs from eager or rejects sizes")
    elif script_state != "ok":
        rv.hints.append(f"torch.jit.script: {script_state}")
    _, folder = counterexample(ctx, opts, rv)
    if folder:
        rv.hints.append(f"repro bundle: {folder}")


@register(
    "torchscript", family="export", title="TorchScript trace equals eager away from the example input",
    options=(Option("script", bool, True, "also try torch.jit.script (and sweep it when the trace is wrong)"), *COMMON_OPTIONS),
    order=60,
)
def torchscript(ctx: Context, opts: CheckOptions) -> CheckResult:
    """`torch.jit.trace` the model (strict=False for dict/list outputs), capture TracerWarnings, save and
    reload the trace, and run it over the shape and value sweep against eager; also attempt
    `torch.jit.script`. A trace that freezes a data-dependent branch, unrolls a loop over a
    dimension, bakes in a size or stores a NumPy result as a constant fails, naming the input
    dimension, the size and the source line. TorchScript is deprecated: the hint points to torch.export.
    """
    sweep = get_sweep(ctx)
    built = ctx.cached("export:torchscript", lambda: build_torchscript(ctx, sweep, bool(opts.script)))
    if not built.ok:
        return _untraceable(ctx, sweep, built)
    rv = review(ctx, TRACE, sweep, built, lambda outcome: sites_if_needed(ctx, sweep, outcome))
    rv.details["script"] = built.extra.get("script", "not tried")
    rv.details["roundtrip"] = built.extra.get("roundtrip")
    _roundtrip(ctx, rv)
    rv.metrics["tracer_warnings"] = len(built.warnings)
    rv.metrics["script_ok"] = rv.details["script"] == "ok"
    causes = list(dict.fromkeys(f"{w['location']} `{w['code']}`: {w['cause']}" for w in built.warnings))
    if causes:
        rv.details["tracer_warning_causes"] = causes
    if rv.findings.failures:
        _explain_failures(ctx, opts, rv, causes)
    elif rv.findings.warnings:
        rv.hints.extend(site_hints(sweep, [gv.group.name for gv in rv.outcome.warned_groups], rv.sites))
        rv.hints.append("trace at the sizes you serve, or export with torch.export and dynamic shapes")
    if built.warnings and not rv.findings.failures:
        rv.details["note"] = f"{len(built.warnings)} TracerWarning(s) did not change results at the swept shapes and values"
    rv.hints.append(DEPRECATION)
    pass_note = f" ({len(built.warnings)} TracerWarning(s) did not change results)" if built.warnings else ""
    return finish(ctx, rv, pass_note=pass_note)
