"""The pytest plugin, through pytester: generated check items, fixtures, the marker, golden
recordings, JUnit properties, reports written by the controller only, and pytest-xdist.

Every feature runs three ways: without xdist (in process), with `-n 0` and with `-n 2` (both in a
subprocess). The models are tiny (tests/models/plugin.py, copied next to the generated tests as
`pt_models.py`) and only cheap checks run, so each pytester run costs about one torch import per process.
"""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from torch_diagnose.registry import load_checks

pytest_plugins = ["pytester"]

# In-process pytester runs drop the modules they imported when they end; load the checks here once
# so each run does not import them again.
load_checks()

REPO = Path(__file__).resolve().parents[1]
MODELS_SOURCE = (REPO / "tests" / "models" / "plugin.py").read_text()
CHEAP = "eval_mode,determinism,golden,weights_roundtrip"
MODES = ("plain", "n0", "n2")

CONFTEST = '''
import json, os

class RecordingReporter:
    """Writes one line per finished run: which process wrote, and every result it was given."""

    def __init__(self, path):
        self.path, self.results = path, []

    def start(self, run, checks):
        self.checks = [c.id for c in checks]

    def check_started(self, spec):
        pass

    def check_finished(self, result, run):
        self.results.append([result.check, result.status])

    def finish(self, run):
        line = {"pid": os.getpid(), "worker": os.environ.get("PYTEST_XDIST_WORKER"), "checks": self.checks,
                "results": self.results, "target": run.target.get("name")}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(line) + "\\n")


def pytest_diagnose_reporters(config, options, reporters):
    reporters.append(RecordingReporter(os.path.join(str(config.rootpath), "reporter.jsonl")))
'''

USER_TESTS = '''
import pytest
import pt_models


@pytest.fixture
def diagnose_target():
    return pt_models.clean_model()


def test_clean_model_passes(diagnose, check_determinism):
    assert diagnose("eval_mode").status == "pass"
    result = check_determinism(repeats=1)
    assert result.status == "pass" and result.metrics


def test_faulty_model_fails(check_eval_mode):
    check_eval_mode(target="pt_models.py:dropout_left_on")


@pytest.mark.diagnose("pt_models.py:dropout_left_on")
def test_marker_target_fails(diagnose):
    diagnose("eval_mode")


def test_golden_of_the_clean_model(golden):
    golden()
'''

GOLDEN_TESTS = '''
import pt_models


def test_clean(golden):
    golden(pt_models.clean_model())


def test_two_calls(golden):
    golden(pt_models.clean_model(), name="first")
    golden(pt_models.drifting_model())
'''


def _run(pytester: pytest.Pytester, mode: str, *args: str) -> pytest.RunResult:
    args = ("--diagnose-format", "json", *args)  # every run with results writes reports; HTML's plots cost seconds
    if mode == "plain":
        return pytester.runpytest("-p", "no:xdist", "-p", "no:cacheprovider", *args)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0" if mode == "n0" else "2", *args)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: the tiny models, a conftest with a recording reporter, and a build log."""
    pytester.makepyfile(pt_models=MODELS_SOURCE)
    pytester.makeconftest(CONFTEST)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)  # when this suite itself runs under xdist
    monkeypatch.setenv("TORCH_DIAGNOSE_TEST_BUILD_LOG", str(pytester.path / "builds.log"))
    for name in ("TORCH_DIAGNOSE_TEST_DRIFT", "TORCH_DIAGNOSE_TEST_CODE_CHANGE"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def _reporter_lines(pytester: pytest.Pytester) -> list[dict]:
    path = pytester.path / "reporter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _builds(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "builds.log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


# ---------------------------------------------------------------------------------------------
# Loading the plugin is cheap


def test_importing_the_plugin_does_not_import_torch() -> None:
    code = "import sys, torch_diagnose.pytest_plugin as p; p.check_fixtures(); assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_run_without_diagnose_options_does_not_import_torch_and_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import sys
        def pytest_unconfigure(config):
            with open("torch_seen.txt", "a") as fh:
                fh.write(str("torch" in sys.modules) + "\\n")
    """)
    pytester.makepyfile(test_pt_plain="""
        import sys
        def test_torch_not_loaded():
            assert "torch" not in sys.modules
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    docs = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures", "-v")
    out = docs.stdout.str()
    for name in ("diagnose_target", "diagnose", "golden", "check_eval_mode", "check_golden", "check_weights_roundtrip"):
        assert f"\n{name} -- " in out, name
    assert "Every module's `training` flag must be off" in out  # the check's own docstring
    assert "update (bool, default False)" in out  # and its options
    assert (pytester.path / "torch_seen.txt").read_text().split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# Everything together, three ways: two pytest runs each (recording, then comparing)


@pytest.mark.parametrize("mode", MODES)
def test_end_to_end(project: pytest.Pytester, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run 1 records: generated items for a faulty model, a user's tests on clean and faulty
    models, golden recordings, JUnit properties and reports. Run 2 compares: a drifted model's
    golden fails naming what moved, unchanged ones pass, an unrecorded one skips."""
    project.makepyfile(test_pt_user=USER_TESTS, test_pt_golden=GOLDEN_TESTS)
    first = _run(project, mode, "--diagnose-model", "pt_models.py:dropout_left_on", "--diagnose-checks", CHEAP,
                 "--golden-update", "--junitxml=junit.xml", "-rfs")
    out = first.stdout.str()
    # generated: eval_mode fails, determinism, golden (records) and weights_roundtrip pass;
    # user tests: clean passes, faulty and marker fail; the four golden calls record.
    first.assert_outcomes(passed=7, failed=3)
    # each of the three failures explains itself (pytest >= 9.2 repeats the message in the short summary too)
    failures = out.split("short test summary info")[0]
    assert failures.count("culprit: drop (Dropout)") == 3, out
    assert out.count("hint: ") >= 3
    for nodeid in ("diagnose[pt_models.py:dropout_left_on]::eval_mode", "test_pt_user.py::test_faulty_model_fails",
                   "test_pt_user.py::test_marker_target_fails"):
        assert f"FAILED {nodeid}" in out, nodeid

    # One recording per test and call, the environment beside each.
    folder = project.path / "__golden__"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [
        "dropout_left_on/golden.env.json", "dropout_left_on/golden.pt",
        "test_pt_golden/test_clean.env.json", "test_pt_golden/test_clean.pt",
        "test_pt_golden/test_two_calls.env.json", "test_pt_golden/test_two_calls.first.env.json",
        "test_pt_golden/test_two_calls.first.pt", "test_pt_golden/test_two_calls.pt",
        "test_pt_user/test_golden_of_the_clean_model.env.json", "test_pt_user/test_golden_of_the_clean_model.pt",
    ]
    assert json.loads((folder / "test_pt_golden" / "test_clean.env.json").read_text())["threads"] >= 1

    # JUnit XML carries each check's metrics as properties.
    cases = {case.get("name"): case for case in ET.parse(project.path / "junit.xml").getroot().iter("testcase")}
    assert {"eval_mode", "determinism", "golden", "weights_roundtrip", "test_faulty_model_fails"} <= set(cases)
    props = {p.get("name"): p.get("value") for p in cases["eval_mode"].iter("property")}
    assert props["eval_mode.status"] == "fail" and props["eval_mode.culprit"] == "drop (Dropout)"
    assert int(props["eval_mode.training_at_handover"]) == 1
    props = {p.get("name"): p.get("value") for p in cases["test_clean_model_passes"].iter("property")}
    assert props["eval_mode.status"] == "pass" and props["determinism.status"] == "pass"
    props = {p.get("name"): p.get("value") for p in cases["golden"].iter("property")}
    assert props["golden.recorded"] == "True" and int(props["golden.outputs_recorded"]) == 1

    # Only the controller (or the single process) hands results to reporters, once, with all of them.
    lines = _reporter_lines(project)
    assert len(lines) == 1 and lines[0]["worker"] is None, lines
    checks = [check for check, _ in lines[0]["results"]]
    assert checks[:4] == ["eval_mode", "determinism", "golden", "weights_roundtrip"]  # registry order, however distributed
    assert sorted(checks[4:]) == ["determinism", "eval_mode", "eval_mode", "eval_mode"] + ["golden"] * 4
    assert lines[0]["target"] == "dropout_left_on"
    report = json.loads((project.path / "reports" / "diagnose.json").read_text())
    assert len(report["results"]) == 12

    # Each process loads a spec once, on first use, however many checks and tests use it
    # (four generated items and two tests here; clean_model is the per-test conftest override).
    loads = [line for line in _builds(project) if line.startswith("dropout_left_on ")]
    assert 1 <= len(loads) <= (2 if mode == "n2" else 1) and len(set(loads)) == len(loads), loads

    # Run 2: the drifting model's head.weight moved; a new test has nothing recorded.
    monkeypatch.setenv("TORCH_DIAGNOSE_TEST_DRIFT", "1")
    project.makepyfile(test_pt_new="""
        import pt_models

        def test_not_recorded_yet(golden):
            golden(pt_models.clean_model())
    """)
    second = _run(project, mode, "--diagnose-model", "pt_models.py:drifting_model", "--diagnose-checks", "golden", "-rfs")
    out = second.stdout.str()
    # generated golden: nothing recorded for `drifting` -> skip; test_two_calls fails on its drifting
    # call; test_new skips; test_clean and the user tests as before.
    second.assert_outcomes(passed=3, failed=3, skipped=2)
    assert "culprit: head (Linear)" in out
    assert "`head.weight` changed (norm" in out
    assert "outputs_moved=1" in out and "weights_changed=1" in out
    assert "re-record with: pytest test_pt_golden.py::test_two_calls --diagnose-model pt_models.py:drifting_model --golden-update" in out
    assert "FAILED test_pt_golden.py::test_two_calls" in out and "[FAIL] golden: 1 of 1 output(s) moved since the recording" in out
    assert "record with: pytest --diagnose-model pt_models.py:drifting_model --diagnose-checks golden --golden-update" in out
    assert "record with: pytest test_pt_new.py::test_not_recorded_yet --diagnose-model pt_models.py:drifting_model --golden-update" in out


# ---------------------------------------------------------------------------------------------
# Selection, usage errors, options (in process: cheap)


def test_k_selects_one_generated_check(project: pytest.Pytester) -> None:
    result = _run(project, "plain", "--diagnose-model", "pt_models.py:clean_model", "--diagnose-checks", CHEAP, "-k", "weights_roundtrip", "-v")
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(["*diagnose?pt_models.py:clean_model?::weights_roundtrip PASSED*"])


def test_named_test_files_get_the_target_but_no_generated_items(project: pytest.Pytester) -> None:
    project.makepyfile(test_pt_one="""
        def test_uses_the_spec(diagnose_target, diagnose):
            assert diagnose_target.name == "tiny"
            assert diagnose("eval_mode").status == "pass"
    """)
    result = _run(project, "plain", "test_pt_one.py", "--diagnose-model", "pt_models.py:clean_model")
    result.assert_outcomes(passed=1)


def test_unknown_check_is_a_usage_error(project: pytest.Pytester) -> None:
    result = _run(project, "plain", "--diagnose-model", "pt_models.py:clean_model", "--diagnose-checks", "eval_mode,no_such_check")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--diagnose-checks: unknown check or family 'no_such_check'" in result.stderr.str()
    result = _run(project, "plain", "--diagnose-model", "pt_models.py:clean_model", "--diagnose-checks", "determinsm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "did you mean 'determinism'?" in result.stderr.str()


def test_malformed_option_is_a_usage_error(project: pytest.Pytester) -> None:
    result = _run(project, "plain", "--diagnose-model", "pt_models.py:clean_model", "--diagnose-device", "tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--diagnose-device must be cpu, cuda, cuda:N or auto" in result.stderr.str()


@pytest.mark.parametrize("with_model", [True, False])
def test_a_malformed_option_names_the_pytest_flag_once(project: pytest.Pytester, with_model: bool) -> None:
    project.makepyfile(test_pt_any="def test_any():\n    pass\n")
    model = ("--diagnose-model", "pt_models.py:clean_model") if with_model else ("test_pt_any.py",)
    result = _run(project, "plain", *model, "--diagnose-input-shape", "2,x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count("malformed --diagnose-input-shape '2,x'") == 1 and "--input-shape" not in err
    assert "During handling" not in err and "Traceback" not in err


def test_a_target_that_cannot_load_fails_each_item_with_the_reason(project: pytest.Pytester) -> None:
    result = _run(project, "plain", "--diagnose-model", "pt_models.py:no_such_factory", "--diagnose-checks", "eval_mode,determinism")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*cannot load target 'pt_models.py:no_such_factory'*has no factory 'no_such_factory'*"])


def test_marker_options_reach_the_check_and_bad_keys_fail(project: pytest.Pytester) -> None:
    project.makepyfile(test_pt_marks="""
        import pytest
        import pt_models

        @pytest.fixture
        def diagnose_target():
            return pt_models.clean_model()

        @pytest.mark.diagnose(determinism={"repeats": 3}, seed=5)
        def test_options(diagnose):
            marked = diagnose("determinism")
            overridden = diagnose("determinism", repeats=1)  # the call's own options win
            assert marked.status == overridden.status == "pass"
            assert marked.metrics["runs_compared"] == overridden.metrics["runs_compared"] + 2

        @pytest.mark.diagnose(repeats=3)
        def test_bad_key(diagnose):
            diagnose("determinism")

        def test_bad_check_option(diagnose):
            diagnose("determinism", no_such_option=1)
    """)
    result = _run(project, "plain", "-rf")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "repeats=3 is neither a run option" in out
    assert "has no option 'no_such_option'" in out


def test_no_target_skips_with_what_to_do(project: pytest.Pytester) -> None:
    project.makepyfile(test_pt_none="""
        def test_needs_a_target(diagnose):
            diagnose("eval_mode")
    """)
    result = _run(project, "plain", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no target to diagnose: pass --diagnose-model SPEC*"])


def test_fail_on_warn_turns_warnings_into_failures(project: pytest.Pytester) -> None:
    project.makepyfile(test_pt_warn="""
        from torch_diagnose import CheckResult

        def test_warn(pytestconfig):
            from torch_diagnose.plugin.session import state as session_state
            state = session_state(pytestconfig)
            assert state.failing(CheckResult(check="x", status="warn", summary="s"))
            assert not state.failing(CheckResult(check="x", status="skip", summary="s"))
    """)
    _run(project, "plain", "--diagnose-fail-on", "warn").assert_outcomes(passed=1)
