"""How one run of the eval model is made: grad mode, intra-op threads, input memory layout, global
RNG seed; and what to say when a run in another setting raises."""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import inputs as inp
from ..context import Context, num_threads
from ..locate import Culprit, raise_site
from ..locate.hooks import ModuleStack
from ..text import one_line
from ..tree import flatten, map_leaves
from ..locate.source import submodule

LAYOUTS = ("auto", "channels_last", "strided")
_MODES = {"inference_mode": "under inference_mode", "no_grad": "under no_grad", "grad": "with grad enabled"}


def _threads_text(n: int) -> str:
    return f"at {n} thread{'s' if n > 1 else ''}"


@dataclass(frozen=True)
class Config:
    """How one run is made: grad mode, intra-op threads, input memory layout, global RNG seed."""

    grad_mode: str = "inference_mode"  # inference_mode | no_grad | grad
    threads: int | None = None
    layout: str | None = None  # auto | channels_last | strided
    seed: int | None = None

    def describe(self) -> str:
        parts = _MODES[self.grad_mode]
        if self.threads:
            parts += " " + _threads_text(self.threads)
        if self.layout:
            parts += f" with {self.layout} inputs"
        return parts


def difference(base: Config, other: Config) -> str:
    """`with grad enabled than under inference_mode`: only the settings that differ."""
    this, that = [], []
    if base.grad_mode != other.grad_mode:
        this.append(_MODES[other.grad_mode])
        that.append(_MODES[base.grad_mode])
    if base.threads != other.threads:
        current = torch.get_num_threads()
        this.append(_threads_text(other.threads or current))
        that.append(_threads_text(base.threads or current))
    if base.layout != other.layout:
        this.append(f"with {'channels_last/strided' if other.layout == 'auto' else other.layout} inputs")
        that.append("with contiguous ones" if not base.layout else f"with {base.layout} inputs")
    return f"{' and '.join(this) or 'in this run'} than {' and '.join(that) or 'in the reference run'}"


def other_thread_count(wanted: int) -> int | None:
    """The thread count to compare with torch's current one (None: skip the comparison)."""
    current = torch.get_num_threads()
    if wanted <= 0:
        return None
    if wanted != current:
        return wanted
    return 1 if current > 1 else max(2, os.cpu_count() or 2)


class _NoGrad:
    """The model called under no_grad outside inference_mode (ctx.forward runs inside inference_mode)."""

    def __init__(self, model: Callable[..., Any]) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return self.model(*args, **kwargs)


def run(ctx: Context, cfg: Config, inputs: Any | None = None) -> Any:
    """One forward pass of the eval model in configuration `cfg` (counted by ctx.forward)."""
    inputs = ctx.inputs if inputs is None else inputs
    if cfg.layout:
        inputs = relayout(inputs, cfg.layout)[0]
    with num_threads(cfg.threads) if cfg.threads else contextlib.nullcontext():
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        try:
            if cfg.grad_mode == "grad":
                return ctx.forward(inputs, grad=True)
            if cfg.grad_mode == "no_grad":
                return ctx.forward(inputs, _NoGrad(ctx.model))
            return ctx.forward(inputs)
        finally:
            if cfg.seed is not None:
                torch.manual_seed(ctx.options.seed)


def relayout(inputs: Any, mode: str) -> tuple[Any, list[str]]:
    """The same values in another memory layout: channels_last for 4-D/5-D floats, a strided view otherwise.

    Returns the new inputs and what changed (e.g. ["channels_last `x`"]); nothing changes for
    scalars and one-element tensors.
    """
    names = iter(flatten(inputs, root="x"))
    changed: list[str] = []

    def change(t: Any) -> Any:
        name = next(names)
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.numel() <= 1 or getattr(t, "is_nested", False):
            return t
        if mode in ("auto", "channels_last") and t.dim() in (4, 5) and t.is_floating_point():
            new = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
            if not new.is_contiguous():
                changed.append(f"channels_last `{name}`")
                return new
        if mode in ("auto", "strided"):
            new = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype, device=t.device)[..., ::2]
            new.copy_(t)
            changed.append(f"strided `{name}`")
            return new
        return t

    return map_leaves(inputs, change), changed


def named_inputs(changed: list[str], inputs: Any, model: torch.nn.Module) -> list[str]:
    """`strided `[1]`` -> `strided `mask`` for tuple inputs, using forward's parameter names."""
    if not isinstance(inputs, tuple):
        return changed
    names = inp.input_names(inputs, model)

    def rename(match: re.Match) -> str:
        i = int(match.group(1))
        return f"`{names[i]}" if i < len(names) else match.group(0)

    return [re.sub(r"`\[(\d+)\]", rename, text) for text in changed]


@dataclass
class RunError:
    """A run that raised: the message, the innermost module that raised (with the line that raised)."""

    message: str
    module_name: str
    module: torch.nn.Module | None
    culprit: Culprit

    @property
    def label(self) -> str:
        return self.culprit.label

    @property
    def code(self) -> str | None:
        return self.culprit.code


def explain_error(ctx: Context, attempt: Callable[[], Any], exc: BaseException) -> RunError:
    """Run the failing call again under a module stack to name the module that raised.

    Post hooks do not run when forward raises, so the top of the stack is the innermost module that raised."""
    name = ""
    with ModuleStack(ctx.model) as stack:
        try:
            attempt()
        except Exception as again:
            exc = again
            name = stack.current[0]
    module = submodule(ctx.model, name)
    return RunError(one_line(exc, 400), name, module, Culprit.module(name, module, raise_site(exc)))
