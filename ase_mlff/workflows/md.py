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
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from ase import units

from ..errors import InputError
from ._common import GPA, FrameWriter, InterruptGuard, ProgressBar, has_stress, output_path, require_stress

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

    def summary(self) -> str:
        done = f"{self.steps}/{self.steps_requested} steps"
        if self.interrupted:
            done = f"INTERRUPTED after {done}"
        lines = [
            f"md      {self.ensemble.upper()}: {done} x {self.timestep_fs:g} fs = "
            f"{self.steps * self.timestep_fs / 1000:.4g} ps, {self.natoms} atoms",
            f"speed   {self.steps_per_second:.1f} steps/s "
            f"({1e3 * self.wall_time / max(self.steps, 1):.2f} ms/step, {self.wall_time:.1f} s wall)",
        ]
        if len(self.temperature):
            half = self.temperature[len(self.temperature) // 2:]
            lines.append(f"T       mean {self.temperature.mean():.1f} K (second half {half.mean():.1f} K), "
                         f"final {self.temperature[-1]:.1f} K")
        if len(self.etot) >= 3:
            lines.append(f"Etot    drift {1e3 * self.drift:+.4f} meV/atom/ps (linear fit), "
                         f"max |Etot - Etot(0)| {1e3 * self.max_energy_deviation:.3f} meV"
                         + ("" if self.ensemble == "nve" else " (thermostatted: not conserved)"))
        if self.pressure_gpa is not None and len(self.pressure_gpa):
            lines.append(f"P       mean {np.nanmean(self.pressure_gpa):.3f} GPa (incl. kinetic term)")
        if self.volume is not None and len(self.volume):
            lines.append(f"V       initial {self.volume[0]:.3f} Å^3, mean {self.volume.mean():.3f} Å^3, "
                         f"final {self.volume[-1]:.3f} Å^3")
        if self.trajectory:
            lines.append(f"written {self.trajectory} ({self.trajectory_frames} frames)")
        if self.logfile and self.logfile != "-":
            lines.append(f"written {self.logfile}")
        return "\n".join(lines)


def initialize_velocities(atoms, temperature: float, seed=None, zero_rotation: bool | None = None) -> None:
    """Maxwell-Boltzmann velocities at ``temperature`` K, zero total momentum and, for a
    molecule (no periodic direction; or when ``zero_rotation`` is True), zero angular momentum."""
    from ase.md import velocitydistribution as vd

    from .._compat import thermalize

    thermalize(atoms, temperature, rng=np.random.default_rng(seed))
    Stationary, ZeroRotation = vd.Stationary, vd.ZeroRotation
    Stationary(atoms)
    if zero_rotation is None:
        zero_rotation = not any(atoms.pbc)
    if zero_rotation and len(atoms) > 2:
        ZeroRotation(atoms)


def make_integrator(atoms, ensemble: str = "nve", timestep: float = 1.0, temperature: float = 300.0,
                    pressure: float = 0.0, friction: float = 0.01, tdamp: float | None = None,
                    pdamp: float | None = None, barostat: str = "isotropic", seed=None):
    """The ASE integrator for ``ensemble`` (units: fs, K, GPa, 1/fs)."""
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
                        fixcm=False, rng=np.random.default_rng(seed))
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
    """Observer: keeps energies every step and writes the log every ``log_interval`` steps."""

    def __init__(self, atoms, dyn, result: MDResult, logfile, log_interval: int, stress: bool):
        self.atoms, self.dyn, self.result = atoms, dyn, result
        self.stress = stress
        self.log_interval = max(1, int(log_interval))
        self.rows: dict[str, list] = {"t": [], "epot": [], "ekin": [], "T": [], "V": [], "P": []}
        self.fh = None
        self.logfile = logfile
        if logfile is not None:
            self.fh = sys.stdout if logfile == "-" else open(output_path(logfile), "w")
            cols = f"{'step':>9} {'time[ps]':>10} {'Epot[eV]':>14} {'Ekin[eV]':>12} {'Etot[eV]':>14} {'T[K]':>9}"
            if stress:
                cols += f" {'P[GPa]':>9} {'V[Ang^3]':>11}"
            self.fh.write("#" + cols[1:] + "\n")
            self.fh.flush()

    def __call__(self):
        a = self.atoms
        epot, ekin = a.get_potential_energy(), a.get_kinetic_energy()
        t = self.dyn.get_time() / (1000 * units.fs)
        r = self.rows
        r["t"].append(t)
        r["epot"].append(epot)
        r["ekin"].append(ekin)
        r["T"].append(a.get_temperature())
        r["V"].append(a.get_volume() if a.cell.rank == 3 else np.nan)
        step = self.dyn.nsteps
        on_log_step = step % self.log_interval == 0
        logging = self.fh is not None and on_log_step
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
        if self.atoms.cell.rank == 3:
            res.volume = np.array(r["V"])
        if self.stress:
            res.pressure_gpa = np.array(r["P"])
        if self.fh is not None and self.fh is not sys.stdout:
            self.fh.close()
        elif self.fh is not None:
            self.fh.flush()
        self.fh = None


def run_md(atoms, calc=None, *, ensemble: str = "nve", temperature: float = 300.0,
           timestep: float = 1.0, steps: int = 1000, pressure: float = 0.0, friction: float = 0.01,
           tdamp: float | None = None, pdamp: float | None = None, barostat: str = "isotropic",
           init_velocities: bool = True, seed=None, zero_rotation: bool | None = None,
           trajectory=None, traj_interval: int = 10, logfile=None, log_interval: int = 10,
           progress: bool = False, observers=(), summary_stream=None) -> MDResult:
    """Run ``steps`` steps of MD on ``atoms`` (modified in place) and return an :class:`MDResult`.

    ``calc``: calculator to attach (default: the one on ``atoms``). ``trajectory``: ``.traj`` or
    ``.extxyz``/``.xyz`` path written every ``traj_interval`` steps (and at step 0). ``logfile``:
    path or ``"-"`` (stdout), a row every ``log_interval`` steps. ``observers``: extra
    ``(function, interval)`` pairs attached to the integrator. ``progress``: bar on stderr.

    Ctrl-C stops the run after the current step (a second Ctrl-C at once); a
    :class:`KeyboardInterrupt` raised anywhere in the loop (e.g. by an observer) also ends the
    run cleanly: files are flushed and closed, and the result has ``interrupted=True``.
    ``summary_stream``: where to print the summary at the end (None: do not print).
    """
    if calc is not None:
        atoms.calc = calc
    if atoms.calc is None:
        raise InputError("no calculator: pass calc= or attach one to the atoms")
    if steps < 0:
        raise InputError("steps must be >= 0")
    if timestep <= 0:
        raise InputError("the time step must be positive")
    if init_velocities:
        initialize_velocities(atoms, temperature, seed=seed, zero_rotation=zero_rotation)
    dyn = make_integrator(atoms, ensemble, timestep, temperature, pressure, friction, tdamp, pdamp,
                          barostat, seed)
    stress = has_stress(atoms.calc, atoms) and bool(all(atoms.pbc))
    result = MDResult(atoms=atoms, ensemble=ensemble.lower(), timestep_fs=timestep, steps_requested=steps,
                      trajectory=None if trajectory is None else os.fspath(trajectory),
                      logfile=None if logfile is None else os.fspath(logfile))
    recorder = _Recorder(atoms, dyn, result, result.logfile, log_interval, stress)
    writer = None
    bar = ProgressBar(steps, label=ensemble.upper(), enabled=progress)
    try:
        if trajectory is not None:
            writer = FrameWriter(trajectory, atoms)
            dyn.attach(writer.write, interval=max(1, int(traj_interval)))
        dyn.attach(recorder, interval=1)
        for fn, interval in observers:
            dyn.attach(fn, interval=interval)
        t0 = time.perf_counter()
        with InterruptGuard() as guard:
            try:
                for _ in dyn.irun(steps):
                    result.steps = dyn.nsteps
                    bar.update(dyn.nsteps)
                    guard.check()
            except KeyboardInterrupt:
                result.interrupted = True
                result.steps = dyn.nsteps
        result.wall_time = time.perf_counter() - t0
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            result.trajectory_frames = writer.count
        recorder.finish()
    if summary_stream is not None:
        print(result.summary(), file=summary_stream)
        summary_stream.flush()
    return result
