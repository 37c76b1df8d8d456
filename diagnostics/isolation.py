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
from typing import Any

from .options import RunOptions
from .registry import CheckSpec
from .results import ERROR, CheckResult


def _child(conn: Any, spec_source: str | None, target_blob: bytes | None, options: RunOptions, check_id: str) -> None:
    try:
        from .context import Context
        from .registry import get_check
        from .runner import run_check
        from .target import load_target_for

        if spec_source is not None:
            target = load_target_for(spec_source, options)
        else:
            target = pickle.loads(target_blob)  # noqa: S301 - our own bytes from the parent
        if options.dynamic_dims and not target.dynamic_dims:
            target.dynamic_dims = options.dynamic_dims
        ctx = Context(target, options)
        result = run_check(get_check(check_id), ctx, options)
        conn.send(result.to_dict())
    except BaseException as exc:  # report anything, even SystemExit, to the parent
        import traceback
        conn.send(CheckResult(check=check_id, status=ERROR, summary=f"{type(exc).__name__} in the isolated child: {exc}", details={"traceback": traceback.format_exc()}).to_dict())
    finally:
        conn.close()


def run_isolated(spec: CheckSpec, target: Any, options: RunOptions) -> CheckResult:
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
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, source, blob, options, spec.id), daemon=True)
    from .target import ADDED_PATHS

    hidden = [p for p in ADDED_PATHS if p in sys.path]
    for path in hidden:  # the child copies sys.path at start; a target folder's cuda.py would shadow torch's
        sys.path.remove(path)
    try:
        proc.start()
    finally:
        sys.path.extend(hidden)
    child.close()
    timeout = options.timeout + 60.0  # the child applies the timeout itself; this catches native hangs
    payload = None
    try:
        if parent.poll(timeout):
            try:
                payload = parent.recv()
            except EOFError:
                payload = None
    finally:
        if payload is None and proc.is_alive():
            proc.kill()
        proc.join(10)
    duration = time.perf_counter() - start
    if payload is not None:
        result = CheckResult.from_dict(payload)
    elif proc.exitcode is not None and proc.exitcode < 0:
        sig = -proc.exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        result = CheckResult(status=ERROR, summary=f"the check's process crashed with {name} (native code: an exporter, runtime or kernel)",
                             hint="re-run this check alone with --debug to see where; the other checks were not affected")
    elif proc.exitcode is None or payload is None and proc.exitcode in (None, -9):
        result = CheckResult(status=ERROR, summary=f"the check's process hung past {timeout:g} s and was killed",
                             hint="raise --timeout if the model is just slow")
    else:
        result = CheckResult(status=ERROR, summary=f"the check's process exited with code {proc.exitcode} without a result")
    result.check, result.family, result.duration_s = spec.id, spec.family, duration
    return result
