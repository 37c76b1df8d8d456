"""Any value from a result's details as HTML a person reads: never a raw JSON dump.

dict -> a key/value table, list of dicts -> a table over the union of their keys, list of scalars
-> an inline list, booleans -> ✓/✗, `code spans` -> <code>, multi-line text (tracebacks, code) ->
<pre>. Tables sit in a horizontally scrollable box, so a wide table never widens the page.
Every piece of text goes through html.escape: details come from models and user code.
"""
from __future__ import annotations

import html
import re
from typing import Any

from ..results import format_value

MAX_ROWS = 500  # per details table; diagnose.json keeps everything
MAX_INLINE = 24  # items of an inline list before "… N more"
MAX_DEPTH = 5
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_SCALARS = (str, int, float, bool, type(None))
#: Keys whose text is source code or a source location: shown in monospace.
CODE_KEYS = frozenset({"code", "location", "call_site", "op", "file"})


class Raw(str):
    """Text already fit for HTML (a plain str is escaped)."""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def prose(value: Any) -> str:
    """Escaped text where `code spans` (as hints write them) become <code>; a lone backtick stays text."""
    return _CODE_SPAN.sub(r"<code>\1</code>", esc(value)).replace("\n", "<br>")


def label(key: Any) -> str:
    """A details key as a heading: `batch_dim_source` -> "batch dim source"."""
    return esc(str(key).replace("_", " "))


def boolean(value: bool) -> str:
    """✓/✗ with the word kept for screen readers, copy-paste and search."""
    return ('<span class="yes" title="true">✓<span class="sr"> true</span></span>' if value
            else '<span class="no" title="false">✗<span class="sr"> false</span></span>')


def scalar(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return '<span class="muted">–</span>'
    if isinstance(value, bool):
        return boolean(value)
    if isinstance(value, (int, float)):
        return f'<span class="num">{esc(format_value(value))}</span>'
    text = str(value)
    if "\n" in text.strip():
        return f"<pre>{esc(text.rstrip())}</pre>"
    return prose(text)


def render_value(value: Any, depth: int = 0) -> str:
    """One details value as HTML (see the module docstring)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, _SCALARS):
        return scalar(value)
    if isinstance(value, dict):
        if not value:
            return '<span class="muted">none</span>'
        return kv_table(value, depth + 1) if depth < MAX_DEPTH else inline_pairs(value)
    if isinstance(value, list):
        if not value:
            return '<span class="muted">none</span>'
        if all(isinstance(v, dict) for v in value) and depth < MAX_DEPTH:
            return records_table(value, depth + 1)
        if all(isinstance(v, _SCALARS) for v in value):
            return inline_list(value)
        return "<ul class=\"items\">" + "".join(f"<li>{render_value(v, depth + 1)}</li>" for v in value[:MAX_ROWS]) + "</ul>" + more(len(value))
    return prose(value)


def inline_list(values: list[Any]) -> str:
    """Scalars side by side (`1, 2, 4`); multi-line strings (messages) one per line."""
    if any(isinstance(v, str) and (len(v) > 60 or "\n" in v) for v in values):
        items = "".join(f"<li>{scalar(v)}</li>" for v in values[:MAX_ROWS])
        return f'<ul class="items">{items}</ul>{more(len(values))}'
    shown = ", ".join(scalar(v) for v in values[:MAX_INLINE])
    rest = len(values) - MAX_INLINE
    return shown + (f' <span class="muted">… {rest} more</span>' if rest > 0 else "")


def inline_pairs(data: dict[str, Any]) -> str:
    """A dict too deep for another table: `key: value; key: value`, values shortened."""
    parts = []
    for k, v in list(data.items())[:MAX_INLINE]:
        shown = scalar(v) if isinstance(v, _SCALARS) else esc(_short_text(v))
        parts.append(f"{label(k)}: {shown}")
    return "; ".join(parts)


def _short_text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short_text(v)}" for k, v in list(value.items())[:6]) + ("…" if len(value) > 6 else "") + "}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_short_text(v) for v in list(value)[:6]) + ("…" if len(value) > 6 else "")
    return format_value(value)


def scroll(table: str) -> str:
    """A table in a box that scrolls sideways on its own: the page itself never overflows."""
    return f'<div class="scroll">{table}</div>'


def kv_table(data: dict[str, Any], depth: int = 0, *, full: bool = False) -> str:
    """Keys down the left. `full`: as wide as the page with fixed columns, so a wide table in a cell
    scrolls in its own box instead of widening (and scrolling) the whole table."""
    rows = "".join(f"<tr><th>{label(k)}</th><td>{_keyed(k, v, depth)}</td></tr>" for k, v in list(data.items())[:MAX_ROWS])
    return scroll(f'<table class="kv{" full" if full else ""}">{rows}</table>') + more(len(data))


def records_table(records: list[dict[str, Any]], depth: int = 0, columns: list[tuple[str, str]] | None = None) -> str:
    """Rows of dicts as one table over the union of their keys (or the given (key, header) columns)."""
    columns = columns or [(k, str(k).replace("_", " ")) for k in dict.fromkeys(k for rec in records for k in rec)]
    head = "".join(f"<th>{esc(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(_cell(rec, key, depth) for key, _ in columns) + "</tr>" for rec in records[:MAX_ROWS])
    return scroll(f'<table class="records"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>') + more(len(records))


def _keyed(key: Any, value: Any, depth: int) -> str:
    """A value under its key: one-line source code and locations in <code>."""
    if key in CODE_KEYS and isinstance(value, str) and value and "\n" not in value.strip():
        return f"<code>{esc(value.strip())}</code>"
    return render_value(value, depth)


def _cell(record: dict[str, Any], key: str, depth: int) -> str:
    if key not in record:
        return "<td></td>"
    value = record[key]
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="n">{_keyed(key, value, depth)}</td>' if numeric else f"<td>{_keyed(key, value, depth)}</td>"


def more(n: int) -> str:
    return f'<p class="note">{n - MAX_ROWS} more rows in diagnose.json</p>' if n > MAX_ROWS else ""
