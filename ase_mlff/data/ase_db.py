"""Reader of ASE databases (:func:`ase_mlff.data.read` of a ``.db``): labels from each row's stored
calculator results, its key-value pairs or its ``data`` (per-atom arrays from ``data``), found
as for ASE's own formats (:mod:`ase_mlff.data.labels`). Units eV/Å unless given."""

from __future__ import annotations

import numpy as np

from ..errors import DatasetError
from ..units import canonical_energy_unit, canonical_length_unit, energy_factor, length_factor
from .dataset import Dataset
from .index import apply_index
from .labels import frame_from_parts


def read_db(path, index, energy_unit, length_unit, require_energy, require_forces, **keys) -> Dataset:
    """The frames ``index`` of the ASE database ``path`` (arguments as :func:`ase_mlff.data.read`)."""
    import ase.db

    try:
        with ase.db.connect(path, type="db") as db:
            rows = list(db.select())
    except Exception as err:
        raise DatasetError(f"cannot read {path!r} as an ASE database: {type(err).__name__}: {err}") from err
    if not rows:
        raise DatasetError(f"{path!r}: the database has no rows (empty dataset)")
    sel = apply_index(len(rows), index, path)
    eu = canonical_energy_unit(energy_unit or "eV")
    lu = canonical_length_unit(length_unit or "Ang")
    ef, lf = energy_factor(eu), length_factor(lu)
    used: dict[str, set] = {"energy": set(), "forces": set(), "stress": set()}
    frames = []
    for i in sel:
        row = rows[i]
        atoms = row.toatoms()
        n = len(atoms)
        calc_results = dict(atoms.calc.results) if atoms.calc is not None else {}
        data = dict(row.data) if row.get("data") else {}
        info = {**dict(row.key_value_pairs), **data}
        arrays = {k: v for k, v in data.items() if np.ndim(v) >= 1 and np.shape(v)[0] == n}
        frames.append(
            frame_from_parts(
                int(i), f"{path!r} (row id {row.id})",
                numbers=atoms.numbers, positions=atoms.positions, cell=np.asarray(atoms.cell),
                pbc=atoms.pbc, calc_results=calc_results, info=info, arrays=arrays,
                keys=(keys["energy_key"], keys["forces_key"], keys["stress_key"], keys["virial_key"]),
                require=(require_energy, require_forces), factors=(ef, lf), used=used,
            )
        )
    meta = {"label_keys": {k: sorted(v) for k, v in used.items()}, "db_ids": [int(rows[i].id) for i in sel]}
    return Dataset(frames, source=path, source_energy_unit=eu, source_length_unit=lu, format="db",
                   metadata=meta, validate=False)
