"""Memory machinery: live tensor bytes during a forward pass, batch-size fits, and the OOM search.

* `LiveBytesTracker` is a dispatch-mode spy (an `OpSpy` subclass, so it knows the running module)
  that counts the bytes of every storage created while it is active and notices each free through
  a weak reference to the storage (torch preserves one Python object per live storage, so the weak
  reference dies exactly when the memory is released — also for storages autograd keeps alive).
  Its `peak` is the largest number of bytes alive at once: on CPU it estimates what CUDA's
  `max_memory_allocated()` measures, leaving out workspaces that kernels allocate internally.
  Optional `on_alloc` / `on_free` callbacks let it drive a simulated device allocator.
* `measure_peak` gives the peak memory of one forward pass (parameters + inputs + activations):
  measured with `max_memory_allocated` on CUDA, estimated with the tracker elsewhere, on fake
  tensors (no data, no compute) where the model allows, else on real ones.
* `fit_linear` fits peak = a + b * batch; `largest_fitting_batch` inverts it under a budget.
* `search_max_batch` finds the largest batch that runs: doubling, then bisection, catching
  `torch.OutOfMemoryError` and freeing memory between tries. `BudgetAllocator` is an injectable
  allocator that raises `torch.OutOfMemoryError` past a budget, so the search runs on CPU too.
"""
from __future__ import annotations

import gc
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch.utils._pytree import tree_leaves

from .inputs import as_args_kwargs, batch_size, call_model, select_batch, tensors
from .probe import OpSpy, op_base_name
from .tree import map_leaves

KiB, MiB, GiB = 1024, 1024**2, 1024**3


def format_bytes(n: float | int | None) -> str:
    """`1.50 MiB`-style text (binary units)."""
    if n is None:
        return "?"
    if isinstance(n, float) and not math.isfinite(n):
        return str(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{int(n)} B"


def _storage(t: torch.Tensor) -> Any | None:
    try:
        return t.untyped_storage()
    except Exception:  # sparse, nested or other storage-less tensors
        return None


def storage_bytes(objs: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind the tensors in `objs` (views and ties counted once)."""
    seen: dict[int, int] = {}
    for t in objs:
        if isinstance(t, torch.Tensor):
            s = _storage(t)
            if s is not None:
                seen[id(s)] = s.nbytes()
    return sum(seen.values())


def model_bytes(model: torch.nn.Module) -> int:
    """Parameter and buffer bytes (shared weights counted once)."""
    return storage_bytes([*model.parameters(), *model.buffers()])


def input_bytes(inputs: Any) -> int:
    return storage_bytes(tensors(inputs))


class LiveBytesTracker(OpSpy):
    """Counts bytes of storages created while active; `peak` is the most alive at any moment.

    Storages that existed before (parameters, inputs, and anything an op merely views) are not
    counted. `retained()` is what is still alive from the tracked allocations. `on_alloc(nbytes)`
    may raise (a simulated out-of-memory); `on_free(nbytes)` is called when a storage dies.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        *,
        on_alloc: Callable[[int], None] | None = None,
        on_free: Callable[[int], None] | None = None,
        record_sites: bool = False,
    ) -> None:
        super().__init__(model, lambda name: False)
        self.record_sites = record_sites
        #: storage id -> "module (Type)" that allocated it (with record_sites=True)
        self.sites: dict[int, str] = {}
        self.on_alloc = on_alloc
        self.on_free = on_free
        self.current = 0
        self.peak = 0
        self.allocations = 0
        self._root: tuple[str, str] = ("", type(model).__name__ if model is not None else "")
        self.peak_module = self._root
        self.peak_op = ""
        self._live: dict[int, tuple[weakref.ref, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {id(s) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and (s := _storage(t)) is not None}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs, func)
        return out

    def _track(self, t: torch.Tensor, input_storages: set[int], func: Any) -> None:
        s = _storage(t)
        if s is None:
            return
        key = id(s)
        nbytes = s.nbytes()
        if key in self._live:  # an in-place or out= op may have resized it
            ref, old = self._live[key]
            if nbytes != old and ref() is s:
                self._grow(nbytes - old, func)
                self._live[key] = (ref, nbytes)
            return
        if key in input_storages:  # a view or alias of something that existed before
            return
        if self.on_alloc is not None:
            self.on_alloc(nbytes)
        self._live[key] = (weakref.ref(s, self._freed_callback(key)), nbytes)
        if self.record_sites:
            name, type_name = self._module_stack[-1] if self._module_stack else self._root
            self.sites[key] = f"{name or '<root>'} ({type_name})"
        self.allocations += 1
        self._grow(nbytes, func)

    def _grow(self, delta: int, func: Any) -> None:
        self.current += delta
        if self.current > self.peak:
            self.peak = self.current
            self.peak_op = f"aten.{op_base_name(func)}"
            if self._module_stack:
                self.peak_module = self._module_stack[-1]

    def _freed_callback(self, key: int) -> Callable[[Any], None]:
        def freed(_ref: Any) -> None:
            entry = self._live.pop(key, None)
            self.sites.pop(key, None)
            if entry is not None:
                self.current -= entry[1]
                if self.on_free is not None:
                    self.on_free(entry[1])

        return freed

    def retained(self) -> int:
        """Bytes of tracked storages still alive (after a `gc.collect()` by the caller)."""
        return sum(n for ref, n in self._live.values() if ref() is not None)

    def live_storages(self) -> dict[int, int]:
        """Storage id -> bytes of the tracked storages still alive."""
        return {key: n for key, (ref, n) in self._live.items() if ref() is not None}

    def reset_peak(self) -> None:
        self.peak = self.current

    @property
    def peak_label(self) -> str:
        name, type_name = self.peak_module
        return f"{name or '<root>'} ({type_name})" if type_name else (name or "<root>")


# ---------------------------------------------------------------------------------------------
# Inputs at other batch sizes


def resize_batch(inputs: Any, batch: int, batch_dim: int = 0) -> Any:
    """The inputs with `batch` rows, repeating the example's rows cyclically."""
    size = batch_size(inputs, batch_dim)
    if size is None or size == 0:
        raise ValueError("the inputs have no common batch dimension to resize")
    if batch == size:
        return inputs
    return select_batch(inputs, [i % size for i in range(batch)], batch_dim)


# ---------------------------------------------------------------------------------------------
# One measurement


@dataclass
class PeakMeasurement:
    """Peak memory of one forward pass at one batch size."""

    batch: int
    peak_bytes: int  # parameters + inputs + activations alive at the worst moment
    param_bytes: int
    input_bytes: int
    activation_peak: int  # peak_bytes - param_bytes - input_bytes
    method: str  # "cuda" (max_memory_allocated), "fake" (fake tensors), "dispatch" (real CPU run)
    peak_module: str = ""
    peak_op: str = ""

    def as_row(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "peak_bytes": self.peak_bytes, "peak": format_bytes(self.peak_bytes),
            "activations": format_bytes(self.activation_peak), "method": self.method,
            "peak_module": self.peak_module, "peak_op": self.peak_op,
        }


def _run(model: torch.nn.Module, inputs: Any, grad: bool) -> Any:
    if grad:
        with torch.enable_grad():
            return call_model(model, inputs)
    with torch.inference_mode():
        return call_model(model, inputs)


def measure_peak_dispatch(model: torch.nn.Module, inputs: Any, *, batch: int, grad: bool = False,
                          run: Callable[[torch.nn.Module, Any], Any] | None = None) -> PeakMeasurement:
    """Peak from a real run with the live-bytes tracker (any device); `run(model, inputs)` calls the model
    (default: under inference_mode, or with autograd when `grad`)."""
    params, ins = model_bytes(model), input_bytes(inputs)
    tracker = LiveBytesTracker(model)
    with tracker:
        out = run(model, inputs) if run is not None else _run(model, inputs, grad)
    del out
    return PeakMeasurement(batch, params + ins + tracker.peak, params, ins, tracker.peak, "dispatch",
                           tracker.peak_label, tracker.peak_op)


def measure_peak_fake(model: torch.nn.Module, inputs: Any, *, batch: int, grad: bool = False) -> PeakMeasurement:
    """Peak from a run on fake tensors: shapes only, no data and no arithmetic (fast at any batch).

    Raises when the model needs data (`.item()`, `nonzero`, data-dependent control flow).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    params, ins = model_bytes(model), input_bytes(inputs)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    state = {name: fake_mode.from_tensor(t) for name, t in
             [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    fake_inputs = map_leaves(inputs, lambda t: fake_mode.from_tensor(t) if isinstance(t, torch.Tensor) else t)
    args, kwargs = as_args_kwargs(fake_inputs)
    tracker = LiveBytesTracker(model)
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx, fake_mode, tracker:
        out = torch.func.functional_call(model, state, args, kwargs, tie_weights=True)
    del out
    return PeakMeasurement(batch, params + ins + tracker.peak, params, ins, tracker.peak, "fake",
                           tracker.peak_label, tracker.peak_op)


def measure_peak_cuda(model: torch.nn.Module, inputs: Any, *, batch: int, grad: bool = False) -> PeakMeasurement:
    """Peak from CUDA's allocator statistics (model and inputs already on the device)."""
    device = next((t.device for t in tensors(inputs) if t.is_cuda), None) or next(
        (p.device for p in model.parameters() if p.is_cuda), torch.device("cuda"))
    params, ins = model_bytes(model), input_bytes(inputs)
    free_cuda_memory()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = _run(model, inputs, grad)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    # `base` holds the parameters and inputs and anything else already resident (other models).
    activations = max(peak - base, 0)
    return PeakMeasurement(batch, params + ins + activations, params, ins, activations, "cuda")


def measure_peak(model: torch.nn.Module, inputs: Any, *, batch: int, method: str = "auto", grad: bool = False) -> PeakMeasurement:
    """Peak memory of one forward pass, by `method`: cuda | fake | dispatch | auto.

    auto: CUDA statistics when the model runs on CUDA; else fake tensors, and a real run with the
    tracker when the model needs real data.
    """
    on_cuda = any(t.is_cuda for t in [*tensors(inputs), *model.parameters()])
    if method == "cuda" or (method == "auto" and on_cuda):
        return measure_peak_cuda(model, inputs, batch=batch, grad=grad)
    if method in ("fake", "auto"):
        try:
            return measure_peak_fake(model, inputs, batch=batch, grad=grad)
        except Exception:
            if method == "fake":
                raise
    return measure_peak_dispatch(model, inputs, batch=batch, grad=grad)


# ---------------------------------------------------------------------------------------------
# Fitting peak memory against batch size


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
    if sxx == 0:
        slope = 0.0
    else:
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    intercept = mean_y - slope * mean_x
    residual = max(abs(intercept + slope * x - y) / max(y, 1.0) for x, y in zip(xs, ys))
    return LinearFit(intercept, slope, residual, pts)


# ---------------------------------------------------------------------------------------------
# Searching the largest batch that runs


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


def simulated_try(model: torch.nn.Module, make_inputs: Callable[[int], Any], allocator: BudgetAllocator,
                  *, grad: bool = False) -> Callable[[int], None]:
    """A `try_batch` for `search_max_batch` that runs the real model on CPU against `allocator`.

    Inputs count against the allocator while the try runs; parameters should be its `resident` bytes.
    """

    def try_batch(batch: int) -> None:
        inputs = make_inputs(batch)
        nbytes = input_bytes(inputs)
        allocator.alloc(nbytes)
        try:
            with LiveBytesTracker(model, on_alloc=allocator.alloc, on_free=allocator.free):
                out = _run(model, inputs, grad)
            del out
        finally:
            allocator.free(nbytes)

    return try_batch


def cuda_try(model: torch.nn.Module, make_inputs: Callable[[int], Any], *, grad: bool = False) -> Callable[[int], None]:
    """A `try_batch` that runs the model on CUDA for real."""

    def try_batch(batch: int) -> None:
        inputs = make_inputs(batch)
        out = _run(model, inputs, grad)
        torch.cuda.synchronize()
        del out, inputs

    return try_batch


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
