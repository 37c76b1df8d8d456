"""`golden`: the model's outputs on recorded inputs must match a recording (`__golden__/...`).

Measure: today's outputs on the recorded inputs, weight digests, environment. Judge: within the
comparison core's calibrated fp32 tolerances. Explain: the outputs that moved and by how much, the
weights that changed, the first module whose output moved (per-module fingerprints) and what
changed in the environment (torch version, device, threads).
"""
from __future__ import annotations

import shlex
from typing import Any

from torch_diagnose import golden as store
from torch_diagnose.context import Context
from torch_diagnose.inputs import to_device
from torch_diagnose.locate.culprit import Culprit
from torch_diagnose.regression import changes, fingerprints
from torch_diagnose.regression.state import key_owner, module_culprit
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import ERROR, CheckResult, SkipCheck
from torch_diagnose.text import one_line

DEFAULT_DIR = "__golden__"


@register(
    "golden",
    family="regression",
    title="outputs match the recorded golden outputs",
    order=20,
    options=(
        Option("dir", str, DEFAULT_DIR, "folder that holds the recordings"),
        Option("name", str, "", "recording name inside dir (default: <target name>/golden)"),
        Option("update", bool, False, "record (or re-record) instead of comparing (pytest: --golden-update)"),
        Option("record_command", str, "", "the command shown when nothing is recorded (the pytest plugin sets it)"),
    ),
)
def golden(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Did this model change? Its outputs on the recorded inputs must match the recording.

    Record with `-o golden.update=true` (pytest: `--golden-update`); a run with nothing recorded
    skips and prints the command that records. Files: `<dir>/<name>.pt` (inputs, outputs, weight
    digests, module fingerprints; read back with weights_only=True) and `<name>.env.json` beside
    it (torch version, device, threads ...). Outputs are compared with the fp32 tolerances the
    comparison core calibrates against fp64 (or --atol/--rtol). A failure names the outputs that
    moved and by how much, the weights that changed, the first module whose output moved and what
    changed in the environment since recording.
    """
    if ctx.target.example_inputs is None:
        raise SkipCheck("the target has no example inputs to record")
    key = opts.name or f"{store.safe_name(ctx.target.name)}/golden"
    where = store.golden_paths(opts.dir, key)
    command = _record_command(ctx, opts)
    if opts["update"]:  # `opts.update` would be dict.update
        replaced = None
        if where.exists:
            try:
                replaced = store.load(where).environment.get("recorded_at") or "earlier"
            except store.GoldenError:
                replaced = "an unreadable file"
        return _record(ctx, where, replaced)
    if not where.exists:
        raise SkipCheck(f"nothing recorded at {where.data}; record with: {command}")
    try:
        recording = store.load(where)
    except store.GoldenError as exc:
        return CheckResult(status=ERROR, summary=str(exc), hint=f"re-record with: {command}",
                           details={"recording": str(where.data)})
    return _compare(ctx, recording, where, command)


def _record_command(ctx: Context, opts: CheckOptions) -> str:
    """The exact command that records for this target (the pytest plugin passes its own)."""
    if opts.record_command:
        return opts.record_command
    source = ctx.target.source
    extra = ""
    if opts.dir != DEFAULT_DIR:
        extra += f" -o golden.dir={shlex.quote(opts.dir)}"
    if opts.name:
        extra += f" -o golden.name={shlex.quote(opts.name)}"
    if not source or source.startswith("<"):
        args = "".join(f", {k}={v!r}" for k, v in (("dir", opts.dir), ("name", opts.name)) if v and (k != "dir" or v != DEFAULT_DIR))
        return f'run_check("golden", target, update=True{args})'
    return f"diagnose {shlex.quote(source)} --checks golden -o golden.update=true{extra}"


def _record(ctx: Context, where: store.GoldenPaths, replaced: str | None) -> CheckResult:
    inputs = ctx.inputs
    outputs, modules = fingerprints.run_with_module_prints(ctx.model, lambda: ctx.forward(inputs))
    leaves = store.storable_leaves(outputs)
    weights = fingerprints.weights_fingerprint(ctx.model)
    target = {"name": ctx.target.name, "source": ctx.target.source,
              "model_class": f"{type(ctx.model).__module__}.{type(ctx.model).__qualname__}"}
    recording = store.Recording(inputs=inputs, outputs=leaves, weights=weights, modules=modules, target=target,
                                environment=changes.environment_now(ctx.device))
    size = store.save(where, recording)
    summary = (f"recorded {len(leaves)} output(s), {len(weights)} weight fingerprint(s) and {len(modules)} module "
               f"fingerprint(s) to {where.data}")
    if replaced:
        summary += f" (replacing the recording from {replaced})"
    return CheckResult.passed(summary, metrics={"recorded": True, "outputs_recorded": len(leaves), "weights_recorded": len(weights),
                                                "modules_recorded": len(modules), "recording_bytes": size},
                              details={"recording": str(where.data), "environment_file": str(where.env)})


def _compare(ctx: Context, recording: store.Recording, where: store.GoldenPaths, command: str) -> CheckResult:
    env_changes = changes.diff_environment(recording.environment, changes.environment_now(ctx.device))
    weight_changes = changes.diff_weights(recording.weights, fingerprints.weights_fingerprint(ctx.model))
    inputs = to_device(recording.inputs, ctx.device)
    details: dict[str, Any] = {"recording": str(where.data), "recorded_at": recording.environment.get("recorded_at"),
                               "environment_changed": [{"key": k, "recorded": a, "now": b} for k, a, b in env_changes]}
    note = changes.inputs_changed(recording.inputs, ctx.inputs)
    if note:
        details["inputs_note"] = f"{note}; the comparison ran on the recorded inputs"
    try:
        outputs = ctx.forward(inputs)
    except Exception as exc:
        return CheckResult.failed(
            f"the model no longer runs on the recorded inputs: {one_line(exc)}", culprit=module_culprit(ctx.model, ""),
            hint=f"the model's interface changed since recording; if that is intended, re-record with: {command}",
            metrics={"weights_changed": len(weight_changes), "environment_changed": len(env_changes)}, details=details)
    comparison = changes.compare_outputs(outputs, recording, ctx.tolerances())
    moved = [leaf for leaf in comparison.leaves if not leaf.passed]
    metrics: dict[str, Any] = {"outputs_compared": len(comparison.leaves), "outputs_moved": len(moved),
                               **comparison.metrics(), "weights_changed": len(weight_changes),
                               "environment_changed": len(env_changes)}
    details["outputs"] = [_leaf_row(leaf) for leaf in comparison.leaves]
    if weight_changes:
        details["weights_changed"] = [c.row() for c in weight_changes]
    when = recording.environment.get("recorded_at", "an earlier run")
    if not moved:
        summary = f"{len(comparison.leaves)} output(s) match the recording from {when} ({comparison.describe()})"
        if env_changes:
            summary += f"; environment changed since: {_env_text(env_changes)}"
        if not weight_changes:
            return CheckResult.passed(summary, metrics=metrics, details=details)
        # Same outputs from different weights: worth knowing, not a failure.
        return CheckResult.warned(
            f"{summary}; but {len(weight_changes)} weight tensor(s) differ from the recording ({weight_changes[0].describe()})",
            metrics=metrics, details=details,
            hint=f"the outputs did not move on the recorded inputs although weights did; if the new weights are intended, re-record with: {command}")
    summary = f"{len(moved)} of {len(comparison.leaves)} output(s) moved since the recording from {when}: " + \
        "; ".join(_moved_text(leaf) for leaf in moved[:3]) + (" ..." if len(moved) > 3 else "")
    if weight_changes:
        summary += f"; {len(weight_changes)} weight tensor(s) changed"
    if env_changes:
        summary += f"; environment changed: {_env_text(env_changes)}"
    culprit, hint = _explain_move(ctx, recording, inputs, weight_changes, env_changes, moved, command, details)
    return CheckResult.failed(summary, culprit=culprit, hint=hint, metrics=metrics, details=details)


def _env_text(env_changes: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    return ", ".join(f"{k} {a} -> {b}" for k, a, b in env_changes[:limit]) + (" ..." if len(env_changes) > limit else "")


def _leaf_row(leaf: Any) -> dict[str, Any]:
    row = {"output": leaf.name, "moved": not leaf.passed, "kind": leaf.kind}
    if leaf.kind == "tensor":
        row.update(max_abs=leaf.max_abs, max_rel=leaf.max_rel, rms_rel=leaf.rms_rel, cosine=leaf.cosine,
                   frac_outside=leaf.frac_outside, rtol=leaf.rtol, atol=leaf.atol)
        if leaf.top1_agreement is not None:
            row["top1_agreement"] = leaf.top1_agreement
    if leaf.message:
        row["message"] = leaf.message
    return row


def _moved_text(leaf: Any) -> str:
    if leaf.kind != "tensor":
        return f"`{leaf.name}` {leaf.message}"
    text = f"`{leaf.name}` max abs diff {leaf.max_abs:.3g} ({100 * leaf.frac_outside:.3g}% of elements outside rtol={leaf.rtol:.3g}, atol={leaf.atol:.3g}"
    if leaf.top1_agreement is not None and leaf.top1_agreement < 1:
        text += f", top-1 agreement {leaf.top1_agreement:.3g}"
    return text + ")"


def _explain_move(ctx: Context, recording: store.Recording, inputs: Any, weight_changes: list[changes.WeightChange],
                  env_changes: list[tuple[str, Any, Any]], moved: list[Any], command: str,
                  details: dict[str, Any]) -> tuple[Culprit, str]:
    """Culprit and hint: changed structure first, then changed weights, then the first module whose output moved."""
    structural = [leaf for leaf in moved if leaf.kind in ("missing", "extra", "mismatch")]
    if structural:
        leaf = structural[0]
        return (Culprit.named(f"output `{leaf.name}`"),
                f"the outputs changed shape or structure since recording ({leaf.message}); if intended, re-record with: {command}")
    if weight_changes:
        shown = ", ".join(c.describe() for c in weight_changes[:4]) + (" ..." if len(weight_changes) > 4 else "")
        return key_owner(ctx.model, weight_changes[0].key), (
            f"{len(weight_changes)} of {len(recording.weights)} weight tensors differ from the recording ({shown}). If the "
            f"weights come from a checkpoint, check that the right file is loaded, with load_state_dict(strict=True) "
            f"and without key prefixes such as `module.` or `_orig_mod.`; if the new weights are intended, re-record with: {command}")
    divergence = None
    if recording.modules:
        _, current = fingerprints.run_with_module_prints(ctx.model, lambda: ctx.forward(inputs))
        rtol, atol = fingerprints.fingerprint_tolerance(recording.outputs)
        divergence = fingerprints.first_moved_module(recording.modules, current, rtol=rtol, atol=atol)
    if divergence is not None:
        details["first_moved_module"] = {"module": divergence.label, "inputs_unchanged": divergence.input_equal}
        culprit = module_culprit(ctx.model, divergence.name, divergence.module_type)
        where = f"`{culprit.name or '<root>'}` ({divergence.module_type}" + (f", {culprit.location})" if culprit.location else ")")
    else:
        worst = max(moved, key=lambda leaf: leaf.rms_rel)
        culprit, where = Culprit.named(f"output `{worst.name}`"), "the model"
    if env_changes:
        return culprit, (f"the weights are the recorded ones but the environment changed ({_env_text(env_changes)}); the first "
                         f"output to move is from {where}: a kernel or library change. If the new numbers are acceptable, "
                         f"re-record with: {command}; otherwise pin the recorded versions")
    return culprit, (f"the weights, inputs and environment are the recorded ones, yet the outputs moved from {where} on: its "
                     f"code changed since recording, or it is not deterministic (run the determinism check). If the "
                     f"change is intended, re-record with: {command}")
