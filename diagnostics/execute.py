"""Running one check in this process: its options resolved, under a time limit, and always ending in
a CheckResult (a check that raises or times out ends as `error`). Shared by the runner, the
--isolate child process and the pytest plugin, so each face runs a check the same way."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
import warnings
from typing import Any, Iterator

from .errors import UsageError
from .options import RunOptions
from .registry import CheckSpec
from .results import ERROR, FAIL, PASS, SKIP, WARN, CheckResult, SkipCheck
from .rootcause import DETERMINISTIC, RootCause, attribute, blocked_by, blocked_result, compares_outputs, requires_of
from .text import one_line
from .unrunnable import as_consequence, cannot_run, reference_failure

NEEDS_CUDA = "needs a CUDA device; none is in use here (--device cuda on a GPU machine)"


class CheckTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
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


def prepared_target(target: Any, options: RunOptions) -> Any:
    """The Target of a run: a spec string loaded under the run's seed; --dynamic-dims applied."""
    if isinstance(target, str):
        from .target import load_target_for

        target = load_target_for(target, options)
    if options.dynamic_dims and not target.dynamic_dims:
        target.dynamic_dims = options.dynamic_dims
    return target


def cuda_skip(spec: CheckSpec, ctx: Any) -> CheckResult | None:
    """The skip of a CUDA-only check when the run is not on a CUDA device, else None."""
    if spec.needs_cuda and ctx.device.type != "cuda":
        return CheckResult(check=spec.id, family=spec.family, status=SKIP, summary=NEEDS_CUDA)
    return None


def run_check(spec: CheckSpec, ctx: Any, options: RunOptions, given: dict[str, Any] | None = None,
              results: dict[str, CheckResult] | None = None) -> CheckResult:
    """Run one check in this process and always return a result (never raises, except Ctrl-C).

    `results`: the run's verdicts so far by check id. A check whose comparison relies on a foundation
    that failed there (or that a one-forward probe finds broken) is not run: it ends as a consequence
    (see rootcause.py). A verdict that compared degenerate outputs says so (see degenerate.py)."""
    start = time.perf_counter()
    known = results if results is not None else {}
    if hasattr(getattr(ctx, "progress", None), "phase"):
        ctx.progress.phase = ""  # a new check starts with no phase of its own
    with charged(ctx) as sheet:
        root = _blocked(spec, ctx, options, known)
        if root is not None:
            result = blocked_result(spec.id, spec.family, root)
        else:
            result = _run(spec, ctx, options, given)
            result.check, result.family = spec.id, spec.family
            result = as_consequence(settle(spec, ctx, result, known), known)
    result.check = spec.id
    result.family = spec.family
    result.duration_s = time.perf_counter() - start
    result.shared = {label: seconds for label, seconds in sorted(sheet.items(), key=lambda kv: -kv[1])}
    result.shared_s = min(sum(sheet.values()), result.duration_s)
    return result


def charged(ctx: Any) -> contextlib.AbstractContextManager[dict[str, float]]:
    """The sheet on which the Context charges the shared work a check causes (empty for a stand-in Context)."""
    work = getattr(ctx, "shared_work", None)
    return work.charged() if work is not None else contextlib.nullcontext({})


def _run(spec: CheckSpec, ctx: Any, options: RunOptions, given: dict[str, Any] | None) -> CheckResult:
    try:
        opts = spec.resolve_options(options.check_options(spec.id) if given is None else given)
        with time_limit(options.timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporters and quantizers warn a lot; checks capture what matters
            result = spec.func(ctx, opts)
        if not isinstance(result, CheckResult):
            raise TypeError(f"check {spec.id} returned {type(result).__name__}, not a CheckResult")
    except SkipCheck as exc:
        result = CheckResult(status=SKIP, summary=str(exc) or "not applicable")
    except CheckTimeout as exc:
        result = CheckResult(status=ERROR, summary=f"{exc}; raise --timeout or run with --isolate",
                             hint="the check ran past --timeout: on a slow model raise --timeout or select fewer checks; a check "
                                  "that hangs inside native code can only be stopped with --isolate")
    except UsageError as exc:
        result = CheckResult(status=ERROR, summary=str(exc))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the check broke: report it, keep the run going
        if reference_failure(ctx, exc) is not None:  # the model cannot run its example inputs: one root cause
            result = cannot_run(ctx, exc, traceback.format_exc())
        else:
            result = CheckResult(status=ERROR, summary=one_line(exc, 500), details={"traceback": traceback.format_exc()})
        if options.debug:
            traceback.print_exc()
    return result


# -- root causes and degenerate outputs (see rootcause.py, degenerate.py) ---------------------------
#: The Context cache key of the determinism probe: what a plain rerun of the example inputs measured.
PROBE_KEY = "foundation:deterministic"


def _blocked(spec: CheckSpec, ctx: Any, options: RunOptions, results: dict[str, CheckResult]) -> RootCause | None:
    """The failed foundation that keeps `spec` from judging, or None (a probe that breaks is no verdict:
    the check itself then reports what breaks)."""
    requires = requires_of(spec)
    if not requires:
        return None

    def probe(name: str) -> str | None:
        if name != DETERMINISTIC or not hasattr(ctx, "cached"):
            return None
        try:
            with time_limit(options.timeout):
                return probe_deterministic(ctx)
        except KeyboardInterrupt:
            raise
        except Exception:
            return None

    return blocked_by(requires, results, probe)


#: A rerun whose error relative to the output's RMS stays below this is kernel reordering (GPU atomics give
#: ~1e-7), not a random op or state (dropout, noise and counters give ~1).
PROBE_RMS_REL = 1e-5


def probe_deterministic(ctx: Any) -> str | None:
    """What a plain rerun of the example inputs shows when determinism was not run: None when it equals
    the reference (every tensor leaf within fp32's default tolerance, or within PROBE_RMS_REL of its RMS), else
    the difference in words. The tolerance calibrated from fp64 is not used: a random model's fp64
    run is as random, which would calibrate any difference away. One forward per run, shared: the
    rerun is `determinism`'s first repeat too, and state_mutation's repeat is reused when it was made."""

    def build() -> str | None:
        from .compare import compare
        from .determinism import REPEAT_KEY

        reference = ctx.reference
        rerun = ctx.peek(REPEAT_KEY)
        if rerun is None:
            rerun = ctx.forward()
            ctx.cached(REPEAT_KEY, lambda: rerun)
        comparison = compare(rerun, reference)
        # tensors only: a non-tensor leaf without a content `==` (a cache object) would differ by identity
        differing = [leaf for leaf in comparison.tensor_leaves if not leaf.passed and leaf.rms_rel > PROBE_RMS_REL]
        if not differing:
            return None
        worst = max(differing, key=lambda leaf: leaf.rms_rel)
        return (f"a rerun of the example inputs differs from the first run by max abs {worst.max_abs:.3g} in `{worst.name}` "
                f"(rms rel {worst.rms_rel:.2g})")

    return ctx.cached(PROBE_KEY, build)


def settle(spec: CheckSpec, ctx: Any, result: CheckResult, results: dict[str, CheckResult]) -> CheckResult:
    """A finished verdict placed among the others: a consequence of an upstream root when it follows
    from one; a warning when it compared degenerate outputs."""
    result = attribute(result, results)
    if result.status in (PASS, WARN, FAIL) and compares_outputs(spec) and hasattr(ctx, "has_cached"):
        from .degenerate import degenerate_outputs, mark

        try:
            found = degenerate_outputs(ctx)
        except Exception:  # the reference itself failed: the check reported that
            found = []
        mark(result, found)
    return result
