"""Batch size against a memory budget: the linear fit of peak memory and the real out-of-memory search.

* `fit_linear` fits peak = a + b * batch; `LinearFit.largest_fitting` inverts it under a budget.
* `search_max_batch` finds the largest batch that runs: doubling, then bisection, catching
  `torch.OutOfMemoryError` and freeing memory between tries. `BudgetAllocator` is an injectable
  allocator that raises `torch.OutOfMemoryError` past a budget, so the search runs on CPU too.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..text import format_bytes


@dataclass
class LinearFit:
    """peak = intercept + slope * batch, least squares over the measured points."""

    intercept: float
    slope: float
    max_rel_residual: float
    points: list[tuple[int, int]] = field(default_factory=list)

    def predict(self, batch: float) -> float:
        return self.intercept + self.slope * batch

    def largest_fitting(self, budget: float, *, limit: int = 1 << 30) -> int | None:
        """The largest batch whose predicted peak is <= budget (None when even 1 does not fit; `limit`
        when memory does not grow with the batch)."""
        if self.predict(1) > budget:
            return None
        if self.slope <= 0:
            return limit
        return int(min(max(math.floor((budget - self.intercept) / self.slope), 1), limit))


def fit_linear(points: Iterable[tuple[int, int]]) -> LinearFit:
    pts = sorted({(int(b), int(p)) for b, p in points})
    if not pts:
        raise ValueError("no measurements to fit")
    xs = [float(b) for b, _ in pts]
    ys = [float(p) for _, p in pts]
    n = len(pts)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = 0.0 if sxx == 0 else sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    residual = max(abs(intercept + slope * x - y) / max(y, 1.0) for x, y in zip(xs, ys))
    return LinearFit(intercept, slope, residual, pts)


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors (torch.OutOfMemoryError, and older cuDNN/cuBLAS alloc failures)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "ALLOC_FAILED" in text)


def free_cuda_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass
class SearchResult:
    """Outcome of `search_max_batch`: the largest batch that ran and every try, in order."""

    largest_ok: int | None
    smallest_failing: int | None
    tries: list[tuple[int, bool]] = field(default_factory=list)
    hit_limit: bool = False

    def as_rows(self) -> list[dict[str, Any]]:
        return [{"batch": b, "fits": ok} for b, ok in self.tries]


def search_max_batch(
    try_batch: Callable[[int], Any],
    *,
    start: int = 1,
    limit: int = 4096,
    cleanup: Callable[[], None] = free_cuda_memory,
) -> SearchResult:
    """The largest batch in [1, limit] for which `try_batch(batch)` does not run out of memory.

    Doubles from `start` until a try fails, then bisects between the last success and the first
    failure. Only out-of-memory errors count as "does not fit"; any other error propagates.
    `cleanup` runs after every try (so a failed try's tensors are gone before the next).
    """
    tries: list[tuple[int, bool]] = []

    def attempt(batch: int) -> bool:
        ok = True
        try:
            result = try_batch(batch)
            del result
        except Exception as exc:
            if not is_oom(exc):
                raise
            ok = False
        finally:
            cleanup()
        tries.append((batch, ok))
        return ok

    start = max(1, min(start, limit))
    lo, hi = 0, None  # lo: largest known ok (0 = none); hi: smallest known failing
    batch = start
    while True:
        if attempt(batch):
            lo = batch
            if batch >= limit:
                return SearchResult(lo, None, tries, hit_limit=True)
            batch = min(batch * 2, limit)
        else:
            hi = batch
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(lo or None, hi, tries)


class BudgetAllocator:
    """A stand-in device allocator: raises `torch.OutOfMemoryError` when a request would exceed `budget`.

    Drive it from a `LiveBytesTracker(on_alloc=alloc.alloc, on_free=alloc.free)`, so a CPU run
    behaves like a device with `budget` bytes (tests of the OOM search, what-if runs).
    """

    def __init__(self, budget: int, *, resident: int = 0) -> None:
        self.budget = int(budget)
        self.in_use = int(resident)
        self.peak = self.in_use
        self.failures = 0

    def alloc(self, nbytes: int) -> None:
        if self.in_use + nbytes > self.budget:
            self.failures += 1
            raise torch.OutOfMemoryError(
                f"simulated out of memory: tried to allocate {format_bytes(nbytes)} with {format_bytes(self.in_use)} "
                f"of {format_bytes(self.budget)} in use")
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)

    def free(self, nbytes: int) -> None:
        self.in_use -= nbytes


class memory_fraction:
    """Limit this process's CUDA caching allocator to `budget` bytes (restored on exit)."""

    def __init__(self, budget: int, device: torch.device | int | None = None) -> None:
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        self.budget = budget
        self.previous = 1.0

    def __enter__(self) -> "memory_fraction":
        total = torch.cuda.get_device_properties(self.device).total_memory
        getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if getter is not None:
            try:
                self.previous = float(getter(self.device))
            except Exception:
                self.previous = 1.0
        free_cuda_memory()
        torch.cuda.set_per_process_memory_fraction(min(max(self.budget / total, 0.0), 1.0), self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        free_cuda_memory()
        torch.cuda.set_per_process_memory_fraction(self.previous, self.device)
