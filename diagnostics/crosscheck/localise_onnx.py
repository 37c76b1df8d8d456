"""The first node of a user's ONNX file that computes differently from the reference, and the
PyTorch module it belongs to.

The reference's own intermediate values are matched to the file's values by name, so the reference
is exported again the way the file was, on the failing input:

* a file from the dynamo exporter (nodes carry `pkg.torch.onnx.fx_node` / `namespace` metadata, values
  are named after FX nodes): `torch.onnx.export(dynamo=True)` of the reference, whose exported program's
  FX values are the references; the module and source line come from the file's own metadata;
* a file from the legacy exporter (scoped names such as `/layer1/layer1.0/conv1/Conv`): a legacy export
  of the reference with the file's input names, output names, dynamic axes and opset, every intermediate
  value run under ONNX Runtime; the module comes from the scope in the node's name.

Constants are never compared (their numbering shifts between exports). Values whose names match
nothing in the re-export are skipped, so a file from another tool localises nothing and says so.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import numpy as np
import torch

from ..export.onnx_tools import NodeDivergence, expose_intermediates, first_divergence, fx_values, input_dims, node_scope
from ..export.pipeline import quiet
from ..inputs import as_args_kwargs
from ..locate.code import frames_in_text, pick
from ..locate.culprit import Culprit
from ..locate.source import class_frame, submodule
from .candidate import Candidate, onnx_feeds


def exporter_style(proto: Any) -> str:
    """"dynamo", "legacy" or "unknown": which exporter's naming the file follows."""
    for node in proto.graph.node:
        keys = {p.key for p in node.metadata_props}
        if "pkg.torch.onnx.fx_node" in keys or "namespace" in keys:
            return "dynamo"
    if any(node.name.startswith("/") for node in proto.graph.node):
        return "legacy"
    return "unknown"


def legacy_module(model: torch.nn.Module, node_name: str) -> tuple[str, torch.nn.Module] | None:
    """`/layer1/layer1.0/conv1/Conv` -> ("layer1.0.conv1", the module): the innermost scope that resolves."""
    known = dict(model.named_modules())
    path = ""
    for part in [p for p in node_name.split("/") if p][:-1]:
        for guess in (part, f"{path}.{part}" if path else part):
            if guess in known and (not path or guess.startswith(path + ".")):
                path = guess
                break
    return (path, known[path]) if path else None


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _dynamo_reference(model: torch.nn.Module, inputs: Any, details: dict[str, Any]) -> dict[str, Any]:
    args, kwargs = as_args_kwargs(inputs)
    with quiet(), torch.no_grad():
        program = torch.onnx.export(model, tuple(args), kwargs=dict(kwargs) or None, dynamo=True, verbose=False, optimize=True)
    details["_program"] = program.exported_program
    return fx_values(program.exported_program, tuple(args), dict(kwargs))


def fx_module(program: Any, fx_name: str | None) -> tuple[Culprit, Any] | None:
    """The module (and source frame) of an FX node of the reference's program: for a file's node that
    lost its metadata (a node replaced by hand keeps its output name)."""
    node = next((n for n in program.graph.nodes if n.name == fx_name), None) if fx_name else None
    stack = (node.meta.get("nn_module_stack") or {}) if node is not None else {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    frames = frames_in_text(node.meta.get("stack_trace") or "")
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return Culprit.module(path, cls_name.rsplit(".", 1)[-1]), pick(frames) or (frames[0] if frames else None)


def _legacy_reference(model: torch.nn.Module, proto: Any, inputs: Any, feeds: dict[str, Any]) -> dict[str, Any]:
    """Every named value of a legacy export of the reference made like the file, run on the same feeds."""
    import onnx

    args, kwargs = as_args_kwargs(inputs)
    names = [n for n in input_dims(proto)]
    axes = {n: {d: s for d, s in enumerate(dims) if isinstance(s, str)} for n, dims in input_dims(proto).items()}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "reference.onnx")
        with quiet(), torch.no_grad():
            torch.onnx.export(model, tuple(args), path, kwargs=dict(kwargs) or None, dynamo=False, input_names=names,
                              output_names=[o.name for o in proto.graph.output], opset_version=opset,
                              dynamic_axes={k: v for k, v in axes.items() if v} or None)
        ref_proto = onnx.load(path)
    exposed, _ = expose_intermediates(ref_proto)
    session = _session(exposed.SerializeToString())
    wanted = [o.name for o in session.get_outputs()]
    ref_feeds = {i.name: feeds[i.name] for i in session.get_inputs() if i.name in feeds}
    return {k: torch.from_numpy(np.asarray(v)) for k, v in zip(wanted, session.run(wanted, ref_feeds))}


def locate(model: torch.nn.Module, cand: Candidate, inputs: Any, names: Sequence[str],
           details: dict[str, Any]) -> NodeDivergence | None:
    """The first diverging node of the candidate on `inputs`, with its module; None with the reason in details."""
    proto = cand.obj
    style = exporter_style(proto)
    details["onnx_exporter"] = style
    if style == "unknown":
        details["divergence"] = ("the file's node names follow neither torch exporter, so its intermediate values cannot be "
                                 "matched to the model's: only the outputs were compared")
        return None
    feeds = onnx_feeds(cand, inputs, names)
    try:
        reference = _dynamo_reference(model, inputs, details) if style == "dynamo" else _legacy_reference(model, proto, inputs, feeds)
    except Exception as exc:
        details.pop("_program", None)
        details["divergence_error"] = f"re-exporting the reference to match the file's values failed: {exc}"[:400]
        return None
    program = details.pop("_program", None)
    constants = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    reference = {k: v for k, v in reference.items() if k not in constants}
    div = first_divergence(proto, _session, feeds, reference)
    if div is None:
        details["divergence"] = ("every intermediate value matched by name agrees with the reference: the difference comes "
                                 "from values the re-export names differently (another torch version or export options?)")
        return None
    if div.module is None and program is not None:
        found_fx = fx_module(program, div.fx_node or div.output)
        if found_fx is not None:
            div.module, div.frame = found_fx[0], div.frame or found_fx[1]
    if div.module is None and style == "legacy":
        found = legacy_module(model, div.node)
        if found is not None:
            div.module = Culprit.module(found[0], found[1])
            div.frame = div.frame or class_frame(found[1])
    elif div.module is not None and div.frame is None:
        div.frame = class_frame(submodule(model, div.module.name))
    details["divergence"] = div.describe().replace("the exported program", "the reference")
    details["divergence_table"] = div.table[:60]
    return div


def initializer_diff(model: torch.nn.Module, proto: Any) -> list[tuple[str, float]]:
    """Initializers named like the model's parameters and buffers (both torch exporters keep the names)
    whose values differ from them: (name, max abs difference), largest first."""
    from onnx import numpy_helper

    state = model.state_dict()
    found = []
    for init in proto.graph.initializer:
        ref = state.get(init.name)
        if not isinstance(ref, torch.Tensor):
            continue
        value = numpy_helper.to_array(init)
        expected = ref.detach().cpu().double().numpy()
        if value.shape != expected.shape:
            found.append((init.name, float("inf")))
        elif value.size and float(np.abs(value.astype(np.float64) - expected).max()) > 0:
            found.append((init.name, float(np.abs(value.astype(np.float64) - expected).max())))
    return sorted(found, key=lambda item: -item[1])


def _node_module_path(model: torch.nn.Module, node: Any) -> str | None:
    scope = node_scope(node)
    if scope is not None:
        return scope.name
    found = legacy_module(model, node.name) if node.name.startswith("/") else None
    return found[0] if found else None


def owned_initializer_diff(model: torch.nn.Module, proto: Any, module_path: str) -> list[tuple[str, str, float]]:
    """Initializers the exporter renamed (`val_80`: a Linear's weight stored transposed for MatMul)
    used by the nodes of the diverging module, against that module's own parameters as stored or
    transposed: (initializer, parameter, max abs difference) for each that differs. Only the
    diverging module is searched: there a weight that differs explains the divergence, while
    elsewhere a renamed initializer may legitimately be a folded constant."""
    from onnx import numpy_helper

    module = submodule(model, module_path)
    if module is None:
        return []
    params = {f"{module_path}.{n}" if module_path else n: p.detach().cpu().double().numpy()
              for n, p in module.named_parameters(recurse=False)}
    named = set(model.state_dict())
    inits = {i.name: i for i in proto.graph.initializer if i.name not in named}
    found: dict[str, tuple[str, float]] = {}
    for node in proto.graph.node:
        if _node_module_path(model, node) != module_path:
            continue
        for name in (i for i in node.input if i in inits and i not in found):
            value = numpy_helper.to_array(inits[name]).astype(np.float64)
            diffs = [(float(np.abs(value - view).max()) if value.size else 0.0, pname + suffix)
                     for pname, ref in params.items()
                     for view, suffix in ((ref, ""), (ref.T, " (stored transposed)"))
                     if view.shape == value.shape and (suffix == "" or ref.ndim == 2)]
            if diffs:
                best = min(diffs)
                found[name] = (best[1], best[0])
    return [(name, pname, m) for name, (pname, m) in found.items() if m > 0]
