"""`analyse`: explain how the serving tensors differ from the reference tensors.

The currency is the raw image x in [0, 1] (RGB, after resizing). The reference pipeline gives
R = alpha_r * x + beta_r per channel (its scale and normalisation); the serving pipeline gives
S. After undoing layout (HWC) and a leading batch dimension, and finding the channel permutation
that makes S look like R, a per-channel least-squares fit S = a * R + b turns into the serving's
own alpha_s, beta_s, which the named hypotheses of `scale` explain. What is left after undoing all
that is resampling: it is matched against re-implemented resize variants (`matching`) to name
interpolation, antialiasing, library and resize/crop order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..images import Picture
from . import findings as fd
from .findings import Finding
from .fit import Prepared, best_permutation, channel_stats, fit_affine, pixels, prepare, same_channels, shape_text
from .matching import REPRODUCE_TOLERANCE, VariantScore, favour_declared, prefer_declared, reproduce, variant_images
from .resize import Geometry, ResizeVariant, candidate_geometries, geometry_fits, resamplers
from .scale import Scale, declared_or_range, explain_scale, range_scale, snap
from .steps import DeclaredGeometry, declared_geometry

#: Per-channel fit R^2 below which serving and reference show different image content (crop, field of view).
CONTENT_R2 = 0.9


@dataclass
class Analysis:
    """Findings (most important first), flat metrics and structured details of one comparison."""

    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    pixel_diff_255: float | None = None  # mean |serving - reference| in raw 0..255 units, after alignment


@dataclass
class _Reference:
    scale: Scale
    variant: ResizeVariant | None


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


def analyse(serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], pictures: Sequence[Picture],
            serve_fn: Any, ref_fn: Any, *, use_cv2: bool = True, variant_samples: int = 4, tiny_255: float = 0.5) -> Analysis:
    """Explain how the serving tensors differ from the reference tensors (one tensor per sample)."""
    out = Analysis()
    p = prepare(serving, reference)
    _describe(out, p, serving, reference)
    if _structure(out, p, serving, reference, serve_fn):
        return out
    pics = list(pictures[:variant_samples])
    resamp = resamplers(use_cv2)
    declared = declared_geometry(ref_fn)
    ref = _reference_side(p, pics, ref_fn, resamp, declared, out)
    srv = _serving_side(p, pics, ref, resamp, declared, out, declared_geometry(serve_fn))
    _scale_findings(out, p, srv, ref, serve_fn, tiny_255)
    _content_findings(out, p, srv, ref, serve_fn, serving, reference, tiny_255)
    if srv.scores:
        out.details["serving_variants"] = [s.row() for s in srv.scores[:12]]
        out.details["plot"] = {
            "kind": "barh", "title": "how well each resize path reproduces the serving tensors (fit residual, lower is closer)",
            "x": [s.variant.label for s in srv.scores[:10]], "series": {"residual": [s.resid for s in srv.scores[:10]]},
            "xlabel": "resize path", "ylabel": "normalised residual", "logy": False,
        }
    fd.order(out.findings)
    return out


def _describe(out: Analysis, p: Prepared, serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> None:
    """Tensor-space facts: shapes, dtypes, per-channel statistics, raw differences."""
    out.metrics.update({"serving_shape": shape_text(serving[0]), "reference_shape": shape_text(reference[0]),
                        "serving_dtype": p.serving_dtype, "reference_dtype": p.reference_dtype})
    stats = {name: channel_stats(ts) if same_channels(ts) else None for name, ts in (("serving", p.serving), ("reference", p.reference))}
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
        out.findings.append(fd.layout_finding(p, serving, reference, serve_fn))
    bad_r = sum(int((~torch.isfinite(t)).sum()) for t in p.reference)
    if bad_r:
        raise ValueError(f"reference_preprocess produced {bad_r} NaN/Inf values: it cannot serve as the reference")
    bad_s = sum(int((~torch.isfinite(t)).sum()) for t in p.serving)
    if bad_s:
        out.findings.append(fd.nonfinite_finding(bad_s, serve_fn))
        return True
    c_s, c_r = p.serving[0].shape[0], p.reference[0].shape[0]
    if c_s != c_r or not (same_channels(p.serving) and same_channels(p.reference)):
        out.findings.append(fd.channels_finding(c_s, c_r, serve_fn))
        return True
    if (not serving[0].is_floating_point()) and reference[0].is_floating_point():
        out.findings.append(fd.dtype_finding(p, serve_fn))
    return False


def _reference_side(p: Prepared, pics: list[Picture], ref_fn: Any, resamp: list[tuple[str, str, bool]],
                    declared: DeclaredGeometry | None, out: Analysis) -> _Reference:
    """Which resize path reproduces the reference, and its value map (fit, else declared, else range)."""
    ref_sub = p.reference[:len(pics)]
    sizes = [pic.size_hw for pic in pics]
    geoms = candidate_geometries([tuple(t.shape[-2:]) for t in ref_sub], sizes, declared)
    scores = reproduce(ref_sub, pics, geoms, prefer_declared(resamp, declared), early_exit=0.005) if geoms else []
    variant = scores[0].variant if scores and scores[0].resid < REPRODUCE_TOLERANCE else None
    if variant is not None:
        f = fit_affine(pixels(ref_sub), pixels(variant_images(variant, pics)))
        scale = snap(Scale(f.a, f.b, "fit"))
        out.metrics["reference_resize"] = variant.label
    else:
        scale = declared_or_range(ref_fn, p.reference)
    out.metrics["reference_normalisation"] = scale.describe()
    out.details["reference_variant"] = variant.label if variant else None
    out.details["reference_normalisation"] = scale.describe()
    if scores:
        out.details["reference_variants"] = [s.row() for s in scores[:6]]
    return _Reference(scale, variant)


def _serving_geometries(p: Prepared, pics: list[Picture], ref: _Reference, declared: DeclaredGeometry | None) -> list[Geometry]:
    """Geometries that give the serving sizes: the reference's (and its crop/resize order swapped) first."""
    geoms: list[Geometry] = []
    if ref.variant is not None:
        g = ref.variant.geometry
        geoms = [g] + ([Geometry(g.resize, g.crop, not g.crop_first)] if g.crop and g.resize is not None else [])
    shapes = [tuple(t.shape[-2:]) for t in p.serving[:len(pics)]]
    sizes = [pic.size_hw for pic in pics]
    geoms = [g for g in geoms if geometry_fits(g, shapes, sizes)]
    return geoms + [g for g in candidate_geometries(shapes, sizes, declared) if g not in geoms]


def _serving_side(p: Prepared, pics: list[Picture], ref: _Reference, resamp: list[tuple[str, str, bool]],
                  declared: DeclaredGeometry | None, out: Analysis, serving_declared: DeclaredGeometry | None) -> _Serving:
    """Channel order and value map of the serving tensors, from a direct fit and from resize variants
    (a tie between resize paths goes to the one the serving Compose declares)."""
    srv_sub = p.serving[:len(pics)]
    same_shape = all(a.shape == b.shape for a, b in zip(p.serving, p.reference))
    perm: tuple[int, ...] = tuple(range(p.serving[0].shape[0]))
    scale: Scale | None = None
    direct_resid, direct_r2 = math.inf, math.nan
    if same_shape:
        perm, perm_scores = best_permutation(pixels(p.serving), pixels(p.reference))
        f = fit_affine(pixels(p.serving, perm), pixels(p.reference))
        direct_resid, direct_r2 = float(f.resid.mean()), f.mean_r2
        scale = Scale(f.a * ref.scale.alpha, f.a * ref.scale.beta + f.b, "fit")
        out.details["channel_permutation_r2"] = {str(k): v for k, v in perm_scores.items()}
    geoms = _serving_geometries(p, pics, ref, declared)
    scores: list[VariantScore] = []
    if geoms and (direct_resid > 0.01 or not same_shape):
        if not same_shape:
            v0 = variant_images(ResizeVariant("tensor", "bilinear", True, geoms[0]), pics)
            perm, _ = best_permutation(pixels(srv_sub), pixels(v0))
        scores = favour_declared(reproduce(srv_sub, pics, geoms, resamp, perm), serving_declared, resamp)
        if scores and scores[0].resid < min(direct_resid, 0.5):
            f = fit_affine(pixels(srv_sub, perm), pixels(variant_images(scores[0].variant, pics)))
            scale = Scale(f.a, f.b, "fit")
    reproduced = bool(scores) and scores[0].resid < REPRODUCE_TOLERANCE
    content_differs = same_shape and direct_r2 < CONTENT_R2 and not reproduced
    out.metrics["content_r2"] = direct_r2
    if content_differs or scale is None:
        # The pixels do not line up (another crop, a random step): a fit would mistake content for scale.
        scale = snap(range_scale([t[list(perm)] for t in p.serving]), 0.05)
    _scale_metrics(out, scale, ref.scale)
    return _Serving(perm, scale, scores, same_shape, direct_resid, direct_r2, reproduced, content_differs)


def _scale_metrics(out: Analysis, scale: Scale, ref: Scale) -> None:
    """The serving normalisation, and per channel the serving map relative to the reference's."""
    out.metrics["serving_normalisation"] = snap(scale, 0.005).describe()
    for ch in range(len(scale.alpha)):
        ratio = float(scale.alpha[ch] / ref.alpha[ch])
        out.metrics[f"fit.ch{ch}_scale"] = ratio
        out.metrics[f"fit.ch{ch}_offset"] = float(scale.beta[ch] - ratio * ref.beta[ch])


def _scale_findings(out: Analysis, p: Prepared, srv: _Serving, ref: _Reference, serve_fn: Any, tiny_255: float) -> None:
    """Channel order and value-range/normalisation findings from the fitted serving scale."""
    if list(srv.perm) != list(range(len(srv.perm))):
        out.findings.append(fd.channel_order_finding(srv.perm, serve_fn))
    hyp = explain_scale(srv.scale, ref.scale, srv.perm)
    out.metrics["scale_diagnosis"] = hyp.title if hyp else "unexplained"
    if hyp is None or hyp.kind != "same":
        out.findings.append(fd.scale_finding(hyp, srv.scale, ref.scale, serve_fn))
        if hyp is not None:  # the named cause already explains a uint8 output
            out.findings = [f for f in out.findings if f.kind != "dtype"]
            if p.serving_dtype != p.reference_dtype:
                out.findings[-1].summary += f" ({p.serving_dtype} tensors; the reference gives {p.reference_dtype})"
    elif (srv.direct_resid < 0.01 or srv.reproduced) and not srv.content_differs and hyp.error * 255 > tiny_255:
        shift = hyp.error * 255
        out.findings.append(fd.shift_finding(shift, srv.scale, ref.scale, serve_fn))
        out.metrics["scale_shift_255"] = shift


def _content_findings(out: Analysis, p: Prepared, srv: _Serving, ref: _Reference, serve_fn: Any,
                      serving: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], tiny_255: float) -> None:
    """Geometry and resampling: what is left once channels and value range are undone."""
    if not srv.same_shape:
        out.findings.append(fd.geometry_finding(serving, reference, srv.scores, ref.variant, serve_fn))
        return
    if srv.content_differs:
        out.findings.append(fd.field_of_view_finding(srv.direct_r2, serve_fn))
        return
    a_s, b_s = srv.scale.alpha[:, None, None], srv.scale.beta[:, None, None]
    a_r, b_r = ref.scale.alpha[:, None, None], ref.scale.beta[:, None, None]
    diffs = torch.cat([((s[list(srv.perm)] - b_s) / a_s - (r - b_r) / a_r).abs().reshape(-1) for s, r in zip(p.serving, p.reference)]) * 255
    out.pixel_diff_255 = float(diffs.mean())
    out.metrics["pixel_mean_abs_255"] = out.pixel_diff_255
    out.metrics["pixel_p99_abs_255"] = float(torch.quantile(diffs[:: max(1, diffs.numel() // 1_000_000)].float(), 0.99))
    if out.pixel_diff_255 > tiny_255:
        out.findings.append(fd.resize_finding(out.pixel_diff_255, srv.scores, ref.variant, serve_fn))
