"""Forward hooks for the per-layer tables, and where a module call comes from.

`ModuleHooks` puts a pre and a post hook on every module and gives each call a key (`name`,
`name#2`, ... for repeated calls); unlike `locate.hooks.ModuleRecorder` its pre hook may replace the
module's inputs (the local-error pass feeds every module the fp32 run's inputs).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import torch

from ..locate.code import TOOL, Frame, pick, stack_frames
from ..locate.culprit import Culprit
from ..locate.hooks import hook_modules, remove_hooks
from ..tree import flatten


def model_frames(frames: Iterable[Frame]) -> Iterator[Frame]:
    """The frames of the model's own call chain, innermost first: past the tool's hook frames and up
    to the tool frame that called the model (the harness that called the tool never names a site)."""
    it = iter(frames)
    for fr in it:
        if fr.owner != TOOL:
            yield fr
            break
    for fr in it:
        if fr.owner == TOOL:
            return
        yield fr


def call_site() -> Frame | None:
    """The line that called the module now starting: the innermost user line of the model's call
    chain, else a library's (torchvision) line; None when only torch calls it."""
    return pick(model_frames(stack_frames(1)), allow_torch=False)


def plain(v: Any) -> bool:
    """A dense, strided tensor with data (nested, sparse and meta tensors are left alone)."""
    return isinstance(v, torch.Tensor) and not v.is_nested and v.layout == torch.strided and v.device.type != "meta"


def float_leaves(obj: Any, root: str = "output") -> dict[str, torch.Tensor]:
    return {k: v for k, v in flatten(obj, root=root).items() if plain(v) and v.is_floating_point()}


def tensor_range(t: torch.Tensor) -> tuple[float, float, bool]:
    """(largest finite |x|, smallest non-zero |x|, all finite) of a floating tensor."""
    if t.numel() == 0:
        return 0.0, 0.0, True
    a = t.detach().abs()
    if a.is_complex():
        a = a.real
    top = float(a.max())
    finite = math.isfinite(top)
    if not finite:
        a = a[torch.isfinite(a)]
        if a.numel() == 0:
            return math.inf, 0.0, False
        top = float(a.max())
    low = float(torch.where(a > 0, a, torch.full_like(a, math.inf)).min())
    return top, (low if math.isfinite(low) else 0.0), finite


def depth(name: str) -> int:
    """Nesting depth of a module path: 0 for the root, 1 for `stem`, 2 for `stem.0`."""
    return name.count(".") + (1 if name else 0)


def is_timeout(exc: BaseException) -> bool:
    """The runner's per-check timeout must pass through every `except Exception`."""
    return type(exc).__name__ == "CheckTimeout"


class ModuleCallView:
    """Mixin for a recorded module call with `name`, `module_type` and `call_site` (a Frame or None):
    it names itself as a module culprit."""

    name: str
    module_type: str
    call_site: Frame | None

    @property
    def culprit(self) -> Culprit:
        return Culprit.module(self.name, self.module_type, self.call_site)

    @property
    def label(self) -> str:
        return self.culprit.label


class ModuleHooks:
    """Pre/post forward hooks on every module, with call keys `name`, `name#2`, ... for repeated calls.
    Subclasses override `pre` (return new `(args, kwargs)` to replace the inputs) and `post`."""

    def __init__(self, model: torch.nn.Module, include: Callable[[str, torch.nn.Module], bool] | None = None) -> None:
        self.model = model
        self.include = include
        self._handles: list[Any] = []
        self._counts: dict[str, int] = {}
        self._open: dict[int, list[str]] = {}

    def key(self, name: str) -> str:
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        return name if count == 1 else f"{name}#{count}"

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        pass

    def __enter__(self) -> "ModuleHooks":
        self._handles = hook_modules(self.model, self._pre_hook, self._post_hook, include=self.include)
        return self

    def __exit__(self, *exc: Any) -> None:
        remove_hooks(self._handles)

    def _pre_hook(self, name: str, module: torch.nn.Module) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            key = self.key(name)
            self._open.setdefault(id(module), []).append(key)
            return self.pre(key, name, module, args, kwargs)

        return hook

    def _post_hook(self, name: str, module: torch.nn.Module) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            keys = self._open.get(id(module)) or [name]
            key = keys.pop() if keys else name
            self.post(key, name, module, args, kwargs, output)

        return hook
