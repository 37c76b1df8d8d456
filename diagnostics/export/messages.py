"""Exporters' messages in plain words: boilerplate trimmed, the kind of failure, the line and the
input dimensions they name."""
from __future__ import annotations

import importlib.util
import linecache
import os
import re
from dataclasses import dataclass, field

from ..locate.code import LIBRARY, Frame, frames_in_text, pick
from .cases import Sweep

_BOILERPLATE = (
    "For more information", "TORCH_LOGS", "TORCHDYNAMO_EXTENDED", "If you suspect", "docs.google", "draft_export",
    "The error above occurred", "consider using data-dependent friendly", "For C++ stack trace", "Next steps",
    "Modify the model code", "Debug `torch.export", "Create an issue", "Refer to the full", "## Exception summary",
    "pytorch.org/docs", "github.com/pytorch", "Set TORCHDYNAMO", "from user code:",
    "If there is a missing ONNX function", "If there is an internal error", "Create an error report", "⬆️",
    "Refer to the full stack trace",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _before_boilerplate(line: str) -> str:
    """The sentences of a line before the first boilerplate one ("Found X in output ... See https://github.com/...")."""
    kept: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", line):
        if any(b in sentence for b in _BOILERPLATE):
            break
        kept.append(sentence)
    return " ".join(kept).strip()


def trim_message(exc: BaseException | str, max_lines: int = 4, max_chars: int = 500) -> str:
    """The exporter's message cut to what matters: no boilerplate, no colour codes, a few lines."""
    text = _ANSI.sub("", str(exc))
    text = re.sub(r"This is step \d/\d of exporting the model to ONNX\.( Next steps:)?", "", text)
    text = re.sub(r"tensor\(\[.*?\]\)(?=[,}\])\s])", "tensor(...)", text, flags=re.DOTALL)
    text = re.sub(r"tensor\(\[.*?\](, [a-z_]+=[^)]*)?\)", "tensor(...)", text, flags=re.DOTALL)
    kept: list[str] = []
    for line in text.splitlines():
        stripped = _before_boilerplate(line.strip())
        if not stripped:
            continue
        if stripped.startswith("<class '"):
            stripped = re.sub(r"^<class '([\w.]+)'>:\s*", lambda m: m.group(1).rsplit(".", 1)[-1] + ": ", stripped)
        kept.append(stripped)
        if len(kept) >= max_lines:
            break
    out = " ".join(kept) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    if isinstance(exc, BaseException) and not out.startswith(type(exc).__name__):
        out = f"{type(exc).__name__}: {out}"
    return out[:max_chars]


_GENERIC = ("Failed to export the model with torch.export", "Failed to convert the exported program", "Failed to decompose")


def informative(exc: BaseException, max_lines: int = 4, max_chars: int = 600) -> str:
    """The exporter's message with its causes: a wrapper that only says "Failed to export" (or is a
    bare `RuntimeError`) is followed by the chained exception that says why."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 3:
        seen.add(id(current))
        text = trim_message(current, max_lines, max_chars)
        body = text.split(": ", 1)[1] if ": " in text else ""
        if body and not any(body.startswith(g) for g in _GENERIC):
            parts.append(text)
            if len(" ".join(parts)) > max_chars // 2:
                break
        current = current.__cause__ or current.__context__
    return (" <- caused by ".join(parts) or trim_message(exc, max_lines, max_chars))[:max_chars]


def library_hint(frame: Frame | None, what: str) -> str | None:
    """When an exporter stops in a library's code: what avoids it, never "edit the library"."""
    lib = frame.library if frame is not None else None
    if frame is None or lib is None or frame.owner != LIBRARY:
        return None
    return (f"{what} stops in {lib} library code ({frame.location}), not in your code: do not edit {lib}; export the part "
            f"of the model before that call (e.g. the backbone) and run the rest in eager, use the legacy ONNX exporter "
            f"(torch.onnx.export(..., dynamo=False)) or torch.jit.script, or an option/wrapper of {lib} that avoids this path")


_SOURCE_RE = re.compile(r"((?:L|inputs)(?:\[[^\]]+\])+)(?:\.size\(\)|\.shape)\[(\d+)\]")


def source_to_ref(source: str, sweep: Sweep) -> tuple[str, int] | None:
    """`L['x'].size()[1]`, `L['args'][0].size()[1]`, `inputs['x'].shape[1]` -> (leaf, dim)."""
    m = _SOURCE_RE.search(source)
    if not m:
        return None
    path, dim = m.group(1), int(m.group(2))
    tokens = re.findall(r"\[(?:'([^']*)'|(\d+))\]", path)
    leaf = None
    for i, (key, idx) in enumerate(tokens):
        if key and key in sweep.names:
            leaf = key
        elif idx and i > 0 and tokens[i - 1][0] in ("args", "flat_args") and int(idx) < len(sweep.names):
            leaf = sweep.names[int(idx)]
    if leaf is None and len(sweep.names) == 1:
        leaf = sweep.names[0]
    return (leaf, dim) if leaf is not None else None


@dataclass
class ExportError:
    """What an exporter's exception means: data-dependent | constraint | numpy | error."""

    kind: str
    words: str
    frame: Frame | None = None
    groups: list[str] = field(default_factory=list)  # dimension groups it names


def _resolve(path: str) -> str | None:
    """A path as exporters print it: absolute, relative to the working directory, or a package's
    (`torchvision/ops/boxes.py`)."""
    if os.path.exists(path):
        return os.path.abspath(path)
    try:
        spec = importlib.util.find_spec(path.split("/", 1)[0])
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(os.path.dirname(root), path)
        if os.path.exists(candidate):
            return candidate
    return None


def _raising_frame(text: str) -> Frame | None:
    """The line the exporter says raised; else the user's (or a library's) innermost frame it prints."""
    call = re.search(r'The following call raised this error:\s*\n\s*(File "[^"]+", line \d+, in \S+\n\s*.+)', text)
    if call:
        found = frames_in_text(call.group(1))
        if found:
            return found[0]
    caused = re.search(r"Caused by: \(([^\s:()]+\.py):(\d+)", text)  # torch.export names the line, maybe relative
    path = _resolve(caused.group(1)) if caused else None
    if caused and path:
        line = int(caused.group(2))
        return Frame(path, line, "", linecache.getline(path, line).strip())
    return pick((f for f in frames_in_text(text) if os.path.exists(f.file)), allow_torch=False)


def _named_groups(text: str, sweep: Sweep) -> list[str]:
    """Dimension groups the message says were specialised to a constant."""
    groups: list[str] = []
    pattern = r"(L\[[^\n]*?\](?:\.size\(\)|\.shape)\[\d+\]|inputs\[[^\n]*?\]\.shape\[\d+\])[^\n]*?(?:constant|static shape of) \(?(\d+)"
    for source, _value in re.findall(pattern, text):
        ref = source_to_ref(source, sweep)
        g = sweep.group_of(*ref) if ref else None
        if g is not None and g.name not in groups:
            groups.append(g.name)
    return groups


def explain_export_error(exc: BaseException, sweep: Sweep) -> ExportError:
    """Kind, plain words, the line and the dimensions named, for an exception from torch.export."""
    text = _ANSI.sub("", str(exc))
    frame = _raising_frame(text)
    if frame is not None and not frame.code:
        frame = Frame(frame.file, frame.line, frame.function, linecache.getline(frame.file, frame.line).strip())
    where = f" at {frame.location}" if frame else ""
    if frame is not None and frame.owner == LIBRARY:
        where = f" in {frame.library} library code at {frame.location}"
    if "data-dependent" in text or "GuardOnDataDependentSymNode" in type(exc).__name__:
        code = f" (`{frame.code}`)" if frame else ""
        return ExportError("data-dependent", f"forward branches on (or reads) a tensor's value{where}{code}: torch.export "
                           f"cannot capture data-dependent Python control flow", frame)
    groups = _named_groups(text, sweep)
    if "Constraints violated" in text or "specialized it to be a constant" in text or "inferred a static shape" in text:
        named = ", ".join(sweep.group(n).label for n in groups) or "a dynamic dimension"
        return ExportError("constraint", f"{named} was asked dynamic but the code specialised it to a constant", frame, groups)
    if ".numpy()" in text or "numpy" in text.lower() and "not supported" in text:
        return ExportError("numpy", f"forward converts a tensor to NumPy, which torch.export cannot trace{where}", frame)
    return ExportError("error", informative(exc), frame)
