"""Inputs at the candidate's sizes: a deployment file is often exported at sizes other than the
reference's example (batch 1, a fixed 224x224), and feeding it the example would report a
"difference" that is only a shape the file never promised to take."""
from __future__ import annotations

import dataclasses

import torch

from ..context import Context
from ..export.cases import named_leaves, resize
from ..inputs import input_names
from ..locate.code import raise_site
from ..locate.culprit import Culprit
from ..results import CheckResult
from ..text import one_line
from .candidate import Candidate, static_dims


def fit_to_candidate(ctx: Context, cand: Candidate) -> tuple[Context, str]:
    """A Context whose example inputs are cut or tiled (token ids and masks stay valid) to every size
    the candidate fixes where the example differs, and a note saying so; `ctx` itself when none differs.
    The new Context shares the run's progress, shared-work clock and notes."""
    example = ctx.target.example_inputs
    names = input_names(example, ctx.model)
    leaves = named_leaves(example, names)
    changes = {(leaf, dim): size for (leaf, dim), size in static_dims(cand, list(leaves)).items()
               if isinstance(leaves.get(leaf), torch.Tensor) and dim < leaves[leaf].dim() and leaves[leaf].shape[dim] != size}
    if not changes:
        return ctx, ""
    fitted = resize(example, names, changes)
    sub = Context(target=dataclasses.replace(ctx.target, example_inputs=fitted), options=ctx.options,
                  device=ctx.device, notes=ctx.notes)
    sub.progress, sub.shared_work = ctx.progress, ctx.shared_work
    said = ", ".join(f"`{leaf}` dim {dim} {'cut' if size < leaves[leaf].shape[dim] else 'tiled'} from "
                     f"{leaves[leaf].shape[dim]} to {size}" for (leaf, dim), size in sorted(changes.items()))
    return sub, f"the example's {said} to match the candidate"


def reference_refuses(fitted: Context, note: str) -> CheckResult | None:
    """A failure when the reference cannot run at the sizes the candidate fixes: the two do not take
    the same inputs, so the file was exported from a model configured otherwise (None when it runs)."""
    if not note:
        return None
    try:
        fitted.reference
    except Exception as exc:
        frame = raise_site(exc, allow_torch=False)
        where = f" at {frame.location}" if frame is not None else ""
        return CheckResult.failed(
            f"the reference rejects inputs at the candidate's sizes ({note}): {one_line(exc)}{where}",
            culprit=Culprit.at(frame, "the candidate's input sizes") if frame is not None else None,
            hint="the candidate was exported from a model configured for other sizes: build the reference the same way "
                 "(image size, sequence length) or compare against the artifact exported from this reference",
            details={"candidate": {"fitted": note}})
    return None
