"""The family cores are plain C++: each compiles with a C++17 compiler and the standard
library alone (no Python, pybind11 or torch headers on the include path), so that a LAMMPS pair
style can build the same sources. Skipped where no compiler is installed."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

EXT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ase_mlff", "_ext")
# the LAMMPS plugin's model file reader is plain too (only pair_mlff.cpp sees LAMMPS' headers)
PLAIN = sorted(glob.glob(os.path.join(EXT, "*_core.cpp"))) + [os.path.join(EXT, "pool.cpp"),
                                                              os.path.join(EXT, "lammps", "model_file.cpp")]
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def test_every_family_core_is_found():
    names = {os.path.basename(p) for p in PLAIN}
    assert {"bpnn_core.cpp", "schnet_core.cpp", "gap_core.cpp", "soap_core.cpp", "mff_core.cpp", "pool.cpp",
            "model_file.cpp"} <= names


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ or c++) on PATH")
@pytest.mark.parametrize("source", PLAIN, ids=os.path.basename)
def test_core_compiles_without_python(source, tmp_path):
    # an isolated include path: only the directory of the cores themselves
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-I", EXT, source]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(source) as fh:
        text = fh.read()
    for header in ("pybind11", "Python.h", "torch/"):
        assert f"#include <{header}" not in text and f'#include "{header}' not in text
