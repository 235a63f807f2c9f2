"""sGDML: kernel, symmetries, training, analytic predictor, atom order, model files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from ase_mlff.errors import InputError, TrainingError
from sgdml_rounding import tolerances

DATA = os.path.join(os.path.dirname(__file__), "data", "rmd17_ethanol_300.npz")
pytestmark = pytest.mark.skipif(not os.path.exists(DATA), reason=f"test data {DATA} missing")

KCAL = 0.0433641043  # eV per kcal/mol


@pytest.fixture(scope="module")
def eth():
    d = np.load(DATA)
    split = d["split"]
    return {
        "R": d["coords"].astype(np.float64),
        "z": d["nuclear_charges"].astype(np.int64),
        "E": d["energies"] * KCAL,
        "F": d["forces"] * KCAL,
        "train": np.flatnonzero(split == 0),
        "test": np.flatnonzero(split == 1),
    }


@pytest.fixture(scope="module")
def trained(eth):
    from ase_mlff.training.sgdml_train import train_sgdml

    tr = eth["train"]
    arrays = {k: eth[k] for k in ("R", "z", "E", "F")}
    arrays["energy_unit"] = "kcal/mol"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = train_sgdml(arrays, 100, 40, sigmas=[20], train_indices=tr[:100],
                                    valid_indices=tr[150:190], test_indices=eth["test"])
    return model, report


# ------------------------------------------------------------------------------ kernel
def test_kernel_symmetric_positive_definite(eth):
    from ase_mlff.training.gp import KernelData, assemble_kernel
    from ase_mlff.training.symmetries import find_symmetries

    R = eth["R"][eth["train"][:15]]
    perms = find_symmetries(R, eth["z"])
    kd = KernelData(R, perms)
    K = assemble_kernel(kd, 20.0, lower_only=False)
    assert torch.allclose(K, K.T, atol=1e-13 * float(K.abs().max()))
    ev = torch.linalg.eigvalsh(K)
    assert float(ev.min()) > -1e-12 * float(ev.max())
    torch.linalg.cholesky(K + 1e-10 * torch.eye(K.shape[0], dtype=K.dtype))  # no error


def test_kernel_block_matches_definition(eth):
    """One block against a literal sum over permutations of J_i^T H J_j."""
    from ase_mlff.descriptors import descriptor_permutation, inverse_distances, jacobian
    from ase_mlff.training.gp import KernelData, assemble_kernel

    R = eth["R"][:6]
    perms = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 6, 7, 5, 8], [0, 1, 2, 3, 4, 7, 5, 6, 8]])
    sigma = 15.0
    K = assemble_kernel(KernelData(R, perms), sigma, lower_only=False).numpy()
    i, j = 4, 1
    a = np.sqrt(5) / sigma
    blk = np.zeros((27, 27))
    for p in perms:
        dp = descriptor_permutation(p)
        delta = inverse_distances(R[i]) - inverse_distances(R[j])[dp]
        d = np.linalg.norm(delta)
        H = 5 / (3 * sigma**4) * np.exp(-a * d) * ((sigma**2 + np.sqrt(5) * sigma * d) * np.eye(36)
                                                   - 5 * np.outer(delta, delta))
        blk += jacobian(R[i]).T @ H @ jacobian(R[j])[dp]
    np.testing.assert_allclose(K[27 * i:27 * i + 27, 27 * j:27 * j + 27], blk, atol=1e-12 * np.abs(blk).max())


def test_matrix_free_product_and_pcg_equal_cholesky(eth):
    from ase_mlff.training.gp import (KernelData, KernelOperator, NystromPreconditioner, assemble_kernel,
                                      solve_cholesky, solve_pcg)

    R = eth["R"][eth["train"][:20]]
    F = eth["F"][eth["train"][:20]]
    perms = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 6, 7, 5, 8], [0, 1, 2, 3, 4, 7, 5, 6, 8]])
    kd = KernelData(R, perms)
    lam = 1e-8
    K = assemble_kernel(kd, 20.0, lower_only=False)
    op = KernelOperator(kd, 20.0, lam)
    p = torch.randn(K.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.matvec(p), K @ p + lam * p, rtol=1e-10, atol=1e-13)
    y = torch.from_numpy(F.reshape(-1) / F.std())
    x_chol = solve_cholesky(K.clone(), y, lam)
    pre = NystromPreconditioner(kd, 20.0, np.arange(0, 20, 4), mu=lam)
    x_cg, info = solve_pcg(op, y, pre, tol=1e-9, maxiter=2000)
    # the two solutions give the same fitted forces
    f_chol, f_cg = K @ x_chol, K @ x_cg
    assert float((f_chol - f_cg).norm() / y.norm()) < 1e-7
    assert float((f_cg - y).norm() / y.norm()) < 0.1  # regularised fit of the training forces
    with pytest.raises(TrainingError, match="did not converge"):
        solve_pcg(op, y, None, tol=1e-12, maxiter=3)


def test_failed_factorisation_raises(eth):
    from ase_mlff.training.gp import KernelData, assemble_kernel, solve_cholesky

    R = eth["R"][:5]
    K = assemble_kernel(KernelData(R, np.arange(9)[None]), 20.0)
    with pytest.raises(TrainingError, match="Cholesky"):
        solve_cholesky(K, torch.ones(K.shape[0], dtype=torch.float64), lam=-1.0)


# ------------------------------------------------------------------------------ symmetries
def test_ethanol_symmetries_found_and_closed(eth):
    from ase_mlff.training.symmetries import find_symmetries

    perms = find_symmetries(eth["R"][eth["train"][:60]], eth["z"])
    z = eth["z"]
    assert len(perms) == 6
    assert np.array_equal(perms[0], np.arange(9))
    group = {tuple(p) for p in perms}
    for p in perms:
        assert np.array_equal(z[p], z)
        for q in perms:
            assert tuple(p[q]) in group  # closed under composition
    # the methyl hydrogens (bonded to the carbon that is not bonded to O) rotate cyclically
    R0 = eth["R"][0]
    dist = np.linalg.norm(R0[:, None] - R0[None], axis=-1)
    carbons = np.flatnonzero(z == 6)
    methyl_c = carbons[np.argmax(dist[carbons, 2])]
    hyd = np.flatnonzero(z == 1)
    methyl_h = sorted(hyd[np.argsort(dist[methyl_c, hyd])[:3]].tolist())
    moved = set()
    for p in perms:
        moved |= set(np.flatnonzero(p != np.arange(9)).tolist())
    assert set(methyl_h) <= moved
    cyc = [p for p in perms if sorted(np.flatnonzero(p != np.arange(9)).tolist()) == methyl_h]
    assert len(cyc) == 2  # the two 3-cycles of the methyl group


# ------------------------------------------------------------------------------ predictor
def test_forces_are_minus_gradient(trained, eth):
    model, _ = trained
    R = eth["R"][eth["test"][3]]
    e, f = model.predict_numpy(R)
    h = 1e-4
    fd = np.zeros_like(R)
    for a in range(9):
        for k in range(3):
            Rp, Rm = R.copy(), R.copy()
            Rp[a, k] += h
            Rm[a, k] -= h
            fd[a, k] = -(model.predict_numpy(Rp)[0][0] - model.predict_numpy(Rm)[0][0]) / (2 * h)
    np.testing.assert_allclose(f, fd, atol=2e-5 * np.abs(f).max() + 1e-6)
    # torch path (any device / autograd) agrees with the numpy fast path
    E_t, F_t = model.energy_forces_torch(torch.from_numpy(R)[None])
    tol_e, tol_f = tolerances(model, R)  # float64 rounding of sums of ~1e8 eV (sgdml_rounding.py)
    assert abs(float(E_t[0]) - e[0]) <= tol_e
    np.testing.assert_allclose(F_t[0].numpy(), f, rtol=0, atol=tol_f)


def test_hessian_matches_finite_differences(trained, eth):
    from ase_mlff.graph import graph_from_arrays

    model, _ = trained
    R = eth["R"][eth["test"][7]]
    g = graph_from_arrays(R, eth["z"], np.zeros((3, 3)), [False] * 3, None)
    H = model.hessian(g).numpy()
    h = 1e-5
    fd = np.zeros((27, 27))
    for i in range(27):
        Rp, Rm = R.copy().ravel(), R.copy().ravel()
        Rp[i] += h
        Rm[i] -= h
        fd[i] = -(model.predict_numpy(Rp.reshape(9, 3))[1] - model.predict_numpy(Rm.reshape(9, 3))[1]).ravel() / (2 * h)
    np.testing.assert_allclose(H, fd, atol=1e-5 * np.abs(H).max())
    np.testing.assert_allclose(H, H.T)


def test_invariances(trained, eth):
    from scipy.spatial.transform import Rotation

    model, _ = trained
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    for k in (0, 11):
        R = eth["R"][eth["test"][k]]
        e, f = model.predict_numpy(R)
        R2 = R @ rot.T + np.array([1.5, -3.0, 0.7])
        e2, f2 = model.predict_numpy(R2)
        # exact symmetries, up to the rounding of sums of ~1e8 eV (sgdml_rounding.py): |ΔE| reaches
        # 1.5e-9 eV of 4209.6 eV (frame 0 on one CPU, frame 11 on another), where a fixed 1e-9 eV failed
        tol_e, tol_f = tolerances(model, R)
        assert abs(e2[0] - e[0]) <= tol_e
        np.testing.assert_allclose(f2, f @ rot.T, rtol=0, atol=tol_f)
        for p in model.perms.numpy():  # the model's own symmetries
            e3, f3 = model.predict_numpy(R[p])
            assert abs(e3[0] - e[0]) <= tol_e
            np.testing.assert_allclose(f3, f[p], rtol=0, atol=tol_f)


def test_training_accuracy_and_broken_variants(trained, eth):
    model, report = trained
    assert report["n_symmetries"] == 6
    assert report["solver"] == "cholesky"
    test = report["test"]
    # 100 training geometries: ~55 meV/Å force MAE (1.3 kcal/mol/Å), ~12 meV energy MAE
    assert test["forces_mae_meV_per_A"] < 70
    assert test["energy_mae_meV"] < 25
    assert abs(test["forces_mae"] * KCAL * 1e3 - test["forces_mae_meV_per_A"]) < 1e-6
    assert 0.9 < report["label_checks"]["slope"] < 1.1
    Rt, Ft = eth["R"][eth["test"]], eth["F"][eth["test"]]
    from ase_mlff.models.sgdml import SGDMLModel

    def mae(m):
        return 1e3 * np.abs(m.predict_numpy(Rt)[1] - Ft).mean()

    assert abs(mae(model) - test["forces_mae_meV_per_A"]) < 1e-9
    v = model.v_train.numpy()
    D = model.desc_train.numpy()
    z, perms = model.z.numpy(), model.perms.numpy()
    rng = np.random.default_rng(0)
    broken = {
        "shuffled coefficients": SGDMLModel.from_training(z, perms, D, v[rng.permutation(len(v))], model.sigma, 0, 0),
        "wrong sign": SGDMLModel.from_training(z, perms, D, -v, model.sigma, 0, 0),
        "no symmetries": SGDMLModel.from_training(z, perms[:1], D, v, model.sigma, 0, 0),
    }
    for name, m in broken.items():
        assert mae(m) > 1.5 * 70, name
    assert 1e3 * np.abs(Ft).mean() > 500  # predicting zero forces is far worse too


def test_label_sanity_warning_for_gradients(eth):
    from ase_mlff.training.sgdml_train import train_sgdml

    tr = eth["train"][:40]
    arrays = {"R": eth["R"], "z": eth["z"], "E": eth["E"], "F": -eth["F"]}
    with pytest.warns(UserWarning, match="gradients"):
        train_sgdml(arrays, 40, 0, sigmas=[20], symmetries="none", train_indices=tr, valid_indices=[])


def test_sigma_edge_warning_and_cg_solver(eth):
    from ase_mlff.training.sgdml_train import train_sgdml

    tr = eth["train"]
    arrays = {"R": eth["R"], "z": eth["z"], "E": eth["E"], "F": eth["F"]}
    with pytest.warns(UserWarning, match="edge of the grid"):
        m_cg, rep = train_sgdml(arrays, 40, 20, sigmas=[200, 400], solver="cg", train_indices=tr[:40],
                                valid_indices=tr[50:70], lam=1e-8, cg_tol=1e-6)
    assert rep["solver"] == "cg" and rep["sigma"] == 200
    m_ch, _ = train_sgdml(arrays, 40, 20, sigmas=[200], solver="cholesky", train_indices=tr[:40],
                          valid_indices=tr[50:70], lam=1e-8)
    R = eth["R"][eth["test"][:10]]
    f_cg, f_ch = m_cg.predict_numpy(R)[1], m_ch.predict_numpy(R)[1]
    assert np.abs(f_cg - f_ch).max() < 1e-3 * np.abs(f_ch).max()


# ------------------------------------------------------------------------------ files, calculator
@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory):
    from ase_mlff.io import save_model
    from ase_mlff.training.sgdml_train import training_record

    model, report = trained
    path = tmp_path_factory.mktemp("sgdml") / "eth.mlff"
    save_model(model, path, training=training_record(report))
    return path


def test_model_file_round_trip(trained, model_file, eth):
    from ase_mlff.io import load_model, read_metadata

    model, report = trained
    loaded = load_model(model_file)
    R = eth["R"][eth["test"][:20]]
    e1, f1 = model.predict_numpy(R)
    e2, f2 = loaded.predict_numpy(R)
    assert np.array_equal(e1, e2) and np.array_equal(f1, f2)
    meta = read_metadata(model_file)
    assert meta["family"] == "sgdml" and meta["global_model"]
    assert meta["training_units"]["energy"] == "kcal/mol"
    assert meta["hyperparameters"]["sigma"] == model.sigma
    assert os.path.getsize(model_file) < 300_000


def test_calculator_and_reordering(model_file, trained, eth):
    import ase
    import ase_mlff

    model, _ = trained
    calc = ase_mlff.load(model_file)
    R = eth["R"][eth["test"][20]]
    atoms = ase.Atoms(numbers=eth["z"], positions=R)
    atoms.calc = calc
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    e_ref, f_ref = model.predict_numpy(R)
    tol_e, tol_f = tolerances(model, R)  # rounding of sums of ~1e8 eV (sgdml_rounding.py)
    assert abs(e - e_ref[0]) <= tol_e
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=tol_f)
    # same atoms in another order: same energy, forces follow the atoms
    order = np.array([5, 2, 8, 0, 7, 3, 1, 6, 4])
    shuffled = ase.Atoms(numbers=eth["z"][order], positions=R[order])
    shuffled.calc = calc
    assert abs(shuffled.get_potential_energy() - e) <= tol_e
    np.testing.assert_allclose(shuffled.get_forces(), f[order], rtol=0, atol=tol_f)
    # Hessian through the calculator
    H = calc.get_hessian(atoms)
    assert H.shape == (27, 27)


def test_wrong_atoms_raise_input_error(model_file, eth):
    import ase
    import ase_mlff

    calc = ase_mlff.load(model_file)
    R = eth["R"][eth["test"][0]]
    z = eth["z"].copy()
    z[2] = 7  # O -> N
    with pytest.raises(InputError, match=r"C2H6O \(9 atoms in order C C O H H H H H H\); got C2H6N"):
        calc.get_potential_energy(ase.Atoms(numbers=z, positions=R))
    with pytest.raises(InputError, match="9 atoms"):
        calc.get_potential_energy(ase.Atoms(numbers=eth["z"][:8], positions=R[:8]))
    # reordered and far from every training geometry: refused, not guessed
    rng = np.random.default_rng(1)
    order = np.array([3, 0, 2, 1, 4, 5, 6, 7, 8])  # numbers H C O C ...: not the model order
    bad = R + rng.normal(scale=0.8, size=R.shape)
    with pytest.raises(InputError, match="cannot be identified|ambiguous"):
        calc.get_potential_energy(ase.Atoms(numbers=eth["z"][order], positions=bad[order]))
