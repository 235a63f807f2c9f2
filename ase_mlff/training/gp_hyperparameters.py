"""Hyperparameters of an n-body GP and its log marginal likelihood.

``l2``, ``l3``: length scales (Å) of the 2- and 3-body kernels; ``sigma2``, ``sigma3``: their
amplitudes (eV); ``sigma_f``: force noise (eV/Å); ``sigma_e``: energy noise (eV per
sqrt(atom): the energy of an ``n``-atom structure has variance ``n sigma_e**2``). With ``K2``,
``K3`` the unit-amplitude Gram matrices of the labels ``y``::

    C = sigma2**2 K2 + sigma3**2 K3 + diag(noise)
    log p(y) = -1/2 y^T C^-1 y - 1/2 log det C - n/2 log(2 pi)

The amplitudes and noises are optimised by L-BFGS on their logarithms with the analytic gradient
``1/2 tr((alpha alpha^T - C^-1) dC)``; the length scales by the caller (a 1-D search each).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

from .nbody_labels import LabelSet, _noise_diag


@dataclass
class Hyper:
    """Hyperparameters: length scales Å, amplitudes eV, noises eV/Å (forces) and eV/sqrt(atom)."""

    l2: float = 0.8
    l3: float = 0.8
    sigma2: float = 1.0
    sigma3: float = 0.1
    sigma_f: float = 0.05
    sigma_e: float = 0.005

    def as_dict(self) -> dict:
        return {k: float(v) for k, v in self.__dict__.items()}


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
