"""`preprocessing`: the serving pipeline must feed the model what the reference (training) pipeline did.

Measure: both pipelines on the same samples (as tensors, and through the model). Judge: structural
skew fails; resampling noise passes; a larger resize difference fails when the model's top-1 or
the pixels move too much, else warns. Explain: the cause and the pipeline step, from
`torch_diagnose.preprocess`.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Sequence

import torch

from torch_diagnose import images as im
from torch_diagnose.context import Context, num_threads
from torch_diagnose.locate.culprit import INPUT, STEP, Culprit
from torch_diagnose.preprocess import runs, steps
from torch_diagnose.preprocess.analysis import Analysis, analyse
from torch_diagnose.preprocess.findings import Finding, order
from torch_diagnose.preprocess.model import model_pass
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import CheckResult, SkipCheck
from torch_diagnose.tree import flatten, map_leaves

#: Default share of samples whose top-1 class may change before the check fails (1 in 10).
MAX_TOP1_DISAGREEMENT = 0.1
#: Mean |serving - reference| in 0..255 pixel units at or below which a difference is resampling noise
#: (PIL vs torchvision-with-antialias differ by ~0.002; bicubic vs bilinear by ~0.8 on a 640->224 downscale).
TINY_PIXEL_DIFF = 0.5
#: Above this mean difference (0..255 units) a resize mismatch fails even if top-1 survived on these samples.
MAX_PIXEL_DIFF = 2.0

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_FORMS = {"raw": "sample as given", "pil": "sample as a PIL image", "array": "sample as an HWC uint8 array", "path": "sample as a file path"}
#: Metrics shown first (explain() and terminal reports show the first few).
_FIRST = ("diagnosis", "pixel_mean_abs_255", "top1_changed", "top1_changed_frac", "output.max_abs", "output.max_rms_rel",
          "serving_normalisation", "reference_normalisation", "scale_diagnosis", "reference_resize", "samples", "samples_source",
          "serving_shape", "reference_shape", "serving_dtype", "reference_dtype")


@register(
    "preprocessing",
    family="preprocessing",
    title="the serving pipeline feeds the model what the training pipeline did",
    order=31,
    options=(
        Option("samples", int, 8, "generated photo-like images to use when the target has no samples"),
        Option("max_samples", int, 32, "at most this many of the target's samples are used"),
        Option("max_top1_disagreement", float, MAX_TOP1_DISAGREEMENT, "fail when top-1 changes on more than this share of samples"),
        Option("tiny_pixel_diff", float, TINY_PIXEL_DIFF, "mean pixel difference (0..255 units) that passes as resampling noise"),
        Option("max_pixel_diff", float, MAX_PIXEL_DIFF, "mean pixel difference (0..255 units) above which a resize mismatch fails"),
        Option("opencv", bool, True, "also try OpenCV decoding and resize paths when opencv is installed"),
        Option("variant_samples", int, 4, "samples used to match resize variants (each variant resamples them)"),
    ),
)
def preprocessing(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Serving (`Target.preprocess`) and reference (`Target.reference_preprocess`) pipelines must agree.

    Both run on `Target.samples` (PIL images, arrays or file paths; generated photo-like images
    when none are given). Compared in tensor space (shape, dtype, max/mean abs difference,
    per-channel mean/std) and through the model (top-1 agreement, output error, batched). The
    cause is diagnosed, not just the size: layout (HWC vs CHW), channel order (BGR), value range
    (0..255, scaled twice), normalisation (missing, doubled, other mean/std, recovered from a
    per-channel fit serving = a * reference + b), resize (interpolation, antialiasing, PIL vs
    tensor vs OpenCV, resize/crop order, matched against re-implemented variants), random steps
    and batch-dependent steps. Structural mismatches fail; resampling noise below
    `tiny_pixel_diff`/255 passes; larger resize differences fail when top-1 changes on more than
    `max_top1_disagreement` of samples or the mean difference exceeds `max_pixel_diff`/255,
    else warn.
    """
    serve_fn, ref_fn = _pipelines(ctx)
    samples, source = _samples(ctx, opts)
    pictures = [im.Picture(_load(s, i)) for i, s in enumerate(samples)]
    images = [p.pil for p in pictures]
    metrics: dict[str, Any] = {"samples": len(samples), "samples_source": source}
    details: dict[str, Any] = {}
    measured = _run_pipelines(serve_fn, ref_fn, samples, images, source, metrics, details)
    if isinstance(measured, CheckResult):
        return measured
    srv_run, ref_run, findings = measured
    bad = _non_tensor(srv_run.outputs)
    if bad:
        return CheckResult.failed(f"the serving pipeline returns {bad}, not a tensor", culprit=steps.culprit(serve_fn, f"returns {bad}", user=True),
                                  metrics=metrics, hint="end the serving pipeline with ToTensor() or ToImage() + ToDtype(torch.float32, scale=True)")
    if _non_tensor(ref_run.outputs):
        raise RuntimeError(f"reference_preprocess returns {_non_tensor(ref_run.outputs)}, not tensors: the check compares tensors")
    srv_outs, ref_outs = [_tensorize(o) for o in srv_run.outputs], [_tensorize(o) for o in ref_run.outputs]
    use_cv2 = bool(opts.opencv) and im.opencv() is not None
    metrics["opencv"] = use_cv2
    with num_threads(1):  # small float64 fits: one thread is several times faster than two contending ones
        analyses = _analyse_leaves(srv_outs, ref_outs, pictures, serve_fn, ref_fn, use_cv2, opts)
    findings += _collect(analyses, metrics, details)
    pixel = max((a.pixel_diff_255 for a in analyses.values() if a.pixel_diff_255 is not None), default=None)
    if srv_run.form != ref_run.form:
        _note_forms(srv_run.form, ref_run.form, samples, findings, details)
    if use_cv2:
        _decoding(samples, images, metrics, details)
    model_note = model_pass(ctx, srv_outs, ref_outs, metrics, details)
    if model_note.get("serving_error") and not model_note.get("reference_error"):
        findings.append(Finding("model", f"the model fails on the serving tensors: {model_note['serving_error']}",
                                "make serving produce the tensors the model was trained on",
                                culprit=Culprit.named("preprocess: model input", INPUT)))
    order(findings)
    details["findings"] = [f.row() for f in findings]
    metrics["diagnosis"] = "; ".join(f.kind for f in findings) or "none"
    return _verdict(findings, _ordered(metrics), details, pixel, opts, source)


# ---------------------------------------------------------------------------------------------
# Measure


def _pipelines(ctx: Context) -> tuple[Any, Any]:
    serve_fn, ref_fn = ctx.target.preprocess, ctx.target.reference_preprocess
    if serve_fn is None and ref_fn is None:
        raise SkipCheck("no preprocessing pipelines given (Target.preprocess and reference_preprocess); "
                        "the input_audit check judges the example inputs alone")
    if serve_fn is None or ref_fn is None:
        missing = "preprocess (serving)" if serve_fn is None else "reference_preprocess (training/evaluation)"
        raise SkipCheck(f"only one pipeline given: set Target.{missing.split()[0]} too ({missing}) to compare the two")
    return serve_fn, ref_fn


def _samples(ctx: Context, opts: CheckOptions) -> tuple[list[Any], str]:
    given = ctx.target.samples
    if given is not None:
        samples = list(itertools.islice(iter(given), max(int(opts.max_samples), 1)))
        if samples:
            return samples, "target"
    return im.generated_images(max(int(opts.samples), 2), seed=ctx.options.seed), "generated"


def _load(sample: Any, index: int) -> Any:
    import numpy as np
    from PIL import Image

    if not (isinstance(sample, (Image.Image, np.ndarray, torch.Tensor)) or (im.is_path(sample) and os.path.exists(sample))):
        if im.is_path(sample) and os.path.splitext(str(sample))[1].lower() in _IMAGE_EXTENSIONS:
            raise ValueError(f"sample {index}: image file {sample!r} does not exist")
        raise SkipCheck(f"sample {index} is a {type(sample).__name__}, not an image, array or image file: "
                        "this check compares image pipelines")
    try:
        return im.load_image(sample)
    except Exception as exc:
        raise ValueError(f"sample {index} ({type(sample).__name__}) cannot be read as an image: {exc}") from exc


def _run_pipelines(serve_fn: Any, ref_fn: Any, samples: list[Any], images: list[Any], source: str, metrics: dict[str, Any],
                   details: dict[str, Any]) -> CheckResult | tuple[runs.PipelineRun, runs.PipelineRun, list[Finding]]:
    """Both pipelines on every sample, then the serving pipeline's behaviour; a result when that already decides."""
    temp = runs.TempFiles()
    try:
        ref_run = runs.run_pipeline(ref_fn, samples, images, temp)
        if ref_run.error:
            raise RuntimeError(f"reference_preprocess failed: {ref_run.error}")
        srv_run = runs.run_pipeline(serve_fn, samples, images, temp)
        metrics.update({"serving_input": srv_run.form, "reference_input": ref_run.form})
        if srv_run.error:
            return CheckResult.failed(f"the serving pipeline fails on {source} samples: {srv_run.error}",
                                      culprit=steps.culprit(serve_fn, "raises", user=True), metrics=metrics,
                                      hint="make the serving pipeline accept the same inputs as the reference (PIL images, arrays or paths)")
        early = _random_reference(ref_fn, lambda: runs.form_input(samples, images, ref_run.form, 0, temp), metrics)
        if early is not None:
            return early
        findings = _behaviour(serve_fn, lambda: runs.form_input(samples, images, srv_run.form, 0, temp), images, metrics, details)
    finally:
        temp.close()
    return srv_run, ref_run, findings


def _random_reference(ref_fn: Any, make_input: Any, metrics: dict[str, Any]) -> CheckResult | None:
    """A random reference (training augmentation) cannot be compared against: warn and stop."""
    rep = runs.repeatability(ref_fn, make_input)
    if rep.repeatable:
        return None
    where, frame = steps.step_site(ref_fn, rep.step, "reference_preprocess")
    return CheckResult.warned(f"the reference pipeline is random ({where}): two calls on the same sample differ "
                              f"by up to {rep.max_diff:.3g}, so it cannot serve as the reference",
                              culprit=Culprit.named(f"{where}: random", STEP, frame), metrics=metrics,
                              hint="give the evaluation pipeline (Resize + CenterCrop + ToTensor + Normalize) as reference_preprocess, "
                              "not the training augmentation")


def _behaviour(serve_fn: Any, make_input: Any, images: list[Any], metrics: dict[str, Any], details: dict[str, Any]) -> list[Finding]:
    """Findings about the serving pipeline on its own: random steps, batch-dependent steps."""
    rep = runs.repeatability(serve_fn, make_input)
    if not rep.repeatable:  # a random pipeline differs between any two calls: batching says nothing more
        metrics["serving_batch_consistent"] = "n/a"
        return [Finding("random", f"the serving pipeline is random: two calls on the same sample differ by up to {rep.max_diff:.3g}",
                        "remove training augmentation (RandomResizedCrop, RandomCrop, RandomHorizontalFlip, ColorJitter ...) "
                        "from serving: use a fixed Resize + CenterCrop", culprit=steps.culprit_at(serve_fn, rep.step, "random"))]
    batch = runs.batch_consistency(serve_fn, images)
    metrics["serving_batch_consistent"] = batch.consistent if batch.applicable else "n/a"
    details["batch_consistency"] = {"applicable": batch.applicable, "consistent": batch.consistent, "max_diff": batch.max_diff, "note": batch.note}
    if not batch.applicable or batch.consistent:
        return []
    return [Finding("batch", f"the serving pipeline gives different tensors for a batch than per sample (up to {batch.max_diff:.3g} apart)",
                    "compute statistics per image (dims -3, -2, -1), not over the whole batch, or apply the pipeline per sample",
                    culprit=steps.culprit_at(serve_fn, batch.step, "batch-dependent"))]


def _non_tensor(outs: Sequence[Any]) -> str | None:
    import numpy as np

    for o in outs:
        for leaf in flatten(o).values():
            if not isinstance(leaf, (torch.Tensor, np.ndarray)):
                return f"a {type(leaf).__module__.split('.')[0]}.{type(leaf).__name__}"
    return None


def _tensorize(o: Any) -> Any:
    import numpy as np

    return map_leaves(o, lambda t: torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t)


def _analyse_leaves(srv: list[Any], ref: list[Any], pictures: list[im.Picture], serve_fn: Any, ref_fn: Any,
                    use_cv2: bool, opts: CheckOptions) -> dict[str, Analysis]:
    """One analysis per image-like output leaf (a plain tensor output is the leaf named "")."""
    if isinstance(srv[0], torch.Tensor) and isinstance(ref[0], torch.Tensor):
        pairs = {"": (list(srv), list(ref))}
    else:
        fs, fr = [flatten(o) for o in srv], [flatten(o) for o in ref]
        pairs = {k: ([f[k] for f in fs], [f[k] for f in fr]) for k in fr[0] if k in fs[0]}
    out: dict[str, Analysis] = {}
    for name, (s, r) in pairs.items():
        if not all(isinstance(t, torch.Tensor) and t.dim() in (3, 4) for t in (*s, *r)):
            continue
        out[name] = analyse(s, r, pictures, serve_fn, ref_fn, use_cv2=use_cv2,
                            variant_samples=max(int(opts.variant_samples), 1), tiny_255=float(opts.tiny_pixel_diff))
    return out


def _collect(analyses: dict[str, Analysis], metrics: dict[str, Any], details: dict[str, Any]) -> list[Finding]:
    findings = []
    for name, analysis in analyses.items():
        prefix = f"{name}." if name else ""
        metrics.update({f"{prefix}{k}": v for k, v in analysis.metrics.items()})
        details[f"{prefix}analysis"] = analysis.details
        for f in analysis.findings:
            if name and f.culprit:
                f.culprit = dataclasses.replace(f.culprit, name=f"{f.culprit.name} (output `{name}`)")
            findings.append(f)
    return findings


def _note_forms(srv_form: str, ref_form: str, samples: Sequence[Any], findings: list[Finding], details: dict[str, Any]) -> None:
    import numpy as np

    fed = f"serving was fed the {_FORMS[srv_form]}, the reference the {_FORMS[ref_form]} (the first form each accepted)"
    details["input_forms"] = fed
    arrays = srv_form == "raw" and isinstance(samples[0], np.ndarray)
    for f in findings:
        if f.kind == "geometry":
            f.hint += f"; note: {fed}" + (": torchvision v2 transforms pass numpy arrays through untouched, so convert them "
                                          "with ToImage() first" if arrays else "")


def _decoding(samples: Sequence[Any], images: Sequence[Any], metrics: dict[str, Any], details: dict[str, Any]) -> None:
    dec = im.decode_difference(samples, images)
    if dec is not None:
        metrics["decode_cv2_vs_pil_mean_abs_255"] = dec["mean_abs_255"]
        details["decoding"] = {**dec, "note": "PIL vs OpenCV decoding of the same JPEG bytes (after BGR->RGB); "
                               "a pipeline pair that decodes differently differs by at least this much"}


def _ordered(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in _FIRST if k in metrics] + [k for k in metrics if k not in _FIRST]
    return {k: metrics[k] for k in keys}


# ---------------------------------------------------------------------------------------------
# Judge and explain


def _verdict(findings: list[Finding], metrics: dict[str, Any], details: dict[str, Any], pixel: float | None,
             opts: CheckOptions, source: str) -> CheckResult:
    n = metrics["samples"]
    top1_frac = metrics.get("top1_changed_frac")
    top1_text = f"top-1 changed on {metrics['top1_changed']}/{n} samples" if top1_frac is not None else "model outputs not compared"
    structural = [f for f in findings if f.structural]
    if structural:
        first = structural[0]
        also = "" if len(findings) < 2 else " (also: " + "; ".join(f.summary for f in findings[1:4]) + ")"
        return CheckResult.failed(f"train/serve skew on {n} {source} samples: {first.summary}; {top1_text}{also}",
                                  culprit=first.culprit, hint=first.hint, metrics=metrics, details=details)
    resize = next((f for f in findings if not f.structural), None)  # resize, or a slight normalisation shift
    shifts = [v for k, v in metrics.items() if k.endswith("scale_shift_255")]
    if shifts:
        pixel = max(pixel or 0.0, *shifts)
    pixel_text = f"{pixel:.3g}/255 mean pixel difference" if pixel is not None else "no pixel comparison"
    noise_only = pixel is not None and pixel <= float(opts.tiny_pixel_diff)
    top1_over = top1_frac is not None and top1_frac > float(opts.max_top1_disagreement)
    if top1_over and not noise_only:
        what = resize.summary if resize else f"serving and reference tensors differ ({pixel_text})"
        return CheckResult.failed(f"{top1_text} (allowed {float(opts.max_top1_disagreement):.0%}): {what}",
                                  culprit=resize.culprit if resize else Culprit.named("preprocess: pixel values", STEP),
                                  hint=resize.hint if resize else "make the serving pipeline match the reference step by step",
                                  metrics=metrics, details=details)
    if resize is not None and pixel is not None and pixel > float(opts.max_pixel_diff):
        return CheckResult.failed(f"{resize.summary}; {top1_text}, but above {float(opts.max_pixel_diff):g}/255 the model sees different images",
                                  culprit=resize.culprit, hint=resize.hint, metrics=metrics, details=details)
    if resize is not None:
        return CheckResult.warned(f"{resize.summary}; {top1_text}", culprit=resize.culprit, hint=resize.hint, metrics=metrics, details=details)
    note = details.get("model", {}).get("top1_uninformative")
    if top1_over:
        note = "top-1 changed although the pixels differ only by resampling noise: those samples' logits are near ties"
    summary = (f"serving matches the reference on {n} {source} samples: {pixel_text} (resampling noise), {top1_text}"
               + (f", {metrics['output.max_abs']:.3g} max output difference" if "output.max_abs" in metrics else ""))
    return CheckResult.passed(summary + (f"; note: {note}" if note else ""), metrics=metrics, details=details)
