"""A pipeline's steps: what they are, where their source is, and the culprit that names one.

A serving pipeline is a torchvision Compose (v1 or v2), an nn.Sequential or any callable; a
culprit names its step as `preprocess[3] Normalize(mean=[...], std=[...])` and carries the step's
source line when the user wrote it (library steps such as torchvision's carry none).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..locate.code import Frame
from ..locate.culprit import STEP, Culprit
from ..locate.source import function_frame


@dataclass
class Step:
    """One step of a pipeline: its index, class name, short description and user source line."""

    index: int
    name: str
    obj: Any
    text: str
    frame: Frame | None = None


def pipeline_steps(fn: Any) -> list[Step]:
    """The steps of a torchvision Compose (v1 or v2) or nn.Sequential; a single step otherwise."""
    items: list[Any]
    transforms = getattr(fn, "transforms", None)
    if isinstance(transforms, (list, tuple)) and transforms:
        items = list(transforms)
    elif isinstance(fn, torch.nn.Sequential):
        items = list(fn)
    else:
        items = [fn]
    return [Step(i, step_name(obj), obj, step_text(obj), step_frame(obj)) for i, obj in enumerate(items)]


def step_name(obj: Any) -> str:
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return obj.__name__
    return type(obj).__name__


def step_text(obj: Any) -> str:
    """A short, readable description of one step (Normalize(mean=[...], std=[...]), a function name ...)."""
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__name__}()" if obj.__name__ != "<lambda>" else "lambda"
    name = type(obj).__name__
    if name == "Lambda" and hasattr(obj, "lambd"):
        return f"Lambda({step_text(obj.lambd)})"
    if name == "Normalize":
        mean = [round(float(v), 4) for v in getattr(obj, "mean", [])]
        std = [round(float(v), 4) for v in getattr(obj, "std", [])]
        return f"Normalize(mean={mean}, std={std})"
    if name == "Resize":
        interp = getattr(obj, "interpolation", None)
        interp = getattr(interp, "value", interp)
        return f"Resize(size={getattr(obj, 'size', '?')}, interpolation={interp}, antialias={getattr(obj, 'antialias', None)})"
    text = repr(obj).replace("\n", " ")
    return " ".join(text.split())[:120]


def _source_target(obj: Any) -> Any:
    """The function whose source is the step: the function itself, a Lambda's, or the class's call."""
    target = obj.lambd if type(obj).__name__ == "Lambda" and hasattr(obj, "lambd") else obj
    if inspect.isfunction(target) or inspect.ismethod(target):
        return target
    cls = type(target)
    own_forward = hasattr(cls, "forward") and cls.forward is not torch.nn.Module.forward
    call = cls.forward if own_forward else getattr(cls, "__call__", None)
    return call if call is not None and (inspect.isfunction(call) or inspect.ismethod(call)) else cls


def step_frame(obj: Any) -> Frame | None:
    """The source line of a step the user wrote (function, lambda, Lambda, own class); None for library code."""
    return function_frame(_source_target(obj), user_only=True)


def source_mentions(fn: Any, word: str) -> bool:
    """True when the pipeline's (or one of its steps') source text contains `word` (e.g. "cv2")."""
    for st in pipeline_steps(fn):
        target = st.obj.lambd if st.name == "Lambda" and hasattr(st.obj, "lambd") else st.obj
        try:
            src = inspect.getsource(target if inspect.isfunction(target) or inspect.ismethod(target) else type(target))
        except (OSError, TypeError):
            continue
        if word in src:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Naming a step


def site(fn: Any, names: Sequence[str] = (), *, user: bool = False) -> tuple[str, Frame | None]:
    """The step to blame and its source: the first of `names` (in the caller's order of preference)
    that the pipeline has, else (with `user`) the first step the user wrote, else the whole pipeline."""
    steps = pipeline_steps(fn)
    if len(steps) == 1:
        label = step_text(fn)
        return (f"preprocess {label}" if label.endswith("()") else f"preprocess ({label})"), step_frame(fn)
    chosen = None
    for name in names:
        hits = [s for s in steps if s.name == name]
        if hits:
            chosen = hits[-1] if name == "Normalize" else hits[0]
            break
    if chosen is None and user:
        chosen = next((s for s in steps if s.frame is not None), None)
    if chosen is not None:
        return f"preprocess[{chosen.index}] {chosen.text}", chosen.frame
    return "preprocess (" + " -> ".join(s.name for s in steps) + ")", None


def step_site(fn: Any, index: int | None, label: str = "preprocess") -> tuple[str, Frame | None]:
    """The step at `index` (found by running the steps one by one), or the pipeline when unknown."""
    steps = pipeline_steps(fn)
    frame = steps[index].frame if index is not None and index < len(steps) else step_frame(fn)
    if index is not None and len(steps) > 1:
        return f"{label}[{index}] {steps[index].text}", frame
    return site(fn)[0].replace("preprocess", label, 1), frame


def culprit(fn: Any, what: str, names: Sequence[str] = (), *, user: bool = False) -> Culprit:
    """`preprocess[3] Normalize(...): <what>`, with the step's source line when the user wrote it."""
    text, frame = site(fn, names, user=user)
    return Culprit.named(f"{text}: {what}", STEP, frame)


def culprit_at(fn: Any, index: int | None, what: str, label: str = "preprocess") -> Culprit:
    text, frame = step_site(fn, index, label)
    return Culprit.named(f"{text}: {what}", STEP, frame)


# ---------------------------------------------------------------------------------------------
# Resize and crop as a Compose declares them


@dataclass
class DeclaredGeometry:
    """Resize/crop parameters read from a Compose, when present."""

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    crop_first: bool = False
    interpolation: str | None = None
    antialias: bool | None = None
    on_pil: bool | None = None


def declared_geometry(fn: Any) -> DeclaredGeometry | None:
    """Read Resize/CenterCrop (and whether they run before the to-tensor step) from a Compose."""
    steps = pipeline_steps(fn)
    if len(steps) < 2:
        return None
    geo = DeclaredGeometry()
    to_tensor_at = next((s.index for s in steps if s.name in ("ToTensor", "PILToTensor", "ToImage", "ToImageTensor")), None)
    resize = next((s for s in steps if s.name == "Resize"), None)
    crop = next((s for s in steps if s.name == "CenterCrop"), None)
    if resize is None and crop is None:
        return None
    if resize is not None:
        size = getattr(resize.obj, "size", None)
        if isinstance(size, (list, tuple)):
            size = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
        geo.resize = size
        interp = getattr(resize.obj, "interpolation", None)
        geo.interpolation = str(getattr(interp, "value", interp)) if interp is not None else None
        geo.antialias = getattr(resize.obj, "antialias", None)
        geo.on_pil = to_tensor_at is not None and resize.index < to_tensor_at
    if crop is not None:
        size = getattr(crop.obj, "size", None)
        if isinstance(size, int):
            size = (size, size)
        if isinstance(size, (list, tuple)):
            geo.crop = (int(size[0]), int(size[-1]))
        geo.crop_first = resize is not None and crop.index < resize.index
    return geo
