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
(Glielmo et al. 2020, "Building Nonparametric n-Body Force Fields Using Gaussian Process
Regression", Eqs. 5.28-5.29, 5.36-5.37; docs/references.md)::

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

Where the pieces live: the pairs and triangles (and the cutoff ``fc``) in
:mod:`ase_mlff.descriptors.nbody`; labels as linear functionals and their Gram matrices in
:mod:`ase_mlff.training.nbody_labels`; the hyperparameters and the likelihood in
:mod:`ase_mlff.training.gp_hyperparameters`; the trained posterior mean, a model, in
:mod:`ase_mlff.models.nbody_gp`; this module fits the GP and maps it onto splines.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from ..descriptors.nbody import Points, cutoff_fn, cutoff_grad, species_keys, structure_points  # noqa: F401 (old home)
from ..errors import TrainingError
from ..models.mff import MFFModel
from ..models.nbody_gp import GPModel
from ..splines import fit_1d, fit_tensor, sample_points
from .common import reference_energies as fit_reference_energies
from .gp_hyperparameters import Hyper, log_marginal_likelihood, optimise_amplitudes  # noqa: F401
from .nbody_labels import (FunctionalSet, GramCache, LabelSet, _noise_diag, build_labels,  # noqa: F401
                           energy_functional, force_functional, gram)

_VPERM = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def _side(a, b):
    lo, hi = min(a, b), max(a, b)
    return 0 if (lo, hi) == (0, 1) else (1 if (lo, hi) == (0, 2) else 2)


_SPERM = np.array([[_side(p[0], p[1]), _side(p[0], p[2]), _side(p[1], p[2])] for p in _VPERM])


def triplet_permutations(centred: bool) -> tuple[np.ndarray, np.ndarray]:
    """(side permutations, vertex permutations) the 3-body kernel sums over: all 6 for
    triangles; identity and the swap of the arms j, k for centred triplets (the first two)."""
    return (_SPERM[:2], _VPERM[:2]) if centred else (_SPERM, _VPERM)


def point_terms(x: np.ndarray, spec: np.ndarray, a: np.ndarray, b: np.ndarray, centred: bool = False) -> dict:
    """Posterior-mean points ``x`` (U, D) with species ``spec`` and weights ``a`` (U,), ``b``
    (U, D) as the ``terms`` of :class:`~ase_mlff.models.nbody_gp.GPModel`: ``{species key: (x,
    a, b)}`` torch tensors. Triangles (D = 3) are expanded by the vertex permutations of
    :func:`triplet_permutations` (sides and species permuted together), so the mean has the
    kernel's symmetry; pairs keep their sorted key."""
    D = x.shape[1]
    terms: dict = {}
    perms = [(np.arange(D), np.arange(2))] if D == 1 else list(zip(*triplet_permutations(centred)))
    for sp, vp in perms:
        xp, bp = x[:, sp], b[:, sp]
        key_arr = spec if D == 1 else spec[:, vp]
        for key in species_keys(key_arr):
            sel = np.all(key_arr == np.array(key), axis=1)
            terms.setdefault(key, []).append((xp[sel], a[sel], bp[sel]))
    return {k: tuple(torch.from_numpy(np.concatenate([t[i] for t in v])) for i in range(3)) for k, v in terms.items()}


# ------------------------------------------------------------------------------ the GP
class NBodyGP:
    """2-body / 3-body / 2+3-body GP local-energy model trained on energies and/or forces.

    >>> gp = NBodyGP(species=[28], rc2=5.0, rc3=3.7)                      # doctest: +SKIP
    >>> gp.fit(frames, energy_frames=..., force_atoms=..., optimise=True)  # doctest: +SKIP
    >>> mff = gp.to_mff(n2=100, n3=37)                                     # doctest: +SKIP
    """

    def __init__(self, species: Sequence[int], rc2: float = 5.0, rc3: float = 0.0,
                 hyper: Hyper | None = None, width2: float | None = None, width3: float | None = None,
                 triplets: str = "triangle"):
        self.species = sorted({int(z) for z in species})
        self.rc2, self.rc3 = float(rc2), float(rc3)
        # cutoff transition widths (None: the whole cutoff, the original MFF cutoff) and centred
        # triplets (docs/mff.md); only the sparse fit (mff_sparse) supports other than the defaults
        self.width2, self.width3 = width2, width3
        if triplets not in ("triangle", "centred"):
            raise ValueError(f"triplets must be 'triangle' or 'centred', got {triplets!r}")
        self.triplets = triplets
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

    @property
    def centred(self) -> bool:
        return self.triplets == "centred"

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
        if self.centred:
            raise TrainingError("centred triplets need the sparse fit (ase_mlff.training.mff_sparse.fit_sparse)")
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
            self._terms[name] = point_terms(x, spec, a, b)

    # ----------------------------------------------------------------- prediction
    def as_model(self) -> GPModel:
        """The unmapped GP (posterior mean, current ``e0``) as a
        :class:`~ase_mlff.models.nbody_gp.GPModel` (slow; the reference of the mapping)."""
        return GPModel(self.species, self.rc2, self.rc3, self.hyper.l2, self.hyper.l3, self.e0, self._terms,
                       self.width2, self.width3, self.centred)

    def v2(self, r: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
        """Pair energy V2 at distances r for species indices (sa, sb) (see :meth:`GPModel.v2`)."""
        return self.as_model().v2(r, sa, sb)

    def v3(self, x: torch.Tensor, si, sj, sk) -> torch.Tensor:
        """Triangle energy V3 at sides x = (r_ij, r_ik, r_jk) (see :meth:`GPModel.v3`)."""
        return self.as_model().v3(x, si, sj, sk)

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
               samples_per_interval: int = 2, log=None, done: dict | None = None, on_block=None,
               h3jk: float | None = None) -> MFFModel:
        """Tabulate V2 and V3 of every element combination on splines (see module docstring).

        ``h3jk``: knot spacing along the third side r_jk of centred triplets, which spans
        [0, 2 rc3] (default: the arms' spacing); triangles keep the arms' grid.

        Resumable per block (one element pair or triple): ``on_block(key, coefficients)`` is
        called after each block is fitted; ``done``, a dict of such blocks, skips them."""
        done = {} if done is None else done
        t0 = time.perf_counter()
        n2 = int(n2 or math.ceil(self.rc2 / h2)) if self.use2 else 1
        n3 = int(n3 or math.ceil(self.rc3 / h3)) if self.use3 else 0
        n3jk = None
        if h3jk is not None and self.use3:
            if not self.centred:
                raise ValueError("a separate r_jk spacing (h3jk) needs centred triplets: a triangle's third "
                                 "side shares the arms' grid up to the cutoff")
            n3jk = int(math.ceil(2 * self.rc3 / h3jk))
        model = MFFModel(self.species, rc2=self.rc2 if self.use2 else self.rc3, n2=n2,
                         rc3=self.rc3 if self.use3 else 0.0, n3=n3, n3jk=n3jk)
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
            # centred triplets reach r_jk = 2 rc3 and have no cutoff in it; triangles end at rc3
            xjk, free_jk = (sample_points(gjk, samples_per_interval), gjk.n_coef) if self.centred else (xs, g.n)
            n = len(xs)
            for a in range(S):
                for b in range(S):
                    for c in range(b, S):
                        key = f"coef3_{a}_{b}_{c}"
                        if key not in done:
                            vals = self._tabulate3(xs, xjk, a, b, c)
                            done[key] = fit_tensor([g, g, gjk], [xs, xs, xjk], vals, [g.n, g.n, free_jk])
                            if on_block is not None:
                                on_block(key, done[key])
                        block = done[key]
                        coef3[a, b, c] = block
                        coef3[a, c, b] = np.transpose(block, (1, 0, 2))
            del n
        model.set_splines(coef2, coef3, self.e0)
        model.config["source"] = {"gp_hyperparameters": self.hyper.as_dict(), "samples_per_interval": samples_per_interval,
                                  "triplets": self.triplets}
        self.timings["mapping_s"] = time.perf_counter() - t0
        if log:
            log(f"mapped in {self.timings['mapping_s']:.1f} s")
        return model

    def _tabulate3(self, xs: np.ndarray, xjk: np.ndarray, a: int, b: int, c: int) -> np.ndarray:
        """V3[a, b, c] on the grid xs x xs x xjk (arms r_ij, r_ik; third side r_jk), using the
        kernel's permutation symmetry to evaluate fewer points. Points with an arm at the cutoff
        are zero (with triangles, also those with r_jk at the cutoff)."""
        n, m = len(xs), len(xjk)
        i1, i2, i3 = np.meshgrid(np.arange(n), np.arange(n), np.arange(m), indexing="ij")
        full = not self.centred and a == b == c  # triangles of one species triple: all 6 permutations
        if full:
            sel = (i1 >= i2) & (i2 >= i3)
        elif b == c:
            sel = i1 >= i2
        else:
            sel = np.ones_like(i1, dtype=bool)
        if xs[-1] >= self.rc3 - 1e-12:
            sel &= (i1 < n - 1) & (i2 < n - 1)
            if not self.centred:
                sel &= i3 < m - 1
        q = np.stack([xs[i1[sel]], xs[i2[sel]], xjk[i3[sel]]], 1)
        x = torch.from_numpy(q)
        with torch.no_grad():
            vals_sel = np.concatenate([
                self.v3(x[k:k + 20000], *(torch.full((min(20000, len(q) - k),), s, dtype=torch.long) for s in (a, b, c))).numpy()
                for k in range(0, len(q), 20000)]) if len(q) else np.zeros(0)
        vals = np.zeros((n, n, m))
        vals[i1[sel], i2[sel], i3[sel]] = vals_sel
        if full:
            for sp in _SPERM[1:]:
                idx = np.stack([i1[sel], i2[sel], i3[sel]], 1)
                vals[idx[:, sp[0]], idx[:, sp[1]], idx[:, sp[2]]] = vals_sel
        elif b == c:
            vals[i2[sel], i1[sel], i3[sel]] = vals_sel
        return vals
