"""Behler–Parrinello family: symmetry functions against plain loops, exact derivatives,
invariances, the selection rule, file round trip and a short training on real frames."""

import math
import os
import sys

import numpy as np
import pytest
import torch
from ase.io import read

from ase_mlff import data
from ase_mlff.calculator import MLFFCalculator
from ase_mlff.descriptors.acsf import ACSF, SymmetryFunctionSet, library_for, library_values, select_functions
from ase_mlff.errors import InputError
from ase_mlff.graph import graph_from_structure
from ase_mlff.io import load_model, save_model
from ase_mlff.models.bpnn import BPNNModel
from ase_mlff.training.bpnn_train import (cache_frame, evaluate_cached, fit, predict_cached, prepare_model,
                                          repulsion_for, trainer_options)

sys.path.insert(0, os.path.dirname(__file__))
from fd import numerical_forces, numerical_stress  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
WATER = os.path.join(DATA, "water_deepmd_4.extxyz")
ETHANOL = os.path.join(DATA, "rmd17_ethanol_300.npz")
RC = 4.0  # Å: short, so that the plain loops below stay fast


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def water_frames():
    return data.read(WATER).frames


def ethanol_frames(index=":"):
    return data.read(ETHANOL, index=index, energy_unit="kcal/mol").frames


def water_slab():
    """A water frame cut to z < 7 Å, periodic in x and y, 8 Å of vacuum along z."""
    atoms = read(WATER, index=0)
    atoms = atoms[atoms.positions[:, 2] < 7.0]
    cell = atoms.cell.array.copy()
    cell[2, 2] = 15.0
    atoms.set_cell(cell)
    atoms.pbc = (True, True, False)
    return atoms


def small_set(species, cutoff=RC):
    """A library with every kind of function (several η, r_s, ζ up to 4 and both λ)."""
    rmin = np.full((len(species), len(species)), 0.9)
    return library_for(species, cutoff, rmin, n_radial=3, n_eta=3, zetas=(1, 2, 4), lambdas=(-1, 1))


# ------------------------------------------------------------------ the independent reference
def reference_library(atoms, sfset: SymmetryFunctionSet, centres):
    """Symmetry functions by plain loops: neighbours by brute force over periodic images,
    then G2 over pairs and G5 over unique neighbour pairs (triplets), straight from Hellström & Behler 2020."""
    rc = sfset.cutoff
    species = list(sfset.species)
    pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    reach = [int(math.ceil(rc / (abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3]))))) if pbc[d] else 0
             for d in range(3)]
    rows = []
    for i in centres:
        I = species.index(atoms.numbers[i])
        neigh = []  # (element index, vector)
        for j in range(len(atoms)):
            for a in range(-reach[0], reach[0] + 1):
                for b in range(-reach[1], reach[1] + 1):
                    for c in range(-reach[2], reach[2] + 1):
                        if j == i and a == b == c == 0:
                            continue
                        v = pos[j] + a * cell[0] + b * cell[1] + c * cell[2] - pos[i]
                        r = math.sqrt(v @ v)
                        if r < rc:
                            neigh.append((species.index(atoms.numbers[j]), v, r))

        def fc(r):
            return 0.5 * (math.cos(math.pi * r / rc) + 1.0)

        row = []
        for J in range(len(species)):
            for n in range(sfset.n_radial):
                eta, rs = sfset.radial_eta[I, J, n], sfset.radial_shift[I, J, n]
                row.append(sum(math.exp(-eta * (r - rs) ** 2) * fc(r) for e, v, r in neigh if e == J))
        for J in range(len(species)):
            for K in range(J, len(species)):
                for eta in sfset.angular_eta[I]:
                    for zeta, lam in zip(sfset.angular_zeta, sfset.angular_lambda):
                        total = 0.0
                        for p in range(len(neigh)):
                            for q in range(p + 1, len(neigh)):
                                (ej, vj, rj), (ek, vk, rk) = neigh[p], neigh[q]
                                if sorted((ej, ek)) != [J, K]:
                                    continue
                                cos = (vj @ vk) / (rj * rk)
                                total += ((1 + lam * cos) ** zeta * math.exp(-eta * (rj ** 2 + rk ** 2))
                                          * fc(rj) * fc(rk))
                        row.append(2.0 ** (1 - zeta) * total)
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("system", ["water_bulk", "ethanol", "water_slab"])
def test_symmetry_functions_equal_plain_loops(system):
    if system == "water_bulk":
        atoms = read(WATER, index=1)
        centres = [0, 1, 2, 50, 100, 191]
    elif system == "ethanol":
        atoms = ethanol_frames("0")[0].to_atoms()
        centres = range(len(atoms))
    else:
        atoms = water_slab()
        # atoms nearest the vacuum (z small) and one in the middle
        order = np.argsort(atoms.positions[:, 2])
        centres = [int(order[0]), int(order[1]), int(order[len(order) // 2]), int(order[-1])]
    sfset = small_set(sorted(set(atoms.numbers.tolist())))
    acsf = ACSF(sfset)
    got = acsf(graph_from_structure(atoms, RC, dtype=torch.float64)).numpy()[list(centres)]
    want = reference_library(atoms, sfset, centres)
    assert got.shape == want.shape == (len(list(centres)), sfset.n_library)
    assert np.abs(want).max() > 1.0  # not a trivial comparison of zeros
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ model fixtures
@pytest.fixture(scope="module")
def water_model():
    """Random weights, functions/scaling/e0 from the four water frames, float64."""
    model, _ = prepare_model(water_frames(), cutoff=RC, hidden=(12, 12), n_radial=4, n_eta=3, dtype="float64", seed=1)
    return model


def test_forces_and_stress_are_exact_derivatives(water_model):
    atoms = read(WATER, index=2)
    atoms.calc = MLFFCalculator(water_model)
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    assert np.abs(forces).max() > 0.1 and np.abs(stress).max() > 1e-4  # the model is not trivially flat
    components = [(0, 0), (7, 2), (191, 1)]
    numeric = numerical_forces(atoms, d=1e-4, components=components)
    for a, c in components:
        assert numeric[a, c] == pytest.approx(forces[a, c], abs=1e-6)
    np.testing.assert_allclose(numerical_stress(atoms), stress, atol=1e-7)


def test_slab_stress_and_forces(water_model):
    atoms = water_slab()
    atoms.calc = MLFFCalculator(water_model)
    stress = atoms.get_stress()
    np.testing.assert_allclose(numerical_stress(atoms), stress, atol=1e-7)


def test_invariances(water_model):
    atoms = read(WATER, index=3)
    atoms.calc = MLFFCalculator(water_model)
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    # energies of ~3e4 eV: float64 sums of the per-atom energies in another order agree to a few
    # ulps (measured 1.5e-11 eV, 5e-16 relative); 1e-13 relative is ~450 eps
    rel = 1e-13
    # translation (atoms wrapped back into the cell: same structure)
    moved = atoms.copy()
    moved.positions += [1.3, -2.1, 0.7]
    moved.wrap()
    moved.calc = MLFFCalculator(water_model)
    assert moved.get_potential_energy() == pytest.approx(e0, rel=rel, abs=0)
    np.testing.assert_allclose(moved.get_forces(), f0, atol=1e-8)
    # permutation of the atoms
    perm = np.random.default_rng(0).permutation(len(atoms))
    shuffled = atoms[perm]
    shuffled.calc = MLFFCalculator(water_model)
    assert shuffled.get_potential_energy() == pytest.approx(e0, rel=rel, abs=0)
    np.testing.assert_allclose(shuffled.get_forces(), f0[perm], atol=1e-8)
    # rotation of cell and positions together
    angle = 0.7
    R = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    R = R @ np.array([[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]])
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
    rotated.positions = atoms.positions @ R.T
    rotated.calc = MLFFCalculator(water_model)
    assert rotated.get_potential_energy() == pytest.approx(e0, rel=rel, abs=0)
    np.testing.assert_allclose(rotated.get_forces(), f0 @ R.T, atol=1e-8)


def test_unknown_element_is_named(water_model):
    ethanol = ethanol_frames("0")[0].to_atoms()
    ethanol.calc = MLFFCalculator(water_model)
    with pytest.raises(InputError, match=r"\bC\b.*trained on H, O"):
        ethanol.get_potential_energy()
    with pytest.raises(InputError, match=r"\bC\b"):  # the model itself, without the calculator
        water_model(graph_from_structure(ethanol, RC, dtype=torch.float64))


def test_save_load_round_trip(water_model, tmp_path):
    path = tmp_path / "water.mlff"
    save_model(water_model, path)
    loaded = load_model(path)
    assert loaded.get_config() == water_model.get_config()
    g = graph_from_structure(read(WATER, index=0), RC, dtype=torch.float64)
    a, b = water_model.compute(g, stress=True), loaded.compute(g, stress=True)
    assert torch.equal(a.energy, b.energy) and torch.equal(a.forces, b.forces) and torch.equal(a.virial, b.virial)


def test_float32_close_to_float64(water_model):
    g = graph_from_structure(read(WATER, index=0), RC, dtype=torch.float64)
    ref = water_model.compute(g)
    m32 = BPNNModel.from_config(water_model.get_config() | {"dtype": "float32"})
    m32.set_arrays({k: v.astype(np.float32) for k, v in water_model.get_arrays().items()})
    out = m32.compute(g.to(dtype=torch.float32))
    assert abs(float(out.energy[0] - ref.energy[0])) / g.n_atoms < 1e-5
    assert float((out.forces.double() - ref.forces).abs().max()) < 1e-3 * float(ref.forces.abs().max())


@pytest.mark.parametrize("with_prior", [False, True])
def test_training_cache_gives_the_serving_forces(water_model, with_prior):
    """The analytic descriptor Jacobian (ACSF.pair_jacobian) and the cached prior give the
    energies and forces of autograd through Model.compute; with_prior: a wall 15 % beyond the
    smallest distances, so that every close pair of the frame is inside it."""
    model = BPNNModel.from_config(water_model.get_config())
    model.load_state_dict(water_model.state_dict())
    frame = water_frames()[1]
    if with_prior:
        rep = repulsion_for([frame], model.species, RC)
        rep["inner"] = (1.15 * np.asarray(rep["inner"])).tolist()
        model.set_repulsion(rep)
    cache = cache_frame(model, frame)
    assert (cache.prior_energy > 0.1) == with_prior  # eV: the wall is on for the close pairs
    E, F = (t.detach() for t in predict_cached(model, [cache], create_graph=False))
    out = model.compute(graph_from_structure(frame, RC, dtype=torch.float64))
    assert float(E[0]) == pytest.approx(float(out.energy[0]), rel=1e-13, abs=0)  # ~3e4 eV, float64 sums
    np.testing.assert_allclose(F.numpy(), out.forces.numpy(), atol=1e-10)


def test_repulsion_is_zero_outside_and_a_wall_inside():
    """Two O atoms: no prior energy at or beyond the inner radius, a steep repulsion inside
    (energy rising and forces pushing apart as the distance shrinks), and the file keeps it."""
    from ase import Atoms

    model, _ = prepare_model(water_frames()[:1], cutoff=RC, hidden=(4,), n_radial=3, n_eta=2, zetas=(1,),
                             dtype="float64", seed=0)
    with torch.no_grad():
        model.nets[1].layers[-1].weight.zero_()  # O network output constant: only the prior acts
        model.nets[1].layers[-1].bias.zero_()
    model.set_repulsion({"inner": [[1.4, 0.9], [0.9, 2.4]], "width": 0.5})
    energies, push = [], []
    for d in (2.5, 2.4, 2.0, 1.6, 1.2):
        atoms = Atoms("O2", positions=[[0, 0, 0], [d, 0, 0]])
        out = model.compute(graph_from_structure(atoms, RC, dtype=torch.float64))
        energies.append(float(out.energy[0]) - 2 * model.config["reference_energies"][1])
        push.append(float(out.forces[1, 0]))
    assert energies[0] == energies[1] == pytest.approx(0.0, abs=1e-12) == push[0] == push[1]
    assert all(b > a for a, b in zip(energies[1:], energies[2:])) and energies[-1] > 5.0  # eV
    assert all(f > 0 for f in push[2:])
    again = BPNNModel.from_config(model.get_config())
    assert again.config["repulsion"] == model.config["repulsion"]
    with pytest.raises(ValueError, match="symmetric"):
        model.set_repulsion({"inner": [[1.4, 0.9], [0.5, 2.4]], "width": 0.5})


# ------------------------------------------------------------------ selection
def test_selection_drops_a_duplicated_function():
    frames = water_frames()[:2]
    base = small_set([1, 8])
    # the same library with the second radial function of every pair replaced by a copy of the first
    eta, rs = base.radial_eta.copy(), base.radial_shift.copy()
    eta[:, :, 1], rs[:, :, 1] = eta[:, :, 0], rs[:, :, 0]
    dup = SymmetryFunctionSet(base.species, base.cutoff, eta, rs, base.angular_eta, base.angular_zeta,
                              base.angular_lambda)
    X = library_values(dup, frames)
    for k in range(2):
        sel = select_functions(X[k])
        for J in range(2):
            first, second = J * dup.n_radial, J * dup.n_radial + 1
            assert first in sel.kept and second not in sel.kept
            assert sel.dropped[second].startswith("correlation 1.000")
    # without the copy, the second functions are kept where they carry information
    X = library_values(base, frames)
    assert any(k * 0 + 1 in select_functions(X[k]).kept for k in range(2))


def test_selection_drops_flat_and_outlier_functions():
    rng = np.random.default_rng(0)
    # a healthy function, a constant one, and one that is zero except for a single atom
    X = np.column_stack([rng.normal(size=10000), np.full(10000, 3.0), np.r_[np.zeros(9999), 100.0]])
    sel = select_functions(X)
    assert sel.kept.tolist() == [0]
    assert sel.dropped[1].startswith("flat") and sel.dropped[2].startswith("outlier")


# ------------------------------------------------------------------ training
def test_short_training_lowers_the_validation_force_error():
    """The BPNN through the shared trainer (its training_batch hook)."""
    frames = ethanol_frames("0:300:5")  # 60 frames spread over the rMD17 excerpt
    train, valid = frames[:30], frames[30:45]
    model, _ = prepare_model(train, cutoff=4.0, hidden=(16, 16), n_radial=5, n_eta=2, zetas=(1, 4), seed=0)
    vc = [cache_frame(model, f) for f in valid]
    before = evaluate_cached(model, vc)["forces_rmse_meV_per_A"]
    model, record = fit(model, train, valid, trainer_options(epochs=20, lr=1e-2, batch_size=10, seed=0))
    after = evaluate_cached(model, vc)["forces_rmse_meV_per_A"]
    # rMD17 ethanol force components have an RMS of ~1.2 eV/Å; 30 frames and 20 epochs reach
    # well under half of the untrained error
    assert after < 0.5 * before and after < 700.0, (before, after)
    assert len(record.history) == 20


# ------------------------------------------------------------------------- fine-tuning (init)
def _cu_frames(n, seed0=0, symbol="Cu"):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    out = []
    for k in range(n):
        a = bulk(symbol, "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        a.rattle(0.1, seed=seed0 + k)
        a.calc = EMT()
        a.get_forces()
        out.append(a)
    return data.Dataset.from_atoms(out)


TINY = dict(cutoff=4.0, hidden=(8,), n_radial=3, n_eta=2, zetas=(1,), dtype="float64")


@pytest.fixture(scope="module")
def cu_parent():
    from ase_mlff.training.bpnn_train import train_bpnn

    parent, _ = train_bpnn(_cu_frames(6), 5, 1, 0, epochs=3, **TINY)
    return parent


def _predictions(model, frames):
    out = []
    with torch.no_grad():
        for f in frames:
            r = model.compute(graph_from_structure(f, model.cutoff, dtype=model.dtype), forces=True)
            out.append((r.energy.double().numpy().copy(), r.forces.double().numpy().copy()))
    return out


def test_init_starts_exactly_where_the_parent_is(cu_parent, tmp_path):
    # the fine-tuned model starts as the parent: descriptor, scaling, e0, energy scale and weights,
    # none of them refitted on its own (other) frames; so before any epoch, and after an epoch whose
    # steps cannot move float64 weights (lr 1e-30), it predicts what the parent predicts, bit for bit
    from ase_mlff.training.bpnn_train import model_from_parent, train_bpnn

    other = _cu_frames(5, seed0=100)  # frames the parent never saw: a refitted scaling would differ
    start = model_from_parent(cu_parent)
    for (e0, f0), (e1, f1) in zip(_predictions(cu_parent, other), _predictions(start, other)):
        np.testing.assert_array_equal(e0, e1)
        np.testing.assert_array_equal(f0, f1)
    path = tmp_path / "parent.mlff"
    save_model(cu_parent, path)
    child, report = train_bpnn(other, 4, 1, 0, init=str(path), epochs=1, lr=1e-30, ema=0.0)
    for (e0, f0), (e1, f1) in zip(_predictions(cu_parent, other), _predictions(child, other)):
        np.testing.assert_array_equal(e0, e1)
        np.testing.assert_array_equal(f0, f1)
    assert report["parent"]["sha256"] and report["reference_energies"]["source"] == "parent"
    assert child.config["reference_energies"] == cu_parent.config["reference_energies"]
    assert child.keep_scaling is False  # only while it trains
    # and it does train: a real fine-tune moves the prediction toward the new labels
    tuned, rep = train_bpnn(other, 4, 1, 0, init=cu_parent, epochs=5, lr=3e-3)
    assert rep["history"][-1]["train_loss"] < rep["history"][0]["train_loss"] * 1.5
    assert not np.array_equal(_predictions(tuned, other)[0][1], _predictions(cu_parent, other)[0][1])


def test_init_refuses_what_cannot_carry_over(cu_parent):
    from ase_mlff.training.bpnn_train import train_bpnn

    with pytest.raises(InputError, match="Ni.*not in the parent model"):
        ds = _cu_frames(4)
        ni = _cu_frames(1, symbol="Ni")
        train_bpnn(data.Dataset(list(ds.frames) + list(ni.frames)), 4, 1, 0, init=cu_parent, epochs=1)
    with pytest.raises(InputError, match="hidden.*differs from the parent's"):
        train_bpnn(_cu_frames(4), 3, 1, 0, init=cu_parent, hidden=(16,), epochs=1)
    with pytest.raises(InputError, match="cutoff.*differs"):
        train_bpnn(_cu_frames(4), 3, 1, 0, init=cu_parent, cutoff=5.0, epochs=1)
    # the parent's own values (as a committee passes its options again) are fine
    train_bpnn(_cu_frames(4), 3, 1, 0, init=cu_parent, epochs=1, cutoff=4.0, hidden=(8,), n_radial=3)


def test_selection_keeps_a_radial_function_of_every_neighbour_pair():
    # pure Cu plus a few Cu-Ni cells: over these data every Cu:Cu function correlates with a
    # Cu:Ni one (composition dominates), and dropping them all would make the pure-Cu cells'
    # inputs independent of their geometry (zero forces on them); one Cu:Cu function stays
    from ase.build import bulk

    from ase_mlff.descriptors.acsf import automatic_set

    frames = []
    for s in range(6):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        if s >= 4:
            a.numbers[::3] = 28
        a.rattle(0.05, seed=s)
        frames.append(a)
    lib, report = automatic_set(frames, 6.0)
    pairs = {label.split()[1] for label in report["Cu"]["kept"] if label.startswith("G2")}
    assert {"Cu:Cu", "Cu:Ni"} <= pairs
    # the pure-Cu cells' descriptors now change with their geometry
    cu = list(lib.species).index(29)
    values = np.concatenate([library_values(lib, [f])[cu][:, lib.selected[cu]] for f in frames[:4]])
    assert np.ptp(values, axis=0).max() > 1e-3 * np.abs(values).max()
