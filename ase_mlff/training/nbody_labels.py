"""Training labels of an n-body GP as linear functionals, and their Gram matrices.

A total energy and a force component are linear functionals of the GP functions ``g2`` and
``g3`` (docs/mff.md, :mod:`ase_mlff.training.mff_gp`)::

    E      = sum_u  w_u fc_u g(x_u)                          (a_u = w_u fc_u, b_u = 0)
    F_a,c  = -sum_u w_u [ (dfc_u . J_u) g(x_u) + fc_u J_u^T grad g(x_u) ]

over the distinct pairs / triangles ``u`` of a structure (weights ``w_u``: multiplicities,
Jacobians ``J_u = dx_u/dr_a`` from :func:`ase_mlff.descriptors.nbody.nbody_points`), so a set
of labels is a :class:`FunctionalSet` of points ``x_u`` with value weights ``a`` and gradient
weights ``b``. Their covariances (energy-energy, energy-force, force-force) under the
squared-exponential kernel summed over species-preserving permutations are computed
analytically in C++ (``_core.gp_gram``). Units: energies eV, forces eV/Å, lengths Å.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import _ext
from ..descriptors.nbody import Points, structure_points

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
