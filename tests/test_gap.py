"""SOAP descriptor and GAP family: exact derivatives, invariances, the fit, the GP variance.

The conformance suite (test_conformance.py) checks the model contract (finite differences of
forces and stress, invariances, batching, float32, save/load, extras) on a GAP fitted to real
frames; this file checks what is particular to SOAP and to the sparse GP.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial.transform import Rotation
from scipy.special import eval_legendre

from ase_mlff import MLFFCalculator
from ase_mlff._ext import _core
from ase_mlff.data import read
from ase_mlff.descriptors.soap import SOAP, radial_integrals, cutoff_function
from ase_mlff.errors import InputError, TrainingError
from ase_mlff.graph import graph_from_structure
from ase_mlff.io import load_model, save_model
from ase_mlff.neighbors import neighbor_list
from ase_mlff.training.gap_train import select_sparse, train
from ase_mlff.training.sparse_gp import cholesky_upper, parse_config_type_sigmas

HERE = os.path.dirname(os.path.abspath(__file__))
SI = os.path.join(HERE, "data", "si_mlearn_16.extxyz")
WATER = os.path.join(HERE, "data", "water_deepmd_4.extxyz")


@pytest.fixture(scope="module")
def si():
    return read(SI)


@pytest.fixture(scope="module")
def small_soap():
    return SOAP([1, 8, 14], cutoff=4.0, n_max=4, l_max=4, atom_sigma=0.5, cutoff_width=0.5)


def _raw(soap, atoms, jacobian=False, vectors=None):
    pr = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, soap.cutoff)
    idx = soap.species_index(atoms.numbers)
    v = pr.vectors if vectors is None else vectors
    return pr, idx, soap.raw(len(atoms), pr.i, idx[pr.j], idx, v, jacobian=jacobian)


# ----------------------------------------------------------------------------- SOAP
def test_spherical_harmonics_obey_the_addition_theorem():
    u = np.random.default_rng(0).normal(size=(40, 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    Y = _core.spherical_harmonics(u, 8)
    for l in range(9):
        block = Y[:, l * l:(l + 1) ** 2]
        ref = (2 * l + 1) / (4 * np.pi) * eval_legendre(l, np.clip(u @ u.T, -1, 1))
        np.testing.assert_allclose(block @ block.T, ref, atol=1e-12)


def test_radial_table_interpolates_the_quadrature(small_soap):
    r = np.array([0.37, 1.234, 2.5051, 3.61, 3.97])
    g, dg = radial_integrals(r, small_soap.n_max, small_soap.l_max, small_soap.atom_sigma, small_soap.basis_radius)
    fc, dfc = cutoff_function(r, small_soap.cutoff, small_soap.cutoff_width)
    want = (fc[:, None, None] * g).reshape(len(r), -1)
    u = r * small_soap.inv_h
    k = np.floor(u).astype(int)
    t = (u - k)[:, None]
    c = small_soap.table[k]
    got = c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
    np.testing.assert_allclose(got, want, atol=1e-9 * np.abs(want).max())
    # the same cutoff in torch (the 2-body term of GAP) and in numpy (the tables, training)
    import torch

    rr = np.linspace(0.0, 4.2, 421)
    for a, b in zip(cutoff_function(torch.from_numpy(rr), 4.0, 0.5), cutoff_function(rr, 4.0, 0.5)):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-15)


@pytest.mark.parametrize("path", [SI, WATER])
def test_soap_jacobian_and_backward_equal_finite_differences(path, small_soap):
    atoms = read(path)[0].to_atoms()
    pr, idx, (p, coeffs, J) = _raw(small_soap, atoms, jacobian=True)
    rng = np.random.default_rng(1)
    for q in rng.choice(len(pr.i), 4, replace=False):
        for c in range(3):
            h = 1e-5
            vp, vm = pr.vectors.copy(), pr.vectors.copy()
            vp[q, c] += h
            vm[q, c] -= h
            fd = (_raw(small_soap, atoms, vectors=vp)[2][0] - _raw(small_soap, atoms, vectors=vm)[2][0]) / (2 * h)
            i = pr.i[q]
            assert np.abs(fd[i] - J[q, c]).max() <= 1e-7 * max(1.0, np.abs(J[q, c]).max())
            others = np.delete(fd, i, axis=0)
            assert np.abs(others).max() < 1e-9  # a pair vector moves only its centre's environment
    g = rng.normal(size=p.shape)
    back = small_soap.backward(g, coeffs, pr.i, idx[pr.j], idx, pr.vectors)
    np.testing.assert_allclose(back, np.einsum("pcd,pd->pc", J, g[pr.i]), atol=1e-10 * np.abs(back).max())


def test_soap_is_invariant_to_rotation_translation_and_permutation(si, small_soap):
    atoms = si[13].to_atoms()
    ref = small_soap.compute(atoms)
    rot = atoms.copy()
    R = Rotation.random(random_state=3).as_matrix()
    rot.positions = atoms.positions @ R.T
    rot.cell = atoms.cell.array @ R.T
    np.testing.assert_allclose(small_soap.compute(rot), ref, atol=1e-12)
    moved = atoms.copy()
    moved.positions += np.array([0.3, -1.2, 2.5])
    np.testing.assert_allclose(small_soap.compute(moved), ref, atol=1e-12)
    perm = np.random.default_rng(4).permutation(len(atoms))
    np.testing.assert_allclose(small_soap.compute(atoms[perm]), ref[perm], atol=1e-12)


def test_soap_dot_products_equal_the_full_tensor_ones(small_soap):
    """The stored entries (a <= b, n <= n' on the diagonal, with sqrt 2) keep dot products."""
    atoms = read(WATER)[0].to_atoms()
    pr, idx, (p, coeffs, _) = _raw(small_soap, atoms)
    S, N, L = 3, small_soap.n_max, small_soap.l_max
    c = coeffs.reshape(len(atoms), S, N, (L + 1) ** 2)
    full = np.stack([np.einsum("xnm,ykm->xnykm", ci, ci) for ci in c])  # (N, S, n, S, n', lm)
    full = np.stack([np.stack([full[..., l * l:(l + 1) ** 2].sum(-1) / np.sqrt(2 * l + 1) for l in range(L + 1)], -1)
                     for _ in [0]])[0].reshape(len(atoms), -1)
    np.testing.assert_allclose(p @ p.T, full @ full.T, rtol=1e-10, atol=1e-12)


def test_soap_refuses_unknown_elements(small_soap):
    atoms = bulk("Cu", "fcc", a=3.6)
    with pytest.raises(InputError, match="29"):
        small_soap.compute(atoms)


# ----------------------------------------------------------------------------- fit
@pytest.fixture(scope="module")
def fitted(si):
    model, rec = train(si[list(range(12))], cutoff=4.5, n_max=5, l_max=4, n_sparse=120, two_body=True,
                       sigma_energy=0.001, sigma_force=0.05, sigma_virial=0.05, seed=0)
    return model, rec


def test_design_rows_reproduce_the_model(fitted, si):
    model, _ = fitted
    x = model.parameters_vector()
    for k in (13, 14):
        g = graph_from_structure(si[k].to_atoms(), model.cutoff)
        out = model.compute(g, forces=True, stress=True)
        d = model.design(g)
        # E = d·x adds terms of ~4e7 eV in magnitude that cancel to ~350 eV, so float64 rounding
        # is a few eps times the terms' magnitude, not the energy's: frame 13 differs by 2.1e-8 eV
        # (2 eps · Σ|d x|), where a fixed 1e-8 eV failed
        terms = float(np.abs(d["energy"][0]) @ np.abs(x))
        assert float(out.energy[0]) == pytest.approx(float(d["energy"][0] @ x), rel=0,
                                                     abs=16 * np.finfo(float).eps * terms)
        np.testing.assert_allclose(out.forces.numpy(), d["forces"] @ x, atol=1e-8)
        np.testing.assert_allclose(out.virial.numpy()[0], d["virial"][0] @ x, atol=1e-7)


def test_fit_reproduces_training_energies_within_sigma(fitted, si):
    """Energies are fitted with sigma_E = 1 meV/atom (sqrt(N) meV per frame): the residuals of
    the training frames are of that size, not of the model's test error (~10 meV/atom)."""
    model, _ = fitted
    calc = MLFFCalculator(model)
    errs = []
    for fr in si[list(range(12))]:
        a = fr.to_atoms()
        a.calc = calc
        errs.append(abs(a.get_potential_energy() - fr.energy) / len(fr))
    assert np.mean(errs) <= 0.001
    assert max(errs) <= 0.003


def test_stress_labels_enter_the_fit(si):
    """The virial rows are used: a fit with a tiny virial sigma reproduces the training stresses
    far better than one that effectively ignores them."""
    frames = si[[13, 14, 15, 9, 10]]
    common = dict(cutoff=4.0, n_max=4, l_max=3, n_sparse=60, seed=0, no_variance=True)
    errs = {}
    for name, sv in (("tight", 1e-4), ("loose", 1e3)):
        model, _ = train(frames, sigma_virial=sv, **common)
        calc = MLFFCalculator(model)
        e = []
        for fr in frames:
            a = fr.to_atoms()
            a.calc = calc
            e.append(np.abs(a.get_stress() - fr.stress).max())
        errs[name] = max(e)
    assert errs["tight"] < 0.2 * errs["loose"]


def test_variance_is_small_at_the_data_and_grows_away(si):
    frames = si[[0, 4, 9, 13]]
    model, _ = train(frames, cutoff=4.0, n_max=4, l_max=3, n_sparse=400, sigma_energy=1e-5, sigma_force=1e-4,
                     sigma_virial=1e-4, seed=0)
    calc = MLFFCalculator(model, uncertainty=True)
    cal = model.calibration  # the raw posterior standard deviations are the results over these
    sig_e, sig_f = [], []
    for amplitude in (0.0, 0.05, 0.15, 0.3):
        far = frames[0].to_atoms()
        if amplitude:
            far.rattle(amplitude, seed=2)
        far.calc = calc
        far.get_potential_energy()
        sig_e.append(calc.results["energy_uncertainty"] / cal["energy"] / len(far))
        sig_f.append(calc.results["forces_uncertainty"].mean() / cal["forces"])
    assert sig_e[0] < 1e-5 and sig_f[0] < 5e-4  # at a training frame: about the sigmas fitted with
    assert np.all(np.diff(sig_e) > 0) and np.all(np.diff(sig_f) > 0)
    assert sig_e[-1] > 10 * sig_e[0] and sig_f[-1] > 3 * sig_f[0]
    stress_u = calc.get_property("stress_uncertainty", far)
    assert stress_u.shape == (6,) and np.all(stress_u > 0)
    # the DTC variance adds the prior the sparse points do not span: larger, never smaller
    g = graph_from_structure(far, model.cutoff)
    plain = model.predictive_variance(g, stress=True)
    dtc = model.predictive_variance(g, stress=True, include_residual=True)
    for k in plain:
        assert np.all(dtc[k] >= plain[k] - 1e-12)


def test_save_load_keeps_predictions_and_variance(fitted, si, tmp_path):
    model, rec = fitted
    path = tmp_path / "si.mlff"
    save_model(model, path, training=rec)
    loaded = load_model(path)
    a = si[14].to_atoms()
    res = []
    for m in (model, loaded):
        calc = MLFFCalculator(m, uncertainty=True)
        a.calc = calc
        res.append((a.get_potential_energy(), a.get_forces(), calc.results["forces_uncertainty"]))
    assert res[0][0] == res[1][0]
    np.testing.assert_array_equal(res[0][1], res[1][1])
    np.testing.assert_array_equal(res[0][2], res[1][2])


def test_model_without_variance_refuses_uncertainty(si):
    model, _ = train(si[[13, 14]], cutoff=4.0, n_max=3, l_max=2, n_sparse=20, no_variance=True)
    with pytest.raises(InputError, match="variance"):
        model.compute(graph_from_structure(si[13].to_atoms(), model.cutoff), extras=True)


# ----------------------------------------------------------------------------- fast variance, calibration
#: agreement of one variance computed twice with different roundings on the fixtures' fits (cond(R)
#: up to 5e9): the calculator takes the kernel values of its energy pass (torch) where a direct
#: call computes them with numpy, and the samples' coefficients cancel; 3.8e-12 seen
ROUNDING = 1e-9

def _conditioned_fit(frames, **kw):
    """A small fit whose factor R is well conditioned (cond ~1e7 with jitter 1e-4; the fixture's
    is 5e9): two computations of |R^-T phi|^2 that round differently then agree to ~1e-12
    relative, where cond(R) eps bounds what any two can share."""
    opts = dict(cutoff=4.0, n_max=4, l_max=3, n_sparse=40, jitter=1e-4, two_body=True, seed=0)
    opts.update(kw)
    return train(frames, **opts)


@pytest.mark.parametrize("path,channels", [(SI, 1), (SI, 11), (WATER, 3)])
def test_soap_backward_channels_equal_the_single_backward(path, channels, small_soap):
    """The multi-channel backward pass (GAP's posterior samples) is the single one, channel by
    channel, bit for bit (same operations in the same order, whatever the vector width)."""
    atoms = read(path)[0].to_atoms()
    pr, idx, (p, coeffs, _) = _raw(small_soap, atoms)
    grad = np.random.default_rng(5).normal(size=p.shape + (channels,))
    many = small_soap.backward_channels(grad, coeffs, pr.i, idx[pr.j], idx, pr.vectors)
    assert many.shape == (len(pr.i), 3, channels)
    for r in range(channels):
        one = small_soap.backward(np.ascontiguousarray(grad[:, :, r]), coeffs, pr.i, idx[pr.j], idx, pr.vectors)
        np.testing.assert_array_equal(many[:, :, r], one)


def test_sampled_variance_with_every_direction_is_the_exact_variance(si):
    """The fast path (one SOAP backward for all samples, no design rows) with the T columns of
    R^-1 as its 'samples' sums the exact posterior variance: the design-row reference
    (predictive_variance) to 1e-10 relative, for energies, force and virial components of a
    batch of two structures, and for two elements (water)."""
    import scipy.linalg

    from ase_mlff.graph import batch_graphs

    water = read(WATER)
    cases = [(_conditioned_fit(si[[0, 4, 9]])[0], [si[13], si[2]]),
             (_conditioned_fit(water[[0, 1]], cutoff=3.5, n_max=3, l_max=2, n_sparse=25)[0], [water[2]])]
    for model, frames in cases:
        inverse = scipy.linalg.solve_triangular(model.posterior_r.numpy(), np.eye(model.n_parameters))
        graphs = []
        for k, fr in enumerate(frames):
            a = fr.to_atoms()
            a.rattle(0.05, seed=k)  # no atom on a symmetry site, where both give rounding noise only
            graphs.append(graph_from_structure(a, model.cutoff))
        g = batch_graphs(graphs)
        ref = model.predictive_variance(g, stress=True)
        fast = model.sampled_variance(g, stress=True, samples=inverse)
        for key in ("energy", "forces", "virial"):
            assert fast[key].shape == ref[key].shape
            np.testing.assert_allclose(fast[key], ref[key], rtol=0, atol=1e-10 * np.abs(ref[key]).max(),
                                       err_msg=key)


def test_posterior_samples_average_to_the_exact_variance(si):
    """The default estimate is the mean square over samples b_k = R^-1 w_k, w_k ~ N(0, I/R):
    with many samples it converges to the exact variance (relative noise sqrt(2 / (3 R)) per
    atom: 2.6 % for R = 1000), and each model file keeps the fit's own R samples."""
    from ase_mlff.models.gap import draw_posterior_samples

    model, _ = _conditioned_fit(si[[0, 4, 9]])
    assert model.samples().shape == (model.n_parameters, 8)
    a = si[13].to_atoms()
    a.rattle(0.05, seed=3)
    g = graph_from_structure(a, model.cutoff)
    exact = model.predictive_variance(g, stress=True)
    many = model.sampled_variance(g, stress=True,
                                  samples=draw_posterior_samples(model.posterior_r.numpy(), 1000, seed=7))
    assert many["energy"][0] == pytest.approx(exact["energy"][0], rel=1e-10)  # energies are exact
    f_many, f_exact = many["forces"].sum(1), exact["forces"].sum(1)
    assert f_many.sum() == pytest.approx(f_exact.sum(), rel=0.03)
    assert np.sqrt(np.mean((f_many / f_exact - 1) ** 2)) < 0.08
    assert many["virial"].sum() == pytest.approx(exact["virial"].sum(), rel=0.1)


def test_leave_one_frame_out_equals_refitting_without_each_frame(si):
    """The calibration's held-out errors and variances, computed from the full fit's QR factor,
    equal those of five refits that each leave one frame out (same sparse points and prior):
    the Sherman-Morrison-Woodbury identities of sparse_gp.leave_one_frame_out."""
    import scipy.linalg

    from ase_mlff.training import sparse_gp
    from ase_mlff.training.gap_train import gap_prior

    frames = si[[0, 4, 9, 10, 13]]
    # jitter 1e-2: cond(R) 9e5. The refits round differently from the identities, by an amount
    # that grows with cond(R) and with 1 / (1 - H_f) (a frame whose own labels pin its
    # prediction): here they agree to 1.2e-7 on the energies (5e-6 with jitter 1e-4, cond 1e7)
    model, _ = _conditioned_fit(frames, jitter=1e-2)
    T, sigmas = model.n_parameters, (0.002, 0.1, 0.1)
    prior = gap_prior(model, 1e-2, 100.0)
    graphs = [graph_from_structure(f.to_atoms(), model.cutoff) for f in frames]

    def design_of(idx):
        def design(k):
            d = model.design(graphs[idx[k]], virial=sparse_gp.has_virial(frames[idx[k]]))
            return {"energy": d["energy"][0], "forces": d["forces"], "virial": d["virial"][0]}
        return design

    every = list(range(len(frames)))
    cv = sparse_gp.solve(frames, design_of(every), T, prior, sigmas, log=lambda m: None,
                         cross_validate=True)[2]["cross_validation"]
    sums = {k: np.zeros(2) for k in ("energy", "forces", "stress")}
    for out in every:
        keep = [k for k in every if k != out]
        x, R, _ = sparse_gp.solve([frames[k] for k in keep], design_of(keep), T, prior, sigmas, log=lambda m: None)
        fr, d = frames[out], model.design(graphs[out])

        def var(rows):
            z = scipy.linalg.solve_triangular(R.numpy(), rows.reshape(-1, T).T, trans="T")
            return (z * z).sum(0)

        sums["energy"] += [(d["energy"][0] @ x - fr.energy) ** 2, var(d["energy"][0]).sum()]
        sums["forces"] += [((d["forces"] @ x - fr.forces) ** 2).sum(), var(d["forces"]).sum()]
        volume = abs(np.linalg.det(fr.cell))
        for k, (a, b) in enumerate(sparse_gp.VOIGT):
            err = d["virial"][0, a, b] @ x / volume - fr.stress[k]
            sums["stress"] += [err ** 2, var(d["virial"][0, a, b]).sum() / volume ** 2]
    assert cv["n_frames"] == 5 and cv["skipped"] == 0
    assert (cv["energy"]["n"], cv["forces"]["n"], cv["stress"]["n"]) == (5, sum(len(f) for f in frames), 30)
    for key, (err2, variance) in sums.items():
        assert cv[key]["sum_error2"] == pytest.approx(err2, rel=1e-5), key
        assert cv[key]["sum_variance"] == pytest.approx(variance, rel=1e-5), key


def test_calibration_is_fitted_stored_loaded_and_applied(si, tmp_path):
    """A fit stores one factor per observable (leave-one-frame-out), the file keeps them, and
    every reported uncertainty is factor x sqrt(variance); on 4 frames the fit never saw, the
    calibrated uncertainty is the size of the errors, where the raw one is 10-20 times smaller."""
    model, rec = train(si, cutoff=4.5, n_max=5, l_max=4, n_sparse=120, two_body=True, sigma_energy=0.001,
                       sigma_force=0.05, sigma_virial=0.05, seed=0, n_test=4)
    cal = model.calibration
    assert set(cal) == {"energy", "forces", "stress"} and all(v > 3 for v in cal.values())
    assert rec["calibration"]["factors"] == cal and rec["calibration"]["n_frames"] == 12
    check = rec["calibration"]["test_check"]
    assert set(check) == {"energy", "forces", "stress"}
    for key, c in check.items():
        assert 0.5 < c["ratio"] < 2.0, (key, c)  # measured 1.04, 1.02, 0.98
    path = tmp_path / "si.mlff"
    save_model(model, path, training=rec)
    loaded = load_model(path)
    assert loaded.calibration == cal and loaded.get_config()["calibration"] == cal
    np.testing.assert_array_equal(loaded.samples(), model.samples())
    a = si[14].to_atoms()
    a.rattle(0.02, seed=1)
    calc = MLFFCalculator(loaded, uncertainty=True)
    a.calc = calc
    a.get_stress()
    g = graph_from_structure(a, loaded.cutoff)
    var = loaded.sampled_variance(g, stress=True)
    assert calc.results["energy_uncertainty"] == pytest.approx(cal["energy"] * np.sqrt(var["energy"][0]),
                                                               rel=ROUNDING)
    np.testing.assert_allclose(calc.results["forces_uncertainty"], cal["forces"] * np.sqrt(var["forces"].sum(1)),
                               rtol=ROUNDING)
    full = calc.results["stress_uncertainty"]  # Voigt eV/Å^3: the virial's over the volume
    np.testing.assert_allclose(full[:3], cal["stress"] * np.sqrt(np.diagonal(var["virial"][0])) / a.get_volume(),
                               rtol=ROUNDING)
    # the exact (slow) variance is calibrated the same way
    loaded.variance_method = "exact"
    a.calc = calc
    calc.reset()
    a.get_forces()
    exact = loaded.predictive_variance(g)
    np.testing.assert_allclose(calc.results["forces_uncertainty"],
                               cal["forces"] * np.sqrt(exact["forces"].sum(1)), rtol=ROUNDING)


def _rewrite(src, dst, edit):
    """Copy model file ``src`` to ``dst`` with ``edit(meta, arrays)`` applied."""
    from ase_mlff.io import read_archive, write_archive

    meta, arrays = read_archive(src)
    edit(meta, arrays)
    write_archive(dst, meta, arrays)
    return dst


def _hyper(key, value):
    def edit(meta, arrays):
        meta["hyperparameters"][key] = value
    return edit


def _factor(name, value):
    def edit(meta, arrays):
        meta["hyperparameters"]["calibration"][name] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (_factor("forces", -1.0), r"calibration.forces must be a finite number >= 1e-06"),
    (_factor("energy", 0.0), r"calibration.energy must be a finite number >= 1e-06"),
    (_factor("stress", 1e300), r"calibration.stress must be a finite number .* <= 1e\+06"),
    (_factor("forces", float("nan")), r"calibration.forces must be a finite number"),
    (_factor("forces", "7"), r"calibration.forces must be a finite number"),
    (_hyper("calibration", {"forces": 2.0}), r"calibration must be an object with the keys energy, forces, stress"),
    (_hyper("calibration", [1, 2, 3]), r"calibration must be an object"),
    (_hyper("variance_samples", 0), r"variance_samples must be an integer from 1 to 64"),
    (_hyper("variance_samples", 10 ** 9), r"variance_samples must be an integer from 1 to 64"),
    (_hyper("variance_samples", True), r"variance_samples must be an integer"),
    (_hyper("variance_samples", 9), r"arrays.posterior_samples' declares float64 \[\d+, 8\], but the "
                                    r"hyperparameters imply float64 \[\d+, 9\]"),
    (_hyper("variance", False), r"variance_samples and .calibration belong to a model with variance true"),
], ids=["negative", "zero", "huge", "nan", "string", "missing-keys", "not-object", "no-samples", "1e9-samples",
        "bool-samples", "samples-vs-array", "without-variance"])
def test_crafted_calibration_or_samples_are_refused_on_load(fitted, tmp_path, edit, match):
    from ase_mlff.errors import ModelFileError

    model, rec = fitted
    good = save_model(model, tmp_path / "good.mlff", training=rec)
    bad = _rewrite(good, tmp_path / "bad.mlff", edit)
    with pytest.raises(ModelFileError, match=match):
        load_model(bad)


def test_a_file_from_before_calibration_loads_uncalibrated_and_says_so(fitted, si, tmp_path, capsys):
    """A file without calibration factors or stored samples (written before them) still loads:
    its uncertainties are the raw ones (samples drawn from its R with seed 0), one warning says
    so and points at the caller, `ase-mlff info` says so, and saving it again keeps it as it was."""
    from ase_mlff.cli import main
    from ase_mlff.models.gap import LEGACY_SAMPLE_SEED, draw_posterior_samples

    model, rec = fitted

    def strip(meta, arrays):
        for key in ("calibration", "variance_samples"):
            del meta["hyperparameters"][key]
        del arrays["posterior_samples"]

    new = save_model(model, tmp_path / "new.mlff", training=rec)
    old_path = _rewrite(new, tmp_path / "old.mlff", strip)
    old = load_model(old_path)
    assert old.calibration is None and "calibration" not in old.get_config()
    a = si[14].to_atoms()
    a.rattle(0.02, seed=1)  # off the crystal's symmetry, where forces and their variance vanish
    calc = MLFFCalculator(old, uncertainty=True)
    a.calc = calc
    with pytest.warns(UserWarning, match="before ase-mlff calibrated the GP variance") as caught:
        a.get_forces()
        calc.reset()
        a.get_forces()
    assert len(caught) == 1 and caught[0].filename == __file__
    np.testing.assert_array_equal(old.samples(), draw_posterior_samples(old.posterior_r.numpy(), 8, LEGACY_SAMPLE_SEED))
    g = graph_from_structure(a, old.cutoff)
    np.testing.assert_allclose(calc.results["forces_uncertainty"], np.sqrt(old.sampled_variance(g)["forces"].sum(1)),
                               rtol=ROUNDING)
    again = load_model(save_model(old, tmp_path / "again.mlff"))
    assert "posterior_samples" not in again.get_arrays() and again.calibration is None
    assert main(["info", str(old_path)]) == 0
    assert "not calibrated" in capsys.readouterr().out
    assert main(["info", str(new)]) == 0
    text = capsys.readouterr().out
    assert "uncertainty calibration" in text and f"forces {model.calibration['forces']:.3g}" in text


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("method", ["cur", "fps", "random"])
def test_sparse_selection_is_distinct_and_deduplicated(method):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    X = np.concatenate([X, X[:10]])  # ten duplicated environments
    X /= np.linalg.norm(X, axis=1)[:, None]
    pick = select_sparse(X, 30, method, np.random.default_rng(1), zeta=2)
    assert len(pick) == 30 and len(set(pick.tolist())) == 30
    assert len(np.unique(np.round(X[pick], 10), axis=0)) == 30
    assert len(select_sparse(X, 100, method, np.random.default_rng(1))) == 50  # all distinct ones


def test_singular_prior_is_a_training_error():
    K = np.ones((3, 3))
    with pytest.raises(TrainingError, match="positive definite"):
        cholesky_upper(K, "sparse environments")


def test_config_type_sigmas_parse_and_refuse_nonsense():
    assert parse_config_type_sigmas("Surface=0.005,0.2,0.2; Vacancy=0.003,0.1,0.1") == {
        "Surface": (0.005, 0.2, 0.2), "Vacancy": (0.003, 0.1, 0.1)}
    assert parse_config_type_sigmas({"AIMD": [0.01, 0.1, 0.1]}) == {"AIMD": (0.01, 0.1, 0.1)}
    from ase_mlff.training.common import UsageError

    with pytest.raises(UsageError):
        parse_config_type_sigmas("Surface=0.1,0.2")
    with pytest.raises(UsageError):
        parse_config_type_sigmas("Surface=0,0.2,0.2")


def test_train_gap_command_with_yaml_config(tmp_path, capsys):
    from ase_mlff.cli import main

    cfg = tmp_path / "gap.yaml"
    cfg.write_text(f"data: {SI}\ncutoff: 4.0\nn-max: 3\nl-max: 2\nn_sparse: 30\nn_test: 3\ntwo_body: true\n"
                   "sigma_config_type:\n  Surface: [0.004, 0.2, 0.2]\n")
    out = tmp_path / "m.mlff"
    assert main(["train", "gap", "--config", str(cfg), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GAP model written" in text and "test (3 frames)" in text
    assert load_model(out).family == "gap"
    assert main(["train", "gap", "--config", str(cfg), "-o", str(out)]) == 2  # exists: not replaced


def test_train_gap_does_not_offer_committee_options(capsys):
    """GAP's recipe provides no committee hook (a GAP has its own GP variance), so ``train gap``
    offers none of the committee options and ``--committee`` is a usage error naming it; the
    families with a hook still offer them."""
    from ase_mlff.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "gap", "--help"])
    assert "--committee" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["train", "gap", SI, "-o", "x.mlff", "--committee", "2"])
    assert exc.value.code == 2 and "--committee" in capsys.readouterr().err
    for family in ("sgdml", "mff", "bpnn", "schnet"):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", family, "--help"])
        assert "--committee K" in capsys.readouterr().out, family


class _CountingCore:
    """A GapCore that counts its calls (a pybind object's methods cannot be patched)."""

    def __init__(self, core, calls):
        self.core, self.calls = core, calls

    def compute(self, *args, **kwargs):
        self.calls.append("core")
        return self.core.compute(*args, **kwargs)


@pytest.mark.parametrize("path", ["core", "torch"])
def test_a_call_with_uncertainty_computes_the_soap_once_and_keeps_nothing(monkeypatch, path):
    """The variance reuses the energy pass's SOAP of the same call (one SOAP pass: the compiled
    serving core's or soap.raw of the torch path), and neither that call nor a later plain one
    leaves arrays behind on the model."""
    from ase.build import bulk

    from ase_mlff.io import load_model

    model = load_model(os.path.join(os.path.dirname(__file__), "..", "potentials", "si_gap.mlff"))
    if path == "torch":
        monkeypatch.setattr(model, "analytic_devices", ())
    calls = []
    raw, core = model.soap.raw, model.core_parameters
    monkeypatch.setattr(model.soap, "raw", lambda *a, **k: calls.append("raw") or raw(*a, **k))
    monkeypatch.setattr(model, "core_parameters", lambda: _CountingCore(core(), calls))
    atoms = bulk("Si", "diamond", a=5.47, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = MLFFCalculator(model, uncertainty=True)
    atoms.get_forces()
    assert calls == [{"core": "core", "torch": "raw"}[path]]
    assert model.soap.last is None and not model.soap.keep_last
    plain = atoms.copy()
    plain.calc = MLFFCalculator(model)
    plain.get_forces()
    assert len(calls) == 2 and model.soap.last is None


def test_a_cutoff_other_than_the_terms_reach_is_refused_when_built():
    """The loader refuses a GAP file whose cutoff differs from the reach of its SOAP and 2-body
    terms; the constructor refuses it too, instead of building a model that saves but never loads."""
    from ase_mlff.models.gap import GAPModel

    soap = dict(cutoff=4.0, n_max=2, l_max=1)
    assert GAPModel([14], soap=soap).cutoff == 4.0
    assert GAPModel([14], cutoff=4.0, soap=soap).cutoff == 4.0
    with pytest.raises(ValueError, match="does not match the reach"):
        GAPModel([14], cutoff=6.0, soap=soap)
