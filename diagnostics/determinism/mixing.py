"""A sample's output that depends on the other samples in its batch: the first module that mixes
samples (its input rows agree, its output rows do not), and inside a model-written module an
operator tape naming the op and the line (e.g. `x - x.mean(0)`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..context import Context
from ..locate import Culprit, Frame, current_frame
from ..locate.divergence import recorded_divergence
from ..locate.hooks import ModuleCall
from ..locate.spy import op_base_name
from ..locate.source import submodule
from .batch import align_rows, comparable
from .divergence import scaled_divergence
from .modes import bn_training_hint
from .source import is_model_class


@dataclass
class Op:
    """One aten op run inside the taped module: its tensors and the line that called it."""

    name: str
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    frame: Frame | None


def _tensors(tree: Any) -> dict[str, torch.Tensor]:
    return {str(i): t.detach().clone() for i, t in enumerate(tree_flatten(tree)[0]) if comparable(t)}


class OpTape(TorchDispatchMode):
    """Records every aten op (tensors and the calling line) run inside module `scope` ("" = all)."""

    def __init__(self, model: torch.nn.Module, scope: str) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.depth = 0 if scope else 1
        self._module = submodule(model, scope) if scope else None
        self._handles: list[Any] = []

    def __enter__(self) -> "OpTape":
        if self._module is not None:
            self._handles.append(self._module.register_forward_pre_hook(lambda m, a: self._move(1)))
            self._handles.append(self._module.register_forward_hook(lambda m, a, o: self._move(-1)))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)

    def _move(self, step: int) -> None:
        self.depth += step

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.depth <= 0:
            return func(*args, **kwargs)
        ins = _tensors((args, kwargs))
        out = func(*args, **kwargs)
        self.ops.append(Op(op_base_name(func), ins, _tensors(out), current_frame(allow_torch=False)))
        return out


def first_divergent_op(batched: list[Op], single: list[Op], row: int, n: int, rel: float) -> Op | None:
    """The first op (while both tapes run the same ops) whose output rows differ although its input rows agree."""
    calls_b, calls_s = [], []
    for i, (ob, os_) in enumerate(zip(batched, single)):
        if ob.name != os_.name:
            break
        calls_b.append(ModuleCall(str(i), ob.name, ob.inputs, ob.outputs, i))
        calls_s.append(ModuleCall(str(i), os_.name, os_.inputs, os_.outputs, i))
    found = scaled_divergence(calls_b, calls_s, rel, align_rows(row, n))
    return single[int(found.name)] if found is not None and found.input_equal else None


def batch_hint(model: torch.nn.Module, name: str, module: torch.nn.Module | None, dim: int) -> tuple[str, Frame | None]:
    """Words for a module whose per-sample output depends on the other samples (and a train() override to fix)."""
    label = f"module `{name or '<root>'}` ({type(module).__name__ if module is not None else '?'})"
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        if module.training:
            return bn_training_hint(model, name, module, "it normalises each sample with the statistics of the whole batch")
        return (f"{label} has track_running_stats=False, so even in eval mode it normalises with the batch's own statistics: "
                "construct it with track_running_stats=True and load running statistics, or use GroupNorm/LayerNorm"), None
    if isinstance(module, torch.nn.MultiheadAttention) and not module.batch_first:
        return (f"{label} has batch_first=False and expects (seq, batch, dim) inputs: given a batch-first tensor, it attends across "
                "samples; construct it with batch_first=True or transpose its inputs (if the model's inputs really are "
                "sequence-first, give `Target(batch_dim=1)` or `-o batch_invariance.batch_dim=1`)"), None
    if isinstance(module, torch.nn.RNNBase) and not module.batch_first and dim == 0:
        return (f"{label} has batch_first=False, so dim 0 of its input is time, not the batch: if the model's inputs are "
                "(seq, batch, ...), give `Target(batch_dim=1)` or `-o batch_invariance.batch_dim=1`; otherwise construct it with "
                "batch_first=True"), None
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and module.training:
        return f"{label} is in training mode: call `.eval()` after loading", None
    return (f"{label} mixes samples: each sample's output depends on the rest of the batch; look for reductions over dim {dim} "
            "(mean/sum/max over the batch), batch statistics, or attention across the batch axis"), None


def _taped_op(ctx: Context, scope: str, batch: Any, single: Any, row: int, n: int, rel: float, details: dict[str, Any]) -> Op | None:
    """The op inside module `scope` that mixes samples; the tape is a refinement: never let it hide the module."""
    try:
        with OpTape(ctx.model, scope) as tape_b:
            ctx.forward(batch)
        with OpTape(ctx.model, scope) as tape_s:
            ctx.forward(single)
        return first_divergent_op(tape_b.ops, tape_s.ops, row, n, rel)
    except Exception as exc:
        details["op_tape_error"] = f"{type(exc).__name__}: {exc}"
        return None


def localise_batch(ctx: Context, batch: Any, row: int, single: Any, n: int, rel: float, dim: int) -> tuple[Culprit | None, str, dict[str, Any]]:
    """Name the first module whose output for sample `row` depends on the other samples: (culprit, hint, details).

    Records the batched run and the sample-alone run, compares each module's output rows while
    its input rows agree; inside a model-written culprit an operator tape names the op and line.
    """
    model = ctx.model
    found, unrecorded = recorded_divergence(model, lambda: ctx.forward(batch), lambda: ctx.forward(single),
                                            lambda b, s: scaled_divergence(b, s, rel, align_rows(row, n)))
    details: dict[str, Any] = {"localisation": unrecorded} if unrecorded else {}
    if found is None:
        return None, ("the sample-alone output differs from its row of the batch but no module's output does: "
                      "check code around the model call"), details
    scope = found.name.split("#")[0]
    module = submodule(model, found.name)
    details["first_divergent_module"] = found.label
    details["first_divergent_max_rel"] = found.max_abs
    hint, frame = batch_hint(model, scope, module, dim)
    op = _taped_op(ctx, scope, batch, single, row, n, rel, details) if is_model_class(module) else None
    if op is not None:
        frame = op.frame or frame
        details["op"] = f"aten.{op.name} at {frame.location if frame else None}"
        code = (op.frame.code if op.frame else "").split("  #")[0].strip()
        function = op.frame.function if op.frame else "forward"
        hint = (f"`{scope or '<root>'}.{function}` mixes samples at `{code}` (aten.{op.name}): "
                f"it reduces or normalises over the batch dimension (dim {dim}), so each sample's output depends on the others; "
                "reduce over the sample's own dims instead (e.g. dim=-1) or use stored statistics")
    return found.culprit.with_frame(frame), hint, details
