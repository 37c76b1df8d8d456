"""determinism: repeat runs and RNG seeds, with the culprit module and line named."""
from __future__ import annotations

import pytest
import torch
import torchvision

from torch_diagnose import ERROR, FAIL, PASS, WARN, Target, run_check
from tests.models import faulty


@pytest.mark.parametrize("factory", [faulty.small_net, faulty.dict_outputs, faulty.non_tensor_outputs])
def test_clean_models_pass(factory) -> None:
    result = run_check("determinism", factory())
    assert result.status == PASS, result.explain()
    assert result.metrics["bitwise_equal_runs"] == result.metrics["runs_compared"]


def test_functional_dropout_with_training_true_is_named_with_line() -> None:
    result = run_check("determinism", faulty.functional_dropout())
    assert result.status == FAIL
    assert result.culprit_label == "head (DropoutHead)"
    assert "training=self.training" in result.hint
    assert "head.forward" in result.hint
    assert result.location and "faulty.py:" in result.location


def test_randn_like_noise_is_named() -> None:
    result = run_check("determinism", faulty.randn_noise())
    assert result.status == FAIL
    assert result.culprit_label == "noise (Noisy)"
    assert "randn_like" in result.hint


def test_dropout_kept_training_by_bad_override_is_named() -> None:
    result = run_check("determinism", faulty.train_override_not_propagating())
    assert result.status == FAIL
    assert result.culprit_label == "block.drop (Dropout)"
    assert ".eval()" in result.hint


def test_model_that_raises_ends_as_error_not_crash() -> None:
    result = run_check("determinism", faulty.raising_forward())
    assert result.status == ERROR
    assert "boom" in result.summary


def test_options_are_validated() -> None:
    from torch_diagnose import UsageError

    with pytest.raises(UsageError, match="no option 'bogus'"):
        run_check("determinism", faulty.small_net(), bogus=1)


def test_clean_torchvision_resnet18_passes() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    result = run_check("determinism", Target(model, torch.randn(2, 3, 64, 64)), repeats=1)
    assert result.status == PASS, result.explain()


# -- grad modes, threads, memory layouts -------------------------------------------------------

import math  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from torch_diagnose.compare import calibrated_tolerances, compare  # noqa: E402
from torch_diagnose.context import Context  # noqa: E402
from tests.models import determinism_family as fam  # noqa: E402


def _rows(result) -> dict[str, dict]:
    return {row["comparison"]: row for row in result.details["comparisons"]}


def test_branch_on_grad_mode_is_named_with_the_line() -> None:
    result = run_check("determinism", fam.grad_mode_branch())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "head (FoldedLinear)"
    assert "`torch.is_grad_enabled()`" in result.hint or "is_grad_enabled()" in result.hint
    assert "with grad enabled than under inference_mode" in result.hint
    assert result.location and "determinism_family.py:" in result.location
    row = _rows(result)["grad enabled vs inference_mode (seed 2)"]
    assert row["bitwise"] is False and row["within_tolerance"] is False
    # no_grad agrees with inference_mode here: both disable grad, so that comparison is bitwise
    assert _rows(result)["seed 1 under no_grad"]["bitwise"] is True


def test_grad_mode_branch_behind_keyword_inputs_and_nested_outputs() -> None:
    result = run_check("determinism", fam.grad_mode_branch_dict())
    assert result.status == FAIL
    assert result.culprit_label == "heads.cls (FoldedLinear)"
    assert "`out.logits`" in result.details["differences"]["grad enabled vs inference_mode (seed 2)"]
    assert "out.logits.max_abs" in result.metrics


def test_branch_on_thread_count_is_named_after_splitting_the_combined_pass() -> None:
    result = run_check("determinism", fam.thread_branch())
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "mix (ParallelMix)"
    assert "get_num_threads()" in result.hint and "thread" in result.hint
    rows = _rows(result)
    threads = next(label for label in rows if label.startswith("threads ") and "+" not in label)
    assert rows[threads]["within_tolerance"] is False
    layout = next(label for label in rows if label.startswith("strided"))
    assert rows[layout]["bitwise"] is True  # the split shows the layout is not to blame


def test_branch_on_contiguity_is_named_for_channels_last_inputs() -> None:
    result = run_check("determinism", fam.layout_branch(), threads=0)
    assert result.status == FAIL, result.explain()
    assert result.culprit_label == "stem (LayoutAwareConv)"
    assert "is_contiguous()" in result.hint and "`.contiguous()`" in result.hint
    assert "channels_last `x` vs contiguous" in _rows(result)


def test_view_on_a_channels_last_input_fails_with_the_line() -> None:
    result = run_check("determinism", fam.view_on_input())
    assert result.status == FAIL
    assert result.culprit_label == "<root> (ViewFlatten)"
    assert "x.view(x.shape[0], -1)" in result.hint and ".reshape()" in result.hint
    assert result.location and "determinism_family.py:" in result.location


def test_state_that_feeds_the_output_is_named_as_the_cause_of_repeat_differences() -> None:
    result = run_check("determinism", fam.drifting_ema())
    assert result.status == FAIL
    assert result.culprit_label == "ema (buffer)"
    assert "keeps state" in result.hint and "self.ema.mul_" in result.hint


def test_details_say_which_comparisons_were_bitwise_and_which_within_tolerance() -> None:
    result = run_check("determinism", fam.conv_net(), combine=False)
    assert result.status == PASS, result.explain()
    rows = _rows(result)
    current = torch.get_num_threads()
    other = 1 if current > 1 else max(2, __import__("os").cpu_count() or 2)
    assert set(rows) == {"repeat 1", "seed 1 under no_grad", "seed 2 with grad enabled",
                         f"threads {other} vs {current}", "channels_last `x` vs contiguous"}
    for row in rows.values():
        assert set(row) >= {"comparison", "expected", "bitwise", "within_tolerance", "max_abs"}
        assert row["within_tolerance"] is True
        assert (row["max_abs"] == 0.0) == row["bitwise"]
    assert rows["repeat 1"]["expected"] == "bitwise"
    assert result.metrics["bitwise_comparisons"] + result.metrics["within_tolerance_comparisons"] == len(rows)
    if result.metrics["within_tolerance_comparisons"]:
        assert "fp32-vs-fp64" in result.details["tolerance_source"]


def test_skipping_threads_and_layouts_leaves_the_repeat_and_seed_runs() -> None:
    result = run_check("determinism", faulty.small_net(), threads=0, layouts=[], grad_modes=False)
    assert result.status == PASS
    assert list(_rows(result)) == ["repeat 1", "seed 1 under inference_mode", "seed 2 under inference_mode"]


def test_unknown_layout_is_a_usage_error() -> None:
    """The registry validates the layouts before the check runs (Option choices)."""
    from torch_diagnose import UsageError

    with pytest.raises(UsageError, match="option layouts: 'diagonal' is not one of auto, channels_last, strided"):
        run_check("determinism", faulty.small_net(), layouts=["diagonal"])
    result = run_check("determinism", faulty.small_net(), layouts="none", threads=0, grad_modes=False)
    assert result.status == PASS and not any("contiguous" in r["comparison"] for r in result.details["comparisons"])


@pytest.mark.parametrize("factory", [fam.text_classifier, fam.gru_tagger, fam.multi_in_out])
def test_clean_sequence_and_multi_input_models_pass(factory) -> None:
    result = run_check("determinism", factory())
    assert result.status == PASS, result.explain()
    assert result.metrics["outside_tolerance_comparisons"] == 0


def test_transformer_fast_path_differs_from_the_grad_path_only_within_tolerance() -> None:
    """nn.TransformerEncoder takes its fast path without grad and the slow path with it (FIELD-NOTES)."""
    result = run_check("determinism", fam.text_classifier())
    row = next(r for r in result.details["comparisons"] if r["comparison"].startswith("grad enabled"))
    assert row["within_tolerance"] is True


def test_clean_torchvision_mobilenet_v3_small_passes() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    result = run_check("determinism", Target(model, torch.randn(2, 3, 64, 64)))
    # Random-weight MobileNetV3 logits are ~1e-10: deterministic, but degenerate, so the pass is a warning.
    assert result.status == WARN and "degenerate outputs" in result.summary and "tiny" in result.summary, result.explain()


def test_whole_family_on_a_clean_model_shares_work_and_stays_within_budget() -> None:
    """eval_mode + state_mutation + determinism + batch_invariance on a clean resnet18 (64x64):
    the repeat and the rolled batch made by state_mutation are reused, localisation never runs, and the
    model is called 9 times: the reference, a repeat, the rolled batch, no_grad, grad, 1 thread with
    channels_last, the fp64 reference (channels_last is not bitwise), and 2 samples alone."""
    from torch_diagnose.options import RunOptions
    from torch_diagnose.runner import run

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    report = run(Target(model, torch.randn(2, 3, 64, 64)),
                 RunOptions(checks=["eval_mode", "determinism", "batch_invariance", "state_mutation"], device="cpu"))
    assert [r.check for r in report.results] == ["eval_mode", "state_mutation", "determinism", "batch_invariance"]
    assert all(r.status == PASS for r in report.results), [r.explain() for r in report.results]
    assert report.overhead["model_forward_calls"] <= 9


# -- tolerance calibration (diagnostics.compare.calibrated_tolerances and ctx.tolerances) -------


def _matmul_case(seed: int, m: int, k: int, n: int, log_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * 10.0 ** log_scale
    w = torch.randn(k, n, generator=gen) / math.sqrt(k)
    return x, w


#: Any shape, down to one output element summed from one term, at any scale. Not covered: sums built
#: to cancel catastrophically (a 1000x common offset): there one element's fp32 error can be 10x
#: smaller than another summation order's, and no calibration from outputs alone can know it.
_shapes = dict(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 16), k=st.integers(1, 256), n=st.integers(1, 16),
               log_scale=st.integers(-6, 6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_shapes)
def test_calibrated_tolerance_accepts_reordered_summation(seed: int, m: int, k: int, n: int, log_scale: int) -> None:
    x, w = _matmul_case(seed, m, k, n, log_scale)
    y32 = x @ w
    tol = calibrated_tolerances(y32, x.double() @ w.double())
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed + 1))
    reordered = x[:, perm] @ w[perm, :]  # the same sums, in another order
    chunks = list(range(0, k, 7))
    chunked = sum((x[:, i:i + 7] @ w[i:i + 7, :] for i in reversed(chunks)), torch.zeros(m, n))
    for rerun in (reordered, chunked):
        result = compare(rerun, y32, leaf_tolerances=tol)
        assert result.passed, result.describe()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_shapes, factor=st.floats(20.0, 1e4), where=st.integers(0, 10_000))
def test_calibrated_tolerance_rejects_much_larger_perturbations(seed: int, m: int, k: int, n: int, log_scale: int,
                                                                factor: float, where: int) -> None:
    x, w = _matmul_case(seed, m, k, n, log_scale)
    y32 = x @ w
    tol = calibrated_tolerances(y32, x.double() @ w.double())["output"]
    bad = y32.clone().reshape(-1)
    i = where % bad.numel()
    bad[i] += factor * (tol.atol + tol.rtol * abs(float(bad[i])))
    assert not compare(bad.reshape(m, n), y32, leaf_tolerances={"output": tol}).passed


class _Mlp(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = torch.nn.Linear(width, 64)
        self.b = torch.nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> dict:
        h = torch.tanh(self.a(x))
        return {"logits": self.b(h), "hidden": h}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(16, 200), log_scale=st.integers(-2, 2))
def test_ctx_tolerances_accept_a_model_that_only_reorders_its_sums(seed: int, width: int, log_scale: int) -> None:
    torch.manual_seed(seed)
    model = _Mlp(width).eval()
    x = torch.randn(4, width) * 10.0 ** log_scale
    ctx = Context(Target(model, x))
    tolerances = ctx.tolerances()
    assert set(tolerances) == {"logits", "hidden"}
    perm = torch.randperm(width)
    permuted = _Mlp(width).eval()
    permuted.load_state_dict(model.state_dict())
    with torch.no_grad():
        permuted.a.weight.copy_(model.a.weight[:, perm])  # input features permuted: same function, other summation order
    out = ctx.forward(x[:, perm], permuted)
    assert compare(out, ctx.reference, leaf_tolerances=tolerances).passed
    worse = {"logits": out["logits"] + 50 * tolerances["logits"].atol, "hidden": out["hidden"]}
    assert not compare(worse, ctx.reference, leaf_tolerances=tolerances).passed


def _tolerances_after_drift(factory) -> str:
    """The calibration's source after the reference and two more calls moved the model's state."""
    from torch_diagnose.context import Context
    from torch_diagnose.determinism.judge import tolerances
    from torch_diagnose.target import coerce_target

    ctx = Context(coerce_target(factory(), source="<test>"))
    ctx.reference  # noqa: B018 - the first call
    ctx.forward()
    ctx.forward()
    return tolerances(ctx).source


def test_calibration_that_is_too_large_to_be_rounding_is_replaced_by_the_fallback() -> None:
    """A stateful model's fp64 copy computes something else; its "calibration" must not excuse differences."""
    assert "too large to be rounding" in _tolerances_after_drift(fam.drifting_attribute)


def test_fp64_reference_starts_from_the_buffers_before_any_forward() -> None:
    """Buffers a forward updates (an EMA) do not drift the fp64 copy: the calibration stays genuine."""
    assert _tolerances_after_drift(fam.drifting_ema).startswith("calibrated from the model's own fp32-vs-fp64 error")


def test_a_drifting_model_is_one_root_cause_for_batch_invariance() -> None:
    """Outputs that move between two identical calls make batch_invariance's comparison meaningless:
    alone, it fails in determinism's place (the rerun probe) instead of inventing a batch diagnosis."""
    result = run_check("batch_invariance", fam.drifting_ema())
    assert result.status == FAIL
    assert "not deterministic" in result.summary and "run it to find the culprit" in result.summary
