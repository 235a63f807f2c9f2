"""Neighbour lists: the compiled cell list, and a Verlet-skin list that is reused between MD steps.

A pair ``(i, j, S)`` means atom ``j`` seen from atom ``i`` through the periodic image ``S``
(integer cell shifts): ``vector = positions[j] - positions[i] + S @ cell`` and
``|vector| < cutoff``. Lists are *full*: both ``(i, j, S)`` and ``(j, i, -S)`` appear. The
self pair ``(i, i, 0)`` never appears, but images of an atom in a cell smaller than the
cutoff do. ``S`` is zero along non-periodic directions. Pairs are sorted by ``i``.

Bounded work. Before searching, the compiled search estimates from the cell, the cutoff ``rc``
and the atom count ``N`` alone (in microseconds) what the search would cost, and refuses with
an :class:`~ase_mlff.errors.InputError` that says which bound failed and why:

* ``MAX_IMAGES`` (1e6) periodic images of the cell within reach, ``prod_d (2 ceil(rc / h_d) + 1)``
  over periodic directions, ``h_d`` the cell's height (distance between lattice planes) along
  ``d``. Only a nearly singular or needlessly skewed cell gets there: a = (7.04, 0, 0),
  b = (7.04, 0.001, 0) has heights of 0.001 Å along a and b, so a 5 Å cutoff reaches 3e8
  images (minutes of search before; refused in milliseconds now). The same lattice described
  by a reduced cell (``atoms.cell.minkowski_reduce()``) is accepted. A 2 Å thick cell with a
  20 Å cutoff reaches 21^3 = 9261.
* ``MAX_PAIRS`` (1e9, 60 GB of output) expected pairs, ``N * (N / V) * 4/3 pi rc^3`` with ``V``
  the cell volume (along a non-periodic direction, the atoms' extent, at least ``2 rc``).
* ``MAX_CANDIDATES`` (1e10, minutes of work) candidate pairs tested: ``N * (bins visited per
  atom) * (atoms per bin)``. Dense solids test a few candidates per pair found, so for them
  ``MAX_PAIRS`` comes first; this bound stops thin or skewed cells with many atoms.

Ctrl-C. The search runs without the GIL and checks for signals every ~10 ms in both passes,
so Ctrl-C (``KeyboardInterrupt``) stops a long search promptly.

Threads. Searches of more than about 6e4 candidate pairs (fcc copper from ~400 atoms at a
5 Å cutoff, ~1500 at 3 Å) run on the compiled kernels' thread pool, with the count set by
:func:`ase_mlff.set_num_threads` (:func:`ase_mlff.threads.last_threads_used` reads back what
a search ran on); smaller ones stay on the calling thread. The list is the same, bit for bit
and in the same order, for any count. Only the calling thread checks for Ctrl-C.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _ext
from .errors import InputError

# The compiled search's limits (see the module docstring), read from the extension itself.
MAX_IMAGES = _ext._core.NEIGHBOR_MAX_IMAGES  # periodic images within the cutoff's reach
MAX_PAIRS = _ext._core.NEIGHBOR_MAX_PAIRS  # expected pairs in the list
MAX_CANDIDATES = _ext._core.NEIGHBOR_MAX_CANDIDATES  # candidate pairs the search would test

@dataclass
class Pairs:
    """A full neighbour list; arrays are aligned pair by pair."""

    i: np.ndarray  # (P,) int64
    j: np.ndarray  # (P,) int64
    shifts: np.ndarray  # (P, 3) int32, integer cell shifts
    vectors: np.ndarray  # (P, 3) float64, Å
    distances: np.ndarray  # (P,) float64, Å

    def __len__(self) -> int:
        return len(self.i)


def _as_arrays(positions, cell, pbc):
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"positions must have shape (N, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise InputError(f"positions of atoms {bad[:10].tolist()} are NaN or infinite")
    cell = np.ascontiguousarray(np.asarray(cell, dtype=np.float64).reshape(3, 3))
    if not np.all(np.isfinite(cell)):
        raise InputError("the cell contains NaN or infinite entries")
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    if pbc.size == 1:
        pbc = np.repeat(pbc, 3)
    if pbc.size != 3:
        raise InputError(f"pbc must be a bool or 3 bools, got {pbc}")
    return positions, cell, pbc


def neighbor_list(positions, cell, pbc, cutoff: float, self_interaction: bool = False, n_threads: int = 0) -> Pairs:
    """Full neighbour list of all pairs closer than ``cutoff`` (Å); O(N) cell list in C++.

    Works for any non-singular triclinic cell (however skewed), for full, mixed (slab, wire)
    and no periodicity, and for periodic cells smaller than the cutoff. For a non-periodic
    direction the cell vector is ignored (it may be zero). Raises :class:`InputError` on bad
    input and on searches beyond the limits in the module docstring (``MAX_IMAGES``,
    ``MAX_PAIRS``, ``MAX_CANDIDATES``), and ``KeyboardInterrupt`` on Ctrl-C. ``n_threads``: 0
    (default) the configured count (:func:`ase_mlff.set_num_threads`), else as given; the
    output is the same for any count.
    """
    positions, cell, pbc = _as_arrays(positions, cell, pbc)
    try:
        i, j, s, v, d = _ext.neighbor_list(positions, cell, pbc, float(cutoff), bool(self_interaction),
                                           n_threads=int(n_threads))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return Pairs(i, j, s, v, d)


def atoms_neighbor_list(atoms, cutoff: float) -> Pairs:
    """:func:`neighbor_list` for an :class:`ase.Atoms`."""
    return neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)


class NeighborList:
    """Neighbour list kept between MD steps with a Verlet skin.

    The list is built for ``cutoff + skin`` and reused while no atom has moved more than
    ``skin / 2`` since the build (then no pair can have crossed into the cutoff unseen) and the
    cell, pbc and atom count are unchanged; otherwise it is rebuilt. Every call returns the
    pairs closer than ``cutoff`` for the current positions, identical to a fresh list.

    >>> nl = NeighborList(cutoff=5.0, skin=0.5)
    >>> pairs = nl.update(atoms)        # doctest: +SKIP
    """

    def __init__(self, cutoff: float, skin: float = 0.5):
        if not cutoff > 0:
            raise InputError(f"cutoff must be positive, got {cutoff}")
        if not skin >= 0:
            raise InputError(f"skin must be >= 0, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_builds = 0
        self.n_updates = 0
        self._ref_positions = None
        self._ref_cell = None
        self._ref_pbc = None
        self._pairs: Pairs | None = None

    def _needs_rebuild(self, positions, cell, pbc) -> bool:
        if self._pairs is None or self.skin == 0.0:
            return True
        if positions.shape != self._ref_positions.shape:
            return True
        if not np.array_equal(pbc, self._ref_pbc) or not np.array_equal(cell, self._ref_cell):
            return True
        disp2 = np.einsum("ij,ij->i", positions - self._ref_positions, positions - self._ref_positions)
        return bool(disp2.max(initial=0.0) > (0.5 * self.skin) ** 2)

    def _stored(self, atoms, positions, cell, pbc):
        """``(positions, cell, pbc, rebuilt)`` as arrays, the stored ``cutoff + skin`` list
        rebuilt first when needed."""
        if atoms is not None:
            positions, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        self.n_updates += 1
        rebuilt = self._needs_rebuild(positions, cell, pbc)
        if rebuilt:
            self._pairs = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
            self._ref_positions = positions.copy()
            self._ref_cell = cell.copy()
            self._ref_pbc = pbc.copy()
            self.n_builds += 1
        return positions, cell, pbc, rebuilt

    def update(self, atoms=None, *, positions=None, cell=None, pbc=None) -> Pairs:
        """Pairs within ``cutoff`` for the current geometry, rebuilding only when needed."""
        positions, cell, pbc, rebuilt = self._stored(atoms, positions, cell, pbc)
        p = self._pairs
        if rebuilt and self.skin == 0.0:
            return p
        i, j, s, v, d = _ext.filter_pairs(positions, cell, p.i, p.j, p.shifts, self.cutoff)
        return Pairs(i, j, s, v, d)

    def update_outer(self, atoms=None, *, positions=None, cell=None, pbc=None) -> tuple[Pairs, float, int]:
        """The stored ``cutoff + skin`` list itself, rebuilt only when needed, for a model whose
        outputs ignore pairs beyond its cutoff (``Model.accepts_outer_pairs``): no pair is
        rewritten. Returns ``(pairs, d_min, k)``: the list (its ``vectors`` and ``distances`` are
        those of the last build, not of the current positions), and the current distance of its
        closest pair ``k`` (``inf``, -1 without pairs), so overlapping atoms are still caught."""
        positions, cell, pbc, _ = self._stored(atoms, positions, cell, pbc)
        p = self._pairs
        d2, k = _ext.closest_pair(positions, cell, p.i, p.j, p.shifts)
        return p, float(np.sqrt(d2)), int(k)

    def reset(self) -> None:
        """Forget the stored list; the next update rebuilds."""
        self._pairs = None
