"""Harmonic phonons with phonopy: finite displacements or the model's analytic Hessian.

Two ways to the supercell force constants, both feeding the same phonopy object:

* ``method="displacement"`` (default): phonopy's symmetry-reduced displacements of
  ``displacement`` Å; the forces of all displaced supercells are evaluated in batches
  (:meth:`MLFFCalculator.evaluate_batch` for local models). The forces of the undisplaced
  supercell are subtracted (they are zero in an exact equilibrium structure; subtracting them
  removes the residual of a not-quite-relaxed one to first order).
* ``method="hessian"``: the analytic second derivatives of the model energy for the
  supercell (:meth:`MLFFCalculator.get_hessian`), reshaped into phonopy's force constants
  ``fc[i, j, a, b] = d2E / du_ia du_jb`` (eV/Å²). No displacement amplitude, no
  finite-difference error; it costs one backward pass per supercell degree of freedom.

Band path: phonopy's ``auto_band_structure`` needs seekpath, which ase-mlff does not
depend on; the path is instead ASE's standard path for the Bravais lattice of the primitive
cell (:meth:`ase.cell.Cell.bandpath`, Setyawan-Curtarolo conventions), or the ``path`` you
give (ASE notation, e.g. ``"GXWKGLUWLK,UX"``). Frequencies are in THz.

Files written to ``outdir``: ``phonopy_params.yaml`` (structure, supercell matrix, force
constants: reload with ``phonopy.load``), ``band.yaml``, ``total_dos.dat`` and, with
``plot=True``, ``phonons.png`` (band structure and DOS). Existing files are not replaced
unless ``overwrite=True`` (checked before any work).

Harmonic phonons are only meaningful at a stress-free equilibrium: when the model gives a
stress and the input cell is under more than ``stress_warning`` GPa (largest absolute
component of the stress tensor), the summary warns and suggests ``ase-mlff relax --cell``.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ._common import GPA, evaluate_images, has_stress, refuse_existing

#: warn above this largest absolute stress component of the input cell, GPa
STRESS_WARNING_GPA = 1.0

METHODS = ("displacement", "hessian")


def supercell_matrix(value) -> np.ndarray:
    """3x3 integer supercell matrix from an int, 3 ints (diagonal) or 9 ints."""
    a = np.atleast_1d(np.asarray(value, dtype=int))
    if a.size == 1:
        return np.eye(3, dtype=int) * int(a[0])
    if a.size == 3:
        return np.diag(a)
    if a.size == 9:
        return a.reshape(3, 3)
    raise InputError(f"supercell: give 1, 3 or 9 integers, got {a.size}")


def to_phonopy_atoms(atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses())


def to_ase_atoms(patoms):
    from ase import Atoms

    return Atoms(numbers=patoms.numbers, cell=patoms.cell, scaled_positions=patoms.scaled_positions,
                 pbc=True)


def hessian_force_constants(calc, supercell) -> np.ndarray:
    """phonopy force constants (N, N, 3, 3) in eV/Å² from the analytic Hessian of ``supercell``."""
    hess = calc.get_hessian(supercell)
    n = len(supercell)
    return np.ascontiguousarray(hess.reshape(n, 3, n, 3).transpose(0, 2, 1, 3))


def band_path(cell, path: str | None = None, npoints: int = 51):
    """q-point segments (reduced coordinates of ``cell``'s reciprocal lattice), connections
    and labels for phonopy, from ASE's special points of the cell's Bravais lattice."""
    from ase.cell import Cell
    from ase.dft.kpoints import parse_path_string

    bp = Cell(np.asarray(cell)).bandpath(path, npoints=0)
    special = bp.special_points
    pieces = parse_path_string(path or bp.path)
    segments, connections, labels = [], [], []
    for piece in pieces:
        for name in piece:
            if name not in special:
                raise InputError(f"band path: unknown special point {name!r} for this lattice "
                                 f"(known: {', '.join(sorted(special))})")
        if len(piece) < 2:
            continue
        for k, (a, b) in enumerate(zip(piece[:-1], piece[1:])):
            segments.append(np.linspace(special[a], special[b], npoints))
            connections.append(k < len(piece) - 2)
        labels.extend(r"$\Gamma$" if p == "G" else p for p in piece)
    if not segments:
        raise InputError(f"band path {path!r} has no segment")
    return segments, connections, labels


@dataclass
class PhononResult:
    phonopy: object
    method: str
    n_supercell_atoms: int
    n_evaluations: int
    wall_time: float
    distances: list = field(default_factory=list)
    frequencies: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    connections: list = field(default_factory=list)
    dos_frequencies: np.ndarray | None = None
    dos: np.ndarray | None = None
    files: list = field(default_factory=list)
    #: stress of the input cell (Voigt xx yy zz yz xz xy, GPa, ASE sign); None without model stress
    stress_gpa: np.ndarray | None = None
    stress_warning: float = STRESS_WARNING_GPA

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.frequencies and self.min_frequency < -0.05:
            out.append("imaginary modes (negative frequencies below -0.05 THz): the structure is "
                       "not a minimum, or the supercell is too small; relax it first")
        if self.stress_gpa is not None:
            smax = float(np.abs(self.stress_gpa).max())
            if smax > self.stress_warning:
                p = float(-np.mean(self.stress_gpa[:3]))
                out.append(f"the input cell is under stress (max |stress| {smax:.2f} GPa, more than "
                           f"{self.stress_warning:g} GPa; pressure {p:+.2f} GPa): these are the phonons of a strained crystal; relax the "
                           "cell first (ase-mlff relax --cell)")
        return out

    @property
    def min_frequency(self) -> float:
        return float(min(f.min() for f in self.frequencies)) if self.frequencies else float("nan")

    @property
    def max_frequency(self) -> float:
        return float(max(f.max() for f in self.frequencies)) if self.frequencies else float("nan")

    def frequencies_at(self, q) -> np.ndarray:
        """Frequencies (THz) at reduced q-point ``q`` of the primitive cell."""
        self.phonopy.run_qpoints([np.asarray(q, dtype=float)])
        return np.asarray(self.phonopy.qpoints.frequencies[0])

    def summary(self) -> str:
        ph = self.phonopy
        how = ("analytic Hessian" if self.method == "hessian"
               else f"{self.n_evaluations} displaced supercell(s)")
        lines = [
            f"phonons {len(ph.primitive)}-atom primitive cell, {self.n_supercell_atoms}-atom supercell, "
            f"force constants from {how} ({self.wall_time:.1f} s)",
        ]
        if self.frequencies:
            lines.append(f"bands   {self.min_frequency:.3f} .. {self.max_frequency:.3f} THz along "
                         f"{' '.join(l.replace(chr(36), '').replace(chr(92), '') for l in self.labels)}")
        if self.stress_gpa is not None:
            lines.append(f"stress  input cell: pressure {-np.mean(self.stress_gpa[:3]):+.3f} GPa, "
                         f"max |stress| {np.abs(self.stress_gpa).max():.3f} GPa")
        for text in self.warnings:
            lines.append(f"warning {text}")
        g = self.frequencies_at([0, 0, 0])
        lines.append(f"Gamma   {' '.join(f'{x:.3f}' for x in g)} THz")
        for name in self.files:
            lines.append(f"written {name}")
        return "\n".join(lines)


def phonons(atoms, calc, *, supercell=3, method: str = "displacement", displacement: float = 0.01,
            primitive="auto", path: str | None = None, npoints: int = 51, mesh=20,
            outdir=None, plot: bool = True, batch_size: int = 8, symmetrize: bool = False,
            overwrite: bool = False, stress_warning: float = STRESS_WARNING_GPA,
            summary_stream=None) -> PhononResult:
    """Phonon band structure and DOS of the periodic ``atoms`` with ``calc``.

    ``supercell``: int, 3 ints or 9 ints. ``method``: ``"displacement"`` or ``"hessian"``.
    ``displacement``: amplitude in Å. ``primitive``: phonopy's ``primitive_matrix``
    (``"auto"``: found by symmetry). ``mesh``: q-mesh for the DOS (int or 3 ints).
    ``outdir``: where to write the files (None: write nothing; existing files are kept and
    :class:`InputError` raised unless ``overwrite=True``). ``stress_warning``: GPa.
    """
    with warnings.catch_warnings():
        # phonopy's own deprecation notices are about its internals, not about what the user
        # passed; nothing a user of this workflow can act on
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"phonopy(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"phonopy(\.|$)")
        return _phonons(atoms, calc, supercell=supercell, method=method, displacement=displacement,
                        primitive=primitive, path=path, npoints=npoints, mesh=mesh, outdir=outdir, plot=plot,
                        batch_size=batch_size, symmetrize=symmetrize, overwrite=overwrite,
                        stress_warning=stress_warning, summary_stream=summary_stream)


def _phonons(atoms, calc, *, supercell, method, displacement, primitive, path, npoints, mesh, outdir, plot,
             batch_size, symmetrize, overwrite, stress_warning, summary_stream) -> PhononResult:
    from phonopy import Phonopy

    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not all(atoms.pbc) or atoms.cell.rank != 3:
        raise InputError("phonons need a structure periodic in all three directions")
    if not calc.model.periodic:
        raise InputError(f"this {calc.model.family} model describes an isolated molecule, not a crystal")
    if outdir is not None and not overwrite:
        names = ["phonopy_params.yaml", "band.yaml" if npoints else None, "total_dos.dat" if mesh else None,
                 "phonons.png" if plot and (npoints or mesh) else None]
        refuse_existing([os.path.join(os.fspath(outdir), n) for n in names if n],
                        "pass overwrite=True (ase-mlff phonons: --overwrite) to replace them")
    stress = None
    if has_stress(calc, atoms):
        probe = atoms.copy()
        probe.calc = calc
        stress = np.asarray(probe.get_stress(voigt=True)) / GPA
    t0 = time.perf_counter()
    ph = Phonopy(to_phonopy_atoms(atoms), supercell_matrix=supercell_matrix(supercell),
                 primitive_matrix=primitive)
    sc = to_ase_atoms(ph.supercell)
    if method == "hessian":
        ph.force_constants = hessian_force_constants(calc, sc)
        n_eval = 1
    else:
        if displacement <= 0:
            raise InputError("the displacement amplitude must be positive")
        ph.generate_displacements(distance=displacement)
        images = [sc] + [to_ase_atoms(s) for s in ph.supercells_with_displacements]
        results = evaluate_images(calc, images, stress=False, batch_size=batch_size)
        f0 = results[0]["forces"]
        ph.forces = np.array([r["forces"] - f0 for r in results[1:]])
        ph.produce_force_constants(show_drift=False)
        n_eval = len(images)
    if symmetrize:
        ph.symmetrize_force_constants(show_drift=False)
    res = PhononResult(phonopy=ph, method=method, n_supercell_atoms=len(sc), n_evaluations=n_eval,
                       wall_time=0.0, stress_gpa=stress, stress_warning=stress_warning)
    if npoints:
        segments, connections, labels = band_path(ph.primitive.cell, path, npoints)
        ph.run_band_structure(segments, path_connections=connections, labels=labels)
        bs = ph.band_structure
        res.distances = [np.asarray(d) for d in bs.distances]
        res.frequencies = [np.asarray(f) for f in bs.frequencies]
        res.labels, res.connections = labels, connections
    if mesh:
        mesh = np.atleast_1d(np.asarray(mesh, dtype=int))
        ph.run_mesh([int(mesh[0])] * 3 if mesh.size == 1 else mesh.tolist(), is_gamma_center=True)
        ph.run_total_dos()
        dos = ph.total_dos
        res.dos_frequencies, res.dos = np.asarray(dos.frequency_points), np.asarray(dos.dos)
    res.wall_time = time.perf_counter() - t0
    if outdir is not None:
        outdir = os.fspath(outdir)
        os.makedirs(outdir, exist_ok=True)
        name = os.path.join(outdir, "phonopy_params.yaml")
        ph.save(name, settings={"force_constants": True})
        res.files.append(name)
        if npoints:
            name = os.path.join(outdir, "band.yaml")
            ph.write_yaml_band_structure(filename=name)
            res.files.append(name)
        if mesh:
            name = os.path.join(outdir, "total_dos.dat")
            ph.write_total_dos(filename=name)
            res.files.append(name)
        if plot and (npoints or mesh):
            from .plotting import plot_phonons

            name = os.path.join(outdir, "phonons.png")
            plot_phonons(res, name, title=atoms.get_chemical_formula())
            res.files.append(name)
    if summary_stream is not None:
        print(res.summary(), file=summary_stream)
    return res
