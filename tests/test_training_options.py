"""Options every train command shares: the GAP defaults are the documented recipe, training-set
errors when nothing is held out, ``--reference-energies`` (given per-element energies, recorded
in the model file) and the record of what a model was trained on, with the warnings of
``info``, ``md`` and ``relax --cell`` for a model that never saw a stress label.

Data: the mlearn Mo and Si excerpts (periodic, with stress) and rMD17 ethanol (one molecule,
kcal/mol) of tests/data; every fit is tiny (seconds)."""

from __future__ import annotations

import json
import os
import re
import shlex

import numpy as np
import pytest

from ase_mlff import MLFFCalculator
from ase_mlff.cli import build_parser, main
from ase_mlff.data import read
from ase_mlff.io import load_model, read_metadata, save_model
from ase_mlff.training.common import (GivenReferenceEnergies, ReferenceEnergiesError, TRAINING_SET_CAVEAT,
                                      frame_metrics, parse_reference_energies, predict_frames, trained_on,
                                      untrained_stress_warning)
from ase_mlff.units import energy_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
MO = os.path.join(DATA, "mo_mlearn_10.extxyz")
SI = os.path.join(DATA, "si_mlearn_16.extxyz")
ETH = os.path.join(DATA, "rmd17_ethanol_300.npz")
WATER = os.path.join(DATA, "water_deepmd_4.extxyz")
POT = os.path.join(ROOT, "potentials")

#: tiny settings of each family (seconds per fit)
GAP = ["--cutoff", "4.5", "--n-max", "4", "--l-max", "3", "--n-sparse", "50", "--two-body-n-sparse", "10"]
MFF = ["--rc2", "4.0", "--rc3", "0", "--n-energy", "3", "--n-force-atoms", "10", "--hyper-energy", "2",
       "--hyper-force-atoms", "4", "--no-optimise", "--h2", "0.2", "--n-sparse2", "10"]
SGDML = ["--energy-unit", "kcal/mol", "--n-train", "20", "--n-valid", "10", "--sigmas", "20"]
BPNN = ["--cutoff", "4", "--hidden", "4", "--n-radial", "2", "--n-eta", "1", "--zetas", "1", "--epochs", "2",
        "--no-plots"]
SCHNET = ["--n-features", "4", "--n-interactions", "1", "--n-rbf", "4", "--epochs", "2", "--no-plots"]


def _gap_options(argv):
    args = build_parser().parse_args(["train", "gap", "data.xyz", "-o", "m.mlff", *argv])
    return vars(args)


# ------------------------------------------------------------------------------------ GAP defaults
def test_train_gap_defaults_are_the_recipe_of_the_shipped_si_gap():
    """Every model flag of the shipped Si GAP's recipe (potentials/si_gap.md, the recipe
    docs/gap.md points at) is the default of ``train gap``: SOAP cutoff 5.4 Å and the 2-body
    term included; ``--no-two-body`` leaves the 2-body term out."""
    text = open(os.path.join(POT, "si_gap.md"), encoding="utf-8").read()
    cmd = re.search(r"python -m ase_mlff train gap (.*?)\n\n", text, re.S).group(1)
    argv = [a for a in shlex.split(cmd.replace("\\\n", " ")) if a]
    argv = argv[argv.index("-o") + 2:]  # after DATA --test FILE -o OUTPUT: the model flags
    argv = argv[:argv.index("--report")]
    assert argv, cmd
    recipe, defaults = _gap_options(argv), _gap_options([])
    for key in ("cutoff", "n_max", "l_max", "atom_sigma", "cutoff_width", "zeta", "n_sparse", "two_body"):
        assert recipe[key] == defaults[key], (key, recipe[key], defaults[key])
    assert defaults["cutoff"] == 5.4 and defaults["two_body"] is True
    assert _gap_options(["--no-two-body"])["two_body"] is False
    assert _gap_options(["--two-body"])["two_body"] is True


# ------------------------------------------------------------------------------------ training-set errors
def _train_lines(out):
    return [line for line in out.splitlines() if line.startswith("train (")]


def test_train_gap_without_test_frames_reports_training_set_errors(tmp_path, capsys):
    """No --test and --n-test 0: the training-set errors are printed, labelled as such, and
    recorded (``metrics["train"]``) with the numbers a fresh evaluation of the saved model on
    its training frames gives."""
    out = tmp_path / "g.mlff"
    assert main(["train", "gap", MO, "-o", str(out), *GAP]) == 0
    lines = _train_lines(capsys.readouterr().out)
    assert len(lines) == 1 and TRAINING_SET_CAVEAT in lines[0] and "--n-test" in lines[0]
    meta = read_metadata(out)
    m = meta["training"]["metrics"]["train"]
    frames = list(read(MO))
    again = frame_metrics(frames, predict_frames(MLFFCalculator(load_model(out)), frames))
    assert m["n_frames"] == 10
    for key in ("energy_per_atom_mae_meV", "forces_mae_meV_per_A", "stress_rmse_GPa"):
        assert m[key] == pytest.approx(again[key], rel=1e-9)
    assert 0 < m["forces_mae_meV_per_A"] < 1e3  # a fit, not noise


def test_train_gap_with_test_frames_reports_test_errors_only(tmp_path, capsys):
    out = tmp_path / "g.mlff"
    assert main(["train", "gap", MO, "-o", str(out), "--n-test", "2", *GAP]) == 0
    assert not _train_lines(capsys.readouterr().out)
    assert set(read_metadata(out)["training"]["metrics"]) == {"test"}


@pytest.mark.parametrize("family, argv", [
    ("mff", [MO, "--n-test", "0", *MFF]),
    ("sgdml", [ETH, "--n-test", "0", *SGDML]),
    ("bpnn", [WATER, "--n-train", "3", "--n-valid", "1", "--n-test", "0", *BPNN]),
    ("schnet", [WATER, "--n-train", "3", "--n-valid", "1", "--n-test", "0", *SCHNET]),
])
def test_every_train_command_reports_training_set_errors_without_test_frames(tmp_path, capsys, family, argv):
    out = tmp_path / "m.mlff"
    assert main(["train", family, *argv, "-o", str(out)]) == 0
    lines = _train_lines(capsys.readouterr().out)
    assert len(lines) == 1 and TRAINING_SET_CAVEAT in lines[0], lines
    training = read_metadata(out)["training"]
    train = (training.get("metrics") or {}).get("train") or training.get("train")
    assert train["n_frames"] >= 3 and train["forces_mae_meV_per_A"] > 0


def test_committee_without_calibration_frames_reports_training_set_errors(tmp_path, capsys):
    data = tmp_path / "eth40.extxyz"
    read(ETH, energy_unit="kcal/mol")[:40].to_extxyz(data)
    out = tmp_path / "c.mlff"
    assert main(["train", "sgdml", str(data), "--n-train", "10", "--n-valid", "0", "--sigmas", "20",
                 "--committee", "2", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    # the command line prints the package's warnings as its own lines
    assert "ase-mlff: warning:" in captured.err and "no calibration frames" in captured.err
    lines = _train_lines(captured.out)
    assert len(lines) == 1 and TRAINING_SET_CAVEAT in lines[0] and "--calibration-data" in lines[0]
    train = read_metadata(out)["training"]["metrics"]["train"]
    assert train["n_frames"] == 40  # the whole pool: no frame was held out


# ------------------------------------------------------------------------------------ --reference-energies
def test_reference_energies_are_read_from_a_file_or_the_flag(tmp_path):
    js, txt = tmp_path / "e0.json", tmp_path / "e0.txt"
    js.write_text('{"H": -13.6, "O": -432.5}')
    txt.write_text("# isolated atoms\nH  -13.6\nO = -432.5   # oxygen\n\n")
    for spec in (str(js), str(txt), "H=-13.6, O=-432.5", {"H": -13.6, "O": -432.5}):
        g = parse_reference_energies(spec)
        assert g.energies == {1: -13.6, 8: -432.5} and g.unit == "eV"
        assert np.array_equal(g.for_species([1, 8]), [-13.6, -432.5])
    # numbers in the command's --energy-unit are converted to eV
    g = parse_reference_energies("H=-313.6", "kcal/mol")
    assert g.energies[1] == pytest.approx(-313.6 * energy_factor("kcal/mol"), rel=1e-15)
    assert parse_reference_energies(g) is g and parse_reference_energies(None) is None


@pytest.mark.parametrize("spec, words", [
    ("H=-13.6,Xy=1", ["'Xy' is not a chemical element"]),
    ("H=-13.6,O=nan", ["energy of O", "finite"]),
    ("H=1e7", ["below 1e+06 eV"]),
    ("H=1,H=2", ["H given twice"]),
    ("no_such_file.json", ["no such file"]),
    ("H=-13.6,O", ["expected El=E"]),
])
def test_bad_reference_energies_are_refused_with_the_reason(spec, words):
    with pytest.raises(ReferenceEnergiesError) as info:
        parse_reference_energies(spec)
    for w in words:
        assert w in str(info.value)


def test_reference_energies_missing_an_element_are_refused_before_training(tmp_path, capsys):
    """Exit status 2, the missing element named, nothing written."""
    out = tmp_path / "m.mlff"
    assert main(["train", "sgdml", ETH, *SGDML, "-o", str(out), "--reference-energies", "H=-300,O=-47000"]) == 2
    err = capsys.readouterr().err
    assert "no value for C" in err and "Traceback" not in err and "sigma" not in err
    assert not out.exists()
    assert main(["train", "schnet", WATER, "--n-train", "3", "--n-valid", "1", *SCHNET, "-o", str(out),
                 "--reference-energies", "H=-13.6"]) == 2
    assert "no value for O" in capsys.readouterr().err and not out.exists()


def test_gap_with_given_e0_holds_them_fixed_exactly(tmp_path):
    """A given e0 is fixed, not fitted: fixing it at the value the free fit chose gives the free
    fit's model (the other parameters of a quadratic problem are then at their joint optimum),
    and the record says where e0 came from. The variance factor stays usable and e0 adds no
    variance."""
    from ase_mlff.training.gap_train import train

    ds = read(MO)
    opts = dict(cutoff=4.5, n_max=4, l_max=3, n_sparse=50, two_body_n_sparse=10, seed=0)
    free, rec_free = train(ds, **opts)
    e0 = float(free.e0[0])
    assert rec_free["reference_energies"]["source"] == "fitted"
    fixed, rec = train(ds, reference_energies={"Mo": e0}, **opts)
    assert float(fixed.e0[0]) == e0
    ref = rec["reference_energies"]
    assert ref["source"] == "given" and ref["eV"] == {"Mo": e0} and ref["given_as"] == json.dumps({"Mo": e0})
    calc_free, calc_fixed = MLFFCalculator(free, uncertainty=True), MLFFCalculator(fixed, uncertainty=True)
    for fr in list(ds)[:3]:
        a, b = fr.to_atoms(), fr.to_atoms()
        a.calc, b.calc = calc_free, calc_fixed
        ea, eb = a.get_potential_energy(), b.get_potential_energy()
        assert eb == pytest.approx(ea, abs=1e-9 * abs(ea))
        fa = a.get_forces()
        assert np.abs(b.get_forces() - fa).max() <= 1e-7 * np.abs(fa).max()
        # compared raw: each fit has its own calibration factor (from its own cross-validation)
        sb = calc_fixed.results["energy_uncertainty"] / fixed.calibration["energy"]
        sa = calc_free.results["energy_uncertainty"] / free.calibration["energy"]
        assert np.isfinite(sb) and 0 <= sb <= sa * (1 + 1e-6)
    # isolated-atom-like e0 far from the fitted one: still held, still a fit of the training labels
    other, rec = train(ds, reference_energies="Mo=-4.6", **opts)
    assert float(other.e0[0]) == -4.6 and rec["metrics"]["train"]["energy_per_atom_mae_meV"] < 10


def test_sparse_mff_with_given_e0_holds_them_fixed_exactly():
    """As for GAP: the sparse MFF fit with e0 fixed at its free optimum is the free fit."""
    from ase_mlff.training.mff_train import train

    opts = dict(rc2=4.0, rc3=0.0, n_energy=3, hyper_energy=2, hyper_force_atoms=4, no_optimise=True, h2=0.2,
                n_sparse2=10, n_test=2, n_gp_eval=0, seed=0)
    free, rec_free = train(MO, **opts)
    e0 = float(free.e0[0])
    fixed, rec = train(MO, reference_energies=f"Mo={e0!r}", **opts)
    assert float(fixed.e0[0]) == e0 and rec["reference_energies"]["source"] == "given"
    assert rec_free["reference_energies"]["source"] == "fitted"
    for a, b in zip(free.get_arrays().values(), fixed.get_arrays().values()):
        assert np.allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(a).max(initial=1.0))


def test_schnet_with_given_e0_in_the_data_unit_learns_the_rest(tmp_path):
    """rMD17 ethanol in kcal/mol: the given e0 are read in --energy-unit, converted to eV, used
    by the network (E = sum e0 + s * network) and recorded; fitted e0 of one molecule are
    flagged as the minimum-norm solution."""
    out = tmp_path / "s.mlff"
    given = {"H": -313.5, "C": -23710.0, "O": -47060.0}  # kcal/mol
    spec = ",".join(f"{k}={v}" for k, v in given.items())
    assert main(["train", "schnet", ETH, "--energy-unit", "kcal/mol", "--n-train", "8", "--n-valid", "2",
                 "--n-test", "2", *SCHNET, "-o", str(out), "--reference-energies", spec]) == 0
    meta = read_metadata(out)
    ref = meta["training"]["reference_energies"]
    f = energy_factor("kcal/mol")
    want = {k: v * f for k, v in given.items()}
    assert ref["source"] == "given" and ref["unit"] == "kcal/mol" and ref["given_as"] == spec
    assert ref["eV"] == pytest.approx(want, rel=1e-15)
    assert dict(zip(meta["elements"], meta["hyperparameters"]["reference_energies"])) == pytest.approx(want)
    assert meta["training"]["trained_on"] == ["energy", "forces"]
    out2 = tmp_path / "fitted.mlff"
    assert main(["train", "schnet", ETH, "--energy-unit", "kcal/mol", "--n-train", "8", "--n-valid", "2",
                 "--n-test", "2", *SCHNET, "-o", str(out2)]) == 0
    ref = read_metadata(out2)["training"]["reference_energies"]
    assert ref["source"] == "fitted" and "minimum-norm" in ref["how"]


def test_bpnn_and_committee_take_given_e0(tmp_path):
    from ase_mlff.training.bpnn_train import train_bpnn
    from ase_mlff.training.committee import train_committee

    ds = read(WATER)
    spec = "H=-13.6,O=-432.5"
    model, report = train_bpnn(ds, 3, 1, 0, cutoff=4.0, hidden=(4,), n_radial=2, n_eta=1, zetas=(1,), epochs=1,
                               reference_energies=spec)
    assert model.config["reference_energies"] == [-13.6, -432.5]
    assert report["reference_energies"]["source"] == "given" and report["trained_on"] == ["energy", "forces"]
    eth = read(ETH, energy_unit="kcal/mol")[:40]
    c, rep = train_committee("sgdml", eth, 2, n_member=8, seed=0, n_valid=5, sigmas=[20],
                             reference_energies="H=-13.6,C=-1029.0,O=-2041.0")
    assert rep["reference_energies"]["source"] == "given" and rep["trained_on"] == ["energy", "forces"]
    with pytest.raises(ReferenceEnergiesError, match="no value for O"):
        train_committee("sgdml", eth, 2, n_member=8, seed=0, n_valid=5, sigmas=[20], reference_energies="H=1,C=2")


def test_fine_tuning_uses_given_e0_for_new_elements_only(tmp_path):
    from ase_mlff.models.schnet import SchNetModel
    from ase_mlff.training.schnet_train import train_schnet

    parent = SchNetModel([1, 8], n_features=4, n_interactions=1, n_rbf=4)
    parent.set_reference_energies([-13.0, -430.0], 1.0)
    said = []
    model, report = train_schnet(read(ETH, energy_unit="kcal/mol"), 6, 2, 2, init=parent, epochs=1,
                                 reference_energies="H=-13.6,C=-1029.0,O=-2041.0", progress=said.append)
    assert dict(zip(model.elements, model.config["reference_energies"])) == {"H": -13.0, "C": -1029.0, "O": -430.0}
    ref = report["reference_energies"]
    assert ref["source"] == "parent" and "C: given" in ref["how"]
    assert any("parent's e0 of H, O are kept" in s for s in said)


# ------------------------------------------------------------------------------------ trained on, stress warnings
def test_every_family_records_what_it_was_trained_on(tmp_path):
    from ase_mlff.training.gap_train import train as train_gap
    from ase_mlff.training.mff_train import train as train_mff

    _, rec = train_gap(read(MO), cutoff=4.0, n_max=3, l_max=2, n_sparse=20, two_body=False)
    assert rec["trained_on"] == ["energy", "forces", "stress"]
    _, rec = train_mff(MO, rc2=4.0, rc3=0.0, n_energy=3, hyper_energy=2, hyper_force_atoms=4, no_optimise=True,
                       h2=0.2, n_sparse2=10, n_test=2, n_gp_eval=0, fit="full", n_force_atoms=10)
    assert rec["trained_on"] == ["energy", "forces"]  # the full GP fits no virials


def test_schnet_stress_weight_is_used(tmp_path, capsys):
    """``train schnet --stress-weight`` reaches the trainer (it used to be dropped silently), and
    the model records that it was trained on stress: no warning from ``info``."""
    out = tmp_path / "s.mlff"
    assert main(["train", "schnet", MO, "--n-train", "6", "--n-valid", "2", "--n-test", "2", *SCHNET,
                 "--stress-weight", "10", "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["training"]["trainer"]["options"]["stress_weight"] == 10
    assert meta["training"]["trained_on"] == ["energy", "forces", "stress"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    cap = capsys.readouterr()
    assert "energy, forces, stress" in cap.out and "warning" not in cap.err


def test_info_says_what_a_model_was_trained_on(tmp_path, capsys, analytic_model):
    # a file without any record of it: "unknown", and no warning (it may have seen stress)
    path = tmp_path / "old.mlff"
    save_model(analytic_model, path, training={"source": "somewhere"})
    assert main(["info", str(path)]) == 0
    cap = capsys.readouterr()
    assert re.search(r"trained on\s+unknown", cap.out) and "warning" not in cap.err
    # the shipped water SchNet: trained with stress weight 0 (its record), a periodic model
    water = os.path.join(POT, "water_schnet.mlff")
    assert main(["info", water]) == 0
    cap = capsys.readouterr()
    assert re.search(r"trained on\s+energy, forces \(inferred", cap.out)
    warn = [line for line in cap.err.splitlines() if "warning" in line]
    assert len(warn) == 1 and water in warn[0] and "never saw a stress label" in warn[0]
    assert "--stress-weight" in warn[0]  # what to do, in the words of the SchNet recipe
    # the shipped Si GAP was fitted to virials: no warning
    assert main(["info", os.path.join(POT, "si_gap.mlff")]) == 0
    cap = capsys.readouterr()
    assert re.search(r"trained on\s+energy, forces, stress", cap.out) and "warning" not in cap.err


def test_trained_on_of_records_old_and_new():
    assert trained_on({"training": {"trained_on": ["forces", "energy"]}}) == (["energy", "forces"], "recorded")
    assert trained_on({"family": "gap", "training": {"labels": {"energy": 3, "forces": 9, "virial": 0}}})[0] == \
        ["energy", "forces"]
    assert trained_on({"family": "schnet", "training": {"trainer": {"options": {
        "energy_weight": 1.0, "force_weight": 10.0, "stress_weight": 0.0}}}})[0] == ["energy", "forces"]
    assert trained_on({"family": "committee", "hyperparameters": {"member_family": "sgdml"}, "training": {}})[0] == \
        ["energy", "forces"]
    assert trained_on({"family": "schnet", "training": {"metrics": {"test": {"stress_rmse_GPa": 1.0}}}})[0] is None
    assert trained_on({"family": "mff", "training": {"trained_on": "energy"}})[0] is None  # malformed: not trusted
    # a global model gives no stress: nothing to warn about
    assert untrained_stress_warning({"global_model": True, "family": "sgdml", "training": {}}, "m", "x") is None


def _water_box(tmp_path):
    from ase.io import write

    atoms = read(WATER)[0].to_atoms()
    atoms.calc = None
    path = tmp_path / "water.extxyz"
    write(path, atoms)
    return str(path)


def test_md_and_cell_relaxation_warn_about_a_model_never_trained_on_stress(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    water = os.path.join(POT, "water_schnet.mlff")
    box = _water_box(tmp_path)
    assert main(["md", water, box, "-n", "2", "-o", "none", "--log", "none", "--no-progress"]) == 0
    warn = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warn) == 1 and water in warn[0] and "pressures it logs" in warn[0]
    # positions only: no stress at stake, no warning; with the cell: the warning
    assert main(["relax", water, box, "-n", "0", "--trajectory", "none", "--log", "none", "-o", "a.extxyz"]) in (0, 3)
    assert "warning: " + water not in capsys.readouterr().err
    assert main(["relax", water, box, "--cell", "-n", "0", "--trajectory", "none", "--log", "none",
                 "-o", "b.extxyz"]) in (0, 3)
    warn = [line for line in capsys.readouterr().err.splitlines() if "never saw a stress label" in line]
    assert len(warn) == 1 and "relaxed cell" in warn[0]


def test_md_of_a_model_trained_on_stress_does_not_warn(tmp_path, capsys, monkeypatch):
    from ase.build import bulk
    from ase.io import write

    monkeypatch.chdir(tmp_path)
    write("si.extxyz", bulk("Si", "diamond", a=5.47, cubic=True))
    assert main(["md", os.path.join(POT, "si_gap.mlff"), "si.extxyz", "-n", "2", "-o", "none", "--log", "none",
                 "--no-progress"]) == 0
    assert "never saw a stress label" not in capsys.readouterr().err


def test_given_reference_energies_object_reports_missing_elements():
    g = GivenReferenceEnergies({1: -13.6}, "H=-13.6")
    with pytest.raises(ReferenceEnergiesError, match="no value for C, O.*gives H"):
        g.for_species([1, 6, 8])
