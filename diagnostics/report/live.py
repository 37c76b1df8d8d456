"""The line that says what a running check is doing: "running onnx ... sweep case 3/12: x dim 2 = 9 (12 s)".

On a terminal it is transient: redrawn in place every second and erased before the next real line. On a
log (not a TTY, or $CI set) nothing is redrawn; a phase that runs past `slow_s` gets one plain line, so a
CI log shows where a long run spends its time and stays short. Torch-free; ours rather than `rich`'s:
one status line is ~80 lines here and needs no dependency.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from .wrap import clip

ERASE = "\r\033[K"


class LiveStatus:
    """The running check, its phase and elapsed time, drawn through `write` (which must not raise)."""

    def __init__(self, write: Callable[[str], None], width: Callable[[], int], *, transient: bool,
                 slow_s: float = 10.0, tick_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 threaded: bool = True) -> None:
        self.lock = threading.RLock()  # the reporter writes under it too: no line is drawn over another
        self._write, self._width, self.transient = write, width, transient
        self.slow_s, self.tick_s, self._clock, self._threaded = slow_s, tick_s, clock, threaded
        self.check: str | None = None
        self.phase = ""
        self.started = self.phase_started = 0.0
        self.shown = False  # a transient line is on screen
        self._told = False  # the current phase already has its plain "still running" line
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, check: str) -> None:
        with self.lock:
            self.check, self.phase, self._told = check, "", False
            self.started = self.phase_started = self._clock()
            self._draw()
        self._start_ticking()

    def update(self, phase: str) -> None:
        with self.lock:
            if self.check is None or phase == self.phase:
                return
            self.phase, self.phase_started, self._told = phase, self._clock(), False
            self._draw()

    def end(self) -> None:
        with self.lock:
            self.check = None
            self.erase()

    def erase(self) -> None:
        """Remove the transient line (call with the lock held, before writing a real line)."""
        if self.shown:
            self.shown = False
            self._write(ERASE)

    def tick(self) -> None:
        """Once a second: redraw the elapsed time; on a log, say once that a phase runs long."""
        with self.lock:
            if self.check is None:
                return
            now = self._clock()
            if self.transient:
                self._draw()
            elif not self._told and now - self.phase_started >= self.slow_s:
                self._told = True
                what = f"{self.phase}, " if self.phase else ""
                self._write(clip(f"  ... {self.check}: {what}running for {now - self.phase_started:.0f} s",
                                 max(self._width() - 1, 20)) + "\n")

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self.check = None
            self.erase()

    def text(self) -> str:
        """The transient line's words: `  running onnx ... sweep case 3/12 (12 s)`."""
        elapsed = self._clock() - self.started
        line = f"  running {self.check} ..." + (f" {self.phase}" if self.phase else "")
        return line + (f" ({elapsed:.0f} s)" if elapsed >= 1 else "")

    def _draw(self) -> None:
        if not self.transient or self.check is None:
            return
        self._write(ERASE + clip(self.text(), max(self._width() - 1, 20)))  # never wraps: \r reaches one row
        self.shown = True

    def _start_ticking(self) -> None:
        if not self._threaded or self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="torch-diagnose-status", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # a closed stream: the status line simply stops
                return
