"""Committees (ase_mlff.models.committee, ase_mlff.training.committee): file round trip and
strict loading of nested members, the served mean and the uncertainty formulas, calibration,
ASE results, finite differences, stress uncertainty of a local family, md --max-uncertainty."""

import os

import numpy as np
import pytest
import torch
from ase.build import bulk
from fd import numerical_forces

from ase_mlff import data
from ase_mlff.calculator import MLFFCalculator
from ase_mlff.errors import InputError, ModelFileError
from ase_mlff.graph import graph_from_structure
from ase_mlff.io import load_model, read_archive, save_model, write_archive
from ase_mlff.models.committee import CommitteeModel
from ase_mlff.models.mff import MFFModel
from ase_mlff.training.committee import committee_errors, fit_calibration, train_committee

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def ethanol():
    return data.read(os.path.join(DATA, "rmd17_ethanol_300.npz"), energy_unit="kcal/mol")


@pytest.fixture(scope="module")
def sgdml_committee(ethanol):
    """3 sGDML members of 12 frames and a served mean on the 50-frame pool; calibrated on 20
    held-out frames (the trainer's own path)."""
    import warnings

    with warnings.catch_warnings():
        # 12-frame members integrate the energy poorly; the label check says so, which is expected here
        warnings.filterwarnings("ignore", message="energy and force units look inconsistent")
        model, report = train_committee("sgdml", ethanol[:70], 3, n_member=12, mean="all", seed=1, n_valid=20,
                                        sigmas=[10.0])
    return model, report


def _ethanol_atoms(ds, k):
    return ds[k].to_atoms()


def _random_mff(rng, base=None, scale=1.0):
    """A small 2+3-body MFF model with random smooth spline coefficients (for members: a shared
    base plus a small random perturbation, so they agree roughly, as trained members do)."""
    m = MFFModel([28], rc2=4.0, n2=16, rc3=3.2, n3=5)
    if base is None:
        r = np.linspace(0, 4.0, m.coef2.shape[-1])
        c2 = (0.3 * (np.exp(-2 * (r - 2.4)) - 2 * np.exp(-(r - 2.4))) * (r < 3.9))[None, None]
        c3 = 0.01 * rng.standard_normal(m.coef3.shape)
    else:
        c2 = base.coef2.numpy() + scale * 0.01 * rng.standard_normal(m.coef2.shape)
        c3 = base.coef3.numpy() + scale * 0.002 * rng.standard_normal(m.coef3.shape)
    return m.set_splines(c2, c3, e0=[-1.0])


@pytest.fixture(scope="module")
def mff_committee():
    rng = np.random.default_rng(7)
    base = _random_mff(rng)
    members = [_random_mff(rng, base) for _ in range(4)]
    return CommitteeModel(members, None, {"energy": 1.5, "forces": 0.7, "stress": 2.0})


def _nickel():
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    return atoms


# --------------------------------------------------------------------------- file
def test_round_trip_is_bit_identical(tmp_path, sgdml_committee, ethanol, mff_committee):
    model, _ = sgdml_committee
    path = save_model(model, tmp_path / "c.mlff", training={"note": "test"})
    loaded = load_model(path)
    assert isinstance(loaded, CommitteeModel) and loaded.n_members == 3 and loaded.mean_model is not None
    assert loaded.calibration == model.calibration
    atoms = _ethanol_atoms(ethanol, 250)
    for a, b in ((model, loaded), (mff_committee, None)):
        if b is None:
            save_model(a, tmp_path / "m.mlff")
            b = load_model(tmp_path / "m.mlff")
            atoms = _nickel()
        r = []
        for m in (a, b):
            calc = MLFFCalculator(m, uncertainty=True)
            calc.calculate(atoms.copy(), ["energy", "forces"] + (["stress"] if m.supports_stress else []))
            r.append(calc.results)
        assert r[0].keys() == r[1].keys()
        for k in r[0]:
            np.testing.assert_array_equal(r[0][k], r[1][k], err_msg=k)


def _crafted(tmp_path, model, edit):
    """Save ``model``, let ``edit(meta, arrays)`` change it, write it back (valid checksums)."""
    path = save_model(model, tmp_path / "ok.mlff")
    meta, arrays = read_archive(path)
    arrays = dict(arrays)
    edit(meta, arrays)
    meta.pop("arrays")
    bad = tmp_path / "bad.mlff"
    write_archive(bad, meta, arrays)
    return bad


def test_loader_refuses_a_member_of_the_wrong_shape(tmp_path, sgdml_committee):
    model, _ = sgdml_committee

    def shrink(meta, arrays):  # member 1 holds one training point fewer than its n_train says
        arrays["m1.desc_train"] = arrays["m1.desc_train"][:-1]
        arrays["m1.v_train"] = arrays["m1.v_train"][:-1]

    with pytest.raises(ModelFileError, match=r"arrays.m1.desc_train.*imply"):
        load_model(_crafted(tmp_path, model, shrink))


def test_loader_refuses_bad_nested_hyperparameters(tmp_path, sgdml_committee):
    model, _ = sgdml_committee

    def huge(meta, arrays):
        meta["hyperparameters"]["members"][2]["n_train"] = 10**12

    with pytest.raises(ModelFileError, match=r"members\[2\]\.n_train"):
        load_model(_crafted(tmp_path, model, huge))

    def family(meta, arrays):
        meta["hyperparameters"]["member_family"] = "committee"

    with pytest.raises(ModelFileError, match="member_family"):
        load_model(_crafted(tmp_path, model, family))

    def calibration(meta, arrays):
        meta["hyperparameters"]["calibration"]["forces"] = -1.0

    with pytest.raises(ModelFileError, match="calibration.forces"):
        load_model(_crafted(tmp_path, model, calibration))


def test_loader_refuses_members_with_another_atom_order(tmp_path, sgdml_committee):
    model, _ = sgdml_committee

    def swap(meta, arrays):
        z = arrays["m2.z"].copy()
        i, j = np.flatnonzero(z == 6)[0], np.flatnonzero(z == 8)[0]
        z[[i, j]] = z[[j, i]]
        arrays["m2.z"] = z
        arrays["m2.perms"] = arrays["m2.perms"][:1]  # the identity alone is valid for any order
        meta["hyperparameters"]["members"][2]["n_perms"] = 1

    with pytest.raises(ModelFileError, match="atom order"):
        load_model(_crafted(tmp_path, model, swap))


# --------------------------------------------------------------------------- formulas
def _graph(model, atoms):
    return graph_from_structure(atoms, model.cutoff)


def test_served_mean_and_uncertainties_follow_the_member_formulas(sgdml_committee, ethanol):
    model, _ = sgdml_committee
    atoms = _ethanol_atoms(ethanol, 280)
    g = _graph(model, atoms)
    out = model.compute(g, extras=True)
    mean = model.mean_model.compute(g)
    assert torch.equal(out.energy, mean.energy) and torch.equal(out.forces, mean.forces)
    E = np.array([float(m.compute(g).energy[0]) for m in model.members])
    F = np.stack([m.compute(g).forces.numpy() for m in model.members])
    c = model.calibration
    np.testing.assert_allclose(out.extras["energy_uncertainty"].numpy(), [c["energy"] * E.std(ddof=1)], rtol=1e-12)
    sigma_f = np.sqrt(((F - F.mean(0)) ** 2).sum(axis=(0, 2)) / (len(F) - 1))
    np.testing.assert_allclose(out.extras["forces_uncertainty"].numpy(), c["forces"] * sigma_f, rtol=1e-12)

    # without a served mean: the member average
    avg = CommitteeModel(list(model.members), None, model.calibration)
    out2 = avg.compute(g, extras=True)
    np.testing.assert_allclose(out2.energy.numpy(), [E.mean()], rtol=1e-14)
    np.testing.assert_allclose(out2.forces.numpy(), F.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out2.extras["forces_uncertainty"].numpy(), c["forces"] * sigma_f, rtol=1e-12)


def test_calibration_factors_scale_the_reported_uncertainties(mff_committee):
    atoms = _nickel()
    g = _graph(mff_committee, atoms)
    raw = mff_committee.spread(mff_committee.member_predictions(g, stress=True), stress=True, calibrated=False)
    out = mff_committee.compute(g, stress=True, extras=True)
    for key, factor in (("energy_uncertainty", 1.5), ("forces_uncertainty", 0.7), ("stress_uncertainty", 2.0)):
        assert float(raw[key].abs().max()) > 0
        np.testing.assert_allclose(out.extras[key].numpy(), factor * raw[key].numpy(), rtol=1e-13)


def test_fitted_calibration_matches_variance_to_squared_error(sgdml_committee, ethanol):
    model, report = sgdml_committee
    frames = ethanol[np.array(report["calibration"]["indices"])]
    e = committee_errors(model, frames, calibrated=True)
    # the defining property of the factors on their own frames
    assert np.mean(e["dF2"]) == pytest.approx(np.mean(e["sigma_F"] ** 2), rel=1e-9)
    assert np.mean(e["dE"] ** 2) == pytest.approx(np.mean(e["sigma_E"] ** 2), rel=1e-9)
    factors, _ = fit_calibration(model, frames)
    assert factors["forces"] == pytest.approx(model.calibration["forces"], rel=1e-12)
    # members trained on 12 frames spread more than the 50-frame served mean errs
    assert factors["forces"] < 1


def test_calibration_frames_are_held_out(sgdml_committee):
    _, report = sgdml_committee
    held = set(report["calibration"]["indices"])
    assert len(held) == 20
    for member in report["members"]:
        assert not held & set(member["train_indices"])
    assert not held & set(range(70)) - set(report["valid_indices"])


# --------------------------------------------------------------------------- through ASE
def test_calculator_returns_the_uncertainty_results(sgdml_committee, ethanol):
    model, _ = sgdml_committee
    atoms = _ethanol_atoms(ethanol, 270)
    atoms.calc = MLFFCalculator(model, uncertainty=True)
    f = atoms.get_forces()
    res = atoms.calc.results
    assert isinstance(res["energy_uncertainty"], float) and res["energy_uncertainty"] > 0
    assert res["forces_uncertainty"].shape == (len(atoms),) and np.all(res["forces_uncertainty"] > 0)
    assert "stress_uncertainty" not in res  # a global model: no stress
    # the served forces are the served mean's, whatever the uncertainty switch
    plain = MLFFCalculator(model)
    np.testing.assert_array_equal(plain.get_forces(atoms), f)
    assert "forces_uncertainty" not in plain.results
    # atoms given in another order: the per-atom uncertainty follows the caller's atoms
    perm = np.array([1, 0, 2, 8, 7, 6, 5, 4, 3])
    shuffled = atoms[perm]
    shuffled.calc = MLFFCalculator(model, uncertainty=True)
    shuffled.get_forces()
    np.testing.assert_allclose(shuffled.calc.results["forces_uncertainty"], res["forces_uncertainty"][perm],
                               rtol=1e-8)


def test_mean_forces_are_minus_the_gradient_of_the_served_energy(sgdml_committee, ethanol, mff_committee):
    model, _ = sgdml_committee
    atoms = _ethanol_atoms(ethanol, 260)
    atoms.calc = MLFFCalculator(model, uncertainty=True)
    np.testing.assert_allclose(atoms.get_forces(), numerical_forces(atoms, d=1e-4), atol=2e-5)
    ni = _nickel()
    ni.calc = MLFFCalculator(mff_committee, uncertainty=True)
    np.testing.assert_allclose(ni.get_forces(), numerical_forces(ni, d=1e-4), atol=2e-6)


def test_autograd_path_agrees_with_the_analytic_path(mff_committee):
    g = _graph(mff_committee, _nickel())
    fast = mff_committee.compute(g, stress=True, extras=True)
    slow = mff_committee.compute(g, stress=True, extras=True, create_graph=True)
    np.testing.assert_allclose(slow.forces.detach().numpy(), fast.forces.numpy(), atol=1e-11)
    np.testing.assert_allclose(slow.virial.detach().numpy(), fast.virial.numpy(), atol=1e-10)
    for k in fast.extras:
        np.testing.assert_allclose(slow.extras[k].numpy(), fast.extras[k].numpy(), atol=1e-11)


def test_local_committee_gives_stress_uncertainty(mff_committee):
    atoms = _nickel()
    calc = MLFFCalculator(mff_committee, uncertainty=True)
    atoms.calc = calc
    stress = atoms.get_stress()
    res = calc.results
    assert res["stress_uncertainty"].shape == (6,) and np.all(res["stress_uncertainty"] > 0)
    assert res["forces_uncertainty"].shape == (len(atoms),)
    # Voigt stress of the member virials' element-wise spread, divided by the volume
    g = _graph(mff_committee, atoms)
    outs = mff_committee.member_predictions(g, stress=True)
    W = np.stack([o.virial[0].numpy() for o in outs])
    sd = 2.0 * W.std(0, ddof=1) / atoms.get_volume()
    voigt = [sd[0, 0], sd[1, 1], sd[2, 2], sd[1, 2], sd[0, 2], sd[0, 1]]
    np.testing.assert_allclose(res["stress_uncertainty"], voigt, rtol=1e-10)
    mean_w = W.mean(0) / atoms.get_volume()
    np.testing.assert_allclose(stress, [mean_w[0, 0], mean_w[1, 1], mean_w[2, 2], mean_w[1, 2], mean_w[0, 2],
                                        mean_w[0, 1]], rtol=1e-10, atol=1e-14)
    assert mff_committee.periodic and mff_committee.cutoff == 4.0


def test_committee_refuses_mixed_members(mff_committee, sgdml_committee):
    model, _ = sgdml_committee
    with pytest.raises(ValueError, match="one family"):
        CommitteeModel([mff_committee.members[0], model.members[0]])
    with pytest.raises(ValueError, match="at least 2"):
        CommitteeModel([model.members[0]])


# --------------------------------------------------------------------------- md
def test_md_max_uncertainty_stops_the_run(tmp_path, mff_committee):
    from ase_mlff.workflows.md import run_md

    atoms = _nickel()
    calc = MLFFCalculator(mff_committee)
    g = _graph(mff_committee, atoms)
    first = float(mff_committee.compute(g, extras=True).extras["forces_uncertainty"].max())
    traj = tmp_path / "md.traj"
    res = run_md(atoms, calc, steps=20, temperature=300, seed=1, trajectory=traj, traj_interval=100,
                 max_uncertainty=0.5 * first)
    assert res.stop_reason and "above the limit" in res.stop_reason and res.steps == 0
    assert res.uncertainty_crossings == [0] and "STOPPED" in res.summary()
    assert calc.uncertainty is False  # switched on for the run only
    import ase.io

    assert len(ase.io.read(traj, ":")) == 1
    # a generous limit: the run completes and records the uncertainty of every step
    res = run_md(_nickel(), MLFFCalculator(mff_committee), steps=5, seed=1, max_uncertainty=100 * first)
    assert res.stop_reason is None and res.steps == 5 and len(res.max_forces_uncertainty) == 6
    with pytest.warns(UserWarning, match="extrapolating"):
        res = run_md(_nickel(), MLFFCalculator(mff_committee), steps=3, seed=1, max_uncertainty=0.5 * first,
                     on_uncertainty="warn")
    assert res.steps == 3 and res.uncertainty_crossings == [0]


def test_md_max_uncertainty_needs_a_model_with_uncertainty(mff_committee):
    from ase_mlff.workflows.md import run_md

    with pytest.raises(InputError, match="committee"):
        run_md(_nickel(), MLFFCalculator(mff_committee.members[0]), steps=2, max_uncertainty=0.1)


def test_md_command_exits_3_when_the_uncertainty_limit_stops_it(tmp_path, mff_committee, capsys):
    from ase_mlff.cli import main

    model = save_model(mff_committee, tmp_path / "c.mlff")
    member = save_model(mff_committee.members[0], tmp_path / "one.mlff")
    structure = tmp_path / "ni.extxyz"
    _nickel().write(structure)
    args = ["md", str(model), str(structure), "-n", "10", "--seed", "1", "--no-progress", "--max-uncertainty",
            "1e-6", "-o", str(tmp_path / "md.traj"), "--log", str(tmp_path / "md.log")]
    assert main(args) == 3
    assert "stopped at step 0" in capsys.readouterr().out
    args[1] = str(member)
    args[args.index("--log") + 1] = str(tmp_path / "other.log")
    assert main(args + ["--overwrite"]) == 1
    assert "gives none" in capsys.readouterr().err
    assert not (tmp_path / "other.log").exists()  # refused before anything was written


# --------------------------------------------------------------------------- command line
def test_train_command_with_committee(tmp_path, ethanol):
    from ase_mlff.cli import main

    small = tmp_path / "eth.extxyz"
    ethanol[:40].to_extxyz(small)
    out = tmp_path / "c.mlff"
    rc = main(["train", "sgdml", str(small), "--committee", "2", "--n-train", "8", "--n-valid", "10",
               "--sigmas", "10", "--committee-mean", "members", "-o", str(out)])
    assert rc == 0
    model = load_model(out)
    assert model.family == "committee" and model.n_members == 2 and model.mean_model is None
    assert model.meta["training"]["calibration"]["n_frames"] == 10
    assert main(["train", "sgdml", str(small), "--committee", "1", "-o", str(tmp_path / "x.mlff")]) == 2



def test_a_gap_committee_is_refused_naming_the_families_with_a_hook(ethanol):
    """GAP's recipe provides no committee hook (its GP gives a calibrated variance of its own):
    the trainer refuses it, naming the families that have one and why GAP has none."""
    with pytest.raises(ValueError) as exc:
        train_committee("gap", ethanol[:10], 2)
    text = str(exc.value)
    assert "committees can be trained for bpnn, mff, schnet, sgdml, not 'gap'" in text
    assert "own calibrated predictive variance" in text and "docs/gap.md" in text
    with pytest.raises(ValueError, match="not 'nosuchfamily'$"):
        train_committee("nosuchfamily", ethanol[:10], 2)


def test_train_bpnn_committee_takes_given_reference_energies(tmp_path, ethanol):
    """--reference-energies on a network committee's command line reaches every model once
    (it used to be passed twice: a TypeError)."""
    from ase_mlff.cli import main

    small = tmp_path / "eth.extxyz"
    ethanol[:20].to_extxyz(small)
    out = tmp_path / "c.mlff"
    assert main(["train", "bpnn", str(small), "--n-train", "8", "--n-valid", "2", "--n-test", "4", "--cutoff", "4",
                 "--hidden", "4", "--n-radial", "2", "--n-eta", "1", "--zetas", "1", "--epochs", "1",
                 "--reference-energies", "H=-13.6,C=-1029.0,O=-2041.0", "--committee", "2", "--committee-frames",
                 "5", "-o", str(out)]) == 0
    model = load_model(out)
    assert model.meta["training"]["reference_energies"]["source"] == "given"
    for m in [*model.members, model.mean_model]:
        assert m.config["reference_energies"] == [-13.6, -1029.0, -2041.0]

# --------------------------------------------------------------------------- shipped file
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "potentials", "ethanol_sgdml_committee.mlff")


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="potentials/ethanol_sgdml_committee.mlff not built")
def test_shipped_committee_serves_the_shipped_model_and_flags_a_broken_bond():
    import ase.io

    committee = load_model(SHIPPED)
    assert committee.n_members == 8 and committee.calibration["forces"] < 1
    single = load_model(os.path.join(ROOT, "potentials", "ethanol_sgdml.mlff"))
    atoms = ase.io.read(os.path.join(ROOT, "potentials", "ethanol_start.xyz"))
    calc = MLFFCalculator(committee, uncertainty=True)
    e, f = calc.get_potential_energy(atoms), calc.get_forces(atoms)
    assert e == MLFFCalculator(single).get_potential_energy(atoms)
    np.testing.assert_array_equal(f, MLFFCalculator(single).get_forces(atoms))
    near, near_e = calc.results["forces_uncertainty"].copy(), calc.results["energy_uncertainty"]
    assert near.shape == (9,) and near.max() < 0.2
    # pull the hydroxyl H (bonded to O) 0.8 Å further out: far outside the MD training data
    o = 2
    h = int(np.argmin(np.linalg.norm(atoms.positions[3:] - atoms.positions[o], axis=1))) + 3
    stretched = atoms.copy()
    bond = stretched.positions[h] - stretched.positions[o]
    stretched.positions[h] += 0.8 * bond / np.linalg.norm(bond)
    calc.get_forces(stretched)
    far = calc.results["forces_uncertainty"]
    assert far[h] > 3 * near.max() and calc.results["energy_uncertainty"] > 3 * near_e


def test_train_mff_committee_from_the_command_line(tmp_path):
    """A local family end to end: members, a served model on all pool frames, stress calibrated
    on the held-out frames' own stress labels, the family's flags still honoured."""
    from ase_mlff.cli import main

    out = tmp_path / "ni.mlff"
    rc = main(["train", "mff", os.path.join(DATA, "ni_mlearn_20.extxyz"), "-o", str(out), "--committee", "2",
               "--committee-frames", "8", "--rc2", "4.0", "--rc3", "0", "--n-test", "6", "--n-energy", "3",
               "--n-force-atoms", "20", "--hyper-energy", "2", "--hyper-force-atoms", "8", "--no-optimise",
               "--h2", "0.2"])
    assert rc == 0
    model = load_model(out)
    assert model.member_family == "mff" and model.mean_model is not None and model.cutoff == 4.0
    assert "stress_uncertainty" in model.extra_results
    cal = model.meta["training"]["calibration"]
    assert cal["n_frames"] == 6 and isinstance(cal["stress"], dict)  # fitted, not borrowed from forces
    assert model.calibration["stress"] != model.calibration["forces"]
    held = set(cal["indices"])
    assert all(not held & set(m["train_indices"]) for m in model.meta["training"]["members"])


def test_train_bpnn_committee_from_the_command_line(tmp_path, ethanol):
    """BPNN end to end through the CLI: members on subsamples with their own seeds, the served
    model is the one plain ``train bpnn`` gives, calibration on the --n-test frames, the
    uncertainties through ASE (stress too: a local family)."""
    from ase_mlff.cli import main

    small = tmp_path / "eth.extxyz"
    ethanol[:24].to_extxyz(small)
    common = [str(small), "--n-train", "8", "--n-valid", "2", "--n-test", "6", "--cutoff", "4", "--hidden", "6",
              "--n-radial", "3", "--n-eta", "2", "--zetas", "1", "--epochs", "2", "--seed", "3"]
    out = tmp_path / "c.mlff"
    assert main(["train", "bpnn", *common, "--committee", "2", "--committee-frames", "6", "-o", str(out)]) == 0
    model = load_model(out)
    assert model.member_family == "bpnn" and model.n_members == 2 and model.mean_model is not None
    tr = model.meta["training"]
    split = tr["split"]
    cal = tr["calibration"]
    assert cal["n_frames"] == 6 and cal["indices"] == split["test"]
    pool = set(split["train"]) | set(split["valid"])
    frames = [set(m["frames"]) for m in tr["members"]]
    assert all(len(f) == 6 and f <= pool for f in frames) and frames[0] != frames[1]
    assert [m["seed"] for m in tr["members"]] == [4, 5]
    assert all(not set(cal["indices"]) & f for f in frames)
    assert model.calibration["forces"] > 0 and model.calibration["forces"] != 1.0

    # the served mean is what a plain ``train bpnn`` with the same flags writes
    single = tmp_path / "one.mlff"
    assert main(["train", "bpnn", *common, "-o", str(single)]) == 0
    one = load_model(single)
    atoms = ethanol[30].to_atoms()
    atoms.set_cell([12.0, 12.0, 12.0])
    atoms.center()
    atoms.pbc = True
    calc = MLFFCalculator(model, uncertainty=True)
    atoms.calc = calc
    f, s = atoms.get_forces(), atoms.get_stress()
    np.testing.assert_array_equal(f, MLFFCalculator(one).get_forces(atoms))
    res = calc.results
    assert isinstance(res["energy_uncertainty"], float) and res["energy_uncertainty"] > 0
    assert res["forces_uncertainty"].shape == (9,) and np.all(res["forces_uncertainty"] > 0)
    assert res["stress_uncertainty"].shape == (6,) and s.shape == (6,)
    # the forces uncertainty is the calibrated member spread
    F = np.stack([MLFFCalculator(m).get_forces(atoms) for m in model.members])
    sigma = np.sqrt(((F - F.mean(0)) ** 2).sum(axis=(0, 2)) / (len(F) - 1))
    np.testing.assert_allclose(res["forces_uncertainty"], model.calibration["forces"] * sigma, rtol=1e-4)


# --------------------------------------------------------------------------- warm start
def _cu_dataset(n):
    from ase.calculators.emt import EMT

    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        a.rattle(0.1, seed=k)
        a.calc = EMT()
        a.get_forces()
        out.append(a)
    return data.Dataset.from_atoms(out)


TINY_BPNN = dict(cutoff=4.0, hidden=(8,), n_radial=3, n_eta=2, zetas=(1,), dtype="float64", n_valid=1, n_test=2)


def _energies_forces(model, frames):
    out = []
    with torch.no_grad():
        for f in frames:
            r = model.compute(graph_from_structure(f, model.cutoff, dtype=model.dtype), forces=True)
            out.append(np.concatenate([r.energy.double().numpy().ravel(), r.forces.double().numpy().ravel()]))
    return np.concatenate(out)


def test_warm_start_trains_member_k_from_member_k():
    # a bpnn committee started from a trained one: with steps that cannot move float64 weights
    # (lr 1e-30), member k and the served mean predict exactly what their parents do, on the
    # explicitly given member frames (the parents' frames plus a new one for member 0)
    ds = _cu_dataset(12)
    first, rep = train_committee("bpnn", ds[:10], 2, seed=0, epochs=2, **TINY_BPNN)
    frames = [list(r["frames"]) for r in rep["members"]]
    pool = sorted(set(range(12)) - set(rep["held_out_indices"]))
    new = [i for i in pool if i >= 10]
    frames[0] = sorted(frames[0] + new[:1])
    # n_test 0 and calibration frames given: the held-out frames stay those of the first fit
    second, rep2 = train_committee("bpnn", ds[np.asarray(pool)], 2, seed=0, start_from=first,
                                   member_frames=[[pool.index(i) for i in f] for f in frames],
                                   calibration=ds[np.asarray(rep["held_out_indices"])],
                                   epochs=1, lr=1e-30, ema=0.0, **{**TINY_BPNN, "n_test": 0})
    probe = [ds[i] for i in range(12)]
    for k in range(2):
        np.testing.assert_array_equal(_energies_forces(first.members[k], probe),
                                      _energies_forces(second.members[k], probe))
        assert rep2["members"][k]["init"] == f"member {k + 1} of the given committee"
    np.testing.assert_array_equal(_energies_forces(first.mean_model, probe),
                                  _energies_forces(second.mean_model, probe))
    assert rep2["n_member"] == [len(f) for f in frames] and rep2["mean"]["init"]
    assert rep2["members"][0]["frames"] == [pool.index(i) for i in frames[0]]
    assert "start_from" in rep2


def test_warm_start_refuses_what_cannot_carry_over(mff_committee):
    ds = _cu_dataset(8)
    first, _ = train_committee("bpnn", ds, 2, seed=0, epochs=1, **TINY_BPNN)
    with pytest.raises(InputError, match="hidden 16 differs from the parent's 8"):
        train_committee("bpnn", ds, 2, start_from=first, epochs=1, **{**TINY_BPNN, "hidden": (16,)})
    with pytest.raises(InputError, match="start_from has 2 members; this committee has 3"):
        train_committee("bpnn", ds, 3, start_from=first, epochs=1, **TINY_BPNN)
    with pytest.raises(InputError, match="start_from is a committee of mff models"):
        train_committee("bpnn", ds, 4, start_from=mff_committee, epochs=1, **TINY_BPNN)
    with pytest.raises(InputError, match="mff cannot start from a trained committee"):
        train_committee("mff", ds, 4, start_from=mff_committee, mean="members", n_test=2, n_member=3)
    ni = _nickel()
    ni.calc = __import__("ase.calculators.emt", fromlist=["EMT"]).EMT()
    ni.get_forces()
    with_ni = data.Dataset(list(ds.frames) + list(data.Dataset.from_atoms([ni]).frames) * 3)
    with pytest.raises(InputError, match="Ni of the training frames are not in the parent"):
        train_committee("bpnn", with_ni, 2, start_from=first, epochs=1, **TINY_BPNN)
    with pytest.raises(InputError, match="outside the training pool"):
        train_committee("bpnn", ds, 2, member_frames=[[0, 1], [2, 99]], epochs=1, **TINY_BPNN)


def test_schnet_committee_warm_start_starts_from_its_parents():
    # the same plumbing for SchNet (its recipe's init: transfer_model copies every weight)
    ds = _cu_dataset(10)
    tiny = dict(cutoff=4.0, n_features=8, n_interactions=1, n_rbf=8, dtype="float64", n_valid=1, n_test=2)
    first, _ = train_committee("schnet", ds, 2, seed=0, epochs=2, **tiny)
    second, rep = train_committee("schnet", ds, 2, seed=0, start_from=first, epochs=1, lr=1e-30, ema=0.0, **tiny)
    probe = list(ds)
    for a, b in zip([*first.members, first.mean_model], [*second.members, second.mean_model]):
        np.testing.assert_array_equal(_energies_forces(a, probe), _energies_forces(b, probe))
    assert rep["members"][1]["init"] == "member 2 of the given committee"
    with pytest.raises(InputError, match="n-features 16 differs from the parent's 8"):
        train_committee("schnet", ds, 2, seed=0, start_from=first, epochs=1, **{**tiny, "n_features": 16})
