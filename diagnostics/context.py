"""The shared Context of one run: the target, its inputs, and every expensive thing built once.

Checks ask the Context for the fp32 reference outputs, the fp64 reference, exported artifacts
(`ctx.cached(key, builder)`), a private copy of the model, and module records. Each is computed
on first use and shared by every later check in the run.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from . import inputs as inp
from .options import RunOptions
from .target import Target


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .errors import UsageError

        raise UsageError("--device cuda asked for, but torch sees no CUDA device here; use --device cpu or auto")
    return device


@dataclass
class ForwardStats:
    """How much model work the run did through `ctx.forward` (for overhead accounting)."""

    calls: int = 0
    seconds: float = 0.0


@dataclass
class Fp64Reference:
    model: torch.nn.Module | None
    inputs: Any
    outputs: Any
    error: str | None = None


@dataclass
class Variant:
    """A deployment variant some check built (TorchScript, ONNX Runtime, fp16, int8 ...).

    `run(inputs) -> outputs` runs it like the eager model; `verdict` is the status of the check
    that judged its equivalence (a failed variant is never recommended); `max_error` is its
    worst max-abs error against the fp32 reference; `size_bytes` its size on disk when known.
    """

    name: str
    run: Callable[[Any], Any]
    source_check: str
    verdict: str | None = None
    max_error: float | None = None
    size_bytes: int | None = None
    note: str = ""


@dataclass
class Context:
    target: Target
    options: RunOptions = field(default_factory=RunOptions)
    device: torch.device | None = None
    notes: list[str] = field(default_factory=list)
    stats: ForwardStats = field(default_factory=ForwardStats)

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = resolve_device(self.options.device)
        # Snapshot the training flags *before* anything touches the model: eval_mode judges these.
        self.initial_training: dict[str, bool] = {
            name: module.training for name, module in self.target.model.named_modules()
        }
        self._cache: dict[str, Any] = {}
        self._eval_done = False
        self._initial_buffers: dict[str, torch.Tensor] = {}
        #: Deployment variants built by checks, by name; the benchmark reuses them (never rebuilds).
        self.variants: dict[str, Variant] = {}

    # -- model and inputs ---------------------------------------------------------------------
    @property
    def original_model(self) -> torch.nn.Module:
        """The model as handed over (may still be in training mode)."""
        return self.target.model

    @property
    def model(self) -> torch.nn.Module:
        """The model switched to eval mode (as deployment should) and moved to the device.

        `.eval()` goes through the model's own `train()`, so an override that does not propagate
        leaves its children in training mode here too: checks then see what deployment would see.
        """
        if not self._eval_done:
            self._eval_done = True
            model = self.target.model
            if any(self.initial_training.values()):
                self.notes.append("the model was handed over in training mode; checks after eval_mode ran it after model.eval()")
            model.eval()
            if self.device is not None and self.device.type != "cpu":
                model.to(self.device)
            # Buffers before any forward: a model whose forward updates its buffers (running stats,
            # moving averages) must not drift the fp64 reference built later (see `fp64`).
            self._initial_buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        return self.target.model

    @property
    def inputs(self) -> Any:
        """The example inputs on the device (do not modify; use `ctx.fresh_inputs()` for a copy)."""
        if "inputs" not in self._cache:
            if self.target.example_inputs is None:
                raise ValueError("the target has no example inputs")
            self._cache["inputs"] = inp.to_device(self.target.example_inputs, self.device)
        return self._cache["inputs"]

    def fresh_inputs(self) -> Any:
        return inp.clone(self.inputs)

    @property
    def batch_dim(self) -> int:
        return self.target.batch_dim

    def model_copy(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """A deep copy, for checks that would change the model (casting, quantizing, mutation)."""
        return copy.deepcopy(model if model is not None else self.model)

    def check_options(self, check_id: str) -> dict[str, Any]:
        return self.options.check_options(check_id)

    # -- running ------------------------------------------------------------------------------
    def forward(self, inputs: Any | None = None, model: Callable[..., Any] | None = None, *, grad: bool = False) -> Any:
        """Run the model (default: eval model on the example inputs) under inference_mode."""
        model = self.model if model is None else model
        inputs = self.inputs if inputs is None else inputs
        start = time.perf_counter()
        try:
            if grad:
                with torch.enable_grad():
                    return call_detached(model, inputs)
            with torch.inference_mode():
                return inp.call_model(model, inputs)
        finally:
            self.stats.calls += 1
            self.stats.seconds += time.perf_counter() - start

    def add_variant(self, variant: Variant) -> Variant:
        """Publish a built deployment variant for later checks (the benchmark's matrix)."""
        self.variants[variant.name] = variant
        return variant

    # -- shared expensive results -------------------------------------------------------------
    def cached(self, key: str, builder: Callable[[], Any]) -> Any:
        """Build `key` once per run and share it; a builder that raised re-raises the same error."""
        if key not in self._cache:
            try:
                self._cache[key] = ("ok", builder())
            except Exception as exc:  # remember failures too: an export that fails, fails once
                self._cache[key] = ("error", exc)
        state, value = self._cache[key]
        if state == "error":
            raise value
        return value

    def has_cached(self, key: str) -> bool:
        return key in self._cache and self._cache[key][0] == "ok"

    def peek(self, key: str) -> Any | None:
        """A cached artifact if some check already built it, else None (never builds)."""
        entry = self._cache.get(key)
        return entry[1] if entry and entry[0] == "ok" else None

    @property
    def reference(self) -> Any:
        """fp32 outputs of the eval model on the example inputs, computed once."""
        def build() -> Any:
            out = self.forward()
            from .tree import tensor_leaves

            bad = [name for name, t in tensor_leaves(out).items() if t.is_floating_point() and not torch.isfinite(t).all()]
            if bad:
                self.notes.append(f"the reference outputs already contain NaN/Inf in {', '.join(bad)}: comparisons treat matching NaNs as equal")
            return out

        return self.cached("reference", build)

    @property
    def fp64(self) -> Fp64Reference:
        """The model and inputs cast to float64 and its outputs, computed once (`error` set if it cannot run)."""

        def build() -> Fp64Reference:
            try:
                model64 = copy.deepcopy(self.model)
                with torch.no_grad():
                    for name, buffer in model64.named_buffers():
                        initial = self._initial_buffers.get(name)
                        if initial is not None and initial.shape == buffer.shape:
                            buffer.copy_(initial)
                model64 = model64.to(torch.float64)
                inputs64 = inp.cast_floats(self.inputs, torch.float64)
                outputs64 = self.forward(inputs64, model64)
                return Fp64Reference(model64, inputs64, outputs64)
            except Exception as exc:
                return Fp64Reference(None, None, None, f"{type(exc).__name__}: {exc}")

        return self.cached("fp64", build)

    def fp64_outputs(self, inputs: Any) -> Any | None:
        """fp64 outputs for other inputs (None when the model cannot run in fp64)."""
        ref = self.fp64
        if ref.model is None:
            return None
        return self.forward(inp.cast_floats(inputs, torch.float64), ref.model)

    def tolerances(self) -> dict[str, Any]:
        """Per-leaf tolerances for fp32-vs-fp32 comparisons, calibrated from fp32-vs-fp64 error.

        A user-set --atol/--rtol overrides the calibration for every leaf.
        """
        from .compare import Tolerance, calibrated_tolerances, default_tolerance
        from .tree import flatten

        def build() -> dict[str, Any]:
            if self.options.atol is not None or self.options.rtol is not None:
                base = default_tolerance(torch.float32)
                fixed = Tolerance(self.options.rtol if self.options.rtol is not None else base.rtol,
                                  self.options.atol if self.options.atol is not None else base.atol)
                return {name: fixed for name in flatten(self.reference)}
            ref64 = self.fp64
            if ref64.outputs is None:
                return {}
            return calibrated_tolerances(self.reference, ref64.outputs)

        return self.cached("tolerances", build)


def call_detached(model: Callable[..., Any], inputs: Any) -> Any:
    return inp.detach(inp.call_model(model, inputs))


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
