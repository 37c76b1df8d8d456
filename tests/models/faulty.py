"""Models with one deliberate fault each, for the eval-mode and determinism checks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.drop(torch.relu(self.fc(x))))


class SmallNet(nn.Module):
    """Clean: Linear -> Block -> Linear head, 16 features in, 4 logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.block = Block()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


def small_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SmallNet().eval(), torch.randn(4, 8)


def submodule_back_in_training() -> tuple[nn.Module, torch.Tensor]:
    """Fault: `block.drop` was put back into training mode after .eval()."""
    model, x = small_net()
    model.block.drop.train()
    return model, x


class NoPropagateNet(SmallNet):
    """Fault: a train() override that only flips its own flag, so .eval() never reaches children."""

    def train(self, mode: bool = True) -> "NoPropagateNet":
        self.training = mode
        return self


def train_override_not_propagating() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return NoPropagateNet(), torch.randn(4, 8)  # built in training mode; .eval() won't reach children


class DropoutHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.fc(x), p=0.5, training=True)  # fault: should be training=self.training


class FunctionalDropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.head = DropoutHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)))


def functional_dropout() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return FunctionalDropoutNet().eval(), torch.randn(4, 8)


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.01 * torch.randn_like(x)  # fault: noise at inference


class NoisyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.noise = Noisy()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.noise(self.stem(x)))


def randn_noise() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return NoisyNet().eval(), torch.randn(4, 8)


class DictOut(nn.Module):
    """Clean, keyword inputs and nested dict outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 16)
        self.cls = nn.Linear(16, 3)
        self.box = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict:
        h = torch.relu(self.enc(x)) * scale
        return {"logits": self.cls(h), "extra": {"boxes": self.box(h), "n": 3}}


def dict_outputs() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    return DictOut().eval(), {"x": torch.randn(4, 8), "scale": torch.ones(4, 1)}


class RaisingNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: this model cannot run")


def raising_forward() -> tuple[nn.Module, torch.Tensor]:
    return RaisingNet(), torch.randn(2, 8)


class NanNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def nan_outputs() -> tuple[nn.Module, torch.Tensor]:
    return NanNet().eval(), torch.randn(2, 8)


class StringOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple:
        return self.fc(x), "label", None, 3


def non_tensor_outputs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return StringOut().eval(), torch.randn(2, 8)
