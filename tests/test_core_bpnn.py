"""The compiled Behler–Parrinello core (ase_mlff/_ext/bpnn_core.hpp) against the torch path.

``model.compute`` on CPU goes through :meth:`BPNNModel.analytic` (the core); ``model._autograd``
differentiates :meth:`BPNNModel.forward` (torch, the reference). Both on real water frames with
the shipped potential, in float64 (agreement to rounding, 1e-10 relative to the largest
magnitude) and float32 (the model's own dtype: agreement at float32 rounding), on a molecule in
vacuum, the periodic box, a triclinic cell and a slab, with and without pairs inside the ZBL
prior's range; then finite differences of the core's forces and stress, thread counts, atoms
whose energies are not summed (LAMMPS ghosts) and bad input.
"""

import os
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read

from ase_mlff.calculator import MLFFCalculator
from ase_mlff.graph import graph_from_structure
from ase_mlff.io import load_model
from ase_mlff.models import bpnn as bpnn_module
from ase_mlff.models.bpnn import BPNNModel

sys.path.insert(0, os.path.dirname(__file__))
from fd import numerical_forces, numerical_stress  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATER = os.path.join(ROOT, "tests", "data", "water_deepmd_4.extxyz")
POTENTIAL = os.path.join(ROOT, "potentials", "water_bpnn.mlff")

pytestmark = pytest.mark.skipif(bpnn_module._core is None, reason="compiled extension without the bpnn core")


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def models():
    m32 = load_model(POTENTIAL)
    assert m32.nets[0].mean.dtype == torch.float32 and m32.config.get("repulsion") is not None
    return {"float32": m32, "float64": load_model(POTENTIAL).to(torch.float64)}


def water(index=0):
    return read(WATER, index=index)


def molecule():
    """Three water molecules of a real frame, in vacuum (no cell, no periodicity)."""
    at = water()
    o = [k for k, z in enumerate(at.numbers) if z == 8][:3]
    keep = []
    for k in o:  # each O with its two closest H (minimum image)
        d = at.get_distances(k, range(len(at)), mic=True)
        h = [q for q in np.argsort(d) if at.numbers[q] == 1][:2]
        keep += [k, *h]
    pos = at.positions[o[0]] + at.get_distances(o[0], keep, mic=True, vector=True)
    return Atoms(at.numbers[keep], positions=pos)


def triclinic():
    """The periodic frame sheared into a triclinic cell (atoms move with the cell)."""
    at = water(1)
    cell = at.cell.array.copy()
    at.set_cell(cell @ np.array([[1.0, 0.0, 0.0], [0.12, 1.0, 0.0], [-0.08, 0.15, 1.0]]), scale_atoms=True)
    return at


def slab():
    """The frame periodic in x and y only, with vacuum above and below."""
    at = water(2)
    at.pbc = (True, True, False)
    cell = at.cell.array.copy()
    cell[2] *= 2.0
    at.set_cell(cell, scale_atoms=False)
    return at


def compressed():
    """The frame squeezed to 85 %: O-H pairs come inside the ZBL prior's range."""
    at = water(3)
    at.set_cell(at.cell.array * 0.85, scale_atoms=True)
    return at


STRUCTURES = {"molecule": molecule, "periodic": water, "triclinic": triclinic, "slab": slab,
              "prior": compressed}


def graph(model, atoms, cutoff=None):
    return graph_from_structure(atoms, cutoff or model.cutoff, dtype=model.nets[0].mean.dtype)


def relative(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-300))


def compare(model, atoms, tol):
    g = graph(model, atoms)
    stress = bool(np.any(atoms.pbc))
    assert model.uses_analytic(g)
    core = model.compute(g, forces=True, stress=stress)
    ref = model._autograd(g, True, stress, False)
    for name in ("energy", "energies", "forces") + (("virial",) if stress else ()):
        a, b = getattr(core, name), getattr(ref, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert relative(a, b) < tol[name], (name, relative(a, b))
    return core, ref


TOL64 = dict.fromkeys(("energy", "energies", "forces", "virial"), 1e-10)
# float32: both paths round differently (sums in another order); measured ~5e-5 relative on
# forces and virials, as far from each other as each is from float64
TOL32 = {"energy": 1e-7, "energies": 1e-6, "forces": 3e-4, "virial": 3e-4}


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_core_equals_autograd_float64(models, name):
    compare(models["float64"], STRUCTURES[name](), TOL64)


@pytest.mark.parametrize("name", ["molecule", "triclinic", "prior"])
def test_core_equals_autograd_float32(models, name):
    core, _ = compare(models["float32"], STRUCTURES[name](), TOL32)
    # float32 is as close to float64 as the torch float32 path is
    m64 = models["float64"]
    at = STRUCTURES[name]()
    ref64 = m64._autograd(graph(m64, at), True, False, False)
    assert relative(core.forces, ref64.forces) < 3e-4


def test_prior_is_active_and_exact(models):
    """The compressed frame has pairs inside the prior's wall, and the core gets them right."""
    m = models["float64"]
    at = compressed()
    g = graph(m, at)
    i, j = g.edge_index
    e_prior = m.prior_atom_energies(g.numbers, i, j, g.edge_vectors())
    assert float(e_prior.abs().sum()) > 1e-3
    # without the prior the energy differs by exactly that much
    plain = BPNNModel.from_config({**m.get_config(), "repulsion": None})
    plain.load_state_dict(m.state_dict())
    e_with = m.compute(g, forces=False).energy
    e_without = plain.compute(g, forces=False).energy
    assert abs(float(e_with - e_without - e_prior.sum())) < 1e-9 * abs(float(e_with))


def test_silu_and_outer_pairs(models):
    """The other activation, and a pair list built for a longer cutoff (pairs beyond the
    model's cutoff add nothing)."""
    m = models["float64"]
    silu = BPNNModel.from_config({**m.get_config(), "activation": "silu"})
    silu.load_state_dict(m.state_dict())
    compare(silu, triclinic(), TOL64)
    at = water()
    short = m.compute(graph(m, at), True, True)
    long = m.compute(graph(m, at, cutoff=7.0), True, True)
    for name in ("energies", "forces", "virial"):
        assert relative(getattr(long, name), getattr(short, name)) < 1e-12


def test_finite_differences(models):
    """Forces and stress of the core are derivatives of its energy."""
    m = models["float64"]
    at = triclinic()
    at.calc = MLFFCalculator(m, dtype="float64")
    f = at.get_forces()
    s = at.get_stress()
    comps = [(0, 0), (5, 1), (77, 2), (150, 0)]
    fd = numerical_forces(at, d=1e-4, components=comps)
    scale = np.abs(f).max()
    for a, c in comps:
        assert abs(f[a, c] - fd[a, c]) < 1e-6 * scale
    fs = numerical_stress(at, d=1e-5)
    assert np.abs(s - fs).max() < 1e-6 * np.abs(s).max()
    # the prior's wall too
    at = compressed()
    at.calc = MLFFCalculator(m, dtype="float64")
    f = at.get_forces()
    d = at.get_distances(0, range(len(at)), mic=True)
    close = int(np.argsort(d)[1])  # the closest neighbour of atom 0: inside the wall
    comps = [(0, 0), (0, 2), (close, 1)]
    fd = numerical_forces(at, d=1e-5, components=comps)
    for a, c in comps:
        assert abs(f[a, c] - fd[a, c]) < 1e-6 * np.abs(f).max()


def core_call(model, atoms, n_threads, n_energy_atoms=-1, cutoff=None):
    g = graph(model, atoms, cutoff)
    ints, reals = model.core_parameters()
    i, j = g.edge_index
    vec = g.edge_vectors(model.nets[0].mean.dtype)
    return bpnn_module._core.bpnn_compute(ints, reals, model._core_doubles(), model.species_index(g.numbers).numpy(),
                                          i.numpy(), j.numpy(), vec.numpy(), n_energy_atoms, True, True, n_threads)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_threads_bit_identical(models, dtype):
    at = water().repeat((2, 2, 1))  # 768 atoms: several tasks for the centres and the gathers
    results = [core_call(models[dtype], at, n) for n in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_energy_atoms(models):
    """Only atoms below n_energy_atoms count (LAMMPS passes its own atoms first, ghosts after):
    their energies are unchanged, the others 0, and forces are -d(their sum)/dx on every atom."""
    m = models["float64"]
    at = molecule()
    k = 4
    e_all, _, _ = core_call(m, at, 1)
    e, f, v = core_call(m, at, 1, n_energy_atoms=k)
    assert np.array_equal(e[:k], e_all[:k]) and np.all(e[k:] == 0)
    g = graph(m, at)
    pos = g.positions.detach().clone().requires_grad_(True)
    from dataclasses import replace

    energies = m(replace(g, positions=pos))
    (grad,) = torch.autograd.grad(energies[:k].sum(), pos)
    assert np.abs(f + grad.numpy()).max() < 1e-10 * np.abs(f).max()


def test_bad_input(models):
    m = models["float64"]
    at = molecule()
    g = graph(m, at)
    ints, reals = m.core_parameters()
    i, j = g.edge_index
    vec = g.edge_vectors().numpy()
    s = m.species_index(g.numbers).numpy()
    call = bpnn_module._core.bpnn_compute
    with pytest.raises(ValueError, match="element"):
        call(ints, reals, m._core_doubles(), np.full_like(s, 5), i.numpy(), j.numpy(), vec)
    with pytest.raises(ValueError, match="reals"):
        call(ints, reals[:-1], m._core_doubles(), s, i.numpy(), j.numpy(), vec)
    with pytest.raises(ValueError, match="vectors"):
        call(ints, reals, m._core_doubles(), s, i.numpy(), j.numpy(), vec[:-1])
    with pytest.raises(IndexError):
        bad = j.numpy().copy()
        bad[0] = len(at)
        call(ints, reals, m._core_doubles(), s, i.numpy(), bad, vec)
    with pytest.raises(ValueError, match="n_energy_atoms"):
        call(ints, reals, m._core_doubles(), s, i.numpy(), j.numpy(), vec, len(at) + 1)
    nan = vec.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        call(ints, reals, m._core_doubles(), s, i.numpy(), j.numpy(), nan)
    two = Atoms("OO", positions=[[0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="same position"):
        core_call(m, two, 1, cutoff=3.0)


def test_parameters_follow_the_weights(models):
    """The flat parameters are cached and rebuilt when a weight changes (training)."""
    m = load_model(POTENTIAL).to(torch.float64)
    a = m.core_parameters()
    assert m.core_parameters()[1] is a[1]
    at = molecule()
    e0 = m.compute(graph(m, at), forces=False).energy
    with torch.no_grad():
        m.nets[0].layers[-1].bias += 0.5
    assert m.core_parameters()[1] is not a[1]
    e1 = m.compute(graph(m, at), forces=False).energy
    n_h = int((torch.as_tensor(at.numbers) == 1).sum())
    assert abs(float(e1 - e0) - 0.5 * m.config["energy_scale"] * n_h) < 1e-9
