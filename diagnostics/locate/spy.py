"""`OpSpy`: a TorchDispatchMode that catches chosen aten operators and attributes each to the
innermost running module and to the source line that called it (through `code.current_frame`)."""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .code import TOOL, TORCH, current_frame, owner, short_path
from .culprit import Culprit
from .hooks import ModuleStack


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

    def record(self, op: str) -> None:
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
            function=frame.function if frame else None, code=frame.code if frame else None, stack=stack,
        ))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = op_base_name(func)
        hit = self.match(name, args, kwargs or {}) if self._match_args else self.match(name)
        if hit:
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
