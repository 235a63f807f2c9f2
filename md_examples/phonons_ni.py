"""Phonons of bulk fcc nickel with the shipped MFF potential: band structure and DOS.

1. Relax the lattice constant of the primitive cell (cell relaxation at 0 GPa).
2. Force constants of a 4x4x4 supercell of the primitive cell (64 atoms) from phonopy's finite
   displacements, the forces evaluated by the calculator (batched).
3. The same force constants from the model's analytic Hessian: the two must agree.
4. Band structure along ASE's standard fcc path (Γ-X-W-K-Γ-L-U-W-L-K|U-X) and the DOS,
   written as phonopy files (phonopy_params.yaml, band.yaml, total_dos.dat) and a PNG.
   (Neutron scattering puts the top of the Ni spectrum near 9 THz.)

    python md_examples/phonons_ni.py --plots docs/images
    python md_examples/phonons_ni.py --quick      # 2x2x2 supercell (also: ASE_MLFF_QUICK=1)

Command line equivalent:

    ase-mlff phonons potentials/ni_mff.mlff ni_relaxed.extxyz -s 4 --outdir phonons
    ase-mlff phonons potentials/ni_mff.mlff ni_relaxed.extxyz -s 4 --hessian --outdir phonons_hessian
"""

import argparse
import os
import sys
import tempfile

import numpy as np
from ase.build import bulk

import ase_mlff
from ase_mlff.workflows import phonons, relax

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "potentials", "ni_mff.mlff")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("ASE_MLFF_QUICK") == "1")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--supercell", type=int, default=None, help="N for an NxNxN supercell (default 4, quick 2)")
    ap.add_argument("--outdir", default=None, help="phonopy files (default: a temporary directory)")
    ap.add_argument("--plots", default=None, help="directory for phonons_ni.png")
    args = ap.parse_args(argv)
    if not os.path.exists(args.model):
        print(f"this example needs {os.path.relpath(args.model)} (the shipped Ni MFF potential)", file=sys.stderr)
        return 2
    n = args.supercell or (2 if args.quick else 4)
    outdir = args.outdir or tempfile.mkdtemp(prefix="phonons_ni_")
    calc = ase_mlff.load(args.model)

    # 1. equilibrium lattice constant of the model (phonons of a strained crystal would be off)
    ni = bulk("Ni", "fcc", a=3.52)
    r = relax(ni, calc, fmax=1e-4, steps=100, cell=True)
    a0 = ni.cell.cellpar()[0] * 2 ** 0.5
    print(f"relaxed a0 = {a0:.4f} Å, pressure {r.pressure_gpa:.4f} GPa")

    # 2. finite displacements (0.01 Å): one symmetry-distinct displacement for fcc
    fd = phonons(ni, calc, supercell=n, method="displacement", displacement=0.01, npoints=51, mesh=24,
                 outdir=outdir, plot=False)
    print(fd.summary())

    # 3. analytic Hessian of the same supercell
    an = phonons(ni, calc, supercell=n, method="hessian", npoints=51, mesh=24,
                 outdir=os.path.join(outdir, "hessian"), plot=False)
    print(an.summary())
    diff = max(np.abs(a - b).max() for a, b in zip(fd.frequencies, an.frequencies))
    print(f"check   largest band difference displacement vs Hessian: {1e3 * diff:.3f} mTHz "
          f"(of {fd.max_frequency:.3f} THz)")
    for name, q in (("X", [0.5, 0.0, 0.5]), ("L", [0.5, 0.5, 0.5])):
        print(f"        {name}: {' '.join(f'{f:.3f}' for f in fd.frequencies_at(q))} THz")

    if args.plots:
        from ase_mlff.workflows.plotting import plot_phonons

        print("written", plot_phonons(fd, os.path.join(args.plots, "phonons_ni.png"), title="Ni (MFF)"))
    if args.outdir is None:
        print(f"phonopy files in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
