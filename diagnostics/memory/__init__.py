"""Memory machinery: live tensor bytes during a forward pass, peaks per batch size, the budget fit,
the out-of-memory search, and memory that survives across calls.

* `tracker` — `LiveBytesTracker` (bytes alive during forward, its peak and the module at the peak),
  `model_bytes`, `input_bytes`.
* `peak`    — `measure_peak` (CUDA statistics, fake tensors, or a tracked real run), `resize_batch`,
  and the `try_batch` functions of the search (`simulated_try`, `cuda_try`).
* `search`  — `fit_linear` / `LinearFit`, `search_max_batch`, `BudgetAllocator`, `memory_fraction`, `is_oom`.
* `budget`  — what `cuda_oom` measures (`BudgetPlan`, `measure_batches`, `peak_culprit`, `confirm_on_cuda`).
* `growth`  — what `memory_growth` measures (`growth_run`, `find_holders`, `store_site`).
"""
from __future__ import annotations

from .peak import (
    PeakMeasurement,
    cuda_try,
    measure_peak,
    measure_peak_cuda,
    measure_peak_dispatch,
    measure_peak_fake,
    resize_batch,
    simulated_try,
)
from .search import (
    BudgetAllocator,
    LinearFit,
    SearchResult,
    fit_linear,
    free_cuda_memory,
    is_oom,
    memory_fraction,
    search_max_batch,
)
from .tracker import LiveBytesTracker, input_bytes, model_bytes, storage_bytes

__all__ = [
    "BudgetAllocator", "LinearFit", "LiveBytesTracker", "PeakMeasurement", "SearchResult", "cuda_try", "fit_linear",
    "free_cuda_memory", "input_bytes", "is_oom", "measure_peak", "measure_peak_cuda", "measure_peak_dispatch",
    "measure_peak_fake", "memory_fraction", "model_bytes", "resize_batch", "search_max_batch", "simulated_try",
    "storage_bytes",
]
