"""From source lines to modules and back: which module's `forward` holds a file:line, and where
a module class is written. Used to turn an exporter's or a profiler's file:line into a module culprit."""
from __future__ import annotations

import inspect
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
