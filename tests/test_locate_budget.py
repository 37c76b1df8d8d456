"""Localisation by module recording stays within memory: a budget, windows of calls, shared clones.

Mask R-CNN at 800x800 records ~15 GB of module inputs and outputs; recording them all was an
out-of-memory kill of the whole run. Here a tiny budget stands in for a big model."""
from __future__ import annotations

import torch
import torch.nn as nn

from torch_diagnose.locate.divergence import first_divergence, recorded_divergence
from torch_diagnose.locate.hooks import ModuleRecorder


class Chain(nn.Module):
    """Eight Linear+ReLU steps; `noisy` adds a difference at one step."""

    def __init__(self, noisy: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.steps = nn.ModuleList(nn.Linear(64, 64) for _ in range(8))
        self.noisy = noisy
        self.shift = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, step in enumerate(self.steps):
            x = torch.relu(step(x))
            if i == self.noisy:
                x = x + self.shift
        return x


X = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
CALL_BYTES = 16 * 64 * 4  # one Linear output


def test_the_recorder_stops_at_its_budget_and_says_where_to_resume() -> None:
    model = Chain()
    with torch.no_grad(), ModuleRecorder(model, budget_bytes=5 * CALL_BYTES) as rec:
        model(X)
    assert not rec.complete and 0 < len(rec.calls) < 9
    assert rec.next_start == len(rec.calls) and rec.kept_bytes <= 7 * CALL_BYTES
    with torch.no_grad(), ModuleRecorder(model, start=rec.next_start, budget_bytes=1 << 30) as rest:
        model(X)
    assert rest.complete and [c.order for c in rest.calls][0] == rec.next_start
    assert {c.name for c in rec.calls} | {c.name for c in rest.calls} == {f"steps.{i}" for i in range(8)} | {""}


def test_an_input_that_is_the_previous_output_shares_its_clone() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad(), ModuleRecorder(model) as rec:
        model(X)
    first, second = rec.by_name()["0"], rec.by_name()["1"]
    assert second.inputs["[0]"] is first.outputs["output"]


def test_a_divergence_past_the_first_window_is_still_found() -> None:
    model = Chain(noisy=6)

    def run(shift: float):
        def call():
            model.shift = shift
            return model(X)
        return call

    with torch.no_grad():
        found, note = recorded_divergence(model, run(0.0), run(0.0), first_divergence, budget_bytes=3 * CALL_BYTES,
                                          max_windows=9)
        assert found is None and note == ""  # equal runs: every window compared, nothing to say
        found, note = recorded_divergence(model, run(0.0), run(0.5), first_divergence, budget_bytes=3 * CALL_BYTES,
                                          max_windows=9)
        assert found is not None and note == "", note
        assert found.name == "steps.7", found.label  # the shift comes after steps.6: steps.7 is the first to differ
        found, note = recorded_divergence(model, run(0.0), run(0.5), first_divergence, budget_bytes=CALL_BYTES,
                                          max_windows=2)
    assert found is None and "module calls agree; later ones were not recorded" in note and "after 2 windows" in note


def test_under_inference_mode_clones_are_shared_unless_the_tensor_changed_in_place() -> None:
    """Inference tensors have no version counter: `out += identity` between two modules must not let
    the second module's input reuse the first one's output clone."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(64, 64), nn.Identity(), nn.Identity()

        def forward(self, x):
            out = self.b(self.a(x))
            out += x  # in place, between b and c
            return self.c(out)

    model = Residual()
    with torch.inference_mode(), ModuleRecorder(model) as rec:
        model(X)
    calls = rec.by_name()
    assert calls["b"].inputs["[0]"] is calls["a"].outputs["output"]  # unchanged in between: shared
    assert calls["c"].inputs["[0]"] is not calls["b"].outputs["output"]
    assert torch.equal(calls["c"].inputs["[0]"], calls["b"].outputs["output"] + X)
