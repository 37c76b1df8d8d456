"""Serving and reference tensors through the model: does the skew change what the model says?

Pipeline outputs are collated like the model's example inputs, batched by equal shapes, and the
two sides' outputs compared (output error, top-1 agreement, which samples changed class).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..compare import compare
from ..context import Context
from ..inputs import concat_batch, select_batch
from ..text import one_line
from ..tree import flatten, map_leaves


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


def _example_tensor(ctx: Context) -> torch.Tensor | None:
    example = ctx.target.example_inputs
    if example is None or isinstance(example, torch.Tensor):
        return example
    return next((t for t in flatten(example).values() if isinstance(t, torch.Tensor)), None)


def _collate(outs: Sequence[Any], ctx: Context) -> Any:
    """One batch from per-sample pipeline outputs, in the example input's dtype, on the model's device."""
    ex = _example_tensor(ctx)

    def join(ts: list[torch.Tensor]) -> torch.Tensor:
        b = torch.cat(ts) if ex is not None and ts[0].dim() == ex.dim() and ts[0].shape[0] == 1 else torch.stack(ts)
        if ex is not None and b.is_floating_point() and ex.is_floating_point():
            b = b.to(ex.dtype)
        return b.to(ctx.device)

    if isinstance(outs[0], torch.Tensor):
        return join(list(outs))
    flat = [flatten(o) for o in outs]
    joined = iter([join([f[k] for f in flat]) for k in flat[0]])
    return map_leaves(outs[0], lambda _leaf: next(joined))


def run_model(ctx: Context, outs: Sequence[Any]) -> Any:
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


def model_pass(ctx: Context, srv: list[Any], ref: list[Any], metrics: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """Run both sides through the model; fills `output.*`, `top1_changed*` metrics; returns the note
    kept as details["model"] (`serving_error`/`reference_error` when a side does not run)."""
    note: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for side, tensors in (("reference", ref), ("serving", srv)):
        try:
            outputs[side] = run_model(ctx, tensors)
        except Exception as exc:
            note[f"{side}_error"] = one_line(exc)
            details["model"] = note
            metrics["model_compared"] = False
            return note
    ref_out, srv_out = outputs["reference"], outputs["serving"]
    cmp = compare(srv_out, ref_out)
    metrics["model_compared"] = True
    metrics.update({f"output.{k}": v for k, v in cmp.metrics().items()})
    leaf = next((lf for lf in cmp.tensor_leaves if lf.top1_agreement is not None), None)
    if leaf is not None:
        _top1(flatten(srv_out)[leaf.name], flatten(ref_out)[leaf.name], metrics, note)
    details["model"] = note
    return note


def _top1(a: torch.Tensor, e: torch.Tensor, metrics: dict[str, Any], note: dict[str, Any]) -> None:
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
