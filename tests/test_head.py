"""Frozen descriptors (``MLFFCalculator.get_descriptors``) and the ridge head (``ase-mlff fit-head``)."""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest
import torch

from ase_mlff import data as mdata
from ase_mlff.calculator import MLFFCalculator
from ase_mlff.errors import InputError, ModelFileError
from ase_mlff.io import save_model
from ase_mlff.models.committee import committee_from_models
from ase_mlff.models.schnet import SchNetModel
from ase_mlff.training import head as H

HERE = os.path.dirname(os.path.abspath(__file__))
ETHANOL = os.path.join(HERE, "data", "rmd17_ethanol_300.npz")
WATER = os.path.join(HERE, "data", "water_deepmd_4.extxyz")
ROOT = os.path.dirname(HERE)


def _schnet(species=(1, 6, 8), seed=0, **kw):
    torch.manual_seed(seed)
    return SchNetModel(species, n_features=16, n_interactions=2, n_rbf=12, **kw)


@pytest.fixture(scope="module")
def ethanol_atoms():
    return mdata.read(ETHANOL, index=":60", energy_unit="kcal/mol").to_atoms()


def test_descriptors_follow_the_atoms_and_work_for_periodic_cells(ethanol_atoms):
    calc = MLFFCalculator(_schnet(), dtype="float64")
    atoms = ethanol_atoms[0]
    x = calc.get_descriptors(atoms)
    assert x.shape == (len(atoms), 16) and x.dtype == np.float64
    perm = np.random.default_rng(1).permutation(len(atoms))
    np.testing.assert_allclose(calc.get_descriptors(atoms[perm]), x[perm], rtol=0, atol=1e-12)
    # the descriptor is the input of SchNet's output network: the energy follows from it
    model = calc.model
    y = model.output(torch.as_tensor(x, dtype=model.embedding.weight.dtype)).squeeze(-1).detach().numpy()
    e0 = np.array(model.config["reference_energies"])[np.searchsorted(model.species, atoms.numbers)]
    energies = e0 + model.config["energy_scale"] * y
    np.testing.assert_allclose(energies.sum(), calc.get_potential_energy(atoms), rtol=1e-12)
    water = ase.io.read(WATER, 0)
    wcalc = MLFFCalculator(_schnet((1, 8)), dtype="float64")
    xw = wcalc.get_descriptors(water)
    xw2 = wcalc.get_descriptors(water.repeat((2, 1, 1)))  # same environments, twice
    np.testing.assert_allclose(xw2[: len(water)], xw, atol=1e-10)
    np.testing.assert_allclose(xw2[len(water):], xw, atol=1e-10)


def test_descriptors_refused_for_global_models_and_unknown_elements(ethanol_atoms):
    calc = MLFFCalculator(os.path.join(ROOT, "potentials", "ethanol_sgdml.mlff"))
    with pytest.raises(InputError, match="sgdml models have no per-atom descriptors"):
        calc.get_descriptors(ethanol_atoms[0])
    calc = MLFFCalculator(_schnet((1, 6)))
    with pytest.raises(InputError, match="element.*O"):
        calc.get_descriptors(ethanol_atoms[0])


def test_committee_descriptors_are_the_members_side_by_side(ethanol_atoms):
    members = [_schnet(seed=s) for s in range(3)]
    atoms = ethanol_atoms[0]
    com = MLFFCalculator(committee_from_models(members), dtype="float64")
    x = com.get_descriptors(atoms)
    parts = [MLFFCalculator(m, dtype="float64").get_descriptors(atoms) for m in members]
    np.testing.assert_allclose(x, np.concatenate(parts, axis=1), atol=1e-12)


def test_ridge_leave_one_out_matches_refitting():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5))
    y = X @ rng.normal(size=5) + 0.3 * rng.normal(size=30)
    alpha = 2.0
    fit = H.ridge_fit(X, y, alphas=[alpha])
    loo = []
    for k in range(len(y)):
        keep = np.arange(len(y)) != k
        # the LOO refit standardises with the full-data statistics, as the closed form does
        Z = (X - fit.mean) / fit.scale
        zk, yk = Z[keep], y[keep]
        zc, yc = zk - zk.mean(0), yk - yk.mean()
        w = np.linalg.solve(zc.T @ zc + alpha * np.eye(5), zc.T @ yc)
        pred = (Z[k] - zk.mean(0)) @ w + yk.mean()
        loo.append(y[k] - pred)
    # the closed form treats the intercept as unpenalised and fixed by the full-data mean: close,
    # not identical, to refitting the mean without point k
    assert fit.loo_rmse == pytest.approx(np.sqrt(np.mean(np.square(loo))), rel=0.05)


def test_fit_head_recovers_a_linear_target_of_the_frozen_features(ethanol_atoms):
    calc = MLFFCalculator(_schnet(), dtype="float64")
    X = H.pooled_descriptors(calc, ethanol_atoms, "mean")
    w = np.random.default_rng(2).normal(size=X.shape[1])
    y = (X - X.mean(0)) / X.std(0) @ w + 3.0
    head, report = H.fit_head(calc, (ethanol_atoms, y), "target", n_train=45, n_splits=5)
    s = report.summary()
    assert s["pooling"] == "mean" and s["splits"] == 5 and s["test"] == 15
    assert s["mae"]["mean"] < 1e-4 * s["baseline_mae"]["mean"]
    np.testing.assert_allclose(head.predict(calc, ethanol_atoms[:5]), y[:5], atol=1e-4 * np.std(y))
    # a target the features cannot hold (noise) is not fitted better than the mean
    noise = np.random.default_rng(3).normal(size=len(y))
    _, rep = H.fit_head(calc, (ethanol_atoms, noise), "noise", n_train=45, n_splits=5)
    assert rep.summary()["mae"]["mean"] > 0.8 * rep.summary()["baseline_mae"]["mean"]


def test_mean_pooling_is_intensive_and_sum_pooling_extensive():
    water = ase.io.read(WATER, 0)
    calc = MLFFCalculator(_schnet((1, 8)), dtype="float64")
    big = water.repeat((2, 1, 1))
    m1, m2 = H.pooled_descriptors(calc, [water, big], "mean")
    s1, s2 = H.pooled_descriptors(calc, [water, big], "sum")
    np.testing.assert_allclose(m2, m1, atol=1e-10)
    np.testing.assert_allclose(s2, 2 * s1, rtol=1e-10, atol=1e-9)
    assert H.default_pooling("energy") == "sum" and H.default_pooling("gap") == "mean"


def test_cli_fits_writes_and_refuses(tmp_path, ethanol_atoms, capsys):
    from ase_mlff.cli import main

    model = _schnet()
    mpath = tmp_path / "m.mlff"
    save_model(model, mpath)
    calc = MLFFCalculator(str(mpath))
    X = H.pooled_descriptors(calc, ethanol_atoms, "sum")
    y = X @ np.random.default_rng(4).normal(size=X.shape[1])
    frames = []
    for a, v in zip(ethanol_atoms, y):
        a = a.copy()
        a.info["target"] = float(v)
        frames.append(a)
    frames.append(ase.Atoms("HF", positions=[[0, 0, 0], [0, 0, 0.92]], info={"target": 0.0}))
    data = tmp_path / "d.extxyz"
    ase.io.write(data, frames)
    out = tmp_path / "head.mlff"
    args = ["fit-head", str(mpath), str(data), "--target", "target", "--pooling", "sum", "--splits", "3"]
    assert main(args) == 1  # fluorine: not in the model
    assert "F that the model (H, C, O) has no descriptors for" in capsys.readouterr().err
    assert main(args + ["--skip-unknown", "-o", str(out)]) == 0
    text = capsys.readouterr()
    assert "left out 1 structures with F" in text.err and "test MAE" in text.out
    head = H.load_head(out)
    assert head.pooling == "sum" and head.target == "target" and head.model_sha256 == calc.model.source["sha256"]
    np.testing.assert_allclose(head.predict(calc, ethanol_atoms[:3]), y[:3], rtol=1e-5, atol=1e-5 * np.std(y))
    assert main(args + ["--skip-unknown", "-o", str(out)]) == 2  # exists
    assert main(["fit-head", str(mpath), str(data), "--target", "nope"]) == 1
    assert "no info key 'nope'" in capsys.readouterr().err
    assert main(args + ["--skip-unknown", "--n-train", "500"]) == 2
    other = tmp_path / "other.mlff"
    save_model(_schnet(seed=5), other)
    with pytest.raises(InputError, match="fitted on the descriptors of a schnet model .*m.mlff.*same family, other "
                                         "weights"):
        head.predict(MLFFCalculator(str(other)), ethanol_atoms[:1])
    with pytest.raises(ModelFileError, match="not a ridge head"):
        H.load_head(mpath)


def _bpnn_hco():
    from ase_mlff.models.bpnn import BPNNModel

    frames = list(mdata.read(ETHANOL, index=":20", energy_unit="kcal/mol"))
    torch.manual_seed(0)
    return BPNNModel.from_config(BPNNModel.config_for_frames(
        {"species": [1, 6, 8], "cutoff": 4.0, "hidden": [4], "n_radial": 3, "n_eta": 1, "zetas": [1]}, frames))


def test_head_checks_the_model_identity_in_memory_and_from_files(tmp_path, ethanol_atoms):
    """A head is refused, with both families and hashes named, by any model but the one it was
    fitted on: a SchNet of other weights (in memory: it used to give a wrong number), a BPNN
    or a committee (a raw broadcasting ValueError); the same model in memory, from its file or
    evaluated in another dtype is accepted, also after the head went through a file."""
    model = _schnet()
    path = tmp_path / "m.mlff"
    save_model(model, path)  # float32 file
    calc = MLFFCalculator(model, dtype="float64")  # in memory, cast exactly to float64
    X = H.pooled_descriptors(calc, ethanol_atoms, "sum")
    y = X @ np.random.default_rng(4).normal(size=X.shape[1])
    head, _ = H.fit_head(calc, (ethanol_atoms, y), "target", pooling="sum", n_train=45, n_splits=2)
    head.save(tmp_path / "head.mlff")
    loaded = H.load_head(tmp_path / "head.mlff")
    assert loaded.descriptor == head.descriptor == H.model_identity(calc.model)
    assert head.descriptor["family"] == "schnet" and head.model_sha256 is None  # fitted in memory
    tol = 1e-6 * np.abs(y).max()
    for h in (head, loaded):
        np.testing.assert_allclose(h.predict(calc, ethanol_atoms[:3]), y[:3], atol=tol)
        # the same weights from the file: float64 (exact cast) and float32 (the file's own dtype)
        np.testing.assert_allclose(h.predict(MLFFCalculator(str(path), dtype="float64"), ethanol_atoms[:3]),
                                   y[:3], atol=tol)
        np.testing.assert_allclose(h.predict(MLFFCalculator(str(path)), ethanol_atoms[:3]), y[:3],
                                   atol=1e-4 * np.abs(y).max())
    others = {"same family, other weights": MLFFCalculator(_schnet(seed=5), dtype="float64"),
              "another family": MLFFCalculator(_bpnn_hco(), dtype="float64"),
              "another family ": MLFFCalculator(committee_from_models([_schnet(seed=s) for s in (0, 1)]),
                                                dtype="float64")}
    for why, other in others.items():
        theirs = H.model_identity(other.model)
        for h in (head, loaded):
            with pytest.raises(InputError) as err:
                h.predict(other, ethanol_atoms[:2])
            text = str(err.value)
            assert why.strip() in text and head.descriptor["sha256"][:16] in text and theirs["sha256"][:16] in text
            assert f"a schnet model" in text and f"this {theirs['family']} model" in text


def test_heads_written_before_the_identity_check_their_model_file(tmp_path, ethanol_atoms):
    """A head that records only its model file's sha256 (written by an older ase-mlff) works
    with that file, and is refused, with how to refit, by another file or a model in memory;
    one that records no model at all is refused by every model."""
    from ase_mlff.io import read_archive, write_archive

    model = _schnet()
    path, other = tmp_path / "m.mlff", tmp_path / "other.mlff"
    save_model(model, path)
    save_model(_schnet(seed=5), other)
    calc = MLFFCalculator(str(path))
    X = H.pooled_descriptors(calc, ethanol_atoms, "mean")
    y = X @ np.random.default_rng(6).normal(size=X.shape[1])
    head, _ = H.fit_head(calc, (ethanol_atoms, y), "target", pooling="mean", n_train=45, n_splits=2)
    assert head.model_sha256 == calc.model.source["sha256"]
    head.save(tmp_path / "new.mlff")
    meta, arrays = read_archive(tmp_path / "new.mlff")
    del meta["descriptor_model"]  # what older versions wrote
    write_archive(tmp_path / "old.mlff", meta, arrays)
    old = H.load_head(tmp_path / "old.mlff")
    assert old.descriptor is None
    np.testing.assert_allclose(old.predict(calc, ethanol_atoms[:3]), head.predict(calc, ethanol_atoms[:3]), rtol=1e-12)
    with pytest.raises(InputError, match="only by the sha256 of its file.*not loaded from a file.*fit-head"):
        old.predict(MLFFCalculator(_schnet()), ethanol_atoms[:1])  # the same weights, but nothing to tell by
    with pytest.raises(InputError, match="model file with sha256 .* not .*other.mlff"):
        old.predict(MLFFCalculator(str(other)), ethanol_atoms[:1])
    meta["model_sha256"] = None  # an old head fitted on a model in memory
    write_archive(tmp_path / "anonymous.mlff", meta, arrays)
    with pytest.raises(InputError, match="records no identity of its descriptor model.*fit-head"):
        H.load_head(tmp_path / "anonymous.mlff").predict(calc, ethanol_atoms[:1])
