"""Equation of state: energy against volume, fitted with ASE's Birch-Murnaghan form.

The cell is scaled isotropically (atoms follow: fractional coordinates fixed) over
``volumes`` given as fractions of the input volume (default 0.90..1.10, 11 points); the
energies of all scaled cells are evaluated in batches for local models. Internal
coordinates are not relaxed: right for crystals whose atoms sit on symmetry-fixed sites
(fcc, bcc, diamond...); relax the others per volume yourself.

Reported besides V0, E0 and B = V d2E/dV2 (GPa): the lattice at V0 - the input cell scaled
by (V0/V_input)^(1/3); for a cubic crystal its conventional lattice constant a0, otherwise the
cell lengths - and the RMS residual of the fit in meV/atom. a0 is the edge of the
conventional cubic cell of the structure's space group (spglib, tolerance 1e-3 Å), found
from the atoms and not from the cell alone: a primitive fcc cell, the conventional cube and
a 3x3x3 supercell of either all give the same a0 (the supercell's own cubic edge is not a
lattice constant). A structure whose symmetry is lower (a rattled cell, a defect that breaks
the cubic symmetry) gets its cell lengths instead. A warning is given when V0 lies in the outer 10% of
the sampled volume window (the fit is then poorly constrained on one side: recentre it).

Files in ``outdir`` are never replaced silently: if ``eos.dat`` or ``eos.png`` exist,
:class:`InputError` unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from ase import units

from ..errors import InputError
from ._common import evaluate_images, refuse_existing

#: V0 closer than this fraction of the window width to an end of the window: warn
EDGE_FRACTION = 0.10

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
    #: the input cell scaled isotropically to V0 (Å, rows are lattice vectors)
    cell0: np.ndarray | None = None
    #: conventional cubic lattice constant at V0 (Å); None for a structure that is not cubic
    a0: float | None = None
    #: space group of the structure (spglib) and, for a cubic one, atoms per conventional cell
    lattice: str = ""
    #: RMS of E_i - E_fit(V_i), eV/atom
    residual_rms: float = float("nan")

    @property
    def warnings(self) -> list[str]:
        out = []
        lo, hi = self.volumes.min(), self.volumes.max()
        if not (lo <= self.v0 <= hi):
            out.append("V0 lies outside the sampled volumes: extrapolated; recentre the range")
        elif (self.v0 - lo) < EDGE_FRACTION * (hi - lo) or (hi - self.v0) < EDGE_FRACTION * (hi - lo):
            out.append(f"V0 lies near the edge of the volume window ({self.v0 / self.input_volume:.3f} of the input "
                       f"volume, window {lo / self.input_volume:.3f}...{hi / self.input_volume:.3f}): the fit is "
                       "poorly constrained on one side; recentre the range on V0")
        return out

    def summary(self) -> str:
        n = self.natoms
        lines = [
            f"eos     {self.form} fit of {len(self.volumes)} points, V/V_input "
            f"{self.volumes.min() / self.input_volume:.3f}...{self.volumes.max() / self.input_volume:.3f}",
            f"V0      {self.v0:.4f} Å^3 ({self.v0 / n:.4f} Å^3/atom)",
            f"E0      {self.e0:.6f} eV ({self.e0 / n:.6f} eV/atom)",
            f"B       {self.bulk_modulus:.2f} GPa",
        ]
        if self.a0 is not None:
            lines.append(f"a0      {self.a0:.4f} Å (conventional cubic lattice constant at V0; space group "
                         f"{self.lattice})")
        elif self.cell0 is not None:
            a, b, c, al, be, ga = _cellpar(self.cell0)
            lines.append(f"cell    a b c = {a:.4f} {b:.4f} {c:.4f} Å at V0 (angles {al:.2f} {be:.2f} {ga:.2f} deg, "
                         "input cell scaled)")
        lines.append(f"fit     RMS residual {1e3 * self.residual_rms:.4f} meV/atom")
        for text in self.warnings:
            lines.append(f"warning {text}")
        for name in self.files:
            lines.append(f"written {name}")
        return "\n".join(lines)


def _cellpar(cell):
    from ase.cell import Cell

    return Cell(np.asarray(cell)).cellpar()


def _cubic_lattice_constant(atoms, cell) -> tuple[float | None, str]:
    """(a0, "space group (number), n atoms per conventional cell") when ``atoms`` with
    ``cell`` form a cubic crystal (space groups 195-230), else (None, space group or "")."""
    import spglib

    frac = atoms.get_scaled_positions(wrap=True)
    with warnings.catch_warnings():
        # spglib 2.5+ warns on every call about its future error handling; both styles of
        # "no symmetry found" (None, or SpglibError) mean the same here
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            data = spglib.get_symmetry_dataset((np.asarray(cell), frac, atoms.numbers), symprec=1e-3)
        except Exception:  # spglib.SpglibError where the new handling is on
            data = None
    if data is None:  # no symmetry found (spglib gives up): report the cell lengths
        return None, ""
    group = f"{data.international} (No. {data.number})"
    if 195 <= data.number <= 230:
        n_conv = len(data.std_types)
        return float(np.linalg.norm(data.std_lattice[0])), f"{group}, {n_conv} atoms per conventional cell"
    return None, group


def equation_of_state(atoms, calc, *, volumes=(0.90, 1.10), npoints: int = 11, form: str = "birchmurnaghan",
                      outdir=None, plot: bool = True, batch_size: int = 8, overwrite: bool = False,
                      summary_stream=None) -> EOSResult:
    """Scale ``atoms``' cell over ``volumes`` (min, max fraction of its volume, ``npoints``
    points; or an explicit array of fractions), evaluate, fit and optionally write
    ``eos.dat`` and ``eos.png`` into ``outdir`` (existing ones only with ``overwrite=True``)."""
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
    if outdir is not None and not overwrite:
        refuse_existing([os.path.join(os.fspath(outdir), n) for n in ("eos.dat", "eos.png" if plot else None) if n],
                        "pass overwrite=True (ase-mlff eos: --overwrite) to replace")
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
        with warnings.catch_warnings():
            # scipy's curve_fit warns about the covariance it estimates, which ase does not use;
            # a failed fit still raises, and a bad one shows in the residual and the edge warning
            from scipy.optimize import OptimizeWarning

            warnings.filterwarnings("ignore", category=OptimizeWarning)
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"(ase\.eos|scipy\.optimize)")
            # said again, with what to do, by EOSResult.warnings
            warnings.filterwarnings("ignore", message="The minimum volume of your fit is not in your volumes")
            v0, e0, b = eos.fit()
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"the {form} fit failed ({exc}); widen or recentre the volume range") from None
    cell0 = atoms.cell.array * (float(v0) / atoms.get_volume()) ** (1.0 / 3.0)
    a0, lattice = _cubic_lattice_constant(atoms, cell0)
    fit = eos.func(vols, *eos.eos_parameters)
    res = EOSResult(volumes=vols, energies=energies, natoms=len(atoms), v0=float(v0), e0=float(e0),
                    bulk_modulus=float(b / units.GPa), form=form,
                    input_volume=float(atoms.get_volume()), pressures_gpa=pressures, eos=eos,
                    cell0=cell0, a0=a0, lattice=lattice,
                    residual_rms=float(np.sqrt(np.mean((energies - fit) ** 2))) / len(atoms))
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
