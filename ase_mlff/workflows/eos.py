"""Equation of state: energy against volume, fitted with ASE's Birch-Murnaghan form.

The cell is scaled isotropically (atoms follow: fractional coordinates fixed) over
``volumes`` given as fractions of the input volume (default 0.90..1.10, 11 points); the
energies of all scaled cells are evaluated in batches for local models. Internal
coordinates are not relaxed: right for crystals whose atoms sit on symmetry-fixed sites
(fcc, bcc, diamond...); relax the others per volume yourself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from ase import units

from ..errors import InputError
from ._common import evaluate_images

EOS_FORMS = ("birchmurnaghan", "murnaghan", "vinet", "sj", "taylor", "antonschmidt", "p3")


@dataclass
class EOSResult:
    volumes: np.ndarray
    energies: np.ndarray
    natoms: int
    v0: float
    e0: float
    bulk_modulus: float  # GPa
    form: str
    input_volume: float = float("nan")
    pressures_gpa: np.ndarray | None = None
    files: list = field(default_factory=list)
    eos: object = None

    def summary(self) -> str:
        n = self.natoms
        lines = [
            f"eos     {self.form} fit of {len(self.volumes)} points, V/V_input "
            f"{self.volumes.min() / self.input_volume:.3f}...{self.volumes.max() / self.input_volume:.3f}",
            f"V0      {self.v0:.4f} Å^3 ({self.v0 / n:.4f} Å^3/atom)",
            f"E0      {self.e0:.6f} eV ({self.e0 / n:.6f} eV/atom)",
            f"B       {self.bulk_modulus:.2f} GPa",
        ]
        if not (self.volumes.min() <= self.v0 <= self.volumes.max()):
            lines.append("warning V0 lies outside the sampled volumes: extrapolated; recentre the range")
        for name in self.files:
            lines.append(f"written {name}")
        return "\n".join(lines)


def equation_of_state(atoms, calc, *, volumes=(0.90, 1.10), npoints: int = 11, form: str = "birchmurnaghan",
                      outdir=None, plot: bool = True, batch_size: int = 8, summary_stream=None) -> EOSResult:
    """Scale ``atoms``' cell over ``volumes`` (min, max fraction of its volume, ``npoints``
    points; or an explicit array of fractions), evaluate, fit and optionally write
    ``eos.dat`` and ``eos.png`` into ``outdir``."""
    from ase.eos import EquationOfState

    if not all(atoms.pbc) or atoms.cell.rank != 3:
        raise InputError("an equation of state needs a structure periodic in all three directions")
    if form not in EOS_FORMS:
        raise InputError(f"EOS form must be one of {', '.join(EOS_FORMS)}, got {form!r}")
    fractions = np.asarray(volumes, dtype=float)
    if fractions.size == 2:
        if npoints < 5:
            raise InputError("an EOS fit needs at least 5 points")
        fractions = np.linspace(fractions[0], fractions[1], npoints)
    if fractions.size < 5 or np.any(fractions <= 0):
        raise InputError("give at least 5 positive volume fractions")
    images = []
    for f in fractions:
        a = atoms.copy()
        a.calc = None
        a.set_cell(atoms.cell.array * f ** (1.0 / 3.0), scale_atoms=True)
        images.append(a)
    stress = "stress" in calc.implemented_properties
    results = evaluate_images(calc, images, stress=stress or None, batch_size=batch_size)
    vols = np.array([a.get_volume() for a in images])
    energies = np.array([r["energy"] for r in results])
    pressures = None
    if stress:
        pressures = np.array([-np.mean(r["stress"][:3]) / units.GPa for r in results])
    eos = EquationOfState(vols, energies, eos=form)
    try:
        v0, e0, b = eos.fit()
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"the {form} fit failed ({exc}); widen or recentre the volume range") from None
    res = EOSResult(volumes=vols, energies=energies, natoms=len(atoms), v0=float(v0), e0=float(e0),
                    bulk_modulus=float(b / units.GPa), form=form,
                    input_volume=float(atoms.get_volume()), pressures_gpa=pressures, eos=eos)
    if outdir is not None:
        outdir = os.fspath(outdir)
        os.makedirs(outdir, exist_ok=True)
        name = os.path.join(outdir, "eos.dat")
        cols = [vols, energies] + ([pressures] if pressures is not None else [])
        header = "volume[Ang^3] energy[eV]" + (" pressure[GPa]" if pressures is not None else "")
        header += f"\n{form}: V0 = {res.v0:.6f} Ang^3, E0 = {res.e0:.8f} eV, B = {res.bulk_modulus:.4f} GPa"
        np.savetxt(name, np.column_stack(cols), header=header, fmt="%.10g")
        res.files.append(name)
        if plot:
            from .plotting import plot_eos

            name = os.path.join(outdir, "eos.png")
            plot_eos(res, name, title=atoms.get_chemical_formula())
            res.files.append(name)
    if summary_stream is not None:
        print(res.summary(), file=summary_stream)
    return res
