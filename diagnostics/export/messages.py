"""Exporters' messages in plain words: boilerplate trimmed, the kind of failure, the line and the
input dimensions they name."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..locate.code import Frame, frames_in_text, pick
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


def trim_message(exc: BaseException | str, max_lines: int = 4, max_chars: int = 500) -> str:
    """The exporter's message cut to what matters: no boilerplate, no colour codes, a few lines."""
    text = _ANSI.sub("", str(exc))
    text = re.sub(r"This is step \d/\d of exporting the model to ONNX\.( Next steps:)?", "", text)
    text = re.sub(r"tensor\(\[.*?\]\)(?=[,}\])\s])", "tensor(...)", text, flags=re.DOTALL)
    text = re.sub(r"tensor\(\[.*?\](, [a-z_]+=[^)]*)?\)", "tensor(...)", text, flags=re.DOTALL)
    kept: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or any(b in stripped for b in _BOILERPLATE):
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


def _raising_frame(text: str) -> Frame | None:
    """The line the exporter says raised; else the user's (or a library's) innermost frame it prints."""
    call = re.search(r'The following call raised this error:\s*\n\s*(File "[^"]+", line \d+, in \S+\n\s*.+)', text)
    if call:
        found = frames_in_text(call.group(1))
        if found:
            return found[0]
    return pick(frames_in_text(text), allow_torch=False)


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
    where = f" at {frame.location}" if frame else ""
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
    return ExportError("error", trim_message(exc), frame)
