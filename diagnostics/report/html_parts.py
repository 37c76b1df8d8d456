"""The sections of diagnose.html, in reading order: verdict, deployment matrix, checks, run facts.

The verdict comes first because that is what a reader opened the file for: each root cause with its
culprit and fix, the checks not judged because of it, then warnings. Plots are never hidden in a
collapsed block; metrics and details of passing checks are (one click away).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..results import ERROR, FAIL, PASS, SKIP, WARN, CheckResult
from .html_values import Raw, boolean, esc, kv_table, label, prose, records_table, render_value, scroll
from .markdown import MATRIX_COLUMNS, class_name
from .plots import plot_specs, render_result_plots
from .wording import consequence_line

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import RunReport

#: The headline word for the worst status of a run.
HEADLINE = {ERROR: "errors", FAIL: "failed", WARN: "passed with warnings", PASS: "passed", SKIP: "nothing judged"}


def anchor(check: str) -> str:
    return "check-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in check)


def check_link(check: str) -> str:
    return f'<a href="#{anchor(check)}"><code>{esc(check)}</code></a>'


def badge(status: str) -> str:
    return f'<span class="badge {esc(status)}">{esc(status)}</span>'


def culprit_html(r: CheckResult) -> str:
    where = f" <code>{esc(r.location)}</code>" if r.location else ""
    return (prose(r.culprit_label) + (" at" if r.culprit and where else "") + where).strip()


def duration_html(r: CheckResult) -> str:
    """The check's own time, as the terminal shows it, and below it the shared work it paid for
    (fp32/fp64 references, the export sweep ...), named in a tooltip."""
    from .terminal import shared_note  # here: terminal -> files -> html would be an import cycle at load

    own = getattr(r, "own_s", r.duration_s)
    note = shared_note(r) if hasattr(r, "shared_s") else ""
    if not note:
        return f"{own:.1f} s"
    return (f'{own:.1f} s<br><span class="muted" title="{esc(note.strip(" ()"))}">'
            f"+{r.shared_s:.1f} s shared</span>")


# -- header ----------------------------------------------------------------------------------------
def header(run: "RunReport", name: str, counts: str, final: bool) -> str:
    worst = run.worst_status() if run.results else SKIP
    word = HEADLINE[worst] if run.results else "no checks finished yet"
    duration = f" · {run.duration_s:.1f} s" if run.duration_s else ""
    facts = _target_facts(run)
    banner = ""
    if run.interrupted:
        banner = '<p class="banner"><b>interrupted: partial results</b> — the run stopped before every check finished.</p>'
    elif not final:
        banner = f'<p class="banner">in progress: {len(run.results)} checks finished so far; this file is rewritten after each check.</p>'
    return (f'<header class="top {esc(worst)}"><h1>diagnose {esc(name)}</h1>'
            f'<p class="headline"><span class="badge {esc(worst)}">{esc(word)}</span> {esc(counts)}'
            f'<span class="muted">{esc(duration)}</span></p>'
            f'<p class="muted">{" · ".join(facts)}</p>{banner}</header>')


def _target_facts(run: "RunReport") -> list[str]:
    target, env = run.target, run.environment
    facts = []
    if target.get("model_class"):
        facts.append(f"<code>{esc(class_name(target['model_class']))}</code>")
    if isinstance(target.get("parameters"), int):
        facts.append(f"{target['parameters']:,} parameters")
    if target.get("inputs"):
        facts.append(f"inputs {esc(target['inputs'])}")
    facts += [f"{esc(k)} {esc(env[k])}" for k in ("torch", "device") if env.get(k)]
    return facts


# -- verdict ---------------------------------------------------------------------------------------
def verdict(run: "RunReport", grouped: list[tuple[CheckResult, list[CheckResult]]]) -> str:
    """Root causes with culprit and fix (consequences under each), then warnings; or that nothing failed."""
    roots = [(r, follow) for r, follow in grouped if r.status in (FAIL, ERROR) and not r.caused_by]
    warns = [r for r, _ in grouped if r.status == WARN and not r.caused_by]
    parts = []
    if roots:
        parts.append("<h2>Root causes</h2>" + "".join(_cause(r, follow) for r, follow in roots))
    if warns:
        parts.append("<h2>Warnings</h2>" + "".join(_cause(r, []) for r in warns))
    if not roots and not warns and run.results:
        judged = sum(r.status == PASS for r in run.results)
        parts.append(f'<p class="allgood"><span class="yes">✓</span> no check failed or warned ({judged} passed).</p>')
    if run.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{prose(n)}</li>" for n in run.notes) + "</ul>")
    return f'<section id="verdict">{"".join(parts)}</section>' if parts else ""


def _cause(r: CheckResult, follow: list[CheckResult]) -> str:
    facts = []
    if r.culprit or r.location:
        facts.append(f"<dt>culprit</dt><dd>{culprit_html(r)}</dd>")
    if r.hint:
        facts.append(f"<dt>fix</dt><dd>{prose(r.hint)}</dd>")
    if follow:
        words = esc(consequence_line(r.check, follow)).replace(
            esc(", ".join(c.check for c in follow)), ", ".join(check_link(c.check) for c in follow), 1)
        facts.append(f"<dt>not judged</dt><dd>{words}</dd>")
    dl = f'<dl class="facts">{"".join(facts)}</dl>' if facts else ""
    return (f'<div class="cause {esc(r.status)}"><p class="cause-head">{badge(r.status)} {check_link(r.check)}: '
            f"{prose(r.summary)}</p>{dl}</div>")


# -- deployment matrix -----------------------------------------------------------------------------
def matrices(run: "RunReport", final: bool) -> tuple[str, set[str]]:
    """The deployment matrix of each result that has one, with that result's plots, all visible.
    Returns the HTML and the checks whose plots it showed (their own sections do not repeat them)."""
    out, shown = [], set()
    for r in run.results:
        matrix = r.details.get("matrix") if isinstance(r.details, dict) else None
        if not (isinstance(matrix, list) and matrix):
            continue
        rows = [_matrix_row(row) for row in matrix if isinstance(row, dict)]
        table = records_table(rows, columns=[(key, head) for key, head in MATRIX_COLUMNS]) if rows else ""
        out.append(f'<section id="matrix"><h2>Deployment matrix ({check_link(r.check)})</h2>'
                   f"<p>{prose(r.summary)}</p>{table}{figures(r, final)}</section>")
        shown.add(r.check)
    return "".join(out), shown


def _matrix_row(row: dict[str, Any]) -> dict[str, Any]:
    """⭐ for the recommended variant, as the Markdown shows it; the rest as values."""
    shown = dict(row)
    shown["recommended"] = Raw('<span class="star">★ yes</span>' if row.get("recommended") else "")
    return shown


# -- checks ----------------------------------------------------------------------------------------
def overview(ordered: list[tuple[CheckResult, bool]]) -> str:
    rows = []
    for r, follows in ordered:
        arrow = '<span class="muted">↳ </span>' if follows else ""
        rows.append(f'<tr class="{esc(r.status)}{" consequence" if follows else ""}"><td class="st">{badge(r.status)}</td>'
                    f"<td>{arrow}{check_link(r.check)}</td><td>{prose(r.summary)}</td><td>{culprit_html(r)}</td>"
                    f'<td class="time">{duration_html(r)}</td></tr>')
    head = "<tr><th>status</th><th>check</th><th>summary</th><th>culprit</th><th>time</th></tr>"
    return scroll(f'<table class="overview"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>')


def check_section(r: CheckResult, final: bool, plots_shown_above: bool) -> str:
    facts = []
    if r.culprit or r.location:
        facts.append(f"<dt>culprit</dt><dd>{culprit_html(r)}</dd>")
    if r.hint:
        facts.append(f"<dt>hint</dt><dd>{prose(r.hint)}</dd>")
    if r.caused_by:
        facts.append(f"<dt>root cause</dt><dd>{check_link(r.caused_by)}</dd>")
    dl = f'<dl class="facts">{"".join(facts)}</dl>' if facts else ""
    body = _metrics_and_details(r)
    if body:
        opened = " open" if r.status in (WARN, FAIL, ERROR) else ""
        body = f'<details{opened}><summary>metrics and details</summary>{body}</details>'
    plots = '<p class="note">plots: shown with the deployment matrix above</p>' if plots_shown_above and final else figures(r, final)
    family = f"{esc(r.family)} · " if r.family else ""
    return (f'<section class="check {esc(r.status)}" id="{anchor(r.check)}"><h3>{badge(r.status)} <code>{esc(r.check)}</code>'
            f' <span class="muted">{family}{duration_html(r).replace("<br>", " ")}</span></h3><p>{prose(r.summary) or "<i>no summary</i>"}</p>'
            f"{dl}{body}{plots}</section>")


def _metrics_and_details(r: CheckResult) -> str:
    parts = []
    if r.metrics:
        parts.append(f"<h4>metrics</h4>{_metrics(r.metrics)}")
    details = r.details if isinstance(r.details, dict) else {"details": r.details}
    shown = {k: v for k, v in details.items() if k not in ("plot", "matrix", "blocked_by")}
    if shown:
        parts.append(f"<h4>details</h4>{kv_table(shown, full=True)}")
    return "".join(parts)


def _metrics(metrics: dict[str, Any]) -> str:
    """Flat name -> value pairs in a compact grid of small cells (a long list would fill a screen)."""
    cells = "".join(f"<div><dt><code>{esc(k)}</code></dt><dd>{render_value(v)}</dd></div>" for k, v in metrics.items())
    return f'<dl class="metrics">{cells}</dl>'



def figures(r: CheckResult, final: bool) -> str:
    """The result's plots under a "Plots" heading, or nothing when there is none to show."""
    if not plot_specs(r.details):
        return ""
    if not final:
        return '<p class="note">plots are drawn when the run finishes</p>'
    drawn = render_result_plots(r)
    if not drawn:
        return ""
    items = []
    for title, uri, note in drawn:
        if uri:
            items.append(f'<figure><img class="plot" alt="{esc(title)}" src="{uri}"></figure>')
        else:
            items.append(f'<p class="note">{esc(title + ": " if title else "")}{esc(note)}</p>')
    return f'<div class="plots"><h4>Plots</h4><div class="grid">{"".join(items)}</div></div>'


# -- run facts -------------------------------------------------------------------------------------
def run_facts(run: "RunReport") -> str:
    target = kv_table(run.target) if run.target else '<p class="note">not recorded</p>'
    env = kv_table(run.environment) if run.environment else '<p class="note">not recorded</p>'
    extra = (kv_table(run.options) if run.options else "") + (kv_table(run.overhead) if run.overhead else "")
    opts = f"<details><summary>run options and overhead</summary>{extra}</details>" if extra else ""
    return (f'<section id="run"><h2>Run</h2><div class="cols"><div><h3>Target</h3>{target}</div>'
            f"<div><h3>Environment</h3>{env}</div></div>{opts}</section>")


__all__ = ["header", "verdict", "matrices", "overview", "check_section", "figures", "run_facts", "boolean", "label"]
