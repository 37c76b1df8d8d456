"""Modules the model uses but does not register: held in a plain Python list, dict, tuple or helper
object, or created inside `forward`. `.eval()`, `.to()`, `state_dict()` and `parameters()` walk
registered submodules only, so these stay in training mode and are missing from every checkpoint.

* `holdings(model)`            — every unregistered module (and Parameter) reachable from the model's
  attributes, with the attribute path that holds it (`drops[0]`, `block.heads['cls']`).
* `training_unregistered(...)` — the unregistered modules that run in training mode during a forward
  (global module hooks), named by that path or as created inside `forward`.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..locate import Culprit, Frame, current_frame, module_label
from ..locate.hooks import GlobalModuleStack, ModuleStack
from ..locate.source import function_frame

#: How far the attribute search goes, and how many objects it looks at: models hold configs,
#: tokenizers and vocabularies in plain attributes.
_MAX_DEPTH, _MAX_OBJECTS = 6, 50_000
_LEAVES = (str, bytes, int, float, complex, bool, type(None), type, torch.Tensor, torch.dtype, torch.device)
_MODULE_INTERNALS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"})


@dataclass
class Held:
    """An unregistered module or Parameter and where the model holds it."""

    path: str  # "drops[0]", "block.layers[1].0"
    obj: Any
    holder: str  # the registered module whose attribute holds it ("" = the root)
    attribute: str  # that attribute ("drops")
    container: str  # "list", "tuple", "dict", "object" (a helper object's attribute), "attribute" (set around nn.Module)
    top: bool  # not inside another unregistered module

    @property
    def label(self) -> str:
        return module_label(self.path, self.obj)


@dataclass
class Holdings:
    modules: dict[int, Held]
    parameters: list[Held]


def holdings(model: torch.nn.Module) -> Holdings:
    """Every module not registered in `model` (and Parameter outside a module's `_parameters`) that its
    attributes reach through lists, tuples, dicts and plain objects, with the path that holds it."""
    registered = {id(m) for m in model.modules()}
    registered_tensors = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    found = Holdings({}, [])
    seen: set[int] = set()
    budget = [_MAX_OBJECTS]

    def visit(obj: Any, path: str, where: tuple[str, str, str], depth: int, top: bool) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_DEPTH or id(obj) in seen:
            return
        if isinstance(obj, torch.nn.Parameter):
            if id(obj) in registered_tensors:
                return
            seen.add(id(obj))
            found.parameters.append(Held(path, obj, *where, top))
            return
        if isinstance(obj, _LEAVES) or inspect.isroutine(obj) or inspect.ismodule(obj):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            if id(obj) in registered:
                return
            found.modules[id(obj)] = Held(path, obj, *where, top)
            for sub_name, sub in obj.named_modules():
                if sub_name and id(sub) not in found.modules:
                    found.modules[id(sub)] = Held(f"{path}.{sub_name}", sub, *where, False)
            _visit_attributes(obj, path, where, depth, visit, inner=True)
        elif isinstance(obj, (list, tuple)):
            where = where if where[2] != "attribute" else (where[0], where[1], type(obj).__name__)
            for i, item in enumerate(obj):
                visit(item, f"{path}[{i}]", where, depth + 1, top)
        elif isinstance(obj, dict):
            where = where if where[2] != "attribute" else (where[0], where[1], "dict")
            for key, item in list(obj.items()):
                visit(item, f"{path}[{key!r}]", where, depth + 1, top)
        elif hasattr(obj, "__dict__") and not type(obj).__module__.startswith("torch"):
            where = where if where[2] != "attribute" else (where[0], where[1], "object")
            try:
                attributes = list(vars(obj).items())
            except TypeError:  # a __dict__ that is not a mapping
                return
            for attr, item in attributes:
                visit(item, f"{path}.{attr}", where, depth + 1, top)

    for name, module in model.named_modules():
        _visit_attributes(module, name, None, 0, visit, inner=False)
    return found


def _visit_attributes(module: torch.nn.Module, path: str, where: tuple[str, str, str] | None, depth: int,
                      visit: Callable[..., None], *, inner: bool) -> None:
    """A module's own attributes, past what nn.Module registers (parameters, buffers, submodules, hooks)."""
    for attr, value in list(vars(module).items()):
        if attr in _MODULE_INTERNALS or "hook" in attr or attr.startswith("__"):
            continue
        here = where or (path, attr, "attribute")
        visit(value, f"{path}.{attr}" if path else attr, here, depth + 1, not inner)


def assignment_frame(holder: torch.nn.Module, attribute: str) -> Frame | None:
    """The line in the holder's class that assigns `self.<attribute> = ...` (usually in `__init__`)."""
    cls_frame = function_frame(type(holder))
    if cls_frame is None:
        return None
    try:
        lines, start = inspect.getsourcelines(type(holder))
    except (OSError, TypeError):
        return None
    pattern = re.compile(rf"\bself\.{re.escape(attribute)}\s*(:[^=]*)?=[^=]")
    for offset, text in enumerate(lines):
        if pattern.search(text):
            return Frame(cls_frame.file, start + offset, "__init__", text.strip())
    return None


@dataclass
class RunningUnregistered:
    """An unregistered module that ran in training mode during a forward."""

    module: torch.nn.Module
    held: Held | None  # None: created inside forward (no attribute holds it)
    caller: str  # the registered module whose forward ran it
    frame: Frame | None  # the line that ran it

    @property
    def label(self) -> str:
        if self.held is not None:
            return self.held.label
        return f"{type(self.module).__name__} created inside `{self.caller or '<root>'}.forward`"

    def culprit(self, model: torch.nn.Module) -> Culprit:
        if self.held is None:
            return Culprit.module(self.caller, _submodule_type(model, self.caller), self.frame)
        holder = model.get_submodule(self.held.holder) if self.held.holder else model
        return Culprit.module(self.held.path, self.module, assignment_frame(holder, self.held.attribute) or self.frame)


def _submodule_type(model: torch.nn.Module, name: str) -> str:
    try:
        return type(model.get_submodule(name) if name else model).__name__
    except AttributeError:
        return type(model).__name__


def training_unregistered(model: torch.nn.Module, forward: Callable[[], Any]) -> list[RunningUnregistered]:
    """Run `forward()` with global module hooks; every module that runs in training mode although
    `model.modules()` does not list it, with the path that holds it (or None: created in forward)."""
    registered = {id(m) for m in model.modules()}
    caught: dict[int, RunningUnregistered] = {}
    stack = ModuleStack(model)

    def on_enter(module: torch.nn.Module) -> None:
        if module.training and id(module) not in registered and id(module) not in caught:
            caught[id(module)] = RunningUnregistered(module, None, stack.current[0], current_frame())

    with stack, GlobalModuleStack(on_enter):
        forward()
    if caught:
        held = holdings(model).modules
        for key, running in caught.items():
            running.held = held.get(key)
    return list(caught.values())


def container_fix(held: Held) -> str:
    """How to register what a plain container holds."""
    owner = f"`{held.holder}.{held.attribute}`" if held.holder else f"`self.{held.attribute}`"
    if held.container == "dict":
        return f"{owner} is a plain dict: hold the modules in `nn.ModuleDict`"
    if held.container in ("list", "tuple"):
        return f"{owner} is a plain Python {held.container}: hold the modules in `nn.ModuleList` (or `nn.Sequential`)"
    if held.container == "object":
        return f"{owner} is a plain object holding the module: assign the module to an nn.Module attribute so it is registered"
    return f"{owner} is set without nn.Module's registration (e.g. through `__dict__` or `object.__setattr__`): assign it as `self.{held.attribute} = module`"
