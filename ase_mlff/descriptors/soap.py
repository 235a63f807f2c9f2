"""SOAP: the smooth overlap of atomic positions power spectrum, with exact derivatives.

Definitions (Csányi, Willatt & Ceriotti 2020, "Machine-Learning of Atomic-Scale Properties Based on Physical
Principles", §6.3, docs/references.md; docs/gap.md has the comparison with QUIP, featomic and dscribe). The
neighbour density of centre ``i`` in the channel of species ``a`` is a sum of Gaussians of width
``atom_sigma`` on the neighbours of that species, each weighted by the cutoff function, plus the
centre's own Gaussian with weight ``central_weight`` in its species' channel::

    rho_i^a(r) = sum_{j in a} f_c(r_ij) exp(-|r - r_ij|^2 / (2 sigma^2))
    f_c(r) = 1 (r <= r_c - w),  (1 + cos(pi (r - r_c + w) / w)) / 2 (r_c - w < r < r_c),  0 beyond

It is expanded in an orthonormal radial basis times real spherical harmonics. The radial basis is
spanned by the Gaussian-type primitives ``r^k exp(-r^2 / (2 s_k^2))``, ``k = 0 .. n_max - 1``,
``s_k = R max(sqrt(k), 1) / n_max`` (Csányi, Willatt & Ceriotti 2020, Eq. 6.58; ``R = basis_radius``, the cutoff by
default), orthonormalised symmetrically (S^{-1/2}); any orthonormal basis of that span gives
the same kernels. For Gaussian atoms the expansion is analytic in the angle (Csányi, Willatt & Ceriotti 2020, Eq. 6.57)::

    c_i^{a n l m} = sum_{j in a} h_nl(r_ij) Y_lm(r_ij / |r_ij|)
    h_nl(r) = f_c(r) 4 pi int_0^inf r'^2 R_n(r') exp(-(r^2 + r'^2) / (2 sigma^2)) i_l(r r' / sigma^2) dr'

(``i_l`` the modified spherical Bessel function). The radial integral is computed once by
Gauss-Legendre quadrature on a 0.01 Å grid and tabulated as cubic Hermite pieces (values and
derivatives exact at the nodes, interpolation error below 1e-8 relative), so the descriptor
and its derivatives are exact derivatives of one smooth function.

The power spectrum (Csányi, Willatt & Ceriotti 2020, Eq. 6.46) keeps one entry per ``a <= b``, ``n, n'`` (``n <= n'`` when
``a == b``) and ``l``::

    p_i[a b n n' l] = s / sqrt(2 l + 1) sum_m c_i^{a n l m} c_i^{b n' l m}

with ``s = sqrt(2)`` on the entries that stand for two of the full tensor, so dot products
equal those of the full tensors. The kernel of GAP is the dot product of the normalised
vectors ``p / |p|`` raised to the power zeta.

The compiled core (``_ext/soap.cpp``) gives ``p``, the expansion coefficients, the backward
pass ``d(sum g p) / d(pair vectors)`` used for forces and stress in MD, and the full Jacobian
``dp_i / d(pair vector)`` used to fit forces and virials.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from scipy.special import gammaln, ive, roots_legendre, spherical_in

from .._ext import _core
from ..splines import hermite_coefficients

#: table spacing (Å) of the radial integrals
GRID_SPACING = 0.01
#: Gauss-Legendre nodes of the radial quadrature
QUADRATURE_NODES = 400


def cutoff_function(r, r_cut: float, width: float):
    """Smooth cutoff f_c(r) and its derivative (cosine transition of ``width`` below ``r_cut``),
    for numpy arrays or torch tensors (differentiable)."""
    if isinstance(r, torch.Tensor):
        below = r < r_cut
        if width <= 0:
            return below.to(r.dtype), torch.zeros_like(r)
        x = math.pi * ((r - (r_cut - width)) / width).clamp(0.0, 1.0)
        f = torch.where(below, 0.5 * (1.0 + torch.cos(x)), torch.zeros_like(r))
        df = torch.where(below & (r > r_cut - width), -0.5 * math.pi / width * torch.sin(x), torch.zeros_like(r))
        return f, df
    r = np.asarray(r, dtype=np.float64)
    f = np.where(r < r_cut, 1.0, 0.0)
    df = np.zeros_like(r)
    if width > 0:
        inside = (r > r_cut - width) & (r < r_cut)
        x = math.pi * (r[inside] - r_cut + width) / width
        f[inside] = 0.5 * (1.0 + np.cos(x))
        df[inside] = -0.5 * math.pi / width * np.sin(x)
    return f, df


def gto_basis(n_max: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Widths ``s_k`` of the primitives and the (n_max, n_max) matrix ``U`` with
    ``R_n = sum_k U[n, k] phi_k`` orthonormal under ``int r^2 ... dr``."""
    k = np.arange(n_max)
    s = radius * np.maximum(np.sqrt(k), 1.0) / n_max
    a = 0.5 / s[:, None] ** 2 + 0.5 / s[None, :] ** 2
    q = (k[:, None] + k[None, :] + 3) / 2.0
    # int_0^inf r^(2q - 1) exp(-a r^2) dr = Gamma(q) / (2 a^q), in logs to avoid overflow
    overlap = np.exp(gammaln(q) - q * np.log(a)) / 2.0
    w, v = np.linalg.eigh(overlap)
    if w.min() <= 1e-12 * w.max():
        raise ValueError(f"the GTO radial basis with n_max={n_max} is numerically degenerate")
    return s, (v / np.sqrt(w)) @ v.T


def _scaled_in(l: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp(-x) i_l(x) and its derivative in x, without overflow at large x."""
    small = x < 50.0
    val = np.empty_like(x)
    der = np.empty_like(x)
    xs = x[small]
    e = np.exp(-xs)
    val[small] = spherical_in(l, xs) * e
    der[small] = (spherical_in(l, xs, derivative=True) - spherical_in(l, xs)) * e
    xl = x[~small]
    pref = np.sqrt(np.pi / (2.0 * xl))
    v, v1 = pref * ive(l + 0.5, xl), pref * ive(l + 1.5, xl)
    val[~small] = v
    der[~small] = v1 + (l / xl - 1.0) * v  # i_l' = i_{l+1} + (l / x) i_l
    return val, der


def radial_integrals(r: np.ndarray, n_max: int, l_max: int, sigma: float, radius: float,
                     nodes: int = QUADRATURE_NODES) -> tuple[np.ndarray, np.ndarray]:
    """g_nl(r) and dg_nl/dr, each (len(r), n_max, l_max + 1), without the cutoff function."""
    r = np.asarray(r, dtype=np.float64)
    s, U = gto_basis(n_max, radius)
    upper = float(r.max()) + 10.0 * sigma
    t, wq = roots_legendre(nodes)
    rp = 0.5 * upper * (t + 1.0)
    wq = 0.5 * upper * wq
    k = np.arange(n_max)
    prim = rp[None, :] ** k[:, None] * np.exp(-0.5 * rp[None, :] ** 2 / s[:, None] ** 2)  # (K, Q)
    basis = U @ prim  # (n, Q)
    weighted = 4.0 * math.pi * basis * (rp ** 2 * wq)[None, :]  # (n, Q)
    diff = r[:, None] - rp[None, :]
    gauss = np.exp(-0.5 * diff ** 2 / sigma ** 2)  # (R, Q)
    x = r[:, None] * rp[None, :] / sigma ** 2
    g = np.empty((len(r), n_max, l_max + 1))
    dg = np.empty_like(g)
    for l in range(l_max + 1):
        val, der = _scaled_in(l, x)
        f = gauss * val
        df = gauss * (-diff / sigma ** 2 * val + rp[None, :] / sigma ** 2 * der)
        g[:, :, l] = f @ weighted.T
        dg[:, :, l] = df @ weighted.T
    return g, dg


class SOAP:
    """SOAP power spectrum for a fixed set of elements and hyperparameters.

    ``species``: atomic numbers (the density channels, and the centres accepted);
    ``cutoff`` r_c (Å); ``cutoff_width`` w of the cosine transition; ``atom_sigma`` (Å);
    ``n_max`` radial functions; ``l_max``; ``central_weight`` of the centre's own Gaussian
    (1 as in QUIP); ``basis_radius`` R of the GTO widths (the cutoff when None).
    ``compute_tables=False`` leaves the radial tables zero for the caller to fill (a model
    file stores them: loading does not redo the quadrature).
    """

    def __init__(self, species: Iterable[int], cutoff: float, n_max: int = 8, l_max: int = 8,
                 atom_sigma: float = 0.5, cutoff_width: float = 0.5, central_weight: float = 1.0,
                 basis_radius: float | None = None, compute_tables: bool = True):
        self.species = sorted({int(z) for z in species})
        self.cutoff = float(cutoff)
        self.n_max, self.l_max = int(n_max), int(l_max)
        self.atom_sigma = float(atom_sigma)
        self.cutoff_width = float(cutoff_width)
        self.central_weight = float(central_weight)
        self.basis_radius = float(basis_radius) if basis_radius is not None else self.cutoff
        if not (self.cutoff > 0 and 0 <= self.cutoff_width <= self.cutoff and self.atom_sigma > 0):
            raise ValueError("SOAP needs cutoff > 0, 0 <= cutoff_width <= cutoff and atom_sigma > 0")
        if not (1 <= self.n_max <= 20 and 0 <= self.l_max <= 20):
            raise ValueError("SOAP needs 1 <= n_max <= 20 and 0 <= l_max <= 20")
        n_int = int(math.ceil(self.cutoff / GRID_SPACING))
        self.inv_h = n_int / self.cutoff
        S, N, L = len(self.species), self.n_max, self.l_max
        self.dim = (S * (S - 1) // 2 * N * N + S * N * (N + 1) // 2) * (L + 1)
        self._tables: dict = {}
        # SoapFunction keeps its last inputs, p and coeffs here (a dict) while keep_last is set: a
        # GAP that computes its variance after the energy takes and clears them
        self.keep_last, self.last = False, None
        if not compute_tables:
            self.table = np.zeros((n_int, 4, N * (L + 1)))
            self.central = np.zeros(N)
            return
        r = np.linspace(0.0, self.cutoff, n_int + 1)
        g, dg = radial_integrals(r, self.n_max, self.l_max, self.atom_sigma, self.basis_radius)
        fc, dfc = cutoff_function(r, self.cutoff, self.cutoff_width)
        fc[-1], dfc[-1] = 0.0, 0.0
        h = (fc[:, None, None] * g).reshape(len(r), -1)
        dh = (dfc[:, None, None] * g + fc[:, None, None] * dg).reshape(len(r), -1)
        self.table = np.ascontiguousarray(hermite_coefficients(h, dh, 1.0 / self.inv_h))
        self.central = np.ascontiguousarray(self.central_weight * g[0, :, 0])

    def hypers(self) -> dict:
        return {"species": self.species, "cutoff": self.cutoff, "n_max": self.n_max, "l_max": self.l_max,
                "atom_sigma": self.atom_sigma, "cutoff_width": self.cutoff_width,
                "central_weight": self.central_weight, "basis_radius": self.basis_radius}

    def species_index(self, numbers: np.ndarray) -> np.ndarray:
        numbers = np.asarray(numbers)
        table = np.full(max(119, max(self.species) + 1), -1, dtype=np.int32)
        table[self.species] = np.arange(len(self.species), dtype=np.int32)
        idx = table[numbers]
        if (idx < 0).any():
            from ..errors import InputError
            bad = sorted(set(numbers[idx < 0].tolist()))
            raise InputError(f"SOAP for elements {self.species} got atomic numbers {bad}")
        return idx

    def _arrays(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        key = np.dtype(dtype).name
        if key not in self._tables:
            self._tables[key] = (self.table.astype(dtype), self.central.astype(dtype))
        return self._tables[key]

    def raw(self, n_atoms: int, first: np.ndarray, nbr: np.ndarray, centre: np.ndarray, vectors: np.ndarray,
            jacobian: bool = False):
        """Unnormalised power spectrum (N, D), coefficients and (with ``jacobian``) dp/dd (P, 3, D)
        from pair arrays sorted by centre; ``nbr``/``centre`` are species indices."""
        vectors = np.ascontiguousarray(vectors)
        table, central = self._arrays(vectors.dtype)
        return _core.soap_forward(int(n_atoms), first, nbr, centre, vectors, table, central, len(self.species),
                                  self.n_max, self.l_max, self.inv_h, self.cutoff, jacobian)

    def backward(self, grad_p: np.ndarray, coeffs: np.ndarray, first, nbr, centre, vectors) -> np.ndarray:
        table, central = self._arrays(vectors.dtype)
        return _core.soap_backward(np.ascontiguousarray(grad_p), coeffs, first, nbr, centre,
                                   np.ascontiguousarray(vectors), table, central, len(self.species), self.n_max,
                                   self.l_max, self.inv_h, self.cutoff)

    def backward_channels(self, grad_p: np.ndarray, coeffs: np.ndarray, first, nbr, centre, vectors) -> np.ndarray:
        """:meth:`backward` of R gradients at once: ``grad_p`` (N, D, R) -> (P, 3, R), float64;
        channel r equals ``backward(grad_p[:, :, r], ...)`` bit for bit, and costs a fraction of
        it (the pairs' geometry is shared)."""
        table, central = self._arrays(np.float64)
        return _core.soap_backward_channels(np.ascontiguousarray(grad_p, dtype=np.float64), coeffs, first, nbr,
                                            centre, np.ascontiguousarray(vectors, dtype=np.float64), table, central,
                                            len(self.species), self.n_max, self.l_max, self.inv_h, self.cutoff)

    def compute(self, atoms, gradients: bool = False):
        """Normalised power spectra (N, D) of an ``ase.Atoms``; with ``gradients``, also the
        pairs (i, j) and d(p_i / |p_i|)/d(r_j - r_i + shift) as (P, 3, D)."""
        from ..neighbors import neighbor_list

        pairs = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff)
        idx = self.species_index(atoms.numbers)
        p, _, jac = self.raw(len(atoms), pairs.i, idx[pairs.j], idx, pairs.vectors, jacobian=gradients)
        norm = np.linalg.norm(p, axis=1)
        ph = p / norm[:, None]
        if not gradients:
            return ph
        ni = norm[pairs.i][:, None, None]
        pi = ph[pairs.i][:, None, :]
        jac = (jac - pi * (jac * pi).sum(-1, keepdims=True)) / ni
        return ph, np.stack([pairs.i, pairs.j]), jac


class SoapFunction(torch.autograd.Function):
    """p = SOAP(vectors) with the compiled backward pass (first derivatives only)."""

    @staticmethod
    def forward(ctx, vectors, soap, n_atoms, first, nbr, centre):
        v = vectors.detach().cpu().numpy()
        p, coeffs, _ = soap.raw(n_atoms, first, nbr, centre, v)
        ctx.soap = soap
        ctx.arrays = (coeffs, first, nbr, centre, v)
        if soap.keep_last:  # the GAP variance of this same call takes it instead of a second pass
            soap.last = {"inputs": (first, nbr, centre, v), "p": p, "coeffs": coeffs}
        return torch.from_numpy(p).to(vectors.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_p):
        coeffs, first, nbr, centre, v = ctx.arrays
        g = ctx.soap.backward(grad_p.detach().cpu().numpy().astype(v.dtype, copy=False), coeffs, first, nbr, centre, v)
        return torch.from_numpy(g).to(grad_p.device), None, None, None, None, None
