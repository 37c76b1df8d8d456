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
from .sharedwork import Progress, SharedWork, building_label
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
        self.eval_error: BaseException | None = None
        self._initial_buffers: dict[str, torch.Tensor] = {}
        #: Deployment variants built by checks, by name; the benchmark reuses them (never rebuilds).
        self.variants: dict[str, Variant] = {}
        #: `ctx.progress("sweep case 3/12: ...")`: what a long check is doing now (a no-op unless the runner listens).
        self.progress = Progress()
        #: Seconds spent building shared things, charged to the check that asked first (see sharedwork.py).
        self.shared_work = SharedWork()
        # What loading the target did on the user's behalf (example inputs derived from samples...).
        self.notes.extend(n for n in getattr(self.target, "setup_notes", ()) if n not in self.notes)

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
            #: what model.eval() raised, when it did (the run then switched each module itself)
            self.eval_error = switch_to_eval(model, self.notes)
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
        """A deep copy, for checks that would change the model (casting, quantizing, mutation).

        `copy.deepcopy` refuses a model holding a tensor with autograd history (a forward hook
        that stored an activation): such tensors are copied detached, else the model is rebuilt
        from `target.factory` with this one's state_dict; a note says which happened.
        """
        src = model if model is not None else self.model
        try:
            new, note = deepcopy_model(src)
        except Exception as exc:
            return self._rebuilt_copy(src, exc)
        if note:
            self._note_once(note)
        return new

    def _rebuilt_copy(self, src: torch.nn.Module, first: Exception) -> torch.nn.Module:
        """`target.factory()` loaded with `src`'s state: the last way to copy a model deepcopy refuses."""
        from .text import one_line

        why = f"copy.deepcopy(model) raised {one_line(first, 160)}"
        if self.target.factory is None:
            raise RuntimeError(f"{why}; give the Target a `factory` so the run can build its own copies") from first
        from .regression.state import fresh_model

        new = fresh_model(self.target.factory, self.options.seed)
        new.load_state_dict(src.state_dict())
        for (_, m_new), (_, m_src) in zip(new.named_modules(), src.named_modules()):
            m_new.training = m_src.training
        param = next(iter(src.parameters()), None)
        if param is not None:
            new = new.to(param.device)
        self._note_once(f"{why}; the run's copies of the model are rebuilt from Target.factory with its state_dict")
        return new

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

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
        """Build `key` once per run and share it; a builder that raised re-raises the same error. Building a
        shared thing (sharedwork.SHARED_WORK) is timed and charged to the running check as shared work."""
        if key not in self._cache:
            try:
                with self.shared_work.building(key), self.progress.during(_building(key)):
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
                model64 = self.model_copy()
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


def _building(key: str) -> str | None:
    label = building_label(key)
    return f"building the {label}" if label else None


def grad_tensors(model: torch.nn.Module, depth: int = 3) -> list[tuple[str, torch.Tensor]]:
    """Tensors with autograd history that modules keep as attributes or buffers (what deepcopy refuses),
    named like `body.0.saved` (found in lists, dicts and plain objects up to `depth` levels)."""
    found: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()

    def walk(value: Any, name: str, level: int) -> None:
        if id(value) in seen or level > depth:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if not value.is_leaf:
                found.append((name, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}[{key!r}]", level + 1)
        elif isinstance(value, (list, tuple, set)):
            for i, item in enumerate(value):
                walk(item, f"{name}[{i}]", level + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, type)) and not callable(value):
            for key, item in vars(value).items():
                walk(item, f"{name}.{key}", level + 1)

    for mod_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr in ("_parameters", "_modules"):
                continue
            prefix = f"{mod_name}." if mod_name else ""
            if attr == "_buffers":
                for key, buf in value.items():
                    walk(buf, prefix + key, 0)
            else:
                walk(value, prefix + attr, 0)
    return found


def deepcopy_model(model: torch.nn.Module) -> tuple[torch.nn.Module, str | None]:
    """`copy.deepcopy(model)`, with tensors that hold autograd history (which deepcopy refuses) copied
    detached; the second item says when that happened. Raises when even that fails."""
    try:
        return copy.deepcopy(model), None
    except Exception:
        held = grad_tensors(model)
        if not held:
            raise
    new = copy.deepcopy(model, {id(t): t.detach().clone() for _, t in held})
    return new, (f"the model holds tensors with autograd history ({', '.join(n for n, _ in held[:3])}"
                 f"{', ...' if len(held) > 3 else ''}), which copy.deepcopy refuses; "
                 "the run's copies of the model hold them detached")


def switch_to_eval(model: torch.nn.Module, notes: list[str]) -> BaseException | None:
    """`model.eval()`; when it raises (a `train` that shadows nn.Module.train(mode) with a training
    loop), every module is switched with nn.Module's own flag instead, a note names the override,
    and the exception is returned."""
    try:
        model.eval()
        return None
    except Exception as exc:
        from .text import one_line

        error, raised = one_line(exc, 160), exc
    for module in model.modules():
        module.training = False  # nn.Module.train(m, False) would call the shadowed train() of children
    found = shadowed_train(model)
    label, user_code = found or ("", False)
    notes.append(f"model.eval() raised {error}: " + (f"{label} shadows nn.Module.train(mode); " if found else "")
                 + "the run switched every module to eval mode with nn.Module's own flag instead"
                 + (" (renaming the override, e.g. to `fit`, lets model.eval() work)" if user_code else ""))
    return raised


def shadowed_train(model: torch.nn.Module) -> tuple[str, bool] | None:
    """(`Class.train` (file:line), written in user code?) of the first module whose class overrides
    nn.Module.train."""
    from .locate.source import function_frame

    for module in model.modules():
        fn = getattr(type(module), "train", None)
        if fn is not None and fn is not torch.nn.Module.train:
            frame = function_frame(fn)
            where = f" ({frame.location})" if frame else ""
            name = getattr(fn, "__qualname__", type(module).__name__ + ".train")
            return f"`{name}`{where}", bool(frame and frame.owner == "user")
    return None


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
