"""Figures for the HTML report, drawn from the `"plot"` convention in `CheckResult.details`.

A check describes a plot as data, never draws it: `details["plot"]` is one dict or a list of dicts
`{"kind": "line"|"bar"|"barh", "title", "x", "series": {name: [y, ...]}, "xlabel", "ylabel", "logy"}`:
`x` and `xlabel` are the categories (or x values), `series` and `ylabel` the values, for every kind
(a barh draws the categories down the y axis and the values along x). `"always": true` draws it
for a passing check too (otherwise plots are drawn for warn, fail and error only). A barh may carry
`"status": ["ok"|"mismatch"|"raised", ...]` and `"messages"` per category (an export sweep records every case
this way: values of raised cases are None, exact matches 0; `SweepOutcome.plot`).
That keeps checks free of matplotlib and keeps the JSON report the complete record.

matplotlib is imported in plot_draw.py only, lazily, and through its object API (Figure + Agg canvas, no
pyplot): no global backend switch, no state shared with the user's own plotting.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .plot_draw import KINDS

if TYPE_CHECKING:  # pragma: no cover
    from ..results import CheckResult
    from ..runner import RunReport

#: More plots than this per check would bloat the HTML without helping anyone read it.
MAX_PLOTS_PER_CHECK = 12


def plot_specs(details: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The plot descriptions in a result's details (an empty list when there are none)."""
    raw = (details or {}).get("plot")
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    return [item for item in items if isinstance(item, dict)]


def plot_title(spec: dict[str, Any], fallback: str = "plot") -> str:
    return str(spec.get("title") or fallback)


def render_plot(spec: dict[str, Any]) -> str:
    """Draw one plot description and return it as a `data:image/png;base64,...` URI.

    Raises ImportError when matplotlib is missing and ValueError for a malformed description;
    the caller decides how to say so.
    """
    from .plot_draw import draw

    return draw(spec)


def drawn_for(result: "CheckResult", spec: dict[str, Any]) -> bool:
    """Plots are evidence: drawn for checks that warn, fail or error, and for passing ones only when
    the plot says `"always": true` (informative plots: latency, memory vs batch size). Drawing every
    passing check's plot costs ~0.1 s each, a noticeable share of a run on a small model."""
    return result.status not in ("pass", "skip") or bool(spec.get("always"))


def render_result_plots(result: "CheckResult") -> list[tuple[str, str | None, str | None]]:
    """(title, data URI or None, note or None) for each plot of one result; never raises."""
    out: list[tuple[str, str | None, str | None]] = []
    specs = [spec for spec in plot_specs(result.details) if drawn_for(result, spec)]
    for i, spec in enumerate(specs[:MAX_PLOTS_PER_CHECK]):
        title = plot_title(spec, f"plot {i + 1}")
        try:
            out.append((title, render_plot(spec), None))
        except ImportError:
            out.append((title, None, "plot skipped: matplotlib is not installed"))
        except Exception as exc:  # a bad plot description must never cost the report
            out.append((title, None, f"plot skipped: {type(exc).__name__}: {exc}"))
    if len(specs) > MAX_PLOTS_PER_CHECK:
        out.append(("", None, f"{len(specs) - MAX_PLOTS_PER_CHECK} more plots not drawn (see diagnose.json)"))
    return out


def render_plots(run: "RunReport") -> list[tuple[str, str]]:
    """(\"CHECK: title\", data URI) for every plot of the run that could be drawn; failures are left out."""
    return [(f"{r.check}: {title}", uri) for r in run.results for title, uri, _ in render_result_plots(r) if uri]
