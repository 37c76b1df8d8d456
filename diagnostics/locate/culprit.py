"""`Culprit`: what a check blames, in one shape for every check and every report.

A culprit is a module (`features.4 (BatchNorm2d)`), a source line, an input dimension, a pipeline
step, a parameter or an option; it may carry the source location that explains it. Torch-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .code import Frame, library_name, owner, short_path

MODULE, LINE, INPUT, STEP, STATE, OPTION, OTHER = "module", "line", "input", "step", "state", "option", "other"


def module_label(name: str | None, module: Any = None) -> str:
    """`features.4 (BatchNorm2d)`; `<root> (Net)` for the model itself. `module` is a module,
    a class or a type name; without it, the path alone."""
    shown = name or "<root>"
    if module is None:
        return shown
    type_name = module if isinstance(module, str) else (module.__name__ if isinstance(module, type) else type(module).__name__)
    return f"{shown} ({type_name})"


@dataclass(frozen=True)
class Culprit:
    """What is to blame, and where it is written.

    kind:        module | line | input | step | state | option | other
    name:        a module's dotted path ("" = the root), or the name of an input, step, parameter...
    module_type: the module's class name, for module culprits.
    file, line, code: the source line that explains it (the user's, else a library's).
    """

    kind: str = OTHER
    name: str = ""
    module_type: str | None = None
    file: str | None = None
    line: int | None = None
    code: str | None = None

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def module(cls, name: str | None, module: Any = None, frame: Frame | None = None) -> "Culprit":
        type_name = None
        if module is not None:
            type_name = module if isinstance(module, str) else (module.__name__ if isinstance(module, type) else type(module).__name__)
        return cls(MODULE, name or "", type_name, *_frame_parts(frame))

    @classmethod
    def at(cls, frame: Frame, name: str = "") -> "Culprit":
        """A source line is the culprit (e.g. a `.item()` in a helper function)."""
        return cls(LINE, name, None, *_frame_parts(frame))

    @classmethod
    def named(cls, name: str, kind: str = OTHER, frame: Frame | None = None) -> "Culprit":
        return cls(kind, name, None, *_frame_parts(frame))

    def with_frame(self, frame: Frame | None) -> "Culprit":
        if frame is None:
            return self
        return Culprit(self.kind, self.name, self.module_type, *_frame_parts(frame))

    # -- views --------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """How reports show it: `head.drop (Dropout)`, `preprocess[3] Normalize`, `model.py:12`."""
        if self.kind == MODULE:
            return module_label(self.name, self.module_type)
        return self.name or self.location or ""

    @property
    def location(self) -> str | None:
        """`model.py:23`, `transformers/masking_utils.py:354`, or None."""
        if not self.file:
            return None
        return f"{short_path(self.file)}:{self.line}" if self.line else short_path(self.file)

    @property
    def library(self) -> str | None:
        """The library that owns the location (`transformers`), None for the user's code."""
        return library_name(self.file) if self.file else None

    @property
    def is_user_code(self) -> bool:
        return bool(self.file) and owner(self.file) == "user"

    def __str__(self) -> str:
        return self.label

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label"], data["location"] = self.label, self.location
        return data

    @classmethod
    def from_value(cls, value: Any) -> "Culprit | None":
        """A Culprit from itself, its dict form, or a plain label string."""
        if value is None or isinstance(value, Culprit):
            return value
        if isinstance(value, dict):
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in value.items() if k in names})
        return cls(OTHER, str(value))


def _frame_parts(frame: Frame | None) -> tuple[str | None, int | None, str | None]:
    if frame is None:
        return None, None, None
    return frame.file, frame.line, frame.code or None
