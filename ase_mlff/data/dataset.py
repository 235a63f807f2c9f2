"""Training data: labelled structures (frames), datasets, readers, splits and statistics.

Internal units are always eV (energies), Å (lengths), eV/Å (forces) and eV/Å^3 (stress, ASE Voigt order
``xx, yy, zz, yz, xz, xy``, ASE sign: positive = tensile).  Readers convert on input and record the
units of the source in the :class:`Dataset` metadata.

Supported inputs (:func:`read`):

* ``.npz``: MD17 / rMD17 / sGDML style arrays (``R``/``z``/``E``/``F`` or
  ``coords``/``nuclear_charges``/``energies``/``forces``; optional ``lattice``, ``e_unit``, ``r_unit``).
  A file without unit keys needs an explicit ``energy_unit`` (MD17/rMD17 files are in kcal/mol).
* ``.db``: ASE database (labels from the stored calculator results, key-value pairs or ``data``).
* anything else: :func:`ase.io.read` (extxyz and every other format ASE knows).

Label names and required labels: ``read(..., energy_key=, forces_key=, stress_key=,
require_forces=)`` in Python. The ``train`` commands set the same for every file they read
(training data, ``--test``, ``--calibration-data``) with ``--energy-key``, ``--forces-key``,
``--stress-key`` and ``--allow-missing-forces``, through :func:`label_options`; errors name
the keyword, and :func:`command_line_message` turns them into those flags.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
import os
from dataclasses import dataclass, field
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..errors import DatasetError
from ..rng import random_stream
from ..units import (
    canonical_energy_unit,
    canonical_length_unit,
    energy_factor,
    length_factor,
)

__all__ = [
    "Frame",
    "Dataset",
    "Split",
    "DatasetStatistics",
    "read",
    "ENERGY_KEYS",
    "FORCES_KEYS",
    "STRESS_KEYS",
    "VIRIAL_KEYS",
]

#: names searched (in this order) for labels in ``atoms.info`` / ``atoms.arrays`` / db data when no
#: explicit key is given.  Calculator results (``energy``, ``forces``, ``stress``) are used first.
ENERGY_KEYS = ("energy", "dft_energy", "Energy", "DFT_energy", "REF_energy", "total_energy")
FORCES_KEYS = ("forces", "dft_force", "dft_forces", "force", "Forces", "DFT_force", "REF_forces")
STRESS_KEYS = ("stress", "dft_stress", "Stress", "REF_stress")
VIRIAL_KEYS = ("virial", "dft_virial", "Virial", "DFT_virial", "REF_virial")

_HASH_TAG = b"ase-mlff/dataset/v1\x00"

#: label options of the command being run (:func:`label_options`); empty outside one
_LABEL_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("ase_mlff_label_options", default={})

#: the readers' keywords in their error messages -> what to give on a ``train`` command line
#: instead (:func:`command_line_message`)
COMMAND_LINE_FLAGS = (
    ("energy_key='NAME'", "--energy-key NAME"),
    ("forces_key='NAME'", "--forces-key NAME"),
    ("stress_key='NAME'", "--stress-key NAME"),
    ("require_forces=False", "--allow-missing-forces"),
    ("; to read frames without energies, pass require_energy=False", " (training needs every frame's energy)"),
    ("energy_unit=", "--energy-unit "),
    ("length_unit=", "--length-unit "),
)


@contextlib.contextmanager
def label_options(energy_key: str | None = None, forces_key: str | None = None,
                  stress_key: str | None = None, allow_missing_forces: bool = False):
    """Within the block, every :func:`read` that does not name a key itself looks for the labels
    under these names, and ``allow_missing_forces`` reads frames without forces instead of
    refusing them (as ``require_forces=False``). The ``train`` commands run inside one, set by
    ``--energy-key``, ``--forces-key``, ``--stress-key`` and ``--allow-missing-forces``, so that
    the options reach every file a recipe reads without each recipe passing them on."""
    token = _LABEL_OPTIONS.set({"energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key,
                                "allow_missing_forces": bool(allow_missing_forces)})
    try:
        yield
    finally:
        _LABEL_OPTIONS.reset(token)


def command_line_message(text: str) -> str:
    """An error message of the readers with their Python keywords replaced by the ``train``
    commands' flags (:data:`COMMAND_LINE_FLAGS`)."""
    for keyword, flag in COMMAND_LINE_FLAGS:
        text = text.replace(keyword, flag)
    return text


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _voigt_from_any(value, what: str = "stress") -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Frame
# --------------------------------------------------------------------------------------------


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
            self.stress = _voigt_from_any(self.stress)
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


def stratified_indices(energies: np.ndarray, candidates: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of ``candidates`` spread evenly over their ``energies`` (same length): sorted by
    energy (ties by index), cut into ``n`` equal-count bins, one drawn at random from each
    (named stream ``random_stream(seed, "stratified")``). Sorted int64 indices. Every
    stratified choice of the package (datasets, sGDML training frames) is this function."""
    candidates = np.asarray(candidates, dtype=np.int64)
    order = np.lexsort((candidates, energies))  # by energy, ties by index (deterministic)
    rng = random_stream(seed, "stratified")
    picks = [int(b[rng.integers(len(b))]) for b in np.array_split(candidates[order], n)]
    return np.sort(np.array(picks, dtype=np.int64))


class Split(NamedTuple):
    """Disjoint index arrays (sorted, int64) into a :class:`Dataset`."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


@dataclass
class DatasetStatistics:
    """Result of :meth:`Dataset.statistics` (energies eV, forces eV/Å)."""

    n_frames: int
    n_atoms_total: int
    natoms_min: int
    natoms_max: int
    elements: list[int]
    element_counts: dict[int, int]  # atoms of each element, summed over frames
    frames_with_element: dict[int, int]
    n_with_energy: int
    n_with_forces: int
    n_with_stress: int
    reference_energies: dict[int, float]  # eV/atom
    reference_method: str  # 'least_squares', 'least_squares_min_norm' or 'mean_energy_per_atom'
    reference_degenerate: bool
    reference_note: str
    reference_rmse_per_atom: float | None  # residual of the composition fit, eV/atom
    energy_per_atom_mean: float | None
    energy_per_atom_std: float | None
    force_rms: float | None
    force_rms_per_element: dict[int, float]

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


class Dataset(Sequence):
    """List-like container of :class:`Frame` objects with provenance metadata.

    ``source`` (path or None), ``source_energy_unit`` / ``source_length_unit`` (units of the
    source before conversion; internal data are always eV/Å), ``format`` (reader used) and
    ``metadata`` (free-form: label keys found, npz split keys, ...).
    Indexing with an int gives a :class:`Frame`; a slice, index array or boolean mask gives a new
    :class:`Dataset` sharing the provenance (``metadata['parent_indices']`` records the selection).
    """

    def __init__(
        self,
        frames: Iterable[Frame],
        source: str | None = None,
        source_energy_unit: str | None = "eV",
        source_length_unit: str | None = "Ang",
        format: str | None = None,
        metadata: dict | None = None,
        *,
        validate: bool = True,
    ):
        self._frames: list[Frame] = list(frames)
        for i, fr in enumerate(self._frames):
            if not isinstance(fr, Frame):
                raise DatasetError(f"frame {i}: expected a Frame, got {type(fr).__name__}")
            if validate:
                fr.validate(f"frame {i}")
        self.source = None if source is None else os.fspath(source)
        # None = unknown or mixed (e.g. a concatenation of datasets read in different units)
        self.source_energy_unit = None if source_energy_unit is None else canonical_energy_unit(source_energy_unit)
        self.source_length_unit = None if source_length_unit is None else canonical_length_unit(source_length_unit)
        self.format = format
        self.metadata = dict(metadata or {})

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_frames(cls, frames: Iterable[Frame], **kwargs) -> "Dataset":
        """Dataset from Frames (keyword arguments as in the constructor)."""
        return cls(frames, **kwargs)

    @classmethod
    def from_atoms(
        cls,
        atoms_list,
        *,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        virial_key: str | None = None,
        require_energy: bool = False,
        require_forces: bool = False,
        energy_unit: str | None = None,
        length_unit: str | None = None,
        source: str | None = None,
        format: str = "atoms",
    ) -> "Dataset":
        """Dataset from a list of :class:`ase.Atoms` (labels auto-detected as in :func:`read`).

        Labels are taken from the attached calculator's results or from ``info``/``arrays``
        (see :data:`ENERGY_KEYS` ...). ``energy_unit``/``length_unit`` default to eV/Å.
        """
        from ase import Atoms

        if isinstance(atoms_list, Atoms):
            atoms_list = [atoms_list]
        eu = canonical_energy_unit(energy_unit or "eV")
        lu = canonical_length_unit(length_unit or "Ang")
        ef, lf = energy_factor(eu), length_factor(lu)
        where = f"{source!r}" if source else "atoms"
        used: dict[str, set] = {"energy": set(), "forces": set(), "stress": set()}
        frames = []
        for i, atoms in enumerate(atoms_list):
            if not isinstance(atoms, Atoms):
                raise DatasetError(f"{where}, frame {i}: expected ase.Atoms, got {type(atoms).__name__}")
            calc_results = {}
            if atoms.calc is not None and isinstance(getattr(atoms.calc, "results", None), dict):
                calc_results = atoms.calc.results
            fr = _frame_from_parts(
                i,
                where,
                numbers=atoms.numbers,
                positions=atoms.positions,
                cell=np.asarray(atoms.cell),
                pbc=atoms.pbc,
                calc_results=calc_results,
                info=atoms.info,
                arrays=atoms.arrays,
                keys=(energy_key, forces_key, stress_key, virial_key),
                require=(require_energy, require_forces),
                factors=(ef, lf),
                used=used,
            )
            frames.append(fr)
        if not frames:
            raise DatasetError(f"{where}: no structures (empty dataset)")
        meta = {"label_keys": {k: sorted(v) for k, v in used.items()}}
        return cls(frames, source=source, source_energy_unit=eu, source_length_unit=lu,
                   format=format, metadata=meta)

    # ---------------------------------------------------------------- sequence protocol
    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self._frames)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            try:
                return self._frames[int(index)]
            except IndexError:
                raise IndexError(f"frame index {int(index)} out of range for {len(self)} frames") from None
        if isinstance(index, slice):
            idx = np.arange(len(self))[index]
        else:
            idx = np.asarray(index)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
                idx = np.flatnonzero(idx)
            elif idx.size == 0:
                idx = idx.astype(np.int64)
            elif idx.dtype.kind not in "iu" or idx.ndim != 1:
                raise TypeError(f"Dataset indices must be int, slice, 1-d int array or bool mask, got {index!r}")
            n = len(self)
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"frame index out of range for {n} frames")
            idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
        meta = dict(self.metadata)
        parent = meta.get("parent_indices")
        meta["parent_indices"] = (np.asarray(parent)[idx] if parent is not None else idx).tolist()
        return Dataset(
            [self._frames[i] for i in idx],
            source=self.source,
            source_energy_unit=self.source_energy_unit,
            source_length_unit=self.source_length_unit,
            format=self.format,
            metadata=meta,
            validate=False,
        )

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"Dataset({len(self)} frames, elements={self.elements}{src})"

    def __add__(self, other: "Dataset") -> "Dataset":
        if not isinstance(other, Dataset):
            return NotImplemented
        same = lambda a, b: a if a == b else None  # noqa: E731
        return Dataset(
            self._frames + other._frames,
            source=None,
            source_energy_unit=same(self.source_energy_unit, other.source_energy_unit),
            source_length_unit=same(self.source_length_unit, other.source_length_unit),
            format="concatenated",
            metadata={"parts": [self.provenance(), other.provenance()]},
            validate=False,
        )

    # ---------------------------------------------------------------- properties
    @property
    def frames(self) -> list[Frame]:
        return list(self._frames)

    @property
    def elements(self) -> list[int]:
        """Sorted list of the atomic numbers present."""
        if not self._frames:
            return []
        return sorted({int(z) for fr in self._frames for z in np.unique(fr.numbers)})

    @property
    def natoms(self) -> np.ndarray:
        return np.array([len(fr) for fr in self._frames], dtype=np.int64)

    @property
    def fixed_composition(self) -> bool:
        """True when every frame has the same atomic numbers in the same order."""
        if not self._frames:
            return False
        z0 = self._frames[0].numbers
        return all(fr.numbers.shape == z0.shape and np.array_equal(fr.numbers, z0) for fr in self._frames)

    @property
    def has_energy(self) -> bool:
        return bool(self._frames) and all(fr.energy is not None for fr in self._frames)

    @property
    def has_forces(self) -> bool:
        return bool(self._frames) and all(fr.forces is not None for fr in self._frames)

    @property
    def has_stress(self) -> bool:
        return bool(self._frames) and all(fr.stress is not None for fr in self._frames)

    @property
    def energies(self) -> np.ndarray:
        """(M,) energies in eV; :class:`DatasetError` if a frame has none."""
        missing = [i for i, fr in enumerate(self._frames) if fr.energy is None]
        if missing:
            raise DatasetError(f"frame {missing[0]} has no energy ({len(missing)} frames without energy)")
        return np.array([fr.energy for fr in self._frames], dtype=np.float64)

    def arrays(self) -> dict[str, np.ndarray | None]:
        """Stacked arrays for fixed-composition data: ``R`` (M, N, 3) Å, ``z`` (N,), ``E`` (M,) eV,
        ``F`` (M, N, 3) eV/Å (``E``/``F`` are None when some frame lacks them)."""
        if not self.fixed_composition:
            raise DatasetError(
                "arrays() needs fixed-composition data (same atomic numbers in the same order in every "
                "frame); this dataset mixes compositions or atom orderings"
            )
        return {
            "R": np.stack([fr.positions for fr in self._frames]),
            "z": self._frames[0].numbers.copy(),
            "E": self.energies if self.has_energy else None,
            "F": np.stack([fr.forces for fr in self._frames]) if self.has_forces else None,
        }

    # ---------------------------------------------------------------- provenance
    def sha256(self) -> str:
        """Stable hex SHA-256 of the training content (numbers, positions, cell, pbc, energy, forces,
        stress of every frame in order, as canonical little-endian int64/float64 bytes, in eV/Å)."""
        h = hashlib.sha256(_HASH_TAG)
        h.update(_i8([len(self._frames)]))
        for fr in self._frames:
            fr._hash_into(h)
        return h.hexdigest()

    def provenance(self) -> dict[str, Any]:
        """JSON-friendly description for model files (source, format, units, size, sha256)."""
        return {
            "source": self.source,
            "format": self.format,
            "source_energy_unit": self.source_energy_unit,
            "source_length_unit": self.source_length_unit,
            "n_frames": len(self),
            "elements": self.elements,
            "sha256": self.sha256(),
        }

    # ---------------------------------------------------------------- splitting / selection
    def split(self, n_train: int, n_valid: int = 0, n_test: int | None = None, seed: int = 0) -> Split:
        """Random disjoint ``Split(train, valid, test)`` of frame indices, reproducible for ``seed``
        (drawn from the named stream ``random_stream(seed, "split")`` of :mod:`ase_mlff.rng`).

        ``n_test=None`` puts every remaining frame into ``test``. Each array is sorted."""
        m = len(self)
        counts = {"n_train": n_train, "n_valid": n_valid}
        if n_test is not None:
            counts["n_test"] = n_test
        for name, v in counts.items():
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise DatasetError(f"split(): {name} must be a non-negative integer, got {v!r}")
        need = n_train + n_valid + (n_test or 0)
        if need > m:
            raise DatasetError(
                f"dataset too small: split() asks for {n_train} train + {n_valid} valid"
                + (f" + {n_test} test" if n_test is not None else "")
                + f" = {need} frames but the dataset has only {m}"
            )
        perm = random_stream(seed, "split").permutation(m)
        a, b = int(n_train), int(n_train + n_valid)
        c = m if n_test is None else b + int(n_test)
        return Split(np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:c]))

    def select_stratified(self, indices=None, n: int = 1, seed: int = 0) -> np.ndarray:
        """Pick ``n`` of ``indices`` (default: all frames) spread evenly over the energy distribution.

        The candidates are sorted by energy, cut into ``n`` equal-count (quantile) bins and one frame is
        drawn at random from each bin (reproducible for ``seed``; named stream
        ``random_stream(seed, "stratified")``). Returns sorted frame indices."""
        cand = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise DatasetError(f"select_stratified(): n must be a non-negative integer, got {n!r}")
        if len(np.unique(cand)) != len(cand):
            raise DatasetError("select_stratified(): indices contain duplicates")
        if n > len(cand):
            raise DatasetError(
                f"select_stratified(): cannot pick {n} frames from {len(cand)} candidates"
            )
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        energies = np.array([self[int(i)].energy if self[int(i)].energy is not None else np.nan for i in cand])
        if np.isnan(energies).any():
            j = int(cand[np.flatnonzero(np.isnan(energies))[0]])
            raise DatasetError(f"select_stratified(): frame {j} has no energy")
        return stratified_indices(energies, cand, n, seed)

    # ---------------------------------------------------------------- statistics
    def statistics(self) -> DatasetStatistics:
        """Per-element counts, composition-fitted reference energies, energy/force statistics."""
        if not self._frames:
            raise DatasetError("statistics(): the dataset is empty")
        elements = self.elements
        col = {z: k for k, z in enumerate(elements)}
        comp = np.zeros((len(self), len(elements)))
        for i, fr in enumerate(self._frames):
            zs, cnt = np.unique(fr.numbers, return_counts=True)
            for z, c in zip(zs, cnt):
                comp[i, col[int(z)]] = c
        natoms = comp.sum(axis=1)
        e_mask = np.array([fr.energy is not None for fr in self._frames])
        E = np.array([fr.energy if fr.energy is not None else np.nan for fr in self._frames])

        ref: dict[int, float] = {}
        method, degenerate, note, rmse = "none", False, "no energies", None
        e_mean = e_std = None
        if e_mask.any():
            A, y = comp[e_mask], E[e_mask]
            epa = y / natoms[e_mask]
            e_mean, e_std = float(epa.mean()), float(epa.std())
            rank = np.linalg.matrix_rank(A)
            fixed_comp = np.all(A == A[0])
            if len(elements) > 1 and (fixed_comp or len(y) == 1):
                method, degenerate = "mean_energy_per_atom", True
                note = (
                    "composition fit is degenerate (every frame has the same composition): the reference "
                    "energy of every element is the mean energy per atom"
                )
                ref = {z: e_mean for z in elements}
                rmse = float(epa.std())
            else:
                coef, *_ = np.linalg.lstsq(A, y, rcond=None)
                ref = {z: float(coef[k]) for z, k in col.items()}
                rmse = float(np.sqrt(np.mean(((A @ coef - y) / A.sum(axis=1)) ** 2)))
                if rank < len(elements):
                    method, degenerate = "least_squares_min_norm", True
                    note = (
                        f"composition matrix has rank {rank} < {len(elements)} elements: the least-squares "
                        "fit is degenerate, minimum-norm solution reported"
                    )
                else:
                    method, note = "least_squares", "least squares of total energy on composition"

        f_sq: dict[int, list] = {z: [0.0, 0] for z in elements}
        for fr in self._frames:
            if fr.forces is None:
                continue
            for z in np.unique(fr.numbers):
                sel = fr.forces[fr.numbers == z]
                f_sq[int(z)][0] += float(np.sum(sel**2))
                f_sq[int(z)][1] += sel.size
        f_rms = {z: math.sqrt(s / c) for z, (s, c) in f_sq.items() if c}
        tot_c = sum(c for _, c in f_sq.values())
        force_rms = math.sqrt(sum(s for s, _ in f_sq.values()) / tot_c) if tot_c else None

        frames_with = {z: int(np.sum(comp[:, col[z]] > 0)) for z in elements}
        return DatasetStatistics(
            n_frames=len(self),
            n_atoms_total=int(natoms.sum()),
            natoms_min=int(natoms.min()),
            natoms_max=int(natoms.max()),
            elements=elements,
            element_counts={z: int(comp[:, col[z]].sum()) for z in elements},
            frames_with_element=frames_with,
            n_with_energy=int(e_mask.sum()),
            n_with_forces=sum(fr.forces is not None for fr in self._frames),
            n_with_stress=sum(fr.stress is not None for fr in self._frames),
            reference_energies=ref,
            reference_method=method,
            reference_degenerate=degenerate,
            reference_note=note,
            reference_rmse_per_atom=rmse,
            energy_per_atom_mean=e_mean,
            energy_per_atom_std=e_std,
            force_rms=force_rms,
            force_rms_per_element=f_rms,
        )

    def summary(self) -> str:
        """Printable text summary (provenance, label counts, per-element table)."""
        from ase.data import chemical_symbols

        st = self.statistics()
        lines = [
            f"Dataset: {st.n_frames} frames, {st.n_atoms_total} atoms "
            f"({st.natoms_min}-{st.natoms_max} per frame), "
            f"{'fixed' if self.fixed_composition else 'variable'} composition",
            f"source: {self.source or '-'}  format: {self.format or '-'}  "
            f"source units: {self.source_energy_unit}, {self.source_length_unit} (stored in eV, Ang)",
            f"labels: energy {st.n_with_energy}/{st.n_frames}, forces {st.n_with_forces}/{st.n_frames}, "
            f"stress {st.n_with_stress}/{st.n_frames}",
        ]
        if st.energy_per_atom_mean is not None:
            lines.append(
                f"energy per atom: mean {st.energy_per_atom_mean:.6f} eV, std {st.energy_per_atom_std:.6f} eV"
            )
        lines.append(f"reference energies: {st.reference_note}")
        if st.force_rms is not None:
            lines.append(f"force component RMS (all atoms): {st.force_rms:.4f} eV/Ang")
        header = f"{'Z':>4} {'elem':<5} {'atoms':>9} {'frames':>7} {'E_ref [eV/atom]':>16} {'F_rms [eV/Ang]':>15}"
        lines += [header, "-" * len(header)]
        for z in st.elements:
            eref = st.reference_energies.get(z)
            frms = st.force_rms_per_element.get(z)
            lines.append(
                f"{z:>4} {chemical_symbols[z]:<5} {st.element_counts[z]:>9} {st.frames_with_element[z]:>7} "
                f"{'-' if eref is None else f'{eref:.6f}':>16} {'-' if frms is None else f'{frms:.4f}':>15}"
            )
        lines.append(f"sha256: {self.sha256()}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- output
    def to_atoms(self) -> list:
        """List of :class:`ase.Atoms` with SinglePointCalculators."""
        return [fr.to_atoms() for fr in self._frames]

    def to_extxyz(self, path) -> None:
        """Write all frames (eV/Å) to an extended-XYZ file with :func:`ase.io.write`."""
        import ase.io

        ase.io.write(os.fspath(path), self.to_atoms(), format="extxyz")


# --------------------------------------------------------------------------------------------
# label extraction shared by the ase / db readers
# --------------------------------------------------------------------------------------------


def _lookup(name, calc_results, info, arrays, per_atom: bool, natoms: int):
    """Value of label ``name`` from calculator results, info or arrays (None when absent)."""
    for src, d in (("calc", calc_results), ("info", info), ("arrays", arrays)):
        if d and name in d:
            v = d[name]
            if v is None:
                continue
            if per_atom and src == "info":
                a = np.asarray(v)
                if a.ndim == 0 or a.shape[0] != natoms:
                    continue
            return f"{src}:{name}", v
    return None, None


_MISSING_ENERGY_HINT = ("if the file stores the energy under another name, pass energy_key='NAME'; "
                        "to read frames without energies, pass require_energy=False")
_MISSING_FORCES_HINT = ("if the file stores them under another name, pass forces_key='NAME'; "
                        "to use the frames without forces (their energies only), pass require_forces=False")


def _frame_from_parts(i, where, *, numbers, positions, cell, pbc, calc_results, info, arrays,
                      keys, require, factors, used) -> Frame:
    energy_key, forces_key, stress_key, virial_key = keys
    require_energy, require_forces = require
    ef, lf = factors
    n = len(numbers)
    tag = f"{where}, frame {i}"

    def pick(explicit, calc_name, candidates, per_atom):
        if explicit is not None:  # explicit key: no shape filtering, a wrong shape is reported below
            return _lookup(explicit, calc_results, info, arrays, False, n)
        if calc_name is not None and calc_results and calc_results.get(calc_name) is not None:
            return f"calc:{calc_name}", calc_results[calc_name]
        for name in candidates:
            k, v = _lookup(name, None, info, arrays, per_atom, n)
            if k is not None:
                return k, v
        return None, None

    ek, e = pick(energy_key, "energy", ENERGY_KEYS, False)
    fk, f = pick(forces_key, "forces", FORCES_KEYS, True)
    if virial_key is not None:
        sk, s = None, None
        vk, v = _lookup(virial_key, calc_results, info, arrays, False, n)
    else:
        sk, s = pick(stress_key, "stress", STRESS_KEYS, False)
        vk, v = (None, None) if (sk is not None or stress_key is not None) else pick(None, None, VIRIAL_KEYS, False)

    if e is None and require_energy:
        what = f"key {energy_key!r}" if energy_key else f"calculator results or info keys {list(ENERGY_KEYS)}"
        raise DatasetError(f"{tag}: missing energy (looked in {what}); {_MISSING_ENERGY_HINT}")
    if f is None and require_forces:
        what = (f"key {forces_key!r}" if forces_key
                else f"calculator results or arrays {list(FORCES_KEYS)}")
        raise DatasetError(f"{tag}: missing forces (looked in {what}); {_MISSING_FORCES_HINT}")
    if stress_key is not None and s is None:
        raise DatasetError(f"{tag}: stress key {stress_key!r} not found")
    if virial_key is not None and v is None:
        raise DatasetError(f"{tag}: virial key {virial_key!r} not found")

    positions = np.asarray(positions, dtype=float) * lf
    cell = np.asarray(cell, dtype=float) * lf
    try:
        energy = None if e is None else float(np.asarray(e, dtype=float).reshape(())) * ef
    except (TypeError, ValueError):
        raise DatasetError(f"{tag}: energy ({ek}) is not a scalar number: {e!r}") from None
    forces = None
    if f is not None:
        f = np.asarray(f, dtype=float)
        if f.shape != (n, 3):
            raise DatasetError(f"{tag}: forces ({fk}) have shape {f.shape} but positions have shape ({n}, 3)")
        forces = f * (ef / lf)
    stress = None
    try:
        if s is not None:
            stress = _voigt_from_any(s, f"stress ({sk})") * (ef / lf**3)
        elif v is not None:
            vol = abs(np.linalg.det(cell))
            if not vol > 1e-12:
                raise DatasetError(f"{tag}: virial ({vk}) given but the cell has zero volume")
            # virial = -stress * volume (libAtoms convention) -> ASE stress = -virial / V
            stress = -_voigt_from_any(v, f"virial ({vk})") * ef / vol
            sk = f"{vk} (stress = -virial/volume)"
    except DatasetError as err:
        if str(err).startswith(tag):
            raise
        raise DatasetError(f"{tag}: {err}") from None
    for label, k in (("energy", ek), ("forces", fk), ("stress", sk)):
        if k is not None:
            used[label].add(k)
    # labels people group by (strings) and per-structure scalars (targets for fit-head, e.g. a gap)
    keep_info = {k: v for k, v in (info or {}).items()
                 if (k in ("config_type", "description", "name", "tag") and isinstance(v, str))
                 or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)))}
    try:
        fr = Frame(numbers, positions, cell, pbc, energy, forces, stress, info=keep_info)
    except DatasetError as err:
        raise DatasetError(f"{tag}: {err}") from None
    return fr.validate(tag)


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------


def _parse_index(index):
    """':' / '3' / '-1' / '0:10:2' / int / slice -> int or slice."""
    if index is None:
        return slice(None)
    if isinstance(index, (int, np.integer)):
        return int(index)
    if isinstance(index, slice):
        return index
    if isinstance(index, str):
        s = index.strip()
        try:
            if ":" not in s:
                return int(s)
            parts = [p.strip() for p in s.split(":")]
            if len(parts) > 3:
                raise ValueError
            vals = [int(p) if p else None for p in parts]
            return slice(*vals)
        except ValueError:
            raise DatasetError(f"cannot understand index {index!r} (use ':', '5', '-1', '0:100', '::10')") from None
    raise DatasetError(f"index must be an int, slice or string, got {index!r}")


def _apply_index(m: int, index, path) -> np.ndarray:
    idx = _parse_index(index)
    if isinstance(idx, int):
        if not -m <= idx < m:
            raise DatasetError(f"{path!r}: frame index {idx} out of range ({m} frames)")
        return np.array([idx % m])
    return np.arange(m)[idx]


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
    given = _LABEL_OPTIONS.get()
    energy_key = energy_key if energy_key is not None else given.get("energy_key")
    forces_key = forces_key if forces_key is not None else given.get("forces_key")
    stress_key = stress_key if stress_key is not None else given.get("stress_key")
    require_forces = require_forces and not given.get("allow_missing_forces", False)
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
        return _read_npz(path, index, energy_unit, length_unit, require_energy, require_forces, **keys)
    if fmt == "db":
        return _read_db(path, index, energy_unit, length_unit, require_energy, require_forces, **keys)
    return _read_ase(path, index, fmt, energy_unit, length_unit, require_energy, require_forces, **keys)


def _read_ase(path, index, fmt, energy_unit, length_unit, require_energy, require_forces, **keys) -> Dataset:
    import ase.io

    idx = _parse_index(index)
    try:
        images = ase.io.read(path, index=idx, format=fmt)
    except DatasetError:
        raise
    except Exception as err:  # UnknownFileTypeError, parse errors, ...
        raise DatasetError(
            f"cannot read {path!r}" + (f" as format {fmt!r}" if fmt else "")
            + f" with ase.io.read: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise DatasetError(f"{path!r}: no structures found (empty dataset)")
    ds = Dataset.from_atoms(
        images,
        require_energy=require_energy,
        require_forces=require_forces,
        energy_unit=energy_unit,
        length_unit=length_unit,
        source=path,
        format=fmt or "ase",
        **keys,
    )
    return ds


def _read_db(path, index, energy_unit, length_unit, require_energy, require_forces, **keys) -> Dataset:
    import ase.db

    try:
        with ase.db.connect(path, type="db") as db:
            rows = list(db.select())
    except Exception as err:
        raise DatasetError(f"cannot read {path!r} as an ASE database: {type(err).__name__}: {err}") from err
    if not rows:
        raise DatasetError(f"{path!r}: the database has no rows (empty dataset)")
    sel = _apply_index(len(rows), index, path)
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
            _frame_from_parts(
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


_NPZ_ALIASES = {
    "R": ("R", "coords", "positions"),
    "z": ("z", "nuclear_charges", "numbers", "Z"),
    "E": ("E", "energies", "energy"),
    "F": ("F", "forces"),
}


def _npz_unit(d, key):
    if key not in d:
        return None
    v = np.asarray(d[key])
    if v.dtype.kind not in "US" or v.size != 1:
        return None
    s = str(v.reshape(()).item()).strip()
    return None if s.lower() in ("", "n/a", "na", "none", "unknown") else s


def _read_npz(path, index, energy_unit, length_unit, require_energy, require_forces,
              energy_key=None, forces_key=None, stress_key=None, virial_key=None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except ValueError as err:
        raise DatasetError(
            f"cannot read {path!r} as npz without pickle (object arrays are refused for safety): {err}"
        ) from err
    except Exception as err:
        raise DatasetError(f"cannot read {path!r} as npz: {type(err).__name__}: {err}") from err

    def find(role, explicit=None):
        if explicit is not None:
            if explicit not in d:
                raise DatasetError(f"{path!r}: key {explicit!r} not found; keys are {sorted(d)}")
            return explicit
        for k in _NPZ_ALIASES[role]:
            if k in d:
                return k
        return None

    rk, zk = find("R"), find("z")
    if rk is None or zk is None:
        raise DatasetError(
            f"{path!r}: not an MD17/sGDML-style npz: need positions (R or coords) and atomic numbers "
            f"(z or nuclear_charges); keys are {sorted(d)}"
        )
    ek, fk = find("E", energy_key), find("F", forces_key)
    sk = find("S", stress_key) if stress_key is not None else None
    vk = find("V", virial_key) if virial_key is not None else None

    # ---- units (never guessed for energies)
    file_eu, file_ru = _npz_unit(d, "e_unit"), _npz_unit(d, "r_unit")
    if file_eu is not None:
        eu = canonical_energy_unit(file_eu)
        if energy_unit is not None and canonical_energy_unit(energy_unit) != eu:
            raise DatasetError(
                f"{path!r} declares e_unit={file_eu!r} but energy_unit={energy_unit!r} was given; "
                "remove the argument or fix the file"
            )
    elif energy_unit is not None:
        eu = canonical_energy_unit(energy_unit)
    elif ek is None and fk is None:
        eu = "eV"  # no energy-like labels at all: nothing to convert
    else:
        raise DatasetError(
            f"{path!r} does not state its energy unit (no 'e_unit' key); pass energy_unit=... explicitly. "
            "MD17/rMD17 npz files are in kcal/mol (energies) and kcal/mol/Ang (forces): use "
            "energy_unit='kcal/mol'. Units are never guessed."
        )
    if file_ru is not None:
        lu = canonical_length_unit(file_ru)
        if length_unit is not None and canonical_length_unit(length_unit) != lu:
            raise DatasetError(
                f"{path!r} declares r_unit={file_ru!r} but length_unit={length_unit!r} was given; "
                "remove the argument or fix the file"
            )
    else:
        lu = canonical_length_unit(length_unit or "Ang")  # MD17/sGDML convention
    ef, lf = energy_factor(eu), length_factor(lu)

    # ---- shapes
    R = np.asarray(d[rk])
    if R.dtype.kind not in "fiu":
        raise DatasetError(f"{path!r}: positions {rk!r} are not numeric (dtype {R.dtype})")
    if R.ndim == 2 and R.shape[1] == 3:
        R = R[None]
    if R.ndim != 3 or R.shape[2] != 3:
        raise DatasetError(f"{path!r}: positions {rk!r} have shape {R.shape}, expected (frames, atoms, 3)")
    m, n = R.shape[:2]
    if m == 0:
        raise DatasetError(f"{path!r}: no frames (empty dataset)")
    Z = np.asarray(d[zk])
    if Z.ndim == 1:
        if Z.shape[0] != n:
            raise DatasetError(f"{path!r}: {zk!r} has {Z.shape[0]} atoms but {rk!r} has {n} atoms per frame")
        Z = np.broadcast_to(Z, (m, n))
    elif Z.shape != (m, n):
        raise DatasetError(f"{path!r}: {zk!r} has shape {Z.shape}, expected ({n},) or ({m}, {n})")

    def frames_check(key, arr):
        if arr.shape[0] != m:
            raise DatasetError(
                f"{path!r}: mismatched frame counts: {key!r} has {arr.shape[0]} frames but {rk!r} has {m}"
            )

    E = F = S = V = None
    if ek is not None:
        E = np.asarray(d[ek], dtype=float)
        if E.ndim == 0:
            E = E.reshape(1)
        if E.ndim == 2 and E.shape[1] == 1:
            E = E[:, 0]
        if E.ndim != 1:
            raise DatasetError(f"{path!r}: energies {ek!r} have shape {E.shape}, expected ({m},) or ({m}, 1)")
        frames_check(ek, E)
    elif require_energy:
        raise DatasetError(
            f"{path!r}: missing energies (no key E or energies; keys are {sorted(d)}); "
            + _MISSING_ENERGY_HINT
        )
    if fk is not None:
        F = np.asarray(d[fk], dtype=float)
        if F.ndim == 2 and m == 1:
            F = F[None]
        if F.ndim != 3:
            raise DatasetError(f"{path!r}: forces {fk!r} have shape {F.shape}, expected ({m}, {n}, 3)")
        frames_check(fk, F)
        if F.shape != R.shape:
            raise DatasetError(
                f"{path!r}: forces {fk!r} have shape {F.shape} but positions {rk!r} have shape {R.shape}"
            )
    elif require_forces:
        raise DatasetError(
            f"{path!r}: missing forces (no key F or forces; keys are {sorted(d)}); "
            + _MISSING_FORCES_HINT
        )
    for key, ref in ((sk, "S"), (vk, "V")):
        if key is None:
            continue
        a = np.asarray(d[key], dtype=float)
        frames_check(key, a)
        if ref == "S":
            S = a
        else:
            V = a

    cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    if "lattice" in d:
        lat = np.asarray(d["lattice"], dtype=float)
        if lat.shape != (3, 3):
            raise DatasetError(f"{path!r}: 'lattice' has shape {lat.shape}, expected (3, 3)")
        cell, pbc = lat * lf, np.ones(3, dtype=bool)

    sel = _apply_index(m, index, path)
    frames = []
    for i in sel:
        tag = f"{path!r}, frame {int(i)}"
        try:
            stress = None
            if S is not None:
                stress = _voigt_from_any(S[i], f"stress ({sk})") * (ef / lf**3)
            elif V is not None:
                vol = abs(np.linalg.det(cell))
                if not vol > 1e-12:
                    raise DatasetError(f"virial ({vk}) given but there is no 'lattice' (cell volume 0)")
                stress = -_voigt_from_any(V[i], f"virial ({vk})") * ef / vol
            fr = Frame(
                numbers=Z[i],
                positions=R[i] * lf,
                cell=cell,
                pbc=pbc,
                energy=None if E is None else E[i] * ef,
                forces=None if F is None else F[i] * (ef / lf),
                stress=stress,
            )
        except DatasetError as err:
            raise DatasetError(f"{tag}: {err}") from None
        frames.append(fr.validate(tag))
    meta = {"label_keys": {"positions": rk, "numbers": zk, "energy": ek, "forces": fk,
                           "stress": sk or (f"{vk} (stress = -virial/volume)" if vk else None)},
            "npz_indices": sel.tolist()}
    for k, v in d.items():  # small integer side arrays (e.g. 'split', 'old_indices') are kept for reference
        if k not in (rk, zk, ek, fk, sk, vk) and v.dtype.kind in "iub" and v.shape == (m,):
            meta[f"npz:{k}"] = v[sel].tolist()
    return Dataset(frames, source=path, source_energy_unit=eu, source_length_unit=lu, format="npz",
                   metadata=meta, validate=False)
