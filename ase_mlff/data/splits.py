"""Choosing frames: random train/validation/test splits (:class:`Split`) and the stratified
choice of frames spread over their energies (:func:`stratified_indices`). Both draw from named
streams of :mod:`ase_mlff.rng`, so that a seed gives the same frames every time."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import DatasetError
from ..rng import random_stream


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


def random_split(m: int, n_train: int, n_valid: int = 0, n_test: int | None = None, seed: int = 0) -> Split:
    """:meth:`Dataset.split` of ``m`` frames: a random disjoint ``Split`` drawn from the named
    stream ``random_stream(seed, "split")``; ``n_test=None`` puts every remaining frame into ``test``."""
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
