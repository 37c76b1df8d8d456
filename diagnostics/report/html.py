"""`diagnose.html`: one self-contained file to open offline or attach to a CI run.

Reading order: the verdict (root causes with culprit and fix, their consequences, warnings), the
deployment matrix with its plots, an overview of every check, one section per check, then the run's
facts. Everything is inline (CSS, plots as data URIs; no script is needed to read it) and every piece
of text goes through html.escape: summaries and details come from models and user code. Details are
rendered as tables and lists (html_values.py), never as raw JSON; the page never scrolls sideways
(wide tables scroll inside their own box).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..rootcause import group
from .html_parts import check_section, header, matrices, overview, run_facts, verdict
from .html_values import MAX_ROWS, esc, kv_table, prose, records_table, render_value
from .wording import run_counts, target_name

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import RunReport

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em 3em;color:#1f2328;overflow-wrap:anywhere}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin:1.4em 0 .5em;padding-bottom:.2em;border-bottom:1px solid #d0d7de}
h3{font-size:1.05em;margin:0 0 .3em}h4{font-size:.95em;margin:.8em 0 .3em;color:#57606a}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
code,pre{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
code{background:#f6f8fa;padding:0 3px;border-radius:4px}
pre{background:#f6f8fa;padding:6px 8px;margin:0;white-space:pre-wrap;word-break:break-word;max-height:30em;overflow:auto}
.scroll{overflow-x:auto;max-width:100%;margin:.3em 0;position:relative}
table{border-collapse:collapse;overflow-wrap:normal}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}table.kv>tbody>tr>th,table.kv>tr>th{white-space:nowrap}
table.kv.full{width:100%;table-layout:fixed}table.kv.full>tbody>tr>th,table.kv.full>tr>th{width:13em;white-space:normal;overflow-wrap:anywhere}
td.n,.num,td.time{white-space:nowrap;font-variant-numeric:tabular-nums}td.n{text-align:right}
table.records td{max-width:40em}table.overview{width:100%}table.overview td.st{white-space:nowrap}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;margin-right:4px;color:#fff;font-weight:600;font-size:.9em;white-space:nowrap;background:var(--c)}
.pass{--c:#1a7f37;--bg:#dafbe1}.warn{--c:#9a6700;--bg:#fff8c5}.fail{--c:#cf222e;--bg:#ffebe9}
.skip{--c:#6e7781;--bg:#f6f8fa}.error{--c:#8250df;--bg:#fbefff}
header.top{border-left:6px solid var(--c);padding:.3em 0 .3em 1em;margin:.5em 0 1em}.headline{font-size:1.1em;margin:.3em 0}
.cause{border:1px solid var(--c);border-left-width:6px;border-radius:6px;background:var(--bg);padding:.5em 1em;margin:.6em 0}
.cause-head{margin:.1em 0 .4em;font-weight:500}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;margin:.3em 0}dl.facts dt{font-weight:700}dl.facts dd{margin:0}
.allgood{font-size:1.1em;background:#dafbe1;padding:.5em 1em;border-radius:6px}
tr.consequence td{opacity:.8}
section.check{border:1px solid #d0d7de;border-left:6px solid var(--c);border-radius:6px;padding:.6em 1em;margin:.8em 0}
section.check.pass,section.check.skip{padding:.4em 1em}section.check>p{margin:.2em 0 .4em}
details>summary{cursor:pointer;color:#57606a;margin:.3em 0}
.plots .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,460px),1fr));gap:.8em}
figure{margin:0}img.plot{max-width:100%;height:auto;border:1px solid #eaeef2;border-radius:4px}
.banner{padding:6px 10px;border-radius:6px;margin:.5em 0;background:#fff8c5}
.note{color:#57606a;font-style:italic}.muted{color:#57606a}
dl.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(19em,1fr));gap:1px;margin:.3em 0;padding:1px}
dl.metrics>div{box-shadow:0 0 0 1px #d0d7de;padding:2px 8px;display:flex;justify-content:space-between;gap:1em}dl.metrics dt,dl.metrics dd{margin:0}
dl.metrics dt{min-width:0;overflow-wrap:anywhere}dl.metrics dd{text-align:right;flex:none;max-width:60%}.star{color:#bf8700;font-weight:700;white-space:nowrap}
.yes{color:#1a7f37;font-weight:700}.no{color:#cf222e;font-weight:700}
.sr{position:absolute;left:0;top:0;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
ul.items{margin:0;padding-left:1.2em}.cols{display:flex;flex-wrap:wrap;gap:0 3em}.cols>div{min-width:0;max-width:100%}
"""


def render_html(run: "RunReport", *, final: bool = True) -> str:
    name = target_name(run)
    grouped = group(run.results)
    ordered = [(r, r is not root) for root, follow in grouped for r in [root, *follow]]
    matrix, plotted = matrices(run, final)
    if ordered:
        checks = overview(ordered) + "".join(check_section(r, final, r.check in plotted) for r, _ in ordered)
    else:
        checks = '<p class="note">no check has finished yet</p>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>diagnose {esc(name)}</title><style>{_CSS}</style></head><body>"
        f"{header(run, name, run_counts(run), final)}{verdict(run, grouped)}{matrix}"
        f'<section id="checks"><h2>Checks</h2>{checks}</section>{run_facts(run)}'
        "</body></html>\n"
    )


class HtmlWriter:
    """Renders diagnose.html; plots only in the final rendering (matplotlib is too slow per check)."""

    filename = "diagnose.html"

    def render(self, run: "RunReport", *, final: bool = True) -> str:
        return render_html(run, final=final)


__all__ = ["HtmlWriter", "render_html", "esc", "prose", "render_value", "kv_table", "records_table", "MAX_ROWS"]
