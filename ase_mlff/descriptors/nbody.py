"""n-body geometry: the pairs and triangles of local n-body models (MFF, its GP, later GAP).

Written once here and used by the model (:mod:`ase_mlff.models.mff`: spline energies), the
unmapped GP (:mod:`ase_mlff.models.nbody_gp`) and GP training
(:mod:`ase_mlff.training.nbody_labels`). Input: the directed edges of a neighbour list,
``i`` (centre), ``j`` (neighbour), ``vec = r_j - r_i + S cell`` (Å) and ``r = |vec|``,
either as torch tensors of a :class:`~ase_mlff.graph.Graph` (differentiable: the model's
forward) or as numpy arrays of a :class:`~ase_mlff.neighbors.Pairs` (training, with analytic
Jacobians from :func:`nbody_points`).

Pairs of atom ``i``: edges with ``r_ij < rc2``. Triangles of centre ``i``: two edges
``(i, j)``, ``(i, k)`` with ``r_ij, r_ik < rc3`` and ``j, k`` listed once (edge ``e1 < e2``),
kept when ``r_jk = |vec_ik - vec_ij| < rjk_max`` (``rc3`` for the GP; the support of the
3-body spline for MFF). Periodic images are distinct neighbours, so a small cell gives several
edges to the same atom.

Smooth cutoff of the GP (value and first three derivatives vanish at ``rc``, flat at 0,
``fc(rc/2) = 1/2``)::

    fc(r; rc) = 1/2 + 9/16 cos(pi r / rc) - 1/16 cos(3 pi r / rc)   (r < rc), 0 otherwise
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..neighbors import neighbor_list


# ------------------------------------------------------------------------------ cutoff
def cutoff_fn(r, rc, width=None):
    """Smooth cutoff: 1 below ``rc - width``, then ``1/2 + 9/16 cos(pi x) - 1/16 cos(3 pi x)`` with
    ``x = (r - rc + width) / width`` up to ``rc`` (value and first three derivatives vanish at
    ``rc``), 0 beyond (numpy or torch). ``width=None`` is the whole cutoff (``x = r / rc``):
    the original MFF cutoff, flat at 0 and 1/2 at ``rc / 2``."""
    w = rc if width is None else float(width)
    lo = rc - w
    if isinstance(r, torch.Tensor):
        x = math.pi * ((r - lo) / w).clamp(min=0.0)
        val = 0.5 + 0.5625 * torch.cos(x) - 0.0625 * torch.cos(3.0 * x)
        return torch.where(r < rc, val, torch.zeros_like(r))
    r = np.asarray(r, dtype=np.float64)
    x = np.pi * np.clip((r - lo) / w, 0.0, None)
    return np.where(r < rc, 0.5 + 0.5625 * np.cos(x) - 0.0625 * np.cos(3.0 * x), 0.0)


def cutoff_grad(r, rc, width=None):
    """d fc / d r (numpy), for the same ``width``."""
    w = rc if width is None else float(width)
    lo = rc - w
    r = np.asarray(r, dtype=np.float64)
    x = np.pi * (r - lo) / w
    inside = (r < rc) & (r > lo)
    return np.where(inside, -(np.pi / w) * (0.5625 * np.sin(x) - 0.1875 * np.sin(3.0 * x)), 0.0)


# ------------------------------------------------------------------------------ triangles
def triplet_index(first: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(e1, e2)``, ``e1 < e2``, of kept edges that share their centre atom.

    ``first`` is the centre of every edge; edges need not be sorted. Returns edge indices.
    """
    idx = np.nonzero(keep)[0]
    if len(idx) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(first[idx], kind="stable")
    idx = idx[order]
    centres = first[idx]
    _, start, counts = np.unique(centres, return_index=True, return_counts=True)
    # for edge at position q (block starting at s with c edges): partners q+1 .. s+c-1
    block_end = np.repeat(start + counts, counts)
    pos = np.arange(len(idx))
    n_partner = block_end - pos - 1
    total = int(n_partner.sum())
    e1 = np.repeat(pos, n_partner)
    first_partner = np.repeat(np.cumsum(n_partner) - n_partner, n_partner)
    e2 = e1 + 1 + (np.arange(total) - first_partner)
    return idx[e1], idx[e2]


@dataclass
class Triangles:
    """Triangles ``(i, j, k)`` as edge pairs: ``e1`` is edge ``i -> j``, ``e2`` edge ``i -> k``;
    ``djk = vec[e2] - vec[e1]`` (Å) and ``rjk = |djk|``. Arrays of the input's kind (numpy or
    torch; ``rjk`` differentiable when ``vec`` is)."""

    e1: np.ndarray | torch.Tensor
    e2: np.ndarray | torch.Tensor
    djk: np.ndarray | torch.Tensor
    rjk: np.ndarray | torch.Tensor

    def __len__(self) -> int:
        return len(self.e1)


def triangles(i, vec, r, rc3: float, rjk_max: float, lowest_centre_j=None) -> Triangles:
    """Triangles of every centre with both arms shorter than ``rc3`` and ``r_jk < rjk_max``.

    ``i``, ``vec``, ``r``: edge centres, vectors and lengths (numpy, or torch as in a Graph).
    ``lowest_centre_j``: the neighbour index ``j`` of every edge (numpy); when given, a
    triangle is kept only from its lowest-numbered vertex (``i <= j`` and ``i <= k``), so each
    distinct triangle of a half list appears once (GP training counts multiplicities itself).
    """
    as_torch = isinstance(vec, torch.Tensor)
    first = i.detach().cpu().numpy() if as_torch else i
    within = (r.detach() < rc3).cpu().numpy() if as_torch else r < rc3
    e1, e2 = triplet_index(first, within)
    if lowest_centre_j is not None:
        ci = first[e1]
        keep = (ci <= lowest_centre_j[e1]) & (ci <= lowest_centre_j[e2])
        e1, e2 = e1[keep], e2[keep]
    if as_torch:
        e1 = torch.from_numpy(e1).to(vec.device)
        e2 = torch.from_numpy(e2).to(vec.device)
        djk = vec[e2] - vec[e1]
        rjk = torch.linalg.norm(djk, dim=1)
        ok = rjk.detach() < rjk_max
    else:
        djk = vec[e2] - vec[e1]
        rjk = np.linalg.norm(djk, axis=1)
        ok = rjk < rjk_max
    return Triangles(e1[ok], e2[ok], djk[ok], rjk[ok])


# ------------------------------------------------------------------------------ GP points
@dataclass
class Points:
    """Distinct n-plets of one structure: coordinates, species, weight, atoms and Jacobians."""

    x: np.ndarray  # (U, D) pair distance (D = 1) or triangle sides r_ij, r_ik, r_jk (D = 3), Å
    spec: np.ndarray  # (U, V) int32 (pairs: sorted species pair; triangles: vertex species)
    weight: np.ndarray  # (U,) multiplicity
    atoms: np.ndarray  # (U, V) vertex atom indices
    jac: np.ndarray  # (U, V, D, 3) d x_d / d r_vertex
    w: np.ndarray  # (U,) cutoff product
    dw: np.ndarray  # (U, D) gradient of the cutoff product

    @property
    def n(self) -> int:
        return len(self.x)


def species_keys(spec) -> list[tuple[int, ...]]:
    """The distinct rows of an (n, V) array of species indices (numpy or torch), as tuples,
    sorted: rows coded as one integer each first (species indices < 256), which is far faster
    than a set of n tuples or a row-wise unique."""
    as_torch = isinstance(spec, torch.Tensor)
    a = spec.detach().cpu().numpy() if as_torch else np.asarray(spec)
    if a.shape[0] == 0:
        return []
    code = np.zeros(a.shape[0], dtype=np.int64)
    for v in range(a.shape[1]):
        code = code * 256 + a[:, v]
    out = []
    for c in np.unique(code).tolist():
        key = []
        for _ in range(a.shape[1]):
            c, r = divmod(c, 256)
            key.append(r)
        out.append(tuple(key[::-1]))
    return out


def species_indices(numbers, species: Sequence[int]) -> np.ndarray:
    """Index of each atom's element in the sorted ``species`` (InputError for others)."""
    table = {int(z): k for k, z in enumerate(species)}
    try:
        return np.array([table[int(z)] for z in numbers], dtype=np.int32)
    except KeyError as exc:
        raise InputError(f"element {exc} is not among the model's species {list(species)}") from None


def nbody_points(i, j, vec, r, s, rc2: float, rc3: float, width2=None, width3=None, centred: bool = False):
    """``(pairs, triangles)`` :class:`Points` of one structure from its full neighbour list
    (numpy edges ``i``, ``j``, ``vec``, ``r`` with cutoff ``>= max(rc2, rc3)``; ``s`` species
    index per atom); either is None when its cutoff is 0.

    Each distinct pair (``i <= j``) and triangle (from its lowest-numbered vertex) is one point
    weighted by its multiplicity in the local-energy sum: 2 for a pair (1 for an atom and its own
    image), ``3 / (1 + [i == j] + [i == k])`` for a triangle. ``jac`` holds the Jacobian of the
    coordinates ``x`` with respect to each vertex position, so forces are linear in it.

    ``centred``: triplets instead of triangles, one point (weight 1) per centre ``i`` and pair of
    its arms ``j, k`` shorter than ``rc3``, whatever ``r_jk`` (up to ``2 rc3``); the cutoff
    product is over the two arms only. The same triangle seen from another vertex is another
    point, with its own value (the centred 3-body term of uf3 and Stillinger-Weber).
    """
    pairs = tri = None
    if rc2 > 0:
        keep = (r < rc2) & (i <= j)
        ii, jj, d, rr = i[keep], j[keep], vec[keep], r[keep]
        u = d / rr[:, None]
        jac = np.stack([-u, u], axis=1)[:, :, None, :]  # (U, 2, 1, 3)
        spec = np.sort(np.stack([s[ii], s[jj]], axis=1), axis=1).astype(np.int32)
        pairs = Points(rr[:, None], spec, np.where(ii == jj, 1.0, 2.0), np.stack([ii, jj], 1), jac,
                       cutoff_fn(rr, rc2, width2), cutoff_grad(rr, rc2, width2)[:, None])
    if rc3 > 0:
        t = triangles(i, vec, r, rc3, 2.0 * rc3, None) if centred else triangles(i, vec, r, rc3, rc3, j)
        e1, e2, djk, rjk = t.e1, t.e2, t.djk, t.rjk
        ci, cj, ck = i[e1], j[e1], j[e2]
        x = np.stack([r[e1], r[e2], rjk], axis=1)
        uij = vec[e1] / r[e1][:, None]
        uik = vec[e2] / r[e2][:, None]
        ujk = djk / rjk[:, None]
        z = np.zeros_like(uij)
        jac = np.stack([np.stack([-uij, -uik, z], 1), np.stack([uij, z, -ujk], 1), np.stack([z, uik, ujk], 1)], 1)
        fcx = cutoff_fn(x, rc3, width3)
        dfx = cutoff_grad(x, rc3, width3)
        if centred:
            fcx[:, 2], dfx[:, 2] = 1.0, 0.0
            weight = np.ones(len(x))
        else:
            weight = 3.0 / (1 + (ci == cj).astype(float) + (ci == ck).astype(float))
        w = fcx.prod(1)
        dw = np.stack([dfx[:, 0] * fcx[:, 1] * fcx[:, 2], fcx[:, 0] * dfx[:, 1] * fcx[:, 2],
                       fcx[:, 0] * fcx[:, 1] * dfx[:, 2]], 1)
        tri = Points(x, np.stack([s[ci], s[cj], s[ck]], 1).astype(np.int32), weight,
                     np.stack([ci, cj, ck], 1), jac, w, dw)
    return pairs, tri


def structure_points(positions, numbers, cell, pbc, species: Sequence[int], rc2: float, rc3: float,
                     width2=None, width3=None, centred: bool = False):
    """(pairs, triangles) :class:`Points` of one structure (either may be None): the neighbour
    list of :func:`ase_mlff.neighbors.neighbor_list` with cutoff ``max(rc2, rc3)``, then
    :func:`nbody_points`."""
    s = species_indices(numbers, species)
    p = neighbor_list(positions, cell, pbc, max(rc2, rc3))
    return nbody_points(p.i, p.j, p.vectors, p.distances, s, rc2, rc3, width2, width3, centred)
