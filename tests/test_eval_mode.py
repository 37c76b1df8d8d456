"""eval_mode: modules left in training mode, and train() overrides that do not propagate."""
from __future__ import annotations

import pytest
import torchvision

from torch_diagnose import FAIL, PASS, Target, run_check
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
