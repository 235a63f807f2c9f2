"""Exit status of the ``ase-mlff`` command when a long job is stopped by a signal:
130 for Ctrl-C (SIGINT), 143 for SIGTERM (what ``kill`` and batch systems send), and in both
cases the job stops cleanly (its log is flushed, no traceback)."""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_md_stopped_by_signal_exits_cleanly_with_its_status(tmp_path, sig, code):
    log = tmp_path / "run.log"
    cmd = [sys.executable, "-m", "ase_mlff.cli", "md", os.path.join(ROOT, "potentials", "ni_mff.mlff"),
           os.path.join(ROOT, "tests", "data", "ni_mlearn_20.extxyz"), "-n", "1000000", "--log", str(log),
           "--log-interval", "1", "-o", str(tmp_path / "run.extxyz"), "--no-progress", "--seed", "3"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the dynamics is running
            if log.exists() and len(log.read_text().splitlines()) >= 4:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    assert "INTERRUPTED" in out  # the run's summary is still printed
    rows = [line for line in log.read_text().splitlines() if not line.startswith("#")]
    assert len(rows) >= 3 and all(len(r.split()) >= 6 for r in rows)  # whole lines only


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_train_gap_stopped_by_sigterm_writes_its_checkpoint_and_resumes(tmp_path):
    """``ase-mlff train gap`` (a separate process, as a batch system runs it): SIGTERM once the
    descriptors are done stops at the next safe point with status 143, no traceback, the
    checkpoint written and no model; ``--resume`` then finishes and removes the checkpoint."""
    out = tmp_path / "g.mlff"
    cmd = [sys.executable, "-m", "ase_mlff.cli", "train", "gap", os.path.join(ROOT, "tests", "data",
           "si_mlearn_16.extxyz"), "-o", str(out), "--cutoff", "5", "--n-max", "6", "--l-max", "6",
           "--n-sparse", "100", "--n-test", "3"]
    # the installed package (as the other tests here): the checkout's ase_mlff/ is not compiled
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # wait until the descriptors are done
            lines.append(line)
            if "SOAP:" in line:
                proc.send_signal(signal.SIGTERM)
                break
        out_text, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + err
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "checkpoint written to" in err and "--resume" in err
    assert not out.exists() and (tmp_path / "g.mlff.ckpt").exists()
    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr and out.exists() and not (tmp_path / "g.mlff.ckpt").exists()
