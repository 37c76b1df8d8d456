"""`weights_roundtrip`: the state_dict saved with torch.save, read back with weights_only=True and
loaded strictly into a fresh model from `Target.factory`, must give bitwise identical outputs.

Measure: the round trip and the fresh model's outputs. Judge: keys that do not load fail; outputs
that differ fail (warn when only within fp32 tolerance). Explain: the missing, unexpected and
mis-shaped keys and their module, or the state kept outside the state_dict (plain tensor
attributes, non-persistent buffers) or the first module whose output differs.
"""
from __future__ import annotations

import io
from typing import Any

import torch

from torch_diagnose.compare import Comparison, compare
from torch_diagnose.context import Context
from torch_diagnose.determinism.unregistered import assignment_frame, container_fix
from torch_diagnose.locate import Culprit
from torch_diagnose.locate.divergence import first_divergence
from torch_diagnose.locate.hooks import ModuleRecorder
from torch_diagnose.regression.state import (KeyProblems, fresh_model, hidden_state, key_owner, key_problems, module_culprit,
                                            LostState, unregistered_state)
from torch_diagnose.registry import CheckOptions, register
from torch_diagnose.results import CheckResult, SkipCheck
from torch_diagnose.text import format_bytes, one_line


@register("weights_roundtrip", family="regression",
          title="the state_dict round trip into a fresh model gives identical outputs", order=21)
def weights_roundtrip(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Were the weights loaded right? Save the model's state_dict, load it strictly into a fresh one.

    The state_dict is written with torch.save, read back with weights_only=True (safe loading) and
    loaded with strict=True into a fresh model from `Target.factory` (skipped when the target has
    none). Missing, unexpected and mis-shaped keys are named; then the fresh model must give
    bitwise identical outputs. When it does not, weights held by unregistered modules (layers in a
    plain list or dict), state kept outside the state_dict (plain tensor attributes, non-persistent
    buffers, numbers) or the first module whose output differs is named.
    """
    if ctx.target.factory is None:
        raise SkipCheck("the target has no factory (Target.factory: a zero-argument callable that builds a fresh model), "
                        "so there is no fresh model to load the weights into; load targets from a file.py:factory spec or pass factory=")
    model = ctx.model
    ctx.reference  # noqa: B018 - run the model once first: state some models create in their first forward must be saved too
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
        return CheckResult.failed(
            f"the saved state_dict cannot be read back with weights_only=True: {one_line(exc, with_type=False)}",
            culprit=key_owner(model, odd[0]) if odd else module_culprit(model, ""), metrics=metrics, details={"non_tensor_entries": odd},
            hint="keep only tensors and plain values in the state_dict (get_extra_state), or allow-list the class with "
                 "torch.serialization.add_safe_globals so the weights load without running pickled code")
    fresh = fresh_model(ctx.target.factory, ctx.options.seed)
    if fresh is model or fresh is ctx.original_model:
        raise SkipCheck("Target.factory returned the served model object itself, not a fresh one")
    fresh.eval()
    if ctx.device is not None and ctx.device.type != "cpu":
        fresh.to(ctx.device)
    problems = key_problems(loaded, fresh.state_dict())
    metrics.update(missing_keys=len(problems.missing), unexpected_keys=len(problems.unexpected), misshaped_keys=len(problems.misshaped))
    if problems:
        return _key_failure(model, fresh, problems, metrics)
    try:
        fresh.load_state_dict(loaded, strict=True)
    except Exception as exc:
        return CheckResult.failed(f"load_state_dict(strict=True) into a fresh model raised {one_line(exc)}",
                                  culprit=module_culprit(fresh, ""), metrics=metrics,
                                  hint="a custom _load_from_state_dict or load_state_dict hook rejects the model's own state: fix it so save and load are inverse")
    outputs = ctx.forward(model=fresh)
    exact = compare(outputs, ctx.reference, rtol=0.0, atol=0.0)
    metrics.update(exact.metrics())
    if exact.passed:
        return CheckResult.passed(f"{len(state)} state_dict entries ({format_bytes(size)}) saved, read back safely and loaded "
                                  f"strictly into a fresh model: outputs bitwise identical", metrics=metrics)
    return _different_outputs(ctx, fresh, outputs, exact, metrics)


def _key_failure(model: torch.nn.Module, fresh: torch.nn.Module, problems: KeyProblems, metrics: dict[str, Any]) -> CheckResult:
    """The saved keys do not load into the fresh model: name them, their module and the likely cause."""
    missing, unexpected, misshaped = problems.missing, problems.unexpected, problems.misshaped
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''})")
    if misshaped:
        shown = ", ".join(f"{m['key']} saved {m['saved']} vs fresh {m['fresh_model']}" for m in misshaped[:3])
        parts.append(f"{len(misshaped)} mis-shaped ({shown}{' ...' if len(misshaped) > 3 else ''})")
    key = problems.first_key
    hints = []
    prefix = problems.wrapper_prefix()
    if prefix:
        hints.append(f"every unexpected key starts with `{prefix}`: the served model is wrapped (DataParallel, torch.compile, "
                     f"a wrapper module) while the factory builds the bare model; save the inner model's state_dict, or strip "
                     f"`{prefix}` from the keys before load_state_dict")
    if misshaped:
        hints.append("mis-shaped keys: the factory builds the model with another configuration (num_classes, widths) "
                     "than the served one, e.g. a head replaced after construction: build the served architecture in the factory")
    if unexpected and not prefix:
        hints.append("unexpected keys: the served model holds parameters or buffers the factory's model does not create "
                     "(added after construction or during forward): create them in __init__")
    if missing and not prefix:
        hints.append("missing keys: the factory's model has parameters the served model lacks (extra layers, another "
                     "variant): loading with strict=False would leave them at their random initial values")
    return CheckResult.failed(
        f"the saved state_dict does not load strictly into a fresh model from the factory: {'; '.join(parts)}",
        culprit=key_owner(fresh if key in missing else model, key), hint="; ".join(hints), metrics=metrics,
        details={"missing_keys": missing, "unexpected_keys": unexpected, "misshaped_keys": misshaped})


def _different_outputs(ctx: Context, fresh: torch.nn.Module, outputs: Any, exact: Comparison, metrics: dict[str, Any]) -> CheckResult:
    """Same weights, different outputs: state outside the state_dict, else the first module that differs."""
    model = ctx.model
    close = compare(outputs, ctx.reference, leaf_tolerances=ctx.tolerances() or None)
    hidden = hidden_state(model, fresh)
    lost = unregistered_state(model)
    details: dict[str, Any] = {"hidden_state": [h.row() for h in hidden], "difference": exact.describe()}
    if lost:
        details["unregistered_state"] = [item.row() for item in lost]
        culprit, hint = _lost_explanation(model, lost)
    elif hidden:
        h = hidden[0]
        culprit = module_culprit(model, h.name)
        hint = (f"`{h.attribute}` of {h.label} is a {h.kind} the state_dict does not carry, and it differs in a "
                f"fresh model: register it with register_buffer('{h.attribute}', ...) (persistent) or compute it "
                f"deterministically in __init__, or a model loaded from its checkpoint will not reproduce these outputs")
    else:
        with ModuleRecorder(model, record_inputs=True) as rec_a:
            ctx.forward()
        with ModuleRecorder(fresh, record_inputs=True) as rec_b:
            ctx.forward(model=fresh)
        div = first_divergence(rec_b, rec_a)
        culprit = module_culprit(model, div.name, div.module_type) if div else module_culprit(model, "")
        hint = (f"{culprit.label} gives different outputs with the same loaded weights: it keeps state outside the state_dict "
                f"(Python attributes, caches, RNG) or the factory builds it differently (memory format, compiled wrapper)")
    cause = (f"; the state_dict lacks the weights of {', '.join(i.label for i in lost[:4])}{' ...' if len(lost) > 4 else ''}, "
             "which the model holds without registering them" if lost else "")
    if close.passed:
        summary = f"a fresh model loaded with the saved state_dict agrees only within fp32 tolerance, not bitwise (max abs diff {exact.max_abs:.3g})"
        return CheckResult.warned(summary + cause, culprit=culprit, hint=hint, metrics=metrics, details=details)
    return CheckResult.failed(f"a fresh model loaded with the saved state_dict gives different outputs ({exact.describe()}){cause}",
                              culprit=culprit, hint=hint, metrics=metrics, details=details)


def _lost_explanation(model: torch.nn.Module, lost: list[LostState]) -> tuple[Culprit, str]:
    """Weights held by unregistered modules (or Parameters in plain containers): named where they are assigned."""
    first = lost[0].holder
    holder = model.get_submodule(first.holder) if first.holder else model
    frame = assignment_frame(holder, first.attribute)
    is_module = isinstance(lost[0].obj, torch.nn.Module)
    culprit = Culprit.module(lost[0].path, lost[0].obj, frame) if is_module else Culprit.named(lost[0].label, "state", frame)
    fix = container_fix(first)
    if not is_module:
        fix = fix.replace("nn.ModuleList", "nn.ParameterList").replace("nn.ModuleDict", "nn.ParameterDict")
    total = sum(item.numel for item in lost)
    return culprit, (f"the state_dict does not carry {len(lost)} unregistered holder(s) of weights "
                     f"({', '.join(i.label for i in lost[:4])}; {total} elements): a checkpoint loses them and a model "
                     f"loaded from it runs with fresh random values; {fix}")
