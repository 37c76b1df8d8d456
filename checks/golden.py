"""Regression family: did this model change since it was recorded, and do its weights load right?

Checks here:
* `golden`: the model's outputs on recorded inputs must match a recording (`__golden__/...`), within
  the comparison core's calibrated fp32 tolerances. A failure names the outputs that moved and by
  how much, the weights that changed (per-tensor digests), the first module whose output moved
  (per-module fingerprints) and what changed in the environment (torch version, device, threads).
* `weights_roundtrip`: the `state_dict` saved with torch.save, read back with weights_only=True and
  loaded strictly into a fresh model from `Target.factory`, must give bitwise identical outputs.
  Missing, unexpected and mis-shaped keys are named, and state kept outside the state_dict
  (plain tensor attributes, non-persistent buffers) is found when the outputs differ.

They are two checks, not one: they answer different questions, need different things (a recording
vs a factory) and fail for different reasons; either runs without the other.
"""
from __future__ import annotations

import inspect
import io
import os
import shlex
from typing import Any

import torch

from torch_diagnose import golden as store
from torch_diagnose.compare import compare
from torch_diagnose.context import Context
from torch_diagnose.errors import TargetError
from torch_diagnose.inputs import to_device
from torch_diagnose.probe import ModuleRecorder, first_divergence, module_label
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import ERROR, FAIL, PASS, WARN, CheckResult, SkipCheck

from ._hints import short_location

DEFAULT_DIR = "__golden__"


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


def _module_location(module: torch.nn.Module | None) -> str | None:
    if module is None:
        return None
    try:
        forward = type(module).forward
        file = inspect.getsourcefile(forward)
        line = inspect.getsourcelines(forward)[1]
    except (OSError, TypeError):
        return None
    if not file or os.sep + "site-packages" + os.sep in file or file.startswith(os.path.dirname(torch.__file__)):
        return None  # a library module: its source says nothing about the user's model
    return short_location(file, line) or None


def _submodule(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    name = name.split("#", 1)[0]
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def _environment_now(ctx: Context) -> dict[str, Any]:
    from torch_diagnose.environment import environment

    env = environment(ctx.device)
    env["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    try:
        from importlib.metadata import version

        env["torch_diagnose"] = version("torch-diagnose")
    except Exception:
        pass
    return env


def _record(ctx: Context, where: store.GoldenPaths, replaced: str | None) -> CheckResult:
    inputs = ctx.inputs
    outputs, modules = store.run_with_module_prints(ctx.model, lambda: ctx.forward(inputs))
    leaves = store.storable_leaves(outputs)
    weights = store.weights_fingerprint(ctx.model)
    target = {"name": ctx.target.name, "source": ctx.target.source,
              "model_class": f"{type(ctx.model).__module__}.{type(ctx.model).__qualname__}"}
    recording = store.Recording(inputs=inputs, outputs=leaves, weights=weights, modules=modules, target=target,
                                environment=_environment_now(ctx))
    size = store.save(where, recording)
    summary = (f"recorded {len(leaves)} output(s), {len(weights)} weight fingerprint(s) and {len(modules)} module "
               f"fingerprint(s) to {where.data}")
    if replaced:
        summary += f" (replacing the recording from {replaced})"
    return CheckResult(status=PASS, summary=summary,
                       metrics={"recorded": True, "outputs_recorded": len(leaves), "weights_recorded": len(weights),
                                "modules_recorded": len(modules), "recording_bytes": size},
                       details={"recording": str(where.data), "environment_file": str(where.env)})


def _env_text(changes: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    return ", ".join(f"{k} {a} -> {b}" for k, a, b in changes[:limit]) + (" ..." if len(changes) > limit else "")


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


def _compare(ctx: Context, recording: store.Recording, where: store.GoldenPaths, command: str) -> CheckResult:
    env_now = _environment_now(ctx)
    env_changes = store.diff_environment(recording.environment, env_now)
    weight_changes = store.diff_weights(recording.weights, store.weights_fingerprint(ctx.model))
    inputs = to_device(recording.inputs, ctx.device)
    details: dict[str, Any] = {"recording": str(where.data), "recorded_at": recording.environment.get("recorded_at"),
                               "environment_changed": [{"key": k, "recorded": a, "now": b} for k, a, b in env_changes]}
    note = store.inputs_changed(recording.inputs, ctx.inputs)
    if note:
        details["inputs_note"] = f"{note}; the comparison ran on the recorded inputs"
    try:
        outputs = ctx.forward(inputs)
    except Exception as exc:
        return CheckResult(
            status=FAIL, summary=f"the model no longer runs on the recorded inputs: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
            culprit=module_label("", ctx.model), hint=f"the model's interface changed since recording; if that is intended, re-record with: {command}",
            metrics={"weights_changed": len(weight_changes), "environment_changed": len(env_changes)}, details=details)
    comparison = store.compare_outputs(outputs, recording, ctx.tolerances())
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
        status = PASS
        hint = None
        if weight_changes:  # same outputs from different weights: worth knowing, not a failure
            status = WARN
            summary += f"; but {len(weight_changes)} weight tensor(s) differ from the recording ({weight_changes[0].describe()})"
            hint = f"the outputs did not move on the recorded inputs although weights did; if the new weights are intended, re-record with: {command}"
        return CheckResult(status=status, summary=summary, metrics=metrics, details=details, hint=hint)

    worst = comparison.worst
    assert worst is not None
    moved_text = "; ".join(_moved_text(leaf) for leaf in moved[:3]) + (" ..." if len(moved) > 3 else "")
    summary = f"{len(moved)} of {len(comparison.leaves)} output(s) moved since the recording from {when}: {moved_text}"
    if weight_changes:
        summary += f"; {len(weight_changes)} weight tensor(s) changed"
    if env_changes:
        summary += f"; environment changed: {_env_text(env_changes)}"
    culprit, location, hint = _explain_move(ctx, recording, inputs, weight_changes, env_changes, moved, command, details)
    return CheckResult(status=FAIL, summary=summary, culprit=culprit, location=location, hint=hint, metrics=metrics, details=details)


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


def _explain_move(ctx: Context, recording: store.Recording, inputs: Any, weight_changes: list[store.WeightChange],
                  env_changes: list[tuple[str, Any, Any]], moved: list[Any], command: str,
                  details: dict[str, Any]) -> tuple[str, str | None, str]:
    """Culprit, location and hint: changed weights first, then the first module whose output moved."""
    structural = [leaf for leaf in moved if leaf.kind in ("missing", "extra", "mismatch")]
    if structural:
        leaf = structural[0]
        return (f"output `{leaf.name}`", None,
                f"the outputs changed shape or structure since recording ({leaf.message}); if intended, re-record with: {command}")
    if weight_changes:
        first = weight_changes[0]
        name, module = store.owner_of(ctx.model, first.key)
        shown = ", ".join(c.describe() for c in weight_changes[:4]) + (" ..." if len(weight_changes) > 4 else "")
        hint = (f"{len(weight_changes)} of {len(recording.weights)} weight tensors differ from the recording ({shown}). If the "
                f"weights come from a checkpoint, check that the right file is loaded, with load_state_dict(strict=True) "
                f"and without key prefixes such as `module.` or `_orig_mod.`; if the new weights are intended, re-record with: {command}")
        return module_label(name, module), _module_location(module), hint
    divergence = None
    if recording.modules:
        _, current = store.run_with_module_prints(ctx.model, lambda: ctx.forward(inputs))
        rtol, atol = store.fingerprint_tolerance(recording.outputs)
        divergence = store.first_moved_module(recording.modules, current, rtol=rtol, atol=atol)
        if divergence is not None:
            details["first_moved_module"] = {"module": divergence.label, "inputs_unchanged": divergence.input_equal}
    if divergence is not None:
        module = _submodule(ctx.model, divergence.name)
        culprit = divergence.label
        location = _module_location(module)
        where = f"`{divergence.name or '<root>'}` ({divergence.module_type}" + (f", {location})" if location else ")")
    else:
        worst = max(moved, key=lambda leaf: leaf.rms_rel)
        culprit, location, where = f"output `{worst.name}`", None, "the model"
    if env_changes:
        hint = (f"the weights are the recorded ones but the environment changed ({_env_text(env_changes)}); the first "
                f"output to move is from {where}: a kernel or library change. If the new numbers are acceptable, "
                f"re-record with: {command}; otherwise pin the recorded versions")
    else:
        hint = (f"the weights, inputs and environment are the recorded ones, yet the outputs moved from {where} on: its "
                f"code changed since recording, or it is not deterministic (run the determinism check). If the "
                f"change is intended, re-record with: {command}")
    return culprit, location, hint


# ---------------------------------------------------------------------------------------------
# Weights round trip


def _fresh_model(ctx: Context) -> torch.nn.Module:
    from torch_diagnose.target import Target

    factory = ctx.target.factory
    assert factory is not None
    with torch.random.fork_rng(devices=[]):
        # A fresh process has another RNG state: a model whose outputs depend on state outside the
        # state_dict must not pass just because the factory ran under the same seed.
        torch.manual_seed(ctx.options.seed + 7919)
        try:
            obj = factory()
        except Exception as exc:
            raise TargetError(f"Target.factory raised {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Target):
        obj = obj.model
    elif isinstance(obj, tuple) and obj and isinstance(obj[0], torch.nn.Module):
        obj = obj[0]
    if not isinstance(obj, torch.nn.Module):
        raise TargetError(f"Target.factory returned a {type(obj).__name__}; it must return an nn.Module, (module, inputs) or a Target")
    return obj


def _key_problems(saved: dict[str, Any], fresh: dict[str, Any]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    missing = [k for k in fresh if k not in saved]
    unexpected = [k for k in saved if k not in fresh]
    misshaped = []
    for key, value in saved.items():
        other = fresh.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.shape != other.shape:
            misshaped.append({"key": key, "saved": tuple(value.shape), "fresh_model": tuple(other.shape)})
    return missing, unexpected, misshaped


def _common_prefix_hint(unexpected: list[str], missing: list[str]) -> str | None:
    for prefix in ("module.", "_orig_mod.", "model."):
        if unexpected and all(k.startswith(prefix) for k in unexpected) and any(k[len(prefix):] in missing for k in unexpected):
            return (f"every unexpected key starts with `{prefix}`: the served model is wrapped (DataParallel, torch.compile, "
                    f"a wrapper module) while the factory builds the bare model; save the inner model's state_dict, or strip "
                    f"`{prefix}` from the keys before load_state_dict")
    return None


def _key_failure(model: torch.nn.Module, fresh: torch.nn.Module, missing: list[str], unexpected: list[str],
                 misshaped: list[dict[str, Any]], metrics: dict[str, Any]) -> CheckResult:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''})")
    if misshaped:
        shown = ", ".join(f"{m['key']} saved {m['saved']} vs fresh {m['fresh_model']}" for m in misshaped[:3])
        parts.append(f"{len(misshaped)} mis-shaped ({shown}{' ...' if len(misshaped) > 3 else ''})")
    first_key = (misshaped[0]["key"] if misshaped else None) or (unexpected[0] if unexpected else missing[0])
    owner_model = fresh if first_key in missing else model
    name, module = store.owner_of(owner_model, first_key)
    hints = []
    prefix = _common_prefix_hint(unexpected, missing)
    if prefix:
        hints.append(prefix)
    if misshaped:
        hints.append("mis-shaped keys: the factory builds the model with another configuration (num_classes, widths) "
                     "than the served one, e.g. a head replaced after construction: build the served architecture in the factory")
    if unexpected and not prefix:
        hints.append("unexpected keys: the served model holds parameters or buffers the factory's model does not create "
                     "(added after construction or during forward): create them in __init__")
    if missing and not prefix:
        hints.append("missing keys: the factory's model has parameters the served model lacks (extra layers, another "
                     "variant): loading with strict=False would leave them at their random initial values")
    return CheckResult(
        status=FAIL,
        summary=f"the saved state_dict does not load strictly into a fresh model from the factory: {'; '.join(parts)}",
        culprit=module_label(name, module), location=_module_location(module), hint="; ".join(hints), metrics=metrics,
        details={"missing_keys": missing, "unexpected_keys": unexpected, "misshaped_keys": misshaped},
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach().cpu(), b.detach().cpu()))
    return type(a) is type(b) and a == b


def hidden_state(original: torch.nn.Module, fresh: torch.nn.Module) -> list[dict[str, Any]]:
    """Tensors and numbers kept outside the state_dict (plain attributes, non-persistent buffers)
    whose values differ between the served model and a fresh one with the same state loaded."""
    rows = []
    fresh_modules = dict(fresh.named_modules())
    for name, module in original.named_modules():
        other = fresh_modules.get(name)
        if other is None:
            continue
        for buf in sorted(getattr(module, "_non_persistent_buffers_set", ())):
            a, b = module._buffers.get(buf), other._buffers.get(buf)
            if a is not None and not _same(a, b):
                rows.append({"module": module_label(name, module), "attribute": buf, "kind": "non-persistent buffer"})
        other_vars = vars(other)
        for attr, value in vars(module).items():
            if attr.startswith("__") or attr in ("training",):
                continue
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                kind = "tensor attribute"
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                kind = "number attribute"
            else:
                continue
            if attr not in other_vars or not _same(value, other_vars[attr]):
                rows.append({"module": module_label(name, module), "attribute": attr, "kind": kind})
    return rows


@register("weights_roundtrip", family="regression",
          title="the state_dict round trip into a fresh model gives identical outputs", order=21)
def weights_roundtrip(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Were the weights loaded right? Save the model's state_dict, load it strictly into a fresh one.

    The state_dict is written with torch.save, read back with weights_only=True (safe loading) and
    loaded with strict=True into a fresh model from `Target.factory` (skipped when the target has
    none). Missing, unexpected and mis-shaped keys are named; then the fresh model must give
    bitwise identical outputs. When it does not, state kept outside the state_dict (plain tensor
    attributes, non-persistent buffers, numbers) or the first module whose output differs is named.
    """
    if ctx.target.factory is None:
        raise SkipCheck("the target has no factory (Target.factory: a zero-argument callable that builds a fresh model), "
                        "so there is no fresh model to load the weights into; load targets from a file.py:factory spec or pass factory=")
    model = ctx.model
    ctx.reference  # run the model once first: state some models create in their first forward must be saved too
    state = model.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    size = buffer.tell()
    buffer.seek(0)
    metrics: dict[str, Any] = {"state_entries": len(state), "state_bytes": size}
    try:
        loaded = torch.load(buffer, map_location=ctx.device, weights_only=True)
    except Exception as exc:
        odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        name, module = store.owner_of(model, odd[0]) if odd else ("", model)
        return CheckResult(
            status=FAIL, summary=f"the saved state_dict cannot be read back with weights_only=True: {str(exc).splitlines()[0][:300]}",
            culprit=module_label(name, module), metrics=metrics, details={"non_tensor_entries": odd},
            hint="keep only tensors and plain values in the state_dict (get_extra_state), or allow-list the class with "
                 "torch.serialization.add_safe_globals so the weights load without running pickled code")
    fresh = _fresh_model(ctx)
    if fresh is model or fresh is ctx.original_model:
        raise SkipCheck("Target.factory returned the served model object itself, not a fresh one")
    fresh.eval()
    if ctx.device is not None and ctx.device.type != "cpu":
        fresh.to(ctx.device)
    missing, unexpected, misshaped = _key_problems(loaded, fresh.state_dict())
    metrics.update(missing_keys=len(missing), unexpected_keys=len(unexpected), misshaped_keys=len(misshaped))
    if missing or unexpected or misshaped:
        return _key_failure(model, fresh, missing, unexpected, misshaped, metrics)
    try:
        fresh.load_state_dict(loaded, strict=True)
    except Exception as exc:
        return CheckResult(status=FAIL, summary=f"load_state_dict(strict=True) into a fresh model raised {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                           culprit=module_label("", fresh), metrics=metrics,
                           hint="a custom _load_from_state_dict or load_state_dict hook rejects the model's own state: fix it so save and load are inverse")
    reference = ctx.reference
    outputs = ctx.forward(model=fresh)
    exact = compare(outputs, reference, rtol=0.0, atol=0.0)
    metrics.update(exact.metrics())
    if exact.passed:
        return CheckResult(status=PASS, metrics=metrics,
                           summary=f"{len(state)} state_dict entries ({size / 1e6:.3g} MB) saved, read back safely and loaded "
                                   f"strictly into a fresh model: outputs bitwise identical")
    close = compare(outputs, reference, leaf_tolerances=ctx.tolerances() or None)
    hidden = hidden_state(model, fresh)
    details: dict[str, Any] = {"hidden_state": hidden, "difference": exact.describe()}
    if hidden:
        row = hidden[0]
        module = _submodule(model, row["module"].split(" (")[0].replace("<root>", ""))
        culprit, location = row["module"], _module_location(module)
        hint = (f"`{row['attribute']}` of {row['module']} is a {row['kind']} the state_dict does not carry, and it differs in a "
                f"fresh model: register it with register_buffer('{row['attribute']}', ...) (persistent) or compute it "
                f"deterministically in __init__, or a model loaded from its checkpoint will not reproduce these outputs")
    else:
        with ModuleRecorder(model, record_inputs=True) as rec_a:
            ctx.forward()
        with ModuleRecorder(fresh, record_inputs=True) as rec_b:
            ctx.forward(model=fresh)
        div = first_divergence(rec_b, rec_a)
        culprit = div.label if div else module_label("", model)
        module = _submodule(model, div.name) if div else model
        location = _module_location(module)
        hint = (f"{culprit} gives different outputs with the same loaded weights: it keeps state outside the state_dict "
                f"(Python attributes, caches, RNG) or the factory builds it differently (memory format, compiled wrapper)")
    status = WARN if close.passed else FAIL
    summary = (f"a fresh model loaded with the saved state_dict gives different outputs ({exact.describe()})"
               if status == FAIL else
               f"a fresh model loaded with the saved state_dict agrees only within fp32 tolerance, not bitwise (max abs diff {exact.max_abs:.3g})")
    return CheckResult(status=status, summary=summary, culprit=culprit, location=location, hint=hint, metrics=metrics, details=details)
