"""Defaults a user expects: example inputs derived from samples, and quantization in a default run
(dynamic int8 for Linear/LSTM/GRU-heavy models, both modes with calibration data, else a quick skip)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import transforms as T

from torch_diagnose import ERROR, PASS, SKIP, Target, diagnose
from torch_diagnose.errors import TargetError
from torch_diagnose.images import generated_images
from torch_diagnose.options import RunOptions
from torch_diagnose.quant.defaults import default_plan, dynamic_share, explicitly_selected
from torch_diagnose.registry import get_check, select_checks
from torch_diagnose.runner import run_one
from torch_diagnose.target import load_target
from tests.models import precision as pm

REFERENCE = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


# -- example inputs from samples -----------------------------------------------------------------


def test_samples_and_reference_preprocess_give_the_example_inputs() -> None:
    target = Target(_convnet(), samples=generated_images(3), reference_preprocess=REFERENCE)
    x = target.example_inputs
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[1], REFERENCE(generated_images(3)[1]))
    note = target.setup_notes[0]
    assert note.startswith("example inputs derived from the samples (the target gave no example_inputs)")
    assert "the first 2 samples through reference_preprocess, stacked into a batch of 2" in note
    assert target.describe()["setup_notes"] == [note]
    report = diagnose(target, checks=["eval_mode", "determinism"])
    assert [r.status for r in report.results] == [PASS, PASS], [r.summary for r in report.results]
    assert report.target["inputs"] and report.target["setup_notes"] == [note]


def test_given_example_inputs_are_kept() -> None:
    x = torch.zeros(1, 3, 32, 32)
    target = Target(_convnet(), x, samples=generated_images(2), reference_preprocess=REFERENCE)
    assert target.example_inputs is x and target.setup_notes == []


def test_one_sample_is_a_batch_of_one_and_grey_images_are_stacked() -> None:
    grey = T.Compose([T.Grayscale(), T.Resize(28), T.CenterCrop(28), T.ToTensor()])  # 1x28x28: one sample, not a batch
    target = Target(nn.Flatten(), samples=generated_images(2), reference_preprocess=grey)
    assert target.example_inputs.shape == (2, 1, 28, 28)
    single = Target(nn.Flatten(), samples=generated_images(1), reference_preprocess=grey)
    assert single.example_inputs.shape == (1, 1, 28, 28) and "as a batch of 1" in single.setup_notes[0]


def test_processor_outputs_with_a_batch_of_one_are_concatenated() -> None:
    def processor(img):  # like a transformers image processor: a dict, already batched
        return {"pixel_values": REFERENCE(img)[None]}

    target = Target(nn.Identity(), samples=generated_images(2), reference_preprocess=processor)
    assert target.example_inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert "concatenated into a batch of 2" in target.setup_notes[0]


def test_samples_of_different_sizes_use_the_first_alone() -> None:
    target = Target(nn.Identity(), samples=generated_images(2), reference_preprocess=T.ToTensor())  # no resize
    assert target.example_inputs.shape == (1, 3, 480, 640)
    assert "differ in shape" in target.setup_notes[0]


def test_a_pipeline_that_returns_no_tensor_is_said_and_leaves_the_inputs_unset() -> None:
    target = Target(nn.Identity(), samples=generated_images(2), reference_preprocess=T.Resize(32))  # PIL in, PIL out
    assert target.example_inputs is None
    assert target.setup_notes == ["example inputs not derived from samples: reference_preprocess returned a Image, "
                                  "not a tensor, an array or a dict of them"]


def test_array_samples_the_pipeline_refuses_are_retried_as_images() -> None:
    arrays = [np.asarray(img) for img in generated_images(2)]
    target = Target(_convnet(), samples=arrays, reference_preprocess=T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor()]))
    assert target.example_inputs.shape == (2, 3, 32, 32)


FACTORY = '''
import torch
from torch import nn
from torchvision import transforms as T

from torch_diagnose import Target
from torch_diagnose.images import generated_images


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    return Target(model, samples=generated_images(2), reference_preprocess=T.Compose([T.Resize(24), T.CenterCrop(24), T.ToTensor()]))


def broken():
    def pipeline(img):
        raise ValueError("no such mode 'RGBX'")
    return Target(nn.Identity(), samples=generated_images(2), reference_preprocess=pipeline)
'''


def test_cli_loader_derives_inputs_instead_of_exiting_2(tmp_path) -> None:
    path = tmp_path / "samples_target.py"
    path.write_text(textwrap.dedent(FACTORY))
    target = load_target(f"{path}:make")
    assert target.example_inputs.shape == (2, 3, 24, 24)
    with pytest.raises(TargetError, match="reference_preprocess raised ValueError: no such mode 'RGBX'"):
        load_target(f"{path}:broken")
    shaped = load_target(f"{path}:make", input_shape=(1, 3, 16, 16))  # the user's shape wins, and the note goes
    assert shaped.example_inputs.shape == (1, 3, 16, 16) and shaped.setup_notes == []
    from torch_diagnose.cli import main

    code = main([f"{path}:make", "--checks", "determinism", "--report-dir", str(tmp_path / "r"), "--format", "json", "-q"])
    assert code == 0
    report = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert "derived from the samples" in report["target"]["setup_notes"][0]


# -- quantization in a default run ---------------------------------------------------------------


def test_quantization_is_a_default_check() -> None:
    assert "quantization" in [spec.id for spec in select_checks()]


@pytest.mark.parametrize(("checks", "option", "explicit"), [
    ([], {}, False), (["precision"], {}, False), (["default"], {}, False),
    (["quantization"], {}, True), (["all"], {}, True), ([], {"quantization": {"modes": "static"}}, True),
    ([], {"quantization": {}}, False),
])
def test_explicit_selection(checks, option, explicit) -> None:
    assert explicitly_selected(RunOptions(checks=checks, option=option)) is explicit


def test_the_rule() -> None:
    modes = ["dynamic", "static"]
    default = RunOptions()
    assert dynamic_share(_convnet()) < 0.5 and dynamic_share(pm.mlp()[0]) > 0.9
    assert default_plan(default, _convnet(), False, modes).modes == []
    assert default_plan(default, _convnet(), True, modes).modes == modes  # calibration: int8 matters
    assert default_plan(default, pm.gru_classifier()[0], False, modes).modes == ["dynamic"]
    assert default_plan(RunOptions(checks=["quantization"]), _convnet(), False, modes).modes == modes


def test_convnet_without_calibration_skips_at_once() -> None:
    spec = get_check("quantization")
    from torch_diagnose.context import Context

    ctx = Context(Target(_convnet(), torch.randn(2, 3, 16, 16)))
    start = time.perf_counter()
    result = spec.func(ctx, spec.resolve_options({}))
    assert time.perf_counter() - start < 0.5 and ctx.stats.calls == 0
    assert result.status == SKIP
    assert result.summary.startswith("not run by default: Linear/LSTM/GRU hold ")
    assert result.summary.endswith("select it with --checks quantization")


def test_default_run_never_imports_torchao() -> None:
    code = textwrap.dedent('''
        import sys, torch
        from torch import nn
        from torch_diagnose import Target
        from torch_diagnose.runner import run_one
        model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)).eval()
        r = run_one("quantization", Target(model, torch.randn(2, 3, 8, 8)))
        g = run_one("quantization", Target(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), torch.randn(4, 8)))
        print(r.status, g.status, "torchao" in sys.modules)
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["skip", "pass", "False"], out.stderr[-2000:]


def test_gru_default_run_builds_dynamic_int8_only_and_says_so() -> None:
    result = run_one("quantization", Target(*pm.gru_classifier()), RunOptions(), latency=False)
    assert result.status == PASS, result.explain()
    assert result.metrics["dynamic.sqnr_db"] > 20 and not any(k.startswith("static.") for k in result.metrics)
    note = result.details["notes"][0]
    assert note.startswith("quantization ran by default (Linear/LSTM/GRU hold 100% of the parameters): dynamic int8 only")
    assert "select it with --checks quantization" in note


def test_calibration_data_runs_both_modes_by_default() -> None:
    torch.manual_seed(0)
    model = _convnet()
    calibration = [torch.rand(4, 3, 16, 16) for _ in range(4)]
    result = run_one("quantization", Target(model, torch.rand(4, 3, 16, 16), calibration=calibration), RunOptions(), latency=False)
    assert result.status != ERROR and result.status != SKIP, result.explain()
    assert "static.sqnr_db" in result.metrics and "dynamic.sqnr_db" in result.metrics
    assert result.metrics["calibration_source"] == "target"
