"""Transfer learning on rMD17 (issue 11), after Krawczuk & Venturi 2020, "Improving neural
network predictions of material properties with limited data using transfer learning"
(docs/references.md): pre-train one SchNet on nine rMD17 molecules, then train on paracetamol
with N = 25, 50, 100, 200 frames from scratch and with their three fine-tuning schemes; test on
the rMD17 paracetamol test frames.

    python benchmarks/transfer.py prepare            # data files under out/transfer/ (eV, Å)
    python benchmarks/transfer.py pretrain           # ~40 min on 2 cores; --resume after a stop
    python benchmarks/transfer.py finetune           # 16 runs (4 N x 4 schemes), results.json
    python benchmarks/transfer.py report             # table + learning-curve plot
    python benchmarks/transfer.py heads              # frozen descriptors + ridge heads on QM9
    python benchmarks/transfer.py all                # everything, in order
    python benchmarks/transfer.py finetune --dry-run # print the exact commands only

Data: rMD17 split 01 (Christensen & von Lilienfeld 2020; PBE/def2-SVP; CC0) in
``$ASE_MLFF_DATA/rmd17``, and for ``heads`` the QM9 subset in ``$ASE_MLFF_DATA/qm9_subset``
(benchmarks/public_data.py says where to get them). Pre-training uses every
``train_01`` frame of aspirin, azobenzene, benzene, ethanol, malonaldehyde, naphthalene,
salicylic acid, toluene and uracil (9,000 frames; 95 % training, 5 % validation, seed 0), never
a paracetamol frame. Paracetamol: the first 1,000 ``train_01`` frames are the pool the N
training frames and the 50 validation frames (early stopping, best model) are drawn from by
the trainer's seeded split; the error is measured on all 1,000 ``test_01`` frames (disjoint from
the training file by construction of rMD17).

Schemes (``ase-mlff train schnet`` flags; every other option identical):

    scratch      fresh model, reference energies fitted on the N frames (--no-repulsion: the
                 pre-trained model has no short-range prior, so neither has any run here)
    all          --init pretrained                          (fine-tune every weight)
    embedding    --init pretrained --freeze embedding
    output       --init pretrained --freeze embedding,interactions   (output network only)

Each run gets the same budget in optimizer steps, not epochs (``--epochs`` = steps / (N /
batch)), the plateau schedule and early stopping on the validation loss: with a fixed number of
epochs the N = 25 runs would take 8x fewer steps than the N = 200 ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import public_data  # noqa: E402  (where the reference data come from and must be put)

WORK = os.path.join(ROOT, "out", "transfer")
PRETRAIN_MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde",
                      "naphthalene", "salicylic", "toluene", "uracil")
TARGET = "paracetamol"
PRETRAINED = os.path.join(ROOT, "potentials", "rmd17_schnet_pretrained.mlff")
SIZES = (25, 50, 100, 200)
SCHEMES = {
    "scratch": ["--no-repulsion"],  # the parent has no short-range prior: the same function class
    "all": ["--init", PRETRAINED],
    "embedding": ["--init", PRETRAINED, "--freeze", "embedding"],
    "output": ["--init", PRETRAINED, "--freeze", "embedding,interactions"],
}
N_VALID = 50
BATCH = 8
STEPS = 6000          # optimizer steps per fine-tuning run (upper bound; early stopping)
PATIENCE_STEPS = 1500  # early-stopping patience in steps
LR_PATIENCE_STEPS = 400

PRETRAIN_ARGS = ["--n-train", "8550", "--n-valid", "450", "--n-test", "0", "--epochs", "120",
                 "--schedule", "cosine", "--batch-size", "16", "--lr", "1e-3", "--seed", "0"]


def path(*parts):
    return os.path.join(WORK, *parts)


def _npz_frames(src, tag, limit=None):
    import ase
    import ase.io
    import ase.units as u
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    kcal = u.kcal / u.mol
    d = np.load(src)
    n = len(d["energies"]) if limit is None else min(limit, len(d["energies"]))
    frames = []
    for i in range(n):
        a = ase.Atoms(numbers=d["nuclear_charges"], positions=d["coords"][i])
        a.calc = SinglePointCalculator(a, energy=float(d["energies"][i]) * kcal, forces=d["forces"][i] * kcal)
        a.info["molecule"] = tag
        frames.append(a)
    return frames


def prepare(args) -> None:
    import ase.io

    os.makedirs(WORK, exist_ok=True)
    targets = {
        "pretrain.extxyz": [(m, "train") for m in PRETRAIN_MOLECULES],
        f"{TARGET}_train.extxyz": [(TARGET, "train")],
        f"{TARGET}_test.extxyz": [(TARGET, "test")],
    }
    for name, parts in targets.items():
        dst = path(name)
        if os.path.exists(dst) and not args.overwrite:
            print(f"{dst} exists (kept)")
            continue
        frames = []
        for mol, which in parts:
            frames += _npz_frames(public_data.path("rmd17", f"rmd17_{mol}_{which}_01.npz"), mol)
        tmp = dst + ".tmp"
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, dst)
        print(f"wrote {dst}: {len(frames)} frames (eV, eV/Å; from kcal/mol)")


def pretrain_command(resume=False):
    cmd = [sys.executable, "-m", "ase_mlff", "train", "schnet", path("pretrain.extxyz"), *PRETRAIN_ARGS,
           "--output", PRETRAINED, "--checkpoint", path("pretrain.ckpt"), "--plot-dir", path("plots_pretrain")]
    return cmd + (["--resume"] if resume else [])


def pretrain(args) -> None:
    cmd = pretrain_command(args.resume)
    print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    if not args.dry_run:
        subprocess.run(cmd, check=True, cwd=ROOT)


def finetune_command(n, scheme, seed=0, budget=1):
    """(output, command) of one run; ``budget``: multiple of the standard step budget."""
    steps_per_epoch = max(1, math.ceil(n / BATCH))
    out = path("runs", f"{scheme}_{n}_s{seed}" + (f"_x{budget}" if budget != 1 else "") + ".mlff")
    return out, [sys.executable, "-m", "ase_mlff", "train", "schnet", path(f"{TARGET}_train.extxyz"),
                 "--n-train", str(n), "--n-valid", str(N_VALID), "--n-test", "0",
                 "--epochs", str(math.ceil(budget * STEPS / steps_per_epoch)),
                 "--patience", str(math.ceil(PATIENCE_STEPS / steps_per_epoch)),
                 "--lr-patience", str(math.ceil(LR_PATIENCE_STEPS / steps_per_epoch)),
                 "--batch-size", str(BATCH), "--lr", "5e-4", "--seed", str(seed), "--no-plots",
                 "--output", out, *SCHEMES[scheme]]


def evaluate(model_path, test_path):
    """Errors of a model file on the test frames: energy MAE (meV per molecule, the rMD17
    convention), force MAE and RMSE (meV/Å), all frames, through the ASE calculator."""
    import numpy as np

    from ase_mlff import data as mdata
    from ase_mlff.calculator import MLFFCalculator

    frames = mdata.read(test_path).to_atoms()
    calc = MLFFCalculator(model_path)
    de, df = [], []
    for start in range(0, len(frames), 100):
        chunk = frames[start:start + 100]
        for a, r in zip(chunk, calc.evaluate_batch(chunk, stress=False)):
            de.append(r["energy"] - a.get_potential_energy())
            df.append(r["forces"] - a.get_forces())
    de, df = np.array(de), np.concatenate(df)
    return {"e_mae_meV": 1e3 * float(np.mean(np.abs(de))), "f_mae_meV_A": 1e3 * float(np.mean(np.abs(df))),
            "f_rmse_meV_A": 1e3 * float(np.sqrt(np.mean(df ** 2))), "test_frames": len(frames)}


def _run_one(job):
    n, scheme, seed, budget = job
    out, cmd = finetune_command(n, scheme, seed, budget)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    log = out[:-5] + ".log"
    t0 = time.time()
    if not os.path.exists(out):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(log, "w") as fh:
            fh.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
            fh.flush()
            subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    res = evaluate(out, path(f"{TARGET}_test.extxyz"))
    from ase_mlff.io import read_metadata

    training = read_metadata(out).get("training") or {}
    res.update(n=n, scheme=scheme, seed=seed, budget=budget, model=os.path.relpath(out, ROOT),
               train_wall_s=round(wall, 1),
               **_run_facts(training))
    return res


def _run_facts(training):
    """Epochs run, best epoch, why it stopped and training time, from a model file's record."""
    rec = training.get("trainer") or {}
    return {"epochs": training.get("epochs_run"), "best_epoch": rec.get("best_epoch"),
            "stopped": rec.get("stopped"), "train_time_s": rec.get("train_time_s")}


def finetune(args) -> None:
    import concurrent.futures as cf

    jobs = [(n, scheme, seed, args.budget) for seed in args.seeds for n in args.sizes for scheme in SCHEMES
            if scheme in args.schemes]
    if args.dry_run:
        for job in jobs:
            print(" ".join(shlex.quote(c) for c in finetune_command(*job)[1]))
        return
    if not os.path.exists(PRETRAINED):
        sys.exit(f"{PRETRAINED} is missing: run `python benchmarks/transfer.py pretrain` first")
    results_path = path(args.results)
    results = json.load(open(results_path)) if os.path.exists(results_path) else []
    done = {(r["n"], r["scheme"], r["seed"], r.get("budget", 1)) for r in results}
    todo = [j for j in jobs if tuple(j) not in done]
    print(f"{len(todo)} runs to do ({len(done)} in {results_path}), {args.jobs} at a time, one thread each",
          flush=True)
    with cf.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for res in pool.map(_run_one, todo):
            results.append(res)
            tmp = results_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(results, fh, indent=1)
            os.replace(tmp, results_path)
            print(f"N={res['n']:4d} {res['scheme']:10s} seed {res['seed']}: F MAE {res['f_mae_meV_A']:.1f} meV/Å, "
                  f"E MAE {res['e_mae_meV']:.1f} meV ({res['train_wall_s']:.0f} s)", flush=True)


def report(args) -> None:
    import numpy as np

    from ase_mlff.io import read_metadata

    import glob

    results = [r for f in sorted(glob.glob(path("results*.json"))) for r in json.load(open(f))]
    for r in results:  # entries written before the record's layout was read right
        if not r.get("epochs") and os.path.exists(os.path.join(ROOT, r["model"])):
            r.update(_run_facts(read_metadata(os.path.join(ROOT, r["model"])).get("training") or {}))
    by = {}
    for r in results:
        if r.get("budget", 1) == 1:
            by.setdefault((r["n"], r["scheme"]), []).append(r)
    longer = [r for r in results if r.get("budget", 1) != 1]
    sizes = sorted({r["n"] for r in results})
    lines = ["| N | " + " | ".join(SCHEMES) + " | best fine-tuning vs scratch |",
             "|---|" + "---|" * (len(SCHEMES) + 1)]
    curves = {s: [] for s in SCHEMES}
    for n in sizes:
        cells, f = [], {}
        for s in SCHEMES:
            rs = by.get((n, s), [])
            if not rs:
                cells.append("–")
                continue
            fm = np.mean([r["f_mae_meV_A"] for r in rs])
            em = np.mean([r["e_mae_meV"] for r in rs])
            sd = f" ± {np.std([r['f_mae_meV_A'] for r in rs], ddof=1):.1f}" if len(rs) > 1 else ""
            cells.append(f"{fm:.1f}{sd} ({em:.0f})")
            f[s] = fm
            curves[s].append((n, fm))
        tuned = {s: v for s, v in f.items() if s != "scratch"}
        if "scratch" in f and tuned:
            best = min(tuned, key=tuned.get)
            gain = f"{best}: {100 * (1 - tuned[best] / f['scratch']):.0f} % lower" if tuned[best] < f["scratch"] \
                else f"{best}: {100 * (tuned[best] / f['scratch'] - 1):.0f} % higher"
        else:
            gain = "–"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {gain} |")
    print("Force MAE meV/Å (energy MAE meV per molecule) on the 1,000 rMD17 paracetamol test frames")
    print("\n".join(lines))
    for r in longer:
        print(f"\n{r['budget']}x the step budget: N={r['n']} {r['scheme']} seed {r['seed']}: F MAE "
              f"{r['f_mae_meV_A']:.1f} meV/Å, E MAE {r['e_mae_meV']:.0f} meV ({r['epochs']} epochs, best "
              f"{r['best_epoch']}, stopped by {r['stopped']})")
    print("\nEpochs run / best epoch / stopped by (seed 0)")
    for n in sizes:
        cells = []
        for s in SCHEMES:
            r = next((r for r in by.get((n, s), []) if r["seed"] == 0), None)
            cells.append("–" if r is None else f"{r['epochs']}/{r['best_epoch']}/{r['stopped']}")
        print(f"N={n}: " + ", ".join(f"{s} {c}" for s, c in zip(SCHEMES, cells)))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    labels = {"scratch": "from scratch", "all": "fine-tune all", "embedding": "embedding frozen",
              "output": "output network only"}
    style = {"scratch": "o-", "all": "s-", "embedding": "^--", "output": "v-"}
    for s, pts in curves.items():
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, style[s], label=labels[s], markersize=6 if s != "embedding" else 4)
    for r in longer:
        ax.plot([r["n"]], [r["f_mae_meV_A"]], "x", color="C0", markersize=8,
                label=f"{labels[r['scheme']]}, {r['budget']}x the steps")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks([v for v in (30, 40, 50, 60, 80, 100, 120, 150, 200, 300)
                   if min(r["f_mae_meV_A"] for r in results) * 0.9 <= v <= max(r["f_mae_meV_A"] for r in results) * 1.1])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("paracetamol training frames N")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.set_title("SchNet on rMD17 paracetamol: pre-trained vs scratch", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.join(ROOT, "docs", "images", "transfer_learning_curve.png")
    fig.savefig(out, dpi=120)
    print(f"plot: {os.path.relpath(out, ROOT)}")


def heads(args) -> None:
    """Frozen-descriptor heads (as Tsubaki & Mizoguchi 2021 read their pre-trained network) on QM9: the pre-trained SchNet's pooled features, a ridge
    head fitted to U0 (extensive) and to U0 per atom (intensive), each with sum and mean pooling
    and with and without the composition, 20 random splits (80 % training) of the QM9 molecules
    made of H, C, N, O only."""
    import ase.io

    from ase_mlff.training.head import fit_head

    src = public_data.path("qm9_subset", "qm9_500_U0.extxyz")
    frames = [a for a in ase.io.read(src, ":") if set(a.numbers) <= {1, 6, 7, 8}]
    for a in frames:
        a.info["U0_per_atom"] = a.get_potential_energy() / len(a)
    dst = path("qm9_hcno.extxyz")
    ase.io.write(dst, frames)
    print(f"{len(frames)} of 500 QM9 molecules have only H, C, N, O (the pre-trained elements); {dst}")
    rows = []
    for target in ("energy", "U0_per_atom"):
        for pooling in ("sum", "mean"):
            for composition in (True, False):
                _, rep = fit_head(PRETRAINED, dst, target, pooling, n_train=int(0.8 * len(frames)), n_splits=20,
                                  seed=0, composition=composition)
                rows.append((target, pooling, composition, rep.summary()))
    unit = {"energy": "eV", "U0_per_atom": "eV/atom"}
    print("| target | pooling | composition | test MAE (mean ± std over 20 splits) | baseline MAE (training mean) |")
    print("|---|---|---|---|---|")
    for target, pooling, composition, s in rows:
        print(f"| {target} | {pooling} | {'yes' if composition else 'no'} | {s['mae']['mean']:.4g} ± "
              f"{s['mae']['std']:.2g} {unit[target]} | {s['baseline_mae']['mean']:.4g} {unit[target]} |")
    with open(path("heads.json"), "w") as fh:
        json.dump([{"target": t, "pooling": p, "composition": c, **s} for t, p, c, s in rows], fh, indent=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("prepare", "pretrain", "finetune", "report", "heads", "all"))
    p.add_argument("--resume", action="store_true", help="pretrain: continue from the checkpoint")
    p.add_argument("--overwrite", action="store_true", help="prepare: rewrite the data files")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="finetune: N values")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="finetune: seeds (split and initialisation)")
    p.add_argument("--jobs", type=int, default=2, help="finetune: runs at a time (one thread each)")
    p.add_argument("--results", default="results.json",
                   help="finetune: results file under out/transfer (report reads every results*.json there)")
    p.add_argument("--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES), help="finetune: schemes")
    p.add_argument("--budget", type=int, default=1,
                   help="finetune: multiple of the standard optimizer-step budget (a separate run and row)")
    args = p.parse_args(argv)
    if args.step in ("prepare", "all"):
        prepare(args)
    if args.step in ("pretrain", "all"):
        pretrain(args)
    if args.step in ("finetune", "all"):
        finetune(args)
    if args.step in ("report", "all"):
        report(args)
    if args.step in ("heads", "all"):
        heads(args)


if __name__ == "__main__":
    main()
