"""Timing a callable correctly: warm-up, synchronisation, adaptive repetitions, robust statistics.

Like `torch.utils.benchmark.Timer.blocked_autorange`, repetitions continue until the measured
time reaches `min_time_s` (and at least `min_samples` calls), so the median is stable whether
a call takes 50 µs or 500 ms. Every call is timed on its own (not in blocks), so tail
percentiles (p90, p99) mean what they say. On CUDA the device is synchronised before the clock
starts and after each call, or the numbers measure kernel launches, not work.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac)


@dataclass
class TimingStats:
    """Latency statistics of one measured callable, in seconds."""

    samples: list[float] = field(default_factory=list)
    warmup: int = 0

    @property
    def n(self) -> int:
        return len(self.samples)

    def _sorted(self) -> list[float]:
        return sorted(self.samples)

    @property
    def p50(self) -> float:
        return percentile(self._sorted(), 50)

    @property
    def p90(self) -> float:
        return percentile(self._sorted(), 90)

    @property
    def p99(self) -> float:
        return percentile(self._sorted(), 99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples) if self.samples else math.nan

    @property
    def iqr(self) -> float:
        s = self._sorted()
        return percentile(s, 75) - percentile(s, 25)

    @property
    def noise(self) -> float:
        """IQR relative to the median: above ~0.1 the machine was busy or the call is unstable."""
        p50 = self.p50
        return self.iqr / p50 if p50 and p50 > 0 else math.nan

    def summary(self, batch: int = 1, prefix: str = "") -> dict[str, float]:
        p50 = self.p50
        return {
            f"{prefix}p50_ms": 1e3 * p50,
            f"{prefix}p90_ms": 1e3 * self.p90,
            f"{prefix}p99_ms": 1e3 * self.p99,
            f"{prefix}iqr_ms": 1e3 * self.iqr,
            f"{prefix}throughput_per_s": batch / p50 if p50 > 0 else math.inf,
            f"{prefix}samples": self.n,
        }


def measure(
    fn: Callable[[], Any],
    *,
    sync: Callable[[], None] | None = None,
    min_time_s: float = 0.3,
    min_samples: int = 5,
    max_samples: int = 1000,
    warmup_s: float = 0.05,
    min_warmup: int = 2,
    max_time_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TimingStats:
    """Time `fn` adaptively. `sync` (e.g. torch.cuda.synchronize) is called around every call.

    `max_time_s` caps the whole measurement, warm-up included (at least one warm-up call and one
    sample): a 2 s call is timed a few times, not `min_samples` + `min_warmup` times."""
    sync = sync or (lambda: None)
    stats = TimingStats()
    start = clock()

    def over_cap() -> bool:
        return max_time_s is not None and clock() - start >= max_time_s

    while stats.warmup < min_warmup or clock() - start < warmup_s:
        sync()
        fn()
        sync()
        stats.warmup += 1
        if stats.warmup >= max_samples or over_cap():
            break
    total = 0.0
    while (total < min_time_s or stats.n < min_samples) and stats.n < max_samples and not (stats.n and over_cap()):
        sync()
        t0 = clock()
        fn()
        sync()
        dt = clock() - t0
        stats.samples.append(dt)
        total += dt
    return stats


def cuda_sync_for(device: Any) -> Callable[[], None] | None:
    """A synchroniser for `device` (None on CPU)."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        return lambda: torch.cuda.synchronize(device)
    return None


def time_unsynced(fn: Callable[[], Any], n: int, device: Any) -> tuple[float, float]:
    """(median single call, mean call in a loop), timed without waiting for the GPU: what a naive timer reads.

    Single calls start on a drained queue but the clock stops before the GPU finishes; the loop is
    launch-bound until the queue fills."""
    import torch

    singles = []
    for _ in range(n):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        singles.append(time.perf_counter() - t0)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    loop = (time.perf_counter() - t0) / n
    torch.cuda.synchronize(device)
    return sorted(singles)[len(singles) // 2], loop


def time_cuda_events(fn: Callable[[], Any], n: int) -> float:
    """Median seconds per call between CUDA events recorded around it."""
    import torch

    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return sorted(times)[len(times) // 2]
