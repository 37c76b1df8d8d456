"""Test-only checks that crash the process, loaded through $TORCH_DIAGNOSE_CHECKS."""
from __future__ import annotations

import os
import signal

from torch_diagnose.registry import register


@register("crash_segfault", family="test", title="dies with SIGSEGV", default=False)
def crash_segfault(ctx, opts):
    """Simulates a native crash in an exporter or runtime."""
    os.kill(os.getpid(), signal.SIGSEGV)


@register("slow_check", family="test", title="sleeps two seconds", default=False, order=1)
def slow_check(ctx, opts):
    """Gives a test time to interrupt the run in the middle of a check."""
    import time

    from torch_diagnose.results import CheckResult

    time.sleep(2)
    return CheckResult(status="pass", summary="slept")
