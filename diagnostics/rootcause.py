"""One root cause, one failure. The policy that decides when a check's verdict is a consequence of a
foundation property that already failed, so a user reads one problem where there is one.

Foundations and the checks that establish them:

* ``eval``          — eval_mode: no module runs in training mode after `model.eval()`.
* ``deterministic`` — determinism: two identical calls give the same outputs.
* ``stateless``     — state_mutation: forward does not change the model's state.

A check declares what its verdict relies on (`@register(..., requires=("deterministic",))`). Before it
runs, `blocked_by` looks for a failed foundation: the verdict of the check that establishes it, or,
when that check was not selected, a cheap probe (one rerun compared with the reference). A blocked check
ends as `skip` with "not judged: ... (see determinism)" and `caused_by` naming the root. After a
foundation check fails, `attribute` marks it as a consequence when its culprit is a module that the
eval_mode root already named (a Dropout left training makes determinism fail too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .results import FAIL, SKIP, WARN, CheckResult

EVAL, DETERMINISTIC, STATELESS = "eval", "deterministic", "stateless"


@dataclass(frozen=True)
class Foundation:
    name: str
    check: str  # the check that establishes it
    broken: str  # how a verdict says it is broken


FOUNDATIONS: dict[str, Foundation] = {
    EVAL: Foundation(EVAL, "eval_mode", "modules stay in training mode"),
    DETERMINISTIC: Foundation(DETERMINISTIC, "determinism", "outputs are not deterministic"),
    STATELESS: Foundation(STATELESS, "state_mutation", "forward mutates the model's state"),
}
#: What each foundation's own check relies on: determinism fails *because* a module stayed in training mode.
_UPSTREAM = {"determinism": EVAL, "state_mutation": EVAL, "batch_invariance": EVAL}


@dataclass(frozen=True)
class RootCause:
    check: str  # the root check's id
    summary: str  # what is broken, in words, with numbers when known


def root_of(result: CheckResult) -> str:
    """The id of the root check behind a result (itself when it is a root)."""
    return result.caused_by or result.check


def blocked_by(requires: Iterable[str], results: dict[str, CheckResult],
               probe: Callable[[str], str | None] | None = None) -> RootCause | None:
    """The root cause that keeps a check from judging, or None.

    `results` holds the verdicts so far by check id; `probe(foundation)` checks a foundation whose
    check did not run and returns what is broken (or None when it holds)."""
    for name in requires:
        foundation = FOUNDATIONS[name]
        verdict = results.get(foundation.check)
        if verdict is not None:
            if verdict.status == FAIL or (verdict.caused_by and verdict.details.get("consequence_status") == FAIL):
                return RootCause(root_of(verdict), f"{foundation.broken}: {verdict.details.get('measured', verdict.summary)}")
            continue
        found = probe(name) if probe is not None else None
        if found:
            return RootCause(foundation.check, f"{foundation.broken}: {found} ({foundation.check} was not run: run it to find the culprit)")
    return None


def consequence(result: CheckResult, root: RootCause) -> CheckResult:
    """`result` turned into a consequence of `root`: skip, caused_by set, what it measured kept."""
    result.details["consequence_status"] = result.status
    result.details["measured"] = result.summary
    result.status = SKIP
    result.caused_by = root.check
    result.summary = f"a consequence of {root.check} ({root.summary}): {result.summary}"
    return result


def blocked_result(check_id: str, family: str, root: RootCause) -> CheckResult:
    return CheckResult(check=check_id, family=family, status=SKIP, caused_by=root.check,
                       summary=f"not judged: {root.summary} (see {root.check})",
                       hint=f"fix {root.check} first; this check's comparison relies on it")


def _modules_named(result: CheckResult) -> set[str]:
    names = set(result.details.get("training_modules") or [])
    if result.culprit is not None and result.culprit.kind == "module":
        names.add(result.culprit.name)
    return names


def attribute(result: CheckResult, results: dict[str, CheckResult]) -> CheckResult:
    """Mark a failing foundation check as a consequence of eval_mode when its culprit is a module that
    eval_mode found in training mode (or inside one)."""
    upstream = _UPSTREAM.get(result.check)
    if upstream is None or result.status not in (FAIL, WARN) or result.caused_by:
        return result
    root = results.get(FOUNDATIONS[upstream].check)
    if root is None or root.status != FAIL or result.culprit is None or result.culprit.kind != "module":
        return result
    culprit = result.culprit.name
    if any(culprit == m or culprit.startswith(m + ".") or m == "" for m in _modules_named(root)):
        consequence(result, RootCause(root.check, FOUNDATIONS[upstream].broken))
    return result


def group(results: list[CheckResult]) -> list[tuple[CheckResult, list[CheckResult]]]:
    """Root results in run order, each with its consequences; used by every report."""
    by_id = {r.check: r for r in results}
    roots: list[tuple[CheckResult, list[CheckResult]]] = []
    index: dict[str, list[CheckResult]] = {}
    for r in results:
        if r.caused_by and r.caused_by in by_id:
            continue
        index[r.check] = []
        roots.append((r, index[r.check]))
    for r in results:
        if r.caused_by and r.caused_by in index:
            index[r.caused_by].append(r)
    return roots


def root_causes(results: list[CheckResult]) -> list[CheckResult]:
    """The failing results that are not consequences of another."""
    return [r for r in results if r.status in (FAIL, "error") and not r.caused_by]


def consequence_summary(consequences: list[Any]) -> str:
    return ", ".join(c.check for c in consequences)
