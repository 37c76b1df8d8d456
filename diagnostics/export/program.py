"""Building a torch.export program with the sweep's dynamic dimensions, and explaining why not.

Required dimensions (batch, declared) are asked as `Dim.DYNAMIC`, every other dimension eager
moves as `Dim.AUTO`. A required dimension the code pins to a constant is noted and exported static
so the rest can still be swept; a non-strict failure is retried with strict=True (TorchDynamo).
The shape guards torch.export adds are recorded with their lines (`guards`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..budget import OverBudget, deadline
from ..context import Context
from ..inputs import as_args_kwargs, call_model
from .cases import Sweep, dynamic_shapes_spec, named_leaves, restrict
from .guards import Site, capture_guards, pinning_sites, site_text
from .messages import ExportError, explain_export_error, informative, trim_message
from .pipeline import OPTIONAL_DIMS_BUDGET_S, Built, optional_groups, quiet, tmpdir

PROGRAM_KEY = "export:torch_export"


def export_program(ctx: Context, sweep: Sweep, budget_s: float = OPTIONAL_DIMS_BUDGET_S) -> Built:
    """The run's torch.export build, shared by torch_export, onnx and torchscript's attribution: the
    declared dims (batch, dynamic_dims) always dynamic; the optional ones too when that fits `budget_s`."""
    return ctx.cached(PROGRAM_KEY, lambda: build_within_budget(ctx, sweep, budget_s))


def required_program(ctx: Context, sweep: Sweep) -> Built:
    """torch.export with only the declared dims dynamic (the optional ones static)."""
    return ctx.cached(PROGRAM_KEY + ":required", lambda: _held_static(build_program(ctx, restrict(sweep, optional_groups(sweep))),
                                                                         sweep, optional_groups(sweep)))


def _held_static(built: Built, sweep: Sweep, names: list[str]) -> Built:
    built.extra["unexplored"] = names
    built.extra["sweep"] = restrict(sweep, names)
    return built


def build_within_budget(ctx: Context, sweep: Sweep, budget_s: float) -> Built:
    """Optional dims dynamic within `budget_s` (Swin-T's H/W took minutes); over it, the declared dims only."""
    optional = optional_groups(sweep)
    if not optional:
        return build_program(ctx, sweep)
    if budget_s > 0:
        start = time.perf_counter()
        try:
            with deadline(budget_s):
                return build_program(ctx, sweep)
        except OverBudget:
            spent = time.perf_counter() - start
        built = required_program(ctx, sweep)
        built.seconds += spent
        built.notes.append(f"torch.export with the optional dims dynamic ran past {budget_s:g} s and was stopped")
    else:
        built = required_program(ctx, sweep)
    built.extra["budget_s"] = budget_s
    return built


def sites_if_needed(ctx: Context, sweep: Sweep, outcome: Any) -> dict[str, Site]:
    """Where each failing dimension got pinned, from the torch.export build (built only when needed)."""
    if not any(gv.verdict in ("wrong", "static", "partial") for gv in outcome.groups):
        return {}
    try:
        return export_program(ctx, sweep).extra.get("sites", {})
    except Exception:
        return {}


@dataclass
class _Attempts:
    """State across export attempts: which required dims are still asked dynamic, which got pinned."""

    required: set[str]
    pinned: dict[str, str] = field(default_factory=dict)  # required group -> why it could not stay dynamic
    strict: bool = False
    records: list[Site] = field(default_factory=list)

    def retry(self, err: ExportError, built: Built, exc: BaseException) -> bool:
        """Adjust after a failure; False when there is nothing left to try."""
        named = set(err.groups) & self.required
        if err.kind == "constraint" and named:
            for name in named:
                self.required.discard(name)
                self.pinned[name] = err.words
            return True
        if err.kind == "constraint" and not err.groups and self.required:  # could not tell which: pin them all
            self.pinned.update({name: err.words for name in self.required})
            self.required.clear()
            return True
        if not self.strict and err.kind in ("numpy", "error") and "which is not a known type" not in err.words:  # strict cannot help
            built.notes.append(f"non-strict torch.export failed ({informative(exc, 2, 300)}); retried with strict=True (TorchDynamo)")
            self.strict = True
            return True
        return False


def _export_once(ctx: Context, sweep: Sweep, state: _Attempts) -> Any:
    from torch.export import Dim

    inputs = sweep.export_inputs
    args, kwargs = as_args_kwargs(inputs)
    spec = dynamic_shapes_spec(sweep, inputs, lambda g: Dim.DYNAMIC if g.name in state.required else Dim.AUTO)
    with capture_guards(ctx.model, hooks=not state.strict) as records, quiet(), torch.no_grad():  # as inference models are exported
        try:
            return torch.export.export(ctx.model, tuple(args), dict(kwargs), dynamic_shapes=spec, strict=state.strict)
        finally:
            state.records.extend(records)


def _fail(built: Built, err: ExportError, exc: BaseException) -> None:
    built.error = err.words
    built.error_kind, built.frame = err.kind, err.frame
    if err.kind != "error":
        built.notes.append(f"exporter said: {trim_message(exc, 3, 400)}")


def build_program(ctx: Context, sweep: Sweep) -> Built:
    """torch.export with the sweep's dims; explained failures."""
    built = Built("torch.export")
    state = _Attempts({g.name for g in sweep.groups if g.dynamic and g.required})
    start = time.perf_counter()
    ep = None
    for _attempt in range(6):
        try:
            ep = _export_once(ctx, sweep, state)
            break
        except Exception as exc:
            err = explain_export_error(exc, sweep)
            if not state.retry(err, built, exc):
                built.seconds = time.perf_counter() - start
                _fail(built, err, exc)
                built.extra["sites"] = pinning_sites(state.records, sweep)
                return built
    built.seconds = time.perf_counter() - start
    if ep is None:
        built.error, built.error_kind = "torch.export did not converge on dynamic dimensions after several attempts", "error"
        return built
    sites = pinning_sites(state.records, sweep)
    built.extra.update({"ep": ep, "strict": state.strict, "pinned": state.pinned, "sites": sites, "guards": len(state.records)})
    built.extra["static_in_program"] = _static_groups(ep, sweep, sweep.export_inputs)
    for name, why in state.pinned.items():
        built.notes.append(f"{sweep.group(name).label}: {why}{site_text(sites.get(name))}; exported with it static to sweep the rest")
    _save(ctx, built, ep)
    module = ep.module()
    built.run = lambda inputs: call_model(module, inputs)
    return built


def _save(ctx: Context, built: Built, ep: Any) -> None:
    path = os.path.join(tmpdir(ctx), "model.pt2")
    try:
        with quiet():
            torch.export.save(ep, path)
        built.path, built.size_bytes = path, os.path.getsize(path)
    except Exception as exc:
        built.notes.append(f"torch.export.save fails: {trim_message(exc, 2, 300)}")


def _static_groups(ep: Any, sweep: Sweep, inputs: Any) -> list[str]:
    """Dynamic groups that the exported program holds at a fixed size."""
    try:
        user_inputs = list(ep.graph_signature.user_inputs)
        nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        leaves = [k for k, v in named_leaves(inputs, sweep.names).items() if isinstance(v, torch.Tensor)]
        static: list[str] = []
        for i, leaf in enumerate(leaves):
            name = leaf if leaf in nodes else (user_inputs[i] if i < len(user_inputs) else None)
            node = nodes.get(name) if name else None
            val = node.meta.get("val") if node is not None else None
            if val is None:
                continue
            for d, size in enumerate(val.shape):
                g = sweep.group_of(leaf, d)
                if g is not None and g.dynamic and isinstance(size, int) and g.name not in static:
                    static.append(g.name)
        return static
    except Exception:
        return []
