"""torch.compile's own account of itself: graph breaks (with reason and line) and recompilations
(with the guard that failed), collected from its logs instead of printed."""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator

import torch

from ..locate.code import Frame, frames_in_text


class LogGrab(logging.Handler):
    """Keeps every log record once."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) not in self._seen:
            self._seen.add(id(record))
            self.records.append(record)


@contextlib.contextmanager
def dynamo_logs() -> Iterator[LogGrab]:
    """Collect graph-break and recompilation log records instead of printing them.

    torch's own handlers are taken off while the grab is on; `set_logs()` afterwards resets
    torch logging to what the environment (TORCH_LOGS) asks for.
    """
    from torch._logging import _internal

    grab = LogGrab()
    hooked: list[logging.Logger] = []
    disabled = logging.root.manager.disable  # a library or test may have silenced logging: records must still reach us
    try:
        logging.disable(logging.NOTSET)
        torch._logging.set_logs(graph_breaks=True, recompiles=True)
        loggers = [logging.getLogger("torch")] + [lg for name, lg in logging.root.manager.loggerDict.items()
                                                  if name.startswith("torch") and isinstance(lg, logging.Logger)]
        for lg in loggers:
            torch_handlers = [h for h in lg.handlers if _internal._is_torch_handler(h)]
            for h in torch_handlers:
                lg.removeHandler(h)
            if torch_handlers or lg.name == "torch" or lg.name.endswith(("__graph_breaks", "__recompiles")):
                lg.addHandler(grab)
                hooked.append(lg)
    except Exception:
        pass
    try:
        yield grab
    finally:
        logging.disable(disabled)
        for lg in hooked:
            lg.removeHandler(grab)
        try:
            torch._logging.set_logs()
        except Exception:
            pass


def _frame(text: str | None) -> Frame | None:
    """`/abs/model.py:31` as a Frame (with the code on that line), or None."""
    found = frames_in_text(text or "")
    return found[0] if found else None


def _graph_break(msg: str) -> dict[str, Any]:
    where = re.search(r"Graph break in user code at (\S+)", msg)
    reason = re.search(r"Graph Break Reason: (.+)", msg)
    explanation = re.search(r"Explanation: (.+)", msg)
    code = re.search(r'# File "[^"]+", line \d+, in \S+, code: (.+)', msg)
    frame = _frame(where.group(1)) if where else None
    return {"location": frame.location if frame else (where.group(1) if where else None),
            "reason": reason.group(1).strip() if reason else msg.splitlines()[0][:200],
            "explanation": explanation.group(1).strip()[:300] if explanation else "",
            "code": code.group(1).strip() if code else "",
            "file": frame.file if frame else None, "line": frame.line if frame else None}


def _recompile(msg: str) -> dict[str, Any]:
    fn = re.search(r"Recompiling function (\S+) in (\S+)", msg)
    reasons = re.findall(r"- \d+/\d+: (.+)", msg)
    frame = _frame(fn.group(2)) if fn else None
    return {"function": fn.group(1) if fn else "?", "location": frame.location if frame else (fn.group(2) if fn else None),
            "reasons": reasons[:4] or [msg.splitlines()[-1][:200]],
            "file": frame.file if frame else None, "line": frame.line if frame else None}


def parse_records(records: list[logging.LogRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(graph breaks, recompilations), each a dict with `location` and, when known, `file` and `line`."""
    breaks: list[dict[str, Any]] = []
    recompiles: list[dict[str, Any]] = []
    for r in records:
        try:
            msg = r.getMessage()
        except Exception:
            continue
        if "__graph_breaks" in r.name or msg.startswith("Graph break"):
            entry = _graph_break(msg)
            if entry not in breaks:
                breaks.append(entry)
        elif "__recompiles" in r.name or msg.startswith("Recompiling"):
            recompiles.append(_recompile(msg))
    return breaks, recompiles
