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
