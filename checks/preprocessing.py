"""Preprocessing family: does serving feed the model what training did?

Checks here: `preprocessing` (serving vs reference pipeline on the same samples, compared in
tensor space and through the model, with the cause of any skew named) and `input_audit` (what
the example inputs alone say: range, per-channel statistics, layout). The diagnosis itself lives
in `diagnostics/skew.py`; images, sample loading and resize re-implementations in
`diagnostics/images.py`.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Sequence

import torch

from torch_diagnose import images as im
from torch_diagnose import skew
from torch_diagnose.compare import compare
from torch_diagnose.context import Context, num_threads
from torch_diagnose.inputs import concat_batch, select_batch
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import FAIL, PASS, WARN, CheckResult, SkipCheck
from torch_diagnose.tree import flatten

#: Default share of samples whose top-1 class may change before the check fails (1 in 10).
MAX_TOP1_DISAGREEMENT = 0.1
#: Mean |serving - reference| in 0..255 pixel units at or below which a difference is resampling noise
#: (PIL vs torchvision-with-antialias differ by ~0.002; bicubic vs bilinear by ~0.8 on a 640->224 downscale).
TINY_PIXEL_DIFF = 0.5
#: Above this mean difference (0..255 units) a resize mismatch fails even if top-1 survived on these samples.
MAX_PIXEL_DIFF = 2.0


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
    temp = im.TempFiles()
    try:
        ref_run = im.run_pipeline(ref_fn, samples, images, temp)
        if ref_run.error:
            raise RuntimeError(f"reference_preprocess failed: {ref_run.error}")
        srv_run = im.run_pipeline(serve_fn, samples, images, temp)
        metrics.update({"serving_input": srv_run.form, "reference_input": ref_run.form})
        if srv_run.error:
            loc_text, loc = skew.where(serve_fn, user=True)
            return CheckResult(status=FAIL, summary=f"the serving pipeline fails on {source} samples: {srv_run.error}",
                               culprit=f"{loc_text}: raises", location=loc, metrics=metrics,
                               hint="make the serving pipeline accept the same inputs as the reference (PIL images, arrays or paths)")
        early = _random_reference(ref_fn, lambda: _form(samples, images, ref_run.form, 0, temp), metrics)
        if early is not None:
            return early
        findings = _behaviour(serve_fn, lambda: _form(samples, images, srv_run.form, 0, temp), images, metrics, details)
    finally:
        temp.close()

    bad = _non_tensor(srv_run.outputs)
    if bad:
        loc_text, loc = skew.where(serve_fn, user=True)
        return CheckResult(status=FAIL, summary=f"the serving pipeline returns {bad}, not a tensor", culprit=f"{loc_text}: returns {bad}",
                           location=loc, metrics=metrics, hint="end the serving pipeline with ToTensor() or ToImage() + ToDtype(torch.float32, scale=True)")
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
    model_note = _model_pass(ctx, srv_outs, ref_outs, metrics, details)
    if model_note.get("serving_error") and not model_note.get("reference_error"):
        findings.append(skew.Finding("model", f"the model fails on the serving tensors: {model_note['serving_error']}",
                                     "make serving produce the tensors the model was trained on", culprit="preprocess: model input"))
    findings.sort(key=lambda f: (not f.structural, skew.PRIORITY.index(f.kind) if f.kind in skew.PRIORITY else 99))
    details["findings"] = [f.row() for f in findings]
    metrics["diagnosis"] = "; ".join(f.kind for f in findings) or "none"
    return _verdict(findings, _ordered(metrics), details, pixel, opts, source)


# ---------------------------------------------------------------------------------------------


def _pipelines(ctx: Context) -> tuple[Any, Any]:
    serve_fn, ref_fn = ctx.target.preprocess, ctx.target.reference_preprocess
    if serve_fn is None and ref_fn is None:
        raise SkipCheck("no preprocessing pipelines given (Target.preprocess and reference_preprocess); "
                        "the input_audit check judges the example inputs alone")
    if serve_fn is None or ref_fn is None:
        missing = "preprocess (serving)" if serve_fn is None else "reference_preprocess (training/evaluation)"
        raise SkipCheck(f"only one pipeline given: set Target.{missing.split()[0]} too ({missing}) to compare the two")
    return serve_fn, ref_fn


def _random_reference(ref_fn: Any, make_input: Any, metrics: dict[str, Any]) -> CheckResult | None:
    """A random reference (training augmentation) cannot be compared against: warn and stop."""
    rep = im.repeatability(ref_fn, make_input)
    if rep.repeatable:
        return None
    where = _step_where(ref_fn, rep.step, "reference_preprocess")
    return CheckResult(status=WARN, summary=f"the reference pipeline is random ({where}): two calls on the same sample differ "
                       f"by up to {rep.max_diff:.3g}, so it cannot serve as the reference",
                       culprit=f"{where}: random", metrics=metrics,
                       hint="give the evaluation pipeline (Resize + CenterCrop + ToTensor + Normalize) as reference_preprocess, "
                       "not the training augmentation")


def _behaviour(serve_fn: Any, make_input: Any, images: list[Any], metrics: dict[str, Any], details: dict[str, Any]) -> list[skew.Finding]:
    """Findings about the serving pipeline on its own: random steps, batch-dependent steps."""
    findings: list[skew.Finding] = []
    steps = im.pipeline_steps(serve_fn)

    def step_loc(step: int | None) -> str | None:
        return steps[step].location if step is not None and step < len(steps) else im.source_location(serve_fn)

    rep = im.repeatability(serve_fn, make_input)
    if not rep.repeatable:
        findings.append(skew.Finding("random", f"the serving pipeline is random: two calls on the same sample differ by up to {rep.max_diff:.3g}",
                                     "remove training augmentation (RandomResizedCrop, RandomCrop, RandomHorizontalFlip, ColorJitter ...) "
                                     "from serving: use a fixed Resize + CenterCrop",
                                     culprit=f"{_step_where(serve_fn, rep.step)}: random", location=step_loc(rep.step)))
    if not rep.repeatable:  # a random pipeline differs between any two calls: batching says nothing more
        metrics["serving_batch_consistent"] = "n/a"
        return findings
    batch = im.batch_consistency(serve_fn, images)
    metrics["serving_batch_consistent"] = batch.consistent if batch.applicable else "n/a"
    details["batch_consistency"] = {"applicable": batch.applicable, "consistent": batch.consistent, "max_diff": batch.max_diff, "note": batch.note}
    if batch.applicable and not batch.consistent:
        findings.append(skew.Finding("batch", "the serving pipeline gives different tensors for a batch than per sample "
                                     f"(up to {batch.max_diff:.3g} apart)",
                                     "compute statistics per image (dims -3, -2, -1), not over the whole batch, or apply the "
                                     "pipeline per sample", culprit=f"{_step_where(serve_fn, batch.step)}: batch-dependent",
                                     location=step_loc(batch.step)))
    return findings


def _collect(analyses: dict[str, skew.Analysis], metrics: dict[str, Any], details: dict[str, Any]) -> list[skew.Finding]:
    findings = []
    for name, analysis in analyses.items():
        prefix = f"{name}." if name else ""
        metrics.update({f"{prefix}{k}": v for k, v in analysis.metrics.items()})
        details[f"{prefix}analysis"] = analysis.details
        for f in analysis.findings:
            if name and f.culprit:
                f.culprit = f"{f.culprit} (output `{name}`)"
            findings.append(f)
    return findings


def _note_forms(srv_form: str, ref_form: str, samples: Sequence[Any], findings: list[skew.Finding], details: dict[str, Any]) -> None:
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


_FORMS = {"raw": "sample as given", "pil": "sample as a PIL image", "array": "sample as an HWC uint8 array", "path": "sample as a file path"}

#: Metrics shown first (explain() and terminal reports show the first few).
_FIRST = ("diagnosis", "pixel_mean_abs_255", "top1_changed", "top1_changed_frac", "output.max_abs", "output.max_rms_rel",
          "serving_normalisation", "reference_normalisation", "scale_diagnosis", "reference_resize", "samples", "samples_source",
          "serving_shape", "reference_shape", "serving_dtype", "reference_dtype")


def _ordered(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in _FIRST if k in metrics] + [k for k in metrics if k not in _FIRST]
    return {k: metrics[k] for k in keys}


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


_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _form(samples: Sequence[Any], images: Sequence[Any], form: str, index: int, temp: Any) -> Any:
    forms = dict(im.sample_forms(samples[index], index, images, temp))
    return forms[form]()


def _step_where(fn: Any, step: int | None, label: str = "preprocess") -> str:
    steps = im.pipeline_steps(fn)
    if step is not None and len(steps) > 1:
        return f"{label}[{step}] {steps[step].text}"
    return skew.where(fn)[0].replace("preprocess", label, 1)


def _non_tensor(outs: Sequence[Any]) -> str | None:
    import numpy as np

    for o in outs:
        leaves = flatten(o)
        for leaf in leaves.values():
            if not isinstance(leaf, (torch.Tensor, np.ndarray)):
                return f"a {type(leaf).__module__.split('.')[0]}.{type(leaf).__name__}"
    return None


def _tensorize(o: Any) -> Any:
    import numpy as np

    from torch_diagnose.tree import map_leaves

    return map_leaves(o, lambda t: torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t)


def _analyse_leaves(srv: list[Any], ref: list[Any], pictures: list[im.Picture], serve_fn: Any, ref_fn: Any,
                    use_cv2: bool, opts: CheckOptions) -> dict[str, skew.Analysis]:
    """One analysis per image-like output leaf (a plain tensor output is the leaf named "")."""
    if isinstance(srv[0], torch.Tensor) and isinstance(ref[0], torch.Tensor):
        pairs = {"": ([s for s in srv], [r for r in ref])}
    else:
        fs, fr = [flatten(o) for o in srv], [flatten(o) for o in ref]
        pairs = {k: ([f[k] for f in fs], [f[k] for f in fr]) for k in fr[0] if k in fs[0]}
    out: dict[str, skew.Analysis] = {}
    for name, (s, r) in pairs.items():
        if not all(isinstance(t, torch.Tensor) and t.dim() in (3, 4) for t in (*s, *r)):
            continue
        out[name] = skew.analyse(s, r, pictures, serve_fn, ref_fn, use_cv2=use_cv2,
                                 variant_samples=max(int(opts.variant_samples), 1), tiny_255=float(opts.tiny_pixel_diff))
    return out


# ---------------------------------------------------------------------------------------------
# Through the model


def _wrap(ctx: Context, batch: Any) -> Any:
    """Shape a collated pipeline output like the model's example inputs."""
    example = ctx.target.example_inputs
    if isinstance(batch, (dict, tuple)) or isinstance(example, torch.Tensor) or example is None:
        return batch
    if isinstance(example, tuple) and len(example) == 1:
        return (batch,)
    if isinstance(example, dict) and len(example) == 1:
        return {next(iter(example)): batch}
    raise TypeError("the model takes several inputs but the pipelines return one tensor")


def _collate(outs: Sequence[Any], ctx: Context) -> Any:
    example = ctx.target.example_inputs
    ex = example if isinstance(example, torch.Tensor) else next((t for t in flatten(example).values() if isinstance(t, torch.Tensor)), None) if example is not None else None

    def join(ts: list[torch.Tensor]) -> torch.Tensor:
        if ex is not None and ts[0].dim() == ex.dim() and ts[0].shape[0] == 1:
            b = torch.cat(ts)
        else:
            b = torch.stack(ts)
        if ex is not None and b.is_floating_point() and ex.is_floating_point():
            b = b.to(ex.dtype)
        return b.to(ctx.device)

    if isinstance(outs[0], torch.Tensor):
        return join(list(outs))
    flat = [flatten(o) for o in outs]
    joined = {k: join([f[k] for f in flat]) for k in flat[0]}
    from torch_diagnose.tree import map_leaves

    it = iter(joined.values())
    return map_leaves(outs[0], lambda _leaf: next(it))


def _run_model(ctx: Context, outs: Sequence[Any]) -> Any:
    """Model outputs for every sample, in sample order, batched by equal input shapes."""
    groups: dict[str, list[int]] = {}
    for i, o in enumerate(outs):
        key = ";".join(f"{k}:{tuple(v.shape)}" for k, v in flatten(o).items() if isinstance(v, torch.Tensor))
        groups.setdefault(key, []).append(i)
    chunk = max(int(ctx.options.batch_size or 16), 1)
    per_sample: dict[int, Any] = {}
    for idx in groups.values():
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            result = ctx.forward(inputs=_wrap(ctx, _collate([outs[i] for i in part], ctx)))
            for j, i in enumerate(part):
                per_sample[i] = select_batch(result, j) if len(part) > 1 else result
    return concat_batch([per_sample[i] for i in range(len(outs))])


def _model_pass(ctx: Context, srv: list[Any], ref: list[Any], metrics: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    note: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for side, tensors in (("reference", ref), ("serving", srv)):
        try:
            outputs[side] = _run_model(ctx, tensors)
        except Exception as exc:
            note[f"{side}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            details["model"] = note
            metrics["model_compared"] = False
            return note
    ref_out, srv_out = outputs["reference"], outputs["serving"]
    cmp = compare(srv_out, ref_out)
    metrics["model_compared"] = True
    metrics.update({f"output.{k}": v for k, v in cmp.metrics().items()})
    leaf = next((lf for lf in cmp.tensor_leaves if lf.top1_agreement is not None), None)
    if leaf is not None:
        a, e = flatten(srv_out)[leaf.name], flatten(ref_out)[leaf.name]
        ta, te = a.reshape(-1, a.shape[-1]).argmax(-1).cpu(), e.reshape(-1, e.shape[-1]).argmax(-1).cpu()
        flips = [int(i) for i in torch.nonzero(ta != te).flatten()]
        metrics["top1_changed"] = len(flips)
        metrics["top1_changed_frac"] = len(flips) / max(len(ta), 1)
        classes = len(set(te.tolist()))
        metrics["reference_top1_classes"] = classes
        note["top1_changed_samples"] = flips
        if classes == 1 and len(te) >= 4:
            note["top1_uninformative"] = ("the model predicts the same class for every sample (random weights?): top-1 agreement "
                                          "says little; the pixel and output errors still do")
    details["model"] = note
    return note


# ---------------------------------------------------------------------------------------------


def _verdict(findings: list[skew.Finding], metrics: dict[str, Any], details: dict[str, Any], pixel: float | None,
             opts: CheckOptions, source: str) -> CheckResult:
    n = metrics["samples"]
    top1_frac = metrics.get("top1_changed_frac")
    top1_text = f"top-1 changed on {metrics['top1_changed']}/{n} samples" if top1_frac is not None else "model outputs not compared"
    structural = [f for f in findings if f.structural]
    also = lambda fs: "" if len(fs) < 2 else " (also: " + "; ".join(f.summary for f in fs[1:4]) + ")"  # noqa: E731
    if structural:
        first = structural[0]
        return CheckResult(status=FAIL, summary=f"train/serve skew on {n} {source} samples: {first.summary}; {top1_text}{also(findings)}",
                           culprit=first.culprit, hint=first.hint, location=first.location, metrics=metrics, details=details)
    resize = next((f for f in findings if not f.structural), None)  # resize, or a slight normalisation shift
    shifts = [v for k, v in metrics.items() if k.endswith("scale_shift_255")]
    if shifts:
        pixel = max(pixel or 0.0, *shifts)
    pixel_text = f"{pixel:.3g}/255 mean pixel difference" if pixel is not None else "no pixel comparison"
    noise_only = pixel is not None and pixel <= float(opts.tiny_pixel_diff)
    if top1_frac is not None and top1_frac > float(opts.max_top1_disagreement) and not noise_only:
        what = resize.summary if resize else f"serving and reference tensors differ ({pixel_text})"
        return CheckResult(status=FAIL, summary=f"{top1_text} (allowed {float(opts.max_top1_disagreement):.0%}): {what}",
                           culprit=resize.culprit if resize else "preprocess: pixel values", location=resize.location if resize else None,
                           hint=resize.hint if resize else "make the serving pipeline match the reference step by step",
                           metrics=metrics, details=details)
    if resize is not None and pixel is not None and pixel > float(opts.max_pixel_diff):
        return CheckResult(status=FAIL, summary=f"{resize.summary}; {top1_text}, but above {float(opts.max_pixel_diff):g}/255 the model sees different images",
                           culprit=resize.culprit, hint=resize.hint, location=resize.location, metrics=metrics, details=details)
    if resize is not None:
        return CheckResult(status=WARN, summary=f"{resize.summary}; {top1_text}", culprit=resize.culprit, hint=resize.hint,
                           location=resize.location, metrics=metrics, details=details)
    note = details.get("model", {}).get("top1_uninformative")
    if top1_frac is not None and top1_frac > float(opts.max_top1_disagreement):
        note = "top-1 changed although the pixels differ only by resampling noise: those samples' logits are near ties"
    summary = (f"serving matches the reference on {n} {source} samples: {pixel_text} (resampling noise), {top1_text}"
               + (f", {metrics['output.max_abs']:.3g} max output difference" if "output.max_abs" in metrics else ""))
    return CheckResult(status=PASS, summary=summary + (f"; note: {note}" if note else ""), metrics=metrics, details=details)


# ---------------------------------------------------------------------------------------------


@register("input_audit", family="preprocessing", title="example inputs look like what an image model expects", order=30)
def input_audit(ctx: Context, opts: CheckOptions) -> CheckResult:
    """From the example inputs alone: value range, per-channel statistics and layout of image-like inputs.

    Warns when they look un-normalised (uint8, 0..255, or 0..1 without mean/std for a model whose
    first convolution takes 3 channels) or channel-swapped (raw channel means that rise from red
    to blue, the mirror image of photos'; weak evidence, said so). Skips when no input looks like
    a batch of images, and when the inputs look like random noise (neighbouring pixels
    uncorrelated): such inputs say nothing about preprocessing.
    """
    leaves = {k: v for k, v in flatten(ctx.inputs, root="x").items() if isinstance(v, torch.Tensor)}
    conv = next((m for m in ctx.model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    imagenet_style = conv is not None and conv.in_channels == 3
    audits = [a for a in (skew.audit_tensor(k, t, imagenet_style) for k, t in leaves.items()) if a is not None]
    if not audits:
        raise SkipCheck("no input looks like a batch of images (4-D with 1 or 3 channels): nothing to audit")
    metrics: dict[str, Any] = {"imagenet_style_model": imagenet_style}
    for a in audits:
        p = f"{a.name}." if len(audits) > 1 else ""
        metrics.update({f"{p}layout": a.layout, f"{p}dtype": a.dtype, f"{p}kind": a.kind, f"{p}min": min(a.stats["min"]),
                        f"{p}max": max(a.stats["max"]), f"{p}neighbour_correlation": a.smoothness})
        for c, (m, s) in enumerate(zip(a.stats["mean"], a.stats["std"])):
            metrics[f"{p}ch{c}_mean"], metrics[f"{p}ch{c}_std"] = m, s
    details = {"audits": [{"input": a.name, "layout": a.layout, "dtype": a.dtype, "shape": list(a.shape), "kind": a.kind,
                           "stats": a.stats, "raw_channel_means": a.raw_means, "outside_imagenet_range": a.outside_box} for a in audits]}
    for a in audits:
        if a.layout == "NHWC" and imagenet_style:
            try:
                ctx.reference  # noqa: B018 - the shared fp32 reference run: does the model take this layout?
                metrics["model_accepts_layout"] = True
            except Exception as exc:
                metrics["model_accepts_layout"] = False
                a.warnings.insert(0, (f"`{a.name}` is channels-last (NHWC {tuple(a.shape)}) and the model fails on it "
                                      f"({type(exc).__name__}): its first Conv2d takes channels first",
                                      "permute to NCHW: x.permute(0, 3, 1, 2) (ToTensor/ToImage do it per image)"))
    real = [a for a in audits if a.kind != "noise"]
    if not real:
        a = audits[0]
        raise SkipCheck(f"the example input `{a.name}` looks like random noise, not images (neighbouring-pixel correlation "
                        f"{a.smoothness:.2f}): it says nothing about preprocessing; give real images, or samples with "
                        "preprocess/reference_preprocess for the preprocessing check")
    warned = [(a, w) for a in real for w in a.warnings]
    if warned:
        a, (summary, hint) = warned[0]
        more = "" if len(warned) < 2 else " (also: " + "; ".join(w[0] for _, w in warned[1:3]) + ")"
        return CheckResult(status=WARN, summary=summary + more, culprit=f"input `{a.name}` ({a.layout}, {a.dtype})", hint=hint,
                           metrics=metrics, details=details)
    a = real[0]
    desc = {"normalised": "mean/std-normalised images", "0-1": "images scaled to 0..1", "other": "image-like values"}.get(a.kind, a.kind)
    return CheckResult(status=PASS, summary=f"`{a.name}` looks like {desc} ({a.layout}, {a.dtype}, range {min(a.stats['min']):.3g}..{max(a.stats['max']):.3g}, "
                       f"channel means {skew._fmt(a.stats['mean'])})", metrics=metrics, details=details)
