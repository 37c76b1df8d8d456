"""eval_mode: modules left in training mode, and train() overrides that do not propagate."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from torch_diagnose import FAIL, PASS, WARN, Target, run_check
from tests.models import faulty


def test_clean_small_model_passes() -> None:
    result = run_check("eval_mode", faulty.small_net())
    assert result.status == PASS, result.explain()
    assert result.metrics["training_at_handover"] == 0


def test_submodule_put_back_in_training_fails_naming_it() -> None:
    result = run_check("eval_mode", faulty.submodule_back_in_training())
    assert result.status == FAIL
    assert result.culprit_label == "block.drop (Dropout)"
    assert "model.eval()" in result.hint


def test_train_override_that_does_not_propagate_is_named() -> None:
    result = run_check("eval_mode", faulty.train_override_not_propagating())
    assert result.status == FAIL
    assert result.culprit_label == "<root> (NoPropagateNet).train"
    assert "super().train(mode)" in result.hint
    assert result.location and result.location.endswith(".py:48") or "faulty.py" in (result.location or "")
    # the mode-sensitive children are listed first
    assert result.details["still_training_after_eval"][0] in ("block.drop (Dropout)", "block.norm (BatchNorm1d)")


def test_model_handed_over_in_training_mode_fails_and_is_not_evaled_before() -> None:
    model, x = faulty.small_net()
    model.train()
    result = run_check("eval_mode", Target(model, x))
    assert result.status == FAIL
    assert result.culprit_label == "<root> (SmallNet)"  # one cause: the whole model was never switched to eval
    assert "model.eval()" in result.hint
    assert "1 Dropout" in result.summary and "1 BatchNorm1d" in result.summary
    assert result.details["mode_sensitive"][:2] == ["block.drop (Dropout)", "block.norm (BatchNorm1d)"]
    assert result.metrics["training_at_handover"] == 7


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_clean_torchvision_models_pass(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    import torch

    result = run_check("eval_mode", Target(model, torch.randn(1, 3, 64, 64)))
    assert result.status == PASS, result.explain()


def test_batchnorm_kept_training_by_a_block_override_names_the_override() -> None:
    """The same fault batch_invariance and state_mutation trace to `block.norm` is named at its root here."""
    from tests.models import determinism_family as fam

    result = run_check("eval_mode", fam.bn_training_in_block())
    assert result.status == FAIL
    assert result.culprit_label == "block (StickyTrainBlock).train"
    assert result.details["still_training_after_eval"][0] == "block.norm (BatchNorm1d)"


def test_train_shadowed_by_a_training_loop_is_named_not_an_error() -> None:
    import inspect

    from tests.models import real_models

    result = run_check("eval_mode", real_models.shadowed_train())
    assert result.status == WARN, result.explain()  # every module is in eval mode; the switch itself is broken
    assert result.culprit_label == "<root> (ShadowedTrain).train"
    line = inspect.getsourcelines(real_models.ShadowedTrain.train)[1]
    assert result.location and result.location.endswith(f"real_models.py:{line}")
    assert "train(self, loader, epochs=1)" in result.summary and "shadows nn.Module.train(mode)" in result.summary
    assert "rename the training loop" in result.hint


def test_shadowed_train_does_not_break_the_other_determinism_checks() -> None:
    from tests.models import real_models

    for check in ("determinism", "state_mutation"):
        result = run_check(check, real_models.shadowed_train())
        assert result.status == PASS, (check, result.explain())


class _FrozenTrain(nn.Module):
    """`train()` refuses to switch: the eval switch raises."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def train(self, mode: bool = True) -> "_FrozenTrain":
        raise RuntimeError("this model is frozen")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_an_eval_switch_that_raises_is_the_finding() -> None:
    model = _FrozenTrain()
    nn.Module.train(model, False)
    result = run_check("eval_mode", Target(model, torch.randn(2, 4)))
    assert result.status in (WARN, FAIL)
    assert "model.eval() raises RuntimeError: this model is frozen" in result.summary
    assert result.culprit_label == "<root> (_FrozenTrain).train"
    assert result.location and "test_eval_mode.py:" in result.location
