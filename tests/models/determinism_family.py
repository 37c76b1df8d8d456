"""Models for the determinism family (determinism, batch_invariance, state_mutation).

Each faulty factory has exactly one deliberate fault, written the way it shows up in real code;
each clean factory is a realistic serving model that must pass. Factories return
`(model, example_inputs)` and seed their own weights and inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# Clean models


class TextClassifier(nn.Module):
    """Clean: embedding -> nn.TransformerEncoder (padding mask) -> CLS-token logits.

    In eval mode under inference_mode/no_grad the encoder takes its fast path (nested tensors,
    padded positions dropped); with grad enabled it takes the slow path. CLS pooling keeps the
    logits independent of how many padded positions the fast path returns.
    """

    def __init__(self, vocab: int = 50, dim: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens), src_key_padding_mask=padding_mask)
        return self.head(h[:, 0])


def text_classifier(batch: int = 3, seq: int = 10) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = TextClassifier().eval()
    tokens = torch.randint(1, 50, (batch, seq))
    lengths = torch.tensor([seq, seq - 3, seq - 6][:batch] + [seq] * max(0, batch - 3))
    padding_mask = torch.arange(seq)[None, :] >= lengths[:, None]  # True = padded
    tokens = tokens.masked_fill(padding_mask, 0)
    return model, {"tokens": tokens, "padding_mask": padding_mask}


class GRUTagger(nn.Module):
    """Clean: embedding -> bidirectional GRU -> per-token tag logits (batch first)."""

    def __init__(self, vocab: int = 40, dim: int = 16, tags: int = 5, batch_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, num_layers=2, batch_first=batch_first, bidirectional=True, dropout=0.2)
        self.tagger = nn.Linear(2 * dim, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(tokens))
        return self.tagger(out)


def gru_tagger(batch: int = 3, seq: int = 7) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return GRUTagger().eval(), torch.randint(0, 40, (batch, seq))


def gru_tagger_time_major(batch: int = 3, seq: int = 7) -> tuple[nn.Module, torch.Tensor]:
    """Clean, but its inputs are (seq, batch): the batch dimension is 1, not 0."""
    torch.manual_seed(0)
    return GRUTagger(batch_first=False).eval(), torch.randint(0, 40, (seq, batch))


class ConvNet(nn.Module):
    """Clean: a small conv net with BatchNorm in eval mode, image in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def conv_net(batch: int = 2) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ConvNet().eval(), torch.randn(batch, 3, 16, 16)


class MultiInOut(nn.Module):
    """Clean: keyword inputs (image + metadata), nested dict outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.meta = nn.Linear(4, 8)
        self.cls = nn.Linear(8, 3)
        self.emb = nn.Linear(8, 6)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> dict:
        h = torch.relu(self.conv(image)).mean((2, 3)) + self.meta(meta)
        return {"logits": self.cls(h), "aux": {"embedding": self.emb(h), "version": 2}}


def multi_in_out(batch: int = 3) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    return MultiInOut().eval(), {"image": torch.randn(batch, 3, 8, 8), "meta": torch.randn(batch, 4)}


# ---------------------------------------------------------------------------------------------
# batch_invariance faults


class StickyTrainBlock(nn.Module):
    """A block whose train() override only flips its own flag, so .eval() never reaches its BatchNorm."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm1d(channels)

    def train(self, mode: bool = True) -> "StickyTrainBlock":
        self.training = mode  # fault: children keep their mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class SignalNet(nn.Module):
    """Fault: `block.norm` (BatchNorm1d) stays in training mode, so it uses the batch's statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 8, 3, padding=1)
        self.block = StickyTrainBlock()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean(-1))


def bn_training_in_block(batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = SignalNet()  # built in training mode; .eval() does not reach block.norm
    model.eval()
    return model, torch.randn(batch, 2, 12)


class MLPStickyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)

    def train(self, mode: bool = True) -> "MLPStickyBlock":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


class MLPWithStickyBN(nn.Module):
    """Fault: BatchNorm1d on (N, F) features kept in training mode: one sample alone cannot even run."""

    def __init__(self) -> None:
        super().__init__()
        self.block = MLPStickyBlock()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(x)))


def bn_training_mlp(batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = MLPWithStickyBN()
    model.eval()
    return model, torch.randn(batch, 8)


class BatchCentre(nn.Module):
    """A home-made normalisation: centres features... over the batch (dim 0), not per sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(0, keepdim=True)  # fault: should reduce over the feature dims


class CentredNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.norm = BatchCentre()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.stem(x))))


def batch_centred(batch: int = 4) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return CentredNet().eval(), torch.randn(batch, 8)


def batch_centred_single_sample() -> tuple[nn.Module, torch.Tensor]:
    """The same fault with an example batch of 1: the check must build a bigger batch to see it."""
    return batch_centred(batch=1)


class DictBatchMix(nn.Module):
    """Fault behind keyword inputs and nested dict outputs: `backbone.1` is a BatchNorm2d built with
    track_running_stats=False, so even in eval mode it normalises with the batch's statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU())
        self.meta = nn.Linear(4, 8)
        self.cls = nn.Linear(8, 3)
        self.emb = nn.Linear(8, 6)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> dict:
        h = self.backbone(image).mean((2, 3)) + self.meta(meta)
        return {"logits": self.cls(h), "aux": {"embedding": self.emb(h), "version": 2}}


def dict_batch_stats(batch: int = 3) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = DictBatchMix().eval()
    return model, {"image": torch.randn(batch, 3, 8, 8), "meta": torch.randn(batch, 4)}


class CrossSampleAttention(nn.Module):
    """Fault: a batch-first tensor fed to a sequence-first MultiheadAttention attends across samples."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.attn = nn.MultiheadAttention(16, 2)  # batch_first=False: expects (seq, batch, dim)
        self.head = nn.Linear(16, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)  # (batch, seq, dim) — fault: not transposed
        out, _ = self.attn(h, h, h, need_weights=False)
        return self.head(out[:, 0])


def cross_sample_attention(batch: int = 3) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return CrossSampleAttention().eval(), torch.randint(0, 30, (batch, 6))


# ---------------------------------------------------------------------------------------------
# state_mutation faults


class ListCacheNet(nn.Module):
    """Fault: keeps every hidden state it computes in a list attribute (grows per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.cache: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        self.cache.append(h.detach())  # fault: debugging leftover, leaks memory in serving
        return self.head(h)


def list_cache() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ListCacheNet().eval(), torch.randn(4, 8)


class CountingNet(nn.Module):
    """Fault: a counter buffer incremented by every forward (ends up in the state_dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1  # fault: state changed by inference
        return self.fc(x)


def counter_buffer() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return CountingNet().eval(), torch.randn(4, 8)


class StepCache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.cache: dict[int, torch.Tensor] = {}
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        self.cache[self.step] = h.detach()  # fault: a cache keyed by call, never evicted
        self.step += 1
        return h


class StepCacheNet(nn.Module):
    """Fault: `block.cache` is a dict keyed by call number; `block.step` counts calls."""

    def __init__(self) -> None:
        super().__init__()
        self.block = StepCache()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(x)))


def dict_cache_by_call() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return StepCacheNet().eval(), torch.randn(4, 8)


class KwargHistoryNet(nn.Module):
    """Fault behind keyword inputs and nested outputs: `memory.history` grows with every call."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.memory = nn.Module()
        self.memory.history = []
        self.cls = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict:
        h = torch.relu(self.enc(x)) * scale
        self.memory.history.append({"mean": h.mean().detach()})  # fault
        return {"logits": self.cls(h), "extra": {"hidden": h, "n": 3}}


def kwarg_history() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    return KwargHistoryNet().eval(), {"x": torch.randn(4, 8), "scale": torch.ones(4, 1)}


class LazyTable(nn.Module):
    """Not a fault: a lookup table built on the first call and reused (like rotary-embedding caches)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self._table: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._table is None:
            self._table = torch.linspace(0, 1, x.shape[-1])
        return self.fc(x) + self._table


def lazy_table() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return LazyTable().eval(), torch.randn(4, 8)


def bn_training_stats() -> tuple[nn.Module, torch.Tensor]:
    """Fault: BatchNorm left training updates its running statistics on every forward."""
    return bn_training_in_block()


# ---------------------------------------------------------------------------------------------
# determinism faults: grad mode, threads, layouts


class FoldedLinear(nn.Module):
    """Fault: under no_grad/inference_mode it uses a 'folded' weight computed once at construction,
    which went stale when the real weights were loaded afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.register_buffer("folded_weight", self.fc.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.fc(x)
        return F.linear(x, self.folded_weight, self.fc.bias)  # fault: stale weights for inference


class GradBranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.head = FoldedLinear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)))


def grad_mode_branch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = GradBranchNet()
    with torch.no_grad():  # "load" new weights after construction
        model.head.fc.weight.mul_(1.5).add_(0.05)
    return model.eval(), torch.randn(4, 8)


class GradBranchDict(nn.Module):
    """The grad-mode fault behind keyword inputs and nested dict outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 16)
        self.heads = nn.ModuleDict({"cls": FoldedLinear()})

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict:
        h = torch.relu(self.enc(x)) * scale
        return {"out": {"logits": self.heads["cls"](h)}, "hidden": h}


def grad_mode_branch_dict() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = GradBranchDict()
    with torch.no_grad():
        model.heads["cls"].fc.weight.mul_(1.5).add_(0.05)
    return model.eval(), {"x": torch.randn(4, 8), "scale": torch.full((4, 1), 2.0)}


class ParallelMix(nn.Module):
    """Fault: a 'fast multi-threaded path' that computes in bfloat16 when more than one thread is available."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.get_num_threads() > 1:
            return self.fc(x.to(torch.bfloat16).to(x.dtype))  # fault: precision depends on the thread count
        return self.fc(x)


class ThreadBranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.mix = ParallelMix()
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.stem(x))))


def thread_branch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ThreadBranchNet().eval(), torch.randn(4, 8) * 3


class LayoutAwareConv(nn.Module):
    """Fault: a 'fast path' for non-contiguous (channels_last) inputs that swaps H and W."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous():
            return self.conv(x)
        return self.conv(x.transpose(2, 3)).transpose(2, 3)  # fault: transposes the image


class LayoutBranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = LayoutAwareConv()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)).amax((2, 3)))


def layout_branch() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return LayoutBranchNet().eval(), torch.randn(2, 3, 8, 8)


class ViewFlatten(nn.Module):
    """Fault: `.view()` needs a contiguous input; a channels_last image from the serving stack breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.view(x.shape[0], -1)  # fault: use reshape (or flatten)
        return self.fc(flat) + self.conv(x).mean((1, 2, 3))[:, None]


def view_on_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ViewFlatten().eval(), torch.randn(2, 3, 8, 8)


class DriftingNet(nn.Module):
    """Fault: an exponential moving average of the inputs, updated in forward and added to the output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.ema.mul_(0.9).add_(0.1 * x.mean(0))  # fault: state updated at inference
        return self.fc(x - self.ema)


def drifting_ema() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return DriftingNet().eval(), torch.randn(4, 8)


class DriftingShiftNet(nn.Module):
    """Fault: a plain tensor attribute (not a buffer) that forward keeps shifting."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.shift = torch.zeros(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shift = 0.9 * self.shift + 0.1 * x.mean(0)  # fault: state updated at inference, outside the buffers
        return self.fc(x - self.shift)


def drifting_attribute() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return DriftingShiftNet().eval(), torch.randn(4, 8)
