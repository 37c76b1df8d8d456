"""Serving and reference tensors made comparable, and the per-channel fits that compare them.

Both sides become float64 CHW tensors without a leading batch dimension; `fit_affine` fits
serving = a * reference + b per channel, and `best_permutation` finds the channel order (BGR)
that fits best.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch


def layout_of(t: torch.Tensor) -> str:
    """"CHW", "HWC" or "?" for a single image tensor (channels 1, 3 or 4)."""
    if t.dim() != 3:
        return "?"
    first, last = t.shape[0] in (1, 3, 4), t.shape[-1] in (1, 3, 4)
    if first and not last:
        return "CHW"
    if last and not first:
        return "HWC"
    return "CHW" if first else "?"


def to_chw(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "HWC":
        return t.permute(2, 0, 1)
    return t


@dataclass
class Prepared:
    """Per-sample serving/reference tensors made comparable: float64, CHW, no leading batch dim."""

    serving: list[torch.Tensor]
    reference: list[torch.Tensor]
    serving_layout: str
    reference_layout: str
    serving_batch_dim: bool
    reference_batch_dim: bool
    serving_dtype: str
    reference_dtype: str


def prepare(serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> Prepared:
    def squeeze(ts: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        lead = all(t.dim() == 4 and t.shape[0] == 1 for t in ts)
        return ([t[0] for t in ts] if lead else list(ts)), lead

    s, s_lead = squeeze(serving)
    r, r_lead = squeeze(reference)
    s_layout, r_layout = layout_of(s[0]), layout_of(r[0])
    return Prepared(
        serving=[to_chw(t, s_layout).detach().cpu().double() for t in s],
        reference=[to_chw(t, r_layout).detach().cpu().double() for t in r],
        serving_layout=s_layout, reference_layout=r_layout, serving_batch_dim=s_lead, reference_batch_dim=r_lead,
        serving_dtype=str(serving[0].dtype).replace("torch.", ""), reference_dtype=str(reference[0].dtype).replace("torch.", ""),
    )


@dataclass
class Affine:
    """Per-channel least squares y = a * x + b, with R^2 and the residual RMS over y's std."""

    a: torch.Tensor
    b: torch.Tensor
    r2: torch.Tensor
    resid: torch.Tensor

    @property
    def mean_r2(self) -> float:
        return float(self.r2.mean())


def pixels(ts: Sequence[torch.Tensor], perm: Sequence[int] | None = None) -> torch.Tensor:
    """(C, P): every sample's pixels per channel, concatenated (channels reordered by `perm`)."""
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in ts], dim=1)
    return flat[list(perm)] if perm is not None else flat


def fit_affine(y: torch.Tensor, x: torch.Tensor) -> Affine:
    xm, ym = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    xc, yc = x - xm, y - ym
    vx = xc.pow(2).mean(1)
    cov = (xc * yc).mean(1)
    a = torch.where(vx > 0, cov / vx.clamp_min(1e-300), torch.zeros_like(vx))
    b = ym[:, 0] - a * xm[:, 0]
    res = y - (a[:, None] * x + b[:, None])
    vy = yc.pow(2).mean(1)
    rms = res.pow(2).mean(1).sqrt()
    r2 = torch.where(vy > 0, 1 - res.pow(2).mean(1) / vy.clamp_min(1e-300), torch.ones_like(vy))
    resid = torch.where(vy > 0, rms / vy.sqrt().clamp_min(1e-300), torch.where(rms > 0, torch.full_like(rms, math.inf), torch.zeros_like(rms)))
    return Affine(a, b, r2, resid)


def best_permutation(s: torch.Tensor, r: torch.Tensor) -> tuple[tuple[int, ...], dict[tuple[int, ...], float]]:
    """The channel order of `s` that fits `r` best (mean R^2 of per-channel affine fits)."""
    c = s.shape[0]
    if c != r.shape[0] or c > 4:
        return tuple(range(c)), {}
    perms = list(itertools.permutations(range(c))) if c <= 3 else [tuple(range(c))]
    scores = {p: fit_affine(s[list(p)], r).mean_r2 for p in perms}
    ident = tuple(range(c))
    best = max(scores, key=lambda p: scores[p])
    if best != ident and (scores[best] < scores[ident] + 0.05 or scores[best] < 0.5):
        best = ident  # not clearly better: keep the identity
    return best, scores


def stats_of(per: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean, std, min and max of (C, P) pixels."""
    return {"mean": [float(v) for v in per.mean(1)], "std": [float(v) for v in per.std(1)],
            "min": [float(v) for v in per.min(1).values], "max": [float(v) for v in per.max(1).values]}


def channel_stats(ts: Sequence[torch.Tensor]) -> dict[str, list[float]]:
    return stats_of(pixels(ts))


def same_channels(ts: Sequence[torch.Tensor]) -> bool:
    """Every sample is a CHW tensor with the same number of channels."""
    return len({t.shape[0] for t in ts}) == 1 and all(t.dim() == 3 for t in ts)


def shape_text(t: torch.Tensor) -> str:
    """`64x64x3`."""
    return "x".join(map(str, tuple(t.shape)))
