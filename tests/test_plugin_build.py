"""Building pair_style mlff and writing its model file: what is missing is named, never a
half-built library or a silent wrong file (no LAMMPS needed: these are the error paths)."""

import zlib
from pathlib import Path

import pytest

from ase_mlff.export import plugin
from ase_mlff.export.plugin import PluginBuildError, build_plugin, find_lammps, write_plugin_model
from ase_mlff.io import load_model

POTENTIALS = Path(__file__).resolve().parent.parent / "potentials"


def test_version_strings():
    assert plugin._version_from_string('#define LAMMPS_VERSION "22 Jul 2025"') == 20250722
    assert plugin._version_from_string("2025.7.22.4") == 20250722
    assert plugin._version_from_string("nothing here") is None
    assert plugin._version_string(20220915) == "15 Sep 2022"


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "pair.h").write_text("")
    (inc / "version.h").write_text('#define LAMMPS_VERSION "22 Jul 2025"\n')
    (inc / "mpi.h").write_text("")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("ASE_MLFF_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PluginBuildError, match="no C\\+\\+ compiler"):
        build_plugin(lammps_include=inc, mpi_include=inc)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.so"))


def test_headers_without_pair_h_or_version_or_mpi(tmp_path):
    with pytest.raises(PluginBuildError, match="no pair.h"):
        find_lammps(lammps_include=tmp_path, mpi_include=tmp_path)
    (tmp_path / "pair.h").write_text("")
    with pytest.raises(PluginBuildError, match="which LAMMPS version"):
        find_lammps(lammps_include=tmp_path, mpi_include=tmp_path)
    (tmp_path / "version.h").write_text('#define LAMMPS_VERSION "2 Aug 2020"\n')
    with pytest.raises(PluginBuildError, match="too old"):
        find_lammps(lammps_include=tmp_path, mpi_include=tmp_path)
    (tmp_path / "version.h").write_text('#define LAMMPS_VERSION "2 Aug 2023"\n')
    with pytest.raises(PluginBuildError, match="mpi.h"):
        find_lammps(lammps_include=tmp_path, mpi_include=tmp_path / "nowhere")
    (tmp_path / "mpi.h").write_text("")
    assert find_lammps(lammps_include=tmp_path, mpi_include=tmp_path)["version"] == 20230802


def test_model_file_header_and_checksum(tmp_path):
    path = write_plugin_model(load_model(str(POTENTIALS / "water_bpnn.mlff")), tmp_path / "w.pairmlff")
    raw = path.read_bytes()
    end = raw.index(b"\nend\n") + len(b"\nend\n")
    header, data = raw[:end].decode().splitlines(), raw[end:]
    assert header[:4] == ["ase-mlff pair_style mlff model", "format 1", "elements H O", "part 0 bpnn served"]
    arrays = [line.split() for line in header if line.startswith("array ")]
    assert sum(8 * int(a[4]) for a in arrays) == len(data)
    crc = next(line.split()[1] for line in header if line.startswith("crc32 "))
    assert int(crc, 16) == zlib.crc32(data)
    # nothing half-written is left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["w.pairmlff"]
