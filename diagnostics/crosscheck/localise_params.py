"""Where two models part ways: the parameters and buffers that differ, the first module whose output
moves (hooks on both, or the reference against a recording's module outputs), and for a `.pt2`
program the first FX node that computes differently from a torch.export of the reference."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..inputs import as_args_kwargs, call_model
from ..locate.code import frames_in_text, pick
from ..locate.culprit import Culprit, module_label
from ..locate.divergence import Divergence, first_divergence, recorded_divergence
from ..locate.hooks import ModuleCall, ModuleRecorder
from ..text import plural

#: Recordings come from other machines and kernels: module outputs within these count as unmoved.
RECORDED_RTOL, RECORDED_ATOL = 1e-4, 1e-6


@dataclass
class ParamDiff:
    """Parameters and buffers (state_dict entries) that differ between the reference and the candidate."""

    changed: list[dict[str, Any]] = field(default_factory=list)  # name, max_abs, differing, numel
    missing: list[str] = field(default_factory=list)  # in the reference only
    extra: list[str] = field(default_factory=list)  # in the candidate only
    reshaped: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def any(self) -> bool:
        return bool(self.changed or self.missing or self.extra or self.reshaped)

    def modules(self) -> list[str]:
        """Owning module paths of what differs, in state_dict order, without repeats."""
        names = [c["name"] for c in self.changed] + self.reshaped + self.missing + self.extra
        return list(dict.fromkeys(n.rpartition(".")[0] for n in names))

    def describe(self, limit: int = 4) -> str:
        parts = [f"`{c['name']}` (max abs diff {c['max_abs']:.3g}, {c['differing']} of {c['numel']} values)" for c in self.changed[:limit]]
        if len(self.changed) > limit:
            parts.append(f"+{len(self.changed) - limit} more")
        text = (f"{plural(len(self.changed), 'parameter/buffer', 'parameters/buffers')} of {self.compared} differ: "
                + ", ".join(parts)) if self.changed else ""
        for words, names in (("shape differs", self.reshaped), ("only in the reference", self.missing),
                             ("only in the candidate", self.extra)):
            if names:
                text += ("; " if text else "") + f"{words}: {', '.join(f'`{n}`' for n in names[:limit])}"
        return text or f"all {self.compared} parameters and buffers are equal"

    def rows(self) -> list[dict[str, Any]]:
        return self.changed[:100]


def param_diff(reference: torch.nn.Module, candidate: Any) -> ParamDiff:
    """Compare the two state_dicts entry by entry (exactly: the same checkpoint loads bit for bit)."""
    a, b = reference.state_dict(), candidate.state_dict()
    diff = ParamDiff(missing=[k for k in a if k not in b], extra=[k for k in b if k not in a])
    for name, ta in a.items():
        tb = b.get(name)
        if not isinstance(ta, torch.Tensor) or not isinstance(tb, torch.Tensor):
            continue
        diff.compared += 1
        if ta.shape != tb.shape:
            diff.reshaped.append(name)
            continue
        da, db = ta.detach().cpu(), tb.detach().cpu()
        if da.dtype != db.dtype or not da.is_floating_point():
            same = torch.equal(da, db.to(da.dtype))
            if not same:
                diff.changed.append({"name": name, "max_abs": float("inf"), "differing": int((da != db.to(da.dtype)).sum()),
                                     "numel": da.numel()})
            continue
        delta = (da.double() - db.double()).abs()
        delta = torch.where(torch.isnan(da) & torch.isnan(db), torch.zeros_like(delta), delta.nan_to_num(nan=float("inf")))
        if delta.numel() and float(delta.max()) > 0:
            diff.changed.append({"name": name, "max_abs": float(delta.max()), "differing": int((delta > 0).sum()), "numel": da.numel()})
    return diff


def _record(model: Any, inputs: Any) -> list[ModuleCall]:
    with torch.inference_mode(), ModuleRecorder(model) as rec:
        call_model(model, inputs)
    return rec.calls


def first_moving_module(reference: torch.nn.Module, candidate: Any, inputs: Any) -> Divergence | None:
    """The first module whose output differs between the two models while its input agrees (bitwise:
    the same code on the same machine)."""
    if isinstance(candidate, torch.jit.ScriptModule):
        return None  # TorchScript modules take no forward hooks

    def run(model: Any) -> Any:
        def call() -> Any:
            with torch.inference_mode():
                return call_model(model, inputs)
        return call

    return recorded_divergence(reference, run(reference), run(candidate), first_divergence, model_b=candidate)[0]


def first_moving_recorded(reference: torch.nn.Module, inputs: Any, calls: list[ModuleCall]) -> Divergence | None:
    """The first module whose recorded output differs from the reference's own, its input agreeing."""
    return first_divergence(calls, _record(reference, inputs), rtol=RECORDED_RTOL, atol=RECORDED_ATOL)


def _node_culprit(node: Any) -> Culprit:
    """`relu_1 (aten.relu.default) in layer1.0 (BasicBlock)`, at its source line."""
    stack = node.meta.get("nn_module_stack") or {}
    path, cls = list(stack.values())[-1] if stack else ("", "")
    frames = frames_in_text(node.meta.get("stack_trace") or "")
    module = f" in {module_label(path, str(cls).rsplit('.', 1)[-1])}" if path else ""
    return Culprit.named(f"{node.name} ({node.target}){module}", frame=pick(frames) or (frames[0] if frames else None))


def first_program_node(reference: torch.nn.Module, program: Any, inputs: Any) -> tuple[Culprit, str] | None:
    """The candidate program's first FX node whose value differs from a torch.export of the reference
    (by node name) while its inputs agree; (culprit, description) or None."""
    import numpy as np

    from ..export.cases import to_numpy
    from ..export.onnx_tools import fx_values, values_differ

    args, kwargs = as_args_kwargs(inputs)
    with torch.no_grad():
        ref_program = torch.export.export(reference, tuple(args), kwargs=dict(kwargs), strict=False)
    ref_vals = fx_values(ref_program, tuple(args), dict(kwargs))
    cand_vals = fx_values(program, tuple(args), dict(kwargs))

    def differs(name: str) -> bool:
        a, b = to_numpy(cand_vals.get(name)), to_numpy(ref_vals.get(name))
        return a is not None and b is not None and values_differ(np.asarray(a), np.asarray(b))[0]

    first_any = None
    for node in program.module().graph.nodes:
        if node.op != "call_function" or not differs(node.name):
            continue
        inputs_agree = not any(differs(n.name) for n in node.all_input_nodes)
        a, b = to_numpy(cand_vals[node.name]), to_numpy(ref_vals[node.name])
        found = (_node_culprit(node), f"first diverging node of the program: {_node_culprit(node).label}; "
                                      f"`{node.name}` differs by {values_differ(np.asarray(a), np.asarray(b))[1]:.3g}")
        if inputs_agree:
            return found
        first_any = first_any or found
    return first_any
