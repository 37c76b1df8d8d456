"""`OpSpy`: a TorchDispatchMode that catches chosen aten operators and attributes each to the
innermost running module and to the source line that called it (through `code.current_frame`)."""
from __future__ import annotations

import functools
import os
import random
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .code import STDLIB, TOOL, TORCH, current_frame, owner, short_path
from .culprit import Culprit
from .hooks import GlobalModuleStack, ModuleStack


# ---------------------------------------------------------------------------------------------
# Operator spying


@dataclass
class OpEvent:
    """One caught operator call: the op, the innermost running module, the line that called it."""

    op: str  # e.g. "aten.dropout"
    module: str  # dotted path of the innermost running module ("" = root)
    module_type: str
    file: str | None = None
    line: int | None = None
    function: str | None = None
    code: str | None = None
    stack: list[str] = field(default_factory=list)
    note: str = ""  # what made the call count, e.g. "dropout_p=0.1"

    @property
    def location(self) -> str | None:
        return f"{short_path(self.file)}:{self.line}" if self.file else None

    @property
    def where(self) -> str:
        """`` `head` (Linear) (model.py:23)``-style description."""
        loc = f" ({self.location})" if self.file else ""
        return f"`{self.module or '<root>'}` ({self.module_type}){loc}"

    @property
    def culprit(self) -> Culprit:
        return Culprit("module", self.module, self.module_type, self.file, self.line, self.code)


def op_base_name(func: Any) -> str:
    """`aten.native_dropout.default` -> `native_dropout`."""
    name = getattr(func, "__name__", str(func))  # e.g. "native_dropout.default"
    overload = getattr(func, "_overloadpacket", None)
    if overload is not None:
        return getattr(overload, "__name__", name.split(".")[0])
    return name.split(".")[0]


class OpSpy(TorchDispatchMode):
    """Catch the aten ops that `match(base_name)` selects (`match(base_name, args, kwargs)` with
    `with_args=True`), with module path and source line. Use it with the model: `with OpSpy(model, match) as spy: model(x)`;
    read `spy.events`. Module attribution uses forward pre/post hooks, removed on exit.
    """

    def __init__(self, model: torch.nn.Module | None, match: Callable[..., bool], *, keep_stack: bool = False,
                 with_args: bool = False) -> None:
        super().__init__()
        self.match = match
        self.model = model
        self.keep_stack = keep_stack
        self.events: list[OpEvent] = []
        self._modules = ModuleStack(model)
        self._match_args = with_args

    def __enter__(self) -> "OpSpy":
        self._modules.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        self._modules.__exit__(*exc)
        return super().__exit__(*exc)

    def record(self, op: str, note: str = "") -> None:
        """Record an event from Python-level wrappers too (for calls that never reach dispatch)."""
        mod, mtype = self._modules.current
        frame = current_frame()
        stack = []
        if self.keep_stack:
            stack = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_stack()[:-2]
                     if owner(f.filename) not in (TORCH, TOOL)]
        self.events.append(OpEvent(
            op=op, module=mod, module_type=mtype,
            file=frame.file if frame else None, line=frame.line if frame else None,
            function=frame.function if frame else None, code=frame.code if frame else None, stack=stack, note=note,
        ))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = op_base_name(func)
        hit = self.match(name, args, kwargs or {}) if self._match_args else self.match(name)
        if hit:
            self.record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


#: Operators that draw random numbers whatever their arguments: in an inference model each one is a determinism fault.
RANDOM_OPS = frozenset({
    "bernoulli", "bernoulli_", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like",
    "randperm", "normal", "normal_", "uniform_", "multinomial", "exponential_", "geometric_",
    "cauchy_", "log_normal_", "random_", "_fused_dropout", "_standard_gamma", "poisson", "binomial",
})
#: Operators random only with some arguments: dropouts with train=True and 0 < p < 1.
DROPOUT_OPS = frozenset({"dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"})
#: rrelu draws its slopes only with training=True.
RRELU_OPS = frozenset({"rrelu", "rrelu_with_noise"})


def is_random_op(name: str) -> bool:
    """Random whatever the arguments, or random with some (dropout, rrelu, attention with dropout_p):
    for a name-only spy. `is_random_call` decides with the actual arguments."""
    return name in RANDOM_OPS or name in DROPOUT_OPS or name in RRELU_OPS or _is_attention(name)


def _is_attention(name: str) -> bool:
    return "scaled_dot_product" in name or name in ("_efficient_attention_forward", "_flash_attention_forward")


@functools.lru_cache(maxsize=None)
def _positions(name: str) -> dict[str, tuple[int, Any]]:
    """Argument name -> (position, default) in the op's default overload schema."""
    packet = getattr(torch.ops.aten, name, None)
    try:
        overload = getattr(packet, "default") if packet is not None else None
        arguments = overload._schema.arguments if overload is not None else []
    except (AttributeError, RuntimeError):
        return {}
    return {a.name: (i, a.default_value if a.has_default_value() else None) for i, a in enumerate(arguments)}


def call_argument(name: str, args: tuple, kwargs: dict, arg: str, default: Any = None) -> Any:
    """The value an aten call passes for schema argument `arg` (by keyword or position), else its default."""
    if arg in kwargs:
        return kwargs[arg]
    index, schema_default = _positions(name).get(arg, (None, default))
    if index is not None and index < len(args):
        return args[index]
    return schema_default if schema_default is not None else default


def is_random_call(name: str, args: tuple = (), kwargs: dict | None = None) -> bool:
    """True when this call draws random numbers with its actual arguments: dropouts only with
    train=True and 0 < p < 1 (an eval-mode Dropout under inference_mode still calls `aten.dropout`
    with train=False), attention only with dropout_p > 0, rrelu only with training=True; bernoulli,
    rand*, normal... always. Use with `OpSpy(model, is_random_call, with_args=True)`."""
    kwargs = kwargs or {}
    if name in RANDOM_OPS:
        return True
    if name in DROPOUT_OPS:
        p = call_argument(name, args, kwargs, "p", 0.0)
        train = call_argument(name, args, kwargs, "train", None)
        return (train is None or bool(train)) and 0.0 < float(p) < 1.0
    if name in RRELU_OPS:
        return bool(call_argument(name, args, kwargs, "training", False))
    if _is_attention(name):
        return float(call_argument(name, args, kwargs, "dropout_p", 0.0) or 0.0) > 0.0
    return False


def attention_dropout(name: str, args: tuple = (), kwargs: dict | None = None) -> float | None:
    """dropout_p of an attention call, None for other ops (for hints)."""
    if not _is_attention(name):
        return None
    return float(call_argument(name, args, kwargs or {}, "dropout_p", 0.0) or 0.0)


# ---------------------------------------------------------------------------------------------
# Host RNGs: Python's `random` and NumPy draw without torch's dispatcher seeing anything.

#: Calls on an RNG object that set or read its state rather than draw from it.
_NOT_DRAWING = frozenset({"seed", "getstate", "setstate", "get_state", "set_state", "__reduce__", "__getstate__",
                          "__setstate__", "spawn", "bit_generator", "__init__", "__new__", "__deepcopy__", "__copy__"})
_RANDOM_PY = os.path.abspath(random.__file__)


def host_rng_name(fn: Any, frame: Any) -> str:
    """`random.gauss` for a C call on a `random.Random`: Python's `random.gauss` is written in Python
    and calls the C `random()`, so the outermost frame of random.py says which function the model called."""
    name = getattr(fn, "__name__", "?")
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == _RANDOM_PY:
        name, frame = frame.f_code.co_name, frame.f_back
    return f"random.{name}"


class _RngProxy:
    """Stands in for a NumPy Generator/RandomState while the spy runs: records each draw, then delegates.
    (NumPy's methods are Cython functions, which `sys.setprofile` does not see.)"""

    def __init__(self, rng: Any, record: Callable[[str, Any], None]) -> None:
        object.__setattr__(self, "_rng", rng)
        object.__setattr__(self, "_record", record)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._rng, name)
        if name.startswith("_") or name in _NOT_DRAWING or not callable(value):
            return value
        label = f"numpy.random.{type(self._rng).__name__}.{name}"

        def draw(*args: Any, **kwargs: Any) -> Any:
            self._record(label, sys._getframe(1))
            return value(*args, **kwargs)

        return draw


class _NumpyRngPatch:
    """While active, NumPy draws are recorded: the module-level legacy functions (`np.random.randn`,
    bound methods of the global RandomState), Generators made by `np.random.default_rng(...)`, and
    Generator/RandomState objects kept as attributes of the model's modules. All are restored on exit."""

    def __init__(self, model: torch.nn.Module | None, record: Callable[[str, Any], None]) -> None:
        self.model, self.record = model, record
        self._saved: list[tuple[Any, str, Any]] = []

    def _swap(self, holder: Any, name: str, value: Any) -> None:
        self._saved.append((holder, name, holder.__dict__[name] if isinstance(holder, torch.nn.Module) else getattr(holder, name)))
        if isinstance(holder, torch.nn.Module):
            holder.__dict__[name] = value
        else:
            setattr(holder, name, value)

    def __enter__(self) -> "_NumpyRngPatch":
        try:
            import numpy.random as npr
        except ImportError:
            return self
        for name in dir(npr):
            fn = getattr(npr, name, None)
            if callable(fn) and getattr(fn, "__self__", None) is npr.mtrand._rand and name not in _NOT_DRAWING:
                self._swap(npr, name, self._recording(fn, f"numpy.random.{name}"))
        default_rng = npr.default_rng
        self._swap(npr, "default_rng", lambda *a, **k: _RngProxy(default_rng(*a, **k), self.record))
        for module in self.model.modules() if self.model is not None else ():
            for attr, value in list(vars(module).items()):
                if isinstance(value, (npr.Generator, npr.RandomState)):
                    self._swap(module, attr, _RngProxy(value, self.record))
        return self

    def __exit__(self, *exc: Any) -> None:
        for holder, name, value in reversed(self._saved):
            if isinstance(holder, torch.nn.Module):
                holder.__dict__[name] = value
            else:
                setattr(holder, name, value)
        self._saved.clear()

    def _recording(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def draw(*args: Any, **kwargs: Any) -> Any:
            self.record(label, sys._getframe(1))
            return fn(*args, **kwargs)

        return draw


class RandomSpy(OpSpy):
    """Every draw of random numbers during a forward, with the module and line that drew it:
    aten ops random with their actual arguments (`is_random_call`: dropout only with train=True,
    attention only with dropout_p > 0), and Python `random` / NumPy RNG calls, caught with
    `sys.setprofile` as C calls on a `random.Random`, `RandomState`, `Generator` or `BitGenerator`
    (module-level functions, `from random import random`, Random objects kept on the model); NumPy's
    Cython methods are invisible to profiling, so `_NumpyRngPatch` swaps in recording stand-ins.

    `modules[i]` is the innermost running `nn.Module` object of `events[i]`, registered or not.
    """

    def __init__(self, model: torch.nn.Module | None) -> None:
        super().__init__(model, is_random_call, with_args=True)
        self.modules: list[torch.nn.Module | None] = []
        self._running = GlobalModuleStack()
        self._numpy = _NumpyRngPatch(model, self._host_draw)
        self._previous_profile: Any = None

    def __enter__(self) -> "RandomSpy":
        self._running.__enter__()
        self._numpy.__enter__()
        self._previous_profile = sys.getprofile()
        sys.setprofile(self._profile)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        sys.setprofile(self._previous_profile)
        self._numpy.__exit__(*exc)
        self._running.__exit__(*exc)
        return super().__exit__(*exc)

    def record(self, op: str, note: str = "") -> None:
        super().record(op, note)
        self.modules.append(self._running.current)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = op_base_name(func)
        if is_random_call(name, args, kwargs or {}):
            p = attention_dropout(name, args, kwargs)
            self.record(f"aten.{name}", f"dropout_p={p:g}" if p else "")
        return func(*args, **(kwargs or {}))

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if self._previous_profile is not None:
            self._previous_profile(frame, event, arg)
        if event != "c_call" or getattr(arg, "__name__", "") in _NOT_DRAWING:
            return
        if isinstance(getattr(arg, "__self__", None), random.Random):
            self._host_draw(host_rng_name(arg, frame), frame)

    def _host_draw(self, label: str, frame: Any) -> None:
        """A Python or NumPy draw made from `frame`: recorded unless torch, the tool, the standard library
        or an import made it."""
        if not _internal_caller(frame):
            self.record(label)


def _internal_caller(frame: Any) -> bool:
    """True when the RNG call is not the model's: made by torch, this tool or the standard library
    (tempfile names, uuid), past random.py's own frames, or by a module being imported (sympy's
    import draws a random index, torch imports lazily inside the first dispatch)."""
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == _RANDOM_PY:
        frame = frame.f_back
    if frame is None or owner(frame.f_code.co_filename) in (TORCH, TOOL, STDLIB):
        return True
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False
