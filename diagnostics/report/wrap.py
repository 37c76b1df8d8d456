"""The terminal's one width policy and its wrapping: text breaks only at spaces, with a hanging indent under
the text column, so a word, a path or `file.py:123` is never split (a token longer than the line stands
on a line of its own). Torch-free."""
from __future__ import annotations

import re
import shutil
import textwrap

#: Narrower terminals are treated as this wide: below it a hanging indent leaves no room for text.
MIN_WIDTH = 60
#: Where the terminal's width cannot be known (a pipe, a CI log) and $COLUMNS is not set.
FALLBACK_WIDTH = 120
#: A hanging indent that would leave less text than this per line falls back to `NARROW_INDENT`.
MIN_TEXT = 20
NARROW_INDENT = 4
ELLIPSIS = "…"
#: Joins what must stay on one line ("7.5 s"): wrapping sees one word, the output shows a space.
GLUE = "\xa0"

_ANSI = re.compile(r"\033\[[0-9;]*[A-Za-z]")
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")  # not str.split(): that splits at GLUE too


def terminal_width(width: int | None = None) -> int:
    """`width` when given; else $COLUMNS or the terminal's size (FALLBACK_WIDTH when unknown); never
    below MIN_WIDTH."""
    if width is None:
        width = shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns or FALLBACK_WIDTH
    return max(int(width), MIN_WIDTH)


def visible_len(text: str) -> int:
    """Length on screen: colour codes take no room."""
    return len(_ANSI.sub("", text))


def hang(head: str, text: str, width: int, indent: int | None = None) -> list[str]:
    """`head` then `text` wrapped to `width` at spaces; continuation lines indented to `indent` (default:
    under the text's first character). `head` may hold colour codes."""
    start = visible_len(head)
    indent = start if indent is None else indent
    if width - indent < MIN_TEXT:
        indent = min(indent, NARROW_INDENT)
    wrapper = textwrap.TextWrapper(width=width, initial_indent=" " * start, subsequent_indent=" " * indent,
                                   break_long_words=False, break_on_hyphens=False)
    lines = wrapper.wrap(_ASCII_SPACE.sub(" ", str(text)).strip()) or [""]
    first = lines[0][start:]
    if start and start + len(first) > width and " " not in first:  # a first word too long for any line
        lines[0:1] = [head.rstrip(), " " * indent + first]
    else:
        lines[0] = head + first
    return [_outdent(line.rstrip(), indent, width).replace(GLUE, " ") for line in lines]


def _outdent(line: str, indent: int, width: int) -> str:
    """A continuation line holding one token too long for the hanging indent moves left, to overflow less."""
    token = line.strip()
    if line.startswith(" " * indent) and " " not in token and len(line) > width and indent > NARROW_INDENT:
        return " " * NARROW_INDENT + token
    return line


def seconds(value: float) -> str:
    """`7.5 s`, kept on one line when wrapped."""
    return f"{value:.1f}{GLUE}s"


def hang_items(head: str, items: list[str], width: int, sep: str = ",") -> list[str]:
    """`head` then `items`, each followed by `sep` but the last, broken only between items (a path may
    hold spaces, so it is never wrapped as words)."""
    start = visible_len(head)
    indent = start if width - start >= MIN_TEXT else NARROW_INDENT
    lines: list[str] = []
    line, used, empty = head, start, True
    for i, item in enumerate(items):
        piece = item + (sep if i < len(items) - 1 else "")
        if not empty and used + 1 + len(piece) > width:
            lines.append(line)
            line, used = " " * indent + piece, indent + len(piece)
        else:
            line += ("" if empty else " ") + piece
            used += (0 if empty else 1) + len(piece)
        empty = False
    lines.append(line)
    return [ln.rstrip() for ln in lines]


def clip(text: str, width: int) -> str:
    """`text` on one line of at most `width` characters, cut with … (only where the full text is elsewhere)."""
    text = str(text)
    lead = text[: len(text) - len(text.lstrip(" "))]  # an indent is kept; other whitespace becomes one space
    text = lead + " ".join(text.split())
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)].rstrip() + ELLIPSIS if width > 0 else ""
