"""When `quantization` runs in a default run, and which int8 variants it builds there.

The check is registered as a default one, but what it costs and what it tells differ by model, so
in a run that did not name it the rule decides (a user who names it always gets every mode):

* the Target has `calibration` data: the user has said int8 matters, so both variants run;
* Linear/LSTM/GRU layers hold at least half the parameters: dynamic int8 only. It is cheap (one
  `quantize_dynamic`, one int8 forward, and the bounded latency timing: measured 1.1 s on a small
  MLP and 1.2 s on a GRU classifier on a loaded 2-core CPU, against 3.2 s with static) and it is
  the int8 such models ship with; static, with calibration synthesised from one example, would
  only warn that it was;
* otherwise (convnets: torchvision resnet18's one Linear holds 4% of its weights, so dynamic int8
  says nothing about it) the check is skipped quickly, saying how to select it. torchao is never
  imported then: it is imported only when static PT2E runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .flows import DYNAMIC_TYPES

CHECK_ID = "quantization"
#: Share of the parameters Linear/LSTM/GRU must hold for dynamic int8 to run by default.
MIN_DYNAMIC_SHARE = 0.5
SELECT = f"select it with --checks {CHECK_ID}"


@dataclass
class DefaultPlan:
    """What a run does with the check: the modes to build (empty: skip), and why."""

    modes: list[str]
    reason: str
    explicit: bool = False


def explicitly_selected(options: Any) -> bool:
    """The user named the check (`--checks quantization`, `--checks all`) or set one of its options
    (`-o quantization.NAME=...`); a family name or the default selection does not count."""
    named = {str(c).strip() for c in (getattr(options, "checks", None) or [])}
    given = (getattr(options, "option", None) or {}).get(CHECK_ID)
    return bool(named & {CHECK_ID, "all"}) or bool(given)


def dynamic_share(model: nn.Module) -> float:
    """Share of the parameters held by the layers `quantize_dynamic` converts (shared weights counted once)."""
    seen: set[int] = set()
    total = dynamic = 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if type(module) in DYNAMIC_TYPES:
                dynamic += p.numel()
    return dynamic / total if total else 0.0


def default_plan(options: Any, model: nn.Module, has_calibration: bool, modes: list[str]) -> DefaultPlan:
    """The rule (see the module docstring); `modes` are the check's `modes` option."""
    if explicitly_selected(options):
        return DefaultPlan(modes, "selected by name", explicit=True)
    if has_calibration:
        return DefaultPlan(modes, "the target has calibration data")
    share = dynamic_share(model)
    if share >= MIN_DYNAMIC_SHARE and "dynamic" in modes:
        return DefaultPlan(["dynamic"], f"Linear/LSTM/GRU hold {share:.0%} of the parameters")
    return DefaultPlan([], f"not run by default: Linear/LSTM/GRU hold {share:.0%} of the parameters "
                           f"(dynamic int8 runs by default from {MIN_DYNAMIC_SHARE:.0%}) and the target has no "
                           f"calibration data; {SELECT}")


def default_note(plan: DefaultPlan, modes: list[str]) -> str | None:
    """The note of a default run that built fewer modes than the check can, or None."""
    if plan.explicit or plan.modes == modes:
        return None
    left = [m for m in modes if m not in plan.modes]
    return (f"quantization ran by default ({plan.reason}): {', '.join(plan.modes)} int8 only; {', '.join(left)} int8 "
            f"needs Target.calibration to run by default, or {SELECT}")
