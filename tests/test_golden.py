"""Regression checks: `golden` (did the model change since it was recorded?) and
`weights_roundtrip` (does the state_dict reproduce the model in a fresh one?)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from torch_diagnose import ERROR, FAIL, PASS, SKIP, WARN, Target, run_check
from torch_diagnose import golden as store
from torch_diagnose.cli import main as cli_main
from tests.models import plugin as models

MODELS_FILE = Path(models.__file__).resolve()


@pytest.fixture(autouse=True)
def _no_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TORCH_DIAGNOSE_TEST_DRIFT", "TORCH_DIAGNOSE_TEST_CODE_CHANGE", "TORCH_DIAGNOSE_TEST_BUILD_LOG"):
        monkeypatch.delenv(name, raising=False)


def _record(target: Target, folder: Path, **options) -> None:
    result = run_check("golden", target, dir=str(folder), update=True, **options)
    assert result.status == PASS and result.metrics["recorded"] is True, result.explain()


# ---------------------------------------------------------------------------------------------
# golden


def test_nothing_recorded_skips_with_the_exact_cli_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = f"{MODELS_FILE}:clean_model"
    result = run_check("golden", spec)
    assert result.status == SKIP
    assert f"nothing recorded at {Path('__golden__') / 'tiny' / 'golden.pt'}" in result.summary
    assert result.summary.endswith(f"record with: diagnose {spec} --checks golden -o golden.update=true")


def test_cli_records_under_the_target_name_then_compares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    spec = f"{MODELS_FILE}:clean_model"
    common = ["--checks", "golden", "--report-dir", str(tmp_path / "reports"), "--format", "json", "-q"]
    assert cli_main([spec, *common, "-o", "golden.update=true"]) == 0
    assert sorted(p.name for p in (tmp_path / "__golden__" / "tiny").iterdir()) == ["golden.env.json", "golden.pt"]
    assert cli_main([spec, *common]) == 0
    report = json.loads((tmp_path / "reports" / "diagnose.json").read_text())
    (result,) = report["results"]
    assert result["status"] == PASS and "match the recording" in result["summary"]


def test_recording_is_safe_to_load_and_holds_inputs_outputs_and_fingerprints(tmp_path: Path) -> None:
    _record(models.clean_model(), tmp_path)
    paths = store.golden_paths(tmp_path, "tiny/golden")
    payload = torch.load(paths.data, weights_only=True)  # plain containers only: no code runs
    assert payload["format"] == store.FORMAT
    assert torch.equal(payload["inputs"], models.clean_model().example_inputs)
    assert set(payload["outputs"]) == {"output"} and payload["outputs"]["output"].shape == (4, 4)
    assert set(payload["weights"]) == {"stem.weight", "stem.bias", "head.weight", "head.bias"}
    assert [m["name"] for m in payload["modules"]] == ["stem", "act", "head", ""]
    env = json.loads(paths.env.read_text())
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads() and env["device"] == "cpu"


def test_unchanged_model_passes_within_calibrated_tolerance_not_bitwise(tmp_path: Path) -> None:
    _record(models.clean_model(), tmp_path)
    paths = store.golden_paths(tmp_path, "tiny/golden")
    payload = torch.load(paths.data, weights_only=True)
    out = payload["outputs"]["output"]
    # What another thread count or kernel would do: move every output by a few ulps.
    payload["outputs"]["output"] = out + 4 * torch.finfo(torch.float32).eps * out.abs().clamp_min(1e-3)
    torch.save(payload, paths.data)
    result = run_check("golden", models.clean_model(), dir=str(tmp_path))
    assert result.status == PASS, result.explain()
    assert 0 < result.metrics["max_abs"] < 1e-5


def test_changed_weights_fail_naming_the_tensor_and_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _record(models.drifting_model(), tmp_path)
    monkeypatch.setenv("TORCH_DIAGNOSE_TEST_DRIFT", "1")
    result = run_check("golden", models.drifting_model(), dir=str(tmp_path))
    assert result.status == FAIL
    assert result.culprit_label == "head (Linear)"
    assert "`head.weight` changed (norm" in result.hint and "strict=True" in result.hint
    assert "re-record with" in result.hint
    assert result.metrics["weights_changed"] == 1 and result.metrics["outputs_moved"] == 1
    assert "`output` max abs diff" in result.summary and "% of elements outside" in result.summary
    assert [row["key"] for row in result.details["weights_changed"]] == ["head.weight"]
    assert result.details["outputs"][0]["moved"] is True


def test_changed_code_fails_naming_the_first_module_that_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _record(models.clean_model(), tmp_path)
    monkeypatch.setenv("TORCH_DIAGNOSE_TEST_CODE_CHANGE", "1")  # `act` becomes GELU
    result = run_check("golden", models.clean_model(), dir=str(tmp_path))
    assert result.status == FAIL
    assert result.culprit_label == "act (Act)"
    assert result.location and result.location.startswith(os.path.join("tests", "models", "plugin.py"))
    assert "code changed since recording" in result.hint
    assert result.metrics["weights_changed"] == 0 and result.metrics["environment_changed"] == 0


def test_a_changed_environment_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _record(models.clean_model(), tmp_path)
    paths = store.golden_paths(tmp_path, "tiny/golden")
    env = json.loads(paths.env.read_text())
    env.update(torch="2.0.0", threads=64)
    paths.env.write_text(json.dumps(env))
    same = run_check("golden", models.clean_model(), dir=str(tmp_path))
    assert same.status == PASS and "environment changed since: torch 2.0.0 -> " in same.summary
    monkeypatch.setenv("TORCH_DIAGNOSE_TEST_CODE_CHANGE", "1")
    moved = run_check("golden", models.clean_model(), dir=str(tmp_path))
    assert moved.status == FAIL and moved.culprit_label == "act (Act)"
    assert f"torch 2.0.0 -> {torch.__version__}" in moved.summary and "threads 64 -> " in moved.summary
    assert "environment changed" in moved.hint and "pin the recorded versions" in moved.hint
    assert {row["key"] for row in moved.details["environment_changed"]} == {"torch", "threads"}


def test_changed_output_structure_fails_naming_the_output(tmp_path: Path) -> None:
    class TwoHeads(nn.Module):
        def __init__(self, extra: bool) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)
            self.extra = extra

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = {"logits": self.fc(x)}
            if self.extra:
                out["scores"] = out["logits"].softmax(-1)
            return out

    torch.manual_seed(0)
    model = TwoHeads(extra=True)
    x = torch.randn(2, 8)
    _record(Target(model=model, example_inputs=x, name="heads"), tmp_path)
    model.extra = False
    result = run_check("golden", Target(model=model, example_inputs=x, name="heads"), dir=str(tmp_path))
    assert result.status == FAIL and result.culprit_label == "output `scores`"
    assert "missing from the actual output" in result.hint


def test_model_that_no_longer_accepts_the_recorded_inputs_fails(tmp_path: Path) -> None:
    _record(models.clean_model(), tmp_path)
    torch.manual_seed(0)
    wider = nn.Sequential(nn.Linear(12, 4))
    result = run_check("golden", Target(model=wider, example_inputs=torch.randn(4, 12), name="tiny"), dir=str(tmp_path))
    assert result.status == FAIL and "no longer runs on the recorded inputs" in result.summary
    assert "input `output` was (4, 8)" in result.details["inputs_note"]


def test_unreadable_or_unsafe_recordings_are_errors_not_passes(tmp_path: Path) -> None:
    paths = store.golden_paths(tmp_path, "tiny/golden")
    paths.data.parent.mkdir(parents=True)
    paths.data.write_bytes(b"not a torch file")
    result = run_check("golden", models.clean_model(), dir=str(tmp_path))
    assert result.status == ERROR and "cannot read recording" in result.summary and "re-record" in result.hint
    torch.save({"format": store.FORMAT, "outputs": {}, "evil": Target}, paths.data)  # needs a pickled class to load
    result = run_check("golden", models.clean_model(), dir=str(tmp_path))
    assert result.status == ERROR and "cannot read recording" in result.summary


def test_recording_names_are_one_file_per_test_and_call() -> None:
    keys = {store.golden_key("test_x[a/b c]"), store.golden_key("test_x[a/b c]", call=2),
            store.golden_key("test_x[a/b c]", "first"), store.golden_key("TestK::test_x")}
    assert keys == {"test_x[a_b_c]", "test_x[a_b_c].2", "test_x[a_b_c].first", "TestK__test_x"}
    long = store.safe_name("t" * 500)
    assert len(long) <= 120 and long != store.safe_name("t" * 499)


# ---------------------------------------------------------------------------------------------
# weights_roundtrip


def test_roundtrip_passes_on_a_clean_model() -> None:
    result = run_check("weights_roundtrip", models.clean_model())
    assert result.status == PASS, result.explain()
    assert result.metrics["state_entries"] == 4 and result.metrics["max_abs"] == 0


def test_roundtrip_without_factory_skips_with_reason() -> None:
    model, x = models.build_tiny(), torch.randn(2, 8)
    result = run_check("weights_roundtrip", (model, x))
    assert result.status == SKIP and "no factory" in result.summary


def test_mis_shaped_keys_are_named() -> None:
    result = run_check("weights_roundtrip", models.replaced_head())
    assert result.status == FAIL and result.culprit_label == "head (Linear)"
    assert "head.weight saved (10, 16) vs fresh (4, 16)" in result.summary
    assert result.metrics["misshaped_keys"] == 2 and "head replaced after construction" in result.hint


def test_unexpected_keys_from_state_added_in_forward_are_named() -> None:
    result = run_check("weights_roundtrip", models.buffer_added_in_forward())
    assert result.status == FAIL and result.culprit_label == "<root> (CalibratedNet)"
    assert result.details["unexpected_keys"] == ["running_max"]
    assert "create them in __init__" in result.hint


def test_missing_keys_are_named() -> None:
    result = run_check("weights_roundtrip", models.missing_block())
    assert result.status == FAIL and result.culprit_label == "blocks.2 (Linear)"
    assert result.details["missing_keys"] == ["blocks.2.weight", "blocks.2.bias"]
    assert "strict=False would leave them at their random initial values" in result.hint


def test_a_wrapped_checkpoint_prefix_is_recognised() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = models.build_tiny()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.module(x)

    target = Target(model=Wrapper().eval(), example_inputs=torch.randn(2, 8), factory=models.build_tiny)
    result = run_check("weights_roundtrip", target)
    assert result.status == FAIL and "every unexpected key starts with `module.`" in result.hint
    assert result.metrics["unexpected_keys"] == 4 and result.metrics["missing_keys"] == 4


def test_state_outside_the_state_dict_is_found() -> None:
    result = run_check("weights_roundtrip", models.hidden_random_buffer())
    assert result.status == FAIL and result.culprit_label == "scale (RandomScale)"
    assert result.culprit.kind == "module" and result.location.startswith(os.path.join("tests", "models", "plugin.py"))
    assert "`scale` of scale (RandomScale) is a non-persistent buffer" in result.hint
    assert "register_buffer('scale'" in result.hint
    assert result.metrics["max_abs"] > 0.01


def test_a_plain_tensor_attribute_is_found() -> None:
    class Offset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)
            self.offset = torch.rand(4)  # not a buffer: state_dict never sees it

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + self.offset

    torch.manual_seed(0)
    target = Target(model=Offset().eval(), example_inputs=torch.randn(2, 8), factory=Offset)
    result = run_check("weights_roundtrip", target)
    assert result.status == FAIL and result.culprit_label == "<root> (Offset)"
    assert "`offset` of <root> (Offset) is a tensor attribute" in result.hint


def test_factory_returning_the_same_object_skips() -> None:
    model = models.build_tiny()
    result = run_check("weights_roundtrip", Target(model=model, example_inputs=torch.randn(2, 8), factory=lambda: model))
    assert result.status == SKIP and "not a fresh one" in result.summary


def test_factory_that_raises_is_an_error_with_its_message() -> None:
    def broken() -> nn.Module:
        raise RuntimeError("checkpoint not found")

    result = run_check("weights_roundtrip", Target(model=models.build_tiny(), example_inputs=torch.randn(2, 8), factory=broken))
    assert result.status == ERROR and "Target.factory raised RuntimeError: checkpoint not found" in result.summary


def test_agreement_within_tolerance_but_not_bitwise_warns() -> None:
    class Jitter(nn.Module):
        """A tiny random offset outside the state_dict: outputs move by ulps, not by real amounts."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)
            self.register_buffer("jitter", torch.rand(4) * 1e-6, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + self.jitter

    torch.manual_seed(0)
    target = Target(model=Jitter().eval(), example_inputs=torch.randn(2, 8), factory=Jitter)
    result = run_check("weights_roundtrip", target)
    assert result.status == WARN, result.explain()
    assert "within fp32 tolerance, not bitwise" in result.summary
    assert result.culprit_label == "<root> (Jitter)" and "`jitter`" in result.hint
