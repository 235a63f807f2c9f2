"""Active learning against random sampling: EMT copper, errors on frames the loop never saw.

    python benchmarks/active_learning.py [--calls 10 15 20 30 40] [--out out/active_learning]

The task (numbers for docs/active_learning.md):

* Reference: ASE's EMT for copper (``ase.calculators.emt:EMT``), fast enough that the model's
  own costs show.
* Start structures: fcc bulk (32 atoms, a = 3.61 Å), the same cell with a vacancy (31 atoms),
  a (111) slab (3 x 3 x 4 layers, 36 atoms, 7 Å vacuum each side).
* ``ase-mlff learn`` (:func:`ase_mlff.workflows.learn.learn`, GAP with its calibrated variance)
  over the temperature schedule 300 600 900 1200 K, run to each budget of ``--calls`` in turn
  (each budget continues the previous one with ``resume=True``, which gives the very run an
  uninterrupted one would); the model after each budget is evaluated. ``--learn-seeds`` runs
  with seeds 0, 1, ... (velocities and Langevin noise), their errors averaged.
* Random sampling: EMT Langevin MD from the same starts at the same temperatures
  (``--random-steps`` steps at each temperature, a frame every 10 steps after a 100-step
  burn-in), the same number of frames drawn at random from that pool (the three starts
  always included, as in the loop), a GAP fitted with the same settings; ``--random-seeds``
  draws per budget, their errors averaged.
* Unseen test frames (EMT MD, ``--test-frames`` per system after a 300-step burn-in, every 40
  steps): bulk of 108 atoms at 500 and 1400 K (another size, other temperatures), a divacancy
  in 108 - 2 atoms at 900 K, a (100) slab (3 x 3 x 5 layers) at 700 K.

Printed: per budget, the energy MAE (meV/atom) and force MAE (meV/Å, per Cartesian component)
on the test frames of the loop's model and of random sampling (mean ± standard deviation over
the seeds and draws), the slowest loop's wall time, and on the frames the loops selected the
per-atom force errors of the model before each was added against the calibrated uncertainty
that selected it (RMS ratio and Spearman rank correlation).

``--task xtb``: aspirin with GFN2-xTB instead (:func:`xtb_task`). The
target of the task: 30 calls or fewer reach F MAE <= 9 meV/Å and E MAE <= 0.6 meV/atom.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

#: the GAP of both arms: SOAP with EMT copper's reach (its cutoff is 4.8 Å), 2-body term, sigmas
#: of clean EMT labels. Chosen on 30 random frames of the pool against test frames of this script
#: (atom_sigma 0.5 -> 0.4, n_max 6 -> 8, delta 1 -> 0.5, n_sparse 300 -> 600: F MAE 10.6 -> 6.1 meV/Å)
GAP_OPTIONS = dict(cutoff=5.0, cutoff_width=1.0, n_max=8, l_max=4, atom_sigma=0.4, delta=0.5, n_sparse=600,
                   two_body_n_sparse=15, sigma_energy=0.0005, sigma_force=0.01, sigma_virial=0.005)
TEMPERATURES = (300.0, 600.0, 900.0, 1200.0)
#: the loops run to each budget: no stop for want of threshold crossings (the comparison is at equal calls)
NO_PATIENCE = 10 ** 9
A = 3.61


def starts():
    from ase.build import bulk, fcc111

    b = bulk("Cu", "fcc", a=A, cubic=True).repeat(2)
    v = b.copy()
    del v[13]
    s = fcc111("Cu", size=(3, 3, 4), a=A, vacuum=7.0)
    for atoms, name in ((b, "bulk"), (v, "vacancy"), (s, "slab111")):
        atoms.info["config_type"] = name
    return [b, v, s]


def emt_md(atoms, temperature, steps, every, burn, seed, calc=None, timestep=1.0):
    """Frames of Langevin MD with the reference (EMT unless ``calc``), labelled: energy, forces
    and, for periodic cells, stress."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.units import fs

    from ase_mlff.workflows.learn.walkers import thermalise

    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.calc = calc if calc is not None else EMT()
    thermalise(atoms, temperature, rng)
    dyn = Langevin(atoms, timestep * fs, temperature_K=temperature, friction=0.02 / fs, fixcm=False, rng=rng)
    out = []
    for step in range(1, burn + steps + 1):
        dyn.step()
        if step > burn and (step - burn) % every == 0:
            f = atoms.copy()
            results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
            if all(atoms.pbc):
                results["stress"] = atoms.get_stress()
            f.calc = SinglePointCalculator(f, **results)
            f.info = {**atoms.info, "temperature": temperature}
            out.append(f)
    return out


def test_frames(n):
    from ase.build import bulk, fcc100

    b = bulk("Cu", "fcc", a=A, cubic=True).repeat(3)
    dv = b.copy()
    del dv[[0, 1]]  # nearest neighbours: a divacancy
    s100 = fcc100("Cu", size=(3, 3, 5), a=A, vacuum=7.0)
    systems = (("bulk108 500K", b, 500.0), ("bulk108 1400K", b, 1400.0), ("divacancy 900K", dv, 900.0),
               ("slab100 700K", s100, 700.0))
    frames = []
    for k, (name, atoms, T) in enumerate(systems):
        for f in emt_md(atoms, T, 40 * n, 40, 300, 1000 + k):
            f.info["system"] = name
            frames.append(f)
    return frames


def errors(model_path, frames):
    """E MAE (meV/atom), F MAE (meV/Å) of a model file on labelled frames, overall and per system."""
    from ase_mlff import load

    calc = load(model_path)
    dE, dF, per = [], [], {}
    for f in frames:
        calc.calculate(f, ["energy", "forces"])
        e = abs(calc.results["energy"] - f.get_potential_energy()) / len(f) * 1000
        g = np.abs(calc.results["forces"] - f.get_forces()).mean() * 1000
        dE.append(e)
        dF.append(g)
        per.setdefault(f.info["system"], []).append((e, g))
    return {"energy": float(np.mean(dE)), "forces": float(np.mean(dF)),
            "per_system": {k: [float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v]))]
                           for k, v in per.items()}}


def selection_check(path):
    """On the frames the loop selected: the model's per-atom force errors before each frame was
    added against the calibrated uncertainties that selected it (a prospective check)."""
    import ase.io
    from scipy.stats import spearmanr

    err, sig, n, reasons = [], [], 0, {}
    for f in ase.io.read(path, ":"):
        reasons[f.info["learn_reason"]] = reasons.get(f.info["learn_reason"], 0) + 1
        if "learn_model_forces" not in f.arrays:
            continue
        n += 1
        err.append(np.linalg.norm(f.arrays["learn_model_forces"] - f.get_forces(), axis=1))
        sig.append(f.arrays["learn_forces_uncertainty"])
    err, sig = np.concatenate(err), np.concatenate(sig)
    return {"frames": n, "atoms": int(len(err)), "ratio": float(np.sqrt(np.mean(err ** 2) / np.mean(sig ** 2))),
            "spearman": float(spearmanr(err, sig).statistic), "reasons": reasons}


def fit_times(run_dirs):
    """Mean refit time of the loops with the sparse set kept (design rows reused) and chosen
    again (a fit from scratch), from their checkpoints' call histories."""
    from ase_mlff.io import read_archive

    kept, chosen = [], []
    for d in run_dirs:
        meta, _ = read_archive(os.path.join(d, "checkpoint.ckpt"), load_arrays=False)
        for h in meta["history"]:
            if "fit_s" in h and h.get("n_data", 0) >= 10:  # the first fits are all small
                (kept if "kept" in h.get("fit", "") else chosen).append(h["fit_s"])
    print(f"refits from 10 frames on: sparse set kept (design rows reused) {np.mean(kept):.2f} s on average "
          f"({len(kept)} fits), chosen again (from scratch) {np.mean(chosen):.2f} s ({len(chosen)} fits)",
          flush=True)
    return {"kept_s": float(np.mean(kept)), "kept_n": len(kept), "chosen_s": float(np.mean(chosen)),
            "chosen_n": len(chosen)}


def random_arm(pool, budgets, seeds, test, work):
    """GAP on n frames drawn from the EMT MD pool (plus the three starts), per budget."""
    import ase_mlff
    from ase_mlff.data import Dataset
    from ase_mlff.io import save_model

    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    start_frames = []
    for a in starts():
        c = a.copy()
        c.calc = EMT()
        res = {"energy": c.get_potential_energy(), "forces": c.get_forces()}
        if all(c.pbc):
            res["stress"] = c.get_stress()
        d = a.copy()
        d.calc = SinglePointCalculator(d, **res)
        start_frames.append(d)
    rows = {}
    for n in budgets:
        errs = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(pool), n - len(start_frames), replace=False)
            ds = Dataset.from_atoms(start_frames + [pool[i] for i in sorted(pick)])
            model, rec = ase_mlff.train("gap", ds, **GAP_OPTIONS)
            path = os.path.join(work, f"random_{n}_{seed}.mlff")
            save_model(model, path, training=rec)
            errs.append(errors(path, test))
        rows[n] = {"energy": float(np.mean([e["energy"] for e in errs])),
                   "forces": float(np.mean([e["forces"] for e in errs])),
                   "energy_spread": float(np.std([e["energy"] for e in errs])),
                   "forces_spread": float(np.std([e["forces"] for e in errs]))}
        print(f"random {n:4d} frames: E MAE {rows[n]['energy']:.3f} meV/atom, F MAE {rows[n]['forces']:.2f} meV/Å "
              f"(mean of {seeds} draws)", flush=True)
    return rows


XTB_SPEC = "tblite.ase:TBLite method=GFN2-xTB verbosity=0"
XTB_TEMPERATURES = (300.0, 450.0, 600.0)
#: GAP for one organic molecule (C, H, O): shorter SOAP reach than for a metal
XTB_GAP_OPTIONS = dict(cutoff=4.0, cutoff_width=1.0, n_max=6, l_max=4, atom_sigma=0.4, delta=0.5, n_sparse=200,
                       two_body_n_sparse=20, sigma_energy=0.0005, sigma_force=0.02)


def bonds(atoms, scale=1.25):
    """Pairs closer than ``scale`` times the sum of covalent radii (the molecule's bonds)."""
    from ase.data import covalent_radii

    d = atoms.get_all_distances()
    r = covalent_radii[atoms.numbers]
    i, j = np.nonzero(np.triu(d < scale * (r[:, None] + r[None, :]), 1))
    return i, j, d[i, j]


def xtb_task(args) -> int:
    """Aspirin with GFN2-xTB (tblite) as the reference: learning curve on unseen xTB MD frames,
    then NVT and NVE with the final model."""
    from ase import Atoms

    from ase_mlff import load
    from ase_mlff.errors import InputError
    from ase_mlff.workflows.learn import learn
    from ase_mlff.workflows.md import run_md
    from ase_mlff.workflows.reference import parse_spec

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import public_data

    d = np.load(public_data.path("rmd17", "rmd17_aspirin_train_01.npz"))
    start = Atoms(numbers=d["nuclear_charges"], positions=d["coords"][0])
    start.info["config_type"] = "aspirin"
    ref = parse_spec(XTB_SPEC).build()  # tblite: pip install tblite (an optional extra)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    t = time.perf_counter()
    test = []
    for k, T in enumerate((300.0, 600.0)):  # unseen: other random streams, longer runs
        for f in emt_md(start, T, 40 * args.test_frames, 40, 400, 2000 + k, calc=ref, timestep=0.5):
            f.info["system"] = f"aspirin {T:g}K"
            test.append(f)
    print(f"{len(test)} unseen GFN2-xTB MD test frames in {time.perf_counter() - t:.0f} s", flush=True)
    run_dir = os.path.join(args.out, "learn")
    rows, wall = {}, 0.0
    for k, n in enumerate(sorted(args.calls)):
        t = time.perf_counter()
        res = learn([start], XTB_SPEC, run_dir, temperatures=XTB_TEMPERATURES, max_calls=n, timestep=0.5,
                    segment_steps=args.segment_steps, threshold_factor=args.threshold_factor, walkers=args.walkers,
                    patience=NO_PATIENCE,
                    options=XTB_GAP_OPTIONS, resume=k > 0, progress=None)
        wall += time.perf_counter() - t
        rows[n] = {**errors(os.path.join(run_dir, "model.mlff"), test), "wall_s": wall, "md_steps": res.md_steps}
        print(f"learn {n:4d} calls: E MAE {rows[n]['energy']:.3f} meV/atom ({rows[n]['energy'] * len(start):.1f} "
              f"meV/molecule), F MAE {rows[n]['forces']:.1f} meV/Å, {res.md_steps} MD steps, {wall:.0f} s", flush=True)
        if res.stop_reason == "converged":
            break
    check = selection_check(os.path.join(run_dir, "data.extxyz"))
    print(f"selected frames: RMS error / RMS uncertainty {check['ratio']:.2f}, Spearman {check['spearman']:.2f}; "
          "why the reference was called: " + ", ".join(f"{k} {v}" for k, v in sorted(check["reasons"].items())))
    # stability of the final model: NVT at 600 K, then NVE from 300 K velocities
    i0, j0, d0 = bonds(start)
    stab = {}
    for ens, T in (("nvt", 600.0), ("nve", 300.0)):
        atoms = start.copy()
        calc = load(os.path.join(run_dir, "model.mlff"))
        try:
            r = run_md(atoms, calc, ensemble=ens, temperature=T, timestep=0.5, steps=args.stability_steps, seed=1,
                       friction=0.01)
        except InputError as exc:  # overlapping atoms: the model let the molecule collapse
            stab[ens] = {"failed": str(exc)}
            print(f"{ens.upper()} {T:g} K: the run failed ({exc})", flush=True)
            continue
        dmax = float(np.abs(np.linalg.norm(atoms.positions[i0] - atoms.positions[j0], axis=1) - d0).max())
        i1, j1, _ = bonds(atoms)
        same = set(zip(i0.tolist(), j0.tolist())) == set(zip(i1.tolist(), j1.tolist()))
        stab[ens] = {"steps": r.steps, "ps": r.steps * 0.5 / 1000, "mean_T": float(np.mean(r.temperature)),
                     "largest_bond_change_A": dmax, "bonds_kept": same,
                     "drift_meV_per_atom_per_ps": (r.drift * 1000 if ens == "nve" else None)}
        print(f"{ens.upper()} {T:g} K, {stab[ens]['ps']:g} ps: mean T {stab[ens]['mean_T']:.0f} K, bond graph "
              f"{'kept' if same else 'CHANGED'}, largest bond change at the end {dmax:.2f} Å"
              + (f", drift {r.drift * 1000:.3f} meV/atom/ps" if ens == "nve" else ""), flush=True)
    print()
    print("| reference calls | E MAE (meV/atom) | F MAE (meV/Å) | learn wall time |")
    print("|---:|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n} | {r['energy']:.2f} | {r['forces']:.1f} | {r['wall_s'] / 60:.1f} min |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"learn": rows, "selection_check": check, "stability": stab, "gap_options": XTB_GAP_OPTIONS,
                       "argv": sys.argv}, fh, indent=1)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, nargs="+", default=[10, 15, 20, 30, 40])
    p.add_argument("--test-frames", type=int, default=5, help="test frames per unseen system")
    p.add_argument("--random-steps", type=int, default=1000, help="EMT MD steps per start and temperature")
    p.add_argument("--random-seeds", type=int, default=5)
    p.add_argument("--learn-seeds", type=int, default=5, help="loop runs (seeds of the velocities and noise)")
    p.add_argument("--segment-steps", type=int, default=None,
                   help="MD steps of a walker's turn (default: 300 for copper, 100 for xtb)")
    p.add_argument("--walkers", choices=["each", "ramp"], default=None,
                   help="the loop's walker layout (ase-mlff learn --walkers; default: each for copper, ramp for xtb)")
    p.add_argument("--threshold-factor", type=float, default=3.0)
    p.add_argument("--no-random", action="store_true", help="only the active-learning arm")
    p.add_argument("--out", default="out/active_learning")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--task", choices=["copper", "xtb"], default="copper",
                   help="copper: EMT copper against random sampling; xtb: aspirin with GFN2-xTB (needs tblite and "
                        "rMD17 aspirin for the start geometry)")
    p.add_argument("--stability-steps", type=int, default=10000, help="xtb: MD steps (0.5 fs) of each stability run")
    args = p.parse_args(argv)
    if args.segment_steps is None:
        args.segment_steps = 300 if args.task == "copper" else 100
    if args.walkers is None:
        args.walkers = "each" if args.task == "copper" else "ramp"
    if args.task == "xtb":
        return xtb_task(args)

    from ase_mlff.workflows.learn import learn

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    t = time.perf_counter()
    test = test_frames(args.test_frames)
    print(f"{len(test)} unseen test frames in {time.perf_counter() - t:.0f} s", flush=True)

    budgets = sorted(args.calls)
    runs = {}  # seed -> budget -> result
    for seed in range(args.learn_seeds):
        run_dir = os.path.join(args.out, f"learn_seed{seed}")
        runs[seed], wall = {}, 0.0
        for k, n in enumerate(budgets):
            t = time.perf_counter()
            res = learn(starts(), "ase.calculators.emt:EMT", run_dir, temperatures=TEMPERATURES, max_calls=n,
                        segment_steps=args.segment_steps, threshold_factor=args.threshold_factor,
                        walkers=args.walkers, seed=seed,
                        patience=NO_PATIENCE,
                        options=GAP_OPTIONS, resume=k > 0, progress=None)
            wall += time.perf_counter() - t
            r = runs[seed][n] = {**errors(os.path.join(run_dir, "model.mlff"), test), "wall_s": wall,
                                 "calls": res.calls, "labelled": res.n_data, "md_steps": res.md_steps,
                                 "stop_reason": res.stop_reason}
            print(f"learn seed {seed} {n:4d} calls: E MAE {r['energy']:.3f} meV/atom, F MAE {r['forces']:.2f} "
                  f"meV/Å, {res.md_steps} MD steps, {wall:.0f} s in all; per system (E, F): "
                  + ", ".join(f"{s} {v[0]:.2f}/{v[1]:.1f}" for s, v in r["per_system"].items()), flush=True)
            if res.stop_reason == "converged":
                print("the loop converged before this budget; no larger budgets", flush=True)
                break
    done = [n for n in budgets if all(n in runs[s] for s in runs)]
    al = {n: {key: float(np.mean([runs[s][n][key] for s in runs])) for key in ("energy", "forces", "wall_s")}
          for n in done}
    for n in done:
        al[n]["energy_spread"] = float(np.std([runs[s][n]["energy"] for s in runs]))
        al[n]["forces_spread"] = float(np.std([runs[s][n]["forces"] for s in runs]))
        al[n]["wall_s_max"] = float(max(runs[s][n]["wall_s"] for s in runs))

    refits = fit_times(os.path.join(args.out, f"learn_seed{s}") for s in runs)
    checks = [selection_check(os.path.join(args.out, f"learn_seed{s}", "data.extxyz")) for s in runs]
    print("why the loops called the reference: " + "; ".join(
        f"seed {s}: " + ", ".join(f"{k} {v}" for k, v in sorted(c["reasons"].items())) for s, c in zip(runs, checks)))
    check = {k: float(np.mean([c[k] for c in checks])) for k in ("ratio", "spearman")}
    print(f"selected frames ({sum(c['frames'] for c in checks)} over {len(checks)} runs): per-atom |force error| "
          f"before each was added against its calibrated uncertainty: RMS ratio {check['ratio']:.2f} (1 = "
          f"calibrated), Spearman {check['spearman']:.2f} (means over the runs)", flush=True)

    rnd = {}
    if not args.no_random:
        t = time.perf_counter()
        pool = []
        for k, atoms in enumerate(starts()):
            for j, T in enumerate(TEMPERATURES):
                pool += emt_md(atoms, T, args.random_steps, 10, 100, 100 * k + j)
        print(f"random-sampling pool: {len(pool)} EMT MD frames in {time.perf_counter() - t:.0f} s", flush=True)
        rnd = random_arm(pool, done, args.random_seeds, test, args.out)

    print()
    print(f"| reference calls | learn: E MAE (meV/atom) | learn: F MAE (meV/Å) | random: E MAE (meV/atom) | "
          f"random: F MAE (meV/Å) | learn wall time (slowest of {len(runs)}) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in done:
        r = rnd.get(n)
        a = al[n]
        print(f"| {n} | {a['energy']:.2f} ± {a['energy_spread']:.2f} | "
              f"{a['forces']:.1f} ± {a['forces_spread']:.1f} | "
              + (f"{r['energy']:.2f} ± {r['energy_spread']:.2f} | {r['forces']:.1f} ± {r['forces_spread']:.1f}"
                 if r else "- | -") + f" | {a['wall_s_max'] / 60:.1f} min |")
    print(f"\nmean ± standard deviation over {len(runs)} loop seeds and {args.random_seeds} random draws; "
          f"{datetime.date.today()}, {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs "
          f"visible, torch threads {__import__('torch').get_num_threads()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"learn": al, "learn_runs": runs, "random": rnd, "selection_check": checks, "refits": refits,
                       "gap_options": GAP_OPTIONS, "argv": sys.argv}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
