"""Train/serve skew diagnosis: explain how a serving tensor differs from the reference tensor.

The currency is the raw image x in [0, 1] (RGB, after resizing). The reference pipeline gives
R = alpha_r * x + beta_r per channel (its scale and normalisation); the serving pipeline gives
S. After undoing layout (HWC) and a leading batch dimension, and finding the channel permutation
that makes S look like R, a per-channel least-squares fit S = a * R + b turns into the serving's
own alpha_s, beta_s. Named hypotheses (normalisation missing, doubled, 0..255 input, scaled
twice, other mean/std) each predict alpha, beta; the closest one within `MAP_TOLERANCE` of the
value range names the cause. What is left after undoing all that is resampling: it is matched
against re-implemented resize variants (`images.ResizeVariant`) to name interpolation,
antialiasing, library and resize/crop order.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from . import images as im

#: A hypothesis explains the serving scale/offset when its prediction is within this fraction of the value span.
MAP_TOLERANCE = 0.06
#: Per-channel fit R^2 below which serving and reference show different image content (crop, field of view).
CONTENT_R2 = 0.9
#: Normalised fit residual below which a resize variant "reproduces" a pipeline.
REPRODUCE_TOLERANCE = 0.03

#: Known normalisations: name -> (mean, std) in 0..1 units.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "ImageNet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "0.5/0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Inception, many ViTs
    "CLIP": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none (0..1)": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "none (0..255)": ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),
}


# ---------------------------------------------------------------------------------------------
# Findings


@dataclass
class Finding:
    """One named cause of skew. `structural` findings fail the check on their own."""

    kind: str
    summary: str
    hint: str
    structural: bool = True
    culprit: str | None = None
    location: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"kind": self.kind, "structural": self.structural, "summary": self.summary, "culprit": self.culprit,
                "hint": self.hint, "location": self.location, **{f"evidence.{k}": v for k, v in self.evidence.items()}}


# ---------------------------------------------------------------------------------------------
# Layout


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


# ---------------------------------------------------------------------------------------------
# Fits


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

    @property
    def max_resid(self) -> float:
        return float(self.resid.max())


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


# ---------------------------------------------------------------------------------------------
# Normalisation in raw terms


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
        stats = f"mean={_fmt(self.mean)}, std={_fmt(self.std)}"
        return f"{stats} ({name})" if name else stats

    @property
    def normalises(self) -> bool:
        name = self.preset()
        return not (name or "").startswith("none")


def _fmt(values: Sequence[float]) -> str:
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
    steps = im.pipeline_steps(fn)
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


# ---------------------------------------------------------------------------------------------
# Hypotheses about the serving scale


@dataclass
class Hypothesis:
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
        ]
        if ref.normalises:
            out.append(Hypothesis("double_normalize", "Normalize applied twice" + suffix, 1 / sj.pow(2), -mj / sj.pow(2) - mj / sj))
    out += [
        Hypothesis("no_normalize", "0..1 values without Normalize", one, zero),
        Hypothesis("raw_255", "0..255 values without scaling or Normalize", 255 * one, zero),
        Hypothesis("scaled_twice_no_norm", "values divided by 255 twice, no Normalize", one / 255, zero),
    ]
    if presets:
        for name, (pm, ps) in PRESETS.items():
            pm_t = torch.tensor(pm if c == 3 else pm[:1] * c, dtype=torch.float64)
            ps_t = torch.tensor(ps if c == 3 else ps[:1] * c, dtype=torch.float64)
            out.append(Hypothesis("preset", f"{name} normalisation", 1 / ps_t, -pm_t / ps_t))
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


# ---------------------------------------------------------------------------------------------
# Resize variants


@dataclass
class VariantScore:
    variant: im.ResizeVariant
    resid: float  # normalised affine-fit residual of the pipeline output against the variant

    def row(self) -> dict[str, Any]:
        return {"variant": self.variant.label, "fit_residual": self.resid}


def variant_images(variant: im.ResizeVariant, pictures: Sequence[im.Picture]) -> list[torch.Tensor]:
    return [p.resample(variant) for p in pictures]


def reproduce(outputs: Sequence[torch.Tensor], pictures: Sequence[im.Picture], geometries: Sequence[im.Geometry],
              resamplers: Sequence[tuple[str, str, bool]], perm: Sequence[int] | None = None,
              early_exit: float = 0.0) -> list[VariantScore]:
    """Score every (geometry, resampler) by how well an affine map of it reproduces `outputs`.

    Geometry is chosen first with torchvision's default resampler (bilinear, antialias), then
    every resampler is tried on the best two geometries. Sorted best first. With `early_exit`,
    the first geometry and resampler are tried alone first and kept if their residual is below it
    (a Compose that declares its resize is reproduced by what it declares).
    """
    y = pixels(outputs, perm)
    if y.shape[0] not in (1, 3):
        return []

    def score(v: im.ResizeVariant) -> VariantScore:
        x = pixels(variant_images(v, pictures))
        if x.shape[0] != y.shape[0]:
            x = x[:1].expand(y.shape[0], -1) if x.shape[0] == 3 and y.shape[0] == 1 else x
        if x.shape != y.shape:
            return VariantScore(v, math.inf)
        f = fit_affine(y, x)
        return VariantScore(v, float(f.resid.mean()))

    if early_exit and geometries and resamplers:
        first = score(im.ResizeVariant(*resamplers[0], geometries[0]))
        if first.resid < early_exit:
            return [first]
    geo_scores = sorted((score(im.ResizeVariant("tensor", "bilinear", True, g)) for g in geometries), key=lambda s: s.resid)
    top = [s.variant.geometry for s in geo_scores[:2]]
    scores = [score(im.ResizeVariant(b, i, a, g)) for g in top for (b, i, a) in resamplers]
    return sorted(scores, key=lambda s: s.resid)


def resampling_kind(v: im.ResizeVariant) -> tuple[str, bool]:
    """(interpolation, antialias) with library synonyms merged: PIL always antialiases a downscale and
    its NEAREST is torchvision's nearest-exact, so PIL bilinear equals torchvision bilinear+antialias."""
    if v.backend == "pil":
        return ("nearest-exact" if v.interpolation == "nearest" else v.interpolation), v.interpolation != "nearest"
    return v.interpolation, v.antialias and "nearest" not in v.interpolation


def variant_differences(served: im.ResizeVariant, ref: im.ResizeVariant) -> str:
    """How the serving resize differs from the reference's, in words."""
    parts = []
    names = {"tensor": "torchvision on tensors", "pil": "PIL", "cv2": "OpenCV"}
    (s_interp, s_aa), (r_interp, r_aa) = resampling_kind(served), resampling_kind(ref)
    if served.geometry != ref.geometry:
        if served.geometry.crop_first != ref.geometry.crop_first and served.geometry.resize == ref.geometry.resize:
            parts.append(f"crops before resizing ({served.geometry.describe()}) where the reference resizes first ({ref.geometry.describe()})")
        else:
            parts.append(f"uses {served.geometry.describe()} where the reference uses {ref.geometry.describe()}")
    if s_interp.split("-")[0] != r_interp.split("-")[0]:
        parts.append(f"interpolates with {served.interpolation} instead of {ref.interpolation}")
    elif s_interp != r_interp:
        parts.append(f"uses the {s_interp} rounding rule where the reference uses {r_interp}")
    if s_aa != r_aa and "nearest" not in s_interp + r_interp:
        parts.append("does not antialias when downscaling" if not s_aa else "antialiases where the reference does not")
    if (served.backend == "cv2") != (ref.backend == "cv2"):
        parts.append(f"resamples with {names[served.backend]} instead of {names[ref.backend]}")
    return "; ".join(parts) or "resamples like the reference"


def resize_hint(served: im.ResizeVariant, ref: im.ResizeVariant) -> str:
    g = ref.geometry
    size = g.resize if g.resize is not None else "..."
    interp = ref.interpolation.upper().replace("-", "_")
    steps = f"Resize({size}, interpolation=InterpolationMode.{interp}, antialias=True)"
    if g.crop:
        crop = f"CenterCrop({g.crop[0]})" if g.crop[0] == g.crop[1] else f"CenterCrop({list(g.crop)})"
        steps = f"{crop} then {steps}" if g.crop_first else f"{steps} then {crop}"
    text = f"resize in serving exactly as in training: {steps}"
    if ref.backend == "pil":
        text += " on the PIL image (before ToTensor/ToImage)"
    if served.backend == "cv2":
        text += "; cv2.resize with INTER_LINEAR/INTER_CUBIC does not antialias a downscale (INTER_AREA is the closest OpenCV path)"
    elif served.interpolation in ("nearest", "nearest-exact") and ref.interpolation not in ("nearest", "nearest-exact"):
        text += "; nearest-neighbour resizing aliases edges and textures the model never saw in training"
    return text


# ---------------------------------------------------------------------------------------------
# Statistics


def channel_stats(ts: Sequence[torch.Tensor]) -> dict[str, list[float]]:
    x = pixels(ts)
    return {"mean": [float(v) for v in x.mean(1)], "std": [float(v) for v in x.std(1)],
            "min": [float(v) for v in x.min(1).values], "max": [float(v) for v in x.max(1).values]}


def range_scale(ts: Sequence[torch.Tensor]) -> Scale:
    """The value map assuming the samples span the full 0..255 range in every channel."""
    x = pixels(ts)
    lo, hi = x.min(1).values, x.max(1).values
    alpha = (hi - lo).clamp_min(1e-12)
    return Scale(alpha, lo, "range")


# ---------------------------------------------------------------------------------------------
# Input audit (no pipelines)


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


#: Per-channel limits of ImageNet-normalised images: ((0 - m) / s, (1 - m) / s).
IMAGENET_BOX = [((0 - m) / s, (1 - m) / s) for m, s in zip(*PRESETS["ImageNet"])]


def neighbour_correlation(x: torch.Tensor) -> float:
    """Correlation of horizontally adjacent pixels (NCHW): ~0.9+ for photos, ~0 for noise."""
    a, b = x[..., :, :-1].reshape(-1).double(), x[..., :, 1:].reshape(-1).double()
    if a.numel() < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else 1.0


def audit_tensor(name: str, t: torch.Tensor, imagenet_style: bool) -> Audit | None:
    """Audit one input leaf when it looks like a batch of images (NCHW or NHWC, 1 or 3 channels)."""
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
    if min(x.shape[-2:]) < 8:
        return None
    xd = x.detach().cpu().double()
    per = xd.transpose(0, 1).reshape(xd.shape[1], -1)
    stats = {"mean": [float(v) for v in per.mean(1)], "std": [float(v) for v in per.std(1)],
             "min": [float(v) for v in per.min(1).values], "max": [float(v) for v in per.max(1).values]}
    audit = Audit(name, layout, str(t.dtype).replace("torch.", ""), tuple(t.shape), stats, neighbour_correlation(xd), "other")
    lo, hi = min(stats["min"]), max(stats["max"])
    if audit.smoothness < 0.3:
        audit.kind = "noise"
        return audit
    if not t.is_floating_point():
        audit.kind = "uint8"
    elif hi > 5:
        audit.kind = "0-255"
    elif lo >= -1e-6 and hi <= 1 + 1e-6:
        audit.kind = "0-1"
    else:
        audit.kind = "normalised" if all(abs(m) < 1.2 for m in stats["mean"]) and all(0.3 < s < 2.0 for s in stats["std"]) else "other"
    if audit.kind in ("uint8", "0-255"):
        audit.warnings.append((f"`{name}` looks un-normalised: values span {lo:.4g}..{hi:.4g} ({audit.dtype})",
                               "scale to 0..1 (ToDtype(torch.float32, scale=True)) and normalise with the training mean/std, "
                               "unless the model normalises inside its forward"))
    elif audit.kind == "0-1" and imagenet_style:
        audit.warnings.append((f"`{name}` looks scaled to 0..1 but not normalised (per-channel mean {_fmt(stats['mean'])})",
                               "add Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]) (or the training stats) "
                               "after ToTensor, unless the model normalises inside its forward"))
    if imagenet_style and x.shape[1] == 3 and audit.kind in ("normalised", "0-1", "uint8", "0-255"):
        mean, std = PRESETS["ImageNet"]
        if audit.kind == "normalised":
            raw = [m_ * s + mu for m_, s, mu in zip(stats["mean"], std, mean)]
            box = torch.tensor(IMAGENET_BOX, dtype=torch.float64)
            outside = ((per < box[:, :1] - 0.05) | (per > box[:, 1:] + 0.05)).double().mean()
            audit.outside_box = float(outside)
        else:
            div = 255.0 if audit.kind in ("uint8", "0-255") else 1.0
            raw = [m_ / div for m_ in stats["mean"]]
        audit.raw_means = raw
        # Photos average red > blue (ImageNet 0.485 vs 0.406); the mirror image suggests BGR.
        if raw[2] - raw[0] > 0.06 and raw[2] > raw[1] > raw[0] - 0.02:
            audit.warnings.append((f"`{name}` may be channel-swapped (BGR): its raw channel means {_fmt(raw)} rise from R to B, "
                                   f"the mirror image of ImageNet's {_fmt(mean)}",
                                   "if the images come from cv2.imread/imdecode, convert with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) "
                                   "before building the tensor (weak evidence on few images: confirm with samples and pipelines)"))
        if audit.outside_box > 0.01:
            audit.warnings.append((f"{100 * audit.outside_box:.3g}% of `{name}`'s values lie outside the range ImageNet-normalised "
                                   "images can take", "check the mean/std used for normalisation against the training pipeline's"))
    return audit


# ---------------------------------------------------------------------------------------------
# The analysis of one pair of pipelines


@dataclass
class Analysis:
    """Findings (most important first), flat metrics and structured details of one comparison."""

    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    pixel_diff_255: float | None = None  # mean |serving - reference| in raw 0..255 units, after alignment


#: Order in which findings are reported (the first becomes the culprit).
PRIORITY = ("serving_error", "not_tensor", "nonfinite", "random", "channels", "layout", "channel_order", "scale", "dtype",
            "geometry", "batch", "resize")


def where(fn: Any, names: Sequence[str] = (), *, user: bool = False) -> tuple[str, str | None]:
    """Culprit text and location: the named serving step(s) of a Compose, else the pipeline itself."""
    steps = im.pipeline_steps(fn)
    if len(steps) > 1:
        st = None
        for name in names:  # the first name, in the caller's order of preference, that a step has
            hits = [s for s in steps if s.name == name]
            if hits:
                st = hits[-1] if name == "Normalize" else hits[0]
                break
        if st is None and user:
            st = next((s for s in steps if s.location is not None), None)
        if st is not None:
            return f"preprocess[{st.index}] {st.text}", st.location
        return "preprocess (" + " -> ".join(s.name for s in steps) + ")", None
    label = im.step_text(fn)
    return (f"preprocess {label}" if label.endswith("()") else f"preprocess ({label})"), im.source_location(fn)


def analyse(serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], pictures: Sequence[im.Picture],
            serve_fn: Any, ref_fn: Any, *, use_cv2: bool = True, variant_samples: int = 4, tiny_255: float = 0.5) -> Analysis:
    """Explain how the serving tensors differ from the reference tensors (one tensor per sample)."""
    out = Analysis()
    p = prepare(serving, reference)
    _describe(out, p, serving, reference)
    if _structure(out, p, serving, reference, serve_fn):
        return out
    pics = list(pictures[:variant_samples])
    resamp = im.resamplers(use_cv2)
    declared = im.declared_geometry(ref_fn)
    ref = _reference_side(p, pics, ref_fn, resamp, declared, out)
    srv = _serving_side(p, pics, ref, resamp, declared, out)
    _scale_findings(out, p, srv, ref, serve_fn, tiny_255)
    _content_findings(out, p, srv, ref, serve_fn, serving, reference, tiny_255)
    if srv.scores:
        out.details["serving_variants"] = [s.row() for s in srv.scores[:12]]
        out.details["plot"] = {
            "kind": "barh", "title": "how well each resize path reproduces the serving tensors (fit residual, lower is closer)",
            "x": [s.variant.label for s in srv.scores[:10]], "series": {"residual": [s.resid for s in srv.scores[:10]]},
            "xlabel": "resize path", "ylabel": "normalised residual", "logy": False,
        }
    out.findings.sort(key=lambda f: (not f.structural, PRIORITY.index(f.kind) if f.kind in PRIORITY else 99))
    return out


@dataclass
class _Reference:
    scale: Scale
    variant: im.ResizeVariant | None


@dataclass
class _Serving:
    perm: tuple[int, ...]
    scale: Scale
    scores: list[VariantScore]
    same_shape: bool
    direct_resid: float
    direct_r2: float
    reproduced: bool
    content_differs: bool


def _describe(out: Analysis, p: Prepared, serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> None:
    """Tensor-space facts: shapes, dtypes, per-channel statistics, raw differences."""
    out.metrics.update({"serving_shape": _shape(serving[0]), "reference_shape": _shape(reference[0]),
                        "serving_dtype": p.serving_dtype, "reference_dtype": p.reference_dtype})
    stats = {name: channel_stats(ts) if _same_channels(ts) else None for name, ts in (("serving", p.serving), ("reference", p.reference))}
    for prefix, st in stats.items():
        for c, (m, sd) in enumerate(zip(st["mean"], st["std"]) if st else ()):
            out.metrics[f"{prefix}.ch{c}_mean"] = m
            out.metrics[f"{prefix}.ch{c}_std"] = sd
    out.details["channel_stats"] = stats
    if p.serving_batch_dim != p.reference_batch_dim:
        out.details["note_batch_dim"] = "one pipeline returns a leading batch dimension of 1; it was dropped for the comparison"
    if all(a.shape == b.shape for a, b in zip(p.serving, p.reference)) and all(t.numel() for t in p.serving):
        d = [(a - b).abs() for a, b in zip(p.serving, p.reference)]
        out.metrics["max_abs_diff"] = max(float(x.max()) for x in d)
        out.metrics["mean_abs_diff"] = float(torch.cat([x.reshape(-1) for x in d]).mean())


def _structure(out: Analysis, p: Prepared, serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], serve_fn: Any) -> bool:
    """Layout, NaN/Inf, channel count, dtype findings; True when nothing more can be compared."""
    if p.serving_layout != p.reference_layout and "?" not in (p.serving_layout, p.reference_layout):
        loc_text, loc = where(serve_fn, user=True)
        out.findings.append(Finding(
            "layout", f"serving gives {p.serving_layout} tensors ({_shape(serving[0])}), the reference {p.reference_layout} ({_shape(reference[0])})",
            "permute to channels-first in serving (`x.permute(2, 0, 1)` for one image; ToTensor/ToImage do it for PIL images and HWC arrays)"
            if p.reference_layout == "CHW" else "give the model channels-last tensors as in training (`x.permute(1, 2, 0)`)",
            culprit=f"{loc_text}: {p.serving_layout} layout", location=loc))
    bad_r = sum(int((~torch.isfinite(t)).sum()) for t in p.reference)
    if bad_r:
        raise ValueError(f"reference_preprocess produced {bad_r} NaN/Inf values: it cannot serve as the reference")
    bad_s = sum(int((~torch.isfinite(t)).sum()) for t in p.serving)
    if bad_s:
        loc_text, loc = where(serve_fn, user=True)
        out.findings.append(Finding("nonfinite", f"the serving tensors contain {bad_s} NaN/Inf values",
                                    "look for a division by a zero std or a log of zero in the serving pipeline",
                                    culprit=f"{loc_text}: NaN/Inf", location=loc))
        return True
    c_s, c_r = p.serving[0].shape[0], p.reference[0].shape[0]
    if c_s != c_r or not (_same_channels(p.serving) and _same_channels(p.reference)):
        loc_text, loc = where(serve_fn, user=True)
        what = {4: "keeps the alpha channel (RGBA)", 1: "is single-channel (grayscale)"}.get(c_s, f"has {c_s} channels")
        out.findings.append(Finding("channels", f"the serving tensor {what}; the reference has {c_r} channel(s)",
                                    "convert images with `img.convert('RGB')` before the tensor conversion" if c_r == 3 else
                                    f"produce {c_r} channel(s) as the reference does",
                                    culprit=f"{loc_text}: {c_s} channels", location=loc))
        return True
    if (not serving[0].is_floating_point()) and reference[0].is_floating_point():
        loc_text, loc = where(serve_fn, ("ToDtype", "ConvertImageDtype", "PILToTensor", "ToImage"))
        out.findings.append(Finding("dtype", f"serving returns {p.serving_dtype} tensors, the reference {p.reference_dtype}",
                                    "convert with v2.ToDtype(torch.float32, scale=True) (or ToTensor) as the reference does",
                                    culprit=f"{loc_text}: {p.serving_dtype} output", location=loc))
    return False


def _reference_side(p: Prepared, pics: list[im.Picture], ref_fn: Any, resamp: list[tuple[str, str, bool]],
                    declared: im.DeclaredGeometry | None, out: Analysis) -> _Reference:
    """Which resize path reproduces the reference, and its value map (fit, else declared, else range)."""
    ref_sub = p.reference[:len(pics)]
    sizes = [pic.size_hw for pic in pics]
    geoms = im.candidate_geometries([tuple(t.shape[-2:]) for t in ref_sub], sizes, declared)
    scores = reproduce(ref_sub, pics, geoms, _prefer(resamp, declared), early_exit=0.005) if geoms else []
    variant = scores[0].variant if scores and scores[0].resid < REPRODUCE_TOLERANCE else None
    if variant is not None:
        f = fit_affine(pixels(ref_sub), pixels(variant_images(variant, pics)))
        scale = snap(Scale(f.a, f.b, "fit"))
        out.metrics["reference_resize"] = variant.label
    else:
        scale = _declared_or_range(ref_fn, p.reference)
    out.metrics["reference_normalisation"] = scale.describe()
    out.details["reference_variant"] = variant.label if variant else None
    out.details["reference_normalisation"] = scale.describe()
    if scores:
        out.details["reference_variants"] = [s.row() for s in scores[:6]]
    return _Reference(scale, variant)


def _serving_side(p: Prepared, pics: list[im.Picture], ref: _Reference, resamp: list[tuple[str, str, bool]],
                  declared: im.DeclaredGeometry | None, out: Analysis) -> _Serving:
    """Channel order and value map of the serving tensors, from a direct fit and from resize variants."""
    c = p.serving[0].shape[0]
    n = len(pics)
    srv_sub = p.serving[:n]
    sizes = [pic.size_hw for pic in pics]
    same_shape = all(a.shape == b.shape for a, b in zip(p.serving, p.reference))
    perm: tuple[int, ...] = tuple(range(c))
    scale: Scale | None = None
    direct_resid, direct_r2 = math.inf, math.nan
    if same_shape:
        perm, perm_scores = best_permutation(pixels(p.serving), pixels(p.reference))
        f = fit_affine(pixels(p.serving, perm), pixels(p.reference))
        direct_resid, direct_r2 = float(f.resid.mean()), f.mean_r2
        scale = Scale(f.a * ref.scale.alpha, f.a * ref.scale.beta + f.b, "fit")
        out.details["channel_permutation_r2"] = {str(k): v for k, v in perm_scores.items()}
    geoms: list[im.Geometry] = []
    if ref.variant is not None:
        g = ref.variant.geometry
        geoms = [g] + ([im.Geometry(g.resize, g.crop, not g.crop_first)] if g.crop and g.resize is not None else [])
    shapes = [tuple(t.shape[-2:]) for t in srv_sub]
    geoms = [g for g in geoms if im.geometry_fits(g, shapes, sizes)]
    geoms += [g for g in im.candidate_geometries(shapes, sizes, declared) if g not in geoms]
    scores: list[VariantScore] = []
    if geoms and (direct_resid > 0.01 or not same_shape):
        if not same_shape:
            v0 = variant_images(im.ResizeVariant("tensor", "bilinear", True, geoms[0]), pics)
            perm, _ = best_permutation(pixels(srv_sub), pixels(v0))
        scores = reproduce(srv_sub, pics, geoms, resamp, perm)
        if scores and scores[0].resid < min(direct_resid, 0.5):
            f = fit_affine(pixels(srv_sub, perm), pixels(variant_images(scores[0].variant, pics)))
            scale = Scale(f.a, f.b, "fit")
    reproduced = bool(scores) and scores[0].resid < REPRODUCE_TOLERANCE
    content_differs = same_shape and direct_r2 < CONTENT_R2 and not reproduced
    out.metrics["content_r2"] = direct_r2
    if content_differs or scale is None:
        # The pixels do not line up (another crop, a random step): a fit would mistake content for scale.
        scale = snap(range_scale([t[list(perm)] for t in p.serving]), 0.05)
    out.metrics["serving_normalisation"] = snap(scale, 0.005).describe()
    for ch in range(c):
        ratio = float(scale.alpha[ch] / ref.scale.alpha[ch])
        out.metrics[f"fit.ch{ch}_scale"] = ratio
        out.metrics[f"fit.ch{ch}_offset"] = float(scale.beta[ch] - ratio * ref.scale.beta[ch])
    return _Serving(perm, scale, scores, same_shape, direct_resid, direct_r2, reproduced, content_differs)


def _scale_findings(out: Analysis, p: Prepared, srv: _Serving, ref: _Reference, serve_fn: Any, tiny_255: float) -> None:
    """Channel order and value-range/normalisation findings from the fitted serving scale."""
    if list(srv.perm) != list(range(len(srv.perm))):
        out.findings.append(_channel_finding(srv.perm, serve_fn))
    hyp = explain_scale(srv.scale, ref.scale, srv.perm)
    out.metrics["scale_diagnosis"] = hyp.title if hyp else "unexplained"
    if hyp is None or hyp.kind != "same":
        out.findings.append(_scale_finding(hyp, srv.scale, ref.scale, serve_fn))
        if hyp is not None:  # the named cause already explains a uint8 output
            out.findings = [f for f in out.findings if f.kind != "dtype"]
            if p.serving_dtype != p.reference_dtype:
                out.findings[-1].summary += f" ({p.serving_dtype} tensors; the reference gives {p.reference_dtype})"
    elif (srv.direct_resid < 0.01 or srv.reproduced) and not srv.content_differs and hyp.error * 255 > tiny_255:
        # Close enough to name no other cause, but the model still sees shifted values.
        shift = hyp.error * 255
        loc_text, loc = where(serve_fn, ("Normalize",))
        out.findings.append(Finding(
            "scale", f"serving normalisation differs slightly from the reference's: {snap(srv.scale, 0.001).describe()} vs "
            f"{ref.scale.describe()}, a shift of up to {shift:.3g}/255 in pixel terms",
            f"use exactly the training statistics: Normalize(mean={_fmt(ref.scale.mean)}, std={_fmt(ref.scale.std)})",
            structural=False, culprit=f"{loc_text}: mean/std", location=loc, evidence={"shift_255": shift}))
        out.metrics["scale_shift_255"] = shift


def _content_findings(out: Analysis, p: Prepared, srv: _Serving, ref: _Reference, serve_fn: Any,
                      serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], tiny_255: float) -> None:
    """Geometry and resampling: what is left once channels and value range are undone."""
    if not srv.same_shape:
        out.findings.append(_geometry_finding(serving, reference, srv.scores, ref.variant, serve_fn))
        return
    if srv.content_differs:
        loc_text, loc = where(serve_fn, ("RandomResizedCrop", "RandomCrop", "CenterCrop", "Resize"), user=True)
        out.findings.append(Finding(
            "geometry", f"serving tensors show different image content than the reference (per-channel fit R^2 {srv.direct_r2:.2f}): "
            "the crop or field of view differs and no known resize/crop order reproduces it",
            "resize and crop in serving exactly as in training (same sizes, same order: Resize then CenterCrop)",
            culprit=f"{loc_text}: field of view", location=loc, evidence={"content_r2": srv.direct_r2}))
        return
    a_s, b_s = srv.scale.alpha[:, None, None], srv.scale.beta[:, None, None]
    a_r, b_r = ref.scale.alpha[:, None, None], ref.scale.beta[:, None, None]
    diffs = torch.cat([((s[list(srv.perm)] - b_s) / a_s - (r - b_r) / a_r).abs().reshape(-1) for s, r in zip(p.serving, p.reference)]) * 255
    out.pixel_diff_255 = float(diffs.mean())
    out.metrics["pixel_mean_abs_255"] = out.pixel_diff_255
    out.metrics["pixel_p99_abs_255"] = float(torch.quantile(diffs[:: max(1, diffs.numel() // 1_000_000)].float(), 0.99))
    if out.pixel_diff_255 > tiny_255:
        out.findings.append(_resize_finding(out.pixel_diff_255, srv.scores, ref.variant, serve_fn))


def _same_channels(ts: Sequence[torch.Tensor]) -> bool:
    return len({t.shape[0] for t in ts}) == 1 and all(t.dim() == 3 for t in ts)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, tuple(t.shape)))


def _prefer(resamp: list[tuple[str, str, bool]], declared: im.DeclaredGeometry | None) -> list[tuple[str, str, bool]]:
    """Put the resampler a Compose declares first, so ties go to what the code says."""
    if declared is None or declared.interpolation is None:
        return resamp
    backend = "pil" if declared.on_pil else "tensor"
    aa = True if backend == "pil" else bool(declared.antialias if declared.antialias is not None else True)
    key = (backend, declared.interpolation, aa if declared.interpolation not in ("nearest", "nearest-exact") else False)
    return [key] + [r for r in resamp if r != key] if key in resamp else resamp


def _declared_or_range(fn: Any, ts: Sequence[torch.Tensor]) -> Scale:
    declared = declared_scale(fn, ts[0].shape[0])
    return declared if declared is not None else snap(range_scale(ts), 0.05)


def _channel_finding(perm: Sequence[int], serve_fn: Any) -> Finding:
    c = len(perm)
    reversed_ = list(perm) == list(range(c))[::-1]
    names = "RGB"[:c]
    order = "".join(names[i] for i in perm) if c <= 3 else str(tuple(perm))
    what = "BGR (channels reversed)" if reversed_ and c == 3 else f"channels in {order} order"
    loc_text, loc = where(serve_fn, user=True)
    if im.source_mentions(serve_fn, "cv2"):
        hint = "cv2.imread/cv2.imdecode return BGR: convert with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) right after decoding"
    else:
        hint = "feed RGB as the reference does: remove the channel flip (e.g. `[..., ::-1]` or `x[[2, 1, 0]]`) or convert BGR images to RGB before the tensor"
    return Finding("channel_order", f"serving feeds {what}; the reference feeds RGB", hint,
                   culprit=f"{loc_text}: channel order {order}", location=loc, evidence={"permutation": list(perm)})


def _scale_finding(hyp: Hypothesis | None, srv: Scale, ref: Scale, serve_fn: Any) -> Finding:
    ref_norm = f"Normalize(mean={_fmt(ref.mean)}, std={_fmt(ref.std)})"
    srv_desc = snap(srv).describe()
    evidence = {"serving_mean": srv.mean, "serving_std": srv.std, "reference_mean": ref.mean, "reference_std": ref.std}
    kind = hyp.kind if hyp else "other"
    to_tensor = ("ToDtype", "ConvertImageDtype", "ToTensor", "PILToTensor", "ToImage")
    if kind == "no_normalize" and ref.normalises:
        loc_text, loc = where(serve_fn, ("Normalize",))
        culprit = f"{loc_text}: no Normalize" if "Normalize" not in loc_text else f"{loc_text}: normalisation"
        return Finding("scale", f"serving feeds un-normalised 0..1 values; the reference normalises with {ref.describe()}",
                       f"add {ref_norm} to the serving pipeline after the float conversion", culprit=culprit, location=loc, evidence=evidence)
    if kind == "no_normalize":  # the reference feeds 0..255 to a model that normalises inside
        loc_text, loc = where(serve_fn, to_tensor)
        return Finding("scale", f"serving feeds 0..1 values; the reference feeds {ref.describe()}",
                       "do not scale to 0..1 in serving (the model expects 0..255 as in training)", culprit=f"{loc_text}: 0..1 scaling",
                       location=loc, evidence=evidence)
    if kind == "double_normalize":
        loc_text, loc = where(serve_fn, ("Normalize",))
        return Finding("scale", f"serving normalises twice: {ref_norm} is applied to already normalised values",
                       "remove the second normalisation (the serving code or the model wrapper already applies it)",
                       culprit=f"{loc_text}: Normalize applied twice", location=loc, evidence=evidence)
    if kind in ("raw_255", "unscaled"):
        loc_text, loc = where(serve_fn, to_tensor)
        extra = f" and add {ref_norm}" if kind == "raw_255" and ref.normalises else ""
        return Finding("scale", f"serving feeds 0..255 values ({hyp.title}); the reference scales to 0..1 ({ref.describe()})",
                       "scale to 0..1 before normalising: v2.ToDtype(torch.float32, scale=True) (ToDtype without scale=True and "
                       f"PILToTensor + .float() leave 0..255){extra}", culprit=f"{loc_text}: 0..255 range", location=loc, evidence=evidence)
    if kind in ("scaled_twice", "scaled_twice_no_norm"):
        loc_text, loc = where(serve_fn, ("Lambda",) + to_tensor, user=True)
        return Finding("scale", f"serving divides by 255 twice: values span 0..{1 / 255:.4f} ({hyp.title})",
                       "remove the extra `/ 255` (ToTensor and ToDtype(scale=True) already scale to 0..1)",
                       culprit=f"{loc_text}: scaled twice", location=loc, evidence=evidence)
    loc_text, loc = where(serve_fn, ("Normalize",))
    if kind == "preset":
        summary = f"serving normalises with {hyp.title.replace(' normalisation', '')} mean/std; the reference with {ref.describe()}"
    else:
        summary = f"serving normalises with {srv_desc} (implied, in 0..1 units); the reference with {ref.describe()}"
    hint = f"normalise in serving with the training statistics: {ref_norm}" if ref.normalises else \
        f"the reference does not normalise ({ref.describe()}): remove the serving normalisation"
    return Finding("scale", summary, hint, culprit=f"{loc_text}: wrong mean/std", location=loc, evidence=evidence)


def _geometry_finding(serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], scores: list[VariantScore],
                      ref_variant: im.ResizeVariant | None, serve_fn: Any) -> Finding:
    loc_text, loc = where(serve_fn, ("Resize", "CenterCrop"))
    summary = f"serving tensors are {_shape(serving[0])}, the reference's {_shape(reference[0])}"
    hint = "resize and crop in serving exactly as in training"
    what = "output size"
    if scores and scores[0].resid < REPRODUCE_TOLERANCE:
        best = scores[0].variant
        summary += f": serving matches {best.geometry.describe()}"
        if ref_variant is not None:
            summary += f", the reference {ref_variant.geometry.describe()}"
            hint = resize_hint(best, ref_variant)
            if best.geometry.crop is None and ref_variant.geometry.crop is not None:
                what = "no CenterCrop"
                if not any(s.name == "CenterCrop" for s in im.pipeline_steps(serve_fn)):
                    loc_text = where(serve_fn)[0]
    return Finding("geometry", summary, hint, culprit=f"{loc_text}: {what}", location=loc)


def _resize_finding(diff_255: float, scores: list[VariantScore], ref_variant: im.ResizeVariant | None, serve_fn: Any) -> Finding:
    loc_text, loc = where(serve_fn, ("Resize", "CenterCrop"))
    base = f"after aligning channels and value range, serving pixels differ from the reference by {diff_255:.3g}/255 on average"
    if not scores or ref_variant is None or scores[0].resid >= REPRODUCE_TOLERANCE:
        return Finding("resize", base + "; no known resize path reproduces the serving tensors",
                       "compare the serving resize/crop code with the training pipeline step by step",
                       structural=False, culprit=f"{loc_text}: resampling", location=loc, evidence={"mean_abs_255": diff_255})
    best = scores[0]
    ref_score = next((s for s in scores if s.variant == ref_variant), None)
    if ref_score is not None and ref_score.resid <= best.resid * 1.5 + 1e-3:
        return Finding("resize", base + f"; the serving resize looks like the reference's ({ref_variant.label}): "
                       "the difference comes from elsewhere (decoding, colour conversion, rounding)",
                       "compare decoding and colour conversion of the two pipelines", structural=False,
                       culprit=f"{loc_text}: pixel values", location=loc, evidence={"mean_abs_255": diff_255})
    how = variant_differences(best.variant, ref_variant)
    sv, rv = best.variant, ref_variant
    if sv.geometry != rv.geometry:
        loc_text, loc = where(serve_fn, ("CenterCrop", "Resize"))
        what = "crop before resize" if sv.geometry.crop_first and not rv.geometry.crop_first else f"geometry {sv.geometry.describe()}"
    elif resampling_kind(sv)[0] != resampling_kind(rv)[0]:
        what = f"{sv.interpolation} interpolation"
    elif resampling_kind(sv)[1] != resampling_kind(rv)[1]:
        what = "no antialias" if not resampling_kind(sv)[1] else "antialias"
    else:
        what = {"tensor": "torchvision tensor", "pil": "PIL", "cv2": "OpenCV"}[sv.backend] + " resampling"
    return Finding("resize", f"serving {how} ({diff_255:.3g}/255 mean difference); serving matches {sv.label}, "
                   f"the reference {rv.label}", resize_hint(sv, rv), structural=False, culprit=f"{loc_text}: {what}",
                   location=loc, evidence={"mean_abs_255": diff_255, "serving_variant": sv.label, "reference_variant": rv.label})
