"""How the sparse MFF fit's options trade energy against force accuracy (mlearn Ni, PBE).

A quick sweep on a subset, so that each setting takes ~1.5 min on one core: 120 random training
frames and 60 random held-out frames of mlearn's Ni training set (Zuo et al. 2020;
``$ASE_MLFF_DATA/mlearn_pbe/Ni_train.extxyz``, benchmarks/public_data.py) (seed 0),
rc2 5.0 Å, 40 inducing distances, 600 inducing triangles, sigma_F 0.05 eV/Å, sigma_V 0.02
eV/atom. Each setting is ``name,width2,width3,l2,l3,sigma2,sigma3,rc2,rc3,sigma_E`` (``None``
for the original whole-cutoff form). Errors are those of the unmapped GP (the mapping adds
< 1 meV/Å where the grid is fine enough). Prints a Markdown table: energy MAE (meV/atom) and
force MAE (meV/Å) on 60 of the training frames and on the held-out frames, and the mean signed
held-out energy error per config_type. The MAEs are those ``train`` and ``eval`` report
(``ase_mlff.metrics.frame_metrics``: forces per component over all atoms).

    python benchmarks/mff_fit_options.py            # the settings of docs/mff.md
    python benchmarks/mff_fit_options.py "mine,1.0,1.0,0.5,0.8,1,1,5.0,4.2,0.0005"
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import public_data  # noqa: E402  (where the reference data come from and must be put)

DEFAULT = [
    "original cutoff; l 0.8/1.0; sigma3 0.1; sigma_E 2,None,None,0.8,1.0,1.0,0.1,5.0,3.7,0.002",
    "original cutoff; l 0.5/0.8; sigma3 1; sigma_E 0.7,None,None,0.5,0.8,1.0,1.0,5.0,3.7,0.0007",
    "width 1 A; l 0.5/0.8; sigma3 1; sigma_E 0.7,1.0,1.0,0.5,0.8,1.0,1.0,5.0,3.7,0.0007",
    "width 1 A; l 0.5/0.8; sigma3 1; sigma_E 0.3,1.0,1.0,0.5,0.8,1.0,1.0,5.0,3.7,0.0003",
]


def run(spec: str, ds, train, test) -> list:
    from ase_mlff.calculator import MLFFCalculator
    from ase_mlff.training.gp_hyperparameters import Hyper
    from ase_mlff.training.mff_gp import NBodyGP
    from ase_mlff.metrics import frame_metrics
    from ase_mlff.training.common import predict_frames
    from ase_mlff.training.mff_sparse import fit_sparse

    name, *vals = spec.split(",")
    w2, w3, l2, l3, s2, s3, rc2, rc3, se = [None if v == "None" else float(v) for v in vals]
    t0 = time.perf_counter()
    gp = NBodyGP([28], rc2=rc2, rc3=rc3, hyper=Hyper(l2=l2, l3=l3, sigma2=s2, sigma3=s3), width2=w2, width3=w3)
    fit_sparse(gp, [ds[int(i)] for i in train], n2=40, n3=600, sigmas=(se, 0.05, 0.02), log=lambda m: None)
    calc = MLFFCalculator(gp.as_model())
    res = {}
    for label, idx in (("train", train[:60]), ("test", test)):
        frames = [ds[int(i)] for i in idx]
        pred = predict_frames(calc, frames, stress=False)
        m = frame_metrics(frames, pred)  # the metrics train and eval report
        by = {}
        for fr, p in zip(frames, pred):
            by.setdefault(fr.info.get("config_type"), []).append((p["energy"] - fr.energy) / len(fr) * 1e3)
        res[label] = (m["energy_per_atom_mae_meV"], m["forces_mae_meV_per_A"], by)
    by = ", ".join(f"{k} {np.mean(v):+.1f}" for k, v in sorted(res["test"][2].items()))
    return [name, f"{res['train'][0]:.2f}", f"{res['train'][1]:.1f}", f"{res['test'][0]:.2f}",
            f"{res['test'][1]:.1f}", by, f"{time.perf_counter() - t0:.0f}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="*", default=DEFAULT)
    args = p.parse_args()
    from ase_mlff.data import read

    ds = read(public_data.path("mlearn", "Ni_train.extxyz"))
    perm = np.random.default_rng(0).permutation(len(ds))
    test, train = perm[:60], perm[60:180]
    header = ["setting", "train E MAE", "train F MAE", "test E MAE", "test F MAE",
              "test mean E error by config_type", "s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for spec in args.settings:
        print("| " + " | ".join(run(spec, ds, train, test)) + " |", flush=True)


if __name__ == "__main__":
    main()
