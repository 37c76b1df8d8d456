"""Drawing one plot description with matplotlib (object API, Agg canvas, no pyplot).

Readability rules met here, once for every plot: the title is wrapped and never clipped (constrained
layout, then a tight bounding box on save); long category labels are shortened; overlapping lines stay
distinguishable (each series its own marker and dash pattern, drawn slightly transparent); a bar chart
with one series writes each value next to its bar, so a zero is read as 0, not as a missing bar. A sweep
plot (`"status"` per category) shows every case: bars for the ones that ran, a marked "raised" point for
the ones that raised and an "exact match" point for a difference of exactly 0, on a log axis whose floor
follows the data.
"""
from __future__ import annotations

import base64
import io
import math
import textwrap
from typing import Any

KINDS = ("line", "bar", "barh")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DASHES = ("-", "--", ":", "-.")
LABEL_CHARS = 38
TITLE_CHARS = 72


def number(value: Any) -> float:
    """A y value as a float; unusable values (None, "nan" strings from a JSON round trip) become NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def short(label: Any, limit: int = LABEL_CHARS) -> str:
    text = str(label)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _all_numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def parse(spec: dict[str, Any]) -> tuple[str, list[Any], dict[str, list[float]]]:
    """(kind, x, series) of a description; ValueError for a malformed one."""
    kind = spec.get("kind", "line")
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; expected one of {', '.join(KINDS)}")
    series = spec.get("series")
    if not isinstance(series, dict) or not series:
        raise ValueError("a plot needs a non-empty 'series' mapping of name -> list of values")
    ys = {str(name): [number(v) for v in values] for name, values in series.items()}
    x = list(spec.get("x") or range(max(len(v) for v in ys.values())))
    for name, values in ys.items():
        if len(values) != len(x):
            raise ValueError(f"series {name!r} has {len(values)} values but x has {len(x)}")
    return kind, x, ys


def draw(spec: dict[str, Any]) -> str:
    """The description drawn as a `data:image/png;base64,...` URI (ImportError without matplotlib)."""
    import matplotlib  # noqa: F401  (imported first so a missing or blocked matplotlib fails here)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kind, x, ys = parse(spec)
    rows = len(x) if kind == "barh" else 0
    fig = Figure(figsize=(7.0, max(3.6, 1.4 + 0.32 * rows)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if kind == "line":
        _lines(ax, x, ys, spec)
    elif isinstance(spec.get("status"), list) and kind == "barh" and len(ys) == 1:
        _sweep(ax, x, next(iter(ys.items())), spec)
    else:
        _bars(ax, kind, x, ys, spec)
    title = str(spec.get("title") or "")
    ax.set_title(textwrap.fill(title, TITLE_CHARS), fontsize="medium", loc="left")
    category_label, value_label = str(spec.get("xlabel") or ""), str(spec.get("ylabel") or "")
    if kind == "barh":  # horizontal bars: categories run down the y axis, values along x
        category_label, value_label = value_label, category_label
    ax.set_xlabel(category_label)
    ax.set_ylabel(value_label)
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if len(handles) > 1 and ax.get_legend() is None:
        ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _lines(ax: Any, x: list[Any], ys: dict[str, list[float]], spec: dict[str, Any]) -> None:
    """Every series its own marker and dash, slightly transparent: lines that coincide stay visible."""
    xs = x if _all_numbers(x) else [short(v, 24) for v in x]
    every = max(1, len(x) // 40)
    for i, (name, values) in enumerate(ys.items()):
        ax.plot(xs, values, marker=MARKERS[i % len(MARKERS)], markevery=every, markersize=6 - min(i, 3),
                linestyle=DASHES[i % len(DASHES)], linewidth=2.2 - 0.4 * min(i, 3), alpha=0.8, label=name)
    if spec.get("logy"):
        ax.set_yscale("log")
    if not _all_numbers(x):
        ax.tick_params(axis="x", labelrotation=45 if len(x) > 5 else 0)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right" if len(x) > 5 else "center")


def _bars(ax: Any, kind: str, x: list[Any], ys: dict[str, list[float]], spec: dict[str, Any]) -> None:
    positions = list(range(len(x)))
    width = 0.8 / len(ys)
    for i, (name, values) in enumerate(ys.items()):
        shifted = [p - 0.4 + width * (i + 0.5) for p in positions]
        drawn = [0.0 if math.isnan(v) else v for v in values]
        bars = (ax.bar(shifted, drawn, width=width, label=name) if kind == "bar"
                else ax.barh(shifted, drawn, height=width, label=name))
        if len(ys) == 1 and len(x) <= 30:
            ax.bar_label(bars, labels=[_value_text(v) for v in values], padding=3, fontsize="small")
    labels = [short(v) for v in x]
    if kind == "bar":
        ax.set_xticks(positions, labels, rotation=45 if len(x) > 6 else 0, ha="right" if len(x) > 6 else "center")
    else:
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()  # first item on top, as in the table next to it
    if spec.get("logy"):
        (ax.set_xscale if kind == "barh" else ax.set_yscale)("log")
    (ax.margins(x=0.15) if kind == "barh" else ax.margins(y=0.15))  # room for the value labels


def _value_text(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "0" if value == 0 else f"{value:.3g}"


def _sweep(ax: Any, x: list[Any], series: tuple[str, list[float]], spec: dict[str, Any]) -> None:
    """Every sweep case on one row: a bar when it ran with a difference, a point when it matched exactly
    (0 has no place on a log axis) or raised (no output to compare); the floor follows the data."""
    name, values = series
    status = [str(s) for s in spec["status"]] + ["ok"] * (len(x) - len(spec["status"]))
    messages = [str(m) for m in spec.get("messages") or []]
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    logy = bool(spec.get("logy")) and bool(positive)
    low = min(positive) / 30 if logy else 0.0
    high = max(positive) * 30 if logy else max(positive, default=1.0) * 1.3
    legend: dict[str, Any] = {}
    for row, (value, state) in enumerate(zip(values, status)):
        if state == "raised" or math.isnan(value):
            note = messages[row] if row < len(messages) and messages[row] else "raised"
            legend.setdefault("raised (no output)", _point(ax, low, row, "X", "#cf222e", short(note, 60)))
        elif value == 0:
            legend.setdefault("exact match (0)", _point(ax, low, row, "o", "#1a7f37", "0 (exact)"))
        else:
            bad = state == "mismatch"
            bars = ax.barh([row], [value - low], left=low, height=0.6, color="#cf222e" if bad else "#0969da", alpha=0.85)
            ax.bar_label(bars, labels=[f"{value:.3g}"], padding=3, fontsize="small")
            legend.setdefault("mismatch" if bad else name, bars)
    if logy:
        ax.set_xscale("log")
        ax.set_xlim(low / 4, high)  # the points at the floor sit inside the axes, not on the spine
    else:
        ax.set_xlim(-0.04 * high, high)
    if not positive:  # nothing to measure along x: every case matched exactly or raised
        ax.set_xticks([])
    ax.set_yticks(list(range(len(x))), [short(v) for v in x])
    ax.set_ylim(len(x) - 0.5, -0.5)  # first case on top
    ax.legend(list(legend.values()), list(legend), fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=min(3, len(legend)), frameon=False)


def _point(ax: Any, x: float, row: int, marker: str, color: str, text: str) -> Any:
    """A marked point at the floor of the axis, with its words next to it."""
    handle = ax.plot([x], [row], marker=marker, markersize=10, color=color, linestyle="none")[0]
    ax.annotate(text, (x, row), xytext=(10, 0), textcoords="offset points", va="center", fontsize="small", color=color)
    return handle
