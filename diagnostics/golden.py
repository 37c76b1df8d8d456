"""Golden recordings: a model's inputs, outputs and fingerprints, kept to compare later runs with.

One recording is two files side by side:
  `<key>.pt`        torch.save of plain containers (dicts, lists, tensors, numbers, strings) and
                    read back with `torch.load(weights_only=True)`: opening a recording never runs code;
  `<key>.env.json`  the environment it was made in (torch version, device, threads ...), readable in
                    a code review and diffed against today's when the outputs moved.
Recordings are one per test and call (or one per target from the CLI), never one shared file, and
written atomically (temporary file + rename), so parallel pytest-xdist workers cannot clobber each other.

Beside the outputs a recording keeps two kinds of fingerprints that turn "the numbers moved" into a
culprit: a digest of every `state_dict` entry (which weights changed since recording) and a small
fingerprint of each module call's inputs and outputs (which module's output moved first).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .tree import flatten, map_leaves

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .compare import Comparison, Tolerance

# torch is imported inside the functions that need it: the pytest plugin names recordings with
# `golden_key` at start-up, where torch must not be imported.

FORMAT = "torch-diagnose-golden/1"
#: Environment entries shown first when they changed since recording (the usual reasons outputs move).
ENV_ORDER = ("torch", "device", "threads", "cuda_build", "cuda_device", "cudnn", "torchvision", "numpy",
             "python", "platform", "machine", "onnxruntime", "onnx", "deterministic_algorithms")
#: Provenance entries that always differ between runs and never explain a difference.
ENV_IGNORED = ("recorded_at", "torch_diagnose")


class GoldenError(Exception):
    """A recording exists but cannot be read or does not look like one."""


def safe_name(text: str, max_len: int = 120) -> str:
    """A file-name-safe version of a test id or target name (long ones keep a short hash)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-\[\]=+]", "_", str(text)).strip("._") or "golden"
    if len(cleaned) > max_len:
        digest = hashlib.sha1(str(text).encode()).hexdigest()[:12]
        cleaned = f"{cleaned[: max_len - 13]}-{digest}"
    return cleaned


def golden_key(test: str, label: str = "", call: int = 1) -> str:
    """The recording name of one call in one test: `<test>`, `<test>.<label>`, then `.2`, `.3` for
    repeated calls, so every call of every test has a file of its own."""
    key = safe_name(test)
    if label:
        key += "." + safe_name(label)
    if call > 1:
        key += f".{call}"
    return key


@dataclass(frozen=True)
class GoldenPaths:
    """Where one recording lives: the tensors and, beside them, the environment."""

    data: Path
    env: Path

    @property
    def exists(self) -> bool:
        return self.data.is_file()


def golden_paths(root: str | os.PathLike[str], key: str) -> GoldenPaths:
    """`root/key.pt` and `root/key.env.json`; `key` may hold `/` for a sub-folder (one per target)."""
    base = Path(root) / key
    return GoldenPaths(base.with_name(base.name + ".pt"), base.with_name(base.name + ".env.json"))


# ---------------------------------------------------------------------------------------------
# What is stored


def _cpu(obj: Any) -> Any:
    import torch

    return map_leaves(obj, lambda t: t.detach().to("cpu").clone() if isinstance(t, torch.Tensor) else t)


def storable_leaves(outputs: Any) -> dict[str, Any]:
    """Outputs as named leaves that safe loading can read: tensors on the CPU, plain values as they
    are, anything else as its repr (applied to both sides, so such leaves compare by repr)."""
    import torch

    out: dict[str, Any] = {}
    for name, leaf in flatten(outputs).items():
        if isinstance(leaf, torch.Tensor):
            out[name] = leaf.detach().to("cpu").clone()
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            out[name] = leaf
        else:
            out[name] = f"<{type(leaf).__name__}> {leaf!r}"[:2000]
    return out


def tensor_digest(t: torch.Tensor) -> str | None:
    """sha256 of a tensor's bytes (same values on any device give the same digest); None if unreadable."""
    import torch

    try:
        data = t.detach().to("cpu").contiguous().reshape(-1)
        if data.is_quantized:
            data = data.int_repr().reshape(-1)
        return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()
    except Exception:
        return None


def weights_fingerprint(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Per `state_dict` entry: shape, dtype, digest and norm (to say by how much a changed entry moved)."""
    import torch

    prints: dict[str, dict[str, Any]] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            prints[key] = {"repr": repr(value)[:500]}
            continue
        entry: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                                 "digest": tensor_digest(value)}
        try:
            data = value.detach().to("cpu")
            data = data.dequantize() if data.is_quantized else data
            entry["norm"] = float(data.double().norm()) if data.numel() else 0.0
        except Exception:
            entry["norm"] = None
        prints[key] = entry
    return prints


_PROBE_SIZE = 4096


def _probe_weights(n: int) -> "torch.Tensor":
    import torch

    return torch.frac(torch.arange(n, dtype=torch.float64) * 0.6180339887498949) - 0.5


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """Five float64 numbers that move when a tensor moves: mean/rms, rms, max|x|/rms, a fixed
    pseudo-random projection of an evenly strided sample / rms, and the count of non-finite values.
    Scale-free (divided by the rms) so one relative tolerance fits activations of any size.
    Three passes over the data, accumulated in float64 without a float64 copy."""
    import torch

    x = t.detach()
    if x.is_complex():
        x = torch.view_as_real(x)
    x = x.reshape(-1)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    n = x.numel()
    if n == 0:
        return torch.zeros(5, dtype=torch.float64)
    total = float(x.sum(dtype=torch.float64))
    squares = float((x * x).sum(dtype=torch.float64))
    peak = float(x.abs().max())
    bad = 0.0
    if not (math.isfinite(total) and math.isfinite(squares) and math.isfinite(peak)):
        finite = torch.isfinite(x)
        bad = float((~finite).sum())
        x = torch.where(finite, x, torch.zeros_like(x))
        total, peak = float(x.sum(dtype=torch.float64)), float(x.abs().max())
        squares = float((x.double() ** 2).sum())
    rms = math.sqrt(squares / n)
    scale = rms if rms > 0 else 1.0
    step = max(1, n // _PROBE_SIZE)
    sample = x[::step][:_PROBE_SIZE].to("cpu", torch.float64)
    projection = float((sample * _probe_weights(sample.numel())).sum()) / math.sqrt(sample.numel())
    return torch.tensor([total / n / scale, rms, peak / scale, projection / scale, bad], dtype=torch.float64)


def run_with_module_prints(model: torch.nn.Module, run: Callable[[], Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Run `run()` with forward hooks that fingerprint every module call's inputs and outputs."""
    from .probe import ModuleRecorder

    with ModuleRecorder(model, transform=fingerprint) as recorder:
        outputs = run()
    calls = [{"name": c.name, "type": c.module_type, "inputs": c.inputs, "outputs": c.outputs} for c in recorder.calls]
    return outputs, calls


@dataclass
class Recording:
    """Everything one golden file holds."""

    inputs: Any
    outputs: dict[str, Any]
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: list[dict[str, Any]] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"format": FORMAT, "inputs": _cpu(self.inputs), "outputs": self.outputs, "weights": self.weights,
                "modules": self.modules, "target": self.target}


def save(paths: GoldenPaths, recording: Recording) -> int:
    """Write both files atomically; returns the size of the tensor file in bytes.

    The payload is read back with weights_only=True before anything is written, so a recording
    that safe loading could not open (inputs holding custom objects) is refused up front.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(recording.payload(), buffer)
    blob = buffer.getvalue()
    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GoldenError(
            f"the recording would hold objects that safe loading (weights_only=True) cannot read: {_first_line(exc)}; "
            f"give the target example inputs made of tensors, tuples, lists and dicts"
        ) from exc
    env = dict(recording.environment)
    env.setdefault("recorded_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    env_text = json.dumps(env, indent=2, sort_keys=True, default=str) + "\n"
    _atomic_write(paths.data, blob)
    _atomic_write(paths.env, env_text.encode())
    return len(blob)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(paths: GoldenPaths) -> Recording:
    """Read a recording with safe loading; GoldenError says what is wrong with the file."""
    import torch

    try:
        payload = torch.load(paths.data, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GoldenError(f"cannot read recording {paths.data}: {_first_line(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "outputs" not in payload:
        raise GoldenError(f"{paths.data} is not a torch-diagnose golden recording (format {FORMAT})")
    environment: dict[str, Any] = {}
    if paths.env.is_file():
        try:
            environment = json.loads(paths.env.read_text())
        except (OSError, ValueError) as exc:
            environment = {"unreadable": f"{paths.env}: {exc}"}
    return Recording(inputs=payload.get("inputs"), outputs=dict(payload["outputs"]), weights=dict(payload.get("weights") or {}),
                     modules=list(payload.get("modules") or []), target=dict(payload.get("target") or {}),
                     environment=environment)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# What changed


@dataclass
class WeightChange:
    key: str
    change: str  # "values", "shape", "dtype", "missing now", "new since recording"
    before: str = ""
    after: str = ""
    norm_before: float | None = None
    norm_after: float | None = None

    @property
    def norm_change(self) -> float | None:
        """Relative change of the entry's norm (a lower bound on how far it moved)."""
        if self.norm_before is None or self.norm_after is None:
            return None
        if self.norm_before == 0:
            return math.inf if self.norm_after else 0.0
        return abs(self.norm_after - self.norm_before) / self.norm_before

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


def diff_environment(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, then, now) for every environment entry that changed, the usual suspects first."""
    keys = [k for k in ENV_ORDER if k in before or k in after]
    keys += sorted(k for k in set(before) | set(after) if k not in keys and k not in ENV_IGNORED and k != "unreadable")
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def compare_outputs(current: Any, recording: Recording, tolerances: dict[str, Tolerance] | None = None, *,
                    rtol: float | None = None, atol: float | None = None) -> Comparison:
    """Today's outputs against the recorded ones, leaf by leaf, through the comparison core."""
    from .compare import compare

    return compare(storable_leaves(current), recording.outputs, leaf_tolerances=tolerances or None, rtol=rtol, atol=atol)


def fingerprint_tolerance(outputs: dict[str, Any]) -> tuple[float, float]:
    """(rtol, atol) for module fingerprints: sqrt(eps) of the least precise floating output dtype, so
    summation-order noise (other threads, other kernels) passes and a real change does not."""
    import torch

    from .compare import eps

    dtypes = [t.dtype for t in outputs.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    e = max((eps(d) for d in dtypes), default=eps(torch.float32))
    tol = math.sqrt(e)
    return tol, tol


def first_moved_module(recorded: list[dict[str, Any]], current: list[dict[str, Any]], *, rtol: float, atol: float) -> Any:
    """The first module (in finishing order) whose output fingerprint moved while its inputs' did not."""
    from .probe import ModuleCall, first_divergence

    def calls(rows: list[dict[str, Any]]) -> list[ModuleCall]:
        return [ModuleCall(r["name"], r.get("type", "?"), dict(r.get("inputs") or {}), dict(r.get("outputs") or {}), i)
                for i, r in enumerate(rows)]

    return first_divergence(calls(current), calls(recorded), rtol=rtol, atol=atol)


def inputs_changed(recorded: Any, current: Any) -> str | None:
    """Why today's example inputs differ from the recorded ones, or None when they are the same."""
    import torch

    a, b = flatten(_cpu(recorded)), flatten(_cpu(current))
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


def owner_of(model: torch.nn.Module, key: str) -> tuple[str, torch.nn.Module | None]:
    """The module that owns a state_dict key (`block.fc.weight` -> `block.fc`)."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        name = ".".join(parts[:depth])
        try:
            return name, (model.get_submodule(name) if name else model)
        except AttributeError:
            continue
    return "", None


__all__ = [
    "FORMAT", "GoldenError", "GoldenPaths", "Recording", "WeightChange", "compare_outputs", "diff_environment",
    "diff_weights", "fingerprint", "fingerprint_tolerance", "first_moved_module", "golden_key", "golden_paths", "inputs_changed",
    "load", "owner_of", "run_with_module_prints", "safe_name", "save", "storable_leaves", "tensor_digest",
    "weights_fingerprint",
]
