"""A CheckResult turned into a test outcome: skip, fail with the full explanation, or pass."""
from __future__ import annotations

from typing import Any

import pytest

from ..options import RunOptions
from ..results import ERROR, SKIP, CheckResult, format_value
from .session import SessionState

#: `CheckResult.explain` shows this many metrics; the rest follow under "more metrics".
_METRICS_SHOWN = 16
_ROWS_SHOWN = 10


def explain(result: CheckResult) -> str:
    """The full explanation of a result: explain() plus every metric and the details, compactly."""
    text = result.explain()
    if len(result.metrics) > _METRICS_SHOWN:
        rest = ", ".join(f"{k}={format_value(v)}" for k, v in list(result.metrics.items())[_METRICS_SHOWN:])
        text += f"\n  more metrics: {rest}"
    lines = []
    for key, value in result.details.items():
        if key == "plot" or (key == "traceback" and result.status != ERROR) or value in (None, [], {}, ""):
            continue
        lines += _detail_lines(key, value)
    if lines:
        text += "\n  details:\n" + "\n".join("  " + ln for ln in lines)
    return text


def _detail_lines(key: str, value: Any) -> list[str]:
    if isinstance(value, list):
        lines = [f"  {key}:"]
        for row in value[:_ROWS_SHOWN]:
            shown = ", ".join(f"{k}={_short(v)}" for k, v in row.items()) if isinstance(row, dict) else _short(row)
            lines.append(f"    - {shown}")
        if len(value) > _ROWS_SHOWN:
            lines.append(f"    ... {len(value) - _ROWS_SHOWN} more")
        return lines
    if isinstance(value, dict):
        return [f"  {key}: " + ", ".join(f"{k}={_short(v)}" for k, v in value.items())]
    if key == "traceback":
        return ["  traceback:\n" + "\n".join("    " + ln for ln in str(value).rstrip().splitlines()[-20:])]
    return [f"  {key}: {_short(value)}"]


def _short(value: Any, limit: int = 240) -> str:
    text = format_value(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def skip(reason: str) -> None:
    """Skip, reported at the test's location rather than at this line of the plugin."""
    try:
        raise pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # pragma: no cover - a pytest without the keyword
        pytest.skip(reason)


def conclude(state: SessionState, result: CheckResult, options: RunOptions, *, skip_on_skip: bool = True) -> CheckResult:
    """Turn a result into the test's outcome: skip, fail with the full explanation, or pass."""
    if result.status == SKIP and skip_on_skip:
        skip(f"{result.check}: {result.summary}")
    if state.failing(result, options):
        pytest.fail(explain(result), pytrace=False)
    return result
