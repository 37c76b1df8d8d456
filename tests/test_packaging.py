"""The installed import names: one distinctive package, `torch_diagnose`, so a user project with its own
`checks` or `diagnostics` package keeps working next to the CLI and the pytest plugin."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_package_is_installed() -> None:
    """pyproject lists each folder with an __init__.py under its mapped import name (a sub-package left
    out works in an editable install but is missing from a wheel)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {"diagnostics": "torch_diagnose", "checks": "torch_diagnose.checks"}
    found = set()
    for folder, name in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"packages in pyproject.toml differ from the source folders: missing {sorted(found - listed)}, stale {sorted(listed - found)}"


USER_MODEL = '''
import torch
import checks            # the user's own package, not torch-diagnose's
import diagnostics       # likewise

def make():
    assert checks.MINE and diagnostics.MINE
    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), torch.randn(2, 4)
'''

USER_TEST = '''
import checks

def test_own_checks_package_is_importable():
    assert checks.MINE

def test_diagnose_fixture(diagnose):
    diagnose("eval_mode")
'''


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    for package in ("checks", "diagnostics"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("MINE = True\n")
    (tmp_path / "model.py").write_text(textwrap.dedent(USER_MODEL))
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TEST))
    (tmp_path / "conftest.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.fixture
        def diagnose_target():
            from model import make
            return make()
    '''))
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY")}
    env["NO_COLOR"] = "1"
    return env


def test_cli_works_in_a_project_with_its_own_checks_package(user_project: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "torch_diagnose", "model.py:make", "--checks", "eval_mode,determinism",
                           "--report-dir", str(user_project / "out")], cwd=user_project, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "eval_mode" in proc.stdout and "determinism" in proc.stdout


def test_plugin_works_in_a_project_with_its_own_checks_package(user_project: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
                          cwd=user_project, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
