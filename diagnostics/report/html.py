"""`diagnose.html`: one self-contained file to open offline or attach to a CI run.

Everything is inline (CSS, a few lines of JS for expand/collapse, plots as data URIs) and every
piece of text goes through html.escape: summaries and details come from models and user code.
Without JS all rows are simply shown expanded.
"""
from __future__ import annotations

import html
import json
import re
from typing import TYPE_CHECKING, Any

from ..results import ERROR, FAIL, STATUSES, WARN, CheckResult, format_value, jsonable
from .plots import plot_specs, render_result_plots
from ..rootcause import group
from .wording import consequence_line, run_counts, target_name

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import RunReport

MAX_ROWS = 500  # per details table; diagnose.json keeps everything
MAX_DEPTH = 4

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#1f2328}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:6px 8px;margin:0;white-space:pre-wrap;word-break:break-word;max-height:30em;overflow:auto}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;margin-right:6px;color:#fff;font-weight:600}
.pass{--c:#1a7f37;--bg:#dafbe1}.warn{--c:#9a6700;--bg:#fff8c5}.fail{--c:#cf222e;--bg:#ffebe9}
.skip{--c:#6e7781;--bg:#f6f8fa}.error{--c:#8250df;--bg:#fbefff}
.badge{background:var(--c)}tr.res{background:var(--bg);cursor:pointer}tr.res td.st{color:var(--c);font-weight:700;white-space:nowrap}
tr.res:hover{filter:brightness(.97)}tr.consequence td{opacity:.8}table.results{width:100%}tr.detail>td{background:#fff;padding:8px 16px}
.js tr.detail.closed{display:none}.banner{padding:6px 10px;border-radius:6px;margin:.5em 0;background:#fff8c5}
.note{color:#57606a;font-style:italic}.kv th{width:1%;white-space:nowrap}figure{display:inline-block;margin:.5em 1em .5em 0}
figcaption{color:#57606a;font-size:12px}.head{display:flex;flex-wrap:wrap;gap:0 3em}h3{font-size:1em;margin:.8em 0 .2em}button{margin:0 4px 4px 0}.muted{color:#57606a}
"""

_JS = """
function toggleRow(id){var d=document.getElementById(id);if(d){d.classList.toggle('closed');}}
function setAll(open){document.querySelectorAll('tr.detail').forEach(function(d){d.classList.toggle('closed',!open);});}
"""

_NONE = '<p class="note">not recorded</p>'
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def prose(value: Any) -> str:
    """Escaped text where `code spans` (as hints write them) become <code>."""
    return _CODE_SPAN.sub(r"<code>\1</code>", esc(value)).replace("\n", "<br>")


def render_value(value: Any, depth: int = 0) -> str:
    """Any details value as HTML: dict -> key/value table, list of dicts -> table, rest -> text or <pre> JSON."""
    if isinstance(value, dict) and value and depth < MAX_DEPTH:
        return kv_table(value, depth + 1)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) and depth < MAX_DEPTH:
        return records_table(value, depth + 1)
    if isinstance(value, str):
        return f"<pre>{esc(value)}</pre>" if "\n" in value else esc(value)
    if value is None or isinstance(value, (bool, int, float)):
        return esc(format_value(value))
    return f"<pre>{esc(json.dumps(jsonable(value), indent=None if _short(value) else 2, ensure_ascii=False))}</pre>"


def _short(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) <= 16 and all(not isinstance(v, (dict, list)) for v in value)


def kv_table(data: dict[str, Any], depth: int = 0) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{render_value(v, depth)}</td></tr>" for k, v in list(data.items())[:MAX_ROWS])
    return f'<table class="kv">{rows}</table>{_more(len(data))}'


def records_table(records: list[dict[str, Any]], depth: int = 0) -> str:
    columns = list(dict.fromkeys(k for rec in records for k in rec))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{render_value(rec[c], depth) if c in rec else ''}</td>" for c in columns) + "</tr>"
                   for rec in records[:MAX_ROWS])
    return f"<table><tr>{head}</tr>{body}</table>{_more(len(records))}"


def _more(n: int) -> str:
    return f'<p class="note">{n - MAX_ROWS} more rows in diagnose.json</p>' if n > MAX_ROWS else ""


def _detail_body(r: CheckResult, final: bool) -> str:
    parts = [f"<p>{prose(r.summary)}</p>"]
    facts: dict[str, str] = {}
    if r.culprit or r.location:
        where = f" <code>{esc(r.location)}</code>" if r.location else ""
        facts["culprit"] = prose(r.culprit_label) + where
    if r.hint:
        facts["hint"] = prose(r.hint)
    facts["family"] = esc(r.family)
    facts["duration"] = f"{r.duration_s:.2f} s"
    parts.append('<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts.items()) + "</table>")
    if r.metrics:
        rows = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(format_value(v))}</td></tr>" for k, v in r.metrics.items())
        parts.append(f"<h3>metrics</h3><table><tr><th>metric</th><th>value</th></tr>{rows}</table>")
    details = r.details if isinstance(r.details, dict) else {"details": r.details}
    shown = {k: v for k, v in details.items() if k != "plot"}
    if shown:
        parts.append(f"<h3>details</h3>{kv_table(shown)}")
    if plot_specs(details):
        parts.append("<h3>plots</h3>" + (_figures(r) if final else '<p class="note">plots are drawn when the run finishes</p>'))
    return "".join(parts)


def _figures(r: CheckResult) -> str:
    out = []
    for title, uri, note in render_result_plots(r):
        if uri:
            out.append(f'<figure><img alt="{esc(title)}" src="{uri}"><figcaption>{esc(title)}</figcaption></figure>')
        else:
            out.append(f'<p class="note">{esc(title + ": " if title else "")}{esc(note)}</p>')
    return "".join(out)


def render_html(run: "RunReport", *, final: bool = True) -> str:
    name = target_name(run)
    summary = run.summary
    badges = "".join(f'<span class="badge {s}">{summary[s]} {s}</span>' for s in STATUSES if summary.get(s))
    banner = ""
    if run.interrupted:
        banner = '<p class="banner"><b>interrupted: partial results</b> — the run stopped before every check finished.</p>'
    elif not final:
        banner = f'<p class="banner">in progress: {len(run.results)} checks finished so far; this file is rewritten after each check.</p>'
    rows = []
    open_by_default = (WARN, FAIL, ERROR)
    grouped = group(run.results)
    ordered = [(r, r is not root) for root, follow in grouped for r in [root, *follow]]
    for i, (r, follows) in enumerate(ordered):
        rid = f"d{i}"
        culprit = prose(r.culprit_label) + (f" <code>{esc(r.location)}</code>" if r.location else "")
        arrow = "↳ " if follows else ""
        rows.append(
            f'<tr class="res {r.status}{" consequence" if follows else ""}" onclick="toggleRow(\'{rid}\')"><td class="st">{esc(r.status)}</td>'
            f"<td>{arrow}<code>{esc(r.check)}</code></td><td>{prose(r.summary)}</td><td>{culprit}</td>"
            f'<td class="muted">{r.duration_s:.1f} s</td></tr>'
            f'<tr id="{rid}" class="detail{"" if r.status in open_by_default else " closed"}"><td colspan="5">'
            f"{_detail_body(r, final)}</td></tr>"
        )
    results = (
        '<p><button onclick="setAll(true)">expand all</button><button onclick="setAll(false)">collapse all</button></p>'
        '<table class="results"><tr><th>status</th><th>check</th><th>summary</th><th>culprit</th><th>time</th></tr>'
        + "".join(rows) + "</table>"
    ) if rows else '<p class="note">no check has finished yet</p>'
    notes = ("<h2>Notes</h2><ul>" + "".join(f"<li>{prose(n)}</li>" for n in run.notes) + "</ul>") if run.notes else ""
    duration = f" in {run.duration_s:.1f} s" if run.duration_s else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>diagnose {esc(name)}</title><style>{_CSS}</style>"
        "<script>document.documentElement.classList.add('js')</script></head><body>"
        f"<h1>diagnose {esc(name)}</h1><p>{badges}<span class=\"muted\">{esc(run_counts(run))}{duration}</span></p>{banner}"
        f'<div class="head"><div><h2>Target</h2>{kv_table(run.target) if run.target else _NONE}</div>'
        f"<div><h2>Environment</h2>{kv_table(run.environment) if run.environment else _NONE}</div></div>"
        f"{_root_causes(grouped)}<h2>Results</h2>{results}{notes}"
        f"<details><summary>run options and overhead</summary>{kv_table(run.options) if run.options else ''}"
        f"{kv_table(run.overhead) if run.overhead else ''}</details>"
        f"<script>{_JS}</script></body></html>\n"
    )


def _root_causes(grouped: list[tuple[CheckResult, list[CheckResult]]]) -> str:
    """"Root causes" first: each failing root with its culprit and fix, and the checks not judged because of it."""
    roots = [(r, follow) for r, follow in grouped if follow and r.status in (FAIL, ERROR)]
    if not roots:
        return ""
    items = []
    for r, follow in roots:
        facts = []
        if r.culprit or r.location:
            facts.append("<b>culprit:</b> " + prose(r.culprit_label) + (f" <code>{esc(r.location)}</code>" if r.location else ""))
        if r.hint:
            facts.append(f"<b>fix:</b> {prose(r.hint)}")
        facts.append(f"<b>{esc(consequence_line(r.check, follow))}</b>")
        items.append(f'<li><span class="badge {esc(r.status)}">{esc(r.status)}</span><code>{esc(r.check)}</code>: {prose(r.summary)}'
                     "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul></li>")
    return "<h2>Root causes</h2><ul>" + "".join(items) + "</ul>"


class HtmlWriter:
    """Renders diagnose.html; plots only in the final rendering (matplotlib is too slow per check)."""

    filename = "diagnose.html"

    def render(self, run: "RunReport", *, final: bool = True) -> str:
        return render_html(run, final=final)

