"""SchNet's compiled serving core (ase_mlff/_ext/schnet_core.cpp, reached through
SchNetModel.analytic) against the torch path: autograd through the network itself
(``model._autograd``) and the hand-written backward in torch ops over the same filter tables
(``model._analytic_torch``); finite differences of its forces and stress; bit-identical results
for any thread count; the restriction of the energy to the first ``n_energy_atoms`` atoms.

Real frames and the shipped potentials: liquid water (tests/data/water_deepmd_4.extxyz,
potentials/water_schnet.mlff, which carries the ZBL prior) in its cubic box, in a triclinic
box and as a slab periodic in x and y only; an rMD17 ethanol molecule
(tests/data/rmd17_ethanol_300.npz, potentials/rmd17_schnet_pretrained.mlff).

Tolerances. Against the torch ops over the same tables: 1e-11 of the largest magnitude in
float64 (only summation order differs). Against autograd through the filter network: the
cubic Hermite table reproduces W(r) to ~1e-12 and dW/dr to ~1e-9 relative in float64
(SchNetModel.TABLE_SPACING), so energies agree to 1e-10 and forces and virials to 1e-8 of the
largest magnitude; float32 to its rounding over sums of ~10^4 terms.
"""

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.io import read

from ase_mlff.calculator import MLFFCalculator
from ase_mlff.errors import InputError
from ase_mlff.graph import graph_from_structure
from ase_mlff.io import load_model
from ase_mlff.models import schnet

from core_checks import assert_thread_counts_bitwise, ghost_layout
from fd import numerical_forces, numerical_stress

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
WATER = os.path.join(HERE, "data", "water_deepmd_4.extxyz")
ETHANOL = os.path.join(HERE, "data", "rmd17_ethanol_300.npz")
WATER_MODEL = os.path.join(ROOT, "potentials", "water_schnet.mlff")
RMD17_MODEL = os.path.join(ROOT, "potentials", "rmd17_schnet_pretrained.mlff")

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(schnet._core is None or not hasattr(schnet._core, "schnet_compute"),
                                 reason="compiled extension without the SchNet core")]


def _model(path, dtype):
    m = load_model(path)
    return m.double() if dtype == torch.float64 else m


def _water(kind):
    atoms = read(WATER, 0)
    if kind == "triclinic":  # shear the box (and the atoms with it): a general triclinic cell
        cell = atoms.cell.array.copy()
        tilt = np.array([[0, 0, 0], [0.21 * cell[0, 0], 0, 0], [-0.13 * cell[0, 0], 0.17 * cell[1, 1], 0]])
        atoms.set_cell(cell + tilt, scale_atoms=True)
    elif kind == "slab":
        atoms.pbc = (True, True, False)
    return atoms


def _ethanol():
    from ase import Atoms

    with np.load(ETHANOL) as d:
        return Atoms(numbers=d["nuclear_charges"], positions=d["coords"][0])


SYSTEMS = {"water": (WATER_MODEL, lambda: _water("cubic")), "triclinic": (WATER_MODEL, lambda: _water("triclinic")),
           "slab": (WATER_MODEL, lambda: _water("slab")), "ethanol": (RMD17_MODEL, _ethanol)}


def _close(a, b, rtol):
    """max |a - b| <= rtol * max |b|"""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = float(b.abs().max())
    err = float((a - b).abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} x {scale:.3g}"


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_float64_core_equals_the_torch_paths(name):
    path, make = SYSTEMS[name]
    model = _model(path, torch.float64)
    atoms = make()
    graph = graph_from_structure(atoms, model.cutoff, dtype=torch.float64)
    assert model.uses_analytic(graph)
    stress = bool(atoms.pbc.any())
    core = model.compute(graph, forces=True, stress=stress)
    tables = model._analytic_torch(graph, True, stress)
    exact = model._autograd(graph, True, stress, False)
    # the same tabulated function: only the order of the sums differs
    _close(core.energies, tables.energies, 1e-13)
    _close(core.forces, tables.forces, 1e-11)
    # the network itself: energies exact, derivatives to the table's dW/dr
    _close(core.energies, exact.energies, 1e-10)
    _close(core.energy, exact.energy, 1e-10)
    _close(core.forces, exact.forces, 1e-8)
    if stress:
        _close(core.virial, tables.virial, 1e-11)
        _close(core.virial, exact.virial, 1e-8)
    assert core.energies.dtype == torch.float64 and core.forces.dtype == torch.float64


@pytest.mark.parametrize("name", ["triclinic", "slab", "ethanol"])
def test_float32_core_computes_like_the_float32_network(name):
    path, make = SYSTEMS[name]
    model = _model(path, torch.float32)
    atoms = make()
    graph = graph_from_structure(atoms, model.cutoff, dtype=torch.float32)
    stress = bool(atoms.pbc.any())
    core = model.compute(graph, forces=True, stress=stress)
    exact = model._autograd(graph, True, stress, False)
    reference = _model(path, torch.float64)._autograd(graph_from_structure(atoms, model.cutoff), True, stress, False)
    # energies: float64 sums of float32 atoms (each ~1e-7 relative of its network output)
    _close(core.energy, exact.energy, 1e-7)
    _close(core.forces, exact.forces, 2e-5)
    # and no further from the float64 network than the float32 torch path is
    err_core = float((core.forces.double() - reference.forces).abs().max())
    err_torch = float((exact.forces.double() - reference.forces).abs().max())
    assert err_core <= 3 * err_torch + 1e-6 * float(reference.forces.abs().max())
    if stress:
        _close(core.virial, exact.virial, 1e-4)
    assert core.forces.dtype == torch.float32


def test_finite_differences_of_forces_and_stress():
    """Forces and stress are derivatives of the core's own energy (float64, triclinic water;
    a sample of force components, all of ethanol's)."""
    model = _model(WATER_MODEL, torch.float64)
    atoms = _water("triclinic")
    atoms.calc = MLFFCalculator(model, skin=0.0)
    f = atoms.get_forces()
    s = atoms.get_stress()
    picks = [(0, 0), (5, 1), (70, 2), (131, 0), (191, 1)]
    fd = numerical_forces(atoms, d=1e-5, components=picks)
    for a, c in picks:
        assert abs(f[a, c] - fd[a, c]) <= 1e-6 * np.abs(f).max(), (a, c, f[a, c], fd[a, c])
    np.testing.assert_allclose(s, numerical_stress(atoms, d=1e-6), rtol=0, atol=1e-6 * np.abs(s).max())

    mol = _ethanol()
    mol.calc = MLFFCalculator(_model(RMD17_MODEL, torch.float64), skin=0.0)
    f = mol.get_forces()
    np.testing.assert_allclose(f, numerical_forces(mol, d=1e-5), rtol=0, atol=1e-6 * np.abs(f).max())


@pytest.mark.parametrize("sizes", [(5, 2, 7), (37, 1, 9), (1, 1, 2), (16, 0, 3)])
def test_widths_off_the_vector_tiles_and_no_blocks(sizes):
    """Feature counts that fill no whole register tile (and F/2 hidden units), no interaction
    block at all, a lone atom without pairs: the core's edge paths against autograd."""
    from ase import Atoms

    F, T, K = sizes
    torch.manual_seed(F)
    model = schnet.SchNetModel([1, 8], cutoff=4.0, n_features=F, n_interactions=T, n_rbf=K, dtype="float64",
                               reference_energies=[-1.0, -2.0], energy_scale=1.3)
    water = [[0, 0, 0], [0.96, 0, 0], [-0.2, 0.9, 0.1]]
    for atoms in (Atoms("OH2", positions=water), Atoms("O"),
                  Atoms("OH2", positions=water, cell=[[3, 0, 0], [0.5, 3.2, 0], [0.1, 0.2, 2.9]], pbc=True)):
        graph = graph_from_structure(atoms, model.cutoff, dtype=torch.float64)
        stress = bool(atoms.pbc.any())
        core = model.compute(graph, forces=True, stress=stress)
        exact = model._autograd(graph, True, stress, False)
        _close(core.energies, exact.energies, 1e-12)
        if len(atoms) > 1:
            _close(core.forces, exact.forces, 1e-8)
        else:
            assert float(core.forces.abs().max()) == 0.0
        if stress:
            _close(core.virial, exact.virial, 1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_thread_counts_give_the_same_bits(dtype):
    model = _model(WATER_MODEL, dtype)
    assert_thread_counts_bitwise(model, graph_from_structure(read(WATER, 0).repeat((2, 2, 1)), model.cutoff,
                                                             dtype=dtype))


def test_energy_atoms_restriction_is_the_gradient_of_their_energies():
    """With n_energy_atoms = n every atom passes messages but only the first n atoms' energies
    count: the forces and virial are the torch derivatives of the sum of those energies."""
    model = _model(WATER_MODEL, torch.float64)
    graph = graph_from_structure(_water("triclinic"), model.cutoff, dtype=torch.float64)
    n = 77
    core = model.analytic(graph, True, True, n_energy_atoms=n)
    positions = graph.positions.detach().clone().requires_grad_(True)
    g = replace(graph, positions=positions).strained()
    e = model(g)[:n].sum()
    d_pos, d_strain = torch.autograd.grad(e, [positions, g.strain])
    _close(core.energy, e.detach().reshape(1), 1e-10)
    _close(core.forces, -d_pos, 1e-8)
    _close(core.virial, d_strain, 1e-8)
    assert float(core.forces[n:].abs().max()) > 0  # the other atoms feel the first n's energies
    # all atoms is the default; outside [0, N] is refused
    full = model.analytic(graph, True, True, n_energy_atoms=len(graph.numbers))
    default = model.compute(graph, forces=True, stress=True)
    assert torch.equal(full.forces, default.forces) and torch.equal(full.virial, default.virial)
    for bad in (-1, len(graph.numbers) + 1):
        with pytest.raises(InputError, match="n_energy_atoms"):
            model.analytic(graph, True, False, n_energy_atoms=bad)


def test_ghost_atoms_after_the_owned_ones_give_the_periodic_numbers():
    """What a domain-decomposed host does: the owned atoms first, then every periodic image
    within message-passing reach (blocks x cutoff) as ghosts, all in one open structure;
    with n_energy_atoms = owned, the owned energies are the periodic ones and the forces,
    folded from the ghosts onto the atoms they image, are the periodic forces."""
    model = _model(WATER_MODEL, torch.float64)
    atoms = _water("triclinic")
    n = len(atoms)
    ghosts, images = ghost_layout(atoms, model.cutoff * len(model.interactions))
    open_graph = graph_from_structure(ghosts, model.cutoff, dtype=torch.float64)
    host = model.analytic(open_graph, True, False, n_energy_atoms=n)
    periodic = model.compute(graph_from_structure(atoms, model.cutoff, dtype=torch.float64), forces=True)
    _close(host.energies[:n], periodic.energies, 1e-13)
    _close(host.energy, periodic.energy, 1e-13)
    folded = torch.zeros((n, 3), dtype=torch.float64).index_add(0, torch.from_numpy(images), host.forces)
    _close(folded, periodic.forces, 1e-11)


def test_prior_wall_in_the_core():
    """Two atoms pushed inside the ZBL wall: the prior's energies and forces as in torch."""
    model = _model(WATER_MODEL, torch.float64)
    atoms = _water("cubic")
    atoms.positions[1] = atoms.positions[0] + 0.4 * (atoms.positions[1] - atoms.positions[0])
    graph = graph_from_structure(atoms, model.cutoff, dtype=torch.float64)
    assert float(model.prior_energies(graph).sum()) > 0.1
    core = model.compute(graph, forces=True, stress=True)
    exact = model._autograd(graph, True, True, False)
    _close(core.energies, exact.energies, 1e-10)
    _close(core.forces, exact.forces, 1e-8)
    _close(core.virial, exact.virial, 1e-8)


def test_pair_order_and_batches():
    """The pairs in any order (the core groups them itself) and several structures in one
    graph give each structure's own numbers."""
    from ase_mlff.graph import batch_graphs

    model = _model(WATER_MODEL, torch.float64)
    graph = graph_from_structure(_water("triclinic"), model.cutoff, dtype=torch.float64)
    ref = model.compute(graph, forces=True, stress=True)
    perm = torch.randperm(graph.edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = replace(graph, edge_index=graph.edge_index[:, perm], shifts=graph.shifts[perm])
    out = model.compute(shuffled, forces=True, stress=True)
    _close(out.energies, ref.energies, 1e-13)
    _close(out.forces, ref.forces, 1e-12)
    _close(out.virial, ref.virial, 1e-12)

    slab = graph_from_structure(_water("slab"), model.cutoff, dtype=torch.float64)
    both = model.compute(batch_graphs([graph, slab]), forces=True, stress=True)
    one = model.compute(slab, forces=True, stress=True)
    n = len(graph.numbers)
    assert torch.equal(both.energy, torch.cat([ref.energy, one.energy]))
    assert torch.equal(both.forces, torch.cat([ref.forces, one.forces]))
    assert torch.equal(both.virial, torch.cat([ref.virial, one.virial]))
    assert torch.equal(both.energies[n:], one.energies)


def test_bad_input_is_refused_by_the_core():
    model = _model(WATER_MODEL, torch.float32)
    graph = graph_from_structure(_water("cubic"), model.cutoff, dtype=torch.float32)
    i, j = graph.edge_index
    args = dict(species=model.species_index(graph.numbers).numpy(), first=i.numpy(), second=j.numpy(),
                vectors=graph.edge_vectors(torch.float64).numpy().copy(), **model.core_parameters())
    _, f, v = schnet._core.schnet_compute(**{**args, "forces": False, "virials": False})
    assert f is None and v is None
    bad_species = args["species"].copy()
    bad_species[3] = 2
    with pytest.raises(IndexError, match="species index"):
        schnet._core.schnet_compute(**{**args, "species": bad_species})
    bad_pairs = args["second"].copy()
    bad_pairs[5] = len(graph.numbers)
    with pytest.raises(IndexError, match="out of range"):
        schnet._core.schnet_compute(**{**args, "second": bad_pairs})
    args["vectors"][7, 1] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        schnet._core.schnet_compute(**args)
    with pytest.raises(ValueError, match="n_energy_atoms"):
        schnet._core.schnet_compute(**{**args, "n_energy_atoms": len(graph.numbers) + 1})
    with pytest.raises(ValueError, match="flat weights"):
        schnet._core.schnet_compute(**{**args, "weights": args["weights"][:-1]})
