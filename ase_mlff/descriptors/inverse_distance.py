"""Inverse pairwise distances, the global descriptor of sGDML.

For a molecule of ``N`` atoms the descriptor has ``P = N(N-1)/2`` entries
``D_k = 1 / |r_a - r_b|`` over the strict lower triangle, pairs ``k = (a, b)`` with ``a > b`` in
the row-major order of ``numpy.tril_indices(N, -1)``: ``k = a(a-1)/2 + b``.

Its Jacobian has six non-zeros per row, ``dD_k/dr_a = -(r_a - r_b)/|r_a - r_b|^3`` and
``dD_k/dr_b = +(r_a - r_b)/|r_a - r_b|^3``; products ``J^T w`` are a scatter over pairs,
written here as ``-incidence @ (w / r^3 * (r_a - r_b))`` with the (N, P) incidence matrix.

An atom permutation ``p`` (new atom ``i`` is old atom ``p[i]``, i.e. ``positions[p]``) acts on
the descriptor as an index permutation: ``D(R[p]) = D(R)[descriptor_permutation(p)]``.
"""

from __future__ import annotations

import numpy as np
import torch


def pair_indices(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) index arrays of the lower-triangle pairs, ``a > b``."""
    a, b = np.tril_indices(int(n_atoms), -1)
    return a.astype(np.int64), b.astype(np.int64)


def inverse_distances(R: np.ndarray) -> np.ndarray:
    """(..., N, 3) positions -> (..., P) inverse distances (float64)."""
    R = np.asarray(R, dtype=np.float64)
    a, b = pair_indices(R.shape[-2])
    diff = R[..., a, :] - R[..., b, :]
    return 1.0 / np.sqrt(np.einsum("...k,...k->...", diff, diff))


def inverse_distances_torch(R: torch.Tensor) -> torch.Tensor:
    """Differentiable torch version of :func:`inverse_distances`."""
    a, b = pair_indices(R.shape[-2])
    a = torch.as_tensor(a, device=R.device)
    b = torch.as_tensor(b, device=R.device)
    diff = R[..., a, :] - R[..., b, :]
    return torch.rsqrt((diff * diff).sum(-1))


def jacobian(R: np.ndarray) -> np.ndarray:
    """Dense Jacobian dD/dR: (..., N, 3) -> (..., P, 3N)."""
    R = np.asarray(R, dtype=np.float64)
    n = R.shape[-2]
    a, b = pair_indices(n)
    diff = R[..., a, :] - R[..., b, :]
    r3 = np.einsum("...k,...k->...", diff, diff) ** 1.5
    g = diff / r3[..., None]  # (..., P, 3)
    J = np.zeros(R.shape[:-2] + (len(a), n, 3))
    k = np.arange(len(a))
    J[..., k, a, :] = -g
    J[..., k, b, :] = g
    return J.reshape(R.shape[:-2] + (len(a), 3 * n))


def incidence_matrix(n_atoms: int) -> np.ndarray:
    """(N, P) matrix with +1 at (a_k, k) and -1 at (b_k, k)."""
    a, b = pair_indices(n_atoms)
    m = np.zeros((n_atoms, len(a)))
    k = np.arange(len(a))
    m[a, k] = 1.0
    m[b, k] = -1.0
    return m


def descriptor_permutation(perm, n_atoms: int | None = None) -> np.ndarray:
    """Index permutation of descriptor entries induced by the atom permutation ``perm``."""
    perm = np.asarray(perm, dtype=np.int64)
    n = len(perm) if n_atoms is None else int(n_atoms)
    a, b = pair_indices(n)
    pa, pb = perm[a], perm[b]
    hi, lo = np.maximum(pa, pb), np.minimum(pa, pb)
    return hi * (hi - 1) // 2 + lo
