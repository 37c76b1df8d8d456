"""Reports of a run: files (json, junit, md, html) and the terminal.

Each file reporter rewrites its whole file after every finished check, atomically (temp file in
the same folder, then os.replace): a run that is interrupted, killed or crashes still leaves a
complete, valid report of what finished, and a reader never sees a half-written file. A format
that fails to render or write costs only itself: the others are still written and the last good
version of the failed file stays in place.

Nothing here imports torch (the pytest plugin and CI tooling read reports without it);
matplotlib is imported lazily, only to draw HTML plots at the end of a run.
"""
from __future__ import annotations

from .files import WRITERS, FileReporter, Writer, atomic_write, file_reporters
from .html import HtmlWriter
from .json_report import JsonWriter
from .junit import JUnitWriter
from .markdown import MarkdownWriter
from .terminal import TerminalReporter

__all__ = [
    "file_reporters", "FileReporter", "Writer", "WRITERS", "atomic_write", "TerminalReporter",
    "JsonWriter", "JUnitWriter", "MarkdownWriter", "HtmlWriter",
]
