"""The default checks on small real library models (random weights, nothing downloaded): no check
may break (`error`) and none may fail a model that has no fault (issue 14). Plus the Context's
fallbacks for models `copy.deepcopy` or `model.eval()` refuse."""
from __future__ import annotations

import warnings
import pytest
import torch

from tests.models import real_models as rm
from torch_diagnose import Target, diagnose
from torch_diagnose.context import Context, grad_tensors

pytestmark = pytest.mark.filterwarnings("ignore")

_REPORTS: dict[str, object] = {}
#: Faster R-CNN's default run takes minutes on 2 CPU cores (fp16/bf16 autocast, trace, legacy ONNX and the
#: benchmark dominate: see benchmarks/bench_real_models.py); here it runs the other default checks at 128 px.
SLOW_ON_DETECTION = {"fp16", "bf16", "torchscript", "onnx", "quantization", "benchmark"}


def _report(name: str):
    """The default run on one model, shared by its tests (a default run costs seconds to a minute)."""
    if name not in _REPORTS:
        from torch_diagnose.registry import select_checks

        checks = None
        target = rm.detection(size=128) if name == "detection" else getattr(rm, name)()
        if name == "detection":
            checks = [s.id for s in select_checks(None, None) if s.id not in SLOW_ON_DETECTION]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _REPORTS[name] = diagnose(target, checks=checks)
    return _REPORTS[name]


#: True findings on these models, each with the fix a user can apply without editing library code: a
#: transformers model with the default cache returns a DynamicCache no exporter can return (hint: use_cache=False);
#: torch.export stops at a data-dependent guard in torchvision's batched_nms (named as torchvision library code).
TRUE_FAILS = {
    "gpt2": {check: "use_cache=False" for check in ("torchscript", "torch_export", "onnx")},
    "t5": {check: "use_cache=False" for check in ("torchscript", "torch_export", "onnx")},
    "detection": {"torch_export": "torchvision library code"},
}


@pytest.mark.parametrize("name", ["gpt2", "t5", "bert_padded", "timm_vit", "detection", "hooked", "shadowed_train"])
def test_default_checks_neither_break_nor_fail_a_clean_real_model(name: str) -> None:
    report = _report(name)
    expected = TRUE_FAILS.get(name, {})
    unexpected = [f"{r.status} {r.check}: {r.summary}" for r in report.results
                  if r.status == "error" or (r.status == "fail" and r.check not in expected)]
    assert not unexpected, "\n".join(unexpected)
    for check, words in expected.items():
        result = report.result(check)
        assert result.status == "fail" and words in (result.hint or "") + result.summary, f"{check}: {result.summary} | {result.hint}"


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_generative_transformers_outputs_are_compared_by_content(name: str) -> None:
    # DynamicCache / EncoderDecoderCache have no __eq__: comparing them by identity failed every
    # rerun ("3 of 3 runs differ ... max abs diff 0") and every weights round trip.
    report = _report(name)
    for check in ("determinism", "weights_roundtrip", "fp16", "bf16"):
        result = report.result(check)
        assert result.status in ("pass", "skip", "warn"), f"{check}: {result.summary}"
        assert "DynamicCache" not in result.summary and "values differ" not in result.summary, result.summary


def test_a_model_holding_an_autograd_tensor_is_copied_with_it_detached() -> None:
    target = rm.hooked()
    held = grad_tensors(target.model)
    assert [name for name, _ in held] == ["saved"]
    ctx = Context(target)
    copy = ctx.model_copy()
    assert copy is not target.model and copy.saved is not None and copy.saved.is_leaf
    assert target.model.saved.grad_fn is not None  # the original keeps its tensor
    assert ctx.fp64.error is None and ctx.fp64.model is not None
    assert any("autograd history (saved)" in note and "detached" in note for note in ctx.notes)


def test_a_model_deepcopy_refuses_is_rebuilt_from_its_factory() -> None:
    target = rm.deep_stash()
    ctx = Context(target)
    copy = ctx.model_copy()
    assert type(copy) is rm.DeepStash and copy is not target.model
    assert torch.equal(copy.body.weight, target.model.body.weight) and not copy.training
    assert any("rebuilt from Target.factory" in note for note in ctx.notes)
    no_factory = Context(Target(target.model, example_inputs=target.example_inputs))
    with pytest.raises(RuntimeError, match="factory"):
        no_factory.model_copy()


def test_an_eval_switch_that_raises_does_not_crash_the_context() -> None:
    target = rm.shadowed_train()
    torch.nn.Module.train(target.model, True)
    ctx = Context(target)
    model = ctx.model
    assert not any(m.training for m in model.modules())
    note = next(n for n in ctx.notes if n.startswith("model.eval() raised"))
    assert "`ShadowedTrain.train` (tests/models/real_models.py:" in note and "nn.Module.train(mode)" in note
    assert ctx.reference is not None and ctx.fp64.error is None
