"""Time budgets for work that may run for minutes on a big model (an export with optional dims
dynamic, fp16 on a CPU without fast half kernels): stopped past its budget and said, never a hang."""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from typing import Any, Iterator


class OverBudget(BaseException):
    """Work ran past its budget (a BaseException: exporters' and models' `except Exception` must not
    swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[bool]:
    """Raise OverBudget in the main thread after `seconds` (SIGALRM), and again every 0.5 s in case
    library code swallowed it; yields False where no alarm can be set. A body that still ends past
    `seconds` (the alarm landed in a gc callback or an `except BaseException`, which swallow it) raises
    OverBudget on exit, so the verdict never depends on where the signal happened to land."""
    if not (0 < seconds < math.inf) or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield False
        return

    def alarm(_signum: int, _frame: Any) -> None:
        raise OverBudget(f"over the {seconds:g} s budget")

    outer = signal.getitimer(signal.ITIMER_REAL)  # the runner's per-check timeout, if one is running
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer[0]) if outer[0] else seconds, 0.5)
    finished = False
    try:
        yield True
        finished = True
    finally:
        # Block the alarm while tearing down: a late one must not escape from here with our handler left in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if signal.SIGALRM in signal.sigpending():
                signal.sigwait({signal.SIGALRM})  # ours, late: consume it, never hand it to `previous`
            signal.signal(signal.SIGALRM, previous)
            if outer[0]:  # give the runner's timeout back, less the time spent here (at least a moment)
                signal.setitimer(signal.ITIMER_REAL, max(outer[0] - (time.monotonic() - started), 0.01), outer[1])
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    if finished and time.monotonic() - started > seconds:
        raise OverBudget(f"over the {seconds:g} s budget (the alarm was swallowed; caught on exit)")
