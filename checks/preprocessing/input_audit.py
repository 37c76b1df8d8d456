"""`input_audit`: what the example inputs alone say about their preprocessing.

Measure: range, per-channel statistics and layout of every image-like input (`preprocess.audit`).
Judge: un-normalised, channel-swapped or channels-last inputs the model rejects warn; inputs that
look like random noise say nothing and skip. Explain: the input and what to change.
"""
from __future__ import annotations

from typing import Any

import torch

from torch_diagnose.context import Context
from torch_diagnose.locate.culprit import INPUT, Culprit
from torch_diagnose.preprocess.audit import Audit, audit_tensor
from torch_diagnose.preprocess.scale import fmt_values
from torch_diagnose.registry import CheckOptions, register
from torch_diagnose.results import CheckResult, SkipCheck
from torch_diagnose.tree import flatten

_KINDS = {"normalised": "mean/std-normalised images", "0-1": "images scaled to 0..1", "other": "image-like values"}


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
    audits = [a for a in (audit_tensor(k, t, imagenet_style) for k, t in leaves.items()) if a is not None]
    if not audits:
        raise SkipCheck("no input looks like a batch of images (4-D with 1 or 3 channels): nothing to audit")
    metrics: dict[str, Any] = {"imagenet_style_model": imagenet_style}
    for a in audits:
        metrics.update(a.metrics(f"{a.name}." if len(audits) > 1 else ""))
    details = {"audits": [a.row() for a in audits]}
    if imagenet_style:
        _check_layout(ctx, audits, metrics)
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
        return CheckResult.warned(summary + more, culprit=Culprit.named(f"input `{a.name}` ({a.layout}, {a.dtype})", INPUT),
                                  hint=hint, metrics=metrics, details=details)
    a = real[0]
    lo, hi = a.span
    return CheckResult.passed(f"`{a.name}` looks like {_KINDS.get(a.kind, a.kind)} ({a.layout}, {a.dtype}, range {lo:.3g}..{hi:.3g}, "
                              f"channel means {fmt_values(a.stats['mean'])})", metrics=metrics, details=details)


def _check_layout(ctx: Context, audits: list[Audit], metrics: dict[str, Any]) -> None:
    """A channels-last input to a model whose first Conv2d takes 3 channels: does the model run on it?"""
    for a in audits:
        if a.layout != "NHWC":
            continue
        try:
            ctx.reference  # noqa: B018 - the shared fp32 reference run: does the model take this layout?
            metrics["model_accepts_layout"] = True
        except Exception as exc:
            metrics["model_accepts_layout"] = False
            a.warnings.insert(0, (f"`{a.name}` is channels-last (NHWC {tuple(a.shape)}) and the model fails on it "
                                  f"({type(exc).__name__}): its first Conv2d takes channels first",
                                  "permute to NCHW: x.permute(0, 3, 1, 2) (ToTensor/ToImage do it per image)"))
