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

Which of them a default run builds is decided by `torch_diagnose.quant.defaults` (calibration data:
both; Linear/LSTM/GRU holding most parameters: dynamic; else skipped, fast); naming the check runs
every mode in `modes`.

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

from typing import Any

import torch
from torch import nn

from torch_diagnose.context import Context
from torch_diagnose.errors import UsageError
from torch_diagnose.locate.culprit import Culprit
from torch_diagnose.precision.input_stats import InputStats, record_input_stats
from torch_diagnose.quant import judge as qj
from torch_diagnose.quant.calibration import Calibration, calibration, calibration_blame
from torch_diagnose.quant.defaults import default_note, default_plan
from torch_diagnose.quant.flows import STATIC_FLOWS, make_dynamic, make_static
from torch_diagnose.quant.runtime import QuantMode, quantized_engine, state_size, to_cpu
from torch_diagnose.quant.sensitivity import culprit_hint, keep_float_trial, rank_layers, static_layers
from torch_diagnose.registry import CheckOptions, Option, register
from torch_diagnose.results import FAIL, PASS, SEVERITY, CheckResult, SkipCheck

MODES = ("dynamic", "static")

def _words(raw: Any) -> list[str]:
    """`dynamic,static` or a list -> lower-case names; at least one."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    words = [str(w).strip().lower() for w in items if str(w).strip()]
    if not words:
        raise UsageError("give at least one of dynamic, static")
    return words


_OPTIONS = (
    Option("modes", list, list(MODES), "which int8 variants to build: dynamic, static (a default run that did not "
           "name the check builds what the default rule allows, see the check's doc)", choices=MODES, parse=_words),
    Option("static_flow", str, "auto", "static flow: auto (PT2E, else FX), pt2e or fx", choices=tuple(STATIC_FLOWS),
           parse=lambda raw: str(raw).strip().lower()),
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


def _layer_inputs(static: QuantMode | None, float_model: nn.Module, cal: Calibration, x: Any,
                  opts: CheckOptions) -> tuple[dict[str, InputStats], dict[str, InputStats]]:
    """Input ranges of the static layers on the calibration set and on the example (static numeric problems only)."""
    if static is None or not static.numeric:
        return {}, {}
    names = static_layers(float_model, opts.max_layers)
    return record_input_stats(float_model, cal.batches, names), record_input_stats(float_model, [x], names)


def _explain(results: list[QuantMode], status: str, float_model: nn.Module, x: Any, ref: Any, cal: Calibration,
             cal_stats: dict[str, InputStats], blame: str | None, engine: str, opts: CheckOptions,
             details: dict[str, Any]) -> tuple[Culprit | None, str | None, tuple[str, float] | None]:
    """(culprit, hint, (layer kept in float, SQNR then)): the layer that costs the most, by sensitivity."""
    if status == PASS:
        return None, None, None
    numeric = [m for m in results if m.numeric]
    if not (opts.sensitivity and numeric):
        return None, blame or qj.plain_hint(results, cal), None
    top, worst_mode, rows = rank_layers(numeric, float_model, x, ref, cal_stats, opts, details)
    if top is None:
        return None, None, None
    kept = None
    if worst_mode.status == FAIL:
        trial = keep_float_trial(worst_mode, float_model, x, ref, cal, engine, top.name)
        kept = (top.name, trial) if trial is not None else None
    return top.culprit, culprit_hint(worst_mode, top, rows, kept, blame, opts), kept


def _metrics(results: list[QuantMode], size_fp32: int, latency_fp32: float | None, acc_fp32: float | None,
             cal: Calibration, kept: tuple[str, float] | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for mode in results:
        metrics.update(qj.mode_metrics(mode))
    metrics["size_fp32_bytes"] = size_fp32
    if latency_fp32 is not None:
        metrics["latency_fp32_ms"] = latency_fp32 * 1e3
    if acc_fp32 is not None:
        metrics["accuracy_fp32"] = acc_fp32
    metrics.update(calibration_samples=cal.samples, calibration_source=cal.source, quantized_device="cpu")
    if kept:
        metrics[f"sqnr_db_with_{kept[0]}_in_float"] = kept[1]
    return metrics


@register("quantization", family="precision", title="int8 dynamic and static quantization keep the outputs", options=_OPTIONS,
          order=45)  # default, but gated by quant/defaults.py: skipped at once unless the rule or the user asks for it
def quantization(ctx: Context, opts: CheckOptions) -> CheckResult:
    """Int8 dynamic (Linear/LSTM/GRU) and static post-training quantization against fp32.

    In a run that does not name it, it runs both modes when the Target has `calibration` data,
    dynamic only when Linear/LSTM/GRU hold at least half the parameters, and is skipped otherwise
    (`--checks quantization` always runs every mode in `modes`).

    Static uses PT2E (torchao, XNNPACK quantizer) where the model exports, else FX; calibration
    comes from `Target.calibration` or is synthesised from the example (with a warning). Reports
    SQNR, top-1 agreement, accuracy against `Target.labels`, size and CPU latency before/after.
    Fails below `fail_sqnr_db` (10 dB) or on an accuracy drop above `max_accuracy_drop`; warns
    below `warn_sqnr_db` (20 dB) or `min_top1`. On a warning or failure, layers are quantized one
    at a time and ranked by the SQNR they cost; the worst is the culprit, with its input's channel
    outliers and the SQNR with it kept in float.
    """
    plan = default_plan(ctx.options, ctx.original_model, ctx.target.calibration is not None, list(opts.modes))
    if not plan.modes:
        return CheckResult.skipped(plan.reason)
    modes, flows = plan.modes, STATIC_FLOWS[opts.static_flow]
    if not hasattr(torch.ao, "quantization") or not torch.backends.quantized.supported_engines:
        raise SkipCheck("this torch build has no quantized CPU engine")
    on_cuda = ctx.device.type != "cpu"
    float_model = ctx.model if not on_cuda else ctx.cached("quantization:float-cpu", lambda: ctx.model_copy().cpu())
    x, ref = to_cpu(ctx.inputs), to_cpu(ctx.reference)
    cal = calibration(ctx, opts, x)
    notes = [f"quantized CPU kernels only: the int8 models ran on CPU (the run's device is {ctx.device})"] if on_cuda else []
    notes += [n for n in [default_note(plan, list(opts.modes))] if n]
    with quantized_engine() as engine:
        # measure: build, run, compare and time each variant
        results = ([make_dynamic(ctx, float_model, x)] if "dynamic" in modes else []) + (
            [make_static(ctx, flows, float_model, x, cal, engine)] if "static" in modes else [])
        if all(m.not_applicable for m in results):
            raise SkipCheck("; ".join(m.not_applicable or "" for m in results))
        acc_fp32, latency_fp32 = qj.measure(ctx, opts, results, float_model, x, ref, cal, notes)
        # judge, then explain: the calibration data, else the layer that costs the most
        status = max((m.status for m in results), key=lambda s: SEVERITY[s], default=PASS)
        static = next((m for m in results if m.mode == "static"), None)
        dynamic = next((m for m in results if m.mode == "dynamic"), None)
        cal_stats, ex_stats = _layer_inputs(static, float_model, cal, x, opts)
        blame = calibration_blame(static, dynamic, cal, cal_stats, ex_stats)
        details = qj.details(results, cal, blame, opts, notes)
        culprit, hint, kept = _explain(results, status, float_model, x, ref, cal, cal_stats, blame, engine, opts, details)
    size_fp32 = state_size(float_model)
    qj.publish(ctx, results, x)
    ctx.notes.extend(n for n in notes if n not in ctx.notes)
    summary = qj.summary(results, cal, size_fp32, latency_fp32, acc_fp32, status, blame, on_cuda)
    return CheckResult(status=status, summary=summary, metrics=_metrics(results, size_fp32, latency_fp32, acc_fp32, cal, kept),
                       details=details, culprit=culprit, hint=hint)
