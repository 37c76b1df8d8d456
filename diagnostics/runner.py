"""The runner: picks checks, runs each with a timeout, shares the Context, feeds the reporters.

A check that raises ends as `error` with its message; a check that times out ends as `error`;
the run goes on. With `isolate=True` each check runs in a child process (see `isolation.py`), so
a segfault, abort or hang in native code is contained too. Ctrl-C stops after the current check.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from .errors import UsageError
from .options import RunOptions
from .registry import CheckSpec, select_checks
from .results import ERROR, FAIL, PASS, SEVERITY, SKIP, STATUSES, WARN, CheckResult, SkipCheck


class Reporter(Protocol):
    def start(self, run: "RunReport", checks: list[CheckSpec]) -> None: ...
    def check_started(self, spec: CheckSpec) -> None: ...
    def check_finished(self, result: CheckResult, run: "RunReport") -> None: ...
    def finish(self, run: "RunReport") -> None: ...


class CheckTimeout(Exception):
    pass


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
        """0 when nothing reached `fail_on`; 1 otherwise (errors count as failures)."""
        threshold = SEVERITY[fail_on]
        return 1 if any(SEVERITY[r.status] >= threshold for r in self.results) else 0

    def result(self, check_id: str) -> CheckResult:
        for r in self.results:
            if r.check == check_id:
                return r
        raise KeyError(check_id)

    def to_dict(self) -> dict[str, Any]:
        from .results import jsonable

        return jsonable({
            "schema_version": 1,
            "target": self.target,
            "environment": self.environment,
            "options": self.options,
            "results": [r.to_dict() for r in self.results],
            "summary": self.summary,
            "notes": self.notes,
            "interrupted": self.interrupted,
            "duration_s": self.duration_s,
            "overhead": self.overhead,
        })


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CheckTimeout in the main thread after `seconds` (Python code only; native code with --isolate)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_check(spec: CheckSpec, ctx: Any, options: RunOptions, given: dict[str, Any] | None = None) -> CheckResult:
    """Run one check in this process and always return a result (never raises, except Ctrl-C)."""
    start = time.perf_counter()
    try:
        opts = spec.resolve_options(options.check_options(spec.id) if given is None else given)
        with _time_limit(options.timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters and quantizers warn a lot; checks capture what matters
            result = spec.func(ctx, opts)
        if not isinstance(result, CheckResult):
            raise TypeError(f"check {spec.id} returned {type(result).__name__}, not a CheckResult")
    except SkipCheck as exc:
        result = CheckResult(status=SKIP, summary=str(exc) or "not applicable")
    except CheckTimeout as exc:
        result = CheckResult(status=ERROR, summary=f"{exc}; raise --timeout or run with --isolate",
                             hint="a check that hangs inside native code can only be stopped with --isolate")
    except UsageError as exc:
        result = CheckResult(status=ERROR, summary=str(exc))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the check broke: report it, keep the run going
        tb = traceback.format_exc()
        result = CheckResult(status=ERROR, summary=f"{type(exc).__name__}: {_first_line(exc)}",
                             details={"traceback": tb})
        if options.debug:
            traceback.print_exc()
    result.check = spec.id
    result.family = spec.family
    result.duration_s = time.perf_counter() - start
    return result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else repr(exc)


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
        import sys

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
    from .target import Target, load_target_for

    options = options or RunOptions()
    wall = time.perf_counter()
    if isinstance(target, str):
        target = load_target_for(target, options)
    assert isinstance(target, Target)
    if options.dynamic_dims and not target.dynamic_dims:
        target.dynamic_dims = options.dynamic_dims
    selected = checks if checks is not None else select_checks(options.checks or None, options.skip or None)
    for spec in selected:  # fail early on misspelt check options
        spec.resolve_options(options.check_options(spec.id))
    unknown = set(options.option) - {s.id for s in selected}
    from .registry import load_checks

    unknown_ids = unknown - set(load_checks())
    if unknown_ids:
        raise UsageError(f"-o names unknown check {sorted(unknown_ids)[0]!r}; see --list-checks")
    ctx = context or Context(target, options)
    report = RunReport(target=target.describe(), environment=environment(ctx.device), options=_jsonable_options(options))
    reporters = reporters or []
    setup_s = time.perf_counter() - wall
    for rep in reporters:
        rep.start(report, selected)
    check_s = 0.0
    with _InterruptFlag() as interrupted:
        for spec in selected:
            if interrupted.set:
                report.interrupted = True
                break
            for rep in reporters:
                rep.check_started(spec)
            if spec.needs_cuda and ctx.device.type != "cuda":
                result = CheckResult(check=spec.id, family=spec.family, status=SKIP, summary="needs a CUDA device; none is in use here (--device cuda on a GPU machine)")
            elif options.isolate:
                from .isolation import run_isolated

                result = run_isolated(spec, target, options)
            else:
                result = run_check(spec, ctx, options)
            check_s += result.duration_s
            report.results.append(result)
            report.notes = list(dict.fromkeys([*report.notes, *ctx.notes]))
            for rep in reporters:
                rep.check_finished(result, report)
        if interrupted.set:
            report.interrupted = True
    report.duration_s = time.perf_counter() - wall
    report.overhead = {
        "setup_s": setup_s,
        "checks_s": check_s,
        "model_forward_s": ctx.stats.seconds,
        "model_forward_calls": ctx.stats.calls,
        "runner_s": max(report.duration_s - check_s, 0.0),
    }
    for rep in reporters:
        rep.finish(report)
    return report


def _jsonable_options(options: RunOptions) -> dict[str, Any]:
    from .results import jsonable

    return jsonable(options.as_dict())


def run_one(check_id: str, target: Any, options: RunOptions | None = None, context: Any | None = None, **check_options: Any) -> CheckResult:
    """Run a single check (the Python API's and the pytest fixture's entry point)."""
    from .context import Context
    from .registry import get_check
    from .target import load_target_for

    options = options or RunOptions()
    spec = get_check(check_id)
    if isinstance(target, str):
        target = load_target_for(target, options)
    if options.dynamic_dims and not target.dynamic_dims:
        target.dynamic_dims = options.dynamic_dims
    ctx = context or Context(target, options)
    given = {**options.check_options(check_id), **check_options}
    spec.resolve_options(given)
    if spec.needs_cuda and ctx.device.type != "cuda":
        return CheckResult(check=spec.id, family=spec.family, status=SKIP, summary="needs a CUDA device; none is in use here")
    return run_check(spec, ctx, options, given)


__all__ = ["run", "run_one", "run_check", "RunReport", "Reporter", "PASS", "WARN", "FAIL", "SKIP", "ERROR", "Callable"]
