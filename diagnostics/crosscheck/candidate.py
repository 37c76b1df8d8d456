"""The candidate of `diagnose compare REFERENCE CANDIDATE`: what it is, loading it once, the dims it
declares dynamic, and running it on the reference's inputs.

Kinds: `onnx` (a `.onnx` file, run under ONNX Runtime), `torchscript` (a TorchScript archive),
`program` (a `.pt2` torch.export program), `recording` (`.npz`, or a `.pt` holding `inputs` and
`outputs`: see `recording`), `target` (any other target spec: file.py:factory, module:factory,
torchvision:NAME...). A candidate that cannot be loaded is a TargetError (exit 2, one line).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import TargetError, UsageError
from ..text import one_line

#: What each kind is called in verdicts.
TITLES = {"onnx": "ONNX Runtime", "torchscript": "TorchScript", "program": "torch.export program",
          "recording": "recorded outputs", "target": "target"}

_LOADED: dict[tuple[Any, ...], "Candidate"] = {}


@dataclass
class Candidate:
    """A loaded candidate. `obj`: the ONNX model proto, the ScriptModule, the ExportedProgram, the
    candidate's nn.Module, or the Recording."""

    kind: str
    spec: str
    obj: Any
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """`candidate model.onnx (ONNX Runtime)`, as summaries name it."""
        name = os.path.basename(self.path) if self.path else self.spec
        return f"candidate {name} ({TITLES[self.kind]})"

    @property
    def module(self) -> Any:
        """An nn.Module to hook or read parameters from (None for ONNX and recordings)."""
        if self.kind == "program":
            if "module" not in self.extra:
                self.extra["module"] = self.obj.module()
            return self.extra["module"]
        return self.obj if self.kind in ("torchscript", "target") else None


def kind_of(spec: str) -> str:
    """The candidate's kind from its spec (and its file's contents); a TargetError for a missing file."""
    from ..target.files import _is_exported_program, _is_torchscript_archive
    from ..target.load import split_factory

    path_part, sep, _ = split_factory(spec)
    if spec.endswith(".onnx") or spec.endswith(".npz"):
        if not os.path.isfile(spec):
            raise TargetError(f"candidate file {spec!r} does not exist")
        return "onnx" if spec.endswith(".onnx") else "recording"
    if not sep and os.path.isfile(spec):
        if _is_exported_program(spec):
            return "program"
        if _is_torchscript_archive(spec):
            return "torchscript"
        return "recording"
    if not sep and os.path.splitext(spec)[1] in (".pt", ".pth", ".pt2", ".ts", ".jit", ".onnx", ".npz"):
        raise TargetError(f"candidate file {spec!r} does not exist")
    return "target"


def load_candidate(spec: str, options: Any) -> Candidate:
    """The candidate, loaded once per process (keyed by the file's path, size and time)."""
    kind = kind_of(spec)
    stamp: tuple[Any, ...] = ()
    if kind != "target":
        st = os.stat(spec)
        stamp = (os.path.abspath(spec), st.st_size, st.st_mtime_ns)
    key = (kind, spec, stamp, getattr(options, "seed", 0), getattr(options, "trust_pickle", False))
    if key not in _LOADED:
        _LOADED.clear()  # one candidate at a time: they can be large
        _LOADED[key] = _LOADERS[kind](spec, options)
    return _LOADED[key]


def _onnx(spec: str, options: Any) -> Candidate:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise UsageError(f"an ONNX candidate needs onnx and onnxruntime ({exc.name} is not installed): "
                         f"pip install onnx onnxruntime") from None
    try:
        proto = onnx.load(spec)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        session = ort.InferenceSession(spec, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise TargetError(f"cannot load ONNX candidate {spec}: {one_line(exc, 300)}") from None
    return Candidate("onnx", spec, proto, spec, {"session": session})


def _torchscript(spec: str, options: Any) -> Candidate:
    import torch

    try:
        module = torch.jit.load(spec, map_location="cpu")
    except Exception as exc:
        raise TargetError(f"cannot load TorchScript candidate {spec}: {one_line(exc, 300)}") from None
    return Candidate("torchscript", spec, module.eval(), spec)


def _program(spec: str, options: Any) -> Candidate:
    import torch

    try:
        with open(spec, "rb") as fh:
            ep = torch.export.load(fh)
    except Exception as exc:
        raise TargetError(f"cannot load exported program {spec}: {one_line(exc, 300)}") from None
    return Candidate("program", spec, ep, spec)


def _recording(spec: str, options: Any) -> Candidate:
    from .recording import read_recording

    return Candidate("recording", spec, read_recording(spec), spec)


def _target(spec: str, options: Any) -> Candidate:
    from ..target import load_target_for

    try:
        target = load_target_for(spec, options)
    except TargetError as exc:
        raise TargetError(f"candidate {spec!r}: {exc}") from None
    model = target.model
    if hasattr(model, "eval"):
        model.eval()
    return Candidate("target", spec, model, None, {"target": target})


_LOADERS: dict[str, Callable[[str, Any], Candidate]] = {
    "onnx": _onnx, "torchscript": _torchscript, "program": _program, "recording": _recording, "target": _target,
}


# ---------------------------------------------------------------------------------------------
# Declared dynamic dims and running


def static_dims(cand: Candidate, leaves: Sequence[str]) -> dict[tuple[str, int], int]:
    """(input leaf, dim) -> size for every dim the candidate fixes; leaves matched by name, else by position.
    TorchScript archives and other targets declare nothing: every size eager accepts is tried."""
    declared: list[tuple[str, list[Any]]] = []
    if cand.kind == "onnx":
        from ..export.onnx_tools import input_dims

        declared = list(input_dims(cand.obj).items())
    elif cand.kind == "program":
        declared = _program_dims(cand.obj)
    fixed: dict[tuple[str, int], int] = {}
    for i, (name, dims) in enumerate(declared):
        leaf = name if name in leaves else (leaves[i] if i < len(leaves) else None)
        if leaf is None:
            continue
        fixed.update({(leaf, d): size for d, size in enumerate(dims) if isinstance(size, int)})
    return fixed


def _program_dims(ep: Any) -> list[tuple[str, list[Any]]]:
    """User inputs of an exported program and their dims (an int when static, a name when symbolic)."""
    import torch

    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    out: list[tuple[str, list[Any]]] = []
    for name in ep.graph_signature.user_inputs:
        node = nodes.get(name)
        val = node.meta.get("val") if node is not None else None
        if isinstance(val, torch.Tensor):
            out.append((name, [s if isinstance(s, int) else str(s) for s in val.shape]))
    return out


def runner(cand: Candidate, template: Any, names: Sequence[str], device: Any) -> Callable[[Any], Any]:
    """`run(inputs) -> outputs` in the reference's output structure (`template`: its outputs)."""
    from ..inputs import call_model, to_device

    if cand.kind == "onnx":
        return _onnx_runner(cand, template, names, device)
    module = cand.module
    if cand.kind == "target" and device is not None:
        module.to(device)

    def run(inputs: Any) -> Any:
        return call_model(module, to_device(inputs, device) if device is not None else inputs)

    return run


def _onnx_runner(cand: Candidate, template: Any, names: Sequence[str], device: Any) -> Callable[[Any], Any]:
    import torch

    from ..tree import flatten, map_leaves

    session = cand.extra["session"]
    n_tensors = sum(isinstance(v, torch.Tensor) for v in flatten(template).values())

    def run(inputs: Any) -> Any:
        flat = [torch.from_numpy(o) for o in session.run(None, onnx_feeds(cand, inputs, names))]
        if device is not None:
            flat = [t.to(device) for t in flat]
        if n_tensors != len(flat):
            raise RuntimeError(f"the candidate returns {len(flat)} outputs, the reference returns {n_tensors} tensors")
        it = iter(flat)
        return map_leaves(template, lambda leaf: next(it) if isinstance(leaf, torch.Tensor) else leaf)

    return run


def onnx_feeds(cand: Candidate, inputs: Any, names: Sequence[str]) -> dict[str, Any]:
    """Graph input name -> array (by leaf name, else by position), cast to the graph's declared type."""
    import numpy as np
    import torch
    from onnx import helper

    from ..export.cases import named_leaves, to_numpy

    by_name = {k: to_numpy(v) for k, v in named_leaves(inputs, names).items() if isinstance(v, torch.Tensor)}
    ordered = list(by_name.values())
    feeds: dict[str, Any] = {}
    for i, info in enumerate(cand.extra["session"].get_inputs()):
        array = by_name.get(info.name, ordered[i] if i < len(ordered) else None)
        if array is None:
            continue
        elem = next((v.type.tensor_type.elem_type for v in cand.obj.graph.input if v.name == info.name), 0)
        if elem:
            array = np.asarray(array).astype(helper.tensor_dtype_to_np_dtype(elem), copy=False)
        feeds[info.name] = array
    return feeds
