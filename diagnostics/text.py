"""Text shared by every message: one line from an exception, byte sizes, plurals. One place each,
so a report never says MiB in one row and MB in the next. Torch-free."""
from __future__ import annotations

import math
import re

KiB, MiB, GiB = 1024, 1024**2, 1024**3

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ORT_SOURCE = re.compile(r"/onnxruntime_src/\S+\s+(void|bool|int|Status)?\s*(onnxruntime::\S+\([^)]*\)(\s*const)?)?\s*")
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")


def squash(text: object) -> str:
    """All whitespace runs to single spaces: one physical line."""
    return " ".join(str(text or "").split())


def message_lines(text: str) -> list[str]:
    """A message's non-empty lines, with terminal colours and ONNX Runtime's source paths removed."""
    text = _ORT_PREFIX.sub("", _ORT_SOURCE.sub("", _ANSI.sub("", text.strip())))
    return [t.strip() for t in text.splitlines() if t.strip()]


def one_line(exc: BaseException | str, limit: int = 300, *, with_type: bool | None = None) -> str:
    """The line of a message that says what went wrong, cut to `limit` characters.

    For an exception, `Type: message` (set `with_type=False` for the message alone). TorchScript
    interpreter errors put the cause on their last line; a line ending in ':' or 'indices' needs the next.
    """
    is_exc = isinstance(exc, BaseException)
    lines = message_lines(str(exc))
    type_name = type(exc).__name__ if is_exc else ""
    if not lines:
        return type_name
    line = lines[0]
    if "failed in the TorchScript interpreter" in line:
        causes = [t for t in lines if re.match(r"^\w*(Error|Exception):", t)]
        line = causes[-1] if causes else lines[-1]
    elif (line.endswith(":") or line.endswith("indices")) and len(lines) > 1:
        line = f"{line} {lines[1]}"
    line = re.sub(r"Status Message: .*? was false\. ", "Status Message: ", line)[:limit]
    if not is_exc or with_type is False or re.match(rf"^{re.escape(type_name)}\b", line):
        return line
    return f"{type_name}: {line}"


def format_bytes(n: float | int | None) -> str:
    """`1.50 MiB`-style text in binary units; `?` when unknown."""
    if n is None:
        return "?"
    if isinstance(n, float) and not math.isfinite(n):
        return str(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{int(n)} B"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 check`, `3 checks`, `2 batches` (with `many`)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
