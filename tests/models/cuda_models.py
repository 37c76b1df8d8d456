"""Models for the CUDA family: hidden syncs, memory that grows across calls, activations too big for a budget.

Each factory returns `(model, example_inputs)` in eval mode, seeded. Faulty models carry one fault in
a named submodule so the tests can assert the culprit.
"""
from __future__ import annotations

from collections import deque

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# Sync points


class Gate(nn.Module):
    """Fault: reads a scalar on the host with `.item()`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().mean().item()  # SYNC: item
        return x / (scale + 1.0)


class Selector(nn.Module):
    """Fault: `nonzero` (data-dependent output size)."""

    def forward(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.nonzero(scores > 0)  # SYNC: nonzero
        return scores.clamp(min=0), keep


class LengthPool(nn.Module):
    """Fault: `.tolist()` to drive a Python loop."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        lengths = (h > 0).sum(dim=1).tolist()  # SYNC: tolist
        return torch.stack([h[i, : max(n, 1)].mean() for i, n in enumerate(lengths)])


class Explicit(nn.Module):
    """Fault: an explicit `torch.cuda.synchronize()` left in from a timing session."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda.synchronize()  # SYNC: synchronize
        return x


class _Wrap(nn.Module):
    """stem (Linear) -> the module under test -> head (Linear)."""

    def __init__(self, middle_name: str, middle: nn.Module, head: bool = True) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.add_module(middle_name, middle)
        self.middle_name = middle_name
        self.head = nn.Linear(16, 4) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = getattr(self, self.middle_name)(torch.relu(self.stem(x)))
        return self.head(h) if self.head is not None else h


def item_in_forward() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Wrap("gate", Gate()).eval(), torch.randn(4, 8)


class SelectNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.select = Selector()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.select(self.stem(x))


def nonzero_in_forward() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SelectNet().eval(), torch.randn(4, 8)


def tolist_in_forward() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Wrap("pool", LengthPool(), head=False).eval(), torch.randn(4, 8)


def synchronize_in_forward() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Wrap("sync", Explicit()).eval(), torch.randn(4, 8)


class Postprocess(nn.Module):
    """Detection-style post-processing: boolean-mask selection and nonzero, as real detectors need."""

    def forward(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = logits.softmax(-1).amax(-1)
        keep = scores > 0.3
        return {"scores": scores[keep], "index": torch.nonzero(keep).flatten()}  # SYNC: mask index, nonzero


class Detector(nn.Module):
    """Backbone + head + postprocess; optionally a stray `.item()` in the head."""

    def __init__(self, stray_item: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.head = nn.Linear(32, 5)
        self.postprocess = Postprocess()
        self.stray_item = stray_item

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.backbone(x))
        if self.stray_item and float(logits.max()) > 1e6:  # SYNC: stray float()
            logits = logits / 2
        return self.postprocess(logits)


def detector(stray_item: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Detector(stray_item).eval(), torch.randn(6, 8)


class CleanNet(nn.Module):
    """Clean: branch-free, fixed shapes, no host reads, nothing kept between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.stem(x)))
        h = torch.where(h > 1.0, h, torch.zeros_like(h))  # three-argument where: no sync
        return self.head(h)


def clean_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return CleanNet().eval(), torch.randn(4, 8)


# ---------------------------------------------------------------------------------------------
# Memory growth


class ActivationLog(nn.Module):
    """Fault: keeps every activation it sees, forever."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.saved.append(x)  # LEAK: the list grows by one activation per call
        return x


class LoggingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 64)
        self.trace = ActivationLog()
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trace(torch.relu(self.stem(x))))


def activation_log() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return LoggingNet().eval(), torch.randn(4, 8)


class RunningTotal(nn.Module):
    """Fault under autograd: `self.total = self.total + out.sum()` chains every call's graph."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 128)
        self.fc2 = nn.Linear(128, 4)
        self.total = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(torch.relu(self.fc1(x)))
        self.total = self.total + out.sum()  # LEAK with grad enabled: keeps each call's graph alive
        return out


def running_total() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return RunningTotal().eval(), torch.randn(4, 8)


_FEATURE_CACHE: list[torch.Tensor] = []


class GlobalCacheNet(nn.Module):
    """Fault: appends features to a module-level list."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        _FEATURE_CACHE.append(h)  # LEAK: a global list
        return h


def global_cache() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    _FEATURE_CACHE.clear()
    return GlobalCacheNet().eval(), torch.randn(4, 8)


class RecentOutputs(nn.Module):
    """Not a leak: keeps the last two outputs (bounded)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.recent: deque[torch.Tensor] = deque(maxlen=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        self.recent.append(out)
        return out


def bounded_cache() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return RecentOutputs().eval(), torch.randn(4, 8)


# ---------------------------------------------------------------------------------------------
# Peak memory against a budget


class WideMLP(nn.Module):
    """64 -> 8192 -> 10: ~2.3 MiB of weights, ~64 KiB of activations per sample (the 8192-wide layer
    and its ReLU are alive together). Batch 1 fits in 8 MiB; batch 256 (~16 MiB) does not."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Linear(64, 8192)
        self.act = nn.ReLU()
        self.proj = nn.Linear(8192, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.expand(x)))


def wide_mlp(batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return WideMLP().eval(), torch.randn(batch, 64)


class NonzeroMLP(WideMLP):
    """WideMLP whose forward needs real data (boolean masking): fake tensors cannot run it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.expand(x))
        h = h * (h[h > 0].numel() > 0)
        return self.proj(h)


def nonzero_mlp(batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return NonzeroMLP().eval(), torch.randn(batch, 64)


class DeviceDependent(nn.Module):
    """Fault for device_parity: a branch that changes the math on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.is_cuda:
            h = h + 1e-2  # a "fix" that only runs on the GPU
        return self.out(h)


def device_dependent() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return DeviceDependent().eval(), torch.randn(4, 8)
