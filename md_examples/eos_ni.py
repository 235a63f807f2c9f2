"""Equation of state of fcc nickel with the shipped MFF potential (Birch-Murnaghan fit).

The primitive cell is relaxed (cell filter), then scaled over ±10% in volume around that
equilibrium; all 15 energies are evaluated in one batched call, and ASE's Birch-Murnaghan fit gives the
equilibrium volume V0, energy E0 and bulk modulus B. (Experiment, room temperature:
a = 3.524 Å, V0 = 10.94 Å³/atom, B = 186 GPa, from Kittel's tables.)

    python md_examples/eos_ni.py --plots docs/images
    python md_examples/eos_ni.py --quick       # 7 volumes (also: ASE_MLFF_QUICK=1)

Command line equivalent:

    ase-mlff eos potentials/ni_mff.mlff ni.extxyz --range 0.9 1.1 --points 15
"""

import argparse
import os
import sys
import tempfile

from ase.build import bulk

import ase_mlff
from ase_mlff.workflows import equation_of_state, relax

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "potentials", "ni_mff.mlff")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("ASE_MLFF_QUICK") == "1")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--outdir", default=None, help="eos.dat and eos.png (default: a temporary directory)")
    ap.add_argument("--plots", default=None, help="directory for eos_ni.png")
    args = ap.parse_args(argv)
    if not os.path.exists(args.model):
        print(f"this example needs {os.path.relpath(args.model)} (the shipped Ni MFF potential)", file=sys.stderr)
        return 2
    outdir = args.outdir or tempfile.mkdtemp(prefix="eos_ni_")
    calc = ase_mlff.load(args.model)

    # primitive cell (1 atom), first relaxed with its cell so that the volume range is centred
    # on the model's own equilibrium (a fit needs the minimum inside the sampled range)
    ni = bulk("Ni", "fcc", a=3.524)
    relax(ni, calc, fmax=1e-3, steps=50, cell=True)
    res = equation_of_state(ni, calc, volumes=(0.90, 1.10), npoints=7 if args.quick else 15,
                            form="birchmurnaghan", outdir=outdir)
    print(res.summary())
    a0 = (4 * res.v0) ** (1 / 3)
    print(f"result  a0 = {a0:.4f} Å (experiment 3.524 Å), B = {res.bulk_modulus:.0f} GPa (experiment 186 GPa)")
    if args.plots:
        from ase_mlff.workflows.plotting import plot_eos

        print("written", plot_eos(res, os.path.join(args.plots, "eos_ni.png"), title="Ni (MFF)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
