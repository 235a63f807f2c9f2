"""Sparse (inducing-point) 2+3-body GP for MFF: every energy, force and virial of the data.

The full GP of :mod:`ase_mlff.training.mff_gp` has one unknown per label, so it is trained on a
handful of energies and a few hundred force components. Here the n-body functions are expanded
on inducing points instead (Csányi, Willatt & Ceriotti 2020, "Machine-Learning of Atomic-Scale Properties Based on
Physical Principles", §6.2; the projected process; docs/references.md)::

    g2_ab(r) = sigma2^2 sum_u c_u exp(-(r - r_u)^2 / (2 l2^2))                      u: pair ab
    g3_abc(x) = sigma3^2 sum_v d_v sum_P [s == P s_v] exp(-|x - P x_v|^2 / (2 l3^2))  v: triangles

with ``r_u`` a uniform grid of distances per element pair (from the shortest training distance
to ``rc2``) and ``x_v`` representative triangles of the training data (farthest-point sampling
in the kernel distance, per species triple). With ``centred`` triplets (``NBodyGP(...,
triplets="centred")``) the points are a centre's pairs of arms instead, with no cutoff on the
third side, and P runs over the identity and the swap of the arms only
(:func:`~ase_mlff.descriptors.nbody.nbody_points`). Energies, forces and virials are linear in
``x = [c, d, e0]``: the design rows of a structure are sums over its pairs and triangles
(:func:`ase_mlff.descriptors.nbody.structure_points`, with their multiplicities, cutoff
products and Jacobians) of the basis functions and their derivatives, and the virial rows
``sum (dE/dx_side) x_side u u^T`` over the sides. :func:`ase_mlff.training.sparse_gp.solve`
fits ``x`` to all labels with per-observable (and per-config_type) expected errors and the
prior ``K_UU``, ``K_VV``, ``1/sigma_e0^2``; e0 is fitted jointly. The posterior mean is then
written as the point weights of :class:`~ase_mlff.models.nbody_gp.GPModel` (``b = 0``), so the
existing mapping onto splines (:meth:`NBodyGP.to_mff`) and the mapped-vs-unmapped check apply
unchanged. Length scales and amplitudes come from the marginal-likelihood search of the full
GP on a subset (or are given).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import scipy.sparse
import torch

from ..descriptors.nbody import species_keys, structure_points
from . import sparse_gp
from .mff_gp import NBodyGP, point_terms, triplet_permutations

_CHUNK = 4096


def _k2(x: np.ndarray, y: np.ndarray, ell: float, grad: bool = True):
    """exp(-(x - y)^2 / 2 l^2) (U, V) and (with ``grad``) A = k y (1, U, V): the derivative in x
    is -(x k - A) / l^2 (the form :func:`_k3` returns)."""
    k = np.exp(-0.5 * (x[:, None] - y[None, :]) ** 2 / ell ** 2)
    return k, (k * y[None, :])[None] if grad else None


def _k3(x: np.ndarray, s: np.ndarray, y: np.ndarray, t: np.ndarray, ell: float, grad: bool = True,
        centred: bool = False):
    """Symmetrised 3-body kernel K = sum_P [s == P t] exp(-|x - P y|^2 / 2 l^2) (U, V) between
    triangles x (U, 3) of vertex species s (U, 3) and y (V, 3) of species t (V, 3); P runs over
    :func:`triplet_permutations` (6, or 2 for ``centred`` triplets). With ``grad`` also
    A = sum_P k_P (P y) (3, U, V), so that dK/dx_d = -(x_d K - A_d) / l^2 (no (U, V, 3)
    temporaries per permutation). Torch, float64; |x - P y|^2 from a product. Returns numpy."""
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), torch.from_numpy(
        np.ascontiguousarray(y, dtype=np.float64))
    st, tt = torch.from_numpy(np.ascontiguousarray(s)), torch.from_numpy(np.ascontiguousarray(t))
    inv = 0.5 / ell ** 2
    x2 = (xt * xt).sum(1)[:, None]
    y2 = (yt * yt).sum(1)[None, :]
    K = torch.zeros(len(xt), len(yt), dtype=torch.float64)
    A = torch.zeros(3, len(xt), len(yt), dtype=torch.float64) if grad else None
    same_species = bool((st == st[:1]).all() and (tt == st[:1]).all()) if len(st) and len(tt) else False
    code = (st[:, 0] * 256 + st[:, 1]) * 256 + st[:, 2]  # one integer per species triple (< 256 elements)
    for sp, vp in zip(*triplet_permutations(centred)):
        yp = yt[:, sp]
        k = torch.addmm(x2 + y2, xt, yp.T, alpha=-2.0).neg_().clamp_(max=0.0).mul_(inv).exp_()
        if not same_species:
            tp = tt[:, vp]
            k.mul_(code[:, None] == ((tp[:, 0] * 256 + tp[:, 1]) * 256 + tp[:, 2])[None, :])
        K += k
        if grad:
            for d in range(3):
                A[d].addcmul_(k, yp[:, d][None, :])
    return K.numpy(), (A.numpy() if grad else None)


def _rows(x, w, dw, wt, sigma2: float, ell: float):
    """Per-point factors of d(wt w g)/dx_d = alpha_d K + beta A_d for a Gaussian kernel with
    amplitude sigma2 (squared): alpha (n, D), beta (n,) (see :meth:`SparseNBody.design`)."""
    beta = sigma2 * wt * w / ell ** 2
    alpha = sigma2 * wt[:, None] * dw - beta[:, None] * x
    return alpha, beta


def _fps(X: np.ndarray, S: np.ndarray, n: int, ell: float, rng: np.random.Generator, centred: bool) -> np.ndarray:
    """Farthest-point sampling of ``n`` triangles in the kernel distance 2 - 2 k / k0."""
    pick = [int(rng.integers(len(X)))]
    k0, _ = _k3(X[pick], S[pick], X[pick], S[pick], ell, grad=False, centred=centred)
    dist = np.full(len(X), np.inf)
    for _ in range(n - 1):
        k, _ = _k3(X, S, X[pick[-1:]], S[pick[-1:]], ell, grad=False, centred=centred)
        dist = np.minimum(dist, 2.0 - 2.0 * k[:, 0] / k0[0, 0])
        dist[pick] = -1.0
        pick.append(int(np.argmax(dist)))
    return np.array(pick)


class SparseNBody:
    """Inducing points and design rows of the sparse 2+3-body GP (see the module docstring)."""

    def __init__(self, species: Sequence[int], rc2: float, rc3: float, hyper, r2: dict, x3: tuple | None,
                 width2: float | None = None, width3: float | None = None, centred: bool = False):
        self.species = sorted(int(z) for z in species)
        self.rc2, self.rc3, self.hyper = float(rc2), float(rc3), hyper
        self.width2, self.width3, self.centred = width2, width3, bool(centred)
        self.keys2 = sorted(r2)
        self.r2 = np.concatenate([r2[k] for k in self.keys2]) if self.keys2 else np.zeros(0)
        self.spec2 = np.concatenate([np.tile(np.array(k, dtype=np.int32), (len(r2[k]), 1)) for k in self.keys2]) \
            if self.keys2 else np.zeros((0, 2), np.int32)
        self.x3, self.spec3 = x3 if x3 is not None else (np.zeros((0, 3)), np.zeros((0, 3), np.int32))
        self.U, self.V, self.S = len(self.r2), len(self.x3), len(self.species)

    @property
    def n_params(self) -> int:
        return self.U + self.V + self.S

    @classmethod
    def from_data(cls, frames, species, rc2: float, rc3: float, hyper, n2: int, n3: int, seed: int = 0,
                  pool: int = 20000, width2: float | None = None, width3: float | None = None,
                  centred: bool = False):
        """Inducing points from the training frames: ``n2`` distances per element pair present,
        ``n3`` triangles (``centred``: triplets) per species triple present (FPS on at most
        ``pool`` random ones)."""
        from ..rng import random_stream

        rng = random_stream(seed, "inducing")
        rmin: dict = {}
        tri_x, tri_s = [], []
        for f in frames:
            p2, p3 = structure_points(f.positions, f.numbers, f.cell, f.pbc, species, rc2, rc3, centred=centred)
            if p2 is not None:
                for key in species_keys(p2.spec):
                    sel = np.all(p2.spec == key, axis=1)
                    rmin[key] = min(rmin.get(key, np.inf), float(p2.x[sel, 0].min()))
            if p3 is not None and p3.n:
                tri_x.append(p3.x)
                tri_s.append(p3.spec)
        r2 = {k: np.linspace(max(0.5, v - 0.1), rc2, n2) for k, v in rmin.items()} if rc2 > 0 else {}
        x3 = None
        if rc3 > 0 and tri_x:
            X, Sp = np.concatenate(tri_x), np.concatenate(tri_s)
            # one pool per species triple up to the kernel's permutations
            canon = np.concatenate([Sp[:, :1], np.sort(Sp[:, 1:], axis=1)], 1) if centred else np.sort(Sp, axis=1)
            xs, ss = [], []
            for key in species_keys(canon):
                idx = np.nonzero(np.all(canon == key, axis=1))[0]
                if len(idx) > pool:
                    idx = rng.choice(idx, pool, replace=False)
                chosen = idx[_fps(X[idx], Sp[idx], min(n3, len(idx)), hyper.l3, rng, centred)]
                xs.append(X[chosen])
                ss.append(Sp[chosen])
            x3 = (np.concatenate(xs), np.concatenate(ss).astype(np.int32))
        return cls(species, rc2, rc3, hyper, r2, x3, width2, width3, centred)

    def prior(self, jitter: float, sigma_e0: float) -> list:
        hp = self.hyper
        out = []
        if self.U:
            K, _ = _k2(self.r2, self.r2, hp.l2, grad=False)
            K *= np.all(self.spec2[:, None, :] == self.spec2[None, :, :], axis=2)
            K = hp.sigma2 ** 2 * K + jitter * hp.sigma2 ** 2 * np.eye(self.U)
            out.append((slice(0, self.U), sparse_gp.cholesky_upper(K, "2-body inducing distances")))
        if self.V:
            K, _ = _k3(self.x3, self.spec3, self.x3, self.spec3, hp.l3, grad=False, centred=self.centred)
            K = hp.sigma3 ** 2 * K + jitter * hp.sigma3 ** 2 * np.eye(self.V)
            out.append((slice(self.U, self.U + self.V), sparse_gp.cholesky_upper(K, "3-body inducing triangles")))
        out.append((slice(self.U + self.V, self.n_params), np.eye(self.S) / sigma_e0))
        return out

    def design(self, frame, forces: bool = True, virial: bool = True) -> dict:
        """Rows of energy (T,), forces (N, 3, T) and virial (3, 3, T) of one frame."""
        hp, U, V = self.hyper, self.U, self.V
        T, N = self.n_params, len(frame)
        p2, p3 = structure_points(frame.positions, frame.numbers, frame.cell, frame.pbc, self.species,
                                  self.rc2, self.rc3, self.width2, self.width3, self.centred)
        E = np.zeros(T)
        F = np.zeros((N, 3, T)) if forces else None
        W = np.zeros((3, 3, T)) if virial else None
        blocks = []
        if U and p2 is not None and p2.n:
            blocks.append((p2, slice(0, U), 1))
        if V and p3 is not None and p3.n:
            blocks.append((p3, slice(U, U + V), 3))
        # Per chunk of points (pairs D = 1, triangles D = 3) with basis values K (n, C) and
        # kernel-gradient parts A (D, n, C): d(weight w g_c)/dx_d = alpha_d K + beta A_d
        # (_rows). Forces and virials are then sparse/dense matrix products with K and A_d:
        #   F[(atom, xyz), c] -= sum_n J[(atom, xyz), n] (alpha_d or beta)[n] (K or A_d)[n, c]
        # with J the Jacobian rows of the point's vertices, and
        #   W[(a, b), c] += sum_n x_d u_a u_b (alpha_d or beta)[n] (K or A_d)[n, c]
        # (side d has length x_d along the unit vector u of its end vertex), never forming the
        # (n, C, D) array of derivatives.
        need_grad = forces or virial
        for p, cols, D in blocks:
            for lo in range(0, p.n, _CHUNK):
                hi = min(p.n, lo + _CHUNK)
                x, w, dw, wt = p.x[lo:hi], p.w[lo:hi], p.dw[lo:hi], p.weight[lo:hi]
                if D == 1:
                    k, A = _k2(x[:, 0], self.r2, hp.l2, grad=need_grad)
                    match = np.all(p.spec[lo:hi, None, :] == self.spec2[None, :, :], axis=2)
                    k *= match
                    if need_grad:
                        A *= match
                    sig2, ell = hp.sigma2 ** 2, hp.l2
                else:
                    k, A = _k3(x, p.spec[lo:hi], self.x3, self.spec3, hp.l3, grad=need_grad, centred=self.centred)
                    sig2, ell = hp.sigma3 ** 2, hp.l3
                E[cols] += (sig2 * wt * w) @ k
                if not need_grad:
                    continue
                alpha, beta = _rows(x, w, dw, wt, sig2, ell)
                jac = p.jac[lo:hi]  # (n, vertices, D, 3)
                n, nv = len(x), jac.shape[1]
                mats = [k] + [A[d] for d in range(D)]  # (n, C) each
                if forces:
                    # coefficient of K: sum_d alpha_d J[:, t, d, :]; of A_d: beta J[:, t, d, :]
                    coefs = [np.einsum("nd,ntdx->ntx", alpha, jac)] + [beta[:, None, None] * jac[:, :, d, :]
                                                                       for d in range(D)]
                    rows = (3 * p.atoms[lo:hi, :, None] + np.arange(3)[None, None, :]).ravel()
                    cidx = np.repeat(np.arange(n), 3 * nv)
                    Fc = F.reshape(3 * N, T)
                    for coef, m in zip(coefs, mats):
                        J = scipy.sparse.csr_matrix((coef.ravel(), (rows, cidx)), shape=(3 * N, n))
                        Fc[:, cols] -= J @ m
                if virial:
                    ends = (1,) if D == 1 else (1, 2, 2)
                    uu = np.stack([np.einsum("na,nb->nab", jac[:, t, d], jac[:, t, d]).reshape(n, 9) * x[:, d:d + 1]
                                   for d, t in enumerate(ends)], 1)  # (n, D, 9)
                    Wc = W.reshape(9, T)
                    Wc[:, cols] += np.einsum("nd,ndk->kn", alpha, uu) @ k
                    for d in range(D):
                        Wc[:, cols] += (beta[:, None] * uu[:, d]).T @ A[d]
        s = np.searchsorted(self.species, frame.numbers)
        np.add.at(E, self.U + self.V + s, 1.0)
        if forces is False:
            F = None
        return {"energy": E, "forces": F, "virial": W}

    def set_gp(self, gp: NBodyGP, x: np.ndarray) -> None:
        """Give ``gp`` the posterior mean of coefficients ``x`` (point weights of GPModel) and e0."""
        hp, U, V = self.hyper, self.U, self.V
        gp.e0 = np.asarray(x[U + V:], dtype=np.float64)
        terms: dict = {}
        if U:
            terms["2"] = point_terms(self.r2[:, None], self.spec2, hp.sigma2 ** 2 * x[:U], np.zeros((U, 1)))
        if V:
            terms["3"] = point_terms(self.x3, self.spec3, hp.sigma3 ** 2 * x[U:U + V], np.zeros((V, 3)), self.centred)
        gp._terms = terms


def fit_sparse(gp: NBodyGP, frames, n2: int, n3: int, sigmas: tuple[float, float, float],
               config_type_sigmas: dict | None = None, jitter: float = 1e-8, sigma_e0: float = 100.0,
               seed: int = 0, log=print, quiet: bool = True, rows=None, on_rows=None,
               e0: np.ndarray | None = None) -> dict:
    """Fit ``gp`` (its species, cutoffs and hyperparameters set) as a sparse GP on all labels of
    ``frames``; afterwards ``gp.as_model()`` and ``gp.to_mff()`` work as after a full fit.
    ``rows``/``on_rows``: checkpoints of the design matrix, see :func:`sparse_gp.solve` (the
    inducing points are chosen again, deterministically, on a resume). ``e0``: given
    per-element reference energies (eV, ``gp.species`` order), held fixed instead of fitted."""
    t0 = time.perf_counter()
    sparse = SparseNBody.from_data(frames, gp.species, gp.rc2 if gp.use2 else 0.0, gp.rc3 if gp.use3 else 0.0,
                                   gp.hyper, n2, n3, seed, width2=gp.width2, width3=gp.width3, centred=gp.centred)
    log(f"inducing points: {sparse.U} distances, {sparse.V} triangles ({time.perf_counter() - t0:.1f} s)")

    def design(k):
        f = frames[k]
        return sparse.design(f, forces=f.forces is not None, virial=sparse_gp.has_virial(f))

    x, R, info = sparse_gp.solve(frames, design, sparse.n_params, sparse.prior(jitter, sigma_e0), sigmas,
                                 config_type_sigmas, log=log, quiet=quiet, rows=rows, on_rows=on_rows, fixed=e0)
    sparse.set_gp(gp, x)
    gp.sparse, gp.sparse_x = sparse, x
    gp.n_labels = dict(info["labels"])
    gp.timings["sparse_fit_s"] = time.perf_counter() - t0
    return {**info, "n_inducing": {"2": sparse.U, "3": sparse.V}, "fit_s": time.perf_counter() - t0}


def restore_sparse(gp: NBodyGP, frames, n2: int, n3: int, seed: int, x: np.ndarray) -> None:
    """Give ``gp`` the solution ``x`` of an earlier :func:`fit_sparse` on the same frames and
    options (a checkpoint): the inducing points are chosen again (deterministic), not the solve."""
    sparse = SparseNBody.from_data(frames, gp.species, gp.rc2 if gp.use2 else 0.0, gp.rc3 if gp.use3 else 0.0,
                                   gp.hyper, n2, n3, seed, width2=gp.width2, width3=gp.width3, centred=gp.centred)
    x = np.asarray(x, dtype=np.float64)
    if len(x) != sparse.n_params:
        from ..errors import TrainingError

        raise TrainingError("the checkpoint's sparse solution does not match the inducing points; delete the "
                            "checkpoint to start over")
    sparse.set_gp(gp, x)
    gp.sparse, gp.sparse_x = sparse, x
    gp.n_labels = sparse_gp.label_counts(frames)
