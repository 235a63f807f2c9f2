"""SchNet family: unknown elements, a short training on real frames, and transfer learning
(frozen groups stay bit-identical, impossible transfers refused, the parent's hash recorded).
The contract itself (derivatives, stress, invariances, file round trip) is checked by the
conformance suite on tests/conformance_examples.py's schnet example."""

import hashlib
import os

import numpy as np
import pytest
import torch
from ase import Atoms

from ase_mlff import data
from ase_mlff.calculator import MLFFCalculator
from ase_mlff.cli import main as cli_main
from ase_mlff.errors import InputError
from ase_mlff.graph import graph_from_structure
from ase_mlff.io import load_model, read_metadata, save_model
from ase_mlff.models.schnet import SchNetModel
from ase_mlff.training.schnet_train import evaluate_frames, train_schnet

DATA = os.path.join(os.path.dirname(__file__), "data")
ETHANOL = os.path.join(DATA, "rmd17_ethanol_300.npz")
WATER = os.path.join(DATA, "water_deepmd_4.extxyz")
SMALL = {"cutoff": 4.0, "n_features": 16, "n_interactions": 2, "n_rbf": 12}


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def ethanol():
    return data.read(ETHANOL, energy_unit="kcal/mol")


def _parent(tmp_path, species=(1, 6, 8), cutoff=4.0, name="parent.mlff"):
    """A small random SchNet with reference energies, saved to a file (transfer does not need
    a trained parent to show what is frozen and what is refused)."""
    torch.manual_seed(1)
    model = SchNetModel(species, cutoff=cutoff, n_features=16, n_interactions=2, n_rbf=12,
                        reference_energies=[-13.6 - k for k in range(len(species))], energy_scale=1.0)
    path = tmp_path / name
    save_model(model, path, training={"note": "test parent"})
    return path


def test_unknown_element_is_a_clear_input_error():
    model = SchNetModel([1, 8], **SMALL)
    atoms = Atoms("OHN", positions=[[0, 0, 0], [0.96, 0, 0], [0, 1.2, 0]])
    with pytest.raises(InputError, match="N not known to this schnet model"):
        MLFFCalculator(model).get_potential_energy(atoms)
    g = graph_from_structure(data.Frame(numbers=atoms.numbers, positions=atoms.positions), model.cutoff,
                             dtype=model.dtype)
    with pytest.raises(InputError, match="N not known"):
        model.compute(g)


def test_periodic_water_gives_energy_forces_stress():
    ds = data.read(WATER)
    model = SchNetModel(ds.elements, **SMALL)
    atoms = ds[0].to_atoms()
    atoms.calc = MLFFCalculator(model)
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert np.all(np.isfinite(atoms.get_stress()))


def test_short_training_lowers_the_validation_force_error(ethanol):
    """20 epochs on 40 ethanol frames: the validation force MAE falls below 70 % of that of
    predicting zero forces (the untrained model is close to that baseline). Not timed."""
    model, report = train_schnet(ethanol, 40, 20, 0, epochs=20, lr=5e-3, batch_size=4, **SMALL)
    valid = [ethanol.frames[k] for k in report["split"]["valid"]]
    zero_mae = 1e3 * np.mean(np.abs(np.concatenate([f.forces.ravel() for f in valid])))
    assert report["valid"]["forces_mae_meV_per_A"] < 0.7 * zero_mae
    assert evaluate_frames(model, valid)["forces_mae_meV_per_A"] == pytest.approx(
        report["valid"]["forces_mae_meV_per_A"])


@pytest.mark.parametrize("freeze", [["embedding"], ["embedding", "interactions"], []])
def test_frozen_groups_stay_bit_identical_and_the_others_train(ethanol, tmp_path, freeze):
    path = _parent(tmp_path)
    parent = load_model(path)
    model, report = train_schnet(ethanol, 16, 8, 0, init=str(path), freeze=freeze, epochs=2, batch_size=4,
                                 lr=5e-3, weight_decay=0.1, ema=0.9)
    before, after = parent.get_arrays(), model.get_arrays()
    assert before.keys() == after.keys()
    for name, value in after.items():
        group = name.split(".")[0]
        if group in freeze:
            assert np.array_equal(value, before[name]), f"{name} is frozen but changed"
        else:
            assert not np.array_equal(value, before[name]), f"{name} should have trained"
    for group, params in model.parameter_groups().items():
        assert all(p.requires_grad == (group not in freeze) for _, p in params)
    # the parent's reference energies, energy scale and cutoff are kept
    assert model.config["reference_energies"] == parent.config["reference_energies"]
    assert model.config["energy_scale"] == parent.config["energy_scale"]
    assert model.cutoff == parent.cutoff
    assert report["parent"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["parent"]["freeze"] == freeze


def test_new_element_gets_an_embedding_and_a_reference_energy(ethanol, tmp_path):
    path = _parent(tmp_path, species=(1, 6))  # no oxygen
    model, _ = train_schnet(ethanol, 8, 4, 0, init=str(path), freeze=["interactions"], epochs=1, batch_size=4)
    assert model.species == [1, 6, 8]
    assert model.config["reference_energies"][:2] == load_model(path).config["reference_energies"]


def _cli(args, capsys):
    code = cli_main(["train", "schnet", ETHANOL, "--energy-unit", "kcal/mol", "--n-train", "8", "--n-valid", "4",
                     "--n-test", "4", "--epochs", "1", "--batch-size", "4", "--no-plots", *args])
    return code, capsys.readouterr()


@pytest.mark.parametrize("case, message", [
    ("new_element_frozen_embedding", "not in the parent model"),
    ("cutoff", "differs from the parent's"),
    ("family", "only a schnet model can initialise"),
    ("unknown_group", "the groups are embedding, interactions, output"),
    ("freeze_without_init", "--freeze needs --init"),
])
def test_cli_refuses_impossible_transfers(tmp_path, capsys, case, message):
    out = str(tmp_path / "child.mlff")
    if case == "new_element_frozen_embedding":
        args = ["--init", str(_parent(tmp_path, species=(1, 6))), "--freeze", "embedding"]
    elif case == "cutoff":
        args = ["--init", str(_parent(tmp_path)), "--cutoff", "5.0"]
    elif case == "family":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        args = ["--init", os.path.join(root, "potentials", "ethanol_sgdml.mlff")]
    elif case == "unknown_group":
        args = ["--init", str(_parent(tmp_path)), "--freeze", "embedding,filters"]
    else:
        args = ["--freeze", "output"]
    code, cap = _cli([*args, "-o", out], capsys)
    assert code == 2
    assert message in cap.err
    assert not os.path.exists(out)


def test_cli_fine_tuning_records_the_parent_hash(tmp_path, capsys):
    parent = _parent(tmp_path)
    out = tmp_path / "child.mlff"
    code, cap = _cli(["--init", str(parent), "--freeze", "embedding", "--freeze", "interactions", "-o", str(out)],
                     capsys)
    assert code == 0, cap.err
    meta = read_metadata(out)
    rec = meta["training"]["parent"]
    assert rec["sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert rec["freeze"] == ["embedding", "interactions"]
    child = load_model(out)
    assert np.array_equal(child.get_arrays()["embedding.weight"], load_model(parent).get_arrays()["embedding.weight"])


def test_cli_committee_of_schnet_models(tmp_path, capsys):
    out = tmp_path / "committee.mlff"
    code, cap = _cli(["--committee", "2", "--committee-frames", "6", *sum(([k, str(v)] for k, v in (
        ("--cutoff", 4.0), ("--n-features", 8), ("--n-interactions", 1), ("--n-rbf", 8))), []), "-o", str(out)],
        capsys)
    assert code == 0, cap.err
    model = load_model(out)
    assert model.family == "committee" and [m.family for m in model.members] == ["schnet", "schnet"]
    atoms = data.read(ETHANOL, index="0", energy_unit="kcal/mol")[0].to_atoms()
    atoms.calc = MLFFCalculator(model, uncertainty=True)
    assert atoms.get_forces().shape == (9, 3)
    assert np.all(atoms.calc.results["forces_uncertainty"] >= 0)


# ----------------------------------------------------------------------------- serving path
def _water_graph(dtype, repeat=(1, 1, 1)):
    import ase.io

    atoms = ase.io.read(WATER, 0).repeat(repeat)
    return graph_from_structure(atoms, 5.0, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tabulated_filters_give_the_network_numbers(dtype):
    """The serving path (filter networks replaced by cubic Hermite tables, fused C++ pass)
    against autograd through the network itself, at the default width, on a periodic box."""
    torch.manual_seed(3)
    model = SchNetModel([1, 8], dtype=dtype, energy_scale=3.0)
    graph = _water_graph(getattr(torch, dtype))
    assert model.uses_analytic(graph)
    fast = model.compute(graph, forces=True, stress=True)
    exact = model._autograd(graph, True, True, False)
    tol = {"float32": 1e-5, "float64": 1e-8}[dtype]  # float32: sums over 10^4 pairs round at ~2e-6
    fscale = float(exact.forces.abs().max())
    assert float((fast.forces - exact.forces).abs().max()) <= tol * fscale
    assert float((fast.virial - exact.virial).abs().max()) <= tol * float(exact.virial.abs().max())
    assert float((fast.energies - exact.energies).abs().max()) <= tol * 3.0


def test_compiled_convolution_equals_the_torch_fallback(monkeypatch):
    from ase_mlff.models import schnet

    if schnet._core is None:
        pytest.skip("compiled extension without cfconv")
    torch.manual_seed(4)
    model = SchNetModel([1, 8], dtype="float64")
    graph = _water_graph(torch.float64)
    compiled = model.compute(graph, forces=True, stress=True)
    monkeypatch.setattr(schnet, "_core", None)
    fallback = model.compute(graph, forces=True, stress=True)
    for a, b in ((compiled.forces, fallback.forces), (compiled.virial, fallback.virial),
                 (compiled.energies, fallback.energies)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-12)


def test_tables_follow_the_weights_and_training_uses_the_network():
    torch.manual_seed(5)
    model = SchNetModel([1, 8], dtype="float64", **SMALL)
    graph = _water_graph(torch.float64)
    before = model.compute(graph, forces=True).energy
    with torch.no_grad():
        model.interactions[0].filter2.bias.add_(0.1)  # in place: the table must be rebuilt
    after = model.compute(graph, forces=True).energy
    exact = model._autograd(graph, True, False, False).energy
    assert float(abs(after - before)) > 1e-6
    np.testing.assert_allclose(after.numpy(), exact.numpy(), rtol=1e-12)
    # training (create_graph) differentiates the network, whose forces have second derivatives
    out = model.compute(graph, forces=True, create_graph=True)
    assert out.forces.requires_grad
    (out.forces ** 2).sum().backward()
    assert model.interactions[0].filter1.weight.grad is not None


def test_short_range_prior_in_both_paths_and_zero_on_training_frames(ethanol):
    """The ZBL wall (models/prior.py) enters the serving path and the network path alike, its
    forces are derivatives, and the recipe's wall is exactly zero on the training frames."""
    from ase_mlff.models.prior import repulsion_for

    torch.manual_seed(6)
    frames = ethanol.frames[:20]
    model = SchNetModel([1, 6, 8], dtype="float64", **SMALL)
    rep = repulsion_for(frames, model.species, model.cutoff)
    model.set_repulsion(rep)
    for f in frames:  # zero on the frames it was built from
        g = graph_from_structure(f, model.cutoff, dtype=torch.float64)
        assert float(model.prior_energies(g).abs().max()) == 0.0
    squeezed = frames[0].to_atoms()
    squeezed.positions[1] = squeezed.positions[0] + 0.45 * (squeezed.positions[1] - squeezed.positions[0])
    g = graph_from_structure(squeezed, model.cutoff, dtype=torch.float64)
    assert float(model.prior_energies(g).sum()) > 1.0  # the wall is on
    fast = model.compute(g, forces=True)
    exact = model._autograd(g, True, False, False)
    # the wall makes forces of ~160 eV/Å: compare relative to the largest component
    np.testing.assert_allclose(fast.forces.numpy(), exact.forces.numpy(), rtol=0,
                               atol=1e-12 * float(exact.forces.abs().max()))
    calc = MLFFCalculator(model)
    e = lambda x: (squeezed.set_positions(x), calc.get_potential_energy(squeezed))[1]  # noqa: E731
    x0 = squeezed.positions.copy()
    h = 1e-5
    for a in range(3):
        xp, xm = x0.copy(), x0.copy()
        xp[1, a] += h
        xm[1, a] -= h
        fd = -(e(xp) - e(xm)) / (2 * h)
        squeezed.set_positions(x0)
        assert abs(calc.get_forces(squeezed)[1, a] - fd) < 1e-5 * max(1.0, abs(fd))


def test_serving_path_threads_give_the_same_numbers():
    """The compiled convolution on 1 and 2 threads (pool.hpp): forward identical, gradients
    equal up to the order of the per-thread sums (float64 here)."""
    import ase_mlff
    from ase_mlff.models import schnet

    if schnet._core is None:
        pytest.skip("compiled extension without cfconv")
    torch.manual_seed(7)
    model = SchNetModel([1, 8], dtype="float64")
    graph = _water_graph(torch.float64, repeat=(2, 2, 1))  # ~40k pairs: above the threading threshold
    assert graph.edge_index.shape[1] >= 20000
    before = ase_mlff.get_num_threads()
    try:
        outs = {}
        for n in (1, 2):
            ase_mlff.set_num_threads(n)
            outs[n] = model.compute(graph, forces=True, stress=True)
    finally:
        ase_mlff.set_num_threads(before)
    assert torch.equal(outs[1].energies, outs[2].energies)
    np.testing.assert_allclose(outs[1].forces.numpy(), outs[2].forces.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(outs[1].virial.numpy(), outs[2].virial.numpy(), rtol=1e-12, atol=1e-12)
