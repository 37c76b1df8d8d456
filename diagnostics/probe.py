"""Looking inside a forward pass: per-module records, culprit localisation and operator spies.

* `ModuleRecorder` records each module call's inputs and outputs (forward hooks), in the order
  the calls *finish*, so an inner module comes before the block that contains it.
* `first_divergence` compares two recordings and names the first module whose output differs
  although its inputs did not: the module that introduces a difference, not one that inherits it.
* `OpSpy` is a TorchDispatchMode that catches chosen aten operators and attributes each to the
  innermost running module and to the user's source line (file:line, function, code).
"""
from __future__ import annotations

import linecache
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .tree import flatten

# Trailing separators: `.../site-packages/torch` must not swallow `.../site-packages/torchvision`.
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_OWN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def module_label(name: str, module: torch.nn.Module | None = None) -> str:
    """`features.4 (BatchNorm2d)`, or `<root> (Net)` for the model itself."""
    shown = name or "<root>"
    return f"{shown} ({type(module).__name__})" if module is not None else shown


@dataclass
class ModuleCall:
    name: str  # dotted path; repeated calls get `#2`, `#3`
    module_type: str
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    order: int  # finishing order


def _snapshot(obj: Any, root: str) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in flatten(obj, root=root).items()
        if isinstance(v, torch.Tensor)
    }


class ModuleRecorder:
    """Records every module call's inputs and outputs while active (`with ModuleRecorder(model) as rec:`).

    `include`: a predicate on (name, module) to restrict which modules are recorded.
    `record_inputs`: inputs are cloned in a pre-hook, before an in-place op can change them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        include: Callable[[str, torch.nn.Module], bool] | None = None,
        record_inputs: bool = True,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.include = include
        self.record_inputs = record_inputs
        self.transform = transform
        self.calls: list[ModuleCall] = []
        self._handles: list[Any] = []
        self._pending: dict[int, list[dict[str, torch.Tensor]]] = {}
        self._counts: dict[str, int] = {}

    def __enter__(self) -> "ModuleRecorder":
        for name, module in self.model.named_modules():
            if self.include is not None and not self.include(name, module):
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            snap = _snapshot((args, kwargs) if kwargs else args, "input") if self.record_inputs else {}
            if self.transform:
                snap = {k: self.transform(v) for k, v in snap.items()}
            self._pending.setdefault(id(module), []).append(snap)

        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            stack = self._pending.get(id(module)) or [{}]
            snap_in = stack.pop() if stack else {}
            count = self._counts.get(name, 0) + 1
            self._counts[name] = count
            key = name if count == 1 else f"{name}#{count}"
            outs = _snapshot(output, "output")
            if self.transform:
                outs = {k: self.transform(v) for k, v in outs.items()}
            self.calls.append(ModuleCall(key, type(module).__name__, snap_in, outs, len(self.calls)))

        return hook

    def by_name(self) -> dict[str, ModuleCall]:
        return {call.name: call for call in self.calls}


def _tensors_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float) -> bool:
    if a.keys() != b.keys():
        return False
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            return False
        if ta.is_floating_point() or tb.is_floating_point():
            if not torch.allclose(ta.double(), tb.double(), rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif not torch.equal(ta, tb):
            return False
    return True


@dataclass
class Divergence:
    """The module that introduced a difference between two recordings."""

    name: str
    module_type: str
    max_abs: float
    input_equal: bool = True

    @property
    def label(self) -> str:
        return f"{self.name or '<root>'} ({self.module_type})"


def first_divergence(
    a: ModuleRecorder | list[ModuleCall],
    b: ModuleRecorder | list[ModuleCall],
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    input_map: Callable[[ModuleCall], dict[str, torch.Tensor]] | None = None,
) -> Divergence | None:
    """The first module (finishing order) whose outputs differ while its inputs agree.

    Tolerances 0 mean bitwise. `input_map` lets a caller compare inputs after a transformation
    (e.g. selecting one sample of a batch). Falls back to the first module whose output differs
    at all when no module has equal inputs and different outputs.
    """
    calls_a = a.calls if isinstance(a, ModuleRecorder) else a
    calls_b = {c.name: c for c in (b.calls if isinstance(b, ModuleRecorder) else b)}
    first_any: Divergence | None = None
    for ca in calls_a:
        cb = calls_b.get(ca.name)
        if cb is None:
            continue
        if _tensors_close(ca.outputs, cb.outputs, rtol, atol):
            continue
        diff = max(
            (float((ca.outputs[k].double() - cb.outputs[k].double()).abs().max()) for k in ca.outputs
             if k in cb.outputs and ca.outputs[k].shape == cb.outputs[k].shape and ca.outputs[k].numel()),
            default=float("inf"),
        )
        inputs_a = input_map(ca) if input_map else ca.inputs
        inputs_b = input_map(cb) if input_map else cb.inputs
        same_in = _tensors_close(inputs_a, inputs_b, rtol, atol)
        found = Divergence(ca.name, ca.module_type, diff, same_in)
        if same_in:
            return found
        if first_any is None:
            first_any = found
    return first_any


# ---------------------------------------------------------------------------------------------
# Operator spying


@dataclass
class OpEvent:
    """One caught operator call."""

    op: str  # e.g. "aten.dropout"
    module: str  # dotted path of the innermost running module ("" = root)
    module_type: str
    file: str | None = None
    line: int | None = None
    function: str | None = None
    code: str | None = None
    stack: list[str] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return f"{self.file}:{self.line}" if self.file else None

    @property
    def where(self) -> str:
        """`head.forward (model.py:23)`-style description."""
        mod = self.module or "<root>"
        loc = f" ({os.path.basename(self.file)}:{self.line})" if self.file else ""
        return f"`{mod}` ({self.module_type}){loc}"


_STDLIB_DIR = os.path.dirname(os.__file__) + os.sep
_CHECKS_DIR = os.path.join(os.path.dirname(_OWN_DIR.rstrip(os.sep)), "checks") + os.sep


def is_library_file(filename: str, skip_dirs: tuple[str, ...] = ()) -> bool:
    """True for torch, this tool (diagnostics/ and checks/), the standard library and `skip_dirs`:
    frames there are not where a user's model goes wrong. torchvision and other model libraries
    in site-packages count as user code (each prefix ends with a separator: torchvision is not torch)."""
    if filename.startswith("<"):
        return True
    path = os.path.abspath(filename)
    if path.startswith((_TORCH_DIR, _OWN_DIR, _CHECKS_DIR, *skip_dirs)):
        return True
    return path.startswith(_STDLIB_DIR) and "site-packages" not in path


def user_frame(skip_dirs: Iterable[str] = ()) -> traceback.FrameSummary | None:
    """The innermost stack frame outside torch, the stdlib and this tool: the line that caused an op."""
    skip = tuple(skip_dirs)
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_library_file(filename, skip):
            line = linecache.getline(filename, frame.f_lineno).strip()
            return traceback.FrameSummary(filename, frame.f_lineno, frame.f_code.co_name, line=line)
        frame = frame.f_back
    return None


def op_base_name(func: Any) -> str:
    """`aten.native_dropout.default` -> `native_dropout`."""
    name = getattr(func, "__name__", str(func))  # e.g. "native_dropout.default"
    overload = getattr(func, "_overloadpacket", None)
    if overload is not None:
        return getattr(overload, "__name__", name.split(".")[0])
    return name.split(".")[0]


class OpSpy(TorchDispatchMode):
    """Catch the aten ops that `match(base_name)` selects, with module path and user source line.

    Use it with the model: `with OpSpy(model, match) as spy: model(x)`; read `spy.events`.
    Module attribution uses forward pre/post hooks, so it costs nothing when not active.
    """

    def __init__(self, model: torch.nn.Module | None, match: Callable[[str], bool], *, keep_stack: bool = False) -> None:
        super().__init__()
        self.match = match
        self.model = model
        self.keep_stack = keep_stack
        self.events: list[OpEvent] = []
        self._module_stack: list[tuple[str, str]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "OpSpy":
        if self.model is not None:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._push(name, type(module).__name__)))
                self._handles.append(module.register_forward_hook(self._pop))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def _push(self, name: str, type_name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self._module_stack.append((name, type_name))

        return hook

    def _pop(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._module_stack:
            self._module_stack.pop()

    def record(self, op: str) -> None:
        """Record an event from Python-level wrappers (for calls that never reach dispatch)."""
        mod, mtype = self._module_stack[-1] if self._module_stack else ("", type(self.model).__name__ if self.model is not None else "")
        frame = user_frame()
        stack = []
        if self.keep_stack:
            stack = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_stack()[:-2] if not f.filename.startswith((_TORCH_DIR, _OWN_DIR))]
        self.events.append(OpEvent(
            op=op, module=mod, module_type=mtype,
            file=frame.filename if frame else None, line=frame.lineno if frame else None,
            function=frame.name if frame else None, code=frame.line if frame else None, stack=stack,
        ))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = op_base_name(func)
        if self.match(name):
            self.record(f"aten.{name}")
        return func(*args, **(kwargs or {}))


#: Operators that draw random numbers: in an inference model each one is a determinism fault.
RANDOM_OPS = frozenset({
    "dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "bernoulli", "bernoulli_", "rand", "rand_like", "randn", "randn_like", "randint", "randint_like",
    "randperm", "normal", "normal_", "uniform_", "multinomial", "exponential_", "geometric_",
    "cauchy_", "log_normal_", "rrelu", "rrelu_with_noise", "random_",
})


def is_random_op(name: str) -> bool:
    return name in RANDOM_OPS
