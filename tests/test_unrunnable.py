"""A model that cannot run on its own example inputs is one root cause, not one error per check;
torchvision's optical-flow models get two frames; fp16 hints for library code never ask to edit it."""
from __future__ import annotations

import torch
import torch.nn as nn

import torch_diagnose
from torch_diagnose import ERROR, SKIP, Target, run_check
from tests.models import faulty


class TwoFrames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([image1, image2], dim=1))


def test_inputs_that_do_not_fit_forward_are_one_error_with_the_signature_and_consequences() -> None:
    target = Target(TwoFrames().eval(), torch.randn(2, 3, 8, 8))  # one tensor for forward(image1, image2)
    report = torch_diagnose.diagnose(target, checks=["eval_mode", "determinism", "batch_invariance", "fp16", "onnx"])
    root = report.result("determinism")
    assert root.status == ERROR, root.explain()
    assert root.summary.startswith("the model raises on its example inputs: TypeError:")
    assert "`forward(image1, image2)`" in root.hint and "one tensor per argument" in root.hint
    for check in ("batch_invariance", "fp16", "onnx"):
        result = report.result(check)
        assert result.status == SKIP and result.caused_by == "determinism", result.explain()
        assert result.summary == "not judged: the model raises on its example inputs (see determinism)"
    assert report.result("eval_mode").status == "pass"  # it needs no forward to judge the training flags


def test_a_single_check_on_a_raising_model_still_says_what_raised() -> None:
    result = run_check("fp16", faulty.raising_forward())
    assert result.status == ERROR and "boom: this model cannot run" in result.summary
    assert result.summary.startswith("the model raises on its example inputs")
    assert result.location and "faulty.py:" in result.location  # the raising line, as a culprit for annotations


def test_torchvision_optical_flow_gets_two_frames_and_library_fp16_hints_say_do_not_edit() -> None:
    from torch_diagnose import load_target

    target = load_target("torchvision:raft_small")
    assert isinstance(target.example_inputs, tuple) and len(target.example_inputs) == 2
    assert target.example_inputs[0].shape == target.example_inputs[1].shape == (1, 3, 128, 128)
    result = run_check("fp16", target)
    assert result.status in ("warn", "pass"), result.explain()
    if "cast raised" in result.summary:  # torchvision's CorrBlock mixes dtypes under a whole-model cast
        assert "in torchvision library code" in result.hint and "do not edit torchvision" in result.hint
        assert "Create it with" not in result.hint
