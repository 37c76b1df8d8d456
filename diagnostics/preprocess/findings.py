"""`Finding`: one named cause of train/serve skew, with the pipeline step to blame and what to do.

Each builder here turns one diagnosed cause into words: the summary a user reads, the step culprit
(`preprocess[3] Normalize(...): wrong mean/std`, with the step's source line when the user wrote
it) and the hint. `structural` findings fail the check on their own; the others are graded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..locate.code import Frame
from ..locate.culprit import STEP, Culprit
from .fit import Prepared, shape_text
from .matching import REPRODUCE_TOLERANCE, VariantScore, resampling_kind, resize_hint, ties, variant_differences
from .resize import ResizeVariant
from .scale import Hypothesis, Scale, fmt_values, snap
from .steps import culprit, pipeline_steps, site, source_mentions

#: Order in which findings are reported (the first becomes the culprit).
PRIORITY = ("serving_error", "not_tensor", "nonfinite", "random", "channels", "layout", "channel_order", "scale", "dtype",
            "geometry", "batch", "resize")
_TO_TENSOR = ("ToDtype", "ConvertImageDtype", "ToTensor", "PILToTensor", "ToImage")


@dataclass
class Finding:
    """One named cause of skew. `structural` findings fail the check on their own."""

    kind: str
    summary: str
    hint: str
    structural: bool = True
    culprit: Culprit | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> str | None:
        return self.culprit.location if self.culprit is not None else None

    def row(self) -> dict[str, Any]:
        return {"kind": self.kind, "structural": self.structural, "summary": self.summary,
                "culprit": self.culprit.label if self.culprit is not None else None, "hint": self.hint,
                "location": self.location, **{f"evidence.{k}": v for k, v in self.evidence.items()}}


def order(findings: list[Finding]) -> None:
    """Structural findings first, then by `PRIORITY`."""
    findings.sort(key=lambda f: (not f.structural, PRIORITY.index(f.kind) if f.kind in PRIORITY else 99))


def _blame(where: tuple[str, Frame | None], what: str) -> Culprit:
    return Culprit.named(f"{where[0]}: {what}", STEP, where[1])


# ---------------------------------------------------------------------------------------------
# Structure: layout, NaN/Inf, channels, dtype


def layout_finding(p: Prepared, serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], serve_fn: Any) -> Finding:
    return Finding(
        "layout", f"serving gives {p.serving_layout} tensors ({shape_text(serving[0])}), the reference {p.reference_layout} "
        f"({shape_text(reference[0])})",
        "permute to channels-first in serving (`x.permute(2, 0, 1)` for one image; ToTensor/ToImage do it for PIL images and HWC arrays)"
        if p.reference_layout == "CHW" else "give the model channels-last tensors as in training (`x.permute(1, 2, 0)`)",
        culprit=culprit(serve_fn, f"{p.serving_layout} layout", user=True))


def nonfinite_finding(count: int, serve_fn: Any) -> Finding:
    return Finding("nonfinite", f"the serving tensors contain {count} NaN/Inf values",
                   "look for a division by a zero std or a log of zero in the serving pipeline",
                   culprit=culprit(serve_fn, "NaN/Inf", user=True))


def channels_finding(c_s: int, c_r: int, serve_fn: Any) -> Finding:
    what = {4: "keeps the alpha channel (RGBA)", 1: "is single-channel (grayscale)"}.get(c_s, f"has {c_s} channels")
    return Finding("channels", f"the serving tensor {what}; the reference has {c_r} channel(s)",
                   "convert images with `img.convert('RGB')` before the tensor conversion" if c_r == 3 else
                   f"produce {c_r} channel(s) as the reference does",
                   culprit=culprit(serve_fn, f"{c_s} channels", user=True))


def dtype_finding(p: Prepared, serve_fn: Any) -> Finding:
    return Finding("dtype", f"serving returns {p.serving_dtype} tensors, the reference {p.reference_dtype}",
                   "convert with v2.ToDtype(torch.float32, scale=True) (or ToTensor) as the reference does",
                   culprit=culprit(serve_fn, f"{p.serving_dtype} output", ("ToDtype", "ConvertImageDtype", "PILToTensor", "ToImage")))


# ---------------------------------------------------------------------------------------------
# Values: channel order, scaling, normalisation


def channel_order_finding(perm: Sequence[int], serve_fn: Any) -> Finding:
    c = len(perm)
    reversed_ = list(perm) == list(range(c))[::-1]
    names = "RGB"[:c]
    shown = "".join(names[i] for i in perm) if c <= 3 else str(tuple(perm))
    what = "BGR (channels reversed)" if reversed_ and c == 3 else f"channels in {shown} order"
    if source_mentions(serve_fn, "cv2"):
        hint = "cv2.imread/cv2.imdecode return BGR: convert with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) right after decoding"
    else:
        hint = "feed RGB as the reference does: remove the channel flip (e.g. `[..., ::-1]` or `x[[2, 1, 0]]`) or convert BGR images to RGB before the tensor"
    return Finding("channel_order", f"serving feeds {what}; the reference feeds RGB", hint,
                   culprit=culprit(serve_fn, f"channel order {shown}", user=True), evidence={"permutation": list(perm)})


def scale_finding(hyp: Hypothesis | None, srv: Scale, ref: Scale, serve_fn: Any) -> Finding:
    """The serving value map is not the reference's: name the hypothesis that explains it."""
    ref_norm = f"Normalize(mean={fmt_values(ref.mean)}, std={fmt_values(ref.std)})"
    evidence = {"serving_mean": srv.mean, "serving_std": srv.std, "reference_mean": ref.mean, "reference_std": ref.std}
    kind = hyp.kind if hyp else "other"
    if kind == "no_normalize" and ref.normalises:
        where = site(serve_fn, ("Normalize",))
        return Finding("scale", f"serving feeds un-normalised 0..1 values; the reference normalises with {ref.describe()}",
                       f"add {ref_norm} to the serving pipeline after the float conversion", evidence=evidence,
                       culprit=_blame(where, "no Normalize" if "Normalize" not in where[0] else "normalisation"))
    if kind == "no_normalize":  # the reference feeds 0..255 to a model that normalises inside
        return Finding("scale", f"serving feeds 0..1 values; the reference feeds {ref.describe()}",
                       "do not scale to 0..1 in serving (the model expects 0..255 as in training)",
                       culprit=culprit(serve_fn, "0..1 scaling", _TO_TENSOR), evidence=evidence)
    if kind == "double_normalize":
        return Finding("scale", f"serving normalises twice: {ref_norm} is applied to already normalised values",
                       "remove the second normalisation (the serving code or the model wrapper already applies it)",
                       culprit=culprit(serve_fn, "Normalize applied twice", ("Normalize",)), evidence=evidence)
    if kind in ("raw_255", "unscaled"):
        assert hyp is not None
        extra = f" and add {ref_norm}" if kind == "raw_255" and ref.normalises else ""
        return Finding("scale", f"serving feeds 0..255 values ({hyp.title}); the reference scales to 0..1 ({ref.describe()})",
                       "scale to 0..1 before normalising: v2.ToDtype(torch.float32, scale=True) (ToDtype without scale=True and "
                       f"PILToTensor + .float() leave 0..255){extra}", culprit=culprit(serve_fn, "0..255 range", _TO_TENSOR),
                       evidence=evidence)
    if kind in ("scaled_twice", "scaled_twice_no_norm"):
        assert hyp is not None
        return Finding("scale", f"serving divides by 255 twice: values span 0..{1 / 255:.4f} ({hyp.title})",
                       "remove the extra `/ 255` (ToTensor and ToDtype(scale=True) already scale to 0..1)",
                       culprit=culprit(serve_fn, "scaled twice", ("Lambda",) + _TO_TENSOR, user=True), evidence=evidence)
    if kind == "scaled_after":
        return Finding("scale", "serving divides by 255 twice: the serving tensor is the reference's divided by 255 "
                       f"(an extra `/ 255` after {'Normalize' if ref.normalises else 'the scaling to 0..1'})",
                       "remove the extra `/ 255` (ToTensor and ToDtype(scale=True) already scale to 0..1)",
                       culprit=culprit(serve_fn, "divided by 255 twice", ("Lambda",), user=True), evidence=evidence)
    if kind == "preset":
        assert hyp is not None
        summary = f"serving normalises with {hyp.title.replace(' normalisation', '')} mean/std; the reference with {ref.describe()}"
    else:
        summary = f"serving normalises with {snap(srv).describe()} (implied, in 0..1 units); the reference with {ref.describe()}"
    hint = f"normalise in serving with the training statistics: {ref_norm}" if ref.normalises else \
        f"the reference does not normalise ({ref.describe()}): remove the serving normalisation"
    return Finding("scale", summary, hint, culprit=culprit(serve_fn, "wrong mean/std", ("Normalize",)), evidence=evidence)


def shift_finding(shift_255: float, srv: Scale, ref: Scale, serve_fn: Any) -> Finding:
    """Close enough to name no other cause, but the model still sees shifted values."""
    return Finding(
        "scale", f"serving normalisation differs slightly from the reference's: {snap(srv, 0.001).describe()} vs "
        f"{ref.describe()}, a shift of up to {shift_255:.3g}/255 in pixel terms",
        f"use exactly the training statistics: Normalize(mean={fmt_values(ref.mean)}, std={fmt_values(ref.std)})",
        structural=False, culprit=culprit(serve_fn, "mean/std", ("Normalize",)), evidence={"shift_255": shift_255})


# ---------------------------------------------------------------------------------------------
# Geometry and resampling


def field_of_view_finding(r2: float, serve_fn: Any) -> Finding:
    return Finding(
        "geometry", f"serving tensors show different image content than the reference (per-channel fit R^2 {r2:.2f}): "
        "the crop or field of view differs and no known resize/crop order reproduces it",
        "resize and crop in serving exactly as in training (same sizes, same order: Resize then CenterCrop)",
        culprit=culprit(serve_fn, "field of view", ("RandomResizedCrop", "RandomCrop", "CenterCrop", "Resize"), user=True),
        evidence={"content_r2": r2})


def geometry_finding(serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], scores: list[VariantScore],
                     ref_variant: ResizeVariant | None, serve_fn: Any) -> Finding:
    """Serving and reference tensors have different sizes: name the resize/crop serving does."""
    text, frame = site(serve_fn, ("Resize", "CenterCrop"))
    summary = f"serving tensors are {shape_text(serving[0])}, the reference's {shape_text(reference[0])}"
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
                if not any(s.name == "CenterCrop" for s in pipeline_steps(serve_fn)):
                    text = site(serve_fn)[0]
    return Finding("geometry", summary, hint, culprit=_blame((text, frame), what))


def resize_finding(diff_255: float, scores: list[VariantScore], ref_variant: ResizeVariant | None, serve_fn: Any) -> Finding:
    """Same size, same values, different pixels: name the resampling serving does."""
    where = site(serve_fn, ("Resize", "CenterCrop"))
    base = f"after aligning channels and value range, serving pixels differ from the reference by {diff_255:.3g}/255 on average"
    if not scores or ref_variant is None or scores[0].resid >= REPRODUCE_TOLERANCE:
        return Finding("resize", base + "; no known resize path reproduces the serving tensors",
                       "compare the serving resize/crop code with the training pipeline step by step",
                       structural=False, culprit=_blame(where, "resampling"), evidence={"mean_abs_255": diff_255})
    best = scores[0]
    ref_score = next((s for s in scores if s.variant == ref_variant), None)
    if ref_score is not None and ties(ref_score, best):
        return Finding("resize", base + f"; the serving resize looks like the reference's ({ref_variant.label}): "
                       "the difference comes from elsewhere (decoding, colour conversion, rounding)",
                       "compare decoding and colour conversion of the two pipelines", structural=False,
                       culprit=_blame(where, "pixel values"), evidence={"mean_abs_255": diff_255})
    sv, rv = best.variant, ref_variant
    if sv.geometry != rv.geometry:
        where = site(serve_fn, ("CenterCrop", "Resize"))
        what = "crop before resize" if sv.geometry.crop_first and not rv.geometry.crop_first else f"geometry {sv.geometry.describe()}"
    elif resampling_kind(sv)[0] != resampling_kind(rv)[0]:
        what = f"{sv.interpolation} interpolation"
    elif resampling_kind(sv)[1] != resampling_kind(rv)[1]:
        what = ("resize without antialias" if sv.backend == "tensor" else "no antialias") if not resampling_kind(sv)[1] else "antialias"
    else:
        what = {"tensor": "torchvision tensor", "pil": "PIL", "cv2": "OpenCV"}[sv.backend] + " resampling"
    return Finding("resize", f"serving {variant_differences(sv, rv)} ({diff_255:.3g}/255 mean difference); serving matches "
                   f"{sv.label}, the reference {rv.label}", resize_hint(sv, rv), structural=False, culprit=_blame(where, what),
                   evidence={"mean_abs_255": diff_255, "serving_variant": sv.label, "reference_variant": rv.label})
