"""One labelled structure (:class:`Frame`) in eV / Å units, and the canonical bytes of its
content that :meth:`ase_mlff.data.Dataset.sha256` hashes.

Units: positions and cell Å, energy eV, forces eV/Å, stress eV/Å^3 in ASE Voigt order
``xx, yy, zz, yz, xz, xy`` with ASE's sign (positive = tensile).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError

# prefix of every dataset hash, naming the layout of the hashed bytes (version 1)
_HASH_TAG = b"ase-mlff/dataset/v1\x00"


def voigt_from_any(value, what: str = "stress") -> np.ndarray:
    """(6,) Voigt (xx, yy, zz, yz, xz, xy) from a (6,), (9,) or (3, 3) array (symmetrised)."""
    a = np.asarray(value, dtype=float)
    if a.shape == (6,):
        return a.copy()
    if a.shape in ((9,), (3, 3)):
        m = a.reshape(3, 3)
        m = 0.5 * (m + m.T)
        return np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
    raise DatasetError(f"{what} must have 6 (Voigt), 9 or 3x3 components, got shape {a.shape}")


def _f8(a) -> bytes:
    # canonical little-endian float64; "+ 0.0" maps -0.0 to +0.0 so that the sign of zero is irrelevant
    return (np.ascontiguousarray(a, dtype="<f8") + 0.0).tobytes()


def _i8(a) -> bytes:
    return np.ascontiguousarray(a, dtype="<i8").tobytes()


def _first_nonfinite(a: np.ndarray):
    bad = np.argwhere(~np.isfinite(a))
    return tuple(int(i) for i in bad[0]) if len(bad) else None


@dataclass(eq=False)
class Frame:
    """One labelled structure in eV / Å units.

    ``numbers`` (N,) int, ``positions`` (N, 3) Å, ``cell`` (3, 3) Å (zeros when there is none),
    ``pbc`` (3,) bool, ``energy`` eV or None, ``forces`` (N, 3) eV/Å or None, ``stress`` (6,)
    eV/Å^3 (ASE Voigt order and sign) or None, ``info`` free-form metadata (e.g. ``config_type``;
    not part of :meth:`Dataset.sha256`).

    Shapes are checked on construction (:class:`DatasetError`); finiteness is checked by
    :meth:`validate`, which every reader and :class:`Dataset` constructor calls.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = None  # type: ignore[assignment]
    pbc: np.ndarray = None  # type: ignore[assignment]
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        numbers = np.asarray(self.numbers)
        if numbers.ndim != 1:
            raise DatasetError(f"numbers must be a 1-d array, got shape {numbers.shape}")
        if numbers.size and (numbers.dtype.kind not in "iu" and not np.all(numbers == np.round(numbers))):
            raise DatasetError("numbers (atomic numbers) must be integers")
        self.numbers = numbers.astype(np.int64)
        if self.numbers.size and (self.numbers.min() < 1 or self.numbers.max() > 118):
            raise DatasetError(
                f"atomic numbers must lie in 1..118, got {self.numbers.min()}..{self.numbers.max()}"
            )
        n = len(self.numbers)
        self.positions = np.array(self.positions, dtype=np.float64)
        if self.positions.shape != (n, 3):
            raise DatasetError(f"positions have shape {self.positions.shape}, expected ({n}, 3)")
        self.cell = np.zeros((3, 3)) if self.cell is None else np.array(self.cell, dtype=np.float64)
        if self.cell.shape != (3, 3):
            raise DatasetError(f"cell has shape {self.cell.shape}, expected (3, 3)")
        if self.pbc is None:
            self.pbc = np.zeros(3, dtype=bool)
        else:
            pbc = np.array(self.pbc, dtype=bool)
            self.pbc = np.full(3, bool(pbc)) if pbc.ndim == 0 else pbc
        if self.pbc.shape != (3,):
            raise DatasetError(f"pbc has shape {self.pbc.shape}, expected (3,)")
        if self.energy is not None:
            e = np.asarray(self.energy, dtype=np.float64)
            if e.size != 1:
                raise DatasetError(f"energy must be a scalar, got shape {e.shape}")
            self.energy = float(e.reshape(()))
        if self.forces is not None:
            self.forces = np.array(self.forces, dtype=np.float64)
            if self.forces.shape != (n, 3):
                raise DatasetError(
                    f"forces have shape {self.forces.shape} but positions have shape ({n}, 3)"
                )
        if self.stress is not None:
            self.stress = voigt_from_any(self.stress)
        if self.info is None:
            self.info = {}

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def natoms(self) -> int:
        return len(self.numbers)

    @property
    def volume(self) -> float:
        """|det(cell)| in Å^3 (0 when there is no cell)."""
        return float(abs(np.linalg.det(self.cell)))

    def validate(self, where: str = "frame") -> "Frame":
        """Raise :class:`DatasetError` naming ``where`` if any coordinate or label is NaN/inf."""
        for name in ("positions", "cell", "forces", "stress"):
            a = getattr(self, name)
            if a is None:
                continue
            bad = _first_nonfinite(a)
            if bad is not None:
                raise DatasetError(
                    f"{where}: {name} contain a non-finite value ({a[bad]!r} at index {list(bad)})"
                )
        if self.energy is not None and not math.isfinite(self.energy):
            raise DatasetError(f"{where}: energy is not finite ({self.energy!r})")
        if len(self.numbers) == 0:
            raise DatasetError(f"{where}: structure has no atoms")
        return self

    def copy(self) -> "Frame":
        return Frame(
            numbers=self.numbers.copy(),
            positions=self.positions.copy(),
            cell=self.cell.copy(),
            pbc=self.pbc.copy(),
            energy=self.energy,
            forces=None if self.forces is None else self.forces.copy(),
            stress=None if self.stress is None else self.stress.copy(),
            info=dict(self.info),
        )

    def to_atoms(self):
        """:class:`ase.Atoms` with a :class:`SinglePointCalculator` holding the labels present."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(
            numbers=self.numbers.copy(),
            positions=self.positions.copy(),
            cell=self.cell.copy(),
            pbc=self.pbc.copy(),
        )
        atoms.info.update(self.info)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces.copy()
        if self.stress is not None:
            results["stress"] = self.stress.copy()
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def _hash_into(self, h) -> None:
        h.update(_i8([len(self.numbers)]))
        h.update(_i8(self.numbers))
        h.update(_f8(self.positions))
        h.update(_f8(self.cell))
        h.update(_i8(self.pbc.astype(np.int64)))
        h.update(_i8([self.energy is not None, self.forces is not None, self.stress is not None]))
        if self.energy is not None:
            h.update(_f8([self.energy]))
        if self.forces is not None:
            h.update(_f8(self.forces))
        if self.stress is not None:
            h.update(_f8(self.stress))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def frames_sha256(frames: Sequence[Frame]) -> str:
    """Hex SHA-256 of the frames in order (numbers, positions, cell, pbc, energy, forces, stress,
    as canonical little-endian int64/float64 bytes, in eV/Å): :meth:`Dataset.sha256`."""
    h = hashlib.sha256(_HASH_TAG)
    h.update(_i8([len(frames)]))
    for fr in frames:
        fr._hash_into(h)
    return h.hexdigest()
