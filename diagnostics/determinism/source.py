"""Model classes: the user's, or a model library's (torchvision, transformers, ...), never torch's own."""
from __future__ import annotations

import inspect

import torch

from ..locate import Frame, owner
from ..locate.code import LIBRARY, USER
from ..locate.source import class_frame


def class_owner(module: torch.nn.Module | type | None) -> str | None:
    """`user`, `library`, `torch`, ... for the file that defines a module's class (None: unknown)."""
    if module is None:
        return None
    cls = module if isinstance(module, type) else type(module)
    try:
        return owner(inspect.getfile(cls))
    except (TypeError, OSError):
        return None


def is_model_class(module: torch.nn.Module | type | None) -> bool:
    """Written by the user or a model library: worth reading its source for the culprit line."""
    return class_owner(module) in (USER, LIBRARY)


def model_forward_frame(module: torch.nn.Module | None) -> Frame | None:
    """Where a model class writes its `forward` (None for torch's own modules)."""
    return class_frame(module, user_only=False) if is_model_class(module) else None


def user_first(classes: list[type]) -> list[type]:
    """Model classes only, the user's before a library's (a user frame wins)."""
    kept = [cls for cls in classes if is_model_class(cls)]
    return sorted(kept, key=lambda cls: class_owner(cls) != USER)
