"""Labelled frames and the checkpoint's arrays: frames to extxyz, structures to flat arrays
and back, checksums (the learning loop's storage; module docstring of :mod:`ase_mlff.workflows.learn`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------- frames
def labelled_frame(atoms, labels: dict, info: dict):
    from ...data import Frame

    return Frame(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), cell=np.array(atoms.cell),
                 pbc=atoms.pbc.copy(), energy=labels["energy"], forces=labels["forces"], stress=labels["stress"],
                 info=dict(info))


def frame_atoms(frame):
    """ase.Atoms of a labelled frame, its labels as a SinglePointCalculator (what extxyz writes
    as energy, forces, stress) and its learn_* record in info."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = frame.to_atoms()
    atoms.calc = None
    per_atom = {k: v for k, v in frame.info.items() if isinstance(v, np.ndarray)}
    atoms.info = {k: v for k, v in frame.info.items() if not isinstance(v, np.ndarray)}
    for k, v in per_atom.items():
        atoms.arrays[k] = v
    results = {"energy": frame.energy, "forces": frame.forces}
    if frame.stress is not None:
        results["stress"] = frame.stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def write_extxyz(path: Path, images) -> None:
    """All of ``images`` to ``path`` at once (:func:`~ase_mlff.io.atomic_write_bytes`)."""
    import io

    import ase.io

    from ...io import atomic_write_bytes

    text = io.StringIO()
    ase.io.write(text, list(images), format="extxyz")
    atomic_write_bytes(path, lambda fh: fh.write(text.getvalue().encode()))


def pack_structures(prefix: str, items) -> dict[str, np.ndarray]:
    """Structures (numbers, positions, cell, pbc, and any per-atom arrays named in ``extra``)
    as flat arrays for the checkpoint."""
    items = list(items)
    out = {f"{prefix}natoms": np.array([len(a["numbers"]) for a in items], dtype=np.int64)}
    for key, width in (("numbers", None), ("positions", 3)):
        rows = [np.asarray(a[key]) for a in items]
        out[f"{prefix}{key}"] = (np.concatenate(rows) if rows else
                                 np.zeros((0,) if width is None else (0, width)))
    out[f"{prefix}numbers"] = out[f"{prefix}numbers"].astype(np.int64)
    out[f"{prefix}cell"] = np.array([a["cell"] for a in items], dtype=np.float64).reshape(-1, 3, 3)
    out[f"{prefix}pbc"] = np.array([a["pbc"] for a in items], dtype=bool).reshape(-1, 3)
    return out


def unpack_structures(prefix: str, arrays: dict) -> list[dict]:
    n = arrays[f"{prefix}natoms"]
    ends = np.cumsum(n)
    out = []
    for k, m in enumerate(n):
        sl = slice(int(ends[k] - m), int(ends[k]))
        out.append({"numbers": arrays[f"{prefix}numbers"][sl], "positions": arrays[f"{prefix}positions"][sl],
                    "cell": arrays[f"{prefix}cell"][k], "pbc": arrays[f"{prefix}pbc"][k], "slice": sl})
    return out


def structures_sha256(images) -> str:
    h = hashlib.sha256()
    for a in images:
        for arr in (a.numbers.astype(np.int64), np.asarray(a.positions, dtype=np.float64),
                    np.asarray(a.cell, dtype=np.float64), a.pbc.astype(bool)):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()



def jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v)))
