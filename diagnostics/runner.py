"""The runner: picks checks, runs each with a timeout, shares the Context, feeds the reporters.

One root cause, one failure: each check sees the verdicts so far, and one whose comparison relies on a
foundation that failed (determinism, state_mutation, eval_mode) is not run but ends as `skip` with
`caused_by` naming the root (see rootcause.py); consequences never count towards the exit code.

A check that raises ends as `error` with its message; a check that times out ends as `error`;
the run goes on (see `execute.py`). With `isolate=True` each check runs in a child process (see
`isolation.py`), so a segfault, abort or hang in native code is contained too. Ctrl-C stops after
the current check.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from .errors import UsageError
from .execute import cuda_skip, prepared_target, run_check
from .options import RunOptions
from .registry import CheckSpec, did_you_mean, load_checks, select_checks
from .results import ERROR, FAIL, PASS, SEVERITY, SKIP, STATUSES, WARN, CheckResult, jsonable


class Reporter(Protocol):
    def start(self, run: "RunReport", checks: list[CheckSpec]) -> None: ...
    def check_started(self, spec: CheckSpec) -> None: ...
    def check_finished(self, result: CheckResult, run: "RunReport") -> None: ...
    def finish(self, run: "RunReport") -> None: ...
    # optional: `check_progress(spec, text)`, what the running check says it is doing (`ctx.progress(...)`)


@dataclass
class RunReport:
    """Everything a run produced, in the order checks finished."""

    target: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    results: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    started_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    overhead: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, int]:
        counts = {status: 0 for status in STATUSES}
        for r in self.results:
            counts[r.status] += 1
        return counts

    def worst_status(self) -> str:
        statuses = [r.status for r in self.results]
        for status in (ERROR, FAIL, WARN, PASS):
            if status in statuses:
                return status
        return SKIP

    def exit_code(self, fail_on: str = "fail") -> int:
        """0 when nothing reached `fail_on`; 1 otherwise (errors count as failures). A consequence of a
        root cause is a skip: only the root counts."""
        threshold = SEVERITY[fail_on]
        return 1 if any(SEVERITY[r.status] >= threshold for r in self.results) else 0

    def result(self, check_id: str) -> CheckResult:
        for r in self.results:
            if r.check == check_id:
                return r
        raise KeyError(check_id)

    def root_causes(self) -> list[CheckResult]:
        """Failing results that are not consequences of another (what the exit code counts)."""
        from .rootcause import root_causes

        return root_causes(self.results)

    def to_dict(self) -> dict[str, Any]:
        from .rootcause import consequences

        return jsonable({
            "schema_version": 1,
            "target": self.target,
            "environment": self.environment,
            "options": self.options,
            "results": [r.to_dict() for r in self.results],
            "summary": self.summary,
            "root_causes": [r.check for r in self.root_causes()],
            "consequences": {r.check: r.caused_by for r in consequences(self.results)},
            "notes": self.notes,
            "interrupted": self.interrupted,
            "duration_s": self.duration_s,
            "overhead": self.overhead,
        })


class _InterruptFlag:
    """First Ctrl-C: finish the current check, then stop. Second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.set = False
        self._old: Any = None

    def __enter__(self) -> "_InterruptFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        print("\ninterrupted: finishing the current check, then stopping (Ctrl-C again to stop now)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def run(
    target: Any,
    options: RunOptions | None = None,
    *,
    reporters: list[Reporter] | None = None,
    checks: list[CheckSpec] | None = None,
    context: Any | None = None,
) -> RunReport:
    """Run the selected checks on `target` (a Target or a spec string) and return the RunReport."""
    from .context import Context
    from .environment import environment

    options = options or RunOptions()
    wall = time.perf_counter()
    target = prepared_target(target, options)
    selected = checks if checks is not None else select_checks(options.checks or None, options.skip or None)
    _validate_check_options(selected, options)
    ctx = context or Context(target, options)
    report = RunReport(target=target.describe(), environment=environment(ctx.device), options=jsonable(options.as_dict()))
    reporters = reporters or []
    setup_s = time.perf_counter() - wall
    for rep in reporters:
        rep.start(report, selected)
    check_s = _run_selected(selected, target, ctx, options, report, reporters)
    report.duration_s = time.perf_counter() - wall
    report.overhead = {
        "setup_s": setup_s,
        "checks_s": check_s,
        "model_forward_s": ctx.stats.seconds,
        "model_forward_calls": ctx.stats.calls,
        "shared_s": sum(r.shared_s for r in report.results),
        "runner_s": max(report.duration_s - check_s, 0.0),
    }
    for rep in reporters:
        rep.finish(report)
    return report


def _validate_check_options(selected: list[CheckSpec], options: RunOptions) -> None:
    """Fail early, before any check runs, on misspelt check options and on -o naming no check."""
    for spec in selected:
        spec.resolve_options(options.check_options(spec.id))
    known = set(load_checks())
    unknown = set(options.option) - {s.id for s in selected} - known
    if unknown:
        name = sorted(unknown)[0]
        raise UsageError(f"-o names unknown check {name!r}{did_you_mean(name, known)}; see --list-checks")


def _run_selected(selected: list[CheckSpec], target: Any, ctx: Any, options: RunOptions, report: RunReport,
                  reporters: list[Reporter]) -> float:
    """Run the checks in order, feeding each result to the reporters; returns the seconds spent in checks."""
    check_s = 0.0
    verdicts: dict[str, CheckResult] = {}  # so far, by id: what later checks' comparisons rely on (rootcause.py)
    with _InterruptFlag() as interrupted, _listening(ctx, reporters) as current:
        for spec in selected:
            if interrupted.set:
                break
            current[0] = spec
            for rep in reporters:
                rep.check_started(spec)
            result = cuda_skip(spec, ctx)
            if result is None and options.isolate:
                from .isolation import run_isolated

                result = run_isolated(spec, target, options, verdicts)
            elif result is None:
                result = run_check(spec, ctx, options, results=verdicts)
            verdicts[result.check] = result
            check_s += result.duration_s
            report.results.append(result)
            report.notes = list(dict.fromkeys([*report.notes, *ctx.notes]))
            for rep in reporters:
                rep.check_finished(result, report)
        report.interrupted = interrupted.set
    return check_s


@contextlib.contextmanager
def _listening(ctx: Any, reporters: list[Reporter]) -> Iterator[list[CheckSpec | None]]:
    """Pass what the running check says (`ctx.progress(text)`) to the reporters that show progress; yields
    the one-item list the loop keeps the running check in."""
    current: list[CheckSpec | None] = [None]
    listeners = [rep.check_progress for rep in reporters if callable(getattr(rep, "check_progress", None))]
    progress = getattr(ctx, "progress", None)
    if not listeners or progress is None or not hasattr(progress, "listener"):
        yield current
        return

    def tell(text: str) -> None:
        if current[0] is not None:
            for listener in listeners:
                listener(current[0], text)

    before, progress.listener = progress.listener, tell
    try:
        yield current
    finally:
        progress.listener = before


#: The Context cache key of the verdicts `run_one` gave on it (a pytest session shares one Context per model).
VERDICTS_KEY = "rootcause:verdicts"


def run_one(check_id: str, target: Any, options: RunOptions | None = None, context: Any | None = None, **check_options: Any) -> CheckResult:
    """Run a single check (the Python API's and the pytest fixture's entry point).

    Root causes: the verdicts earlier `run_one` calls gave on the same Context count (the pytest
    plugin shares one per model, so `fp16` after a failed `determinism` is its skipped consequence);
    with none, a check that relies on determinism probes it with one rerun of the example inputs,
    and fails in its place when the rerun differs (see rootcause.py)."""
    from .context import Context
    from .registry import get_check

    options = options or RunOptions()
    spec = get_check(check_id)
    target = prepared_target(target, options)
    ctx = context or Context(target, options)
    given = {**options.check_options(check_id), **check_options}
    spec.resolve_options(given)
    verdicts = ctx.cached(VERDICTS_KEY, dict) if hasattr(ctx, "cached") else {}
    result = cuda_skip(spec, ctx) or run_check(spec, ctx, options, given, results=verdicts)
    verdicts[result.check] = result
    return result


__all__ = ["run", "run_one", "run_check", "RunReport", "Reporter", "PASS", "WARN", "FAIL", "SKIP", "ERROR"]
