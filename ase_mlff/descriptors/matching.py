"""Atom-order matching of global models (sGDML): labellings compared by distance matrices,
used by the model to identify the order of its input (:mod:`ase_mlff.models.sgdml`) and by
training to find the molecule's permutational symmetries (:mod:`ase_mlff.training.symmetries`);
plus the per-model cache that keeps the identification cheap along a trajectory.

Conventions:

- A labelling is an index array ``perm`` over the model's atoms: model atom ``a`` is input atom
  ``perm[a]``, so ``positions[perm]`` is the input in the model's order (the same convention as
  the symmetries found in training). The identity means "use the atoms as given".
- ``group`` (S, N) is the model's permutation group (identity first). For ``q`` in the group the
  model gives the same energy for ``R`` and ``R[q]``, so the labellings ``perm[q]`` are
  *equivalent*: they are one answer, not competing ones.
- The residual of a labelling is the RMS difference (Å, mean over all N² entries) between the
  relabelled input distance matrix and a reference (training) distance matrix, minimised over the
  references given and over the equivalent labellings ``perm[q]``.

All distances in Å.
"""

from __future__ import annotations

import numpy as np


def distance_matrix(positions: np.ndarray) -> np.ndarray:
    """(N, N) interatomic distances (Å) of one structure (N, 3)."""
    diff = positions[:, None, :] - positions[None, :, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))


def distance_matrices(R: np.ndarray) -> np.ndarray:
    """(M, N, N) interatomic distances (Å) of M structures (M, N, 3)."""
    diff = R[:, :, None, :] - R[:, None, :, :]
    return np.sqrt((diff * diff).sum(-1))


def mismatch(A_i: np.ndarray, A_j: np.ndarray, tau: np.ndarray) -> float:
    """RMS difference (Å) between ``A_i`` and ``A_j`` relabelled by ``tau``."""
    return float(np.sqrt(np.mean((A_j[np.ix_(tau, tau)] - A_i) ** 2)))


def greedy_swaps(A_i, A_j, tau, z):
    """First-improvement descent over exchanges of two same-element labels of ``tau``: keep
    each exchange that lowers :func:`mismatch` until a full sweep finds none. Returns
    ``(tau, mismatch)``. (Symmetry detection; :func:`polish` is the steepest-descent variant
    the model uses for one input against one reference.)"""
    tau = tau.copy()
    best = mismatch(A_i, A_j, tau)
    n = len(tau)
    improved = True
    while improved:
        improved = False
        for a in range(n):
            for b in range(a + 1, n):
                if z[a] != z[b]:
                    continue
                tau[a], tau[b] = tau[b], tau[a]
                m = mismatch(A_i, A_j, tau)
                if m < best - 1e-12:
                    best, improved = m, True
                else:
                    tau[a], tau[b] = tau[b], tau[a]
    return tau, best


def labelling_residuals(A: np.ndarray, perms: np.ndarray, group: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Residual (K,) of each labelling in ``perms`` (K, N) of the input distance matrix ``A`` (N, N)
    against the reference distance matrices ``refs`` (R, N, N), minimised over references and over
    ``group`` (S, N)."""
    n = A.shape[0]
    # chunks of labellings keep the (k, S, R, N, N) differences to a few tens of MB for large groups
    step = max(1, 4_000_000 // (len(group) * len(refs) * n * n))
    out = np.empty(len(perms))
    for s in range(0, len(perms), step):
        idx = perms[s:s + step, group]  # (k, S, N): the equivalent labellings perm[q]
        B = A[idx[..., :, None], idx[..., None, :]]  # (k, S, N, N)
        d = B[:, :, None] - refs[None, None]  # (k, S, R, N, N)
        r2 = np.einsum("ksrij,ksrij->ksr", d, d) / (n * n)
        out[s:s + step] = np.sqrt(r2.reshape(len(idx), -1).min(1))
    return out


class ExchangeCosts:
    """Change (K, M) of the squared difference ``|B - R_k|²`` between a distance matrix ``B``
    (N, N) and each reference ``refs[k]`` (K, N, N) when atoms ``i[m]`` and ``j[m]`` of ``B``
    exchange labels (rows and columns swapped), for all M exchanges from one matrix product.

    Only rows and columns i and j change, and ``|B'|² = |B|²``, which leaves
    ``4 ((BR)_ii + (BR)_jj - (BR)_ij - (BR)_ji - 2 B_ij R_ij)`` (B and R symmetric). The
    references are kept side by side, (N, K N), so ``B R_k`` for every k is one product, and
    the entries needed are read from it through index arrays made once.
    """

    def __init__(self, refs: np.ndarray, i: np.ndarray, j: np.ndarray):
        k, n, _ = refs.shape
        self.side = np.ascontiguousarray(refs.transpose(1, 0, 2).reshape(n, k * n))
        kk = np.arange(k)[:, None] * n
        row = k * n  # flat index of (B R_k)[a, b] in the product: a * row + k * n + b
        self.diag_i = (i[None, :] * row + kk + i[None, :]).ravel()
        self.diag_j = (j[None, :] * row + kk + j[None, :]).ravel()
        self.ij = (i[None, :] * row + kk + j[None, :]).ravel()
        self.ji = (j[None, :] * row + kk + i[None, :]).ravel()
        self.ref_ij = 2.0 * refs[:, i, j]
        self.i, self.j, self.shape = i, j, (k, len(i))

    def __call__(self, B: np.ndarray) -> np.ndarray:
        C = (B @ self.side).ravel()
        out = C[self.diag_i] + C[self.diag_j] - C[self.ij] - C[self.ji]
        return 4.0 * (out.reshape(self.shape) - B[self.i, self.j] * self.ref_ij)


def polish(A: np.ndarray, Aref: np.ndarray, perm: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Steepest descent over exchanges of two model atoms ``pairs`` (K, 2) (same element): apply
    the exchange that lowers the mismatch ``|A[perm][:, perm] - Aref|`` most until none does."""
    perm = perm.copy()
    if len(pairs) == 0:
        return perm
    k = np.arange(len(pairs))
    diff = A[np.ix_(perm, perm)] - Aref
    current = float(np.einsum("ij,ij->", diff, diff))
    while True:
        alts = np.repeat(perm[None], len(pairs), 0)
        alts[k, pairs[:, 0]] = perm[pairs[:, 1]]
        alts[k, pairs[:, 1]] = perm[pairs[:, 0]]
        d = A[alts[:, :, None], alts[:, None, :]] - Aref
        cost = np.einsum("kij,kij->k", d, d)
        b = int(np.argmin(cost))
        # relative tolerance: a swap of two equidistant atoms must not loop forever
        if not cost[b] < current * (1.0 - 1e-12):
            return perm
        perm, current = alts[b], float(cost[b])


def element_pairs(z: np.ndarray) -> np.ndarray:
    """All pairs ``(i, j)``, ``i < j``, of atoms of the same element, shape (K, 2)."""
    i, j = np.nonzero(np.triu(z[:, None] == z[None, :], 1))
    return np.stack([i, j], 1).astype(np.int64)


def same_element_swaps(perm: np.ndarray, z: np.ndarray, group: np.ndarray):
    """Labellings that differ from ``perm`` by exchanging two model atoms of the same element,
    leaving out those equivalent to ``perm`` under ``group``. Returns ``(alts (K, N), pairs (K, 2))``."""
    equivalent = {tuple(perm[q].tolist()) for q in group}
    alts, pairs = [], []
    n = len(z)
    for i in range(n):
        for j in range(i + 1, n):
            if z[i] != z[j]:
                continue
            alt = perm.copy()
            alt[i], alt[j] = alt[j], alt[i]
            if tuple(alt.tolist()) not in equivalent:
                alts.append(alt)
                pairs.append((i, j))
    n_alt = len(alts)
    return (np.array(alts, dtype=np.int64).reshape(n_alt, n),
            np.array(pairs, dtype=np.int64).reshape(n_alt, 2))


class OrderTracker:
    """The last identified geometry (in the caller's labelling) and the answer found for it.

    A new geometry with the same atomic numbers reuses the answer when every atom moved by less
    than ``limit`` after removing the mean displacement (a rigid translation changes nothing).
    Why that is safe: with ``d`` the smallest distance between two same-element atoms of the
    remembered geometry and every atom within ``d/3`` of where it was, each atom is closer to its
    own old position than to that of any other atom of its element (by more than ``d/3``), so the
    labelling is the one that follows the atoms continuously from an identified geometry; a
    relabelling of two same-element atoms moves both by their separation, ``>= d``. ``limit`` is
    ``min(max_step, d/3)``. Each accepted geometry becomes the new reference, so the cache
    follows a trajectory; ``d`` is then tracked as a lower bound (it shrinks by at most twice the
    step) and recomputed only when that bound starts to limit the step.
    """

    def __init__(self, max_step: float):
        self.max_step = float(max_step)
        # one tuple (numbers, positions, answer, limit, d_bound, ia, ib), replaced as a whole and
        # never modified, so that threads sharing the model never see a geometry paired with
        # another geometry's answer (no lock: models must stay deep-copyable)
        self._state = None
        #: what the model keeps to re-check its answer on distinct geometries (its own format;
        #: forgotten by clear() with the rest)
        self.remembered = None
        #: lookups answered from the remembered geometry (a small step) and those that were not
        self.hits = 0
        self.misses = 0
        #: counted by the model for the misses: answers reused after its own cheap check, and
        #: full identifications
        self.verified = 0
        self.identified = 0

    @property
    def limit(self) -> float:
        """Largest (centred) step, Å, the next geometry may take and still use the cache."""
        state = self._state
        return 0.0 if state is None else self._settled(state)[3]

    def _settled(self, state):
        """``state`` with its limit computed: :meth:`store` leaves the smallest same-element
        distance to the first lookup that needs it (a lookup whose step exceeds ``max_step``
        fails without it, so distinct geometries never pay for it)."""
        if state[3] is None:
            d = self._min_distance(state[1], state[5], state[6])
            state = state[:3] + (min(self.max_step, d / 3.0), d) + state[5:]
            if self._state is not None and self._state[1] is state[1]:
                self._state = state  # still the remembered geometry: keep the limit with it
        return state

    def clear(self) -> None:
        self._state = None
        self.remembered = None

    @staticmethod
    def _min_distance(positions: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> float:
        """Smallest distance between two atoms of the same element (inf if there are none)."""
        if len(ia) == 0:
            return np.inf
        diff = positions[ia] - positions[ib]
        return float(np.sqrt(np.einsum("ij,ij->i", diff, diff).min()))

    def lookup(self, numbers: np.ndarray, positions: np.ndarray):
        """``(True, answer)`` when ``positions`` follows from the remembered geometry (which it
        then replaces); ``(False, None)`` when the full identification must run."""
        state = self._state
        if state is None:
            self.misses += 1
            return False, None
        old_numbers, old = state[0], state[1]
        if (positions.shape != old.shape or numbers.shape != old_numbers.shape
                or not (numbers == old_numbers).all()):
            self.misses += 1
            return False, None
        step = positions - old
        step -= step.sum(0) * (1.0 / len(step))
        s2 = float(np.einsum("ij,ij->i", step, step).max())
        if not s2 < self.max_step * self.max_step:  # also refuses NaN
            self.misses += 1
            return False, None
        _, _, result, limit, d_bound, ia, ib = self._settled(state)
        if not s2 < limit * limit:
            self.misses += 1
            return False, None
        # no same-element distance shrank by more than twice the largest (centred) step, so the
        # bound stays valid; the exact minimum is recomputed only when the bound gets tight
        new = positions.copy()
        d_bound -= 2.0 * np.sqrt(s2)
        if d_bound < 3.0 * self.max_step:
            d_bound = self._min_distance(new, ia, ib)
        self._state = (old_numbers, new, result, min(self.max_step, d_bound / 3.0), d_bound, ia, ib)
        self.hits += 1
        return True, result

    def store(self, numbers: np.ndarray, positions: np.ndarray, result) -> None:
        state = self._state
        if state is not None and state[0].shape == numbers.shape and (state[0] == numbers).all():
            numbers, ia, ib = state[0], state[5], state[6]  # same numbers: same same-element pairs
        else:
            numbers = np.array(numbers, copy=True)
            ia, ib = np.nonzero(np.triu(numbers[:, None] == numbers[None, :], 1))
        positions = np.array(positions, dtype=np.float64, copy=True)
        self._state = (numbers, positions, result, None, None, ia, ib)  # limit: see _settled
