"""Randomness named at its real source: ops random with their actual arguments (not an eval-mode
Dropout), attention called with dropout_p > 0, Python and NumPy RNG."""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from torch_diagnose import FAIL, PASS, run_check
from torch_diagnose.locate.spy import RandomSpy, is_random_call
from tests.models import unregistered as models

X = torch.zeros(2, 3)


@pytest.mark.parametrize("name, args, kwargs, random_", [
    ("dropout", (X, 0.1, False), {}, False),  # an eval-mode Dropout under inference_mode
    ("dropout", (X, 0.1, True), {}, True),
    ("dropout", (X, 0.0, True), {}, False),
    ("native_dropout", (X, 0.2, None), {}, True),
    ("feature_alpha_dropout", (X, 0.2), {"train": False}, False),
    ("scaled_dot_product_attention", (X, X, X, None, 0.1), {}, True),
    ("scaled_dot_product_attention", (X, X, X), {}, False),
    ("scaled_dot_product_attention", (X, X, X), {"dropout_p": 0.2}, True),
    ("_scaled_dot_product_flash_attention_for_cpu", (X, X, X, 0.0), {}, False),
    ("_scaled_dot_product_efficient_attention", (X, X, X, None, False, 0.3), {}, True),
    ("rrelu", (X,), {}, False),
    ("rrelu", (X, 0.1, 0.3, True), {}, True),
    ("randn_like", (X,), {}, True),
    ("bernoulli_", (X, 0.5), {}, True),
    ("mm", (X, X), {}, False),
])
def test_random_call_policy_reads_the_actual_arguments(name: str, args: tuple, kwargs: dict, random_: bool) -> None:
    assert is_random_call(name, args, kwargs) is random_


def test_python_random_is_named_not_the_eval_mode_dropout_next_to_it() -> None:
    result = run_check("determinism", models.python_random_next_to_dropout())
    assert result.status == FAIL
    assert result.culprit_label == "<root> (JitterNet)"
    assert result.culprit.code and "random.random()" in result.culprit.code
    assert "`random.random`" in result.hint and "training mode" not in result.hint
    assert [e["op"] for e in result.details["random_ops"]] == ["random.random"]  # the eval Dropout is not counted


def test_attention_called_with_dropout_p_is_named_with_its_line() -> None:
    result = run_check("determinism", models.sdpa_dropout())
    assert result.status == FAIL
    assert result.culprit_label == "attn (Attention)"
    assert "scaled_dot_product_attention" in (result.culprit.code or "")
    assert "dropout_p=0.1" in result.hint and "self.training else 0.0" in result.hint


@pytest.mark.parametrize("factory, op", [(models.numpy_noise, "numpy.random.randn"),
                                         (models.numpy_generator, "numpy.random.Generator.normal")])
def test_numpy_randomness_is_named(factory, op: str) -> None:
    result = run_check("determinism", factory())
    assert result.status == FAIL
    assert f"`{op}`" in result.hint and "NumPy" in result.hint
    assert result.location and "unregistered.py:" in result.location


def test_dropout_held_in_a_plain_list_is_named_by_its_attribute_path() -> None:
    result = run_check("determinism", models.dropout_in_list())
    assert result.status == FAIL
    assert result.culprit_label == "drops[0] (Dropout)"
    assert "nn.ModuleList" in result.hint


def test_clean_module_list_model_passes() -> None:
    result = run_check("determinism", models.module_list())
    assert result.status == PASS, result.explain()


def test_spy_restores_host_rngs_and_profiler() -> None:
    target = models.numpy_generator()
    model = target.model
    before = (np.random.randn, np.random.default_rng, model.rng, sys.getprofile(), random.random)
    with torch.inference_mode(), RandomSpy(model) as spy:
        model(target.example_inputs)
        np.random.default_rng(1).random()
    assert [e.op for e in spy.events] == ["numpy.random.Generator.normal", "numpy.random.Generator.random"]
    assert (np.random.randn, np.random.default_rng, model.rng, sys.getprofile(), random.random) == before
    assert isinstance(model.rng, np.random.Generator)
