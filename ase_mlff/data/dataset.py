""":class:`Dataset`: a list of :class:`~ase_mlff.data.Frame` objects (eV, Å) with the provenance
of their source (file, format, units before conversion) and a content hash
(:meth:`Dataset.sha256`) that model files record. Splits (:mod:`ase_mlff.data.splits`) and
statistics (:mod:`ase_mlff.data.statistics`) are methods here, computed in their own modules.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import DatasetError
from ..units import (
    canonical_energy_unit,
    canonical_length_unit,
    energy_factor,
    length_factor,
)
from .frame import Frame, frames_sha256
from .labels import frame_from_parts
from .splits import Split, random_split, stratified_indices
from .statistics import DatasetStatistics, dataset_statistics, dataset_summary


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
            fr = frame_from_parts(
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
        return frames_sha256(self._frames)

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
        return random_split(len(self), n_train, n_valid, n_test, seed)

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
        return dataset_statistics(self)

    def summary(self) -> str:
        """Printable text summary (provenance, label counts, per-element table)."""
        return dataset_summary(self)

    # ---------------------------------------------------------------- output
    def to_atoms(self) -> list:
        """List of :class:`ase.Atoms` with SinglePointCalculators."""
        return [fr.to_atoms() for fr in self._frames]

    def to_extxyz(self, path) -> None:
        """Write all frames (eV/Å) to an extended-XYZ file with :func:`ase.io.write`."""
        import ase.io

        ase.io.write(os.fspath(path), self.to_atoms(), format="extxyz")
