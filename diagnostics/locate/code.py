"""Whose code is this frame? The one user-code policy every culprit goes through.

Five owners, decided from the file path alone (no torch import, so reports and the plugin can use it):

* ``user``     — the model's own code: anything outside the libraries below, plus the target's files.
* ``library``  — an installed model library (torchvision, transformers, timm, ... in site-packages):
  named as such (``transformers/masking_utils.py:354``), never silently dropped, but a user frame wins.
* ``torch``    — PyTorch itself; a last resort when no user or library frame exists.
* ``tool``     — torch-diagnose itself; ``stdlib`` — Python's standard library; ``synthetic`` — ``<string>``
  and generated code. These three never name a culprit.
"""
from __future__ import annotations

import importlib.util
import linecache
import os
import re
import sys
import sysconfig
import types
from dataclasses import dataclass
from typing import Iterable, Iterator

USER, LIBRARY, TORCH, TOOL, STDLIB, SYNTHETIC = "user", "library", "torch", "tool", "stdlib", "synthetic"

_SITE_MARKERS = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)


def _package_dir(name: str) -> str | None:
    """A package's folder found without importing it (torch must stay unimported here)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.abspath(list(spec.submodule_search_locations)[0]) + os.sep


_TORCH_DIR = _package_dir("torch")
_TOOL_DIRS = tuple(
    os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), *up)) + os.sep
    for up in ((os.pardir,), (os.pardir, os.pardir, "checks"))
)
_STDLIB_DIRS = tuple({os.path.abspath(p) + os.sep for p in (sysconfig.get_paths().get("stdlib"), os.path.dirname(os.__file__)) if p})
#: Console scripts (`.venv/bin/diagnose`, `bin/pytest`): entry points that start a run, never a culprit.
_SCRIPT_DIRS = tuple({os.path.abspath(p) + os.sep for p in (sysconfig.get_paths().get("scripts"),
                                                             os.path.join(sys.prefix, "bin"), os.path.join(sys.prefix, "Scripts")) if p})
#: Torch files that are plumbing (module call machinery, dispatch), never a useful location.
_TORCH_PLUMBING = ("nn/modules/module.py", "_compile.py", "utils/_python_dispatch.py", "_ops.py", "overrides.py", "_tensor.py",
                   "utils/_contextlib.py", "_jit_internal.py", "fx/", "_dynamo/", "export/", "_export/", "onnx/")

_user_files: set[str] = set()


def add_user_files(paths: Iterable[str]) -> None:
    """Declare the target's own source files as the user's code, wherever they are installed."""
    _user_files.update(os.path.abspath(p) for p in paths if p)


def _abs(filename: str) -> str:
    return os.path.abspath(filename)


def owner(filename: str | None) -> str:
    """`user`, `library`, `torch`, `tool`, `stdlib` or `synthetic` for a source file path."""
    if not filename or filename.startswith("<"):
        return SYNTHETIC
    path = _abs(filename)
    if path in _user_files:
        return USER
    if _TORCH_DIR and path.startswith(_TORCH_DIR):
        return TORCH
    if path.startswith(_TOOL_DIRS) or path.startswith(_SCRIPT_DIRS):
        return TOOL
    if any(m in path for m in _SITE_MARKERS):
        return LIBRARY
    if path.startswith(_STDLIB_DIRS):
        return STDLIB
    return USER


def is_user_file(filename: str | None) -> bool:
    return owner(filename) == USER


def is_internal_file(filename: str | None) -> bool:
    """Frames that never name a culprit: torch-diagnose, the standard library, generated code."""
    return owner(filename) in (TOOL, STDLIB, SYNTHETIC)


def library_name(filename: str | None) -> str | None:
    """`transformers` for `.../site-packages/transformers/models/bert.py`; `torch` for torch; else None."""
    kind = owner(filename)
    if kind == TORCH:
        return "torch"
    if kind != LIBRARY or not filename:
        return None
    path = _abs(filename)
    for marker in _SITE_MARKERS:
        if marker in path:
            return path.split(marker, 1)[1].split(os.sep, 1)[0].split(".", 1)[0]
    return None


def short_path(filename: str | None) -> str:
    """How a path is shown: relative to the working directory for the user's code,
    `package/inner/file.py` for libraries and torch, the path itself otherwise."""
    if not filename:
        return ""
    if filename.startswith("<"):
        return filename
    path = _abs(filename)
    kind = owner(path)
    if kind == LIBRARY:
        for marker in _SITE_MARKERS:
            if marker in path:
                return path.split(marker, 1)[1].replace(os.sep, "/")
    if kind == TORCH and _TORCH_DIR:
        return "torch/" + path[len(_TORCH_DIR):].replace(os.sep, "/")
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


@dataclass(frozen=True)
class Frame:
    """One source location: file, line, function and the code on that line."""

    file: str
    line: int
    function: str = ""
    code: str = ""

    @property
    def owner(self) -> str:
        return owner(self.file)

    @property
    def location(self) -> str:
        """`model.py:23` or `transformers/masking_utils.py:354`."""
        return f"{short_path(self.file)}:{self.line}"

    @property
    def library(self) -> str | None:
        return library_name(self.file)

    def describe(self) -> str:
        """`model.py:23 in forward: x = self.drop(x)`; library lines say so."""
        lib = self.library
        where = f"{self.location} in {self.function}" if self.function else self.location
        prefix = f"{lib} library code " if lib and lib != "torch" and self.owner == LIBRARY else ""
        return f"{prefix}{where}" + (f": {self.code}" if self.code else "")


def frame_of(frame: types.FrameType) -> Frame:
    filename = frame.f_code.co_filename
    return Frame(filename, frame.f_lineno, frame.f_code.co_name, linecache.getline(filename, frame.f_lineno).strip())


def _is_plumbing(filename: str) -> bool:
    if not _TORCH_DIR:
        return False
    rel = _abs(filename)[len(_TORCH_DIR):].replace(os.sep, "/")
    return rel.startswith(_TORCH_PLUMBING)


def pick(frames: Iterable[Frame], *, allow_torch: bool = True) -> Frame | None:
    """The frame that names a culprit, from frames ordered innermost first: the innermost user frame;
    else the innermost library frame (named as a library); else, with `allow_torch`, the innermost
    torch frame that is not call plumbing. Tool, stdlib and generated frames never."""
    library = torch_frame = None
    for fr in frames:
        kind = fr.owner
        if kind == USER:
            return fr
        if kind == LIBRARY and library is None:
            library = fr
        elif kind == TORCH and torch_frame is None and allow_torch and not _is_plumbing(fr.file):
            torch_frame = fr
    return library or torch_frame


def stack_frames(skip: int = 1) -> Iterator[Frame]:
    """The current Python stack, innermost first, starting `skip` frames above the caller."""
    frame: types.FrameType | None = sys._getframe(skip + 1)
    while frame is not None:
        yield frame_of(frame)
        frame = frame.f_back


def current_frame(*, allow_torch: bool = True) -> Frame | None:
    """The culprit frame of the current stack (see `pick`)."""
    return pick(stack_frames(2), allow_torch=allow_torch)


def traceback_frames(exc: BaseException) -> list[Frame]:
    """The frames of an exception's traceback, innermost first (chained causes not followed)."""
    frames: list[Frame] = []
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        code = linecache.getline(filename, tb.tb_lineno).strip()
        frames.append(Frame(filename, tb.tb_lineno, tb.tb_frame.f_code.co_name, code))
        tb = tb.tb_next
    return frames[::-1]


def raise_site(exc: BaseException, *, allow_torch: bool = False) -> Frame | None:
    """Where in the user's (or a library's) code an exception was raised."""
    return pick(traceback_frames(exc), allow_torch=allow_torch)


_FRAME_TEXT = re.compile(r'File "([^"]+)", line (\d+)(?:, in ([^\n]+))?(?:\n[ \t]+([^\n]*))?')


def frames_in_text(text: str) -> list[Frame]:
    """Frames named in a printed traceback or an exporter's message, innermost first.

    Understands `File "x.py", line 3, in f` (with the code on the next line) and bare `x.py:3`."""
    found = [Frame(f, int(ln), (fn or "").strip(), (code or "").strip()) for f, ln, fn, code in _FRAME_TEXT.findall(text)]
    if not found:
        found = [Frame(f, int(ln), "", linecache.getline(f, int(ln)).strip())
                 for f, ln in re.findall(r"((?:/|\w:\\)[^\s:\"']+\.py):(\d+)", text)]
    return found[::-1]
