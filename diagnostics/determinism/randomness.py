"""What makes two runs of the same input differ: a draw of random numbers (an aten op random with
its actual arguments, or Python / NumPy RNG), named with its module and line; else the first
module whose output differs although its input did not."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..context import Context
from ..locate import Culprit, Frame
from ..locate.divergence import Divergence, first_divergence, recorded_divergence
from ..locate.spy import OpEvent, RandomSpy
from .unregistered import container_fix, holdings


def _where(event: OpEvent) -> str:
    return f"`{event.module or '<root>'}.{event.function or 'forward'}`"


def _code(event: OpEvent) -> str:
    return f" (`{event.code}`)" if event.code else ""


def _host_hint(event: OpEvent) -> str:
    lib = "NumPy's" if event.op.startswith("numpy.") else "Python's"
    return (f"{_where(event)} draws random numbers with {lib} `{event.op}`{_code(event)} during inference: torch.manual_seed "
            "does not seed it, so every call differs; remove it from inference or guard it with `if self.training:`")


def _attention_hint(event: OpEvent) -> str:
    p = event.note or "dropout_p > 0"
    return (f"{_where(event)} calls scaled_dot_product_attention with {p} at inference{_code(event)}: attention dropout "
            "runs whatever the module's mode; pass `dropout_p=self.dropout if self.training else 0.0`")


def _explain(model: torch.nn.Module, event: OpEvent, running: torch.nn.Module | None) -> tuple[Culprit, str]:
    """Culprit and hint for one random draw: a host RNG, attention dropout, a module left (or held) in
    training mode, a functional dropout with training=True, or another random op."""
    op = event.op.replace("aten.", "")
    module = model.get_submodule(event.module) if event.module else model
    if event.op.startswith(("random.", "numpy.")):
        return event.culprit, _host_hint(event)
    if "scaled_dot_product" in op or "attention" in op or "scaled_dot_product_attention" in (event.code or ""):
        return event.culprit, _attention_hint(event)
    registered = {id(m) for m in model.modules()}
    if running is not None and id(running) not in registered and running.training:
        held = holdings(model).modules.get(id(running))
        kind = type(running).__name__
        if held is not None:
            culprit = Culprit.module(held.path, running, _frame(event))
            return culprit, (f"`{held.path}` ({kind}) runs in training mode: `.eval()` never reaches it because it is not a "
                             f"registered submodule; {container_fix(held)}")
        return event.culprit, (f"a {kind} created inside {_where(event)}{_code(event)} starts in training mode on every call: "
                               f"create it in `__init__` so `.eval()` reaches it, or call the functional form with "
                               f"`training=self.training`")
    if running is not None and running.training and "dropout" in op:
        module = running
    if module.training and ("dropout" in op or "rrelu" in op):
        return event.culprit, (f"module `{event.module or '<root>'}` ({type(module).__name__}) is in training mode during inference: "
                               "call `.eval()` after loading, or fix the `train()` override that keeps it training")
    if "dropout" in op:
        return event.culprit, f"{_where(event)} calls dropout with training=True{_code(event)}; pass `training=self.training`"
    return event.culprit, (f"{_where(event)} draws random numbers with `{op}`{_code(event)}: "
                           "guard it with `if self.training:` or remove it from inference")


def _frame(event: OpEvent) -> Frame | None:
    return Frame(event.file, event.line or 0, event.function or "", event.code or "") if event.file else None


def _pick(events: list[OpEvent], div: Divergence | None) -> int | None:
    """The random draw inside the divergent module (or its children), else the first one."""
    if not events:
        return None
    if div is not None:
        base = div.name.split("#")[0]
        inside = (i for i, e in enumerate(events) if not base or e.module == base or e.module.startswith(base + "."))
        return next(inside, 0)
    return 0


def localise_randomness(ctx: Context, seeds: tuple[int, int]) -> tuple[Culprit | None, str, dict[str, Any]]:
    """Find what makes two runs differ: (culprit, hint, details).

    First a spy names each draw of random numbers with the module and line that made it: aten ops
    random with their actual arguments (dropout with train=True, attention with dropout_p > 0, randn_like...)
    and Python `random` / NumPy calls; then two hooked runs name the first module whose output differs
    although its input did not (randomness no spy sees, uninitialised memory, state kept between calls).
    """
    model = ctx.model
    with torch.inference_mode(), RandomSpy(model) as spy:
        torch.manual_seed(seeds[0])
        ctx.forward()

    def seeded(seed: int) -> Callable[[], Any]:
        def call() -> Any:
            torch.manual_seed(seed)
            return ctx.forward()
        return call

    div, unrecorded = recorded_divergence(model, seeded(seeds[0]), seeded(seeds[1]), first_divergence)
    details: dict[str, Any] = {"random_ops": [
        {"op": e.op, "module": e.module or "<root>", "module_type": e.module_type, "location": e.location or "", "code": e.code,
         **({"arguments": e.note} if e.note else {})}
        for e in spy.events
    ]}
    if div is not None:
        details["first_divergent_module"] = div.label
    if unrecorded:
        details["localisation"] = unrecorded
    index = _pick(spy.events, div)
    if index is not None:
        culprit, hint = _explain(model, spy.events[index], spy.modules[index])
        return culprit, hint, details
    if div is not None:
        return div.culprit, (f"module `{div.name or '<root>'}` ({div.module_type}) gives different outputs for the same input: "
                             "look for uninitialised memory (torch.empty), state kept between calls, or randomness in "
                             "native extensions"), details
    return None, "the difference appears outside any module's forward hooks: check code around the model call", details
