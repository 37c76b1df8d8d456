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

from ..budget import OverBudget, deadline
from ..context import Context
from ..inputs import as_args_kwargs
from ..text import one_line
from ..tree import flatten, map_leaves
from . import onnx_tools
from .cases import Sweep, SweepCase, dynamic_shapes_spec, named_leaves, to_numpy
from .messages import explain_export_error, trim_message
from .pipeline import (OPTIONAL_DIMS_BUDGET_S, Built, cache_outputs, non_tensor_outputs, optional_groups,
                       quiet, tmpdir)
from .program import export_program, required_program

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
    built.error = err.words
    built.error_kind, built.frame = err.kind, err.frame
    odd = ", ".join(cache_outputs(ctx.reference)) or non_tensor_outputs(ctx)
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


def _legacy(ctx: Context, sweep: Sweep, built: Built) -> Any:
    """The TorchScript-based exporter (`dynamo=False`), as users fall back to it; the model proto or None.
    Every dimension eager moves is a named dynamic axis (a trace costs the same either way)."""
    args, kwargs = as_args_kwargs(sweep.export_inputs)
    tensors = {k: v for k, v in named_leaves(sweep.export_inputs, sweep.names).items() if isinstance(v, torch.Tensor)}
    leaves = list(tensors)
    axes = {leaf: {d: g.name for d in range(t.dim()) if (g := sweep.group_of(leaf, d)) is not None and g.dynamic}
            for leaf, t in tensors.items()}
    path = os.path.join(tmpdir(ctx), "model.legacy.onnx")
    start = time.perf_counter()
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(ctx.model, tuple(args), path, kwargs=dict(kwargs) or None, dynamo=False, input_names=leaves,
                              dynamic_axes={k: v for k, v in axes.items() if v} or None)
        proto = onnx.load(path)
    except Exception as exc:
        built.extra["legacy"] = f"fails too: {trim_message(exc, 3, 400)}"
        built.notes.append(f"the legacy exporter (dynamo=False) fails too: {trim_message(exc, 3, 400)}")
        return None
    built.extra["legacy"] = f"works ({time.perf_counter() - start:.1f} s)"
    built.extra["dynamo_error"], built.extra["dynamo_error_kind"] = built.error, built.error_kind
    built.error = built.error_kind = None
    built.extra["exporter"] = "legacy"
    built.notes.append("the dynamo exporter failed; the legacy TorchScript-based exporter (dynamo=False) produced the judged ONNX model")
    return proto


def _export_within_budget(ctx: Context, sweep: Sweep, built: Built, program: Built | None,
                          budget_s: float) -> tuple[Any, Built | None, Sweep]:
    """The dynamo export with the optional dims the program kept dynamic, stopped past `budget_s`
    and redone with the declared dims only. Returns (ONNX program, torch.export program, its sweep)."""
    psweep = program.extra.get("sweep", sweep) if program is not None else sweep
    optional = optional_groups(psweep)
    try:
        with deadline(budget_s if optional else 0.0), torch.no_grad():
            prog = _export(ctx, psweep, built, program)
    except OverBudget:
        built.notes.append(f"the ONNX export with the optional dims dynamic ran past {budget_s:g} s and was stopped")
        program = required_program(ctx, sweep)
        psweep = program.extra["sweep"]
        with torch.no_grad():
            prog = _export(ctx, psweep, built, program)
    if psweep is not sweep:
        built.extra.update({"sweep": psweep, "unexplored": optional_groups(sweep), "budget_s": budget_s})
    return prog, program, psweep


def build_onnx(ctx: Context, sweep: Sweep, budget_s: float = OPTIONAL_DIMS_BUDGET_S) -> Built:
    """Export (from the shared torch.export program when there is one) under no_grad, as an inference
    model is exported; when the dynamo exporter fails, try the legacy one (`dynamo=False`) and judge
    that. Check the model and load it under ONNX Runtime."""
    built = Built("onnx")
    start = time.perf_counter()
    try:
        program: Built | None = export_program(ctx, sweep, budget_s)
    except Exception:
        program = None
    try:
        prog, program, sweep = _export_within_budget(ctx, sweep, built, program, budget_s)
        proto = prog.model_proto
        _name_dims(proto, sweep)
        built.extra["exporter"] = "dynamo"
    except Exception as exc:
        _export_failed(ctx, sweep, built, program, exc)
        prog, proto = None, _legacy(ctx, sweep, built)
        if proto is None:
            built.seconds = time.perf_counter() - start
            return built
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
