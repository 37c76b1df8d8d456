"""Running one check in a child process (`--isolate`), as Polygraphy's --use-subprocess does.

The child is *spawned*, not forked: a fork after torch has used its OpenMP pool hangs the child.
So the child loads the target again from its spec and runs the one check; a segfault, abort or
hang there ends as this check's `error` while the run goes on. Targets built in Python (no spec)
are sent by pickle, which needs their classes to be importable.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import sys
import time
import traceback
from typing import Any

from .execute import prepared_target, run_check
from .options import RunOptions
from .registry import CheckSpec
from .results import ERROR, CheckResult
from .text import one_line


def _child(conn: Any, spec_source: str | None, target_blob: bytes | None, options: RunOptions, check_id: str,
           verdicts: list[dict[str, Any]] | None = None) -> None:
    try:
        from .context import Context
        from .registry import get_check

        # our own bytes from the parent when there is no spec to load from
        target = prepared_target(spec_source if spec_source is not None else pickle.loads(target_blob), options)  # noqa: S301
        known = {r["check"]: CheckResult.from_dict(r) for r in verdicts or []}
        result = run_check(get_check(check_id), Context(target, options), options, results=known)
        conn.send(result.to_dict())
    except BaseException as exc:  # report anything, even SystemExit, to the parent
        conn.send(CheckResult(check=check_id, status=ERROR, summary=f"{type(exc).__name__} in the isolated child: {one_line(exc, with_type=False)}",
                              details={"traceback": traceback.format_exc()}).to_dict())
    finally:
        conn.close()


def run_isolated(spec: CheckSpec, target: Any, options: RunOptions, results: dict[str, CheckResult] | None = None) -> CheckResult:
    """Run one check in a spawned child; a crash, hang or exit there becomes this check's `error`.

    `results`: the run's verdicts so far; the child sees those that decide root causes (foundation
    checks and probe proxies), so a blocked check is a consequence there as in-process (its probe, if
    any, runs in the child, where the model runs)."""
    start = time.perf_counter()
    source = target.source if target.source and not target.source.startswith("<") else None
    blob = None
    if source is None:
        try:
            blob = pickle.dumps(target)
        except Exception as exc:
            return CheckResult(check=spec.id, family=spec.family, status=ERROR,
                               summary=f"--isolate needs a target spec or a picklable Target: {exc}",
                               hint="load the target from a spec (file.py:factory) to isolate its checks")
    timeout = options.timeout + 60.0  # the child applies the timeout itself; this catches native hangs
    payload, exitcode = _run_child(source, blob, options, spec.id, timeout, _relevant(results or {}))
    result = CheckResult.from_dict(payload) if payload is not None else _lost_child(exitcode, timeout)
    result.check, result.family, result.duration_s = spec.id, spec.family, time.perf_counter() - start
    return result


def _relevant(results: dict[str, CheckResult]) -> list[dict[str, Any]]:
    """The verdicts a child needs for root causes, as plain dicts (sent by pickle)."""
    from .rootcause import FOUNDATIONS

    checks = {f.check for f in FOUNDATIONS.values()}
    return [r.to_dict() for r in results.values() if r.check in checks or r.details.get("blocked_by")]


def _run_child(source: str | None, blob: bytes | None, options: RunOptions, check_id: str,
               timeout: float, verdicts: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any] | None, int | None]:
    """(the child's result payload or None, its exit code); a child still running after `timeout`
    seconds is killed and its exit code is None (it hung rather than crashed)."""
    from .target import ADDED_PATHS

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, source, blob, options, check_id, verdicts), daemon=True)
    hidden = [p for p in ADDED_PATHS if p in sys.path]
    for path in hidden:  # the child copies sys.path at start; a target folder's cuda.py would shadow torch's
        sys.path.remove(path)
    try:
        proc.start()
    finally:
        sys.path.extend(hidden)
    child.close()
    payload, hung = None, True
    try:
        hung = not parent.poll(timeout)
        if not hung:
            try:
                payload = parent.recv()
            except EOFError:  # the child died without a result: its exit code says how
                payload = None
    finally:
        if payload is None and not hung:
            proc.join(5)  # let a crashing child finish dying, so its signal is what it died of
        if payload is None and proc.is_alive():
            proc.kill()
        proc.join(10)
    return payload, None if hung else proc.exitcode


def _lost_child(exitcode: int | None, timeout: float) -> CheckResult:
    """What to say when the child sent no result: crashed by a signal, hung, or exited."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return CheckResult(status=ERROR, summary=f"the check's process crashed with {name} (native code: an exporter, runtime or kernel)",
                           hint="re-run this check alone with --debug to see where; the other checks were not affected")
    if exitcode is None:
        return CheckResult(status=ERROR, summary=f"the check's process hung past {timeout:g} s and was killed",
                           hint="raise --timeout if the model is just slow")
    return CheckResult(status=ERROR, summary=f"the check's process exited with code {exitcode} without a result")
