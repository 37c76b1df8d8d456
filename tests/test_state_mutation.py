"""state_mutation: a forward pass must not change parameters, buffers or stateful attributes."""
from __future__ import annotations

import pytest
import torch
import torchvision

from torch_diagnose import FAIL, PASS, WARN, Target, run_check
from torch_diagnose import fingerprint as fp
from tests.models import determinism_family as fam
from tests.models import faulty


def test_list_attribute_that_grows_is_named_with_growth_and_line() -> None:
    result = run_check("state_mutation", fam.list_cache())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "cache (list)"
    assert "grew from 0 to 3 items over 3 calls" in result.summary
    assert "`ListCacheNet.forward`" in result.hint and "self.cache.append" in result.hint
    assert result.location and "determinism_family.py:" in result.location
    assert result.metrics["mutated_every_call"] == 1


def test_counter_buffer_incremented_in_forward_is_named() -> None:
    result = run_check("state_mutation", fam.counter_buffer())
    assert result.status == FAIL
    assert result.culprit_label == "calls (buffer)"
    assert "changed from 0 to 3" in result.summary
    assert "self.calls += 1" in result.hint


def test_dict_cache_keyed_by_call_and_its_step_counter_are_both_named() -> None:
    result = run_check("state_mutation", fam.dict_cache_by_call(), calls=4)
    assert result.status == FAIL
    assert result.culprit_label == "block.cache (dict)"
    changes = {c["path"]: c for c in result.details["changes"]}
    assert set(changes) == {"block.cache", "block.step"}
    assert "grew from 0 to 4 items" in changes["block.cache"]["change"]
    assert changes["block.step"]["change"] == "changed from 0 to 4"
    assert changes["block.step"]["every_call"] is True


def test_keyword_inputs_and_nested_outputs_with_history_on_a_child_module() -> None:
    result = run_check("state_mutation", fam.kwarg_history())
    assert result.status == FAIL
    assert result.culprit_label == "memory.history (list)"
    # mutated from the parent's forward: the line is found there
    assert "KwargHistoryNet.forward" in result.hint
    assert "self.memory.history.append" in result.hint


def test_batchnorm_left_training_is_traced_to_the_override_and_eval() -> None:
    result = run_check("state_mutation", fam.bn_training_stats())
    assert result.status == FAIL
    assert result.culprit_label == "block.norm (BatchNorm1d)"
    assert "is in training mode" in result.hint and "`.eval()`" in result.hint
    assert "`train()` override of `block` (StickyTrainBlock)" in result.hint
    assert "num_batches_tracked changed from 0 to 3" in result.summary
    assert result.location and "determinism_family.py" in result.location


def test_cache_filled_once_on_the_first_call_is_a_warning() -> None:
    result = run_check("state_mutation", fam.lazy_table())
    assert result.status == WARN, result.explain()
    assert result.culprit_label.startswith("_table")
    assert "first call" in result.hint
    assert result.metrics["mutated_every_call"] == 0 and result.metrics["filled_on_first_call"] == 1


def test_a_library_lazy_cache_is_named_and_passes() -> None:
    """torchvision's RoI pooler sets `self.scales, self.map_levels = ...` on the first call: the tuple
    assignment is found in torchvision, and a cache the user cannot change (and later calls leave
    alone) is said in the summary, never a warning with advice to edit library code."""
    from tests.models import real_models

    result = run_check("state_mutation", real_models.detection(size=96))
    assert result.status == PASS, result.explain()
    assert "filled on the first call by torchvision library code, then left unchanged (lazy caches: harmless)" in result.summary
    assert "`roi_heads.box_roi_pool.scales` set from None to list" in result.summary
    change = result.details["changes"][0]
    assert "torchvision/ops/poolers.py" in change["location"] and "nothing to change in your code" in change["hint"]


@pytest.mark.parametrize("factory", [faulty.small_net, faulty.dict_outputs, faulty.non_tensor_outputs, fam.text_classifier,
                                     fam.gru_tagger, fam.conv_net, fam.multi_in_out])
def test_clean_models_pass(factory) -> None:
    result = run_check("state_mutation", factory())
    assert result.status == PASS, result.explain()
    assert result.metrics["mutated_every_call"] == 0
    assert result.metrics["parameters"] > 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_clean_torchvision_models_pass(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    result = run_check("state_mutation", Target(model, torch.randn(2, 3, 64, 64)), calls=2)
    assert result.status == PASS, result.explain()


def test_model_that_raises_is_an_error_not_a_pass() -> None:
    result = run_check("state_mutation", faulty.raising_forward())
    assert result.status == "error"
    assert "boom" in result.summary


# -- the fingerprint machinery itself ---------------------------------------------------------


def test_fingerprint_sees_in_place_changes_of_large_weights_and_swapped_storage() -> None:
    model = torch.nn.Linear(512, 512)  # 262144 weights: sampled, not cloned whole
    before = fp.snapshot(model)
    with torch.no_grad():
        model.weight.mul_(1.01)
    changes = fp.diff(before, fp.snapshot(model))
    assert [c.path for c in changes] == ["weight"]
    assert "sampled" in changes[0].description
    before = fp.snapshot(model)
    model.weight.data = model.weight.data.clone()  # same values, new storage: not a change of state
    assert fp.diff(before, fp.snapshot(model)) == []


def test_fingerprint_describes_containers_and_shapes() -> None:
    module = torch.nn.Module()
    module.items = [torch.zeros(2)]
    module.table = {"a": torch.zeros(3)}
    module.buf = torch.zeros(4)
    before = fp.snapshot(module)
    module.items.append(torch.ones(2))
    module.table["a"] += 0.5
    module.buf = torch.zeros(8)
    described = {c.path: c.description for c in fp.diff(before, fp.snapshot(module))}
    assert described == {
        "items": "grew from 1 to 2 items",
        "table": "['a']: values changed by max abs 0.5 (3 of 3 elements)",
        "buf": "shape changed from (4,) to (8,)",
    }
