"""How much float64 rounding an sGDML prediction carries: the scale of the numbers it adds.

sGDML's energy ``E = c − Σ_iq g(d_iq) δ_iq·v_iq`` (ase_mlff/models/sgdml.py) is formed on the
fast paths as ``δ·v = x·v − y·v`` from products of ~1e8 eV, which cancel to a total of a few
thousand eV, and the forces sum terms of the same kind. Rounding is therefore a few ulps of
*those* numbers, not of ``E`` or ``F``: for the rMD17 ethanol models of the tests the summed
magnitudes are ~1.7e8 eV and ~7e7 eV/Å, so two evaluations that should agree exactly (torch
and numpy paths, a rotated, translated or symmetry-permuted copy, the calculator and the
model) differ by up to 8.2e-9 eV (2e-12 of the energy: a tolerance relative to the energy
would have to be that loose) and 1.9e-9 eV/Å (7e-10 of the largest force), depending on the
frame and on the CPU's BLAS. Tests compare with ``EPS · scale``: the first-order rounding bound
of these sums, which the differences stay well below (at most 0.22 · EPS · scale over the 100
rMD17 test frames of tests/data, 0.04 for the shipped model in tests/test_sgdml_order.py).
"""

from __future__ import annotations

import math

import numpy as np

from ase_mlff.descriptors.inverse_distance import inverse_distances, pair_indices

EPS = float(np.finfo(np.float64).eps)


def rounding_scales(model, R) -> tuple[float, float]:
    """``(energy scale eV, force scale eV/Å)`` of ``model`` (an SGDMLModel) at the positions
    ``R`` (N, 3), model order: the sums of the magnitudes of the terms that its energy and its
    largest force component add (with the operands of every cancelling difference counted)."""
    R = np.asarray(R, dtype=np.float64)
    x = inverse_distances(R)
    Y, V = model.Y.double().cpu().numpy(), model.V.double().cpu().numpy()
    yy, yv = model.yy.double().cpu().numpy(), model.yv.double().cpu().numpy()
    s = model.sigma
    a, c1, c2 = math.sqrt(5.0) / s, 5.0 / (3.0 * s * s), 25.0 / (3.0 * s ** 4)
    xv = V @ x
    d = np.sqrt(np.maximum(x @ x - 2.0 * (Y @ x) + yy, 0.0))
    ex = np.exp(-a * d)
    g = c1 * (1.0 + a * d) * ex
    operands = np.abs(xv) + np.abs(yv)  # δ·v = x·v − y·v
    energy = abs(model.c) + float(np.sum(g * operands))
    # w = g·V + h(δ·v)·Y − Σ h(δ·v) x, F = −incidence · (w x³ (r_a − r_b)) per pair
    h = c2 * ex * operands
    w = g @ np.abs(V) + h @ np.abs(Y) + h.sum() * x
    pa, pb = pair_indices(len(R))
    per_pair = (w * x ** 3)[:, None] * np.abs(R[pa] - R[pb])
    per_atom = np.zeros_like(R)
    np.add.at(per_atom, pa, per_pair)
    np.add.at(per_atom, pb, per_pair)
    return energy, float(per_atom.max())


def tolerances(model, R) -> tuple[float, float]:
    """``(eV, eV/Å)``: the rounding bound ``EPS · scale`` of energies and forces at ``R``."""
    e, f = rounding_scales(model, R)
    return EPS * e, EPS * f
