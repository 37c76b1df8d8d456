"""Tiny factories for target-spec tests (`tests.models.targets:NAME`), one per return form.

The classes live at module level so a pickled full model (torch.save(model)) can be loaded again.
"""
from __future__ import annotations

import torch
from torch import nn

from torch_diagnose.target import Target


class TinyNet(nn.Module):
    """8 features in, 4 logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class MaskedNet(nn.Module):
    """Takes a positional input and a keyword mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x * mask + 1


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def tiny_inputs() -> torch.Tensor:
    return torch.randn(3, 8, generator=torch.Generator().manual_seed(0))


def module_only() -> nn.Module:
    """An nn.Module and nothing else: inputs must come from --input-shape."""
    return tiny_net()


def module_and_inputs() -> tuple[nn.Module, torch.Tensor]:
    return tiny_net(), tiny_inputs()


def make_target() -> Target:
    """Found without naming it: the first of DEFAULT_FACTORIES."""
    return Target(model=tiny_net(), example_inputs=tiny_inputs(), name="tiny")


def raises() -> nn.Module:
    raise RuntimeError("weights file missing: /nowhere/tiny.pt")


def not_a_model() -> dict[str, int]:
    return {"layers": 2}


NOT_CALLABLE = 42
