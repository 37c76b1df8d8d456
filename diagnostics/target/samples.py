"""Example inputs derived from a Target's samples: a user who gave `samples` and the
`reference_preprocess` that training used has already said what the model eats, so asking for
`example_inputs` (or --input-shape) as well would be a needless exit 2.

The first two samples go through the reference pipeline and their tensors are stacked into one
batch along the target's batch dimension; the target keeps a note that says so.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from ..text import one_line

#: How many samples make the derived batch (two: a batch dimension that is really a batch).
DERIVED_BATCH = 2


def derive_example_inputs(target: Any) -> None:
    """Fill `target.example_inputs` from its samples through `reference_preprocess`, when it has
    none; record what was done (or why it could not be) in `target.setup_notes`."""
    if target.example_inputs is not None or target.samples is None or target.reference_preprocess is None:
        return
    samples = target.samples
    if not (hasattr(samples, "__getitem__") and hasattr(samples, "__len__")):
        target.setup_notes.append("example inputs not derived from samples: samples is a one-shot iterable "
                                  "(give a list to let torch_diagnose build example inputs from it)")
        return
    picked = [samples[i] for i in range(min(DERIVED_BATCH, len(samples)))]
    if not picked:
        return
    why = "example inputs not derived from samples"
    try:
        outputs = [_preprocess(target.reference_preprocess, s) for s in picked]
    except Exception as exc:  # the user's pipeline: say why, leave the inputs unset
        target.setup_notes.append(f"{why}: reference_preprocess raised {one_line(exc)}")
        return
    try:
        batch, how = _batch(outputs, target.batch_dim)
    except Exception as exc:
        target.setup_notes.append(f"{why}: reference_preprocess returned {one_line(exc, with_type=False)}")
        return
    from ..inputs import describe

    target.example_inputs = batch
    target.setup_notes.append(f"example inputs derived from the samples (the target gave no example_inputs): {how} "
                              f"({describe(batch)})")


def _preprocess(fn: Callable[[Any], Any], sample: Any) -> Any:
    """`fn(sample)`; a path or array the pipeline refuses is retried as an RGB PIL image."""
    try:
        return fn(sample)
    except Exception:
        from ..images import load_image

        try:
            image = load_image(sample)
        except Exception:
            image = None
        if image is None or image is sample:
            raise
        return fn(image)


def _as_tensor(value: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):  # token ids without return_tensors
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"a {type(value).__name__}, not a tensor, an array or a dict of them")


def _batch(outputs: list[Any], dim: int) -> tuple[Any, str]:
    """One batch from per-sample outputs (tensors, arrays, or dicts of them, e.g. a processor's
    BatchFeature), and how it was made: stacked along `dim` (a dict's tensors that already have a
    batch of one there are concatenated); the first sample alone when the shapes differ."""
    n = len(outputs)
    if isinstance(outputs[0], Mapping):
        keys = list(outputs[0].keys())
        leaves = {k: [_as_tensor(o[k]) for o in outputs] for k in keys}
        joined = {k: _join(v, dim, batched=True) for k, v in leaves.items()}
        if all(j is not None for j in joined.values()):
            return {k: j[0] for k, j in joined.items()}, _how(n, joined[keys[0]][1])
        return {k: _join(v[:1], dim)[0] for k, v in leaves.items()}, _differ(n)
    tensors = [_as_tensor(o) for o in outputs]
    joined_one = _join(tensors, dim)
    if joined_one is not None:
        return joined_one[0], _how(n, joined_one[1])
    return _join(tensors[:1], dim)[0], _differ(n)  # type: ignore[index]


def _join(tensors: list[Any], dim: int, *, batched: bool = False) -> tuple[Any, str] | None:
    """(batch, "stacked" | "concatenated"), or None when the shapes differ. `batched`: outputs
    that may already carry a batch of one (a processor's dict); a plain tensor is one sample
    (a 1x28x28 grey image is stacked, not concatenated)."""
    import torch

    if any(t.shape != tensors[0].shape for t in tensors):
        return None
    if batched and tensors[0].dim() >= 2 and tensors[0].dim() > dim and tensors[0].shape[dim] == 1:
        return torch.cat(tensors, dim), "concatenated"  # already batched (a processor's output)
    return torch.stack(tensors, dim), "stacked"


def _how(n: int, joined: str) -> str:
    if n == 1:
        return "the first sample through reference_preprocess, as a batch of 1"
    return f"the first {n} samples through reference_preprocess, {joined} into a batch of {n}"


def _differ(n: int) -> str:
    return (f"the first sample through reference_preprocess, alone as a batch of 1 (the first {n} samples' "
            f"tensors differ in shape)")
