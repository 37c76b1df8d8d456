"""Exporters as users run them (issue 14), on small real library models and tiny stand-ins.

T5 exports to ONNX under no_grad; a model the dynamo exporter refuses falls back to the legacy
exporter, whose artifact is judged; transformers cache outputs get a `use_cache=False` hint;
scripted detection outputs are compared like with like; a dim whose exported range ends at the
example gets "export at a larger example"; optional dims past their budget are not explored.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_diagnose import FAIL, PASS, WARN, Target
from torch_diagnose.context import Context
from torch_diagnose.export.build import build_sweep
from torch_diagnose.export.torchscript import like_eager
from torch_diagnose.options import RunOptions
from tests.models import real_models as rm
from tests.test_export import check, line_of

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_t5_exports_to_onnx_under_no_grad() -> None:
    """The dynamo ONNX export of T5 fails with autograd on ("Cannot view a tensor ...") and works
    under torch.no_grad(), as an inference model is exported."""
    pytest.importorskip("transformers")
    target = rm.t5()
    target.example_inputs["use_cache"] = False
    r = check("onnx", target, repro=False, optional_dims_budget_s=0)  # batch only: seconds, not a minute
    assert r.status in (PASS, WARN), r.explain()
    assert r.metrics["exporter"] == "dynamo" and "fails" not in r.summary
    assert "not explored" in r.summary and "optional_dims_budget_s" in r.summary


def test_transformers_cache_output_gets_the_use_cache_hint() -> None:
    pytest.importorskip("transformers")
    r = check("torch_export", rm.gpt2(), repro=False)
    assert r.status == FAIL, r.explain()
    assert "use_cache=False" in r.hint and "return_dict=False" in r.hint and "DynamicCache" in r.hint
    assert r.summary.strip() not in ("torch.export fails: RuntimeError", "torch.export fails: AssertionError")


class CountedSelection(nn.Module):
    """Clean, but data-dependent for torch.export: the count of selected values decides a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        picked = h[h > -1e4]  # every value, but torch.export cannot know how many
        if picked.numel() == 0:
            return h * 0
        return h + picked.mean()


def test_dynamo_onnx_failure_falls_back_to_the_legacy_exporter_and_judges_it() -> None:
    torch.manual_seed(0)
    r = check("onnx", Target(CountedSelection().eval(), torch.randn(4, 8)), repro=False)
    assert r.status == WARN, r.explain()
    assert r.metrics["exporter"] == "legacy (dynamo=False)"
    assert "legacy exporter (dynamo=False)" in r.summary and "matches eager at all" in r.summary
    assert "the dynamo exporter (torch.onnx.export's default) fails" in r.summary
    assert r.location.endswith(line_of(CountedSelection, "if picked.numel() == 0:").replace("export.py", "export_real.py"))
    assert "dynamo=False" in r.hint


class ScriptedDetector(nn.Module):
    """Like torchvision's detection models: scripted, returns `(losses, detections)`; eager, detections."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor):
        scores = self.head(x)
        detections = [{"scores": scores[i].softmax(-1), "labels": scores[i].argmax(-1, keepdim=True)} for i in range(x.shape[0])]
        losses: dict[str, torch.Tensor] = {}
        if torch.jit.is_scripting():
            return losses, detections
        return detections


def test_scripted_detection_outputs_are_compared_like_with_like() -> None:
    from checks.export.torchscript import _script_sweep

    torch.manual_seed(0)
    model = ScriptedDetector().eval()
    ctx = Context(Target(model, torch.randn(2, 8)), RunOptions(device="cpu"))
    scripted = torch.jit.script(model)
    assert isinstance(scripted(torch.randn(2, 8)), tuple)
    assert like_eager(({}, ["d"]), ["e"]) == ["d"] and like_eager(({}, ["d"]), {"e": 1}) == ({}, ["d"])
    rows, ok, n = _script_sweep(ctx, build_sweep(ctx), scripted)
    assert ok, rows
    assert n >= 3


class Clip3d(nn.Module):
    """A tiny video model: three stride-2 temporal convs bring 8 frames down to a grid of 1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 4, 3, padding=1)
        self.down = nn.Sequential(*[nn.Conv3d(4, 4, 3, stride=(2, 1, 1), padding=1) for _ in range(3)])
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.down(self.stem(x))).flatten(1))


def test_dim_at_the_edge_of_its_exported_range_gets_export_at_a_larger_example() -> None:
    """r3d_18 exported at 8 frames gets the range [2, 8]: 9 frames are rejected."""
    torch.manual_seed(0)
    target = Target(Clip3d().eval(), torch.randn(2, 3, 8, 6, 6), dynamic_dims={"x": {2: "frames"}})
    r = check("torch_export", target, repro=False)
    assert r.status == FAIL, r.explain()
    assert "frames" in r.summary and "must stay dynamic" in r.summary
    assert "exported range ends at the example's own size 8" in r.hint and "export at a larger example (e.g. 16)" in r.hint


class NmsHead(nn.Module):
    """Detection post-processing as torchvision does it: score filter, then `batched_nms`, whose
    size check is a data-dependent guard for torch.export (in torchvision's code, not the user's)."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes = nn.Linear(8, 4)
        self.scores = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torchvision

        xy = self.boxes(x)
        boxes = torch.cat([xy[:, :2], xy[:, :2] + xy[:, 2:].abs() + 1], dim=1)
        scores = self.scores(x).squeeze(1).sigmoid()
        keep = scores > 0.05
        boxes, scores = boxes[keep], scores[keep]
        kept = torchvision.ops.batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), 0.5)
        return boxes[kept].sum(0) + scores[kept].sum()


def test_export_stopped_in_library_code_names_the_library_and_no_edit() -> None:
    """torch.export stops at a data-dependent guard in torchvision's `batched_nms`: the culprit line is
    library code named as such, and the hint offers options and wrappers, not editing torchvision."""
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    r = check("torch_export", Target(NmsHead().eval(), torch.randn(6, 8)), repro=False)
    assert r.status == FAIL, r.explain()
    assert r.location.startswith("torchvision/"), r.location
    assert "torchvision library code" in r.summary
    assert "do not edit torchvision" in r.hint and "dynamo=False" in r.hint
