"""Shared wording for culprits and hints, so every check names things the same way."""
from __future__ import annotations

import os

import torch


def describe_module(name: str, module: torch.nn.Module | None) -> str:
    return f"`{name or '<root>'}` ({type(module).__name__})" if module is not None else f"`{name or '<root>'}`"


def short_location(file: str | None, line: int | None) -> str:
    if not file:
        return ""
    try:
        rel = os.path.relpath(file)
        shown = rel if not rel.startswith("..") else file
    except ValueError:
        shown = file
    return f"{shown}:{line}"
