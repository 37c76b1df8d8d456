"""Degenerate outputs: all zero, constant, tied, empty or tiny. Comparisons of such outputs mean little
(SQNR "inf", top-1 "100%", every export "exact"), so the run finds them once and every verdict that
relies on comparing outputs says so. Random weights and zero-initialised heads are what users try first."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .tree import iter_leaves

#: Scores (max exactly 1, none negative) this close to 1 are "saturated" when they are half of them or more: a
#: random-weight Mask R-CNN gives 100 of 100 within 5e-4 of 1, packed at fp32 resolution, so thread-count
#: rounding reorders them; a trained detector's scores spread over (0.05, 1].
SATURATED_GAP = 1e-3

#: Outputs whose RMS is below this are "tiny": random-weight MobileNet/EfficientNet logits sit at 1e-9..1e-14.
TINY_RMS = 1e-5

_CAUSES = {
    "zero": "a zero-initialised head or untrained weights (torchvision's ViT zero-initialises its head)",
    "constant": "the output does not depend on the input (untrained weights, or a constant head)",
    "tied": "every score in a row is equal (random weights): top-k and argmax comparisons say nothing",
    "empty": "nothing survived (a score threshold filtering every detection with random weights): lower the threshold or load trained weights",
    "tiny": "random weights shrink activations layer by layer: errors of the same tiny size pass a fixed tolerance",
    "saturated": ("scores saturated at 1 (random weights give huge logits): which of these near-tied items top-k and NMS "
                  "keep, and in what order, is arbitrary"),
}


#: Degeneracies under which a comparison's failure proves nothing: equal scores make any order (and any
#: NMS choice) as right as another. A zero or tiny output that another variant changes is a real difference.
ORDER_ARBITRARY = frozenset({"tied", "constant", "saturated"})


@dataclass(frozen=True)
class Degenerate:
    """One output leaf that cannot support a comparison."""

    leaf: str
    kind: str  # zero | constant | tied | saturated | empty | tiny
    detail: str  # the numbers

    @property
    def cause(self) -> str:
        return _CAUSES[self.kind]

    def describe(self) -> str:
        return f"`{self.leaf}` {self.detail}"


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def classify(name: str, t: torch.Tensor) -> Degenerate | None:
    """The degeneracy of one tensor leaf, or None when it can support a comparison."""
    if t.numel() == 0:
        return Degenerate(name, "empty", f"is empty ({_shape(t)})")
    if not t.is_floating_point() and not t.is_complex():
        return None
    values = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(values).all():
        return None  # NaN/Inf outputs are reported by the comparisons themselves
    if not values.any():
        return Degenerate(name, "zero", f"is all zero ({_shape(t)})")
    lo, hi = float(values.min()), float(values.max())
    rms = float(values.pow(2).mean().sqrt())
    if values.numel() > 1 and hi - lo <= 1e-12 * max(abs(lo), abs(hi)):
        return Degenerate(name, "constant", f"is constant ({lo:.4g} everywhere, {_shape(t)})")
    if values.dim() >= 2 and values.shape[-1] > 1:
        spread = (values.amax(-1) - values.amin(-1)).abs()
        if bool((spread <= 1e-9 * max(rms, 1e-30)).all()):
            return Degenerate(name, "tied", f"has every score of a row equal ({_shape(t)})")
    saturated = int((values >= 1.0 - SATURATED_GAP).sum()) if hi == 1.0 and lo >= 0.0 else 0
    if values.numel() >= 4 and 2 * saturated >= values.numel():
        exact = int((values == 1.0).sum())
        return Degenerate(name, "saturated", f"has {saturated} of {values.numel()} scores within {SATURATED_GAP:g} of 1, "
                                             f"{exact} exactly 1 ({_shape(t)})")
    if rms < TINY_RMS:
        return Degenerate(name, "tiny", f"is tiny (RMS {rms:.2e}, max |x| {max(abs(lo), abs(hi)):.2e})")
    return None


def find_degenerate(outputs: Any) -> list[Degenerate]:
    """Every degenerate tensor leaf of a model's outputs. The same field of every item of a list
    (`[0].boxes`, `[1].boxes` of a batch of detections) is one field: degenerate only when it is
    degenerate in every item."""
    groups: dict[str, list[Degenerate | None]] = {}
    for name, leaf in iter_leaves(outputs):
        if isinstance(leaf, torch.Tensor):
            groups.setdefault(_strip_index(name), []).append(classify(name, leaf))
    found = []
    for field, hits in groups.items():
        if not hits or any(h is None for h in hits):
            continue
        first = hits[0]
        assert first is not None
        found.append(first if len(hits) == 1 else Degenerate(field, first.kind, first.detail))
    return found


def _strip_index(name: str) -> str:
    """`[0].boxes` and `[1].boxes` are the same field of a batch of detections: `[*].boxes`."""
    import re

    return re.sub(r"^\[\d+\]", "[*]", name)


def summarize(found: list[Degenerate]) -> str:
    """One sentence for a verdict: what is degenerate, with the numbers and the likely cause."""
    if not found:
        return ""
    what = "; ".join(d.describe() for d in found[:4]) + (f"; +{len(found) - 4} more" if len(found) > 4 else "")
    causes = "; ".join(dict.fromkeys(d.cause for d in found))
    return f"degenerate outputs: {what}. Likely cause: {causes}"


#: The Context cache key of the run's degenerate outputs (found once, from the fp32 reference).
CACHE_KEY = "degenerate"


def degenerate_outputs(ctx: Any) -> list[Degenerate]:
    """The degenerate leaves of the run's reference outputs, found once per run. Never runs the model:
    before any check computed the reference there is nothing to say ([])."""
    if not ctx.has_cached("reference"):
        return []
    return ctx.cached(CACHE_KEY, lambda: find_degenerate(ctx.reference))


def not_localised(ctx: Any) -> str:
    """Why a difference is not localised, or "" to localise it: on outputs whose order is arbitrary
    (tied, constant, saturated scores) a difference is a tie broken another way, so localising it
    (minutes on a detector) proves nothing; the verdict becomes "not judged reliably" (`mark`)."""
    arbitrary = [d for d in degenerate_outputs(ctx) if d.kind in ORDER_ARBITRARY]
    return f"not localised: the order of {short(arbitrary)} is arbitrary" if arbitrary else ""


def short(found: list[Degenerate]) -> str:
    """The numbers alone, for a metric: "`logits` is all zero (2x4)"."""
    return "; ".join(d.describe() for d in found)


#: `details` key a check sets when its failure is a raise, not a comparison of output values.
RAISED = "raised_not_compared"


#: `details` key a check sets when its verdict still rests on comparing values although an export failed
#: (the trace fails, and whether the TorchScript route works is judged by comparing torch.jit.script's outputs).
COMPARED = "judged_by_comparison"


def compared_values(result: Any) -> bool:
    """Whether a failure came from comparing output values: an export that fails or a model that raises
    is a fault whatever the outputs are, so tied scores never excuse it."""
    if result.details.get(COMPARED):
        return True
    return not (result.metrics.get("export_failed") or result.details.get(RAISED))


def mark(result: Any, found: list[Degenerate]) -> Any:
    """A verdict that compared degenerate outputs says so: pass becomes warn and the summary gets
    " — but degenerate outputs: ..."; a warning gets the same note; a failure keeps its status with
    the note in its hint (it found a real difference even so)."""
    if not found:
        return result
    note = summarize(found)
    result.metrics["degenerate_outputs"] = short(found)
    result.details["degenerate_outputs"] = [{"leaf": d.leaf, "kind": d.kind, "detail": d.detail, "cause": d.cause} for d in found]
    if result.status in ("pass", "warn"):
        result.status = "warn"
        result.summary = f"{result.summary} — but {note}"
        advice = ("these comparisons say little on such outputs: diagnose the model with trained weights (or inputs "
                  "that give varied outputs) before trusting this verdict")
        result.hint = f"{result.hint}; {advice}" if result.hint else advice
    elif result.status == "fail" and any(d.kind in ORDER_ARBITRARY for d in found) and compared_values(result):
        # Tied or constant scores leave the order (and NMS's choice) of what follows arbitrary: a difference
        # there is the tie broken another way, not a fault the comparison can prove.
        result.details["measured"] = result.summary
        result.status = "warn"
        result.summary = f"not judged reliably: {note}; measured: {result.summary}"
        result.hint = ("tied or constant outputs make which item comes first arbitrary, so any two runs may differ: "
                       "diagnose the model with trained weights (or inputs that give varied outputs)"
                       + (f"; {result.hint}" if result.hint else ""))
    elif result.status == "fail":
        result.hint = f"{result.hint + '; ' if result.hint else ''}note: {note}"
    return result
