"""Models with randomness the spy must name at its real source, and modules the model uses but
does not register (plain lists/dicts, created inside forward). Each factory returns a Target with
one deliberate fault (or none, for the clean ones) and seeds its own weights and inputs."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_diagnose import Target

# ---------------------------------------------------------------------------------------------
# Randomness at its real source


class JitterNet(nn.Module):
    """Fault: `random.random()` scales the output; the eval-mode Dropout next to it is harmless."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.fc(x)))
        h = h * (1.0 + 0.01 * random.random())  # fault: Python RNG at inference
        return self.head(h)


def python_random_next_to_dropout() -> Target:
    torch.manual_seed(0)
    return Target(JitterNet().eval(), torch.randn(3, 8))


class Attention(nn.Module):
    """Fault: passes its training dropout to SDPA unconditionally (a common attention-block bug)."""

    def __init__(self, dim: int = 16, heads: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.dropout = heads, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout)  # fault: should be 0 in eval
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x + self.attn(x)).mean(1))


def sdpa_dropout() -> Target:
    torch.manual_seed(0)
    return Target(TinyEncoder().eval(), torch.randn(2, 5, 16))


class NumpyNoise(nn.Module):
    """Fault: NumPy noise added in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.from_numpy(np.random.randn(*x.shape).astype("float32"))  # fault: NumPy RNG at inference
        return self.fc(x + 0.01 * noise)


def numpy_noise() -> Target:
    torch.manual_seed(0)
    return Target(NumpyNoise().eval(), torch.randn(3, 8))


class GeneratorNoise(nn.Module):
    """Fault: a NumPy Generator kept on the model draws in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.rng = np.random.default_rng(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + float(self.rng.normal())  # fault: a NumPy Generator at inference


def numpy_generator() -> Target:
    torch.manual_seed(0)
    return Target(GeneratorNoise().eval(), torch.randn(3, 8))


# ---------------------------------------------------------------------------------------------
# Modules the model uses but does not register


class ListDropoutNet(nn.Module):
    """Fault: dropouts held in a plain list: `.eval()` never reaches them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drops = [nn.Dropout(0.3), nn.Dropout(0.3)]  # fault: plain list
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        for drop in self.drops:
            h = drop(h)
        return self.head(h)


def dropout_in_list() -> Target:
    torch.manual_seed(0)
    return Target(ListDropoutNet().eval(), torch.randn(3, 8))


class DictHeadsNet(nn.Module):
    """Fault: a Dropout in a plain dict of heads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.heads = {"cls": nn.Sequential(nn.Dropout(0.5), nn.Linear(8, 3))}  # fault: plain dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads["cls"](self.body(x))


def dropout_in_dict() -> Target:
    torch.manual_seed(0)
    return Target(DictHeadsNet().eval(), torch.randn(3, 8))


class InlineDropoutNet(nn.Module):
    """Fault: a Dropout module created inside forward starts in training mode on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Dropout(0.2)(self.fc(x))  # fault: a new module, in training mode, each call


def dropout_created_in_forward() -> Target:
    torch.manual_seed(0)
    return Target(InlineDropoutNet().eval(), torch.randn(3, 8))


class ListLayersNet(nn.Module):
    """Fault: layers in a Python list: not in the state_dict, so a checkpoint loses them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.layers = [nn.Linear(8, 8), nn.Linear(8, 8)]  # fault: plain list
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.head(h)


def layers_in_list() -> Target:
    torch.manual_seed(0)
    return Target(ListLayersNet().eval(), torch.randn(3, 8), factory=ListLayersNet)


class ModuleListNet(nn.Module):
    """Clean: the same layers and dropouts, registered through nn.ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.drops = nn.ModuleList([nn.Dropout(0.3), nn.Dropout(0.3)])
        self.head = nn.Linear(8, 3)
        self.config = {"depth": 2, "names": ["a", "b"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, drop in zip(self.layers, self.drops):
            x = drop(torch.relu(layer(x)))
        return self.head(x)


def module_list() -> Target:
    torch.manual_seed(0)
    return Target(ModuleListNet().eval(), torch.randn(3, 8), factory=ModuleListNet)
