"""Modules the model runs but does not register: eval_mode names them by attribute path (or as
created inside forward), weights_roundtrip names the weights a checkpoint loses."""
from __future__ import annotations

import torch
import torchvision

from torch_diagnose import FAIL, PASS, WARN, Target, run_check
from tests.models import unregistered as models


def test_dropouts_in_a_plain_list_fail_eval_mode_naming_the_path_and_the_fix() -> None:
    result = run_check("eval_mode", models.dropout_in_list())
    assert result.status == FAIL
    assert result.culprit_label == "drops[0] (Dropout)"
    assert "drops[0] (Dropout), drops[1] (Dropout)" in result.summary
    assert "`self.drops` is a plain Python list" in result.hint and "nn.ModuleList" in result.hint
    assert result.culprit.code and "self.drops = [" in result.culprit.code  # where the list is assigned
    assert result.metrics["unregistered_training"] == 2


def test_dropout_in_a_plain_dict_names_the_key_and_module_dict() -> None:
    result = run_check("eval_mode", models.dropout_in_dict())
    assert result.status == FAIL
    assert result.culprit_label == "heads['cls'].0 (Dropout)"
    assert "nn.ModuleDict" in result.hint


def test_dropout_created_inside_forward_is_named_with_its_line() -> None:
    result = run_check("eval_mode", models.dropout_created_in_forward())
    assert result.status == FAIL
    assert "Dropout created inside `<root>.forward`" in result.summary
    assert result.culprit_label == "<root> (InlineDropoutNet)"
    assert "nn.Dropout(0.2)" in (result.culprit.code or "")
    assert "__init__" in result.hint


def test_plain_layers_in_a_list_warn_in_eval_mode() -> None:
    result = run_check("eval_mode", models.layers_in_list())
    assert result.status == WARN  # training mode changes nothing for Linear; the lost weights are weights_roundtrip's
    assert result.culprit_label == "layers[0] (Linear)"


def test_layers_in_a_list_fail_weights_roundtrip_naming_them() -> None:
    result = run_check("weights_roundtrip", models.layers_in_list())
    assert result.status == FAIL
    assert result.culprit_label == "layers[0] (Linear)"
    assert "layers[0] (Linear), layers[1] (Linear)" in result.summary
    assert "nn.ModuleList" in result.hint and "checkpoint loses them" in result.hint
    assert [row["held_in"] for row in result.details["unregistered_state"]] == ["layers[0]", "layers[1]"]


def test_registered_module_list_is_clean() -> None:
    target = models.module_list()
    for check in ("eval_mode", "weights_roundtrip"):
        result = run_check(check, target)
        assert result.status == PASS, result.explain()


def test_resnet18_stays_clean() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    result = run_check("eval_mode", Target(model, torch.randn(1, 3, 32, 32)))
    assert result.status == PASS, result.explain()
    assert result.metrics["unregistered_training"] == 0


def test_a_stateless_module_created_in_library_forward_is_said_not_warned() -> None:
    """transformers' DistilBertForSequenceClassification calls `nn.ReLU()(pooled)` in forward: it runs in
    training mode, unregistered, but has no state and acts the same in eval: the check passes and says so
    (it warned with advice to edit transformers, located at the tool's own console script)."""
    import pytest

    transformers = pytest.importorskip("transformers")
    config = transformers.DistilBertConfig(vocab_size=200, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    torch.manual_seed(0)
    model = transformers.DistilBertForSequenceClassification(config).eval()
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(0))
    result = run_check("eval_mode", Target(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}))
    assert result.status == PASS, result.explain()
    assert "ReLU created inside `<root>.forward` also ran in training mode, unregistered, but holds no state" in result.summary


def test_console_scripts_are_never_the_users_code() -> None:
    import os
    import sys

    from torch_diagnose.locate.code import TOOL, owner

    assert owner(os.path.join(sys.prefix, "bin", "diagnose")) == TOOL
