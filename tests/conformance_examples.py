"""Example models for the conformance suite (tests/test_conformance.py): one per family.

A family joins ase-mlff by being registered (``@register_model``); the conformance suite then
runs every one of its checks on the model that ``EXAMPLES[family]()`` builds, and fails for a
registered family that has no entry here. An entry is a function without arguments returning
an :class:`Example`: a small, valid model of the family (quick to build: no training run
longer than a second or two, no file outside ``potentials/`` and ``tests/data/``) and what the
suite needs to know to exercise it.

Local families are evaluated on the suite's shared structures (:func:`shared_structures`:
an isolated cluster, bulk fcc, a skewed triclinic cell and a slab), with the atoms of each
structure spread over the model's elements. Global families (``cutoff is None``) see one
molecule in a fixed atom order, so their example gives that molecule (``Example.molecule``)
and the permutations under which the model is invariant (``Example.symmetry_permutations``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from ase_mlff.models.base import MODEL_REGISTRY, Model
from ase_mlff.registry import conformance_examples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POTENTIALS = os.path.join(ROOT, "potentials")
DATA = os.path.join(ROOT, "tests", "data")


#: results that agree up to float64 rounding (invariances, batches, analytic vs autograd) may
#: differ by this much relative to max(1, |x|); an example whose sums cancel more states its own
ROUNDING = 1e-9


@dataclass
class Example:
    """A small valid model of one family, and what the conformance suite needs with it.

    ``model``: the model. ``molecule``: for a global family, a molecule the model accepts, in
    the model's atom order (required); for a local family, None (the suite's shared cluster is
    used). ``symmetry_permutations``: global families: permutations ``p`` of the molecule's
    atoms (``atoms[p]``) under which the model is exactly invariant (its symmetry group);
    local families are invariant under every permutation and leave it empty.
    ``identifies_relabelling``: a global family's calculator evaluates a molecule given in any
    atom order correctly (by identifying the order); when False it must refuse one with
    ``InputError`` instead. ``nearest_neighbour``: Å, the distance the shared structures use
    (near the model's minimum). ``rounding``: relative difference (to max(1, |x|)) allowed
    between results that agree up to float64 rounding (invariances, batches, analytic vs
    autograd); the default suits sums of terms of the result's own size, a family whose sums
    cancel much larger terms states its own. ``float32_energy_tol`` (eV per atom) and
    ``float32_force_tol`` (relative to the largest force component) bound the difference
    between the model in float32 and float64.
    """

    model: Model
    molecule: Atoms | None = None
    symmetry_permutations: list[np.ndarray] = field(default_factory=list)
    identifies_relabelling: bool = False
    nearest_neighbour: float = 2.49
    float32_energy_tol: float = 1e-4
    float32_force_tol: float = 1e-3
    rounding: float = ROUNDING
    notes: str = ""


# ----------------------------------------------------------------------------- structures
STRUCTURES = ("molecule", "bulk", "triclinic", "slab")


def _spread_species(atoms: Atoms, species, seed: int) -> Atoms:
    """The atoms spread over ``species`` (every element present, order shuffled)."""
    atoms = atoms.copy()
    species = list(species)
    numbers = np.array([species[k % len(species)] for k in range(len(atoms))])
    np.random.default_rng(seed).shuffle(numbers)
    atoms.numbers = numbers
    return atoms


def _cluster(nn: float) -> Atoms:
    """Seven atoms: a distorted fcc fragment (a centre and six of its neighbours), no
    symmetry, in a box of vacuum (pbc False)."""
    a = nn * np.sqrt(2.0)
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                     [-0.5, 0.5, 0], [0.5, -0.5, 0], [0, -0.5, 0.5]])
    atoms = Atoms("X7", positions=frac * a, cell=np.eye(3) * 14.0, pbc=False)
    atoms.rattle(0.06, seed=11)
    atoms.center()
    return atoms


def shared_structures(species, nearest_neighbour: float = 2.49) -> dict[str, Atoms]:
    """The suite's structures for a local model of ``species`` (every element present).

    ``molecule``: 7-atom cluster, no pbc; ``bulk``: 16-atom rattled fcc, cubic cell (smaller
    than twice a typical cutoff, so atoms meet their own images); ``triclinic``: 8 atoms in a
    skewed primitive fcc cell; ``slab``: 16 atoms, two layers, periodic in x and y, 5 Å of
    vacuum on each side along z (pbc False there).
    """
    a = nearest_neighbour * np.sqrt(2.0)
    out = {"molecule": _cluster(nearest_neighbour)}
    fcc = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 1))
    fcc.rattle(0.06, seed=1)
    out["bulk"] = fcc
    tric = bulk("Cu", "fcc", a=a).repeat((2, 2, 2))
    skew = np.array([[0, 0.3, 0.1], [0.2, 0, -0.2], [0.1, 0.3, 0]]) * (a / 3.52)
    tric.set_cell(tric.cell.array + skew, scale_atoms=True)
    tric.rattle(0.06, seed=2)
    out["triclinic"] = tric
    slab = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 1))
    slab.center(vacuum=5.0, axis=2)
    slab.pbc = (True, True, False)
    slab.rattle(0.06, seed=3)
    out["slab"] = slab
    return {name: _spread_species(at, species, seed=k) for k, (name, at) in enumerate(out.items())}


# ----------------------------------------------------------------------------- examples
def analytic_example() -> Example:
    """tests/analytic_potential.py: Morse pairs + embedding + angular term, Al and Cu."""
    from analytic_potential import AnalyticTestPotential

    model = AnalyticTestPotential(species=(13, 29), cutoff=4.5)
    return Example(model, notes="autograd only (no analytic path), two elements")


def _greville(grid) -> np.ndarray:
    """Greville abscissae of a uniform clamped cubic basis: where each coefficient 'sits'."""
    t = grid.knots()
    return np.array([t[q + 1:q + 4].mean() for q in range(grid.n_coef)])


def _smooth_cut(x, rc):
    return np.where(x < rc, (1.0 - np.clip(x / rc, 0, 1)) ** 3, 0.0)


def mff_model(seed: int = 7):
    """An MFF model for Al and Ni with smooth, random-but-deterministic splines.

    B-spline coefficients are set at their Greville abscissae to a Morse pair and a Gaussian
    triangle term (species-dependent) plus a little noise: any coefficients give a C2 spline,
    and the last three being zero make energy, force and curvature vanish at the cutoff. No
    fitting, so it builds in milliseconds. Small 3-body grids keep the torch oracle cheap.
    """
    from ase_mlff.models.mff import MFFModel

    rng = np.random.default_rng(seed)
    model = MFFModel((13, 28), rc2=4.2, n2=24, rc3=3.3, n3=6)
    S = len(model.species)
    x2 = _greville(model.grid2)
    coef2 = np.zeros(model.coef2.shape)
    for a in range(S):
        for b in range(S):
            depth = 0.3 + 0.05 * (a + b)
            morse = depth * ((1 - np.exp(-1.4 * (x2 - 2.5))) ** 2 - 1)
            coef2[a, b] = (np.minimum(morse, 3.0) + 0.01 * rng.normal(size=x2.shape)) * _smooth_cut(x2, 4.2)
    coef2[..., -3:] = 0.0
    x3, xjk = _greville(model.grid3), _greville(model.grid3jk)
    X1, X2, X3 = np.meshgrid(x3, x3, xjk, indexing="ij")
    coef3 = np.zeros(model.coef3.shape)
    for a in range(S):
        for b in range(S):
            for c in range(S):
                amp = 0.05 * (1 + a) * (1 + 0.5 * (b + c))
                v = amp * np.exp(-((X1 - 2.6) ** 2 + (X2 - 2.6) ** 2 + 0.5 * (X3 - 2.8) ** 2))
                v = v * (1 + 0.1 * rng.normal(size=v.shape))
                coef3[a, b, c] = v * _smooth_cut(X1, 3.3) * _smooth_cut(X2, 3.3)
    coef3[..., -3:, :, :] = 0.0
    coef3[..., :, -3:, :] = 0.0
    coef3[..., :, :, -3:] = 0.0
    return model.set_splines(coef2, coef3, e0=[-1.5, -2.0])


def mff_example() -> Example:
    return Example(mff_model(), notes="C++ analytic path, torch oracle, two elements")


def sgdml_example() -> Example:
    """The shipped ethanol model (potentials/ethanol_sgdml.mlff) and the shipped start
    geometry (an rMD17 test frame, in the model's atom order)."""
    from ase.io import read

    from ase_mlff.io import load_model

    model = load_model(os.path.join(POTENTIALS, "ethanol_sgdml.mlff"))
    molecule = read(os.path.join(POTENTIALS, "ethanol_start.xyz"))
    molecule.pbc = False
    assert molecule.numbers.tolist() == model.z.tolist(), "start geometry not in the model's order"
    perms = [np.asarray(p) for p in model.perms.cpu().numpy() if not np.array_equal(p, np.arange(len(p)))]
    return Example(model, molecule=molecule, symmetry_permutations=perms, identifies_relabelling=True,
                   # float32 descriptors (1/r to 7 digits) against a -4200 eV kernel energy
                   float32_energy_tol=2e-3, float32_force_tol=5e-3,
                   # energy and forces cancel sums of ~1e8 eV and ~7e7 eV/Å (tests/sgdml_rounding.py):
                   # two paths differ by up to ~1e-9 of the largest force, at the default's edge
                   rounding=1e-8,
                   notes="global: one molecule, fixed atom order, analytic numpy path")


def _committee_members() -> list[Model]:
    """Three MFF models whose splines differ by their noise (as if trained on subsamples)."""
    return [mff_model(seed) for seed in (7, 8, 9)]


def committee_example() -> Example:
    """A committee of three MFF models, served as their average (family "committee", built
    from members; the members' C++ paths are its analytic path).

    Skips with a reason while the committee family is not part of the package; fails (with
    what was tried) when it is registered but cannot be built from members in any of the ways
    below, so that whoever changes its constructor updates this builder.
    """
    try:
        import ase_mlff.models.committee as committee  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the committee family is not in the package yet (import ase_mlff.models.committee: {exc})")
    cls = MODEL_REGISTRY.get("committee")
    if cls is None:
        pytest.skip("ase_mlff.models.committee imports but registers no family 'committee'")
    attempts = []
    for how, build in (
        ("Committee.from_members(members)", lambda m: cls.from_members(m)),
        ("Committee(members)", lambda m: cls(m)),
        ("Committee(members=members)", lambda m: cls(members=m)),
    ):
        if how.startswith("Committee.from_members") and not hasattr(cls, "from_members"):
            continue
        try:
            model = build(_committee_members())
        except TypeError as exc:
            attempts.append(f"{how}: {exc}")
            continue
        return Example(model, notes="committee of three MFF members, no served mean")
    pytest.fail("tests/conformance_examples.py cannot build a committee from members; tried "
                + "; ".join(attempts) + ". Update committee_example() to the committee's constructor.")


EXAMPLES: dict[str, Callable[[], Example]] = {
    "test_analytic": analytic_example,
    "mff": mff_example,
    "sgdml": sgdml_example,
    "committee": committee_example,
}


def missing_example_message(family: str) -> str:
    return (f"model family {family!r} is registered but has no conformance example: add a builder "
            f"to EXAMPLES in tests/conformance_examples.py returning an Example with a small valid "
            f"{family} model (see docs/contributing_a_family.md); every registered family must pass "
            f"tests/test_conformance.py")


def build_example(family: str) -> Example:
    """The family's example, or a test failure telling the contributor to add one."""
    if family not in EXAMPLES:
        pytest.fail(missing_example_message(family), pytrace=False)
    example = EXAMPLES[family]()
    if example.model.family != family:
        pytest.fail(f"EXAMPLES[{family!r}] built a {example.model.family!r} model", pytrace=False)
    if example.model.is_global and example.molecule is None:
        pytest.fail(f"the example of the global family {family!r} must give its molecule "
                    f"(Example.molecule, in the model's atom order)", pytrace=False)
    return example


def bpnn_example() -> Example:
    """A Behler-Parrinello model for H and O: a small G2/G5 library (every function kept),
    random but seeded tanh networks, in float64 (the suite's finite differences need it; the
    float32 check converts it)."""
    import torch

    from ase_mlff.descriptors.acsf import library_for
    from ase_mlff.models.bpnn import BPNNModel

    sfset = library_for([1, 8], 4.0, np.full((2, 2), 2.0), n_radial=3, n_eta=2, zetas=(1, 2), lambdas=(-1, 1))
    torch.manual_seed(3)
    model = BPNNModel.from_set(sfset, hidden=(8, 8), reference_energies=[-13.6, -432.0], energy_scale=0.5,
                               dtype="float64")
    return Example(model, notes="autograd through G2/G5 symmetry functions (pairs only), two elements")


EXAMPLES["bpnn"] = bpnn_example


def schnet_example() -> Example:
    """A small SchNet (Al, Cu): 16 features, 2 interaction blocks, 12 Gaussians, seeded random
    weights, in float64 (the suite's finite differences need it; the float32 check converts it).
    Energy scale 20 eV: freshly initialised blocks give a nearly flat surface, whose forces
    would be too small for the finite-difference check to prove anything."""
    import torch

    from ase_mlff.models.schnet import SchNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = SchNetModel([13, 29], cutoff=4.5, n_features=16, n_interactions=2, n_rbf=12,
                            reference_energies=[-1.5, -2.0], energy_scale=20.0, dtype="float64")
    return Example(model, notes="message passing over the pair list (continuous-filter convolutions), autograd")


EXAMPLES["schnet"] = schnet_example


def gap_example() -> Example:
    """A GAP for Si fitted (under a second) to six real mlearn frames: SOAP n_max 4, l_max 3,
    cutoff 4 Å, 40 sparse environments, a 2-body term, and the factors of the predictive
    variance, so the uncertainty extras are the GP's own."""
    from ase_mlff.data import read
    from ase_mlff.training.gap_train import train

    ds = read(os.path.join(DATA, "si_mlearn_16.extxyz"))
    model, _ = train(ds[[4, 5, 6, 9, 13, 14]], cutoff=4.0, cutoff_width=0.5, n_max=4, l_max=3, n_sparse=40,
                     two_body=True, two_body_n_sparse=8, seed=1)
    return Example(model, nearest_neighbour=2.35,
                   notes="SOAP through the compiled backward pass, sparse GP; trained on real Si frames")


EXAMPLES["gap"] = gap_example


# Families of other installed distributions bring their example as an entry point
# (ase_mlff.registry, group "ase_mlff.conformance_examples"); the package's own come first.
for _family, _build in conformance_examples().items():
    EXAMPLES.setdefault(_family, _build)
