"""Workflows (MD, relaxation, phonons, EOS, evaluation) and their ase-mlff subcommands.

Shipped potentials are used where present in potentials/ (tests skip with the reason while
they are missing); everything else runs on the analytic test potential (tests only).
"""

import io
import os
import signal

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from ase_mlff import MLFFCalculator, load
from ase_mlff.io import save_model
from ase_mlff.workflows import equation_of_state, evaluate, phonons, relax, run_md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POTENTIALS = os.path.join(ROOT, "potentials")
ETHANOL_MODEL = os.path.join(POTENTIALS, "ethanol_sgdml.mlff")
ETHANOL_START = os.path.join(POTENTIALS, "ethanol_start.xyz")
NI_MODEL = os.path.join(POTENTIALS, "ni_mff.mlff")
NI_DATA = os.path.join(ROOT, "tests", "data", "ni_mlearn_20.extxyz")
ETHANOL_DATA = os.path.join(ROOT, "tests", "data", "rmd17_ethanol_300.npz")

need_ethanol = pytest.mark.skipif(
    not (os.path.exists(ETHANOL_MODEL) and os.path.exists(ETHANOL_START)),
    reason="shipped sGDML potential potentials/ethanol_sgdml.mlff (+ ethanol_start.xyz) not there yet",
)
need_ni = pytest.mark.skipif(not os.path.exists(NI_MODEL),
                             reason="shipped MFF potential potentials/ni_mff.mlff not there yet")

A_CU = 3.18  # lattice constant (Å) of fcc Cu at zero pressure for the analytic potential with cutoff 3.6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _analytic(three_body=0.05):
    from analytic_potential import AnalyticTestPotential

    return AnalyticTestPotential(species=(13, 29), cutoff=3.6, three_body=three_body)


@pytest.fixture(scope="module")
def analytic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "analytic.mlff"
    save_model(_analytic(), path)
    return str(path)


@pytest.fixture(scope="module")
def analytic_pair_file(tmp_path_factory):
    """Without the (quadratic-cost) 3-body term: faster MD."""
    path = tmp_path_factory.mktemp("models") / "analytic_pair.mlff"
    save_model(_analytic(three_body=0.0), path)
    return str(path)


def _cu(n=2, a=A_CU, cubic=False):
    atoms = bulk("Cu", "fcc", a=a, cubic=cubic) * (n, n, n)
    atoms[0].symbol = "Al"
    return atoms


@pytest.fixture(scope="module")
def periodic(tmp_path_factory, analytic_pair_file):
    """(model file, structure file): the shipped Ni MFF when present, else the analytic potential."""
    d = tmp_path_factory.mktemp("periodic")
    if os.path.exists(NI_MODEL):
        atoms = bulk("Ni", "fcc", a=3.52, cubic=True) * (2, 2, 2)
        model = NI_MODEL
    else:
        atoms = _cu(2)
        model = analytic_pair_file
    path = str(d / "start.extxyz")
    write(path, atoms)
    return model, path


@pytest.fixture(scope="module")
def molecule(tmp_path_factory, analytic_file):
    """(model file, structure file) of an isolated molecule: shipped ethanol sGDML, else an
    analytic Cu-Al cluster."""
    if os.path.exists(ETHANOL_MODEL) and os.path.exists(ETHANOL_START):
        return ETHANOL_MODEL, ETHANOL_START
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True)
    atoms.pbc = False
    atoms.center(vacuum=5.0)
    atoms[1].symbol = "Al"
    path = str(tmp_path_factory.mktemp("molecule") / "cluster.xyz")
    write(path, atoms)
    return analytic_file, path


def cli(argv):
    from ase_mlff.cli import main

    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------ NVE energy conservation
def test_nve_conserves_energy_analytic():
    atoms = _cu(2)
    res = run_md(atoms, MLFFCalculator(_analytic()), ensemble="nve", temperature=300, timestep=1.0,
                 steps=40, seed=1)
    assert res.steps == 40 and not res.interrupted and len(res.etot) == 41
    assert res.temperature.max() > 50
    # 1 fs on a stiff many-body potential: Etot constant to well below thermal energy
    assert res.max_energy_deviation / len(atoms) < 5e-4  # eV/atom
    assert abs(res.drift) < 0.01  # eV/atom/ps


@need_ethanol
def test_nve_conserves_energy_ethanol_sgdml():
    atoms = read(ETHANOL_START)
    res = run_md(atoms, load(ETHANOL_MODEL), ensemble="nve", temperature=300, timestep=0.5, steps=200, seed=1)
    assert res.max_energy_deviation < 0.02  # eV for the whole molecule (kT at 300 K = 26 meV)
    assert abs(res.drift) < 0.005  # eV/atom/ps


@need_ni
def test_nve_conserves_energy_ni_mff():
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True) * (2, 2, 2)
    res = run_md(atoms, load(NI_MODEL), ensemble="nve", temperature=300, timestep=2.0, steps=100, seed=1)
    assert res.max_energy_deviation / len(atoms) < 1e-3
    assert abs(res.drift) < 0.005


# ------------------------------------------------------------------------------ NVT / NPT
def test_nvt_langevin_heats_a_cold_crystal():
    atoms = _cu(2)
    calc = MLFFCalculator(_analytic(three_body=0.0))
    res = run_md(atoms, calc, ensemble="nvt", temperature=600, timestep=2.0, steps=60, friction=0.05, seed=3,
                 init_velocities=False)
    assert res.temperature[0] == 0.0
    assert res.temperature[-20:].mean() > 150


def test_npt_volume_responds_to_pressure():
    mean_volume = {}
    for pressure in (0.0, 20.0):
        atoms = _cu(2)
        res = run_md(atoms, MLFFCalculator(_analytic(three_body=0.0)), ensemble="npt", temperature=100,
                     pressure=pressure, timestep=1.0, steps=40, tdamp=20, pdamp=30, seed=1)
        assert res.pressure_gpa is not None and res.volume is not None
        mean_volume[pressure] = res.volume[10:].mean()
    v0 = _cu(2).get_volume()
    assert mean_volume[20.0] < mean_volume[0.0] - 0.02 * v0
    assert abs(mean_volume[0.0] / v0 - 1) < 0.02


def test_npt_needs_stress_and_periodicity(molecule):
    from ase_mlff.errors import InputError

    model, path = molecule
    atoms = read(path)
    with pytest.raises(InputError, match="NPT"):
        run_md(atoms, load(model), ensemble="npt", steps=1)


# ------------------------------------------------------------------------------ phonons
def test_phonons_displacements_agree_with_analytic_hessian(tmp_path):
    calc = MLFFCalculator(_analytic())
    atoms = bulk("Cu", "fcc", a=A_CU)
    fd = phonons(atoms, calc, supercell=2, method="displacement", displacement=0.01, npoints=9, mesh=6)
    an = phonons(atoms, calc, supercell=2, method="hessian", npoints=9, mesh=6, outdir=tmp_path)
    qs = [[0.5, 0, 0.5], [0.5, 0.5, 0.5], [0.25, 0, 0.25], [0.375, 0.375, 0.75], [0.1, 0.2, 0.3]]
    f_fd = np.array([fd.frequencies_at(q) for q in qs])
    f_an = np.array([an.frequencies_at(q) for q in qs])
    assert f_an.min() > 1.0 and f_an.max() < 30  # THz: a stable crystal, sensible unit
    np.testing.assert_allclose(f_fd, f_an, rtol=2e-3, atol=5e-3)
    for a, b in zip(fd.frequencies, an.frequencies):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-2)
    np.testing.assert_allclose(an.frequencies_at([0, 0, 0]), 0, atol=1e-3)  # acoustic sum rule
    # phonopy's files reload to the same frequencies
    import phonopy

    names = sorted(os.listdir(tmp_path))
    assert names == ["band.yaml", "phonons.png", "phonopy_params.yaml", "total_dos.dat"]
    again = phonopy.load(str(tmp_path / "phonopy_params.yaml"))
    np.testing.assert_allclose(again.run_qpoints([[0.5, 0, 0.5]]).frequencies[0], f_an[0], atol=1e-8)


def test_band_path_connections_and_labels():
    from ase_mlff.workflows import band_path

    segments, connections, labels = band_path(bulk("Ni").cell, None, npoints=5)
    assert len(segments) == len(connections)
    assert len(labels) == len(segments) + 1 + sum(1 for c in connections[:-1] if not c)
    assert labels[0] == r"$\Gamma$" and all(s.shape == (5, 3) for s in segments)
    segments, connections, labels = band_path(bulk("Ni").cell, "GXL", npoints=3)
    assert len(segments) == 2 and connections == [True, False]
    np.testing.assert_allclose(segments[0][-1], [0.5, 0, 0.5])  # X of the ase fcc primitive cell


# ------------------------------------------------------------------------------ relax, eos, eval (API)
def test_cell_relaxation_under_pressure():
    calc = MLFFCalculator(_analytic(three_body=0.0))
    results = {}
    for p in (0.0, 10.0):
        atoms = _cu(1, a=A_CU * 1.03)
        atoms.rattle(0.02, seed=1)
        res = relax(atoms, calc, optimizer="BFGS", fmax=0.005, steps=100, cell=True, pressure=p)
        assert res.converged, res.summary()
        assert abs(res.pressure_gpa - p) < 0.2
        results[p] = res.volume
    assert results[10.0] < results[0.0]


def test_eos_of_the_analytic_crystal(tmp_path):
    calc = MLFFCalculator(_analytic())
    atoms = bulk("Cu", "fcc", a=A_CU)
    res = equation_of_state(atoms, calc, volumes=(0.94, 1.06), npoints=7, outdir=tmp_path)
    assert abs(res.v0 / atoms.get_volume() - 1) < 0.02
    # B from the fit matches -V dP/dV of the model's own stress at V0
    slope = np.polyfit(res.volumes, res.pressures_gpa, 1)[0]
    assert res.bulk_modulus == pytest.approx(-res.v0 * slope, rel=0.1)
    assert 50 < res.bulk_modulus < 1000
    assert (tmp_path / "eos.png").stat().st_size < 200_000 and (tmp_path / "eos.dat").exists()


def test_evaluate_reports_known_errors_in_mev(tmp_path):
    """Labels = model + known offsets: the reported errors must equal them, in meV units."""
    calc = MLFFCalculator(_analytic())
    frames = []
    rng = np.random.default_rng(0)
    for k in range(5):
        atoms = _cu(1, a=A_CU * (1 + 0.01 * k), cubic=True)
        atoms.rattle(0.05, rng=rng)
        atoms.calc = calc
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms.calc = SinglePointCalculator(atoms, energy=e - 0.010 * len(atoms), forces=f + 0.002,
                                           stress=s - 0.001)
        frames.append(atoms)
    path = tmp_path / "labelled.extxyz"
    write(path, frames)
    from ase_mlff.data import read as read_data

    res = evaluate(calc, read_data(path), batch_size=2, outdir=tmp_path)
    m = res.metrics()
    # the labels went through extxyz text, which keeps 8 decimals (±5e-9 eV, eV/Å, eV/Å³ per
    # number, i.e. ±5e-6 meV): that rounding, not the arithmetic, bounds the agreement
    written = 5e-6
    assert m["energy_per_atom_mae_meV"] == pytest.approx(10.0, abs=written)
    assert m["forces_mae_meV_per_A"] == pytest.approx(2.0, abs=written)
    assert m["forces_per_element"]["Cu"]["rmse_meV_per_A"] == pytest.approx(2.0, abs=written)
    assert set(m["forces_per_element"]) == {"Al", "Cu"}
    assert m["forces_per_element"]["Al"]["n_atoms"] == 5 and m["forces_per_element"]["Cu"]["n_atoms"] == 15
    assert m["stress_mae_meV_per_A3"] == pytest.approx(1.0, abs=written)
    assert (tmp_path / "parity.png").exists() and (tmp_path / "eval_metrics.json").exists()


# ------------------------------------------------------------------------------ Ctrl-C
@pytest.mark.parametrize("ext", [".traj", ".extxyz"])
def test_interrupt_keeps_trajectory_readable(tmp_path, ext):
    atoms = _cu(1, cubic=True)
    calc = MLFFCalculator(_analytic(three_body=0.0))
    traj, log = tmp_path / f"md{ext}", tmp_path / "md.log"
    stop = {}

    def interrupt():
        if stop.setdefault("n", 0) == 7:
            raise KeyboardInterrupt
        stop["n"] += 1

    out = io.StringIO()
    res = run_md(atoms, calc, ensemble="nvt", steps=100, trajectory=traj, traj_interval=2, logfile=log,
                 log_interval=2, observers=[(interrupt, 1)], summary_stream=out, seed=0)
    assert res.interrupted and res.steps == 7
    frames = read(traj, ":")
    assert len(frames) == res.trajectory_frames == 4  # steps 0, 2, 4, 6
    assert frames[-1].get_potential_energy() == pytest.approx(res.epot[6])
    rows = np.loadtxt(log)
    assert rows.shape[0] == 4 and rows[-1, 0] == 6
    assert "INTERRUPTED after 7/100 steps" in out.getvalue()


def test_sigint_stops_after_the_current_step(tmp_path):
    """A real Ctrl-C (SIGINT) during a step: the step and its frame complete, then the run stops."""
    atoms = _cu(1, cubic=True)
    calc = MLFFCalculator(_analytic(three_body=0.0))
    traj = tmp_path / "md.extxyz"
    calls = {"n": 0}

    def ctrl_c():
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    res = run_md(atoms, calc, steps=50, trajectory=traj, traj_interval=1, observers=[(ctrl_c, 1)])
    assert res.interrupted and res.steps == 3
    assert len(read(traj, ":")) == 4  # steps 0..3, all whole frames


# ------------------------------------------------------------------------------ the CLI end to end
def test_cli_md_nve_molecule(molecule, tmp_path, capsys):
    model, path = molecule
    # output directories that do not exist yet are created
    traj, log = tmp_path / "traj" / "nve.extxyz", tmp_path / "logs" / "nve.log"
    assert cli(["md", model, path, "-n", 20, "-T", 300, "-o", traj, "--traj-interval", 5, "--log", log,
                "--log-interval", 5, "--seed", 1, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "NVE: 20/20 steps" in out and "drift" in out
    # the run says which threads it uses and whether idle ones sleep (busy machines: issue 21)
    assert "threads: " in out and "for ase-mlff's kernels" in out and "OMP_WAIT_POLICY" in out
    assert len(read(traj, ":")) == 5
    header = open(log).readline()
    assert "Epot[eV]" in header and "P[GPa]" not in header  # a molecule: no pressure column


def test_cli_md_nvt_and_npt_periodic(periodic, tmp_path, capsys):
    model, path = periodic
    for ens in ("nvt", "npt"):
        traj, log = tmp_path / f"{ens}.traj", tmp_path / f"{ens}.log"
        assert cli(["md", model, path, "-e", ens, "-n", 10, "-P", 1.0, "-t", 2, "-o", traj, "--log", log,
                    "--log-interval", 5, "--traj-interval", 5, "--plot", tmp_path / f"{ens}.png"]) == 0
        captured = capsys.readouterr()
        assert f"{ens.upper()}: 10/10 steps" in captured.out
        assert "steps/s" in captured.err and "ETA" in captured.err  # the progress bar
        assert len(read(traj, ":")) == 3
        rows = np.loadtxt(log)
        assert rows.shape == (3, 8)  # step time Epot Ekin Etot T P V
        assert (tmp_path / f"{ens}.png").stat().st_size < 200_000


def test_cli_relax_cell(periodic, tmp_path, capsys):
    model, path = periodic
    atoms = read(path)
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
    atoms.positions[1] += 0.03
    start = tmp_path / "strained.extxyz"
    write(start, atoms)
    out = tmp_path / "relaxed.extxyz"
    rc = cli(["relax", model, start, "--cell", "--fmax", 0.02, "-o", out, "--trajectory", tmp_path / "r.traj",
              "--log", "none"])
    assert rc == 0, capsys.readouterr()
    text = capsys.readouterr().out
    assert "converged" in text and "volume" in text
    relaxed = read(out)
    assert np.abs(relaxed.get_forces()).max() < 0.02
    assert relaxed.get_volume() < atoms.get_volume()
    assert len(read(tmp_path / "r.traj", ":")) >= 2


def test_cli_relax_reports_non_convergence(periodic, tmp_path, capsys):
    model, path = periodic
    atoms = read(path)
    atoms.rattle(0.05, seed=3)
    start = tmp_path / "rattled.extxyz"
    write(start, atoms)
    assert cli(["relax", model, start, "--steps", 1, "--fmax", 1e-6, "-o", tmp_path / "x.extxyz",
                "--trajectory", "none", "--log", "none"]) == 3
    assert "NOT converged" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["displacement", "hessian"])
def test_cli_phonons(tmp_path, analytic_file, capsys, method):
    if os.path.exists(NI_MODEL) and method == "displacement":
        model, atoms, sc = NI_MODEL, bulk("Ni", "fcc", a=3.52), "3"
    else:
        model, atoms, sc = analytic_file, bulk("Cu", "fcc", a=A_CU), "2"
    path = tmp_path / "prim.extxyz"
    write(path, atoms)
    extra = ["--hessian"] if method == "hessian" else ["-d", "0.01"]
    assert cli(["phonons", model, path, "-s", sc, "--mesh", 8, "--npoints", 11, "--outdir", tmp_path / "ph",
                *extra]) == 0
    out = capsys.readouterr().out
    assert "THz" in out and "imaginary" not in out
    ph = tmp_path / "ph"
    for name in ("phonopy_params.yaml", "band.yaml", "total_dos.dat", "phonons.png"):
        assert (ph / name).exists(), name
    assert (ph / "phonons.png").stat().st_size < 200_000
    dos = np.loadtxt(ph / "total_dos.dat")
    assert dos.shape[1] == 2 and dos[:, 1].max() > 0


def test_cli_phonons_hessian_refused_for_gap(tmp_path, capsys):
    """GAP has no exact second derivatives (its SOAP gradient is compiled, first order only):
    --hessian must stop with an error pointing at displacements, not print wrong frequencies
    (it used to report a Γ optical mode of 9.8 THz against 14.6 by displacements)."""
    path = tmp_path / "si.extxyz"
    write(path, bulk("Si", "diamond", a=5.47))
    assert cli(["phonons", os.path.join(POTENTIALS, "si_gap.mlff"), path, "-s", 1, "--hessian",
                "--outdir", tmp_path / "ph"]) == 1
    captured = capsys.readouterr()
    assert "gap models give no analytic Hessian" in captured.err and "without --hessian" in captured.err
    assert "THz" not in captured.out and not (tmp_path / "ph" / "band.yaml").exists()


def test_cli_eos(periodic, tmp_path, capsys):
    model, path = periodic
    assert cli(["eos", model, path, "--points", 7, "--range", 0.94, 1.06, "--outdir", tmp_path]) == 0
    out = capsys.readouterr().out
    assert "V0" in out and "GPa" in out
    data = np.loadtxt(tmp_path / "eos.dat")
    assert data.shape == (7, 3)
    assert (tmp_path / "eos.png").exists()


def test_cli_eval(tmp_path, analytic_file, capsys):
    if os.path.exists(NI_MODEL):
        model, data, extra = NI_MODEL, NI_DATA, ["-i", "0:8"]
    else:
        calc = MLFFCalculator(_analytic())
        frames = []
        for k in range(4):
            atoms = _cu(1, a=A_CU * (1 + 0.01 * k))
            atoms.rattle(0.05, seed=k)
            atoms.calc = calc
            atoms.get_stress()
            frames.append(atoms)
        data = tmp_path / "d.extxyz"
        write(data, frames)
        model, extra = analytic_file, []
    assert cli(["eval", model, data, "--batch-size", 3, "--outdir", tmp_path, "--no-progress", *extra]) == 0
    out = capsys.readouterr().out
    for key in ("energy [meV/atom]", "forces [meV/Å]", "stress [meV/Å^3]", "MAE", "RMSE"):
        assert key in out
    assert (tmp_path / "parity.png").exists()


@need_ethanol
def test_cli_eval_kcal_per_mol_npz(tmp_path, capsys):
    assert cli(["eval", ETHANOL_MODEL, ETHANOL_DATA, "--energy-unit", "kcal/mol", "-i", "200:230",
                "--outdir", tmp_path, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "forces [meV/Å]" in out and "stress" not in out.split("MAE")[1]


def test_cli_reads_a_frame_by_index(tmp_path, analytic_pair_file, capsys):
    frames = [_cu(1, a=A_CU), _cu(1, a=A_CU * 1.05)]
    path = tmp_path / "two.extxyz"
    write(path, frames)
    assert cli(["eos", analytic_pair_file, path, "-i", "0", "--points", 5, "--range", 0.95, 1.05,
                "--outdir", tmp_path, "--no-plot"]) == 0
    v0_first = float(capsys.readouterr().out.split("V0")[1].split()[0])
    assert v0_first == pytest.approx(frames[0].get_volume(), rel=0.03)


def test_cli_bad_input_is_a_clear_error(tmp_path, analytic_file, capsys):
    assert cli(["md", analytic_file, tmp_path / "missing.xyz"]) == 1
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------ issue #8: reports, safety, CLI
def test_eos_reports_a0_and_residual_and_warns_at_the_window_edge():
    calc = MLFFCalculator(_analytic(three_body=0.0))
    prim, conv = bulk("Cu", "fcc", a=A_CU), bulk("Cu", "fcc", a=A_CU, cubic=True)
    r_prim = equation_of_state(prim, calc, volumes=(0.94, 1.06), npoints=7)
    r_conv = equation_of_state(conv, calc, volumes=(0.94, 1.06), npoints=7)
    # a0 from V0: fcc has 4 atoms per conventional cube, whichever cell was given
    assert r_prim.a0 == pytest.approx((4 * r_prim.v0) ** (1 / 3), rel=1e-6)
    assert r_conv.a0 == pytest.approx(r_prim.a0, rel=1e-4)
    assert r_prim.a0 == pytest.approx(A_CU, rel=0.02)
    assert "a0" in r_prim.summary() and "RMS residual" in r_prim.summary()
    assert 0 <= r_prim.residual_rms < 1e-3  # eV/atom: a smooth potential fits well
    assert not r_prim.warnings
    # the minimum near the upper end of the window: warned, with what to do
    edge = equation_of_state(prim, calc, volumes=(r_prim.v0 / prim.get_volume() - 0.16,
                                                  r_prim.v0 / prim.get_volume() + 0.01), npoints=7)
    assert any("edge" in w and "recentre" in w for w in edge.warnings), edge.summary()
    assert "warning V0 lies near the edge" in edge.summary()
    # a non-cubic lattice: the cell lengths at V0 instead of a0
    hcp = bulk("Cu", "hcp", a=A_CU / np.sqrt(2), c=A_CU / np.sqrt(2) * 1.633)
    r_hcp = equation_of_state(hcp, calc, volumes=(0.9, 1.1), npoints=7)
    assert r_hcp.a0 is None and "a b c =" in r_hcp.summary()


def test_eos_a0_of_a_supercell_is_the_lattice_constant_not_the_cell_edge():
    """A 3x3x3 supercell (of the primitive or the conventional cell) is still the same crystal:
    a0 is its conventional lattice constant, not the supercell's edge (it used to print
    9.5 Å for a 3x3x3 bcc cell of a = 3.17 Å)."""
    calc = MLFFCalculator(_analytic(three_body=0.0))
    ref = equation_of_state(bulk("Cu", "bcc", a=2.6, cubic=True), calc, volumes=(0.9, 1.1), npoints=7)
    assert ref.a0 == pytest.approx(ref.v0 ** (1 / 3), rel=1e-6)  # the 2-atom cube itself
    for cell in (bulk("Cu", "bcc", a=2.6, cubic=True).repeat(3), bulk("Cu", "bcc", a=2.6).repeat(3)):
        res = equation_of_state(cell, calc, volumes=(0.9, 1.1), npoints=7)
        assert res.a0 == pytest.approx(ref.a0, rel=1e-6), res.summary()
        assert "Im-3m" in res.summary() and "2 atoms per conventional cell" in res.summary()
    # a rattled supercell is no longer cubic: its cell lengths, labelled as such
    rattled = bulk("Cu", "bcc", a=2.6, cubic=True).repeat(2)
    rattled.rattle(0.05, seed=3)
    res = equation_of_state(rattled, calc, volumes=(0.9, 1.1), npoints=7)
    assert res.a0 is None and "a b c =" in res.summary()


def test_phonons_warn_about_a_stressed_cell():
    calc = MLFFCalculator(_analytic())
    a0 = equation_of_state(bulk("Cu", "fcc", a=A_CU), calc, volumes=(0.97, 1.03), npoints=5).a0  # P ~ 0
    relaxed = phonons(bulk("Cu", "fcc", a=a0), calc, supercell=2, npoints=3, mesh=0)
    squeezed = phonons(bulk("Cu", "fcc", a=0.95 * A_CU), calc, supercell=2, npoints=3, mesh=0)
    assert np.abs(relaxed.stress_gpa).max() < 1.0 and not any("stress" in w for w in relaxed.warnings)
    assert -np.mean(squeezed.stress_gpa[:3]) > 1.0  # compressed: positive pressure
    assert any("relax the cell first" in w for w in squeezed.warnings), squeezed.summary()
    assert "warning the input cell is under stress" in squeezed.summary()


def test_eos_and_phonons_keep_existing_output_files(periodic, tmp_path, capsys):
    model, path = periodic
    (tmp_path / "eos.dat").write_text("mine\n")
    assert cli(["eos", model, path, "--points", 5, "--range", 0.95, 1.05, "--outdir", tmp_path]) == 2  # usage
    err = capsys.readouterr().err
    assert "eos.dat" in err and "--overwrite" in err
    assert (tmp_path / "eos.dat").read_text() == "mine\n" and not (tmp_path / "eos.png").exists()
    assert cli(["eos", model, path, "--points", 5, "--range", 0.95, 1.05, "--outdir", tmp_path, "--overwrite"]) == 0
    assert np.loadtxt(tmp_path / "eos.dat").shape[0] == 5
    calc = MLFFCalculator(_analytic(three_body=0.0))
    from ase_mlff.errors import InputError

    with pytest.raises(InputError, match="phonons.png"):
        (tmp_path / "phonons.png").write_bytes(b"x")
        phonons(bulk("Cu", "fcc", a=A_CU), calc, supercell=2, npoints=3, mesh=0, outdir=tmp_path)
    assert (tmp_path / "phonons.png").read_bytes() == b"x"


@pytest.mark.parametrize("verb", ["md", "relax", "phonons", "eos", "eval"])
def test_every_workflow_help_shows_the_defaults(verb, capsys):
    """Each option that takes a value says its default in --help (on/off flags are off)."""
    import re

    with pytest.raises(SystemExit) as exc:
        cli([verb, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    options = text.split("options:", 1)[1]
    # one block per option: from a line starting with "  -" to the next such line or heading
    blocks = re.split(r"\n(?=  -|\S)", options)
    checked = 0
    for block in blocks:
        head = block.strip().split("\n")[0]
        if not head.startswith("-") or head.startswith("-h, --help"):
            continue
        takes_value = re.match(r"^(-\w+ |--[\w-]+ )[A-Z{]", head.split(",")[-1].strip() + " ") or \
            re.match(r"^-\w [A-Z{]", head)
        if takes_value:
            checked += 1
            assert "default" in " ".join(block.split()), f"{verb}: {head!r} does not show its default"
    assert checked >= 4


def test_cli_exit_codes(periodic, tmp_path, capsys, monkeypatch):
    model, path = periodic
    # usage errors: argparse, status 2, the flag named
    for argv, flag in ((["md", model, path, "-n", "-5"], "--steps"), (["md", model, path, "-T", "hot"], "--temperature"),
                       (["md", model, path, "-i", "x"], "--index"), (["eos", model, path, "--points", 3], "--points")):
        with pytest.raises(SystemExit) as exc:
            cli(argv)
        assert exc.value.code == 2, argv
        assert flag in capsys.readouterr().err, argv
    # bad data: status 1
    assert cli(["eos", model, tmp_path / "missing.extxyz", "--outdir", tmp_path]) == 1
    assert "not found" in capsys.readouterr().err
    # Ctrl-C outside the MD loop: 130 (the MD loop itself returns 130 after an interrupted run)
    import ase_mlff.workflows.eos as eos_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eos_module, "equation_of_state", interrupted)
    assert cli(["eos", model, path, "--outdir", tmp_path]) == 130
