"""Precision family, int8: can this model ship quantized, and if not, which layers must stay in float?

`quantization` builds two int8 variants on CPU (quantized kernels run only there; a CUDA run says
so) with the x86/fbgemm engine (restored afterwards):

* dynamic: `torch.ao.quantization.quantize_dynamic` of Linear/LSTM/GRU layers (int8 weights,
  activations quantized per call);
* static post-training: PT2E from torchao (torch.export, then `prepare_pt2e`/`convert_pt2e` with
  the XNNPACK quantizer: int8 per-channel weights, per-tensor activations) where the model exports,
  else FX (`prepare_fx`/`convert_fx` with the x86 default qconfig mapping). The eager flow needs
  QuantStub/DeQuantStub in the model and is not attempted. Calibration uses `Target.calibration`,
  or batches synthesised from the example inputs (same mean and std), with a warning.

Both are compared with the fp32 outputs: SQNR per output, top-1 agreement for logits, accuracy
against `Target.labels` when they match some inputs, size before/after, CPU latency before/after.
Thresholds (check options): SQNR below `fail_sqnr_db` (10 dB: the output is mostly noise) fails,
below `warn_sqnr_db` (20 dB) warns; top-1 agreement below `min_top1` warns; an accuracy drop above
`max_accuracy_drop` fails. When static is much worse than dynamic, the calibration data is
examined (too few samples, constant inputs, a range unlike the example's).

On a warning or failure each layer is quantized alone and ranked by the SQNR the model keeps
(dynamic: the real `quantize_dynamic` of that layer; static: int8 fake-quantization of its weights
per channel and its input per tensor with the calibrated range), so the worst layer is named as
the culprit with its input's channel outliers, and keeping it in float is tried where the flow
allows (dynamic, FX).
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from torch_diagnose import inputs as inp
from torch_diagnose.compare import Comparison, compare
from torch_diagnose.context import Context, Variant
from torch_diagnose.layers import label, record_input_stats
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import FAIL, PASS, SEVERITY, WARN, CheckResult, SkipCheck
from torch_diagnose.tree import flatten, map_leaves

#: Module types quantize_dynamic converts (exact types: MultiheadAttention's out_proj is left alone).
DYNAMIC_TYPES: tuple[type, ...] = (nn.Linear, nn.LSTM, nn.GRU)
#: A row's fp32 prediction counts as decided when its top-2 margin is >= this fraction of its logit range.
TOP1_MARGIN = 0.05
#: Module types the static sensitivity simulation quantizes one at a time.
STATIC_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_OPTIONS = (
    Option("modes", list, ["dynamic", "static"], "which int8 variants to build: dynamic, static"),
    Option("static_flow", str, "auto", "static flow: auto (PT2E, else FX), pt2e or fx"),
    Option("warn_sqnr_db", float, 20.0, "warn when an output's SQNR vs fp32 is below this (dB)"),
    Option("fail_sqnr_db", float, 10.0, "fail when an output's SQNR vs fp32 is below this (dB): the output is mostly noise"),
    Option("min_top1", float, 0.9, "warn when top-1 agreement with fp32 (logits outputs) is below this"),
    Option("max_accuracy_drop", float, 0.02,
           "fail when accuracy against Target.labels drops by more than this (and by 2+ samples; one sample only warns)"),
    Option("calibration_batches", int, 32, "at most this many calibration batches are used"),
    Option("synthetic_batches", int, 8, "batches synthesised from the example inputs when the target has no calibration data"),
    Option("min_calibration_samples", int, 16, "fewer calibration samples (rows) than this count as too few"),
    Option("sensitivity", bool, True, "on a warning or failure, quantize one layer at a time and rank layers"),
    Option("max_layers", int, 64, "at most this many layers are tried one at a time"),
    Option("latency", bool, True, "time fp32 and int8 forwards on CPU"),
)


# ---------------------------------------------------------------------------------------------
# Helpers: engine, running, sizes, latency


@contextlib.contextmanager
def quantized_engine() -> Iterator[str]:
    """Use the x86 engine (fbgemm, qnnpack as fallbacks) and restore the previous one."""
    old = torch.backends.quantized.engine
    supported = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in supported:
            torch.backends.quantized.engine = name
            break
    try:
        yield torch.backends.quantized.engine
    finally:
        torch.backends.quantized.engine = old


@contextlib.contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def _has_attention(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) for m in model.modules())


def _to_cpu(obj: Any) -> Any:
    return map_leaves(obj, lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t)


def _state_size(model: nn.Module, *, graph_constants: bool = False) -> int:
    """Bytes of the serialized weights: the state dict, or for a PT2E graph (whose state dict still
    holds the unused float weights) the tensors its graph reads."""
    graph = getattr(model, "graph", None)
    if graph_constants and graph is not None:
        seen: set[int] = set()
        total = 0
        for node in graph.nodes:
            if node.op != "get_attr":
                continue
            obj: Any = model
            for part in str(node.target).split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, torch.Tensor) and obj.data_ptr() not in seen:
                seen.add(obj.data_ptr())
                total += obj.numel() * obj.element_size()
        return total
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _latency(fn: Callable[[], Any], *, budget_s: float = 0.3, max_reps: int = 20) -> float:
    """Best seconds per call after one warm-up call (the minimum: on a shared machine the median
    measures the neighbours; the minimum is what the kernels can do)."""
    with torch.inference_mode():
        fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_reps and (time.perf_counter() - start < budget_s or len(times) < 3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


def _rows(inputs: Any, batch_dim: int) -> int:
    return inp.batch_size(inputs, batch_dim) or 1


def _float_leaves(obj: Any) -> dict[str, torch.Tensor]:
    return {k: v for k, v in flatten(obj, root="x").items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


# ---------------------------------------------------------------------------------------------
# Calibration


@dataclass
class _Calibration:
    batches: list[Any]
    source: str  # "target" or "synthesised"
    samples: int
    findings: list[str] = field(default_factory=list)  # reasons the data may be a poor calibration set

    def describe(self) -> str:
        what = "calibration batches from Target.calibration" if self.source == "target" else "calibration batches synthesised from the example inputs"
        return f"{len(self.batches)} {what} ({self.samples} samples)"


def _calibration(ctx: Context, opts: CheckOptions, example: Any) -> _Calibration:
    target = ctx.target
    if target.calibration is not None:
        def build() -> list[Any]:
            return [_to_cpu(b) for b in itertools.islice(iter(target.calibration), max(opts.calibration_batches, 1))]

        batches = ctx.cached("quantization:calibration", build)
        if not batches:
            raise SkipCheck("Target.calibration is empty: give some inputs shaped like the example inputs")
        source = "target"
    else:
        batches = [example] + [_synthesise(example, seed=ctx.options.seed + 1 + i) for i in range(max(opts.synthetic_batches, 1) - 1)]
        source = "synthesised"
    samples = sum(_rows(b, ctx.batch_dim) for b in batches)
    cal = _Calibration(batches, source, samples)
    cal.findings = _calibration_findings(cal, example, opts)
    return cal


def _synthesise(example: Any, *, seed: int) -> Any:
    """Random values with each floating input's mean and std (integer inputs, ids and masks, kept)."""
    gen = torch.Generator().manual_seed(seed)

    def make(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 1:
            mean, std = float(t.float().mean()), float(t.float().std())
            return (mean + std * torch.randn(t.shape, generator=gen)).to(t.dtype)
        return t

    return map_leaves(example, make)


def _calibration_findings(cal: _Calibration, example: Any, opts: CheckOptions) -> list[str]:
    findings: list[str] = []
    if cal.source == "synthesised":
        findings.append("the calibration inputs were synthesised from the example inputs (random values with their mean and "
                        "std): real calibration data matters, give Target(calibration=[...]) a few hundred representative inputs")
    if cal.samples < opts.min_calibration_samples:
        findings.append(f"only {cal.samples} calibration samples (fewer than {opts.min_calibration_samples}): activation ranges "
                        f"from so few are noisy; use a few hundred representative inputs")
    ex_leaves = _float_leaves(example)
    for name, ex in ex_leaves.items():
        parts = [_float_leaves(b).get(name) for b in cal.batches]
        parts = [p for p in parts if isinstance(p, torch.Tensor)]
        if not parts:
            continue
        flat = torch.cat([p.detach().float().reshape(-1) for p in parts])
        lo, hi, std = float(flat.min()), float(flat.max()), float(flat.std()) if flat.numel() > 1 else 0.0
        ex_f = ex.detach().float()
        ex_lo, ex_hi, ex_std = float(ex_f.min()), float(ex_f.max()), float(ex_f.std()) if ex_f.numel() > 1 else 0.0
        if std == 0 or hi == lo:
            findings.append(f"calibration input `{name}` is constant ({lo:.3g} everywhere): observers see no range")
            continue
        if len(parts) > 1 and all(torch.equal(parts[0], p) for p in parts[1:]):
            findings.append(f"all {len(parts)} calibration batches of `{name}` are identical")
        span, ex_span = hi - lo, ex_hi - ex_lo
        if ex_span > 0 and (span / ex_span > 4 or span / ex_span < 0.25 or ex_std > 0 and not 0.25 < std / ex_std < 4):
            findings.append(f"calibration input `{name}` spans [{lo:.3g}, {hi:.3g}] (std {std:.3g}), unlike the example inputs' "
                            f"[{ex_lo:.3g}, {ex_hi:.3g}] (std {ex_std:.3g}): calibrate on inputs preprocessed like serving inputs")
    return findings


# ---------------------------------------------------------------------------------------------
# Building the variants


@dataclass
class _Mode:
    mode: str  # "dynamic" | "static"
    flow: str = ""
    model: Any = None
    outputs: Any = None
    comparison: Comparison | None = None
    layers: list[str] = field(default_factory=list)
    error: str | None = None  # could not build or run
    not_applicable: str | None = None
    fastpath_off: bool = False
    flow_errors: dict[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    latency_s: float | None = None
    accuracy: float | None = None
    status: str = PASS
    reasons: list[str] = field(default_factory=list)
    numeric: bool = False  # warned or failed on its numbers (not only for its calibration or a build error)
    decided_top1: float | None = None

    @property
    def ran(self) -> bool:
        return self.comparison is not None

    @property
    def sqnr_db(self) -> float:
        return self.comparison.min_sqnr_db if self.comparison is not None else math.nan

    @property
    def top1(self) -> float | None:
        vals = [leaf.top1_agreement for leaf in self.comparison.tensor_leaves if leaf.top1_agreement is not None] if self.comparison is not None else []
        return min(vals) if vals else None

    def call(self, inputs: Any) -> Any:
        with quantized_engine(), torch.inference_mode(), (_mha_fastpath(False) if self.fastpath_off else contextlib.nullcontext()):
            return inp.call_model(self.model, _to_cpu(inputs))

    def call_rows(self, inputs: Any, rows: int, batch_dim: int) -> Any:
        """Run in chunks of `rows` (a PT2E graph is exported for the example's batch size; the last
        chunk is padded by repeating its last row, and the padding is dropped)."""
        total = _rows(inputs, batch_dim)
        if self.flow != "pt2e" or total == rows:
            return self.call(inputs)
        parts = []
        for start in range(0, total, rows):
            idx = [min(i, total - 1) for i in range(start, start + rows)]
            parts.append(self.call(inp.select_batch(inputs, idx, batch_dim)))
        return inp.select_batch(inp.concat_batch(parts, batch_dim), list(range(total)), batch_dim)


def _run(mode: _Mode, x: Any) -> Any:
    """Run the quantized model; retry with the MHA fast path off (it cannot run quantized linears)."""
    try:
        return mode.call(x)
    except Exception:
        if not _has_attention(mode.model) or mode.fastpath_off:
            raise
        mode.fastpath_off = True
        return mode.call(x)


def _dynamic_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) in DYNAMIC_TYPES]


def _build_dynamic(model: nn.Module, skip: set[str] = frozenset()) -> nn.Module:  # type: ignore[assignment]
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    if skip:
        spec: Any = {n: default_dynamic_qconfig for n in _dynamic_layers(model) if n not in skip}
    else:
        spec = set(DYNAMIC_TYPES)
    return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def _rebatch(batches: list[Any], example: Any, batch_dim: int) -> list[Any]:
    """Calibration batches in the example's batch size (a PT2E graph is exported for fixed shapes)."""
    n = _rows(example, batch_dim)
    if all(_rows(b, batch_dim) == n for b in batches):
        return batches
    joined = inp.concat_batch(batches, batch_dim)
    total = _rows(joined, batch_dim)
    out = [inp.select_batch(joined, list(range(i, i + n)), batch_dim) for i in range(0, total - n + 1, n)]
    return out or [example]


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """torchao's import logs a deprecation through `logging` (not `warnings`); keep it off the terminal."""
    import logging

    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _build_pt2e(model: nn.Module, example: Any, batches: list[Any], batch_dim: int) -> nn.Module:
    with _quiet_logger("torch.utils._pytree"):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    args, kwargs = inp.as_args_kwargs(example)
    exported = torch.export.export(copy.deepcopy(model), args, kwargs).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in _rebatch(batches, example, batch_dim):
            inp.call_model(prepared, batch)
    return convert_pt2e(prepared)


def _build_fx(model: nn.Module, example: Any, batches: list[Any], engine: str, skip: set[str] = frozenset()) -> nn.Module:  # type: ignore[assignment]
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = get_default_qconfig_mapping(engine)
    for name in skip:
        mapping = mapping.set_module_name(name, None)
    args, kwargs = inp.as_args_kwargs(example)
    prepared = prepare_fx(copy.deepcopy(model), mapping, tuple(args) or tuple(kwargs.values()))
    with torch.no_grad():
        for batch in batches:
            inp.call_model(prepared, batch)
    return convert_fx(prepared)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:240] if text else ''}"


def _make_dynamic(ctx: Context, model: nn.Module, x: Any) -> _Mode:
    mode = _Mode("dynamic", flow="torch.ao quantize_dynamic (qint8 weights, dynamic per-tensor activations)")
    mode.layers = _dynamic_layers(model)
    if not mode.layers:
        mode.not_applicable = "no Linear/LSTM/GRU layers to quantize dynamically"
        return mode
    try:
        mode.model = ctx.cached("quantization:int8-dynamic", lambda: _build_dynamic(model))
        mode.outputs = _run(mode, x)
    except Exception as exc:
        mode.error = _first_line(exc)
    return mode


def _make_static(ctx: Context, opts: CheckOptions, model: nn.Module, x: Any, cal: _Calibration, engine: str) -> _Mode:
    mode = _Mode("static")
    flows = {"auto": ["pt2e", "fx"], "pt2e": ["pt2e"], "fx": ["fx"]}.get(str(opts.static_flow).lower())
    if flows is None:
        from torch_diagnose.errors import UsageError

        raise UsageError(f"quantization.static_flow must be auto, pt2e or fx, not {opts.static_flow!r}")
    for flow in flows:
        def build(flow: str = flow) -> nn.Module:
            if flow == "pt2e":
                return _build_pt2e(model, x, cal.batches, ctx.batch_dim)
            return _build_fx(model, x, cal.batches, engine)

        try:
            mode.model = ctx.cached(f"quantization:int8-static:{flow}", build)
            mode.flow = flow
            mode.outputs = _run(mode, x)
            mode.flow_errors.pop(flow, None)
            break
        except ImportError as exc:
            mode.flow_errors[flow] = f"not installed ({exc}); pip install torchao"
        except Exception as exc:
            mode.flow_errors[flow] = _first_line(exc)
        mode.model = None
    if mode.model is None:
        mode.error = "; ".join(f"{f}: {e}" for f, e in mode.flow_errors.items())
    return mode


def _flow_text(mode: _Mode) -> str:
    if mode.mode == "dynamic":
        return "quantize_dynamic"
    return {"pt2e": "PT2E (torchao, XNNPACK quantizer)", "fx": "FX (torch.ao, x86 qconfig)"}.get(mode.flow, mode.flow)


# ---------------------------------------------------------------------------------------------
# Accuracy against labels


def _labelled(ctx: Context, x: Any, cal: _Calibration) -> tuple[Any, torch.Tensor] | None:
    """(inputs, labels) when Target.labels matches the samples, the calibration inputs or the example."""
    labels = ctx.target.labels
    if labels is None:
        return None
    try:
        y = torch.as_tensor(list(labels)).reshape(-1).long()
    except (TypeError, ValueError):
        return None
    n = y.numel()
    t = ctx.target
    if t.samples is not None and t.preprocess is not None and hasattr(t.samples, "__len__") and len(t.samples) == n:
        try:
            return torch.stack([torch.as_tensor(t.preprocess(s)) for s in t.samples]).cpu(), y
        except Exception:
            pass
    if cal.source == "target" and cal.samples == n:
        return inp.concat_batch(cal.batches, ctx.batch_dim), y
    if _rows(x, ctx.batch_dim) == n:
        return x, y
    return None


def _accuracy(outputs: Any, labels: torch.Tensor) -> float | None:
    for leaf in flatten(outputs).values():
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dim() == 2 and leaf.shape[0] == labels.numel():
            return float((leaf.argmax(-1).cpu() == labels).float().mean())
    return None


# ---------------------------------------------------------------------------------------------
# Per-layer sensitivity


@dataclass
class _Sensitivity:
    layer: str
    module_type: str
    sqnr_db: float
    input_range: tuple[float, float] | None = None
    outlier_channel: int | None = None
    outlier_ratio: float | None = None
    producer: str | None = None
    call_site: str | None = None

    @property
    def label(self) -> str:
        return label(self.layer, self.module_type)

    def row(self) -> dict[str, Any]:
        return {"layer": self.label, "sqnr_db": self.sqnr_db, "input_range": list(self.input_range) if self.input_range else None,
                "outlier_channel": self.outlier_channel, "outlier_ratio": self.outlier_ratio, "producer": self.producer,
                "call_site": self.call_site}


def _sqnr(outputs: Any, ref: Any) -> float:
    return compare(outputs, ref).min_sqnr_db


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, attr = name.rpartition(".")
    return (model.get_submodule(head) if head else model), attr


def _fake_quant_input(lo: float, hi: float) -> Callable[..., Any]:
    """Pre-hook: the first floating input quantized per tensor to 256 levels over [lo, hi] (0 included)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zero_point = int(min(max(round(-lo / scale), 0), 255))

    def hook(module: nn.Module, args: tuple) -> tuple:
        out, done = [], False
        for a in args:
            if not done and isinstance(a, torch.Tensor) and a.is_floating_point():
                a = torch.fake_quantize_per_tensor_affine(a.float(), scale, zero_point, 0, 255).to(a.dtype)
                done = True
            out.append(a)
        return tuple(out)

    return hook


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel (axis 0), as the static flows quantize weights."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w.detach().float(), scale, zero, 0, -127, 127).to(w.dtype)


def _static_sensitivity(model: nn.Module, x: Any, ref: Any, stats: dict[str, Any], limit: int) -> list[_Sensitivity]:
    """Each Conv/Linear alone in simulated static int8: per-channel int8 weights, its input fake-quantized
    per tensor over the calibrated range `stats[name]` (from `record_input_stats`)."""
    work = copy.deepcopy(model)
    names = [n for n, m in work.named_modules() if type(m) in STATIC_TYPES][:limit]
    rows = []
    for name in names:
        st = stats.get(name)
        if st is None or not math.isfinite(st.min):
            continue  # never called, or no floating input
        module = work.get_submodule(name)
        original = module.weight.detach().clone()
        handle = module.register_forward_pre_hook(_fake_quant_input(st.min, st.max))
        try:
            with torch.no_grad():
                module.weight.copy_(_fake_quant_weight(original))
                out = inp.call_model(work, x)
        finally:
            handle.remove()
            with torch.no_grad():
                module.weight.copy_(original)
        rows.append(_row(name, module, _sqnr(out, ref), st))
    return sorted(rows, key=lambda r: r.sqnr_db)


def _row(name: str, module: nn.Module, sqnr: float, st: Any) -> _Sensitivity:
    row = _Sensitivity(name, type(module).__name__, sqnr)
    if st is not None:
        row.input_range = (st.min, st.max) if math.isfinite(st.min) else None
        out = st.outlier()
        if out is not None:
            row.outlier_channel, row.outlier_ratio = out
        row.producer, row.call_site = st.producer, st.call_site
    return row


def _dynamic_sensitivity(mode: _Mode, model: nn.Module, x: Any, ref: Any, limit: int) -> list[_Sensitivity]:
    """Each Linear/LSTM/GRU alone through the real quantize_dynamic, the rest in float."""
    from torch.ao.quantization import quantize_dynamic

    work = copy.deepcopy(model)
    names = mode.layers[:limit]
    stats = record_input_stats(work, [x], names)
    rows = []
    probe = _Mode("dynamic", model=work, fastpath_off=mode.fastpath_off)
    for name in names:
        parent, attr = _parent(work, name)
        original = getattr(parent, attr)
        single = quantize_dynamic(nn.Sequential(original), {type(original)}, dtype=torch.qint8)[0]
        setattr(parent, attr, single)
        try:
            out = probe.call(x)
        finally:
            setattr(parent, attr, original)
        rows.append(_row(name, original, _sqnr(out, ref), stats.get(name)))
    return sorted(rows, key=lambda r: r.sqnr_db)


def _sensitivity_plot(mode: str, rows: list[_Sensitivity]) -> dict[str, Any]:
    shown = rows[:20]
    return {"kind": "barh", "title": f"int8 {mode}: SQNR with one layer quantized (shortest costs most)",
            "x": [r.label for r in shown], "series": {"SQNR (dB)": [r.sqnr_db if math.isfinite(r.sqnr_db) else 100.0 for r in shown]},
            "xlabel": "layer", "ylabel": "output SQNR vs fp32 (dB)", "logy": False}


def _keep_float_code(mode: _Mode, name: str) -> str:
    if mode.mode == "dynamic":
        return f"pass quantize_dynamic a set of module names that leaves out '{name}'"
    if mode.flow == "fx":
        return f"`qconfig_mapping.set_module_name('{name}', None)` before prepare_fx"
    return (f"leave '{name}' out of the quantizer's annotation (PT2E quantizers that support it: `set_module_name('{name}', None)`), "
            f"or use FX with `qconfig_mapping.set_module_name('{name}', None)`")


def _keep_float_trial(mode: _Mode, model: nn.Module, x: Any, ref: Any, cal: _Calibration, engine: str, name: str) -> float | None:
    """SQNR with `name` kept in float, rebuilt with the real flow (dynamic and FX only)."""
    try:
        if mode.mode == "dynamic":
            trial = _Mode("dynamic", model=_build_dynamic(model, {name}), fastpath_off=mode.fastpath_off)
        elif mode.flow == "fx":
            trial = _Mode("static", model=_build_fx(model, x, cal.batches, engine, {name}), fastpath_off=mode.fastpath_off)
        else:
            return None
        return _sqnr(trial.call(x), ref)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# The check


def _decided_top1(outputs: Any, ref: Any, margin: float) -> tuple[float, int] | None:
    """Top-1 agreement over the rows whose fp32 prediction is decided: the top-2 margin is at least
    `margin` x the row's logit range (random-weight and near-tie rows flip on any noise)."""
    got = flatten(outputs)
    agree = total = 0
    for name, exp in flatten(ref).items():
        act = got.get(name)
        if not (isinstance(exp, torch.Tensor) and exp.is_floating_point() and exp.dim() == 2 and exp.shape[-1] >= 2):
            continue
        if not isinstance(act, torch.Tensor) or act.shape != exp.shape:
            continue
        e, a = exp.detach().float().cpu(), act.detach().float().cpu()
        top2 = e.topk(2, dim=-1).values
        span = (e.max(-1).values - e.min(-1).values).clamp_min(1e-30)
        decided = (top2[:, 0] - top2[:, 1]) >= margin * span
        total += int(decided.sum())
        agree += int(((a.argmax(-1) == e.argmax(-1)) & decided).sum())
    return (agree / total, total) if total else None


def _judge(mode: _Mode, opts: CheckOptions, acc_fp32: float | None, ref: Any, labelled: int = 0) -> None:
    if mode.not_applicable:
        mode.status = PASS
        return
    if mode.error:
        mode.status = WARN
        mode.reasons.append(f"{mode.mode} int8 could not be built or run: {mode.error}")
        return
    assert mode.comparison is not None
    sqnr = mode.sqnr_db
    worst = mode.comparison.worst
    where = f" (`{worst.name}`)" if worst is not None and len(mode.comparison.leaves) > 1 else ""
    if sqnr < opts.fail_sqnr_db:
        mode.status = FAIL
        mode.reasons.append(f"{mode.mode} int8 output is mostly noise: SQNR {sqnr:.1f} dB{where} < {opts.fail_sqnr_db:g} dB")
    elif sqnr < opts.warn_sqnr_db:
        mode.status = WARN
        mode.reasons.append(f"{mode.mode} int8 SQNR {sqnr:.1f} dB{where} < {opts.warn_sqnr_db:g} dB")
    decided = _decided_top1(mode.outputs, ref, TOP1_MARGIN)
    mode.decided_top1 = decided[0] if decided else None
    if decided is not None and decided[0] < opts.min_top1:
        mode.reasons.append(f"{mode.mode} int8 agrees with fp32's top-1 on {decided[0]:.0%} of the {decided[1]} decided rows "
                            f"(< {opts.min_top1:.0%})")
        if mode.status == PASS:
            mode.status = WARN
    if mode.accuracy is not None and acc_fp32 is not None and acc_fp32 - mode.accuracy > opts.max_accuracy_drop:
        lost = round((acc_fp32 - mode.accuracy) * labelled)
        text = (f"{mode.mode} int8 accuracy {mode.accuracy:.1%} vs fp32 {acc_fp32:.1%} on {labelled} labelled samples "
                f"(drop > {opts.max_accuracy_drop:.1%})")
        if lost >= 2:
            mode.status = FAIL
        else:  # one sample may be a near-tie: with few labels the threshold is coarser than one sample
            text += f"; only {lost} sample, so this warns: give more labelled samples"
            if mode.status == PASS:
                mode.status = WARN
        mode.reasons.append(text)
    mode.numeric = mode.status != PASS


def _calibration_blame(static: _Mode | None, dynamic: _Mode | None, cal: _Calibration, cal_stats: dict[str, Any],
                       ex_stats: dict[str, Any], opts: CheckOptions) -> str | None:
    """Whether poor static results come from the calibration data (said when static is bad)."""
    if static is None or not static.ran or not static.numeric:
        return None
    if dynamic is not None and dynamic.ran:
        if static.sqnr_db >= dynamic.sqnr_db - 10:
            return None
        head = f"static int8 ({static.sqnr_db:.1f} dB) is much worse than dynamic ({dynamic.sqnr_db:.1f} dB)"
    else:
        head = f"static int8 reaches {static.sqnr_db:.1f} dB"
    mismatches = []
    for name, cs in cal_stats.items():
        es = ex_stats.get(name)
        if es is None or not (math.isfinite(cs.min) and math.isfinite(es.min)):
            continue
        span = max(cs.max, 0.0) - min(cs.min, 0.0)
        ex_span = max(es.max, 0.0) - min(es.min, 0.0)
        if ex_span <= 0:
            continue
        ratio = span / ex_span
        if ratio < 0.5 or ratio > 8:
            effect = "the example's values are clipped" if ratio < 0.5 else "int8 steps are too coarse for the example's values"
            mismatches.append((abs(math.log(max(ratio, 1e-30))), f"`{cs.name}`'s input was calibrated to [{cs.min:.3g}, {cs.max:.3g}] "
                               f"but reaches [{es.min:.3g}, {es.max:.3g}] on the example ({effect})"))
    mismatches.sort(key=lambda m: -m[0])
    real = [f for f in cal.findings if not f.startswith("the calibration inputs were synthesised")]
    causes = real + [text for _, text in mismatches[:3]]
    if causes:
        return f"{head}; the calibration data is the likely cause: " + "; ".join(causes)
    return (f"{head}; the calibration data is not the likely cause ({cal.describe()}, and every layer's calibrated input range "
            f"matches the example's): the activations themselves do not fit per-tensor int8 (see the per-layer sensitivity)")


def _plain_hint(results: list[_Mode], cal: _Calibration) -> str:
    """The hint when nothing numeric is wrong: a build failure or synthesised calibration."""
    failed = [m for m in results if m.error]
    if failed:
        return ("; ".join(f"{m.mode} int8 could not be built ({m.error})" for m in failed)
                + ": static flows need a model torch.export or FX symbolic tracing can capture (no data-dependent Python "
                  "control flow in forward); dynamic quantization needs none")
    return cal.findings[0] if cal.findings else "see details['modes']"


def _mode_metrics(mode: _Mode) -> dict[str, Any]:
    p = f"{mode.mode}."
    if mode.not_applicable:
        return {f"{p}applicable": False}
    out: dict[str, Any] = {f"{p}status": mode.status}
    if mode.ran:
        assert mode.comparison is not None
        out[f"{p}sqnr_db"] = mode.sqnr_db
        if mode.top1 is not None:
            out[f"{p}top1_agreement"] = mode.top1
        out[f"{p}min_cosine"] = mode.comparison.min_cosine
        out[f"{p}max_abs"] = mode.comparison.max_abs
    if mode.mode == "static":
        out[f"{p}flow"] = mode.flow or "none"
    else:
        out[f"{p}layers"] = len(mode.layers)
    for key, value in (("size_bytes", mode.size_bytes), ("latency_ms", mode.latency_s * 1e3 if mode.latency_s is not None else None),
                       ("accuracy", mode.accuracy)):
        if value is not None:
            out[p + key] = value
    return out


@register("quantization", family="precision", title="int8 dynamic and static quantization keep the outputs", options=_OPTIONS,
          order=45, default=False)  # opt-in: torchao import, export and calibration cost ~25-45 forwards (resnet18)
def quantization(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Int8 dynamic (Linear/LSTM/GRU) and static post-training quantization against fp32 (opt-in:
    `--checks quantization` or `--checks all`).

    Static uses PT2E (torchao, XNNPACK quantizer) where the model exports, else FX; calibration
    comes from `Target.calibration` or is synthesised from the example (with a warning). Reports
    SQNR, top-1 agreement, accuracy against `Target.labels`, size and CPU latency before/after.
    Fails below `fail_sqnr_db` (10 dB) or on an accuracy drop above `max_accuracy_drop`; warns
    below `warn_sqnr_db` (20 dB) or `min_top1`. On a warning or failure, layers are quantized one
    at a time and ranked by the SQNR they cost; the worst is the culprit, with its input's channel
    outliers and the SQNR with it kept in float.
    """
    modes = [str(m).strip().lower() for m in opts.modes if str(m).strip()]
    bad = [m for m in modes if m not in ("dynamic", "static")]
    if bad or not modes:
        from torch_diagnose.errors import UsageError

        raise UsageError(f"quantization.modes: unknown mode {bad[0] if bad else '(none)'!r}; use dynamic and/or static")
    if not hasattr(torch.ao, "quantization") or not torch.backends.quantized.supported_engines:
        raise SkipCheck("this torch build has no quantized CPU engine")
    on_cuda = ctx.device.type != "cpu"
    float_model = ctx.model if not on_cuda else ctx.cached("quantization:float-cpu", lambda: ctx.model_copy().cpu())
    x = _to_cpu(ctx.inputs)
    ref = _to_cpu(ctx.reference)
    cal = _calibration(ctx, opts, x)
    notes: list[str] = []
    if on_cuda:
        notes.append(f"quantized CPU kernels only: the int8 models ran on CPU (the run's device is {ctx.device})")

    with quantized_engine() as engine:
        results: list[_Mode] = []
        if "dynamic" in modes:
            results.append(_make_dynamic(ctx, float_model, x))
        if "static" in modes:
            results.append(_make_static(ctx, opts, float_model, x, cal, engine))
        if all(m.not_applicable for m in results):
            raise SkipCheck("; ".join(m.not_applicable or "" for m in results))
        acc_fp32, latency_fp32 = _measure(ctx, opts, results, float_model, x, ref, cal, notes)
        status = max((m.status for m in results), key=lambda s: SEVERITY[s], default=PASS)
        static = next((m for m in results if m.mode == "static"), None)
        dynamic = next((m for m in results if m.mode == "dynamic"), None)
        cal_stats: dict[str, Any] = {}
        ex_stats: dict[str, Any] = {}
        if static is not None and static.numeric:
            names = [n for n, m in float_model.named_modules() if type(m) in STATIC_TYPES][:opts.max_layers]
            cal_stats = record_input_stats(float_model, cal.batches, names)
            ex_stats = record_input_stats(float_model, [x], names)
        blame = _calibration_blame(static, dynamic, cal, cal_stats, ex_stats, opts)
        details = _details(results, cal, blame, opts, notes)
        culprit = location = hint = None
        kept: tuple[str, float] | None = None
        numeric = [m for m in results if m.numeric]
        if status != PASS and opts.sensitivity and numeric:
            top, worst_mode, rows = _rank_layers(numeric, float_model, x, ref, cal_stats, opts, details)
            if top is not None and worst_mode is not None:
                culprit, location = top.label, top.call_site
                if worst_mode.status == FAIL:
                    trial = _keep_float_trial(worst_mode, float_model, x, ref, cal, engine, top.layer)
                    kept = (top.layer, trial) if trial is not None else None
                hint = _culprit_hint(worst_mode, top, rows, kept, blame, opts)
        elif status != PASS:
            hint = blame or _plain_hint(results, cal)

    size_fp32 = _state_size(float_model)
    metrics: dict[str, Any] = {}
    for mode in results:
        metrics.update(_mode_metrics(mode))
    metrics["size_fp32_bytes"] = size_fp32
    if latency_fp32 is not None:
        metrics["latency_fp32_ms"] = latency_fp32 * 1e3
    if acc_fp32 is not None:
        metrics["accuracy_fp32"] = acc_fp32
    metrics["calibration_samples"] = cal.samples
    metrics["calibration_source"] = cal.source
    metrics["quantized_device"] = "cpu"
    if kept:
        metrics[f"sqnr_db_with_{kept[0]}_in_float"] = kept[1]
    _publish(ctx, results, x)
    ctx.notes.extend(n for n in notes if n not in ctx.notes)
    summary = _summary(results, cal, size_fp32, latency_fp32, acc_fp32, status, blame, on_cuda)
    return CheckResult(status=status, summary=summary, metrics=metrics, details=details, culprit=culprit,
                       location=location, hint=hint if status != PASS else None)


def _measure(ctx: Context, opts: CheckOptions, results: list[_Mode], float_model: nn.Module, x: Any, ref: Any,
             cal: _Calibration, notes: list[str]) -> tuple[float | None, float | None]:
    """Compare, size, accuracy, judge and time every variant that ran; (fp32 accuracy, fp32 latency)."""
    for mode in results:
        if mode.outputs is not None:
            mode.comparison = compare(mode.outputs, ref)
            mode.size_bytes = _state_size(mode.model, graph_constants=mode.flow == "pt2e")
            if mode.fastpath_off:
                notes.append(f"{mode.mode}: the MultiheadAttention fast path cannot run quantized linears; it ran with "
                             f"torch.backends.mha.set_fastpath_enabled(False)")
    labelled = _labelled(ctx, x, cal)
    acc_fp32 = None
    if labelled is not None:
        lx, ly = labelled
        with torch.inference_mode():
            acc_fp32 = _accuracy(inp.call_model(float_model, lx), ly)
        for mode in results:
            if mode.ran:
                try:
                    mode.accuracy = _accuracy(mode.call_rows(lx, _rows(x, ctx.batch_dim), ctx.batch_dim), ly)
                except Exception as exc:
                    notes.append(f"{mode.mode}: accuracy against Target.labels could not be computed: {_first_line(exc)}")
    for mode in results:
        _judge(mode, opts, acc_fp32, ref, int(labelled[1].numel()) if labelled is not None else 0)
        if mode.mode == "static" and mode.ran and cal.source == "synthesised" and mode.status == PASS:
            mode.status = WARN
            mode.reasons.append("static int8 was calibrated on synthesised inputs")
    latency_fp32 = None
    ran = [m for m in results if m.ran]
    if opts.latency and ran:
        latency_fp32 = _latency(lambda: inp.call_model(float_model, x))
        for mode in ran:
            mode.latency_s = _latency(lambda m=mode: m.call(x))
    return acc_fp32, latency_fp32


def _details(results: list[_Mode], cal: _Calibration, blame: str | None, opts: CheckOptions, notes: list[str]) -> dict[str, Any]:
    return {
        "modes": {m.mode: {"flow": _flow_text(m) if not m.not_applicable else None, "status": m.status, "reasons": m.reasons,
                           "error": m.error, "not_applicable": m.not_applicable, "flow_errors": m.flow_errors,
                           "layers": m.layers if m.mode == "dynamic" else None, "decided_top1": m.decided_top1,
                           "comparison": m.comparison.metrics() if m.comparison is not None else None} for m in results},
        "calibration": {"source": cal.source, "batches": len(cal.batches), "samples": cal.samples, "findings": cal.findings,
                        "blame": blame},
        "thresholds": {"fail_sqnr_db": opts.fail_sqnr_db, "warn_sqnr_db": opts.warn_sqnr_db, "min_top1": opts.min_top1,
                       "max_accuracy_drop": opts.max_accuracy_drop},
        "notes": notes,
    }


def _rank_layers(numeric: list[_Mode], float_model: nn.Module, x: Any, ref: Any, cal_stats: dict[str, Any], opts: CheckOptions,
                 details: dict[str, Any]) -> tuple[_Sensitivity | None, _Mode | None, list[_Sensitivity]]:
    """Per-layer sensitivity of every mode with a numeric problem; (worst layer, its mode, that mode's ranking)."""
    start = time.perf_counter()
    sensitivity: dict[str, list[_Sensitivity]] = {}
    for mode in numeric:
        if mode.mode == "dynamic":
            sensitivity["dynamic"] = _dynamic_sensitivity(mode, float_model, x, ref, opts.max_layers)
        else:
            sensitivity["static"] = _static_sensitivity(float_model, x, ref, cal_stats, opts.max_layers)
    details["sensitivity"] = {k: [r.row() for r in v] for k, v in sensitivity.items()}
    details["plot"] = [_sensitivity_plot(k, v) for k, v in sensitivity.items() if v]
    details["sensitivity_seconds"] = time.perf_counter() - start
    worst_mode = min(numeric, key=lambda m: (-SEVERITY[m.status], m.sqnr_db))
    rows = sensitivity.get(worst_mode.mode) or next((v for v in sensitivity.values() if v), [])
    return (rows[0] if rows else None), worst_mode, rows


def _publish(ctx: Context, results: list[_Mode], x: Any) -> None:
    """The int8 variants for the benchmark; a PT2E graph runs other batch sizes in example-sized chunks."""
    rows = _rows(x, ctx.batch_dim)
    for mode in results:
        if not mode.ran:
            continue
        ctx.add_variant(Variant(
            name=f"int8-{mode.mode}", run=lambda inputs, m=mode: m.call_rows(inputs, rows, ctx.batch_dim),
            source_check="quantization", verdict=mode.status,
            max_error=mode.comparison.max_abs if mode.comparison is not None else None, size_bytes=mode.size_bytes,
            note=f"{_flow_text(mode)}; runs on CPU" + ("; PT2E reference (quantize/dequantize) graph exported for the example "
                                                    "shapes, not lowered to int8 kernels" if mode.flow == "pt2e" else ""),
        ))


def _culprit_hint(mode: _Mode, top: _Sensitivity, rows: list[_Sensitivity], kept: tuple[str, float] | None,
                  calibration_blame: str | None, opts: CheckOptions) -> str:
    parts = [f"{top.label} costs the most: quantized alone ({mode.mode}) the output keeps {top.sqnr_db:.1f} dB SQNR"]
    if top.outlier_ratio is not None and top.outlier_ratio >= 100:
        src = f" (from {top.producer})" if top.producer else ""
        parts.append(f"channel {top.outlier_channel} of its input{src} is {top.outlier_ratio:.3g}x the median channel's magnitude, "
                     f"so per-tensor int8 leaves the other channels almost no levels")
    elif top.input_range is not None:
        parts.append(f"its input spans [{top.input_range[0]:.3g}, {top.input_range[1]:.3g}]")
    if kept is not None:
        if kept[1] >= opts.warn_sqnr_db:
            parts.append(f"keeping it in float gives {kept[1]:.1f} dB")
        elif mode.mode == "static":
            parts.append(f"keeping it alone in float gives only {kept[1]:.1f} dB: its input is also quantized where it is produced"
                         + (f" ({top.producer})" if top.producer else "") + ", so keep that producer in float too")
        else:
            parts.append(f"keeping it alone in float gives only {kept[1]:.1f} dB: other layers cost too")
    others = [r for r in rows[1:] if r.sqnr_db < opts.warn_sqnr_db]
    if others:
        parts.append("also below the warn level: " + ", ".join(f"{r.label} {r.sqnr_db:.1f} dB" for r in others[:4]))
    fix = f"Keep `{top.layer}` in float ({_keep_float_code(mode, top.layer)})"
    if top.outlier_ratio is not None and top.outlier_ratio >= 100:
        fix += (f", or move the outlier's scale into the weights (SmoothQuant: divide input channel {top.outlier_channel} by s and "
                f"multiply that input column of `{top.layer}.weight` by s)")
    text = "; ".join(parts) + ". " + fix
    if calibration_blame:
        text = calibration_blame + ". " + text
    return text


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _summary(results: list[_Mode], cal: _Calibration, size_fp32: int, latency_fp32: float | None, acc_fp32: float | None,
             status: str, calibration_blame: str | None, on_cuda: bool) -> str:
    parts = []
    for m in results:
        if m.not_applicable:
            parts.append(f"{m.mode}: not applicable ({m.not_applicable})")
            continue
        if not m.ran:
            parts.append(f"{m.mode}: could not run ({m.error})")
            continue
        bits = [f"SQNR {m.sqnr_db:.1f} dB"]
        if m.top1 is not None:
            bits.append(f"top-1 agreement {m.top1:.0%}")
        if m.accuracy is not None and acc_fp32 is not None:
            bits.append(f"accuracy {acc_fp32:.1%} -> {m.accuracy:.1%}")
        bits.append(f"size {_fmt_bytes(size_fp32)} -> {_fmt_bytes(m.size_bytes)}")
        if m.latency_s is not None and latency_fp32 is not None:
            bits.append(f"latency {latency_fp32 * 1e3:.3g} -> {m.latency_s * 1e3:.3g} ms")
        how = _flow_text(m) if m.mode == "static" else f"{len(m.layers)} layer(s)"
        if m.mode == "static":
            how += f", {cal.describe()}"
        parts.append(f"{m.mode} ({how}): " + ", ".join(bits))
    reasons = [r for m in results for r in m.reasons if m.status != PASS]
    head = "; ".join(reasons) if reasons and status != PASS else "int8 keeps the outputs"
    text = f"{head} [{'; '.join(parts)}]"
    if calibration_blame:
        text += f"; {calibration_blame}"
    if on_cuda:
        text += " (quantized models ran on CPU)"
    return text
