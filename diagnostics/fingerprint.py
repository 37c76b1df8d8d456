"""State fingerprints: what a module tree holds, so two moments can be compared.

`snapshot(model)` records every parameter, buffer and module attribute that can hold state
(tensors, lists/dicts/sets/tuples and what is in them, plain objects' attributes, scalars),
by dotted path (`block.cache`, `features.4.running_mean`). `diff(before, after)` lists what
changed and how, in words: "grew from 0 to 3 items", "values changed by max abs 0.5",
"shape changed from (4,) to (8,)", "changed from 0 to 3".

Small tensors (BatchNorm statistics, counters, caches) are cloned whole; large ones (weights)
keep a strided sample of 4096 elements, their storage pointer and their version counter, so a
snapshot of resnet18 costs a few hundredths of a forward pass and in-place changes are still
seen. Torch's own bookkeeping (hooks, `_flat_weight_refs` weakrefs) is never reported.
"""
from __future__ import annotations

import math
import numbers
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

#: Attributes every nn.Module has; never state of the user's model.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()).keys()) | {"_compiled_call_impl", "__annotations__"}
_CONTAINERS = (list, tuple, dict, set, frozenset, deque)
_SCALARS = (numbers.Number, str, bytes, type(None))
#: How many items of a container are fingerprinted one by one (the length is always recorded).
MAX_ITEMS = 256
MAX_DEPTH = 3


@dataclass
class TensorState:
    """A tensor's fingerprint: its values when small; a strided sample of them when large.

    Large tensors (parameters, mostly) also keep their version counter, so an in-place change is
    seen even where the sample misses it.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    values: torch.Tensor | None  # a clone of every element (small tensors)
    sample: torch.Tensor | None = None  # a clone of evenly spaced elements (large tensors)
    pointer: int = 0
    version: int | None = None

    def describe_type(self) -> str:
        return f"tensor {self.shape}"


@dataclass
class ContainerState:
    type_name: str
    length: int
    items: dict[str, Any] = field(default_factory=dict)  # key/index -> state of that item
    is_object: bool = False  # a plain object: items are its attributes

    def describe_type(self) -> str:
        return self.type_name


@dataclass
class ValueState:
    type_name: str
    value: Any

    def describe_type(self) -> str:
        return "None" if self.value is None else self.type_name


@dataclass
class OpaqueState:
    """An object we do not look into (a function, a weakref, a tokenizer): only its type is kept."""

    type_name: str

    def describe_type(self) -> str:
        return self.type_name


@dataclass
class Entry:
    """One named piece of state: `path` is the dotted path, `owner` the module that holds it."""

    path: str
    owner: str
    owner_type: str
    attr: str
    kind: str  # "parameter", "buffer", "attribute"
    state: Any


@dataclass
class Snapshot:
    entries: dict[str, Entry]
    cloned_bytes: int = 0
    summarized: int = 0  # large tensors kept as a sample


@dataclass
class Change:
    """How one entry changed between two snapshots."""

    path: str
    owner: str
    owner_type: str
    attr: str
    kind: str
    change: str  # grew, shrank, values, shape, dtype, added, removed, replaced, items, value
    description: str
    type_name: str = ""
    before: Any = None
    after: Any = None
    max_abs: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "owner": f"{self.owner or '<root>'} ({self.owner_type})", "kind": self.kind,
            "type": self.type_name, "change": self.change, "description": self.description,
            **({"max_abs": self.max_abs} if self.max_abs is not None else {}),
        }


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit
        self.used = 0
        self.summarized = 0


#: Tensors up to this many elements are cloned whole; larger ones are sampled.
FULL_CLONE_NUMEL = 1 << 16
SAMPLE_SIZE = 4096


def _tensor_state(t: torch.Tensor, budget: _Budget) -> TensorState:
    t = t.detach()
    try:
        version = t._version
    except RuntimeError:  # inference tensors have no version counter
        version = None
    try:
        pointer = t.data_ptr()
    except RuntimeError:
        pointer = 0
    nbytes = t.numel() * t.element_size()
    if t.numel() <= FULL_CLONE_NUMEL and nbytes <= budget.left:
        budget.left -= nbytes
        budget.used += nbytes
        return TensorState(tuple(t.shape), t.dtype, t.clone(), None, pointer, version)
    budget.summarized += 1
    flat = t.reshape(-1)
    step = max(1, flat.numel() // SAMPLE_SIZE)
    sample = flat[::step][:SAMPLE_SIZE].clone()
    budget.used += sample.numel() * sample.element_size()
    return TensorState(tuple(t.shape), t.dtype, None, sample, pointer, version)


def _is_lazy(t: Any) -> bool:
    return isinstance(t, torch.nn.parameter.UninitializedTensorMixin)


def _state_of(obj: Any, budget: _Budget, depth: int = 0) -> Any:
    if isinstance(obj, torch.Tensor):
        if _is_lazy(obj):
            return OpaqueState("uninitialized")
        return _tensor_state(obj, budget)
    if isinstance(obj, bool) or isinstance(obj, _SCALARS):
        return ValueState(type(obj).__name__, obj)
    if isinstance(obj, _CONTAINERS):
        type_name = type(obj).__name__
        if isinstance(obj, dict):
            keyed = list(obj.items())
        elif isinstance(obj, (set, frozenset)):
            keyed = [(repr(v), v) for v in sorted(obj, key=repr)] if len(obj) <= MAX_ITEMS else []
        else:
            keyed = list(enumerate(obj))
        items: dict[str, Any] = {}
        if depth < MAX_DEPTH:
            for key, value in keyed[:MAX_ITEMS]:
                items[_key_name(key)] = _state_of(value, budget, depth + 1)
        return ContainerState(type_name, len(obj), items)
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return _tensor_state(torch.from_numpy(obj.copy()) if obj.dtype != object else torch.zeros(0), budget)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, torch.nn.Module) or callable(obj) or isinstance(obj, type):
        return OpaqueState(type(obj).__name__)
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict) and depth < MAX_DEPTH and type(obj).__module__ not in ("builtins",):
        # A plain object that can hold state (a KV cache class, a counter object): look inside.
        items = {k: _state_of(v, budget, depth + 1) for k, v in list(attrs.items())[:MAX_ITEMS] if not k.startswith("__")}
        return ContainerState(type(obj).__name__, len(items), items, is_object=True)
    return OpaqueState(type(obj).__name__)


def _key_name(key: Any) -> str:
    return f"[{key}]" if isinstance(key, int) else f"[{key!r}]"


def snapshot(model: torch.nn.Module, *, clone_budget: int = 1 << 30) -> Snapshot:
    """Fingerprint every parameter, buffer and stateful attribute of `model` and its submodules."""
    budget = _Budget(clone_budget)
    entries: dict[str, Entry] = {}
    for mname, module in model.named_modules():
        mtype = type(module).__name__
        prefix = f"{mname}." if mname else ""
        for pname, param in module._parameters.items():
            if param is not None:
                entries[prefix + pname] = Entry(prefix + pname, mname, mtype, pname, "parameter", _state_of(param, budget))
        for bname, buf in module._buffers.items():
            if buf is not None:
                entries[prefix + bname] = Entry(prefix + bname, mname, mtype, bname, "buffer", _state_of(buf, budget))
        for attr, value in vars(module).items():
            if attr in _MODULE_INTERNALS or attr.startswith("__"):
                continue
            if attr in ("_flat_weight_refs",):  # RNN weakrefs, rebuilt by torch
                continue
            entries[prefix + attr] = Entry(prefix + attr, mname, mtype, attr, "attribute", _state_of(value, budget))
    return Snapshot(entries, budget.used, budget.summarized)


# ---------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _values_change(va: torch.Tensor, vb: torch.Tensor) -> float | None:
    """max abs difference of two same-shape tensors; None when equal (NaNs in the same places count as equal)."""
    if torch.equal(va, vb):
        return None
    if va.is_floating_point() or va.is_complex():
        both_nan = torch.isnan(va) & torch.isnan(vb)
        if bool(((va == vb) | both_nan).all()):
            return None
    diff = (vb.to(torch.float64) - va.to(torch.float64)).abs() if not va.is_complex() else (vb - va).abs().to(torch.float64)
    finite = diff[torch.isfinite(diff)]
    return float(finite.max()) if finite.numel() else math.inf


def _tensor_change(a: TensorState, b: TensorState) -> tuple[str, str, float | None] | None:
    """(change, description, max_abs) or None when equal."""
    if a.shape != b.shape:
        return "shape", f"shape changed from {a.shape} to {b.shape}", None
    if a.dtype != b.dtype:
        return "dtype", f"dtype changed from {str(a.dtype).replace('torch.', '')} to {str(b.dtype).replace('torch.', '')}", None
    if a.values is not None and b.values is not None:
        max_abs = _values_change(a.values, b.values)
        if max_abs is None:
            return None
        if a.values.numel() == 1:
            return "values", f"changed from {_scalar(a.values)} to {_scalar(b.values)}", max_abs
        changed = int((a.values != b.values).sum())
        return "values", f"values changed by max abs {_fmt(max_abs)} ({changed} of {a.values.numel()} elements)", max_abs
    if a.sample is not None and b.sample is not None and a.sample.shape == b.sample.shape:
        max_abs = _values_change(a.sample, b.sample)
        if max_abs is not None:
            return "values", f"values changed by max abs {_fmt(max_abs)} (over {a.sample.numel()} sampled elements)", max_abs
    if a.version is not None and b.version is not None and a.version != b.version:
        return "values", f"changed in place {b.version - a.version} time(s) (version counter {a.version} -> {b.version})", None
    return None  # a new storage with the same sampled values (e.g. `.data = .data.contiguous()`) is not a change


def _scalar(t: torch.Tensor) -> str:
    value = t.reshape(-1)[0].item()
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _state_change(a: Any, b: Any) -> tuple[str, str, float | None] | None:
    if type(a) is not type(b):
        return "replaced", f"set from {a.describe_type()} to {b.describe_type()}", None
    if isinstance(a, TensorState):
        return _tensor_change(a, b)
    if isinstance(a, ValueState):
        if a.type_name != b.type_name:
            return "replaced", f"replaced: was {a.type_name} {a.value!r}, now {b.type_name} {b.value!r}", None
        try:
            equal = a.value == b.value or (isinstance(a.value, float) and math.isnan(a.value) and math.isnan(b.value))
        except Exception:
            equal = repr(a.value) == repr(b.value)
        if equal:
            return None
        return "value", f"changed from {a.value!r} to {b.value!r}", None
    if isinstance(a, OpaqueState):
        return None if a.type_name == b.type_name else ("replaced", f"replaced: was {a.type_name}, now {b.type_name}", None)
    if isinstance(a, ContainerState):
        if a.type_name != b.type_name:
            return "replaced", f"replaced: was {a.type_name}, now {b.type_name}", None
        noun = "attribute" if a.is_object else "item"
        if b.length > a.length:
            return "grew", f"grew from {a.length} to {b.length} {noun}s", None
        if b.length < a.length:
            return "shrank", f"shrank from {a.length} to {b.length} {noun}s", None
        added = [k for k in b.items if k not in a.items]
        removed = [k for k in a.items if k not in b.items]
        if added or removed:
            return "items", f"keys changed ({', '.join(added[:3])} in, {', '.join(removed[:3])} out)", None
        for key, sa in a.items.items():
            inner = _state_change(sa, b.items[key])
            if inner is not None:
                return "items", f"{key.strip('[]') if noun == 'attribute' else key}: {inner[1]}", inner[2]
        return None
    return None


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    """Every entry that differs between two snapshots, in module order."""
    changes: list[Change] = []
    for path, ea in before.entries.items():
        eb = after.entries.get(path)
        if eb is None:
            changes.append(Change(path, ea.owner, ea.owner_type, ea.attr, ea.kind, "removed", "was removed", ea.state.describe_type()))
            continue
        found = _state_change(ea.state, eb.state)
        if found is not None:
            change, description, max_abs = found
            changes.append(Change(path, ea.owner, ea.owner_type, ea.attr, eb.kind, change, description, eb.state.describe_type(), max_abs=max_abs))
    for path, eb in after.entries.items():
        if path not in before.entries:
            kind = eb.state.describe_type()
            changes.append(Change(path, eb.owner, eb.owner_type, eb.attr, eb.kind, "added", f"was added ({kind})", kind))
    return changes


def length_of(snap: Snapshot, path: str) -> int | None:
    entry = snap.entries.get(path)
    return entry.state.length if entry is not None and isinstance(entry.state, ContainerState) else None
