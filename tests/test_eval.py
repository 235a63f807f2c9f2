"""``ase-mlff eval`` / :func:`ase_mlff.workflows.evaluate`: errors per element, per group of
frames (config_type or any info key), per frame (CSV), and refusal of unlabelled data.

Real data: tests/data/ni_mlearn_20.extxyz (20 Ni frames of five config_types, energies, forces,
stresses) with the shipped potentials/ni_mff.mlff; mixed-element checks on the analytic
test potential with known label offsets.
"""

import csv
import io
import json
import os

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from ase_mlff import MLFFCalculator
from ase_mlff.errors import InputError
from ase_mlff.workflows import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NI_MODEL = os.path.join(ROOT, "potentials", "ni_mff.mlff")
NI_DATA = os.path.join(ROOT, "tests", "data", "ni_mlearn_20.extxyz")
need_ni = pytest.mark.skipif(not os.path.exists(NI_MODEL),
                             reason="shipped MFF potential potentials/ni_mff.mlff not there yet")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(argv):
    from ase_mlff.cli import main

    return main([str(a) for a in argv])


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text):
    return float("nan") if text == "" else float(text)


@pytest.fixture(scope="module")
def ni_run(tmp_path_factory):
    """One eval of the shipped Ni model on all 20 frames: (outdir, stdout)."""
    if not os.path.exists(NI_MODEL):
        pytest.skip("shipped MFF potential potentials/ni_mff.mlff not there yet")
    out = tmp_path_factory.mktemp("eval_ni")
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(["eval", NI_MODEL, NI_DATA, "--outdir", out, "--no-progress", "--no-plot", "--batch-size", 7]) == 0
    return out, buf.getvalue()


# ------------------------------------------------------------------------------ per group, per element
def test_per_config_type_tables_add_up_to_the_overall_numbers(ni_run):
    out, text = ni_run
    m = json.loads((out / "eval_metrics.json").read_text())
    types = [a.info["config_type"] for a in read(NI_DATA, ":")]
    groups = m["per_config_type"]
    assert set(groups) == set(types) and len(groups) == 5
    for t, g in groups.items():
        assert g["n_frames"] == types.count(t)
    assert sum(g["n_frames"] for g in groups.values()) == m["n_frames"] == 20
    assert sum(g["n_atoms"] for g in groups.values()) == m["n_atoms"]
    # MAE: average of the group MAEs weighted by their counts; RMSE: root of the weighted mean square
    for q, n in (("energy_per_atom", "n_energy"), ("energy", "n_energy"), ("forces", "n_forces"),
                 ("stress", "n_stress")):
        unit = {"forces": "_meV_per_A", "stress": "_GPa"}.get(q, "_meV")
        w = np.array([g[n] for g in groups.values()], float)
        assert w.sum() == m[n]
        mae = np.array([g[f"{q}_mae{unit}"] for g in groups.values()])
        rmse = np.array([g[f"{q}_rmse{unit}"] for g in groups.values()])
        assert (w @ mae) / w.sum() == pytest.approx(m[f"{q}_mae{unit}"], rel=1e-10), q
        assert np.sqrt((w @ rmse ** 2) / w.sum()) == pytest.approx(m[f"{q}_rmse{unit}"], rel=1e-10), q
    # the printed tables: overall first, then per element, then per config_type, one row per type
    assert text.index("forces [meV/Å]") < text.index("element") < text.index("config_type")
    block = text.split("config_type", 1)[1].split("\n\n")[0].splitlines()
    rows = {line.split()[0]: line.split() for line in block[2:]}
    assert set(rows) == set(types)
    aimd = groups["AIMD-NVT"]
    assert rows["AIMD-NVT"][1:3] == [str(aimd["n_frames"]), str(aimd["n_atoms"])]
    assert float(rows["AIMD-NVT"][3]) == pytest.approx(aimd["energy_per_atom_mae_meV"], abs=1e-3)
    # the per-element table of a one-element set is the overall table
    ni = m["per_element"]["Ni"]
    assert ni["n_atoms"] == m["n_atoms"] and ni["n_frames"] == 20
    assert ni["forces_mae_meV_per_A"] == pytest.approx(m["forces_mae_meV_per_A"], rel=1e-12)
    assert ni["energy_per_atom_rmse_meV"] == pytest.approx(m["energy_per_atom_rmse_meV"], rel=1e-12)
    assert any(line.split()[:3] == ["Ni", str(m["n_atoms"]), "20"] for line in text.splitlines())


def test_csv_has_one_row_per_frame_matching_the_calculator(ni_run):
    """Per-frame numbers against the calculator applied frame by frame, independently of eval."""
    from ase_mlff import load

    out, text = ni_run
    assert f"written {out / 'eval_frames.csv'}" in text
    rows = _csv_rows(out / "eval_frames.csv")
    frames = read(NI_DATA, ":")
    assert len(rows) == len(frames) == 20
    assert list(rows[0]) == ["index", "n_atoms", "formula", "config_type", "energy_error_meV_per_atom",
                             "forces_mae_meV_per_A", "forces_rmse_meV_per_A", "forces_max_error_meV_per_A",
                             "stress_mae_GPa", "stress_rmse_GPa"]
    calc = load(NI_MODEL)
    for k, (row, atoms) in enumerate(zip(rows, frames)):
        e_ref, f_ref, s_ref = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        n = len(atoms)
        assert int(row["index"]) == k and int(row["n_atoms"]) == n and row["formula"] == f"Ni{n}"
        assert row["config_type"] == atoms.info["config_type"]
        mine = atoms.copy()
        mine.calc = calc
        de = (mine.get_potential_energy() - e_ref) / n * 1e3
        df = (mine.get_forces() - f_ref) * 1e3
        ds = (mine.get_stress() - s_ref) / units.GPa
        assert _num(row["energy_error_meV_per_atom"]) == pytest.approx(de, rel=1e-5, abs=1e-6)
        assert _num(row["forces_mae_meV_per_A"]) == pytest.approx(np.abs(df).mean(), rel=1e-5)
        assert _num(row["forces_rmse_meV_per_A"]) == pytest.approx(np.sqrt((df ** 2).mean()), rel=1e-5)
        assert _num(row["forces_max_error_meV_per_A"]) == pytest.approx(np.linalg.norm(df, axis=1).max(), rel=1e-5)
        assert _num(row["stress_mae_GPa"]) == pytest.approx(np.abs(ds).mean(), rel=1e-4)
        assert _num(row["stress_rmse_GPa"]) == pytest.approx(np.sqrt((ds ** 2).mean()), rel=1e-4)
    # and with the overall table: frame MAEs weighted by their atoms give the overall force MAE
    m = json.loads((out / "eval_metrics.json").read_text())
    n_atoms = np.array([_num(r["n_atoms"]) for r in rows])
    f_mae = np.array([_num(r["forces_mae_meV_per_A"]) for r in rows])
    assert (n_atoms @ f_mae) / n_atoms.sum() == pytest.approx(m["forces_mae_meV_per_A"], rel=1e-5)
    e = np.array([_num(r["energy_error_meV_per_atom"]) for r in rows])
    assert np.abs(e).mean() == pytest.approx(m["energy_per_atom_mae_meV"], rel=1e-5)


@need_ni
def test_group_by_another_info_key_and_file_indices(tmp_path, capsys):
    """--group-by a string info key the data reader does not keep (read again from the file),
    together with config_type; -i picks frames and the CSV's index is their index in the file."""
    assert cli(["eval", NI_MODEL, NI_DATA, "-i", "1:20:4", "--group-by", "tensoralloy_source",
                "--group-by", "config_type", "--outdir", tmp_path, "--no-plot", "--no-progress"]) == 0
    text = capsys.readouterr().out
    frames = read(NI_DATA, "1:20:4")
    sources = [a.info["tensoralloy_source"] for a in frames]
    m = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert set(m["per_tensoralloy_source"]) == set(sources) and len(sources) == 5
    assert set(m["per_config_type"]) == {a.info["config_type"] for a in frames}
    assert all(g["n_frames"] == 1 for g in m["per_tensoralloy_source"].values())
    rows = _csv_rows(tmp_path / "eval_frames.csv")
    assert [int(r["index"]) for r in rows] == [1, 5, 9, 13, 17]
    assert [r["tensoralloy_source"] for r in rows] == sources
    for r in rows:  # one frame per group: the group's energy MAE is the frame's |error|
        g = m["per_tensoralloy_source"][r["tensoralloy_source"]]
        assert g["energy_per_atom_mae_meV"] == pytest.approx(abs(_num(r["energy_error_meV_per_atom"])), rel=1e-5)
    assert "tensoralloy_source" in text and sources[0] in text
    # a key no frame has: a one-line error naming it and the keys there are; nothing written
    assert cli(["eval", NI_MODEL, NI_DATA, "--group-by", "temperature", "--outdir", tmp_path / "x",
                "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'temperature'" in err and "tensoralloy_source" in err
    assert not (tmp_path / "x").exists()
    # counting from the end
    assert cli(["eval", NI_MODEL, NI_DATA, "-i=-3:", "--outdir", tmp_path / "end", "--no-plot", "--no-progress"]) == 0
    assert [int(r["index"]) for r in _csv_rows(tmp_path / "end" / "eval_frames.csv")] == [17, 18, 19]


def test_per_element_energy_is_over_the_frames_containing_the_element(tmp_path):
    """Pure Cu frames and Cu+Al frames with known label offsets (analytic potential)."""
    from analytic_potential import AnalyticTestPotential

    calc = MLFFCalculator(AnalyticTestPotential(species=(13, 29), cutoff=3.6, three_body=0.05))
    frames, offsets = [], []
    for k in range(6):
        atoms = bulk("Cu", "fcc", a=3.18 * (1 + 0.01 * k), cubic=True)
        atoms.rattle(0.03, seed=k)
        with_al = k % 2 == 1
        if with_al:
            atoms[0].symbol = "Al"
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        de = (0.004 if with_al else 0.001) * (k + 1)  # eV/atom, prediction minus label
        offsets.append((with_al, de))
        atoms.calc = SinglePointCalculator(atoms, energy=e - de * len(atoms), forces=f + (0.003 if with_al else 0.0))
        atoms.info["config_type"] = "alloy" if with_al else "pure"
        atoms.info["temperature"] = 300 * (1 + k // 3)
        frames.append(atoms)
    res = evaluate(calc, frames, batch_size=4, group_by=["config_type", "temperature"])
    m = res.metrics()
    al = [de for w, de in offsets if w]
    cu = [de for _, de in offsets]
    assert m["per_element"]["Al"]["n_frames"] == 3 and m["per_element"]["Cu"]["n_frames"] == 6
    assert m["per_element"]["Al"]["n_atoms"] == 3 and m["per_element"]["Cu"]["n_atoms"] == 21
    assert m["per_element"]["Al"]["energy_per_atom_mae_meV"] == pytest.approx(1e3 * np.mean(al), rel=1e-8)
    assert m["per_element"]["Cu"]["energy_per_atom_mae_meV"] == pytest.approx(1e3 * np.mean(cu), rel=1e-8)
    # forces: the atoms of the element (Al atoms all sit in offset frames; Cu atoms of both kinds)
    assert m["per_element"]["Al"]["forces_mae_meV_per_A"] == pytest.approx(3.0, rel=1e-8)
    assert m["per_element"]["Cu"]["forces_mae_meV_per_A"] == pytest.approx(3.0 * 9 / 21, rel=1e-8)
    assert m["per_config_type"]["alloy"]["forces_mae_meV_per_A"] == pytest.approx(3.0, rel=1e-8)
    assert m["per_config_type"]["pure"]["forces_mae_meV_per_A"] == pytest.approx(0.0, abs=1e-8)
    # a numeric info key of Atoms given to the Python API
    assert set(m["per_temperature"]) == {"300", "600"}
    assert m["per_temperature"]["600"]["energy_per_atom_mae_meV"] == pytest.approx(1e3 * np.mean(cu[3:]), rel=1e-8)
    text = res.summary()
    assert "element" in text and "frames containing the element" in text and "temperature" in text
    rows = res.frame_errors()
    assert [r["config_type"] for r in rows] == ["pure", "alloy"] * 3
    assert [r["formula"] for r in rows] == ["Cu4", "AlCu3"] * 3
    assert [r["energy_error_meV_per_atom"] for r in rows] == pytest.approx([1e3 * de for _, de in offsets])
    assert all(r["stress_mae_GPa"] is None for r in rows)  # no stress labels


# ------------------------------------------------------------------------------ labels
@need_ni
def test_unlabelled_data_is_refused_in_one_line(tmp_path, capsys):
    frames = read(NI_DATA, "0:3")
    bare = [a.copy() for a in frames]  # copy() drops the calculator: no energy, forces, stress
    for a in bare:
        assert "energy" not in a.info and "stress" not in a.info  # ase keeps labels in the calculator
    path = tmp_path / "positions_only.extxyz"
    write(path, bare)
    out = tmp_path / "out"
    assert cli(["eval", NI_MODEL, path, "--outdir", out, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and "no energy, forces or stress labels" in err
    assert not out.exists()
    # only stress labels, and --no-stress: nothing to compare either, and it says why
    for a, src in zip(bare, frames):
        a.calc = SinglePointCalculator(a, stress=src.get_stress())
    write(path, bare)
    assert cli(["eval", NI_MODEL, path, "--outdir", out, "--no-progress", "--no-stress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no energy, forces or stress labels" in err and "only stress labels" in err
    with pytest.raises(InputError, match="no energy, forces or stress labels"):
        evaluate(_ni_calc(), [a.copy() for a in frames])  # the Python API, with ase Atoms


def _ni_calc():
    from ase_mlff import load

    return load(NI_MODEL)


@need_ni
def test_forces_only_data_reports_what_is_there(tmp_path, capsys):
    frames = read(NI_DATA, "0:4")
    part = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, forces=a.get_forces())
        part.append(b)
    path = tmp_path / "forces_only.extxyz"
    write(path, part)
    assert cli(["eval", NI_MODEL, path, "--outdir", tmp_path, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "forces [meV/Å]" in text and "energy [meV/atom]" not in text and "stress [GPa]" not in text
    m = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert "energy_mae_meV" not in m and "stress_mae_GPa" not in m and m["n_forces"] == sum(len(a) for a in part)
    assert "energy_per_atom_mae_meV" not in m["per_element"]["Ni"]
    rows = _csv_rows(tmp_path / "eval_frames.csv")
    assert len(rows) == 4 and all(r["energy_error_meV_per_atom"] == "" and r["stress_mae_GPa"] == "" for r in rows)
    assert all(_num(r["forces_mae_meV_per_A"]) > 0 for r in rows)
    assert (tmp_path / "parity.png").exists()


# ------------------------------------------------------------------------------ outputs
@need_ni
def test_existing_csv_is_kept_without_overwrite(tmp_path, capsys):
    mine = tmp_path / "frames.csv"
    mine.write_text("mine\n")
    args = ["eval", NI_MODEL, NI_DATA, "-i", "0:5", "--outdir", tmp_path / "out", "--csv", mine, "--no-progress"]
    assert cli(args) == 2  # a usage error, as for every existing output
    err = capsys.readouterr().err
    assert "frames.csv" in err and "--overwrite" in err
    assert mine.read_text() == "mine\n" and not (tmp_path / "out").exists()  # nothing written
    assert cli([*args, "--overwrite"]) == 0
    assert len(_csv_rows(mine)) == 5 and not (tmp_path / "out" / "eval_frames.csv").exists()
    # the default CSV in --outdir is guarded the same way; --csv none writes none
    out = tmp_path / "out2"
    out.mkdir()
    (out / "eval_frames.csv").write_text("mine\n")
    assert cli(["eval", NI_MODEL, NI_DATA, "-i", "0:2", "--outdir", out, "--no-progress"]) == 2
    assert (out / "eval_frames.csv").read_text() == "mine\n" and not (out / "eval_metrics.json").exists()
    capsys.readouterr()
    assert cli(["eval", NI_MODEL, NI_DATA, "-i", "0:2", "--outdir", out, "--no-progress", "--csv", "none"]) == 0
    assert (out / "eval_frames.csv").read_text() == "mine\n" and (out / "eval_metrics.json").exists()
    assert "eval_frames.csv" not in capsys.readouterr().out
