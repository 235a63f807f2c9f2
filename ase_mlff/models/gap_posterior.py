"""GAP's helper (:mod:`ase_mlff.models.gap`; registers no family): the linear algebra of its
posterior and of its design rows, on float64 numpy arrays.

With ``x = [alpha, beta, e0]`` the fitted parameters (T of them), ``R`` (T, T) the upper
triangular factor of the fit (``R^T R = Phi^T Lambda^-1 Phi + prior``) and ``phi`` an output's
row of the design matrix (the output is ``phi . x``)::

    posterior variance      |R^-T phi|^2                            (posterior_variance)
    posterior samples       b_k = R^-1 w_k, w_k ~ N(0, I / count)   (draw_posterior_samples)
    spanned SOAP prior      |L_M^-1 k_M|^2                          (nystrom_variance)
    SOAP prior              L K L^T                                 (soap_prior_variance)

``L_M`` is the Cholesky factor of the sparse points' kernel matrix K_MM and ``k_M`` the SOAP
part of a row. Energies eV, forces eV/Å, virials eV; variances in their squares. The module
docstring of :mod:`ase_mlff.models.gap` says which of them the uncertainties use and why.

The rows themselves are assembled with :func:`scatter_pair_rows` (per-pair rows into force and
virial rows), :func:`add_rows` (per-atom rows into per-structure rows) and :func:`int_power`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..rng import random_stream


def posterior_variance(R: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """|R^-T phi|^2 for each row phi (..., T) of the design matrix: the posterior variance of
    that output, ``R`` (T, T) the upper triangular factor of the fit."""
    import scipy.linalg

    flat = rows.reshape(-1, rows.shape[-1])
    z = scipy.linalg.solve_triangular(R, flat.T, trans="T", lower=False)
    return (z * z).sum(0).reshape(rows.shape[:-1])


def nystrom_variance(prior_chol: np.ndarray, rows: np.ndarray, M: int) -> np.ndarray:
    """|L_M^-1 k_M|^2 for the SOAP part (first ``M`` columns) of each row (..., T): the prior
    variance the sparse environments span, ``L_M`` (M, M) the lower Cholesky factor of K_MM."""
    import scipy.linalg

    flat = rows.reshape(-1, rows.shape[-1])[:, :M]
    if not M:
        return np.zeros(rows.shape[:-1])
    z = scipy.linalg.solve_triangular(prior_chol, flat.T, lower=True)
    return (z * z).sum(0).reshape(rows.shape[:-1])


def soap_prior_variance(q: np.ndarray, dq: np.ndarray, s: np.ndarray, batch: np.ndarray, edge_index: np.ndarray,
                        n_graphs: int, delta: float, zeta: int, vec: np.ndarray | None = None):
    """Prior variances L K L^T of the SOAP term: energies (B,), force components (N, 3) and,
    given the pair vectors ``vec`` (P, 3), virial components (B, 3, 3) (else None). ``q`` (N, D)
    normalised SOAP vectors and ``dq`` (P, 3, D) their derivatives in each pair vector (from
    :meth:`GAPModel.design`), ``s`` (N,) species indices, ``batch`` (N,) structure of each atom,
    ``edge_index`` (2, P) the pairs (i, j), ``delta`` and ``zeta`` the SOAP kernel's."""
    d2, z = delta ** 2, zeta
    same_sp = (s[:, None] == s[None, :]) & (batch[:, None] == batch[None, :])
    K = np.where(same_sp, q @ q.T, 0.0)
    B = n_graphs
    prior_e = np.zeros(B)
    np.add.at(prior_e, batch, (d2 * K ** z).sum(1))
    K1 = d2 * z * K ** (z - 1) * same_sp
    K2 = d2 * z * (z - 1) * K ** max(z - 2, 0) * same_sp if z >= 2 else np.zeros_like(K)
    # dq (P, 3, D): d q_i / d d_p
    i_np, j_np = edge_index
    N = len(s)
    # v[a, i] = d q_i / d r_a: from pairs (i -> a) (+dq) and the centre itself (-sum of its pairs)
    ent_a = np.concatenate([j_np, np.arange(N)])
    ent_i = np.concatenate([i_np, np.arange(N)])
    D = dq.shape[2]
    own = torch.zeros(N, 3, D, dtype=torch.float64).index_add_(0, torch.from_numpy(i_np), torch.from_numpy(-dq))
    vals = torch.cat([torch.from_numpy(dq), own])
    key = ent_a * N + ent_i
    uniq, inv = np.unique(key, return_inverse=True)
    V = torch.zeros(len(uniq), 3, D, dtype=torch.float64).index_add_(0, torch.from_numpy(inv), vals).numpy()
    ua, ui = uniq // N, uniq % N
    prior_f = np.zeros((N, 3))
    order = np.argsort(ua, kind="stable")
    starts = np.searchsorted(ua[order], np.arange(N + 1))
    for a in range(N):
        idx = order[starts[a]:starts[a + 1]]
        Va, ia = V[idx], ui[idx]  # (n, 3, D)
        dots = np.einsum("ecd,fcd->efc", Va, Va)
        t = (K1[np.ix_(ia, ia)][:, :, None] * dots).sum((0, 1))
        if z >= 2:
            A = np.einsum("ecd,fd->efc", Va, q[ia])  # (v_e . q_f)
            t = t + (K2[np.ix_(ia, ia)][:, :, None] * A * A.transpose(1, 0, 2)).sum((0, 1))
        prior_f[a] = t
    prior_w = None
    if vec is not None:
        Wq = np.zeros((N, 3, 3, D))  # d q_i / d strain_ab = sum_p d_pa dq_pb
        for a in range(3):
            torch.from_numpy(Wq)[:, a].index_add_(0, torch.from_numpy(i_np),
                                                  torch.from_numpy(vec[:, a, None, None] * dq))
        Wq = 0.5 * (Wq + Wq.transpose(0, 2, 1, 3))
        prior_w = np.zeros((B, 3, 3))
        for a in range(3):
            for b in range(3):
                X = Wq[:, a, b]  # (N, D)
                t = (K1 * (X @ X.T)).sum(1)
                if z >= 2:
                    A = X @ q.T
                    t = t + (K2 * A * A.T).sum(1)
                np.add.at(prior_w[:, a, b], batch, t)
    return prior_e, prior_f, prior_w


def scatter_pair_rows(Gc, cols, i, j, vec, batch, F, W) -> None:
    """Add per-pair rows d eps_i / d d_p (P, 3, C) into force rows (-dE/dr) and virial rows
    (numpy arrays, written in place through torch views)."""
    g = torch.from_numpy(np.ascontiguousarray(Gc))
    if F is not None:
        view = torch.from_numpy(F)[:, :, cols]
        view.index_add_(0, torch.from_numpy(i), g)
        view.index_add_(0, torch.from_numpy(j), -g)
    if W is not None:
        bi = batch[i]
        for b in np.unique(bi):
            sel = bi == b
            W[b, :, :, cols] += np.einsum("pa,pcm->acm", vec[sel], Gc[sel], optimize=True)


def clipped_sqrt(v):
    """sqrt of the variances ``v`` with rounding negatives taken as 0."""
    return np.sqrt(np.clip(v, 0.0, None))


def int_power(x: np.ndarray, n: int) -> np.ndarray:
    """x ** n for an integer n >= 0 by multiplications (numpy's pow is 10 times slower)."""
    out = np.ones_like(x)
    for _ in range(n):
        out *= x
    return out


def add_rows(out: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
    """out[index[k]] += rows[k] in place, as np.add.at but 10 times faster: a sparse product,
    on one thread (torch's index_add_ on two threads was 20 times slower on a busy machine)."""
    import scipy.sparse

    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    select = scipy.sparse.csr_matrix((np.ones(n), (index, np.arange(n))), shape=(len(out), n))
    out += select @ rows


def draw_posterior_samples(R: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(T, count) deviations ``b_k = R^-1 w_k`` of posterior samples from the fitted x, with
    ``w_k`` drawn from N(0, I / count) (stream "gap-posterior-samples" of ``seed``): the
    posterior covariance is ``R^-1 R^-T``, so ``sum_k b_k b_k^T`` has it as its mean."""
    import scipy.linalg

    w = random_stream(seed, "gap-posterior-samples").standard_normal((len(R), int(count))) / math.sqrt(count)
    return scipy.linalg.solve_triangular(np.asarray(R, dtype=np.float64), w, lower=False)
