"""Flatten nested model outputs (tuples, lists, dicts, dataclasses, namedtuples, plain objects)
into named leaves.

Names read like the access path: a bare tensor is `output`, tuple items are `[0]`, `[1]`, dict
items are their keys (`logits`, `boxes`), attributes their names, nesting joins them (`[0].boxes`,
`hidden[1]`, `cache.layers[0].keys`).

Real libraries return objects that hold tensors without being containers: transformers'
`ModelOutput` (a dict that is also a dataclass) is walked as a dict, and its `DynamicCache` /
`EncoderDecoderCache` (plain objects, no `__eq__`) through their attributes. Such an object is
compared by content, never by identity: it is walked when its class keeps object's identity
`__eq__`, and whatever inside it has no meaningful `==` either (functions, modules, sentinels)
is left out of the leaves (kept as is by `map_leaves`).
"""
from __future__ import annotations

import copy
import dataclasses
import enum
import types
from typing import Any, Callable, Iterator

ROOT = "output"
#: How deep plain objects are walked (containers nest freely); deeper objects are left out.
MAX_OBJECT_DEPTH = 8
_IGNORED = object()  # marker: "not a leaf and not walked" (identity-only values)
#: Values whose `==` is identity and that hold no data to compare: left out of the leaves.
_IGNORED_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
                  types.GeneratorType, types.CodeType, types.FrameType)


def _join(prefix: str, part: str) -> str:
    if not prefix:
        return part
    return prefix + part if part.startswith("[") else f"{prefix}.{part}"


def _identity_eq(obj: Any) -> bool:
    """True when `==` on `obj` means `is` (its class, and every base, keeps object.__eq__)."""
    return type(obj).__eq__ is object.__eq__


def _attributes(obj: Any) -> list[tuple[str, Any]] | None:
    """The attributes of a plain object worth walking, or None when `obj` is not such an object."""
    if obj is None or isinstance(obj, (type, enum.Enum) + _IGNORED_TYPES) or not _identity_eq(obj):
        return None  # singletons (None, classes, enum members) are values; identity is their value
    if _is_module(obj) or _is_tensor(obj):
        return None
    has_dict = hasattr(obj, "__dict__")
    names: list[str] = list(obj.__dict__) if has_dict else []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and slot not in names and hasattr(obj, slot):
                names.append(slot)
    if not has_dict and not names:
        return None  # a C-level object with nothing to walk (torch.dtype): compared as a value
    return [(name, getattr(obj, name)) for name in names]


def _is_tensor(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def _is_dataclass(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _is_ignored(obj: Any) -> bool:
    """Functions, modules and the like: comparing them would compare identities, not results."""
    return isinstance(obj, _IGNORED_TYPES) or _is_module(obj)


def iter_leaves(obj: Any, prefix: str = "", root: str = ROOT) -> Iterator[tuple[str, Any]]:
    """Yield (name, leaf) pairs in a stable order; leaves are anything that is not a container."""
    yield from _iter(obj, prefix, root, ())


def _iter(obj: Any, prefix: str, root: str, path: tuple[int, ...]) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _iter(value, _join(prefix, str(key)), root, path)
    elif _is_namedtuple(obj):
        for key in obj._fields:
            yield from _iter(getattr(obj, key), _join(prefix, key), root, path)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _iter(value, _join(prefix, f"[{i}]"), root, path)
    elif _is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _iter(getattr(obj, f.name), _join(prefix, f.name), root, path)
    elif (attrs := _walkable(obj, path)) is not None:
        for name, value in attrs:
            yield from _iter(value, _join(prefix, name), root, path + (id(obj),))
    elif not _is_ignored(obj):
        yield (prefix or root), obj


def _walkable(obj: Any, path: tuple[int, ...]) -> list[tuple[str, Any]] | None:
    """Attributes of a plain object to walk; [] (nothing) for a cycle or one nested too deep."""
    attrs = _attributes(obj)
    if attrs is None:
        return None
    if id(obj) in path or len(path) >= MAX_OBJECT_DEPTH:
        return []
    return attrs


def plain_objects(obj: Any, prefix: str = "", root: str = ROOT) -> dict[str, Any]:
    """The outermost plain objects `iter_leaves` walks through, by name (`cache` -> DynamicCache):
    what a message should name instead of the leaves inside them (exporters only return tensors)."""
    found: dict[str, Any] = {}

    def visit(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, _join(name, str(key)))
        elif _is_namedtuple(value):
            for key in value._fields:
                visit(getattr(value, key), _join(name, key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, _join(name, f"[{i}]"))
        elif _is_dataclass(value):
            for f in dataclasses.fields(value):
                visit(getattr(value, f.name), _join(name, f.name))
        elif _attributes(value) is not None:
            found[name or root] = value

    visit(obj, prefix)
    return found


def flatten(obj: Any, root: str = ROOT) -> dict[str, Any]:
    """Named leaves of `obj`, in order; a bare leaf is named `root`."""
    return dict(iter_leaves(obj, root=root))


def map_leaves(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuild `obj` with `fn` applied to each leaf (containers keep their type where possible).

    Visits exactly the leaves `iter_leaves` yields, in the same order. Plain objects are copied
    (`copy.copy`) with their mapped attributes set, and returned as they are when nothing changed.
    """
    return _map(obj, fn, ())


def _map(obj: Any, fn: Callable[[Any], Any], path: tuple[int, ...]) -> Any:
    if isinstance(obj, dict):
        items = {k: _map(v, fn, path) for k, v in obj.items()}
        return _rebuild_dict(obj, items)
    if _is_namedtuple(obj):
        return type(obj)(*(_map(v, fn, path) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn, path) for v in obj)
    if _is_dataclass(obj):
        return _map_dataclass(obj, fn, path)
    attrs = _walkable(obj, path)
    if attrs is not None:
        mapped = [(name, value, _map(value, fn, path + (id(obj),))) for name, value in attrs]
        return _rebuild_object(obj, mapped)
    if _is_ignored(obj):
        return obj
    return fn(obj)


def _rebuild_dict(obj: dict, items: dict) -> Any:
    """A dict of `obj`'s type holding `items`; a dict-like dataclass (ModelOutput) keeps its class."""
    try:
        new = type(obj)(items)
        if list(new.keys()) == list(items.keys()):
            return new
    except Exception:
        pass
    try:  # ModelOutput and friends: copy, then set each item (their __setitem__ keeps attributes in sync)
        new = copy.copy(obj)
        for key, value in items.items():
            new[key] = value
        return new
    except Exception:
        return items


def _map_dataclass(obj: Any, fn: Callable[[Any], Any], path: tuple[int, ...]) -> Any:
    # Every field is a leaf position in iter_leaves, so every field is mapped, in field order
    # (callers such as concat_batch rely on both walks visiting the same leaves in the same order).
    fields = dataclasses.fields(obj)
    mapped = {f.name: _map(getattr(obj, f.name), fn, path) for f in fields}
    new = dataclasses.replace(obj, **{f.name: mapped[f.name] for f in fields if f.init})
    for f in fields:
        if not f.init:  # replace() cannot pass these; set them as the original had them, mapped
            object.__setattr__(new, f.name, mapped[f.name])
    return new


def _rebuild_object(obj: Any, mapped: list[tuple[str, Any, Any]]) -> Any:
    """A shallow copy of `obj` with the mapped attributes set; `obj` itself when none changed."""
    if all(_same(old, new) for _, old, new in mapped):
        return obj
    try:
        new_obj = copy.copy(obj)
    except Exception:
        new_obj = object.__new__(type(obj))
        if hasattr(obj, "__dict__"):
            new_obj.__dict__.update(obj.__dict__)
    for name, _, value in mapped:
        object.__setattr__(new_obj, name, value)
    return new_obj


def _same(old: Any, new: Any) -> bool:
    """`new` is `old`, or a rebuilt container holding the very same items."""
    if new is old:
        return True
    if type(new) is not type(old):
        return False
    if isinstance(old, dict):
        return list(old) == list(new) and all(_same(old[k], new[k]) for k in old)
    if isinstance(old, (list, tuple)):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new))
    return False


def tensor_leaves(obj: Any) -> dict[str, Any]:
    """Only the tensor leaves of `obj`."""
    import torch

    return {name: leaf for name, leaf in iter_leaves(obj) if isinstance(leaf, torch.Tensor)}
