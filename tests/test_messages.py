"""Messages a user reads: warnings name the line of the user's code that led to them (not
ase-mlff's or ASE's internals), the command line prints them as ``ase-mlff: warning:``, and
errors about data files name what to do in Python and on the command line."""

import functools
import inspect
import os
import warnings

import ase.io
import numpy as np
import pytest
from ase.optimize import BFGS

import ase_mlff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTEE = os.path.join(ROOT, "potentials", "ethanol_sgdml_committee.mlff")
START = os.path.join(ROOT, "potentials", "ethanol_start.xyz")


def _line_after(marker: str) -> int:
    """Line number of the first line after the comment ``# <marker>`` in this file."""
    lines = inspect.getsource(inspect.getmodule(_line_after)).splitlines()
    return next(k for k, text in enumerate(lines, start=1) if text.strip() == f"# {marker}") + 1


def _ethanol_below_the_limit():
    """Ethanol with the sGDML committee, and a force-uncertainty limit its first step exceeds."""
    calc = ase_mlff.load(COMMITTEE, uncertainty=True)
    atoms = ase.io.read(START)
    atoms.calc = calc
    first = float(np.max(atoms.calc.get_property("forces_uncertainty", atoms)))
    atoms.calc = None
    return atoms, ase_mlff.load(COMMITTEE), 0.5 * first


def test_md_uncertainty_warning_names_the_callers_line():
    """``run_md(on_uncertainty="warn")``: the warning is issued by an observer that ASE's
    integrator calls (ase/optimize/optimize.py); it is reported at the run_md call here."""
    from ase_mlff.workflows.md import run_md

    atoms, calc, limit = _ethanol_below_the_limit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # run_md call
        run_md(atoms, calc, steps=2, seed=1, max_uncertainty=limit, on_uncertainty="warn")
    ours = [w for w in caught if "extrapolating" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, UserWarning)
    assert os.path.abspath(ours[0].filename) == os.path.abspath(__file__)
    assert ours[0].lineno == _line_after("run_md call")


def test_a_warning_from_inside_an_ase_optimizer_names_the_users_run_call():
    """ase-mlff code that ASE calls back (an observer attached to a BFGS the user runs) warns
    at the user's ``opt.run`` line, not in ASE's or ase-mlff's files."""
    from ase_mlff import MLFFWarning
    from ase_mlff._warn import warn

    atoms, calc, _ = _ethanol_below_the_limit()
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    opt.attach(functools.partial(warn, "from an observer"), interval=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # opt.run call
        opt.run(fmax=1e-9, steps=1)
    assert caught and all(issubclass(w.category, MLFFWarning) for w in caught)
    assert {os.path.abspath(w.filename) for w in caught} == {os.path.abspath(__file__)}
    assert {w.lineno for w in caught} == {_line_after("opt.run call")}


def test_a_warning_called_from_user_code_directly_names_that_line():
    from ase_mlff._warn import warn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # direct call
        warn("direct", RuntimeWarning)
    assert caught[0].category is RuntimeWarning
    assert os.path.abspath(caught[0].filename) == os.path.abspath(__file__)
    assert caught[0].lineno == _line_after("direct call")


def test_md_command_prints_the_uncertainty_warning_as_its_own_message(tmp_path, capsys):
    from ase_mlff.cli import main

    atoms, _, limit = _ethanol_below_the_limit()
    structure = tmp_path / "ethanol.xyz"
    ase.io.write(structure, atoms)
    rc = main(["md", COMMITTEE, str(structure), "--steps", "2", "--seed", "1", "--no-progress",
               "--log", "none", "-o", str(tmp_path / "md.traj"),
               "--max-uncertainty", f"{limit:.6g}", "--on-uncertainty", "warn"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "ase-mlff: warning: step 0: the force uncertainty" in err
    assert "optimize.py" not in err and "Warning:" not in err


# ------------------------------------------------------------------------- data-file messages
MO = os.path.join(ROOT, "tests", "data", "mo_mlearn_10.extxyz")
GAP_SMALL = ["--cutoff", "4.5", "--n-max", "4", "--l-max", "3", "--n-sparse", "20"]


def _renamed_labels(path, every_forces: int = 1):
    """The Mo frames with their labels under names the readers do not look for
    (``my_energy``, ``my_forces``, ``my_stress``); forces on every ``every_forces``-th frame only."""
    frames = ase.io.read(MO, ":")
    for k, atoms in enumerate(frames):
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = None
        atoms.info.update(my_energy=e, my_stress=s)
        if k % every_forces == 0:
            atoms.arrays["my_forces"] = f
    ase.io.write(path, frames)
    return path


def test_python_message_names_the_keywords(tmp_path):
    from ase_mlff import DatasetError, data

    path = _renamed_labels(tmp_path / "renamed.extxyz")
    with pytest.raises(DatasetError, match="energy_key='NAME'") as exc:
        data.read(path)
    assert "require_energy=False" in str(exc.value) and "--" not in str(exc.value)
    with pytest.raises(DatasetError, match="forces_key='NAME'") as exc:
        data.read(path, energy_key="my_energy")
    assert "require_forces=False" in str(exc.value)
    ds = data.read(path, energy_key="my_energy", forces_key="my_forces", stress_key="my_stress")
    ref = data.read(MO)
    for got, want in zip(ds, ref):
        np.testing.assert_array_equal(got.forces, want.forces)
        np.testing.assert_array_equal(got.stress, want.stress)
        assert got.energy == want.energy


def test_train_command_message_names_the_flags(tmp_path, capsys):
    """The same errors on a train command line name its flags, for the recipes that print
    their own errors (gap) and for those whose errors reach the command's handler (bpnn)."""
    from ase_mlff.cli import main

    path = str(_renamed_labels(tmp_path / "renamed.extxyz"))
    for family in ("gap", "bpnn"):
        rc = main(["train", family, path, "-o", str(tmp_path / f"{family}.mlff")]
                  + (["--n-train", "8", "--n-valid", "2"] if family == "bpnn" else []))
        err = capsys.readouterr().err
        assert rc == 1 and "--energy-key NAME" in err and "energy_key" not in err, err
        assert "require_energy" not in err
        rc = main(["train", family, path, "--energy-key", "my_energy", "-o", str(tmp_path / f"{family}.mlff")]
                  + (["--n-train", "8", "--n-valid", "2"] if family == "bpnn" else []))
        err = capsys.readouterr().err
        assert rc == 1 and "--forces-key NAME" in err and "--allow-missing-forces" in err, err
        assert "forces_key" not in err and "require_forces" not in err
    assert not os.path.exists(tmp_path / "gap.mlff") and not os.path.exists(tmp_path / "bpnn.mlff")


def _energy(model_path, atoms):
    atoms = atoms.copy()
    atoms.calc = ase_mlff.load(model_path)
    return atoms.get_potential_energy()


def test_train_command_label_flags_read_the_renamed_labels(tmp_path, capsys):
    """--energy-key/--forces-key/--stress-key give the fit of the same labels under their usual
    names; --allow-missing-forces fits frames without forces on their energies, as
    ``require_forces=False`` does in Python."""
    from ase_mlff import data, train
    from ase_mlff.cli import main
    from ase_mlff.io import save_model

    renamed = str(_renamed_labels(tmp_path / "renamed.extxyz"))
    assert main(["train", "gap", MO, "-o", str(tmp_path / "ref.mlff")] + GAP_SMALL) == 0
    assert main(["train", "gap", renamed, "--energy-key", "my_energy", "--forces-key", "my_forces",
                 "--stress-key", "my_stress", "-o", str(tmp_path / "keys.mlff")] + GAP_SMALL) == 0
    probe = ase.io.read(MO, 3)
    e_ref = _energy(tmp_path / "ref.mlff", probe)
    assert _energy(tmp_path / "keys.mlff", probe) == pytest.approx(e_ref, rel=1e-12)

    partial = str(_renamed_labels(tmp_path / "partial.extxyz", every_forces=2))
    args = ["train", "gap", partial, "--energy-key", "my_energy", "--forces-key", "my_forces",
            "--stress-key", "my_stress"]
    assert main(args + ["-o", str(tmp_path / "no.mlff")] + GAP_SMALL) == 1
    assert "--allow-missing-forces" in capsys.readouterr().err
    assert main(args + ["--allow-missing-forces", "-o", str(tmp_path / "half.mlff")] + GAP_SMALL) == 0
    ds = data.read(partial, energy_key="my_energy", forces_key="my_forces", stress_key="my_stress",
                   require_forces=False)
    assert sum(f.forces is None for f in ds) == 5
    model, record = train("gap", ds, cutoff=4.5, n_max=4, l_max=3, n_sparse=20)
    save_model(model, tmp_path / "python.mlff", training=record)
    e_half = _energy(tmp_path / "half.mlff", probe)
    assert _energy(tmp_path / "python.mlff", probe) == pytest.approx(e_half, rel=1e-12)
    assert abs(e_half - e_ref) > 1e-9 * abs(e_ref)  # fewer force labels: another fit


# ------------------------------------------------------------------------- public data sets
def _public_data():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("public_data", os.path.join(ROOT, "benchmarks", "public_data.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("public_data", module)  # the dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_missing_benchmark_data_names_the_dataset_and_where_to_get_it(tmp_path, monkeypatch):
    public_data = _public_data()
    monkeypatch.setenv("ASE_MLFF_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        public_data.path("rmd17", "rmd17_ethanol_train_01.npz")
    text = str(exc.value)
    assert str(tmp_path / "rmd17" / "rmd17_ethanol_train_01.npz") in text
    assert "Christensen" in text and "2020" in text and "github.com/andersx/rmd17-npz" in text
    (tmp_path / "rmd17").mkdir()
    (tmp_path / "rmd17" / "rmd17_ethanol_train_01.npz").write_bytes(b"")
    assert public_data.path("rmd17", "rmd17_ethanol_train_01.npz") == str(tmp_path / "rmd17" / "rmd17_ethanol_train_01.npz")
    for key, d in public_data.DATASETS.items():  # every entry names authors, a year and a download place
        assert any(str(year) in d.reference for year in range(1990, 2030)), key
        assert "https://" in d.obtain, key


def _as_mlearn_document(atoms):
    """A frame of tests/data in the form of mlearn's JSON (pymatgen structure, kbar stress in
    the order the file's info records)."""
    structure = {"lattice": {"matrix": atoms.cell.array.tolist()},
                 "sites": [{"species": [{"element": s, "occu": 1}], "xyz": p.tolist()}
                           for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)]}
    return {"structure": structure, "num_atoms": len(atoms), "group": atoms.info["config_type"],
            "description": atoms.info["description"], "tag": "train",
            "outputs": {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist(),
                        "virial_stress": list(atoms.info["virial_stress_kbar_original"])}}


@pytest.mark.parametrize("name,element", [("si_mlearn_16.extxyz", "Si"), ("mo_mlearn_10.extxyz", "Mo")])
def test_mlearn_conversion_gives_the_stress_of_the_test_data(tmp_path, monkeypatch, name, element):
    """Si and Mo use different stress component orders in mlearn's JSON; the conversion gives
    the stress of tests/data (whose order was established by energy-stress consistency)."""
    import json

    public_data = _public_data()
    frames = ase.io.read(os.path.join(ROOT, "tests", "data", name), ":")
    src = tmp_path / "training.json"
    src.write_text(json.dumps([_as_mlearn_document(a) for a in frames]))
    out = tmp_path / "out.extxyz"
    assert public_data.main(["mlearn", element, str(src), str(out)]) == 0
    got = ase.io.read(out, ":")
    assert len(got) == len(frames)
    for a, b in zip(got, frames):
        scale = np.abs(b.get_stress()).max()
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-12)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=1e-14)
        assert a.info["config_type"] == b.info["config_type"]
    shear_swapped = "xx yy zz xy yz xz" if element == "Mo" else "xx yy zz xy xz yz"
    monkeypatch.setitem(public_data.MLEARN_STRESS_ORDER, element, shear_swapped)  # visibly wrong
    wrong = public_data.mlearn_atoms(_as_mlearn_document(frames[0]), element).get_stress()
    assert np.abs(wrong - frames[0].get_stress()).max() > 1e-3 * np.abs(frames[0].get_stress()).max()


def test_deepmd_conversion_round_trip(tmp_path):
    public_data = _public_data()
    frames = ase.io.read(os.path.join(ROOT, "tests", "data", "water_deepmd_4.extxyz"), ":")
    system = tmp_path / "data_0"
    (system / "set.000").mkdir(parents=True)
    type_map = ["O", "H"]
    (system / "type_map.raw").write_text("\n".join(type_map) + "\n")
    (system / "type.raw").write_text("\n".join(str(type_map.index(s)) for s in frames[0].get_chemical_symbols()))
    for name, values in (("box", [a.cell.array.ravel() for a in frames]), ("coord", [a.positions.ravel() for a in frames]),
                         ("energy", [a.get_potential_energy() for a in frames]),
                         ("force", [a.get_forces().ravel() for a in frames])):
        np.save(system / "set.000" / f"{name}.npy", np.array(values))
    out = tmp_path / "water.extxyz"
    assert public_data.main(["deepmd", str(system), str(out)]) == 0
    got = ase.io.read(out, ":")
    assert [a.info["source"] for a in got] == [f"data_0/set.000/frame{k}" for k in range(len(frames))]
    for a, b in zip(got, frames):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())
        assert a.get_potential_energy() == b.get_potential_energy()


def test_every_warning_goes_through_the_helper():
    """A bare ``warnings.warn`` in ase-mlff would name ase-mlff's (or ASE's) line again."""
    import glob
    import re

    pkg = os.path.join(ROOT, "ase_mlff")
    bare = []
    for path in glob.glob(os.path.join(pkg, "**", "*.py"), recursive=True):
        if os.path.basename(path) == "_warn.py":
            continue
        for lineno, line in enumerate(open(path, encoding="utf-8"), start=1):
            if re.search(r"\bwarnings\.warn\(|^\s*from warnings import warn\b", line):
                bare.append(f"{os.path.relpath(path, ROOT)}:{lineno}")
    assert not bare, "use ase_mlff._warn.warn (it names the user's line): " + ", ".join(bare)
