"""Model state a forward changes, in words: which entry, how, the line that changes it, and what to do."""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..locate.code import LIBRARY
from .. import fingerprint as fp
from ..context import Context
from ..locate import Culprit, Frame
from ..locate.culprit import STATE
from ..locate.source import submodule
from .modes import bn_training_hint
from .source import is_model_class, user_first

_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
#: What follows `self.<attr>` on a line that mutates it: a mutating method call, an item assignment, an (augmented) assignment.
_MUTATION = (r"(?:\.(?:append|extend|insert|add|update|setdefault|pop|popitem|clear|remove|discard|appendleft|\w+_)\("
             r"|\[[^\]]*\]\s*[-+*/|&@]?=(?!=)|\s*[-+*/|&@]?=(?!=))")
#: `self.scales, self.map_levels = ...`: one target of several (a statement that starts with its targets).
_TARGETS = r"^(?:self(?:\.\w+)+\s*,\s*)*self(?:\.\w+)*\.{attr}\s*(?:,\s*self(?:\.\w+)+\s*)*=(?!=)"
_SKIP_METHODS = {"__init__", "train", "eval", "reset_parameters", "extra_repr", "_load_from_state_dict", "__repr__"}


def _candidate_classes(model: torch.nn.Module, owner: str) -> list[type]:
    """The owner's class and its ancestors' first, then every other class in the model."""
    parts = owner.split(".") if owner else []
    classes: list[type] = []
    for depth in range(len(parts), -1, -1):
        module = submodule(model, ".".join(parts[:depth]))
        if module is not None and type(module) not in classes:
            classes.append(type(module))
    for _, module in model.named_modules():
        if type(module) not in classes:
            classes.append(type(module))
    return user_first(classes)


def mutation_site(model: torch.nn.Module, owner: str, attr: str) -> Frame | None:
    """The line of the model's code that mutates `attr`; `function` is `Class.method`."""
    pattern = re.compile(rf"\bself(?:\.\w+)*\.{re.escape(attr)}\b{_MUTATION}|{_TARGETS.format(attr=re.escape(attr))}")
    for cls in _candidate_classes(model, owner):
        methods = [(n, f) for n, f in vars(cls).items() if inspect.isfunction(f) and n not in _SKIP_METHODS]
        methods.sort(key=lambda item: item[0] != "forward")
        for name, func in methods:
            try:
                lines, start = inspect.getsourcelines(func)
                file = inspect.getsourcefile(func)
            except (OSError, TypeError):
                continue
            for offset, text in enumerate(lines):
                code = text.split("  #")[0].strip()
                if pattern.search(code) and not code.startswith("#"):
                    return Frame(file or "", start + offset, f"{cls.__name__}.{name}", code)
    return None


@dataclass
class Finding:
    """One mutated piece of state, as the user should read it."""

    path: str
    culprit: Culprit
    description: str
    per_call: bool
    hint: str
    kind: str = ""
    type_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "culprit": self.culprit.label, "kind": self.kind, "type": self.type_name,
                "change": self.description, "every_call": self.per_call, "location": self.culprit.location, "hint": self.hint}


def _bn_finding(model: torch.nn.Module, ch: fp.Change, module: torch.nn.Module, changes: list[fp.Change], per_call: bool) -> Finding:
    """BatchNorm statistics, grouped per module and traced to the training mode that updates them."""
    parts = [f"{c.attr} {c.description}" for c in changes if c.owner == ch.owner and c.attr in _BN_STATS]
    if module.training:
        effect = "every forward updates its running statistics and normalises with the batch's own statistics"
        hint, frame = bn_training_hint(model, ch.owner, module, effect)
    else:
        hint, frame = (f"module `{ch.owner}` ({type(module).__name__}) updates its running statistics although it is in eval mode: "
                       "its forward (or a caller) uses F.batch_norm(..., training=True) or momentum tricks; pass `training=self.training`"), None
    return Finding(ch.owner, Culprit.module(ch.owner, module, frame), "running statistics updated: " + "; ".join(parts),
                   per_call, hint, "buffer", type(module).__name__)


def _state_hint(ch: fp.Change, site: Frame | None, desc: str, per_call: bool) -> str:
    where = f"`{site.function}` (`{site.code}`)" if site else "forward"
    what = ch.kind if ch.kind in ("parameter", "buffer") else ch.type_name or "attribute"
    if not per_call and site is not None and site.owner == LIBRARY:
        return (f"`{ch.path}` was filled on the first call by {site.library} library code ({site.location}) and left alone "
                f"afterwards ({desc}): a lazily built cache that depends only on shapes is harmless; nothing to change in your code")
    if not per_call:
        return (f"`{ch.path}` was filled on the first call and left alone afterwards ({desc}): a lazily built cache is fine if it depends "
                f"only on shapes or constants, not on input values; build it in `__init__` to make the model stateless")
    if ch.change in ("grew", "items", "added") and ch.kind == "attribute":
        return (f"{where} adds to `{ch.path}` on every call ({desc}): memory grows without bound in serving and any result read "
                "back from it depends on call history; keep per-call values in local variables, or bound the cache and clear it outside forward")
    if ch.kind == "parameter":
        return (f"{where} modifies parameter `{ch.path}` in place on every call ({desc}): weights drift with traffic; "
                "compute the modified weight in a local variable instead")
    return (f"{where} changes {what} `{ch.path}` on every call ({desc}): outputs that read it drift with traffic and replicas "
            "disagree; compute it per call instead of storing it on the module (or move the counter out of the model)")


def findings(model: torch.nn.Module, changes: list[fp.Change], per_call: bool, calls: int) -> list[Finding]:
    """Turn raw fingerprint changes into findings: BatchNorm statistics grouped per module, hints in words."""
    out: list[Finding] = []
    bn_done: set[str] = set()
    for ch in changes:
        owner = submodule(model, ch.owner)
        if isinstance(owner, torch.nn.modules.batchnorm._BatchNorm) and ch.attr in _BN_STATS:
            if ch.owner not in bn_done:
                bn_done.add(ch.owner)
                out.append(_bn_finding(model, ch, owner, changes, per_call))
            continue
        site = mutation_site(model, ch.owner, ch.attr) if is_model_class(owner) or ch.kind == "attribute" else None
        what = ch.kind if ch.kind in ("parameter", "buffer") else ch.type_name or "attribute"
        desc = ch.description + (f" over {calls} calls" if ch.change in ("grew", "shrank") else "")
        culprit = Culprit.named(f"{ch.path} ({what})", STATE, site)
        out.append(Finding(ch.path, culprit, desc, per_call, _state_hint(ch, site, desc, per_call), ch.kind, ch.type_name))
    return out


def state_change_culprit(ctx: Context) -> Finding | None:
    """After a repeat-run difference: does forward change state between calls? (one extra call)"""
    model = ctx.model
    before = fp.snapshot(model)
    ctx.forward()
    found = findings(model, fp.diff(before, fp.snapshot(model)), True, 1)
    return found[0] if found else None
