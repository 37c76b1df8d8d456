"""Recordings of a model's inputs and outputs, made elsewhere (production, another machine, an older
version), compared with the target by `diagnose compare REFERENCE recording.pt`.

Formats (both read without running code: `torch.load(weights_only=True)`, `np.load(allow_pickle=False)`):

* `.pt` written by `torch_diagnose.record(model, inputs, path)`: a dict with `inputs` (a tensor, a
  tuple or a dict, as the model is called), `outputs` (output leaf name -> tensor: `output`,
  `output[0]`, `output.logits`) and `modules` (one entry per module call, in finishing order:
  `name`, `type`, `inputs`, `outputs`), which lets the comparison name the first module whose
  output moved. A hand-made `.pt` needs only `inputs` and `outputs` (a tensor, a tuple or a dict).
* `.npz`: arrays `inputs` (the one input) or `inputs.NAME` (one per input), and `outputs` or
  `outputs.NAME` (one per output leaf, in order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import TargetError
from ..inputs import call_model
from ..locate.hooks import ModuleCall, ModuleRecorder
from ..text import one_line
from ..tree import flatten, map_leaves

FORMAT = "torch_diagnose.recording/1"
FORMAT_HELP = ("a recording holds `inputs` and `outputs` (.pt: a dict, loaded with weights_only=True; .npz: arrays "
               "`inputs`/`inputs.NAME` and `outputs`/`outputs.NAME`); write one with torch_diagnose.record(model, inputs, path)")


@dataclass
class Recording:
    """Inputs and outputs recorded elsewhere; `modules` when recorded with `record()`."""

    inputs: Any
    outputs: Any  # a tensor, a tuple, or a dict of output leaf name -> tensor
    modules: list[ModuleCall] | None = None
    path: str = ""


def _cpu(obj: Any) -> Any:
    return map_leaves(obj, lambda t: t.detach().cpu().clone() if isinstance(t, torch.Tensor) else t)


def record(model: torch.nn.Module, inputs: Any, path: str | os.PathLike[str], *, modules: bool = True) -> str:
    """Run `model` once on `inputs` (in eval mode, restored after) and save inputs, outputs and, with
    `modules`, every module call's inputs and outputs to `path`, for `diagnose compare REF path`."""
    flags = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        with torch.inference_mode():
            if modules:
                with ModuleRecorder(model) as rec:
                    outputs = call_model(model, inputs)
            else:
                rec, outputs = None, call_model(model, inputs)
    finally:
        for name, m in model.named_modules():
            m.training = flags.get(name, m.training)
    data: dict[str, Any] = {
        "format": FORMAT,
        "inputs": _cpu(inputs),
        "outputs": {k: _cpu(v) for k, v in flatten(outputs).items() if isinstance(v, torch.Tensor)},
    }
    if rec is not None:
        data["modules_complete"] = rec.complete  # False: only the first module calls fit the recording budget
        data["modules"] = [{"name": c.name, "type": c.module_type, "inputs": _cpu(c.inputs), "outputs": _cpu(c.outputs)}
                           for c in rec.calls]
    path = os.fspath(path)
    torch.save(data, path)
    return path


def read_recording(path: str) -> Recording:
    """A recording from `.npz` or `.pt`; a TargetError that says what a recording holds otherwise."""
    try:
        if path.endswith(".npz"):
            return _from_npz(path)
        data = torch.load(path, map_location="cpu", weights_only=True)
    except TargetError:
        raise
    except Exception as exc:
        raise TargetError(f"cannot read recording {path}: {one_line(exc)}; {FORMAT_HELP}") from exc
    if not isinstance(data, dict) or "inputs" not in data or "outputs" not in data:
        what = ("a state_dict: to compare a second checkpoint give a target spec whose factory loads it (file.py:factory)"
                if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values())
                else f"a {type(data).__name__} without `inputs` and `outputs`")
        raise TargetError(f"{path} holds {what}; {FORMAT_HELP}")
    calls = None
    if isinstance(data.get("modules"), list):
        calls = [ModuleCall(str(m["name"]), str(m.get("type", "")), dict(m.get("inputs") or {}), dict(m.get("outputs") or {}), i)
                 for i, m in enumerate(data["modules"]) if isinstance(m, dict) and "name" in m]
    return Recording(data["inputs"], data["outputs"], calls, path)


def _from_npz(path: str) -> Recording:
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}

    def part(prefix: str) -> Any:
        if prefix in arrays:
            return arrays[prefix]
        named = {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}
        return named or None

    inputs, outputs = part("inputs"), part("outputs")
    if inputs is None or outputs is None:
        raise TargetError(f"{path} has arrays {', '.join(sorted(arrays)) or 'none'}, not `inputs` and `outputs`; {FORMAT_HELP}")
    return Recording(inputs, outputs, None, path)


def fit_inputs(recorded: Any, example: Any, names: Sequence[str]) -> Any:
    """Recorded inputs in the shape the reference is called with (a dict of named arrays for a
    positional model becomes a tuple in the model's order)."""
    if isinstance(example, dict) or not isinstance(recorded, dict):
        if isinstance(example, tuple) and isinstance(recorded, list):
            return tuple(recorded)
        return recorded
    values = [recorded[n] for n in names if n in recorded] if all(n in recorded for n in names) else list(recorded.values())
    if isinstance(example, tuple):
        return tuple(values)
    if len(values) != 1:
        raise TargetError(f"the recording holds {len(values)} inputs ({', '.join(recorded)}); the reference takes one")
    return values[0]


def fit_outputs(recorded: Any, reference: Any) -> Any:
    """Recorded outputs rebuilt in the reference's output structure, matched by leaf name, else by order."""
    ref_leaves = [k for k, v in flatten(reference).items() if isinstance(v, torch.Tensor)]
    if isinstance(recorded, dict) and all(k in recorded for k in ref_leaves):
        values = [recorded[k] for k in ref_leaves]
    else:
        got = [v for v in flatten(recorded).values() if isinstance(v, torch.Tensor)]
        if len(got) != len(ref_leaves):
            raise TargetError(f"the recording holds {len(got)} output tensors, the reference returns {len(ref_leaves)} "
                              f"({', '.join(ref_leaves[:6])}): record the same model's outputs")
        values = got
    it = iter(values)
    return map_leaves(reference, lambda leaf: next(it) if isinstance(leaf, torch.Tensor) else leaf)


def unmatched_outputs(recorded: Any, reference: Any) -> list[str]:
    """Recorded output names the reference does not return (a key/value cache recorded with
    use_cache=True, an extra head): said in the verdict, never silently dropped."""
    if not isinstance(recorded, dict):
        return []
    ref_leaves = {k for k, v in flatten(reference).items() if isinstance(v, torch.Tensor)}
    return [k for k in recorded if k not in ref_leaves] if all(k in recorded for k in ref_leaves) else []
