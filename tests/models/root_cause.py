"""Models with one foundation fault each (random, stateful, left training) and models whose outputs
are degenerate (a zero-initialised head, detections that all fall under the score threshold): each
must show one root cause, with every check that relies on it listed as its consequence."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RandomHead(nn.Module):
    """Fault: dropout forced on in forward (`training=True`), so every call draws a new mask."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(torch.relu(self.stem(x)), p=0.5, training=True))


def random_head() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return RandomHead().eval(), torch.randn(4, 8)


class Counter(nn.Module):
    """Fault: a buffer counts the calls and is added to the output, so the output drifts call by call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x) + self.calls


def counter() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Counter().eval(), torch.randn(4, 8)


class StuckTraining(nn.Module):
    """Fault: a `train()` override that does not propagate, so `.eval()` leaves `drop` training."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 4)

    def train(self, mode: bool = True) -> "StuckTraining":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.fc(x))))


def stuck_training() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return StuckTraining(), torch.randn(4, 8)  # built training; its eval() never reaches `drop`


class Clean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)))


def clean() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Clean().eval(), torch.randn(4, 8)


def zero_head() -> tuple[nn.Module, torch.Tensor]:
    """A zero-initialised classifier head (as torchvision's ViT): every logit is exactly 0."""
    model, x = clean()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model, x


class EmptyDetector(nn.Module):
    """A detector whose scores all fall under its threshold (random weights): 0 detections per image."""

    def __init__(self, threshold: float = 0.99) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        self.threshold = threshold

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        feats = self.backbone(images).flatten(2)  # N x 4 x HW
        scores = torch.sigmoid(feats.mean(1)) * 0.5  # below 0.5: never above the threshold
        out = []
        for s in scores:
            keep = s > self.threshold
            boxes = torch.stack([s, s, s + 1, s + 1], dim=-1)
            out.append({"boxes": boxes[keep], "scores": s[keep], "labels": torch.zeros_like(s[keep], dtype=torch.int64)})
        return out


def empty_detector() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return EmptyDetector().eval(), torch.rand(2, 3, 8, 8)
