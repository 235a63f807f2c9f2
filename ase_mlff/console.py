"""Console services shared by the training recipes and the workflows: progress output, durations
and the command-line help formatter.

Everything here writes to a stream (stderr by default) and knows nothing of models or training;
``ase_mlff.training`` and ``ase_mlff.workflows`` both build on it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import numpy as np

__all__ = ["HelpFormatter", "ProgressBar", "format_duration", "timed_printer"]


def format_duration(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from one hour on; ``?`` for an unknown (non-finite) duration."""
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """A plain-text progress bar on stderr: ``[#####.....] 512/1000 51% 123.4 steps/s ETA 00:04``.

    On a terminal it redraws one line (at most ``refresh`` times a second); otherwise it prints a
    line every 10% so that logs of batch jobs stay short. ``enabled=False`` makes it silent.
    """

    def __init__(self, total: int, label: str = "", unit: str = "steps", stream=None,
                 enabled: bool = True, refresh: float = 0.2, width: int = 28):
        self.total = max(int(total), 1)
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.refresh = refresh
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last = -1e9
        self._last_decile = -1
        self.done = 0

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.done / dt if dt > 0 else float("nan")

    def _line(self) -> str:
        frac = min(self.done / self.total, 1.0)
        fill = int(round(frac * self.width))
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate and rate > 0 else float("inf")
        label = f"{self.label} " if self.label else ""
        return (f"{label}[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} "
                f"{100 * frac:3.0f}% {rate:.1f} {self.unit}/s ETA {format_duration(eta)}")

    def update(self, done: int) -> None:
        self.done = int(done)
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last >= self.refresh or self.done >= self.total:
                self._last = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        else:
            decile = int(10 * self.done / self.total)
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()


def timed_printer(stream=None) -> Callable[[str], None]:
    """Progress callback for the command line: ``[  12.3 s] message`` lines on stderr."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=stream or sys.stderr, flush=True)

    return say


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and adds "(default: X)" to every option whose help
    does not state its default already (on/off flags excepted: they are off by default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                or (action.default is None and action.required)):
            return text
        value = action.default
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        return f"{text} (default: {value})"
