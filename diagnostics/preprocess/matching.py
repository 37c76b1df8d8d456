"""Which resize path reproduces a pipeline's output, and how two resize paths differ, in words.

Each candidate `ResizeVariant` resamples the sample images; the one an affine map of which fits
the pipeline's output best (lowest normalised residual) is the path the pipeline takes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..images import Picture
from .fit import fit_affine, pixels
from .resize import Geometry, ResizeVariant
from .steps import DeclaredGeometry

#: Normalised fit residual below which a resize variant "reproduces" a pipeline.
REPRODUCE_TOLERANCE = 0.03


@dataclass
class VariantScore:
    variant: ResizeVariant
    resid: float  # normalised affine-fit residual of the pipeline output against the variant

    def row(self) -> dict[str, Any]:
        return {"variant": self.variant.label, "fit_residual": self.resid}


def variant_images(variant: ResizeVariant, pictures: Sequence[Picture]) -> list[torch.Tensor]:
    return [p.resample(variant) for p in pictures]


def reproduce(outputs: Sequence[torch.Tensor], pictures: Sequence[Picture], geometries: Sequence[Geometry],
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

    def score(v: ResizeVariant) -> VariantScore:
        x = pixels(variant_images(v, pictures))
        if x.shape[0] != y.shape[0]:
            x = x[:1].expand(y.shape[0], -1) if x.shape[0] == 3 and y.shape[0] == 1 else x
        if x.shape != y.shape:
            return VariantScore(v, math.inf)
        f = fit_affine(y, x)
        return VariantScore(v, float(f.resid.mean()))

    if early_exit and geometries and resamplers:
        first = score(ResizeVariant(*resamplers[0], geometries[0]))
        if first.resid < early_exit:
            return [first]
    geo_scores = sorted((score(ResizeVariant("tensor", "bilinear", True, g)) for g in geometries), key=lambda s: s.resid)
    top = [s.variant.geometry for s in geo_scores[:2]]
    scores = [score(ResizeVariant(b, i, a, g)) for g in top for (b, i, a) in resamplers]
    return sorted(scores, key=lambda s: s.resid)


def resampling_kind(v: ResizeVariant) -> tuple[str, bool]:
    """(interpolation, antialias) with library synonyms merged: PIL always antialiases a downscale and
    its NEAREST is torchvision's nearest-exact, so PIL bilinear equals torchvision bilinear+antialias."""
    if v.backend == "pil":
        return ("nearest-exact" if v.interpolation == "nearest" else v.interpolation), v.interpolation != "nearest"
    return v.interpolation, v.antialias and "nearest" not in v.interpolation


def variant_differences(served: ResizeVariant, ref: ResizeVariant) -> str:
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
        if not s_aa and served.backend == "tensor":  # a known path: name the call that takes it
            parts.append("uses a resize without antialias (torchvision tensor Resize(antialias=False)), so a downscale aliases")
        else:
            parts.append("does not antialias when downscaling" if not s_aa else "antialiases where the reference does not")
    if (served.backend == "cv2") != (ref.backend == "cv2"):
        parts.append(f"resamples with {names[served.backend]} instead of {names[ref.backend]}")
    return "; ".join(parts) or "resamples like the reference"


def resize_hint(served: ResizeVariant, ref: ResizeVariant) -> str:
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
    if served.backend == "tensor" and not served.antialias and ref.interpolation not in ("nearest", "nearest-exact"):
        text += "; on tensors torchvision antialiases only with antialias=True (its default since 0.17: drop antialias=False)"
    elif served.backend == "cv2":
        text += "; cv2.resize with INTER_LINEAR/INTER_CUBIC does not antialias a downscale (INTER_AREA is the closest OpenCV path)"
    elif served.interpolation in ("nearest", "nearest-exact") and ref.interpolation not in ("nearest", "nearest-exact"):
        text += "; nearest-neighbour resizing aliases edges and textures the model never saw in training"
    return text


def ties(score: VariantScore, best: VariantScore) -> bool:
    """Two resize paths reproduce a pipeline equally well: rounding, not resampling, separates them
    (torchvision's tensor bilinear without antialias and OpenCV INTER_LINEAR differ by ~1e-3)."""
    return score.resid <= best.resid * 1.5 + 1e-3


def favour_declared(scores: list[VariantScore], declared: DeclaredGeometry | None,
                    resamp: list[tuple[str, str, bool]]) -> list[VariantScore]:
    """`scores` with the resampler a Compose declares first when it ties with the best one: the
    code says which library resizes, the pixels only that the two paths agree."""
    key = prefer_declared(resamp, declared)[0] if declared is not None and resamp else None
    if not scores or key is None or key == (scores[0].variant.backend, scores[0].variant.interpolation, scores[0].variant.antialias):
        return scores
    mine = next((s for s in scores if (s.variant.backend, s.variant.interpolation, s.variant.antialias) == key), None)
    if mine is None or mine.resid >= REPRODUCE_TOLERANCE or not ties(mine, scores[0]):
        return scores
    return [mine] + [s for s in scores if s is not mine]


def prefer_declared(resamp: list[tuple[str, str, bool]], declared: DeclaredGeometry | None) -> list[tuple[str, str, bool]]:
    """Put the resampler a Compose declares first, so ties go to what the code says."""
    if declared is None or declared.interpolation is None:
        return resamp
    backend = "pil" if declared.on_pil else "tensor"
    aa = True if backend == "pil" else bool(declared.antialias if declared.antialias is not None else True)
    key = (backend, declared.interpolation, aa if declared.interpolation not in ("nearest", "nearest-exact") else False)
    return [key] + [r for r in resamp if r != key] if key in resamp else resamp
