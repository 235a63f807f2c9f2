"""NVT (Langevin) molecular dynamics of ethanol at 300 K with the shipped sGDML potential.

The thermostat brings the molecule to the target temperature from a cold start, then samples
it: the script prints the running temperature, its mean over the second half of the run
(which should be near 300 K; a 9-atom molecule fluctuates a lot) and where it wrote the
trajectory and the log.

    python md_examples/nvt_ethanol.py            # 2000 steps x 0.5 fs = 1 ps
    python md_examples/nvt_ethanol.py --quick    # 100 steps (also: ASE_MLFF_QUICK=1)
    python md_examples/nvt_ethanol.py --plots docs/images   # also write nvt_ethanol.png

The same run from the command line:

    ase-mlff md potentials/ethanol_sgdml.mlff potentials/ethanol_start.xyz -e nvt -T 300 -t 0.5 -n 2000
"""

import argparse
import os
import sys
import tempfile

from ase.io import read

import ase_mlff
from ase_mlff.workflows import initialize_velocities, run_md

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "potentials", "ethanol_sgdml.mlff")
START = os.path.join(HERE, "..", "potentials", "ethanol_start.xyz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("ASE_MLFF_QUICK") == "1",
                    help="short run (also ASE_MLFF_QUICK=1)")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--structure", default=START)
    ap.add_argument("--temperature", type=float, default=300.0, help="K")
    ap.add_argument("--friction", type=float, default=0.02, help="Langevin friction in 1/fs")
    ap.add_argument("--outdir", default=None, help="trajectory and log (default: a temporary directory)")
    ap.add_argument("--plots", default=None, help="directory for nvt_ethanol.png")
    args = ap.parse_args(argv)
    if not os.path.exists(args.model):
        print(f"this example needs {os.path.relpath(args.model)} (the shipped sGDML ethanol potential)",
              file=sys.stderr)
        return 2

    steps = 100 if args.quick else 2000
    outdir = args.outdir or tempfile.mkdtemp(prefix="nvt_ethanol_")
    os.makedirs(outdir, exist_ok=True)

    # 1. the model as an ASE calculator, the start geometry (no cell, no periodicity)
    calc = ase_mlff.load(args.model)
    atoms = read(args.structure)

    # 2. Langevin dynamics. Starting velocities: Maxwell-Boltzmann at 10 K (nearly cold) so that
    #    the thermostat visibly does the heating; zero total momentum and, since this is a
    #    molecule, zero angular momentum. H atoms need a 0.5 fs step.
    initialize_velocities(atoms, 10.0, seed=7)
    res = run_md(atoms, calc, ensemble="nvt", temperature=args.temperature, timestep=0.5, steps=steps,
                 friction=args.friction, init_velocities=False, seed=7,
                 trajectory=os.path.join(outdir, "nvt.traj"), traj_interval=20,
                 logfile=os.path.join(outdir, "nvt.log"), log_interval=20, progress=sys.stderr.isatty())

    # 3. what happened
    print(res.summary())
    half = res.temperature[len(res.temperature) // 2:]
    print(f"check   <T> over the second half = {half.mean():.0f} K (target {args.temperature:g} K; "
          f"a 9-atom molecule fluctuates by about +-{args.temperature * (2 / (3 * len(atoms))) ** 0.5:.0f} K)")
    if args.plots:
        from ase_mlff.workflows.plotting import plot_md

        print("written", plot_md(res, os.path.join(args.plots, "nvt_ethanol.png"),
                                 title=f"ethanol, Langevin NVT at {args.temperature:g} K (sGDML)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
