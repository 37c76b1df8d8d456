"""The `compare` fixture: `compare("exported/model.onnx")` judges a candidate artifact against the
test's target (the diagnose_target fixture, or `target=`), as `diagnose compare REF CAND` does."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from ..results import CheckResult
from .fixtures import _Diagnoser

COMPARE = "compare"


class _Compare(_Diagnoser):
    def __call__(self, candidate: str | os.PathLike[str], target: Any = None, **options: Any) -> CheckResult:
        """Compare `candidate` with the target; fail the test with the explanation on fail/error."""
        return self.run(COMPARE, target, candidate=self._resolve(os.fspath(candidate)), **options)

    def _resolve(self, candidate: str) -> str:
        """A relative file path that is not under the working folder is looked for beside the test file."""
        if os.path.isabs(candidate) or os.path.exists(candidate):
            return candidate
        beside = Path(self.request.node.path).parent / candidate.split(":", 1)[0]
        if beside.exists():
            return str(Path(self.request.node.path).parent / candidate)
        return candidate


@pytest.fixture
def compare(request: pytest.FixtureRequest) -> Callable[..., CheckResult]:
    """`compare(candidate, target=None, **options)`: does an artifact built elsewhere compute what the model
    computes? `candidate`: an .onnx file (ONNX Runtime), a TorchScript or .pt2 file, another target spec
    (the same factory with another checkpoint) or recorded inputs/outputs (.npz, or a .pt written by
    `torch_diagnose.record`). Runs the `compare` check on the diagnose_target (or `target`): the candidate
    is swept like the export checks sweep their artifacts and a mismatch names the first diverging ONNX
    node and its module, the differing parameters and the first module whose output moves, or the first
    moving module of a recording. Fails the test on fail/error; returns the CheckResult otherwise.
    """
    return _Compare(request)
