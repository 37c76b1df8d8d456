"""File reports: one Writer per format, driven through a run by a FileReporter that rewrites the
whole file atomically after every finished check (see the package docstring)."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import UsageError
from .html import HtmlWriter
from .json_report import JsonWriter
from .junit import JUnitWriter
from .markdown import MarkdownWriter

if TYPE_CHECKING:  # pragma: no cover
    from ..options import RunOptions
    from ..registry import CheckSpec
    from ..results import CheckResult
    from ..runner import RunReport

#: report format name (as in RunOptions.format) -> writer class
WRITERS: dict[str, type] = {"json": JsonWriter, "junit": JUnitWriter, "md": MarkdownWriter, "html": HtmlWriter}


class Writer(Protocol):
    """What a format provides: a file name and the whole file's text for the run so far.

    `final` is False for the rewrites after each check (cheap renderings, e.g. no plots).
    A writer may also define `finished(run, text)` for one-off work at the end of the run.
    """

    filename: str

    def render(self, run: "RunReport", *, final: bool) -> str: ...


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # errors="replace": a lone surrogate (from a mis-decoded path, say) must not cost the file
        with open(tmp, "w", encoding="utf-8", errors="replace", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class FileReporter:
    """Drives one Writer through a run (a runner Reporter); failures become one warning line on stderr."""

    def __init__(self, writer: Writer, report_dir: str | os.PathLike[str]) -> None:
        self.writer = writer
        self.path = Path(report_dir) / writer.filename
        self._warned: set[str] = set()

    def start(self, run: "RunReport", checks: "list[CheckSpec]") -> None:
        self._write(run, final=False)  # replace a previous run's file right away: no stale results

    def check_started(self, spec: "CheckSpec") -> None:
        pass

    def check_finished(self, result: "CheckResult", run: "RunReport") -> None:
        self._write(run, final=False)

    def finish(self, run: "RunReport") -> None:
        text = self._write(run, final=True)
        finished = getattr(self.writer, "finished", None)
        if finished is not None:
            try:
                finished(run, text)
            except Exception as exc:
                self._warn(f"end-of-run step of {self.path.name} failed", exc)

    def _write(self, run: "RunReport", *, final: bool) -> str | None:
        """Render and write; returns the text (None when rendering failed)."""
        try:
            text = self.writer.render(run, final=final)
        except Exception as exc:  # a bug in one format must not cost the others
            self._warn(f"could not render {self.path}", exc)
            return None
        try:
            atomic_write(self.path, text)
        except Exception as exc:
            self._warn(f"could not write {self.path}", exc)
        return text

    def _warn(self, what: str, exc: BaseException) -> None:
        kept = "its last complete version is kept" if self.path.exists() else "it was not written"
        line = f"diagnose: warning: {what}: {type(exc).__name__}: {exc} ({kept}; other reports are unaffected)"
        if line not in self._warned:  # once per distinct problem, not once per check
            self._warned.add(line)
            print(line, file=sys.stderr)


def file_reporters(options: "RunOptions") -> list[FileReporter]:
    """One FileReporter per format in options.format, writing into options.report_dir (created here,
    so a folder that cannot be created is a usage error before any check runs)."""
    formats = list(dict.fromkeys(options.format))
    for fmt in formats:
        if fmt not in WRITERS:
            raise UsageError(f"unknown report format {fmt!r}; choose from {', '.join(WRITERS)}")
    if not formats:
        return []
    folder = Path(options.report_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the report folder {folder}: {exc.strerror or exc}") from None
    return [FileReporter(WRITERS[fmt](), folder) for fmt in formats]
