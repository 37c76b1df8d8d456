"""diagnostics.memory: live-bytes tracking, the batch fit, and the OOM search with an injected allocator."""
from __future__ import annotations

import gc

import pytest
import torch
import torchvision

from torch_diagnose.memory import (
    BudgetAllocator,
    LiveBytesTracker,
    fit_linear,
    input_bytes,
    is_oom,
    measure_peak,
    measure_peak_dispatch,
    measure_peak_fake,
    model_bytes,
    resize_batch,
    search_max_batch,
    simulated_try,
)
from torch_diagnose.text import format_bytes
from tests.models import cuda_models as models

F32 = 4  # bytes per float32 element


def test_tracker_counts_live_bytes_views_inplace_and_frees() -> None:
    with LiveBytesTracker() as tracker:
        a = torch.ones(1000)  # 4000 B
        b = a * 2  # 4000 B, peak 8000
        v = b.view(10, 100)  # a view: no new memory
        b.add_(1)  # in place: no new memory
        del a
        gc.collect()
        assert tracker.current == 1000 * F32
        c = v + 1  # 4000 B alive with b: 8000 again
        del b, v, c
        gc.collect()
    assert tracker.peak == 2000 * F32
    assert tracker.current == 0
    assert tracker.retained() == 0


def test_tracker_ignores_storages_that_existed_before() -> None:
    w = torch.randn(256, 256)
    with LiveBytesTracker() as tracker:
        wt = w.t()  # view of a pre-existing tensor
        y = wt @ torch.ones(256, 1)
    assert tracker.peak == (256 + 256) * F32  # the ones() input and the result only
    del wt, y


def test_tracker_sees_memory_kept_alive_by_autograd() -> None:
    lin = torch.nn.Linear(64, 64)
    with LiveBytesTracker(lin) as tracker, torch.enable_grad():
        out = torch.relu(lin(torch.randn(8, 64))).sum()
        gc.collect()
        kept = tracker.retained()
    # randn input is saved for the weight gradient, the relu output for relu's backward, plus the scalar
    assert kept >= 2 * 8 * 64 * F32
    del out
    gc.collect()
    assert tracker.retained() == 0


def test_peak_names_the_module_that_reaches_it() -> None:
    model, x = models.wide_mlp()
    m = measure_peak_dispatch(model, x, batch=4)
    assert m.peak_module == "act (ReLU)"
    assert m.param_bytes == model_bytes(model) == (64 * 8192 + 8192 + 8192 * 10 + 10) * F32
    # the 8192-wide Linear output and its ReLU are alive together
    assert m.activation_peak == 2 * 4 * 8192 * F32
    assert m.peak_bytes == m.param_bytes + input_bytes(x) + m.activation_peak


def test_fake_tensor_peak_equals_real_peak() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    real = measure_peak_dispatch(model, x, batch=2)
    fake = measure_peak_fake(model, x, batch=2)
    assert fake.method == "fake" and real.method == "dispatch"
    assert fake.peak_bytes == real.peak_bytes
    assert fake.peak_module == real.peak_module


def test_auto_falls_back_to_a_real_run_when_the_model_needs_data() -> None:
    model, x = models.nonzero_mlp()
    with pytest.raises(Exception):
        measure_peak_fake(model, x, batch=4)
    m = measure_peak(model, x, batch=4)
    assert m.method == "dispatch"
    assert m.activation_peak >= 2 * 4 * 8192 * F32


def test_linear_fit_and_largest_fitting_batch() -> None:
    fit = fit_linear([(1, 1100), (2, 1200), (4, 1400), (8, 1800)])
    assert fit.intercept == pytest.approx(1000)
    assert fit.slope == pytest.approx(100)
    assert fit.max_rel_residual == pytest.approx(0, abs=1e-9)
    assert fit.largest_fitting(2050) == 10
    assert fit.largest_fitting(1050) is None
    flat = fit_linear([(1, 500), (2, 500)])
    assert flat.largest_fitting(600, limit=77) == 77


def test_resize_batch_repeats_rows_for_every_input_form() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    assert resize_batch(x, 5).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]]
    pair = resize_batch((x, torch.ones(3, 4)), 4)
    assert pair[0].shape == (4, 2) and pair[1].shape == (4, 4)
    d = resize_batch({"ids": torch.zeros(3, 7, dtype=torch.long)}, 2)
    assert d["ids"].shape == (2, 7) and d["ids"].dtype == torch.long


# ---------------------------------------------------------------------------------------------
# The search, with an injected failure


def _oom_past(threshold: int):
    calls = []

    def try_batch(batch: int) -> None:
        calls.append(batch)
        if batch > threshold:
            raise torch.OutOfMemoryError(f"simulated: batch {batch} > {threshold}")

    return try_batch, calls


@pytest.mark.parametrize("threshold", [1, 2, 37, 64, 100, 4095])
def test_search_finds_the_exact_largest_batch_in_log_tries(threshold: int) -> None:
    try_batch, calls = _oom_past(threshold)
    result = search_max_batch(try_batch, limit=8192, cleanup=lambda: None)
    assert result.largest_ok == threshold
    assert result.smallest_failing == threshold + 1
    # doubling, then bisection: about 2 * log2(threshold) tries
    assert len(calls) <= 2 * threshold.bit_length() + 2
    assert calls[: min(3, len(calls))] == [1, 2, 4][: min(3, len(calls))]


def test_search_bisects_down_from_a_start_that_does_not_fit() -> None:
    try_batch, calls = _oom_past(5)
    result = search_max_batch(try_batch, start=64, cleanup=lambda: None)
    assert result.largest_ok == 5
    assert calls[0] == 64


def test_search_reports_nothing_fits_and_the_limit() -> None:
    try_batch, _ = _oom_past(0)
    assert search_max_batch(try_batch, cleanup=lambda: None).largest_ok is None
    ok, _ = _oom_past(10**9)
    result = search_max_batch(ok, limit=100, cleanup=lambda: None)
    assert result.largest_ok == 100 and result.hit_limit


def test_search_lets_other_errors_through() -> None:
    def broken(batch: int) -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        search_max_batch(broken, cleanup=lambda: None)


def test_oom_errors_are_recognised() -> None:
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_oom(RuntimeError("size mismatch"))


def test_search_on_a_real_model_with_a_budget_allocator_frees_memory_between_tries() -> None:
    """The real model runs on CPU against an allocator that raises OutOfMemoryError past 8 MiB."""
    model, x = models.wide_mlp()
    budget = 8 * 1024**2
    resident = model_bytes(model)
    allocator = BudgetAllocator(budget, resident=resident)
    in_use_after: list[int] = []

    def cleanup() -> None:
        gc.collect(1)  # young generations: reference counting frees a failed try's tensors
        in_use_after.append(allocator.in_use)

    try_batch = simulated_try(model, lambda b: resize_batch(x, b), allocator)
    result = search_max_batch(try_batch, limit=4096, cleanup=cleanup)
    assert allocator.failures > 0
    # every try, failed or not, gave all its memory back
    assert in_use_after and all(v == resident for v in in_use_after)
    largest = result.largest_ok
    assert largest is not None and 8 < largest < 256
    # the answer is exact: one more sample does not fit
    try_batch(largest)
    with pytest.raises(torch.OutOfMemoryError):
        try_batch(largest + 1)
    # and agrees with the fitted estimate without margin (same accounting)
    fit = fit_linear([(b, measure_peak_dispatch(model, resize_batch(x, b), batch=b).peak_bytes) for b in (1, 2, 4)])
    assert abs(fit.largest_fitting(budget) - largest) <= 1


def test_budget_allocator_message_names_sizes() -> None:
    alloc = BudgetAllocator(1000, resident=900)
    with pytest.raises(torch.OutOfMemoryError, match="900 B of 1000 B in use"):
        alloc.alloc(200)
    assert format_bytes(3 * 1024**2) == "3.00 MiB"


# ---------------------------------------------------------------------------------------------
# The real CUDA path (skipped without a GPU)


@pytest.mark.cuda
def test_cuda_peak_matches_the_tracker_within_workspace_overhead() -> None:
    model, x = models.wide_mlp(batch=64)
    model, x = model.cuda(), x.cuda()
    cuda = measure_peak(model, x, batch=64)
    tracked = measure_peak_dispatch(model, x, batch=64)
    assert cuda.method == "cuda"
    # CUDA adds allocator rounding and cuBLAS workspaces, never less than the live tensors
    assert cuda.activation_peak >= 0.9 * tracked.activation_peak
    assert cuda.peak_bytes <= tracked.peak_bytes + 64 * 1024**2


@pytest.mark.cuda
def test_real_cuda_oom_search_under_a_memory_fraction() -> None:
    from torch_diagnose.memory import cuda_try, memory_fraction

    model, x = models.wide_mlp()
    model, x = model.cuda(), x.cuda()
    budget = 256 * 1024**2
    with memory_fraction(budget):
        result = search_max_batch(cuda_try(model, lambda b: resize_batch(x, b)), limit=1 << 16)
    assert result.largest_ok is not None and result.smallest_failing is not None
    assert any(not ok for _b, ok in result.tries)
    per_sample = 2 * 8192 * F32
    assert result.largest_ok * per_sample < budget
