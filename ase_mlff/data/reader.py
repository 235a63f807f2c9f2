""":func:`read`: labelled structures from a file into a :class:`~ase_mlff.data.Dataset`, by the
reader of the file's format family: npz (:mod:`ase_mlff.data.npz`), ASE database
(:mod:`ase_mlff.data.ase_db`) or anything :func:`ase.io.read` reads (:mod:`ase_mlff.data.ase_io`)."""

from __future__ import annotations

import os

from ..errors import DatasetError
from .ase_db import read_db
from .ase_io import read_ase
from .dataset import Dataset
from .labels import keys_in_effect
from .npz import read_npz


def read(
    path,
    index=":",
    format: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    virial_key: str | None = None,
    require_forces: bool = True,
    require_energy: bool = True,
) -> Dataset:
    """Read labelled structures into a :class:`Dataset` (eV, Å, eV/Å, eV/Å^3).

    ``format``: None (from the extension: ``.npz`` -> npz, ``.db`` -> ASE db, else :func:`ase.io.read`),
    ``'npz'``, ``'db'`` or any :func:`ase.io.read` format name.
    ``energy_unit``/``length_unit``: units of the file (default eV/Å for ASE formats; npz files take
    ``e_unit``/``r_unit`` from the file, otherwise ``energy_unit`` is required; length defaults to Å).
    ``*_key``: explicit label names (calculator result, info/arrays key, npz key or db key/data);
    ``virial_key`` (eV; 3x3, 9 or Voigt 6) is converted to stress = -virial / volume.
    Inside :func:`label_options` (the ``train`` commands), keys not given here come from there,
    and its ``allow_missing_forces`` reads frames without forces.
    """
    energy_key, forces_key, stress_key, require_forces = keys_in_effect(energy_key, forces_key, stress_key,
                                                                        require_forces)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(f"data file not found: {path!r}")
    if os.path.isdir(path):
        raise DatasetError(f"{path!r} is a directory, expected a data file")
    fmt = format
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        fmt = {".npz": "npz", ".db": "db"}.get(ext)
    keys = dict(energy_key=energy_key, forces_key=forces_key, stress_key=stress_key, virial_key=virial_key)
    if fmt == "npz":
        return read_npz(path, index, energy_unit, length_unit, require_energy, require_forces, **keys)
    if fmt == "db":
        return read_db(path, index, energy_unit, length_unit, require_energy, require_forces, **keys)
    return read_ase(path, index, fmt, energy_unit, length_unit, require_energy, require_forces, **keys)
