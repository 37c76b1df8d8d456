"""Judging a candidate against the reference: run it over the export sweep (a runnable candidate) or
on its recorded inputs (a recording), then localise the first difference back to a module.

A runnable candidate reuses the export pipeline's `review` (the same sweep, tolerances and verdicts
as the export checks give their own artifacts), with the sizes the candidate fixes held at the
example's; mismatches are shrunk with hypothesis and written as a repro bundle.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from ..context import Context
from ..export.cases import Sweep, SweepCase, restrict
from ..export.pipeline import Built, Exporter, Review, counterexample, first_mismatch, get_sweep, review, summary
from ..inputs import input_names, to_device
from ..locate.culprit import INPUT, Culprit
from ..locate.source import module_culprit
from ..registry import CheckOptions
from ..results import CheckResult
from ..text import one_line, plural
from .candidate import Candidate, runner, static_dims

_BUNDLES = {"onnx": "onnx", "torchscript": "torchscript", "program": "torch.export"}


def held_sweep(sweep: Sweep, fixed: dict[tuple[str, int], int]) -> tuple[Sweep, list[str]]:
    """The sweep with every dimension the candidate fixes held at the example's size (not required:
    the candidate never promised it); notes name them, and a fixed size unlike the example's."""
    held = [g for g in sweep.groups if any(ref in fixed for ref in g.refs)]
    notes = []
    for g in held:
        sizes = {fixed[ref] for ref in g.refs if ref in fixed}
        other = sorted(s for s in sizes if s != g.size)
        notes.append(f"the candidate fixes {g.label} at {', '.join(map(str, sorted(sizes)))}"
                     + (f" but the example has {g.size}: give the reference inputs of the candidate's size" if other else
                        ": held at that size"))
    names = {g.name for g in held}
    restricted = restrict(sweep, [g.name for g in held if g.dynamic])
    groups = [replace(g, required=False, accepted=[], grid=[]) if g.name in names else g for g in restricted.groups]
    return replace(restricted, groups=groups), notes


def _built(ctx: Context, cand: Candidate, sweep: Sweep) -> Built:
    built = Built(cand.kind, path=cand.path)
    built.size_bytes = os.path.getsize(cand.path) if cand.path else None
    built.run = runner(cand, ctx.reference, sweep.names, ctx.device)
    return built


def _localise_onnx(ctx: Context, cand: Candidate, inputs: Any, rv: Review) -> None:
    """The first diverging node and its module, and initializers that are not the model's parameters."""
    from .localise_onnx import initializer_diff, locate, owned_initializer_diff

    f, details = rv.findings, rv.details
    div = locate(ctx.model, cand, inputs, rv.sweep.names, details)
    inits = [(n, n, m) for n, m in initializer_diff(ctx.model, cand.obj)]
    if div is not None and div.module is not None:  # weights the exporter renamed, inside the diverging module
        inits += owned_initializer_diff(ctx.model, cand.obj, div.module.name)
    details["initializers_differing"] = [{"name": n, "parameter": p, "max_abs": m} for n, p, m in inits[:50]]
    named = [f"`{n}`" + (f" = `{p}`" if p != n else "") for n, p, _ in inits]
    edited = (f"; initializer{'s' if len(inits) > 1 else ''} differing from the model's parameters: "
              + ", ".join(f"{label} (by {m:.3g})" for label, (_, _, m) in zip(named[:3], inits))) if inits else ""
    if div is not None:
        f.culprit = div.culprit
        f.failures.insert(0, details["divergence"] + edited)
    elif inits:
        f.failures.insert(0, edited[2:])
        f.culprit = module_culprit(ctx.model, inits[0][1].rpartition(".")[0])
    if inits:
        rv.hints.append(f"the file's {named[0]} is not the model's: it was exported from other weights (or edited); "
                        f"export again from the checkpoint you serve")
    elif div is not None:
        rv.hints.append(f"ONNX node {div.label} computes `{div.output}` differently from the model: compare that node's "
                        f"op type and attributes with what the module does (the file may have been edited or "
                        f"optimised), or export the model again")


def _localise_modules(ctx: Context, cand: Candidate, inputs: Any, rv: Review) -> None:
    """Parameters that differ, the first moving module (another target) or program node (.pt2)."""
    from . import localise_params as lp

    f, details = rv.findings, rv.details
    module = cand.module
    pdiff = lp.param_diff(ctx.model, module)
    details["parameters"] = {"summary": pdiff.describe(), "changed": pdiff.rows(), "missing": pdiff.missing,
                             "extra": pdiff.extra, "reshaped": pdiff.reshaped}
    rv.metrics["params_differing"] = len(pdiff.changed) + len(pdiff.reshaped)
    said = [pdiff.describe()] if pdiff.any else []
    if cand.kind == "program":
        found = lp.first_program_node(ctx.model, cand.obj, inputs)
        if found is not None:
            f.culprit = found[0]
            said.append(found[1])
    div = lp.first_moving_module(ctx.model, module, to_device(inputs, ctx.device)) if cand.kind == "target" else None
    if div is not None:
        f.culprit = module_culprit(ctx.model, div.name, div.module_type)
        said.append(f"first module whose output moves: {div.label} (by {div.max_abs:.3g}, its input unchanged)")
    owners = pdiff.modules()
    if owners and (f.culprit is None or f.culprit.kind == INPUT):  # a dim's verdict follows from the weights
        f.culprit = module_culprit(ctx.model, owners[0])
    if owners:
        rv.hints.insert(0, f"the candidate's weights differ in {', '.join(o or '<root>' for o in owners[:4])}: check which "
                           f"checkpoint each side loads (and load_state_dict's missing and unexpected keys)")
    if said:
        f.failures.insert(0, "; ".join(said))
    if not pdiff.any and cand.kind == "torchscript":
        rv.hints.append("the parameters are equal: the difference is in the scripted code (TorchScript modules take no hooks, "
                        "so no module can be named); script the current model again and compare its code")


def _localise(ctx: Context, cand: Candidate, case: SweepCase, rv: Review) -> None:
    """Name where the candidate parts from the reference on the failing case (best effort: a
    localisation that breaks leaves the verdict standing, with why in the details)."""
    try:
        (_localise_onnx if cand.kind == "onnx" else _localise_modules)(ctx, cand, case.inputs, rv)
    except Exception as exc:
        rv.details["localise_error"] = one_line(exc)


def compare_runnable(ctx: Context, opts: CheckOptions, cand: Candidate) -> CheckResult:
    """Sweep the candidate, judge it, shrink and bundle the first mismatch, localise it."""
    sweep, notes = held_sweep(get_sweep(ctx), static_dims(cand, list(get_sweep(ctx).leaves)))
    exporter = Exporter("compare", "candidate", "candidate", cand.title, f"{cand.title} vs the reference",
                        _BUNDLES.get(cand.kind, ""))
    rv = review(ctx, exporter, sweep, _built(ctx, cand, sweep))
    rv.details["candidate"] = {"spec": cand.spec, "kind": cand.kind, "held": notes}
    rv.metrics["candidate_kind"] = cand.kind
    example = next((r for r in rv.outcome.results if r.case.kind == "example" and r.comparison is not None), None)
    if example is not None:
        rv.metrics.update(example.comparison.metrics("example."))
    if rv.outcome.mismatches:
        options = CheckOptions({**opts, "repro": bool(opts.repro) and cand.kind in _BUNDLES})
        case, folder = counterexample(ctx, options, rv)
        failing = case or getattr(first_mismatch(rv.outcome), "case", None)
        if failing is not None:
            _localise(ctx, cand, failing, rv)
        if folder:
            rv.hints.append(f"repro bundle: {folder}")
    status = rv.findings.status()
    rv.details["failures"], rv.details["warnings"] = rv.findings.failures, rv.findings.warnings
    text = summary(cand.title, rv.findings, rv.outcome).replace("from eager", "from the reference").replace("matches eager", "matches the reference")
    if notes and status == "pass":
        text += f" (it fixes {plural(len(notes), 'other dimension')}: held at its sizes)"
    return CheckResult(status=status, summary=text, culprit=rv.findings.culprit, hint="; ".join(dict.fromkeys(rv.hints)) or None,
                       metrics=rv.metrics, details=rv.details)


def compare_recording(ctx: Context, cand: Candidate) -> CheckResult:
    """The reference run on the recorded inputs against the recorded outputs; the first moving module
    when the recording holds module outputs."""
    from ..export.run import judge
    from . import localise_params as lp
    from .recording import fit_inputs, fit_outputs, unmatched_outputs

    rec = cand.obj
    inputs = to_device(fit_inputs(rec.inputs, ctx.inputs, input_names(ctx.inputs, ctx.model)), ctx.device)
    case = SweepCase("the recorded inputs", "values", inputs)
    if not case.ensure_expected(ctx):
        return CheckResult.failed(f"the reference raises on the recorded inputs: {case.eager_error}",
                                  hint="record the same model's inputs (shapes, dtypes and argument order as it is called)")
    actual = to_device(fit_outputs(rec.outputs, case.expected), ctx.device)
    cmp = judge(ctx, case, actual)
    metrics = {"candidate_kind": "recording", **cmp.metrics()}
    details: dict[str, Any] = {"candidate": {"spec": cand.spec, "kind": "recording", "module_outputs": rec.modules is not None},
                               "outputs": [{"leaf": leaf.name, **leaf.metrics()} for leaf in cmp.leaves]}
    n = len(cmp.leaves)
    extra = unmatched_outputs(rec.outputs, case.expected)
    left = (f"; {plural(len(extra), 'recorded output')} the reference does not return, not compared: "
            f"{', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}" if extra else "")
    if extra:
        details["recorded_not_compared"] = extra
    if cmp.passed:
        return CheckResult.passed(f"{cand.title} match the reference on the recorded inputs ({cmp.describe()}; "
                                  f"{plural(n, 'output')}){left}", metrics=metrics, details=details)
    text = f"{cand.title} differ from the reference on the recorded inputs: {cmp.describe()}"
    if rec.modules is None:
        return CheckResult.failed(text + left, metrics=metrics, details=details,
                                  hint="record with torch_diagnose.record(model, inputs, path) to localise: it also saves every "
                                       "module's output, so the first module whose output moved can be named")
    div = lp.first_moving_recorded(ctx.model, inputs, rec.modules)
    culprit: Culprit | None = None
    if div is not None:
        culprit = module_culprit(ctx.model, div.name, div.module_type)
        text = (f"{cand.title} differ from the reference on the recorded inputs: first module whose output moved: {div.label} "
                f"(by {div.max_abs:.3g}, its input unchanged); {cmp.describe()}")
        details["first_moving_module"] = div.label
    return CheckResult.failed(text + left, culprit=culprit, metrics=metrics, details=details,
                              hint="the recorded model computes differently from here on: compare that module's weights and "
                                   "code in the two versions" if div is not None else None)
