"""The model contract (ase_mlff/models/base.py): declarations, one evaluation entry point that
never modifies its input, one rule for analytic path vs autograd, float64 totals, and the
calculator's provenance (todict) that ASE writes into trajectories."""

import hashlib
import os

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import Trajectory, read

import ase_mlff
from ase_mlff import InputError
from ase_mlff.graph import FrameGraphs, graph_from_structure
from ase_mlff.models.base import MODEL_REGISTRY, ModelOutput

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NI = os.path.join(ROOT, "potentials", "ni_mff.mlff")
ETHANOL = os.path.join(ROOT, "potentials", "ethanol_sgdml.mlff")


def _ni(rng, rep=2):
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat(rep)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def test_every_family_declares_the_contract():
    from ase_mlff import models  # noqa: F401  (registers the shipped families)

    for family, cls in MODEL_REGISTRY.items():
        assert cls.family == family
        assert isinstance(cls.periodic, bool) and isinstance(cls.per_atom_energies, bool)
        assert cls.units == {"energy": "eV", "length": "Å"}
        assert isinstance(cls.extra_results, tuple)
    ni, eth = ase_mlff.load(NI).model, ase_mlff.load(ETHANOL).model
    assert (ni.cutoff, ni.periodic, ni.per_atom_energies, ni.supports_stress) == (5.0, True, True, True)
    assert (eth.cutoff, eth.periodic, eth.per_atom_energies, eth.supports_stress) == (None, False, False, False)
    assert eth.is_global and not ni.is_global and ni.elements == ["Ni"]


def test_compute_never_modifies_its_input_and_autograd_does_not_change_the_path(rng, analytic_model):
    model = ase_mlff.load(NI).model
    graph = graph_from_structure(_ni(rng), model.cutoff)
    before = graph.positions.clone()
    assert model.uses_analytic(graph)
    fast = model.compute(graph, forces=True, stress=True)
    # a training-style call needs the autograd path...
    slow = model.compute(graph, forces=True, stress=True, create_graph=True)
    assert slow.forces.grad_fn is not None  # differentiable, as training on forces needs
    # ...and leaves the graph as it was: the next MD-style call is analytic again
    assert not graph.positions.requires_grad and graph.strain is None
    assert torch.equal(graph.positions, before)
    assert model.uses_analytic(graph)
    np.testing.assert_allclose(fast.forces, slow.forces.detach(), atol=1e-10)
    np.testing.assert_allclose(fast.virial, slow.virial.detach(), atol=1e-9)
    # autograd-only family: same guarantee
    g2 = graph_from_structure(bulk("Cu", "fcc", a=3.6).repeat(2), analytic_model.cutoff)
    out = analytic_model.compute(g2, forces=True, stress=True)
    assert isinstance(out, ModelOutput) and not g2.positions.requires_grad
    assert out.forces.grad_fn is None and out.energy.grad_fn is None  # detached results


def test_total_energy_is_accumulated_in_float64(rng, analytic_model):
    atoms = bulk("Cu", "fcc", a=3.6).repeat(3)
    g64 = graph_from_structure(atoms, analytic_model.cutoff)
    m32 = analytic_model.to(torch.float32)
    out = m32.compute(graph_from_structure(atoms, m32.cutoff, dtype=torch.float32), forces=True)
    assert out.energy.dtype == torch.float64 and out.forces.dtype == torch.float32
    ref = analytic_model.to(torch.float64).compute(g64, forces=True)
    assert abs(float(out.energy[0] - ref.energy[0])) < 1e-3 * len(atoms)


def test_stress_and_extras_are_refused_where_the_model_has_none(rng):
    eth = ase_mlff.load(ETHANOL).model
    d = np.load(os.path.join(ROOT, "tests", "data", "rmd17_ethanol_300.npz"))
    from ase import Atoms

    mol = Atoms(numbers=d["nuclear_charges"], positions=d["coords"][0])
    g = graph_from_structure(mol, None)
    with pytest.raises(InputError, match="no stress"):
        eth.compute(g, stress=True)
    with pytest.raises(InputError, match="no uncertainty"):
        eth.compute(g, extras=True)


def test_one_graph_builder_for_atoms_and_dataset_frames(rng):
    from ase_mlff import data

    ds = data.read(os.path.join(ROOT, "tests", "data", "ni_mlearn_20.extxyz"))
    model = ase_mlff.load(NI).model
    frames = FrameGraphs(ds, model.cutoff)
    g0 = frames[0]
    assert frames[0] is g0  # the neighbour list is computed once per frame
    ga = graph_from_structure(ds[0].to_atoms(), model.cutoff)
    assert torch.equal(ga.edge_index, g0.edge_index) and torch.equal(ga.positions, g0.positions)
    batch = frames.batch([0, 3, 5])
    out = model.compute(batch, forces=True, stress=True)
    for b, k in enumerate([0, 3, 5]):
        single = model.compute(frames[k], forces=True, stress=True)
        # ~200 eV per structure: batch and single sums agree to rounding (1e-13 relative, ~450 eps)
        assert float(out.energy[b]) == pytest.approx(float(single.energy[0]), rel=1e-13, abs=0)


def test_calculator_records_the_model_file_in_ase_trajectories(tmp_path, rng):
    calc = ase_mlff.load(NI, skin=0.3)
    sha = hashlib.sha256(open(NI, "rb").read()).hexdigest()
    params = calc.todict()
    assert params["model"] == os.path.realpath(NI) and params["model_sha256"] == sha
    assert params["family"] == "mff" and params["skin"] == 0.3 and params["dtype"] == "float64"
    atoms = _ni(rng)
    atoms.calc = calc
    atoms.get_potential_energy()
    with Trajectory(tmp_path / "t.traj", "w") as traj:
        traj.write(atoms)
    back = read(tmp_path / "t.traj")
    assert back.calc.parameters["model_sha256"] == sha
    assert back.calc.parameters["model"] == os.path.realpath(NI)
