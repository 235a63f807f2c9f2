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
