"""Module hooks: record each module call's inputs and outputs, or just which module is running.

`ModuleRecorder` records calls in the order they *finish*, so an inner module comes before the
block that contains it. `ModuleStack` keeps the path of the innermost running module for spies.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..tree import flatten


def hook_modules(model: torch.nn.Module, pre: Callable[[str, torch.nn.Module], Callable[..., Any]],
                 post: Callable[[str, torch.nn.Module], Callable[..., Any]], *,
                 include: Callable[[str, torch.nn.Module], bool] | None = None, with_kwargs: bool = True) -> list[Any]:
    """Register a forward pre-hook and a forward hook on every (included) module; `pre(name, module)`
    and `post(name, module)` make the hooks. Returns the handles: remove them with `remove_hooks`."""
    handles = []
    for name, module in model.named_modules():
        if include is not None and not include(name, module):
            continue
        handles.append(module.register_forward_pre_hook(pre(name, module), with_kwargs=with_kwargs))
        handles.append(module.register_forward_hook(post(name, module), with_kwargs=with_kwargs))
    return handles


def remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


@dataclass
class ModuleCall:
    name: str  # dotted path; repeated calls get `#2`, `#3`
    module_type: str
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    order: int  # finishing order


def default_budget() -> int:
    """Bytes one recorder may keep: 1 GiB, or an eighth of the memory available now when that is less
    (two recorders are alive at once while their calls are compared). Mask R-CNN at 800x800 produces
    ~15 GB of module inputs and outputs: recording them all was an out-of-memory kill, not a verdict."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 << 30
    return max(64 << 20, min(1 << 30, available // 8))


class ModuleRecorder:
    """Records module calls' inputs and outputs while active (`with ModuleRecorder(model) as rec:`).

    `include`: a predicate on (name, module) to restrict which modules are recorded.
    `record_inputs`: inputs are cloned in a pre-hook, before an in-place op can change them; a tensor
    that is still the one an earlier call cloned (same object, same version) shares that clone.
    `start` and `budget_bytes` make a window: calls finishing before `start` are counted, not kept, and
    recording stops once `budget_bytes` are kept (`complete` is then False and `next_start` is where a
    later window begins). Calls keep their finishing order (`order`) across windows.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        include: Callable[[str, torch.nn.Module], bool] | None = None,
        record_inputs: bool = True,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        start: int = 0,
        budget_bytes: int | None = None,
    ) -> None:
        self.model = model
        self.include = include
        self.record_inputs = record_inputs
        self.transform = transform
        self.start = start
        self.budget_bytes = default_budget() if budget_bytes is None else budget_bytes
        self.calls: list[ModuleCall] = []
        self.kept_bytes = 0
        self.complete = True
        self.next_start = start
        self._seen = 0
        self._handles: list[Any] = []
        self._pending: dict[int, list[dict[str, torch.Tensor]]] = {}
        self._counts: dict[str, int] = {}
        self._clones: dict[tuple[int, int], tuple[Any, float | None, torch.Tensor]] = {}

    def __enter__(self) -> "ModuleRecorder":
        self._handles = hook_modules(self.model, self._pre, self._post, include=self.include)
        return self

    def __exit__(self, *exc: Any) -> None:
        remove_hooks(self._handles)
        self._clones.clear()

    @property
    def _keeping(self) -> bool:
        return self.complete and self._seen >= self.start

    def _clone(self, t: torch.Tensor) -> torch.Tensor:
        """A kept copy of `t`; the same copy again while `t` is the same, unmodified tensor (its version
        counter; an inference tensor has none, so a float64 sum stands in: `out += identity` changes it)."""
        try:
            key, check = (id(t), t._version), None
        except RuntimeError:
            key, check = (id(t), -1), (float(t.sum(dtype=torch.float64)) if t.is_floating_point() and t.numel() else None)
        known = self._clones.get(key)
        if known is not None and known[0]() is t and known[1] == check and (check is not None or key[1] >= 0):
            return known[2]
        copy = t.detach().clone()
        if self.transform:
            copy = self.transform(copy)
        self.kept_bytes += copy.numel() * copy.element_size()
        try:
            self._clones[key] = (weakref.ref(t), check, copy)
        except TypeError:  # a tensor subclass without weak references: cloned again next time
            pass
        return copy

    def _snapshot(self, obj: Any, root: str) -> dict[str, torch.Tensor]:
        return {k: self._clone(v) for k, v in flatten(obj, root=root).items() if isinstance(v, torch.Tensor)}

    def _pre(self, name: str, module: torch.nn.Module) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            keep = self._keeping and self.record_inputs
            snap = self._snapshot((args, kwargs) if kwargs else args, "input") if keep else {}
            self._pending.setdefault(id(module), []).append(snap)

        return hook

    def _post(self, name: str, module: torch.nn.Module) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._pending.get(id(module)) or [{}]
            snap_in = stack.pop() if stack else {}
            count = self._counts.get(name, 0) + 1
            self._counts[name] = count
            key = name if count == 1 else f"{name}#{count}"
            order, self._seen = self._seen, self._seen + 1
            if not (self.complete and order >= self.start):
                return
            if self.kept_bytes > self.budget_bytes:
                self.complete, self.next_start = False, order
                return
            self.calls.append(ModuleCall(key, type(module).__name__, snap_in, self._snapshot(output, "output"), order))

        return hook

    def by_name(self) -> dict[str, ModuleCall]:
        return {call.name: call for call in self.calls}




class ModuleStack:
    """While active, `current` is (dotted path, type name) of the innermost running module.

    `with ModuleStack(model) as stack: ...`; costs two hooks per module, removed on exit."""

    def __init__(self, model: torch.nn.Module | None) -> None:
        self.model = model
        self._stack: list[tuple[str, str]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "ModuleStack":
        if self.model is not None:
            self._handles = hook_modules(self.model, self._push, lambda name, module: self._pop, with_kwargs=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        remove_hooks(self._handles)

    def _push(self, name: str, module: torch.nn.Module) -> Callable[..., None]:
        type_name = type(module).__name__

        def hook(module: torch.nn.Module, args: Any) -> None:
            self._stack.append((name, type_name))

        return hook

    def _pop(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    @property
    def current(self) -> tuple[str, str]:
        if self._stack:
            return self._stack[-1]
        return "", type(self.model).__name__ if self.model is not None else ""


class GlobalModuleStack:
    """While active, `current` is the innermost running `nn.Module` of any kind, registered in the
    model or not: global forward hooks also see modules held in plain lists/dicts/attributes or
    created inside `forward`, which per-module hooks (`ModuleStack`) never reach.

    `on_enter(module)` is called as each module starts its forward. Hooks are removed on exit.
    """

    def __init__(self, on_enter: Callable[[torch.nn.Module], None] | None = None) -> None:
        self.on_enter = on_enter
        self._stack: list[torch.nn.Module] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "GlobalModuleStack":
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._handles = [register_module_forward_pre_hook(self._push),
                         register_module_forward_hook(self._pop, always_call=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        remove_hooks(self._handles)

    def _push(self, module: torch.nn.Module, args: Any) -> None:
        self._stack.append(module)
        if self.on_enter is not None:
            self.on_enter(module)

    def _pop(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    @property
    def current(self) -> torch.nn.Module | None:
        return self._stack[-1] if self._stack else None
