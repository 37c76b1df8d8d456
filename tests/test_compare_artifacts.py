"""`diagnose compare REFERENCE CANDIDATE`: artifacts built elsewhere, with planted differences, are caught
and localised (ONNX node and module, differing parameters and first moving module, recordings)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torch_diagnose as td
from torch_diagnose.options import RunOptions

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

NET = '''
import os
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.layer = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = self.layer(self.relu(self.conv1(x)))
        return self.head(x.mean((2, 3)))


HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    torch.manual_seed(0)
    model = Net()
    path = os.path.join(HERE, name)
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def reference():
    return _load("a.pt")


def candidate():
    return _load("b.pt")
'''


def _relu_to_leaky(proto) -> None:
    """Replace the first Relu node by a LeakyRelu with the same name and output (a planted bug)."""
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "Relu":
            proto.graph.node[i].CopyFrom(onnx.helper.make_node("LeakyRelu", list(node.input), list(node.output),
                                                               name=node.name, alpha=0.5))
            return
    raise AssertionError("no Relu node")


def _edit_initializer(proto, name: str, delta: float) -> None:
    init = next(i for i in proto.graph.initializer if i.name == name)
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) + delta, name))


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    """A model file, two checkpoints differing in `layer.0`, and artifacts "exported elsewhere"."""
    folder = tmp_path_factory.mktemp("artifacts")
    (folder / "net.py").write_text(NET)
    sys.path.insert(0, str(folder))
    try:
        import net  # noqa: PLC0415
    finally:
        sys.path.remove(str(folder))
    model, x = net.reference()
    torch.save(model.state_dict(), folder / "a.pt")
    state = model.state_dict()
    state["layer.0.weight"] = state["layer.0.weight"] + 0.1
    torch.save(state, folder / "b.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(folder / "legacy.onnx"), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
        torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: "batch"},)).save(str(folder / "dynamo.onnx"))
        torch.onnx.export(model, (x[:1],), str(folder / "static_b1.onnx"), dynamo=False)  # a batch-1 deployment file
        proto = onnx.load(str(folder / "legacy.onnx"))
        _relu_to_leaky(proto)
        onnx.save(proto, str(folder / "legacy_leaky.onnx"))
        proto = onnx.load(str(folder / "dynamo.onnx"))
        _edit_initializer(proto, "layer.0.weight", 0.5)
        onnx.save(proto, str(folder / "dynamo_init.onnx"))
        torch.jit.save(torch.jit.script(model), str(folder / "model.ts"))
        changed = torch.jit.script(net.Net().eval())
        changed.load_state_dict(state)
        torch.jit.save(changed, str(folder / "changed.ts"))
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(folder / "model.pt2"))
    td.record(model, x, folder / "same.pt")
    with torch.no_grad():
        model.head.bias.add_(0.3)  # a modified model: its head moves
    td.record(model, x, folder / "moved.pt")
    td.record(model, x, folder / "moved_plain.pt", modules=False)
    import numpy as np

    with torch.no_grad():
        np.savez(folder / "moved.npz", inputs=x.numpy(), outputs=model(x).numpy())
    return folder


def _check(art: Path, candidate: str, spec: str = "net.py:reference") -> td.CheckResult:
    return td.run_check("compare", str(art / spec), candidate=str(art / candidate), repro=False)


def test_unmodified_onnx_passes(art):
    result = _check(art, "legacy.onnx")
    assert result.status == "pass", result.summary
    assert "matches the reference" in result.summary and "batch" in result.summary


def test_onnx_with_a_replaced_node_names_the_node_and_its_module(art):
    result = _check(art, "legacy_leaky.onnx")
    assert result.status == "fail", result.summary
    assert "first diverging ONNX operator: /relu/Relu (LeakyRelu) in relu (ReLU)" in result.summary
    assert result.culprit.label == "/relu/Relu (LeakyRelu) from relu (ReLU)"
    assert result.details["onnx_exporter"] == "legacy"


def test_dynamo_onnx_with_an_edited_initializer_names_node_module_line_and_initializer(art):
    result = _check(art, "dynamo_init.onnx")
    assert result.status == "fail", result.summary
    assert "(Conv) in layer.0 (Conv2d) from " in result.summary and "net.py:16 `x = self.layer(" in result.summary
    assert "`layer.0.weight` (by 0.5)" in result.summary
    assert "layer.0 (Conv2d)" in result.culprit.label and result.culprit.file.endswith("net.py")


def test_two_checkpoints_name_the_differing_layer(art):
    result = _check(art, "net.py:candidate")
    assert result.status == "fail", result.summary
    assert "`layer.0.weight` (max abs diff 0.1" in result.summary
    assert "first module whose output moves: layer.0 (Conv2d)" in result.summary
    assert result.culprit.label == "layer.0 (Conv2d)"
    assert [c["name"] for c in result.details["parameters"]["changed"]] == ["layer.0.weight"]


def test_the_same_checkpoint_passes(art):
    assert _check(art, "net.py:reference").status == "pass"


def test_recording_from_a_modified_model_names_the_first_moving_module(art):
    result = _check(art, "moved.pt")
    assert result.status == "fail", result.summary
    assert "first module whose output moved: head (Linear)" in result.summary
    assert result.culprit.label == "head (Linear)"
    assert _check(art, "same.pt").status == "pass"


@pytest.mark.parametrize("name", ["moved_plain.pt", "moved.npz"])
def test_recording_without_module_outputs_gives_metrics_and_the_record_hint(art, name):
    result = _check(art, name)
    assert result.status == "fail", result.summary
    assert result.metrics["max_abs"] == pytest.approx(0.3, rel=1e-3)
    assert "torch_diagnose.record(model, inputs, path)" in result.hint


def test_torchscript_and_pt2_of_the_same_model_pass(art):
    for name in ("model.ts", "model.pt2"):
        result = _check(art, name)
        assert result.status == "pass", (name, result.summary)


def test_scripted_model_with_a_planted_change_fails_naming_the_parameter(art):
    result = _check(art, "changed.ts")
    assert result.status == "fail", result.summary
    assert "`layer.0.weight`" in result.summary
    assert result.culprit.label == "layer.0 (Conv2d)"


def test_without_a_candidate_the_check_skips_and_is_not_selected():
    from torch_diagnose.registry import select_checks

    assert "compare" not in [s.id for s in select_checks()]
    result = td.run_check("compare", (torch.nn.Linear(3, 2).eval(), torch.randn(2, 3)))
    assert result.status == "skip" and "diagnose compare REFERENCE CANDIDATE" in result.summary


def test_a_candidate_brings_the_compare_check():
    assert RunOptions.from_mapping({"compare": "m.onnx"}).checks == ["compare"]
    assert RunOptions.from_mapping({"compare": "m.onnx", "checks": "onnx"}).checks == ["onnx", "compare"]
    assert RunOptions().checks == []


def _diagnose(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch_diagnose", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_compare_subcommand_end_to_end(art, tmp_path):
    proc = _diagnose("compare", "net.py:reference", "legacy_leaky.onnx", "--device", "cpu", "--report-dir", str(tmp_path / "r"), cwd=art)
    assert proc.returncode == 1, proc.stderr
    assert "/relu/Relu (LeakyRelu)" in proc.stdout
    report = json.loads((tmp_path / "r" / "diagnose.json").read_text())
    assert [r["check"] for r in report["results"]] == ["compare"]
    assert (tmp_path / "r" / "repro" / "compare" / "repro.py").exists()


@pytest.mark.parametrize("candidate, words", [("missing.onnx", "does not exist"), ("a.pt", "holds a state_dict")])
def test_cli_bad_candidate_is_exit_2_with_one_line(art, candidate, words):
    proc = _diagnose("compare", "net.py:reference", candidate, "--device", "cpu", cwd=art)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_pytest_face_flag_and_fixture(art, tmp_path):
    (art / "test_artifact.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.diagnose(model="net.py:reference")
        def test_onnx_matches(compare):
            assert compare("legacy.onnx").status == "pass"

        @pytest.mark.diagnose(model="net.py:reference")
        def test_leaky_fails(compare):
            compare("legacy_leaky.onnx")
    '''))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--diagnose-device", "cpu",
            "--diagnose-report-dir", str(tmp_path / "r")]
    proc = subprocess.run([*base, "test_artifact.py"], cwd=art, capture_output=True, text=True, timeout=300, env=env)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-3000:]
    assert "/relu/Relu (LeakyRelu)" in proc.stdout
    (art / "test_artifact.py").unlink()  # the generated item alone: no test file collected
    proc = subprocess.run([*base, "--diagnose-model", "net.py:reference", "--diagnose-compare", "net.py:candidate"],
                          cwd=art, capture_output=True, text=True, timeout=300, env=env)
    assert "1 failed" in proc.stdout and "compare" in proc.stdout and "layer.0 (Conv2d)" in proc.stdout, proc.stdout[-3000:]


FLAT = """
import torch, torch.nn as nn


class Flat(nn.Module):
    def __init__(self, side=8):
        super().__init__()
        self.fc = nn.Linear(3 * side * side, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make():
    torch.manual_seed(0)
    return Flat().eval(), torch.randn(2, 3, 8, 8)
"""


def test_a_static_batch_one_file_is_fed_the_example_cut_to_its_size(art):
    """A deployment file exported at batch 1 is not 'different' from a reference whose example has 2."""
    result = _check(art, "static_b1.onnx")
    assert result.status == "pass", result.summary
    assert "the example's `x` dim 0 cut from 2 to 1 to match the candidate" in result.summary
    assert result.details["candidate"]["fitted"]


def test_a_file_at_sizes_the_reference_rejects_fails_saying_so(tmp_path):
    (tmp_path / "flat.py").write_text(FLAT)
    sys.path.insert(0, str(tmp_path))
    try:
        import flat  # noqa: PLC0415
    finally:
        sys.path.remove(str(tmp_path))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(flat.Flat(side=16).eval(), (torch.randn(1, 3, 16, 16),), str(tmp_path / "big.onnx"), dynamo=False)
    result = td.run_check("compare", str(tmp_path / "flat.py") + ":make", candidate=str(tmp_path / "big.onnx"), repro=False)
    assert result.status == "fail", result.summary
    assert result.summary.startswith("the reference rejects inputs at the candidate's sizes")
    assert "dim 2 tiled from 8 to 16" in result.summary and "flat.py:" in result.summary
    assert "exported from a model configured for other sizes" in result.hint
