"""Live progress and the closing summary on a terminal (or a CI log).

Every line fits the width (`wrap.terminal_width`: the `width` given, else $COLUMNS or the terminal, never
below 60): text wraps at spaces with a hanging indent under the text column, so a word or a path is never
split; only the closing table truncates (with …), and the full text is in the reports.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from ..results import ERROR, FAIL, PASS, SKIP, WARN, CheckResult
from ..rootcause import group, root_causes
from ..text import squash
from .files import WRITERS
from .live import LiveStatus
from .wording import consequence_line, run_counts, target_name
from .wrap import clip, hang, hang_items, seconds, terminal_width, visible_len

if TYPE_CHECKING:  # pragma: no cover
    from ..registry import CheckSpec
    from ..runner import RunReport

_COLORS = {PASS: "32", WARN: "33", FAIL: "1;31", SKIP: "2", ERROR: "1;35"}
#: Shared work below this is not worth a word on the check's line (it is in the JSON all the same).
SHOWN_SHARED_S = 0.05
_DETAIL_INDENT = 9  # "culprit:" and "hint:" lines start under the check name


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


def shared_note(result: CheckResult) -> str:
    """` (+1.2 s shared: fp64 reference, fp32 reference)` when the check paid for shared work, else ''."""
    if result.shared_s < SHOWN_SHARED_S:
        return ""
    names = [label for label, s in sorted(result.shared.items(), key=lambda kv: -kv[1]) if s >= 0.01][:3]
    return f" (+{seconds(result.shared_s)} shared" + (f": {', '.join(names)})" if names else ")")


def live_text(result: CheckResult) -> str:
    """A result's words on its live line: a consequence says whose, not the root's story again."""
    summary = squash(result.summary)
    if not result.caused_by:
        return summary
    if summary.startswith("not judged"):
        return f"not judged: a consequence of {result.caused_by}"
    if summary.startswith("a consequence"):
        return f"a consequence of {result.caused_by}: {squash(result.details.get('measured') or summary)}"
    return f"{summary} (a consequence of {result.caused_by})"


class TerminalReporter:
    """Prints one line per finished check, a status line while one runs, and a compact summary at the end.

    verbose: also print the culprit, location and hint under every warn/fail/error line.
    quiet: print only one line per finished check (status, check, one-line summary; cut to the width on a
    terminal): no header, no progress, no notes, no summary, no counts and no report paths (`diagnose -q`).
    report_paths: the report files to list at the end; by default the files of run.options'
    report_dir/format that this run wrote (modified since it started).
    width: the line width (default: $COLUMNS or the terminal's, at least 60).
    """

    def __init__(self, stream: TextIO | None = None, color: bool | None = None, verbose: bool = False,
                 report_paths: Sequence[str | os.PathLike[str]] | None = None, quiet: bool = False,
                 width: int | None = None) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.tty = _is_tty(self.stream)
        self.color = color if color is not None else (self.tty and not os.environ.get("NO_COLOR"))
        self.verbose = verbose and not quiet
        self.quiet = quiet
        self.report_paths = list(report_paths) if report_paths is not None else None
        self.fixed_width = width
        self._id_width = 0
        self._closed = False
        transient = self.tty and not os.environ.get("CI")
        self.live = LiveStatus(self._write, self.width, transient=transient, threaded=not quiet)

    # -- output helpers ----------------------------------------------------------------------
    def width(self) -> int:
        return terminal_width(self.fixed_width)

    def _write(self, text: str) -> None:
        if self._closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # `diagnose ... | head`, a closed stream: the run and reports go on
            self._closed = True

    def _print(self, *lines: str) -> None:
        with self.live.lock:
            self.live.erase()
            for line in lines or ("",):
                self._write(line + "\n")

    def _paint(self, status: str, text: str) -> str:
        return f"\033[{_COLORS[status]}m{text}\033[0m" if self.color and status in _COLORS else text

    # -- Reporter protocol -------------------------------------------------------------------
    def start(self, run: "RunReport", checks: "list[CheckSpec]") -> None:
        self._id_width = max((len(c.id) for c in checks), default=0)
        if not self.quiet:
            self._print(*hang("", f"diagnose {target_name(run)}: {len(checks)} check{'' if len(checks) == 1 else 's'}", self.width()))

    def check_started(self, spec: "CheckSpec") -> None:
        if not self.quiet:
            self.live.begin(spec.id)

    def check_progress(self, spec: "CheckSpec", text: str) -> None:
        """What the running check says it is doing (`ctx.progress(...)`)."""
        if not self.quiet:
            self.live.update(squash(text))

    def check_finished(self, result: CheckResult, run: "RunReport") -> None:
        self.live.end()
        status = self._paint(result.status, f"{result.status.upper():<5}")
        if self.quiet:
            head = f"{status}  {result.check:<{self._id_width}}  "
            text = live_text(result)
            self._print(head + (clip(text, max(self.width() - visible_len(head), 1)) if self.tty else text))
            return
        head = f"  {status}  {result.check:<{self._id_width}}  {result.own_s:>5.1f} s  "
        self._print(*hang(head, live_text(result) + shared_note(result), self.width()))
        if self.verbose and result.status in (WARN, FAIL, ERROR):
            indent = " " * _DETAIL_INDENT
            if result.culprit:
                where = f" ({result.location})" if result.location else ""
                self._print(*hang(f"{indent}culprit: ", squash(result.culprit_label) + where, self.width()))
            if result.hint:
                self._print(*hang(f"{indent}hint: ", squash(result.hint), self.width()))

    def finish(self, run: "RunReport") -> None:
        self.live.close()
        if self.quiet:
            return
        width = self.width()
        for note in run.notes:
            self._print(*hang("note: ", squash(note), width))
        table = self.table(run.results)
        if table:
            self._print()
            self._print(*table)
        fixes = self.fix_lines(run.results)
        if fixes:
            self._print()
            self._print(*fixes)
        self._print()
        worst = run.worst_status() if run.results else SKIP
        self._print(*(self._paint(worst, line) for line in hang("", f"{run_counts(run)} in {seconds(run.duration_s)}", width)))
        if run.interrupted:
            self._print(self._paint(WARN, "interrupted: partial results"))
        paths = self._written_reports(run)
        if paths:
            self._print(*hang_items("reports: ", paths, width))

    # -- closing summary ---------------------------------------------------------------------
    def table(self, results: list[CheckResult]) -> list[str]:
        """One row per check that warned, failed or broke (passes and skips are in the counts): status, check
        and its culprit (or, with none, what went wrong), cut to the width; each root's consequences on one
        indented `↳` row under it. Empty when every check passed or was skipped."""
        rows = [(r, follow) for r, follow in group(results) if r.status in (WARN, FAIL, ERROR) or follow]
        if not rows:
            return []
        width = self.width()
        id_width = max([len("check"), *(len(r.check) for r, _ in rows)])
        lines = [f"  {'status':<6}  {'check':<{id_width}}  culprit or reason"]
        text_at = 2 + 6 + 2 + id_width + 2
        for r, follow in rows:
            why = r.culprit_label or squash(r.summary)
            row = f"  {self._paint(r.status, f'{r.status.upper():<6}')}  {r.check:<{id_width}}  "
            lines.append((row + clip(why, max(width - text_at, 1))).rstrip())
            if follow:
                lines.extend(hang(" " * (2 + 6 + 2) + "↳ ", consequence_line(r.check, follow), width))
        return lines

    def fix_lines(self, results: list[CheckResult]) -> list[str]:
        """`fix determinism: at model.py:20: pass training=self.training`, for failing root causes only."""
        lines: list[str] = []
        for r in root_causes(results):
            if r.hint:
                where = f"at {r.location}: " if r.location else ""
                lines.extend(hang(f"fix {r.check}: ", where + squash(r.hint), self.width(), indent=4))
        return lines

    def _written_reports(self, run: "RunReport") -> list[str]:
        if self.report_paths is not None:
            return [str(p) for p in self.report_paths if Path(p).exists()]
        folder = Path(str(run.options.get("report_dir") or "reports"))
        formats = run.options.get("format") or []
        candidates = [folder / WRITERS[f].filename for f in formats if f in WRITERS]
        since = run.started_at - 1.0  # file-system timestamps can be coarse
        return [str(p) for p in candidates if p.exists() and p.stat().st_mtime >= since]
