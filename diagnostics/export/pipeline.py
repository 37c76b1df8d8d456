"""The one pipeline every export check runs: build the artifact -> sweep it -> judge -> localise ->
publish it as a deployment variant.

A check builds its artifact once per run (`ctx.cached("export:<kind>")`, a `Built`), calls
`review` (sweep + judgement + the details and metrics every export check reports), adds what only
it can localise, and ends with `finish` (status, summary, variant for the benchmark, result).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..context import Context, Variant
from ..locate.code import Frame
from ..locate.culprit import Culprit
from ..locate.source import module_at
from ..registry import CheckOptions, Option
from ..results import PASS, CheckResult
from ..text import one_line
from ..tree import flatten, plain_objects
from . import repro
from .build import build_sweep
from .cases import Sweep, SweepCase, describe_inputs
from .findings import Findings, judge_outcome
from .guards import Site
from .run import CaseResult, SweepOutcome, evaluate

SWEEP_KEY = "export:sweep"

OPTIONAL_DIMS_BUDGET_S = 30.0

COMMON_OPTIONS = (
    Option("optional_dims_budget_s", float, OPTIONAL_DIMS_BUDGET_S,
           "seconds an export may take to also keep the optional dims (not batch, not declared) dynamic; over it, "
           "they are exported static and not explored (0: never explore them)"),
    Option("shrink", bool, True, "shrink a mismatching input to a small counterexample with hypothesis"),
    Option("shrink_budget_s", float, 20.0, "seconds the shrinking may take"),
    Option("repro", bool, True, "write a repro bundle (artifact, inputs .npz, script) under <report_dir>/repro/<check>/"),
)


def optional_groups(sweep: Sweep) -> list[str]:
    """Dynamic dims the user did not ask for (not the batch, not declared): exporting them is optional."""
    return [g.name for g in sweep.dynamic_groups if not g.required]


def unexplored_note(sweep: Sweep, built: "Built") -> str:
    """`; not explored: ...` for the summary when optional dims were exported static to stay in budget."""
    names = built.extra.get("unexplored") or []
    if not names:
        return ""
    labels = ", ".join(sweep.group(n).label for n in names)
    why = (f"exporting them dynamic took over optional_dims_budget_s={built.extra.get('budget_s', 0):g} s"
           if built.extra.get("budget_s") else "optional_dims_budget_s=0")
    return (f"; not explored: {labels} (optional dims, {why}; exported static): declare them in dynamic_dims or raise "
            f"optional_dims_budget_s to check them")


def get_sweep(ctx: Context) -> Sweep:
    """The run's shape and value sweep (discovery and eager outputs), built once."""
    return ctx.cached(SWEEP_KEY, lambda: build_sweep(ctx))


def tmpdir(ctx: Context) -> str:
    """A folder for this run's exported files, removed when the Context goes away."""

    def make() -> str:
        path = tempfile.mkdtemp(prefix="torch-diagnose-export-")
        weakref.finalize(ctx, shutil.rmtree, path, ignore_errors=True)
        return path

    return ctx.cached("export:tmpdir", make)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence exporters: torch/onnxscript log lines, stdout chatter and warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def cache_outputs(value: Any, depth: int = 0) -> list[str]:
    """Type names of transformers cache objects (DynamicCache, EncoderDecoderCache ...) in eager's output."""
    name = type(value).__name__
    if name.endswith("Cache") and not isinstance(value, (dict, list, tuple, torch.Tensor)):
        return [name]
    if depth > 3:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return list(dict.fromkeys(n for v in items for n in cache_outputs(v, depth + 1)))


def cache_hint(ctx: Context) -> str | None:
    """`use_cache=False` when the output holds a transformers cache object, which exporters cannot return."""
    caches = cache_outputs(ctx.reference)
    if not caches:
        return None
    return (f"eager's output holds a transformers {caches[0]} (past_key_values), which exporters cannot return: export "
            f"with use_cache=False (in the inputs, or model.config.use_cache = False) and return_dict=False for a plain "
            f"tuple of tensors")


def non_tensor_outputs(ctx: Context) -> str:
    """`[1]` (str), `cache` (DynamicCache) ... for what eager returns besides tensors, or ''. An object
    holding tensors (a transformers cache) is named once, not by the leaves inside it."""
    objects = plain_objects(ctx.reference)
    odd = [f"`{k}` ({type(v).__name__})" for k, v in objects.items()]
    odd += [f"`{k}` ({type(v).__name__})" for k, v in flatten(ctx.reference).items()
            if not isinstance(v, torch.Tensor) and not any(k == o or k.startswith(o + ".") or k.startswith(o + "[") for o in objects)]
    return ", ".join(odd[:4]) + (" ..." if len(odd) > 4 else "")


@dataclass
class Built:
    """An artifact one exporter built (or why it could not, and at which line)."""

    kind: str
    run: Callable[[Any], Any] | None = None
    path: str | None = None
    size_bytes: int | None = None
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None
    frame: Frame | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.run is not None


@dataclass(frozen=True)
class Exporter:
    """How one check names its artifact."""

    check: str  # check id and repro folder: "torchscript"
    variant: str  # published variant: "torchscript", "torch.export", "onnxruntime", "torch.compile"
    artifact: str  # in verdicts: "trace", "program", "ONNX model", "compiled model"
    title: str  # in summaries: "TorchScript trace"
    plot: str  # plot title: "TorchScript trace vs eager"
    bundle: str  # repro runner kind: "torchscript", "torch.export", "onnx"


@dataclass
class Review:
    """One artifact swept and judged; a check adds its own localisation, then calls `finish`."""

    exporter: Exporter
    sweep: Sweep
    built: Built
    outcome: SweepOutcome
    findings: Findings
    details: dict[str, Any]
    metrics: dict[str, Any]
    hints: list[str]
    sites: dict[str, Site] = field(default_factory=dict)  # group name -> the guard that pinned it


def base_metrics(built: Built, sweep: Sweep, outcome: SweepOutcome | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"export_s": round(built.seconds, 3)}
    if built.size_bytes is not None:
        metrics["size_bytes"] = built.size_bytes
    metrics["sweep_cases"] = len(sweep.cases)
    metrics["dynamic_dims"] = ",".join(g.name for g in sweep.dynamic_groups) or "none"
    metrics["required_dims"] = ",".join(g.name for g in sweep.groups if g.required) or "none"
    if outcome is not None:
        metrics.update(outcome.metrics())
        metrics["sweep_s"] = round(outcome.seconds, 3)
    return metrics


def base_details(sweep: Sweep, outcome: SweepOutcome | None, built: Built, title: str) -> dict[str, Any]:
    details: dict[str, Any] = {
        "dimensions": [g.describe() for g in sweep.groups if g.dynamic or g.required],
        "sweep_notes": sweep.notes,
        "export_notes": built.notes,
    }
    if outcome is not None:
        details["cases"] = outcome.rows()
        details["dimension_verdicts"] = [{"dims": gv.group.label, "verdict": gv.verdict, "text": gv.text} for gv in outcome.groups]
        details["plot"] = outcome.plot(title)
    if built.warnings:
        details["tracer_warnings"] = built.warnings
    return details


Sites = dict[str, Site]


def review(ctx: Context, exporter: Exporter, sweep: Sweep, built: Built,
           sites: Sites | Callable[[SweepOutcome], Sites] | None = None) -> Review:
    """Sweep the built artifact and judge the outcome; `sites` (where dimensions got pinned) may
    depend on the outcome, to be looked for only when a dimension fails. An artifact built with optional
    dims static to stay in budget is swept without them (`built.extra["sweep"]`)."""
    sweep = built.extra.get("sweep", sweep)
    outcome = evaluate(ctx, sweep, built.run, artifact=exporter.artifact)
    if callable(sites):
        sites = sites(outcome)
    findings = judge_outcome(outcome, exporter.artifact, sites)
    return Review(exporter, sweep, built, outcome, findings, base_details(sweep, outcome, built, exporter.plot),
                  base_metrics(built, sweep, outcome), list(findings.hints), sites or {})


def failed_build(ctx: Context, exporter: Exporter, built: Built, sweep: Sweep, hint: str, artifact: str) -> CheckResult:
    """An export that failed is a finding: the culprit is the module whose code the exporter stopped at
    (else the line itself)."""
    frame = built.frame
    culprit: Culprit | None = None
    if frame is not None:
        found = module_at(ctx.model, frame.file, frame.line)
        culprit = found.with_frame(frame) if found is not None else Culprit.at(frame)
    caches = cache_hint(ctx)
    if caches:
        hint = f"{caches}; {hint}"
    return CheckResult.failed(
        f"{artifact} fails: {built.error}", culprit=culprit, hint=hint,
        metrics={**base_metrics(built, sweep, None), "export_failed": True, "failure_kind": built.error_kind or "error"},
        details=base_details(sweep, None, built, ""),
    )


def first_mismatch(outcome: SweepOutcome) -> CaseResult | None:
    pool = outcome.mismatches
    if not pool:
        return None
    return min(pool, key=lambda r: (r.case.kind == "example", sum(t.numel() for t in flatten(r.case.inputs).values() if isinstance(t, torch.Tensor))))


def _write_bundle(ctx: Context, rv: Review, case: SweepCase, actual: Any, max_abs: float) -> str | None:
    check, built, details = rv.exporter.check, rv.built, rv.details
    try:
        if built.path is None and "write" in built.extra:
            built.path = built.extra["write"]()
        folder = repro.write_bundle(
            os.path.join(ctx.options.report_dir, "repro", check), kind=rv.exporter.bundle, artifact_path=built.path,
            inputs=case.inputs, names=rv.sweep.names, expected=case.expected, actual=actual,
            title=f"{check}: the artifact differs from eager", description=details["counterexample"]["description"],
            threshold=(max_abs / 2) if max_abs and math.isfinite(max_abs) else 0.0,
            info={"check": check, "case": case.name},
        )
    except Exception as exc:
        details["repro_error"] = one_line(exc)
        return None
    details["repro"] = folder
    return folder


def counterexample(ctx: Context, opts: CheckOptions, rv: Review) -> tuple[SweepCase | None, str | None]:
    """Shrink the first mismatch and write the repro bundle; returns (counterexample case, folder)."""
    failing = first_mismatch(rv.outcome)
    if failing is None:
        return None, None
    cex = None
    if opts.shrink:
        ctx.progress(f"shrinking the mismatch at {failing.case.name} (up to {float(opts.shrink_budget_s):g} s)")
        try:
            cex = repro.shrink(ctx, rv.sweep, failing.case, rv.built.run, budget_s=float(opts.shrink_budget_s))
        except Exception as exc:  # shrinking is best effort; the mismatch stands
            rv.details["shrink_error"] = one_line(exc)
    if cex is not None:
        case, actual, max_abs = cex.case, cex.actual, cex.max_abs
        rv.details["counterexample"] = {"description": cex.describe(), "inputs": describe_inputs(case.inputs, rv.sweep.names),
                                        "evaluations": cex.evaluations}
    else:
        case, actual, max_abs = failing.case, failing.actual, failing.max_abs or math.inf
        rv.details["counterexample"] = {"description": f"{failing.case.name} (not shrunk)",
                                        "inputs": describe_inputs(case.inputs, rv.sweep.names)}
    if opts.repro:
        ctx.progress("writing the repro bundle")
    folder = _write_bundle(ctx, rv, case, actual, max_abs) if opts.repro else None
    return case, folder


def summary(artifact: str, findings: Findings, outcome: SweepOutcome) -> str:
    n = len(outcome.results)
    if findings.failures:
        more = f" (+{len(findings.failures) - 1} more)" if len(findings.failures) > 1 else ""
        return f"{artifact} differs from eager: {findings.failures[0]}{more}"
    dyn = [gv.group.label for gv in outcome.groups if gv.verdict == "dynamic"]
    n_ok = sum(r.status == "ok" for r in outcome.results)
    n_run = n - len(outcome.raised)
    base = (f"{artifact} matches eager at all {n} sweep cases" if n_ok == n else
            f"{artifact} matches eager on the {n_ok} of {n} sweep cases it accepts" if n_ok == n_run else
            f"{artifact} matches eager at {n_ok} of {n} sweep cases")
    base += f"; dynamic: {', '.join(dyn)}" if dyn else ""
    if findings.warnings:
        return f"{base}; but {findings.warnings[0]}" + (f" (+{len(findings.warnings) - 1} more)" if len(findings.warnings) > 1 else "")
    return base


def publish(ctx: Context, exporter: Exporter, built: Built, status: str, outcome: SweepOutcome, note: str = "") -> None:
    """Offer the artifact to the benchmark's deployment matrix, with its verdict and worst error."""
    if not built.ok:
        return
    finite = [r.max_abs for r in outcome.results if r.max_abs is not None and math.isfinite(r.max_abs)]
    max_error = max(finite) if finite else (math.inf if outcome.results else None)
    ctx.add_variant(Variant(name=exporter.variant, run=built.run, source_check=exporter.check, verdict=status,
                            max_error=max_error, size_bytes=built.size_bytes, note=note))


def finish(ctx: Context, rv: Review, *, title: str | None = None, note: str = "", pass_note: str = "") -> CheckResult:
    """Status and summary from the findings, the variant published, the result returned."""
    findings = rv.findings
    status = findings.status()
    rv.details["failures"], rv.details["warnings"] = findings.failures, findings.warnings
    publish(ctx, rv.exporter, rv.built, status, rv.outcome, note=note)
    text = summary(title or rv.exporter.title, findings, rv.outcome) + (pass_note if status == PASS else "")
    text += unexplored_note(rv.sweep, rv.built)
    if rv.built.extra.get("unexplored"):
        rv.details["not_explored"] = [rv.sweep.group(n).label for n in rv.built.extra["unexplored"]]
    return CheckResult(status=status, summary=text, culprit=findings.culprit, hint="; ".join(dict.fromkeys(rv.hints)) or None,
                       metrics=rv.metrics, details=rv.details)
