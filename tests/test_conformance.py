"""Conformance suite: every registered model family keeps the model contract's physical claims.

Parametrised over every family in ``MODEL_REGISTRY`` (the package's families, the test-only
``test_analytic`` and, once it exists, ``committee``), each evaluated on the example model that
tests/conformance_examples.py builds for it. A family joins by being registered; a registered
family without an example fails here with a message saying how to add one.

Checks (each an independent reference, not the code under test):

* forces are ``-dE/dx`` by central finite differences of the energy, and the stress is the
  derivative of the energy with respect to a homogeneous strain (families with stress), on the
  shared structures (isolated cluster, bulk, skewed triclinic cell, slab) a family accepts;
* rotation, translation and permutation invariance (global families: permutations of their
  symmetry group, and a relabelled molecule through the calculator);
* a batch of structures gives what each gives alone (on both derivative paths);
* float32 agrees with float64 to the tolerance stated in the example, and float32 forces do
  not depend on where the structure sits (moved by 1e4 Å, or atoms moved by lattice vectors);
* the Hessian equals central differences of the forces (and in float32 the float64 Hessian),
  or the family refuses it with an InputError naming the family (``supports_hessian``);
* the analytic fast path equals autograd through ``forward``;
* a save/load round trip gives bit-identical results;
* declared extra results are present with their shapes, undeclared ones refused;
* ``compute`` never modifies its input graph.

Which structures a family skips, and why, follows from its declarations: ``is_global`` (only
its own molecule, in its atom order), ``periodic`` (no periodic structures) and
``supports_stress`` (no stress checks). ``test_suite_catches_a_broken_family`` registers
deliberately broken toy families for the duration of one test and confirms that each defect
makes the corresponding check fail.
"""

from __future__ import annotations

import copy
import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from conformance_examples import (EXAMPLES, ROUNDING, STRUCTURES, Example, build_example,
                                  missing_example_message, shared_structures)

import ase_mlff.models  # noqa: F401  (registers the package's families)
import analytic_potential  # noqa: F401  (registers the test-only family "test_analytic")
from ase_mlff.calculator import MLFFCalculator
from ase_mlff.errors import InputError
from ase_mlff.graph import Graph, batch_graphs, graph_from_structure
from ase_mlff.io import load_model, save_model
from ase_mlff.models.base import EXTRA_RESULTS, MODEL_REGISTRY, Model, ModelOutput, register_model
from ase_mlff.registry import MODELS, entry_points

try:  # the committee family, once it is part of the package
    import ase_mlff.models.committee  # noqa: F401
except ImportError:
    pass

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def package_families() -> list[str]:
    """Families registered by the package, by other installed distributions (entry points of
    :mod:`ase_mlff.registry`) and the test-only ``test_analytic``. Toy families
    that other test modules register for their own use (e.g. tests/test_trainer.py's
    ``test_pair_mlp``) are theirs to test: the set must not depend on which test modules
    happen to be imported in the session."""
    plugins = {ep.value for ep in entry_points(MODELS).values()}  # families of other distributions
    return sorted(f for f, cls in MODEL_REGISTRY.items()
                  if cls.__module__.split(".")[0] == "ase_mlff" or cls.__module__ == "analytic_potential"
                  or cls.__module__ in plugins)


#: every family the suite runs: the registered ones (an unregistered example is skipped by its
#: builder) and the examples' names, so that a family in either list is never silently dropped
FAMILIES = sorted(set(package_families()) | set(EXAMPLES))

#: (test, family) -> why that family fails that check today (strict: an unexpected pass fails,
#: so the entry is removed when the family is fixed)
KNOWN_FAILURES: dict = {}


def families(test: str) -> list:
    """FAMILIES as parameters of ``test``, with its known failures marked strict xfail."""
    return [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[test, f]))
            if (test, f) in KNOWN_FAILURES else f for f in FAMILIES]

# Finite differences: fourth-order central differences (error ~ d^4), whose step balances the
# truncation error against the rounding noise of the energy (the sGDML example's energy,
# -4200 eV summed from 6000 kernel terms, is noisy at ~1e-9 eV). The observed errors are
# below 2e-7 eV/Å (forces) and 1e-7 eV (virials); the bounds are ~50x that and ~1000x below
# a 1 % error in the forces or the stress.
FD_POSITION_STEP, FD_STRAIN_STEP = 1e-3, 1e-4
FD_FORCE_TOL = 1e-5  # eV/Å, times max(1, largest force component)
FD_VIRIAL_TOL = 1e-5  # eV (volume times stress), times max(1, largest virial component)
_STENCIL = ((2.0, -1.0 / 12.0), (1.0, 8.0 / 12.0), (-1.0, -8.0 / 12.0), (-2.0, 1.0 / 12.0))
#: Hessians: central differences of the forces, relative to max(1, largest element)
#: (truncation ~ d^2 |d3F/dx3| / 6, rounding ~ 1e-16 |F| / d)
FD_HESSIAN_STEP = 1e-4
FD_HESSIAN_TOL = 2e-6
#: a float32 model's Hessian against the float64 one, relative to the largest element
FLOAT32_HESSIAN_TOL = 2e-5
#: float32 forces of a moved structure: float32 rounding of the forces (2^-24 ~ 6e-8 relative
#: per operation, accumulated over a few hundred operations), far below the ~1e-4 to 1e-2 that
#: rounding absolute coordinates costs
FLOAT32_PLACEMENT_TOL = 1e-5


def assert_close(actual, expected, tol, what):
    """|actual - expected| <= tol * max(1, max|expected|), elementwise."""
    actual = np.asarray(actual.detach().cpu() if torch.is_tensor(actual) else actual, dtype=np.float64)
    expected = np.asarray(expected.detach().cpu() if torch.is_tensor(expected) else expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max deviation {err:.3g} > {tol * scale:.3g}"


# ----------------------------------------------------------------------------- examples
_EXAMPLE_CACHE: dict[str, Example] = {}


def example_of(family: str) -> Example:
    """The family's example model (built once per session; tests that change a model copy it)."""
    if family not in _EXAMPLE_CACHE:
        _EXAMPLE_CACHE[family] = build_example(family)
    return _EXAMPLE_CACHE[family]


def structures_for(ex: Example) -> dict[str, object]:
    """name -> ase.Atoms the family accepts, or the reason (str) it skips that structure."""
    model = ex.model
    if model.is_global:
        reason = (f"{model.family} is a global model (cutoff None): it sees one molecule in its own "
                  f"atom order, not the shared structures")
        return {name: (ex.molecule.copy() if name == "molecule" else reason) for name in STRUCTURES}
    out = {}
    for name, atoms in shared_structures(model.species, ex.nearest_neighbour).items():
        if atoms.pbc.any() and not model.periodic:
            out[name] = f"{model.family} declares periodic = False: periodic cells are refused"
        else:
            out[name] = atoms
    return out


def structure(family: str, name: str):
    """(example, atoms) or a skip naming the declaration that excludes the structure."""
    ex = example_of(family)
    atoms = structures_for(ex)[name]
    if isinstance(atoms, str):
        pytest.skip(atoms)
    return ex, atoms


def accepted(ex: Example) -> dict:
    return {k: v for k, v in structures_for(ex).items() if not isinstance(v, str)}


def graph_of(model: Model, atoms, dtype=torch.float64) -> Graph:
    return graph_from_structure(atoms, model.cutoff, dtype=dtype)


def wants_stress(model: Model, atoms) -> bool:
    return model.supports_stress and abs(np.linalg.det(atoms.cell.array)) > 1e-10


def through_calculator(model: Model, atoms) -> dict:
    """ASE results of ``atoms`` (a copy) from a fresh calculator that rebuilds its neighbour list."""
    atoms = atoms.copy()
    atoms.calc = MLFFCalculator(model, skin=0.0)
    res = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if not model.is_global:
        res["energies"] = atoms.get_potential_energies()
    if wants_stress(model, atoms):
        res["stress"] = atoms.get_stress(voigt=False)
    return res


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def energy_of(model: Model, atoms) -> float:
    """Total energy (eV) alone: no derivative is asked of the model."""
    return float(model.compute(graph_of(model, atoms), forces=False).energy[0])


def fd_forces(model: Model, atoms, d: float = FD_POSITION_STEP) -> np.ndarray:
    """-dE/dx by fourth-order central differences of the energy."""
    atoms = atoms.copy()
    pos0 = atoms.positions.copy()
    forces = np.zeros_like(pos0)
    for a in range(len(atoms)):
        for c in range(3):
            for k, w in _STENCIL:
                atoms.positions = pos0
                atoms.positions[a, c] += k * d
                forces[a, c] -= w * energy_of(model, atoms) / d
    return forces


def fd_virial(model: Model, atoms, d: float = FD_STRAIN_STEP) -> np.ndarray:
    """dE/d(strain) (3, 3) in eV, a symmetric strain applied to cell and positions together."""
    atoms = atoms.copy()
    cell0, pos0 = atoms.cell.array.copy(), atoms.positions.copy()
    virial = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            for k, w in _STENCIL:
                deform = np.eye(3)
                deform[a, b] += 0.5 * k * d
                deform[b, a] += 0.5 * k * d
                atoms.set_cell(cell0 @ deform, scale_atoms=False)
                atoms.positions = pos0 @ deform
                virial[a, b] += w * energy_of(model, atoms) / d
            virial[b, a] = virial[a, b]
    return virial


# ----------------------------------------------------------------------------- the checks
# Plain functions of (model, atoms): the parametrised tests run them on every family, and the
# meta-test runs them on deliberately broken families to show that each can fail.
def check_forces_fd(model: Model, atoms) -> None:
    atoms = atoms.copy()
    atoms.calc = MLFFCalculator(model, skin=0.0)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3, "forces vanish on this structure: the check would prove nothing"
    assert_close(forces, fd_forces(model, atoms), FD_FORCE_TOL, "forces vs -dE/dx (finite differences)")


def check_stress_fd(model: Model, atoms) -> None:
    atoms = atoms.copy()
    atoms.calc = MLFFCalculator(model, skin=0.0)
    virial = atoms.get_stress(voigt=False) * abs(np.linalg.det(atoms.cell.array))
    reference = fd_virial(model, atoms)
    # compared as virials (eV), the quantity the model computes, so that the vacuum of a slab or
    # a cluster (a large volume) does not shrink the numbers below the bound
    assert np.abs(reference).max() > 1e-3, "zero virial: the check would prove nothing"
    assert_close(virial, reference, FD_VIRIAL_TOL, "virial (volume x stress) vs dE/d(strain) (finite differences)")


def check_rotation(model: Model, atoms, seed: int = 3, rounding: float = ROUNDING) -> None:
    rot = _random_rotation(seed)
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rot.T
    ref, out = through_calculator(model, atoms), through_calculator(model, rotated)
    assert_close(out["energy"], ref["energy"], rounding, "energy after a rotation")
    assert_close(out["forces"], ref["forces"] @ rot.T, rounding, "forces after a rotation (rotated)")
    if "energies" in ref:
        assert_close(out["energies"], ref["energies"], rounding, "per-atom energies after a rotation")
    if "stress" in ref:
        assert_close(out["stress"], rot @ ref["stress"] @ rot.T, rounding, "stress after a rotation (R s R^T)")


def check_translation(model: Model, atoms, rounding: float = ROUNDING) -> None:
    moved = atoms.copy()
    moved.positions = atoms.positions + np.array([0.37, -1.21, 0.83])
    ref, out = through_calculator(model, atoms), through_calculator(model, moved)
    for key in ref:
        assert_close(out[key], ref[key], rounding, f"{key} after a translation")


def check_permutation(model: Model, atoms, perm: np.ndarray, rounding: float = ROUNDING) -> None:
    """``atoms[perm]`` gives the same energy and stress, and the permuted forces/energies."""
    ref, out = through_calculator(model, atoms), through_calculator(model, atoms[perm])
    assert_close(out["energy"], ref["energy"], rounding, "energy after a permutation")
    assert_close(out["forces"], ref["forces"][perm], rounding, "forces after a permutation")
    if "energies" in ref:
        assert_close(out["energies"], ref["energies"][perm], rounding, "per-atom energies after a permutation")
    if "stress" in ref:
        assert_close(out["stress"], ref["stress"], rounding, "stress after a permutation")


def _outputs(out: ModelOutput) -> dict[str, torch.Tensor]:
    res = {k: getattr(out, k) for k in ("energy", "energies", "forces", "virial") if getattr(out, k) is not None}
    res.update({f"extras[{k}]": v for k, v in out.extras.items()})
    return res


def _grad_graph(graph: Graph) -> Graph:
    """The same graph with positions requiring grad: compute must take the autograd path."""
    return replace(graph, positions=graph.positions.detach().clone().requires_grad_(True))


def check_batch(model: Model, structures: list, rounding: float = ROUNDING) -> None:
    """One batched compute of several structures equals computing each alone, on the analytic
    path (plain graphs) and on the autograd path (positions requiring grad)."""
    graphs = [graph_of(model, a) for a in structures]
    stress = all(wants_stress(model, a) for a in structures)
    paths = [("plain", lambda g: g), ("autograd", _grad_graph)] if model.has_analytic else [("plain", lambda g: g)]
    for path, prepare in paths:
        out = model.compute(batch_graphs([prepare(g) for g in graphs]), forces=True, stress=stress)
        assert out.energy.shape == (len(graphs),) and out.energy.dtype == torch.float64
        start = 0
        for b, g in enumerate(graphs):
            one = model.compute(prepare(g), forces=True, stress=stress)
            atoms = slice(start, start + g.n_atoms)
            what = f"structure {b} of a batch ({path} path)"
            assert_close(out.energy[b], one.energy[0], rounding, f"energy of {what}")
            assert_close(out.forces[atoms], one.forces, rounding, f"forces of {what}")
            if one.energies is not None:
                assert_close(out.energies[atoms], one.energies, rounding, f"per-atom energies of {what}")
            if stress:
                assert_close(out.virial[b], one.virial[0], rounding, f"virial of {what}")
            start += g.n_atoms


def check_float32(model: Model, atoms, energy_tol: float, force_tol: float) -> None:
    """The model in float32 on a float32 graph: totals still float64, and energy within
    ``energy_tol`` eV per atom, forces (and virial) within ``force_tol`` of the largest
    component of the float64 results."""
    stress = wants_stress(model, atoms)
    g64 = graph_of(model, atoms)
    ref = model.compute(g64, forces=True, stress=stress)
    m32 = copy.deepcopy(model).to(torch.float32)
    out = m32.compute(g64.to(dtype=torch.float32), forces=True, stress=stress)
    assert out.energy.dtype == torch.float64, "total energies must be accumulated in float64"
    assert out.forces.dtype == torch.float32, "forces come in the graph's dtype"
    n = len(atoms)
    err = abs(float(out.energy[0] - ref.energy[0]))
    assert err <= energy_tol * n, f"float32 energy off by {err:.3g} eV > {energy_tol * n:.3g} eV"
    assert_close(out.forces / max(1.0, float(ref.forces.abs().max())),
                 ref.forces / max(1.0, float(ref.forces.abs().max())), force_tol, "float32 forces")
    if stress:
        scale = max(1.0, float(ref.virial.abs().max()))
        assert_close(out.virial / scale, ref.virial / scale, force_tol, "float32 virial")


def fd_hessian(model: Model, atoms, d: float = FD_HESSIAN_STEP) -> np.ndarray:
    """d2E/dx2 (3N, 3N): central differences of the model's forces (column k is -dF/dx_k), not
    symmetrised, so an asymmetric analytic Hessian cannot hide in it. Second order with a
    small step: splines and cutoff functions are only C2, so a wider fourth-order stencil
    meets kinks of the third derivative."""
    atoms = atoms.copy()
    pos0 = atoms.positions.copy()
    n = len(atoms)
    hess = np.zeros((3 * n, 3 * n))
    for a in range(n):
        for c in range(3):
            for k, w in ((1.0, 0.5), (-1.0, -0.5)):
                atoms.positions = pos0
                atoms.positions[a, c] += k * d
                f = model.compute(graph_of(model, atoms), forces=True).forces
                hess[:, 3 * a + c] -= w * f.detach().numpy().reshape(-1) / d
    return hess


def check_hessian(model: Model, atoms) -> None:
    """The calculator's Hessian equals finite differences of the forces (a float32 model's
    equals the float64 one to float32 rounding), or the family refuses it with an InputError
    naming the family."""
    atoms = atoms.copy()
    calc = MLFFCalculator(model, skin=0.0)
    if not model.supports_hessian:
        with pytest.raises(InputError, match=model.family):
            calc.get_hessian(atoms)
        with pytest.raises(InputError, match="displacement"):
            model.hessian(graph_of(model, atoms))
        return
    hess = calc.get_hessian(atoms)
    assert np.abs(hess).max() > 1e-3, "zero Hessian: the check would prove nothing"
    assert_close(hess, fd_hessian(model, atoms), FD_HESSIAN_TOL, "Hessian vs -dF/dx (finite differences)")
    m32 = copy.deepcopy(model).to(torch.float32)
    hess32 = MLFFCalculator(m32, skin=0.0, dtype="float32").get_hessian(atoms)
    scale = max(1.0, float(np.abs(hess).max()))
    assert_close(hess32 / scale, hess / scale, FLOAT32_HESSIAN_TOL, "float32 Hessian vs float64")


def check_float32_placement(model: Model, atoms) -> None:
    """A float32 model gives the same forces (and virial) wherever the structure sits: moved
    by 1e4 Å, and with atoms wrapped by whole lattice vectors along periodic directions. Pair
    vectors must be formed in float64 before any float32 arithmetic (float32 coordinates of
    1e4 Å are ~1e-3 Å apart); what is left is float32 rounding of the forces themselves."""
    stress = wants_stress(model, atoms)
    m32 = copy.deepcopy(model).to(torch.float32)

    def outputs(a):
        out = m32.compute(graph_of(m32, a, torch.float32), forces=True, stress=stress)
        return out.forces.double(), (out.virial.double() if stress else None)

    f0, v0 = outputs(atoms)
    far = atoms.copy()
    far.positions = atoms.positions + np.array([1.0e4, -1.0e4, 0.7e4])
    variants = {"moved by 1e4 Å": far}
    if atoms.pbc.any():
        wrapped = atoms.copy()
        images = np.random.default_rng(5).integers(-3, 4, size=(len(atoms), 3)) * atoms.pbc
        wrapped.positions = atoms.positions + images @ atoms.cell.array
        variants["atoms moved by whole lattice vectors"] = wrapped
    f_scale = max(1e-3, float(f0.abs().max()))
    for what, moved in variants.items():
        f, v = outputs(moved)
        err = float((f - f0).abs().max()) / f_scale
        assert err <= FLOAT32_PLACEMENT_TOL, (
            f"float32 forces of the structure {what} differ by {err:.3g} of the largest force "
            f"(> {FLOAT32_PLACEMENT_TOL:.3g}: pair vectors rounded from absolute coordinates?)")
        if stress:
            v_scale = max(1e-3, float(v0.abs().max()))
            err = float((v - v0).abs().max()) / v_scale
            assert err <= FLOAT32_PLACEMENT_TOL, f"float32 virial of the structure {what} differs by {err:.3g}"


def check_analytic_equals_autograd(model: Model, atoms, rounding: float = ROUNDING) -> None:
    stress = wants_stress(model, atoms)
    graph = graph_of(model, atoms)
    assert model.uses_analytic(graph), "a plain CPU graph must take the analytic path"
    slow_graph = _grad_graph(graph)
    assert not model.uses_analytic(slow_graph), "positions requiring grad must take the autograd path"
    fast = model.compute(graph, forces=True, stress=stress)
    slow = model.compute(slow_graph, forces=True, stress=stress)
    fast_out, slow_out = _outputs(fast), _outputs(slow)
    assert set(fast_out) == set(slow_out), f"the paths give different results: {sorted(fast_out)} vs {sorted(slow_out)}"
    for key in fast_out:
        assert_close(fast_out[key], slow_out[key], rounding, f"{key}: analytic path vs autograd")


def check_round_trip(model: Model, structures: list, path) -> None:
    back = load_model(save_model(model, path))
    assert type(back) is type(model) and back.family == model.family
    assert back.get_config() == model.get_config()
    assert (back.species, back.cutoff) == (model.species, model.cutoff)
    for atoms in structures:
        stress = wants_stress(model, atoms)
        for path_name, prepare in (("plain", lambda g: g), ("autograd", _grad_graph)):
            a = _outputs(model.compute(prepare(graph_of(model, atoms)), forces=True, stress=stress))
            b = _outputs(back.compute(prepare(graph_of(back, atoms)), forces=True, stress=stress))
            assert set(a) == set(b)
            for key in a:
                assert torch.equal(a[key], b[key]), (
                    f"{key} differs after save/load ({path_name} path): max deviation "
                    f"{float((a[key] - b[key]).abs().max()):.3g}")


#: shape of each extra result in ModelOutput.extras (B structures, N atoms), see EXTRA_RESULTS
EXTRA_SHAPES = {
    "energy_uncertainty": lambda n, b: (b,),
    "forces_uncertainty": lambda n, b: (n,),
    "stress_uncertainty": lambda n, b: (b, 3, 3),
    "energies_uncertainty": lambda n, b: (n,),
}


def check_extras(model: Model, structures: list) -> None:
    assert set(EXTRA_SHAPES) == set(EXTRA_RESULTS), "EXTRA_RESULTS changed: update EXTRA_SHAPES"
    unknown = set(model.extra_results) - set(EXTRA_RESULTS)
    assert not unknown, f"{model.family} declares extra results {sorted(unknown)} not in base.EXTRA_RESULTS"
    if not model.extra_results:
        graph = graph_of(model, structures[0])
        with pytest.raises(InputError):
            model.compute(graph, extras=True)
        with pytest.raises(InputError):
            MLFFCalculator(model, uncertainty=True)
        return
    if "stress_uncertainty" in model.extra_results:
        assert model.supports_stress, "stress_uncertainty declared by a model without stress"
    graph = batch_graphs([graph_of(model, a) for a in structures])
    stress = model.supports_stress and all(wants_stress(model, a) for a in structures)
    out = model.compute(graph, forces=True, stress=stress, extras=True)
    for name in model.extra_results:
        if name == "stress_uncertainty" and not stress:
            continue
        assert name in out.extras, f"declared extra result {name!r} missing from compute(..., extras=True)"
        value = out.extras[name]
        want = EXTRA_SHAPES[name](graph.n_atoms, graph.n_graphs)
        assert tuple(value.shape) == want, f"{name}: shape {tuple(value.shape)}, expected {want} ({EXTRA_RESULTS[name]})"
        assert torch.isfinite(value).all() and (value >= 0).all(), f"{name}: not finite and non-negative"
    assert set(out.extras) <= set(EXTRA_RESULTS)


def check_outer_pairs(model: Model, atoms, extra: float = 1.0) -> None:
    """A model declaring ``accepts_outer_pairs`` gives the same outputs, on both paths, when
    its graph also holds edges up to ``cutoff + extra`` (what the calculator's Verlet list
    hands it unfiltered)."""
    if not model.accepts_outer_pairs:
        return
    from ase_mlff.neighbors import neighbor_list

    stress = wants_stress(model, atoms)
    outer = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff + extra)
    plain = graph_of(model, atoms)
    wide = graph_from_structure(atoms, model.cutoff, pairs=outer)
    assert wide.edge_index.shape[1] > plain.edge_index.shape[1], "no edges beyond the cutoff to test with"
    for path_name, prepare in (("plain", lambda g: g), ("autograd", _grad_graph)):
        a = _outputs(model.compute(prepare(plain), forces=True, stress=stress))
        b = _outputs(model.compute(prepare(wide), forces=True, stress=stress))
        for key in a:
            dev = float((a[key].detach() - b[key].detach()).abs().max())
            assert dev <= 1e-10 * max(1.0, float(a[key].detach().abs().max())), (
                f"{key} changes with edges beyond the cutoff ({path_name} path), max deviation {dev:.3g}, "
                "although the model declares accepts_outer_pairs")


def _snapshot(graph: Graph) -> dict:
    snap = {}
    for f in fields(graph):
        v = getattr(graph, f.name)
        snap[f.name] = (v.detach().clone(), v.requires_grad, v.dtype, v.grad) if torch.is_tensor(v) else v
    return snap


def check_no_mutation(model: Model, atoms) -> None:
    """compute, whatever it is asked, leaves every field of its input graph as it was."""
    for requires_grad in (False, True):
        graph = graph_of(model, atoms)
        if requires_grad:
            graph = _grad_graph(graph)
        before = _snapshot(graph)
        calls = [dict(forces=f, stress=s, create_graph=c) for f in (False, True)
                 for s in ((False, True) if wants_stress(model, atoms) else (False,)) for c in (False, True)]
        if model.extra_results:
            calls.append(dict(forces=True, stress=wants_stress(model, atoms), extras=True))
        for kwargs in calls:
            model.compute(graph, **kwargs)
            after = _snapshot(graph)
            for name, old in before.items():
                new = after[name]
                if isinstance(old, tuple):
                    same = (torch.equal(old[0], new[0]) and old[1:3] == new[1:3]
                            and (old[3] is None) == (new[3] is None))
                else:
                    same = old is new or old == new
                assert same, f"compute({kwargs}) modified the input graph's {name!r}"


# ----------------------------------------------------------------------------- registry
def test_every_registered_family_has_an_example():
    missing = [f for f in package_families() if f not in EXAMPLES]
    assert not missing, "\n".join(missing_example_message(f) for f in missing)


def test_a_registered_family_without_an_example_fails_the_suite():
    class Unlisted(_ToyPair):
        family = "conformance_unlisted"

    Unlisted.__module__ = "ase_mlff.models.unlisted"  # as if the package had registered it
    with _registered(Unlisted):
        with pytest.raises(AssertionError, match="has no conformance example"):
            test_every_registered_family_has_an_example()
        with pytest.raises(pytest.fail.Exception, match="tests/conformance_examples.py"):
            build_example("conformance_unlisted")
    assert "conformance_unlisted" not in MODEL_REGISTRY


# ----------------------------------------------------------------------------- per structure
@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("family", families("test_forces_equal_finite_differences"))
def test_forces_equal_finite_differences(family, name):
    ex, atoms = structure(family, name)
    check_forces_fd(ex.model, atoms)


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("family", families("test_stress_equals_strain_derivative"))
def test_stress_equals_strain_derivative(family, name):
    ex, atoms = structure(family, name)
    if not ex.model.supports_stress:
        pytest.skip(f"{family} gives no stress (per_atom_energies={ex.model.per_atom_energies}, "
                    f"global={ex.model.is_global})")
    check_stress_fd(ex.model, atoms)


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("family", families("test_rotation_invariance"))
def test_rotation_invariance(family, name):
    ex, atoms = structure(family, name)
    check_rotation(ex.model, atoms, rounding=ex.rounding)


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("family", families("test_translation_invariance"))
def test_translation_invariance(family, name):
    ex, atoms = structure(family, name)
    check_translation(ex.model, atoms, rounding=ex.rounding)


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("family", families("test_permutation_invariance"))
def test_permutation_invariance(family, name):
    """Local families: any permutation of the atoms. Global families: every permutation of the
    model's symmetry group (used as given), then a relabelling of all atoms, which the
    calculator must identify (``identifies_relabelling``) or refuse with InputError."""
    ex, atoms = structure(family, name)
    model = ex.model
    if not model.is_global:
        check_permutation(model, atoms, np.random.default_rng(5).permutation(len(atoms)), rounding=ex.rounding)
        return
    assert ex.symmetry_permutations, f"the {family} example gives no symmetry permutations to check"
    for perm in ex.symmetry_permutations:
        assert np.array_equal(atoms.numbers[perm], atoms.numbers), "a symmetry permutation must keep elements"
        check_permutation(model, atoms, perm, rounding=ex.rounding)
    rng = np.random.default_rng(6)
    perm = rng.permutation(len(atoms))
    while np.array_equal(atoms.numbers[perm], atoms.numbers):
        perm = rng.permutation(len(atoms))
    if ex.identifies_relabelling:
        check_permutation(model, atoms, perm, rounding=ex.rounding)
    else:
        with pytest.raises(InputError):
            through_calculator(model, atoms[perm])


# ----------------------------------------------------------------------------- per family
@pytest.mark.parametrize("family", families("test_batch_equals_single_evaluations"))
def test_batch_equals_single_evaluations(family):
    ex = example_of(family)
    if ex.model.is_global:  # a batch of geometries of the one molecule
        structures = [ex.molecule.copy() for _ in range(3)]
        for k, a in enumerate(structures[1:]):
            a.rattle(0.03, seed=20 + k)
    else:
        structures = list(accepted(ex).values())
    assert len(structures) > 1
    check_batch(ex.model, structures, rounding=ex.rounding)


@pytest.mark.parametrize("family", families("test_float32_agrees_with_float64"))
def test_float32_agrees_with_float64(family):
    ex = example_of(family)
    for atoms in accepted(ex).values():
        check_float32(ex.model, atoms, ex.float32_energy_tol, ex.float32_force_tol)


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("family", families("test_hessian_equals_finite_differences_or_is_refused"))
def test_hessian_equals_finite_differences_or_is_refused(family, name):
    ex, atoms = structure(family, name)
    check_hessian(ex.model, atoms)


@pytest.mark.parametrize("family", families("test_float32_forces_do_not_depend_on_where_the_structure_sits"))
def test_float32_forces_do_not_depend_on_where_the_structure_sits(family):
    ex = example_of(family)
    for atoms in accepted(ex).values():
        check_float32_placement(ex.model, atoms)


@pytest.mark.parametrize("family", families("test_analytic_path_equals_autograd"))
def test_analytic_path_equals_autograd(family):
    ex = example_of(family)
    if not ex.model.has_analytic:
        pytest.skip(f"{family} has no analytic path (autograd through forward only)")
    for atoms in accepted(ex).values():
        check_analytic_equals_autograd(ex.model, atoms, rounding=ex.rounding)


@pytest.mark.parametrize("family", families("test_save_load_round_trip_is_bit_identical"))
def test_save_load_round_trip_is_bit_identical(family, tmp_path):
    ex = example_of(family)
    check_round_trip(ex.model, list(accepted(ex).values()), tmp_path / f"{family}.mlff")


@pytest.mark.parametrize("family", families("test_extras_present_when_declared_refused_otherwise"))
def test_extras_present_when_declared_refused_otherwise(family):
    ex = example_of(family)
    check_extras(ex.model, list(accepted(ex).values()))


@pytest.mark.parametrize("family", families("test_compute_never_modifies_its_input"))
def test_compute_never_modifies_its_input(family):
    ex = example_of(family)
    for atoms in accepted(ex).values():
        check_no_mutation(ex.model, atoms)


@pytest.mark.parametrize("family", families("test_edges_beyond_the_cutoff_change_nothing_when_declared"))
def test_edges_beyond_the_cutoff_change_nothing_when_declared(family):
    ex = example_of(family)
    if not ex.model.accepts_outer_pairs:
        pytest.skip(f"{family} does not declare accepts_outer_pairs")
    for atoms in accepted(ex).values():
        check_outer_pairs(ex.model, atoms)


# ----------------------------------------------------------------------------- the suite can fail
class _registered:
    """Register a model class for the duration of a ``with`` block (restoring what was there)."""

    def __init__(self, cls):
        self.cls = cls

    def __enter__(self):
        self.previous = MODEL_REGISTRY.get(self.cls.family)
        register_model(self.cls)
        return self.cls

    def __exit__(self, *exc):
        if self.previous is None:
            MODEL_REGISTRY.pop(self.cls.family, None)
        else:
            MODEL_REGISTRY[self.cls.family] = self.previous


class _ToyPair(Model):
    """A correct toy family: Morse pairs with a cosine cutoff, and a closed-form analytic path.

    ``E = 1/2 sum_{i != j} phi(r_ij)``, ``phi = D ((1 - x)^2 - 1) fc(r)``, ``x = exp(-a (r - r0))``,
    ``D = sqrt(D_i D_j)``. Subclasses below each add one defect.
    """

    family = "conformance_toy"

    def __init__(self, species=(13, 29), cutoff=4.0, a=1.4, r0=2.5, **config):
        super().__init__(species, cutoff, {"a": a, "r0": r0, **config})
        self.a, self.r0 = float(a), float(r0)
        self.depth = torch.nn.Parameter(torch.linspace(0.3, 0.45, len(self.species), dtype=torch.float64))

    def _pair(self, graph, vec):
        i, j = graph.edge_index
        r = torch.linalg.norm(vec, dim=1)
        s = self.species_index(graph.numbers)
        d = torch.sqrt(self.depth[s[i]] * self.depth[s[j]]).to(vec.dtype)
        x = torch.exp(-self.a * (r - self.r0))
        m = x * x - 2.0 * x
        fc = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        dfc = -0.5 * math.pi / self.cutoff * torch.sin(math.pi * r / self.cutoff)
        phi = d * m * fc
        dphi = d * (2.0 * self.a * x * (1.0 - x) * fc + m * dfc)
        return r, phi, dphi

    def forward(self, graph):
        vec = graph.edge_vectors()
        _, phi, _ = self._pair(graph, vec)
        return torch.zeros(graph.n_atoms, dtype=vec.dtype, device=vec.device).index_add(0, graph.edge_index[0], 0.5 * phi)

    def _cells(self, graph):
        return graph.cell[graph.batch[graph.edge_index[0]]]

    def analytic(self, graph, forces, stress):
        with torch.no_grad():
            i, j = graph.edge_index
            vec = graph.positions[j] - graph.positions[i] + torch.einsum("pk,pkl->pl", graph.shifts, self._cells(graph))
            vec = vec.to(graph.dtype)  # formed in float64 (the geometry's dtype), computed in the model's
            r, phi, dphi = self._pair(graph, vec)
            energies = torch.zeros(graph.n_atoms, dtype=vec.dtype).index_add(0, i, 0.5 * phi)
            g = (0.5 * dphi / r)[:, None] * vec  # dE/d(vec) of each directed pair
            out = ModelOutput(energy=torch.zeros(graph.n_graphs, dtype=torch.float64).index_add(
                0, graph.batch, energies.to(torch.float64)), energies=energies)
            if forces:
                out.forces = torch.zeros((graph.n_atoms, 3), dtype=vec.dtype).index_add(0, i, g).index_add(0, j, -g)
            if stress:
                w = vec[:, :, None] * g[:, None, :]
                out.virial = torch.zeros((graph.n_graphs, 3, 3), dtype=vec.dtype).index_add(0, graph.batch[i], w)
            return self._defect(graph, out)

    def _defect(self, graph, out):
        return out


class _ForcesScaled(_ToyPair):
    """Analytic forces 1 % too large (autograd through forward is right)."""

    def _defect(self, graph, out):
        if out.forces is not None:
            out.forces = out.forces * 1.01
        return out


class _VirialScaled(_ToyPair):
    """Analytic virial (stress) 1 % too large."""

    def _defect(self, graph, out):
        if out.virial is not None:
            out.virial = out.virial * 1.01
        return out


class _ExternalField(_ToyPair):
    """An energy that depends on where the atoms are (a uniform field along x); consistent on
    both paths, so only the invariances can see it."""

    has_analytic = False

    def forward(self, graph):
        return super().forward(graph) + 0.01 * graph.positions[:, 0]


class _IndexDependent(_ToyPair):
    """A per-atom energy offset by the atom's index: forces are right, the energy is not
    invariant under relabelling the atoms."""

    has_analytic = False

    def forward(self, graph):
        offset = 1e-3 * torch.arange(graph.n_atoms, dtype=graph.dtype, device=graph.device)
        return super().forward(graph) + offset


class _FirstCellOnly(_ToyPair):
    """The analytic path uses the first structure's cell for every structure of a batch."""

    def _cells(self, graph):
        return graph.cell[0].expand(len(graph.shifts), 3, 3)


class _CentresInPlace(_ToyPair):
    """The analytic path centres the atoms in the caller's graph (in place)."""

    def analytic(self, graph, forces, stress):
        graph.positions.sub_(graph.positions.mean(0))
        return super().analytic(graph, forces, stress)


class _ConfigNotSaved(_ToyPair):
    """A hyperparameter that get_config forgets: the reloaded model has the default instead."""

    def get_config(self):
        config = super().get_config()
        del config["a"]
        return config


class _HalfPrecisionInFloat32(_ToyPair):
    """In float32 the analytic path silently computes distances in half precision."""

    def analytic(self, graph, forces, stress):
        if graph.dtype == torch.float32:
            graph = replace(graph, positions=graph.positions.half().float())
        return super().analytic(graph, forces, stress)


class _WrongExtrasShape(_ToyPair):
    """Declares an energy uncertainty but gives one per atom instead of one per structure."""

    extra_results = ("energy_uncertainty",)

    def compute_extras(self, graph, output, stress):
        return {"energy_uncertainty": torch.zeros(graph.n_atoms, dtype=torch.float64)}


class _FirstOrderPairEnergy(torch.autograd.Function):
    """phi(r) of the toy with a backward that is not itself differentiable (like a compiled
    descriptor's): double backward sees its result as a constant."""

    @staticmethod
    def forward(ctx, r, model):
        with torch.no_grad():
            _, phi, dphi = model._pair_of_r(r)
        ctx.save_for_backward(dphi)
        return phi

    @staticmethod
    def backward(ctx, grad):
        (dphi,) = ctx.saved_tensors
        return grad * dphi.detach(), None


class _FirstOrderBackward(_ToyPair):
    """Forward through a first-order-only backward, yet claims exact double backward: its
    forces are right, its Hessian silently wrong (what GAP's SOAP did)."""

    has_analytic = False

    def _pair_of_r(self, r):
        x = torch.exp(-self.a * (r - self.r0))
        m = x * x - 2.0 * x
        fc = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        dfc = -0.5 * math.pi / self.cutoff * torch.sin(math.pi * r / self.cutoff)
        return r, 0.35 * m * fc, 0.35 * (2.0 * self.a * x * (1.0 - x) * fc + m * dfc)

    def forward(self, graph):
        vec = graph.edge_vectors()
        phi = _FirstOrderPairEnergy.apply(torch.linalg.norm(vec, dim=1), self)
        return torch.zeros(graph.n_atoms, dtype=vec.dtype).index_add(0, graph.edge_index[0], 0.5 * phi)


class _Float32AbsolutePositions(_ToyPair):
    """The analytic path rounds the absolute coordinates to the model's dtype before taking
    differences, so float32 forces depend on where the structure sits."""

    def analytic(self, graph, forces, stress):
        if graph.dtype == torch.float32:
            graph = replace(graph, positions=graph.positions.float())
        return super().analytic(graph, forces, stress)


class _ClaimsOuterPairs(_ToyPair):
    """Declares accepts_outer_pairs although its cosine cutoff rises again beyond the cutoff."""

    accepts_outer_pairs = True


def _toy_structures():
    return shared_structures((13, 29))


#: defect -> (toy class, the check that must fail on it)
DEFECTS = {
    "outer pairs declared but not ignored -> edges beyond the cutoff": (
        _ClaimsOuterPairs, lambda m, s, p: check_outer_pairs(m, s["bulk"])),
    "analytic forces 1 % off -> finite differences": (
        _ForcesScaled, lambda m, s, p: check_forces_fd(m, s["triclinic"])),
    "analytic forces 1 % off -> analytic vs autograd": (
        _ForcesScaled, lambda m, s, p: check_analytic_equals_autograd(m, s["bulk"])),
    "stress 1 % off -> strain derivative": (
        _VirialScaled, lambda m, s, p: check_stress_fd(m, s["slab"])),
    "external field -> rotation": (
        _ExternalField, lambda m, s, p: check_rotation(m, s["bulk"])),
    "external field -> translation": (
        _ExternalField, lambda m, s, p: check_translation(m, s["molecule"])),
    "index-dependent energy -> permutation": (
        _IndexDependent, lambda m, s, p: check_permutation(m, s["bulk"], np.arange(len(s["bulk"]))[::-1].copy())),
    "first cell only -> batch": (
        _FirstCellOnly, lambda m, s, p: check_batch(m, [s["bulk"], s["triclinic"]])),
    "centres input in place -> input unchanged": (
        _CentresInPlace, lambda m, s, p: check_no_mutation(m, s["slab"])),
    "setting not saved -> round trip": (
        _ConfigNotSaved, lambda m, s, p: check_round_trip(type(m)(a=1.3), [s["bulk"]], p)),
    "half precision in float32 -> float32 tolerance": (
        _HalfPrecisionInFloat32, lambda m, s, p: check_float32(m, s["bulk"], 1e-4, 1e-3)),
    "first-order backward -> Hessian vs finite differences": (
        _FirstOrderBackward, lambda m, s, p: check_hessian(m, s["bulk"])),
    "float32 absolute coordinates -> placement": (
        _Float32AbsolutePositions, lambda m, s, p: check_float32_placement(m, s["slab"])),
    "extras of the wrong shape -> extras": (
        _WrongExtrasShape, lambda m, s, p: check_extras(m, [s["bulk"], s["slab"]])),
}


def test_the_toy_family_passes_every_check(tmp_path):
    """Control for the meta-test: the correct toy family passes, so each failure below is the
    defect's doing."""
    with _registered(_ToyPair):
        model = _ToyPair()
        s = _toy_structures()
        for name, atoms in s.items():
            check_forces_fd(model, atoms)
            check_stress_fd(model, atoms)
            check_rotation(model, atoms)
            check_translation(model, atoms)
            check_permutation(model, atoms, np.arange(len(atoms))[::-1].copy())
            check_analytic_equals_autograd(model, atoms)
            check_float32(model, atoms, 1e-4, 1e-3)
            check_float32_placement(model, atoms)
            check_hessian(model, atoms)
            check_no_mutation(model, atoms)
            check_outer_pairs(model, atoms)
        check_batch(model, list(s.values()))
        check_round_trip(model, list(s.values()), tmp_path / "toy.mlff")
        check_extras(model, list(s.values()))
    assert "conformance_toy" not in MODEL_REGISTRY


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_suite_catches_a_broken_family(defect, tmp_path):
    cls, check = DEFECTS[defect]
    broken = type(cls.__name__, (cls,), {"family": "conformance_broken"})
    with _registered(broken):
        with pytest.raises(AssertionError):
            check(broken(), _toy_structures(), tmp_path / "broken.mlff")
    assert "conformance_broken" not in MODEL_REGISTRY
