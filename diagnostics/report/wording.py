"""The wording every report shares, so each format says "1 failed, 3 passed" the same way."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..results import ERROR, FAIL, PASS, SKIP, WARN

if TYPE_CHECKING:  # pragma: no cover
    from ..runner import RunReport

#: Order and wording of the counts line, like pytest's ("1 failed, 3 passed, 1 skipped").
_COUNT_WORDS = ((ERROR, "error", "errors"), (FAIL, "failed", "failed"), (WARN, "warning", "warnings"),
                (PASS, "passed", "passed"), (SKIP, "skipped", "skipped"))


def counts_text(summary: dict[str, int]) -> str:
    """`{"fail": 1, "pass": 3, ...}` -> "1 error, 1 failed, 3 passed" (zero counts left out)."""
    parts = [f"{summary.get(s, 0)} {one if summary.get(s, 0) == 1 else many}" for s, one, many in _COUNT_WORDS
             if summary.get(s, 0)]
    return ", ".join(parts) or "no checks ran"


def target_name(run: "RunReport") -> str:
    return str(run.target.get("name") or run.target.get("source") or "model")


def run_counts(run: "RunReport") -> str:
    """The counts line, with root causes and consequences when some verdicts follow from others:
    "1 failed, 6 skipped — 1 root cause, 6 consequences (not judged)"."""
    from ..rootcause import causes_text

    causes = causes_text(run.results)
    return counts_text(run.summary) + (f" — {causes}" if causes else "")


def consequence_line(root: str, consequences: list) -> str:
    """"consequences of determinism: fp16, bf16, onnx (not judged)"."""
    names = ", ".join(c.check for c in consequences)
    return f"consequence{'s' if len(consequences) > 1 else ''} of {root}: {names} (not judged)"
