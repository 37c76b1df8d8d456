"""`eval_mode`: no module is left in training mode, and `.eval()` reaches every module that runs."""
from __future__ import annotations

import collections
import re
from typing import Any

import torch

from torch_diagnose import fingerprint as fp
from torch_diagnose.context import Context
from torch_diagnose.determinism import FIRST_CALL_KEY
from torch_diagnose.determinism.modes import mode_sensitive, owner_with_bad_train, shadowed_trains, train_frame
from torch_diagnose.determinism.unregistered import RunningUnregistered, container_fix, training_unregistered
from torch_diagnose.locate import Culprit, module_label, raise_site
from torch_diagnose.registry import CheckOptions, register
from torch_diagnose.results import CheckResult
from torch_diagnose.text import one_line


def _listed(labels: list[str]) -> str:
    return ", ".join(labels[:5]) + (" ..." if len(labels) > 5 else "")


@register("eval_mode", family="determinism", title="no module is left in training mode", order=0)
def eval_mode(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Every module's `training` flag must be off for inference, and `.eval()` must reach every module that runs.

    Looks at the model as it was handed over (before the tool calls `.eval()`), then calls
    `.eval()` and looks again: a module still training then has a `train()` override that does
    not propagate, and a `train()` with another signature (a training loop shadowing
    `nn.Module.train(mode)`) or an `.eval()` that raises is reported as such. One forward (the
    shared reference run) with global module hooks then finds modules that run in training mode
    although the model does not register them (plain lists/dicts, created inside `forward`).
    Mode-sensitive modules (Dropout, BatchNorm, anything reading `self.training`) are listed first.
    """
    model = ctx.original_model
    handed_over = [name for name, training in ctx.initial_training.items() if training]
    modules = dict(model.named_modules())
    shadowed = shadowed_trains(model)
    eval_error, eval_exc = _switch_to_eval(ctx)
    after_eval = [name for name, module in model.named_modules() if module.training]
    running, run_error = _running_unregistered(ctx, model)
    # A stateless module that acts the same in both modes (`nn.ReLU()(x)` in DistilBERT's forward) loses nothing
    # to a missed `.eval()` or state_dict: said in the summary, never warned.
    harmless = [r for r in running if not mode_sensitive(r.module) and not _has_state(r.module)]
    running = [r for r in running if r not in harmless]
    metrics: dict[str, Any] = {
        "modules": len(modules),
        "training_at_handover": len(handed_over),
        "training_after_eval": len(after_eval),
        "unregistered_training": len(running),
    }

    def ordered(names: list[str]) -> list[str]:
        sensitive = [n for n in names if mode_sensitive(modules[n])]
        return sensitive + [n for n in names if n not in sensitive]

    if shadowed or eval_error is not None:
        return _broken_switch(modules, shadowed, (eval_error, eval_exc), ordered(after_eval), metrics)
    if after_eval:
        return _still_training(model, modules, ordered(after_eval),
                               [module_label(n, modules[n]) for n in ordered(handed_over)], metrics)
    if running:
        return _unregistered(model, running, metrics)
    if handed_over:
        return _handed_over_training(modules, ordered(handed_over), metrics)
    extra = f" (modules outside the model's registry not looked for: the forward raised {run_error})" if run_error else ""
    if harmless:
        extra += (f"; {_listed([r.label for r in harmless])} also ran in training mode, unregistered, but "
                  f"{'holds' if len(harmless) == 1 else 'hold'} no state and acts the same in eval mode")
    return CheckResult.passed(f"all {len(modules)} module(s) are in eval mode{extra}", metrics=metrics)


def _has_state(module: torch.nn.Module) -> bool:
    """Parameters or buffers anywhere inside: what a missed `.to()` or `state_dict()` would lose."""
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _switch_to_eval(ctx: Context) -> tuple[str | None, BaseException | None]:
    """Switch through the Context (the model's own `.eval()`). What `.eval()` raised, if anything: caught
    here, or reported by a Context that fell back to switching each module (its note, or `eval_error`)."""
    try:
        ctx.model  # noqa: B018 - switches to eval mode through the model's own train()
    except Exception as exc:
        return one_line(exc), exc
    kept = getattr(ctx, "eval_error", None)
    if kept is not None:
        return one_line(kept) if isinstance(kept, BaseException) else str(kept), kept if isinstance(kept, BaseException) else None
    for note in ctx.notes:
        found = _EVAL_RAISED.match(note)
        if found:
            return found.group(1), None
    return None, None


#: How the Context notes an `.eval()` that raised (it then switches each module itself).
_EVAL_RAISED = re.compile(r"model\.eval\(\) raised (.+?): (?:`|a train\(\) override)")


def _running_unregistered(ctx: Context, model: torch.nn.Module) -> tuple[list[RunningUnregistered], str | None]:
    """Modules that run in training mode though the model does not register them, seen in the reference forward."""
    def forward() -> Any:
        if ctx.has_cached("reference"):
            return ctx.forward()
        if ctx.stats.calls or not _state_mutation_selected(ctx):
            return ctx.reference
        # The reference is the model's first call: snapshot around it so state_mutation need not call it again.
        before = fp.snapshot(model)
        out = ctx.reference
        after = fp.snapshot(model)
        if before.cloned_bytes + after.cloned_bytes <= _SHARED_SNAPSHOT_BYTES:
            ctx.cached(FIRST_CALL_KEY, lambda: [before, after, ctx.stats.calls])
        return out

    try:
        return training_unregistered(model, forward), None
    except Exception as exc:  # the model's own failure: other checks report it
        return [], one_line(exc)


#: Snapshots shared with state_mutation stay in the Context until it runs: keep them small.
_SHARED_SNAPSHOT_BYTES = 64 << 20


def _state_mutation_selected(ctx: Context) -> bool:
    from torch_diagnose.registry import select_checks

    try:
        return any(spec.id == "state_mutation" for spec in select_checks(ctx.options.checks or None, ctx.options.skip or None))
    except Exception:  # an unknown name: the runner reports it
        return False


def _broken_switch(modules: dict[str, torch.nn.Module], shadowed: list[tuple[str, torch.nn.Module, str]],
                   raised: tuple[str | None, BaseException | None], still: list[str], metrics: dict[str, Any]) -> CheckResult:
    """`.eval()` cannot switch the model: a `train()` with another signature, or an `.eval()` that raises."""
    parts, culprit = [], None
    error, exc = raised
    if shadowed:
        name, module, signature = shadowed[0]
        frame = train_frame(module)
        where = f" ({frame.location})" if frame else ""
        culprit = Culprit.named(module_label(name, module) + ".train", frame=frame)
        parts.append(f"`{type(module).__name__}.{signature}`{where} shadows nn.Module.train(mode), which `.eval()` calls with False")
        hint = (f"`{type(module).__name__}.train` is not the mode switch: nn.Module.eval() and .train(mode) call `self.train(bool)`, "
                "and so does every library that switches modes: rename the training loop (e.g. `fit`) so `.eval()` reaches "
                "nn.Module.train(mode) again")
    else:
        override = next(((n, m) for n, m in modules.items() if type(m).train is not torch.nn.Module.train), None)
        site = raise_site(exc) if exc is not None else None
        if override is not None:
            culprit = Culprit.named(module_label(*override) + ".train", frame=site or train_frame(override[1]))
        else:
            culprit = Culprit.at(site, "model.eval()") if site is not None else Culprit.named("model.eval()")
        hint = "fix what raises in the model's `train()` so `model.eval()` switches every module: serving code calls it after loading"
    if error is not None:
        parts.insert(0, f"model.eval() raises {error}")
    labels = [module_label(n, modules[n]) for n in still]
    if still:
        parts.append(f"{len(still)} module(s) stay in training mode: {_listed(labels)}")
    else:
        parts.append(f"all {len(modules)} modules are in eval mode now")
    details = {"train_overrides": [{"module": module_label(n, m), "signature": s} for n, m, s in shadowed],
               "still_training_after_eval": labels}
    if error is not None:
        details["eval_error"] = error
    make = CheckResult.failed if still else CheckResult.warned
    return make("; ".join(parts), culprit=culprit, hint=hint, metrics=metrics, details=details)


def _unregistered(model: torch.nn.Module, running: list[RunningUnregistered], metrics: dict[str, Any]) -> CheckResult:
    """Modules run in training mode that `.eval()` cannot reach: held in plain containers or created in forward."""
    sensitive = [r for r in running if mode_sensitive(r.module)]
    ordered = sensitive + [r for r in running if r not in sensitive]
    first = ordered[0]
    labels = [r.label for r in ordered]
    if first.held is not None:
        hint = (f"{container_fix(first.held)}; `.eval()`, `.to()`, `state_dict()` and `parameters()` only reach registered "
                "submodules, so these also miss every checkpoint and device move")
    else:
        hint = ("a module created inside `forward` starts in training mode on every call: create it in `__init__` "
                "(so `.eval()` reaches it), or use the functional form with `training=self.training`")
    details = {"unregistered_training": [
        {"module": r.label, "held_in": r.held.path if r.held else "created inside forward",
         "run_at": r.frame.location if r.frame else None} for r in ordered]}
    text = f"{len(running)} module(s) run in training mode although the model does not register them, so `.eval()` never reaches them"
    if sensitive:
        return CheckResult.failed(f"{text}: {_listed(labels)}", culprit=first.culprit(model), hint=hint,
                                  metrics=metrics, details=details)
    return CheckResult.warned(f"{text} (none behaves differently in training mode): {_listed(labels)}",
                              culprit=first.culprit(model), hint=hint, metrics=metrics, details=details)


def _still_training(model: torch.nn.Module, modules: dict[str, torch.nn.Module], names: list[str],
                    handed_over: list[str], metrics: dict[str, Any]) -> CheckResult:
    """Modules training after `model.eval()`: a `train()` override that does not propagate the mode."""
    labels = [module_label(n, modules[n]) for n in names]
    owner = owner_with_bad_train(model, names[0])
    if owner is not None:
        owner_text = f"`{type(owner[1]).__name__}.train()` (module `{owner[0] or '<root>'}`)"
        frame = train_frame(owner[1])
        culprit = Culprit.named(module_label(*owner) + ".train", frame=frame)  # the override is to blame
    else:
        owner_text = "a `train()` override"
        culprit = Culprit.module(names[0], modules[names[0]])
    return CheckResult.failed(
        f"{len(names)} module(s) stay in training mode even after model.eval(): {_listed(labels)}",
        culprit=culprit,
        hint=f"{owner_text} does not propagate the mode to its children: call `super().train(mode)` "
        f"(or `for m in self.children(): m.train(mode)`) and return self",
        metrics=metrics,
        details={"still_training_after_eval": labels, "training_at_handover": handed_over},
    )


def _handed_over_training(modules: dict[str, torch.nn.Module], names: list[str], metrics: dict[str, Any]) -> CheckResult:
    """Modules in training mode as handed over: the whole model (one fix), or submodules set back to training."""
    sensitive = [n for n in names if mode_sensitive(modules[n])]
    first = names[0]
    kinds = collections.Counter(type(modules[n]).__name__ for n in sensitive)
    kind_text = ", ".join(f"{count} {name}" for name, count in kinds.most_common(4)) or "none changes behaviour"
    details = {"training_modules": [module_label(n, modules[n]) for n in names],
               "mode_sensitive": [module_label(n, modules[n]) for n in sensitive]}
    if "" in names:  # the whole model: one cause, one fix
        return CheckResult.failed(
            f"the model was handed over in training mode: {len(names)} of {len(modules)} modules train "
            f"(mode-sensitive: {kind_text})",
            culprit=Culprit.module("", modules[""]),
            hint="call `model.eval()` after loading the model and before serving it; torchvision builders and "
            "freshly constructed modules start in training mode",
            metrics=metrics, details=details,
        )
    return CheckResult.failed(
        f"{len(names)} of {len(modules)} modules are in training mode (mode-sensitive: {kind_text}): "
        + _listed(details["training_modules"]),
        culprit=Culprit.module(first, modules[first]),
        hint=f"module `{first}` ({type(modules[first]).__name__}) is in training mode although the model is not: a `.train()` "
        "call on a submodule set it back; call `model.eval()` last, after any such call",
        metrics=metrics, details=details,
    )
