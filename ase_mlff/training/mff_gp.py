"""Gaussian-process n-body force fields (2-body, 3-body, 2+3-body) and their mapping to splines.

Model (see ``docs/mff.md``). The local energy of atom ``i`` is::

    eps_i = e0[s_i] + sum_{j != i} V2(r_ij) + sum_{j < k} V3(r_ij, r_ik, r_jk)
    V2(r) = fc(r; rc2) g2[s_i s_j](r)
    V3(x) = fc(x1; rc3) fc(x2; rc3) fc(x3; rc3) g3(x, species)

with the smooth cosine cutoff ``fc(r; rc) = 1/2 + 9/16 cos(pi r / rc) - 1/16 cos(3 pi r / rc)``
(value and first three derivatives vanish at ``rc``, flat at 0, ``fc(rc/2) = 1/2``), so ``V2``
and ``V3`` are C3-smooth at the cutoff, exactly representable at the cutoff by splines whose
last three coefficients are zero. ``g2`` and ``g3`` are independent
zero-mean GPs with squared-exponential kernels in the pair distance, resp. in the triangle
side lengths summed over the 6 vertex permutations that keep the species labels
(ALGORITHMS.md section 2.4, Eqs. 5.28-5.29, 5.36-5.37)::

    Cov(g2(r), g2(r'))  = sigma2**2 [pair species equal] exp(-(r - r')**2 / (2 l2**2))
    Cov(g3(x), g3(x'))  = sigma3**2 sum_P [s == P s'] exp(-|x - P x'|**2 / (2 l3**2))

Total energies and forces are linear functionals of ``g2`` and ``g3`` (sums of values and of
directional derivatives at the pair / triangle points of a structure), so their covariances
follow by linearity (energy-energy, energy-force, force-force; analytic, computed in C++ by
``_core.gp_gram``). Each distinct pair / triangle of a structure is one point weighted by its
multiplicity (2 for a pair, 3 for a triangle: it is counted from each of its atoms).

Hyperparameters (``l2, l3, sigma2, sigma3``, force noise ``sigma_f`` in eV/Å, energy noise
``sigma_e`` in eV per sqrt(atom)) maximise the log marginal likelihood: the amplitudes and
noises by L-BFGS with analytic gradients at fixed length scales, the length scales by a
bounded 1-D search on each in turn (Gram matrices recomputed per length scale).
Per-element reference energies ``e0`` are fitted first by least squares on the training
energies; the GP learns the remainder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from .. import _ext
from ..errors import InputError, TrainingError
from ..graph import Graph
from ..models.base import Model
from ..models.mff import MFFModel, triplet_index
from ..neighbors import neighbor_list
from ..splines import UniformGrid, fit_1d, fit_tensor, sample_points

# side permutations induced by the 6 vertex permutations of a triangle (sides r01, r02, r12)
_VPERM = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def _side(a, b):
    lo, hi = min(a, b), max(a, b)
    return 0 if (lo, hi) == (0, 1) else (1 if (lo, hi) == (0, 2) else 2)


_SPERM = np.array([[_side(p[0], p[1]), _side(p[0], p[2]), _side(p[1], p[2])] for p in _VPERM])


# ------------------------------------------------------------------------------ cutoff
def cutoff_fn(r, rc):
    """fc(r) = 1/2 + 9/16 cos(pi r/rc) - 1/16 cos(3 pi r/rc) for r < rc, else 0 (numpy or torch)."""
    if isinstance(r, torch.Tensor):
        x = math.pi * r / rc
        val = 0.5 + 0.5625 * torch.cos(x) - 0.0625 * torch.cos(3.0 * x)
        return torch.where(r < rc, val, torch.zeros_like(r))
    r = np.asarray(r, dtype=np.float64)
    x = np.pi * r / rc
    return np.where(r < rc, 0.5 + 0.5625 * np.cos(x) - 0.0625 * np.cos(3.0 * x), 0.0)


def cutoff_grad(r, rc):
    r = np.asarray(r, dtype=np.float64)
    x = np.pi * r / rc
    return np.where(r < rc, -(np.pi / rc) * (0.5625 * np.sin(x) - 0.1875 * np.sin(3.0 * x)), 0.0)


# ------------------------------------------------------------------------------ points
@dataclass
class Points:
    """Distinct n-plets of one structure: coordinates, species, weight, atoms and Jacobians."""

    x: np.ndarray  # (U, D)
    spec: np.ndarray  # (U, V) int32 (pairs: sorted species pair; triangles: vertex species)
    weight: np.ndarray  # (U,) multiplicity
    atoms: np.ndarray  # (U, V) vertex atom indices
    jac: np.ndarray  # (U, V, D, 3) d x_d / d r_vertex
    w: np.ndarray  # (U,) cutoff product
    dw: np.ndarray  # (U, D) gradient of the cutoff product

    @property
    def n(self) -> int:
        return len(self.x)


def structure_points(positions, numbers, cell, pbc, species: Sequence[int], rc2: float, rc3: float):
    """(pairs, triangles) :class:`Points` of one structure (either may be None)."""
    table = {int(z): k for k, z in enumerate(species)}
    try:
        s = np.array([table[int(z)] for z in numbers], dtype=np.int32)
    except KeyError as exc:
        raise InputError(f"element {exc} is not among the model's species {list(species)}") from None
    cut = max(rc2, rc3)
    p = neighbor_list(positions, cell, pbc, cut)
    i, j, vec, r = p.i, p.j, p.vectors, p.distances
    pairs = tri = None
    if rc2 > 0:
        keep = (r < rc2) & (i <= j)
        ii, jj, d, rr = i[keep], j[keep], vec[keep], r[keep]
        u = d / rr[:, None]
        jac = np.stack([-u, u], axis=1)[:, :, None, :]  # (U, 2, 1, 3)
        spec = np.sort(np.stack([s[ii], s[jj]], axis=1), axis=1).astype(np.int32)
        pairs = Points(rr[:, None], spec, np.where(ii == jj, 1.0, 2.0), np.stack([ii, jj], 1), jac,
                       cutoff_fn(rr, rc2), cutoff_grad(rr, rc2)[:, None])
    if rc3 > 0:
        e1, e2 = triplet_index(i, r < rc3)
        ci, cj, ck = i[e1], j[e1], j[e2]
        keep = (ci <= cj) & (ci <= ck)
        e1, e2, ci, cj, ck = e1[keep], e2[keep], ci[keep], cj[keep], ck[keep]
        djk = vec[e2] - vec[e1]
        rjk = np.linalg.norm(djk, axis=1)
        keep = rjk < rc3
        e1, e2, ci, cj, ck, djk, rjk = e1[keep], e2[keep], ci[keep], cj[keep], ck[keep], djk[keep], rjk[keep]
        x = np.stack([r[e1], r[e2], rjk], axis=1)
        uij = vec[e1] / r[e1][:, None]
        uik = vec[e2] / r[e2][:, None]
        ujk = djk / rjk[:, None]
        z = np.zeros_like(uij)
        jac = np.stack([np.stack([-uij, -uik, z], 1), np.stack([uij, z, -ujk], 1), np.stack([z, uik, ujk], 1)], 1)
        mult = 1 + (ci == cj).astype(float) + (ci == ck).astype(float)
        fcx = cutoff_fn(x, rc3)
        dfx = cutoff_grad(x, rc3)
        w = fcx.prod(1)
        dw = np.stack([dfx[:, 0] * fcx[:, 1] * fcx[:, 2], fcx[:, 0] * dfx[:, 1] * fcx[:, 2],
                       fcx[:, 0] * fcx[:, 1] * dfx[:, 2]], 1)
        tri = Points(x, np.stack([s[ci], s[cj], s[ck]], 1).astype(np.int32), 3.0 / mult,
                     np.stack([ci, cj, ck], 1), jac, w, dw)
    return pairs, tri


@dataclass
class FunctionalSet:
    """Entries of many linear functionals (groups with C channels) of one n-body GP."""

    x: np.ndarray
    grp: np.ndarray
    spec: np.ndarray
    a: np.ndarray  # (U, C)
    b: np.ndarray  # (U, C, D)
    n_groups: int
    channels: int

    @staticmethod
    def concat(parts: list["FunctionalSet"], D: int, V: int, C: int) -> "FunctionalSet":
        parts = [p for p in parts if p is not None]
        offs = np.cumsum([0] + [p.n_groups for p in parts])
        if not parts:
            return FunctionalSet(np.zeros((0, D)), np.zeros(0, np.int64), np.zeros((0, V), np.int32),
                                 np.zeros((0, C)), np.zeros((0, C, D)), 0, C)
        return FunctionalSet(
            np.concatenate([p.x for p in parts]), np.concatenate([p.grp + o for p, o in zip(parts, offs)]),
            np.concatenate([p.spec for p in parts]), np.concatenate([p.a for p in parts]),
            np.concatenate([p.b for p in parts]), int(offs[-1]), C)


def energy_functional(pts: Points | None, D: int, V: int) -> FunctionalSet:
    """Total (n-body part of the) energy of one structure: one group, one channel."""
    if pts is None or pts.n == 0:
        return FunctionalSet(np.zeros((0, D)), np.zeros(0, np.int64), np.zeros((0, V), np.int32),
                             np.zeros((0, 1)), np.zeros((0, 1, D)), 1, 1)
    a = (pts.weight * pts.w)[:, None]
    return FunctionalSet(pts.x, np.zeros(pts.n, np.int64), pts.spec, a, np.zeros((pts.n, 1, D)), 1, 1)


def force_functional(pts: Points | None, atoms: np.ndarray, D: int, V: int) -> FunctionalSet:
    """Force components on ``atoms`` (one group of 3 channels per atom, in the given order)."""
    atoms = np.asarray(atoms, dtype=np.int64)
    if pts is None or pts.n == 0:
        return FunctionalSet(np.zeros((0, D)), np.zeros(0, np.int64), np.zeros((0, V), np.int32),
                             np.zeros((0, 3)), np.zeros((0, 3, D)), len(atoms), 3)
    pos = {int(a): g for g, a in enumerate(atoms)}
    lookup = np.full(max(int(pts.atoms.max()), int(atoms.max())) + 1, -1)
    lookup[atoms] = np.arange(len(atoms))
    u, v = np.nonzero(lookup[pts.atoms] >= 0)
    grp = lookup[pts.atoms[u, v]]
    order = np.argsort(grp, kind="stable")
    u, v, grp = u[order], v[order], grp[order]
    jac = pts.jac[u, v]  # (E, D, 3)
    wt = pts.weight[u]
    a = -wt[:, None] * np.einsum("ed,edc->ec", pts.dw[u], jac)
    b = -(wt * pts.w[u])[:, None, None] * np.transpose(jac, (0, 2, 1))  # (E, 3, D)
    del pos
    return FunctionalSet(pts.x[u], grp, pts.spec[u], a, b, len(atoms), 3)


def gram(s1: FunctionalSet, s2: FunctionalSet, ell: float, symmetric: bool = False) -> np.ndarray:
    if s1.n_groups == 0 or s2.n_groups == 0:
        return np.zeros((s1.n_groups * s1.channels, s2.n_groups * s2.channels))
    return _ext._core.gp_gram(s1.x, s1.grp, s1.spec, s1.a, s1.b, s1.n_groups,
                              s2.x, s2.grp, s2.spec, s2.a, s2.b, s2.n_groups, float(ell), bool(symmetric), 0)


# ------------------------------------------------------------------------------ data
@dataclass
class LabelSet:
    """Training labels as functionals of g2 and g3: energies (1 channel) and forces (3)."""

    e2: FunctionalSet
    e3: FunctionalSet
    f2: FunctionalSet
    f3: FunctionalSet
    y_energy: np.ndarray  # energies minus e0
    n_atoms_energy: np.ndarray
    y_forces: np.ndarray  # (G_F * 3,)

    @property
    def y(self) -> np.ndarray:
        return np.concatenate([self.y_energy, self.y_forces])

    @property
    def n_energy(self) -> int:
        return len(self.y_energy)

    @property
    def n_force(self) -> int:
        return len(self.y_forces)


def build_labels(frames, energy_frames, force_atoms, species, rc2, rc3, e0) -> LabelSet:
    """``energy_frames``: frame indices whose energies are used; ``force_atoms``: list of
    (frame index, atom indices) whose forces are used."""
    e2, e3, f2, f3, ye, ne, yf = [], [], [], [], [], [], []
    need = sorted(set(energy_frames) | {f for f, _ in force_atoms})
    cache = {}
    for f in need:
        fr = frames[f]
        cache[f] = structure_points(fr.positions, fr.numbers, fr.cell, fr.pbc, species, rc2, rc3)
    table = {int(z): k for k, z in enumerate(species)}
    for f in energy_frames:
        fr = frames[f]
        p2, p3 = cache[f]
        e2.append(energy_functional(p2, 1, 2) if rc2 > 0 else None)
        e3.append(energy_functional(p3, 3, 3) if rc3 > 0 else None)
        ye.append(fr.energy - sum(e0[table[int(z)]] for z in fr.numbers))
        ne.append(len(fr))
    for f, atoms in force_atoms:
        fr = frames[f]
        p2, p3 = cache[f]
        f2.append(force_functional(p2, atoms, 1, 2) if rc2 > 0 else None)
        f3.append(force_functional(p3, atoms, 3, 3) if rc3 > 0 else None)
        yf.append(fr.forces[np.asarray(atoms)].reshape(-1))
    ngrp_e = len(energy_frames)
    ngrp_f = sum(len(a) for _, a in force_atoms)

    def cat(parts, D, V, C, ngroups):
        parts = [p for p in parts if p is not None]
        if not parts:
            return FunctionalSet(np.zeros((0, D)), np.zeros(0, np.int64), np.zeros((0, V), np.int32),
                                 np.zeros((0, C)), np.zeros((0, C, D)), ngroups, C)
        return FunctionalSet.concat(parts, D, V, C)

    return LabelSet(cat(e2, 1, 2, 1, ngrp_e), cat(e3, 3, 3, 1, ngrp_e), cat(f2, 1, 2, 3, ngrp_f),
                    cat(f3, 3, 3, 3, ngrp_f), np.array(ye, dtype=float), np.array(ne, dtype=float),
                    np.concatenate(yf) if yf else np.zeros(0))


def fit_reference_energies(frames, species) -> np.ndarray:
    """Per-element constants e0 minimising sum_f (E_f - sum_i e0[s_i])**2."""
    frames = [f for f in frames if f.energy is not None]
    if not frames:
        return np.zeros(len(species))
    counts = np.array([[np.sum(f.numbers == z) for z in species] for f in frames], dtype=float)
    energies = np.array([f.energy for f in frames])
    return np.linalg.lstsq(counts, energies, rcond=None)[0]


# ------------------------------------------------------------------------------ hyperparameters
@dataclass
class Hyper:
    l2: float = 0.8
    l3: float = 0.8
    sigma2: float = 1.0
    sigma3: float = 0.1
    sigma_f: float = 0.05
    sigma_e: float = 0.005

    def as_dict(self) -> dict:
        return {k: float(v) for k, v in self.__dict__.items()}


class GramCache:
    """Unit-amplitude Gram matrices of a label set, per length scale."""

    def __init__(self, labels: LabelSet, use2: bool, use3: bool):
        self.labels, self.use2, self.use3 = labels, use2, use3
        self._k2: dict[float, np.ndarray] = {}
        self._k3: dict[float, np.ndarray] = {}
        self.seconds = 0.0

    @staticmethod
    def _full(e: FunctionalSet, f: FunctionalSet, ell: float) -> np.ndarray:
        ee = gram(e, e, ell, symmetric=True)
        ef = gram(e, f, ell)
        ff = gram(f, f, ell, symmetric=True)
        return np.block([[ee, ef], [ef.T, ff]])

    def k2(self, ell: float) -> np.ndarray:
        m = self.labels.n_energy + self.labels.n_force
        if not self.use2:
            return np.zeros((m, m))
        if ell not in self._k2:
            t = time.perf_counter()
            self._k2[ell] = self._full(self.labels.e2, self.labels.f2, ell)
            self.seconds += time.perf_counter() - t
        return self._k2[ell]

    def k3(self, ell: float) -> np.ndarray:
        m = self.labels.n_energy + self.labels.n_force
        if not self.use3:
            return np.zeros((m, m))
        if ell not in self._k3:
            t = time.perf_counter()
            self._k3[ell] = self._full(self.labels.e3, self.labels.f3, ell)
            self.seconds += time.perf_counter() - t
        return self._k3[ell]


def _noise_diag(labels: LabelSet, sigma_e: float, sigma_f: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    de = labels.n_atoms_energy
    diag_e = np.concatenate([de, np.zeros(labels.n_force)])
    diag_f = np.concatenate([np.zeros(labels.n_energy), np.ones(labels.n_force)])
    return sigma_e**2 * diag_e + sigma_f**2 * diag_f, diag_e, diag_f


def log_marginal_likelihood(k2, k3, labels: LabelSet, hp: Hyper, grad: bool = False):
    """log p(y | theta) and (optionally) its gradient w.r.t. log(sigma2, sigma3, sigma_f, sigma_e)."""
    y = labels.y
    noise, de, df = _noise_diag(labels, hp.sigma_e, hp.sigma_f)
    c = hp.sigma2**2 * k2 + hp.sigma3**2 * k3 + np.diag(noise)
    try:
        cf = scipy.linalg.cho_factor(c, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return (-np.inf, np.zeros(4)) if grad else -np.inf
    alpha = scipy.linalg.cho_solve(cf, y, check_finite=False)
    logdet = 2.0 * np.log(np.diag(cf[0])).sum()
    lml = -0.5 * y @ alpha - 0.5 * logdet - 0.5 * len(y) * np.log(2 * np.pi)
    if not grad:
        return lml
    cinv = scipy.linalg.cho_solve(cf, np.eye(len(y)), check_finite=False)
    w = np.outer(alpha, alpha) - cinv

    def g(dc):
        return 0.5 * np.sum(w * dc)

    grads = np.array([
        g(2 * hp.sigma2**2 * k2),
        g(2 * hp.sigma3**2 * k3),
        0.5 * np.sum(np.diag(w) * 2 * hp.sigma_f**2 * df),
        0.5 * np.sum(np.diag(w) * 2 * hp.sigma_e**2 * de),
    ])
    return lml, grads


def optimise_amplitudes(k2, k3, labels: LabelSet, hp: Hyper, use2: bool, use3: bool,
                        has_energy: bool, has_force: bool) -> tuple[Hyper, float]:
    """Maximise the log marginal likelihood over log(sigma2, sigma3, sigma_f, sigma_e)."""
    mask = np.array([use2, use3, has_force, has_energy])
    x0 = np.log([hp.sigma2, hp.sigma3, hp.sigma_f, hp.sigma_e])

    def unpack(x):
        z = np.where(mask, x, x0)
        return Hyper(hp.l2, hp.l3, *np.exp(z))

    def fun(x):
        lml, gr = log_marginal_likelihood(k2, k3, labels, unpack(x), grad=True)
        if not np.isfinite(lml):
            return 1e30, np.zeros_like(x)
        return -lml, -gr * mask

    bounds = [(-12, 12), (-12, 12), (np.log(1e-4), np.log(2.0)), (np.log(1e-5), np.log(1.0))]
    res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                  options={"maxiter": 200})
    best = unpack(res.x)
    return best, -float(res.fun)


# ------------------------------------------------------------------------------ the GP
class NBodyGP:
    """2-body / 3-body / 2+3-body GP local-energy model trained on energies and/or forces.

    >>> gp = NBodyGP(species=[28], rc2=5.0, rc3=3.7)                      # doctest: +SKIP
    >>> gp.fit(frames, energy_frames=..., force_atoms=..., optimise=True)  # doctest: +SKIP
    >>> mff = gp.to_mff(n2=100, n3=37)                                     # doctest: +SKIP
    """

    def __init__(self, species: Sequence[int], rc2: float = 5.0, rc3: float = 0.0,
                 hyper: Hyper | None = None):
        self.species = sorted({int(z) for z in species})
        self.rc2, self.rc3 = float(rc2), float(rc3)
        if self.rc2 <= 0 and self.rc3 <= 0:
            raise ValueError("at least one of rc2, rc3 must be positive")
        self.hyper = hyper or Hyper()
        self.e0 = np.zeros(len(self.species))
        self.history: list[dict] = []
        self.timings: dict[str, float] = {}

    @property
    def use2(self) -> bool:
        return self.rc2 > 0

    @property
    def use3(self) -> bool:
        return self.rc3 > 0

    # ----------------------------------------------------------------- training
    def optimise_hyperparameters(self, labels: LabelSet, l2_bounds=(0.15, 3.0), l3_bounds=(0.2, 3.0),
                                 rounds: int = 2, maxiter: int = 8, log=None, replay: Sequence[dict] = (),
                                 on_evaluation=None) -> Hyper:
        """Maximise the log marginal likelihood on ``labels`` (a subset of the training data).

        Resumable: ``on_evaluation(record)`` is called after each length-scale evaluation with a
        JSON record (``l2``, ``l3``, the optimised ``hyper`` and ``lml``); passing those records
        back as ``replay`` makes the first evaluations return them instead of recomputing. The
        search is deterministic, so it asks for the same length scales in the same order and
        ends where an uninterrupted search would."""
        cache = GramCache(labels, self.use2, self.use3)
        has_e, has_f = labels.n_energy > 0, labels.n_force > 0
        hp = self.hyper
        best = {"lml": -np.inf, "hp": hp}
        replay = list(replay)
        calls = [0]

        def evaluate(l2, l3):
            nonlocal hp
            k = calls[0]
            calls[0] += 1
            if k < len(replay):
                rec = replay[k]
                if (rec["l2"], rec["l3"]) != (l2, l3):
                    raise TrainingError("the hyperparameter search did not retrace the checkpointed one "
                                        f"(step {k}: l2, l3 = {l2}, {l3}, checkpoint {rec['l2']}, {rec['l3']}); "
                                        "delete the checkpoint to start over")
                trial, lml = Hyper(**rec["hyper"]), float(rec["lml"])
            else:
                trial = Hyper(l2, l3, hp.sigma2, hp.sigma3, hp.sigma_f, hp.sigma_e)
                trial, lml = optimise_amplitudes(cache.k2(l2), cache.k3(l3), labels, trial, self.use2, self.use3,
                                                 has_e, has_f)
            self.history.append({**trial.as_dict(), "log_marginal_likelihood": lml})
            if log:
                log(f"  l2={l2:.3f} l3={l3:.3f} sigma2={trial.sigma2:.3g} sigma3={trial.sigma3:.3g} "
                    f"sigma_f={trial.sigma_f:.3g} sigma_e={trial.sigma_e:.3g}  log ML={lml:.2f}")
            if lml > best["lml"]:
                best.update(lml=lml, hp=trial)
                hp = trial
            if on_evaluation is not None and k >= len(replay):
                on_evaluation({"l2": l2, "l3": l3, "hyper": trial.as_dict(), "lml": float(lml)})
            return -lml

        evaluate(hp.l2, hp.l3)
        for _ in range(rounds):
            if self.use2:
                scipy.optimize.minimize_scalar(lambda t: evaluate(round(float(np.exp(t)), 4), hp.l3),
                                               bounds=np.log(l2_bounds), method="bounded",
                                               options={"maxiter": maxiter, "xatol": 0.05})
            if self.use3:
                scipy.optimize.minimize_scalar(lambda t: evaluate(hp.l2, round(float(np.exp(t)), 4)),
                                               bounds=np.log(l3_bounds), method="bounded",
                                               options={"maxiter": maxiter, "xatol": 0.05})
        self.hyper = best["hp"]
        self.timings["hyper_gram_s"] = cache.seconds
        self.log_marginal_likelihood = best["lml"]
        return self.hyper

    def fit(self, frames, energy_frames: Sequence[int] = (), force_atoms=(), e0: np.ndarray | None = None,
            hyper_subset: tuple[Sequence[int], Any] | None = None, optimise: bool = True, log=None,
            alpha: np.ndarray | None = None, **opt_kwargs) -> "NBodyGP":
        """Train on the energies of ``energy_frames`` and the forces of ``force_atoms``
        (list of ``(frame index, atom indices)``) of ``frames`` (a Dataset or list of Frames).

        ``e0``: per-element reference energies (default: least squares on the energy frames,
        or on all frames with energies). ``hyper_subset``: ``(energy_frames, force_atoms)``
        used to optimise the hyperparameters (default: the training labels). ``alpha``: the dual
        coefficients of an earlier identical fit (a checkpoint), which skips the factorisation;
        the factor is then recomputed only if :meth:`energy_variance` needs it.
        """
        t0 = time.perf_counter()
        if e0 is None:
            src = [frames[f] for f in energy_frames] or [f for f in frames if f.energy is not None]
            e0 = fit_reference_energies(src, self.species)
        self.e0 = np.asarray(e0, dtype=float)
        if optimise:
            sub_e, sub_f = hyper_subset if hyper_subset is not None else (energy_frames, force_atoms)
            sub = build_labels(frames, list(sub_e), list(sub_f), self.species, self.rc2, self.rc3, self.e0)
            t = time.perf_counter()
            self.optimise_hyperparameters(sub, log=log, **opt_kwargs)
            self.timings["hyperparameters_s"] = time.perf_counter() - t
        t = time.perf_counter()
        labels = build_labels(frames, list(energy_frames), list(force_atoms), self.species, self.rc2, self.rc3,
                              self.e0)
        self.n_labels = {"energies": labels.n_energy, "force_components": labels.n_force}
        self.labels = labels
        if alpha is not None:
            self.alpha = np.asarray(alpha, dtype=np.float64)
            self._chol = None
        else:
            self._factorise()
            y = labels.y
            self.alpha = scipy.linalg.cho_solve(self._chol, y, check_finite=False)
            self.log_marginal_likelihood = float(-0.5 * y @ self.alpha - np.log(np.diag(self._chol[0])).sum()
                                                 - 0.5 * len(y) * np.log(2 * np.pi))
        self._collapse()
        self.timings["fit_s"] = time.perf_counter() - t
        self.timings["train_total_s"] = time.perf_counter() - t0
        return self

    def _factorise(self) -> None:
        hp, labels = self.hyper, self.labels
        cache = GramCache(labels, self.use2, self.use3)
        noise, _, _ = _noise_diag(labels, hp.sigma_e, hp.sigma_f)
        c = hp.sigma2**2 * cache.k2(hp.l2) + hp.sigma3**2 * cache.k3(hp.l3) + np.diag(noise)
        self.timings["gram_s"] = cache.seconds
        try:
            self._chol = scipy.linalg.cho_factor(c, lower=True, check_finite=False)
        except np.linalg.LinAlgError as exc:
            raise TrainingError(f"the GP covariance matrix is not positive definite ({exc}); "
                                "increase the noise levels") from None

    def _collapse(self):
        """Fold the dual coefficients into per-point weights (a, b) of the predictive mean."""
        lab, hp = self.labels, self.hyper
        ae, af = self.alpha[:lab.n_energy], self.alpha[lab.n_energy:].reshape(-1, 3)
        self._terms = {}
        for name, e, f, sig2, D in (("2", lab.e2, lab.f2, hp.sigma2**2, 1), ("3", lab.e3, lab.f3, hp.sigma3**2, 3)):
            xs, specs, a_s, b_s = [], [], [], []
            if e.x.shape[0]:
                coef = ae[e.grp][:, None]
                xs.append(e.x), specs.append(e.spec)
                a_s.append((e.a * coef).sum(1)), b_s.append((e.b * coef[:, :, None]).sum(1))
            if f.x.shape[0]:
                coef = af[f.grp]
                xs.append(f.x), specs.append(f.spec)
                a_s.append((f.a * coef).sum(1)), b_s.append((f.b * coef[:, :, None]).sum(1))
            if not xs:
                continue
            x, spec, a, b = np.concatenate(xs), np.concatenate(specs), sig2 * np.concatenate(a_s), sig2 * np.concatenate(b_s)
            # expand by the permutations: keys are the permuted species tuples
            terms = {}
            perms = [(np.arange(D), np.arange(2))] if D == 1 else [(sp, vp) for sp, vp in zip(_SPERM, _VPERM)]
            for sp, vp in perms:
                xp, bp = x[:, sp], b[:, sp]
                key_arr = spec if D == 1 else spec[:, vp]
                for key in {tuple(k) for k in key_arr.tolist()}:
                    sel = np.all(key_arr == np.array(key), axis=1)
                    terms.setdefault(key, []).append((xp[sel], a[sel], bp[sel]))
            self._terms[name] = {k: tuple(torch.from_numpy(np.concatenate([t[i] for t in v])) for i in range(3))
                                 for k, v in terms.items()}

    # ----------------------------------------------------------------- prediction
    def _g(self, order: str, x: torch.Tensor, key: tuple, chunk: int | None = None) -> torch.Tensor:
        """Posterior mean of g_order at points x (Q, D) with species key; differentiable in x
        (first derivatives, computed analytically chunk by chunk: memory O(Q D), not O(Q U))."""
        terms = self._terms.get(order, {}).get(tuple(int(k) for k in key))
        if terms is None or x.shape[0] == 0:
            return torch.zeros(x.shape[0], dtype=x.dtype) + 0.0 * x.sum()
        y, a, b = (t.to(x.dtype) for t in terms)
        ell = self.hyper.l2 if order == "2" else self.hyper.l3
        return _GPMean.apply(x, y, a, b, ell, chunk or max(16, int(2e6 // max(1, y.shape[0]))))

    def v2(self, r: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
        """Pair energy V2 at distances r for species indices (sa, sb) (torch, differentiable)."""
        out = torch.zeros_like(r)
        if not self.use2:
            return out
        lo, hi = torch.minimum(sa, sb), torch.maximum(sa, sb)
        for key in {(int(p), int(q)) for p, q in zip(lo.tolist(), hi.tolist())}:
            sel = (lo == key[0]) & (hi == key[1])
            out = out.index_put((sel.nonzero()[:, 0],), self._g("2", r[sel][:, None], key))
        return out * cutoff_fn(r, self.rc2)

    def v3(self, x: torch.Tensor, si, sj, sk) -> torch.Tensor:
        """Triangle energy V3 at sides x = (r_ij, r_ik, r_jk) (Q, 3) for vertex species."""
        out = torch.zeros(x.shape[0], dtype=x.dtype)
        if not self.use3 or x.shape[0] == 0:
            return out
        spec = torch.stack([si, sj, sk], 1)
        for key in {tuple(k) for k in spec.tolist()}:
            sel = (spec == torch.tensor(key)).all(1)
            out = out.index_put((sel.nonzero()[:, 0],), self._g("3", x[sel], key))
        return out * cutoff_fn(x, self.rc3).prod(1)

    def as_model(self) -> "GPModel":
        """The unmapped GP as an :class:`~ase_mlff.models.base.Model` (slow; for checks)."""
        return GPModel(self)

    def energy_variance(self, frame_or_atoms) -> float:
        """GP predictive variance of the total energy (eV^2) of one structure."""
        a = frame_or_atoms
        cell = a.cell.array if hasattr(a.cell, "array") else a.cell
        p2, p3 = structure_points(a.positions, a.numbers, cell, a.pbc, self.species, self.rc2, self.rc3)
        hp, lab = self.hyper, self.labels
        q2, q3 = energy_functional(p2, 1, 2), energy_functional(p3, 3, 3)
        prior = 0.0
        kstar = np.zeros(lab.n_energy + lab.n_force)
        if self.use2:
            prior += hp.sigma2**2 * gram(q2, q2, hp.l2)[0, 0]
            kstar += hp.sigma2**2 * np.concatenate([gram(q2, lab.e2, hp.l2)[0], gram(q2, lab.f2, hp.l2)[0]])
        if self.use3:
            prior += hp.sigma3**2 * gram(q3, q3, hp.l3)[0, 0]
            kstar += hp.sigma3**2 * np.concatenate([gram(q3, lab.e3, hp.l3)[0], gram(q3, lab.f3, hp.l3)[0]])
        if self._chol is None:
            self._factorise()
        v = scipy.linalg.cho_solve(self._chol, kstar, check_finite=False)
        return float(max(prior - kstar @ v, 0.0))

    # ----------------------------------------------------------------- mapping
    def to_mff(self, n2: int | None = None, n3: int | None = None, h2: float = 0.05, h3: float = 0.1,
               samples_per_interval: int = 2, log=None, done: dict | None = None, on_block=None) -> MFFModel:
        """Tabulate V2 and V3 of every element combination on splines (see module docstring).

        Resumable per block (one element pair or triple): ``on_block(key, coefficients)`` is
        called after each block is fitted; ``done``, a dict of such blocks, skips them."""
        done = {} if done is None else done
        t0 = time.perf_counter()
        n2 = int(n2 or math.ceil(self.rc2 / h2)) if self.use2 else 1
        n3 = int(n3 or math.ceil(self.rc3 / h3)) if self.use3 else 0
        model = MFFModel(self.species, rc2=self.rc2 if self.use2 else self.rc3, n2=n2,
                         rc3=self.rc3 if self.use3 else 0.0, n3=n3)
        S = len(self.species)
        coef2 = np.zeros(model.coef2.shape)
        if self.use2:
            g = model.grid2
            xs = sample_points(g, max(4, samples_per_interval))
            r = torch.from_numpy(xs)
            for a in range(S):
                for b in range(a, S):
                    key = f"coef2_{a}_{b}"
                    if key not in done:
                        with torch.no_grad():
                            vals = self.v2(r, torch.full_like(r, a, dtype=torch.long),
                                           torch.full_like(r, b, dtype=torch.long)).numpy()
                        done[key] = fit_1d(g, xs, vals, trailing_zeros=3)
                        if on_block is not None:
                            on_block(key, done[key])
                    coef2[a, b] = coef2[b, a] = done[key]
        coef3 = None
        if self.use3:
            coef3 = np.zeros(model.coef3.shape)
            g, gjk = model.grid3, model.grid3jk
            xs = sample_points(g, samples_per_interval)
            n = len(xs)
            for a in range(S):
                for b in range(S):
                    for c in range(b, S):
                        key = f"coef3_{a}_{b}_{c}"
                        if key not in done:
                            vals = self._tabulate3(xs, a, b, c)
                            done[key] = fit_tensor([g, g, gjk], [xs, xs, xs], vals, [g.n, g.n, g.n])
                            if on_block is not None:
                                on_block(key, done[key])
                        block = done[key]
                        coef3[a, b, c] = block
                        coef3[a, c, b] = np.transpose(block, (1, 0, 2))
            del n
        model.set_splines(coef2, coef3, self.e0)
        model.config["source"] = {"gp_hyperparameters": self.hyper.as_dict(), "samples_per_interval": samples_per_interval}
        self.timings["mapping_s"] = time.perf_counter() - t0
        if log:
            log(f"mapped in {self.timings['mapping_s']:.1f} s")
        return model

    def _tabulate3(self, xs: np.ndarray, a: int, b: int, c: int) -> np.ndarray:
        """V3[a, b, c] on the grid xs^3, using the permutation symmetry to evaluate fewer points."""
        n = len(xs)
        i1, i2, i3 = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
        if a == b == c:
            sel = (i1 >= i2) & (i2 >= i3)
        elif b == c:
            sel = i1 >= i2
        else:
            sel = np.ones_like(i1, dtype=bool)
        # points with a side at the cutoff are zero
        sel &= (i1 < n - 1) & (i2 < n - 1) & (i3 < n - 1) if xs[-1] >= self.rc3 - 1e-12 else sel
        q = np.stack([xs[i1[sel]], xs[i2[sel]], xs[i3[sel]]], 1)
        x = torch.from_numpy(q)
        with torch.no_grad():
            vals_sel = np.concatenate([
                self.v3(x[k:k + 20000], *(torch.full((min(20000, len(q) - k),), s, dtype=torch.long) for s in (a, b, c))).numpy()
                for k in range(0, len(q), 20000)]) if len(q) else np.zeros(0)
        vals = np.zeros((n, n, n))
        vals[i1[sel], i2[sel], i3[sel]] = vals_sel
        if a == b == c:
            for sp in _SPERM[1:]:
                idx = np.stack([i1[sel], i2[sel], i3[sel]], 1)
                vals[idx[:, sp[0]], idx[:, sp[1]], idx[:, sp[2]]] = vals_sel
        elif b == c:
            vals[i2[sel], i1[sel], i3[sel]] = vals_sel
        return vals


class _GPMean(torch.autograd.Function):
    """sum_u exp(-|x - y_u|^2 / 2 l^2) (a_u + b_u . (x - y_u) / l^2) and its gradient in x."""

    @staticmethod
    def forward(ctx, x, y, a, b, ell, chunk):
        inv = 1.0 / ell**2
        c0 = a - (b * y).sum(1) * inv
        y2 = (y * y).sum(1)
        # outputs preallocated: per-chunk tensors kept alive between the large temporaries
        # fragment the heap (memory then grows with the number of chunks)
        vals = torch.empty(x.shape[0], dtype=x.dtype)
        grad = torch.empty_like(x)
        with torch.no_grad():
            for q0 in range(0, x.shape[0], chunk):
                xq = x[q0:q0 + chunk]
                arg = (xq * xq).sum(1)[:, None] + y2[None, :] - 2.0 * xq @ y.T
                k = torch.exp_(arg.clamp_min_(0.0).mul_(-0.5 * inv))
                del arg
                sv = k * (c0[None, :] + (xq @ b.T) * inv)
                v = sv.sum(1)
                vals[q0:q0 + chunk] = v
                grad[q0:q0 + chunk] = -(xq * v[:, None] - sv @ y) * inv + (k @ b) * inv
                del k, sv
        ctx.save_for_backward(grad)
        return vals

    @staticmethod
    def backward(ctx, gout):
        (grad,) = ctx.saved_tensors
        return gout[:, None] * grad, None, None, None, None, None


class GPModel(Model):
    """The unmapped GP as a torch model (forces and stress by autograd; no second derivatives).
    Not saved to files."""

    family = "mff_gp"

    def __init__(self, gp: NBodyGP):
        super().__init__(gp.species, max(gp.rc2, gp.rc3))
        self.gp = gp
        self.register_buffer("e0", torch.as_tensor(gp.e0, dtype=torch.float64))

    def forward(self, graph: Graph) -> torch.Tensor:
        gp = self.gp
        s = self.species_index(graph.numbers)
        i, j = graph.edge_index
        vec = graph.edge_vectors()
        r = torch.linalg.norm(vec, dim=1)
        energies = self.e0.to(graph.dtype)[s].clone()
        if gp.use2:
            keep = r.detach() < gp.rc2
            energies = energies.index_add(0, i[keep], gp.v2(r[keep], s[i[keep]], s[j[keep]]))
        if gp.use3:
            e1, e2 = triplet_index(i.cpu().numpy(), (r.detach() < gp.rc3).cpu().numpy())
            if len(e1):
                e1, e2 = torch.from_numpy(e1), torch.from_numpy(e2)
                rjk = torch.linalg.norm(vec[e2] - vec[e1], dim=1)
                ok = rjk.detach() < gp.rc3
                e1, e2, rjk = e1[ok], e2[ok], rjk[ok]
                x = torch.stack([r[e1], r[e2], rjk], 1)
                energies = energies.index_add(0, i[e1], gp.v3(x, s[i[e1]], s[j[e1]], s[j[e2]]))
        return energies
