"""determinism: repeat runs and RNG seeds, with the culprit module and line named."""
from __future__ import annotations

import pytest
import torch
import torchvision

from diagnostics import ERROR, FAIL, PASS, Target, run_check
from tests.models import faulty


@pytest.mark.parametrize("factory", [faulty.small_net, faulty.dict_outputs, faulty.non_tensor_outputs])
def test_clean_models_pass(factory) -> None:
    result = run_check("determinism", factory())
    assert result.status == PASS, result.explain()
    assert result.metrics["bitwise_equal_runs"] == result.metrics["runs_compared"]


def test_functional_dropout_with_training_true_is_named_with_line() -> None:
    result = run_check("determinism", faulty.functional_dropout())
    assert result.status == FAIL
    assert result.culprit == "head (DropoutHead)"
    assert "training=self.training" in result.hint
    assert "head.forward" in result.hint
    assert result.location and "faulty.py:" in result.location


def test_randn_like_noise_is_named() -> None:
    result = run_check("determinism", faulty.randn_noise())
    assert result.status == FAIL
    assert result.culprit == "noise (Noisy)"
    assert "randn_like" in result.hint


def test_dropout_kept_training_by_bad_override_is_named() -> None:
    result = run_check("determinism", faulty.train_override_not_propagating())
    assert result.status == FAIL
    assert result.culprit == "block.drop (Dropout)"
    assert ".eval()" in result.hint


def test_model_that_raises_ends_as_error_not_crash() -> None:
    result = run_check("determinism", faulty.raising_forward())
    assert result.status == ERROR
    assert "boom" in result.summary


def test_options_are_validated() -> None:
    from diagnostics import UsageError

    with pytest.raises(UsageError, match="no option 'bogus'"):
        run_check("determinism", faulty.small_net(), bogus=1)


def test_clean_torchvision_resnet18_passes() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = run_check("determinism", Target(model, torch.randn(2, 3, 64, 64)), repeats=1)
    assert result.status == PASS, result.explain()
