"""`torch_compile` (opt-in): torch.compile with dynamic shapes equals eager; graph breaks and recompiles."""
from __future__ import annotations

import re
import time
from typing import Any

from torch_diagnose.context import Context
from torch_diagnose.export.dynamo import dynamo_logs, parse_records
from torch_diagnose.export.findings import dimension_culprit
from torch_diagnose.export.pipeline import COMMON_OPTIONS, Built, Exporter, Review, counterexample, finish, get_sweep, review
from torch_diagnose.inputs import call_model
from torch_diagnose.locate.code import Frame
from torch_diagnose.locate.culprit import Culprit
from torch_diagnose.locate.source import module_at
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult, SkipCheck
from torch_diagnose.text import one_line

COMPILED = Exporter("torch_compile", "torch.compile", "compiled model", "torch.compile", "torch.compile vs eager", "torch.compile")


def _line_culprit(ctx: Context, entry: dict[str, Any], body_offset: int = 0) -> Culprit | None:
    """The module whose forward holds a logged line (`body_offset` 1 for a function's `def` line), at that line."""
    if not entry.get("file"):
        return Culprit.named(entry["location"]) if entry.get("location") else None
    frame = Frame(entry["file"], entry["line"], "", entry.get("code") or "")
    module = module_at(ctx.model, frame.file, frame.line + body_offset)
    return module.with_frame(frame) if module is not None else Culprit.at(frame)


def _judge_dynamo(ctx: Context, rv: Review, breaks: list[dict[str, Any]], recompiles: list[dict[str, Any]]) -> None:
    """Graph breaks and recompilations at the swept shapes warn; each costs latency in serving."""
    findings, outcome = rv.findings, rv.outcome
    if outcome.raised and len(outcome.raised) == len(outcome.results):
        findings.failures.insert(0, f"torch.compile fails: {outcome.raised[0].message}")
    if breaks:
        findings.warnings.append(f"{len(breaks)} graph break(s): " + "; ".join(f"{b['location']}: {b['reason']}" for b in breaks[:3]))
        findings.blame(_line_culprit(ctx, breaks[0]))
    if recompiles:
        findings.warnings.append(f"{len(recompiles)} recompilation(s): " + "; ".join(r["reasons"][0] for r in recompiles[:3]))
        m = re.search(r"tensor '([^']+)' size mismatch at index (\d+)", " ".join(r["reasons"][0] for r in recompiles))
        g = rv.sweep.group_of(m.group(1), int(m.group(2))) if m else None
        first = recompiles[0]
        frame = Frame(first["file"], first["line"]) if first.get("file") else None
        findings.blame(dimension_culprit(g, frame) if g is not None else _line_culprit(ctx, first, body_offset=1))


def _dynamo_hints(breaks: list[dict[str, Any]], recompiles: list[dict[str, Any]]) -> list[str]:
    hints: list[str] = []
    if breaks:
        hints.append("graph breaks: " + "; ".join(f"{b['location']} `{b['code']}`: {b['explanation'] or b['reason']}" for b in breaks[:2]))
    if recompiles:
        reasons = " ".join(r["reasons"][0] for r in recompiles)
        if "duck sizing" in reasons:
            hints.append("recompiles: the example has equal sizes in two dimensions, so TorchDynamo assumed they are always equal "
                         "(duck sizing); compile with an example whose dimensions differ, or set "
                         "torch.fx.experimental._config.use_duck_shape = False")
        else:
            hints.append("recompiles: a guard on a size or value failed — a Python loop over a dimension or a size used as a "
                         "Python number specialises it; use tensor ops over the dimension, or torch._dynamo.mark_dynamic")
    return hints


def _compiled(ctx: Context, backend_name: str, graphs: list[Any]) -> Built:
    """`torch.compile(model, dynamic=True)` with the backend wrapped to count compiled graphs."""
    import torch
    import torch._dynamo

    try:
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(backend_name)
    except Exception as exc:
        raise SkipCheck(f"torch.compile backend {backend_name!r} is not available: {one_line(exc)}")

    def counting(gm: Any, example_inputs: Any) -> Any:
        graphs.append(gm)
        return inner(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(ctx.model, backend=counting, dynamic=True)
    return Built("torch.compile", run=lambda inputs: call_model(compiled, inputs))


@register(
    "torch_compile", family="export", title="torch.compile (dynamic shapes) equals eager; graph breaks and recompiles",
    options=(Option("backend", str, "inductor", "torch.compile backend (inductor, aot_eager, eager)"), *COMMON_OPTIONS),
    order=63, default=False,
)
def torch_compile(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Opt-in (compiling is slow): `torch.compile(model, dynamic=True)` against eager over the shape and
    value sweep, counting compiled graphs, graph breaks (with their reasons and lines) and
    recompilations (with the guard that failed). Wrong numbers fail; graph breaks or
    recompilations at the swept shapes warn (each one costs latency in serving).
    """
    sweep = get_sweep(ctx)
    backend_name = str(opts.backend)
    graphs: list[Any] = []
    built = _compiled(ctx, backend_name, graphs)
    start = time.perf_counter()
    try:
        with dynamo_logs() as grab:  # compiling happens in the sweep's first calls
            rv = review(ctx, COMPILED, sweep, built)
    finally:
        built.seconds = time.perf_counter() - start
    breaks, recompiles = parse_records(grab.records)
    _judge_dynamo(ctx, rv, breaks, recompiles)
    rv.details.update({"graph_breaks": breaks, "recompiles": recompiles, "backend": backend_name})
    rv.metrics.pop("export_s", None)
    rv.metrics.update({"compile_and_sweep_s": round(built.seconds, 3), "graphs": len(graphs), "graph_breaks": len(breaks),
                       "recompiles": len(recompiles), "backend": backend_name})
    rv.hints = _dynamo_hints(breaks, recompiles)
    if rv.outcome.mismatches:
        _, folder = counterexample(ctx, opts, rv)  # no file: the bundle holds inputs and eager outputs
        if folder:
            rv.hints.append(f"repro bundle: {folder} (inputs and eager outputs; recompile the model to replay)")
    return finish(ctx, rv, title=f"torch.compile ({backend_name})", note=backend_name)
