"""``ase-mlff learn``: the active-learning loop on a toy reference (EMT copper, a few calls)."""

import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from ase_mlff.cli import main
from ase_mlff.io import load_model, read_archive
from ase_mlff.workflows.learn import learn
from ase_mlff.workflows.reference import ReferenceSpecError, label, parse_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a GAP small enough that a fit takes a fraction of a second
GAP = dict(cutoff=3.6, cutoff_width=0.5, n_max=3, l_max=2, n_sparse=24, two_body_n_sparse=8, sigma_force=0.02,
           sigma_energy=0.001, sigma_virial=0.01)
LOOP = dict(temperatures=(300, 700), segment_steps=8, check_interval=2, options=GAP)


def starts():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms
    a = cu.repeat((2, 1, 1))
    a.rattle(0.05, seed=1)  # not a perfect lattice: its forces are a label the first fit can hold out
    b = cu.repeat((1, 2, 1))
    del b[3]  # a vacancy
    from ase.constraints import FixAtoms

    b.set_constraint(FixAtoms(indices=[0]))  # a fixed atom: fixed in the MD, also after --resume
    return [a, b]


class FlakyEMT(EMT):
    """EMT that raises on chosen calls (counted over all instances): ``interrupt_at`` a
    KeyboardInterrupt (Ctrl-C while the reference runs), ``fail_at`` a RuntimeError (a
    failed SCF, say)."""

    calls = 0
    interrupt_at = None
    fail_at = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if system_changes:  # a new structure: one reference call
            FlakyEMT.calls += 1
            if FlakyEMT.calls == FlakyEMT.interrupt_at:
                raise KeyboardInterrupt
            if FlakyEMT.calls == FlakyEMT.fail_at:
                raise RuntimeError("SCF not converged")
        kwargs = {} if system_changes is None else {"system_changes": system_changes}
        super().calculate(atoms, properties, **kwargs)


@pytest.fixture
def flaky():
    FlakyEMT.calls, FlakyEMT.interrupt_at, FlakyEMT.fail_at = 0, None, None
    yield FlakyEMT
    FlakyEMT.calls, FlakyEMT.interrupt_at, FlakyEMT.fail_at = 0, None, None


def test_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = learn(starts(), "ase.calculators.emt:EMT", out, max_calls=5, **LOOP)
    assert res.calls == 5 and res.n_data == 5 and res.stop_reason == "max_calls"
    for name in ("model.mlff", "data.extxyz", "learn.log", "checkpoint.ckpt", "learning_curve.png"):
        assert (out / name).exists(), name
    frames = ase.io.read(out / "data.extxyz", ":")
    assert len(frames) == 5
    assert [f.info["learn_reason"] for f in frames[:2]] == ["start", "start"]
    assert [f.info["learn_call"] for f in frames] == [1, 2, 3, 4, 5]
    for f in frames:  # the labels are the reference's, to the digits extxyz keeps
        ref = f.copy()
        ref.calc = EMT()
        assert abs(f.get_potential_energy() - ref.get_potential_energy()) < 1e-6
        np.testing.assert_allclose(f.get_forces(), ref.get_forces(), atol=1e-6)
        np.testing.assert_allclose(f.get_stress(), ref.get_stress(), atol=1e-7)
    for f in frames[2:]:  # selected frames carry the uncertainty that chose them and the prior errors
        assert f.info["learn_uncertainty"] > 0 and f.info["learn_error_forces_mae"] >= 0
        assert f.arrays["learn_forces_uncertainty"].shape == (len(f),)
        assert f.info["learn_uncertainty"] == pytest.approx(f.arrays["learn_forces_uncertainty"].max())
        dF = f.arrays["learn_model_forces"] - f.get_forces()
        assert f.info["learn_error_forces_mae"] == pytest.approx(np.abs(dF).mean(), abs=1e-6)
    model = load_model(out / "model.mlff")
    assert model.family == "gap" and model.calibration is not None
    meta, _ = read_archive(out / "model.mlff", load_arrays=False)
    assert meta["training"]["learn"]["calls"] == 5
    assert "call 5" in (out / "learn.log").read_text()


def test_resume_after_interrupt_gives_the_same_run(tmp_path, flaky):
    # uninterrupted
    learn(starts(), FlakyEMT(), tmp_path / "a", max_calls=6, **LOOP)
    # Ctrl-C while the reference computes call 5: calls 1-4 are kept, call 5 is lost
    flaky.calls, flaky.interrupt_at = 0, 5
    with pytest.raises(KeyboardInterrupt):
        learn(starts(), FlakyEMT(), tmp_path / "b", max_calls=6, **LOOP)
    assert len(ase.io.read(tmp_path / "b" / "data.extxyz", ":")) == 4
    flaky.interrupt_at = None
    res = learn(starts(), FlakyEMT(), tmp_path / "b", max_calls=6, resume=True, **LOOP)
    assert res.calls == 6
    a = ase.io.read(tmp_path / "a" / "data.extxyz", ":")
    b = ase.io.read(tmp_path / "b" / "data.extxyz", ":")
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.get_forces(), y.get_forces())
        np.testing.assert_equal(x.info["learn_uncertainty"], y.info["learn_uncertainty"])
    _, arrays_a = read_archive(tmp_path / "a" / "model.mlff")
    _, arrays_b = read_archive(tmp_path / "b" / "model.mlff")
    assert set(arrays_a) == set(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    # a finished run continues with a larger budget
    res = learn(starts(), FlakyEMT(), tmp_path / "b", max_calls=7, resume=True, **LOOP)
    assert res.calls == 7 and res.n_data == 7
    # its last refit kept the sparse set and reused the calibration, continuing from the QR factor
    # in the checkpoint with no design rows in memory: the uninterrupted run's model, bit for bit
    assert "calibration reused" in res.history[-1]["fit"]
    learn(starts(), FlakyEMT(), tmp_path / "c", max_calls=7, **LOOP)
    _, arrays_b = read_archive(tmp_path / "b" / "model.mlff")
    _, arrays_c = read_archive(tmp_path / "c" / "model.mlff")
    for k in arrays_c:
        np.testing.assert_array_equal(arrays_b[k], arrays_c[k], err_msg=k)


def test_pressure_rescales_periodic_cells(tmp_path):
    # -P: a Berendsen barostat; at 5 GPa the cells of the selected frames shrink
    res = learn(starts(), "ase.calculators.emt:EMT", tmp_path / "run", max_calls=4, pressure=5.0,
                **{**LOOP, "segment_steps": 20})
    assert res.n_data == 4
    frames = ase.io.read(tmp_path / "run" / "data.extxyz", ":")
    for f in frames[2:]:
        start = starts()[f.info["learn_start"]]
        assert f.get_volume() < start.get_volume()


def test_reference_failure_is_recorded_and_skipped(tmp_path, flaky):
    flaky.fail_at = 4
    res = learn(starts(), FlakyEMT(), tmp_path / "run", max_calls=5, **LOOP)
    assert res.calls == 5 and res.n_data == 4 and res.n_failed == 1
    failures = json.loads((tmp_path / "run" / "failures.json").read_text())
    assert len(failures) == 1 and failures[0]["call"] == 4 and "SCF not converged" in failures[0]["error"]
    assert len(ase.io.read(tmp_path / "run" / "failures.extxyz", ":")) == 1
    assert [f.info["learn_call"] for f in ase.io.read(tmp_path / "run" / "data.extxyz", ":")] == [1, 2, 3, 5]


def test_non_finite_reference_is_a_failure():
    class NaNCalc(EMT):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["forces"] = self.results["forces"] * np.nan

    with pytest.raises(Exception, match="non-finite forces"):
        label(NaNCalc(), starts()[0])


def test_labels_ignore_constraints():
    # fixed atoms of a start structure stay fixed in the MD, but their labels are the true forces
    from ase.constraints import FixAtoms

    atoms = starts()[0]
    atoms.set_constraint(FixAtoms(indices=[0, 1]))
    free = atoms.copy()
    free.set_constraint()
    free.calc = EMT()
    np.testing.assert_array_equal(label(EMT(), atoms)["forces"], free.get_forces())
    assert np.abs(label(EMT(), atoms)["forces"][:2]).max() > 1e-3


def test_spec_parsing():
    spec = parse_spec(["mod.sub:Calc", "method=GFN2-xTB", "kpts=(4,4,4)", "encut=520", "x=__import__('os')"])
    assert (spec.module, spec.name) == ("mod.sub", "Calc")
    # literals are read, anything else stays text: nothing is evaluated
    assert spec.kwargs == {"method": "GFN2-xTB", "kpts": (4, 4, 4), "encut": 520, "x": "__import__('os')"}
    assert parse_spec("tblite.ase:TBLite method=GFN2-xTB").kwargs == {"method": "GFN2-xTB"}
    for bad in ("EMT", "ase.calculators.emt:", "a b:C", "m:C novalue"):
        with pytest.raises(ReferenceSpecError):
            parse_spec(bad)
    with pytest.raises(ReferenceSpecError, match="cannot import module 'no_such_module_xyz'"):
        parse_spec("no_such_module_xyz:Calc").build()
    with pytest.raises(ReferenceSpecError, match="has no 'NoSuch'"):
        parse_spec("ase.calculators.emt:NoSuch").build()


def test_cli_errors(tmp_path, capsys):
    start = tmp_path / "start.xyz"
    ase.io.write(start, starts()[0])
    out = tmp_path / "out"
    # a SPEC that does not import: usage error, nothing written
    assert main(["learn", str(start), "--reference", "no_such_module_xyz:Calc", "-o", str(out)]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert not out.exists()
    # a family without its own variance needs a committee
    assert main(["learn", str(start), "--reference", "ase.calculators.emt:EMT", "--family", "mff",
                 "-o", str(out)]) == 2
    assert "--committee" in capsys.readouterr().err
    # an existing, non-empty folder is never overwritten
    out.mkdir()
    (out / "data.extxyz").write_text("precious")
    assert main(["learn", str(start), "--reference", "ase.calculators.emt:EMT", "-o", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "data.extxyz").read_text() == "precious"
    # --resume where there is no checkpoint
    assert main(["learn", str(start), "--reference", "ase.calculators.emt:EMT", "-o", str(out), "--resume"]) == 2
    assert "no checkpoint.ckpt" in capsys.readouterr().err
    assert main(["learn", str(start), "--reference", "ase.calculators.emt:EMT", "-o", str(tmp_path / "new"),
                 "--resume"]) == 2
    assert not (tmp_path / "new").exists()


def test_cli_run_and_resume_with_other_settings(tmp_path, capsys):
    start = tmp_path / "start.xyz"
    ase.io.write(start, starts())
    out = tmp_path / "out"
    opts = [x for k, v in GAP.items() for x in ("--option", f"{k}={v}")]
    common = ["learn", str(start), "--reference", "ase.calculators.emt:EMT", "-T", "300", "--segment-steps", "6",
              "-o", str(out), *opts]
    assert main([*common, "--max-calls", "3"]) == 0
    text = capsys.readouterr().out
    assert "call 3" in text and "stopped: max_calls" in text
    assert len(ase.io.read(out / "data.extxyz", ":")) == 3
    # another temperature is another run: refused, naming the setting
    assert main([*common[:5], "500", *common[6:], "--max-calls", "4", "--resume"]) == 2
    assert "temperatures" in capsys.readouterr().err
    assert main([*common, "--max-calls", "4", "--resume"]) == 0
    assert len(ase.io.read(out / "data.extxyz", ":")) == 4


def test_committee_family(tmp_path):
    # a family without its own variance learns through a committee (refitted from scratch)
    res = learn(cu8_starts(), "ase.calculators.emt:EMT", tmp_path / "run", family="mff", committee=2, max_calls=6,
                segment_steps=6, options=dict(rc2=4.0, rc3=3.0, n_sparse3=50, no_optimise=True, h2=0.2, h3=0.3))
    assert res.n_data == 6 and res.fits == 3
    model = load_model(tmp_path / "run" / "model.mlff")
    assert model.family == "committee"
    frames = ase.io.read(tmp_path / "run" / "data.extxyz", ":")
    assert frames[-1].info["learn_uncertainty"] > 0


def test_gap_refit_after_restore_is_the_uninterrupted_refit():
    # a refit that keeps the sparse set adds the new frame's rows to the last fit's QR factor and
    # reuses the rows kept for the calibration; the same refit after a restore (the factor from
    # the state, every row computed again for the calibration) gives the same model, bit for bit
    from ase.md.langevin import Langevin
    from ase.units import fs

    from ase_mlff.data import Dataset
    from ase_mlff.workflows.learn import LearnSettings
    from ase_mlff.workflows.learn.fitting import GapFitter

    atoms = starts()[0]
    atoms.calc = EMT()
    dyn = Langevin(atoms, 2 * fs, temperature_K=600, friction=0.02 / fs, fixcm=False, rng=np.random.default_rng(0))
    frames = []
    for _ in range(6):
        dyn.run(5)
        frames.append(Dataset.from_atoms([atoms])[0])  # the labels: EMT's results on the atoms
    settings = LearnSettings(reference="emt", reselect_growth=100.0, novelty=1e-9)
    a = GapFitter(dict(GAP, n_sparse=12), settings, None)
    a.fit(frames[:5])
    meta, arrays = a.state()
    model_a, _, _, how = a.fit(frames)
    assert "kept" in how and "calibrated now" in how and a.n_factored == 6
    assert frames[0].forces is not None and frames[0].stress is not None
    b = GapFitter(dict(GAP, n_sparse=12), settings, None)
    b.restore(meta, arrays)  # the sparse set and the factor, no rows
    model_b, _, _, _ = b.fit(frames)
    for k, v in model_a.get_arrays().items():
        np.testing.assert_array_equal(v, model_b.get_arrays()[k], err_msg=k)


# a BPNN committee small enough that a fresh fit takes about a second and a fine-tune much less
BPNN = dict(cutoff=4.0, hidden=(8,), n_radial=3, n_eta=2, zetas=(1,), n_valid=1, n_test=1, epochs=6)


def cu8_starts():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    out = []
    for k in range(4):
        a = cu.repeat((2, 1, 1))
        a.rattle(0.05, seed=k)
        out.append(a)
    return out


def _same_run(a, b):
    fa, fb = ase.io.read(a / "data.extxyz", ":"), ase.io.read(b / "data.extxyz", ":")
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_equal(x.info["learn_uncertainty"], y.info["learn_uncertainty"])
    _, arrays_a = read_archive(a / "model.mlff")
    _, arrays_b = read_archive(b / "model.mlff")
    assert set(arrays_a) == set(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)


def test_network_committee_fine_tunes_and_resumes_bit_identically(tmp_path, flaky, monkeypatch):
    # a bpnn committee: a fresh fit first, then each refit fine-tunes the current members for a
    # quarter of the epochs; each member keeps its frames and new frames join by seeded draws;
    # once the frames have grown 1.5x since the last fresh fit, a fresh fit again
    kw = dict(family="bpnn", committee=2, max_calls=7, segment_steps=6, options=BPNN)
    res = learn(cu8_starts(), FlakyEMT(), tmp_path / "a", **kw)
    hows = [h["fit"] for h in res.history if "fit" in h]
    assert hows == ["fresh fit (first fit)", "fine-tuned from fit 1 for 1 epochs",
                    "fresh fit (the frames grew 1.50x since the last fresh fit)", "fine-tuned from fit 3 for 1 epochs"]
    meta, _ = read_archive(tmp_path / "a" / "model.mlff", load_arrays=False)
    rec = meta["training"]
    assert rec["how"] == "fine-tuned from fit 3 for 1 epochs"
    frames = rec["frames"]
    assert sorted({i for m in frames["members"] for i in m} | set(frames["held_out"])) <= list(range(7))
    assert not set(frames["held_out"]) & {i for m in frames["members"] for i in m}
    assert "fine-tuned from fit 3" in (tmp_path / "a" / "learn.log").read_text()
    # Ctrl-C while the reference computes call 6, then --resume: the same data and model
    flaky.calls, flaky.interrupt_at = 0, 6
    with pytest.raises(KeyboardInterrupt):
        learn(cu8_starts(), FlakyEMT(), tmp_path / "b", **kw)
    flaky.interrupt_at = None
    learn(cu8_starts(), FlakyEMT(), tmp_path / "b", resume=True, **kw)
    _same_run(tmp_path / "a", tmp_path / "b")
    # killed after the model file of fit 4 was written, before the checkpoint that follows it: the
    # resumed run fits again from the committee of fit 3, which the checkpoint keeps
    from ase_mlff.workflows.learn.loop import Learner

    original = Learner.checkpoint

    def killed_after_fit_4(self):
        if self.st["fits"] == 4 and not getattr(Learner, "_killed", False):
            Learner._killed = True
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(Learner, "checkpoint", killed_after_fit_4)
    flaky.calls = 0
    with pytest.raises(KeyboardInterrupt):
        learn(cu8_starts(), FlakyEMT(), tmp_path / "c", **kw)
    monkeypatch.setattr(Learner, "checkpoint", original)
    res = learn(cu8_starts(), FlakyEMT(), tmp_path / "c", resume=True, **kw)
    assert [h["fit"] for h in res.history if "fit" in h] == hows
    _same_run(tmp_path / "a", tmp_path / "c")


def test_finetune_epochs_option(tmp_path):
    from ase_mlff.errors import InputError
    from ase_mlff.workflows.learn import LearnSettings
    from ase_mlff.workflows.learn.fitting import CommitteeFitter

    s = LearnSettings(reference="emt", family="bpnn", committee=2)
    assert CommitteeFitter(dict(BPNN, epochs=40), s, None).finetune_epochs == 10
    assert CommitteeFitter({}, s, None).finetune_epochs == 25  # a quarter of the recipe's 100
    assert CommitteeFitter(dict(BPNN, finetune_epochs=3), s, None).finetune_epochs == 3
    with pytest.raises(InputError, match="finetune_epochs must be a positive integer"):
        CommitteeFitter({"finetune_epochs": 0}, s, None)
    with pytest.raises(InputError, match="finetune must be True or False"):
        CommitteeFitter({"finetune": "no"}, s, None)
    assert CommitteeFitter({"finetune": False}, s, None)._why_fresh(None, 5) == "fresh fit (first fit)"
    with pytest.raises(InputError, match="fresh_fit_growth must be a number > 1"):
        CommitteeFitter({"fresh_fit_growth": 1.0}, s, None)
    with pytest.raises(InputError, match="mff committees are refitted from scratch"):
        CommitteeFitter({"finetune_epochs": 3}, LearnSettings(reference="emt", family="mff", committee=2), None)


def test_network_committee_falls_back_to_a_fresh_fit_when_the_warm_start_is_refused():
    # a committee that cannot carry over (here: 3 members for a committee of 2; in a run, e.g. a
    # new element for a BPNN, tests/test_committee.py) makes that refit fresh, saying why, and the
    # next one fine-tunes again
    from ase_mlff.data import Dataset
    from ase_mlff.models.committee import CommitteeModel
    from ase_mlff.workflows.learn import LearnSettings
    from ase_mlff.workflows.learn.fitting import CommitteeFitter

    labelled = []
    for k, a in enumerate(cu8_starts() + cu8_starts()):
        a.rattle(0.05, seed=20 + k)
        a.calc = EMT()
        a.get_forces()  # the labels: EMT's results on the atoms
        labelled.append(Dataset.from_atoms([a])[0])
    fitter = CommitteeFitter(dict(BPNN, fresh_fit_growth=10.0), LearnSettings(reference="emt", family="bpnn",
                                                                           committee=2), None)
    first, _, _, how = fitter.fit(labelled[:4])
    assert how == "fresh fit (first fit)"
    three = CommitteeModel([*first.members, first.members[0]], first.mean_model)
    second, rec, _, how = fitter.fit(labelled[:5], three)
    assert how.startswith("fresh fit (warm start refused: start_from has 3 members") and rec["how"] == how
    _, _, _, how = fitter.fit(labelled[:6], second)
    assert how == "fine-tuned from fit 2 for 1 epochs"


@pytest.mark.parametrize("layout", ["each", "ramp"])
def test_walkers_cover_the_temperatures(tmp_path, layout):
    # each: one walker per start and temperature, taking turns start by start, temperature by
    # temperature, each at its own temperature; ramp: one walker per start, all starting at the
    # first temperature (a quiet turn moves it on)
    res = learn(starts(), "ase.calculators.emt:EMT", tmp_path / "run", max_calls=6, walkers=layout,
                **{**LOOP, "threshold": 100.0})  # no crossing: every turn sends its most uncertain frame
    assert res.n_data == 6
    frames = ase.io.read(tmp_path / "run" / "data.extxyz", ":")
    got = [(f.info["learn_walker"], f.info["learn_start"], f.info["learn_temperature"]) for f in frames[2:]]
    if layout == "each":
        assert got == [(0, 0, 300), (1, 1, 300), (2, 0, 700), (3, 1, 700)]
    else:
        assert got == [(0, 0, 300), (1, 1, 300), (0, 0, 700), (1, 1, 700)]
    meta, _ = read_archive(tmp_path / "run" / "checkpoint.ckpt", load_arrays=False)
    assert [(w["start"], w["t_index"]) for w in meta["walkers"]] == (
        [(0, 0), (1, 0), (0, 1), (1, 1)] if layout == "each" else [(0, 1), (1, 1)])
    with pytest.raises(Exception, match="walkers must be"):
        learn(starts(), "ase.calculators.emt:EMT", tmp_path / "other", walkers="grid", **LOOP)


def md_frames(n: int, seed: int = 0):
    """``n`` labelled EMT frames from Langevin MD of the two start structures (alternating), the
    vacancy cell's frames with config_type "vacancy"."""
    from ase.md.langevin import Langevin
    from ase.units import fs

    from ase_mlff.data import Dataset

    walkers = []
    for k, atoms in enumerate(starts()):
        atoms.set_constraint()
        atoms.calc = EMT()
        if k == 1:
            atoms.info["config_type"] = "vacancy"
        walkers.append((atoms, Langevin(atoms, 2 * fs, temperature_K=800, friction=0.02 / fs, fixcm=False,
                                        rng=np.random.default_rng(seed + k))))
    frames = []
    for i in range(n):
        atoms, dyn = walkers[i % 2]
        dyn.run(4)
        frames.append(Dataset.from_atoms([atoms])[0])
    return frames


@pytest.mark.parametrize("extra", [{}, {"reference_energies": "Cu=-0.05",
                                        "sigma_config_type": "vacancy=0.003,0.05,0.03"}])
def test_gap_incremental_refit_is_the_fit_from_scratch(extra):
    # rows added to the kept QR factor give the weights of a QR of all rows on the same sparse
    # set (to rounding), with fixed e0 and per-config_type sigmas too (each frame's own weights)
    from ase_mlff.data import Dataset
    from ase_mlff.training.gap_train import fit_gap
    from ase_mlff.workflows.learn import LearnSettings
    from ase_mlff.workflows.learn.fitting import GapFitter

    frames = md_frames(10)
    settings = LearnSettings(reference="emt", reselect_growth=100.0, novelty=1e-9)
    # rounding moves the weights by ~cond(R) * 1e-16 whichever way they are computed: cond(R) is
    # ~1e9 at the default jitter 1e-8 (two QRs from scratch of the rows in another order differ
    # by 7e-8 of the weight norm there, the update by 3e-8), ~1e8 at jitter 1e-6
    fitter = GapFitter(dict(GAP, n_sparse=12, jitter=1e-6, **extra), settings, None)
    fitter.fit(frames[:4])
    for n in (5, 6, 8, 10):  # one and two new frames at a time
        model, record, _, how = fitter.fit(frames[:n])
        assert "kept" in how and record["n_frames"] == n
    sp = fitter.sparse
    resume = ({"stage": "design", "n_sparse": sp["n_sparse"], "n_environments": 0},
              {"sparse": sp["sparse"], "pair_sparse": sp["pair_sparse"]})
    scratch, _ = fit_gap(Dataset(frames), np.arange(10), fitter.opts, log=lambda msg: None, quiet=True,
                         resume=resume, reference=fitter.reference)
    x, x0 = model.parameters_vector(), scratch.parameters_vector()
    assert np.linalg.norm(x - x0) <= 1e-8 * np.linalg.norm(x0)
    if extra:
        np.testing.assert_array_equal(model.e0.numpy(), [-0.05])  # fixed, not fitted
    # the same posterior: R^T R (R is unique up to the signs of its rows)
    R, R0 = model.posterior_r.numpy(), scratch.posterior_r.numpy()
    T = len(R) - (1 if extra else 0)
    np.testing.assert_allclose(R[:T, :T].T @ R[:T, :T], R0[:T, :T].T @ R0[:T, :T],
                               atol=1e-10 * np.abs(R0[:T, :T].T @ R0[:T, :T]).max())


def test_gap_calibration_on_a_schedule():
    # the leave-one-frame-out pass runs at a new sparse set and when the labelled environments
    # have grown by recalibrate_growth since the last one; the refits between reuse it; the
    # checkpoint state holds the factor (T + 1)^2, not the design rows
    from ase_mlff.workflows.learn import LearnSettings
    from ase_mlff.workflows.learn.fitting import GapFitter

    frames = md_frames(8)
    settings = LearnSettings(reference="emt", reselect_growth=100.0, novelty=1e-9, recalibrate_growth=1.5)
    fitter = GapFitter(dict(GAP, n_sparse=12), settings, None)
    _, rec, loo, how = fitter.fit(frames[:4])  # 30 atoms: next calibration at 45
    assert "chosen" in how and "calibrated now" in how
    assert rec["calibration"]["calibrated"] == "calibrated on 4 frames at fit 1" and loo > 0
    for n in (5, 6):  # 38, 45 atoms
        model, rec, loo_n, how = fitter.fit(frames[:n])
        assert ("calibrated now" in how) == (n == 6), how
    assert rec["calibration"]["calibrated"] == "calibrated on 6 frames at fit 3" and loo_n != loo
    model, rec, loo_7, how = fitter.fit(frames[:7])
    assert "calibration reused (calibrated on 6 frames at fit 3)" in how and loo_7 == loo_n
    assert model.calibration == rec["calibration"]["factors"]
    meta, arrays = fitter.state()
    T = model.n_parameters
    assert set(arrays) == {"fit_sparse", "fit_pair_sparse", "fit_factor"} and arrays["fit_factor"].shape == (T + 1,) * 2
    # recalibrate_growth 1 calibrates at every fit; below 1 is refused
    every = GapFitter(dict(GAP, n_sparse=12), LearnSettings(reference="emt", reselect_growth=100.0, novelty=1e-9,
                                                              recalibrate_growth=1.0), None)
    every.fit(frames[:4])
    assert "calibrated now" in every.fit(frames[:5])[3]
    from ase_mlff.errors import InputError

    with pytest.raises(InputError, match="recalibrate_growth"):
        LearnSettings(reference="emt", recalibrate_growth=0.5).check()
