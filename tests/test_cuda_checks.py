"""The CUDA family checks: cuda_sync, cuda_oom, memory_growth (CPU and GPU), device_parity and cuda_timing (GPU)."""
from __future__ import annotations

import pytest
import torch
import torchvision

from torch_diagnose import FAIL, PASS, SKIP, WARN, Target, run_check
from torch_diagnose.options import RunOptions
from torch_diagnose.runner import run_one
from torch_diagnose.target import coerce_target
from tests.models import cuda_models as models

MiB = 1024**2


def _run(check: str, target, **run_options):
    """run_check with run options (--batch-size, --memory-budget), which the keyword API does not take."""
    return run_one(check, coerce_target(target, source="<test>"), RunOptions(**run_options))


def _line_of(marker: str) -> int:
    """The line in tests/models/cuda_models.py carrying `marker` (so tests do not hard-code line numbers)."""
    with open(models.__file__) as fh:
        for number, line in enumerate(fh, 1):
            if marker in line:
                return number
    raise AssertionError(marker)


# ---------------------------------------------------------------------------------------------
# cuda_sync


@pytest.mark.parametrize(
    ("factory", "culprit", "marker", "words"),
    [
        (models.item_in_forward, "gate (Gate)", "# SYNC: item", ".item()"),
        (models.nonzero_in_forward, "select (Selector)", "# SYNC: nonzero", "nonzero_static"),
        (models.tolist_in_forward, "pool (LengthPool)", "# SYNC: tolist", ".tolist()"),
        (models.synchronize_in_forward, "sync (Explicit)", "# SYNC: synchronize", "remove it"),
    ],
)
def test_sync_points_are_flagged_with_culprit_and_line(factory, culprit: str, marker: str, words: str) -> None:
    result = run_check("cuda_sync", factory())
    assert result.status == WARN, result.explain()
    assert result.culprit_label == culprit
    assert result.location == f"tests/models/cuda_models.py:{_line_of(marker)}" or result.location.endswith(f"cuda_models.py:{_line_of(marker)}")
    assert words in result.hint
    assert result.metrics["sync_points"] == 1
    assert result.details["sync_points"][0]["module"] == culprit


def test_sync_option_fail_makes_it_a_failure() -> None:
    result = run_check("cuda_sync", models.item_in_forward(), fail=True)
    assert result.status == FAIL
    assert result.culprit_label == "gate (Gate)"


def test_detection_postprocessing_is_accepted_by_the_allowlist_but_a_stray_item_is_not() -> None:
    flagged = run_check("cuda_sync", models.detector())
    assert flagged.status == WARN
    assert flagged.culprit_label == "postprocess (Postprocess)"
    assert flagged.metrics["sync_points"] == 2  # mask indexing and nonzero

    accepted = run_check("cuda_sync", models.detector(), allow=["postprocess"])
    assert accepted.status == PASS, accepted.explain()
    assert accepted.metrics["allowed_sync_points"] == 2
    assert "allowed" in accepted.summary

    stray = run_check("cuda_sync", models.detector(stray_item=True), allow=["nonzero", "index"])
    assert stray.status == WARN
    assert stray.culprit_label == "<root> (Detector)"
    assert stray.location.endswith(f"cuda_models.py:{_line_of('# SYNC: stray float()')}")
    assert "float(" in stray.hint


@pytest.mark.parametrize("factory", [models.clean_net, models.wide_mlp])
def test_clean_models_have_no_sync(factory) -> None:
    result = run_check("cuda_sync", factory())
    assert result.status == PASS, result.explain()
    assert result.metrics["sync_points"] == 0


def test_clean_torchvision_resnet18_has_no_sync() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = run_check("cuda_sync", Target(model, torch.randn(1, 3, 64, 64)))
    assert result.status == PASS, result.explain()


def test_sync_check_leaves_tensor_methods_as_they_were() -> None:
    before = {name: torch.Tensor.__dict__.get(name) for name in ("tolist", "numpy", "cpu", "to")}
    run_check("cuda_sync", models.tolist_in_forward())
    assert {name: torch.Tensor.__dict__.get(name) for name in before} == before


# ---------------------------------------------------------------------------------------------
# cuda_oom


def test_deployment_batch_over_a_small_budget_fails_while_batch_one_fits() -> None:
    result = _run("cuda_oom", models.wide_mlp(), memory_budget=8 * MiB, batch_size=256)
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "act (ReLU)"  # the 8192-wide activation and its ReLU are alive together
    largest = result.metrics["largest_batch_estimate"]
    assert 1 <= largest < 256
    assert f"batch <= {largest}" in result.hint
    assert "estimate" in result.hint and "CUDA context" in result.hint and "25%" in result.hint
    # the fit is self-consistent: the largest batch fits with the margin and one more does not
    per_sample, fixed, margin = result.metrics["bytes_per_sample"], result.metrics["fixed_bytes"], result.metrics["margin"]
    assert (fixed + per_sample * largest) * (1 + margin) <= 8 * MiB + per_sample
    assert (fixed + per_sample * (largest + 1)) * (1 + margin) > 8 * MiB - per_sample
    # the per-sample slope is the 2 x 8192 float32 activations plus input and output rows
    assert 2 * 8192 * 4 <= per_sample <= 2 * 8192 * 4 + 1024
    assert result.metrics["estimate"] is True
    assert {row["batch"] for row in result.details["measurements"]} == {1, 2, 4, 256}


def test_generous_budget_passes_and_still_reports_the_largest_batch() -> None:
    result = _run("cuda_oom", models.wide_mlp(), memory_budget=64 * MiB, batch_size=256)
    assert result.status == PASS, result.explain()
    assert result.metrics["largest_batch_estimate"] > 256
    assert "largest batch that fits" in result.summary


def test_fitting_only_without_margin_warns() -> None:
    result = run_check("cuda_oom", models.wide_mlp(), memory_budget="8MiB", batch_size=80)
    assert result.status == WARN, result.explain()
    assert "margin" in result.summary


def test_weights_larger_than_the_budget_are_named() -> None:
    result = _run("cuda_oom", models.wide_mlp(), memory_budget=1 * MiB)
    assert result.status == FAIL
    assert result.culprit_label == "<root> (WideMLP) parameters"
    assert "not even batch 1" in result.summary


def test_without_a_budget_it_reports_the_fit_and_asks_for_one() -> None:
    result = run_check("cuda_oom", models.wide_mlp())
    assert result.status == PASS
    assert "--memory-budget" in result.hint
    assert result.metrics["bytes_per_sample"] > 0


def test_data_dependent_model_is_measured_for_real() -> None:
    result = _run("cuda_oom", models.nonzero_mlp(), memory_budget=8 * MiB, batch_size=256)
    assert result.status == FAIL
    assert result.metrics["method"] == "dispatch"
    assert any("fake tensors cannot run" in note for note in result.details["notes"])


def test_inputs_without_a_batch_dimension_skip_cleanly() -> None:
    model = torch.nn.Bilinear(3, 5, 2).eval()
    result = run_check("cuda_oom", (model, (torch.randn(2, 3), torch.randn(4, 5))))
    assert result.status == SKIP
    assert "batch dimension" in result.summary


def test_dict_inputs_are_supported() -> None:
    class Keyed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(100, 32)

        def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.emb(ids) * scale

    result = _run("cuda_oom", (Keyed().eval(), {"ids": torch.randint(0, 100, (2, 7)), "scale": torch.ones(2, 1, 1)}),
                  memory_budget=4 * MiB, batch_size=16)
    assert result.status == PASS, result.explain()
    assert result.metrics["bytes_per_sample"] >= 7 * 32 * 4


# ---------------------------------------------------------------------------------------------
# memory_growth


def test_list_of_activations_fails_and_names_the_attribute_and_line() -> None:
    model, x = models.activation_log()
    result = run_check("memory_growth", (model, x))
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "trace.saved (list in ActivationLog)"
    assert result.location.endswith(f"cuda_models.py:{_line_of('# LEAK: the list grows')}")
    assert result.metrics["bytes_per_call"] == 4 * 64 * 4  # one (4, 64) float32 activation per call
    assert "deque(maxlen" in result.hint
    assert model.trace.saved == []  # the check ran on a copy


def test_module_level_cache_is_named() -> None:
    result = run_check("memory_growth", models.global_cache())
    assert result.status == FAIL
    assert result.culprit_label == "tests.models.cuda_models._FEATURE_CACHE (list in module tests.models.cuda_models)"
    assert result.location.endswith(f"cuda_models.py:{_line_of('# LEAK: a global list')}")
    models._FEATURE_CACHE.clear()


def test_graph_kept_alive_by_grad_mode_warns() -> None:
    result = run_check("memory_growth", models.running_total())
    assert result.status == WARN, result.explain()
    assert result.culprit_label == "total (Tensor in RunningTotal)"
    assert result.metrics["bytes_per_call"] == 0
    assert result.metrics["bytes_per_call_grad_enabled"] >= 4 * 128 * 4  # at least the saved ReLU output
    assert "inference_mode" in result.hint and "autograd graph" in result.hint


def test_bounded_cache_and_clean_model_pass() -> None:
    bounded = run_check("memory_growth", models.bounded_cache())
    assert bounded.status == PASS
    assert "stop growing" in bounded.summary
    clean = run_check("memory_growth", models.clean_net())
    assert clean.status == PASS
    assert clean.metrics["retained_bytes"] == 0


# ---------------------------------------------------------------------------------------------
# CUDA-only checks skip cleanly here, and run on a GPU


@pytest.mark.parametrize("check", ["device_parity", "cuda_timing"])
def test_cuda_only_checks_skip_without_cuda(check: str) -> None:
    result = _run(check, models.clean_net(), device="cpu")
    assert result.status == SKIP
    assert "CUDA" in result.summary


def test_parity_explanation_logic_picks_the_setting_that_restores_parity() -> None:
    """explain_difference on stand-in runs: only 'tf32_off' brings the error under tolerance."""
    import contextlib

    from torch_diagnose.parity import explain_difference

    errors = {"baseline": 1e-3, "tf32_off": 1e-7, "cudnn_deterministic": 1e-3, "all_strict": 1e-7}
    current: list[str] = []

    def factory(name: str):
        @contextlib.contextmanager
        def ctx():
            current.append(name)
            yield
        return ctx

    names = ("baseline", "cudnn_deterministic", "tf32_off", "sdpa_flash_attention", "all_strict")
    settings = [(n, f"what {n}", factory(n)) for n in names]

    def run_with(make):
        with make():
            if current[-1] == "sdpa_flash_attention":
                raise RuntimeError("No available kernel")
            return errors[current[-1]]

    explained, rows = explain_difference(run_with, settings, lambda err: (err < 1e-5, err))
    assert explained["setting"] == "tf32_off"
    assert [r["available"] for r in rows] == [True, True, True, False, True]
    # a difference that is gone on a plain re-run is not blamed on any setting
    errors["baseline"] = 0.0
    explained, rows = explain_difference(run_with, settings, lambda err: (err < 1e-5, err))
    assert explained["setting"] == "baseline" and len(rows) == 1


@pytest.mark.cuda
def test_cuda_oom_confirms_with_a_real_search_on_gpu() -> None:
    result = _run("cuda_oom", models.wide_mlp(), device="cuda", memory_budget=64 * MiB, batch_size=4096)
    assert result.metrics["method"] == "cuda"
    assert result.metrics["largest_batch_confirmed"] > 0
    assert result.details["search"]
    assert result.status == FAIL, result.explain()


@pytest.mark.cuda
def test_cuda_sync_on_gpu_uses_set_sync_debug_mode() -> None:
    result = _run("cuda_sync", models.item_in_forward(), device="cuda")
    assert result.status == WARN
    assert result.culprit_label == "gate (Gate)"
    assert result.metrics["spied_on"] == "cuda"
    assert result.metrics["cuda_sync_debug_warnings"] >= 1


@pytest.mark.cuda
def test_memory_growth_on_gpu() -> None:
    result = _run("memory_growth", models.activation_log(), device="cuda")
    assert result.status == FAIL
    assert result.culprit_label == "trace.saved (list in ActivationLog)"
    # CUDA's allocator sees the same growth (rounded up to its 512-byte blocks)
    assert result.metrics["cuda_memory_allocated_bytes_per_call"] >= result.metrics["bytes_per_call"] > 0


@pytest.mark.cuda
def test_device_parity_clean_model_passes_or_is_explained_by_tf32() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = _run("device_parity", (model, torch.randn(2, 3, 64, 64)), device="cuda")
    assert result.status in (PASS, WARN), result.explain()
    if result.status == WARN:
        assert "tf32" in result.hint.lower()


@pytest.mark.cuda
def test_device_parity_flags_device_dependent_code() -> None:
    result = _run("device_parity", models.device_dependent(), device="cuda")
    assert result.status == FAIL, result.explain()
    assert "no setting explains it" in result.summary


@pytest.mark.cuda
def test_cuda_timing_reports_synced_and_unsynced_latency() -> None:
    result = _run("cuda_timing", models.wide_mlp(), device="cuda")
    assert result.status == PASS
    assert result.metrics["latency_synced_ms"] > 0
    assert result.metrics["latency_unsynced_single_ms"] > 0


class _DriftsAfterFirstCall(torch.nn.Module):
    """Stand-in for a device difference on a CPU-only machine: every call after the first adds 1e-2,
    so the reference (first call) differs from the CPU copy's run."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x) + (1e-2 if self.calls > 1 else 0.0)


@pytest.mark.parametrize(("model", "expected"), [(models.CleanNet, PASS), (_DriftsAfterFirstCall, FAIL)])
def test_device_parity_code_path_runs_on_cpu(model, expected) -> None:
    """The GPU-only check's logic (tolerances, settings, localisation) runs without a GPU when called directly."""
    from torch_diagnose.context import Context
    from torch_diagnose.registry import get_check

    torch.manual_seed(0)
    ctx = Context(Target(model().eval(), torch.randn(4, 8)), RunOptions(device="cpu"))
    spec = get_check("device_parity")
    result = spec.func(ctx, spec.resolve_options({}))
    assert result.status == expected, result.explain()
    if expected == FAIL:  # the drift is there on every re-run: not blamed on TF32 or any other setting
        assert [row["setting"] for row in result.details["settings"]] == ["baseline"]
        assert "changes from run to run" in result.summary and "non-deterministic" in result.hint


class _GradCam:
    """A Grad-CAM helper left attached after a notebook session: its hook keeps every activation."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.activations: list[torch.Tensor] = []
        layer.register_forward_hook(self.save)

    def save(self, module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        self.activations.append(output.detach())  # LEAK: the hook's list grows


def test_a_leftover_forward_hook_filling_a_list_is_named_with_the_hook_and_its_module() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    _GradCam(model[0])
    result = run_check("memory_growth", (model, torch.randn(2, 8)))
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "_GradCam.activations (list in forward hook save on 0 (Linear))"
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if "# LEAK: the hook's list grows" in text)
    assert result.location.endswith(f"test_cuda_checks.py:{line}")
    assert "forward hook _GradCam.save (" in result.hint and "registered on 0 (Linear)" in result.hint
    assert "handle.remove()" in result.hint
