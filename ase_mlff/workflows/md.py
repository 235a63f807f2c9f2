"""Molecular dynamics with an ase-mlff calculator: NVE, NVT (Langevin) and NPT (MTK).

Integrators (all from ASE 3.29, nothing re-implemented here):

* ``nve``: :class:`ase.md.verlet.VelocityVerlet`.
* ``nvt``: :class:`ase.md.langevin.Langevin` (``friction`` in 1/fs; the centre of mass is
  fixed with an :class:`ase.constraints.FixCom` constraint added to the atoms).
* ``npt``: :class:`ase.md.nose_hoover_chain.IsotropicMTKNPT` (``barostat="isotropic"``,
  the default: the cell keeps its shape and only its volume fluctuates) or
  :class:`ase.md.nose_hoover_chain.MTKNPT` (``barostat="anisotropic"``: all cell degrees of
  freedom). Both are Martyna-Tobias-Klein integrators with Nose-Hoover chains, time-reversible
  and with a conserved quantity. ASE 3.29's alternatives: ``ase.md.npt.NPT`` is a
  deprecated alias of ``MelchionnaNPT`` (triangular cells only; "not recommended due to
  stability problems" in its own docstring) and ``NPTBerendsen`` does not sample the NPT
  ensemble (weak coupling).
  They use the calculator's stress plus the ideal-gas (kinetic) term.

Units: temperature K, time step fs, pressure **GPa**, friction 1/fs, ``tdamp``/``pdamp`` fs.
The log reports the pressure including the kinetic term, -trace(stress)/3 with
``include_ideal_gas=True``, i.e. the pressure the barostat controls.

Conserved quantities: NVE conserves Etot = Epot + Ekin. NPT (MTK) does not conserve Etot;
it conserves ``H = Epot + Ekin + E_thermostat + E_barostat + p_eps^2/2W + P_ext V``
(ase's ``get_conserved_energy()``), and the summary reports the drift of H. Langevin NVT
conserves nothing (the thermostat exchanges heat at random).

Random numbers: the Maxwell-Boltzmann velocities and the Langevin noise come from two
independent streams of one ``seed`` (:func:`ase_mlff.rng.random_stream`, names
``"velocities"`` and ``"langevin"``). With one shared stream the first Langevin kick of
each atom was a multiple of its own initial velocity, so step 1 heated the system (+2.1 eV
on 216 Si atoms, 278 -> 353 K). ``seed=None``: fresh, unrepeatable streams.

Output files are never replaced silently (``mode``):

* ``"new"`` (default): refuse (:class:`InputError`, nothing written) if the trajectory or
  the log exists already.
* ``"append"``: continue the run. The start is the last frame of the existing trajectory -
  positions, cell and momenta (both ``.traj`` and extended XYZ store them) - and the step
  counter and time continue from ``atoms.info["md_step"]`` / ``["md_time_fs"]``, which every
  frame written here carries. New frames are appended to the trajectory and new rows to the
  log, after a ``# continued ...`` comment line (no second header). Thermostat and barostat
  chain variables are not stored in frames: they restart from zero, and the Langevin noise
  of a continuation is its own stream (``"langevin@<step>"``), not a replay of the first
  segment's. Without an existing trajectory, ``"append"`` starts a new run (the log, if it
  exists, is appended to).
* ``"overwrite"``: replace both files.

Uncertainty limit (``max_uncertainty``, ``ase-mlff md --max-uncertainty X``): with a model
that gives ``forces_uncertainty`` (a committee, docs/uncertainty.md), the largest per-atom
force uncertainty ``max_a sigma_F[a]`` (eV/Å, calibrated) is checked after every step,
including step 0. When it exceeds X, ``on_uncertainty="stop"`` (default) ends the run after
that step like a Ctrl-C does (files flushed and closed, the offending frame written to the
trajectory even between ``traj_interval`` frames, ``stop_reason`` and the summary say why;
the command exits with status 3); ``"warn"`` issues a warning each time the limit is crossed
from below and keeps going. Either way ``MDResult.max_forces_uncertainty`` holds the value
of every step. A model without uncertainty is refused before the run starts.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from ase import units

from .._warn import warn
from ..console import ProgressBar
from ..errors import InputError
from ..rng import random_stream
from ._common import (GPA, OUTPUT_MODES, FrameWriter, InterruptGuard, has_stress, output_path, refuse_existing,
                      require_stress)

ENSEMBLES = ("nve", "nvt", "npt")


@dataclass
class MDResult:
    """What a run did. Arrays hold one entry per step (including step 0)."""

    atoms: object
    ensemble: str
    timestep_fs: float
    steps_requested: int
    steps: int = 0
    interrupted: bool = False
    wall_time: float = 0.0
    time_ps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    epot: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ekin: np.ndarray = field(default_factory=lambda: np.zeros(0))
    temperature: np.ndarray = field(default_factory=lambda: np.zeros(0))
    volume: np.ndarray | None = None
    pressure_gpa: np.ndarray | None = None
    trajectory: str | None = None
    trajectory_frames: int = 0
    logfile: str | None = None
    #: per step: the integrator's conserved quantity in eV (NVE: Etot; NPT: the MTK H); None for NVT
    conserved: np.ndarray | None = None
    #: step number of the first entry (non-zero for a run continued with ``mode="append"``)
    start_step: int = 0
    continued_from: str | None = None
    #: per step: max over atoms of the calibrated force uncertainty (eV/Å), with max_uncertainty
    max_forces_uncertainty: np.ndarray | None = None
    uncertainty_limit: float | None = None
    #: step numbers at which the uncertainty crossed the limit from below
    uncertainty_crossings: list = field(default_factory=list)
    #: why the run ended before ``steps_requested`` (None: it did not, or Ctrl-C: ``interrupted``)
    stop_reason: str | None = None

    @property
    def natoms(self) -> int:
        return len(self.atoms)

    @property
    def etot(self) -> np.ndarray:
        return self.epot + self.ekin

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.wall_time if self.wall_time > 0 else float("nan")

    @property
    def drift(self) -> float:
        """Slope of a linear fit of Etot per atom against time, eV/atom/ps (NaN below 3 samples)."""
        if len(self.etot) < 3:
            return float("nan")
        return float(np.polyfit(self.time_ps, self.etot / self.natoms, 1)[0])

    @property
    def max_energy_deviation(self) -> float:
        """max |Etot(t) - Etot(0)| in eV."""
        return float(np.abs(self.etot - self.etot[0]).max()) if len(self.etot) else float("nan")

    @property
    def conserved_drift(self) -> float:
        """Slope of a linear fit of the conserved quantity per atom against time, eV/atom/ps
        (NaN without a conserved quantity or below 3 samples)."""
        if self.conserved is None or len(self.conserved) < 3:
            return float("nan")
        return float(np.polyfit(self.time_ps, self.conserved / self.natoms, 1)[0])

    @property
    def max_conserved_deviation(self) -> float:
        """max |H(t) - H(0)| of the conserved quantity, eV."""
        if self.conserved is None or not len(self.conserved):
            return float("nan")
        return float(np.abs(self.conserved - self.conserved[0]).max())

    def summary(self) -> str:
        done = f"{self.steps}/{self.steps_requested} steps"
        if self.interrupted:
            done = f"INTERRUPTED after {done}"
        elif self.stop_reason:
            done = f"STOPPED after {done}"
        lines = [
            f"md      {self.ensemble.upper()}: {done} x {self.timestep_fs:g} fs = "
            f"{self.steps * self.timestep_fs / 1000:.4g} ps, {self.natoms} atoms",
        ]
        if self.continued_from:
            t0 = self.time_ps[0] if len(self.time_ps) else float("nan")
            lines.append(f"start   continued from step {self.start_step} (t = {t0:.4g} ps) of {self.continued_from}: "
                         "positions, cell and velocities of its last frame")
        lines += [
            f"speed   {self.steps_per_second:.1f} steps/s "
            f"({1e3 * self.wall_time / max(self.steps, 1):.2f} ms/step, {self.wall_time:.1f} s wall)",
        ]
        if len(self.temperature):
            half = self.temperature[len(self.temperature) // 2:]
            lines.append(f"T       mean {self.temperature.mean():.1f} K (second half {half.mean():.1f} K), "
                         f"final {self.temperature[-1]:.1f} K")
        if len(self.etot) >= 3 and self.ensemble == "npt" and self.conserved is not None:
            lines.append(f"H_MTK   drift {1e3 * self.conserved_drift:+.4f} meV/atom/ps (linear fit), "
                         f"max |H - H(0)| {1e3 * self.max_conserved_deviation:.3f} meV "
                         "(the conserved quantity of the MTK integrator; Etot is not conserved in NPT)")
        elif len(self.etot) >= 3:
            lines.append(f"Etot    drift {1e3 * self.drift:+.4f} meV/atom/ps (linear fit), "
                         f"max |Etot - Etot(0)| {1e3 * self.max_energy_deviation:.3f} meV"
                         + ("" if self.ensemble == "nve" else " (thermostatted: not conserved)"))
        if self.pressure_gpa is not None and len(self.pressure_gpa):
            lines.append(f"P       mean {np.nanmean(self.pressure_gpa):.3f} GPa (incl. kinetic term)")
        if self.volume is not None and len(self.volume):
            lines.append(f"V       initial {self.volume[0]:.3f} Å^3, mean {self.volume.mean():.3f} Å^3, "
                         f"final {self.volume[-1]:.3f} Å^3")
        if self.uncertainty_limit is not None and self.max_forces_uncertainty is not None:
            u = self.max_forces_uncertainty
            top = f"{np.max(u):.4g}" if len(u) else "n/a"
            crossed = (f"crossed {len(self.uncertainty_crossings)} time(s), first at step {self.uncertainty_crossings[0]}"
                       if self.uncertainty_crossings else "never crossed")
            lines.append(f"sigma_F max per-atom force uncertainty over the run {top} eV/Å; limit "
                         f"{self.uncertainty_limit:g} eV/Å {crossed}")
        if self.stop_reason:
            lines.append(f"stopped {self.stop_reason}")
        if self.trajectory:
            lines.append(f"written {self.trajectory} ({self.trajectory_frames} frames)")
        if self.logfile and self.logfile != "-":
            lines.append(f"written {self.logfile}")
        return "\n".join(lines)


def initialize_velocities(atoms, temperature: float, seed=None, zero_rotation: bool | None = None) -> None:
    """Maxwell-Boltzmann velocities at ``temperature`` K, zero total momentum and, for a
    molecule (no periodic direction; or when ``zero_rotation`` is True), zero angular momentum.
    Drawn from the ``"velocities"`` stream of ``seed`` (independent of the thermostat noise)."""
    from ase.md import velocitydistribution as vd

    from .._compat import thermalize

    thermalize(atoms, temperature, rng=random_stream(seed, "velocities"))
    Stationary, ZeroRotation = vd.Stationary, vd.ZeroRotation
    Stationary(atoms)
    if zero_rotation is None:
        zero_rotation = not any(atoms.pbc)
    if zero_rotation and len(atoms) > 2:
        ZeroRotation(atoms)


def make_integrator(atoms, ensemble: str = "nve", timestep: float = 1.0, temperature: float = 300.0,
                    pressure: float = 0.0, friction: float = 0.01, tdamp: float | None = None,
                    pdamp: float | None = None, barostat: str = "isotropic", seed=None,
                    noise_stream: str = "langevin"):
    """The ASE integrator for ``ensemble`` (units: fs, K, GPa, 1/fs). The Langevin noise is
    drawn from the ``noise_stream`` stream of ``seed``, never from the velocities' stream."""
    dt = timestep * units.fs
    ensemble = ensemble.lower()
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "nvt":
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin

        # centre of mass fixed the way ASE >= 3.28 recommends (Langevin's own fixcm is deprecated)
        if len(atoms) > 1 and not any(isinstance(c, FixCom) for c in atoms.constraints):
            atoms.set_constraint(list(atoms.constraints) + [FixCom()])
        return Langevin(atoms, dt, temperature_K=temperature, friction=friction / units.fs,
                        fixcm=False, rng=random_stream(seed, noise_stream))
    if ensemble == "npt":
        try:
            from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT
        except ImportError:  # pragma: no cover - old ase
            import ase

            raise InputError(f"NPT needs ase.md.nose_hoover_chain.IsotropicMTKNPT (ASE >= 3.25); "
                             f"this is ASE {ase.__version__}") from None
        require_stress(atoms.calc, atoms, "NPT molecular dynamics")
        cls = {"isotropic": IsotropicMTKNPT, "anisotropic": MTKNPT}.get(barostat)
        if cls is None:
            raise InputError(f"barostat must be 'isotropic' or 'anisotropic', got {barostat!r}")
        return cls(atoms, dt, temperature_K=temperature, pressure_au=pressure * GPA,
                   tdamp=(tdamp if tdamp else 100 * timestep) * units.fs,
                   pdamp=(pdamp if pdamp else 1000 * timestep) * units.fs)
    raise InputError(f"ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")


class _Recorder:
    """Observer: keeps energies every step and writes the log every ``log_interval`` steps.

    ``start_step``/``start_time_fs``: where the step counter and clock of a continued run
    start (the time is kept here rather than from ``dyn.get_time()`` so that a continuation
    with another time step still has the right clock). ``append``: add to an existing log
    after a comment line instead of writing a new file with a header.
    """

    def __init__(self, atoms, dyn, result: MDResult, logfile, log_interval: int, stress: bool,
                 timestep_fs: float, start_step: int = 0, start_time_fs: float = 0.0, append: bool = False,
                 marker: str = ""):
        self.atoms, self.dyn, self.result = atoms, dyn, result
        self.stress = stress
        self.log_interval = max(1, int(log_interval))
        self.timestep_fs, self.start_step, self.start_time_fs = timestep_fs, start_step, start_time_fs
        self.conserved = getattr(dyn, "get_conserved_energy", None)
        self.rows: dict[str, list] = {"t": [], "epot": [], "ekin": [], "T": [], "V": [], "P": [], "H": []}
        self.last_step = None
        self.fh = None
        self.logfile = logfile
        if logfile is not None:
            cols = f"{'step':>9} {'time[ps]':>10} {'Epot[eV]':>14} {'Ekin[eV]':>12} {'Etot[eV]':>14} {'T[K]':>9}"
            if stress:
                cols += f" {'P[GPa]':>9} {'V[Ang^3]':>11}"
            continuing = False
            if logfile == "-":
                self.fh = sys.stdout
            else:
                path = output_path(logfile)
                continuing = append and os.path.exists(path) and os.path.getsize(path) > 0
                self.fh = open(path, "a" if continuing else "w")
            # a continuation gets a comment, not a second header: the file still loads with np.loadtxt
            self.fh.write(f"# {marker or 'continued'}\n" if continuing else "#" + cols[1:] + "\n")
            self.fh.flush()

    def time_fs(self) -> float:
        return self.start_time_fs + (self.dyn.nsteps - self.start_step) * self.timestep_fs

    def __call__(self, log: bool = True):
        step = self.dyn.nsteps
        if step == self.last_step:  # the start of a continued run, recorded already
            return
        self.last_step = step
        a = self.atoms
        epot, ekin = a.get_potential_energy(), a.get_kinetic_energy()
        t = self.time_fs() / 1000
        r = self.rows
        r["t"].append(t)
        r["epot"].append(epot)
        r["ekin"].append(ekin)
        r["T"].append(a.get_temperature())
        r["V"].append(a.get_volume() if a.cell.rank == 3 else np.nan)
        r["H"].append(self.conserved() if self.conserved is not None else np.nan)
        on_log_step = step % self.log_interval == 0
        logging = log and self.fh is not None and on_log_step
        p = np.nan  # pressure: only on log steps (stress with the kinetic term)
        if self.stress and on_log_step:
            p = float(-np.trace(a.get_stress(voigt=False, include_ideal_gas=True)) / 3 / GPA)
        r["P"].append(p)
        if logging:
            line = (f"{step:9d} {t:10.5f} {epot:14.6f} {ekin:12.6f} {epot + ekin:14.6f} {r['T'][-1]:9.2f}")
            if self.stress:
                line += f" {p:9.4f} {r['V'][-1]:11.4f}"
            self.fh.write(line + "\n")
            self.fh.flush()

    def finish(self) -> None:
        res, r = self.result, self.rows
        res.time_ps = np.array(r["t"])
        res.epot = np.array(r["epot"])
        res.ekin = np.array(r["ekin"])
        res.temperature = np.array(r["T"])
        if self.conserved is not None:
            res.conserved = np.array(r["H"])
        if self.atoms.cell.rank == 3:
            res.volume = np.array(r["V"])
        if self.stress:
            res.pressure_gpa = np.array(r["P"])
        if self.fh is not None and self.fh is not sys.stdout:
            self.fh.close()
        elif self.fh is not None:
            self.fh.flush()
        self.fh = None


def last_md_frame(path):
    """The last frame of an MD trajectory with its step, time (fs) and momenta, for continuing
    the run; :class:`InputError` if the frame cannot continue a run."""
    import ase.io

    path = os.fspath(path)
    try:
        frame = ase.io.read(path, index=-1)
    except Exception as exc:  # ase raises many types for damaged files
        raise InputError(f"cannot read the last frame of {path!r} to continue the run ({exc}); "
                         "start a new run with another trajectory name") from None
    if not frame.has("momenta"):
        raise InputError(f"the last frame of {path!r} has no velocities (momenta), so the run cannot be "
                         "continued from it; start a new run from it as a structure instead")
    if "md_step" not in frame.info:
        raise InputError(f"the last frame of {path!r} carries no step number (info 'md_step'); it was not "
                         "written by ase-mlff md. Start a new run from it as a structure instead")
    step = int(frame.info["md_step"])
    time_fs = float(frame.info.get("md_time_fs", np.nan))
    return frame, step, time_fs


def _continue_from(atoms, frame, path) -> None:
    if len(frame) != len(atoms) or not np.array_equal(frame.numbers, atoms.numbers):
        raise InputError(f"the trajectory {path!r} holds {frame.get_chemical_formula()} ({len(frame)} atoms), "
                         f"not the structure given ({atoms.get_chemical_formula()}, {len(atoms)} atoms): "
                         "it is the trajectory of another system; choose another name")
    atoms.set_cell(frame.cell)
    atoms.pbc = frame.pbc
    atoms.set_positions(frame.positions, apply_constraint=False)
    atoms.set_momenta(frame.get_momenta(), apply_constraint=False)


class _UncertaintyMonitor:
    """Observer: max per-atom force uncertainty of every step against a limit (module docstring)."""

    def __init__(self, atoms, limit: float, action: str, dyn):
        calc = atoms.calc
        self.check(calc, limit, action)
        self.atoms, self.calc, self.limit, self.action, self.dyn = atoms, calc, float(limit), action, dyn
        self.values: list[float] = []
        self.crossings: list[int] = []
        self.above = False
        self.tripped = None  # (step, value, atom) once a stop is due
        self.last_step = None
        # the calculator computes the uncertainty only when asked; ask for the run, restore afterwards
        self.was_on = bool(calc.uncertainty)
        if not self.was_on:
            calc.uncertainty = True
            calc.reset()

    @staticmethod
    def check(calc, limit: float, action: str) -> None:
        """Refuse a model without uncertainty, a bad limit or action (before any file is written)."""
        model = getattr(calc, "model", None)
        if model is None or "forces_uncertainty" not in getattr(model, "extra_results", ()):
            what = f"this {model.family} model" if model is not None else f"the calculator {type(calc).__name__}"
            raise InputError(f"max_uncertainty (--max-uncertainty) needs a model that gives forces_uncertainty, "
                             f"but {what} gives none; train a committee (ase-mlff train FAMILY --committee K) "
                             "or run without the limit")
        if not (np.isfinite(limit) and limit > 0):
            raise InputError(f"max_uncertainty must be a positive number of eV/Å, got {limit!r}")
        if action not in ("stop", "warn"):
            raise InputError(f"on_uncertainty must be 'stop' or 'warn', got {action!r}")

    def restore(self) -> None:
        if not self.was_on:
            self.calc.uncertainty = False
            self.calc.reset()

    def __call__(self):
        step = self.dyn.nsteps
        if step == self.last_step:
            return
        self.last_step = step
        self.atoms.get_forces()  # the step's forces are computed already: this only reads them
        sigma = self.calc.results.get("forces_uncertainty")
        if sigma is None:  # results computed before the uncertainty was switched on
            self.calc.reset()
            self.atoms.get_forces()
            sigma = self.calc.results["forces_uncertainty"]
        atom = int(np.argmax(sigma))
        value = float(sigma[atom])
        self.values.append(value)
        over = value > self.limit
        if over and not self.above:
            self.crossings.append(step)
            if self.action == "warn":
                warn(f"step {step}: the force uncertainty of atom {atom} is {value:.4g} eV/Å, above the "
                     f"limit {self.limit:g} eV/Å: the model is extrapolating")
        self.above = over
        if over and self.action == "stop" and self.tripped is None:
            self.tripped = (step, value, atom)


def run_md(atoms, calc=None, *, ensemble: str = "nve", temperature: float = 300.0,
           timestep: float = 1.0, steps: int = 1000, pressure: float = 0.0, friction: float = 0.01,
           tdamp: float | None = None, pdamp: float | None = None, barostat: str = "isotropic",
           init_velocities: bool = True, seed=None, zero_rotation: bool | None = None,
           trajectory=None, traj_interval: int = 10, logfile=None, log_interval: int = 10,
           mode: str = "new", progress: bool = False, observers=(), summary_stream=None,
           max_uncertainty: float | None = None, on_uncertainty: str = "stop") -> MDResult:
    """Run ``steps`` steps of MD on ``atoms`` (modified in place) and return an :class:`MDResult`.

    ``calc``: calculator to attach (default: the one on ``atoms``). ``trajectory``: ``.traj`` or
    ``.extxyz``/``.xyz`` path written every ``traj_interval`` steps (and at step 0). ``logfile``:
    path or ``"-"`` (stdout), a row every ``log_interval`` steps. ``observers``: extra
    ``(function, interval)`` pairs attached to the integrator. ``progress``: bar on stderr.

    ``mode``: ``"new"`` (refuse if the trajectory or log exists), ``"append"`` (continue the
    run in the existing trajectory: ``atoms`` then takes the positions, cell and momenta of
    its last frame, and ``init_velocities`` is ignored) or ``"overwrite"``; see the module
    docstring. ``seed``: velocities and Langevin noise come from independent streams of it.

    Ctrl-C stops the run after the current step (a second Ctrl-C at once); a
    :class:`KeyboardInterrupt` raised anywhere in the loop (e.g. by an observer) also ends the
    run cleanly: files are flushed and closed, and the result has ``interrupted=True``.
    ``summary_stream``: where to print the summary at the end (None: do not print).

    ``max_uncertainty`` (eV/Å): limit on the largest per-atom force uncertainty, checked every
    step; ``on_uncertainty``: ``"stop"`` (end the run cleanly, ``stop_reason`` says why) or
    ``"warn"``. Needs a model with ``forces_uncertainty`` (module docstring).
    """
    if calc is not None:
        atoms.calc = calc
    if atoms.calc is None:
        raise InputError("no calculator: pass calc= or attach one to the atoms")
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    if timestep <= 0:
        raise InputError(f"the time step must be positive, got {timestep} fs")
    if mode not in OUTPUT_MODES:
        raise InputError(f"mode must be one of {', '.join(OUTPUT_MODES)}, got {mode!r}")
    if max_uncertainty is not None:
        _UncertaintyMonitor.check(atoms.calc, max_uncertainty, on_uncertainty)
    traj_path = None if trajectory is None else os.fspath(trajectory)
    log_path = None if logfile is None else os.fspath(logfile)
    if mode == "new":
        refuse_existing([traj_path, None if log_path == "-" else log_path],
                        'pass mode="append" to continue that run or mode="overwrite" to replace it')
    start_step, start_time_fs, continued = 0, 0.0, False
    if mode == "append" and traj_path and os.path.exists(traj_path) and os.path.getsize(traj_path) > 0:
        frame, start_step, start_time_fs = last_md_frame(traj_path)
        _continue_from(atoms, frame, traj_path)
        if not np.isfinite(start_time_fs):
            start_time_fs = start_step * timestep
        continued = True
    elif init_velocities:
        initialize_velocities(atoms, temperature, seed=seed, zero_rotation=zero_rotation)
    # a continuation draws fresh noise, not a replay of the first segment's
    dyn = make_integrator(atoms, ensemble, timestep, temperature, pressure, friction, tdamp, pdamp,
                          barostat, seed, noise_stream=f"langevin@{start_step}" if continued else "langevin")
    dyn.nsteps = start_step
    stress = has_stress(atoms.calc, atoms) and bool(all(atoms.pbc))
    result = MDResult(atoms=atoms, ensemble=ensemble.lower(), timestep_fs=timestep, steps_requested=steps,
                      trajectory=traj_path, logfile=log_path, start_step=start_step,
                      continued_from=traj_path if continued else None)
    marker = (f"continued from step {start_step} of {traj_path} (ase-mlff md --append)" if continued
              else "a new run appended to this log (ase-mlff md --append)")
    recorder = _Recorder(atoms, dyn, result, log_path, log_interval, stress, timestep, start_step,
                         start_time_fs, append=mode == "append", marker=marker)
    writer = None
    bar = ProgressBar(steps, label=ensemble.upper(), enabled=progress)
    # last before the run: it switches the calculator's uncertainty on, and the finally below
    # switches it off again
    monitor = None if max_uncertainty is None else _UncertaintyMonitor(atoms, max_uncertainty, on_uncertainty, dyn)

    def write_frame():
        if continued and dyn.nsteps == start_step:  # that frame is the last one of the file already
            return
        atoms.info["md_step"] = int(dyn.nsteps)
        atoms.info["md_time_fs"] = float(recorder.time_fs())
        writer.write()

    try:
        if traj_path is not None:
            writer = FrameWriter(traj_path, atoms, mode="a" if mode == "append" else "w")
            dyn.attach(write_frame, interval=max(1, int(traj_interval)))
        if continued:  # ase calls no observer before the first step of a run not starting at 0
            recorder(log=False)
        dyn.attach(recorder, interval=1)
        if monitor is not None:
            if continued:
                monitor()
            dyn.attach(monitor, interval=1)
        for fn, interval in observers:
            dyn.attach(fn, interval=interval)
        t0 = time.perf_counter()
        with InterruptGuard() as guard:
            try:
                for _ in dyn.irun(steps):
                    result.steps = dyn.nsteps - start_step
                    bar.update(result.steps)
                    if monitor is not None and monitor.tripped is not None:
                        step, value, atom = monitor.tripped
                        result.stop_reason = (f"at step {step}: the force uncertainty of atom {atom} is {value:.4g} "
                                              f"eV/Å, above the limit {monitor.limit:g} eV/Å (max_uncertainty)")
                        # the geometry that crossed the limit is what a user wants to inspect or label
                        if writer is not None and dyn.nsteps % max(1, int(traj_interval)) != 0:
                            write_frame()
                        break
                    guard.check()
            except KeyboardInterrupt:
                result.interrupted = True
                result.steps = dyn.nsteps - start_step
        result.wall_time = time.perf_counter() - t0
    finally:
        if monitor is not None:
            monitor.restore()
            result.max_forces_uncertainty = np.array(monitor.values)
            result.uncertainty_limit = monitor.limit
            result.uncertainty_crossings = list(monitor.crossings)
        bar.close()
        if writer is not None:
            writer.close()
            result.trajectory_frames = writer.count
        recorder.finish()
    if summary_stream is not None:
        print(result.summary(), file=summary_stream)
        summary_stream.flush()
    return result
