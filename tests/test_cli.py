"""The `diagnose` command end to end, in a subprocess: exit codes, one-line errors, every report format."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def diagnose(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}
    full_env.pop("GITHUB_STEP_SUMMARY", None)
    full_env.pop("GITHUB_ACTIONS", None)
    return subprocess.run([sys.executable, "-m", "torch_diagnose", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("reports")
    proc = diagnose("tests/models/faulty.py:functional_dropout", "--checks", "determinism,eval_mode", "--report-dir", str(out))
    return proc, out


def test_faulty_model_exits_1_and_names_the_culprit(faulty_run) -> None:
    proc, _ = faulty_run
    assert proc.returncode == 1, proc.stderr
    assert "head (DropoutHead)" in proc.stdout
    assert "training=self.training" in proc.stdout


def test_every_report_format_parses_back(faulty_run) -> None:
    _, out = faulty_run
    data = json.loads((out / "diagnose.json").read_text())
    assert data["schema_version"] == 1
    assert {r["check"]: r["status"] for r in data["results"]} == {"eval_mode": "pass", "determinism": "fail"}
    assert data["summary"]["fail"] == 1
    assert data["environment"]["torch"]
    tree = ET.parse(out / "diagnose.xml")
    cases = {c.get("name"): c for c in tree.iter("testcase")}
    assert cases["determinism"].find("failure") is not None
    assert cases["eval_mode"].find("failure") is None
    md = (out / "diagnose.md").read_text()
    assert "| determinism" in md or "determinism" in md
    html = (out / "diagnose.html").read_text()
    assert "<html" in html.lower() and "head (DropoutHead)" in html
    assert "https://" not in html and "http://" not in html


def test_clean_model_exits_0(tmp_path) -> None:
    proc = diagnose("tests/models/faulty.py:small_net", "--checks", "determinism,eval_mode", "--report-dir", str(tmp_path), "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "diagnose.json").exists()
    assert not (tmp_path / "diagnose.html").exists()


def test_fail_on_warn_and_error(tmp_path) -> None:
    proc = diagnose("tests/models/faulty.py:functional_dropout", "--checks", "determinism", "--fail-on", "error",
                    "--report-dir", str(tmp_path), "--format", "json")
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nosuchfile.py:make"], "does not exist"),
        (["tests/models/faulty.py:nope"], "has no factory 'nope'"),
        (["no_such_module_xyz:make"], "cannot import module"),
        (["tests/models/faulty.py:raising_forward", "--checks", "bogus"], "unknown check or family 'bogus'"),
        (["demo", "--memory-budget", "lots"], "malformed size"),
        (["demo", "--input-shape", "2,x"], "malformed --input-shape"),
        (["demo", "-o", "determinism.bogus=1"], "no option 'bogus'"),
        (["demo", "--device", "tpu"], "--device must be"),
        (["demo", "--seed", "x"], "--seed: expected a whole number, got 'x'"),
        ([], "a target is required"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], needle: str) -> None:
    proc = diagnose(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_quiet_prints_one_line_per_check_and_nothing_else(tmp_path) -> None:
    proc = diagnose("tests/models/faulty.py:functional_dropout", "--checks", "determinism,eval_mode", "-q",
                    "--report-dir", str(tmp_path), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    assert sorted(line.split()[:2] for line in lines) == [["FAIL", "determinism"], ["PASS", "eval_mode"]]
    assert all(len(line.split(None, 2)) == 3 for line in lines), "each line carries the check's summary"
    assert "reports:" not in proc.stdout and "culprit:" not in proc.stdout and (tmp_path / "diagnose.json").exists()


def test_a_bad_pyproject_value_names_its_table(tmp_path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.diagnose]\nfail_on = "never"\n')
    proc = diagnose("demo", cwd=tmp_path)
    assert proc.returncode == 2 and "pyproject.toml [tool.diagnose] fail_on must be warn, fail or error" in proc.stderr


def test_factory_that_raises_and_syntax_error(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def make():\n    raise ValueError('weights missing')\n")
    proc = diagnose(f"{bad}:make")
    assert proc.returncode == 2 and "weights missing" in proc.stderr and "Traceback" not in proc.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("def make(:\n    pass\n")
    proc = diagnose(f"{broken}:make")
    assert proc.returncode == 2 and "syntax error" in proc.stderr and "line 1" in proc.stderr
    proc = diagnose(f"{bad}:make", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_full_pickle_needs_trust_pickle(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from tests.models.faulty import SmallNet
        torch.save(SmallNet().eval(), {str(tmp_path / 'model.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    proc = diagnose(str(tmp_path / "model.pt"), "--input-shape", "4,8", "--checks", "eval_mode", "--report-dir", str(tmp_path))
    assert proc.returncode == 2 and "--trust-pickle" in proc.stderr
    proc = diagnose(str(tmp_path / "model.pt"), "--input-shape", "4,8", "--checks", "eval_mode", "--trust-pickle", "--report-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_list_checks_and_help() -> None:
    proc = diagnose("--list-checks")
    assert proc.returncode == 0
    assert "eval_mode" in proc.stdout and "determinism" in proc.stdout
    proc = diagnose("--help")
    assert proc.returncode == 0 and "--trust-pickle" in proc.stdout and "exit codes" in proc.stdout


def test_pyproject_defaults_are_read(tmp_path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.diagnose]\nchecks = "eval_mode"\nformat = "json"\n')
    proc = diagnose(f"{ROOT}/tests/models/faulty.py:small_net", "--report-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "r" / "diagnose.json").read_text())
    assert [r["check"] for r in data["results"]] == ["eval_mode"]


def test_interrupt_keeps_partial_report(tmp_path) -> None:
    """SIGINT during a run: the current check finishes, the report keeps it, exit code 130."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_DIAGNOSE_CHECKS": "tests.models.crashing_checks"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch_diagnose", "tests/models/faulty.py:small_net", "--checks", "eval_mode,slow_check,determinism",
         "--report-dir", str(tmp_path), "--format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    marker = tmp_path / "diagnose.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (marker.exists() and "eval_mode" in marker.read_text()):
        time.sleep(0.1)
    time.sleep(0.5)  # inside slow_check now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    data = json.loads(marker.read_text())
    checks = [r["check"] for r in data["results"]]
    assert checks == ["eval_mode", "slow_check"]
    assert data["interrupted"] is True


def test_closed_pipe_does_not_crash_and_keeps_the_exit_code(tmp_path) -> None:
    """`diagnose ... | head -1`: the reader leaves early; the run, its reports and its exit code survive."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch_diagnose", "tests/models/faulty.py:functional_dropout", "--checks", "determinism",
         "--report-dir", str(tmp_path), "--format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    proc.stdout.readline()
    proc.stdout.close()  # like `head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 1, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert json.loads((tmp_path / "diagnose.json").read_text())["summary"]["fail"] == 1


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command.startswith("python3 -m venv .venv") and "pytest" in command
    assert f"```bash\n{command}\n```" in readme


def test_help_mentions_the_compare_subcommand():
    proc = diagnose("--help")
    assert proc.returncode == 0
    assert "diagnose compare REFERENCE CANDIDATE" in proc.stdout


def test_compare_subcommand_without_a_candidate_is_exit_2_with_one_line():
    proc = diagnose("compare", "demo")
    assert proc.returncode == 2
    assert "REFERENCE, CANDIDATE" in proc.stderr or "CANDIDATE" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
