"""State-dict round trips: a fresh model from the target's factory, the keys that do not load into
it, the state a model keeps outside its state_dict, and the module to blame for a module path or a
state_dict key (with its `forward`'s source line when the user wrote it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import TargetError
from ..locate.culprit import Culprit, module_label
from ..locate.source import module_culprit, submodule

#: Key prefixes that wrappers add: DataParallel/DDP, torch.compile, a wrapper module.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def key_owner(model: torch.nn.Module, key: str) -> Culprit:
    """The module that owns a state_dict key (`block.fc.weight` -> `block.fc (Linear)`)."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        name = ".".join(parts[:depth])
        if submodule(model, name) is not None:
            return module_culprit(model, name)
    return Culprit.module("")


def fresh_model(factory: Callable[[], Any], seed: int) -> torch.nn.Module:
    """A new model from `Target.factory` (which may return a module, (module, inputs) or a Target),
    built under another RNG state than the served one."""
    from ..target import Target

    with torch.random.fork_rng(devices=[]):
        # A fresh process has another RNG state: a model whose outputs depend on state outside the
        # state_dict must not pass just because the factory ran under the same seed.
        torch.manual_seed(seed + 7919)
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


@dataclass
class KeyProblems:
    """How a saved state_dict's keys differ from a fresh model's."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[dict[str, Any]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)

    @property
    def first_key(self) -> str:
        return (self.misshaped[0]["key"] if self.misshaped else None) or (self.unexpected[0] if self.unexpected else self.missing[0])

    def wrapper_prefix(self) -> str | None:
        """`module.` when every unexpected key is a missing key behind that prefix (a wrapped model)."""
        for prefix in _WRAPPER_PREFIXES:
            if self.unexpected and all(k.startswith(prefix) for k in self.unexpected) and \
                    any(k[len(prefix):] in self.missing for k in self.unexpected):
                return prefix
        return None


def key_problems(saved: dict[str, Any], fresh: dict[str, Any]) -> KeyProblems:
    misshaped = []
    for key, value in saved.items():
        other = fresh.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.shape != other.shape:
            misshaped.append({"key": key, "saved": tuple(value.shape), "fresh_model": tuple(other.shape)})
    return KeyProblems([k for k in fresh if k not in saved], [k for k in saved if k not in fresh], misshaped)


@dataclass
class HiddenState:
    """A value kept outside the state_dict that differs in a fresh model."""

    name: str  # module path
    module: torch.nn.Module
    attribute: str
    kind: str  # "non-persistent buffer", "tensor attribute", "number attribute"

    @property
    def label(self) -> str:
        return module_label(self.name, self.module)

    def row(self) -> dict[str, Any]:
        return {"module": self.label, "attribute": self.attribute, "kind": self.kind}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach().cpu(), b.detach().cpu()))
    return type(a) is type(b) and a == b


def _attribute_kind(value: Any) -> str | None:
    if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
        return "tensor attribute"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number attribute"
    return None


def hidden_state(original: torch.nn.Module, fresh: torch.nn.Module) -> list[HiddenState]:
    """Tensors and numbers kept outside the state_dict (plain attributes, non-persistent buffers)
    whose values differ between the served model and a fresh one with the same state loaded."""
    found = []
    fresh_modules = dict(fresh.named_modules())
    for name, module in original.named_modules():
        other = fresh_modules.get(name)
        if other is None:
            continue
        for buf in sorted(getattr(module, "_non_persistent_buffers_set", ())):
            a, b = module._buffers.get(buf), other._buffers.get(buf)
            if a is not None and not _same(a, b):
                found.append(HiddenState(name, module, buf, "non-persistent buffer"))
        other_vars = vars(other)
        for attr, value in vars(module).items():
            kind = None if attr.startswith("__") or attr == "training" else _attribute_kind(value)
            if kind and (attr not in other_vars or not _same(value, other_vars[attr])):
                found.append(HiddenState(name, module, attr, kind))
    return found


@dataclass
class LostState:
    """Parameters and buffers the model uses but its state_dict does not carry: held by modules (or
    as Parameters) in plain lists, dicts or helper objects instead of registered submodules."""

    path: str  # "layers[0]"
    obj: Any  # the module or Parameter
    holder: Any  # determinism.unregistered.Held
    tensors: int
    numel: int

    @property
    def label(self) -> str:
        return module_label(self.path, self.obj) if isinstance(self.obj, torch.nn.Module) else f"{self.path} (Parameter)"

    def row(self) -> dict[str, Any]:
        return {"held_in": self.path, "kind": type(self.obj).__name__, "tensors": self.tensors, "elements": self.numel}


def unregistered_state(model: torch.nn.Module) -> list[LostState]:
    """The state a checkpoint loses: unregistered modules with parameters or buffers, and Parameters
    kept in plain containers (neither is in `model.state_dict()`)."""
    from ..determinism.unregistered import holdings

    found = holdings(model)
    lost = []
    for held in found.modules.values():
        if not held.top:
            continue
        tensors = list(held.obj.parameters()) + list(held.obj.buffers())
        if tensors:
            lost.append(LostState(held.path, held.obj, held, len(tensors), sum(t.numel() for t in tensors)))
    for held in found.parameters:
        lost.append(LostState(held.path, held.obj, held, 1, held.obj.numel()))
    return lost
