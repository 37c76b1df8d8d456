"""`cuda_timing` (CUDA only): latency with and without synchronisation, and the error a timer without
`torch.cuda.synchronize()` makes."""
from __future__ import annotations

import math

import torch

from torch_diagnose.context import Context
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult
from torch_diagnose.timing import cuda_sync_for, measure, time_cuda_events, time_unsynced


@register(
    "cuda_timing",
    family="cuda",
    title="latency measured with and without synchronisation",
    order=88,
    needs_cuda=True,
    options=(Option("iterations", int, 20, "timed forward calls per method"),),
)
def cuda_timing(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Forward latency timed three ways on CUDA: a wall clock without `synchronize()`, with it, and CUDA events.

    Kernel launches return before the GPU finishes, so a timer without synchronisation measures the
    launch overhead, not the latency: this shows how large that error is for this model.
    """
    # measure
    n = max(1, int(opts.iterations))
    device = ctx.device
    for _ in range(3):
        ctx.forward()
    torch.cuda.synchronize(device)
    single_unsynced, loop_unsynced = time_unsynced(ctx.forward, n, device)  # the classic mistake, twice
    stats = measure(lambda: ctx.forward(), sync=cuda_sync_for(device), min_samples=n)  # warm-up, adaptive repetitions
    event_s = time_cuda_events(ctx.forward, n)
    # judge
    true_s = stats.p50
    ratio = true_s / single_unsynced if single_unsynced > 0 else math.inf
    metrics = {
        "latency_synced_ms": true_s * 1e3,
        "latency_synced_p90_ms": stats.p90 * 1e3,
        "timing_noise": stats.noise,
        "latency_cuda_events_ms": event_s * 1e3,
        "latency_unsynced_single_ms": single_unsynced * 1e3,
        "latency_unsynced_loop_ms": loop_unsynced * 1e3,
        "unsynced_underestimate_x": ratio,
    }
    # explain
    summary = (f"median latency {true_s * 1e3:.3g} ms with synchronize() ({event_s * 1e3:.3g} ms by CUDA events); "
               f"timed without synchronize() one call reads {single_unsynced * 1e3:.3g} ms"
               + (f" ({ratio:.1f}x too low)" if ratio > 1.2 else ""))
    return CheckResult.passed(
        summary, metrics=metrics,
        hint="time GPU work with torch.cuda.synchronize() before reading the clock, or with torch.cuda.Event(enable_timing=True)",
        details={"plot": {"kind": "bar", "title": "latency by timing method", "x": ["no sync (1 call)", "no sync (loop)", "synchronize", "CUDA events"],
                          "series": {"ms": [single_unsynced * 1e3, loop_unsynced * 1e3, true_s * 1e3, event_s * 1e3]},
                          "xlabel": "method", "ylabel": "ms", "logy": False}},
    )
