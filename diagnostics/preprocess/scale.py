"""Value maps: what a pipeline does to raw pixels x in [0, 1], per channel (value = alpha * x + beta).

The reference's map comes from a fit, from what its Compose declares, or from the value range; the
serving's from a fit against the reference. Named hypotheses (normalisation missing, doubled,
0..255 input, scaled twice before or after Normalize, another mean/std preset) each predict the serving map; the closest one
within `MAP_TOLERANCE` of the value span names the cause.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .fit import pixels
from .steps import pipeline_steps

#: A hypothesis explains the serving scale/offset when its prediction is within this fraction of the value span.
MAP_TOLERANCE = 0.06

#: Known normalisations: name -> (mean, std) in 0..1 units.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "ImageNet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "0.5/0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Inception, many ViTs
    "CLIP": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none (0..1)": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "none (0..255)": ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),
}


@dataclass
class Scale:
    """A pipeline's value map from raw x in [0,1]: value = alpha * x + beta per channel."""

    alpha: torch.Tensor
    beta: torch.Tensor
    source: str  # "fit", "declared", "range"

    @property
    def mean(self) -> list[float]:
        return [float(-b / a) if a != 0 else math.nan for a, b in zip(self.alpha, self.beta)]

    @property
    def std(self) -> list[float]:
        return [float(1 / a) if a != 0 else math.inf for a in self.alpha]

    def preset(self, rel: float = 0.03) -> str | None:
        return match_preset(self.mean, self.std, rel)

    def describe(self) -> str:
        name = self.preset(0.002)
        if name and name.startswith("none"):
            return f"no normalisation, values in {name[6:-1]}"
        stats = f"mean={fmt_values(self.mean)}, std={fmt_values(self.std)}"
        return f"{stats} ({name})" if name else stats

    @property
    def normalises(self) -> bool:
        name = self.preset()
        return not (name or "").startswith("none")


def fmt_values(values: Sequence[float]) -> str:
    """`[0.485, 0.456, 0.406]`: per-channel numbers as messages show them."""
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def match_preset(mean: Sequence[float], std: Sequence[float], rel: float = 0.03) -> str | None:
    for name, (pm, ps) in PRESETS.items():
        if len(mean) != len(pm):
            pm, ps = pm[:1] * len(mean), ps[:1] * len(mean)
        if all(abs(s / q - 1) <= rel for s, q in zip(std, ps)) and all(abs(m - p) <= rel * q for m, p, q in zip(mean, pm, ps)):
            return name
    return None


def scale_from_preset(name: str, channels: int) -> Scale:
    mean, std = PRESETS[name]
    mean, std = (mean if channels == 3 else mean[:1] * channels), (std if channels == 3 else std[:1] * channels)
    alpha = torch.tensor([1 / s for s in std], dtype=torch.float64)
    return Scale(alpha, torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float64), "preset")


def snap(scale: Scale, rel: float = 0.02) -> Scale:
    """Replace a fitted scale by the preset it matches within `rel` (fits carry resampling noise)."""
    name = scale.preset(rel)
    if name is None:
        return scale
    snapped = scale_from_preset(name, len(scale.alpha))
    snapped.source = scale.source
    return snapped


def declared_scale(fn: Any, channels: int) -> Scale | None:
    """The value map a Compose declares: its to-tensor scaling and Normalize steps, in order."""
    steps = pipeline_steps(fn)
    if len(steps) < 2:
        return None
    alpha = torch.ones(channels, dtype=torch.float64)
    beta = torch.zeros(channels, dtype=torch.float64)
    scaled = None
    for st in steps:
        if st.name in ("ToTensor",) or (st.name in ("ToDtype", "ConvertImageDtype") and _scales(st.obj)):
            scaled = True
        elif st.name in ("PILToTensor", "ToImage", "ToImageTensor") and scaled is None:
            scaled = False
        elif st.name == "Normalize":
            mean = torch.tensor([float(v) for v in st.obj.mean], dtype=torch.float64).expand(channels)
            std = torch.tensor([float(v) for v in st.obj.std], dtype=torch.float64).expand(channels)
            alpha, beta = alpha / std, (beta - mean) / std
        elif st.name not in ("Resize", "CenterCrop", "ToPILImage", "ToPureTensor", "RGB", "Grayscale"):
            return None  # a step we cannot read: do not guess
    if scaled is None:
        return None
    if not scaled:
        alpha = alpha * 255
    return Scale(alpha, beta, "declared")


def _scales(obj: Any) -> bool:
    if type(obj).__name__ == "ConvertImageDtype":
        return True
    scale = getattr(obj, "scale", False)
    return bool(scale)


def declared_or_range(fn: Any, ts: Sequence[torch.Tensor]) -> Scale:
    """What the pipeline declares, else what the value range says (snapped to a preset)."""
    declared = declared_scale(fn, ts[0].shape[0])
    return declared if declared is not None else snap(range_scale(ts), 0.05)


def range_scale(ts: Sequence[torch.Tensor]) -> Scale:
    """The value map assuming the samples span the full 0..255 range in every channel."""
    x = pixels(ts)
    lo, hi = x.min(1).values, x.max(1).values
    alpha = (hi - lo).clamp_min(1e-12)
    return Scale(alpha, lo, "range")


# ---------------------------------------------------------------------------------------------
# Hypotheses about the serving scale


@dataclass
class Hypothesis:
    """A named cause of a serving value map, and the map it predicts."""

    kind: str
    title: str
    alpha: torch.Tensor
    beta: torch.Tensor
    error: float = math.inf


def hypotheses(ref: Scale, perm: Sequence[int], presets: bool = True) -> list[Hypothesis]:
    """What the serving scale would be under each named cause (per channel, relative to raw x)."""
    m = torch.tensor(ref.mean, dtype=torch.float64)
    s = torch.tensor(ref.std, dtype=torch.float64)
    c = len(m)
    one = torch.ones(c, dtype=torch.float64)
    zero = torch.zeros(c, dtype=torch.float64)
    swapped = list(perm) != list(range(c))
    out: list[Hypothesis] = []
    idx_options = [("", list(range(c)))] + ([(" after the swap", list(perm))] if swapped else [])
    for suffix, idx in idx_options:
        mj, sj = m[idx], s[idx]
        out += [
            Hypothesis("same", "same scaling and normalisation" + suffix, 1 / sj, -mj / sj),
            Hypothesis("unscaled", "0..255 values normalised with 0..1 mean/std" + suffix, 255 / sj, -mj / sj),
            Hypothesis("scaled_twice", "values divided by 255 twice" + suffix, 1 / (255 * sj), -mj / sj),
            # the reference's finished tensor divided by 255 again (an extra `/ 255` after Normalize):
            # its implied std is 255x the reference's, which no mean/std preset explains
            Hypothesis("scaled_after", "the reference's tensor divided by 255 (divided by 255 twice)" + suffix,
                       1 / (255 * sj), -mj / (255 * sj)),
        ]
        if ref.normalises:
            out.append(Hypothesis("double_normalize", "Normalize applied twice" + suffix, 1 / sj.pow(2), -mj / sj.pow(2) - mj / sj))
    out += [
        Hypothesis("no_normalize", "0..1 values without Normalize", one, zero),
        Hypothesis("raw_255", "0..255 values without scaling or Normalize", 255 * one, zero),
        Hypothesis("scaled_twice_no_norm", "values divided by 255 twice, no Normalize", one / 255, zero),
    ]
    if presets:
        for name in PRESETS:
            preset = scale_from_preset(name, c)
            out.append(Hypothesis("preset", f"{name} normalisation", preset.alpha, preset.beta))
    return out


def map_error(alpha: torch.Tensor, beta: torch.Tensor, h: Hypothesis) -> float:
    """Largest gap between two value maps over x in [0, 1], relative to the hypothesis's value span."""
    da, db = alpha - h.alpha, beta - h.beta
    gap = torch.maximum(db.abs(), (da + db).abs()) / h.alpha.abs().clamp_min(1e-12)
    return float(gap.max())


def explain_scale(serving: Scale, ref: Scale, perm: Sequence[int]) -> Hypothesis | None:
    """The named hypothesis closest to the serving scale, or None when none is within tolerance."""
    best: Hypothesis | None = None
    for h in hypotheses(ref, perm):
        h.error = map_error(serving.alpha, serving.beta, h)
        if best is None or h.error < best.error - 1e-9:
            best = h
    if best is None or best.error > MAP_TOLERANCE:
        return None
    if best.kind == "preset" and map_error(serving.alpha, serving.beta, hypotheses(ref, perm, presets=False)[0]) <= MAP_TOLERANCE:
        best.kind = "same"
    return best
