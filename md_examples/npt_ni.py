"""NPT molecular dynamics of bulk nickel with the shipped MFF potential (Ni, periodic, stress).

A 108-atom fcc Ni cell is equilibrated at 300 K with the Martyna-Tobias-Klein barostat and
Nose-Hoover chains (ase.md.nose_hoover_chain.IsotropicMTKNPT) at 0 GPa and at 10 GPa. The
script prints the mean volume per atom and lattice constant at each pressure: the cell must
shrink under pressure, by about P/B (B of Ni ~ 186 GPa, so ~5% in volume at 10 GPa).

    python md_examples/npt_ni.py             # 2 x 1500 steps x 2 fs
    python md_examples/npt_ni.py --quick     # 2 x 100 steps (also: ASE_MLFF_QUICK=1)

Command line equivalent (one pressure):

    ase-mlff md potentials/ni_mff.mlff ni.extxyz -e npt -T 300 -P 10 -t 2 -n 1500
"""

import argparse
import os
import sys
import tempfile

import numpy as np
from ase.build import bulk

import ase_mlff
from ase_mlff.workflows import run_md

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "potentials", "ni_mff.mlff")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("ASE_MLFF_QUICK") == "1")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--temperature", type=float, default=300.0, help="K")
    ap.add_argument("--pressures", type=float, nargs="+", default=[0.0, 10.0], help="GPa")
    ap.add_argument("--outdir", default=None)
    ap.add_argument("--plots", default=None, help="directory for npt_ni.png")
    args = ap.parse_args(argv)
    if not os.path.exists(args.model):
        print(f"this example needs {os.path.relpath(args.model)} (the shipped Ni MFF potential)", file=sys.stderr)
        return 2
    steps = 100 if args.quick else 1500
    outdir = args.outdir or tempfile.mkdtemp(prefix="npt_ni_")
    calc = ase_mlff.load(args.model)

    results = {}
    for p in args.pressures:
        # fcc Ni, conventional cubic cell 3x3x3 = 108 atoms, experimental lattice constant
        atoms = bulk("Ni", "fcc", a=3.52, cubic=True) * (3, 3, 3)
        # tdamp 100 fs, pdamp 500 fs: time constants of the thermostat and the barostat
        res = run_md(atoms, calc, ensemble="npt", temperature=args.temperature, pressure=p, timestep=2.0,
                     steps=steps, tdamp=100, pdamp=500, seed=1,
                     trajectory=os.path.join(outdir, f"npt_{p:g}GPa.traj"), traj_interval=25,
                     logfile=os.path.join(outdir, f"npt_{p:g}GPa.log"), log_interval=25,
                     progress=sys.stderr.isatty())
        print(f"--- P = {p:g} GPa")
        print(res.summary())
        results[p] = res

    print("\n  P/GPa   <V>/atom (Å^3)   a (Å)   <P> (GPa)   <T> (K)   [means over the second half]")
    for p, res in results.items():
        half = slice(len(res.volume) // 2, None)
        v = res.volume[half].mean() / res.natoms
        print(f"{p:7.1f}   {v:14.4f}   {(4 * v) ** (1 / 3):6.4f}   {np.nanmean(res.pressure_gpa[half]):9.3f}"
              f"   {res.temperature[half].mean():7.1f}")
    if len(results) >= 2:
        (p0, r0), (p1, r1) = list(results.items())[:2]
        v0, v1 = (r.volume[len(r.volume) // 2:].mean() for r in (r0, r1))
        print(f"check   V({p1:g} GPa)/V({p0:g} GPa) = {v1 / v0:.4f} (smaller than 1: the cell shrinks under pressure)")
    if args.plots:
        from ase_mlff.figures import figure, save

        fig = figure(6.0, 3.6)
        ax = fig.add_subplot()
        for p, res in results.items():
            ax.plot(res.time_ps, res.volume / res.natoms, lw=1.0, label=f"{p:g} GPa")
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("volume (Å³/atom)")
        ax.set_title(f"Ni, NPT (MTK) at {args.temperature:g} K, MFF potential", fontsize=10)
        ax.legend(frameon=False)
        print("written", save(fig, os.path.join(args.plots, "npt_ni.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
