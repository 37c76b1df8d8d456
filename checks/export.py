"""Export family: is the exported artifact the same function as eager, away from the example input?

The classic deployment bug: the artifact matches eager on the example input and silently
differs on every other. Checks here: `torchscript` (trace + script attempt), `torch_export`,
`onnx` (dynamo exporter + ONNX Runtime) and the opt-in `torch_compile`. All of them run their
artifact over the shared shape and value sweep (`diagnostics/sweep.py`): every dimension eager
accepts at other sizes, the batch and declared dimensions (which must stay dynamic), fresh
values of both signs and other scales. A dimension the artifact keeps static and says so is a
`warn`; one it accepts and gets wrong is a `fail`; a required one it cannot keep dynamic is a
`fail`. Mismatches are shrunk to a small counterexample (hypothesis) and written as a repro
bundle under `<report_dir>/repro/<check>/`. Exports are built once per run
(`ctx.cached("export:...")`) and published as variants for the benchmark.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import linecache
import logging
import math
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from torch_diagnose import sweep as sw
from torch_diagnose.context import Context, Variant
from torch_diagnose.inputs import as_args_kwargs, call_model
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import FAIL, PASS, WARN, CheckResult, SkipCheck
from torch_diagnose.tree import flatten, map_leaves

from ._hints import short_location

SWEEP_KEY = "export:sweep"
DEPRECATION = ("TorchScript is deprecated in current torch (torch.jit.trace/script emit a FutureWarning): "
               "prefer torch.export (see the torch_export check), which captures shapes symbolically")

_COMMON_OPTIONS = (
    Option("shrink", bool, True, "shrink a mismatching input to a small counterexample with hypothesis"),
    Option("shrink_budget_s", float, 20.0, "seconds the shrinking may take"),
    Option("repro", bool, True, "write a repro bundle (artifact, inputs .npz, script) under <report_dir>/repro/<check>/"),
)


# ---------------------------------------------------------------------------------------------
# Shared plumbing


def get_sweep(ctx: Context) -> sw.Sweep:
    """The run's shape and value sweep (discovery and eager outputs), built once."""
    return ctx.cached(SWEEP_KEY, lambda: sw.build_sweep(ctx))


def _tmpdir(ctx: Context) -> str:
    """A folder for this run's exported files, removed when the Context goes away."""

    def make() -> str:
        import shutil
        import weakref

        path = tempfile.mkdtemp(prefix="torch-diagnose-export-")
        weakref.finalize(ctx, shutil.rmtree, path, ignore_errors=True)
        return path

    return ctx.cached("export:tmpdir", make)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporters: torch/onnxscript log lines, stdout chatter and warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@dataclass
class Built:
    """An artifact one exporter built (or why it could not)."""

    kind: str
    run: Callable[[Any], Any] | None = None
    path: str | None = None
    size_bytes: int | None = None
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None
    location: str | None = None
    code: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.run is not None


_BOILERPLATE = (
    "For more information", "TORCH_LOGS", "TORCHDYNAMO_EXTENDED", "If you suspect", "docs.google", "draft_export",
    "The error above occurred", "consider using data-dependent friendly", "For C++ stack trace", "Next steps",
    "Modify the model code", "Debug `torch.export", "Create an issue", "Refer to the full", "## Exception summary",
    "pytorch.org/docs", "github.com/pytorch", "Set TORCHDYNAMO", "from user code:",
    "If there is a missing ONNX function", "If there is an internal error", "Create an error report", "⬆️",
    "Refer to the full stack trace",
)


def trim_message(exc: BaseException | str, max_lines: int = 4, max_chars: int = 500) -> str:
    """The exporter's message cut to what matters: no boilerplate, no colour codes, a few lines."""
    text = str(exc) if not isinstance(exc, str) else exc
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"This is step \d/\d of exporting the model to ONNX\.( Next steps:)?", "", text)
    text = re.sub(r"tensor\(\[.*?\]\)(?=[,}\])\s])", "tensor(...)", text, flags=re.DOTALL)
    text = re.sub(r"tensor\(\[.*?\](, [a-z_]+=[^)]*)?\)", "tensor(...)", text, flags=re.DOTALL)
    kept: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or any(b in stripped for b in _BOILERPLATE):
            continue
        if stripped.startswith("<class '"):
            stripped = re.sub(r"^<class '([\w.]+)'>:\s*", lambda m: m.group(1).rsplit(".", 1)[-1] + ": ", stripped)
        kept.append(stripped)
        if len(kept) >= max_lines:
            break
    out = " ".join(kept) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    if isinstance(exc, BaseException) and not out.startswith(type(exc).__name__):
        out = f"{type(exc).__name__}: {out}"
    return out[:max_chars]


def _model_files(model: torch.nn.Module) -> set[str]:
    files: set[str] = set()
    for module in model.modules():
        try:
            f = inspect.getsourcefile(type(module))
        except (TypeError, OSError):
            continue
        if f and not f.startswith(os.path.dirname(torch.__file__)):
            files.add(os.path.abspath(f))
    return files


def _user_frame(files: set[str]) -> tuple[str, int, str] | None:
    """The innermost frame on the current stack in one of the model's own source files."""
    frame = sys._getframe(2)
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if name in files:
            return name, frame.f_lineno, linecache.getline(name, frame.f_lineno).strip()
        frame = frame.f_back
    return None


def _module_at(model: torch.nn.Module, file: str | None, line: int | None) -> str | None:
    """`dotted.path (Type)` of the innermost module whose forward holds file:line."""
    if not file or not line:
        return None
    target = os.path.abspath(file)
    found: list[tuple[int, str]] = []  # (span of the forward, label): the tightest span is the innermost
    spans: dict[type, tuple[str, int, int] | None] = {}
    for name, module in model.named_modules():
        cls = type(module)
        if cls not in spans:
            try:
                lines, start = inspect.getsourcelines(cls.forward)
                spans[cls] = (os.path.abspath(inspect.getsourcefile(cls.forward) or ""), start, len(lines))
            except (TypeError, OSError):
                spans[cls] = None
        span = spans[cls]
        if span and span[0] == target and span[1] <= line < span[1] + span[2]:
            found.append((span[2], f"{name or '<root>'} ({cls.__name__})"))
    if not found:
        return None
    tightest = min(size for size, _ in found)
    labels = [label for size, label in found if size == tightest]
    return labels[0] + (f" (+{len(labels) - 1} more of that type)" if len(labels) > 1 else "")


def _parse_location(loc: str | None) -> tuple[str | None, int | None]:
    if not loc or ":" not in loc:
        return None, None
    file, _, line = loc.rpartition(":")
    try:
        return file, int(line)
    except ValueError:
        return None, None


_SOURCE_RE = re.compile(r"((?:L|inputs)(?:\[[^\]]+\])+)(?:\.size\(\)|\.shape)\[(\d+)\]")


def _source_to_ref(source: str, sweep: sw.Sweep) -> tuple[str, int] | None:
    """`L['x'].size()[1]`, `L['args'][0].size()[1]`, `inputs['x'].shape[1]` -> (leaf, dim)."""
    m = _SOURCE_RE.search(source)
    if not m:
        return None
    path, dim = m.group(1), int(m.group(2))
    tokens = re.findall(r"\[(?:'([^']*)'|(\d+))\]", path)
    leaf = None
    for i, (key, idx) in enumerate(tokens):
        if key and key in sweep.names:
            leaf = key
        elif idx and i > 0 and tokens[i - 1][0] in ("args", "flat_args") and int(idx) < len(sweep.names):
            leaf = sweep.names[int(idx)]
    if leaf is None and len(sweep.names) == 1:
        leaf = sweep.names[0]
    return (leaf, dim) if leaf is not None else None


@contextlib.contextmanager
def _capture_guards(model: torch.nn.Module, files: set[str], *, hooks: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Record the shape guards torch.export adds, with the model's own source line that added each
    and the innermost module running at the time (module hooks: non-strict export only)."""
    records: list[dict[str, Any]] = []
    try:
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
    except ImportError:  # pragma: no cover
        yield records
        return
    original = getattr(ShapeEnv, "_log_guard", None)
    if original is None:
        yield records
        return
    names = {id(m): (n, type(m).__name__) for n, m in model.named_modules()}
    stack: list[tuple[str, str]] = []
    handles: list[Any] = []
    if hooks:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def push(module: torch.nn.Module, args: Any) -> None:
            if id(module) in names:
                stack.append(names[id(module)])

        def pop(module: torch.nn.Module, args: Any, output: Any) -> None:
            if id(module) in names and stack:
                stack.pop()

        handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop)]

    def patched(self: Any, prefix: str, g: Any, forcing_spec: bool) -> Any:
        try:
            frame = _user_frame(files)
            if frame is not None and len(records) < 5000:
                symbols = getattr(g, "free_symbols", set())
                sources = [k for k, v in getattr(self, "source_to_var", {}).items() if v in symbols]
                module = f"{stack[-1][0] or '<root>'} ({stack[-1][1]})" if stack else None
                records.append({"expr": str(g), "sources": sources, "file": frame[0], "line": frame[1], "code": frame[2],
                                "module": module})
        except Exception:
            pass
        return original(self, prefix, g, forcing_spec)

    ShapeEnv._log_guard = patched
    try:
        yield records
    finally:
        ShapeEnv._log_guard = original
        for h in handles:
            h.remove()


def _sites(records: list[dict[str, Any]], sweep: sw.Sweep) -> dict[str, dict[str, Any]]:
    """Group name -> the first guard that pinned it to a constant (file, line, code, expression)."""
    sites: dict[str, dict[str, Any]] = {}
    for rec in records:
        if not re.fullmatch(r"(Eq|Ne)\(\w+, -?\d+\)|(Eq|Ne)\(-?\d+, \w+\)|\w+ (<|<=|>|>=) -?\d+", rec["expr"]):
            continue
        for source in rec["sources"]:
            ref = _source_to_ref(source, sweep)
            g = sweep.group_of(*ref) if ref else None
            if g is not None and rec["expr"].startswith("Eq") and g.name not in sites:
                sites[g.name] = rec
    return sites


def _site_text(site: dict[str, Any] | None) -> str:
    if not site:
        return ""
    inside = f" in {site['module']}" if site.get("module") else ""
    return f" (pinned by {short_location(site['file'], site['line'])}: `{site['code']}`{inside})"


def _site_hints(sweep: sw.Sweep, names: list[str], sites: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-words advice for each dimension pinned to a constant, with the line and the module."""
    hints = []
    for name in dict.fromkeys(names):
        site = sites.get(name)
        if not site:
            continue
        module = site.get("module") or ""
        advice = ("torch.export decomposes RNN layers (GRU/LSTM/RNN) step by step, which fixes the sequence length: "
                  "export one program per length bucket, pad to a fixed length, or keep the RNN out of the export"
                  if re.search(r"\((GRU|LSTM|RNN)\)", module) else
                  "compute sizes with x.shape/x.size() arithmetic (no int(), no literals) and avoid Python loops over a dimension")
        hints.append(f"{sweep.group(name).label} is pinned by {short_location(site['file'], site['line'])} `{site['code']}`"
                     + (f" in {module}" if module else "") + f": {advice}")
    return hints


def _to_numpy_inputs(inputs: Any, names: list[str]) -> dict[str, Any]:
    leaves = sw.named_leaves(inputs, names)
    out = {}
    for k, v in leaves.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            out[k] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return out


def _rebuild_outputs(template: Any, flat: list[torch.Tensor]) -> Any:
    """Put flat artifact outputs back into eager's output structure (non-tensor leaves are eager's)."""
    n_tensors = sum(isinstance(v, torch.Tensor) for v in flatten(template).values())
    if n_tensors != len(flat):
        raise RuntimeError(f"the artifact returned {len(flat)} outputs, eager returns {n_tensors} tensors")
    it = iter(flat)
    return map_leaves(template, lambda leaf: next(it) if isinstance(leaf, torch.Tensor) else leaf)


# ---------------------------------------------------------------------------------------------
# Judging an outcome (shared by every export check)


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    culprit: str | None = None
    location: str | None = None
    hints: list[str] = field(default_factory=list)

    def status(self) -> str:
        return FAIL if self.failures else WARN if self.warnings else PASS

    def blame(self, culprit: str | None, location: str | None = None) -> None:
        if self.culprit is None and culprit:
            self.culprit, self.location = culprit, location


def _judge_outcome(outcome: sw.SweepOutcome, artifact: str, sites: dict[str, dict[str, Any]] | None = None) -> Findings:
    """Turn a sweep outcome into failures and warnings, in the words of the issue."""
    f = Findings()
    sites = sites or {}
    for r in outcome.results:
        if r.case.kind == "example" and r.status != "ok":
            what = f"outputs differ by {sw._fmt(r.max_abs)}" if r.status == "mismatch" else f"it raises ({r.message[:200]})"
            f.failures.append(f"on the example input itself {what}")
    for r in outcome.results:
        if r.case.kind == "values" and r.status != "ok":
            what = f"outputs differ by {sw._fmt(r.max_abs)}" if r.status == "mismatch" else f"the {artifact} raises ({r.message[:160]})"
            f.failures.append(f"on {r.case.name} at the example shape {what}")
    for gv in outcome.groups:
        site = sites.get(gv.group.name)
        if gv.verdict == "eager-static":
            f.failures.append(gv.text + " — it must stay dynamic")
            f.blame(gv.group.label, gv.group.rejected_at)
            where = f"{gv.group.rejected_at}" if gv.group.rejected_at else "the model"
            f.hints.append(f"eager itself cannot run other sizes of {gv.group.label}: {where} bakes the size in "
                           f"(a literal in reshape/view, a fixed-size buffer); use x.reshape(x.shape[0], -1) or x.flatten(1)")
        elif gv.verdict == "wrong":
            f.failures.append(gv.text + _site_text(site))
            f.blame(gv.group.label, short_location(site["file"], site["line"]) if site else None)
        elif gv.verdict in ("static", "partial"):
            text = gv.text + _site_text(site)
            if gv.group.required:
                f.failures.append(text + f" — {gv.group.role}, it must stay dynamic")
                f.blame(gv.group.label, short_location(site["file"], site["line"]) if site else None)
            else:
                f.warnings.append(text + " — kept static")
    verdicts = {gv.group.name: gv.verdict for gv in outcome.groups}
    for r in outcome.results:  # failures of several dims together that no single dim explains
        if r.case.kind != "shape" or len(r.case.sizes) < 2 or r.status == "ok":
            continue
        if any(verdicts.get(name) in ("wrong", "static", "partial", "eager-static") for name in r.case.sizes):
            continue
        what = f"outputs differ by {sw._fmt(r.max_abs)}" if r.status == "mismatch" else f"the {artifact} raises ({r.message[:160]})"
        text = f"at {r.case.name} (each dimension alone is fine): {what}"
        required = any(g.required for g in outcome.groups_for(r.case.sizes))
        (f.failures if r.status == "mismatch" or required else f.warnings).append(text)
    if f.culprit is None:
        for gv in outcome.warned_groups:
            site = sites.get(gv.group.name)
            f.blame(gv.group.label, short_location(site["file"], site["line"]) if site else None)
            break
    return f


def _base_metrics(built: Built, sweep: sw.Sweep, outcome: sw.SweepOutcome | None) -> dict[str, Any]:
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


def _details(sweep: sw.Sweep, outcome: sw.SweepOutcome | None, built: Built, title: str) -> dict[str, Any]:
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


def _first_mismatch(outcome: sw.SweepOutcome) -> sw.CaseResult | None:
    pool = outcome.mismatches
    if not pool:
        return None
    return min(pool, key=lambda r: (r.case.kind == "example", sum(t.numel() for t in flatten(r.case.inputs).values() if isinstance(t, torch.Tensor))))


def _counterexample(ctx: Context, opts: CheckOptions, sweep: sw.Sweep, outcome: sw.SweepOutcome, run: Callable[[Any], Any],
                    check: str, kind: str, built: Built, details: dict[str, Any]) -> tuple[Any, str | None]:
    """Shrink the first mismatch and write the repro bundle; returns (counterexample case inputs, folder)."""
    failing = _first_mismatch(outcome)
    if failing is None:
        return None, None
    from torch_diagnose import repro

    cex = None
    if opts.shrink:
        try:
            cex = repro.shrink(ctx, sweep, failing.case, run, budget_s=float(opts.shrink_budget_s))
        except Exception as exc:  # shrinking is best effort; the mismatch stands
            details["shrink_error"] = sw.first_line(exc)
    if cex is not None:
        case, actual, max_abs = cex.case, cex.actual, cex.max_abs
        details["counterexample"] = {"description": cex.describe(), "inputs": sw.describe_inputs(case.inputs, sweep.names),
                                     "evaluations": cex.evaluations}
    else:
        case, actual, max_abs = failing.case, failing.actual, failing.max_abs or math.inf
        details["counterexample"] = {"description": f"{failing.case.name} (not shrunk)", "inputs": sw.describe_inputs(case.inputs, sweep.names)}
    folder = None
    if opts.repro:
        try:
            if built.path is None and "write" in built.extra:
                built.path = built.extra["write"]()
            folder = repro.write_bundle(
                os.path.join(ctx.options.report_dir, "repro", check), kind=kind, artifact_path=built.path,
                inputs=case.inputs, names=sweep.names, expected=case.expected, actual=actual,
                title=f"{check}: the artifact differs from eager", description=details["counterexample"]["description"],
                threshold=(max_abs / 2) if max_abs and math.isfinite(max_abs) else 0.0,
                info={"check": check, "case": case.name},
            )
            details["repro"] = folder
        except Exception as exc:
            details["repro_error"] = sw.first_line(exc)
    return case, folder


def _summary(artifact: str, findings: Findings, outcome: sw.SweepOutcome, sweep: sw.Sweep) -> str:
    n = len(outcome.results)
    if findings.failures:
        more = f" (+{len(findings.failures) - 1} more)" if len(findings.failures) > 1 else ""
        return f"{artifact} differs from eager: {findings.failures[0]}{more}"
    dyn = [gv.group.label for gv in outcome.groups if gv.verdict == "dynamic"]
    n_ok = sum(r.status == "ok" for r in outcome.results)
    base = (f"{artifact} matches eager at all {n} sweep cases" if n_ok == n else
            f"{artifact} matches eager on the {n_ok} of {n} sweep cases it accepts")
    base += f"; dynamic: {', '.join(dyn)}" if dyn else ""
    if findings.warnings:
        return f"{base}; but {findings.warnings[0]}" + (f" (+{len(findings.warnings) - 1} more)" if len(findings.warnings) > 1 else "")
    return base


def _publish(ctx: Context, name: str, check: str, built: Built, status: str, outcome: sw.SweepOutcome | None, note: str = "") -> None:
    if not built.ok:
        return
    max_error = None
    if outcome is not None:
        finite = [r.max_abs for r in outcome.results if r.max_abs is not None and math.isfinite(r.max_abs)]
        max_error = max(finite) if finite else (math.inf if outcome.results else None)
    ctx.add_variant(Variant(name=name, run=built.run, source_check=check, verdict=status, max_error=max_error,
                            size_bytes=built.size_bytes, note=note))


def _failed_build(check: str, artifact: str, built: Built, sweep: sw.Sweep, hint: str, model: torch.nn.Module) -> CheckResult:
    """An export that failed is a finding: the culprit is the module whose code the exporter stopped at."""
    file, line = _parse_location(built.location)
    culprit = _module_at(model, file, line)
    return CheckResult(
        status=FAIL,
        summary=f"{artifact} fails: {built.error}",
        culprit=culprit,
        location=built.location,
        hint=hint,
        metrics={**_base_metrics(built, sweep, None), "export_failed": True, "failure_kind": built.error_kind or "error"},
        details=_details(sweep, None, built, ""),
    )


# ---------------------------------------------------------------------------------------------
# TorchScript


def _tracer_cause(message: str) -> str:
    m = message.lower()
    if "python boolean" in m:
        return "a data-dependent branch (`if` on a tensor) is frozen to the branch the example took"
    if "numpy" in m:
        return "a NumPy round trip is stored in the trace as a constant"
    if "python index" in m or "python integer" in m or "python float" in m or "python number" in m or "python value" in m:
        return "a tensor size or value converted to a Python number is baked in as a constant"
    if "iterating over a tensor" in m:
        return "a Python loop over a tensor is unrolled"
    if "torch.tensor results are registered as constants" in m:
        return "torch.tensor(...) built from Python values is a constant"
    return message.split(". ")[0]


def _non_tensor_outputs(ctx: Context) -> str:
    """`[1]` (str), `[3]` (int) ... for eager's non-tensor output leaves, or ''."""
    odd = [f"`{k}` ({type(v).__name__})" for k, v in flatten(ctx.reference).items() if not isinstance(v, torch.Tensor)]
    return ", ".join(odd[:4]) + (" ..." if len(odd) > 4 else "")


def _build_torchscript(ctx: Context, sweep: sw.Sweep, try_script: bool) -> Built:
    built = Built("torchscript")
    model = ctx.model
    args, kwargs = as_args_kwargs(sweep.export_inputs)
    strict = not any(isinstance(v, (dict, list)) for v in _containers(ctx.reference))
    if not strict:
        built.notes.append("outputs contain dicts or lists: traced with strict=False")
    start = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            previous = logging.root.manager.disable
            logging.disable(logging.CRITICAL)
            try:
                traced = torch.jit.trace(model, args if not kwargs else None, example_kwarg_inputs=kwargs or None,
                                         strict=strict, check_trace=False)
            finally:
                logging.disable(previous)
    except Exception as exc:
        built.seconds = time.perf_counter() - start
        built.error, built.error_kind = trim_message(exc), "trace"
        odd = _non_tensor_outputs(ctx)
        if odd:
            built.error = f"eager returns non-tensor outputs {odd}; a trace can only return tensors (and tuples/lists/dicts of tensors): {built.error}"
            built.error_kind = "outputs"
        built.location = sw.user_location(exc)
        built.warnings = _tracer_warnings(caught)
        _script_attempt(ctx, built, try_script)
        return built
    built.seconds = time.perf_counter() - start
    built.warnings = _tracer_warnings(caught)
    path = os.path.join(_tmpdir(ctx), "model.torchscript.pt")
    try:
        with _quiet():
            torch.jit.save(traced, path)
            loaded = torch.jit.load(path, map_location=ctx.device)
        built.path, built.size_bytes = path, os.path.getsize(path)
        built.extra["roundtrip"] = "saved and reloaded; the reloaded trace is the one swept"
    except Exception as exc:
        built.extra["roundtrip"] = trim_message(exc)
        built.notes.append(f"save/load round trip fails: {trim_message(exc)}; the in-memory trace is swept instead")
        loaded = traced
    module = loaded
    built.run = lambda inputs: call_model(module, inputs)
    built.extra["trace"] = traced
    _script_attempt(ctx, built, try_script)
    return built


def _containers(obj: Any) -> list[Any]:
    found: list[Any] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            found.append(o)
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            if isinstance(o, list):
                found.append(o)
            for v in o:
                walk(v)

    walk(obj)
    return found


def _tracer_warnings(caught: list[warnings.WarningMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int, str]] = set()
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            continue
        msg = str(w.message).split(". ")[0].strip()
        key = (w.filename, w.lineno, msg)
        if key in seen:
            continue
        seen.add(key)
        out.append({"location": short_location(w.filename, w.lineno), "code": linecache.getline(w.filename, w.lineno).strip(),
                    "message": msg, "cause": _tracer_cause(str(w.message)), "file": w.filename, "line": w.lineno})
    return out


def _script_attempt(ctx: Context, built: Built, try_script: bool) -> None:
    if not try_script:
        built.extra["script"] = "not tried"
        return
    start = time.perf_counter()
    try:
        with _quiet():
            scripted = torch.jit.script(ctx.model)
        built.extra["script"] = "ok"
        built.extra["script_module"] = scripted
    except Exception as exc:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        built.extra["script"] = f"{type(exc).__name__}: " + " ".join(t.strip() for t in text[:2])[:300]
    built.extra["script_s"] = round(time.perf_counter() - start, 3)


@register(
    "torchscript", family="export", title="TorchScript trace equals eager away from the example input",
    options=(Option("script", bool, True, "also try torch.jit.script (and sweep it when the trace is wrong)"), *_COMMON_OPTIONS),
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
    built = ctx.cached("export:torchscript", lambda: _build_torchscript(ctx, sweep, bool(opts.script)))
    script_state = built.extra.get("script", "not tried")
    if not built.ok:
        script_words = f"torch.jit.script: {script_state}"
        script_rows = None
        script_mod = built.extra.get("script_module")
        if script_mod is not None:  # is scripting a working TorchScript route?
            s_out = sw.evaluate(ctx, sweep, lambda inputs: call_model(script_mod, inputs), artifact="script")
            script_rows = s_out.rows()
            script_words = (f"torch.jit.script works and matches eager at all {len(s_out.results)} sweep cases: script instead of trace"
                            if not s_out.failed and not s_out.failed_groups else "torch.jit.script runs but differs from eager or rejects sizes")
        hint = (("return only tensors from forward (strings, None and Python numbers belong outside the traced model); "
                 if built.error_kind == "outputs" else "") + f"torch.jit.trace cannot trace this model; {script_words}. " + DEPRECATION)
        result = _failed_build("torchscript", "torch.jit.trace", built, sweep, hint, ctx.model)
        result.details["script"] = script_state
        if script_rows is not None:
            result.details["script_sweep"] = script_rows
        if built.warnings:
            result.details["tracer_warnings"] = built.warnings
        return result
    outcome = sw.evaluate(ctx, sweep, built.run, artifact="trace")
    sites = _sites_for(ctx, sweep, outcome)
    findings = _judge_outcome(outcome, "trace", sites)
    details = _details(sweep, outcome, built, "TorchScript trace vs eager")
    details["script"] = script_state
    details["roundtrip"] = built.extra.get("roundtrip")
    example = next((r for r in outcome.results if r.case.kind == "example"), None)
    if example is not None and example.status != "ok" and built.path:  # the trace itself, or the save/load?
        try:
            in_memory = sw.evaluate(ctx, sweep, lambda inputs: call_model(built.extra["trace"], inputs), cases=[example.case])
            if in_memory.results[0].status == "ok":
                details["roundtrip"] = "the in-memory trace matches eager but the saved and reloaded one does not"
                findings.failures.insert(0, "the torch.jit.save / torch.jit.load round trip changes the results on the example")
        except Exception as exc:
            details["roundtrip_error"] = sw.first_line(exc)
    metrics = _base_metrics(built, sweep, outcome)
    metrics["tracer_warnings"] = len(built.warnings)
    metrics["script_ok"] = script_state == "ok"
    hints: list[str] = list(findings.hints)
    causes = list(dict.fromkeys(f"{w['location']} `{w['code']}`: {w['cause']}" for w in built.warnings))
    if causes:
        details["tracer_warning_causes"] = causes
    if findings.failures:
        # the most telling TracerWarning names the line when values or shapes broke
        for w in built.warnings:
            culprit = _module_at(ctx.model, w["file"], w["line"])
            if culprit:
                if outcome.value_failures or not findings.culprit:
                    findings.culprit, findings.location = culprit, w["location"]
                break
        hints.extend(f"{c} (TracerWarning)" for c in causes[:3])
        failing_dims = [gv.group.name for gv in outcome.groups if gv.verdict in ("wrong", "static", "partial")]
        if failing_dims and not built.warnings:
            hints.append("the trace recorded no warning: a Python loop over a dimension (`for i in range(x.size(1))`) is unrolled "
                         "and literal sizes are baked in silently")
        hints.extend(_site_hints(sweep, failing_dims, sites))
        script_mod = built.extra.get("script_module")
        only_eager = all(gv.verdict in ("eager-static", "dynamic", "untested") for gv in outcome.groups) and not outcome.mismatches and not outcome.raised
        if only_eager:
            pass  # eager itself is the problem: scripting cannot help
        elif script_mod is not None:
            s_out = sw.evaluate(ctx, sweep, lambda inputs: call_model(script_mod, inputs), artifact="script")
            details["script_sweep"] = s_out.rows()
            if not s_out.failed and not s_out.failed_groups:
                hints.append(f"torch.jit.script matches eager at all {len(s_out.results)} sweep cases: script instead of trace")
            else:
                hints.append("torch.jit.script also differs from eager or rejects sizes")
        elif script_state != "ok":
            hints.append(f"torch.jit.script: {script_state}")
        cex, folder = _counterexample(ctx, opts, sweep, outcome, built.run, "torchscript", "torchscript", built, details)
        if folder:
            hints.append(f"repro bundle: {folder}")
    elif findings.warnings:
        hints.extend(_site_hints(sweep, [gv.group.name for gv in outcome.warned_groups], sites))
        hints.append("trace at the sizes you serve, or export with torch.export and dynamic shapes")
    if built.warnings and not findings.failures:
        details["note"] = f"{len(built.warnings)} TracerWarning(s) did not change results at the swept shapes and values"
    hints.append(DEPRECATION)
    status = findings.status()
    details["failures"], details["warnings"] = findings.failures, findings.warnings
    summary = _summary("TorchScript trace", findings, outcome, sweep)
    if built.warnings and status == PASS:
        summary += f" ({len(built.warnings)} TracerWarning(s) did not change results)"
    _publish(ctx, "torchscript", "torchscript", built, status, outcome)
    return CheckResult(status=status, summary=summary, culprit=findings.culprit, location=findings.location,
                       hint="; ".join(dict.fromkeys(hints)), metrics=metrics, details=details)


def _sites_for(ctx: Context, sweep: sw.Sweep, outcome: sw.SweepOutcome) -> dict[str, dict[str, Any]]:
    """Where each failing dimension got pinned, from the torch.export build (built only when needed)."""
    if not any(gv.verdict in ("wrong", "static", "partial") for gv in outcome.groups):
        return {}
    built = ctx.peek("export:torch_export")
    if built is None:
        try:
            built = ctx.cached("export:torch_export", lambda: _build_export(ctx, sweep))
        except Exception:
            return {}
    return built.extra.get("sites", {})


# ---------------------------------------------------------------------------------------------
# torch.export


def _explain_export_error(exc: BaseException, sweep: sw.Sweep) -> tuple[str, str, str | None, str | None, list[str]]:
    """(kind, plain words, location, code, groups named) for an exception from torch.export."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    call = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in \S+\n\s*(.+)', text)
    user = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.+)', text)
    location = code = None
    if call:
        location, code = short_location(call.group(1), int(call.group(2))), call.group(3).strip()
    else:
        for file, line, src in reversed(user):
            if not sw._is_library(file):
                location, code = short_location(file, int(line)), src.strip()
                break
    if "data-dependent" in text or "GuardOnDataDependentSymNode" in type(exc).__name__:
        where = f" at {location} (`{code}`)" if location else ""
        return ("data-dependent",
                f"forward branches on (or reads) a tensor's value{where}: torch.export cannot capture data-dependent "
                f"Python control flow", location, code, [])
    groups: list[str] = []
    constants = re.findall(r"(L\[[^\n]*?\](?:\.size\(\)|\.shape)\[\d+\]|inputs\[[^\n]*?\]\.shape\[\d+\])[^\n]*?(?:constant|static shape of) \(?(\d+)", text)
    for source, value in constants:
        ref = _source_to_ref(source, sweep)
        g = sweep.group_of(*ref) if ref else None
        if g is not None and g.name not in groups:
            groups.append(g.name)
    if "Constraints violated" in text or "specialized it to be a constant" in text or "inferred a static shape" in text:
        named = ", ".join(sweep.group(n).label for n in groups) or "a dynamic dimension"
        return "constraint", f"{named} was asked dynamic but the code specialised it to a constant", location, code, groups
    if ".numpy()" in text or "numpy" in text.lower() and "not supported" in text:
        return "numpy", "forward converts a tensor to NumPy, which torch.export cannot trace" + (f" at {location}" if location else ""), location, code, []
    return "error", trim_message(exc), location, code, []


def _build_export(ctx: Context, sweep: sw.Sweep) -> Built:
    """torch.export with the sweep's dims: required ones Dim.DYNAMIC, others Dim.AUTO; explained failures."""
    from torch.export import Dim

    built = Built("torch.export")
    model = ctx.model
    inputs = sweep.export_inputs
    args, kwargs = as_args_kwargs(inputs)
    files = _model_files(model)
    required = {g.name for g in sweep.groups if g.dynamic and g.required}
    pinned: dict[str, str] = {}  # required group -> why it could not stay dynamic
    strict = False
    all_records: list[dict[str, Any]] = []
    start = time.perf_counter()
    ep = None
    for _attempt in range(6):
        spec = sw.dynamic_shapes_spec(sweep, inputs, lambda g: Dim.DYNAMIC if g.name in required else Dim.AUTO)
        try:
            with _capture_guards(model, files, hooks=not strict) as records, _quiet():
                try:
                    ep = torch.export.export(model, tuple(args), dict(kwargs), dynamic_shapes=spec, strict=strict)
                finally:
                    all_records.extend(records)
            break
        except Exception as exc:
            kind, words, location, code, groups = _explain_export_error(exc, sweep)
            if kind == "constraint" and set(groups) & required:
                for name in set(groups) & required:
                    required.discard(name)
                    pinned[name] = words
                continue
            if kind == "constraint" and not groups and required:  # could not tell which: pin them all
                for name in list(required):
                    pinned[name] = words
                required.clear()
                continue
            if not strict and kind in ("numpy", "error"):
                built.notes.append(f"non-strict torch.export failed ({trim_message(exc, 2, 200)}); retried with strict=True (TorchDynamo)")
                strict = True
                continue
            built.seconds = time.perf_counter() - start
            built.error, built.error_kind, built.location, built.code = words if kind != "error" else trim_message(exc), kind, location, code
            if kind != "error":
                built.notes.append(f"exporter said: {trim_message(exc, 3, 400)}")
            built.extra["sites"] = _sites(all_records, sweep)
            return built
    built.seconds = time.perf_counter() - start
    if ep is None:
        built.error, built.error_kind = "torch.export did not converge on dynamic dimensions after several attempts", "error"
        return built
    sites = _sites(all_records, sweep)
    built.extra.update({"ep": ep, "strict": strict, "pinned": pinned, "sites": sites, "guards": len(all_records)})
    built.extra["static_in_program"] = _static_groups(ep, sweep, inputs)
    for name, why in pinned.items():
        built.notes.append(f"{sweep.group(name).label}: {why}{_site_text(sites.get(name))}; exported with it static to sweep the rest")
    path = os.path.join(_tmpdir(ctx), "model.pt2")
    try:
        with _quiet():
            torch.export.save(ep, path)
        built.path, built.size_bytes = path, os.path.getsize(path)
    except Exception as exc:
        built.notes.append(f"torch.export.save fails: {trim_message(exc, 2, 300)}")
    module = ep.module()
    built.run = lambda inputs: call_model(module, inputs)
    return built


def _static_groups(ep: Any, sweep: sw.Sweep, inputs: Any) -> list[str]:
    """Dynamic groups that the exported program holds at a fixed size."""
    try:
        user_inputs = list(ep.graph_signature.user_inputs)
        nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        leaves = [k for k, v in sw.named_leaves(inputs, sweep.names).items() if isinstance(v, torch.Tensor)]
        static: list[str] = []
        for i, leaf in enumerate(leaves):
            name = leaf if leaf in nodes else (user_inputs[i] if i < len(user_inputs) else None)
            node = nodes.get(name) if name else None
            val = node.meta.get("val") if node is not None else None
            if val is None:
                continue
            for d, size in enumerate(val.shape):
                g = sweep.group_of(leaf, d)
                if g is not None and g.dynamic and isinstance(size, int) and g.name not in static:
                    static.append(g.name)
        return static
    except Exception:
        return []


@register("torch_export", family="export", title="torch.export program equals eager at swept shapes and values",
          options=_COMMON_OPTIONS, order=61)
def torch_export(ctx: Context, opts: CheckOptions) -> CheckResult:
    """`torch.export.export` with the dynamic dimensions the sweep found (batch and declared dims as
    `Dim.DYNAMIC`, every other dimension eager accepts at other sizes as `Dim.AUTO`), then the exported
    program against eager over the sweep. Guard and specialisation errors are explained in plain
    words with the source line and the dimension (a required dimension the code pins to a constant
    fails; another one kept static warns); data-dependent control flow fails with its line.
    """
    sweep = get_sweep(ctx)
    built = ctx.cached("export:torch_export", lambda: _build_export(ctx, sweep))
    if not built.ok:
        hint = {
            "data-dependent": "replace Python `if`/`while` on tensor values with torch.where, torch.cond or masking; "
                              "values that are really constants should be Python numbers, not tensors",
            "numpy": "keep the computation in torch ops (torch.tanh instead of np.tanh ...); NumPy calls cannot be captured",
        }.get(built.error_kind or "", "read the exporter's message in details.export_notes; torch.export.draft_export lists every problem at once")
        return _failed_build("torch_export", "torch.export", built, sweep, hint, ctx.model)
    outcome = sw.evaluate(ctx, sweep, built.run, artifact="program")
    sites = built.extra.get("sites", {})
    findings = _judge_outcome(outcome, "program", sites)
    pinned = built.extra.get("pinned", {})
    for name in pinned:
        g = sweep.group(name)
        site = sites.get(name)
        if not any(g.label in f_ for f_ in findings.failures):
            findings.failures.append(f"{g.label} ({g.role}) cannot be exported dynamic: the code specialises it to {g.size}{_site_text(site)}")
        findings.blame(g.label, short_location(site["file"], site["line"]) if site else None)
    details = _details(sweep, outcome, built, "torch.export program vs eager")
    details["static_in_program"] = built.extra.get("static_in_program", [])
    details["strict"] = built.extra.get("strict", False)
    metrics = _base_metrics(built, sweep, outcome)
    metrics["strict"] = bool(built.extra.get("strict", False))
    hints: list[str] = list(findings.hints)
    hints.extend(_site_hints(sweep, list(pinned) + [gv.group.name for gv in outcome.groups if gv.verdict in ("static", "partial", "wrong")], sites))
    if findings.failures:
        cex, folder = _counterexample(ctx, opts, sweep, outcome, built.run, "torch_export", "torch.export", built, details)
        if folder:
            hints.append(f"repro bundle: {folder}")
    if built.extra.get("strict"):
        hints.append("non-strict export failed; strict=True (TorchDynamo) captured it: export with strict=True")
    status = findings.status()
    details["failures"], details["warnings"] = findings.failures, findings.warnings
    _publish(ctx, "torch.export", "torch_export", built, status, outcome)
    return CheckResult(status=status, summary=_summary("torch.export program", findings, outcome, sweep), culprit=findings.culprit,
                       location=findings.location, hint="; ".join(dict.fromkeys(hints)) or None, metrics=metrics, details=details)


# ---------------------------------------------------------------------------------------------
# ONNX


def _providers(ctx: Context, ort: Any) -> list[str]:
    providers = ["CPUExecutionProvider"]
    if ctx.device is not None and ctx.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def _build_onnx(ctx: Context, sweep: sw.Sweep) -> Built:
    import onnx
    import onnxruntime as ort

    from torch_diagnose import onnx_tools

    built = Built("onnx")
    inputs = sweep.export_inputs
    args, kwargs = as_args_kwargs(inputs)
    start = time.perf_counter()
    ep_built: Built | None = None
    try:
        ep_built = ctx.cached("export:torch_export", lambda: _build_export(ctx, sweep))
    except Exception:
        ep_built = None
    try:
        with _quiet():
            if ep_built is not None and ep_built.ok:
                prog = torch.onnx.export(ep_built.extra["ep"], tuple(args), kwargs=dict(kwargs) or None, dynamo=True,
                                         verbose=False, optimize=True)
                built.notes.append("translated from the torch.export program the torch_export check built")
            else:
                # Dims as strings: the exporter then surfaces specialisation errors instead of
                # silently emitting a static shape (a torch.export.Dim is applied silently).
                spec = sw.dynamic_shapes_spec(sweep, inputs, lambda g: g.name)
                prog = torch.onnx.export(ctx.model, tuple(args), kwargs=dict(kwargs) or None, dynamic_shapes=spec,
                                         dynamo=True, verbose=False, optimize=True)
                built.notes.append("exported from the model (torch.export alone could not capture it)")
    except Exception as exc:
        built.seconds = time.perf_counter() - start
        kind, words, location, code, _groups = _explain_export_error(exc, sweep)
        built.error = words if kind in ("data-dependent", "numpy", "constraint") else trim_message(exc)
        built.error_kind, built.location, built.code = kind, location, code
        odd = _non_tensor_outputs(ctx)
        if odd and kind == "error":
            built.error = f"eager returns non-tensor outputs {odd}; an ONNX graph can only return tensors: {built.error}"
            built.error_kind = "outputs"
        if ep_built is not None and ep_built.error:
            built.notes.append(f"torch.export: {ep_built.error}")
            built.error_kind = ep_built.error_kind or kind
            built.location = built.location or ep_built.location
        return built
    proto = prog.model_proto
    mapping: dict[str, str] = {}
    for name, dims in onnx_tools.input_dims(proto).items():
        for axis, dim in enumerate(dims):
            g = sweep.group_of(name, axis)
            if isinstance(dim, str) and g is not None:
                mapping[dim] = g.name
    onnx_tools.rename_dims(proto, mapping)
    path = os.path.join(_tmpdir(ctx), "model.onnx")
    large = proto.ByteSize() > 1_800_000_000
    if large:  # protobuf's 2 GB limit: weights go to an external file
        onnx.save_model(proto, path, save_as_external_data=True, location="model.onnx.data")
        built.path = path
        built.size_bytes = os.path.getsize(path) + os.path.getsize(path + ".data")
        source: Any = path
    else:  # in memory: the file is written only for a repro bundle
        source = proto.SerializeToString()
        built.size_bytes = len(source)

        def write(data: bytes = source) -> str:
            with open(path, "wb") as fh:
                fh.write(data)
            return path

        built.extra["write"] = write
    try:
        onnx.checker.check_model(path if large else proto)
        built.extra["checker"] = "ok"
    except Exception as exc:
        built.seconds = time.perf_counter() - start
        built.error, built.error_kind = f"onnx.checker rejects the exported model: {trim_message(exc, 2, 300)}", "checker"
        return built
    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors come back as exceptions; do not print them too
    providers = _providers(ctx, ort)
    try:
        session = ort.InferenceSession(source, so, providers=providers)
    except Exception as exc:
        built.seconds = time.perf_counter() - start
        built.error, built.error_kind = f"ONNX Runtime cannot load the model: {trim_message(exc, 2, 300)}", "runtime"
        return built
    built.seconds = time.perf_counter() - start
    built.extra.update({"program": prog, "proto": proto, "providers": session.get_providers(), "dims": onnx_tools.input_dims(proto),
                        "ep_built": ep_built})
    graph_inputs = [i.name for i in session.get_inputs()]
    template = ctx.reference
    device = ctx.device

    def run(inputs: Any) -> Any:
        feeds_all = _to_numpy_inputs(inputs, sweep.names)
        ordered = list(feeds_all.values())
        feeds = {}
        for i, name in enumerate(graph_inputs):
            if name in feeds_all:
                feeds[name] = feeds_all[name]
            elif i < len(ordered):
                feeds[name] = ordered[i]
        outs = session.run(None, feeds)
        flat = [torch.from_numpy(o).to(device) for o in outs]
        return _rebuild_outputs(template, flat)

    built.run = run
    built.extra["feeds"] = lambda inputs: {n: v for n, v in zip(graph_inputs, _feeds_for(inputs, sweep, graph_inputs))}
    return built


def _feeds_for(inputs: Any, sweep: sw.Sweep, graph_inputs: list[str]) -> list[Any]:
    feeds_all = _to_numpy_inputs(inputs, sweep.names)
    ordered = list(feeds_all.values())
    return [feeds_all[n] if n in feeds_all else ordered[i] for i, n in enumerate(graph_inputs) if n in feeds_all or i < len(ordered)]


@register("onnx", family="export", title="ONNX model under ONNX Runtime equals eager at swept shapes and values",
          options=_COMMON_OPTIONS, order=62)
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
    sweep = get_sweep(ctx)
    built = ctx.cached("export:onnx", lambda: _build_onnx(ctx, sweep))
    if not built.ok:
        hint = {
            "data-dependent": "the ONNX exporter goes through torch.export: replace Python `if` on tensor values with torch.where / torch.cond",
            "constraint": "a dimension that must stay dynamic is pinned by the code: see the torch_export check for the line",
            "checker": "the exported graph is invalid: update onnx/onnxscript/torch, or report it with the exporter's message",
            "outputs": "return only tensors from forward (move strings, None and Python numbers to a wrapper outside the export)",
        }.get(built.error_kind or "", "read the exporter's message; torch.onnx.export(..., report=True) writes a full report")
        return _failed_build("onnx", "ONNX export", built, sweep, hint, ctx.model)
    outcome = sw.evaluate(ctx, sweep, built.run, artifact="ONNX model")
    ep_built: Built | None = built.extra.get("ep_built")
    sites = ep_built.extra.get("sites", {}) if ep_built is not None else {}
    findings = _judge_outcome(outcome, "ONNX model", sites)
    # the exporter can emit a static shape although dynamic shapes were asked for: read the graph
    dims = built.extra.get("dims", {})
    static_inputs: list[str] = []
    for g in sweep.groups:
        if not (g.dynamic or g.required):
            continue
        fixed = [(leaf, d) for leaf, d in g.refs if leaf in dims and d < len(dims[leaf]) and isinstance(dims[leaf][d], int)]
        if not fixed or not g.dynamic and not g.required:
            continue
        leaf, d = fixed[0]
        text = f"the ONNX graph fixes input `{leaf}` dim {d} at {dims[leaf][d]}"
        static_inputs.append(g.name)
        if g.required:
            if not any(text in f_ for f_ in findings.failures):
                findings.failures.append(f"{text} although it is {g.role} and must stay dynamic{_site_text(sites.get(g.name))}")
            site = sites.get(g.name)
            findings.blame(g.label, short_location(site["file"], site["line"]) if site else g.rejected_at)
    details = _details(sweep, outcome, built, "ONNX Runtime vs eager")
    details["onnx_input_dims"] = dims
    details["providers"] = built.extra.get("providers")
    metrics = _base_metrics(built, sweep, outcome)
    metrics["static_graph_inputs"] = ",".join(static_inputs) or "none"
    metrics["provider"] = (built.extra.get("providers") or ["?"])[0]
    hints: list[str] = list(findings.hints)
    hints.extend(_site_hints(sweep, [gv.group.name for gv in outcome.groups if gv.verdict in ("static", "partial", "wrong")], sites))
    if outcome.mismatches:
        case, folder = _counterexample(ctx, opts, sweep, outcome, built.run, "onnx", "onnx", built, details)
        div = _onnx_divergence(ctx, sweep, built, case, details)
        if div is not None:
            findings.culprit, findings.location = f"{div.label}" + (f" from {div.module}" if div.module else ""), div.location
            findings.failures.insert(0, div.describe())
            hints.append(f"the exported program agrees with eager; ONNX node {div.label} computes `{div.output}` differently"
                         + (f" (source {div.location} `{div.code}`)" if div.location else "")
                         + ": check the op's semantics in ONNX (tie-breaking, rounding, casting, NaN handling) or rewrite that line")
        elif "divergence" in details:
            hints.append(str(details["divergence"]))
        if folder:
            hints.append(f"repro bundle: {folder}")
    if any("must stay dynamic" in f_ for f_ in findings.failures):
        hints.append("the ONNX file cannot serve other sizes of a dimension that must stay dynamic; fix the line that pins it (see torch_export)")
    status = findings.status()
    details["failures"], details["warnings"] = findings.failures, findings.warnings
    _publish(ctx, "onnxruntime", "onnx", built, status, outcome, note=",".join(built.extra.get("providers") or []))
    return CheckResult(status=status, summary=_summary("ONNX model (ONNX Runtime)", findings, outcome, sweep), culprit=findings.culprit,
                       location=findings.location, hint="; ".join(dict.fromkeys(hints)) or None, metrics=metrics, details=details)


def _onnx_divergence(ctx: Context, sweep: sw.Sweep, built: Built, case: sw.SweepCase | None, details: dict[str, Any]) -> Any:
    """First diverging ONNX operator on the (shrunk) failing case, or None."""
    if case is None:
        return None
    try:
        import onnxruntime as ort

        from torch_diagnose import onnx_tools

        prog = built.extra["program"]
        ep = getattr(prog, "exported_program", None)
        if ep is None:
            details["divergence"] = "the ONNX program keeps no exported program: intermediate values cannot be matched"
            return None
        args, kwargs = as_args_kwargs(case.inputs)
        reference = onnx_tools.fx_values(ep, tuple(args), dict(kwargs))
        feeds = built.extra["feeds"](case.inputs)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        div = onnx_tools.first_divergence(built.extra["proto"], lambda b: ort.InferenceSession(b, so, providers=["CPUExecutionProvider"]),
                                          feeds, reference)
        if div is None:
            details["divergence"] = ("every intermediate ONNX value matches the exported program: the difference comes from the "
                                     "torch.export capture itself (see the torch_export check)")
            return None
        details["divergence"] = div.describe()
        details["divergence_table"] = div.table[:60]
        return div
    except Exception as exc:
        details["divergence_error"] = sw.first_line(exc)
        return None


# ---------------------------------------------------------------------------------------------
# torch.compile


class _LogGrab(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) not in self._seen:
            self._seen.add(id(record))
            self.records.append(record)


@contextlib.contextmanager
def _dynamo_logs() -> Iterator[_LogGrab]:
    """Collect graph-break and recompilation log records instead of printing them.

    torch's own handlers are taken off while the grab is on; `set_logs()` afterwards resets
    torch logging to what the environment (TORCH_LOGS) asks for.
    """
    from torch._logging import _internal

    grab = _LogGrab()
    hooked: list[logging.Logger] = []
    try:
        torch._logging.set_logs(graph_breaks=True, recompiles=True)
        loggers = [logging.getLogger("torch")] + [lg for name, lg in logging.root.manager.loggerDict.items()
                                                  if name.startswith("torch") and isinstance(lg, logging.Logger)]
        for lg in loggers:
            torch_handlers = [h for h in lg.handlers if _internal._is_torch_handler(h)]
            for h in torch_handlers:
                lg.removeHandler(h)
            if torch_handlers or lg.name == "torch":
                lg.addHandler(grab)
                hooked.append(lg)
    except Exception:
        pass
    try:
        yield grab
    finally:
        for lg in hooked:
            lg.removeHandler(grab)
        try:
            torch._logging.set_logs()
        except Exception:
            pass


def _parse_dynamo_records(records: list[logging.LogRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    breaks: list[dict[str, Any]] = []
    recompiles: list[dict[str, Any]] = []
    for r in records:
        try:
            msg = r.getMessage()
        except Exception:
            continue
        if "__graph_breaks" in r.name or msg.startswith("Graph break"):
            where = re.search(r"Graph break in user code at (\S+)", msg)
            reason = re.search(r"Graph Break Reason: (.+)", msg)
            explanation = re.search(r"Explanation: (.+)", msg)
            code = re.search(r'# File "[^"]+", line \d+, in \S+, code: (.+)', msg)
            entry = {"location": short_location(*where.group(1).rsplit(":", 1)) if where and ":" in where.group(1) else (where.group(1) if where else None),
                     "reason": reason.group(1).strip() if reason else msg.splitlines()[0][:200],
                     "explanation": explanation.group(1).strip()[:300] if explanation else "",
                     "code": code.group(1).strip() if code else ""}
            if entry not in breaks:
                breaks.append(entry)
        elif "__recompiles" in r.name or msg.startswith("Recompiling"):
            fn = re.search(r"Recompiling function (\S+) in (\S+)", msg)
            reasons = re.findall(r"- \d+/\d+: (.+)", msg)
            loc = fn.group(2) if fn else None
            if loc and ":" in loc:
                file, _, line = loc.rpartition(":")
                loc = short_location(file, int(line)) if line.isdigit() else loc
            recompiles.append({"function": fn.group(1) if fn else "?", "location": loc,
                               "reasons": reasons[:4] or [msg.splitlines()[-1][:200]]})
    return breaks, recompiles


@register(
    "torch_compile", family="export", title="torch.compile (dynamic shapes) equals eager; graph breaks and recompiles",
    options=(Option("backend", str, "inductor", "torch.compile backend (inductor, aot_eager, eager)"), *_COMMON_OPTIONS),
    order=63, default=False,
)
def torch_compile(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Opt-in (compiling is slow): `torch.compile(model, dynamic=True)` against eager over the shape and
    value sweep, counting compiled graphs, graph breaks (with their reasons and lines) and
    recompilations (with the guard that failed). Wrong numbers fail; graph breaks or
    recompilations at the swept shapes warn (each one costs latency in serving).
    """
    import torch._dynamo

    sweep = get_sweep(ctx)
    backend_name = str(opts.backend)
    graphs: list[Any] = []
    try:
        from torch._dynamo.backends.registry import lookup_backend

        inner = lookup_backend(backend_name)
    except Exception as exc:
        raise SkipCheck(f"torch.compile backend {backend_name!r} is not available: {sw.first_line(exc)}")

    def counting(gm: Any, example_inputs: Any) -> Any:
        graphs.append(gm)
        return inner(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(ctx.model, backend=counting, dynamic=True)
    built = Built("torch.compile", run=lambda inputs: call_model(compiled, inputs))
    start = time.perf_counter()
    try:
        with _dynamo_logs() as grab:
            outcome = sw.evaluate(ctx, sweep, built.run, artifact="compiled model")
    finally:
        built.seconds = time.perf_counter() - start
    breaks, recompiles = _parse_dynamo_records(grab.records)
    findings = _judge_outcome(outcome, "compiled model")
    if outcome.raised and len(outcome.raised) == len(outcome.results):
        findings.failures.insert(0, f"torch.compile fails: {outcome.raised[0].message}")
    if breaks:
        findings.warnings.append(f"{len(breaks)} graph break(s): " + "; ".join(f"{b['location']}: {b['reason']}" for b in breaks[:3]))
        file, line = _parse_location(breaks[0]["location"])
        findings.blame(_module_at(ctx.model, file, line) or breaks[0]["location"], breaks[0]["location"])
    if recompiles:
        findings.warnings.append(f"{len(recompiles)} recompilation(s): " + "; ".join(r["reasons"][0] for r in recompiles[:3]))
        m = re.search(r"tensor '([^']+)' size mismatch at index (\d+)", " ".join(r["reasons"][0] for r in recompiles))
        g = sweep.group_of(m.group(1), int(m.group(2))) if m else None
        if g is not None:
            findings.blame(g.label, recompiles[0]["location"])
        elif recompiles[0]["location"]:
            file, line = _parse_location(recompiles[0]["location"])
            findings.blame(_module_at(ctx.model, file, line + 1 if line else None) or recompiles[0]["location"], recompiles[0]["location"])
    details = _details(sweep, outcome, built, "torch.compile vs eager")
    details.update({"graph_breaks": breaks, "recompiles": recompiles, "backend": backend_name})
    metrics = _base_metrics(built, sweep, outcome)
    metrics.pop("export_s", None)
    metrics.update({"compile_and_sweep_s": round(built.seconds, 3), "graphs": len(graphs), "graph_breaks": len(breaks),
                    "recompiles": len(recompiles), "backend": backend_name})
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
    if outcome.mismatches:
        _, folder = _counterexample(ctx, opts, sweep, outcome, built.run, "torch_compile", "torch.compile", Built("torch.compile"), details)
        if folder:
            hints.append(f"repro bundle: {folder} (inputs and eager outputs; recompile the model to replay)")
    status = findings.status()
    details["failures"], details["warnings"] = findings.failures, findings.warnings
    _publish(ctx, "torch.compile", "torch_compile", built, status, outcome, note=backend_name)
    return CheckResult(status=status, summary=_summary(f"torch.compile ({backend_name})", findings, outcome, sweep),
                       culprit=findings.culprit, location=findings.location, hint="; ".join(hints) or None,
                       metrics=metrics, details=details)
