"""What a check returns: one `CheckResult` per check, plus the exceptions a check may raise.

Kept free of torch so reports and the pytest plugin can use it without the heavy import.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .locate.culprit import Culprit

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
    culprit:  the module, input, line or pipeline step responsible, when known (a `Culprit`;
              a plain string is taken as its label).
    hint:     what to do about it, in words.
    details:  anything structured (tables, per-layer errors) for JSON/HTML reports.
    location: "file:line" of the culprit's source when known (used for CI annotations); taken
              from the culprit when not given.
    caused_by: the id of the root check whose failure this result follows from (see rootcause.py);
              such a result is a consequence: it never counts as a failure of its own.
    duration_s: wall time of the check, everything included (JUnit's `time`).
    shared_s: the part of `duration_s` spent building things the Context shares with later checks
              (fp32/fp64 reference, tolerances, the export sweep ...), charged to this check because it
              asked first; `shared` names them with their seconds. `own_s` = duration_s - shared_s.

    A check reads as measure -> judge -> explain and ends with one of the constructors:
    `CheckResult.passed(summary, ...)`, `.warned(...)`, `.failed(...)`, `.skipped(reason)`.
    """

    check: str = ""
    status: str = PASS
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    culprit: Culprit | None = None
    hint: str | None = None
    duration_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    location: str | None = None
    family: str = ""
    caused_by: str | None = None
    shared_s: float = 0.0
    shared: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        self.culprit = Culprit.from_value(self.culprit)
        if self.location is None and self.culprit is not None:
            self.location = self.culprit.location

    @classmethod
    def passed(cls, summary: str, **fields: Any) -> "CheckResult":
        return cls(status=PASS, summary=summary, **fields)

    @classmethod
    def warned(cls, summary: str, **fields: Any) -> "CheckResult":
        return cls(status=WARN, summary=summary, **fields)

    @classmethod
    def failed(cls, summary: str, **fields: Any) -> "CheckResult":
        return cls(status=FAIL, summary=summary, **fields)

    @classmethod
    def skipped(cls, reason: str, **fields: Any) -> "CheckResult":
        return cls(status=SKIP, summary=reason, **fields)

    @property
    def culprit_label(self) -> str:
        """The culprit as reports show it; "" when there is none."""
        return self.culprit.label if self.culprit is not None else ""

    @property
    def own_s(self) -> float:
        """Seconds the check spent on its own work: its duration less the shared work charged to it."""
        return max(self.duration_s - self.shared_s, 0.0)

    @property
    def ok(self) -> bool:
        return self.status in (PASS, SKIP, WARN)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: `culprit` is the label a person reads, `culprit_detail` the structured Culprit."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["culprit"] = self.culprit_label or None
        data["culprit_detail"] = self.culprit.to_dict() if self.culprit is not None else None
        data["own_s"] = self.own_s
        return jsonable(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckResult":
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        if data.get("culprit_detail"):
            fields["culprit"] = data["culprit_detail"]
        return cls(**fields)

    def explain(self) -> str:
        """A multi-line explanation fit for a test failure or a terminal."""
        lines = [f"[{self.status.upper()}] {self.check}: {self.summary}"]
        if self.culprit:
            lines.append(f"  culprit: {self.culprit_label}" + (f" ({self.location})" if self.location else ""))
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
