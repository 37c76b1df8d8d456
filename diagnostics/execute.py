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
from .results import ERROR, SKIP, CheckResult, SkipCheck
from .text import one_line

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


def run_check(spec: CheckSpec, ctx: Any, options: RunOptions, given: dict[str, Any] | None = None) -> CheckResult:
    """Run one check in this process and always return a result (never raises, except Ctrl-C)."""
    start = time.perf_counter()
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
                             hint="a check that hangs inside native code can only be stopped with --isolate")
    except UsageError as exc:
        result = CheckResult(status=ERROR, summary=str(exc))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the check broke: report it, keep the run going
        result = CheckResult(status=ERROR, summary=one_line(exc, 500), details={"traceback": traceback.format_exc()})
        if options.debug:
            traceback.print_exc()
    result.check = spec.id
    result.family = spec.family
    result.duration_s = time.perf_counter() - start
    return result
