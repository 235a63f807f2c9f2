"""One training shape: ase_mlff.train(family, ...) for every family, options from flags or a
YAML config, shared metrics (named as in ase-mlff eval) and records, and the layering rules."""

from __future__ import annotations

import argparse
import ast
import json
import os
import warnings

import numpy as np
import pytest
import torch

import ase_mlff
from ase_mlff.metrics import frame_metrics
from ase_mlff.training import common

DATA = os.path.join(os.path.dirname(__file__), "data")
ETH = os.path.join(DATA, "rmd17_ethanol_300.npz")
NI = os.path.join(DATA, "ni_mlearn_20.extxyz")
PKG = os.path.dirname(ase_mlff.__file__)

MFF_SMALL = dict(rc2=4.0, rc3=2.6, n_test=5, n_energy=3, n_force_atoms=4, hyper_energy=2, hyper_force_atoms=2,
                 h2=0.25, h3=0.4, samples_per_interval=1, n_gp_eval=1)
SHARED_KEYS = {"family", "recipe", "source", "data_sha256", "units", "seed", "options", "split", "metrics"}


@pytest.fixture(scope="module")
def trained():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sg = ase_mlff.train("sgdml", ETH, energy_unit="kcal/mol", n_train=20, n_valid=10, sigmas=[20, 30], n_test=15)
    mff = ase_mlff.train("mff", NI, **MFF_SMALL)
    return {"sgdml": sg, "mff": mff}


def _eval_metric_names():
    """Every key ase-mlff eval can write (EvalResult.metrics on labelled energies, forces, stress)."""
    from ase_mlff.workflows.evaluate import EvalResult

    r = EvalResult(2, 3, np.ones(2), np.ones(2) + 0.1, np.array([1.0, 2.0]), np.zeros((3, 3)), np.ones((3, 3)),
                   np.array([[28] * 3, [28] * 3, [13] * 3]), np.zeros((1, 6)), np.ones((1, 6)), 1.0)
    return r.metrics()


@pytest.mark.parametrize("family", ["sgdml", "mff"])
def test_train_returns_model_and_the_record_its_file_keeps(trained, family, tmp_path):
    from ase_mlff.io import load_model, read_metadata, save_model

    model, record = trained[family]
    assert model.family == family and record["family"] == family
    assert SHARED_KEYS <= set(record)
    assert set(record["split"]) == {"train", "valid", "test"}
    assert not set(record["split"]["train"]) & set(record["split"]["test"])
    path = save_model(model, tmp_path / "m.mlff", training=record)
    meta = read_metadata(path)
    assert meta["training_data_hash"] == record["data_sha256"]
    saved = meta["training"]
    assert saved["metrics"] == json.loads(json.dumps(record["metrics"])) and saved["split"] == record["split"]
    assert load_model(path).family == family


def test_metric_names_are_those_of_eval_for_every_family(trained):
    names = set(_eval_metric_names())
    per_element = set(_eval_metric_names()["forces_per_element"]["Ni"])
    for family, (_, record) in trained.items():
        test = record["metrics"]["test"]
        assert {"energy_per_atom_mae_meV", "forces_rmse_meV_per_A", "forces_per_element"} <= set(test), family
        assert set(test) <= names | {"per_config_type"}, (family, set(test) - names)
        for el, row in test["forces_per_element"].items():
            assert set(row) == per_element, (family, el)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_shared_metrics_equal_eval_on_the_same_predictions(rng):
    """frame_metrics and ase-mlff eval give the same table for the same labelled predictions."""
    from ase_mlff.data import Frame
    from ase_mlff.workflows.evaluate import EvalResult

    frames, preds = [], []
    for k in range(4):
        n = 3 + k
        numbers = rng.choice([1, 8, 28], n)
        fr = Frame(numbers, rng.normal(size=(n, 3)) * 3, np.eye(3) * 9, np.ones(3, bool), float(rng.normal()),
                   rng.normal(size=(n, 3)), rng.normal(size=6) * 1e-3)
        frames.append(fr)
        preds.append({"energy": fr.energy + rng.normal() * 0.01, "forces": fr.forces + rng.normal(size=(n, 3)) * 0.02,
                      "stress": fr.stress + rng.normal(size=6) * 1e-4})
    ours = frame_metrics(frames, preds)
    ev = EvalResult(
        len(frames), sum(len(f) for f in frames), np.array([f.energy for f in frames]),
        np.array([p["energy"] for p in preds]), np.array([len(f) for f in frames], float),
        np.concatenate([f.forces for f in frames]), np.concatenate([p["forces"] for p in preds]),
        np.concatenate([np.repeat(f.numbers[:, None], 3, 1) for f in frames]),
        np.array([f.stress for f in frames]), np.array([p["stress"] for p in preds]), 1.0).metrics()
    assert _flat(ours) == pytest.approx(_flat(ev), rel=1e-12, abs=0)
    assert set(_flat(ours)) == set(_flat(ev))


def test_metrics_per_config_type():
    from ase_mlff.data import Frame

    frames = [Frame(np.array([28]), np.zeros((1, 3)), energy=float(k), forces=np.zeros((1, 3)),
                    info={"config_type": t}) for k, t in enumerate(["bulk", "surface", "bulk"])]
    preds = [{"energy": fr.energy + (0.001 if i == 1 else 0.0), "forces": np.zeros((1, 3))}
             for i, fr in enumerate(frames)]
    m = frame_metrics(frames, preds)
    assert set(m["per_config_type"]) == {"bulk", "surface"}
    assert m["per_config_type"]["bulk"]["n_frames"] == 2 and m["per_config_type"]["bulk"]["energy_mae_meV"] == 0
    assert m["per_config_type"]["surface"]["energy_mae_meV"] == pytest.approx(1.0)


def test_reference_energies_recover_per_element_constants(rng):
    from ase_mlff.data import Frame

    e0 = {1: -13.6, 8: -432.1}
    frames = []
    for _ in range(6):
        z = rng.choice([1, 8], 5)
        frames.append(Frame(z, rng.normal(size=(5, 3)), energy=float(sum(e0[int(a)] for a in z))))
    frames.append(Frame(np.array([1]), np.zeros((1, 3))))  # no energy: ignored
    np.testing.assert_allclose(common.reference_energies(frames, [1, 8]), [e0[1], e0[8]], rtol=1e-12)


# ------------------------------------------------------------------------------ options
def test_yaml_config_keys_are_flag_names_and_flags_win(tmp_path):
    from ase_mlff.training import mff_train

    cfg = tmp_path / "mff.yaml"
    cfg.write_text("data: train.extxyz\nrc2: 4.5\nn-test: 7\nno_optimise: true\noutput: m.mlff\n")
    p = mff_train.configure_parser(argparse.ArgumentParser())
    opts = common.resolve_options(mff_train.OPTIONS, p.parse_args(["--config", str(cfg), "--rc2", "5.0"]),
                                  extra=("data",))
    assert opts["rc2"] == 5.0  # the flag beats the config
    assert opts["n_test"] == 7 and opts["no_optimise"] is True and opts["data"] == "train.extxyz"
    assert opts["rc3"] == 3.7  # default
    # a flag typed with its default value still beats the config
    opts = common.resolve_options(mff_train.OPTIONS, p.parse_args(["--config", str(cfg), "--n-test", "60"]),
                                  extra=("data",))
    assert opts["n_test"] == 60
    # the parsed namespace itself carries the defaults (callers that bypass the config see them)
    assert p.parse_args([]).rc3 == 3.7


@pytest.mark.parametrize("family", ["sgdml", "mff"])
def test_bad_config_is_a_usage_error(family, tmp_path, capsys):
    from ase_mlff.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("n_trian: 10\n")
    assert main(["train", family, "--config", str(cfg), "-o", str(tmp_path / "m.mlff")]) == 2
    assert "n_trian" in capsys.readouterr().err
    cfg.write_text("- just\n- a list\n")
    assert main(["train", family, "--config", str(cfg), "-o", str(tmp_path / "m.mlff")]) == 2


def test_sgdml_command_from_yaml_config(tmp_path):
    from ase_mlff.cli import main
    from ase_mlff.io import read_metadata

    out = tmp_path / "eth.mlff"
    cfg = tmp_path / "eth.yaml"
    cfg.write_text(f"data: {ETH}\nenergy-unit: kcal/mol\nn_train: 20\nn_valid: 10\nsigmas: [20, 30]\n"
                   f"solver: cholesky\nn_test: 10\noutput: {out}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "sgdml", "--config", str(cfg), "--n-valid", "12"]) == 0
    rec = read_metadata(out)["training"]
    assert rec["n_train"] == 20 and rec["n_valid"] == 12 and rec["sigmas"] == [20.0, 30.0]
    assert rec["metrics"]["test"]["n_frames"] == 10


def test_unknown_family_and_option():
    with pytest.raises(ValueError, match="sgdml"):
        ase_mlff.train("nosuchfamily", NI)
    with pytest.raises(TypeError, match="n_trian"):
        ase_mlff.train("mff", NI, n_trian=3)


# ------------------------------------------------------------------------------ layering
def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


@pytest.mark.parametrize("layer", ["models", "descriptors"])
def test_lower_layers_never_import_training_or_workflows(layer):
    folder = os.path.join(PKG, layer)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            for mod in _imports(os.path.join(folder, name)):
                assert not any(part in ("training", "workflows", "cli") for part in mod.replace(".", " ").split()), \
                    (name, mod)


def test_triangles_of_a_graph_equal_those_of_the_neighbour_list(rng):
    """The model (torch, Graph) and GP training (numpy, neighbour list) see the same triangles."""
    from ase.build import bulk

    from ase_mlff.descriptors.nbody import triangles
    from ase_mlff.graph import graph_from_structure
    from ase_mlff.neighbors import neighbor_list

    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.1, seed=3)
    rc3 = 3.0
    g = graph_from_structure(atoms, rc3)
    vec = g.edge_vectors()
    t_graph = triangles(g.edge_index[0], vec, torch.linalg.norm(vec, dim=1), rc3, rc3)
    p = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, rc3)
    t_np = triangles(p.i, p.vectors, p.distances, rc3, rc3)
    assert len(t_graph) == len(t_np) > 0
    np.testing.assert_allclose(np.sort(t_graph.rjk.numpy()), np.sort(t_np.rjk), atol=1e-12)
