"""One root cause, one failure. The policy that decides when a check's verdict is a consequence of a
foundation property that already failed, so a user reads one problem where there is one.

Foundations and the checks that establish them:

* ``eval``          — eval_mode: no module runs in training mode after `model.eval()`.
* ``deterministic`` — determinism: two identical calls give the same outputs.
* ``stateless``     — state_mutation: forward does not change the model's state.

What each built-in check relies on is the `REQUIRES` table (a third-party check declares it with
`@register(..., requires=("deterministic",))`, which wins over the table). Before a check runs,
`blocked_by` looks for a failed foundation: the verdict of the check that establishes it, or, when
that check was not selected, a cheap probe (one rerun compared with the reference). A blocked check
ends as `skip` with "not judged: ... (see determinism)" and `caused_by` naming the root. When only the
probe saw the fault, the first blocked check fails in the root's place (a `proxy`: its summary says
what the probe measured and which check finds the culprit) and later blocked checks follow from it.
After a foundation check fails, `attribute` marks it as a consequence of an upstream root: a module
that eval_mode found still training (a Dropout left training makes determinism fail too), or the state
that state_mutation found changing (a counter in a buffer makes repeats differ).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .results import ERROR, FAIL, SKIP, WARN, CheckResult

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

#: What each built-in check's comparison relies on. Comparing two runs of a model whose output changes
#: between calls measures the randomness, not the export or the precision; a state_dict round trip and
#: a golden recording also compare a model with another call history, so they need a stateless forward.
REQUIRES: dict[str, tuple[str, ...]] = {
    "batch_invariance": (DETERMINISTIC,),
    "fp16": (DETERMINISTIC,),
    "bf16": (DETERMINISTIC,),
    "quantization": (DETERMINISTIC,),
    "torchscript": (DETERMINISTIC,),
    "torch_export": (DETERMINISTIC,),
    "onnx": (DETERMINISTIC,),
    "torch_compile": (DETERMINISTIC,),
    "device_parity": (DETERMINISTIC,),
    "preprocessing": (DETERMINISTIC,),  # top-1 agreement of the two pipelines through the model
    "weights_roundtrip": (STATELESS, DETERMINISTIC),
    "golden": (STATELESS, DETERMINISTIC),
}

#: Checks whose verdict compares model outputs: degenerate outputs (all zero, tied, empty, tiny) make
#: them pass trivially, so their pass becomes a warning that says so (see degenerate.py).
COMPARES_OUTPUTS: frozenset[str] = frozenset({
    "determinism", "batch_invariance", "fp16", "bf16", "quantization", "torchscript", "torch_export", "onnx",
    "torch_compile", "device_parity", "preprocessing", "weights_roundtrip", "golden",
})

#: The foundation a foundation check's own failure may follow from, in the order they are tried.
_UPSTREAM: dict[str, tuple[str, ...]] = {
    "determinism": (STATELESS, EVAL),
    "state_mutation": (EVAL,),
    "batch_invariance": (EVAL,),
}


def check_requires(names: Iterable[str]) -> tuple[str, ...]:
    """Validated foundation names (for `register(requires=...)`)."""
    names = tuple(names)
    unknown = [n for n in names if n not in FOUNDATIONS]
    if unknown:
        raise ValueError(f"unknown foundation {unknown[0]!r}; known: {', '.join(FOUNDATIONS)}")
    return names


def requires_of(spec: Any) -> tuple[str, ...]:
    """What a check relies on: its `register(requires=...)`, else the built-in table."""
    declared = getattr(spec, "requires", None)
    return tuple(declared) if declared is not None else REQUIRES.get(spec.id, ())


def compares_outputs(spec: Any) -> bool:
    declared = getattr(spec, "compares_outputs", None)
    return bool(declared) if declared is not None else spec.id in COMPARES_OUTPUTS


@dataclass(frozen=True)
class RootCause:
    check: str  # the root check's id
    summary: str  # what is broken, in words, with numbers when known
    probed: bool = False  # only a probe saw it: the root check was not run


def root_of(result: CheckResult) -> str:
    """The id of the root check behind a result (itself when it is a root)."""
    return result.caused_by or result.check


def _failed(verdict: CheckResult) -> bool:
    return verdict.status == FAIL or (bool(verdict.caused_by) and verdict.details.get("consequence_status") == FAIL)


def _measured(verdict: CheckResult) -> str:
    return str(verdict.details.get("measured") or verdict.summary)


def blocked_by(requires: Iterable[str], results: dict[str, CheckResult],
               probe: Callable[[str], str | None] | None = None) -> RootCause | None:
    """The root cause that keeps a check from judging, or None.

    `results` holds the verdicts so far by check id; `probe(foundation)` checks a foundation whose
    check did not run and returns what is broken (or None when it holds). Verdicts are looked at
    before any probe runs, so a failed foundation costs no forward."""
    requires = tuple(requires)
    for name in requires:
        foundation = FOUNDATIONS[name]
        verdict = results.get(foundation.check)
        if verdict is not None and _failed(verdict):
            return RootCause(root_of(verdict), f"{foundation.broken}: {_measured(verdict)}")
    for name in requires:
        foundation = FOUNDATIONS[name]
        if foundation.check in results:
            continue
        proxy = next((r for r in results.values() if r.details.get("blocked_by") == foundation.check and not r.caused_by), None)
        if proxy is not None:
            return RootCause(proxy.check, str(proxy.details.get("broken") or foundation.broken))
        found = probe(name) if probe is not None else None
        if found:
            upstream = _failed_upstream(foundation.check, results)
            if upstream is not None:  # the probe saw what an upstream root explains (a counter in a buffer)
                return RootCause(upstream, f"{foundation.broken}: {found}")
            return RootCause(foundation.check, f"{foundation.broken}: {found}", probed=True)
    return None


def _failed_upstream(check_id: str, results: dict[str, CheckResult]) -> str | None:
    for name in _UPSTREAM.get(check_id, ()):
        verdict = results.get(FOUNDATIONS[name].check)
        if verdict is not None and _failed(verdict) and (name != EVAL or _modules_named(verdict)):
            return root_of(verdict)
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
    """A check that did not run because `root` failed: skip, or the failing proxy of a root only a probe saw."""
    if root.probed:
        return CheckResult(
            check=check_id, family=family, status=FAIL,
            summary=f"not judged: {root.summary} ({root.check} was not selected: run it to find the culprit)",
            hint=f"run the {root.check} check to name the module or line behind it and fix that first; this check's "
                 f"comparison relies on it (checks after this one that rely on it are skipped as its consequences)",
            details={"blocked_by": root.check, "broken": root.summary})
    return CheckResult(check=check_id, family=family, status=SKIP, caused_by=root.check,
                       summary=f"not judged: {root.summary} (see {root.check})",
                       hint=f"fix {root.check} first; this check's comparison relies on it",
                       details={"blocked_by": root.check})


def _modules_named(result: CheckResult) -> set[str]:
    """Module paths eval_mode found still training after `model.eval()` (its details hold labels like
    `block.drop (Dropout)` and `<root> (Net)`). Modules only handed over in training are left out:
    the run calls `.eval()`, so later checks never see them train."""
    names = set()
    for label in result.details.get("still_training_after_eval") or []:
        path = str(label).rsplit(" (", 1)[0] if str(label).endswith(")") else str(label)
        names.add("" if path == "<root>" else path)
    return names


def _inside(culprit: str, modules: set[str]) -> bool:
    return any(culprit == m or culprit.startswith(m + ".") or m == "" for m in modules)


def attribute(result: CheckResult, results: dict[str, CheckResult]) -> CheckResult:
    """Mark a failing foundation check as a consequence of an upstream root: eval_mode when its culprit
    is a module eval_mode found still training (or inside one); state_mutation when determinism traced
    its differing repeats to state kept between calls."""
    if result.status not in (FAIL, WARN) or result.caused_by:
        return result
    for name in _UPSTREAM.get(result.check, ()):
        root = results.get(FOUNDATIONS[name].check)
        if root is None or not _failed(root):
            continue
        if name == EVAL and result.culprit is not None and result.culprit.kind == "module" \
                and _inside(result.culprit.name, _modules_named(root)):
            return consequence(result, RootCause(root_of(root), FOUNDATIONS[name].broken))
        if name == STATELESS and result.details.get("state_change") and not result.details.get("random_ops"):
            return consequence(result, RootCause(root_of(root), FOUNDATIONS[name].broken))
    return result


def group(results: list[CheckResult]) -> list[tuple[CheckResult, list[CheckResult]]]:
    """Root results in run order, each with its consequences; used by every report. A result whose
    root is not among `results` stands as a root of its own."""
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
    return [r for r in results if r.status in (FAIL, ERROR) and not r.caused_by]


def consequences(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.caused_by]


def consequence_summary(items: list[Any]) -> str:
    return ", ".join(c.check for c in items)


def causes_text(results: list[CheckResult]) -> str:
    """"1 root cause, 6 consequences (not judged)", or "" when no result follows from another."""
    follow = consequences(results)
    if not follow:
        return ""
    roots = len(root_causes(results)) or len({r.caused_by for r in follow})
    return (f"{roots} root cause{'' if roots == 1 else 's'}, {len(follow)} consequence{'' if len(follow) == 1 else 's'}"
            " (not judged)")
