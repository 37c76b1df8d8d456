"""Tiny models for the pytest plugin and the regression checks (golden, weights round trip).

Each factory seeds itself, so every process (pytest-xdist workers included) builds the same
weights. Environment switches stand in for "someone changed the model since it was recorded":
  TORCH_DIAGNOSE_TEST_DRIFT=1        `head.weight` is nudged (as if another checkpoint were loaded)
  TORCH_DIAGNOSE_TEST_CODE_CHANGE=1  `act` computes GELU instead of ReLU (as if its code were edited)
  TORCH_DIAGNOSE_TEST_BUILD_LOG=PATH each target factory appends "<name> <pid>" to PATH (how often targets load)
"""
from __future__ import annotations

import os

import torch
from torch import nn

from torch_diagnose import Target


class Act(nn.Module):
    """ReLU, or GELU when the code-change switch is set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.environ.get("TORCH_DIAGNOSE_TEST_CODE_CHANGE"):
            return torch.nn.functional.gelu(x)
        return torch.relu(x)


class TinyNet(nn.Module):
    """Clean: Linear(8, 16) -> Act -> Linear(16, 4)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.act = Act()
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.stem(x)))


def _note_build(name: str) -> None:
    log = os.environ.get("TORCH_DIAGNOSE_TEST_BUILD_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{name} {os.getpid()}\n")


def _inputs() -> torch.Tensor:
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(1))


def build_tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def clean_model() -> Target:
    """A clean tiny model with its factory (every check here passes)."""
    _note_build("clean_model")
    return Target(model=build_tiny(), example_inputs=_inputs(), name="tiny", factory=build_tiny)


def drifting_model() -> Target:
    """Clean, unless TORCH_DIAGNOSE_TEST_DRIFT is set: then `head.weight` differs from the recording."""
    _note_build("drifting_model")
    def build() -> TinyNet:
        model = build_tiny()
        if os.environ.get("TORCH_DIAGNOSE_TEST_DRIFT"):
            with torch.no_grad():
                model.head.weight[0] += 0.05
        return model

    return Target(model=build(), example_inputs=_inputs(), name="drifting", factory=build)


def dropout_left_on() -> Target:
    """Fault: `drop` (Dropout) is in training mode inside an otherwise eval-mode model."""
    _note_build("dropout_left_on")
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential()
        model.add_module("stem", nn.Linear(8, 16))
        model.add_module("drop", nn.Dropout(0.5))
        model.add_module("head", nn.Linear(16, 4))
        model.eval()
        model.drop.train()
        return model

    return Target(model=build(), example_inputs=_inputs(), name="dropout_left_on", factory=build)


class RandomScale(nn.Module):
    """Fault: a random scale kept as a non-persistent buffer, so state_dict does not carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.rand(16) + 0.5, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ScaledNet(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.scale = RandomScale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale(self.act(self.stem(x))))


def hidden_random_buffer() -> Target:
    """Fault: `scale.scale` is random and outside the state_dict; the factory does not seed it."""
    def build() -> ScaledNet:
        return ScaledNet().eval()

    torch.manual_seed(0)
    return Target(model=build(), example_inputs=_inputs(), name="hidden_random_buffer", factory=build)


def replaced_head() -> Target:
    """Fault: the served model's head was replaced after construction (10 classes); the factory builds 4."""
    model = build_tiny()
    torch.manual_seed(1)
    model.head = nn.Linear(16, 10)
    return Target(model=model.eval(), example_inputs=_inputs(), name="replaced_head", factory=build_tiny)


class CalibratedNet(TinyNet):
    """Fault: registers a buffer during its first forward, so a fresh model lacks that key."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.stem(x))
        if not hasattr(self, "running_max"):
            self.register_buffer("running_max", h.detach().abs().amax(0).clone())
        return self.head(h / self.running_max.clamp_min(1e-3))


def buffer_added_in_forward() -> Target:
    def build() -> CalibratedNet:
        torch.manual_seed(0)
        return CalibratedNet().eval()

    return Target(model=build(), example_inputs=_inputs(), name="buffer_added_in_forward", factory=build)


class DeepNet(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.Sequential(*[nn.Linear(16, 16) for _ in range(depth)])
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.blocks(self.stem(x))))


def missing_block() -> Target:
    """Fault: the served model has 2 blocks; the factory builds 3, so `blocks.2.*` are missing from the saved state."""
    def build(depth: int = 3) -> DeepNet:
        torch.manual_seed(0)
        return DeepNet(depth).eval()

    return Target(model=build(2), example_inputs=_inputs(), name="missing_block", factory=build)
