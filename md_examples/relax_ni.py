"""Relaxation with the cell: the lattice constant of Ni and the vacancy formation energy (MFF).

1. A perfect fcc Ni cell, strained by 3%, is relaxed together with its cell
   (ase.filters.FrechetCellFilter, BFGS) at zero pressure: the equilibrium lattice constant.
2. One atom is removed from a 2x2x2 (32-atom) supercell of the relaxed crystal, the atoms
   around the vacancy are rattled, and positions and cell are relaxed again.
3. E_vac = E(N-1 atoms, relaxed) - (N-1)/N E(N atoms, perfect). (Experiments put it at
   about 1.6-1.8 eV; a 32-atom cell is small, so expect a rough value.)

    python md_examples/relax_ni.py            # fmax 0.005 eV/Å
    python md_examples/relax_ni.py --quick    # fmax 0.05 eV/Å (also: ASE_MLFF_QUICK=1)

Command line equivalent of step 1:

    ase-mlff relax potentials/ni_mff.mlff ni.extxyz --cell --fmax 0.005 -o ni_relaxed.extxyz
"""

import argparse
import os
import sys
import tempfile

from ase.build import bulk

import ase_mlff
from ase_mlff.workflows import relax

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "potentials", "ni_mff.mlff")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("ASE_MLFF_QUICK") == "1")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--optimizer", default="BFGS", choices=["BFGS", "FIRE"])
    ap.add_argument("--outdir", default=None)
    args = ap.parse_args(argv)
    if not os.path.exists(args.model):
        print(f"this example needs {os.path.relpath(args.model)} (the shipped Ni MFF potential)", file=sys.stderr)
        return 2
    fmax = 0.05 if args.quick else 0.005
    outdir = args.outdir or tempfile.mkdtemp(prefix="relax_ni_")
    calc = ase_mlff.load(args.model)

    # 1. the perfect crystal: conventional 4-atom cell, 3% too large, relaxed with its cell
    bulk_ni = bulk("Ni", "fcc", a=3.52 * 1.03, cubic=True)
    r1 = relax(bulk_ni, calc, optimizer=args.optimizer, fmax=fmax, steps=200, cell=True, pressure=0.0,
               trajectory=os.path.join(outdir, "bulk.traj"), output=os.path.join(outdir, "ni_relaxed.extxyz"))
    print("--- perfect crystal")
    print(r1.summary())
    a0 = bulk_ni.cell.cellpar()[0]
    e_atom = r1.energy / len(bulk_ni)
    print(f"result  a0 = {a0:.4f} Å (experiment 3.524 Å at room temperature), E = {e_atom:.4f} eV/atom")

    # 2. a vacancy in a 32-atom supercell of the relaxed crystal
    defect = bulk_ni * (2, 2, 2)
    n = len(defect)
    del defect[0]
    defect.rattle(0.02, seed=3)  # break the symmetry so the neighbours can relax
    r2 = relax(defect, calc, optimizer=args.optimizer, fmax=fmax, steps=300, cell=True, pressure=0.0,
               trajectory=os.path.join(outdir, "vacancy.traj"), output=os.path.join(outdir, "vacancy_relaxed.extxyz"))
    print("--- one vacancy in a 2x2x2 supercell")
    print(r2.summary())

    # 3. vacancy formation energy against the perfect crystal with the same number of atoms
    e_vac = r2.energy - (n - 1) * e_atom
    print(f"result  vacancy formation energy E_vac = {e_vac:.3f} eV ({n - 1} atoms, cell relaxed)")
    return 0 if (r1.converged and r2.converged) else 1


if __name__ == "__main__":
    sys.exit(main())
