"""What example inputs alone say about their preprocessing: layout, value range, per-channel
statistics, and whether they look like images at all (neighbouring pixels correlate in photos)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .fit import stats_of
from .scale import PRESETS, fmt_values

#: Per-channel limits of ImageNet-normalised images: ((0 - m) / s, (1 - m) / s).
IMAGENET_BOX = [((0 - m) / s, (1 - m) / s) for m, s in zip(*PRESETS["ImageNet"])]


@dataclass
class Audit:
    """What example inputs look like: layout, range, per-channel statistics, and warnings."""

    name: str
    layout: str
    dtype: str
    shape: tuple[int, ...]
    stats: dict[str, list[float]]
    smoothness: float
    kind: str  # "noise", "uint8", "0-255", "0-1", "normalised", "other"
    raw_means: list[float] | None = None
    outside_box: float = 0.0
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (summary, hint)

    @property
    def span(self) -> tuple[float, float]:
        return min(self.stats["min"]), max(self.stats["max"])

    def metrics(self, prefix: str = "") -> dict[str, Any]:
        out = {f"{prefix}layout": self.layout, f"{prefix}dtype": self.dtype, f"{prefix}kind": self.kind,
               f"{prefix}min": self.span[0], f"{prefix}max": self.span[1], f"{prefix}neighbour_correlation": self.smoothness}
        for c, (m, s) in enumerate(zip(self.stats["mean"], self.stats["std"])):
            out[f"{prefix}ch{c}_mean"], out[f"{prefix}ch{c}_std"] = m, s
        return out

    def row(self) -> dict[str, Any]:
        return {"input": self.name, "layout": self.layout, "dtype": self.dtype, "shape": list(self.shape), "kind": self.kind,
                "stats": self.stats, "raw_channel_means": self.raw_means, "outside_imagenet_range": self.outside_box}


def neighbour_correlation(x: torch.Tensor) -> float:
    """Correlation of horizontally adjacent pixels (NCHW): ~0.9+ for photos, ~0 for noise."""
    a, b = x[..., :, :-1].reshape(-1).double(), x[..., :, 1:].reshape(-1).double()
    if a.numel() < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else 1.0


def _image_view(t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(layout, NCHW view) of a batch of 1- or 3-channel images at least 8 pixels wide; None otherwise."""
    if t.dim() != 4:
        return None
    if t.shape[1] in (1, 3) and t.shape[-1] not in (1, 3):
        layout, x = "NCHW", t
    elif t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        layout, x = "NHWC", t.permute(0, 3, 1, 2)
    elif t.shape[1] in (1, 3):
        layout, x = "NCHW", t
    else:
        return None
    return (layout, x) if min(x.shape[-2:]) >= 8 else None


def _kind(t: torch.Tensor, stats: dict[str, list[float]], lo: float, hi: float) -> str:
    if not t.is_floating_point():
        return "uint8"
    if hi > 5:
        return "0-255"
    if lo >= -1e-6 and hi <= 1 + 1e-6:
        return "0-1"
    looks_normalised = all(abs(m) < 1.2 for m in stats["mean"]) and all(0.3 < s < 2.0 for s in stats["std"])
    return "normalised" if looks_normalised else "other"


def audit_tensor(name: str, t: torch.Tensor, imagenet_style: bool) -> Audit | None:
    """Audit one input leaf when it looks like a batch of images (NCHW or NHWC, 1 or 3 channels)."""
    view = _image_view(t)
    if view is None:
        return None
    layout, x = view
    xd = x.detach().cpu().double()
    per = xd.transpose(0, 1).reshape(xd.shape[1], -1)
    stats = stats_of(per)
    audit = Audit(name, layout, str(t.dtype).replace("torch.", ""), tuple(t.shape), stats, neighbour_correlation(xd), "other")
    lo, hi = audit.span
    if audit.smoothness < 0.3:
        audit.kind = "noise"
        return audit
    audit.kind = _kind(t, stats, lo, hi)
    if audit.kind in ("uint8", "0-255"):
        audit.warnings.append((f"`{name}` looks un-normalised: values span {lo:.4g}..{hi:.4g} ({audit.dtype})",
                               "scale to 0..1 (ToDtype(torch.float32, scale=True)) and normalise with the training mean/std, "
                               "unless the model normalises inside its forward"))
    elif audit.kind == "0-1" and imagenet_style:
        audit.warnings.append((f"`{name}` looks scaled to 0..1 but not normalised (per-channel mean {fmt_values(stats['mean'])})",
                               "add Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]) (or the training stats) "
                               "after ToTensor, unless the model normalises inside its forward"))
    if imagenet_style and x.shape[1] == 3 and audit.kind in ("normalised", "0-1", "uint8", "0-255"):
        _imagenet_warnings(audit, per)
    return audit


def _imagenet_warnings(audit: Audit, per: torch.Tensor) -> None:
    """Against ImageNet statistics: channel order from the raw channel means, and values outside the normalised range."""
    mean, std = PRESETS["ImageNet"]
    if audit.kind == "normalised":
        raw = [m_ * s + mu for m_, s, mu in zip(audit.stats["mean"], std, mean)]
        box = torch.tensor(IMAGENET_BOX, dtype=torch.float64)
        audit.outside_box = float(((per < box[:, :1] - 0.05) | (per > box[:, 1:] + 0.05)).double().mean())
    else:
        div = 255.0 if audit.kind in ("uint8", "0-255") else 1.0
        raw = [m_ / div for m_ in audit.stats["mean"]]
    audit.raw_means = raw
    # Photos average red > blue (ImageNet 0.485 vs 0.406); the mirror image suggests BGR.
    if raw[2] - raw[0] > 0.06 and raw[2] > raw[1] > raw[0] - 0.02:
        audit.warnings.append((f"`{audit.name}` may be channel-swapped (BGR): its raw channel means {fmt_values(raw)} rise from R to B, "
                               f"the mirror image of ImageNet's {fmt_values(mean)}",
                               "if the images come from cv2.imread/imdecode, convert with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) "
                               "before building the tensor (weak evidence on few images: confirm with samples and pipelines)"))
    if audit.outside_box > 0.01:
        audit.warnings.append((f"{100 * audit.outside_box:.3g}% of `{audit.name}`'s values lie outside the range ImageNet-normalised "
                               "images can take", "check the mean/std used for normalisation against the training pipeline's"))
