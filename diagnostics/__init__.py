"""torch-diagnose: validation and diagnostics for PyTorch inference models.

The Python API:

    from torch_diagnose import Target, diagnose, run_check
    report = diagnose(Target(model, example_inputs))          # every default check
    result = run_check("determinism", Target(model, x))       # one check -> CheckResult

Heavy imports (torch) happen on first use, so `import diagnostics` stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import TargetError, UsageError
from .results import ERROR, FAIL, PASS, SKIP, WARN, CheckResult, SkipCheck

if TYPE_CHECKING:  # pragma: no cover
    from .options import RunOptions
    from .runner import RunReport
    from .target import Target

__all__ = [
    "Target", "CheckResult", "SkipCheck", "UsageError", "TargetError", "RunOptions",
    "diagnose", "run_check", "load_target", "record", "PASS", "WARN", "FAIL", "SKIP", "ERROR",
]


def __getattr__(name: str) -> Any:
    if name == "Target":
        from .target import Target

        return Target
    if name == "load_target":
        from .target import load_target

        return load_target
    if name == "record":
        from .crosscheck.recording import record

        return record
    if name == "RunOptions":
        from .options import RunOptions

        return RunOptions
    raise AttributeError(f"module 'torch_diagnose' has no attribute {name!r}")


def diagnose(target: Any, *, checks: list[str] | None = None, report_dir: str | None = None, **options: Any) -> "RunReport":
    """Run checks on a Target, nn.Module or spec; write reports when `report_dir` is given.

    Extra keyword options are run options by name (`device="cpu"`, `seed=1`, `option={...}`).
    """
    from .options import RunOptions
    from .runner import run
    from .target import coerce_target

    raw = dict(options)
    if checks is not None:
        raw["checks"] = checks
    opts = RunOptions.from_mapping(raw)
    if not isinstance(target, str):
        target = coerce_target(target, source="<python>")
    reporters = []
    if report_dir is not None:
        from .report import file_reporters

        opts.report_dir = report_dir
        reporters = file_reporters(opts)
    return run(target, opts, reporters=reporters)


def run_check(check_id: str, target: Any, **check_options: Any) -> CheckResult:
    """Run one check on a Target, nn.Module, (module, inputs) or spec; options by keyword."""
    from .runner import run_one
    from .target import coerce_target

    from .options import RunOptions

    if not isinstance(target, str):
        target = coerce_target(target, source="<python>")
    return run_one(check_id, target, RunOptions(checks=[check_id]), **check_options)  # named: runs as if selected
