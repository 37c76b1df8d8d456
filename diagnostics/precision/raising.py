"""Where a forward raised: the innermost module whose forward was running, and the line.

No hooks are added to find it (hooks can change which path a module takes, e.g. the transformer
fast path): the innermost module is the deepest traceback frame whose `self` is one of the model's
modules, and the line is picked by the one user-code policy (`locate.code.pick`).
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..locate.code import Frame, pick, traceback_frames
from ..locate.culprit import Culprit
from ..text import one_line
from .hooks import is_timeout, model_frames


@dataclass
class RaiseSite:
    """The innermost module whose forward was running when the call raised (the culprit, with the
    raising line as its source location), and the exception."""

    culprit: Culprit
    exception: str  # "RuntimeError: ..."
    in_model_code: bool = False  # the line is the model's code (the user's or a library's), not torch's
    called_from: Frame | None = None  # the model line that called the module, when the raise is in torch

    @property
    def label(self) -> str:
        return self.culprit.label

    @property
    def location(self) -> str | None:
        return self.culprit.location

    @property
    def code(self) -> str | None:
        return self.culprit.code

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.label, "location": self.location, "code": self.code, "exception": self.exception,
                "called_from": self.called_from.location if self.called_from else None}


def run_locating_raise(model: torch.nn.Module, call: Callable[[], Any]) -> tuple[Any, RaiseSite | None]:
    """Run `call()` (which runs `model`); return (outputs, None), or (None, RaiseSite) when it raised."""
    try:
        return call(), None
    except Exception as exc:
        if is_timeout(exc):
            raise
        return None, raise_site(exc, model)


def _source_file(module: torch.nn.Module) -> str | None:
    try:
        source = inspect.getsourcefile(type(module))
    except (TypeError, OSError):
        return None
    return os.path.abspath(source) if source else None


def raise_site(exc: BaseException, model: torch.nn.Module) -> RaiseSite:
    """Where `exc` came from inside `model`: the innermost module on its traceback, and the line:
    the innermost model-code frame inside that module's call (user, else library), else the
    innermost frame of the module's own source file, else the module's frame. `called_from` is the
    model line that called the module."""
    names = {id(m): n for n, m in model.named_modules()}
    frames = traceback_frames(exc)[::-1]  # outermost first, aligned with the traceback's raw frames
    at, name, module = -1, "", model
    tb, i = exc.__traceback__, 0
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in names:
            at, name, module = i, names[id(owner)], owner
        tb, i = tb.tb_next, i + 1
    inner = frames[max(at, 0):][::-1]  # innermost first
    source = _source_file(module)
    model_code = pick(inner, allow_torch=False)
    own = next((f for f in inner if source and os.path.abspath(f.file) == source), None)
    frame = model_code or own or (inner[-1] if inner else None)
    callers = model_frames(frames[:max(at, 0)][::-1])
    return RaiseSite(Culprit.module(name, module, frame), one_line(exc), model_code is not None, pick(callers, allow_torch=False))
