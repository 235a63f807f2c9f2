"""Uniform clamped cubic B-splines: the tabulated form of mapped n-body force fields.

A spline on ``[0, L]`` with ``n`` intervals of width ``h = L / n`` uses the clamped knot
vector ``[0, 0, 0, 0, h, 2h, ..., (n-1)h, L, L, L, L]`` (``n + 7`` knots) and ``n + 3``
coefficients. This is exactly the representation LAMMPS ``pair_style uf3`` reads (knots
listed explicitly, interval found as ``3 + floor((r - t_0) / h)``), so a model exported to
LAMMPS evaluates the very same piecewise polynomials.

For evaluation the basis is stored per interval as polynomials in the local coordinate
``u = r / h - m`` of interval ``m``: ``table[m, b, p]`` is the coefficient of ``u**p`` of
basis function ``m + b`` (``b = 0..3``). The C++ kernel, the torch oracle and the GP mapping
all use these tables, so they evaluate the same function bit for bit up to rounding.

A 3-D spline is the tensor product of three 1-D bases; its coefficients are fitted to
samples on a tensor grid by separable least squares (the exact least-squares solution for
a tensor-product design, computed one axis at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class UniformGrid:
    """Clamped uniform cubic B-spline basis on ``[0, length]`` with ``n`` intervals."""

    length: float
    n: int

    def __post_init__(self):
        if not self.length > 0:
            raise ValueError(f"spline length must be positive, got {self.length}")
        if int(self.n) < 1:
            raise ValueError(f"a spline needs at least one interval, got {self.n}")

    @property
    def h(self) -> float:
        return self.length / self.n

    @property
    def n_coef(self) -> int:
        return self.n + 3

    def knots(self) -> np.ndarray:
        inner = np.arange(self.n + 1) * self.h
        inner[-1] = self.length
        return np.concatenate([[0.0] * 3, inner, [self.length] * 3])

    def support_end(self, q: int) -> float:
        """Right end of the support of basis function ``q``."""
        return float(self.knots()[q + 4])

    # ---------------------------------------------------------------- basis evaluation
    def design(self, x: np.ndarray, deriv: int = 0) -> np.ndarray:
        """(len(x), n_coef) matrix of basis values (or derivatives) at ``x`` (0 outside [0, L))."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        tab = self.table()
        m = np.floor(x / self.h).astype(np.int64)
        inside = (x >= 0) & (m < self.n)
        # the right end belongs to the last interval (value of the closed spline)
        at_end = np.isclose(x, self.length, rtol=0, atol=1e-12 * self.length)
        m = np.where(at_end, self.n - 1, m)
        inside |= at_end
        m = np.clip(m, 0, self.n - 1)
        u = x / self.h - m
        powers = np.stack([u**0, u, u**2, u**3], axis=1)
        if deriv == 1:
            powers = np.stack([np.zeros_like(u), np.ones_like(u), 2 * u, 3 * u**2], axis=1) / self.h
        elif deriv == 2:
            powers = np.stack([np.zeros_like(u), np.zeros_like(u), 2 * np.ones_like(u), 6 * u], axis=1) / self.h**2
        vals = np.einsum("xbp,xp->xb", tab[m], powers)
        out = np.zeros((len(x), self.n_coef))
        rows = np.arange(len(x))[:, None]
        out[rows, m[:, None] + np.arange(4)] = vals
        out[~inside] = 0.0
        return out

    def table(self) -> np.ndarray:
        """(n, 4, 4) polynomial coefficients of the 4 basis functions alive in each interval."""
        cached = _TABLE_CACHE.get((self.length, self.n))
        if cached is not None:
            return cached
        t = self.knots()
        nodes = np.array([0.125, 0.375, 0.625, 0.875])
        vander = np.vander(nodes, 4, increasing=True)
        tab = np.zeros((self.n, 4, 4))
        for m in range(self.n):
            xs = (m + nodes) * self.h
            vals = _cox_de_boor(t, xs, m + 3)  # (4 nodes, 4 basis m..m+3)
            tab[m] = np.linalg.solve(vander, vals).T
        _TABLE_CACHE[(self.length, self.n)] = tab
        return tab

    def to_dict(self) -> dict:
        return {"length": float(self.length), "n": int(self.n)}


_TABLE_CACHE: dict = {}


def _cox_de_boor(t: np.ndarray, xs: np.ndarray, span: int) -> np.ndarray:
    """Values of the 4 cubic B-splines ``span-3..span`` at points inside ``[t[span], t[span+1])``."""
    out = np.zeros((len(xs), 4))
    for a, x in enumerate(xs):
        b = np.zeros(4)
        b[0] = 1.0
        left = np.zeros(4)
        right = np.zeros(4)
        for j in range(1, 4):
            left[j] = x - t[span + 1 - j]
            right[j] = t[span + j] - x
            saved = 0.0
            for r in range(j):
                temp = b[r] / (right[r + 1] + left[j - r])
                b[r] = saved + right[r + 1] * temp
                saved = left[j - r] * temp
            b[j] = saved
        out[a] = b
    return out


# -------------------------------------------------------------------- fitting
def fit_1d(grid: UniformGrid, x: np.ndarray, y: np.ndarray, trailing_zeros: int = 3) -> np.ndarray:
    """Least-squares coefficients of a 1-D spline through samples ``(x, y)``.

    The last ``trailing_zeros`` coefficients are fixed to zero, so the spline and its first
    ``trailing_zeros - 1`` derivatives vanish at the right end (the cutoff).
    """
    a = grid.design(x)
    free = grid.n_coef - trailing_zeros
    coef = np.zeros(grid.n_coef)
    coef[:free] = np.linalg.lstsq(a[:, :free], np.asarray(y, dtype=np.float64), rcond=None)[0]
    return coef


def fit_tensor(grids, samples, values: np.ndarray, free_counts) -> np.ndarray:
    """Separable least-squares fit of a tensor-product spline to values on a sample grid.

    ``grids``: one :class:`UniformGrid` per axis; ``samples``: the sample coordinates per
    axis; ``values``: array of shape ``(len(s0), len(s1), ...)``; ``free_counts``: number of
    leading coefficients fitted per axis (the others are zero).
    """
    coef = np.asarray(values, dtype=np.float64)
    for axis, (grid, s, nfree) in enumerate(zip(grids, samples, free_counts)):
        a = grid.design(s)[:, :nfree]
        pinv = np.linalg.pinv(a)  # (nfree, len(s))
        coef = np.moveaxis(np.tensordot(pinv, np.moveaxis(coef, axis, 0), axes=(1, 0)), 0, axis)
    out = np.zeros(tuple(g.n_coef for g in grids))
    out[tuple(slice(0, n) for n in free_counts)] = coef
    return out


def sample_points(grid: UniformGrid, per_interval: int = 1, upto: float | None = None) -> np.ndarray:
    """Knots (and ``per_interval - 1`` points between them) from 0 to ``upto`` (default L)."""
    upto = grid.length if upto is None else upto
    n = int(round(upto / grid.h))
    return np.linspace(0.0, n * grid.h, n * per_interval + 1)


# -------------------------------------------------------------------- torch evaluation
def torch_basis(table: torch.Tensor, h: float, n: int, x: torch.Tensor):
    """Interval index (clamped), basis values (..., 4) and an 'inside' mask, differentiable in x."""
    m = torch.floor(x.detach() / h).to(torch.long)
    inside = (x.detach() >= 0) & (m < n)
    m = m.clamp(0, n - 1)
    u = x / h - m.to(x.dtype)
    tab = table[m]  # (..., 4, 4)
    powers = torch.stack([torch.ones_like(u), u, u * u, u * u * u], dim=-1)
    vals = (tab * powers.unsqueeze(-2)).sum(-1)
    return m, vals, inside


def hermite_coefficients(values, derivs, h: float):
    """Cubic Hermite pieces on a uniform grid of spacing ``h``, in the power form the compiled
    kernels evaluate (``_ext/cfconv.cpp``, ``_ext/soap.cpp``): node values and derivatives
    (G+1, F) -> coefficients (G, 4, F) with ``f = c0 + t (c1 + t (c2 + t c3))`` on each
    interval, ``t`` in [0, 1]. Values and derivatives are exact at the nodes. numpy or torch."""
    y0, y1 = values[:-1], values[1:]
    d0, d1 = derivs[:-1] * h, derivs[1:] * h
    parts = [y0, d0, 3.0 * (y1 - y0) - 2.0 * d0 - d1, 2.0 * (y0 - y1) + d0 + d1]
    return torch.stack(parts, dim=1) if isinstance(values, torch.Tensor) else np.stack(parts, axis=1)

