"""What changed since a recording: weights (from their fingerprints), the environment, the inputs,
and the outputs (compared through the comparison core with calibrated tolerances).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..compare import Comparison, Tolerance, compare
from ..environment import environment
from ..golden import Recording, cpu_copy, storable_leaves
from ..tree import flatten

#: Environment entries shown first when they changed since recording (the usual reasons outputs move).
ENV_ORDER = ("torch", "device", "threads", "cuda_build", "cuda_device", "cudnn", "torchvision", "numpy",
             "python", "platform", "machine", "onnxruntime", "onnx", "deterministic_algorithms")
#: Provenance entries that always differ between runs and never explain a difference.
ENV_IGNORED = ("recorded_at", "torch_diagnose")


@dataclass
class WeightChange:
    """One state_dict entry that differs from the recording, and how."""

    key: str
    change: str  # "values", "shape", "dtype", "missing now", "new since recording"
    before: str = ""
    after: str = ""
    norm_before: float | None = None
    norm_after: float | None = None

    def describe(self) -> str:
        if self.change == "values":
            shown = (f"norm {self.norm_before:.6g} -> {self.norm_after:.6g}"
                     if self.norm_before is not None and self.norm_after is not None else "values differ")
            return f"`{self.key}` changed ({shown})"
        if self.change in ("shape", "dtype"):
            return f"`{self.key}` {self.change} {self.before} -> {self.after}"
        return f"`{self.key}` {self.change}"

    def row(self) -> dict[str, Any]:
        row = {"key": self.key, "change": self.change, "before": self.before, "after": self.after,
               "norm_before": self.norm_before, "norm_after": self.norm_after}
        return {k: v for k, v in row.items() if v not in ("", None)}


def diff_weights(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[WeightChange]:
    """State-dict entries that differ between two fingerprints, in state_dict order."""
    changes: list[WeightChange] = []
    for key, old in before.items():
        new = after.get(key)
        if new is None:
            changes.append(WeightChange(key, "missing now"))
        elif "repr" in old or "repr" in new:
            if old.get("repr") != new.get("repr"):
                changes.append(WeightChange(key, "values", str(old.get("repr")), str(new.get("repr"))))
        elif old.get("shape") != new.get("shape"):
            changes.append(WeightChange(key, "shape", str(tuple(old.get("shape") or ())), str(tuple(new.get("shape") or ()))))
        elif old.get("dtype") != new.get("dtype"):
            changes.append(WeightChange(key, "dtype", str(old.get("dtype")), str(new.get("dtype"))))
        elif old.get("digest") != new.get("digest") or (old.get("digest") is None and old.get("norm") != new.get("norm")):
            changes.append(WeightChange(key, "values", norm_before=old.get("norm"), norm_after=new.get("norm")))
    for key in after:
        if key not in before:
            changes.append(WeightChange(key, "new since recording"))
    return changes


def environment_now(device: torch.device | None) -> dict[str, Any]:
    """The environment as a recording keeps it: versions, device, threads, deterministic mode."""
    env = environment(device)
    env["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    try:
        from importlib.metadata import version

        env["torch_diagnose"] = version("torch-diagnose")
    except Exception:
        pass
    return env


def diff_environment(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, then, now) for every environment entry that changed, the usual suspects first."""
    keys = [k for k in ENV_ORDER if k in before or k in after]
    keys += sorted(k for k in set(before) | set(after) if k not in keys and k not in ENV_IGNORED and k != "unreadable")
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def compare_outputs(current: Any, recording: Recording, tolerances: dict[str, Tolerance] | None = None, *,
                    rtol: float | None = None, atol: float | None = None) -> Comparison:
    """Today's outputs against the recorded ones, leaf by leaf, through the comparison core."""
    return compare(storable_leaves(current), recording.outputs, leaf_tolerances=tolerances or None, rtol=rtol, atol=atol)


def inputs_changed(recorded: Any, current: Any) -> str | None:
    """Why today's example inputs differ from the recorded ones, or None when they are the same."""
    a, b = flatten(cpu_copy(recorded)), flatten(cpu_copy(current))
    if list(a) != list(b):
        return f"input structure changed: {list(a)} then, {list(b)} now"
    for name, old in a.items():
        new = b[name]
        if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
            if old.shape != new.shape or old.dtype != new.dtype:
                return f"input `{name}` was {tuple(old.shape)} {old.dtype}, now {tuple(new.shape)} {new.dtype}"
            if not torch.equal(old, new):
                return f"input `{name}` has different values now"
        elif old != new:
            return f"input `{name}` was {old!r}, now {new!r}"
    return None
