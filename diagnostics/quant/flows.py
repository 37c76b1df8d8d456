"""Building the int8 variants on CPU.

* dynamic: `torch.ao.quantization.quantize_dynamic` of Linear/LSTM/GRU layers;
* static: PT2E from torchao (torch.export, `prepare_pt2e`/`convert_pt2e`, XNNPACK quantizer,
  per-channel weights) where the model exports, else FX (`prepare_fx`/`convert_fx`, x86 qconfig).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from .. import inputs as inp
from ..context import Context, deepcopy_model
from ..precision.hooks import is_timeout
from ..text import one_line
from .calibration import Calibration
from .runtime import QuantMode, rows

#: Module types quantize_dynamic converts (exact types: MultiheadAttention's out_proj is left alone).
DYNAMIC_TYPES: tuple[type, ...] = (nn.Linear, nn.LSTM, nn.GRU)
#: The flows each `static_flow` option value tries, in order.
STATIC_FLOWS = {"auto": ("pt2e", "fx"), "pt2e": ("pt2e",), "fx": ("fx",)}


def dynamic_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) in DYNAMIC_TYPES]


def build_dynamic(model: nn.Module, skip: frozenset[str] = frozenset()) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    if skip:
        spec: Any = {n: default_dynamic_qconfig for n in dynamic_layers(model) if n not in skip}
    else:
        spec = set(DYNAMIC_TYPES)
    return quantize_dynamic(deepcopy_model(model)[0], spec, dtype=torch.qint8)


def _rebatch(batches: list[Any], example: Any, batch_dim: int) -> list[Any]:
    """Calibration batches in the example's batch size (a PT2E graph is exported for fixed shapes)."""
    n = rows(example, batch_dim)
    if all(rows(b, batch_dim) == n for b in batches):
        return batches
    joined = inp.concat_batch(batches, batch_dim)
    total = rows(joined, batch_dim)
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


def build_pt2e(model: nn.Module, example: Any, batches: list[Any], batch_dim: int) -> nn.Module:
    with _quiet_logger("torch.utils._pytree"):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    args, kwargs = inp.as_args_kwargs(example)
    exported = torch.export.export(deepcopy_model(model)[0], args, kwargs).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in _rebatch(batches, example, batch_dim):
            inp.call_model(prepared, batch)
    return convert_pt2e(prepared)


def build_fx(model: nn.Module, example: Any, batches: list[Any], engine: str, skip: frozenset[str] = frozenset()) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = get_default_qconfig_mapping(engine)
    for name in skip:
        mapping = mapping.set_module_name(name, None)
    args, kwargs = inp.as_args_kwargs(example)
    prepared = prepare_fx(deepcopy_model(model)[0], mapping, tuple(args) or tuple(kwargs.values()))
    with torch.no_grad():
        for batch in batches:
            inp.call_model(prepared, batch)
    return convert_fx(prepared)


def make_dynamic(ctx: Context, model: nn.Module, x: Any) -> QuantMode:
    """The dynamic variant, built once per run and run on the example."""
    mode = QuantMode("dynamic", flow="torch.ao quantize_dynamic (qint8 weights, dynamic per-tensor activations)")
    mode.layers = dynamic_layers(model)
    if not mode.layers:
        mode.not_applicable = "no Linear/LSTM/GRU layers to quantize dynamically"
        return mode
    try:
        mode.model = ctx.cached("quantization:int8-dynamic", lambda: build_dynamic(model))
        mode.outputs = mode.run(x)
    except Exception as exc:
        if is_timeout(exc):
            raise
        mode.error = one_line(exc, 240)
    return mode


def make_static(ctx: Context, flows: tuple[str, ...], model: nn.Module, x: Any, cal: Calibration, engine: str) -> QuantMode:
    """The static variant by the first of `flows` that builds and runs; each failure is kept."""
    mode = QuantMode("static")
    for flow in flows:
        def build(flow: str = flow) -> nn.Module:
            if flow == "pt2e":
                return build_pt2e(model, x, cal.batches, ctx.batch_dim)
            return build_fx(model, x, cal.batches, engine)

        try:
            mode.model = ctx.cached(f"quantization:int8-static:{flow}", build)
            mode.flow = flow
            mode.outputs = mode.run(x)
            mode.flow_errors.pop(flow, None)
            break
        except ImportError as exc:
            mode.flow_errors[flow] = f"not installed ({exc}); pip install torchao"
        except Exception as exc:
            if is_timeout(exc):
                raise
            mode.flow_errors[flow] = one_line(exc, 240)
        mode.model = None
    if mode.model is None:
        mode.error = "; ".join(f"{f}: {e}" for f, e in mode.flow_errors.items())
    return mode


def flow_text(mode: QuantMode) -> str:
    if mode.mode == "dynamic":
        return "quantize_dynamic"
    return {"pt2e": "PT2E (torchao, XNNPACK quantizer)", "fx": "FX (torch.ao, x86 qconfig)"}.get(mode.flow, mode.flow)
