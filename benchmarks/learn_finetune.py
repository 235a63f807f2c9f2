"""Committees of networks in ``ase-mlff learn``: fine-tuning the current committee against
refitting it from scratch, at equal reference calls (EMT copper, a BPNN committee of 3).

    python benchmarks/learn_finetune.py [--calls 20] [--seeds 0] [--out out/learn_finetune]

The task (numbers for docs/active_learning.md, section on committees):

* Reference: ASE's EMT for copper (``ase.calculators.emt:EMT``).
* Start structures (each rattled by 0.05 Å): two fcc Cu cells of 8 atoms (2 x 1 x 1 cubic
  cells), 16 atoms (2 x 2 x 1), the same with a vacancy (15 atoms), and 32 atoms (2 x 2 x 2).
* Both arms run :func:`ase_mlff.workflows.learn.learn` with a BPNN committee of 3 (``BPNN``
  below: 2 hidden layers of 16, ``epochs`` 200, one calibration frame held out at the first fit
  and a fifth of the later frames, by the loop's draws)
  over 300 600 900 K to ``--calls`` reference calls with the same seed. ``finetune``: each refit
  after the first fine-tunes the current committee for ``finetune_epochs`` (default: a quarter
  of ``epochs``, 50); ``scratch``: ``finetune=False``, every refit trains the committee from
  fresh weights for ``epochs``. The arms select different frames (their models differ), so
  they are compared at equal calls, not on equal data.
* Unseen test frames: EMT Langevin MD (a frame every 40 steps after a 200-step burn-in) of the
  32-atom cell at 500 and 900 K and of a 2 x 2 x 2 cell with a divacancy (30 atoms) at 700 K,
  ``--test-frames`` per system.

Printed per arm and seed: the mean time of a fresh fit and of a fine-tuning refit (from the
loop's history), the loop's wall time, and the energy MAE (meV/atom) and force MAE (meV/Å, per
Cartesian component) of the final served model on the test frames. One torch thread.

``--task mff-refit``: the time of one refit of an MFF committee of 3 in the loop
(:class:`ase_mlff.workflows.learn.fitting.CommitteeFitter`, the loop's own split: a quarter of
the frames held out, members of half the rest) on 30 and 60 EMT MD frames of the start
structures above (300 and 900 K), with the 2+3-body settings ``MFF``.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from active_learning import emt_md, errors  # noqa: E402  (the EMT MD and error helpers of that benchmark)

#: the committee's BPNN: EMT copper's reach (5 Å), small networks, a fresh fit of 200 epochs
BPNN = dict(cutoff=5.0, hidden=(16, 16), n_radial=6, n_eta=3, zetas=(1, 4), n_valid=1, n_test=1, epochs=200)
#: the MFF committee of --task mff-refit: 2+3-body splines, no hyperparameter optimisation
MFF = dict(rc2=4.5, rc3=3.5, n_sparse3=50, no_optimise=True, h2=0.2, h3=0.3)
TEMPERATURES = (300.0, 600.0, 900.0)
A = 3.61


def starts():
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=A, cubic=True)
    out = []
    for k in range(2):
        small = cu.repeat((2, 1, 1))
        small.rattle(0.05, seed=1 + k)
        out.append(small)
    mid = cu.repeat((2, 2, 1))
    mid.rattle(0.05, seed=3)
    vac = cu.repeat((2, 2, 1))
    del vac[5]
    vac.rattle(0.05, seed=4)
    big = cu.repeat((2, 2, 2))
    big.rattle(0.05, seed=5)  # no perfect lattice: a member of two such frames would see flat functions only
    return out + [mid, vac, big]


def test_frames(n):
    from ase.build import bulk

    big = bulk("Cu", "fcc", a=A, cubic=True).repeat((2, 2, 2))
    dv = big.copy()
    del dv[[0, 1]]
    frames = []
    for k, (name, atoms, T) in enumerate((("bulk32 500K", big, 500.0), ("bulk32 900K", big, 900.0),
                                          ("divacancy30 700K", dv, 700.0))):
        for f in emt_md(atoms, T, 40 * n, 40, 200, 2000 + k):
            f.info["system"] = name
            frames.append(f)
    return frames


def run_arm(name, calls, seed, work, finetune, growth=None):
    from ase_mlff.workflows.learn import learn

    out = os.path.join(work, f"{name}_seed{seed}")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    res = learn(starts(), "ase.calculators.emt:EMT", out, family="bpnn", committee=3, temperatures=TEMPERATURES,
                max_calls=calls, segment_steps=20, check_interval=2, patience=10 ** 9, seed=seed,
                options=dict(BPNN, finetune=finetune, **({} if growth is None else {"fresh_fit_growth": growth})))
    wall = time.perf_counter() - t
    fresh = [h["fit_s"] for h in res.history if str(h.get("fit", "")).startswith("fresh fit")]
    tuned = [h["fit_s"] for h in res.history if str(h.get("fit", "")).startswith("fine-tuned")]
    return {"dir": out, "wall_s": wall, "calls": res.calls, "fits": res.fits,
            "fresh_fit_s": [float(x) for x in fresh], "finetune_fit_s": [float(x) for x in tuned]}


def mff_refit(sizes=(30, 60)):
    """Time one MFF committee refit of the loop on ``sizes`` frames (``--task mff-refit``)."""
    from ase_mlff.data import Dataset
    from ase_mlff.workflows.learn import LearnSettings
    from ase_mlff.workflows.learn.fitting import CommitteeFitter

    frames = []
    for k, a in enumerate(starts()):
        for T in (300.0, 900.0):
            frames += emt_md(a, T, 60, 10, 20, 10 * k + int(T))  # 6 frames per start and temperature
    ds = Dataset.from_atoms(frames)
    order = np.random.default_rng(0).permutation(len(ds))
    for n in sizes:
        fitter = CommitteeFitter(MFF, LearnSettings(reference="emt", family="mff", committee=3), None)
        t = time.perf_counter()
        _, _, rms, how = fitter.fit([ds[int(i)] for i in order[:n]])
        print(f"mff committee of 3, {n} frames: refit {time.perf_counter() - t:.2f} s ({how}); held-out force "
              f"error {rms * 1000:.0f} meV/Å (RMS per atom)", flush=True)


def main(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20, help="reference calls of each loop (default 20)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="loop seeds (default 0)")
    p.add_argument("--test-frames", type=int, default=4, help="test frames per system (default 4)")
    p.add_argument("--out", default="out/learn_finetune", help="work folder (default out/learn_finetune)")
    p.add_argument("--fresh-fit-growth", type=float, default=None,
                   help="the learn option fresh_fit_growth of the finetune arm (default: the loop's, 1.5; "
                        "100: no fresh fit after the first)")
    p.add_argument("--task", default="learn", choices=["learn", "mff-refit"],
                   help="learn: the two arms (default); mff-refit: time an MFF committee refit")
    p.add_argument("--arms", nargs="+", default=["finetune", "scratch"], choices=["finetune", "scratch"],
                   help="which arms to run (default both)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.task == "mff-refit":
        return mff_refit()
    os.makedirs(args.out, exist_ok=True)
    test = test_frames(args.test_frames)
    rows = []
    for seed in args.seeds:
        for name, finetune in (("finetune", True), ("scratch", False)):
            if name not in args.arms:
                continue
            r = run_arm(name, args.calls, seed, args.out, finetune, args.fresh_fit_growth if finetune else None)
            r.update(name=name, seed=seed, **errors(os.path.join(r["dir"], "model.mlff"), test))
            rows.append(r)
            mean = (lambda v: float(np.mean(v)) if v else float("nan"))
            print(f"{name:8s} seed {seed}: {r['calls']} calls, {r['fits']} fits; fresh fit "
                  f"{mean(r['fresh_fit_s']):.2f} s "
                  f"(x{len(r['fresh_fit_s'])}), fine-tune {mean(r['finetune_fit_s']):.2f} s "
                  f"(x{len(r['finetune_fit_s'])}); loop {r['wall_s']:.0f} s; test E MAE {r['energy']:.2f} meV/atom, "
                  f"F MAE {r['forces']:.1f} meV/Å", flush=True)
    info = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "calls": args.calls, "test_frames": len(test), "rows": rows}
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    print(f"{info['date']}, {info['machine']}, {info['cpus']} CPUs; results in {args.out}/results.json")


if __name__ == "__main__":
    main()
