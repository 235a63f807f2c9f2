"""Training checkpoints: interrupt (hook or real signal), resume to the same model, refusals,
output files never damaged, CLI exit codes and help texts."""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import warnings

import numpy as np
import pytest

from ase_mlff.errors import TrainingError
from ase_mlff.training.checkpoint import TrainingInterrupted

DATA = os.path.join(os.path.dirname(__file__), "data")
ETH = os.path.join(DATA, "rmd17_ethanol_300.npz")
NI = os.path.join(DATA, "ni_mlearn_20.extxyz")
KCAL = 0.0433641043  # eV per kcal/mol


@pytest.fixture(scope="module")
def eth():
    d = np.load(ETH)
    tr = np.flatnonzero(d["split"] == 0)
    arrays = {"R": d["coords"].astype(np.float64), "z": d["nuclear_charges"].astype(np.int64),
              "E": d["energies"] * KCAL, "F": d["forces"] * KCAL}
    return arrays, tr


def _sgdml(eth, **kw):
    from ase_mlff.training.sgdml_train import train_sgdml

    arrays, tr = eth
    opts = dict(sigmas=[20, 30], solver="cg", n_inducing=20, cg_tol=1e-6, train_indices=tr[:30],
                valid_indices=tr[50:60], test_indices=tr[60:70])
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_sgdml(arrays, 30, 10, **opts)


def _same_model(m0, m1):
    a0, a1 = m0.get_arrays(), m1.get_arrays()
    assert a0.keys() == a1.keys()
    for k in a0:
        scale = max(float(np.abs(a0[k]).max()), 1e-300) if a0[k].size else 1.0
        np.testing.assert_allclose(a1[k], a0[k], rtol=0, atol=1e-10 * scale, err_msg=k)
    assert m1.sigma == m0.sigma and m1.c == pytest.approx(m0.c, rel=1e-10, abs=1e-12)


@pytest.fixture(scope="module")
def sgdml_reference(eth):
    return _sgdml(eth)


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_sgdml_interrupted_twice_then_resumed_equals_uninterrupted(eth, sgdml_reference, tmp_path, solver):
    ck = tmp_path / "m.mlff.ckpt"
    m0, r0 = sgdml_reference if solver == "cg" else _sgdml(eth, solver=solver)
    # cg: 40 of ~76 iterations of the first sigma; cholesky: after the first sigma
    first, second = (40, 50) if solver == "cg" else (1, 1)
    sig = [20, 30, 40] if solver == "cholesky" else [20, 30]
    if solver == "cholesky":
        m0, r0 = _sgdml(eth, solver=solver, sigmas=sig)
    with pytest.raises(TrainingInterrupted) as exc:
        _sgdml(eth, solver=solver, sigmas=sig, checkpoint=ck, stop_after=first)
    assert exc.value.exit_code == 130 and exc.value.checkpoint == str(ck) and ck.exists()
    with pytest.raises(TrainingInterrupted):
        _sgdml(eth, solver=solver, sigmas=sig, checkpoint=ck, resume=True, stop_after=second)
    m1, r1 = _sgdml(eth, solver=solver, sigmas=sig, checkpoint=ck, resume=True)
    _same_model(m0, m1)
    assert [e["sigma"] for e in r1["per_sigma"]] == [e["sigma"] for e in r0["per_sigma"]]
    if solver == "cg":
        assert {k: v["iterations"] for k, v in r1["cg"].items()} == {k: v["iterations"] for k, v in r0["cg"].items()}
    assert r1["test"]["forces_rmse"] == pytest.approx(r0["test"]["forces_rmse"], rel=1e-10)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_real_signal_stops_at_the_next_safe_point(eth, sgdml_reference, tmp_path, signum, code):
    ck = tmp_path / "m.ckpt"
    sent = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def progress(msg):
        if "CG iteration 25" in msg and not sent:
            sent.append(msg)
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted) as exc:
        _sgdml(eth, checkpoint=ck, progress=progress)
    assert exc.value.signum == signum and exc.value.exit_code == code and ck.exists()
    assert {s: signal.getsignal(s) for s in before} == before  # handlers removed again
    from ase_mlff.io import read_archive

    meta, arrays = read_archive(ck)
    assert meta["state"]["cg_it"] == 25 and "cg_x" in arrays
    m1, _ = _sgdml(eth, checkpoint=ck, resume=True)
    _same_model(sgdml_reference[0], m1)


def test_resume_refuses_other_options_or_data(eth, tmp_path):
    ck = tmp_path / "m.ckpt"
    with pytest.raises(TrainingInterrupted):
        _sgdml(eth, checkpoint=ck, stop_after=3)
    with pytest.raises(TrainingError, match="lam"):
        _sgdml(eth, checkpoint=ck, resume=True, lam=1e-8)
    arrays, tr = eth
    other = dict(arrays, F=arrays["F"] * 1.01)
    with pytest.raises(TrainingError, match="dataset sha256"):
        _sgdml((other, tr), checkpoint=ck, resume=True)
    with pytest.raises(TrainingError, match="resume"):  # a fresh run does not overwrite the checkpoint
        _sgdml(eth, checkpoint=ck)
    with pytest.raises(TrainingError, match="no checkpoint"):
        _sgdml(eth, checkpoint=tmp_path / "absent.ckpt", resume=True)


# ------------------------------------------------------------------------------ the commands
def _parser(module):
    return module.configure_parser(argparse.ArgumentParser())


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_sgdml_cli_interrupt_keeps_existing_model_and_resumes(tmp_path, capsys):
    from ase_mlff.io import load_model
    from ase_mlff.training import sgdml_train

    out = tmp_path / "m.mlff"
    out.write_bytes(b"an earlier model the user wants to keep")
    before = _sha(out)
    argv = [ETH, "--energy-unit", "kcal/mol", "--n-train", "20", "--n-valid", "10", "--sigmas", "20,30",
            "--solver", "cholesky", "-o", str(out)]
    p = _parser(sgdml_train)
    assert sgdml_train.run(p.parse_args(argv)) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    args = p.parse_args(argv + ["--overwrite"])
    args._stop_after = 1
    assert sgdml_train.run(args) == 130
    err = capsys.readouterr().err
    assert "--resume" in err and _sha(out) == before
    assert (tmp_path / "m.mlff.ckpt").exists()
    assert sgdml_train.run(p.parse_args(argv + ["--overwrite"])) == 2  # would discard the checkpoint
    assert sgdml_train.run(p.parse_args(argv + ["--resume"])) == 0
    assert not (tmp_path / "m.mlff.ckpt").exists()
    assert load_model(out).family == "sgdml"


def test_sgdml_cli_exit_codes_and_flag_names(tmp_path, capsys):
    from ase_mlff.training import sgdml_train

    p = _parser(sgdml_train)
    out = str(tmp_path / "x.mlff")
    assert sgdml_train.run(p.parse_args([ETH, "-o", out])) == 1  # no unit: bad data
    assert "--energy-unit" in capsys.readouterr().err
    assert sgdml_train.run(p.parse_args([ETH, "--energy-unit", "kcal/mol", "--n-train", "300", "-o", out])) == 1
    err = capsys.readouterr().err
    assert "--n-train" in err and "n_train" not in err
    assert sgdml_train.run(p.parse_args([ETH, "--sigmas", "x", "-o", out])) == 2
    assert sgdml_train.run(p.parse_args([ETH, "--resume", "-o", out])) == 2


@pytest.mark.parametrize("family", ["sgdml", "mff"])
def test_every_train_option_shows_its_default(family, capsys):
    from ase_mlff.cli import main

    with pytest.raises(SystemExit):
        main(["train", family, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from ase_mlff.training import mff_train, sgdml_train

    p = _parser(sgdml_train if family == "sgdml" else mff_train)
    fmt = p._get_formatter()
    for action in p._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in fmt._get_help_string(action) or action.required, action.dest
    assert "default" in text


# ------------------------------------------------------------------------------ MFF
MFF_ARGS = ["--rc2", "4.0", "--rc3", "2.6", "--n-test", "5", "--n-energy", "3", "--n-force-atoms", "4",
            "--hyper-energy", "2", "--hyper-force-atoms", "2", "--h2", "0.25", "--h3", "0.4",
            "--samples-per-interval", "1", "--n-gp-eval", "1"]


def test_mff_interrupted_in_each_stage_then_resumed_equals_uninterrupted(tmp_path, capsys):
    from ase_mlff.io import load_model
    from ase_mlff.training import mff_train

    p = _parser(mff_train)
    ref = tmp_path / "ref.mlff"
    assert mff_train.run(p.parse_args([NI, "-o", str(ref)] + MFF_ARGS)) == 0
    n_total = sum(1 for line in capsys.readouterr().err.splitlines() if "log ML=" in line)
    out = tmp_path / "m.mlff"
    argv = [NI, "-o", str(out)] + MFF_ARGS
    args = p.parse_args(argv)
    args._stop_after = 3  # inside the hyperparameter search
    assert mff_train.run(args) == 130
    assert not out.exists() and (tmp_path / "m.mlff.ckpt").exists()
    n_eval = sum(1 for line in capsys.readouterr().err.splitlines() if "log ML=" in line)
    from ase_mlff.data import read
    from ase_mlff.io import read_archive

    # safe points after a resume: the rest of the search (n_total - 3 evaluations), the end of the
    # search, one per training frame of the sparse fit's design matrix (15), the fit, the spline blocks
    args = p.parse_args(argv + ["--resume"])
    args._stop_after = (n_total - 3) + 1 + 2  # the rest of the search, then two frames' design rows
    assert mff_train.run(args) == 130
    meta, arrays = read_archive(tmp_path / "m.mlff.ckpt")
    assert meta["state"]["stage"] == "design" and meta["state"]["design_frames"] == 2
    ni = read(NI)
    first = [ni[int(i)] for i in ni.split(15, 0, 5, seed=0).train[:2]]  # the pool's first two frames
    assert len(arrays["design_rows"]) == sum(1 + 3 * len(f) + 6 for f in first)  # energy, forces, virial
    args = p.parse_args(argv + ["--resume"])
    args._stop_after = 13 + 1  # the other 13 frames' rows, then the fit
    rc = mff_train.run(args)
    assert rc == 130, capsys.readouterr()
    meta, arrays = read_archive(tmp_path / "m.mlff.ckpt")
    assert meta["state"]["stage"] == "mapping" and "sparse_x" in arrays  # the sparse fit (default) is saved
    assert "design_rows" not in arrays  # no longer needed
    assert mff_train.run(p.parse_args(argv + ["--resume"])) == 0
    assert n_eval == 3
    m0, m1 = load_model(ref), load_model(out)
    for k, a in m0.get_arrays().items():
        np.testing.assert_allclose(m1.get_arrays()[k], a, rtol=1e-10, atol=1e-12, err_msg=k)
    assert not (tmp_path / "m.mlff.ckpt").exists()
    # the model carries a periodic training frame, so a LAMMPS export has a runnable example
    # even where the training data file is not at hand
    from ase_mlff.export.lammps import export_lammps
    from ase_mlff.io import read_metadata

    example = read_metadata(out)["training"]["example_structure"]
    assert set(example["symbols"]) == {"Ni"} and all(example["pbc"])
    export_lammps(str(out), tmp_path / "lmp", name="ni")
    assert any(f.endswith(".data") for f in os.listdir(tmp_path / "lmp"))


# ------------------------------------------------------------------------------ GAP
SI = os.path.join(DATA, "si_mlearn_16.extxyz")
GAP_OPTS = dict(cutoff=4.0, n_max=3, l_max=2, n_sparse=30, n_test=3, two_body=True, seed=0)
GAP_ARGS = ["--cutoff", "4.0", "--n-max", "3", "--l-max", "2", "--n-sparse", "30", "--n-test", "3", "--two-body"]


@pytest.fixture(scope="module")
def si():
    from ase_mlff.data import read

    return read(SI)


@pytest.fixture(scope="module")
def gap_reference(si):
    from ase_mlff.training.gap_train import train

    return train(si, **GAP_OPTS)


def _identical(m0, m1):
    """Bit-identical parameters (the fit is resumed, not redone)."""
    a0, a1 = m0.get_arrays(), m1.get_arrays()
    assert a0.keys() == a1.keys()
    for k in a0:
        np.testing.assert_array_equal(a1[k], a0[k], err_msg=k)
    assert m1.get_config() == m0.get_config()


def test_gap_interrupted_anywhere_then_resumed_equals_uninterrupted(si, gap_reference, tmp_path):
    """Safe points: 1 after the sparse points are chosen, 2..14 after each of the 13 training
    frames' design rows, 15 after the solve; a stop at any of them, even twice in the design,
    resumes to the uninterrupted model bit for bit."""
    from ase_mlff.io import read_archive
    from ase_mlff.training.gap_train import train

    m0, r0 = gap_reference
    for stops, stage in (((1,), "design"), ((3, 5), "design"), ((15,), "solved")):
        ck = tmp_path / f"g{stops[0]}.ckpt"
        with pytest.raises(TrainingInterrupted) as exc:
            train(si, checkpoint=ck, stop_after=stops[0], **GAP_OPTS)
        assert exc.value.exit_code == 130 and exc.value.checkpoint == str(ck)
        for again in stops[1:]:  # interrupted again while resuming
            with pytest.raises(TrainingInterrupted):
                train(si, checkpoint=ck, resume=True, stop_after=again, **GAP_OPTS)
        meta, arrays = read_archive(ck)
        assert meta["state"]["stage"] == stage and {"sparse", "pair_sparse"} <= set(arrays)
        if stops == (3, 5):  # 2 frames, then (a resume has no selection point) 5 more: 7 frames' rows
            train_frames = [si[int(i)] for i in si.split(13, 0, 3, seed=0).train]
            assert meta["state"]["design_frames"] == 7
            assert arrays["design_rows"].shape == (sum(1 + 3 * len(f) + 6 for f in train_frames[:7]),
                                                   m0.n_parameters + 1)
        if stage == "solved":
            assert "x" in arrays and "R" in arrays and "design_rows" not in arrays
        m1, r1 = train(si, checkpoint=ck, resume=True, **GAP_OPTS)
        _identical(m0, m1)
        assert r1["resumed_from"] == stage and r1["metrics"] == r0["metrics"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_gap_real_signal_stops_at_the_next_safe_point(si, gap_reference, tmp_path, signum, code):
    from ase_mlff.training.gap_train import train

    ck = tmp_path / "g.ckpt"
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def progress(msg):
        if msg.startswith("SOAP:"):  # the descriptors are done: stop after the sparse points are chosen
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted) as exc:
        train(si, checkpoint=ck, progress=progress, **GAP_OPTS)
    assert exc.value.signum == signum and exc.value.exit_code == code and ck.exists()
    assert {s: signal.getsignal(s) for s in before} == before  # handlers removed again
    m1, _ = train(si, checkpoint=ck, resume=True, **GAP_OPTS)
    _identical(gap_reference[0], m1)


def test_gap_resume_refuses_other_options_or_data(si, tmp_path):
    from ase_mlff.data import Dataset
    from ase_mlff.training.gap_train import train

    ck = tmp_path / "g.ckpt"
    with pytest.raises(TrainingInterrupted):
        train(si, checkpoint=ck, stop_after=4, **GAP_OPTS)
    with pytest.raises(TrainingError, match="n_sparse: checkpoint 30, now 40"):
        train(si, checkpoint=ck, resume=True, **dict(GAP_OPTS, n_sparse=40))
    other = Dataset.from_frames(list(si)[::-1])  # the same frames in another order: other data
    with pytest.raises(TrainingError, match="dataset sha256"):
        train(other, checkpoint=ck, resume=True, **GAP_OPTS)
    with pytest.raises(TrainingError, match="resume"):  # a fresh run does not overwrite the checkpoint
        train(si, checkpoint=ck, **GAP_OPTS)


def test_gap_cli_interrupt_keeps_existing_model_and_resumes(gap_reference, tmp_path, capsys):
    from ase_mlff.io import load_model
    from ase_mlff.training import gap_train

    out = tmp_path / "g.mlff"
    out.write_bytes(b"an earlier model the user wants to keep")
    before = _sha(out)
    argv = [SI, "-o", str(out), "--overwrite"] + GAP_ARGS
    p = _parser(gap_train)
    args = p.parse_args(argv)
    args._stop_after = 6  # in the design matrix
    assert gap_train.run(args) == 130
    assert "--resume" in capsys.readouterr().err and _sha(out) == before
    assert (tmp_path / "g.mlff.ckpt").exists()
    assert gap_train.run(p.parse_args(argv)) == 2  # would discard the checkpoint
    assert "--resume" in capsys.readouterr().err
    assert gap_train.run(p.parse_args(argv + ["--resume"])) == 0
    assert not (tmp_path / "g.mlff.ckpt").exists()
    _identical(gap_reference[0], load_model(out))
    assert gap_train.run(p.parse_args([SI, "-o", str(tmp_path / "x.mlff"), "--resume"] + GAP_ARGS)) == 2
