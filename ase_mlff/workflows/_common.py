"""Helpers shared by the workflows: loading, reading structures, units, output (progress bars:
:mod:`ase_mlff.console`)."""

from __future__ import annotations

import io
import os
import sys

from ase import units

from ..errors import InputError, OutputExistsError

#: pressures on the command line and in the workflow functions are in GPa
GPA = units.GPa


def load_calculator(model, device: str = "cpu", dtype=None, **options):
    """An :class:`~ase_mlff.MLFFCalculator` from a model file path (or pass one through)."""
    from ..calculator import MLFFCalculator
    from ..models.base import Model

    if isinstance(model, MLFFCalculator):
        return model
    if isinstance(model, Model):
        return MLFFCalculator(model, device=device, dtype=dtype, **options)
    from .. import load

    return load(model, device=device, dtype=dtype, **options)


def read_structures(path, index=":") -> list:
    """The frames ``index`` (ase's frame index; default all) of any file :func:`ase.io.read`
    reads, without calculators; InputError for a missing or unreadable file."""
    import ase.io

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"structure file not found: {path!r}")
    try:
        frames = ase.io.read(path, index=index)
    except (ValueError, KeyError, IndexError, StopIteration) as exc:
        raise InputError(f"cannot read a structure from {path!r} (index {index!r}): {exc}") from None
    frames = frames if isinstance(frames, list) else [frames]
    for atoms in frames:
        atoms.calc = None
    return frames


def read_structure(path, index=None):
    """One structure from any file :func:`ase.io.read` reads (``index``: ase's frame index;
    default the last frame, as :func:`ase.io.read` does)."""
    frames = read_structures(path, -1 if index is None else index)
    if not frames:
        raise InputError(f"{path!r} has no frame at index {index!r}")
    if len(frames) > 1:
        raise InputError(f"index {index!r} selects {len(frames)} frames of {path!r}; give one frame")
    return frames[0]


def parse_index(text):
    """'3' / '-1' -> int; anything with ':' stays a string for ase."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip()
    if ":" in text:
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(f"cannot understand frame index {text!r}") from None


def has_stress(calc, atoms) -> bool:
    """Whether ``calc`` gives a stress for ``atoms`` (a local model and a cell with volume)."""
    return "stress" in calc.implemented_properties and atoms.cell.rank == 3


def require_stress(calc, atoms, what: str) -> None:
    if "stress" not in calc.implemented_properties:
        raise InputError(f"{what} needs the stress, which this {calc.model.family} model does not give")
    if not all(atoms.pbc) or atoms.cell.rank != 3:
        raise InputError(f"{what} needs a structure periodic in all three directions")


def evaluate_images(calc, images, stress=None, batch_size: int = 16) -> list[dict]:
    """Results (energy, forces[, stress]) for many structures: batched through
    :meth:`MLFFCalculator.evaluate_batch` for local models, one by one for global ones."""
    out: list[dict] = []
    for start in range(0, len(images), max(1, batch_size)):
        out.extend(calc.evaluate_batch(images[start:start + batch_size], stress=stress))
    return out


#: what to do with an output file that exists already: refuse ("new"), continue it, replace it
OUTPUT_MODES = ("new", "append", "overwrite")


def refuse_existing(paths, hint: str) -> None:
    """Raise :class:`~ase_mlff.errors.OutputExistsError` (an :class:`InputError`) if any of
    ``paths`` (None entries ignored) exists.

    Called before any work starts, so a refused run has written nothing and a long run cannot
    end by failing to save its results. ``hint`` says how to ask for the file to be replaced
    (the CLI names its flags, the Python API its keywords).
    """
    existing = [os.fspath(p) for p in paths if p is not None and os.path.lexists(os.fspath(p))]
    if existing:
        names = ", ".join(repr(p) for p in existing)
        raise OutputExistsError(f"{names} {'exists' if len(existing) == 1 else 'exist'} already and would be "
                         f"overwritten; {hint}, or choose another name. Nothing was written.")


def output_path(path) -> str:
    """``path`` as a string, its directory created."""
    path = os.fspath(path)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    return path


class FrameWriter:
    """Append frames to ``.traj`` (ase Trajectory) or ``.extxyz``/``.xyz`` (extended XYZ).

    Each extended-XYZ frame is formatted in memory and written with one ``write`` and a
    flush, so an interrupted run leaves only whole frames in the file. Both formats keep the
    momenta (when the atoms have them) and ``atoms.info``, which is what lets an MD run be
    continued from its last frame. ``mode="a"`` appends to an existing file.
    """

    def __init__(self, path, atoms, mode: str = "w"):
        if mode not in ("w", "a"):
            raise InputError(f"FrameWriter mode must be 'w' or 'a', got {mode!r}")
        self.path = output_path(path)
        self.atoms = atoms
        ext = os.path.splitext(self.path)[1].lower()
        self.count = 0
        if ext == ".traj":
            from ase.io.trajectory import Trajectory

            self.kind = "traj"
            self._fh = Trajectory(self.path, mode, atoms)
        elif ext in (".extxyz", ".xyz"):
            self.kind = "extxyz"
            self._fh = open(self.path, mode)
        else:
            raise InputError(f"trajectory file {path!r}: use a .traj, .extxyz or .xyz extension")

    def write(self, atoms=None) -> None:
        atoms = self.atoms if atoms is None else atoms
        if self.kind == "traj":
            self._fh.write(atoms)
        else:
            import ase.io

            buf = io.StringIO()
            ase.io.write(buf, atoms, format="extxyz")
            self._fh.write(buf.getvalue())
            self._fh.flush()
        self.count += 1

    __call__ = write

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InterruptGuard:
    """Make Ctrl-C stop a loop between steps instead of in the middle of one.

    Inside ``with InterruptGuard() as guard:`` (main thread only) the first SIGINT only sets
    ``guard.requested``; the loop calls :meth:`check` at a safe point, which raises
    :class:`KeyboardInterrupt` there. A second Ctrl-C interrupts at once.
    """

    def __init__(self, stream=None):
        self.requested = False
        self.stream = stream if stream is not None else sys.stderr
        self._old = None

    def __enter__(self):
        import signal
        import threading

        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        try:
            self.stream.write("\ninterrupted: stopping after this step (Ctrl-C again to stop at once)\n")
            self.stream.flush()
        except Exception:  # pragma: no cover
            pass

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            import signal

            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False
