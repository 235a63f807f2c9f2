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
