"""What a check returns: one `CheckResult` per check, plus the exceptions a check may raise.

Kept free of torch so reports and the pytest plugin can use it without the heavy import.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

PASS, WARN, FAIL, SKIP, ERROR = "pass", "warn", "fail", "skip", "error"
STATUSES = (PASS, WARN, FAIL, SKIP, ERROR)
#: Severity order used for `--fail-on` and for the overall verdict.
SEVERITY = {SKIP: 0, PASS: 0, WARN: 1, FAIL: 2, ERROR: 3}


class SkipCheck(Exception):
    """Raise inside a check when it does not apply; the message becomes the skip reason."""


@dataclass
class CheckResult:
    """The outcome of one check.

    status:   pass | warn | fail (the model has the problem) | skip (not applicable) | error (the check broke)
    summary:  one line a user reads first.
    metrics:  flat name -> number/str/bool, shown in reports and as JUnit properties.
    culprit:  the module path, input, line or pipeline step responsible, when known.
    hint:     what to do about it, in words.
    details:  anything structured (tables, per-layer errors) for JSON/HTML reports.
    location: "file:line" of the culprit's source when known (used for CI annotations).
    """

    check: str = ""
    status: str = PASS
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    culprit: str | None = None
    hint: str | None = None
    duration_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    location: str | None = None
    family: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")

    @property
    def ok(self) -> bool:
        return self.status in (PASS, SKIP, WARN)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def explain(self) -> str:
        """A multi-line explanation fit for a test failure or a terminal."""
        lines = [f"[{self.status.upper()}] {self.check}: {self.summary}"]
        if self.culprit:
            lines.append(f"  culprit: {self.culprit}" + (f" ({self.location})" if self.location else ""))
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        if self.metrics:
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in list(self.metrics.items())[:16])
            lines.append(f"  metrics: {shown}")
        return "\n".join(lines)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value != value or math.isinf(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def jsonable(obj: Any) -> Any:
    """Turn nested results into something `json.dumps` accepts (NaN/Inf become strings)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return jsonable(item())
        except Exception:
            pass
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        try:
            return jsonable(tolist())
        except Exception:
            pass
    return str(obj)
