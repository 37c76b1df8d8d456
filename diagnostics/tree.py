"""Flatten nested model outputs (tuples, lists, dicts, dataclasses, namedtuples) into named leaves.

Names read like the access path: a bare tensor is `output`, tuple items are `[0]`, `[1]`, dict
items are their keys (`logits`, `boxes`), nesting joins them (`[0].boxes`, `hidden[1]`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

ROOT = "output"


def _join(prefix: str, part: str) -> str:
    if not prefix:
        return part
    return prefix + part if part.startswith("[") else f"{prefix}.{part}"


def iter_leaves(obj: Any, prefix: str = "", root: str = ROOT) -> Iterator[tuple[str, Any]]:
    """Yield (name, leaf) pairs in a stable order; leaves are anything that is not a container."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from iter_leaves(value, _join(prefix, str(key)), root)
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        for key in obj._fields:
            yield from iter_leaves(getattr(obj, key), _join(prefix, key), root)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from iter_leaves(value, _join(prefix, f"[{i}]"), root)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_leaves(getattr(obj, f.name), _join(prefix, f.name), root)
    else:
        yield (prefix or root), obj


def flatten(obj: Any, root: str = ROOT) -> dict[str, Any]:
    """Named leaves of `obj`, in order; a bare leaf is named `root`."""
    return dict(iter_leaves(obj, root=root))


def map_leaves(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuild `obj` with `fn` applied to each leaf (containers keep their type where possible)."""
    if isinstance(obj, dict):
        items = {k: map_leaves(v, fn) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except Exception:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_leaves(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_leaves(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # Every field is a leaf position in iter_leaves, so every field is mapped, in field order
        # (callers such as concat_batch rely on both walks visiting the same leaves in the same order).
        fields = dataclasses.fields(obj)
        mapped = {f.name: map_leaves(getattr(obj, f.name), fn) for f in fields}
        new = dataclasses.replace(obj, **{f.name: mapped[f.name] for f in fields if f.init})
        for f in fields:
            if not f.init:  # replace() cannot pass these; set them as the original had them, mapped
                object.__setattr__(new, f.name, mapped[f.name])
        return new
    return fn(obj)


def tensor_leaves(obj: Any) -> dict[str, Any]:
    """Only the tensor leaves of `obj`."""
    import torch

    return {name: leaf for name, leaf in iter_leaves(obj) if isinstance(leaf, torch.Tensor)}
