"""Models for the export family: faulty ones each break some exporter, clean ones must survive all.

Faults (each a classic deployment bug):
* `data_dependent_if`: `if x.sum() > 0:` — a trace freezes the branch, torch.export refuses it.
* `loop_over_seq`: `for i in range(x.size(1))` — a trace unrolls it for the example length.
* `baked_batch`: `x.reshape(4, -1)` — the batch size is a literal.
* `int_size`: `torch.zeros(int(x.shape[0]), ...)` — a trace bakes the size in (TracerWarning).
* `numpy_round_trip`: `np.tanh(x.numpy())` — a trace stores the result as a constant.
* `topk_ties`: top-k over rounded scores — ONNX TopK breaks ties differently from torch.
Clean: `gru_tagger`, `dict_heads` (dict outputs), `transformer_kwargs` (keyword inputs with a
padding mask), `conv_net` (a tiny CNN with dynamic H/W), torchvision resnet18 in the tests.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from torch_diagnose import Target


class DataDependentIf(nn.Module):
    """Fault: the branch depends on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Linear(8, 4)
        self.neg = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.pos(x)
        return self.neg(x)


def data_dependent_if() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    return DataDependentIf().eval(), x.abs()  # the example takes the positive branch


class LoopOverSeq(nn.Module):
    """Fault: a Python loop over the sequence dimension (a hand-written RNN)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(x[:, 0])
        for i in range(x.size(1)):
            h = torch.tanh(self.cell(x[:, i]) + h)
        return h


def loop_over_seq() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return LoopOverSeq().eval(), torch.randn(2, 10, 8)


def loop_over_seq_declared() -> Target:
    model, x = loop_over_seq()
    return Target(model, x, dynamic_dims={"x": {1: "seq"}}, name="loop-over-seq")


class BakedBatch(nn.Module):
    """Fault: the batch size is written into a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.reshape(4, -1))


def baked_batch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return BakedBatch().eval(), torch.randn(4, 3, 4, 4)


class IntSize(nn.Module):
    """Fault: a size converted with int() (eager is fine at every batch; a trace bakes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        offsets = torch.arange(n, dtype=x.dtype).unsqueeze(1)
        return self.fc(x) + offsets


def int_size() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return IntSize().eval(), torch.randn(4, 8)


class NumpyRoundTrip(nn.Module):
    """Fault: the activation goes through NumPy inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = torch.from_numpy(np.tanh(h.detach().cpu().numpy())).to(x.device)
        return self.fc2(h)


def numpy_round_trip() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return NumpyRoundTrip().eval(), torch.randn(4, 8)


class TopKTies(nn.Module):
    """Fault for ONNX only: top-k of rounded scores; ONNX TopK resolves ties differently."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).round()
        idx = scores.topk(3, dim=-1).indices
        return torch.gather(scores, 1, idx) + idx.to(scores.dtype)


def topk_ties() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TopKTies().eval(), torch.randn(4, 8)


# ---------------------------------------------------------------------------------------------
# Clean models


class GRUTagger(nn.Module):
    """Clean: token ids -> per-token tag logits."""

    def __init__(self, vocab: int = 50, emb: int = 16, hidden: int = 24, tags: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.emb(tokens))
        return self.out(h)


def gru_tagger() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return GRUTagger().eval(), torch.randint(0, 50, (2, 12))


class DictHeads(nn.Module):
    """Clean: dict outputs (classification and box heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 16)
        self.cls = nn.Linear(16, 3)
        self.box = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.enc(x))
        return {"logits": self.cls(h), "boxes": torch.sigmoid(self.box(h))}


def dict_heads() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return DictHeads().eval(), torch.randn(4, 8)


class TransformerKw(nn.Module):
    """Clean: a transformer encoder called with keyword inputs and a padding mask."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.proj = nn.Linear(8, d)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, src: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.proj(src), src_key_padding_mask=padding_mask))


def transformer_kwargs() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 7:] = True
    return TransformerKw().eval(), {"src": torch.randn(2, 10, 8), "padding_mask": mask}


class ConvNet(nn.Module):
    """Clean: a tiny CNN with global pooling (any H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def conv_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model, torch.randn(2, 3, 16, 16)


class PyramidPooling(nn.Module):
    """Pyramid-pooling head (PSPNet): adaptive average pooling to 1, 2, 3 and 6 bins, upsampled and
    concatenated. The dynamo ONNX exporter freezes adaptive pooling into fixed windows: exact at the
    example's grid, wrong at every other grid. A stride-8 patch backbone keeps the grid at ±1."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU())
        self.pools = nn.ModuleList([nn.AdaptiveAvgPool2d(b) for b in (1, 2, 3, 6)])
        self.head = nn.Conv2d(40, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        size = f.shape[-2:]
        feats = [f] + [nn.functional.interpolate(p(f), size=size, mode="bilinear", align_corners=False) for p in self.pools]
        return self.head(torch.cat(feats, 1))


def pyramid_pooling() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return PyramidPooling().eval(), torch.randn(2, 3, 52, 52)  # grid 6 at 51, 52 and 53


def pyramid_pooling_declared() -> Target:
    model, x = pyramid_pooling()
    return Target(model, x, dynamic_dims={"x": {2: "height", 3: "width"}}, name="pyramid-pooling")
