"""Who pays for what the Context builds once and shares, and what a long check is doing now.

A check's wall time includes whatever the Context built lazily for it: the fp32 reference, the fp64
copy, calibrated tolerances, the export sweep. Those are shared by every later check, so a user who
reads "determinism 3.1 s" should see that 1.2 s of it was the fp64 reference, built once for the run.
`SharedWork` times each such build (less the shared builds nested in it) and charges it to the check
that asked first: `CheckResult.shared_s` and `CheckResult.shared` (see execute.run_check).

`Progress` is the one line a check may say about where it is ("sweep case 3/12: x dim 2 = 9"); the
runner installs a listener, elsewhere (isolated children, pytest, the Python API) it is a no-op.
Torch-free.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

#: Context cache keys (exact, or a prefix ending in ':') of things several checks use, with the words
#: reports show. Building one is charged to the first check that asks, as shared work.
SHARED_WORK: dict[str, str] = {
    "reference": "fp32 reference",
    "fp64": "fp64 reference",
    "tolerances": "calibrated tolerances",
    "determinism:tolerances": "calibrated tolerances",
    "foundation:deterministic": "determinism probe",
    "degenerate": "output scan",
    "export:sweep": "export sweep",
    "export:torch_export": "torch.export program",
    "layers:fp32-ranges": "fp32 layer ranges",
    "quantization:calibration": "calibration data",
}

#: Check-private artifacts worth naming while they are built (their time stays the check's own).
BUILDING: dict[str, str] = {
    "export:onnx": "ONNX export",
    "export:torchscript": "TorchScript export",
    "precision:": "reduced-precision copy",
    "quantization:": "quantized model",
}


def _lookup(table: dict[str, str], key: str) -> str | None:
    if key in table:
        return table[key]
    return next((label for prefix, label in table.items() if prefix.endswith(":") and key.startswith(prefix)), None)


def shared_label(key: str) -> str | None:
    """The words for a shared cache key, or None when the key is one check's own artifact."""
    return _lookup(SHARED_WORK, key)


def building_label(key: str) -> str | None:
    """What to show while `key` is being built, or None (cheap or unnamed things)."""
    return shared_label(key) or _lookup(BUILDING, key)


class SharedWork:
    """Seconds spent building shared things, by label, on the sheet of the check that is running.

    Builds nest (tolerances need the fp64 reference): each label is charged its own seconds only, so
    the sheet adds up to the shared part of the check's wall time."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._sheet: dict[str, float] | None = None
        self._nested: list[float] = []  # seconds of shared builds inside each open shared build

    @contextlib.contextmanager
    def charged(self) -> Iterator[dict[str, float]]:
        """Collect, while the block runs, the shared work it causes (label -> seconds)."""
        outer, self._sheet = self._sheet, {}
        try:
            yield self._sheet
        finally:
            self._sheet = outer

    @contextlib.contextmanager
    def building(self, key: str) -> Iterator[None]:
        """Time the build of `key` when it is shared work; a no-op for a check's own artifacts."""
        label = shared_label(key)
        if label is None:
            yield
            return
        start = self._clock()
        self._nested.append(0.0)
        try:
            yield
        finally:
            inner = self._nested.pop()
            spent = self._clock() - start
            if self._nested:
                self._nested[-1] += spent
            if self._sheet is not None:
                self._sheet[label] = self._sheet.get(label, 0.0) + max(spent - inner, 0.0)


class Progress:
    """The phase a running check is in, told to whoever listens (the runner's terminal)."""

    def __init__(self) -> None:
        self.listener: Callable[[str], None] | None = None
        self.phase = ""

    def __call__(self, text: str) -> None:
        self.phase = text
        if self.listener is not None:
            try:
                self.listener(text)
            except Exception:  # a face that cannot show progress must not break the check
                pass

    @contextlib.contextmanager
    def during(self, text: str | None) -> Iterator[None]:
        """Show `text` while the block runs, then the phase that was showing before."""
        if text is None or self.listener is None:
            yield
            return
        before = self.phase
        self(text)
        try:
            yield
        finally:
            self(before)
