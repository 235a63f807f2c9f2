"""The compiled MFF serving core (``_ext/mff_core.hpp``, ``MFFModel.analytic``) against the torch
path it replaces on CPU (autograd through ``MFFModel.forward``), on real frames: the shipped Ni
potential (arms' triplets, r_jk < rc3) on mlearn Ni frames and the shipped Si potential
(centred triplets, r_jk up to 2 rc3) on mlearn Si frames, each periodic, sheared to a
triclinic cell, as a slab and as an isolated cluster; a two-element model (species keys of
both terms). Also: the ``n_energy_atoms`` contract (owned atoms first, ghosts after, as a
LAMMPS pair style passes them), bit-identical results for any thread count, unsorted pairs,
the cached flat parameters and clear errors.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import replace

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from ase_mlff import _ext
from ase_mlff.errors import InputError
from ase_mlff.graph import batch_graphs, graph_from_structure
from ase_mlff.io import load_model

sys.path.insert(0, os.path.dirname(__file__))
from core_checks import assert_close, assert_thread_counts_bitwise, compare_with_autograd, ghost_layout  # noqa: E402,E501
from test_mff import analytic_mff  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NI = os.path.join(HERE, "data", "ni_mlearn_20.extxyz")
SI = os.path.join(HERE, "data", "si_mlearn_16.extxyz")
POTENTIALS = {"ni": (os.path.join(HERE, "..", "potentials", "ni_mff.mlff"), NI, {"periodic": 6, "triclinic": 7,
                                                                                  "slab": 16, "cluster": 8}),
              "si": (os.path.join(HERE, "..", "potentials", "si_mff.mlff"), SI, {"periodic": 9, "triclinic": 10,
                                                                                 "slab": 0, "cluster": 10})}
mff_compute = _ext._core.mff_compute


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def models():
    return {name: load_model(path) for name, (path, _, _) in POTENTIALS.items()}


def structure(name, kind):
    """A real frame of the potential's data: as it is (periodic), sheared to a triclinic cell,
    a slab (periodic in x and y, vacuum along z) or a cluster cut out of it (no cell)."""
    _, data, frames = POTENTIALS[name]
    atoms = ase.io.read(data, frames[kind])
    if kind == "triclinic":
        shear = np.array([[1.0, 0.0, 0.0], [0.21, 1.0, 0.0], [-0.13, 0.17, 1.04]])
        atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    elif kind == "slab":
        atoms.pbc = (True, True, False)
        atoms.center(vacuum=6.0, axis=2)
    elif kind == "cluster":
        centre = atoms.positions.mean(0)
        atoms = atoms[np.linalg.norm(atoms.positions - centre, axis=1) < 5.0]
        atoms.pbc = False
        atoms.cell = None
    return atoms


@pytest.mark.parametrize("kind", ["periodic", "triclinic", "slab", "cluster"])
@pytest.mark.parametrize("name", sorted(POTENTIALS))
def test_core_equals_torch_on_real_frames(models, name, kind):
    atoms = structure(name, kind)
    assert len(atoms) >= 10
    out = compare_with_autograd(models[name], atoms)
    assert float(out.forces.abs().max()) > 0.05  # real forces, not a flat region of the splines


def test_core_equals_torch_with_two_elements(rng):
    """Element keys of both terms: coef2[s_i, s_j], coef3[s_i, s_j, s_k] and e0[s_i]."""
    model = analytic_mff(species=(13, 28))
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2))
    atoms.numbers = np.where(rng.random(len(atoms)) < 0.4, 13, 28)
    atoms.rattle(0.1, seed=4)
    compare_with_autograd(model, atoms)
    atoms.pbc = (True, False, True)
    atoms.center(vacuum=4.0, axis=1)
    compare_with_autograd(model, atoms)


def test_batched_structures_and_unsorted_pairs(models):
    model = models["ni"]
    a, b = structure("ni", "triclinic"), structure("ni", "slab")
    ga = graph_from_structure(a, model.cutoff)
    gb = graph_from_structure(b, model.cutoff)
    both = model.compute(batch_graphs([ga, gb]), forces=True, stress=True)
    one = [model.compute(g, forces=True, stress=True) for g in (ga, gb)]
    for key in ("energy", "forces", "virial"):
        assert torch.equal(getattr(both, key), torch.cat([getattr(o, key) for o in one])), key
    perm = torch.randperm(ga.edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = replace(ga, edge_index=ga.edge_index[:, perm], shifts=ga.shifts[perm])
    out = model.compute(shuffled, forces=True, stress=True)
    for key in ("energies", "forces", "virial"):  # other sums' order: rounding only
        assert_close(getattr(out, key).numpy(), getattr(one[0], key).numpy(), 1e-12, key)


def _core_arrays(model, atoms):
    g = graph_from_structure(atoms, model.cutoff)
    s = model.species_index(g.numbers).numpy()
    i, j = g.edge_index
    return s, i.numpy(), j.numpy(), g.edge_vectors(torch.float64).numpy()


def test_results_do_not_depend_on_the_thread_count(models):
    model = models["ni"]
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((6, 6, 4))  # 576 atoms: many blocks, threaded gathers
    atoms.rattle(0.05, seed=3)
    args = _core_arrays(model, atoms)
    params = model.core_parameters()
    ref = mff_compute(*args, -1, True, True, 1, **params)
    for n in (2, 3):
        out = mff_compute(*args, -1, True, True, n, **params)
        for a, b in zip(ref, out):
            assert np.array_equal(a, b), f"{n} threads differ from one"
    # the model's path, through the configured count
    assert_thread_counts_bitwise(model, graph_from_structure(atoms, model.cutoff))


@pytest.mark.parametrize("name", sorted(POTENTIALS))
def test_energy_atoms_are_the_gradient_of_their_energies(models, name):
    """Atoms from n_energy_atoms on get no energy and add no pair gradient: forces and virial
    are the torch derivatives of the first atoms' energies alone."""
    model = models[name]
    atoms = structure(name, "triclinic")
    k = len(atoms) // 3
    g = graph_from_structure(atoms, model.cutoff, dtype=torch.float64)
    out = model.analytic(g, True, True, n_energy_atoms=k)
    full = model.analytic(g, True, True)
    assert torch.all(out.energies[k:] == 0) and torch.equal(out.energies[:k], full.energies[:k])
    positions = g.positions.detach().clone().requires_grad_(True)
    gs = replace(g, positions=positions).strained()
    e = model(gs)[:k].sum()
    d_pos, d_strain = torch.autograd.grad(e, [positions, gs.strain])
    assert_close(out.energy.numpy(), e.detach().numpy().reshape(1), 1e-12, "energy")
    assert_close(out.forces.numpy(), -d_pos.numpy(), 1e-10, "forces of the first atoms' energies")
    assert_close(out.virial.numpy(), d_strain.numpy(), 1e-10, "virial of the first atoms' energies")
    assert float(out.forces[k:].abs().max()) > 0  # the other atoms feel the first ones' energies
    for bad in (-1, len(atoms) + 1):
        with pytest.raises(InputError, match="n_energy_atoms"):
            model.analytic(g, True, False, n_energy_atoms=bad)


@pytest.mark.parametrize("name", sorted(POTENTIALS))
def test_ghost_atoms_after_the_owned_ones_give_the_periodic_numbers(models, name):
    """What a domain-decomposed host does: the owned atoms first, then every periodic image
    within the cutoff as ghosts, all in one open structure; with n_energy_atoms = owned, the
    owned energies and the virial are the periodic ones and the forces, folded from the ghosts
    onto the atoms they image, are the periodic forces."""
    model = models[name]
    atoms = structure(name, "triclinic")
    n = len(atoms)
    host_atoms, images = ghost_layout(atoms, model.cutoff)
    assert len(host_atoms) > 3 * n
    host = model.analytic(graph_from_structure(host_atoms, model.cutoff), True, True, n_energy_atoms=n)
    periodic = model.compute(graph_from_structure(atoms, model.cutoff), forces=True, stress=True)
    assert_close(host.energies[:n].numpy(), periodic.energies.numpy(), 1e-13, "owned energies")
    assert_close(host.energy.numpy(), periodic.energy.numpy(), 1e-13, "energy")
    folded = torch.zeros((n, 3), dtype=torch.float64).index_add(0, torch.from_numpy(images), host.forces)
    assert_close(folded.numpy(), periodic.forces.numpy(), 1e-11, "folded forces")
    assert_close(host.virial.numpy(), periodic.virial.numpy(), 1e-11, "virial")


def test_core_parameters_are_cached_and_follow_the_coefficients(models):
    model = copy.deepcopy(models["ni"])
    p = model.core_parameters()
    assert model.core_parameters() is p
    S = len(model.species)
    assert p["n_species"] == S and p["e0"].shape == (S,)
    assert (p["n2"], p["n3"], p["n3jk"]) == (model.n2, model.n3, model.n3jk)
    assert p["table2"].shape == (model.n2, 4, 4) and p["coef2"].shape == (S, S, model.n2 + 3)
    assert p["table3"].shape == (model.n3, 4, 4) and p["table3jk"].shape == (model.n3jk, 4, 4)
    assert p["coef3"].shape == (S, S, S, model.n3 + 3, model.n3 + 3, model.n3jk + 3)
    assert p["h2"] == model.grid2.h and p["rc3"] == model.rc3 and p["jk_max"] == model.jk_max()
    for key, value in p.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == np.float64 and value.flags.c_contiguous and not value.flags.writeable, key
    atoms = structure("ni", "periodic")
    g = graph_from_structure(atoms, model.cutoff)
    before = model.compute(g, forces=True).energy
    model.set_splines(coef2=1.01 * model.coef2, e0=model.e0 - 0.5)
    assert model.core_parameters() is not p
    after = compare_with_autograd(model, atoms)
    assert not torch.equal(after.energy, before)
    with torch.no_grad():
        model.coef3.mul_(0.9)  # in place, as training may do
    compare_with_autograd(model, atoms)


def test_model_without_a_three_body_term(rng):
    from ase_mlff.models.mff import MFFModel

    full = analytic_mff(species=(13, 28))
    model = MFFModel(full.species, rc2=full.rc2, n2=full.n2)
    model.set_splines(coef2=full.coef2, e0=full.e0)
    p = model.core_parameters()
    assert p["coef3"] is None and p["table3"] is None and p["n3"] == 0 and p["rc3"] == 0.0
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2))
    atoms.numbers = np.where(rng.random(len(atoms)) < 0.5, 13, 28)
    atoms.rattle(0.1, seed=5)
    compare_with_autograd(model, atoms)


def test_bad_input_is_refused(models):
    model = models["ni"]
    s, i, j, vec = _core_arrays(model, structure("ni", "periodic"))
    p = model.core_parameters()

    def call(s=s, i=i, j=j, vec=vec, n=-1, **changes):
        return mff_compute(s, i, j, vec, n, True, True, 0, **{**p, **changes})

    e, f, w = call()
    assert e.shape == (len(s),) and f.shape == (len(s), 3) and w.shape == (len(s), 3, 3)
    _, f, w = mff_compute(s, i, j, vec, -1, False, False, 0, **p)
    assert f is None and w is None
    with pytest.raises(IndexError, match="species index"):
        call(s=np.where(np.arange(len(s)) == 3, 1, s))
    for bad in (len(s) + 1, -2):
        with pytest.raises(ValueError, match="n_energy_atoms"):
            call(n=bad)
    with pytest.raises(IndexError, match="out of range"):
        call(i=np.where(np.arange(len(i)) == 5, len(s), i))
    zero = vec.copy()
    zero[7] = 0.0
    with pytest.raises(ValueError, match="zero length"):
        call(vec=zero)
    for bad in (np.nan, np.inf):
        nonfinite = vec.copy()
        nonfinite[4, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            call(vec=nonfinite)
    with pytest.raises(ValueError, match="vectors"):
        call(vec=vec[:, :2])
    with pytest.raises(ValueError, match="vectors"):
        call(vec=vec[:-1])
    # the model's arrays, each checked by name
    with pytest.raises(ValueError, match="coef2"):
        call(coef2=p["coef2"][..., :-1])
    with pytest.raises(ValueError, match="coef3"):
        call(coef3=p["coef3"][..., :-1])
    with pytest.raises(ValueError, match="table3jk"):
        call(table3jk=p["table3jk"][:, :3])
    with pytest.raises(ValueError, match="table2"):
        call(n2=p["n2"] + 1)
    with pytest.raises(ValueError, match="table3 is required"):
        call(table3=None)
    with pytest.raises(ValueError, match="e0"):
        call(e0=np.zeros(2))
    with pytest.raises(ValueError, match="n_species"):
        call(n_species=0)
    for field, value in (("h2", 0.0), ("h3", -1.0), ("h3jk", np.nan), ("rc2", 0.0), ("rc3", np.inf),
                         ("jk_max", -1.0)):
        with pytest.raises(ValueError, match=field):
            call(**{field: value})
    # a term left out is absent, not an error: no 3-body term, no e0
    e2, _, _ = call(coef3=None, e0=None)
    assert np.all(np.abs(e2 - e) > 0)


def test_pair_vectors_are_formed_on_one_torch_thread_and_the_count_comes_back(models):
    """analytic() forms the pair vectors with torch on one thread (no parallel region to wait
    for a core another process holds) and leaves torch's count as it found it."""
    model = models["ni"]
    g = graph_from_structure(structure("ni", "periodic"), model.cutoff)
    torch.set_num_threads(2)
    try:
        out = model.compute(g, forces=True, stress=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert torch.equal(out.forces, model.compute(g, forces=True, stress=True).forces)
