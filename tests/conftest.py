"""Fixtures shared by several test modules."""
from __future__ import annotations

import copy

import pytest
import torch


@pytest.fixture(scope="module")
def mlp_outputs() -> dict[str, torch.Tensor]:
    """A small MLP's fp32 outputs and its fp64 copy's, on the same seeded inputs (calibration tests)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 32)).eval()
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return {"fp32": model(x), "fp64": copy.deepcopy(model).double()(x.double())}


#: Environment that changes what the reporters write: CI job summaries and annotations, colour, the status line.
CI_VARIABLES = ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_WORKSPACE", "NO_COLOR", "CI")


@pytest.fixture
def no_ci_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never append to a real CI job summary from the tests; colour and the status line decided per test."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
