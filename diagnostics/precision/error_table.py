"""The per-layer error table: where a reduced-precision (or quantized) twin of the model loses accuracy.

`record_io` records every module call's inputs and outputs in fp32 (clones, shared where a module's
input is the previous module's output); `error_table` then runs the twin twice: as it is (each
module's error *carried forward* from everything before it) and with every module's inputs
replaced by the fp32 ones (each module's *local* error). `pick_local_culprit` names the module
that loses the most on its own.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable, ContextManager

import torch

from .. import inputs as inp
from ..locate.code import Frame
from ..tree import flatten, map_leaves
from .hooks import ModuleCallView, ModuleHooks, call_site, depth, float_leaves, is_timeout, plain, tensor_range


@dataclass
class ModuleIO:
    name: str
    module_type: str
    order: int
    depth: int
    args: tuple
    kwargs: dict
    outputs: dict[str, torch.Tensor]  # floating output leaves by name
    call_site: Frame | None = None


class _CloneCache:
    """Clones of tensors, shared while the original is alive and unmodified (an output that is the
    next module's input is stored once)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, int, torch.Tensor]] = {}

    def clone(self, t: torch.Tensor) -> torch.Tensor:
        try:
            version = t._version
            ref = weakref.ref(t)
        except (RuntimeError, TypeError):  # inference tensors have no version counter
            return t.detach().clone()
        hit = self._by_id.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == version:
            return hit[2]
        copy = t.detach().clone()
        self._by_id[id(t)] = (ref, version, copy)
        return copy

    def tree(self, obj: Any) -> Any:
        return map_leaves(obj, lambda v: self.clone(v) if isinstance(v, torch.Tensor) else v)


class _IORecorder(ModuleHooks):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.calls: list[ModuleIO] = []
        self._cache = _CloneCache()
        self._inputs: dict[str, tuple[tuple, dict, Frame | None]] = {}

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        self._inputs[key] = (self._cache.tree(args), self._cache.tree(kwargs), call_site() if name else None)
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        a, k, site = self._inputs.pop(key, ((), {}, None))
        outs = {n: self._cache.clone(t) for n, t in float_leaves(output).items()}
        self.calls.append(ModuleIO(key, type(module).__name__, len(self.calls), depth(name), a, k, outs, site))


def record_io(model: torch.nn.Module, inputs: Any) -> list[ModuleIO]:
    """Every module call's inputs and floating outputs in one fp32 forward (finishing order)."""
    with _IORecorder(model) as rec, torch.no_grad():
        inp.call_model(model, inputs)
    return rec.calls


@dataclass
class LayerError(ModuleCallView):
    """One module call of a reduced-precision (or quantized) twin against the fp32 recording.

    carried_*: the twin run as it is, so the error includes everything before the module.
    local_*:   the module run on the fp32 inputs (its submodules too), so the error is its own.
    fp32_absmax / headroom: the fp32 output's largest |x| and `dtype max / fp32_absmax`.
    """

    name: str
    module_type: str
    order: int
    depth: int
    fp32_absmax: float
    fp32_min_nonzero: float
    headroom: float
    carried_rms_rel: float | None = None
    carried_max_abs: float | None = None
    carried_nonfinite: bool = False
    local_rms_rel: float | None = None
    local_max_abs: float | None = None
    local_nonfinite: bool = False
    call_site: Frame | None = None

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["call_site"] = self.call_site.location if self.call_site else None
        out["module"] = self.label
        return out


Error = tuple[float, float, bool]  # (rms error / rms expected, max abs error, non-finite where fp32 is finite)


def _leaf_error(actual: torch.Tensor, expected: torch.Tensor) -> Error:
    """Computed in fp32 on the tensors' device: these are 1e-3-level errors, and the per-module
    table runs on every module call, so float64 copies would cost more than the forward."""
    if actual.shape != expected.shape:
        return math.inf, math.inf, False
    a = actual.detach().to(expected.device, torch.float32)
    e = expected.detach().float()
    d = a - e
    if not bool(torch.isfinite(d).all()):
        ok = torch.isfinite(e)
        if bool((~torch.isfinite(a) & ok).any()):
            return math.inf, math.inf, True
        both = ok & torch.isfinite(a)
        a, e = a[both], e[both]
        d = a - e
    if e.numel() == 0:
        return 0.0, 0.0, False
    n = math.sqrt(e.numel())
    rms_e = float(torch.linalg.vector_norm(e)) / n
    rmse = float(torch.linalg.vector_norm(d)) / n
    rel = rmse / rms_e if rms_e > 0 else (0.0 if rmse == 0 else math.inf)
    return rel, float(d.abs().max()), False


def _outputs_error(output: Any, expected: dict[str, torch.Tensor]) -> Error | None:
    got = float_leaves(output)
    errors = [_leaf_error(got[name], exp) for name, exp in expected.items() if name in got]
    if not errors:
        return None
    return max(e[0] for e in errors), max(e[1] for e in errors), any(e[2] for e in errors)


class _Carried(ModuleHooks):
    def __init__(self, model: torch.nn.Module, recorded: dict[str, ModuleIO]) -> None:
        super().__init__(model)
        self.recorded = recorded
        self.errors: dict[str, Error] = {}
        #: dtype of every tensor input leaf per call, as the twin received it
        self.input_dtypes: dict[str, list[torch.dtype]] = {}

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        self.input_dtypes[key] = [v.dtype for v in flatten((args, kwargs)).values() if isinstance(v, torch.Tensor)]
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        rec = self.recorded.get(key)
        if rec is not None:
            err = _outputs_error(output, rec.outputs)
            if err is not None:
                self.errors[key] = err


class _Local(_Carried):
    """Every module gets the fp32 run's inputs, cast to the dtypes it received in the carried run
    (under autocast, ops outside the autocast lists run in their input's dtype)."""

    def __init__(self, model: torch.nn.Module, recorded: dict[str, ModuleIO], cast: Callable[[torch.Tensor], torch.Tensor],
                 observed: dict[str, list[torch.dtype]]) -> None:
        super().__init__(model, recorded)
        self.cast = cast
        self.observed = observed

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        rec = self.recorded.get(key)
        if rec is None or any(isinstance(v, torch.Tensor) and not plain(v) for v in flatten((rec.args, rec.kwargs)).values()):
            return None
        dtypes = iter(self.observed.get(key) or [])

        def fresh(v: Any) -> Any:
            if not isinstance(v, torch.Tensor):
                return v
            want = next(dtypes, None)
            if not v.is_floating_point():
                return v.clone()
            out = v.to(want) if want is not None and want.is_floating_point else self.cast(v)
            return out.clone() if out is v else out  # in-place ops must not change the record

        new_args, new_kwargs = map_leaves((rec.args, rec.kwargs), fresh)
        return tuple(new_args), dict(new_kwargs)


def _hooked_pass(hooks: ModuleHooks, twin: torch.nn.Module, twin_inputs: Any, context: Callable[[], ContextManager[Any]],
                 what: str) -> str | None:
    """Run the twin under `hooks`; the error text when it raised."""
    with hooks, torch.no_grad(), context():
        try:
            inp.call_model(twin, twin_inputs)
        except Exception as exc:
            if is_timeout(exc):
                raise
            return f"{what} pass raised {type(exc).__name__}: {exc}"
    return None


def _layer_row(rec: ModuleIO, carried: Error | None, local: Error | None, max_value: float) -> LayerError:
    ranges = [tensor_range(t) for t in rec.outputs.values()]
    absmax = max((hi if ok else math.inf) for hi, _, ok in ranges)
    lows = [lo for _, lo, _ in ranges if lo > 0]
    return LayerError(
        rec.name, rec.module_type, rec.order, rec.depth, absmax, min(lows) if lows else 0.0,
        (max_value / absmax) if absmax > 0 else math.inf,
        carried[0] if carried else None, carried[1] if carried else None, bool(carried and carried[2]),
        local[0] if local else None, local[1] if local else None, bool(local and local[2]),
        rec.call_site,
    )


def error_table(
    twin: torch.nn.Module,
    twin_inputs: Any,
    recorded: list[ModuleIO],
    *,
    cast: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    context: Callable[[], ContextManager[Any]] | None = None,
    max_value: float = math.inf,
    local: bool = True,
) -> tuple[list[LayerError], str | None]:
    """Per-module errors of `twin` (a reduced-precision copy with the same module names) against
    the fp32 recording. `cast` turns a recorded fp32 input into what the twin takes; `context`
    wraps each run (autocast). Returns (rows in fp32 finishing order, error text if a pass raised).
    """
    by_key = {r.name: r for r in recorded}
    ctx_factory = context or contextlib.nullcontext
    carried = _Carried(twin, by_key)
    problem = _hooked_pass(carried, twin, twin_inputs, ctx_factory, "carried")
    local_errors: dict[str, Error] = {}
    if local:
        loc = _Local(twin, by_key, cast, carried.input_dtypes)
        local_problem = _hooked_pass(loc, twin, twin_inputs, ctx_factory, "local")
        problem = problem or local_problem
        local_errors = loc.errors
    rows = [_layer_row(rec, carried.errors.get(rec.name), local_errors.get(rec.name), max_value) for rec in recorded if rec.outputs]
    return rows, problem


def pick_local_culprit(rows: list[LayerError], *, share: float = 0.5) -> LayerError | None:
    """The module with the largest local error, descending into a submodule that accounts for at
    least `share` of it (a block's local error includes its last child's), the root last."""
    scored = [r for r in rows if r.local_rms_rel is not None]
    if not scored:
        return None
    non_root = [r for r in scored if r.name and not r.name.startswith("#")] or scored

    def err(r: LayerError) -> float:
        return r.local_rms_rel if r.local_rms_rel is not None and not math.isnan(r.local_rms_rel) else -1.0

    best = max(non_root, key=err)
    while True:
        base = best.name.split("#")[0]
        children = [r for r in non_root if r.name.split("#")[0].startswith(base + ".") and r is not best]
        deeper = [r for r in children if err(r) >= share * err(best)]
        if not deeper:
            return best
        best = max(deeper, key=lambda r: (err(r), r.depth))


def error_plot(rows: list[LayerError], title: str, *, eps: float | None = None) -> dict[str, Any]:
    """A line plot of carried and local relative RMS error per module call (execution order)."""
    x = [r.name or "<root>" for r in rows]

    def clean(v: float | None) -> float | None:
        if v is None or math.isnan(v):
            return None
        return v if math.isfinite(v) else 1e6

    series: dict[str, list[Any]] = {
        "carried forward": [clean(r.carried_rms_rel) for r in rows],
        "local (fp32 inputs)": [clean(r.local_rms_rel) for r in rows],
    }
    if eps is not None:
        series["eps(dtype)"] = [eps] * len(rows)
    return {"kind": "line", "title": title + " (Inf/NaN drawn at 1e6)", "x": x, "series": series, "xlabel": "module (execution order)",
            "ylabel": "relative RMS error vs fp32", "logy": True}
