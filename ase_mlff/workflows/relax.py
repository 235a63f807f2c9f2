"""Geometry (and cell) relaxation with ASE optimizers.

Positions only, or positions and cell through :class:`ase.filters.FrechetCellFilter`
(``cell=True``) under an external hydrostatic ``pressure`` in GPa. Optimizers: BFGS, FIRE
(and LBFGS, BFGSLineSearch). Convergence: the largest force (and, with the cell filter, the
largest generalised stress force ``volume * (stress - p)`` per atom count, as ASE defines it)
below ``fmax`` eV/Å.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from ..console import ProgressBar
from ..errors import InputError
from ._common import GPA, FrameWriter, InterruptGuard, refuse_existing, require_stress

OPTIMIZERS = ("BFGS", "FIRE", "LBFGS", "BFGSLineSearch")


@dataclass
class RelaxResult:
    atoms: object
    converged: bool
    steps: int
    energy: float
    initial_energy: float
    fmax: float
    initial_volume: float | None
    volume: float | None
    pressure_gpa: float | None
    wall_time: float
    interrupted: bool = False
    trajectory: str | None = None
    output: str | None = None

    def summary(self) -> str:
        state = "converged" if self.converged else ("INTERRUPTED" if self.interrupted else "NOT converged")
        n = len(self.atoms)
        lines = [
            f"relax   {state} after {self.steps} steps ({self.wall_time:.1f} s), max force {self.fmax:.4f} eV/Å",
            f"energy  {self.initial_energy:.6f} -> {self.energy:.6f} eV "
            f"({self.energy / n:.6f} eV/atom, change {1e3 * (self.energy - self.initial_energy) / n:+.3f} meV/atom)",
        ]
        if self.volume is not None and self.initial_volume:
            lines.append(f"volume  {self.initial_volume:.4f} -> {self.volume:.4f} Å^3 "
                         f"({100 * (self.volume / self.initial_volume - 1):+.2f}%), {self.volume / n:.4f} Å^3/atom")
            a, b, c, al, be, ga = self.atoms.cell.cellpar()
            lines.append(f"cell    a b c = {a:.4f} {b:.4f} {c:.4f} Å, angles {al:.2f} {be:.2f} {ga:.2f} deg")
        if self.pressure_gpa is not None:
            lines.append(f"stress  pressure {self.pressure_gpa:.4f} GPa")
        if self.trajectory:
            lines.append(f"written {self.trajectory}")
        if self.output:
            lines.append(f"written {self.output}")
        return "\n".join(lines)


def _optimizer_class(name: str):
    import ase.optimize as opt

    for cand in OPTIMIZERS:
        if cand.lower() == name.lower():
            return getattr(opt, cand)
    raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def relax(atoms, calc=None, *, optimizer: str = "BFGS", fmax: float = 0.01, steps: int = 500,
          cell: bool = False, pressure: float = 0.0, hydrostatic: bool = False,
          trajectory=None, output=None, logfile=None, progress: bool = False, overwrite: bool = False,
          summary_stream=None) -> RelaxResult:
    """Relax ``atoms`` in place; ``cell=True`` relaxes the cell too (FrechetCellFilter) at
    ``pressure`` GPa (``hydrostatic``: keep the cell shape). ``trajectory``: .traj/.extxyz of
    every step; ``output``: the relaxed structure (any format ase.io.write knows). Existing
    ``trajectory``/``output``/``logfile`` files are replaced only with ``overwrite=True``
    (checked before the relaxation starts)."""
    if calc is not None:
        atoms.calc = calc
    if atoms.calc is None:
        raise InputError("no calculator: pass calc= or attach one to the atoms")
    if not overwrite:
        refuse_existing([trajectory, output, None if logfile in (None, "-") or not isinstance(logfile, (str, os.PathLike))
                         else logfile], "pass overwrite=True (ase-mlff relax: --overwrite) to replace them")
    target = atoms
    if cell:
        from ase.filters import FrechetCellFilter

        require_stress(atoms.calc, atoms, "cell relaxation")
        target = FrechetCellFilter(atoms, scalar_pressure=pressure * GPA, hydrostatic_strain=hydrostatic)
    elif pressure:
        raise InputError("--pressure needs a cell relaxation (cell=True / --cell)")
    periodic = atoms.cell.rank == 3
    e0 = atoms.get_potential_energy()
    v0 = atoms.get_volume() if periodic else None
    cls = _optimizer_class(optimizer)
    opt = cls(target, logfile=logfile)
    writer = FrameWriter(trajectory, atoms) if trajectory is not None else None
    if writer is not None:
        opt.attach(writer.write, interval=1)
    bar = ProgressBar(steps, label="relax", enabled=progress)
    interrupted = False
    converged = False
    t0 = time.perf_counter()
    try:
        with InterruptGuard() as guard:
            try:
                for converged in opt.irun(fmax=fmax, steps=steps):
                    bar.update(opt.nsteps)
                    guard.check()
            except KeyboardInterrupt:
                interrupted = True
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - t0
    forces = target.get_forces()
    fnow = float(np.sqrt((forces ** 2).sum(axis=1)).max()) if len(forces) else 0.0
    pgpa = None
    if "stress" in atoms.calc.implemented_properties and periodic and all(atoms.pbc):
        pgpa = float(-atoms.get_stress()[:3].mean() / GPA)
    out = None
    if output is not None:
        import ase.io

        out = os.fspath(output)
        if os.path.dirname(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)
        ase.io.write(out, atoms)
    result = RelaxResult(atoms=atoms, converged=bool(converged),
                         steps=opt.nsteps, energy=atoms.get_potential_energy(), initial_energy=e0,
                         fmax=fnow, initial_volume=v0, volume=atoms.get_volume() if periodic else None,
                         pressure_gpa=pgpa, wall_time=wall, interrupted=interrupted,
                         trajectory=None if trajectory is None else os.fspath(trajectory), output=out)
    if summary_stream is not None:
        print(result.summary(), file=summary_stream)
    return result
