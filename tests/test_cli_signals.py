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
