"""`diagnose.md`: a GitHub-flavoured Markdown summary, also appended to the job summary on GitHub Actions.

On GitHub Actions the writer also prints workflow annotations for fail/error/warn, so findings show
on the pull request next to the culprit's line. Both happen once, at the end of the run.

A PR comment must not show the runner's file system: absolute paths under the project root (GITHUB_WORKSPACE,
else the folder of the nearest pyproject.toml, else the working directory) are written relative to it,
library paths as `package/file.py`, and the model class by its plain name (no `<locals>` or loader alias).
"""
from __future__ import annotations

import functools
import html
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..locate.code import short_path
from ..options import find_pyproject
from ..results import ERROR, FAIL, PASS, SKIP, WARN, CheckResult, format_value
from ..rootcause import group
from .wording import consequence_line, run_counts, target_name

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import RunReport

STATUS_LABEL = {PASS: "✅ pass", WARN: "⚠️ warn", FAIL: "❌ fail", SKIP: "⏭️ skip", ERROR: "💥 error"}
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_PROSE_SPECIALS = re.compile(r"([\\*_\[\]|`])")
#: An absolute POSIX path inside prose: starts at a "/" not preceded by a word, a dot, a colon or a slash
#: (so `https://x`, `3/4` and `a/b` stay), and stops before whitespace, quotes, brackets and `:LINE`.
_ABS_PATH = re.compile(r"(?<![\w.:/~\\-])/[^\s`'\"|()<>\[\],;:]+")


@functools.lru_cache(maxsize=8)
def _root_for(cwd: str, workspace: str | None) -> str:
    if workspace and os.path.isabs(workspace):
        return os.path.realpath(workspace)
    pyproject = find_pyproject(cwd)
    return os.path.realpath(pyproject.parent if pyproject else cwd)


def project_root() -> str:
    """The folder paths are shown relative to: GITHUB_WORKSPACE, the nearest pyproject.toml's folder, the cwd."""
    return _root_for(os.getcwd(), os.environ.get("GITHUB_WORKSPACE"))


def relative_path(path: str, root: str | None = None) -> str:
    """An absolute path as a reader of the project sees it: relative under `root`, `package/file.py` for
    libraries (locate's policy), unchanged otherwise."""
    root = root or project_root()
    for candidate in (path, os.path.realpath(path)):
        if candidate == root or candidate.startswith(root.rstrip(os.sep) + os.sep):
            return Path(os.path.relpath(candidate, root)).as_posix()
    shown = short_path(path)
    return shown if not os.path.isabs(shown) else path


def relative_paths(text: Any) -> str:
    """Every absolute path in `text` rewritten by `relative_path` (hints, summaries, tracebacks, locations)."""
    text = "" if text is None else str(text)
    if "/" not in text:
        return text
    root = project_root()
    return _ABS_PATH.sub(lambda m: relative_path(m.group(0), root), text)


def class_name(qualified: Any) -> str:
    """`pkg.mod.Net` stays; `_diagnose_target_x.Net`, `__main__.Net` and `f.<locals>.Net` become `Net`."""
    text = str(qualified)
    parts = text.split(".")
    if any(p.startswith("_") or "<" in p for p in parts[:-1]):
        return parts[-1]
    return text


def _prose(text: str) -> str:
    text = html.escape(text, quote=False)  # `<script>` stays text on GitHub instead of being stripped
    text = _PROSE_SPECIALS.sub(r"\\\1", text)
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def md_inline(text: Any, *, table: bool = False) -> str:
    """Text as one line of Markdown: `code spans` kept, everything else escaped, newlines as <br>.

    In a table cell a pipe must be escaped even inside a code span (GFM splits cells first).
    """
    text = relative_paths(text)
    out, pos = [], 0
    for m in _CODE_SPAN.finditer(text):
        out.append(_prose(text[pos:m.start()]))
        inner = re.sub(r"\s*[\r\n]+\s*", " ", m.group(2))
        out.append(m.group(1) + (inner.replace("|", r"\|") if table else inner) + m.group(1))
        pos = m.end()
    out.append(_prose(text[pos:]))
    return "".join(out)


def md_code(text: Any, *, table: bool = False) -> str:
    """Literal text as a code span, with a fence longer than any backtick run inside it."""
    text = re.sub(r"\s*[\r\n]+\s*", " ", relative_paths(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    body = text.replace("|", r"\|") if table else text
    return f"{fence}{pad}{body}{pad}{fence}"


def _fenced(text: str, lang: str = "text") -> str:
    text = relative_paths(text)
    fence = "`" * max(3, max((len(run) + 1 for run in re.findall(r"`{3,}", text)), default=0))
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _culprit(result: CheckResult, *, table: bool) -> str:
    if not result.culprit:
        return md_code(result.location, table=table) if result.location else ""
    where = f" at {md_code(result.location, table=table)}" if result.location else ""
    return md_inline(result.culprit_label, table=table) + where


def render_markdown(run: "RunReport", *, final: bool = True) -> str:
    worst = run.worst_status() if run.results else SKIP
    emoji = STATUS_LABEL[worst].split()[0] if run.results else "⏳"
    lines = [f"# {emoji} diagnose {md_inline(target_name(run))}: {md_inline(run_counts(run))}", ""]
    facts = [f"{run.duration_s:.1f} s" if run.duration_s else ""]
    env = run.environment
    facts += [f"{k} {env[k]}" for k in ("torch", "python", "device") if env.get(k)]
    if run.target.get("model_class"):
        facts.insert(0, md_code(class_name(run.target["model_class"])))
    lines += [" · ".join(f for f in facts if f), ""]
    if run.interrupted:
        lines += ["**interrupted: partial results** (the run was stopped before every check finished)", ""]
    elif not final:
        lines += [f"_in progress: {len(run.results)} checks finished so far; this file is rewritten after each check_", ""]
    grouped = group(run.results)
    lines += _root_causes(grouped)
    if run.results:
        lines += ["| status | check | summary | culprit | hint |", "|---|---|---|---|---|"]
        for root, follow in grouped:
            for r in [root, *follow]:
                check = ("↳ " if r is not root else "") + md_code(r.check, table=True) + _test_of(r, table=True)
                cells = [STATUS_LABEL[r.status], check, md_inline(r.summary, table=True),
                         _culprit(r, table=True), md_inline(r.hint, table=True)]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if run.notes:
        lines += ["## Notes", "", *(f"- {md_inline(note)}" for note in run.notes), ""]
    for r in run.results:
        if r.status != PASS and not r.caused_by:  # a consequence is listed under its root
            lines += _section(r)
    for r in run.results:
        matrix = r.details.get("matrix") if isinstance(r.details, dict) else None
        if isinstance(matrix, list) and matrix:
            lines += _matrix_table(r.check, matrix)
    return "\n".join(lines).rstrip() + "\n"


def _root_causes(grouped: list[tuple[CheckResult, list[CheckResult]]]) -> list[str]:
    """"Root causes" first: each failing root with its culprit and fix, and the checks not judged because of it."""
    roots = [(r, follow) for r, follow in grouped if follow and r.status in (FAIL, ERROR)]
    if not roots:
        return []
    lines = ["## Root causes", ""]
    for r, follow in roots:
        lines.append(f"- {STATUS_LABEL[r.status]} {md_code(r.check)}: {md_inline(r.summary)}")
        if r.culprit or r.location:
            lines.append(f"  - **culprit:** {_culprit(r, table=False)}")
        if r.hint:
            lines.append(f"  - **fix:** {md_inline(r.hint)}")
        lines.append(f"  - **{md_inline(consequence_line(r.check, follow))}**")
    return [*lines, ""]


#: Columns of the deployment matrix (benchmark check), in order, with their headers.
MATRIX_COLUMNS = (("variant", "variant"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("speedup", "speed-up"),
                  ("max_error", "max abs error vs fp32"), ("size_mb", "size MB"), ("verdict", "equivalence"),
                  ("recommended", "recommended"), ("note", "note"))


def _matrix_table(check: str, rows: list[Any]) -> list[str]:
    """The deployment matrix: shown for every status, since it informs even when everything passed."""
    lines = [f"## Deployment matrix ({md_code(check)})", "", "| " + " | ".join(h for _, h in MATRIX_COLUMNS) + " |",
             "|" + "---|" * len(MATRIX_COLUMNS)]
    for row in rows:
        if not isinstance(row, dict):
            continue
        cells = []
        for key, _ in MATRIX_COLUMNS:
            value = row.get(key)
            if key == "recommended":
                cells.append("⭐ yes" if value else "")
            elif value is None:
                cells.append("–")
            else:
                cells.append(md_inline(format_value(value), table=True))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _test_of(r: CheckResult, *, table: bool) -> str:
    """` (in test_x.py::test_export)` for a result a fixture produced in the user's own test."""
    test = r.details.get("test") if isinstance(r.details, dict) else None
    return f" (in {md_code(test, table=table)})" if test else ""


def _section(r: CheckResult) -> list[str]:
    lines = [f"## {STATUS_LABEL[r.status]}: {md_code(r.check)}", "", md_inline(r.summary) or "_no summary_", ""]
    facts = []
    if r.culprit or r.location:
        facts.append(f"- **culprit:** {_culprit(r, table=False)}")
    if r.hint:
        facts.append(f"- **hint:** {md_inline(r.hint)}")
    test = r.details.get("test") if isinstance(r.details, dict) else None
    if test:
        facts.append(f"- **test:** {md_code(test)}")
    shared = f" (+{r.shared_s:.1f} s shared: {', '.join(r.shared)})" if getattr(r, "shared_s", 0) and r.shared else ""
    facts.append(f"- **duration:** {r.duration_s:.1f} s{shared}")
    lines += [*facts, ""]
    if r.metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {md_code(k, table=True)} | {md_inline(format_value(v), table=True)} |" for k, v in r.metrics.items()]
        lines.append("")
    traceback = r.details.get("traceback") if isinstance(r.details, dict) else None
    if r.status == ERROR and isinstance(traceback, str):
        lines += ["<details><summary>traceback</summary>", "", _fenced(traceback), "", "</details>", ""]
    return lines


# -- GitHub Actions ------------------------------------------------------------------------------
def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _split_location(location: str | None) -> tuple[str | None, str | None]:
    """"path:line" -> (path, line); a path alone -> (path, None). Absolute paths inside the
    checkout (GITHUB_WORKSPACE) become relative, because GitHub attaches annotations to repository paths only."""
    if not location:
        return None, None
    path, sep, line = location.rpartition(":")
    if not (sep and line.isdigit() and path):
        path, line = location, ""
    if os.path.isabs(path):
        try:
            path = relative_path(path)
        except ValueError:  # another drive on Windows
            pass
    return path, line or None


def annotation(result: CheckResult) -> str | None:
    """The `::error ...::message` workflow command for one result (None for pass and skip)."""
    level = {FAIL: "error", ERROR: "error", WARN: "warning"}.get(result.status)
    if level is None:
        return None
    path, line = _split_location(result.location)
    props = []
    if path:
        props.append(f"file={_escape_property(path)}")
        if line:
            props.append(f"line={line}")
    props.append(f"title={_escape_property('diagnose ' + result.check)}")
    message = [result.summary]
    if result.culprit:
        message.append(f"culprit: {result.culprit}")
    if result.hint:
        message.append(f"hint: {result.hint}")
    return f"::{level} {','.join(props)}::{_escape_data(relative_paths(chr(10).join(message)))}"


class MarkdownWriter:
    """Renders diagnose.md; at the end of the run, feeds GitHub's job summary and annotations."""

    filename = "diagnose.md"

    def render(self, run: "RunReport", *, final: bool = True) -> str:
        return render_markdown(run, final=final)

    def finished(self, run: "RunReport", text: str | None) -> None:
        """Once per run: annotations (GITHUB_ACTIONS=true) and the job summary (GITHUB_STEP_SUMMARY)."""
        if os.environ.get("GITHUB_ACTIONS") == "true":
            for result in run.results:
                command = annotation(result)
                if command:
                    print(command, file=sys.stdout)
            sys.stdout.flush()
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file and text is not None:
            with open(summary_file, "a", encoding="utf-8") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")
