"""The unmapped n-body Gaussian process (posterior mean) as a model: the reference MFF is mapped from.

Local energy of atom ``i`` (species ``s``; pairs and triangles from
:mod:`ase_mlff.descriptors.nbody`, the same code MFF and GP training use)::

    eps_i = e0[s_i] + sum_{j != i, r_ij < rc2} V2(r_ij) + sum_{j < k, r_ij, r_ik, r_jk < rc3} V3(r_ij, r_ik, r_jk)
    V2(r) = fc(r; rc2) g2[s_i s_j](r)
    V3(x) = fc(x1; rc3) fc(x2; rc3) fc(x3; rc3) g3[s_i s_j s_k](x)

or, with ``centred`` triplets, ``r_jk`` unrestricted (below ``2 rc3``) and ``V3(x) = fc(x1; rc3)
fc(x2; rc3) g3[s_i s_j s_k](x)``, ``g3`` symmetric only under swapping ``j`` and ``k``.

with the GP posterior means (squared-exponential kernel of length scale ``l``; training points
``y_u`` with weights ``a_u``, ``b_u`` folded from the dual coefficients, see
:meth:`ase_mlff.training.mff_gp.NBodyGP.fit`)::

    g(x) = sum_u exp(-|x - y_u|^2 / 2 l^2) (a_u + b_u . (x - y_u) / l^2)

Why a model and not training code: it is a function of the Graph with declared species and
cutoff, evaluated through :meth:`Model.compute` like any family (forces and stress by
autograd), so the mapped splines can be checked against it on any structure; a GAP family
would be the same kind of model with another descriptor. It is not registered for model files:
MFF files hold its spline tabulation instead (~1e3-1e4 times faster).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ..descriptors.nbody import cutoff_fn, species_keys, triangles
from ..graph import Graph
from .base import Model


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
    Not saved to files.

    ``terms``: ``{"2": {(sa, sb): (y, a, b)}, "3": {(si, sj, sk): (y, a, b)}}`` posterior-mean
    points and weights per species key (species indices), as folded by the GP's fit; ``rc2`` /
    ``rc3`` = 0 switches a term off; ``centred``: 3-body triplets with the cutoff on the two
    arms only (module docstring)."""

    family = "mff_gp"

    def __init__(self, species: Iterable[int], rc2: float, rc3: float, l2: float, l3: float,
                 e0, terms: dict, width2: float | None = None, width3: float | None = None,
                 centred: bool = False):
        super().__init__(species, max(rc2, rc3))
        self.centred = bool(centred)
        self.rc2, self.rc3, self.l2, self.l3 = float(rc2), float(rc3), float(l2), float(l3)
        self.width2, self.width3 = width2, width3
        self.terms = terms
        self.register_buffer("e0", torch.as_tensor(np.asarray(e0), dtype=torch.float64))

    @property
    def use2(self) -> bool:
        return self.rc2 > 0

    @property
    def use3(self) -> bool:
        return self.rc3 > 0

    def _g(self, order: str, x: torch.Tensor, key: tuple, chunk: int | None = None) -> torch.Tensor:
        """Posterior mean of g_order at points x (Q, D) with species key; differentiable in x
        (first derivatives, computed analytically chunk by chunk: memory O(Q D), not O(Q U))."""
        terms = self.terms.get(order, {}).get(tuple(int(k) for k in key))
        if terms is None or x.shape[0] == 0:
            return torch.zeros(x.shape[0], dtype=x.dtype) + 0.0 * x.sum()
        y, a, b = (t.to(x.dtype) for t in terms)
        ell = self.l2 if order == "2" else self.l3
        return _GPMean.apply(x, y, a, b, ell, chunk or max(16, int(2e6 // max(1, y.shape[0]))))

    def v2(self, r: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
        """Pair energy V2 (eV) at distances r (Å) for species indices (sa, sb) (differentiable)."""
        out = torch.zeros_like(r)
        if not self.use2:
            return out
        lo, hi = torch.minimum(sa, sb), torch.maximum(sa, sb)
        for key in species_keys(torch.stack([lo, hi], 1)):
            sel = (lo == key[0]) & (hi == key[1])
            out = out.index_put((sel.nonzero()[:, 0],), self._g("2", r[sel][:, None], key))
        return out * cutoff_fn(r, self.rc2, self.width2)

    def v3(self, x: torch.Tensor, si, sj, sk) -> torch.Tensor:
        """Triangle energy V3 (eV) at sides x = (r_ij, r_ik, r_jk) (Q, 3) for vertex species."""
        out = torch.zeros(x.shape[0], dtype=x.dtype)
        if not self.use3 or x.shape[0] == 0:
            return out
        spec = torch.stack([si, sj, sk], 1)
        for key in species_keys(spec):
            sel = (spec == torch.tensor(key)).all(1)
            out = out.index_put((sel.nonzero()[:, 0],), self._g("3", x[sel], key))
        return out * cutoff_fn(x[:, :2] if self.centred else x, self.rc3, self.width3).prod(1)

    def forward(self, graph: Graph) -> torch.Tensor:
        s = self.species_index(graph.numbers)
        i, j = graph.edge_index
        vec = graph.edge_vectors()
        r = torch.linalg.norm(vec, dim=1)
        energies = self.e0.to(graph.dtype)[s].clone()
        if self.use2:
            keep = r.detach() < self.rc2
            energies = energies.index_add(0, i[keep], self.v2(r[keep], s[i[keep]], s[j[keep]]))
        if self.use3:
            tri = triangles(i, vec, r, self.rc3, 2.0 * self.rc3 if self.centred else self.rc3)
            if len(tri):
                e1, e2 = tri.e1, tri.e2
                x = torch.stack([r[e1], r[e2], tri.rjk], 1)
                energies = energies.index_add(0, i[e1], self.v3(x, s[i[e1]], s[j[e1]], s[j[e2]]))
        return energies
