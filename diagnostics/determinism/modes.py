"""Training mode: which modules behave differently in it, and which `train()` override keeps a
module in it after `model.eval()`."""
from __future__ import annotations

import inspect

import torch

from ..locate import Frame
from ..locate.source import function_frame

#: Module types whose forward behaves differently in training mode.
_MODE_SENSITIVE = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.RReLU,
    torch.nn.MultiheadAttention,
    torch.nn.TransformerEncoderLayer,
    torch.nn.TransformerDecoderLayer,
    torch.nn.RNNBase,
)


def mode_sensitive(module: torch.nn.Module) -> bool:
    """True when the module's output depends on its `training` flag."""
    if isinstance(module, _MODE_SENSITIVE):
        if isinstance(module, torch.nn.RNNBase):
            return module.dropout > 0
        return True
    forward = type(module).forward
    if forward is torch.nn.Module.forward:
        return False
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    return "self.training" in source


def owner_with_bad_train(model: torch.nn.Module, name: str) -> tuple[str, torch.nn.Module] | None:
    """The nearest ancestor of `name` (or itself) whose class overrides `train()`."""
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        ancestor_name = ".".join(parts[:depth])
        ancestor = model.get_submodule(ancestor_name) if ancestor_name else model
        if type(ancestor).train is not torch.nn.Module.train:
            return ancestor_name, ancestor
    return None


def train_frame(module: torch.nn.Module) -> Frame | None:
    """Where the module's class writes its `train()` override."""
    return function_frame(type(module).train)


def bn_training_hint(model: torch.nn.Module, name: str, module: torch.nn.Module, effect: str) -> tuple[str, Frame | None]:
    """Hint (and the bad `train()` override, when there is one) for a BatchNorm left in training mode."""
    owner = owner_with_bad_train(model, name)
    frame = None
    fix = "call `.eval()` after loading"
    if owner is not None:
        fix += (f" or fix the `train()` override of `{owner[0] or '<root>'}` ({type(owner[1]).__name__}), "
                "which does not pass the mode on to its children")
        frame = train_frame(owner[1])
    else:
        fix += " (something calls `.train()` on it after `model.eval()`)"
    return f"module `{name or '<root>'}` ({type(module).__name__}) is in training mode: {effect}; {fix}", frame


def train_signature(module: torch.nn.Module) -> str | None:
    """`train(self, loader, epochs=1)` when the module's class overrides `train()` with a signature
    that `nn.Module.eval()` / `.train(mode)` cannot call as `train(mode: bool)` (a training loop
    shadowing it); None for the base method and for compatible overrides (`train(self, mode=True)`,
    `train(self, *args, **kwargs)`)."""
    train = type(module).train
    if train is torch.nn.Module.train:
        return None
    try:
        params = list(inspect.signature(train).parameters.values())[1:]  # past self
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    first = params[0] if params else None
    compatible_first = first is not None and (
        first.kind is kinds.VAR_POSITIONAL
        or (first.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
            and (first.name == "mode" or isinstance(first.default, bool))))
    others_optional = all(p.default is not kinds.empty or p.kind in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
                          for p in params[1:])
    if compatible_first and others_optional:
        return None
    return "train(" + ", ".join(_plain(p) for p in inspect.signature(train).parameters.values()) + ")"


def _plain(param: inspect.Parameter) -> str:
    """A parameter as written, without its annotation: `epochs=1`, `*args`."""
    prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(param.kind, "")
    default = "" if param.default is inspect.Parameter.empty else f"={param.default!r}"
    return f"{prefix}{param.name}{default}"


def shadowed_trains(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """(path, module, signature) of every module whose `train()` has another signature than
    `nn.Module.train(mode=True)`: `.eval()` calls it with False, which it does not expect."""
    found = []
    for name, module in model.named_modules():
        signature = train_signature(module)
        if signature is not None:
            found.append((name, module, signature))
    return found
