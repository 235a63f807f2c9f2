"""MD that loses nothing and draws honest random numbers (issue #8).

* Seeded NVT: the Langevin noise is independent of the Maxwell-Boltzmann velocities, so the
  first steps with a seed behave like those without one (once, both came from one stream and
  the first kick heated the system: 278 -> 353 K on 216 Si atoms).
* Existing trajectories and logs are refused unless the run is told to append or overwrite;
  an appended run continues the first one: frames, step, time, velocities and energy.
"""

import os

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

from ase_mlff import MLFFCalculator
from ase_mlff.errors import InputError
from ase_mlff.workflows import initialize_velocities, make_integrator, run_md

A_CU = 3.18


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calc():
    from analytic_potential import AnalyticTestPotential

    return MLFFCalculator(AnalyticTestPotential(species=(13, 29), cutoff=3.6, three_body=0.0))


def _cu(n=2):
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True) * (n, n, n)
    atoms[0].symbol = "Al"
    return atoms


def cli(argv):
    from ase_mlff.cli import main

    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------ random streams
def test_first_langevin_kick_is_uncorrelated_with_the_seeded_velocities():
    """The noise the thermostat draws in step 1 against the initial velocities: correlation
    ~0 (within 4 sigma of 1/sqrt(n)); with one shared stream it was 1."""
    atoms = _cu(3)  # 108 atoms
    atoms.calc = _calc()
    corr = []
    for seed in range(5):
        initialize_velocities(atoms, 300.0, seed=seed)
        z = (atoms.get_velocities() * np.sqrt(atoms.get_masses())[:, None]).ravel()
        dyn = make_integrator(atoms, "nvt", timestep=2.0, temperature=300.0, seed=seed)
        xi = dyn.rng.standard_normal(size=(len(atoms), 3)).ravel()  # what Langevin.step draws first
        corr.append(np.corrcoef(z, xi)[0, 1])
    assert np.abs(corr).max() < 4 / np.sqrt(3 * len(atoms)), corr


def test_first_nvt_steps_with_a_seed_behave_like_unseeded_ones():
    """Relative change of T in the first two steps, seeded vs unseeded runs: the same
    distribution (means within 4 standard errors, and both near zero: the crystal starts in
    equilibrium at 300 K, and 2 fs of Langevin at 0.01/fs barely moves T on average)."""
    calc = _calc()

    def first_change(seed):
        atoms = _cu(3)
        res = run_md(atoms, calc, ensemble="nvt", temperature=300.0, timestep=2.0, friction=0.01, steps=2,
                     seed=seed)
        return res.temperature[2] / res.temperature[0] - 1

    seeded = np.array([first_change(s) for s in range(8)])
    unseeded = np.array([first_change(None) for _ in range(8)])
    se = np.sqrt(seeded.var(ddof=1) / len(seeded) + unseeded.var(ddof=1) / len(unseeded))
    assert abs(seeded.mean() - unseeded.mean()) < 4 * se + 0.01, (seeded, unseeded)
    assert abs(seeded.mean()) < 0.08, seeded


def test_seeded_runs_are_reproducible_and_seeds_differ():
    calc = _calc()
    runs = [run_md(_cu(1), calc, ensemble="nvt", steps=3, seed=s).temperature for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


# ------------------------------------------------------------------------------ nothing is lost
@pytest.mark.parametrize("which", ["trajectory", "logfile"])
def test_existing_trajectory_or_log_is_refused(tmp_path, which):
    existing = tmp_path / ("md.traj" if which == "trajectory" else "md.log")
    existing.write_text("the user's precious data\n")
    other = tmp_path / ("md.log" if which == "trajectory" else "md.traj")
    kwargs = {which: existing, ("logfile" if which == "trajectory" else "trajectory"): other}
    with pytest.raises(InputError, match=r"md\.(traj|log).*exists.*mode=\"append\".*mode=\"overwrite\""):
        run_md(_cu(1), _calc(), steps=2, **kwargs)
    assert existing.read_text() == "the user's precious data\n"
    assert not other.exists()  # refused before anything was written


def test_cli_refuses_an_existing_trajectory_naming_the_flags(tmp_path, capsys, analytic_model):
    start = tmp_path / "start.extxyz"
    _cu(1).write(start)
    traj = tmp_path / "md.traj"
    traj.write_bytes(b"precious")
    rc = cli(["md", analytic_model, start, "-n", 2, "-o", traj, "--log", tmp_path / "md.log", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--append" in err and "--overwrite" in err and "md.traj" in err
    assert traj.read_bytes() == b"precious" and not (tmp_path / "md.log").exists()


@pytest.fixture(scope="module")
def analytic_model(tmp_path_factory):
    from analytic_potential import AnalyticTestPotential

    from ase_mlff.io import save_model

    path = tmp_path_factory.mktemp("model") / "pair.mlff"
    save_model(AnalyticTestPotential(species=(13, 29), cutoff=3.6, three_body=0.0), path)
    return str(path)


@pytest.mark.parametrize("ext", [".traj", ".extxyz"])
def test_append_continues_the_run(tmp_path, ext):
    """20 NVE steps, then 20 more appended: one trajectory with every frame, step and time
    continuing, velocities from the last frame, and the energy of the first segment conserved
    across the join."""
    calc = _calc()
    traj, log = tmp_path / f"md{ext}", tmp_path / "md.log"
    first = run_md(_cu(2), calc, temperature=300, timestep=1.0, steps=20, seed=1, trajectory=traj, traj_interval=5,
                   logfile=log, log_interval=5)
    last = read(traj, -1)
    assert last.info["md_step"] == 20 and last.info["md_time_fs"] == pytest.approx(20.0)
    np.testing.assert_allclose(last.get_momenta(), first.atoms.get_momenta(), atol=1e-6)

    # a fresh copy of the start structure: the state must come from the trajectory, not from it
    second = run_md(_cu(2), calc, temperature=300, timestep=1.0, steps=20, seed=1, trajectory=traj,
                    traj_interval=5, logfile=log, log_interval=5, mode="append")
    assert second.start_step == 20 and second.steps == 20 and second.continued_from == str(traj)
    frames = read(traj, ":")
    assert [f.info["md_step"] for f in frames] == list(range(0, 45, 5))
    np.testing.assert_allclose([f.info["md_time_fs"] for f in frames], np.arange(0, 45, 5.0))
    np.testing.assert_allclose(second.time_ps, np.arange(20, 41) * 1e-3)
    # velocities continue: Ekin and Epot at the join are those at the end of the first run
    assert second.ekin[0] == pytest.approx(first.ekin[-1], rel=1e-6)
    assert second.epot[0] == pytest.approx(first.epot[-1], abs=1e-5)
    # NVE across the join: Etot stays at the first run's value (a restart from fresh
    # Maxwell-Boltzmann velocities would miss it by ~kT per atom)
    assert np.abs(second.etot - first.etot[0]).max() / len(first.atoms) < 5e-4
    rows = np.loadtxt(log)
    assert list(rows[:, 0]) == list(range(0, 45, 5))  # no duplicated or missing row at the join
    text = open(log).read()
    assert text.count("Epot[eV]") == 1 and "# continued from step 20" in text


def test_overwrite_replaces_the_files(tmp_path):
    calc = _calc()
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    run_md(_cu(1), calc, steps=10, trajectory=traj, traj_interval=1, logfile=log, log_interval=1, seed=0)
    run_md(_cu(1), calc, steps=4, trajectory=traj, traj_interval=1, logfile=log, log_interval=1, seed=0,
           mode="overwrite")
    assert len(read(traj, ":")) == 5 and np.loadtxt(log).shape[0] == 5


def test_cli_append_and_overwrite(tmp_path, capsys, analytic_model):
    start = tmp_path / "start.extxyz"
    _cu(1).write(start)
    common = ["md", analytic_model, start, "-n", 10, "-t", 1, "-o", tmp_path / "md.extxyz", "--traj-interval", 5,
              "--log", tmp_path / "md.log", "--log-interval", 5, "--seed", 3, "--no-progress"]
    assert cli(common) == 0
    assert cli(common + ["--append"]) == 0
    assert "continued from step 10" in capsys.readouterr().out
    assert [f.info["md_step"] for f in read(tmp_path / "md.extxyz", ":")] == [0, 5, 10, 15, 20]
    assert cli(common + ["--overwrite"]) == 0
    assert [f.info["md_step"] for f in read(tmp_path / "md.extxyz", ":")] == [0, 5, 10]
    with pytest.raises(SystemExit) as exc:
        cli(common + ["--append", "--overwrite"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_append_refuses_another_system(tmp_path):
    calc = _calc()
    traj = tmp_path / "md.traj"
    run_md(_cu(1), calc, steps=2, trajectory=traj, seed=0)
    with pytest.raises(InputError, match="another system"):
        run_md(_cu(2), calc, steps=2, trajectory=traj, mode="append")


# ------------------------------------------------------------------------------ NPT reports H_MTK
def test_npt_summary_reports_the_mtk_conserved_quantity(tmp_path):
    atoms = _cu(2)
    res = run_md(atoms, _calc(), ensemble="npt", temperature=300, pressure=1.0, timestep=1.0, steps=40,
                 tdamp=20, pdamp=50, seed=1)
    text = res.summary()
    assert "H_MTK" in text and "Etot    drift" not in text
    # H is conserved much better than Etot, which the thermostat and barostat change
    assert res.max_conserved_deviation < 0.2 * res.max_energy_deviation, text
    assert res.max_conserved_deviation / len(atoms) < 1e-3
    from ase_mlff.workflows.plotting import plot_md

    assert os.path.getsize(plot_md(res, tmp_path / "npt.png")) < 200_000
