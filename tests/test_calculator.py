"""Physics of the one calculator, checked with an analytic test potential:
forces = -dE/dr and stress = (1/V) dE/dε by finite differences (full, mixed pbc, triclinic),
invariance to translation, rotation and permutation, per-atom energies, batching, errors."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from ase_mlff import InputError, MLFFCalculator
from ase_mlff.models.base import Model
from fd import numerical_forces, numerical_stress


def _rattled(atoms, rng, amp=0.1):
    atoms = atoms.copy()
    atoms.positions += rng.normal(scale=amp, size=atoms.positions.shape)
    return atoms


def _mixed_species(atoms, rng):
    numbers = atoms.numbers.copy()
    numbers[rng.random(len(atoms)) < 0.4] = 13
    atoms.numbers = numbers
    return atoms


def structures(rng):
    """name -> Atoms: periodic bulk, triclinic skewed cell, slab, wire, molecule in a box."""
    out = {}
    out["bulk"] = _mixed_species(_rattled(bulk("Cu", "fcc", a=3.7).repeat((2, 2, 2)), rng), rng)
    tric = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 2))
    cell = tric.cell.array.copy()
    cell[2] += 0.7 * cell[0] - 0.4 * cell[1]  # strongly skewed, same lattice
    tric.set_cell(cell, scale_atoms=False)
    tric.wrap()
    out["triclinic"] = _mixed_species(_rattled(tric, rng), rng)
    slab = fcc111("Cu", size=(2, 2, 3), a=3.7, vacuum=5.0)
    out["slab"] = _mixed_species(_rattled(slab, rng), rng)
    wire = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((1, 1, 2))
    wire.pbc = (False, False, True)
    wire.center(vacuum=4.0, axis=(0, 1))
    out["wire"] = _mixed_species(_rattled(wire, rng), rng)
    mol = Atoms("Cu4Al2", positions=rng.normal(scale=1.2, size=(6, 3)) + [[0, 0, 0], [2.4, 0, 0], [0, 2.4, 0],
                                                                      [0, 0, 2.4], [2.4, 2.4, 0], [1.2, 1.2, 2.4]])
    mol.center(vacuum=5.0)
    out["molecule_in_box"] = mol
    return out


@pytest.mark.parametrize("name", ["bulk", "triclinic", "slab", "wire", "molecule_in_box"])
def test_forces_are_minus_energy_gradient(analytic_model, rng, name):
    atoms = structures(rng)[name]
    atoms.calc = MLFFCalculator(analytic_model, skin=0.0)
    forces = atoms.get_forces()
    numeric = numerical_forces(atoms)
    np.testing.assert_allclose(forces, numeric, atol=2e-7, rtol=1e-6)
    assert np.abs(forces).max() > 1e-2  # the check is not vacuous


@pytest.mark.parametrize("name", ["bulk", "triclinic", "slab", "wire", "molecule_in_box"])
def test_stress_is_strain_derivative(analytic_model, rng, name):
    atoms = structures(rng)[name]
    atoms.calc = MLFFCalculator(analytic_model, skin=0.0)
    stress = atoms.get_stress()
    numeric = numerical_stress(atoms)
    np.testing.assert_allclose(stress, numeric, atol=1e-8, rtol=1e-5)
    assert np.abs(stress).max() > 1e-4
    # all six components, including the shear ones, are non-trivially checked
    assert np.count_nonzero(np.abs(numeric) > 1e-6) >= 4


def test_pair_stress_matches_virial_formula(rng):
    """For a pure pair potential, stress = (1/2V) sum_pairs phi'(r) r⊗r / r (full list)."""
    from analytic_potential import AnalyticTestPotential
    import torch

    model = AnalyticTestPotential(species=(29,), cutoff=4.5, three_body=0.0)
    model.rho_scale.data.zero_()  # pure pair potential (embedding of rho=0 is a constant)
    atoms = _rattled(bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2)), rng, 0.05)
    atoms.calc = MLFFCalculator(model, skin=0.0)
    stress = atoms.get_stress(voigt=False)
    from ase_mlff.neighbors import neighbor_list

    p = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.5)
    r = torch.tensor(p.distances, requires_grad=True)
    depth = float(model.depth.detach()[0])
    fc = 0.5 * (torch.cos(np.pi * r / 4.5) + 1)
    x = torch.exp(-1.5 * (r - 2.5))
    phi = depth * (x * x - 2 * x) * fc
    (dphi,) = torch.autograd.grad(phi.sum(), r)
    dphi = dphi.numpy()
    ref = 0.5 * np.einsum("p,pa,pb->ab", dphi / p.distances, p.vectors, p.vectors) / atoms.get_volume()
    np.testing.assert_allclose(stress, ref, atol=1e-10)


def test_invariances(analytic_model, rng):
    atoms = structures(rng)["triclinic"]
    calc = MLFFCalculator(analytic_model, skin=0.0)
    atoms.calc = calc
    e0, f0, s0 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)

    moved = atoms.copy()
    moved.positions += [3.3, -1.7, 12.9]
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(moved.get_forces(), f0, atol=1e-10)

    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = atoms.copy()
    rot.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    rot.positions = atoms.positions @ q.T
    rot.calc = calc
    assert rot.get_potential_energy() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(rot.get_forces(), f0 @ q.T, atol=1e-10)
    np.testing.assert_allclose(rot.get_stress(voigt=False), q @ s0 @ q.T, atol=1e-10)

    perm = rng.permutation(len(atoms))
    shuffled = atoms[perm]
    shuffled.calc = calc
    assert shuffled.get_potential_energy() == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(shuffled.get_forces(), f0[perm], atol=1e-10)

    wrapped = atoms.copy()
    wrapped.positions += atoms.cell.array[0] * 2 - atoms.cell.array[2]  # lattice translation of all atoms
    wrapped.positions[0] += atoms.cell.array[1]  # and one atom by a lattice vector
    wrapped.calc = calc
    assert wrapped.get_potential_energy() == pytest.approx(e0, abs=1e-10)


def test_per_atom_energies_and_results(analytic_model, rng):
    atoms = structures(rng)["bulk"]
    atoms.calc = MLFFCalculator(analytic_model)
    energies = atoms.get_potential_energies()
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(atoms.get_potential_energy())
    assert np.allclose(atoms.get_forces().sum(0), 0, atol=1e-10)  # Newton's third law


def test_float32_close_to_float64(analytic_model, rng):
    atoms = structures(rng)["bulk"]
    atoms.calc = MLFFCalculator(analytic_model, dtype="float64")
    e64, f64 = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = MLFFCalculator(analytic_model, dtype="float32")
    e32, f32 = atoms.get_potential_energy(), atoms.get_forces()
    assert abs(e32 - e64) < 1e-4 * max(1, abs(e64))
    np.testing.assert_allclose(f32, f64, atol=1e-4)


def test_batch_matches_single(analytic_model, rng):
    s = structures(rng)
    images = [s["bulk"], s["slab"], s["molecule_in_box"], s["wire"]]
    calc = MLFFCalculator(analytic_model, skin=0.0)
    batched = calc.evaluate_batch(images, stress=True)
    for atoms, r in zip(images, batched):
        atoms.calc = MLFFCalculator(analytic_model, skin=0.0)
        assert r["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(r["forces"], atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(r["stress"], atoms.get_stress(), atol=1e-12)


def test_hessian_matches_force_differences(analytic_model, rng):
    atoms = structures(rng)["molecule_in_box"]
    calc = MLFFCalculator(analytic_model, skin=0.0)
    hess = calc.get_hessian(atoms)
    d = 1e-5
    numeric = np.zeros_like(hess)
    for k in range(3 * len(atoms)):
        a, c = divmod(k, 3)
        fp, fm = [], []
        for sign, store in ((1, fp), (-1, fm)):
            disp = atoms.copy()
            disp.positions[a, c] += sign * d
            disp.calc = calc
            store.append(disp.get_forces().reshape(-1))
        numeric[:, k] = -(fp[0] - fm[0]) / (2 * d)
    np.testing.assert_allclose(hess, numeric, atol=1e-6)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)


def test_clear_errors(analytic_model, rng):
    calc = MLFFCalculator(analytic_model)
    atoms = bulk("Fe", "bcc", a=2.9).repeat(2)
    atoms.calc = calc
    with pytest.raises(InputError, match="Fe"):
        atoms.get_potential_energy()

    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.positions[3, 1] = np.nan
    atoms.calc = MLFFCalculator(analytic_model)
    with pytest.raises(InputError, match="NaN"):
        atoms.get_potential_energy()

    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.positions[5] = atoms.positions[2] + 0.01
    atoms.calc = MLFFCalculator(analytic_model)
    with pytest.raises(InputError, match="overlap"):
        atoms.get_potential_energy()

    mol = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]])
    mol.calc = MLFFCalculator(analytic_model)
    assert np.isfinite(mol.get_potential_energy())  # no cell needed for energy and forces
    with pytest.raises(InputError, match="zero volume"):
        mol.get_stress()

    flat = bulk("Cu", "fcc", a=3.6)
    flat.set_cell([[2.5, 0, 0], [5.0, 0, 0], [0, 0, 2.5]])
    flat.calc = MLFFCalculator(analytic_model)
    with pytest.raises(InputError, match="parallel|zero volume|singular"):
        flat.get_potential_energy()


def test_neighbour_list_reused_in_md(analytic_model, rng):
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from ase_mlff._compat import thermalize

    atoms = bulk("Cu", "fcc", a=3.7).repeat((3, 3, 3))
    calc = MLFFCalculator(analytic_model, skin=1.0)
    atoms.calc = calc
    thermalize(atoms, 300, rng=rng)
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, 2 * units.fs).run(30)
    assert calc.nl.n_builds < calc.nl.n_updates
    assert abs(atoms.get_total_energy() - e0) < 2e-3 * len(atoms)


def test_energy_only_molecule_without_pbc_has_no_stress_cost(analytic_model, rng):
    mol = structures(rng)["molecule_in_box"]
    mol.calc = MLFFCalculator(analytic_model)
    mol.get_potential_energy()
    assert "stress" not in mol.calc.results  # not periodic: stress only on request


def test_implemented_properties_follow_the_model(analytic_model):
    import os

    from ase.io import read

    import ase_mlff

    local = MLFFCalculator(analytic_model)
    assert {"energy", "free_energy", "forces", "stress", "energies"} <= set(local.implemented_properties)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    calc = ase_mlff.load(os.path.join(root, "potentials", "ethanol_sgdml.mlff"))  # a global model
    assert "stress" not in calc.implemented_properties and "energies" not in calc.implemented_properties
    mol = read(os.path.join(root, "potentials", "ethanol_start.xyz"))
    mol.calc = calc
    assert np.isfinite(mol.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        mol.get_stress()
    with pytest.raises(PropertyNotImplementedError):
        mol.get_potential_energies()


def test_cuda_matches_cpu(analytic_model, rng):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    atoms = structures(rng)["triclinic"]
    atoms.calc = MLFFCalculator(analytic_model, device="cpu")
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = MLFFCalculator(analytic_model, device="cuda")
    assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-9)
    np.testing.assert_allclose(atoms.get_stress(), s, atol=1e-11)


def test_check_state_reports_what_ase_reports(analytic_model):
    """MLFFCalculator.check_state compares exactly (faster than ase's allclose per array) and
    reports the same changes as ase.calculators.calculator.compare_atoms."""
    from ase.calculators.calculator import compare_atoms

    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    calc = MLFFCalculator(analytic_model)
    base.calc = calc
    base.get_potential_energy()

    def moved(a):
        a.positions[3, 1] += 1e-6

    def strained(a):
        a.set_cell(a.cell.array * 1.01, scale_atoms=False)

    def slab(a):
        a.pbc = [True, True, False]

    def substituted(a):
        a.numbers[0] = 13

    def magnetic(a):
        a.set_initial_magnetic_moments(np.ones(len(a)))

    def nan(a):
        a.positions[0, 0] = np.nan

    def variants():
        for change in (None, moved, strained, slab, substituted, magnetic, nan):
            a = base.copy()
            if change is not None:
                change(a)
            yield ("none" if change is None else change.__name__), a

    for name, a in variants():
        ours = calc.check_state(a)
        assert sorted(ours) == sorted(compare_atoms(calc.atoms, a)), name
        assert bool(ours) == (name != "none"), name


class _SqrtPair(Model):
    """E = 1/2 sum over pairs of sqrt|r - 2.5|: finite everywhere, but its derivative is
    infinite at r = 2.5 Å (autograd gives NaN forces there)."""

    family = "test_sqrt_pair"

    def forward(self, graph):
        i, _ = graph.edge_index
        r = torch.linalg.norm(graph.edge_vectors(), dim=1)
        return torch.zeros(graph.n_atoms, dtype=r.dtype).index_add(0, i, 0.5 * (r - 2.5).abs().sqrt())


def test_non_finite_results_are_an_input_error(analytic_model):
    """NaN or infinite results never reach ASE: the calculator names the family and what was
    not finite, and does not keep the results."""
    pair = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    pair.calc = MLFFCalculator(_SqrtPair([29], 4.0))
    with pytest.raises(InputError, match=r"the test_sqrt_pair model's result 'forces' is NaN or infinite .* "
                                         r"check the structure .* and the model file"):
        pair.get_forces()
    with pytest.raises(InputError, match="'forces' is NaN or infinite"):  # nothing half-stored from the first call
        pair.get_potential_energy()
    pair.positions[1, 0] = 2.6
    assert np.isfinite(pair.get_forces()).all()

    atoms = bulk("Cu", "fcc", a=3.7).repeat(2)
    atoms.numbers[::3] = 13
    broken = analytic_model
    with torch.no_grad():
        broken.depth.fill_(float("inf"))
    atoms.calc = MLFFCalculator(broken)
    with pytest.raises(InputError, match="the test_analytic model's result 'energy' is NaN or infinite"):
        atoms.get_potential_energy()
    with pytest.raises(InputError, match="'energy' is NaN or infinite"):
        atoms.calc.evaluate_batch([atoms, atoms.copy()])
    with pytest.raises(InputError, match="the test_analytic model's result 'hessian' is NaN or infinite"):
        atoms.calc.get_hessian(atoms)


def test_non_finite_uncertainty_is_an_input_error(rng):
    """A committee whose served model is fine but one member gives NaN: the energy is finite,
    the spread is not, and it is refused like any other result."""
    from analytic_potential import AnalyticTestPotential
    from ase_mlff.models.committee import committee_from_models

    members = [AnalyticTestPotential(species=(13, 29), cutoff=4.5, r0=r0) for r0 in (2.4, 2.5)]
    with torch.no_grad():
        members[1].depth.fill_(float("nan"))
    committee = committee_from_models(members, mean=AnalyticTestPotential(species=(13, 29), cutoff=4.5))
    atoms = bulk("Cu", "fcc", a=3.7).repeat(2)
    atoms.calc = MLFFCalculator(committee, uncertainty=True)
    with pytest.raises(InputError, match="the committee model's result 'energy_uncertainty' is NaN or infinite"):
        atoms.get_potential_energy()
    atoms.calc = MLFFCalculator(committee)  # without uncertainty the members are not evaluated
    assert np.isfinite(atoms.get_potential_energy())
