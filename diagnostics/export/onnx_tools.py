"""ONNX helpers for the export checks: input dimensions, and the first diverging operator.

Import only where onnx / onnxruntime are known to be installed (the onnx check skips otherwise).

`first_divergence` exposes every intermediate value of an ONNX graph as an output, runs it once
under ONNX Runtime, runs the exported program the graph was translated from (the dynamo
exporter names ONNX values after its FX nodes and keeps each node's stack trace in the node's
metadata), and walks the ONNX nodes in execution order: the first node whose outputs differ
from the FX values while its inputs agree is where the numbers part ways.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..locate.code import Frame, frames_in_text, pick
from ..locate.culprit import Culprit
from .cases import to_numpy


def input_dims(proto: Any) -> dict[str, list[int | str]]:
    """Graph input name -> its dims (an int when static, the dim_param name when symbolic, '?' when unknown)."""
    inits = {init.name for init in proto.graph.initializer}
    out: dict[str, list[int | str]] = {}
    for value in proto.graph.input:
        if value.name in inits:
            continue
        dims: list[int | str] = []
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append("?")
        out[value.name] = dims
    return out


def rename_dims(proto: Any, mapping: dict[str, str]) -> None:
    """Rename symbolic dims (dim_param) everywhere in the graph, e.g. s77 -> batch."""
    if not mapping:
        return

    def fix(values: Any) -> None:
        for value in values:
            if not value.type.HasField("tensor_type"):
                continue
            for d in value.type.tensor_type.shape.dim:
                if d.HasField("dim_param"):
                    new = d.dim_param
                    for old, name in mapping.items():
                        new = re.sub(rf"\b{re.escape(old)}\b", name, new)
                    d.dim_param = new

    fix(proto.graph.input)
    fix(proto.graph.output)
    fix(proto.graph.value_info)


def node_source(node: Any) -> Frame | None:
    """The line a node came from: the user's innermost frame of its stack trace, else a library's,
    else the innermost frame."""
    meta = {p.key: p.value for p in node.metadata_props}
    frames = frames_in_text(meta.get("pkg.torch.onnx.stack_trace", ""))
    return pick(frames) or (frames[0] if frames else None)


def node_scope(node: Any) -> Culprit | None:
    """The module the node came from, from the exporter's name scopes."""
    meta = {p.key: p.value for p in node.metadata_props}
    parts = [p for p in meta.get("namespace", "").split("/") if p]
    for part in reversed(parts):
        path, _, cls = part.partition(": ")
        if cls.startswith(("aten.", "<built-in", "_operator")) or not path:
            continue
        return Culprit.module(path, cls.rsplit(".", 1)[-1])
    return None


def fx_node_name(node: Any) -> str | None:
    meta = {p.key: p.value for p in node.metadata_props}
    m = re.match(r"%(\S+)\s*:", meta.get("pkg.torch.onnx.fx_node", ""))
    return m.group(1) if m else None


def fx_values(exported_program: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Every FX node's value when the exported program runs on (args, kwargs), by node name."""
    gm = exported_program.module()
    values: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            values[n.name] = result
            return result

    flat_args = _flat_user_inputs(gm, args, kwargs)
    with torch.inference_mode():
        Recorder(gm).run(*flat_args)
    return values


def _flat_user_inputs(gm: Any, args: tuple, kwargs: dict) -> list[Any]:
    """The unlifted module's placeholders take the flattened (args, kwargs), kwargs in its in_spec order."""
    import torch.utils._pytree as pytree

    spec = getattr(gm, "_in_spec", None)
    if spec is not None and kwargs:
        try:
            keys = spec.children_specs[1].context
            kwargs = {k: kwargs[k] for k in keys}
        except Exception:
            pass
    flat, _ = pytree.tree_flatten((tuple(args), dict(kwargs)))
    return flat


def _elem_types(proto: Any) -> dict[str, int]:
    import onnx

    types: dict[str, int] = {}
    for v in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    missing = [o for n in proto.graph.node for o in n.output if o and o not in types]
    if missing:
        try:
            inferred = onnx.shape_inference.infer_shapes(proto)
            for v in inferred.graph.value_info:
                if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                    types.setdefault(v.name, v.type.tensor_type.elem_type)
        except Exception:
            pass
    return types


def expose_intermediates(proto: Any) -> tuple[Any, list[str]]:
    """A copy of the model with every node output (of known type) added as a graph output."""
    import onnx

    exposed = copy.deepcopy(proto)
    types = _elem_types(proto)
    existing = {o.name for o in exposed.graph.output} | {i.name for i in exposed.graph.input} | {i.name for i in exposed.graph.initializer}
    names: list[str] = []
    for node in exposed.graph.node:
        for out in node.output:
            if out and out not in existing and out in types:
                exposed.graph.output.append(onnx.helper.make_tensor_value_info(out, types[out], None))
                existing.add(out)
                names.append(out)
    return exposed, names


@dataclass
class NodeDivergence:
    """The first ONNX node whose outputs part from the exported program's while its inputs agree."""

    node: str
    op_type: str
    output: str
    max_abs: float
    rel: float
    frame: Frame | None = None  # the source line the node came from
    module: Culprit | None = None  # the module scope it was exported in
    fx_node: str | None = None
    inputs_agree: bool = True
    compared: int = 0
    table: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.node} ({self.op_type})"

    @property
    def location(self) -> str | None:
        return self.frame.location if self.frame else None

    @property
    def code(self) -> str | None:
        return self.frame.code if self.frame else None

    @property
    def culprit(self) -> Culprit:
        """`node_topk (TopK) from head (Head)`, at the line the node came from."""
        name = self.label + (f" from {self.module.label}" if self.module else "")
        return Culprit.named(name, frame=self.frame)

    def describe(self) -> str:
        where = f" from {self.location}" + (f" `{self.code}`" if self.code else "") if self.location else ""
        mod = f" in {self.module.label}" if self.module else ""
        agree = "its inputs agree with the exported program but its output " if self.inputs_agree else "its output "
        return (f"first diverging ONNX operator: {self.label}{mod}{where}; {agree}`{self.output}` differs by "
                f"{_fmt(self.max_abs)} (relative {_fmt(self.rel)})")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def values_differ(a: np.ndarray, b: np.ndarray, rel: float = 1e-3) -> tuple[bool, float, float]:
    """(differ, max_abs, max_abs / max|b|): exact for integer and bool values, relative for floats."""
    if a.shape != b.shape:
        if a.size == b.size:
            a = a.reshape(b.shape)
        else:
            return True, math.inf, math.inf
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating)):
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        m = float(diff.max()) if diff.size else 0.0
        return m > 0, m, m / (float(np.abs(b).max()) if b.size and np.abs(b).max() else 1.0)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    same_inf = np.isinf(a64) & np.isinf(b64) & (a64 == b64)
    bad = (~np.isfinite(a64) | ~np.isfinite(b64)) & ~(both_nan | same_inf)
    if bad.any():
        return True, math.inf, math.inf
    finite = np.isfinite(a64) & np.isfinite(b64)
    diff = np.where(finite, np.abs(a64 - b64), 0.0)
    m = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(np.where(finite, b64, 0.0)).max()) if b64.size else 0.0
    r = m / scale if scale > 0 else (0.0 if m == 0 else math.inf)
    return m > rel * scale + 1e-30 and m > 0, m, r


_AUTO_VALUE = re.compile(r"val_\d+")


def _reference_for(reference: dict[str, Any], node: Any, index: int, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The exported program's value of an ONNX value: by name, else through the node's FX node.

    The FX fallback is for a value that lost its FX name (a node replaced by hand, another exporter
    version). The dynamo exporter decomposes one FX node into several ONNX nodes that all carry its
    metadata (a Concat building `expand`'s shape, the MatMul before `linear`'s bias Add), and names
    their partial results `val_N`: those are never the FX node's value, so they are not compared.
    A fallback value must also have the FX value's shape."""
    if name in reference:
        return to_numpy(reference[name])
    fx = fx_node_name(node)
    if not fx or fx not in reference or _AUTO_VALUE.fullmatch(name):
        return None
    val = reference[fx]
    if isinstance(val, (tuple, list)):
        val = val[index] if index < len(val) else None
    elif index:
        val = None
    found = to_numpy(val) if val is not None else None
    return found if found is not None and tuple(found.shape) == tuple(shape) else None


def _inputs_agree(node: Any, onnx_vals: dict[str, Any], ref_by_value: dict[str, np.ndarray]) -> bool:
    return not any(values_differ(np.asarray(onnx_vals[inp]), ref_by_value[inp])[0]
                   for inp in node.input if inp in ref_by_value and inp in onnx_vals)


def first_divergence(
    proto: Any,
    make_session: Callable[[bytes], Any],
    feeds: dict[str, np.ndarray],
    reference: dict[str, Any],
) -> NodeDivergence | None:
    """Walk the ONNX nodes in order; name the first whose outputs differ while its inputs agree.

    `reference`: FX node name -> value (see `fx_values`); ONNX values are matched to FX values
    by name, or through the node's `pkg.torch.onnx.fx_node` metadata for multi-output nodes.
    Returns None when no compared value differs.
    """
    exposed, _ = expose_intermediates(proto)
    session = make_session(exposed.SerializeToString())
    out_names = [o.name for o in session.get_outputs()]
    onnx_vals = {**dict(zip(out_names, session.run(out_names, feeds))), **feeds}
    ref_by_value: dict[str, np.ndarray] = dict(feeds)
    table: list[dict[str, Any]] = []
    first_any: NodeDivergence | None = None
    compared = 0
    for node in proto.graph.node:
        outputs = []
        for i, out in enumerate(node.output):
            ref = (_reference_for(reference, node, i, out, np.shape(onnx_vals[out])) if out and out in onnx_vals else None)
            if ref is not None:
                ref_by_value[out] = ref
                outputs.append((out, onnx_vals[out], ref))
        agree = bool(outputs) and _inputs_agree(node, onnx_vals, ref_by_value)
        for out, val, ref in outputs:
            compared += 1
            differ, m, r = values_differ(np.asarray(val), ref)
            if len(table) < 400:
                table.append({"node": node.name, "op": node.op_type, "output": out, "max_abs": m, "rel": r, "differs": differ})
            if not differ:
                continue
            found = NodeDivergence(node.name, node.op_type, out, m, r, node_source(node), node_scope(node), fx_node_name(node), agree)
            if agree:
                found.compared, found.table = compared, table
                return found
            first_any = first_any or found
    if first_any is not None:
        first_any.compared, first_any.table = compared, table
    return first_any
