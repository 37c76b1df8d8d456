"""Models for the precision family (fp16, bf16, quantization): clean ones, and ones with one
deliberate reduced-precision fault each. Every factory returns (model in eval mode, example inputs)."""
from __future__ import annotations

import torch
from torch import nn


def _seeded() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------
# Clean models


class TinyConvNet(nn.Module):
    """Clean: a mobilenet-ish convnet (conv-bn-relu, depthwise, pointwise, pool, linear head)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.pw(self.dw(self.stem(x)))).flatten(1))


def tiny_convnet() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return TinyConvNet().eval(), torch.randn(4, 3, 32, 32)


def mlp() -> tuple[nn.Module, torch.Tensor]:
    """Clean: Linear-GELU-Linear-LayerNorm-Linear classifier."""
    _seeded()
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 10))
    return model.eval(), torch.randn(16, 32)


class GRUClassifier(nn.Module):
    """Clean: a GRU over a sequence, its last state into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def gru_classifier() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return GRUClassifier().eval(), torch.randn(8, 12, 16)


class PaddedEncoder(nn.Module):
    """Clean: nn.TransformerEncoder with a key padding mask, and a classifier on the first token."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)  # nested-tensor fast path on padded inputs
        self.head = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x, src_key_padding_mask=padding_mask)[:, 0])


def padded_encoder() -> tuple[nn.Module, dict]:
    _seeded()
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 7:] = True
    return PaddedEncoder().eval(), {"x": torch.randn(4, 10, 32), "padding_mask": mask}


# ---------------------------------------------------------------------------------------------
# Reduced-precision faults


class OverflowNet(nn.Module):
    """Fault: `amp` (Linear) produces activations ~1e5, beyond fp16's 65504; the LayerNorm after it
    brings them back to O(1), so fp32 (and bf16) outputs are fine."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.amp = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            self.amp.weight.mul_(3e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.amp(torch.relu(self.stem(x)))))


def overflow_net() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return OverflowNet().eval(), torch.randn(8, 16)


class RMSNorm(nn.Module):
    """A hand-written RMSNorm: x.pow(2) overflows fp16 once |x| > 256, although the output is O(1)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormNet(nn.Module):
    """Fault: activations of a few hundred into a hand-written RMSNorm (the square overflows in fp16)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 64)
        self.norm = RMSNorm(64)
        self.head = nn.Linear(64, 10)
        with torch.no_grad():
            self.stem.weight.mul_(1500.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stem(x)))


def rmsnorm_net() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return RMSNormNet().eval(), torch.randn(8, 16)


class MaskedAttention(nn.Module):
    """Attention that masks with a hard-coded -1e9: fp16 cannot hold it (raises); bf16 can."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 4.0
        scores = scores.masked_fill(mask[:, None, :], -1e9)  # fault: not representable in fp16
        return torch.softmax(scores, -1) @ self.v(x)


class MaskedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = MaskedAttention()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, mask).mean(1))


def masked_fill_net() -> tuple[nn.Module, dict]:
    _seeded()
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 4:] = True
    return MaskedNet().eval(), {"x": torch.randn(2, 6, 16), "mask": mask}


class FixedProjection(nn.Module):
    """Makes its projection matrix inside forward without a dtype: fp32 whatever the input is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = torch.ones(x.shape[-1], 8) / x.shape[-1]
        return x @ proj  # fault: a whole-model cast meets an fp32 tensor here


class HardcodedDtypeNet(nn.Module):
    """Fault only for a whole-model cast (autocast casts the matmul's operands itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.proj = FixedProjection()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(torch.relu(self.stem(x))))


def hardcoded_dtype_net() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return HardcodedDtypeNet().eval(), torch.randn(4, 16)


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class UnderflowNet(nn.Module):
    """Fault: `shrink` scales activations to ~1e-7, below fp16's smallest normal (6.1e-5); `grow`
    scales them back, so fp32 is exact and fp16 keeps two or three significant bits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.shrink = Scale(1e-7)
        self.grow = Scale(1e7)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.grow(self.shrink(self.stem(x))))


def underflow_net() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return UnderflowNet().eval(), torch.randn(8, 16)


class SinusoidalPositions(nn.Module):
    """Sinusoidal position embeddings from positions made in the input's dtype: bf16 holds integers
    exactly only up to 256, so later positions collide and their sines are wrong."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("freqs", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)  # fault: positions in bf16
        angles = pos[:, None] * self.freqs[None, :].to(x.dtype)
        return x + torch.cat([angles.sin(), angles.cos()], dim=-1)


class PositionNet(nn.Module):
    """Fault under a whole-model bf16 cast only (under autocast the positions stay fp32)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = SinusoidalPositions(32)
        self.mix = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.pos(x))))


def position_net() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return PositionNet().eval(), 0.1 * torch.randn(2, 1024, 32)


class OffsetCancel(nn.Module):
    """Adds a large offset and takes it away again: the difference keeps only the bits left over."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 300.0) - 300.0  # fault: catastrophic cancellation


class CancelNet(nn.Module):
    """Fault: fp32 loses ~8 bits here too, so the ratio rule alone would accept fp16; the SQNR floor does not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(16, 16)
        self.offset = OffsetCancel()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.offset(self.stem(x)))


def cancel_net() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return CancelNet().eval(), torch.randn(8, 16)


# ---------------------------------------------------------------------------------------------
# Quantization faults: one activation channel 10^4 times larger than the rest


class OutlierMLP(nn.Module):
    """Fault: channel 7 of fc1's output is 10^4 x the others (fc2's weights compensate, as with
    LLM outlier features), so per-tensor int8 activations of fc2's input leave the other channels
    no resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)
        with torch.no_grad():
            self.fc1.weight[7].mul_(1e4)
            self.fc1.bias[7] = self.fc1.bias[7].abs() * 1e4
            self.fc2.weight[:, 7].mul_(1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def outlier_mlp() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return OutlierMLP().eval(), torch.randn(16, 32)


class OutlierConvNet(nn.Module):
    """Fault: channel 3 of conv1's output is 10^4 x the others; conv2 takes it (its weights on
    that channel compensate). The head reads every position, so lost channels show in the output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8 * 8 * 8, 10)
        with torch.no_grad():
            self.conv1.weight[3].mul_(1e4)
            self.conv1.bias[3] = self.conv1.bias[3].abs() * 1e4
            self.conv2.weight[:, 3].mul_(1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).flatten(1))


def outlier_convnet() -> tuple[nn.Module, torch.Tensor]:
    _seeded()
    return OutlierConvNet().eval(), torch.randn(4, 3, 8, 8)
