"""Mapped n-body force fields: GP training, mapping, C++ evaluation, stress, MD, model files."""

import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from fd import numerical_forces, numerical_stress

from ase_mlff.calculator import MLFFCalculator
from ase_mlff.graph import batch_graphs, graph_from_arrays
from ase_mlff.io import load_model, save_model
from ase_mlff.models.mff import MFFModel
from ase_mlff.neighbors import neighbor_list
from ase_mlff.splines import UniformGrid, fit_1d, fit_tensor, sample_points
from ase_mlff.training import mff_gp
from ase_mlff.training.mff_gp import Hyper, NBodyGP

DATA = os.path.join(os.path.dirname(__file__), "data")


# ----------------------------------------------------------------------------- helpers
def analytic_mff(species=(28,), rc2=4.2, rc3=3.4, n2=42, n3=17, centred=False, n3jk=None) -> MFFModel:
    """Splines fitted to a smooth Morse pair + Gaussian triangle term (species-dependent).
    ``centred``: the 3-body term has no cutoff in r_jk and reaches r_jk = 2 rc3 (centred
    triplets, ``train mff --triplets centred``); ``n3jk``: intervals along r_jk (default 2 n3)."""
    model = MFFModel(species, rc2=rc2, n2=n2, rc3=rc3, n3=n3, n3jk=n3jk)
    S = len(model.species)
    g2 = model.grid2
    xs = sample_points(g2, 2)
    coef2 = np.zeros(model.coef2.shape)
    for a in range(S):
        for b in range(S):
            depth = 0.3 + 0.05 * (a + b)
            v = depth * ((1 - np.exp(-1.4 * (xs - 2.5))) ** 2 - 1) * mff_gp.cutoff_fn(xs, rc2)
            coef2[a, b] = fit_1d(g2, xs, v)
    g3, gjk = model.grid3, model.grid3jk
    s3 = sample_points(g3, 2)
    sjk = sample_points(gjk, 2) if centred else s3
    X1, X2, X3 = np.meshgrid(s3, s3, sjk, indexing="ij")
    coef3 = np.zeros(model.coef3.shape)
    for a in range(S):
        for b in range(S):
            for c in range(S):
                amp = 0.02 * (1 + a) * (1 + 0.5 * (b + c))
                v = amp * np.exp(-((X1 - 2.6) ** 2 + (X2 - 2.6) ** 2 + 0.5 * (X3 - 2.7) ** 2))
                v *= mff_gp.cutoff_fn(X1, rc3) * mff_gp.cutoff_fn(X2, rc3)
                if not centred:
                    v *= mff_gp.cutoff_fn(X3, rc3)
                coef3[a, b, c] = fit_tensor([g3, g3, gjk], [s3, s3, sjk], v,
                                            [g3.n, g3.n, gjk.n_coef if centred else g3.n])
    model.set_splines(coef2, coef3, e0=[-1.5 - 0.5 * a for a in range(S)])
    return model


def _structures(rng):
    fcc = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 1))
    fcc.rattle(0.08, seed=1)
    tric = bulk("Ni", "fcc", a=3.6).repeat((2, 2, 2))
    tric.set_cell(tric.cell.array + np.array([[0, 0.3, 0.1], [0.2, 0, -0.2], [0.1, 0.3, 0]]), scale_atoms=True)
    tric.rattle(0.08, seed=2)
    slab = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2))
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    slab.rattle(0.08, seed=3)
    small = bulk("Ni", "fcc", a=3.52)  # one atom, cell smaller than the cutoff
    small.rattle(0.0)
    return {"fcc": fcc, "triclinic": tric, "slab": slab, "small": small}


def _two_species(atoms, rng):
    atoms = atoms.copy()
    atoms.numbers = np.where(rng.random(len(atoms)) < 0.4, 13, 28)
    return atoms


def _graph(model, atoms):
    p = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff)
    return graph_from_arrays(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc, p)


@pytest.fixture(scope="module")
def ni_frames():
    from ase_mlff import data

    return list(data.read(os.path.join(DATA, "ni_mlearn_20.extxyz")))


@pytest.fixture(scope="module")
def ni_gp(ni_frames):
    """A small 2+3-body GP on real Ni DFT data (two small surface frames), fixed hyperparameters."""
    rng = np.random.default_rng(0)
    force_atoms = [(f, np.sort(rng.choice(len(ni_frames[f]), 4, replace=False))) for f in (2, 4)]
    gp = NBodyGP([28], rc2=4.5, rc3=3.7, hyper=Hyper(l2=0.8, l3=1.0, sigma2=1.0, sigma3=3.0,
                                                     sigma_f=0.05, sigma_e=0.01))
    gp.fit(ni_frames, energy_frames=[2, 4], force_atoms=force_atoms, optimise=False)
    return gp


@pytest.fixture(scope="module")
def ni_mapped(ni_gp):
    return ni_gp.to_mff(h2=0.02, h3=0.1, samples_per_interval=1)


# ----------------------------------------------------------------------------- splines
def test_spline_basis_matches_scipy():
    from scipy.interpolate import BSpline

    g = UniformGrid(4.3, 23)
    c = np.random.default_rng(0).normal(size=g.n_coef)
    x = np.linspace(0, 4.3, 777, endpoint=False)
    spl = BSpline(g.knots(), c, 3)
    np.testing.assert_allclose(g.design(x) @ c, spl(x), atol=1e-12)
    np.testing.assert_allclose(g.design(x, 1) @ c, spl.derivative()(x), atol=1e-10)


# ----------------------------------------------------------------------------- C++ vs torch
@pytest.mark.parametrize("name", ["fcc", "triclinic", "slab", "small"])
@pytest.mark.parametrize("centred", [False, True], ids=["triangles", "centred"])
def test_cpp_path_equals_torch_forward(name, centred, rng):
    atoms = _structures(rng)[name]
    for species, at in (((28,), atoms), ((13, 28), _two_species(atoms, rng))):
        model = analytic_mff(species, centred=centred)
        graph = _graph(model, at)
        assert model.uses_analytic(graph)
        fast = model.compute(graph, forces=True, stress=True)
        # the same graph with positions requiring grad takes the autograd path
        slow_graph = _graph(model, at)
        slow_graph.positions.requires_grad_(True)
        assert not model.uses_analytic(slow_graph)
        ref = model.compute(slow_graph, forces=True, stress=True)
        for key in ("energy", "energies", "forces", "virial"):
            np.testing.assert_allclose(getattr(fast, key).numpy(), getattr(ref, key).detach().numpy(),
                                       rtol=1e-10, atol=1e-11)
        # per-atom energies sum to the energy
        assert abs(float(fast.energies.sum() - fast.energy.sum())) < 1e-10


def test_cpp_batched_graphs(rng):
    model = analytic_mff((13, 28))
    structs = [_two_species(a, rng) for a in _structures(rng).values()]
    graphs = [_graph(model, a) for a in structs]
    out = model.compute(batch_graphs(graphs), forces=True, stress=True)
    start = 0
    for b, g in enumerate(graphs):
        single = model.compute(g, forces=True, stress=True)
        np.testing.assert_allclose(out.energy[b], single.energy[0], rtol=1e-12)
        np.testing.assert_allclose(out.forces[start:start + g.n_atoms], single.forces, atol=1e-12)
        np.testing.assert_allclose(out.virial[b], single.virial[0], atol=1e-11)
        start += g.n_atoms


@pytest.mark.parametrize("name", ["fcc", "triclinic", "slab"])
@pytest.mark.parametrize("centred", [False, True], ids=["triangles", "centred"])
def test_forces_and_stress_are_derivatives_of_spline_energy(name, centred, rng):
    atoms = _two_species(_structures(rng)[name], rng)
    if name == "fcc":
        atoms = atoms[:8]
    atoms.calc = MLFFCalculator(analytic_mff((13, 28), centred=centred), skin=0.0)
    f = atoms.get_forces()
    np.testing.assert_allclose(f, numerical_forces(atoms, d=1e-4), atol=2e-7)
    s = atoms.get_stress()
    np.testing.assert_allclose(s, numerical_stress(atoms, d=1e-5), atol=2e-8)
    assert abs(atoms.get_potential_energies().sum() - atoms.get_potential_energy()) < 1e-10


def test_nve_energy_conservation():
    from ase import units
    from ase_mlff._compat import thermalize
    from ase.md.verlet import VelocityVerlet

    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2))
    atoms.calc = MLFFCalculator(analytic_mff((28,)), skin=0.5)
    thermalize(atoms, 600, rng=np.random.default_rng(4))
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    energies = []
    for _ in range(30):
        dyn.run(5)
        energies.append(atoms.get_total_energy())
    energies = np.array(energies)
    ekin = atoms.get_kinetic_energy()
    assert ekin > 0.05
    assert np.ptp(energies) / len(atoms) < 2e-5, np.ptp(energies)


def test_separate_r_jk_grid_of_centred_triplets(tmp_path, rng):
    """n3jk (train mff --h3jk): its own spacing along r_jk; the C++ path equals torch, forces
    are derivatives, and the file keeps the grid (check_config predicts the array's shape)."""
    model = analytic_mff((13, 28), centred=True, n3jk=21)
    assert model.grid3jk.n == 21 and model.coef3.shape[-1] == 24 and model.jk_max() > 1.9 * model.rc3
    atoms = _two_species(_structures(rng)["triclinic"], rng)
    fast = model.compute(_graph(model, atoms), forces=True, stress=True)
    slow_graph = _graph(model, atoms)
    slow_graph.positions.requires_grad_(True)
    ref = model.compute(slow_graph, forces=True, stress=True)
    for key in ("energy", "forces", "virial"):
        np.testing.assert_allclose(getattr(fast, key).numpy(), getattr(ref, key).detach().numpy(),
                                   rtol=1e-10, atol=1e-11)
    small = atoms[:8]
    small.calc = MLFFCalculator(model, skin=0.0)
    np.testing.assert_allclose(small.get_forces(), numerical_forces(small, d=1e-4), atol=2e-7)
    assert MFFModel.check_config(model.get_config())["coef3"][0][-1] == 24
    back = load_model(save_model(model, tmp_path / "jk.mlff"))
    assert back.n3jk == 21 and back.get_config() == model.get_config()
    # the default grid writes no n3jk: files made before it existed stay the same
    assert "n3jk" not in analytic_mff((28,)).get_config()


def test_model_file_round_trip(tmp_path, rng):
    model = analytic_mff((13, 28))
    path = save_model(model, tmp_path / "m.mlff")
    back = load_model(path)
    assert isinstance(back, MFFModel)
    assert back.get_config() == model.get_config()
    atoms = _two_species(_structures(rng)["triclinic"], rng)
    r1 = model.compute(_graph(model, atoms), stress=True)
    r2 = back.compute(_graph(back, atoms), stress=True)
    for key in ("energy", "energies", "forces", "virial"):
        np.testing.assert_array_equal(getattr(r1, key).numpy(), getattr(r2, key).numpy())


# ----------------------------------------------------------------------------- the GP
def test_gp_mean_consistent_with_derivative_kernels(ni_gp, ni_frames):
    """K alpha at the training labels (analytic energy/force kernels, C++) equals the
    posterior-mean model evaluated with autograd (torch)."""
    gp = ni_gp
    cache = mff_gp.GramCache(gp.labels, gp.use2, gp.use3)
    hp = gp.hyper
    mean = (hp.sigma2**2 * cache.k2(hp.l2) + hp.sigma3**2 * cache.k3(hp.l3)) @ gp.alpha
    calc = MLFFCalculator(gp.as_model())
    pred = []
    for f in (2, 4):
        a = ni_frames[f].to_atoms()
        a.calc = calc
        pred.append(a.get_potential_energy() - len(a) * gp.e0[0])
    rng = np.random.default_rng(0)
    for f in (2, 4):
        atoms_idx = np.sort(rng.choice(len(ni_frames[f]), 4, replace=False))
        a = ni_frames[f].to_atoms()
        a.calc = calc
        pred.extend(a.get_forces()[atoms_idx].reshape(-1))
    np.testing.assert_allclose(np.array(pred), mean, atol=1e-7)


def test_energy_force_kernel_is_derivative_of_energy_kernel(ni_frames):
    """Cov(F_p, E') = -d/dr_p Cov(E, E'), checked by finite differences of the Gram matrix."""
    fr = ni_frames[4]
    other = ni_frames[0]
    for rc2, rc3 in ((4.5, 0.0), (0.0, 3.7)):
        D, V = (1, 2) if rc2 else (3, 3)
        ell = 0.9

        def pts(pos, f=fr):
            p2, p3 = mff_gp.structure_points(pos, f.numbers, f.cell, f.pbc, [28], rc2, rc3)
            return p2 if rc2 else p3

        e_other = mff_gp.energy_functional(pts(other.positions, other), D, V)
        p = 3
        force = mff_gp.force_functional(pts(fr.positions), [p], D, V)
        k_fe = mff_gp.gram(force, e_other, ell)[:, 0]
        num = np.zeros(3)
        for c in range(3):
            vals = []
            for sgn in (1, -1):
                pos = fr.positions.copy()
                pos[p, c] += sgn * 1e-4
                vals.append(mff_gp.gram(mff_gp.energy_functional(pts(pos), D, V), e_other, ell)[0, 0])
            num[c] = -(vals[0] - vals[1]) / 2e-4
        np.testing.assert_allclose(k_fe, num, rtol=2e-5, atol=2e-5 * np.abs(num).max())


def test_gram_is_symmetric_positive_semidefinite(ni_gp):
    lab = ni_gp.labels
    for e, f, ell in ((lab.e2, lab.f2, 0.7), (lab.e3, lab.f3, 1.1)):
        k = mff_gp.GramCache._full(e, f, ell)
        np.testing.assert_allclose(k, k.T, rtol=1e-12, atol=1e-12 * np.abs(k).max())
        w = np.linalg.eigvalsh(k / np.abs(k).max())
        assert w.min() > -1e-9


def test_gp_variance(ni_gp, ni_frames):
    v_train = ni_gp.energy_variance(ni_frames[2])  # an energy label
    v_new = ni_gp.energy_variance(ni_frames[15])
    assert 0 <= v_train < v_new


def test_hyperparameters_maximise_marginal_likelihood(ni_frames):
    gp = NBodyGP([28], rc2=4.5, rc3=0.0)
    fa = [(f, [0, 1]) for f in (6, 7, 8, 9)]
    gp.fit(ni_frames, energy_frames=[6, 7], force_atoms=fa, optimise=True, rounds=1, maxiter=6)
    best = gp.log_marginal_likelihood
    lab = gp.labels
    cache = mff_gp.GramCache(lab, True, False)
    for factor in (0.7, 1.4):
        hp = Hyper(**{**gp.hyper.as_dict(), "l2": gp.hyper.l2 * factor})
        assert mff_gp.log_marginal_likelihood(cache.k2(hp.l2), cache.k3(1.0), lab, hp) < best + 1e-6
    for name in ("sigma2", "sigma_f", "sigma_e"):
        for factor in (0.8, 1.25):
            hp = Hyper(**{**gp.hyper.as_dict(), name: getattr(gp.hyper, name) * factor})
            assert mff_gp.log_marginal_likelihood(cache.k2(hp.l2), cache.k3(1.0), lab, hp) < best + 1e-6


# ----------------------------------------------------------------------------- mapping
def test_mapped_equals_gp_on_real_environments(ni_gp, ni_mapped, ni_frames):
    gp_calc = MLFFCalculator(ni_gp.as_model())
    map_calc = MLFFCalculator(ni_mapped)
    df, de = [], []
    for f in (0, 5):
        a = ni_frames[f].to_atoms()
        a.calc = gp_calc
        fg, eg = a.get_forces(), a.get_potential_energies()
        a.calc = map_calc
        df.append(a.get_forces() - fg)
        de.append(a.get_potential_energies() - eg)
    assert np.sqrt(np.mean(np.concatenate(df) ** 2)) < 5e-4  # eV/Å
    assert np.abs(np.concatenate(de)).max() < 5e-4  # eV per atom


def test_mapped_n_body_terms_match_gp_on_minimal_configurations(ni_gp, ni_mapped):
    """The spline V2 / V3 equal the GP's local energy of a centre atom with 1 / 2 neighbours."""
    model = ni_gp.as_model()
    for r in (2.3, 2.6, 3.1, 4.0):
        atoms = Atoms("Ni2", positions=[[0, 0, 0], [r, 0, 0]], cell=np.eye(3) * 20, pbc=False)
        e_gp = float(model(_graph(model, atoms))[0] - ni_gp.e0[0])
        assert abs(ni_mapped.pair_energy([r])[0] - e_gp) < 2e-5
    for rij, rik, ang in ((2.4, 2.6, 60), (2.5, 2.5, 90), (2.45, 3.4, 75)):
        t = np.radians(ang)
        pos = [[0, 0, 0], [rij, 0, 0], [rik * np.cos(t), rik * np.sin(t), 0]]
        atoms = Atoms("Ni3", positions=pos, cell=np.eye(3) * 20, pbc=False)
        rjk = np.linalg.norm(np.subtract(pos[2], pos[1]))
        e_local = float(model(_graph(model, atoms))[0] - ni_gp.e0[0])
        e3_gp = e_local - float(ni_mapped.pair_energy([rij])[0] + ni_mapped.pair_energy([rik])[0])
        e3_map = ni_mapped.triplet_energy(np.array([rij]), np.array([rik]), np.array([rjk]))[0]
        assert abs(e3_map - e3_gp) < 5e-5 + 2e-5  # spline fit + pair-spline error


def test_multi_species_gp_mapping(rng):
    """2-element GP trained on an analytic potential maps exactly onto element-resolved splines."""
    from analytic_potential import AnalyticTestPotential

    ref = MLFFCalculator(AnalyticTestPotential(species=(13, 28), cutoff=4.5))
    from ase_mlff.data import Frame

    frames = []
    for k in range(4):
        a = _two_species(bulk("Ni", "fcc", a=3.55, cubic=True).repeat((2, 1, 1)), rng)
        a.rattle(0.1, seed=10 + k)
        a.calc = ref
        frames.append(Frame(a.numbers, a.positions, a.cell.array, a.pbc, a.get_potential_energy(), a.get_forces()))
    gp = NBodyGP([13, 28], rc2=4.0, rc3=3.0, hyper=Hyper(0.7, 0.9, 1.0, 1.0, 0.02, 0.01))
    gp.fit(frames, energy_frames=[0], force_atoms=[(2, [0, 1, 2]), (3, [4, 5])], optimise=False)
    mapped = gp.to_mff(h2=0.02, h3=0.15)
    gc, mc = MLFFCalculator(gp.as_model()), MLFFCalculator(mapped)
    a = _two_species(bulk("Ni", "fcc", a=3.55, cubic=True).repeat((2, 1, 1)), rng)
    a.rattle(0.1, seed=99)
    a.calc = gc
    fg, eg = a.get_forces(), a.get_potential_energy()
    a.calc = mc
    np.testing.assert_allclose(a.get_forces(), fg, atol=2e-4)
    assert abs(a.get_potential_energy() - eg) < 1e-4


def test_md_on_the_unfiltered_verlet_list_equals_fresh_lists(rng):
    """MFF takes the calculator's cutoff + skin list unfiltered (accepts_outer_pairs): along an
    MD-like path with rebuilds, energy, forces, stress and per-atom energies equal those from a
    fresh list within the cutoff each step, and overlapping atoms are still refused."""
    from ase_mlff.errors import InputError

    model = analytic_mff((13, 28), centred=True)
    assert model.accepts_outer_pairs
    a = _two_species(bulk("Ni", "fcc", a=3.52, cubic=True).repeat((3, 3, 3)), rng)
    a.rattle(0.05, seed=2)
    b = a.copy()
    a.calc, b.calc = MLFFCalculator(model, skin=0.6), MLFFCalculator(model, skin=0.0)
    for _ in range(25):
        step = rng.normal(scale=0.04, size=a.positions.shape)
        a.positions += step
        b.positions += step
        # ~320 eV summed in another pair order: 1e-13 relative is ~450 eps (measured 2 ulps)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-13, abs=0)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-11)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-12)
        np.testing.assert_allclose(a.get_potential_energies(), b.get_potential_energies(), atol=1e-11)
    nl = a.calc.nl
    assert 1 < nl.n_builds < nl.n_updates  # reused between rebuilds, rebuilt when needed
    assert a.calc._outer_edges[1][0].shape[1] > len(b.calc.nl.update(b))  # pairs beyond the cutoff
    # atoms pushed together without a rebuild (a wide skin): still caught
    a.calc = MLFFCalculator(model, skin=6.0)
    a.get_forces()
    a.positions[1] = a.positions[0] + [0.1, 0.0, 0.0]
    with pytest.raises(InputError, match="overlap"):
        a.get_forces()
    assert a.calc.nl.n_builds == 1


def test_h3jk_needs_centred_triplets(tmp_path, capsys):
    from ase_mlff.cli import main

    code = main(["train", "mff", os.path.join(DATA, "ni_mlearn_20.extxyz"), "--h3jk", "0.2", "--n-test", "3",
                 "-o", str(tmp_path / "m.mlff")])
    assert code == 2 and "--h3jk needs --triplets centred" in capsys.readouterr().err
    assert not (tmp_path / "m.mlff").exists()
