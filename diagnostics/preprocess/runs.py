"""Running preprocessing pipelines on samples: which input form a pipeline accepts (the sample as
given, a PIL image, an HWC uint8 array, a file path), whether it is repeatable (no random step),
and whether a batch gives what the samples give one by one. The step to blame is found by
running the pipeline's steps one at a time.
"""
from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..images import is_path, to_uint8_chw
from ..tree import flatten
from .steps import pipeline_steps


@dataclass
class PipelineRun:
    """What one pipeline produced on every sample (outputs in sample order) and how it was fed."""

    outputs: list[Any]
    form: str  # "raw", "pil", "array" or "path": what the pipeline accepted
    error: str | None = None


class TempFiles:
    """PNG copies of in-memory samples, for pipelines that only accept paths."""

    def __init__(self) -> None:
        self.dir: tempfile.TemporaryDirectory[str] | None = None
        self.paths: dict[int, str] = {}

    def path(self, index: int, img: Any) -> str:
        if self.dir is None:
            self.dir = tempfile.TemporaryDirectory(prefix="torch-diagnose-samples-")
        if index not in self.paths:
            p = os.path.join(self.dir.name, f"sample_{index}.png")
            img.save(p)
            self.paths[index] = p
        return self.paths[index]

    def close(self) -> None:
        if self.dir is not None:
            self.dir.cleanup()


def sample_forms(sample: Any, index: int, images: Sequence[Any], temp: TempFiles) -> list[tuple[str, Callable[[], Any]]]:
    forms: list[tuple[str, Callable[[], Any]]] = [("raw", lambda: sample)]
    from PIL import Image

    if not isinstance(sample, Image.Image):
        forms.append(("pil", lambda: images[index]))
    if not isinstance(sample, np.ndarray):
        forms.append(("array", lambda: np.asarray(images[index]).copy()))
    if not is_path(sample):
        forms.append(("path", lambda: temp.path(index, images[index])))
    return forms


def form_input(samples: Sequence[Any], images: Sequence[Any], form: str, index: int, temp: TempFiles) -> Any:
    """Sample `index` in the form a pipeline was found to accept."""
    return dict(sample_forms(samples[index], index, images, temp))[form]()


def run_pipeline(fn: Callable[[Any], Any], samples: Sequence[Any], images: Sequence[Any], temp: TempFiles | None = None) -> PipelineRun:
    """Apply `fn` to every sample; find once which form it accepts (raw, PIL, HWC array, path).

    The first form that works on sample 0 is used for all samples, so both pipelines see the
    same content. An exception on a later sample is reported with the sample index.
    """
    temp = temp or TempFiles()
    errors: list[str] = []
    chosen: str | None = None
    first: Any = None
    for name, make in sample_forms(samples[0], 0, images, temp):
        try:
            first = fn(make())
            chosen = name
            break
        except Exception as exc:  # try the next form
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    if chosen is None:
        return PipelineRun([], "none", "the pipeline raised on every input form (" + "; ".join(errors) + ")")
    outputs = [first]
    for i in range(1, len(samples)):
        make = dict(sample_forms(samples[i], i, images, temp))[chosen]
        try:
            outputs.append(fn(make()))
        except Exception as exc:
            return PipelineRun(outputs, chosen, f"the pipeline raised on sample {i}: {type(exc).__name__}: {exc}")
    return PipelineRun(outputs, chosen)


@dataclass
class Repeatability:
    """Whether a pipeline gives the same tensor twice for the same sample, and which step does not."""

    repeatable: bool
    max_diff: float = 0.0
    step: int | None = None


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in float64, 0 where both are NaN or both are the same infinity."""
    ad, bd = a.detach().double(), b.detach().double()
    d = torch.where(torch.isnan(ad) & torch.isnan(bd), torch.zeros_like(ad), (ad - bd).abs())
    return torch.where(torch.isinf(ad) & (ad == bd), torch.zeros_like(d), d)


def outputs_equal(a: Any, b: Any) -> tuple[bool, float]:
    """Whether two pipeline outputs (tensors, arrays, containers of them) are equal, and the largest difference."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return False, float("inf")
        d = _abs_diff(a, b)
        m = float(d.max()) if d.numel() else 0.0
        return m == 0.0, m
    fa, fb = flatten(a), flatten(b)
    if fa.keys() != fb.keys():
        return False, float("inf")
    worst = 0.0
    ok = True
    for k in fa:
        if isinstance(fa[k], (torch.Tensor, np.ndarray)):
            pair = (fa[k], fb[k]) if isinstance(fa[k], torch.Tensor) else (torch.as_tensor(fa[k]), torch.as_tensor(fb[k]))
            e, m = outputs_equal(*pair)
            ok, worst = ok and e, max(worst, m)
        else:
            ok = ok and repr(fa[k]) == repr(fb[k])
    return ok, worst


def _seeded(seed: int, call: Callable[[], Any]) -> Any:
    torch.manual_seed(seed)
    random.seed(seed)
    return call()


def repeatability(fn: Callable[[Any], Any], make_input: Callable[[], Any]) -> Repeatability:
    """Call the pipeline twice on the same input (under different RNG draws); name the random step."""
    with _saved_rng():
        same, diff = outputs_equal(_seeded(1, lambda: fn(make_input())), _seeded(2, lambda: fn(make_input())))
        if same:
            return Repeatability(True, 0.0)
        step = None
        steps = pipeline_steps(fn)
        if len(steps) > 1:
            x = make_input()
            for st in steps:
                y1, y2 = _seeded(1, lambda: st.obj(x)), _seeded(2, lambda: st.obj(x))
                if not _same_any(y1, y2):
                    step = st.index
                    break
                x = y1
    return Repeatability(False, diff, step)


def _same_any(a: Any, b: Any) -> bool:
    from PIL import Image

    if isinstance(a, Image.Image) and isinstance(b, Image.Image):
        return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    return outputs_equal(a, b)[0]


class _saved_rng:
    """Leave the caller's RNG state (torch CPU, Python, numpy) as it was."""

    def __enter__(self) -> None:
        self.torch_state = torch.random.get_rng_state()
        self.py_state = random.getstate()
        self.np_state = np.random.get_state()

    def __exit__(self, *exc: Any) -> None:
        torch.random.set_rng_state(self.torch_state)
        random.setstate(self.py_state)
        np.random.set_state(self.np_state)


@dataclass
class BatchConsistency:
    """Per-sample vs batched application of a tensor pipeline."""

    applicable: bool
    consistent: bool = True
    max_diff: float = 0.0
    step: int | None = None
    note: str = ""


def _differs(singles: torch.Tensor, batched: torch.Tensor) -> bool:
    return float(_abs_diff(singles, batched).max()) > 1e-5 * (float(singles.double().abs().max()) or 1.0)


def batch_consistency(fn: Callable[[Any], Any], images: Sequence[Any], size: int = 96) -> BatchConsistency:
    """Apply `fn` to N same-size uint8 CHW tensors one by one and as one NCHW batch; compare.

    Only for pipelines that accept tensors (torchvision v2 transforms and tensor code do). A
    difference means a step uses statistics of the whole batch (e.g. `x / x.max()` or a batch
    mean), so a batched server feeds the model something else than a per-request one.
    """
    import torchvision.transforms.v2.functional as F

    batch = torch.stack([F.center_crop(F.resize(to_uint8_chw(img), [size], antialias=True), [size, size]) for img in images[:4]])
    if len(batch) < 2:
        return BatchConsistency(False, note="fewer than two samples")
    with _saved_rng():
        try:
            singles = [fn(t) for t in batch]
            together = fn(batch)
        except Exception as exc:
            return BatchConsistency(False, note=f"does not take tensors or batches ({type(exc).__name__})")
    if not all(isinstance(s, torch.Tensor) for s in singles) or not isinstance(together, torch.Tensor):
        return BatchConsistency(False, note="does not return tensors")
    singles = [s[0] if s.dim() == together.dim() and s.shape[0] == 1 else s for s in singles]  # (1, C, H, W) per sample
    if any(s.shape != singles[0].shape for s in singles) or tuple(together.shape) != (len(singles), *singles[0].shape):
        return BatchConsistency(False, note=f"a batch of {len(batch)} gave shape {tuple(together.shape)}, not a stack of per-sample outputs")
    stacked = torch.stack(singles)
    scale = float(torch.nan_to_num(stacked.double(), nan=0.0, posinf=0.0, neginf=0.0).abs().max()) or 1.0
    diff = float(_abs_diff(stacked, together).max())
    if diff <= 1e-5 * scale:
        return BatchConsistency(True, True, diff)
    return BatchConsistency(True, False, diff, _batch_dependent_step(fn, batch))


def _batch_dependent_step(fn: Any, batch: torch.Tensor) -> int | None:
    """The first step whose batched output differs from its per-sample outputs."""
    steps = pipeline_steps(fn)
    if len(steps) < 2:
        return None
    xs, xb = list(batch), batch
    for st in steps:
        try:
            xs = [st.obj(x) for x in xs]
            xb = st.obj(xb)
        except Exception:
            return None
        if isinstance(xb, torch.Tensor) and all(isinstance(x, torch.Tensor) for x in xs):
            s = torch.stack(xs)
            if s.shape == xb.shape and _differs(s, xb):
                return st.index
    return None
