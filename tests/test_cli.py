"""The ase-mlff command end to end."""

import subprocess
import sys

import pytest

from ase_mlff.cli import main
from ase_mlff.io import save_model


def test_help_runs_as_a_command(tmp_path):
    # run outside the source tree so the installed (compiled) package is the one imported
    out = subprocess.run([sys.executable, "-m", "ase_mlff.cli", "--help"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0
    assert "eV" in out.stdout and "info" in out.stdout and "train" in out.stdout


def test_info_prints_metadata(tmp_path, analytic_model, capsys):
    path = tmp_path / "m.mlff"
    save_model(analytic_model, path, training={"data_sha256": "cd" * 32})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test_analytic" in out and "Al Cu" in out and "4.5 Å" in out and "cd" * 32 in out
    assert main(["info", "--json", str(path)]) == 0
    assert '"family": "test_analytic"' in capsys.readouterr().out


def test_info_on_damaged_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.mlff"
    bad.write_bytes(b"PK\x03\x04garbage")
    assert main(["info", str(bad)]) == 1
    assert "error" in capsys.readouterr().err


def test_console_script_installed():
    import shutil

    exe = shutil.which("ase-mlff")
    if exe is None:
        pytest.skip("ase-mlff console script not on PATH (package not pip-installed)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "ase-mlff" in out.stdout


def test_export_lammps_and_train_help(tmp_path, capsys):
    import os

    ni = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "potentials", "ni_mff.mlff")
    assert main(["export", "--lammps", ni, str(tmp_path / "lmp")]) == 0
    written = sorted(os.listdir(tmp_path / "lmp"))
    assert any(f.endswith(".uf3") for f in written), written
    for family in ("sgdml", "mff"):
        with pytest.raises(SystemExit) as exc:
            main(["train", family, "--help"])
        assert exc.value.code == 0
