"""Layer input statistics over several batches: range, per-channel magnitudes and the module that
produced the input (int8 calibration ranges and outlier channels)."""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from .. import inputs as inp
from ..locate.code import Frame
from ..locate.culprit import module_label
from ..tree import flatten
from .hooks import ModuleHooks, call_site, plain


@dataclass
class InputStats:
    """What a layer's (first floating) input looked like over the recorded batches."""

    name: str
    module_type: str
    min: float = math.inf
    max: float = -math.inf
    channel_absmax: torch.Tensor | None = None  # per channel, over all batches
    producer: str | None = None  # label of the module whose output was this input, when it was one directly
    call_site: Frame | None = None
    calls: int = 0

    def outlier(self) -> tuple[int, float] | None:
        """(channel, ratio of its max |x| to the median channel's), or None with < 2 channels."""
        c = self.channel_absmax
        if c is None or c.numel() < 2:
            return None
        med = float(c.median())
        idx = int(c.argmax())
        top = float(c[idx])
        return idx, (top / med if med > 0 else (math.inf if top > 0 else 1.0))

    def add(self, module: torch.nn.Module, t: torch.Tensor) -> None:
        """Fold one batch's input into the range and the per-channel maxima."""
        self.calls += 1
        if not t.numel():
            return
        finite = t[torch.isfinite(t)]
        if finite.numel():
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))
        dim = channel_dim(module, t)
        per = t.abs().transpose(0, dim).reshape(t.shape[dim], -1).amax(dim=1).float() if t.dim() else t.abs().reshape(1)
        old = self.channel_absmax
        self.channel_absmax = per if old is None or old.shape != per.shape else torch.maximum(old, per)


def channel_dim(module: torch.nn.Module, t: torch.Tensor) -> int:
    """Channels are dim 1 for convolutions and batch norms, the last dim otherwise (Linear, RNN)."""
    conv_like = isinstance(module, (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm))
    return 1 if conv_like and t.dim() >= 2 else t.dim() - 1


class _InputStatsRecorder(ModuleHooks):
    def __init__(self, model: torch.nn.Module, names: Iterable[str]) -> None:
        super().__init__(model)
        self.wanted = set(names)
        self.stats: dict[str, InputStats] = {}
        self._producers: dict[int, tuple[Any, str]] = {}

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if name not in self.wanted:
            return None
        leaves = [v for v in flatten((args, kwargs)).values() if plain(v) and v.is_floating_point()]
        if not leaves:
            return None
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = InputStats(name, type(module).__name__, call_site=call_site())
            hit = self._producers.get(id(leaves[0]))
            if hit is not None and hit[0]() is leaves[0]:
                st.producer = hit[1]
        st.add(module, leaves[0].detach())
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            try:
                self._producers[id(output)] = (weakref.ref(output), module_label(name, module))
            except TypeError:
                pass


def record_input_stats(model: torch.nn.Module, batches: Iterable[Any], names: Iterable[str]) -> dict[str, InputStats]:
    """Input ranges of the named layers over `batches` (each an input in any of the three forms)."""
    with _InputStatsRecorder(model, names) as rec, torch.no_grad():
        for batch in batches:
            inp.call_model(model, batch)
    return rec.stats
