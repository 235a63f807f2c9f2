"""Active learning on the fly: MD with the current model, the reference where the model is unsure.

``ase-mlff learn START --reference SPEC --family FAMILY -o DIR`` (and :func:`learn`) grows a
training set with as few reference calls as it can. The reference is any ASE calculator
(:mod:`ase_mlff.workflows.reference`: ``module:Class key=value ...``). The loop:

1. Label every start structure with the reference (one call each) and fit a first model.
2. One MD walker per start structure: Langevin NVT at the first temperature of the schedule
   (``temperatures``), Maxwell-Boltzmann velocities from the walker's own random stream; with
   ``pressure`` (GPa) a Berendsen barostat rescales periodic cells after every step. The walkers
   take turns; a turn (a *segment*) is at most ``segment_steps`` steps.
3. Every ``check_interval`` steps the model's calibrated per-atom force uncertainty
   ``sigma_F[a]`` (eV/Å) is computed; a frame's uncertainty is ``u = max_a sigma_F[a]``. The
   first frame with ``u`` above the threshold ends the segment and is sent to the reference.
   A segment that reaches ``segment_steps`` without crossing sends its most uncertain checked
   frame instead (``fallback``, on by default: the budget is spent where the model knows least)
   and moves the walker on to the next temperature of the schedule.
4. The new frame is added, the model refitted and the walker continues from where it stopped
   with the new model. A walker whose MD fails (overlapping atoms, a runaway temperature) is
   restarted from its start structure with fresh velocities.
5. Stop after ``max_calls`` reference calls (the starts count), or when no checked frame has
   crossed the threshold for ``patience`` MD steps (all walkers together): ``stop_reason``
   ``"max_calls"`` or ``"converged"``.

Before a frame is added, the model's errors on it (energy per atom, force MAE and largest
per-atom force error) are recorded next to the uncertainty that selected it: a prospective
check of the uncertainty on exactly the frames the loop chose, printed as it goes.

Uncertainty, per family (docs/active_learning.md, docs/uncertainty.md):

* ``gap``: the GP's own posterior variance, calibrated on the labels collected so far by
  leave-one-frame-out cross-validation of each fit (:mod:`ase_mlff.training.gap_train`):
  ``sigma_F[a]`` estimates the RMS length of atom a's force error. ``variance="exact"`` (the
  default here) computes it from the design rows, ``"samples"`` from the posterior samples
  (faster on large cells, noisier per atom).
* committees (``committee=K``, for mff, bpnn, schnet, and sgdml on one molecule): the spread
  of K members, each refitted from scratch on the data so far
  (:func:`ase_mlff.training.committee.train_committee`), calibrated on the frames the family
  holds out (``n_test`` / ``n_valid`` in ``options``).

Threshold (eV/Å): ``threshold`` when given; otherwise, after every fit, ``threshold_factor``
times the RMS per-atom force error that the fit's calibration measured on the labels so far
(GAP: leave-one-frame-out; committees: the held-out calibration frames). A frame is sent to
the reference when the model predicts an error on some atom's force ``threshold_factor`` times
larger than its typical error on the data it has: the threshold tightens as the data grow.

GAP refits (``family="gap"``): the sparse environments stay fixed between refits and each
labelled frame's design rows are computed once (they depend on that frame and the sparse set
only), so a refit costs the new frame's rows plus the QR and the leave-one-frame-out pass over
the stacked rows (:func:`ase_mlff.training.gap_train.fit_gap` continued from stored rows, as its
own checkpoints are). The QR is redone on all rows rather than updated: the calibration's
leave-one-frame-out pass reads every row anyway, at the same cost. The sparse set is chosen
again (a full refit) while it holds fewer environments than ``n_sparse`` asks for, when the
labelled environments have grown by ``reselect_growth`` since the last choice, when a new
element appears, or when a new frame has an environment whose kernel similarity to every
sparse environment is below ``novelty``.

Files in the output folder:

* ``model.mlff``: the current (at the end: the final) model, written after every fit.
* ``data.extxyz``: every labelled frame, with the reference's energy, forces and (periodic
  cells, when the reference gives it) stress, and in ``atoms.info``: ``learn_call``,
  ``learn_iteration`` (fits before it), ``learn_reason`` (start, threshold, max_steps),
  ``learn_uncertainty`` (eV/Å, the u that selected it), ``learn_threshold``,
  ``learn_walker``, ``learn_temperature``, ``learn_step`` and the model's errors on it before
  it was added (``learn_error_energy_per_atom`` eV/atom, ``learn_error_forces_mae`` eV/Å,
  ``learn_error_forces_max`` eV/Å); per atom ``learn_forces_uncertainty`` (eV/Å) and
  ``learn_model_forces`` (the model's forces before the frame was added, eV/Å).
* ``failures.extxyz`` and ``failures.json``: structures on which the reference failed (an
  exception or non-finite numbers), with the error; they are skipped, never fatal.
* ``learn.log``: the progress lines; ``learning_curve.png`` (with matplotlib).
* ``checkpoint.ckpt``: the whole state after every reference call and every fit (written to a
  temporary file and renamed): labelled frames bit for bit, every walker's positions, momenta,
  cell, step and random-generator state, the sparse set of the last GAP fit. ``resume=True``
  continues from it; the run then gives the same data and model as one never interrupted (the
  neighbour lists are rebuilt at every step, so no state hides in them). Ctrl-C or a killed
  process loses at most the reference call in flight. A finished run can be resumed with a
  larger ``max_calls`` or ``patience``; other settings must be the same.

An existing, non-empty output folder is refused unless ``resume`` is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DatasetError, InputError, MLFFError, OutputExistsError
from .reference import ReferenceFailure, ReferenceSpec, label, parse_spec

#: checkpoint format of this module (refused when it differs)
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.ckpt"
#: families with their own uncertainty; the others need a committee
OWN_VARIANCE = ("gap",)
#: Berendsen barostat: assumed bulk modulus (GPa) and time constant (fs); only the speed of the
#: volume's response depends on them, not the pressure it relaxes to
BAROSTAT_MODULUS_GPA = 100.0
BAROSTAT_TAU_FS = 500.0
#: a walker whose temperature exceeds this multiple of its target (plus 500 K) has run away
RUNAWAY_FACTOR = 5.0
GPA = 1.0 / 160.21766208  # eV/Å^3


@dataclass
class LearnSettings:
    """What defines a run (a resumed run must have the same, ``max_calls`` and ``patience``
    excepted). Units: K, GPa, fs, 1/fs, eV/Å."""

    reference: str
    family: str = "gap"
    committee: int | None = None
    temperatures: tuple = (300.0,)
    pressure: float | None = None
    max_calls: int = 100
    threshold: float | None = None
    threshold_factor: float = 3.0
    segment_steps: int = 100
    check_interval: int = 2
    patience: int | None = None
    timestep: float | None = None
    friction: float = 0.02
    seed: int = 0
    variance: str = "exact"
    fallback: bool = True
    reselect_growth: float = 1.5
    novelty: float = 0.9
    options: dict = field(default_factory=dict)

    #: may differ between a run and its resumption
    MUTABLE = ("max_calls", "patience")

    def check(self) -> None:
        if self.family not in _families():
            raise InputError(f"unknown family {self.family!r} (known: {', '.join(_families())})")
        if self.committee is None and self.family not in OWN_VARIANCE:
            raise InputError(f"a {self.family} model gives no uncertainty of its own: learn with a committee "
                             f"(--committee K, K >= 2), or use --family gap")
        if self.committee is not None:
            from ..training.committee import FAMILIES

            if self.family not in FAMILIES:
                raise InputError(f"committees can be trained for {', '.join(FAMILIES)}, not {self.family!r}"
                                 + ("; gap has its own predictive variance: leave out --committee"
                                    if self.family == "gap" else ""))
            if self.committee < 2:
                raise InputError(f"a committee needs K >= 2 members, got {self.committee}")
        if not self.temperatures or any(not (math.isfinite(t) and t > 0) for t in self.temperatures):
            raise InputError(f"temperatures must be positive (K), got {list(self.temperatures)}")
        for name, low in (("max_calls", 1), ("segment_steps", 1), ("check_interval", 1)):
            if int(getattr(self, name)) < low:
                raise InputError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience must be at least 1 MD step, got {self.patience}")
        for name in ("threshold", "threshold_factor", "timestep"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise InputError(f"{name} must be a positive number, got {v}")
        if not (math.isfinite(self.friction) and self.friction >= 0):
            raise InputError(f"friction must be >= 0 (1/fs), got {self.friction}")
        if self.pressure is not None and not math.isfinite(self.pressure):
            raise InputError(f"pressure must be a number (GPa), got {self.pressure}")
        if self.variance not in ("exact", "samples"):
            raise InputError(f"variance must be 'exact' or 'samples', got {self.variance!r}")
        if not self.reselect_growth > 1.0 or not 0.0 < self.novelty <= 1.0:
            raise InputError("reselect_growth must be > 1 and novelty from 0 to 1")

    def identity(self) -> dict:
        d = asdict(self)
        for k in self.MUTABLE:
            d.pop(k)
        d["temperatures"] = [float(t) for t in self.temperatures]
        return json.loads(json.dumps(d, sort_keys=True, default=str))

    @property
    def steps_patience(self) -> int:
        return int(self.patience) if self.patience is not None else 10 * int(self.segment_steps)


def _families() -> list[str]:
    from ..training import families

    return families()


# ----------------------------------------------------------------------------- frames
def _frame(atoms, labels: dict, info: dict):
    from ..data import Frame

    return Frame(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), cell=np.array(atoms.cell),
                 pbc=atoms.pbc.copy(), energy=labels["energy"], forces=labels["forces"], stress=labels["stress"],
                 info=dict(info))


def _frame_atoms(frame):
    """ase.Atoms of a labelled frame, its labels as a SinglePointCalculator (what extxyz writes
    as energy, forces, stress) and its learn_* record in info."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = frame.to_atoms()
    atoms.calc = None
    per_atom = {k: v for k, v in frame.info.items() if isinstance(v, np.ndarray)}
    atoms.info = {k: v for k, v in frame.info.items() if not isinstance(v, np.ndarray)}
    for k, v in per_atom.items():
        atoms.arrays[k] = v
    results = {"energy": frame.energy, "forces": frame.forces}
    if frame.stress is not None:
        results["stress"] = frame.stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _write_extxyz(path: Path, images) -> None:
    """All of ``images`` to ``path`` at once (temporary file + rename)."""
    import ase.io

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ase.io.write(tmp, list(images), format="extxyz")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pack_structures(prefix: str, items) -> dict[str, np.ndarray]:
    """Structures (numbers, positions, cell, pbc, and any per-atom arrays named in ``extra``)
    as flat arrays for the checkpoint."""
    items = list(items)
    out = {f"{prefix}natoms": np.array([len(a["numbers"]) for a in items], dtype=np.int64)}
    for key, width in (("numbers", None), ("positions", 3)):
        rows = [np.asarray(a[key]) for a in items]
        out[f"{prefix}{key}"] = (np.concatenate(rows) if rows else
                                 np.zeros((0,) if width is None else (0, width)))
    out[f"{prefix}numbers"] = out[f"{prefix}numbers"].astype(np.int64)
    out[f"{prefix}cell"] = np.array([a["cell"] for a in items], dtype=np.float64).reshape(-1, 3, 3)
    out[f"{prefix}pbc"] = np.array([a["pbc"] for a in items], dtype=bool).reshape(-1, 3)
    return out


def _unpack_structures(prefix: str, arrays: dict) -> list[dict]:
    n = arrays[f"{prefix}natoms"]
    ends = np.cumsum(n)
    out = []
    for k, m in enumerate(n):
        sl = slice(int(ends[k] - m), int(ends[k]))
        out.append({"numbers": arrays[f"{prefix}numbers"][sl], "positions": arrays[f"{prefix}positions"][sl],
                    "cell": arrays[f"{prefix}cell"][k], "pbc": arrays[f"{prefix}pbc"][k], "slice": sl})
    return out


def structures_sha256(images) -> str:
    h = hashlib.sha256()
    for a in images:
        for arr in (a.numbers.astype(np.int64), np.asarray(a.positions, dtype=np.float64),
                    np.asarray(a.cell, dtype=np.float64), a.pbc.astype(bool)):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- fitting
class _GapFitter:
    """GAP refits with a fixed sparse set between re-selections (module docstring)."""

    def __init__(self, options: dict, settings: LearnSettings, log):
        from ..training.gap_train import OPTIONS
        from ..training.common import UsageError, parse_reference_energies, resolve_options

        bad = sorted(set(options) & {"test", "n_test", "checkpoint", "checkpoint_interval", "resume", "no_variance"})
        if bad:
            raise InputError(f"training option(s) {', '.join(bad)} do not apply to learn (the loop holds out no "
                             "test frames, writes its own checkpoints and needs the variance)")
        try:
            self.opts = resolve_options([o for o in OPTIONS if o.library], given=dict(options))
        except TypeError as exc:
            raise InputError(str(exc)) from None
        try:
            self.reference = parse_reference_energies(self.opts["reference_energies"], self.opts["energy_unit"])
        except UsageError as exc:
            raise InputError(str(exc)) from None
        self.settings = settings
        self.log = log
        # the sparse set of the last selection and the design rows of the frames fitted since
        self.sparse: dict | None = None
        self.rows: np.ndarray | None = None
        self.rows_frames = 0
        self._probe = None

    def state(self) -> tuple[dict, dict]:
        if self.sparse is None:
            return {}, {}
        meta = {k: self.sparse[k] for k in ("n_sparse", "species", "selected_at_atoms", "selected_at_frames")}
        return meta, {"fit_sparse": self.sparse["sparse"], "fit_pair_sparse": self.sparse["pair_sparse"]}

    def restore(self, meta: dict, arrays: dict) -> None:
        if meta:
            self.sparse = {**meta, "sparse": arrays["fit_sparse"], "pair_sparse": arrays["fit_pair_sparse"]}
        self.rows, self.rows_frames = None, 0  # recomputed on the next fit: each frame's rows are its own

    def _reselect(self, frames) -> str | None:
        """Why the sparse set must be chosen again (None: keep it)."""
        sp = self.sparse
        if sp is None:
            return "first fit"
        species = sorted({int(z) for f in frames for z in f.numbers})
        if species != sp["species"]:
            return "new element"
        if any(n < int(self.opts["n_sparse"]) for n in sp["n_sparse"]):
            return "sparse set not full"
        atoms = sum(len(f) for f in frames)
        if atoms >= self.settings.reselect_growth * sp["selected_at_atoms"]:
            return f"labelled environments grew {atoms / sp['selected_at_atoms']:.2f}x"
        if len(frames) > sp["selected_at_frames"]:
            sim = self._similarity(frames[sp["selected_at_frames"]:])
            if sim < self.settings.novelty:
                return f"an environment {sim:.3f} similar to the sparse set"
        return None

    def _similarity(self, frames) -> float:
        """Least, over the environments of ``frames``, of the largest kernel value with a sparse
        environment of the same element (1: every environment is a sparse point)."""
        from ..graph import FrameGraphs
        from ..models.gap import GAPModel

        o, sp = self.opts, self.sparse
        if self._probe is None:  # the SOAP of the fit's settings (as fit_gap builds it for the descriptors)
            self._probe = GAPModel(sp["species"], n_sparse=[0] * len(sp["species"]), two_body=None, variance=False,
                                   soap={k: o[k] for k in ("cutoff", "n_max", "l_max", "atom_sigma", "cutoff_width",
                                                           "central_weight")}, zeta=o["zeta"], delta=o["delta"])
        probe = self._probe
        Z = sp["sparse"]
        zs = np.repeat(np.arange(len(sp["n_sparse"])), sp["n_sparse"])
        worst = 1.0
        graphs = FrameGraphs(frames, float(o["cutoff"]))
        for k in range(len(frames)):
            g = graphs[k]
            s, first, nbr, centre = probe._soap_inputs(g)  # the descriptor's inputs, as fit_gap builds them
            p = probe.soap.raw(g.n_atoms, first, nbr, centre, g.edge_vectors().numpy())[0]
            q = p / np.linalg.norm(p, axis=1, keepdims=True)
            K = np.where(s.numpy()[:, None] == zs[None, :], q @ Z.T, 0.0) ** int(o["zeta"])
            worst = min(worst, float(K.max(1).min()) if K.size else 0.0)
        return worst

    def fit(self, frames, previous=None):
        from ..data import Dataset
        from ..training.gap_train import fit_gap

        ds = Dataset(frames)
        why = self._reselect(frames)
        capture = _RowCapture()
        if why is None:
            sp = self.sparse
            state = {"stage": "design", "n_sparse": sp["n_sparse"], "n_environments": int(sum(len(f) for f in frames)),
                     "design_frames": self.rows_frames}
            saved = {"sparse": sp["sparse"], "pair_sparse": sp["pair_sparse"]}
            if self.rows_frames:
                saved["design_rows"] = self.rows
            resume = (state, saved)
            how = f"sparse set kept, design rows of {len(frames) - self.rows_frames} new frame(s)"
        else:
            resume = None
            how = f"sparse set chosen ({why})"
        model, info = fit_gap(ds, np.arange(len(ds)), self.opts, log=lambda msg: None, quiet=True, ckpt=capture,
                              resume=resume, reference=self.reference)
        rows = capture.rows()
        if rows is not None:
            self.rows, self.rows_frames = rows, len(frames)
        elif why is not None:  # no frame gave rows (cannot happen with labelled frames)
            self.rows, self.rows_frames = None, 0
        if why is not None:
            self._probe = None
            self.sparse = {"n_sparse": [int(n) for n in model.n_sparse],
                           "species": [int(z) for z in model.species],
                           "selected_at_atoms": int(sum(len(f) for f in frames)), "selected_at_frames": len(frames),
                           "sparse": model.sparse.numpy().copy(), "pair_sparse": model.pair_sparse.numpy().copy()}
        cal = info.get("calibration") or {}
        f_rec = cal.get("forces")
        loo = float(f_rec["rms_error"]) if isinstance(f_rec, dict) else None
        record = {"recipe": "ase_mlff.workflows.learn (gap, incremental sparse GP)",
                  "data_sha256": ds.sha256(), "options": _jsonable(self.opts), "how": how,
                  "calibration": _jsonable(cal), "trained_on": info.get("trained_on"),
                  "n_frames": len(frames), "fit_s": info.get("fit_s")}
        return model, record, loo, how


class _RowCapture:
    """A stand-in for fit_gap's checkpointer: keeps the last snapshot that holds design rows
    (the weighted rows of every frame so far), so that the next fit continues from them."""

    def __init__(self):
        self._last = None

    def safe_point(self, snapshot, force: bool = False) -> None:
        if not force:  # the per-frame safe points of the design loop (the others are forced)
            self._last = snapshot

    def rows(self) -> np.ndarray | None:
        if self._last is None:
            return None
        state, arrays = self._last()
        return np.array(arrays["design_rows"]) if "design_rows" in arrays else None


class _CommitteeFitter:
    """A committee refitted from scratch on the data so far."""

    def __init__(self, options: dict, settings: LearnSettings, log):
        self.options = dict(options)
        self.settings = settings
        self.log = log

    def state(self):
        return {}, {}

    def restore(self, meta, arrays):
        pass

    def fit(self, frames, previous=None):
        from ..data import Dataset
        from ..training.committee import train_committee

        s = self.settings
        if s.family == "sgdml" and len({tuple(f.numbers) for f in frames}) > 1:
            raise InputError("sgdml learns one molecule: every start structure must have the same atoms in the "
                             "same order")
        ds = Dataset(frames)
        options = dict(self.options)
        # the calibration frames: a quarter of the data so far (the recipes' defaults are for a data
        # set, not for the first few labels of a loop), and members of half the rest
        held_key = {"mff": "n_test", "sgdml": "n_valid"}.get(s.family)
        if held_key is not None and held_key not in options:
            options[held_key] = max(1, len(frames) // 4)
        if held_key is not None and "n_member" not in options:
            options["n_member"] = max(1, (len(frames) - int(options[held_key])) // 2)
        if len(frames) < 3:
            raise InputError(f"a {s.family} committee needs at least 3 labelled frames to train and calibrate on "
                             f"(have {len(frames)}): give more start structures")
        model, report = train_committee(s.family, ds, int(s.committee), seed=s.seed, **options)
        cal = report.get("calibration") or {}
        f_rec = cal.get("forces")
        rms = float(f_rec["rms_error"]) if isinstance(f_rec, dict) else None
        record = {"recipe": f"ase_mlff.workflows.learn ({s.family} committee of {s.committee}, refitted from "
                            "scratch)", "data_sha256": ds.sha256(), "options": _jsonable(self.options),
                  "calibration": _jsonable(cal), "trained_on": report.get("trained_on"), "n_frames": len(frames)}
        return model, record, rms, "committee refitted from scratch"


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v)))


# ----------------------------------------------------------------------------- walkers
@dataclass
class _Walker:
    start: int
    t_index: int
    step: int
    rng: np.random.Generator
    atoms: Any  # ase.Atoms with momenta
    restarts: int = 0


def _thermalise(atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` (K) from ``rng``, zero total momentum."""
    from ase.units import kB

    m = atoms.get_masses()[:, None]
    p = rng.standard_normal((len(atoms), 3)) * np.sqrt(m * kB * temperature)
    if len(atoms) > 1:
        p -= m * (p.sum(0) / m.sum())
    atoms.set_momenta(p)


def _berendsen(atoms, pressure_gpa: float, timestep: float) -> None:
    """Rescale a periodic cell and the positions towards ``pressure_gpa`` (Berendsen)."""
    if not all(atoms.pbc):
        return
    stress = atoms.get_stress(include_ideal_gas=True)
    p_now = -float(np.mean(stress[:3]))
    beta = 1.0 / (BAROSTAT_MODULUS_GPA * GPA)
    mu = (1.0 - beta * timestep / BAROSTAT_TAU_FS * (pressure_gpa * GPA - p_now)) ** (1.0 / 3.0)
    mu = float(np.clip(mu, 0.99, 1.01))
    atoms.set_cell(np.asarray(atoms.cell) * mu, scale_atoms=True)


# ----------------------------------------------------------------------------- results
@dataclass
class LearnResult:
    """What a :func:`learn` run did; ``history`` has one record per reference call."""

    out_dir: str
    calls: int
    n_data: int
    n_failed: int
    fits: int
    md_steps: int
    stop_reason: str | None
    threshold: float | None
    history: list = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> str:
        sel = [h for h in self.history if h.get("status") == "labelled" and h.get("reason") != "start"]
        lines = [f"learn: {self.calls} reference calls ({self.n_data} labelled, {self.n_failed} failed), "
                 f"{self.fits} fits, {self.md_steps} MD steps, {self.wall_s:.0f} s; stopped: "
                 f"{self.stop_reason or 'interrupted'}"]
        if self.threshold is not None:
            lines.append(f"  threshold {self.threshold * 1000:.1f} meV/Å (largest per-atom force uncertainty)")
        if sel:
            last = sel[-min(5, len(sel)):]
            lines.append("  model before each of the last {} selected frames: F MAE {} meV/Å".format(
                len(last), " ".join(f"{h['error_forces_mae'] * 1000:.1f}" for h in last)))
        lines.append(f"  files in {self.out_dir}: model.mlff, data.extxyz, learn.log, checkpoint.ckpt")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the loop
class _Learner:
    def __init__(self, starts, reference, out: Path, settings: LearnSettings, progress):
        self.starts = [a.copy() for a in starts]
        for a in self.starts:
            a.calc = None
        self.out = out
        self.s = settings
        self.progress = progress
        self.reference_calc = reference  # an ASE calculator, or a ReferenceSpec built on first use
        self.frames = []  # labelled Frames, in call order
        self.failures = []  # {"call", "error", ...} with the structure in "atoms"
        self.history = []
        self.walkers: list[_Walker] = []
        self.st = {"calls": 0, "next_start": 0, "fits": 0, "turn": 0, "md_steps": 0, "since_crossing": 0,
                   "needs_fit": False, "threshold": settings.threshold, "stop_reason": None, "model_sha256": None,
                   "loo_force_rms": None}
        if settings.committee is not None:
            self.fitter = _CommitteeFitter(settings.options, settings, self.say)
        else:
            self.fitter = _GapFitter(settings.options, settings, self.say)
        self.model = None
        self._log = None
        self.t0 = time.perf_counter()

    # --------------------------------------------------------------- output
    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()
        if self.progress is not None:
            self.progress(msg)

    def timestep(self) -> float:
        if self.s.timestep is not None:
            return float(self.s.timestep)
        return 0.5 if any(1 in a.numbers for a in self.starts) else 1.0

    # --------------------------------------------------------------- checkpoint
    def checkpoint(self) -> None:
        from ..io import FORMAT_NAME, FORMAT_VERSION, write_archive

        fit_meta, fit_arrays = self.fitter.state()
        arrays = _pack_structures("d_", ({"numbers": f.numbers, "positions": f.positions, "cell": f.cell,
                                          "pbc": f.pbc} for f in self.frames))
        arrays["d_energy"] = np.array([f.energy for f in self.frames], dtype=np.float64)
        arrays["d_forces"] = (np.concatenate([f.forces for f in self.frames]) if self.frames else np.zeros((0, 3)))
        arrays["d_stress"] = np.array([f.stress if f.stress is not None else np.full(6, np.nan)
                                       for f in self.frames], dtype=np.float64).reshape(-1, 6)
        arrays["d_has_stress"] = np.array([f.stress is not None for f in self.frames], dtype=bool)
        arrays["d_unc"] = (np.concatenate([np.asarray(f.info.get("learn_forces_uncertainty",
                                                                 np.full(len(f), np.nan)), dtype=np.float64)
                                           for f in self.frames]) if self.frames else np.zeros(0))
        arrays["d_model_forces"] = (np.concatenate([np.asarray(f.info.get("learn_model_forces",
                                                                          np.full((len(f), 3), np.nan)),
                                                               dtype=np.float64) for f in self.frames])
                                    if self.frames else np.zeros((0, 3)))
        arrays.update(_pack_structures("f_", ({"numbers": r["atoms"].numbers, "positions": r["atoms"].positions,
                                               "cell": np.array(r["atoms"].cell), "pbc": r["atoms"].pbc}
                                              for r in self.failures)))
        arrays.update(_pack_structures("w_", ({"numbers": w.atoms.numbers, "positions": w.atoms.positions,
                                               "cell": np.array(w.atoms.cell), "pbc": w.atoms.pbc}
                                              for w in self.walkers)))
        arrays["w_momenta"] = (np.concatenate([w.atoms.get_momenta() for w in self.walkers])
                               if self.walkers else np.zeros((0, 3)))
        arrays.update(fit_arrays)
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": "ase-mlff learn checkpoint",
                "version": CHECKPOINT_VERSION,
                "settings": self.s.identity(), "starts_sha256": structures_sha256(self.starts), "state": self.st,
                "data_info": [{k: v for k, v in f.info.items() if not isinstance(v, np.ndarray)}
                              for f in self.frames],
                "failures": [{k: v for k, v in r.items() if k != "atoms"} for r in self.failures],
                "history": self.history, "fit": fit_meta,
                "walkers": [{"start": w.start, "t_index": w.t_index, "step": w.step, "restarts": w.restarts,
                             "rng": w.rng.bit_generator.state} for w in self.walkers]}
        write_archive(self.out / CHECKPOINT_NAME, _jsonable(meta), arrays, compress=False)

    def restore(self) -> None:
        from ase import Atoms

        from ..data import Frame
        from ..errors import ModelFileError
        from ..io import read_archive

        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            raise OutputExistsError(f"--resume: {self.out} holds no {CHECKPOINT_NAME} to continue from (start a "
                                    "new run in another folder)")
        try:
            meta, arrays = read_archive(path)
        except ModelFileError as exc:
            raise InputError(f"--resume: the checkpoint {path} cannot be read ({exc})") from None
        if meta.get("kind") != "ase-mlff learn checkpoint" or meta.get("version") != CHECKPOINT_VERSION:
            raise InputError(f"--resume: {path} is not a learn checkpoint of version {CHECKPOINT_VERSION}")
        mine = self.s.identity()
        theirs = meta["settings"]
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise OutputExistsError(
                f"--resume: the run in {self.out} was started with other settings ({', '.join(diff)}: "
                + "; ".join(f"{k} was {theirs.get(k)!r}, now {mine.get(k)!r}" for k in diff)
                + "); only max_calls and patience may change")
        if meta["starts_sha256"] != structures_sha256(self.starts):
            raise OutputExistsError(f"--resume: the start structures differ from those the run in {self.out} began "
                                    "with")
        self.st = meta["state"]
        self.history = meta["history"]
        self.frames = []
        per_atom = arrays["d_unc"]
        for k, s in enumerate(_unpack_structures("d_", arrays)):
            info = dict(meta["data_info"][k])
            unc = per_atom[s["slice"]]
            if not np.all(np.isnan(unc)):
                info["learn_forces_uncertainty"] = unc.copy()
                info["learn_model_forces"] = arrays["d_model_forces"][s["slice"]].copy()
            self.frames.append(Frame(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"],
                                     energy=float(arrays["d_energy"][k]), forces=arrays["d_forces"][s["slice"]],
                                     stress=arrays["d_stress"][k] if arrays["d_has_stress"][k] else None,
                                     info=info))
        self.failures = []
        for r, s in zip(meta["failures"], _unpack_structures("f_", arrays)):
            self.failures.append({**r, "atoms": Atoms(numbers=s["numbers"], positions=s["positions"],
                                                      cell=s["cell"], pbc=s["pbc"])})
        self.walkers = []
        for w, s in zip(meta["walkers"], _unpack_structures("w_", arrays)):
            start = self.starts[w["start"]]
            atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"],
                          info=dict(start.info))  # config_type and the like, as before
            atoms.set_constraint([c.copy() for c in start.constraints])  # fixed atoms stay fixed
            atoms.set_momenta(arrays["w_momenta"][s["slice"]])
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = w["rng"]
            self.walkers.append(_Walker(w["start"], w["t_index"], w["step"], rng, atoms, w.get("restarts", 0)))
        self.fitter.restore(meta.get("fit") or {}, arrays)
        model_path = self.out / "model.mlff"
        if self.st["fits"]:
            if model_path.exists() and _file_sha256(model_path) == self.st["model_sha256"]:
                self.model = self._load(model_path)
            else:  # the model file of the last fit did not survive (killed while writing it): the same fit again
                self.st["needs_fit"] = True
        self.say(f"resumed from {path}: {self.st['calls']} reference calls, {len(self.frames)} labelled frames, "
                 f"{self.st['fits']} fits")

    # --------------------------------------------------------------- pieces
    def _load(self, path):
        from ..io import load_model

        model = load_model(path)
        if model.family == "gap":
            model.variance_method = self.s.variance
        return model

    def reference(self):
        if isinstance(self.reference_calc, ReferenceSpec):
            self.reference_calc = self.reference_calc.build()
        return self.reference_calc

    def call(self, atoms, record: dict) -> bool:
        """One reference call on ``atoms``: the frame is added (True) or the failure recorded."""
        self.st["calls"] += 1
        record = {"call": self.st["calls"], "iteration": self.st["fits"], **record}
        t = time.perf_counter()
        try:
            labels = label(self.reference(), atoms)
        except ReferenceFailure as exc:
            record.update(status="failed", error=str(exc), reference_s=time.perf_counter() - t)
            self.history.append(_jsonable({k: v for k, v in record.items() if k != "pred"}))
            bad = atoms.copy()
            bad.calc = None
            bad.info = {"learn_call": record["call"], "learn_error": str(exc)}
            self.failures.append({"call": record["call"], "error": str(exc), "walker": record.get("walker"),
                                  "atoms": bad})
            self.say(f"call {record['call']}: the reference failed ({exc}); recorded in failures.json, skipped")
            return False
        record["reference_s"] = time.perf_counter() - t
        pred = record.pop("pred", None)
        n = len(atoms)
        info = {"learn_call": record["call"], "learn_iteration": record["iteration"], "learn_reason": record["reason"],
                "learn_walker": record.get("walker", -1), "learn_temperature": record.get("temperature", 0.0),
                "learn_step": record.get("step", 0),
                "learn_uncertainty": record.get("uncertainty", float("nan")),
                "learn_threshold": record.get("threshold") if record.get("threshold") is not None else float("nan")}
        if "config_type" in atoms.info:
            info["config_type"] = atoms.info["config_type"]
        if pred is not None:
            dF = pred["forces"] - labels["forces"]
            record.update(error_energy_per_atom=abs(pred["energy"] - labels["energy"]) / n,
                          error_forces_mae=float(np.abs(dF).mean()),
                          error_forces_max=float(np.linalg.norm(dF, axis=1).max()))
            info.update(learn_error_energy_per_atom=record["error_energy_per_atom"],
                        learn_error_forces_mae=record["error_forces_mae"],
                        learn_error_forces_max=record["error_forces_max"],
                        learn_forces_uncertainty=np.asarray(pred["forces_uncertainty"], dtype=np.float64),
                        learn_model_forces=np.asarray(pred["forces"], dtype=np.float64))
        record["status"] = "labelled"
        self.frames.append(_frame(atoms, labels, info))
        self.history.append(_jsonable(record))
        return True

    def fit(self) -> None:
        from ..io import save_model

        t = time.perf_counter()
        model, rec, rms, how = self.fitter.fit(self.frames, self.model)
        self.st["fits"] += 1
        rec.update(learn={"reference": self.s.reference, "calls": self.st["calls"], "fits": self.st["fits"],
                          "settings": self.s.identity()})
        path = self.out / "model.mlff"
        save_model(model, path, training=rec)
        self.model = self._load(path)  # what a resumed run would use, bit for bit
        self.st["model_sha256"] = _file_sha256(path)
        self.st["loo_force_rms"] = rms
        if self.s.threshold is None:
            # no held-out force error yet (one frame, or only perfect lattices whose forces vanish by
            # symmetry): no threshold, every turn sends its most uncertain frame (the fallback)
            self.st["threshold"] = self.s.threshold_factor * rms if rms else math.inf
            if not rms and not self.s.fallback:
                raise InputError("the fit measured no held-out force error to set the threshold from (too few or "
                                 "too symmetric frames); give --threshold, or leave out --no-fallback")
        self.st["needs_fit"] = False
        fit_s = time.perf_counter() - t
        if self.history:
            self.history[-1].update(fit_s=fit_s, fit=how, n_data=len(self.frames))
        self.say(f"fit {self.st['fits']}: {len(self.frames)} frames, {how}, {fit_s:.1f} s; held-out force error "
                 f"{f'{rms * 1000:.1f} meV/Å' if rms else 'none yet'} per atom (RMS), threshold "
                 f"{self.st['threshold'] * 1000:.1f} meV/Å")

    def _new_walker(self, k: int) -> _Walker:
        from ..rng import random_stream

        atoms = self.starts[k].copy()
        rng = random_stream(self.s.seed, f"learn-walker-{k}")
        _thermalise(atoms, self.s.temperatures[0], rng)
        return _Walker(start=k, t_index=0, step=0, rng=rng, atoms=atoms)

    def _restart(self, w: _Walker, why: str) -> None:
        atoms = self.starts[w.start].copy()
        _thermalise(atoms, self.s.temperatures[w.t_index], w.rng)
        w.atoms = atoms
        w.restarts += 1
        self.say(f"walker {w.start}: {why}; restarted from its start structure")

    def _predict(self, calc, atoms) -> dict:
        from ase.calculators.calculator import all_changes

        probe = atoms.copy()
        probe.calc = None
        calc.calculate(probe, ["energy", "forces"], all_changes)
        r = calc.results
        return {"energy": float(r["energy"]), "forces": np.array(r["forces"]),
                "forces_uncertainty": np.array(r["forces_uncertainty"])}

    def segment(self, w: _Walker):
        """One turn of walker ``w``; returns (atoms, record) of the frame to label, or None."""
        from ase.md.langevin import Langevin
        from ase.units import fs

        from ..calculator import MLFFCalculator

        T = float(self.s.temperatures[w.t_index])
        dt = self.timestep()
        plain = MLFFCalculator(self.model, skin=0.0)
        unsure = MLFFCalculator(self.model, skin=0.0, uncertainty=True)
        atoms = w.atoms
        atoms.calc = plain
        dyn = Langevin(atoms, dt * fs, temperature_K=T, friction=self.s.friction / fs, fixcm=False, rng=w.rng)
        best = None
        threshold = self.st["threshold"]
        for _ in range(int(self.s.segment_steps)):
            try:
                dyn.step()
                if self.s.pressure is not None:
                    _berendsen(atoms, float(self.s.pressure), dt)
                runaway = atoms.get_temperature() > RUNAWAY_FACTOR * T + 500.0
            except MLFFError as exc:
                runaway = str(exc)
            w.step += 1
            self.st["md_steps"] += 1
            self.st["since_crossing"] += 1
            if runaway:
                why = runaway if isinstance(runaway, str) else "the temperature ran away"
                self._restart(w, f"MD stopped at step {w.step} ({why})")
                break
            if w.step % int(self.s.check_interval):
                continue
            try:
                pred = self._predict(unsure, atoms)
            except MLFFError as exc:
                self._restart(w, f"the model failed at step {w.step} ({exc})")
                break
            u = float(pred["forces_uncertainty"].max())
            if best is None or u > best[1]["uncertainty"]:
                snap = atoms.copy()
                snap.calc = None
                best = (snap, {"walker": w.start, "temperature": T, "step": w.step, "uncertainty": u,
                               "threshold": threshold, "pred": pred})
            if u > threshold:
                self.st["since_crossing"] = 0
                best[1]["reason"] = "threshold"
                atoms.calc = None
                return best
        else:  # a whole segment without crossing: the next temperature of the schedule
            if w.t_index + 1 < len(self.s.temperatures):
                w.t_index += 1
        w.atoms.calc = None
        if best is not None and self.s.fallback:
            best[1]["reason"] = "max_steps"
            return best
        return None

    # --------------------------------------------------------------- run
    def run(self, resume: bool) -> LearnResult:
        self.out.mkdir(parents=True, exist_ok=True)
        self._log = open(self.out / "learn.log", "a")
        try:
            if resume:
                self.restore()
            else:
                self.say(f"learn: {len(self.starts)} start structure(s), reference {self.s.reference}, family "
                         f"{self.s.family}" + (f" committee of {self.s.committee}" if self.s.committee else "")
                         + f", temperatures {' '.join(f'{t:g}' for t in self.s.temperatures)} K"
                         + (f", P = {self.s.pressure:g} GPa" if self.s.pressure is not None else "")
                         + f", at most {self.s.max_calls} reference calls")
                self.checkpoint()
            self._loop()
        finally:
            self.write_files()
            self._log.close()
            self._log = None
        return self.result()

    def _loop(self) -> None:
        s, st = self.s, self.st
        while st["next_start"] < len(self.starts):  # 1. the start structures
            if st["calls"] >= s.max_calls:
                break
            k = st["next_start"]
            ok = self.call(self.starts[k], {"reason": "start", "walker": k, "step": 0})
            st["next_start"] += 1
            st["needs_fit"] = st["needs_fit"] or ok
            if ok:
                self.say(f"call {st['calls']}: start structure {k} ({self.starts[k].get_chemical_formula()}) "
                         "labelled")
            self.checkpoint()
        if not self.frames:
            raise DatasetError("the reference failed on every start structure (failures.json says how); nothing "
                               "to learn from")
        if not self.walkers:
            self.walkers = [self._new_walker(k) for k in range(len(self.starts))]
            self.checkpoint()
        while True:
            if st["needs_fit"]:
                self.fit()
                self.checkpoint()
            if st["calls"] >= s.max_calls:
                st["stop_reason"] = "max_calls"
                break
            if st["since_crossing"] >= s.steps_patience:
                st["stop_reason"] = "converged"
                self.say(f"converged: no frame crossed the threshold in {st['since_crossing']} MD steps")
                break
            w = self.walkers[st["turn"]]
            st["turn"] = (st["turn"] + 1) % len(self.walkers)
            picked = self.segment(w)
            if picked is not None:
                atoms, rec = picked
                ok = self.call(atoms, rec)
                if ok:
                    h = self.history[-1]
                    self.say(f"call {st['calls']}: walker {w.start} step {rec['step']} at {rec['temperature']:g} K, "
                             f"{rec['reason']}: uncertainty {rec['uncertainty'] * 1000:.1f} meV/Å; model error "
                             f"before adding: F MAE {h['error_forces_mae'] * 1000:.1f} meV/Å, max "
                             f"{h['error_forces_max'] * 1000:.1f} meV/Å, E {h['error_energy_per_atom'] * 1000:.2f} "
                             "meV/atom")
                    st["needs_fit"] = True
                else:  # the failed structure is not a place to continue from
                    self._restart(w, "the reference failed on its frame")
            self.checkpoint()

    # --------------------------------------------------------------- files
    def write_files(self) -> None:
        if self.frames:
            _write_extxyz(self.out / "data.extxyz", (_frame_atoms(f) for f in self.frames))
        if self.failures:
            _write_extxyz(self.out / "failures.extxyz", (r["atoms"] for r in self.failures))
            tmp = self.out / ".failures.json.tmp"
            tmp.write_text(json.dumps([{k: v for k, v in r.items() if k != "atoms"} for r in self.failures],
                                      indent=1))
            os.replace(tmp, self.out / "failures.json")
        try:
            plot_learning_curve(self.history, self.out / "learning_curve.png")
        except ImportError:  # matplotlib is optional
            pass
        except Exception as exc:  # noqa: BLE001 - a plot must not hide the run's own outcome
            self.say(f"learning_curve.png not written ({type(exc).__name__}: {exc})")

    def result(self) -> LearnResult:
        return LearnResult(out_dir=str(self.out), calls=self.st["calls"], n_data=len(self.frames),
                           n_failed=len(self.failures), fits=self.st["fits"], md_steps=self.st["md_steps"],
                           stop_reason=self.st["stop_reason"], threshold=self.st["threshold"],
                           history=list(self.history), wall_s=time.perf_counter() - self.t0)


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plot_learning_curve(history, path) -> str | None:
    """The model's errors on each selected frame before it was added, beside the uncertainty
    that selected it and the threshold, against the number of reference calls."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sel = [h for h in history if h.get("status") == "labelled" and "error_forces_mae" in h]
    if not sel:
        return None
    calls = np.array([h["call"] for h in sel])
    fig = Figure(figsize=(6.0, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    ax1.semilogy(calls, [h["error_forces_max"] * 1000 for h in sel], "o-", color="C3", ms=3,
                 label="largest per-atom force error")
    ax1.semilogy(calls, [h["uncertainty"] * 1000 for h in sel], "s--", color="C0", ms=3,
                 label="largest per-atom uncertainty (selection)")
    ax1.semilogy(calls, [h["error_forces_mae"] * 1000 for h in sel], "^-", color="C2", ms=3, label="force MAE")
    thr = np.array([h["threshold"] if h.get("threshold") is not None else np.nan for h in sel], dtype=float)
    thr[~np.isfinite(thr)] = np.nan  # no threshold yet (the first fits)
    if np.isfinite(thr).any():
        ax1.semilogy(calls, thr * 1000, ":", color="0.4", label="threshold")
    ax1.set_ylabel("meV/Å")
    ax1.set_title("model on each selected frame, before it was added")
    ax1.legend(fontsize=7)
    ax2.semilogy(calls, [max(h["error_energy_per_atom"] * 1000, 1e-4) for h in sel], "o-", color="C1", ms=3)
    ax2.set_ylabel("|energy error| (meV/atom)")
    ax2.set_xlabel("reference calls")
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    return path


def learn(starts, reference, out_dir, *, family: str = "gap", committee: int | None = None,
          temperatures=(300.0,), pressure: float | None = None, max_calls: int = 100,
          threshold: float | None = None, threshold_factor: float = 3.0, segment_steps: int = 100,
          check_interval: int = 2, patience: int | None = None, timestep: float | None = None,
          friction: float = 0.02, seed: int = 0, variance: str = "exact", fallback: bool = True,
          reselect_growth: float = 1.5, novelty: float = 0.9, options: dict | None = None,
          resume: bool = False, progress: Callable[[str], None] | None = None) -> LearnResult:
    """Active learning (module docstring) from the structures ``starts`` (ase.Atoms or a
    list of them) with ``reference``: a SPEC string (``"ase.calculators.emt:EMT"``), a
    :class:`~ase_mlff.workflows.reference.ReferenceSpec` or an ASE calculator instance.
    ``options``: the family's training options (``ase_mlff.train``'s keywords, e.g.
    ``{"cutoff": 4.5, "n_sparse": 200, "sigma_force": 0.02}`` for gap). Writes ``out_dir``
    (refused when it exists and is not empty, unless ``resume``); returns a :class:`LearnResult`."""
    from ase import Atoms

    if isinstance(starts, Atoms):
        starts = [starts]
    starts = list(starts)
    if not starts or not all(isinstance(a, Atoms) and len(a) for a in starts):
        raise InputError("give at least one start structure (non-empty ase.Atoms)")
    if isinstance(reference, str):
        reference = parse_spec(reference)
    ref_text = reference.text if isinstance(reference, ReferenceSpec) else (
        f"{type(reference).__module__}:{type(reference).__qualname__}")
    settings = LearnSettings(reference=ref_text, family=family, committee=committee,
                             temperatures=tuple(float(t) for t in temperatures), pressure=pressure,
                             max_calls=int(max_calls), threshold=threshold, threshold_factor=float(threshold_factor),
                             segment_steps=int(segment_steps), check_interval=int(check_interval), patience=patience,
                             timestep=timestep, friction=float(friction), seed=int(seed), variance=variance,
                             fallback=bool(fallback), reselect_growth=float(reselect_growth), novelty=float(novelty),
                             options=dict(options or {}))
    settings.check()
    out = Path(out_dir)
    if resume and not (out / CHECKPOINT_NAME).exists():  # refused before anything is created
        raise OutputExistsError(f"--resume: {out} holds no {CHECKPOINT_NAME} to continue from (start a new run "
                                "without --resume)")
    if not resume and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} exists and is not empty: give --resume to continue the run in it, or "
                                "another -o folder (nothing there is replaced)")
    if isinstance(reference, ReferenceSpec):  # a SPEC that does not import fails here, before any file is written
        reference = reference.build()
    learner = _Learner(starts, reference, out, settings, progress)
    return learner.run(resume)
