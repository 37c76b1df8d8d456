"""Figures for the HTML report, drawn from the `"plot"` convention in `CheckResult.details`.

A check describes a plot as data, never draws it: `details["plot"]` is one dict or a list of dicts
`{"kind": "line"|"bar"|"barh", "title", "x", "series": {name: [y, ...]}, "xlabel", "ylabel", "logy"}`:
`x` and `xlabel` are the categories (or x values), `series` and `ylabel` the values, for every kind
(a barh draws the categories down the y axis and the values along x). `"always": true` draws it
for a passing check too (otherwise plots are drawn for warn, fail and error only).
That keeps checks free of matplotlib and keeps the JSON report the complete record.

matplotlib is imported here only, lazily, and through its object API (Figure + Agg canvas, no
pyplot): no global backend switch, no state shared with the user's own plotting.
"""
from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..results import CheckResult
    from ..runner import RunReport

KINDS = ("line", "bar", "barh")
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


def _number(value: Any) -> float:
    """A y value as a float; unusable values (None, "nan" strings from a JSON round trip) become NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def render_plot(spec: dict[str, Any]) -> str:
    """Draw one plot description and return it as a `data:image/png;base64,...` URI.

    Raises ImportError when matplotlib is missing and ValueError for a malformed description;
    the caller decides how to say so.
    """
    import matplotlib  # noqa: F401  (imported first so a missing or blocked matplotlib fails here)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kind = spec.get("kind", "line")
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; expected one of {', '.join(KINDS)}")
    series = spec.get("series")
    if not isinstance(series, dict) or not series:
        raise ValueError("a plot needs a non-empty 'series' mapping of name -> list of values")
    ys = {str(name): [_number(v) for v in values] for name, values in series.items()}
    length = max(len(v) for v in ys.values())
    x = list(spec.get("x") or range(length))
    for name, values in ys.items():
        if len(values) != len(x):
            raise ValueError(f"series {name!r} has {len(values)} values but x has {len(x)}")

    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if kind == "line":
        for name, values in ys.items():
            ax.plot(x if _all_numbers(x) else [str(v) for v in x], values, marker="o" if len(x) <= 30 else None,
                    markersize=3, label=name)
    else:
        positions = list(range(len(x)))
        width = 0.8 / len(ys)
        for i, (name, values) in enumerate(ys.items()):
            shifted = [p - 0.4 + width * (i + 0.5) for p in positions]
            if kind == "bar":
                ax.bar(shifted, values, width=width, label=name)
            else:
                ax.barh(shifted, values, height=width, label=name)
        labels = [str(v) for v in x]
        if kind == "bar":
            ax.set_xticks(positions, labels, rotation=45 if len(x) > 6 else 0, ha="right" if len(x) > 6 else "center")
        else:
            ax.set_yticks(positions, labels)
            ax.invert_yaxis()  # first item on top, as in the table next to it
    if spec.get("logy"):
        (ax.set_xscale if kind == "barh" else ax.set_yscale)("log")
    ax.set_title(plot_title(spec, ""))
    category_label, value_label = str(spec.get("xlabel") or ""), str(spec.get("ylabel") or "")
    if kind == "barh":  # horizontal bars: categories run down the y axis, values along x
        category_label, value_label = value_label, category_label
    ax.set_xlabel(category_label)
    ax.set_ylabel(value_label)
    ax.grid(True, alpha=0.3)
    if len(ys) > 1:
        ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _all_numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


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
