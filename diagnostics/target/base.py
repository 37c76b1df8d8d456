"""`Target`: what is diagnosed (a model and what it is served with), and the coercion of what a
factory returns into one. Loading specs is in `load`; model files in `files`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..errors import TargetError


@dataclass
class Target:
    """A model and what it is served with.

    model:                the nn.Module, as deployment would receive it (not switched to eval).
    example_inputs:       a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    preprocess:           the serving pipeline, raw sample -> tensor.
    reference_preprocess: the training/evaluation pipeline, raw sample -> tensor.
    samples:              raw samples (PIL images, arrays, file paths) for the pipelines.
    calibration:          an iterable of inputs shaped like example_inputs (quantization).
    labels:               ground truth for samples or calibration inputs, when known.
    dynamic_dims:         dims that vary in serving, e.g. {"x": {0: "batch", 1: "seq"}}.
    batch_dim:            the batch dimension of the inputs (0 unless the model is time-major).
    batch_dims:           per-input batch dims, e.g. {"x": 1, "lengths": 0, "mask": None} (None: the input has no
                          batch dim and is left unchanged when the batch is resized); others use batch_dim.
                          A list of images passed as one input is a batch along the list.
    factory:              a zero-argument callable that builds a fresh copy (weights round trip).
    """

    model: Any
    example_inputs: Any = None
    preprocess: Callable[[Any], Any] | None = None
    reference_preprocess: Callable[[Any], Any] | None = None
    samples: Sequence[Any] | None = None
    calibration: Iterable[Any] | None = None
    labels: Sequence[Any] | None = None
    dynamic_dims: dict[str, dict[int, str]] | None = None
    name: str = ""
    batch_dim: int = 0
    factory: Callable[[], Any] | None = None
    source: str = ""
    batch_dims: dict[str, int | None] | None = None

    def __post_init__(self) -> None:
        import torch

        if not isinstance(self.model, torch.nn.Module):
            raise TargetError(
                f"target {self.name or self.source or '?'}: model is a {type(self.model).__name__}, not a torch.nn.Module"
            )
        if not self.name:
            self.name = type(self.model).__name__
        #: What torch_diagnose did to the target while setting it up (a run's Context shows them as notes).
        self.setup_notes: list[str] = []
        from .samples import derive_example_inputs

        derive_example_inputs(self)  # samples + reference_preprocess and no example_inputs: derive them

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for reports."""
        from ..inputs import describe

        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name,
            "source": self.source,
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "parameters": n_params,
            "inputs": describe(self.example_inputs) if self.example_inputs is not None else None,
            "dynamic_dims": self.dynamic_dims,
            "has_preprocess": self.preprocess is not None,
            "has_reference_preprocess": self.reference_preprocess is not None,
            "samples": len(self.samples) if self.samples is not None and hasattr(self.samples, "__len__") else None,
            **({"setup_notes": list(self.setup_notes)} if getattr(self, "setup_notes", None) else {}),
        }


def coerce_target(obj: Any, *, source: str = "", factory: Callable[[], Any] | None = None) -> Target:
    """Accept what a factory may return: a Target, an nn.Module, or (module, example_inputs)."""
    import torch

    if isinstance(obj, Target):
        target = obj
    elif isinstance(obj, torch.nn.Module):
        target = Target(model=obj, source=source)
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], torch.nn.Module):
        target = Target(model=obj[0], example_inputs=obj[1], source=source)
    else:
        raise TargetError(
            f"target {source!r}: the factory returned {type(obj).__name__}; return an nn.Module, "
            f"(module, example_inputs) or a torch_diagnose.Target"
        )
    if not target.source:
        target.source = source
    if factory is not None and target.factory is None:
        target.factory = factory
    return target


def finish_target(obj: Any, spec: str, input_shape: Sequence[int] | None, input_dtype: str | None) -> Target:
    """A Target with example inputs: synthesised from `input_shape`, or guessed for torchvision models."""
    target = coerce_target(obj, source=spec)
    if input_shape is None and target.example_inputs is not None:
        return target
    shape = input_shape if input_shape is not None else _default_shape(target.model)
    if shape is None:
        why = next((n for n in getattr(target, "setup_notes", ()) if n.startswith("example inputs not derived")), None)
        raise TargetError(
            f"target {spec!r} has no example inputs: pass --input-shape (e.g. 2,3,224,224) or return "
            f"(model, example_inputs) or a Target (with example_inputs, or samples and reference_preprocess) from the factory"
            + (f" ({why})" if why else "")
        )
    import torch

    from ..inputs import parse_dtype, synthesize

    if input_shape is not None:  # the user's shape wins over inputs derived from samples
        target.setup_notes = [n for n in target.setup_notes if not n.startswith("example inputs derived")]
    dtype = parse_dtype(input_dtype) if input_dtype else torch.float32
    inputs = synthesize(shape, dtype, seed=0)
    if ".optical_flow." in type(target.model).__module__:  # RAFT: forward(image1, image2), two frames of one shape
        inputs = (inputs, synthesize(shape, dtype, seed=1))
    target.example_inputs = inputs
    return target


def _default_shape(model: Any) -> tuple[int, ...] | None:
    """A sensible input shape for torchvision image classifiers; None when it cannot be guessed."""
    module = type(model).__module__
    if module.startswith("torchvision.models"):
        if ".video." in module:
            return (1, 3, 8, 112, 112)
        if ".segmentation." in module or ".detection." in module:
            return (1, 3, 224, 224)
        if ".optical_flow." in module:
            return (1, 3, 128, 128)  # two frames (finish_target); RAFT needs sides divisible by 8
        name = type(model).__name__.lower()
        if "inception" in name:
            return (2, 3, 299, 299)
        return (2, 3, 224, 224)
    return None
