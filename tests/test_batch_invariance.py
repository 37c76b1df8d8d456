"""batch_invariance: each sample alone, and the batch reordered, must match its row of the batch."""
from __future__ import annotations

import pytest
import torch
import torchvision

from torch_diagnose import FAIL, PASS, SKIP, WARN, Target, run_check
from tests.models import determinism_family as fam
from tests.models import faulty


def test_batchnorm_training_inside_a_block_is_named_with_its_override() -> None:
    result = run_check("batch_invariance", fam.bn_training_in_block())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "block.norm (BatchNorm1d)"
    assert "is in training mode" in result.hint
    assert "`train()` override of `block` (StickyTrainBlock)" in result.hint
    assert result.details["first_divergent_module"] == "block.norm (BatchNorm1d)"
    # the failing rows are named and the row table says what was compared
    rows = result.details["comparisons"]
    assert any(not r["within_tolerance"] and r["comparison"].startswith("sample") for r in rows)


def test_batchnorm_training_that_cannot_run_one_sample_fails_naming_it() -> None:
    result = run_check("batch_invariance", fam.bn_training_mlp())
    assert result.status == FAIL
    assert result.culprit_label == "block.norm (BatchNorm1d)"
    assert "cannot run alone" in result.summary and "Expected more than 1 value" in result.summary
    assert "`.eval()`" in result.hint


def test_custom_normalisation_over_dim0_is_named_with_line_and_op() -> None:
    result = run_check("batch_invariance", fam.batch_centred())
    assert result.status == FAIL
    assert result.culprit_label == "norm (BatchCentre)"
    assert result.location and "determinism_family.py:" in result.location
    assert "x - x.mean(0, keepdim=True)" in result.hint
    assert "aten.mean" in result.hint and "dim 0" in result.hint
    assert result.details["op"].startswith("aten.mean")


def test_batch_of_one_is_grown_with_a_fresh_sample_and_says_so() -> None:
    result = run_check("batch_invariance", fam.batch_centred_single_sample())
    assert result.status == FAIL
    assert result.culprit_label == "norm (BatchCentre)"
    assert result.metrics["synthesized_batch"] is True and result.metrics["batch_size"] == 2
    assert "built a batch of 2" in result.summary


def test_clean_batch_of_one_passes_and_says_it_built_a_batch() -> None:
    model, x = faulty.small_net()
    result = run_check("batch_invariance", Target(model, x[:1]))
    assert result.status == PASS, result.explain()
    assert "the example batch has 1 sample" in result.summary


def test_keyword_inputs_and_nested_dict_outputs_with_batch_statistics() -> None:
    result = run_check("batch_invariance", fam.dict_batch_stats())
    assert result.status == FAIL
    assert result.culprit_label == "backbone.1 (BatchNorm2d)"
    assert "track_running_stats=False" in result.hint
    assert set(result.details["output_batch_dims"]) == {"logits", "aux.embedding"}


def test_sequence_first_attention_given_batch_first_tensors_is_named() -> None:
    result = run_check("batch_invariance", fam.cross_sample_attention())
    assert result.status == FAIL
    assert result.culprit_label == "attn (MultiheadAttention)"
    assert "batch_first=False" in result.hint


@pytest.mark.parametrize("factory", [faulty.small_net, faulty.dict_outputs, faulty.non_tensor_outputs, fam.text_classifier,
                                     fam.gru_tagger, fam.conv_net, fam.multi_in_out])
def test_clean_models_pass(factory) -> None:
    result = run_check("batch_invariance", factory())
    assert result.status == PASS, result.explain()
    assert result.metrics["samples_alone"] == result.metrics["batch_size"]
    assert all(r["within_tolerance"] for r in result.details["comparisons"])


def test_text_classifier_with_padding_mask_compares_each_sample_and_the_reordered_batch() -> None:
    result = run_check("batch_invariance", fam.text_classifier())
    assert result.status == PASS, result.explain()
    labels = [r["comparison"] for r in result.details["comparisons"]]
    assert labels == ["sample 0 alone vs row 0 of the batch", "sample 1 alone vs row 1 of the batch",
                      "sample 2 alone vs row 2 of the batch", "batch rolled by one vs the batch"]


def test_time_major_inputs_need_the_batch_dim_and_pass_with_it() -> None:
    model, x = fam.gru_tagger_time_major()
    wrong = run_check("batch_invariance", Target(model, x))  # dim 0 is time: one "sample" is one time step
    assert wrong.status == FAIL
    assert wrong.culprit_label == "gru (GRU)" and "batch_dim=1" in wrong.hint
    via_target = run_check("batch_invariance", Target(model, x, batch_dim=1))
    assert via_target.status == PASS, via_target.explain()
    assert via_target.details["batch_dim_source"] == "Target.batch_dim"
    via_option = run_check("batch_invariance", Target(model, x), batch_dim=1)
    assert via_option.status == PASS and via_option.metrics["batch_dim"] == 1
    assert via_option.details["output_batch_dims"] == {"output": 1}


def test_batch_dim_is_found_from_inputs_that_agree_only_on_dim1() -> None:
    model, x = fam.gru_tagger_time_major(batch=3, seq=7)

    class WithScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, tokens: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.inner(tokens) * scale

    scale = torch.ones(1, 3, 1)  # dims: (1, batch, 1): only dim 1 agrees with tokens (seq, batch)
    result = run_check("batch_invariance", Target(WithScale(), (x, scale)))
    assert result.status == PASS, result.explain()
    assert result.metrics["batch_dim"] == 1
    assert "found from the example inputs" in result.details["batch_dim_source"]


def test_max_samples_limits_the_sample_alone_runs() -> None:
    model, _ = faulty.small_net()
    result = run_check("batch_invariance", Target(model, torch.randn(10, 8)), max_samples=3)
    assert result.status == PASS
    assert result.details["samples_alone"] == [0, 4, 9]


def test_inputs_without_a_batch_dimension_skip_with_a_reason() -> None:
    class Scalar(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    result = run_check("batch_invariance", Target(Scalar(), torch.tensor(3.0)))
    assert result.status == SKIP
    assert "batch dimension" in result.summary


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_clean_torchvision_models_pass(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    result = run_check("batch_invariance", Target(model, torch.randn(2, 3, 64, 64)))
    if name == "mobilenet_v3_small":  # random-weight logits ~1e-10: invariant, but degenerate, so a warning
        assert result.status == WARN and "degenerate outputs" in result.summary, result.explain()
    else:
        assert result.status == PASS, result.explain()
