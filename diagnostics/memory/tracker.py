"""`LiveBytesTracker`: the bytes of tensor storages alive during a forward pass, and their peak.

A dispatch-mode spy (an `OpSpy` subclass, so it knows the running module) that counts the bytes of
every storage created while it is active and notices each free through a weak reference to the
storage (torch preserves one Python object per live storage, so the weak reference dies exactly
when the memory is released — also for storages autograd keeps alive). Its `peak` is the largest
number of bytes alive at once: on CPU it estimates what CUDA's `max_memory_allocated()` measures,
leaving out workspaces that kernels allocate internally. Optional `on_alloc` / `on_free` callbacks
let it drive a simulated device allocator.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable

import torch
from torch.utils._pytree import tree_leaves

from ..inputs import tensors
from ..locate.culprit import module_label
from ..locate.spy import OpSpy, op_base_name


def _storage(t: torch.Tensor) -> Any | None:
    try:
        return t.untyped_storage()
    except Exception:  # sparse, nested or other storage-less tensors
        return None


def storage_bytes(objs: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind the tensors in `objs` (views and ties counted once)."""
    seen: dict[int, int] = {}
    for t in objs:
        if isinstance(t, torch.Tensor):
            s = _storage(t)
            if s is not None:
                seen[id(s)] = s.nbytes()
    return sum(seen.values())


def model_bytes(model: torch.nn.Module) -> int:
    """Parameter and buffer bytes (shared weights counted once)."""
    return storage_bytes([*model.parameters(), *model.buffers()])


def input_bytes(inputs: Any) -> int:
    return storage_bytes(tensors(inputs))


class LiveBytesTracker(OpSpy):
    """Counts bytes of storages created while active; `peak` is the most alive at any moment.

    Storages that existed before (parameters, inputs, and anything an op merely views) are not
    counted. `retained()` is what is still alive from the tracked allocations. `on_alloc(nbytes)`
    may raise (a simulated out-of-memory); `on_free(nbytes)` is called when a storage dies.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        *,
        on_alloc: Callable[[int], None] | None = None,
        on_free: Callable[[int], None] | None = None,
        record_sites: bool = False,
    ) -> None:
        super().__init__(model, lambda name: False)
        self.record_sites = record_sites
        #: storage id -> "module (Type)" that allocated it (with record_sites=True)
        self.sites: dict[int, str] = {}
        self.on_alloc = on_alloc
        self.on_free = on_free
        self.current = 0
        self.peak = 0
        #: (dotted path, type name) of the module running when the peak was reached
        self.peak_module: tuple[str, str] = ("", type(model).__name__ if model is not None else "")
        self.peak_op = ""
        self._live: dict[int, tuple[weakref.ref, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {id(s) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and (s := _storage(t)) is not None}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs, func)
        return out

    def _track(self, t: torch.Tensor, input_storages: set[int], func: Any) -> None:
        s = _storage(t)
        if s is None:
            return
        key = id(s)
        nbytes = s.nbytes()
        if key in self._live:  # an in-place or out= op may have resized it
            ref, old = self._live[key]
            if nbytes != old and ref() is s:
                self._grow(nbytes - old, func)
                self._live[key] = (ref, nbytes)
            return
        if key in input_storages:  # a view or alias of something that existed before
            return
        if self.on_alloc is not None:
            self.on_alloc(nbytes)
        self._live[key] = (weakref.ref(s, self._freed_callback(key)), nbytes)
        if self.record_sites:
            name, type_name = self._modules.current
            self.sites[key] = module_label(name, type_name or None)
        self._grow(nbytes, func)

    def _grow(self, delta: int, func: Any) -> None:
        self.current += delta
        if self.current > self.peak:
            self.peak = self.current
            self.peak_op = f"aten.{op_base_name(func)}"
            self.peak_module = self._modules.current

    def _freed_callback(self, key: int) -> Callable[[Any], None]:
        def freed(_ref: Any) -> None:
            entry = self._live.pop(key, None)
            self.sites.pop(key, None)
            if entry is not None:
                self.current -= entry[1]
                if self.on_free is not None:
                    self.on_free(entry[1])

        return freed

    def retained(self) -> int:
        """Bytes of tracked storages still alive (after a `gc.collect()` by the caller)."""
        return sum(n for ref, n in self._live.values() if ref() is not None)

    def live_storages(self) -> dict[int, int]:
        """Storage id -> bytes of the tracked storages still alive."""
        return {key: n for key, (ref, n) in self._live.items() if ref() is not None}

    @property
    def peak_label(self) -> str:
        name, type_name = self.peak_module
        return module_label(name, type_name or None)
