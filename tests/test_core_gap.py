"""The compiled GAP serving core (``_ext/gap_core.hpp``, ``GAPModel.analytic``) against the
torch path it replaces on CPU (autograd through ``GAPModel.forward``), on real frames: the
shipped Si potential on mlearn Si frames (periodic, sheared to a triclinic cell, a slab, an
isolated cluster) and a two-element GAP fitted to DeePMD water frames (several species in one
block of atoms, element-pair keys of the 2-body term). Also: finite differences of the core's
forces and stress, bit-identical results for any thread count, the ``n_energy_atoms`` contract
(owned atoms first, ghosts after, as a LAMMPS pair style passes them) and clear errors.
"""

from __future__ import annotations

import copy
import os

import ase.io
import numpy as np
import pytest
import torch

from ase_mlff import MLFFCalculator
from ase_mlff.graph import graph_from_structure
from ase_mlff.io import load_model

from core_checks import assert_close, compare_with_autograd  # noqa: E402
from fd import numerical_forces, numerical_stress

HERE = os.path.dirname(os.path.abspath(__file__))
SI = os.path.join(HERE, "data", "si_mlearn_16.extxyz")
WATER = os.path.join(HERE, "data", "water_deepmd_4.extxyz")
SI_GAP = os.path.join(HERE, "..", "potentials", "si_gap.mlff")


@pytest.fixture(scope="module")
def si_model():
    return load_model(SI_GAP)


@pytest.fixture(scope="module")
def water_model():
    from ase_mlff.data import read
    from ase_mlff.training.gap_train import train

    model, _ = train(read(WATER)[[0, 1, 2]], cutoff=3.5, cutoff_width=0.5, n_max=3, l_max=2, n_sparse=30,
                     two_body=True, two_body_n_sparse=6, seed=1, n_test=0)
    return model


def _si(index=0):
    return ase.io.read(SI, index)


def _triclinic():
    atoms = _si(3)
    shear = np.array([[1.0, 0.0, 0.0], [0.21, 1.0, 0.0], [-0.13, 0.17, 1.04]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    return atoms


def _slab():
    atoms = _si(5)
    atoms.pbc = (True, True, False)
    atoms.center(vacuum=6.0, axis=2)
    return atoms


def _cluster():
    atoms = _si(7)
    centre = atoms.positions.mean(0)
    keep = np.linalg.norm(atoms.positions - centre, axis=1) < 5.5
    cluster = atoms[keep]
    cluster.pbc = False
    cluster.cell = None
    return cluster


STRUCTURES = {"periodic": lambda: _si(0), "triclinic": _triclinic, "slab": _slab, "cluster": _cluster}


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
def test_core_equals_torch_on_si(si_model, kind):
    atoms = STRUCTURES[kind]()
    assert len(atoms) > 10
    compare_with_autograd(si_model, atoms)


def test_core_equals_torch_with_two_elements(water_model):
    atoms = ase.io.read(WATER, 3)  # a frame the model was not fitted to
    compare_with_autograd(water_model, atoms)
    slab = atoms.copy()
    slab.pbc = (True, False, True)
    slab.center(vacuum=4.0, axis=1)
    compare_with_autograd(water_model, slab)


@pytest.mark.parametrize("kind", ["periodic", "slab"])
def test_core_equals_torch_in_float32(si_model, kind):
    """A float32 GAP computes in float64 and rounds its results (like its torch path)."""
    m32 = copy.deepcopy(si_model).to(torch.float32)
    compare_with_autograd(m32, STRUCTURES[kind](), dtype=torch.float32, rtol=2e-6)


def test_core_forces_and_stress_are_derivatives_of_its_energy(si_model):
    atoms = _triclinic()
    atoms.calc = MLFFCalculator(si_model)
    assert si_model.uses_analytic(graph_from_structure(atoms, si_model.cutoff))
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    comps = [(a, c) for a in (0, 17, 42) for c in range(3)]
    num = numerical_forces(atoms, d=1e-4, components=comps)
    for a, c in comps:
        assert abs(forces[a, c] - num[a, c]) <= 1e-6 * np.abs(forces).max() + 1e-7, (a, c)
    num_s = numerical_stress(atoms, d=1e-5)
    assert np.abs(stress - num_s).max() <= 1e-6 * np.abs(stress).max() + 1e-8


def _core_arrays(model, atoms):
    g = graph_from_structure(atoms, model.cutoff)
    s = model.species_index(g.numbers).numpy()
    i, j = g.edge_index
    vec = g.edge_vectors(torch.float64).numpy()
    return s, i.numpy(), j.numpy(), vec


def test_results_do_not_depend_on_the_thread_count(si_model):
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.47, cubic=True) * (4, 4, 4)  # 512 atoms: 16 blocks, threaded gathers
    atoms.rattle(0.05, seed=3)
    args = _core_arrays(si_model, atoms)
    core = si_model.core_parameters()
    ref = core.compute(*args, -1, True, True, False, 1)
    for n in (2, 3):
        out = core.compute(*args, -1, True, True, False, n)
        for a, b in zip(ref[:3], out[:3]):
            assert np.array_equal(a, b), f"{n} threads differ from one"


def test_energy_atoms_first_and_ghosts_after(si_model):
    """Atoms from n_energy_atoms on get no energy and add no pair gradient: the forces are
    -d/dr of the first atoms' energies alone (what a LAMMPS pair style with ghosts needs)."""
    atoms = _si(2)
    s, i, j, vec = _core_arrays(si_model, atoms)
    k = 40
    e, f, w, _, _ = si_model.core_parameters().compute(s, i, j, vec, k, True, True, False, 0)
    full = si_model.core_parameters().compute(s, i, j, vec, -1, True, True, False, 0)[0]
    assert np.all(e[k:] == 0.0)
    np.testing.assert_allclose(e[:k], full[:k], rtol=0, atol=0)
    g = graph_from_structure(atoms, si_model.cutoff)
    pos = g.positions.detach().clone().requires_grad_(True)
    from dataclasses import replace

    energies = si_model(replace(g, positions=pos))
    (grad,) = torch.autograd.grad(energies[:k].sum(), pos)
    assert_close(f, -grad.numpy(), 1e-10, "forces of the first atoms' energies")
    assert np.all(w[k:] == 0.0) and np.all(w[:k].any(axis=(1, 2)))
    out = si_model.analytic(g, True, True, n_energy_atoms=k)  # the model's face of the same contract
    assert np.array_equal(out.energies.numpy(), e) and np.array_equal(out.forces.numpy(), f)
    assert out.energy.item() == pytest.approx(float(energies[:k].sum().detach()), rel=1e-12)
    from ase_mlff.errors import InputError

    with pytest.raises(InputError, match="n_energy_atoms"):
        si_model.analytic(g, True, False, n_energy_atoms=len(atoms) + 1)


def test_unsorted_pairs_give_the_same_results(si_model):
    s, i, j, vec = _core_arrays(si_model, _si(4))
    core = si_model.core_parameters()
    ref = core.compute(s, i, j, vec, -1, True, True, False, 0)
    perm = np.random.default_rng(0).permutation(len(i))
    out = core.compute(s, i[perm], j[perm], vec[perm], -1, True, True, False, 0)
    for a, b, what in zip(ref[:3], out[:3], ("energies", "forces", "virial")):
        assert_close(b, a, 1e-10, what)  # other sums' order: rounding, amplified by the GP's cancellation


def test_bad_input_is_refused(si_model):
    s, i, j, vec = _core_arrays(si_model, _si(1))
    core = si_model.core_parameters()
    with pytest.raises(IndexError, match="species index"):
        core.compute(np.where(np.arange(len(s)) == 3, 1, s), i, j, vec, -1, True, True, False, 0)
    with pytest.raises(ValueError, match="n_energy_atoms"):
        core.compute(s, i, j, vec, len(s) + 1, True, True, False, 0)
    with pytest.raises(IndexError, match="out of range"):
        core.compute(s, np.where(np.arange(len(i)) == 5, len(s), i), j, vec, -1, True, True, False, 0)
    zero = vec.copy()
    zero[7] = 0.0
    with pytest.raises(ValueError, match="zero length"):
        core.compute(s, i, j, zero, -1, True, True, False, 0)
    with pytest.raises(ValueError, match="shape"):
        core.compute(s, i, j, vec[:, :2], -1, True, True, False, 0)


def test_the_core_follows_new_parameters(si_model):
    """The flat layout is rebuilt when a parameter changes (training sets them in place)."""
    model = copy.deepcopy(si_model)
    atoms = _si(2)
    g = graph_from_structure(atoms, model.cutoff)
    before = model.compute(g, forces=True).energy
    first = model.core_parameters()
    model.set_parameters(1.01 * model.parameters_vector())
    assert model.core_parameters() is not first
    compare_with_autograd(model, atoms)
    assert not torch.equal(model.compute(g, forces=True).energy, before)
