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
fingerprint of each module call's inputs and outputs (which module's output moved first). They are
made in `regression.fingerprints` and compared in `regression.changes`; this module only names,
writes and reads recordings, and imports torch only inside the functions that need it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .text import one_line
from .tree import flatten, map_leaves

# torch is imported inside the functions that need it: the pytest plugin names recordings with
# `golden_key` at start-up, where torch must not be imported.

FORMAT = "torch-diagnose-golden/1"


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


def cpu_copy(obj: Any) -> Any:
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
        return {"format": FORMAT, "inputs": cpu_copy(self.inputs), "outputs": self.outputs, "weights": self.weights,
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
            f"the recording would hold objects that safe loading (weights_only=True) cannot read: {one_line(exc, with_type=False)}; "
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
        raise GoldenError(f"cannot read recording {paths.data}: {one_line(exc, with_type=False)}") from exc
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
