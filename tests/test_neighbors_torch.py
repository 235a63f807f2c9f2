"""Tests of the torch neighbour list (ase_mlff.neighbors_torch) and of the calculator's device path.

The torch list must give the compiled list's pairs exactly (the same decision |v|^2 < rc^2 on
bit-identical vectors, so no tolerance at the cutoff between the two) and, up to ties at the
cutoff, the independent brute force of test_neighbors.py and ASE's list, on the same random
cells (its hypothesis strategy). Everything runs on CPU tensors; the last test repeats the
comparison on a CUDA device and skips without one.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ase_mlff import MLFFCalculator
from ase_mlff.errors import InputError
from ase_mlff.graph import graph_from_structure, graph_from_tensors
from ase_mlff.neighbors import neighbor_list
from ase_mlff.neighbors_torch import CHUNK, TorchNeighborList, torch_neighbor_list
from test_neighbors import ALL_PBC, as_set, brute_force, gas_in_box, structures

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NI = os.path.join(ROOT, "potentials", "ni_mff.mlff")


def keyed(i, j, S, v, d):
    """Pairs sorted by (i, j, S): keys (P, 5) int64, vectors, distances as numpy."""
    i, j, S, v, d = (np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x) for x in (i, j, S, v, d))
    keys = np.concatenate([i[:, None], j[:, None], S.astype(np.int64).reshape(-1, 3)], axis=1)
    order = np.lexsort(keys.T[::-1])
    return keys[order], v.reshape(-1, 3)[order], d[order]


def assert_same_as_compiled(t, p):
    """The same pairs as the compiled list, the same vectors bit for bit; the distances within
    an ulp (torch's vectorised CPU sqrt is not always correctly rounded)."""
    kt, vt, dt = keyed(t.i, t.j, t.shifts, t.vectors, t.distances)
    kp, vp, dp = keyed(p.i, p.j, p.shifts, p.vectors, p.distances)
    assert len(kt) == len(kp) and np.array_equal(kt, kp), (
        f"{len(kt)} pairs instead of {len(kp)}")
    np.testing.assert_array_equal(vt, vp)
    np.testing.assert_allclose(dt, dp, rtol=3e-16, atol=0)


def check_torch_pairs(t, positions, pbc, device="cpu"):
    """Dtypes, devices, shapes, sortedness, no shift along an open direction, no self pair."""
    P = len(t)
    assert t.i.dtype == torch.int64 and t.j.dtype == torch.int64 and t.shifts.dtype == torch.int32
    assert t.vectors.dtype == torch.float64 and t.distances.dtype == torch.float64
    for x in (t.i, t.j, t.shifts, t.vectors, t.distances):
        assert x.device.type == torch.device(device).type
    assert t.shifts.shape == (P, 3) and t.vectors.shape == (P, 3) and t.distances.shape == (P,)
    if P:
        assert bool((t.i[1:] >= t.i[:-1]).all()), "pairs are not sorted by i"
        open_dims = torch.as_tensor(~np.asarray(pbc, dtype=bool), device=t.shifts.device)
        assert not bool((t.shifts[:, open_dims] != 0).any()), "shift along a non-periodic axis"
        assert not bool(((t.i == t.j) & (t.shifts == 0).all(1)).any()), "self pair (i, i, 0)"


def compare_all(positions, cell, pbc, cutoff, chunk=CHUNK, with_ase=True, with_brute=True):
    t = torch_neighbor_list(torch.as_tensor(np.asarray(positions, dtype=np.float64)), cell, pbc, cutoff,
                            chunk=chunk)
    check_torch_pairs(t, positions, pbc)
    p = neighbor_list(positions, cell, pbc, cutoff)
    assert_same_as_compiled(t, p)
    ours = as_set(t.i.numpy(), t.j.numpy(), t.shifts.numpy(), t.distances.numpy(), cutoff)
    if with_brute:
        ref = as_set(*brute_force(positions, cell, pbc, cutoff), cutoff)
        assert ours == ref, (f"{len(ours - ref)} extra pairs, e.g. {sorted(ours - ref)[:3]}; "
                             f"{len(ref - ours)} missing, e.g. {sorted(ref - ours)[:3]}")
    if with_ase:
        atoms = Atoms(positions=positions, cell=cell, pbc=pbc)
        ai, aj, aS, ad = ase_neighbor_list("ijSd", atoms, cutoff, self_interaction=False)
        assert ours == as_set(ai, aj, aS, ad, cutoff)
    return t


# --------------------------------------------------------------------------------------------
# The list: the hypothesis cells of test_neighbors.py, explicit cases, chunking
# --------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures(), st.sampled_from([CHUNK, CHUNK, CHUNK, 256, 4096]))
def test_random_structures_match_compiled_brute_force_and_ase(structure, chunk):
    """Random triclinic, skewed and tiny cells, every periodicity, atoms far outside the cell;
    small chunks make every item and candidate pass a chunk of its own."""
    positions, cell, pbc, cutoff = structure
    compare_all(positions, cell, pbc, cutoff, chunk=chunk)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.floats(0.5, 6.0))
def test_random_gas_in_box_every_periodicity(seed, n, cutoff):
    positions, cell = gas_in_box(seed, n)
    for pbc in ALL_PBC:
        compare_all(positions, cell, np.array(pbc, bool), cutoff, with_ase=False, with_brute=False)


def test_explicit_cases():
    rng = np.random.default_rng(3)
    # one atom in a cell smaller than the cutoff: its images, in +/- pairs
    tiny = np.array([[0.8, 0.0, 0.0], [0.3, 0.9, 0.0], [0.1, -0.2, 0.7]])
    t = compare_all(np.array([[0.1, 0.2, 0.3]]), tiny, [True] * 3, 3.0)
    assert len(t) > 100 and bool((t.i == 0).all()) and bool((t.j == 0).all())
    # a molecule with a zero cell, far from the origin; a wire with zero x and y cell vectors
    mol = rng.normal(scale=3.0, size=(30, 3)) + [1e3, -2e3, 5.0]
    for chunk in (CHUNK, 5):  # 5: one item's candidates (a whole bin) exceed a chunk
        compare_all(mol, np.zeros((3, 3)), [False] * 3, 3.0, chunk=chunk)
    compare_all(mol, np.diag([0.0, 0.0, 4.0]), [False, False, True], 3.0)
    # atoms 1e6 Å apart: periodic, and a slab far along its normal
    compare_all(np.array([[0.5, 0.5, 0.5], [1e6 + 0.5, 1.5, 0.5]]), np.eye(3) * 10.0, [True] * 3, 4.0)
    t = compare_all(np.array([[0.0, 0, 0], [0, 0, 1e6]]), np.diag([3.0, 3.0, 0.0]), [True, True, False], 3.5,
                    with_brute=False)
    assert set(t.j.tolist()) == {0, 1} and bool((t.i == t.j).all())
    # a single atom without neighbours, and no atoms at all
    t = compare_all(np.array([[1.0, 2.0, 3.0]]), np.zeros((3, 3)), [False] * 3, 3.0)
    assert len(t) == 0 and t.shifts.shape == (0, 3)
    t = torch_neighbor_list(torch.zeros((0, 3), dtype=torch.float64), np.eye(3) * 5, [True] * 3, 3.0)
    assert len(t) == 0 and t.shifts.shape == (0, 3) and t.vectors.shape == (0, 3)
    check_torch_pairs(t, np.zeros((0, 3)), [True] * 3)
    # bulk crystals (a rattled hcp triclinic cell among them), against ASE; chunked too
    for atoms, cutoff in [(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4)), 5.0),
                          (bulk("Mg", "hcp", a=3.2, c=5.2).repeat((4, 4, 3)), 6.0),
                          (bulk("Ni", "fcc", a=2.5 * np.sqrt(2.0)), 6.0)]:
        atoms.rattle(0.05, seed=1)
        for chunk in (CHUNK, 1000):
            compare_all(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, chunk=chunk, with_brute=False)


def test_float32_positions_and_cell_tensor():
    """Positions in float32 are searched as the float64 numbers they are; a cell tensor and a
    pbc tensor are accepted."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.1, seed=4)
    pos32 = torch.tensor(atoms.positions, dtype=torch.float32)
    t = torch_neighbor_list(pos32, torch.tensor(atoms.cell.array), torch.tensor(atoms.pbc), 4.0)
    p = neighbor_list(pos32.double().numpy(), atoms.cell.array, atoms.pbc, 4.0)
    assert_same_as_compiled(t, p)


def test_bins_are_at_least_a_cutoff_and_memory_is_linear():
    """A dense periodic box: the stencil visits 27 bins; work (candidates) is linear in atoms."""
    from ase_mlff import neighbors_torch as nt

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((6, 6, 6))
    atoms.rattle(0.02, seed=0)
    nbins, reach = nt._grid(len(atoms), 5.0, [True] * 3, [1 / atoms.cell.array[0, 0]] * 3,
                            [atoms.cell.array[0, 0]] * 3, [1.0] * 3, 1.0)
    assert reach == [1, 1, 1] and all(atoms.cell.array[0, 0] / nb >= 5.0 for nb in nbins)
    t = torch_neighbor_list(torch.tensor(atoms.positions), atoms.cell.array, atoms.pbc, 5.0, chunk=4096)
    assert_same_as_compiled(t, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0))


# --------------------------------------------------------------------------------------------
# Refusals: the compiled list's, with the same messages
# --------------------------------------------------------------------------------------------


def same_refusal(positions, cell, pbc, cutoff, match=None):
    with pytest.raises(InputError, match=match) as compiled:
        neighbor_list(positions, cell, pbc, cutoff)
    with pytest.raises(InputError, match=match) as ours:
        torch_neighbor_list(torch.as_tensor(np.asarray(positions, dtype=np.float64)), cell, pbc, cutoff)
    assert str(ours.value) == str(compiled.value)


def test_bad_cells_and_inputs_are_refused_like_the_compiled_list():
    two = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    same_refusal(two, [[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]], [True] * 3, 2.0, "singular")
    same_refusal(two, np.diag([3.0, 0.0, 3.0]), [True] * 3, 2.0, "zero")
    same_refusal(two, [[3.0, 0, 0], [6.0, 0, 0], [0, 0, 0]], [True, True, False], 2.0, "parallel")
    with pytest.raises(InputError, match="NaN"):
        torch_neighbor_list(torch.tensor([[0.0, 0, 0], [np.nan, 1, 1]]), np.eye(3) * 5, [True] * 3, 2.0)
    with pytest.raises(InputError, match="NaN or infinite"):
        torch_neighbor_list(torch.zeros((2, 3), dtype=torch.float64), np.diag([5, 5, np.inf]), [True] * 3, 2.0)
    for cutoff in (-1.0, 0.0, np.inf, np.nan):
        with pytest.raises(InputError, match="cutoff"):
            torch_neighbor_list(torch.zeros((2, 3), dtype=torch.float64), np.eye(3) * 5, [True] * 3, cutoff)
    with pytest.raises(InputError, match="shape"):
        torch_neighbor_list(torch.zeros((2, 2)), np.eye(3) * 5, [True] * 3, 2.0)
    with pytest.raises(InputError, match="pbc"):
        torch_neighbor_list(torch.zeros((2, 3)), np.eye(3) * 5, [True, True], 2.0)
    # a zero vector along a non-periodic direction is fine
    compare_all(two, np.diag([3.0, 3.0, 0.0]), [True, True, False], 2.0)


def test_costly_searches_are_refused_like_the_compiled_list():
    # issue #8: heights of 0.001 Å, 3e8 images
    cell = np.array([[7.04, 0.0, 0.0], [7.04, 0.001, 0.0], [0.0, 0.0, 7.04]])
    same_refusal(np.random.default_rng(0).random((4, 3)) @ cell, cell, [True] * 3, 5.0, "nearly singular")
    # 101^3 images of a 0.1 Å cube
    same_refusal(np.array([[0.01, 0.02, 0.03]]), np.eye(3) * 0.1, [True] * 3, 5.0, r"1.03e\+06 periodic images")
    # too many pairs: a box, and a molecule
    positions = np.random.default_rng(1).random((100_000, 3)) * 10.0
    same_refusal(positions, np.eye(3) * 10.0, [True] * 3, 5.0, "pairs are expected")
    same_refusal(positions[:50_000] * 0.1, np.zeros((3, 3)), [False] * 3, 5.0, "pairs are expected")
    # too many candidates: a thin cell with many atoms
    cell = np.array([[20.0, 0.0, 0.0], [20.0, 0.02, 0.0], [0.0, 0.0, 20.0]])
    same_refusal(np.random.default_rng(2).random((400, 3)) @ cell, cell, [True] * 3, 5.0, "candidate pairs")


# --------------------------------------------------------------------------------------------
# Verlet skin on the device
# --------------------------------------------------------------------------------------------


def test_skin_list_equals_a_fresh_list_after_random_displacements():
    """Every atom moved by less than skin/2 since the build: the list is reused; one atom moved
    by more: rebuilt. Either way the pairs are those of a fresh list (torch and compiled)."""
    rng = np.random.default_rng(7)
    cutoff, skin = 4.0, 0.6
    for atoms in (bulk("Cu", "fcc", a=3.61).repeat((4, 4, 4)),  # rhombohedral primitive cell
                  molecule("C60")):
        nl = TorchNeighborList(cutoff, skin)
        for step in range(12):
            ref = atoms.positions if nl._ref_positions is None else nl._ref_positions.numpy()
            dirs = rng.normal(size=ref.shape)
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            lengths = rng.uniform(0.0, 0.49 * skin, len(ref))  # below skin / 2 ...
            beyond = step % 3 == 1
            if beyond:
                lengths[rng.integers(len(ref))] = 0.55 * skin  # ... but for one atom
            positions = ref + dirs * lengths[:, None]
            builds = nl.n_builds
            got = nl.update(torch.tensor(positions), atoms.cell.array, atoms.pbc)
            assert nl.n_builds == builds + (step == 0 or beyond)
            check_torch_pairs(got, positions, atoms.pbc)
            assert_same_as_compiled(got, neighbor_list(positions, atoms.cell.array, atoms.pbc, cutoff))
            fresh = torch_neighbor_list(torch.tensor(positions), atoms.cell.array, atoms.pbc, cutoff)
            assert_same_as_compiled(got, fresh)
        assert nl.n_updates == 12 and nl.n_builds == 5


def test_skin_list_rebuilds_on_large_moves_cell_pbc_and_atom_count():
    atoms = bulk("Cu", "fcc", a=3.61).repeat((3, 3, 3))
    nl = TorchNeighborList(4.0, 0.5)

    def check():
        got = nl.update(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), atoms.pbc)
        assert_same_as_compiled(got, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0))

    check()
    check()
    assert nl.n_builds == 1
    atoms.positions[3] += [0.2, 0.0, 0.0]  # below skin / 2: reused
    check()
    assert nl.n_builds == 1
    atoms.positions[0] += [0.3, 0.0, 0.0]  # beyond: rebuilt
    check()
    assert nl.n_builds == 2
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    check()
    assert nl.n_builds == 3
    del atoms[5]
    check()
    assert nl.n_builds == 4
    atoms.pbc = [True, True, False]
    check()
    assert nl.n_builds == 5
    nl.reset()
    check()
    assert nl.n_builds == 6


def test_skin_list_is_not_fooled_by_positions_moved_in_place():
    """A CPU tensor may share memory with atoms.positions (torch.from_numpy), which ASE's MD
    moves in place: the reference positions must be a copy."""
    atoms = bulk("Cu", "fcc", a=3.61).repeat((3, 3, 3))
    nl = TorchNeighborList(4.0, 0.5)
    shared = torch.from_numpy(atoms.positions)
    nl.update(shared, atoms.cell.array, atoms.pbc)
    atoms.positions[0] += [0.6, 0.0, 0.0]  # also moves `shared`
    got = nl.update(shared, atoms.cell.array, atoms.pbc)
    assert nl.n_builds == 2
    assert_same_as_compiled(got, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0))


def test_skin_list_along_md():
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.calc = EMT()
    rng = np.random.default_rng(11)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 3000.0))
    dyn = VelocityVerlet(atoms, timestep=4.0 * units.fs)
    nl = TorchNeighborList(4.0, 0.5)
    for _ in range(60):
        dyn.run(1)
        got = nl.update(torch.tensor(atoms.positions), atoms.cell.array, atoms.pbc)
        assert_same_as_compiled(got, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0))
    assert 1 < nl.n_builds < 60, nl.n_builds


# --------------------------------------------------------------------------------------------
# Graph and calculator
# --------------------------------------------------------------------------------------------


def test_graph_from_tensors_matches_graph_from_structure():
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 3))
    atoms.rattle(0.1, seed=2)
    pos = torch.tensor(atoms.positions)
    pairs = torch_neighbor_list(pos, atoms.cell.array, atoms.pbc, 4.5)
    g = graph_from_tensors(pos, torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
                           torch.tensor(atoms.pbc), pairs, dtype=torch.float32)
    ref = graph_from_structure(atoms, 4.5, dtype=torch.float32)
    assert g.dtype == torch.float32 and g.n_graphs == 1
    # the geometry stays float64 for a float32 model (pair vectors formed before rounding)
    assert g.positions.dtype == g.shifts.dtype == g.cell.dtype == torch.float64
    for name in ("positions", "numbers", "cell", "pbc", "batch"):
        assert torch.equal(getattr(g, name), getattr(ref, name)), name
    ours = sorted(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), map(tuple, g.shifts.tolist())))
    theirs = sorted(zip(ref.edge_index[0].tolist(), ref.edge_index[1].tolist(), map(tuple, ref.shifts.tolist())))
    assert ours == theirs
    empty = graph_from_tensors(pos, torch.tensor(atoms.numbers), torch.tensor(atoms.cell.array),
                               torch.tensor(atoms.pbc), None)
    assert empty.edge_index.shape == (2, 0) and empty.shifts.shape == (0, 3)


def _ni(rng, rep=2):
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat(rep)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def assert_same_results(a, b, stress=True):
    # energies up to ~200 eV: the same pairs summed in another order (1e-13 relative, ~450 eps)
    assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-13, abs=1e-13)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-10)
    if stress:
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-12)


@pytest.mark.parametrize("skin", [0.0, 0.5])
def test_calculator_torch_list_equals_compiled_for_the_ni_model(rng, skin):
    import ase_mlff

    compiled = ase_mlff.load(NI, skin=skin, neighbor_list="compiled")
    ours = ase_mlff.load(NI, skin=skin, neighbor_list="torch")
    assert compiled.neighbor_list == "compiled" and ours.neighbor_list == "torch"
    assert ours.todict()["neighbor_list"] == "torch"
    assert isinstance(ours.nl, TorchNeighborList)
    bulk_ni = _ni(rng)
    mol = Atoms("Ni7", positions=rng.normal(scale=1.0, size=(7, 3)) * 1.6)
    mol.center(vacuum=4.0)
    for atoms, stress in ((bulk_ni, True), (mol, False)):
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = compiled, ours
        for _ in range(3):  # a few steps: the skin list is built, reused, rebuilt
            assert_same_results(a, b, stress)
            move = rng.normal(scale=0.1, size=atoms.positions.shape)
            a.positions += move
            b.positions += move
        # the cell changed in place (set_cell writes into atoms.cell): rebuilt, not a stale copy
        for x in (a, b):
            x.set_cell(x.cell.array * 1.02, scale_atoms=True)
        assert_same_results(a, b, stress)
    if skin:
        assert ours.nl.n_builds < ours.nl.n_updates


def test_calculator_torch_list_with_the_analytic_model(analytic_model, rng):
    """Every periodicity of test_calculator's structures, the Hessian and a batch."""
    from test_calculator import structures as calc_structures

    compiled = MLFFCalculator(analytic_model, skin=0.3, neighbor_list="compiled")
    ours = MLFFCalculator(analytic_model, skin=0.3, neighbor_list="torch")
    images = list(calc_structures(rng).values())
    for atoms in images:
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = compiled, ours
        assert_same_results(a, b, stress=bool(atoms.pbc.any()))
    np.testing.assert_allclose(ours.get_hessian(images[-1]), compiled.get_hessian(images[-1]), atol=1e-10)
    for r, s in zip(ours.evaluate_batch(images, stress=True), compiled.evaluate_batch(images, stress=True)):
        assert r["energy"] == pytest.approx(s["energy"], rel=1e-13, abs=1e-13)
        np.testing.assert_allclose(r["forces"], s["forces"], atol=1e-10)
        np.testing.assert_allclose(r["stress"], s["stress"], atol=1e-12)


@pytest.mark.parametrize("family", ["test_analytic", "mff", "committee", "bpnn", "schnet"])
def test_every_local_family_is_served_alike_on_the_torch_path(family):
    """The conformance examples of the local families on the conformance suite's structures
    (cluster, bulk smaller than twice the cutoff, triclinic, slab)."""
    from conformance_examples import build_example, shared_structures

    example = build_example(family)
    model = example.model
    compiled = MLFFCalculator(model, skin=0.0, neighbor_list="compiled")
    ours = MLFFCalculator(model, skin=0.0, neighbor_list="torch")
    for name, atoms in shared_structures(model.species, example.nearest_neighbour).items():
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = compiled, ours
        scale = 1.0 + abs(a.get_potential_energy())
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-12 * scale), name
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-11 * scale, err_msg=name)
        if model.supports_stress and atoms.pbc.any():
            np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-12 * scale, err_msg=name)
    assert isinstance(ours.nl, TorchNeighborList) and ours.nl.n_builds >= 4


def test_calculator_options_and_overlap_on_the_torch_path(analytic_model):
    assert MLFFCalculator(analytic_model).neighbor_list == "compiled"  # auto on the CPU
    with pytest.raises(InputError, match="neighbor_list"):
        MLFFCalculator(analytic_model, neighbor_list="gpu")
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.positions[5] = atoms.positions[2] + 0.01
    messages = []
    for backend in ("compiled", "torch"):
        atoms.calc = MLFFCalculator(analytic_model, neighbor_list=backend)
        with pytest.raises(InputError, match="overlap") as err:
            atoms.get_potential_energy()
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    flat = bulk("Cu", "fcc", a=3.6)
    flat.set_cell([[2.5, 0, 0], [5.0, 0, 0], [0, 0, 2.5]])
    flat.calc = MLFFCalculator(analytic_model, neighbor_list="torch")
    with pytest.raises(InputError, match="parallel|zero volume|singular"):
        flat.get_potential_energy()


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a device)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_list_and_calculator(analytic_model, rng):
    rng_np = np.random.default_rng(5)
    for atoms, cutoff in [(bulk("Cu", "fcc", a=3.61, cubic=True).repeat((6, 6, 6)), 5.0),
                          (bulk("Mg", "hcp", a=3.2, c=5.2).repeat((4, 4, 3)), 6.0)]:
        atoms.rattle(0.05, seed=1)
        t = torch_neighbor_list(torch.tensor(atoms.positions, device="cuda"),
                                torch.tensor(atoms.cell.array, device="cuda"), atoms.pbc, cutoff)
        check_torch_pairs(t, atoms.positions, atoms.pbc, device="cuda")
        assert_same_as_compiled(t, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff))
    mol = rng_np.normal(scale=3.0, size=(40, 3))
    t = torch_neighbor_list(torch.tensor(mol, device="cuda"), np.zeros((3, 3)), [False] * 3, 3.0)
    assert_same_as_compiled(t, neighbor_list(mol, np.zeros((3, 3)), [False] * 3, 3.0))

    from test_calculator import structures as calc_structures

    calc = MLFFCalculator(analytic_model, device="cuda", skin=0.3)
    assert calc.neighbor_list == "torch" and isinstance(calc.nl, TorchNeighborList)
    for atoms in calc_structures(rng).values():
        a, b = atoms.copy(), atoms.copy()
        a.calc = MLFFCalculator(analytic_model, skin=0.3)
        b.calc = calc
        assert_same_results(a, b, stress=bool(atoms.pbc.any()))
    assert calc.nl._pairs.i.device.type == "cuda"
