"""From source lines to modules and back: which module's `forward` holds a file:line, and where
a module class is written. Used to turn an exporter's or a profiler's file:line into a module culprit."""
from __future__ import annotations

import inspect
import linecache
import os

import torch

from .code import Frame, owner
from .culprit import Culprit


def forward_source(cls: type) -> tuple[str, int, int] | None:
    """(absolute file, first line, number of lines) of a module class's `forward`."""
    try:
        lines, start = inspect.getsourcelines(cls.forward)
        file = inspect.getsourcefile(cls.forward)
    except (TypeError, OSError):
        return None
    return (os.path.abspath(file), start, len(lines)) if file else None


def module_at(model: torch.nn.Module, file: str | None, line: int | None) -> Culprit | None:
    """The innermost module whose `forward` holds file:line (the tightest span wins); a name shared
    by several instances of that type says how many more there are."""
    if not file or not line:
        return None
    target = os.path.abspath(file)
    found: list[tuple[int, str, str]] = []
    spans: dict[type, tuple[str, int, int] | None] = {}
    for name, module in model.named_modules():
        cls = type(module)
        if cls not in spans:
            spans[cls] = forward_source(cls)
        span = spans[cls]
        if span and span[0] == target and span[1] <= line < span[1] + span[2]:
            found.append((span[2], name, cls.__name__))
    if not found:
        return None
    tightest = min(size for size, _, _ in found)
    hits = [(name, type_name) for size, name, type_name in found if size == tightest]
    name, type_name = hits[0]
    if len(hits) > 1:
        name = f"{name or '<root>'} (+{len(hits) - 1} more of that type)"
    return Culprit.module(name, type_name)


def class_frame(module: torch.nn.Module | type | None, *, user_only: bool = True) -> Frame | None:
    """Where a module's `forward` is written; with `user_only`, None for torch and library classes
    (their source says nothing about the user's model)."""
    if module is None:
        return None
    cls = module if isinstance(module, type) else type(module)
    span = forward_source(cls)
    if span is None:
        return None
    if user_only and owner(span[0]) != "user":
        return None
    return Frame(span[0], span[1], "forward", "")


def function_frame(fn: object, *, user_only: bool = False) -> Frame | None:
    """Where a function, method or class is written (its first line); with `user_only`, None for
    torch and library code."""
    try:
        file = inspect.getsourcefile(fn)  # type: ignore[arg-type]
        line = inspect.getsourcelines(fn)[1]  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    if not file or (user_only and owner(file) != "user"):
        return None
    return Frame(file, line, getattr(fn, "__name__", ""), linecache.getline(file, line).strip())


def submodule(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """The module at a dotted path (a recorder's `#2` call suffix ignored); None when there is none."""
    name = name.split("#", 1)[0]
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


def module_culprit(model: torch.nn.Module, name: str, module_type: str | None = None) -> Culprit:
    """`head (Linear)` for a module path, with the line of its `forward` when the user wrote it
    (`module_type` names it when the path no longer resolves)."""
    name = name.split("#", 1)[0]
    module = submodule(model, name)
    return Culprit.module(name, module if module is not None else module_type, class_frame(module))
