"""Live progress and the closing summary on a terminal (or a CI log)."""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

from ..results import ERROR, FAIL, PASS, SKIP, WARN, CheckResult
from ..rootcause import group
from ..text import squash
from .files import WRITERS
from .wording import consequence_line, run_counts, target_name

if TYPE_CHECKING:  # pragma: no cover
    from ..registry import CheckSpec
    from ..runner import RunReport

_COLORS = {PASS: "32", WARN: "33", FAIL: "1;31", SKIP: "2", ERROR: "1;35"}
_FALLBACK_WIDTH = 120


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


class TerminalReporter:
    """Prints one line per finished check and a summary table at the end.

    verbose: also print the culprit, location and hint under every warn/fail/error line.
    quiet: print only one line per finished check (status, check, one-line summary): no header, no
    progress line, no notes, no summary table, no counts line and no report paths (`diagnose -q`).
    report_paths: the report files to list at the end; by default the files of run.options'
    report_dir/format that this run wrote (modified since it started).
    """

    def __init__(self, stream: TextIO | None = None, color: bool | None = None, verbose: bool = False,
                 report_paths: Sequence[str | os.PathLike[str]] | None = None, quiet: bool = False) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.tty = _is_tty(self.stream)
        self.color = color if color is not None else (self.tty and not os.environ.get("NO_COLOR"))
        self.verbose = verbose and not quiet
        self.quiet = quiet
        self.report_paths = list(report_paths) if report_paths is not None else None
        self._id_width = 0
        self._pending = False
        self._closed = False

    # -- output helpers ----------------------------------------------------------------------
    def _print(self, text: str = "", end: str = "\n") -> None:
        if self._closed:
            return
        try:
            if self._pending:  # erase the transient "running ..." line first
                self.stream.write("\r\033[K")
                self._pending = False
            self.stream.write(text + end)
            self.stream.flush()
        except BrokenPipeError:  # `diagnose ... | head`: stop printing, let the run and its reports finish
            self._closed = True

    def _paint(self, status: str, text: str) -> str:
        return f"\033[{_COLORS[status]}m{text}\033[0m" if self.color and status in _COLORS else text

    def _width(self) -> int:
        return shutil.get_terminal_size((_FALLBACK_WIDTH, 24)).columns or _FALLBACK_WIDTH

    # -- Reporter protocol -------------------------------------------------------------------
    def start(self, run: "RunReport", checks: "list[CheckSpec]") -> None:
        self._id_width = max((len(c.id) for c in checks), default=0)
        if not self.quiet:
            self._print(f"diagnose {target_name(run)}: {len(checks)} check{'' if len(checks) == 1 else 's'}")

    def check_started(self, spec: "CheckSpec") -> None:
        if self.tty and not self.quiet:
            self._print(f"  running {spec.id} ...", end="")
            self._pending = True

    def check_finished(self, result: CheckResult, run: "RunReport") -> None:
        status = self._paint(result.status, f"{result.status.upper():<5}")
        if self.quiet:
            line = f"{status}  {result.check:<{self._id_width}}  {squash(result.summary)}"
        else:
            line = f"  {status}  {result.check:<{self._id_width}}  ({result.duration_s:.1f} s)  {squash(result.summary)}"
        if result.caused_by and not result.summary.startswith(("not judged", "a consequence")):
            line += f" (a consequence of {result.caused_by})"
        self._print(line)
        if self.verbose and result.status in (WARN, FAIL, ERROR):
            indent = " " * 9
            if result.culprit:
                where = f" ({result.location})" if result.location else ""
                self._print(f"{indent}culprit: {squash(result.culprit)}{where}")
            if result.hint:
                self._print(f"{indent}hint: {squash(result.hint)}")

    def finish(self, run: "RunReport") -> None:
        if self.quiet:
            return
        for note in run.notes:
            self._print(f"note: {squash(note)}")
        if run.results:
            self._print()
            for line in self.table(run.results):
                self._print(line)
        self._print()
        worst = run.worst_status() if run.results else SKIP
        self._print(self._paint(worst, f"{run_counts(run)} in {run.duration_s:.1f} s"))
        if run.interrupted:
            self._print(self._paint(WARN, "interrupted: partial results"))
        paths = self._written_reports(run)
        if paths:
            self._print("reports: " + ", ".join(paths))

    # -- summary table -----------------------------------------------------------------------
    def table(self, results: list[CheckResult]) -> list[str]:
        """Rows of status, check, summary, culprit, hint; the last three wrapped to fit the width. Each
        root cause is followed by one indented row naming its consequences (not judged)."""
        header = ("status", "check", "summary", "culprit", "hint")
        rows: list[tuple[str, ...]] = []
        for r, follow in group(results):
            rows.append((r.status, r.check, squash(r.summary),
                         squash(r.culprit) + (f" ({r.location})" if r.culprit and r.location else ""), squash(r.hint)))
            if follow:
                rows.append(("", "  ↳", consequence_line(r.check, follow), "", ""))
        fixed = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in (0, 1)]
        natural = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in (2, 3, 4)]
        # a column is never narrower than its longest word (up to 40): paths and module names stay whole
        longest = [max((len(w) for row in rows for w in row[i].split()), default=0) for i in (2, 3, 4)]
        minimum = [min(n, max(12, min(w, 40))) for n, w in zip(natural, longest)]
        flex = _share(self._width() - sum(fixed) - 2 * (len(header) - 1) - 2, natural, minimum)
        widths = [*fixed, *flex]

        def render(cells: tuple[str, ...], status: str | None) -> list[str]:
            wrapped = [(textwrap.wrap(c, w, break_on_hyphens=False) or [""]) if i >= 2 else [c]
                       for i, (c, w) in enumerate(zip(cells, widths))]
            out = []
            for n in range(max(len(w) for w in wrapped)):
                parts = [(w[n] if n < len(w) else "").ljust(widths[i]) for i, w in enumerate(wrapped)]
                if status and n == 0:
                    parts[0] = self._paint(status, parts[0])
                out.append(("  " + "  ".join(parts)).rstrip())
            return out

        lines = render(header, None)
        lines.append("  " + "  ".join("-" * w for w in widths))
        for row in rows:
            lines.extend(render(row, row[0]))
        return lines

    def _written_reports(self, run: "RunReport") -> list[str]:
        if self.report_paths is not None:
            return [str(p) for p in self.report_paths if Path(p).exists()]
        folder = Path(str(run.options.get("report_dir") or "reports"))
        formats = run.options.get("format") or []
        candidates = [folder / WRITERS[f].filename for f in formats if f in WRITERS]
        since = run.started_at - 1.0  # file-system timestamps can be coarse
        return [str(p) for p in candidates if p.exists() and p.stat().st_mtime >= since]


def _share(total: int, natural: list[int], minimum: list[int]) -> list[int]:
    """Split `total` columns among flexible columns: all keep their natural width if they fit; else
    they share it in proportion to their natural widths, except that a column whose share would be
    below its minimum gets the minimum and the others share what is left (the line overflows only
    when the minimums alone do not fit)."""
    if sum(natural) <= total:
        return list(natural)
    widths = [0] * len(natural)
    free = set(range(len(natural)))
    while free:
        left = total - sum(widths[i] for i in range(len(natural)) if i not in free)
        weight = sum(natural[i] for i in free) or 1
        share = {i: left * natural[i] // weight for i in free}
        short = {i for i in free if share[i] < min(minimum[i], natural[i])}
        if not short:
            for i in free:
                widths[i] = min(natural[i], share[i])
            break
        for i in short:
            widths[i] = min(minimum[i], natural[i])
        free -= short
    return widths
