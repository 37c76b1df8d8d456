"""Per-layer views of one forward pass, shared by the precision and quantization checks.

* `run_locating_raise` runs a call and, when it raises, names the innermost module whose forward
  was running and the source line that raised (the user's line when there is one).
* `record_ranges` records every module call's output range in fp32 (largest and smallest non-zero
  |x|) and the line that called the module, in finishing order (inner modules before the block
  that contains them).
* `record_io` records every module call's inputs and outputs (clones, shared where a module's
  input is the previous module's output) so that `error_table` can run a reduced-precision twin
  of the model twice: as it is (each module's error *carried forward* from everything before it)
  and with every module's inputs replaced by the fp32 ones (each module's *local* error).
* `record_input_stats` records, for chosen layers, their input's range over several batches, its
  per-channel magnitudes and which module produced it (quantization calibration and outliers).

Nothing here knows a particular check; rows are plain dataclasses that checks turn into tables.
"""
from __future__ import annotations

import contextlib
import inspect
import linecache
import math
import os
import sys
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable, ContextManager, Iterable

import torch

from . import inputs as inp
from .probe import is_library_file
from .tree import flatten, map_leaves



def _relpath(file: str) -> str:
    try:
        rel = os.path.relpath(file)
        return file if rel.startswith("..") else rel
    except ValueError:
        return file




def _is_library(filename: str) -> bool:
    return is_library_file(filename)


def _call_site() -> str | None:
    """`file:line` of the code that called the module now starting (its parent's forward)."""
    frame = sys._getframe(1)
    while frame is not None:
        if not _is_library(frame.f_code.co_filename):
            return f"{_relpath(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


class _ModuleHooks:
    """Pre/post forward hooks on every module, with call keys `name`, `name#2`, ... for repeated calls."""

    def __init__(self, model: torch.nn.Module, include: Callable[[str, torch.nn.Module], bool] | None = None) -> None:
        self.model = model
        self.include = include
        self._handles: list[Any] = []
        self._counts: dict[str, int] = {}
        self._open: dict[int, list[str]] = {}

    def key(self, name: str) -> str:
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        return name if count == 1 else f"{name}#{count}"

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        pass

    def __enter__(self) -> "_ModuleHooks":
        for name, module in self.model.named_modules():
            if self.include is not None and not self.include(name, module):
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            key = self.key(name)
            self._open.setdefault(id(module), []).append(key)
            return self.pre(key, name, module, args, kwargs)

        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            keys = self._open.get(id(module)) or [name]
            key = keys.pop() if keys else name
            self.post(key, name, module, args, kwargs, output)

        return hook


def label(name: str, module_type: str) -> str:
    """`features.4 (BatchNorm2d)`; the root is `<root> (Net)`."""
    return f"{name or '<root>'} ({module_type})"


# ---------------------------------------------------------------------------------------------
# Where a forward raised


@dataclass
class RaiseSite:
    """The innermost module whose forward was running when the call raised, and the raising line."""

    module: str
    module_type: str
    exception: str  # "RuntimeError: ..."
    file: str | None = None
    line: int | None = None
    code: str | None = None
    in_user_code: bool = False
    called_from: str | None = None  # the user line that called the module, when the raise is in library code

    @property
    def label(self) -> str:
        return label(self.module, self.module_type)

    @property
    def location(self) -> str | None:
        return f"{_relpath(self.file)}:{self.line}" if self.file else None

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.label, "location": self.location, "code": self.code, "exception": self.exception,
                "called_from": self.called_from}


def _is_timeout(exc: BaseException) -> bool:
    return type(exc).__name__ == "CheckTimeout"


def run_locating_raise(model: torch.nn.Module, call: Callable[[], Any]) -> tuple[Any, RaiseSite | None]:
    """Run `call()` (which runs `model`); return (outputs, None), or (None, RaiseSite) when it raised.

    No hooks are added (hooks can change which path a module takes): the innermost module is read
    from the traceback, as the deepest frame whose `self` is one of the model's modules.
    """
    try:
        return call(), None
    except Exception as exc:
        if _is_timeout(exc):
            raise
        return None, raise_site(exc, model)


def raise_site(exc: BaseException, model: torch.nn.Module) -> RaiseSite:
    """Where `exc` came from inside `model`: the innermost module on its traceback, and the line:
    the deepest user-code frame inside that module's call, else the deepest frame of the module's
    own source file, else the module's frame. `called_from` is the user line that called it."""
    names = {id(m): n for n, m in model.named_modules()}
    frames: list[tuple[Any, int]] = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    at, name, module = -1, "", model
    for i, (frame, _) in enumerate(frames):
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in names:
            at, name, module = i, names[id(owner)], owner
    text = f"{type(exc).__name__}: " + (str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "")
    site = RaiseSite(name, type(module).__name__, text)
    inner = frames[max(at, 0):]
    user = [(f, ln) for f, ln in inner if not _is_library(f.f_code.co_filename)]
    try:
        source = inspect.getsourcefile(type(module))
    except (TypeError, OSError):
        source = None
    own = [(f, ln) for f, ln in inner if source and os.path.abspath(f.f_code.co_filename) == os.path.abspath(source)]
    pick = user[-1] if user else (own[-1] if own else (inner[0] if inner else None))
    if pick is not None:
        frame, lineno = pick
        site.file, site.line = frame.f_code.co_filename, lineno
        site.code = linecache.getline(site.file, lineno).strip() or None
        site.in_user_code = bool(user)
    callers = [(f, ln) for f, ln in frames[:max(at, 0)] if not _is_library(f.f_code.co_filename)]
    if callers:
        frame, lineno = callers[-1]
        site.called_from = f"{_relpath(frame.f_code.co_filename)}:{lineno}"
    return site


# ---------------------------------------------------------------------------------------------
# Ranges


@dataclass
class ModuleRange:
    """One module call's floating outputs in the recorded run."""

    name: str  # dotted path, `#k` for the k-th call of a module
    module_type: str
    order: int  # finishing order
    depth: int
    absmax: float  # largest |x| over finite values (inf when the output has Inf/NaN)
    min_nonzero: float  # smallest non-zero |x| (0.0 when all are zero)
    finite: bool
    numel: int
    call_site: str | None = None

    @property
    def label(self) -> str:
        return label(self.name, self.module_type)


def tensor_range(t: torch.Tensor) -> tuple[float, float, bool]:
    """(largest finite |x|, smallest non-zero |x|, all finite) of a floating tensor."""
    if t.numel() == 0:
        return 0.0, 0.0, True
    a = t.detach().abs()
    if a.is_complex():
        a = a.real
    top = float(a.max())
    finite = math.isfinite(top)
    if not finite:
        a = a[torch.isfinite(a)]
        if a.numel() == 0:
            return math.inf, 0.0, False
        top = float(a.max())
    low = float(torch.where(a > 0, a, torch.full_like(a, math.inf)).min())
    return top, (low if math.isfinite(low) else 0.0), finite


def _plain(v: Any) -> bool:
    """A dense, strided tensor with data (nested, sparse and meta tensors are left alone)."""
    return isinstance(v, torch.Tensor) and not v.is_nested and v.layout == torch.strided and v.device.type != "meta"


def _float_leaves(obj: Any, root: str = "output") -> dict[str, torch.Tensor]:
    return {k: v for k, v in flatten(obj, root=root).items() if _plain(v) and v.is_floating_point()}


class _RangeRecorder(_ModuleHooks):
    def __init__(self, model: torch.nn.Module, call_sites: bool = True) -> None:
        super().__init__(model)
        self.rows: list[ModuleRange] = []
        self.sites: dict[str, str | None] = {}
        self.call_sites = call_sites

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if self.call_sites and name:
            self.sites[key] = _call_site()
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        leaves = _float_leaves(output)
        if not leaves:
            return
        absmax, minnz, finite, numel = 0.0, math.inf, True, 0
        for t in leaves.values():
            hi, lo, ok = tensor_range(t)
            absmax = max(absmax, hi if ok else math.inf)
            if lo > 0:
                minnz = min(minnz, lo)
            finite = finite and ok
            numel += t.numel()
        self.rows.append(ModuleRange(key, type(module).__name__, len(self.rows), name.count(".") + (1 if name else 0),
                                     absmax, 0.0 if minnz == math.inf else minnz, finite, numel, self.sites.get(key)))


def record_ranges(model: torch.nn.Module, inputs: Any, *, context: Callable[[], ContextManager[Any]] | None = None) -> list[ModuleRange]:
    """Every module call's output range (finishing order) and call site, in one hooked forward."""
    with _RangeRecorder(model) as rec, torch.no_grad(), (context() if context else contextlib.nullcontext()):
        inp.call_model(model, inputs)
    return rec.rows


# ---------------------------------------------------------------------------------------------
# Recording inputs and outputs, and the per-layer error table


@dataclass
class ModuleIO:
    name: str
    module_type: str
    order: int
    depth: int
    args: tuple
    kwargs: dict
    outputs: dict[str, torch.Tensor]  # floating output leaves by name
    call_site: str | None = None


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


class _IORecorder(_ModuleHooks):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.calls: list[ModuleIO] = []
        self._cache = _CloneCache()
        self._inputs: dict[str, tuple[tuple, dict, str | None]] = {}

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        self._inputs[key] = (self._cache.tree(args), self._cache.tree(kwargs), _call_site() if name else None)
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        a, k, site = self._inputs.pop(key, ((), {}, None))
        outs = {n: self._cache.clone(t) for n, t in _float_leaves(output).items()}
        self.calls.append(ModuleIO(key, type(module).__name__, len(self.calls), name.count(".") + (1 if name else 0), a, k, outs, site))


def record_io(model: torch.nn.Module, inputs: Any) -> list[ModuleIO]:
    """Every module call's inputs and floating outputs in one fp32 forward (finishing order)."""
    with _IORecorder(model) as rec, torch.no_grad():
        inp.call_model(model, inputs)
    return rec.calls


@dataclass
class LayerError:
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
    call_site: str | None = None

    @property
    def label(self) -> str:
        return label(self.name, self.module_type)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["module"] = self.label
        return out


def _leaf_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, bool]:
    """(rms error / rms expected, max abs error, actual non-finite where expected is finite).

    Computed in fp32 on the tensors' device: these are 1e-3-level errors, and the per-module
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


def _outputs_error(output: Any, expected: dict[str, torch.Tensor]) -> tuple[float, float, bool] | None:
    got = _float_leaves(output)
    rels, maxs, bad = [], [], False
    for name, exp in expected.items():
        act = got.get(name)
        if act is None:
            continue
        r, m, nf = _leaf_error(act, exp)
        rels.append(r)
        maxs.append(m)
        bad = bad or nf
    if not rels:
        return None
    return max(rels), max(maxs), bad


class _Carried(_ModuleHooks):
    def __init__(self, model: torch.nn.Module, recorded: dict[str, ModuleIO]) -> None:
        super().__init__(model)
        self.recorded = recorded
        self.errors: dict[str, tuple[float, float, bool]] = {}
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
        if rec is None or any(isinstance(v, torch.Tensor) and not _plain(v) for v in flatten((rec.args, rec.kwargs)).values()):
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
    problem = None
    ctx_factory = context or contextlib.nullcontext
    with _Carried(twin, by_key) as carried, torch.no_grad(), ctx_factory():
        try:
            inp.call_model(twin, twin_inputs)
        except Exception as exc:
            if _is_timeout(exc):
                raise
            problem = f"carried pass raised {type(exc).__name__}: {exc}"
    local_errors: dict[str, tuple[float, float, bool]] = {}
    if local:
        with _Local(twin, by_key, cast, carried.input_dtypes) as loc, torch.no_grad(), ctx_factory():
            try:
                inp.call_model(twin, twin_inputs)
            except Exception as exc:
                if _is_timeout(exc):
                    raise
                problem = problem or f"local pass raised {type(exc).__name__}: {exc}"
        local_errors = loc.errors
    rows = []
    for rec in recorded:
        if not rec.outputs:
            continue
        ranges = [tensor_range(t) for t in rec.outputs.values()]
        absmax = max((hi if ok else math.inf) for hi, _, ok in ranges)
        lows = [lo for _, lo, _ in ranges if lo > 0]
        c = carried.errors.get(rec.name)
        lo = local_errors.get(rec.name)
        rows.append(LayerError(
            rec.name, rec.module_type, rec.order, rec.depth, absmax, min(lows) if lows else 0.0,
            (max_value / absmax) if absmax > 0 else math.inf,
            c[0] if c else None, c[1] if c else None, bool(c and c[2]),
            lo[0] if lo else None, lo[1] if lo else None, bool(lo and lo[2]),
            rec.call_site,
        ))
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


# ---------------------------------------------------------------------------------------------
# Layer input statistics (calibration ranges, per-channel outliers, producers)


@dataclass
class InputStats:
    """What a layer's (first floating) input looked like over the recorded batches."""

    name: str
    module_type: str
    min: float = math.inf
    max: float = -math.inf
    channel_absmax: torch.Tensor | None = None  # per channel, over all batches
    producer: str | None = None  # the module whose output was this input, when it was one directly
    call_site: str | None = None
    calls: int = 0

    def outlier(self) -> tuple[int, float] | None:
        """(channel, ratio of its max |x| to the median channel's), or None with < 2 channels."""
        c = self.channel_absmax
        if c is None or c.numel() < 2:
            return None
        med = float(c.median())
        idx = int(c.argmax())
        top = float(c[idx])
        return idx, (top / med if med > 0 else (math.inf if top > 0 else 1.0))


def channel_dim(module: torch.nn.Module, t: torch.Tensor) -> int:
    """Channels are dim 1 for convolutions and batch norms, the last dim otherwise (Linear, RNN)."""
    conv_like = isinstance(module, (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm))
    return 1 if conv_like and t.dim() >= 2 else t.dim() - 1


class _InputStatsRecorder(_ModuleHooks):
    def __init__(self, model: torch.nn.Module, names: Iterable[str]) -> None:
        wanted = set(names)
        super().__init__(model)
        self.wanted = wanted
        self.stats: dict[str, InputStats] = {}
        self._producers: dict[int, tuple[Any, str]] = {}

    def pre(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if name not in self.wanted:
            return None
        leaves = [v for v in flatten((args, kwargs)).values() if _plain(v) and v.is_floating_point()]
        if not leaves:
            return None
        t = leaves[0].detach()
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = InputStats(name, type(module).__name__, call_site=_call_site())
            hit = self._producers.get(id(leaves[0]))
            if hit is not None and hit[0]() is leaves[0]:
                st.producer = hit[1]
        st.calls += 1
        if t.numel():
            finite = t[torch.isfinite(t)]
            if finite.numel():
                st.min = min(st.min, float(finite.min()))
                st.max = max(st.max, float(finite.max()))
            dim = channel_dim(module, t)
            per = t.abs().transpose(0, dim).reshape(t.shape[dim], -1).amax(dim=1).float() if t.dim() else t.abs().reshape(1)
            st.channel_absmax = per if st.channel_absmax is None or st.channel_absmax.shape != per.shape else torch.maximum(st.channel_absmax, per)
        return None

    def post(self, key: str, name: str, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            try:
                self._producers[id(output)] = (weakref.ref(output), label(name, type(module).__name__))
            except TypeError:
                pass


def record_input_stats(model: torch.nn.Module, batches: Iterable[Any], names: Iterable[str]) -> dict[str, InputStats]:
    """Input ranges of the named layers over `batches` (each an input in any of the three forms)."""
    with _InputStatsRecorder(model, names) as rec, torch.no_grad():
        for batch in batches:
            inp.call_model(model, batch)
    return rec.stats


__all__ = [
    "RaiseSite", "run_locating_raise", "raise_site", "ModuleRange", "record_ranges", "ModuleIO", "record_io",
    "LayerError", "error_table", "pick_local_culprit", "error_plot", "InputStats", "record_input_stats",
    "channel_dim", "tensor_range", "label",
]
