"""Training checkpoints, graceful interruption and resuming.

A checkpoint is one archive in the model-file format (:func:`ase_mlff.io.write_archive`: a
pickle-free zip of ``meta.json`` plus ``.npy`` arrays, written atomically, so a crash while
writing leaves the previous checkpoint intact). ``meta.json`` holds::

    content     "training-checkpoint"
    kind        which trainer wrote it ("sgdml", "mff")
    identity    everything that changes the result: dataset sha256, every option that
                changes the model, the ase-mlff version
    state       the trainer's JSON state (completed stages, counters, records)

and the arrays hold the numeric state (CG vectors, coefficients, spline blocks). Resuming
refuses (:class:`~ase_mlff.errors.TrainingError`) when the stored identity differs from the
new run's, naming the options that differ.

Interruption. Inside ``with StopGuard(...) as guard:`` (handlers are installed only in the
main thread and only for the duration of training) the first SIGINT or SIGTERM only records
the request; the training loop calls :meth:`Checkpointer.safe_point` between units of work
(a CG iteration, a completed sigma, a completed fit stage), which writes the checkpoint and
raises :class:`TrainingInterrupted`. A second signal interrupts at once (the previous
checkpoint, if any, is kept). The command line maps the interruption to exit code
``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

Tests interrupt deterministically with ``stop_after=k``: a stop is requested after the k-th
safe point, exactly as if a signal had arrived during the k-th unit of work.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._version import __version__
from ..errors import ModelFileError, OutputExistsError, TrainingError

CONTENT = "training-checkpoint"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (signal or ``stop_after``) after writing a checkpoint.

    ``signum``: the signal that asked for the stop (``signal.SIGINT`` for ``stop_after``);
    ``checkpoint``: the checkpoint path (None when the run had no checkpoint)."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum = int(signum)
        self.checkpoint = checkpoint
        where = f"; checkpoint written to {checkpoint}" if checkpoint else " (no checkpoint file was configured)"
        super().__init__(f"training interrupted by {signal.Signals(self.signum).name}{where}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def command_message(self, command: str) -> str:
        """The line a command prints when it stops: ``ase-mlff train X: interrupted (SIGINT);
        checkpoint written to F; resume with the same command plus --resume``."""
        where = (f"checkpoint written to {self.checkpoint}; resume with the same command plus --resume"
                 if self.checkpoint else "no checkpoint was written")
        return f"{command}: interrupted ({self.signal_name}); {where}"


def default_checkpoint_path(output: str | os.PathLike) -> str:
    """The checkpoint beside a model file: ``<output>.ckpt``."""
    return os.fspath(output) + ".ckpt"


def identity(kind: str, data_sha256: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint belongs to; options are normalised through JSON so they compare equal
    after a round trip (tuples become lists, numpy scalars Python numbers)."""
    import json

    def plain(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        raise TypeError(f"cannot record {type(v).__name__} in a checkpoint")

    opts = json.loads(json.dumps(options, default=plain, sort_keys=True))
    return {"kind": kind, "data_sha256": data_sha256, "package_version": __version__, "options": opts}


class StopGuard:
    """Turn SIGINT/SIGTERM into a stop request at the next safe point (see module docstring)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stream=None):
        self.requested: int | None = None
        self.stream = stream
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                try:
                    self._old[s] = signal.signal(s, self._handler)
                except (ValueError, OSError):  # pragma: no cover - e.g. an embedded interpreter
                    pass
        return self

    def _handler(self, signum, frame):
        if self.requested is not None:
            # second signal: the user does not want to wait for the safe point
            raise KeyboardInterrupt
        self.requested = int(signum)
        if self.stream is not None:
            try:
                self.stream.write(f"\n{signal.Signals(signum).name}: writing a checkpoint at the next safe point, "
                                  "then stopping (send it again to stop at once)\n")
                self.stream.flush()
            except Exception:  # pragma: no cover - a closed stream must not break training
                pass

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        return False


class Checkpointer:
    """Writes and reads one training checkpoint and decides when to write.

    ``path``: checkpoint file (None: no file; interruptions still stop cleanly).
    ``ident``: :func:`identity` of this run. ``interval_s``: write at a safe point when this
    many seconds passed since the last write. ``every``: also write every ``every`` safe
    points (None: time only). ``stop_after``: request a stop after that many safe points.
    """

    def __init__(self, path, ident: dict[str, Any], interval_s: float = 60.0, every: int | None = None,
                 stop_after: int | None = None, guard: StopGuard | None = None,
                 progress: Callable[[str], None] | None = None):
        self.path = None if path is None else os.fspath(path)
        self.ident = ident
        self.interval_s = float(interval_s)
        self.every = every
        self.stop_after = stop_after
        self.guard = guard
        self.say = progress or (lambda msg: None)
        self.count = 0
        self.writes = 0
        self._last = time.monotonic()

    # ---------------------------------------------------------------- files
    def exists(self) -> bool:
        return self.path is not None and os.path.exists(self.path)

    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(state, arrays)`` of the checkpoint; refuses one that belongs to another run."""
        from ..io import read_archive

        if not self.exists():
            raise TrainingError(f"there is no checkpoint {self.path} to resume from; start without resuming")
        try:
            meta, arrays = read_archive(self.path)
        except ModelFileError as exc:
            raise TrainingError(f"cannot resume: {exc}; delete {self.path} to start over") from None
        if meta.get("content") != CONTENT:
            raise TrainingError(f"{self.path} is not a training checkpoint (a model file?); "
                                "give the checkpoint written by the interrupted run")
        stored = meta.get("identity") or {}
        diff = _differences(stored, self.ident)
        if diff:
            raise TrainingError(
                f"checkpoint {self.path} belongs to a different training run ({'; '.join(diff)}); "
                "rerun with the original data and options to resume, or delete the checkpoint to start over"
            )
        return meta.get("state") or {}, arrays

    def save(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from ..io import FORMAT_NAME, FORMAT_VERSION, write_archive

        if self.path is None:
            return
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "content": CONTENT,
                "kind": self.ident.get("kind"), "identity": self.ident, "state": state,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_archive(self.path, meta, {k: np.asarray(v) for k, v in arrays.items()}, compress=False)
        self.writes += 1
        self._last = time.monotonic()

    def remove(self) -> None:
        if self.exists():
            os.unlink(self.path)

    # ---------------------------------------------------------------- safe points
    def stop_requested(self) -> int | None:
        if self.guard is not None and self.guard.requested is not None:
            return self.guard.requested
        if self.stop_after is not None and self.count >= self.stop_after:
            return int(signal.SIGINT)
        return None

    def safe_point(self, snapshot: Callable[[], tuple[dict[str, Any], dict[str, np.ndarray]]],
                   force: bool = False) -> None:
        """Call between units of work. ``snapshot()`` returns ``(state, arrays)`` describing
        everything done so far; it is called only when a checkpoint is written (on a stop
        request, every ``every`` points, every ``interval_s`` seconds, or with ``force``)."""
        self.count += 1
        signum = self.stop_requested()
        due = (force or signum is not None
               or (self.every is not None and self.count % self.every == 0)
               or time.monotonic() - self._last >= self.interval_s)
        if due and self.path is not None:
            self.save(*snapshot())
        if signum is not None:
            raise TrainingInterrupted(signum, self.path)


def _differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key in ("kind", "data_sha256", "package_version"):
        if stored.get(key) != new.get(key):
            what = {"kind": "trainer", "data_sha256": "dataset sha256",
                    "package_version": "ase-mlff version"}[key]
            out.append(f"{what}: checkpoint {stored.get(key)!r}, now {new.get(key)!r}")
    so, no = stored.get("options") or {}, new.get("options") or {}
    for k in sorted(set(so) | set(no)):
        if so.get(k) != no.get(k):
            out.append(f"{k}: checkpoint {_short(so.get(k))}, now {_short(no.get(k))}")
    return out


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_output(output, overwrite: bool, resume: bool, flag: str = "--overwrite") -> None:
    """Refuse to replace an existing model file unless asked to (or resuming into it)."""
    if output is not None and Path(output).exists() and not (overwrite or resume):
        raise OutputExistsError(f"{output} exists; pass {flag} to replace it, or choose another output file")
