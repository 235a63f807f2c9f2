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


def _python_m(*args):
    return [sys.executable, "-m", "ase_mlff", *args]


def test_info_piped_into_head_exits_quietly(tmp_path, analytic_model):
    """``ase-mlff info --json M | head -1``: head leaves after one line while ase-mlff still has
    300 kB to write (more than a pipe holds), so its writes fail with EPIPE; it exits with 141
    (as killed by SIGPIPE) and prints nothing, no BrokenPipeError traceback."""
    path = tmp_path / "m.mlff"
    save_model(analytic_model, path, training={"notes": ["x" * 100] * 3000})
    writer = subprocess.Popen(_python_m("info", "--json", str(path)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=tmp_path)
    head = subprocess.run(["head", "-1"], stdin=writer.stdout, capture_output=True, text=True)
    writer.stdout.close()  # head's end is the only reader
    err = writer.stderr.read().decode()
    assert writer.wait(timeout=120) == 141, err
    assert head.stdout == "{\n" and err == ""


def test_info_into_a_closed_pipe_exits_quietly(tmp_path, analytic_model):
    path = tmp_path / "m.mlff"
    save_model(analytic_model, path)
    proc = subprocess.Popen(_python_m("info", str(path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before the command writes its first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_broken_pipe_elsewhere_is_not_taken_for_stdout(monkeypatch, capsys):
    """Only a reader of stdout that went away ends the command quietly; a broken pipe to a
    worker or socket is a real failure and propagates."""
    import ase_mlff.cli as cli

    def broken(args):
        raise BrokenPipeError("worker went away")

    monkeypatch.setattr(cli, "_info", broken)
    with pytest.raises(BrokenPipeError, match="worker went away"):
        main(["info", "model.mlff"])  # stdout captured by pytest: no file descriptor to poll
    # stdout a real pipe whose reader is still there: the poll path must not take it for stdout's
    import os

    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader, os.fdopen(w, "w") as writer:
        monkeypatch.setattr(sys, "stdout", writer)
        assert not cli._stdout_reader_gone()
        with pytest.raises(BrokenPipeError, match="worker went away"):
            main(["info", "model.mlff"])
        reader.close()  # now the reader has gone: that is stdout's broken pipe
        assert cli._stdout_reader_gone()


#: the committee options (ase_mlff.training.committee.add_arguments), as --help shows them
COMMITTEE_OPTIONS = ("--committee K", "--committee-mean", "--committee-frames", "--calibration-data",
                     "--n-calibration")


def _families():
    from ase_mlff.training import families

    return families()


@pytest.mark.parametrize("family", _families())
def test_committee_options_exactly_for_the_families_whose_recipe_has_the_hook(family, capsys):
    """``ase-mlff train FAMILY`` offers --committee and its options when the family's recipe
    provides a committee hook (its ``COMMITTEE``), and none of them otherwise."""
    from ase_mlff.training import recipe
    from ase_mlff.training.committee import CommitteeHook

    hook = getattr(recipe(family), "COMMITTEE", None)
    assert hook is None or isinstance(hook, CommitteeHook)
    with pytest.raises(SystemExit) as exc:
        main(["train", family, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    offered = [o for o in COMMITTEE_OPTIONS if o in text]
    assert offered == (list(COMMITTEE_OPTIONS) if hook is not None else []), family


def test_the_families_with_a_committee_hook():
    """The decision recorded: GAP has its own calibrated variance and no committee hook."""
    from ase_mlff.training.committee import committee_families

    assert committee_families() == ["bpnn", "mff", "schnet", "sgdml"]
