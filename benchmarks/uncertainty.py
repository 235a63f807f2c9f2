"""Does a committee's uncertainty rank errors?  rMD17 ethanol test frames and OOD geometries.

    python benchmarks/uncertainty.py [--model potentials/ethanol_sgdml_committee.mlff]

Prints (numbers for docs/uncertainty.md):

1. On the rMD17 ethanol test_01 frames that were not used to calibrate the committee: the
   Spearman rank correlation between the predicted per-frame force uncertainty
   ``sqrt(mean_a sigma_F[a]^2)`` and the actual per-frame force error
   ``sqrt(mean_a |F_pred[a] - F_ref[a]|^2)``, per atom (``sigma_F[a]`` against
   ``|dF[a]|``), and for energies (``sigma_E`` against ``|dE|``); the calibration check
   RMS error / RMS predicted on those frames (1 = calibrated).
2. Force MAE (per Cartesian component, meV/Å) of the served mean (one model trained on all
   1000 training frames), of the member average, and of the members one by one.
3. Out-of-distribution ethanol geometries at the same level of theory
   (``ethanol_pbe_extrapolation``: O-H bond stretching to dissociation, large displacements
   along two normal modes; 9 atoms in the rMD17 order C C O H H H H H H): the mean predicted
   per-frame force uncertainty there over the mean on test frames, and the energy error
   against the predicted energy uncertainty (those files have energies, no forces). Dimers
   (2 atoms) and methanol (6 atoms) are other systems for a 9-atom global model and are left out.

Data: rMD17 (Christensen & von Lilienfeld 2020) and the BOTNet ethanol tests (Batatia et al.
2022), in ``$ASE_MLFF_DATA/rmd17`` and ``$ASE_MLFF_DATA/ethanol_pbe_extrapolation``;
benchmarks/public_data.py says where to get them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np
from scipy.stats import spearmanr

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import public_data  # noqa: E402  (where the reference data come from and must be put)

OOD_FILES = ("test_H_removal.xyz", "test_norm_mode_874.xyz", "test_norm_mode_3005.xyz")


def evaluate(model, structures, refs=None):
    """Served energy/forces and calibrated uncertainties for each structure (ase.Atoms)."""
    import torch

    from ase_mlff.calculator import MLFFCalculator
    from ase_mlff.errors import InputError
    from ase_mlff.graph import graph_from_structure

    calc = MLFFCalculator(model, uncertainty=True)
    rows, refused = [], 0
    for atoms in structures:
        try:
            calc.calculate(atoms, ["energy", "forces"])
            r = dict(calc.results)
        except InputError:
            # a geometry so distorted that the atom order cannot be identified: the files give
            # the atoms in the model's order, so evaluate them as given
            refused += 1
            with torch.no_grad():
                out = model.compute(graph_from_structure(atoms, None), extras=True)
            r = {"energy": float(out.energy[0]), "forces": out.forces.numpy(),
                 "energy_uncertainty": float(out.extras["energy_uncertainty"][0]),
                 "forces_uncertainty": out.extras["forces_uncertainty"].numpy()}
        rows.append(r)
    return rows, refused


def member_forces(model, structures):
    """(K, frames, N, 3) forces of every member, model atom order as given."""
    from ase_mlff.graph import batch_graphs, graph_from_structure

    g = batch_graphs([graph_from_structure(a, None) for a in structures])
    outs = model.member_predictions(g)
    n = len(structures)
    return np.stack([o.forces.numpy().reshape(n, -1, 3) for o in outs]), np.stack([o.energy.numpy() for o in outs])


def main(argv=None) -> int:
    import ase.io

    from ase_mlff import data
    from ase_mlff.io import load_model
    from ase_mlff.models.committee import CommitteeModel
    from ase_mlff.metrics import mae_rmse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "potentials", "ethanol_sgdml_committee.mlff"))
    p.add_argument("--test", default=None, help="default: rMD17's rmd17_ethanol_test_01.npz")
    p.add_argument("--ood", default=None, help="default: the folder of the BOTNet ethanol tests")
    args = p.parse_args(argv)

    model = load_model(args.model)
    test = data.read(args.test or public_data.path("rmd17", "rmd17_ethanol_test_01.npz"), energy_unit="kcal/mol")
    args.ood = args.ood or os.path.dirname(public_data.path("ethanol_extrapolation", OOD_FILES[0]))
    cal = model.meta["training"].get("calibration", {})
    used = set(cal.get("indices", [])) if cal.get("data_sha256") == test.sha256() else set()
    keep = np.array([i for i in range(len(test)) if i not in used])
    frames = test[keep]
    print(f"# {datetime.date.today()}  model {os.path.relpath(args.model, ROOT)}: {model.describe()}")
    print(f"# calibration factors {model.calibration}; test frames {len(frames)} of {len(test)} "
          f"({len(used)} used for calibration are left out)")

    structures = [fr.to_atoms() for fr in frames]
    rows, refused = evaluate(model, structures)
    F_ref = np.stack([fr.forces for fr in frames])
    E_ref = np.array([fr.energy for fr in frames])
    F = np.stack([r["forces"] for r in rows])
    E = np.array([r["energy"] for r in rows])
    sF = np.stack([r["forces_uncertainty"] for r in rows])
    sE = np.array([r["energy_uncertainty"] for r in rows])
    dF = F - F_ref
    err_atom = np.linalg.norm(dF, axis=2)  # (frames, N)
    err_frame = np.sqrt((err_atom ** 2).mean(1))
    pred_frame = np.sqrt((sF ** 2).mean(1))
    rho_frame = spearmanr(pred_frame, err_frame).statistic
    rho_atom = spearmanr(sF.ravel(), err_atom.ravel()).statistic
    rho_e = spearmanr(sE, np.abs(E - E_ref)).statistic
    print()
    print("| rMD17 ethanol test frames | value |")
    print("|---|---|")
    print(f"| frames evaluated | {len(frames)} |")
    print(f"| Spearman: per-frame force uncertainty vs per-frame force error | {rho_frame:.3f} |")
    print(f"| Spearman: per-atom force uncertainty vs per-atom force error | {rho_atom:.3f} |")
    print(f"| Spearman: energy uncertainty vs abs. energy error | {rho_e:.3f} |")
    print(f"| forces: RMS error / RMS predicted (1 = calibrated) | "
          f"{np.sqrt((err_atom ** 2).mean()) / np.sqrt((sF ** 2).mean()):.3f} |")
    print(f"| energy: RMS error / RMS predicted | {np.sqrt(((E - E_ref) ** 2).mean()) / np.sqrt((sE ** 2).mean()):.3f} |")
    print(f"| mean per-frame force uncertainty (meV/Å) | {1e3 * pred_frame.mean():.2f} |")
    print(f"| mean per-frame force error (meV/Å, RMS vector length) | {1e3 * err_frame.mean():.2f} |")
    if refused:
        print(f"| frames evaluated in the given order (order not identified) | {refused} |")

    # ---- accuracy of what could be served
    Fk, Ek = member_forces(model, structures)
    mae = {"served mean (1 model, all training frames)": mae_rmse(dF)[0],
           "member average": mae_rmse(Fk.mean(0) - F_ref)[0]}
    per_member = [mae_rmse(f - F_ref)[0] for f in Fk]
    print()
    print("| force MAE on the same test frames | meV/Å |")
    print("|---|---|")
    for k, v in mae.items():
        print(f"| {k} | {1e3 * v:.2f} |")
    print(f"| single member (mean of {len(Fk)}; min - max) | {1e3 * np.mean(per_member):.2f} "
          f"({1e3 * min(per_member):.2f} - {1e3 * max(per_member):.2f}) |")
    if model.mean_model is not None:
        avg = CommitteeModel(list(model.members), None)
        print(f"| member-average committee / served mean | {mae['member average'] / mae[list(mae)[0]]:.2f} |")
        del avg

    # ---- out of distribution
    z = np.asarray(frames[0].numbers)
    print()
    print("| OOD file (ethanol_pbe_extrapolation) | frames | mean force uncertainty (meV/Å) | ratio OOD/test "
          "| mean abs. energy error (meV) | mean energy uncertainty (meV) | Spearman abs(dE) vs sigma_E |")
    print("|---|---|---|---|---|---|---|")
    allp, alle, allse = [], [], []
    for name in OOD_FILES:
        path = os.path.join(args.ood, name)
        if not os.path.exists(path):
            print(f"| {name} | missing | | | | | |")
            continue
        images = [a for a in ase.io.read(path, ":") if len(a) == len(z) and np.array_equal(a.numbers, z)]
        for a in images:
            a.pbc = False
        ref = np.array([a.get_potential_energy() for a in images])
        for a in images:
            a.calc = None
        r, ref_refused = evaluate(model, images)
        p_frame = np.array([np.sqrt((x["forces_uncertainty"] ** 2).mean()) for x in r])
        de = np.abs(np.array([x["energy"] for x in r]) - ref)
        se = np.array([x["energy_uncertainty"] for x in r])
        allp.append(p_frame)
        alle.append(de)
        allse.append(se)
        rho = spearmanr(se, de).statistic if len(images) > 2 else float("nan")
        print(f"| {name}{f' ({ref_refused} in given order)' if ref_refused else ''} | {len(images)} | "
              f"{1e3 * p_frame.mean():.1f} | {p_frame.mean() / pred_frame.mean():.1f} | {1e3 * de.mean():.1f} | "
              f"{1e3 * se.mean():.1f} | {rho:.3f} |")
    if allp:
        p_all, e_all, se_all = np.concatenate(allp), np.concatenate(alle), np.concatenate(allse)
        print(f"| all OOD | {len(p_all)} | {1e3 * p_all.mean():.1f} | {p_all.mean() / pred_frame.mean():.1f} | "
              f"{1e3 * e_all.mean():.1f} | {1e3 * se_all.mean():.1f} | {spearmanr(se_all, e_all).statistic:.3f} |")
        # test + OOD pooled: does sigma_E rank energy errors across both?
        rho_pool = spearmanr(np.concatenate([sE, se_all]), np.concatenate([np.abs(E - E_ref), e_all])).statistic
        print(f"\nSpearman abs(dE) vs sigma_E, test and OOD frames pooled: {rho_pool:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
