"""`eval_mode`: no module is left in training mode, and `.eval()` reaches every module."""
from __future__ import annotations

import collections
from typing import Any

import torch

from torch_diagnose.context import Context
from torch_diagnose.determinism.modes import mode_sensitive, owner_with_bad_train, train_frame
from torch_diagnose.locate import Culprit, module_label
from torch_diagnose.registry import CheckOptions, register
from torch_diagnose.results import CheckResult


def _listed(labels: list[str]) -> str:
    return ", ".join(labels[:5]) + (" ..." if len(labels) > 5 else "")


@register("eval_mode", family="determinism", title="no module is left in training mode", order=0)
def eval_mode(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Every module's `training` flag must be off for inference, and `.eval()` must reach every module.

    Looks at the model as it was handed over (before the tool calls `.eval()`), then calls
    `.eval()` and looks again: a module still training then has a `train()` override that does
    not propagate. Mode-sensitive modules (Dropout, BatchNorm, anything reading `self.training`)
    are listed first.
    """
    model = ctx.original_model
    handed_over = [name for name, training in ctx.initial_training.items() if training]
    modules = dict(model.named_modules())
    ctx.model  # switches to eval mode through the model's own train()
    after_eval = [name for name, module in model.named_modules() if module.training]
    metrics: dict[str, Any] = {
        "modules": len(modules),
        "training_at_handover": len(handed_over),
        "training_after_eval": len(after_eval),
    }

    def ordered(names: list[str]) -> list[str]:
        sensitive = [n for n in names if mode_sensitive(modules[n])]
        return sensitive + [n for n in names if n not in sensitive]

    def labels(names: list[str]) -> list[str]:
        return [module_label(n, modules[n]) for n in ordered(names)]

    if after_eval:
        return _still_training(model, modules, ordered(after_eval), labels(handed_over), metrics)
    if handed_over:
        return _handed_over_training(modules, ordered(handed_over), metrics)
    return CheckResult.passed(f"all {len(modules)} module(s) are in eval mode", metrics=metrics)


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
