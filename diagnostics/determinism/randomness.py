"""What makes two runs of the same input differ: a random op (named with its module and line), or
else the first module whose output differs although its input did not."""
from __future__ import annotations

from typing import Any

import torch

from ..context import Context
from ..locate import Culprit
from ..locate.divergence import Divergence, first_divergence
from ..locate.hooks import ModuleRecorder
from ..locate.spy import OpEvent, OpSpy, is_random_op


def _random_op_hint(event: OpEvent, module: torch.nn.Module) -> str:
    name = event.module or "<root>"
    op = event.op.replace("aten.", "")
    code = f" (`{event.code}`)" if event.code else ""
    if isinstance(module, torch.nn.modules.dropout._DropoutNd) or (module.training and "dropout" in op):
        return (f"module `{name}` ({type(module).__name__}) is in training mode during inference: call `.eval()` "
                f"after loading, or fix the `train()` override that keeps it training")
    if "dropout" in op:
        return f"`{name}.{event.function or 'forward'}` calls dropout with training=True{code}; pass `training=self.training`"
    return (f"`{name}.{event.function or 'forward'}` draws random numbers with `{op}`{code}: "
            "guard it with `if self.training:` or remove it from inference")


def _pick(events: list[OpEvent], div: Divergence | None) -> OpEvent | None:
    """The random op raised inside the divergent module (or its children), else the first one."""
    if not events:
        return None
    if div is not None:
        base = div.name.split("#")[0]
        inside = (e for e in events if not base or e.module == base or e.module.startswith(base + "."))
        return next(inside, events[0])
    return events[0]


def localise_randomness(ctx: Context, seeds: tuple[int, int]) -> tuple[Culprit | None, str, dict[str, Any]]:
    """Find what makes two runs differ: (culprit, hint, details).

    First an operator spy names random ops (dropout, randn_like, ...) with the module and line
    that called them; then two hooked runs name the first module whose output differs although
    its input did not (catches randomness that no random op reveals, e.g. numpy or Python RNG).
    """
    model = ctx.model
    with torch.inference_mode(), OpSpy(model, is_random_op) as spy:
        torch.manual_seed(seeds[0])
        ctx.forward()
    recs = []
    for seed in seeds:
        torch.manual_seed(seed)
        with ModuleRecorder(model) as rec:
            ctx.forward()
        recs.append(rec)
    div = first_divergence(recs[0], recs[1])
    details: dict[str, Any] = {"random_ops": [
        {"op": e.op, "module": e.module or "<root>", "module_type": e.module_type, "location": e.location or "", "code": e.code}
        for e in spy.events
    ]}
    if div is not None:
        details["first_divergent_module"] = div.label
    event = _pick(spy.events, div)
    if event is not None:
        module = model.get_submodule(event.module) if event.module else model
        return event.culprit, _random_op_hint(event, module), details
    if div is not None:
        return div.culprit, (f"module `{div.name or '<root>'}` ({div.module_type}) gives different outputs for the same input: "
                             "look for Python/NumPy randomness, uninitialised memory (torch.empty) or state kept between calls"), details
    return None, "the difference appears outside any module's forward hooks: check code around the model call", details
