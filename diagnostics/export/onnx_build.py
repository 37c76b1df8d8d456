"""Building an ONNX model (dynamo exporter), checking it, loading it under ONNX Runtime, and naming
the first ONNX operator that diverges from the exported program. Import only where onnx,
onnxscript and onnxruntime are installed."""
from __future__ import annotations

import os
import time
from typing import Any

import onnx
import onnxruntime as ort
import torch

from ..context import Context
from ..inputs import as_args_kwargs
from ..text import one_line
from ..tree import flatten, map_leaves
from . import onnx_tools
from .cases import Sweep, SweepCase, dynamic_shapes_spec, named_leaves, to_numpy
from .messages import explain_export_error, trim_message
from .pipeline import Built, non_tensor_outputs, quiet, tmpdir
from .program import export_program

_LARGE = 1_800_000_000  # protobuf's 2 GB limit: weights go to an external file above this


def _providers(ctx: Context) -> list[str]:
    providers = ["CPUExecutionProvider"]
    if ctx.device is not None and ctx.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def _session_options() -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors come back as exceptions; do not print them too
    return so


def _export(ctx: Context, sweep: Sweep, built: Built, program: Built | None) -> Any:
    args, kwargs = as_args_kwargs(sweep.export_inputs)
    with quiet():
        if program is not None and program.ok:
            prog = torch.onnx.export(program.extra["ep"], tuple(args), kwargs=dict(kwargs) or None, dynamo=True,
                                     verbose=False, optimize=True)
            built.notes.append("translated from the torch.export program the torch_export check built")
            return prog
        # Dims as strings: the exporter then surfaces specialisation errors instead of
        # silently emitting a static shape (a torch.export.Dim is applied silently).
        spec = dynamic_shapes_spec(sweep, sweep.export_inputs, lambda g: g.name)
        prog = torch.onnx.export(ctx.model, tuple(args), kwargs=dict(kwargs) or None, dynamic_shapes=spec,
                                 dynamo=True, verbose=False, optimize=True)
        built.notes.append("exported from the model (torch.export alone could not capture it)")
        return prog


def _export_failed(ctx: Context, sweep: Sweep, built: Built, program: Built | None, exc: BaseException) -> None:
    err = explain_export_error(exc, sweep)
    built.error = err.words if err.kind in ("data-dependent", "numpy", "constraint") else trim_message(exc)
    built.error_kind, built.frame = err.kind, err.frame
    odd = non_tensor_outputs(ctx)
    if odd and err.kind == "error":
        built.error = f"eager returns non-tensor outputs {odd}; an ONNX graph can only return tensors: {built.error}"
        built.error_kind = "outputs"
    if program is not None and program.error:
        built.notes.append(f"torch.export: {program.error}")
        built.error_kind = program.error_kind or err.kind
        built.frame = built.frame or program.frame


def _name_dims(proto: Any, sweep: Sweep) -> None:
    """Symbolic dims take the sweep's group names (s77 -> batch)."""
    mapping: dict[str, str] = {}
    for name, dims in onnx_tools.input_dims(proto).items():
        for axis, dim in enumerate(dims):
            g = sweep.group_of(name, axis)
            if isinstance(dim, str) and g is not None:
                mapping[dim] = g.name
    onnx_tools.rename_dims(proto, mapping)


def _serialise(ctx: Context, built: Built, proto: Any) -> Any:
    """What ONNX Runtime loads: the file for large models, else the bytes (written only for a repro bundle)."""
    path = os.path.join(tmpdir(ctx), "model.onnx")
    if proto.ByteSize() > _LARGE:
        onnx.save_model(proto, path, save_as_external_data=True, location="model.onnx.data")
        built.path = path
        built.size_bytes = os.path.getsize(path) + os.path.getsize(path + ".data")
        return path
    source = proto.SerializeToString()
    built.size_bytes = len(source)

    def write(data: bytes = source) -> str:
        with open(path, "wb") as fh:
            fh.write(data)
        return path

    built.extra["write"] = write
    return source


def _feeds(inputs: Any, sweep: Sweep, graph_inputs: list[str]) -> dict[str, Any]:
    """Graph input name -> array: by leaf name, else by position."""
    by_name = {k: to_numpy(v) for k, v in named_leaves(inputs, sweep.names).items() if isinstance(v, torch.Tensor)}
    ordered = list(by_name.values())
    return {n: by_name[n] if n in by_name else ordered[i]
            for i, n in enumerate(graph_inputs) if n in by_name or i < len(ordered)}


def _runner(ctx: Context, sweep: Sweep, session: Any, graph_inputs: list[str]) -> Any:
    template, device = ctx.reference, ctx.device
    n_tensors = sum(isinstance(v, torch.Tensor) for v in flatten(template).values())

    def run(inputs: Any) -> Any:
        flat = [torch.from_numpy(o).to(device) for o in session.run(None, _feeds(inputs, sweep, graph_inputs))]
        if n_tensors != len(flat):
            raise RuntimeError(f"the artifact returned {len(flat)} outputs, eager returns {n_tensors} tensors")
        it = iter(flat)  # back into eager's output structure (non-tensor leaves are eager's)
        return map_leaves(template, lambda leaf: next(it) if isinstance(leaf, torch.Tensor) else leaf)

    return run


def build_onnx(ctx: Context, sweep: Sweep) -> Built:
    """Export (from the shared torch.export program when there is one), check, load under ONNX Runtime."""
    built = Built("onnx")
    start = time.perf_counter()
    try:
        program: Built | None = export_program(ctx, sweep)
    except Exception:
        program = None
    try:
        prog = _export(ctx, sweep, built, program)
    except Exception as exc:
        built.seconds = time.perf_counter() - start
        _export_failed(ctx, sweep, built, program, exc)
        return built
    proto = prog.model_proto
    _name_dims(proto, sweep)
    source = _serialise(ctx, built, proto)
    try:
        onnx.checker.check_model(source if isinstance(source, str) else proto)
        built.extra["checker"] = "ok"
        session = ort.InferenceSession(source, _session_options(), providers=_providers(ctx))
    except Exception as exc:
        built.seconds = time.perf_counter() - start
        loaded = "checker" in built.extra
        built.error = (f"ONNX Runtime cannot load the model: {trim_message(exc, 2, 300)}" if loaded else
                       f"onnx.checker rejects the exported model: {trim_message(exc, 2, 300)}")
        built.error_kind = "runtime" if loaded else "checker"
        return built
    built.seconds = time.perf_counter() - start
    built.extra.update({"program": prog, "proto": proto, "providers": session.get_providers(), "dims": onnx_tools.input_dims(proto),
                        "ep_built": program})
    graph_inputs = [i.name for i in session.get_inputs()]
    built.run = _runner(ctx, sweep, session, graph_inputs)
    built.extra["feeds"] = lambda inputs: _feeds(inputs, sweep, graph_inputs)
    return built


def divergence(ctx: Context, built: Built, case: SweepCase | None, details: dict[str, Any]) -> onnx_tools.NodeDivergence | None:
    """First diverging ONNX operator on the (shrunk) failing case, or None (the reason goes to details)."""
    if case is None:
        return None
    try:
        ep = getattr(built.extra["program"], "exported_program", None)
        if ep is None:
            details["divergence"] = "the ONNX program keeps no exported program: intermediate values cannot be matched"
            return None
        args, kwargs = as_args_kwargs(case.inputs)
        reference = onnx_tools.fx_values(ep, tuple(args), dict(kwargs))
        so = _session_options()
        div = onnx_tools.first_divergence(built.extra["proto"],
                                          lambda b: ort.InferenceSession(b, so, providers=["CPUExecutionProvider"]),
                                          built.extra["feeds"](case.inputs), reference)
        if div is None:
            details["divergence"] = ("every intermediate ONNX value matches the exported program: the difference comes from the "
                                     "torch.export capture itself (see the torch_export check)")
            return None
        details["divergence"] = div.describe()
        details["divergence_table"] = div.table[:60]
        return div
    except Exception as exc:
        details["divergence_error"] = one_line(exc)
        return None
