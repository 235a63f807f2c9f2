"""Symmetric gradient-domain (sGDML) force kernel: assembly, matrix-free products and solvers.

Notation: ``M`` training geometries of ``N`` atoms, ``P = N(N-1)/2`` descriptor entries,
``S`` permutations, ``n = 3NM`` unknowns. The force kernel block between geometries ``i``
and ``j`` is::

    K_ij = sum_q J_i^T H(D_i - Pi_q D_j) Pi_q J_j,   H(delta) = g(d) I - h(d) delta delta^T

(see :mod:`ase_mlff.models.sgdml` for ``g`` and ``h``). Everything is float64 torch.

* :func:`assemble_kernel` builds the lower block triangle of the dense ``(n, n)`` matrix
  in row blocks (``K`` only; the solver reads the lower triangle).
* :class:`KernelOperator` applies ``K`` without forming it: ``(K p)_i = J_i^T w_i`` with
  ``w_i = sum_{j,q} H(delta_ijq) Pi_q J_j p_j``, evaluated with dense (M, S M) products —
  memory O(M^2 S), never O(n^2).
* :func:`solve_cholesky` factorises ``K + lam I`` with ``torch.linalg.cholesky`` (MKL, not the
  threaded OpenBLAS Cholesky that mis-reports large kernels); a failed factorisation raises
  :class:`~ase_mlff.errors.TrainingError`.
* :func:`solve_pcg` runs conjugate gradients on ``K + lam I`` with a Nyström preconditioner
  built from the columns of a subset of training geometries (Woodbury identity).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..descriptors.inverse_distance import descriptor_permutation, inverse_distances, jacobian
from ..errors import TrainingError


def _consts(sigma: float):
    a = math.sqrt(5.0) / sigma
    return a, 5.0 / (3.0 * sigma ** 2), 25.0 / (3.0 * sigma ** 4)


class KernelData:
    """Descriptors, Jacobians and permuted copies of a training set."""

    def __init__(self, R: np.ndarray, perms: np.ndarray):
        R = np.asarray(R, dtype=np.float64)
        self.M, self.N = R.shape[:2]
        self.P = self.N * (self.N - 1) // 2
        self.perms = np.asarray(perms, dtype=np.int64)
        self.S = len(self.perms)
        self.dperm = np.stack([descriptor_permutation(p) for p in self.perms])  # (S, P)
        self.D = torch.from_numpy(inverse_distances(R))  # (M, P)
        self.J = torch.from_numpy(jacobian(R))  # (M, P, 3N)
        idx = torch.from_numpy(self.dperm)
        # permuted descriptor copies, (M, S, P) and flattened (M*S, P) with j-major order
        self.Y = self.D[:, idx].contiguous()
        self.Yf = self.Y.reshape(self.M * self.S, self.P)
        self.idx = idx
        self.yy = (self.Yf * self.Yf).sum(1)
        # (Pi_q J_j)^T Pi_q D_j, (M, S, 3N)
        self.PtY = torch.einsum("jqpc,jqp->jqc", self.J[:, idx], self.Y)

    def permuted_jacobians(self, cols: slice | None = None) -> torch.Tensor:
        J = self.J if cols is None else self.J[cols]
        return J[:, self.idx]  # (m, S, P, 3N)


def assemble_rows(kd: KernelData, rows: np.ndarray | slice, sigma: float, col_end: int | None = None,
                  PJ: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel rows for geometries ``rows`` against geometries ``0..col_end``: (b*3N, col_end*3N)."""
    a, c1, c2 = _consts(sigma)
    M = kd.M if col_end is None else int(col_end)
    N3 = 3 * kd.N
    DI = kd.D[rows]
    JI = kd.J[rows]  # (b, P, 3N)
    b = DI.shape[0]
    Y = kd.Y[:M]  # (M, S, P)
    if PJ is None:
        PJ = kd.permuted_jacobians(slice(0, M))
    PJ = PJ[:M]
    S, P = kd.S, kd.P
    Yf = kd.Yf[: M * S]  # (M*S, P)
    # distances by the expansion |D_i|^2 + |Y|^2 - 2 D_i.Y (one GEMM)
    d2 = (DI * DI).sum(1)[:, None] + kd.yy[None, : M * S] - 2.0 * (DI @ Yf.T)
    d = torch.sqrt(torch.clamp(d2, min=0.0)).reshape(b, M, S)
    ex = torch.exp(-a * d)
    g = c1 * (1.0 + a * d) * ex
    h = c2 * ex
    # term 1: J_i^T (sum_q g_ijq Pi_q J_j)
    G = torch.bmm(g.permute(1, 0, 2), PJ.reshape(M, S, -1))  # (M, b, P*3N)
    G = G.reshape(M, b, P, N3).permute(1, 2, 0, 3).reshape(b, P, M * N3)
    T = torch.bmm(JI.transpose(1, 2), G).reshape(b, N3, M, N3)  # (b, 3N, M, 3N)
    del G
    # term 2: sum_q h (J_i^T delta)(delta^T Pi_q J_j), delta = D_i - Y_jq, by GEMMs
    JtD = torch.bmm(JI.transpose(1, 2), DI.unsqueeze(-1)).squeeze(-1)  # (b, 3N)
    JtY = (Yf @ JI.permute(1, 0, 2).reshape(P, b * N3)).reshape(M, S, b, N3).permute(2, 0, 1, 3)
    u = JtD[:, None, None, :] - JtY  # (b, M, S, 3N)
    PJf = PJ.reshape(M * S, P, N3)
    PtD = (PJf.transpose(1, 2).reshape(M * S * N3, P) @ DI.T).reshape(M, S, N3, b).permute(3, 0, 1, 2)
    t = PtD - kd.PtY[None, :M]  # (b, M, S, 3N)
    hu = (h.unsqueeze(-1) * u).reshape(b * M, S, N3)
    T -= torch.bmm(hu.transpose(1, 2), t.reshape(b * M, S, N3)).reshape(b, M, N3, N3).permute(0, 2, 1, 3)
    return T.reshape(b * N3, M * N3)


def _block_size(kd: KernelData, budget_bytes: float = 1.5e9) -> int:
    per_row = kd.M * (kd.S * kd.P * 8 * 3 + kd.P * 3 * kd.N * 8 * 2 + (3 * kd.N) ** 2 * 8 * 2 + kd.S * 3 * kd.N * 16)
    return int(max(1, min(kd.M, budget_bytes // max(per_row, 1))))


def assemble_kernel(kd: KernelData, sigma: float, out: torch.Tensor | None = None, progress=None,
                    lower_only: bool = True) -> torch.Tensor:
    """Dense force kernel (3NM, 3NM); with ``lower_only`` only blocks j <= i are filled."""
    n = 3 * kd.N * kd.M
    N3 = 3 * kd.N
    if out is None:
        out = torch.empty((n, n), dtype=torch.float64)
    PJ = kd.permuted_jacobians()
    bs = _block_size(kd)
    for s in range(0, kd.M, bs):
        e = min(kd.M, s + bs)
        col_end = e if lower_only else kd.M
        out[s * N3:e * N3, :col_end * N3] = assemble_rows(kd, slice(s, e), sigma, col_end, PJ)
        if progress is not None:
            progress(f"kernel rows {e}/{kd.M}")
    return out


class KernelOperator:
    """Matrix-free ``p -> (K + lam I) p`` for the symmetric force kernel."""

    def __init__(self, kd: KernelData, sigma: float, lam: float, row_block: int | None = None):
        self.kd = kd
        self.lam = float(lam)
        a, c1, c2 = _consts(sigma)
        M, S = kd.M, kd.S
        self.row_block = row_block or max(1, int(2e8 // (M * S * kd.P * 8)))
        g = torch.empty(M, M * S, dtype=torch.float64)
        h = torch.empty(M, M * S, dtype=torch.float64)
        for s in range(0, M, self.row_block):
            e = min(M, s + self.row_block)
            delta = kd.D[s:e, None, :] - kd.Yf[None]
            d = torch.linalg.vector_norm(delta, dim=-1)
            ex = torch.exp(-a * d)
            g[s:e] = c1 * (1.0 + a * d) * ex
            h[s:e] = c2 * ex
        self.g, self.h = g, h
        self.hsum = None
        self.shape = (3 * kd.N * M, 3 * kd.N * M)

    def matvec(self, p: torch.Tensor) -> torch.Tensor:
        kd = self.kd
        M, S, P = kd.M, kd.S, kd.P
        u = torch.bmm(kd.J, p.reshape(M, -1, 1)).squeeze(-1)  # (M, P) = J_j p_j
        Vf = u[:, kd.idx].reshape(M * S, P)  # permuted copies, same order as Yf
        yv = (kd.Yf * Vf).sum(1)
        dv = kd.D @ Vf.T - yv[None]  # delta_ijq . Pi_q v_j
        cm = self.h * dv
        w = self.g @ Vf + cm @ kd.Yf - cm.sum(1, keepdim=True) * kd.D  # (M, P)
        out = torch.bmm(kd.J.transpose(1, 2), w.unsqueeze(-1)).reshape(-1)
        return out + self.lam * p


def solve_cholesky(K: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Solve (K + lam I) x = y using the lower triangle of K (K is overwritten)."""
    K.diagonal().add_(lam)
    info = torch.zeros((), dtype=torch.int32)
    # K.T is the column-major view of the same memory; its upper triangle is K's lower one.
    # Factorising that view (upper=True) is truly in place: no second n^2 buffer.
    Kt = K.T
    U, info = torch.linalg.cholesky_ex(Kt, upper=True, out=(Kt, info))
    if int(info) != 0 or not bool(torch.isfinite(U.diagonal()).all()):
        raise TrainingError(
            f"Cholesky factorisation of the {K.shape[0]}x{K.shape[0]} kernel matrix failed "
            f"(leading minor {int(info)} not positive definite); increase lam (now {lam:g}) or "
            f"choose a different sigma"
        )
    # two triangular solves (cholesky_solve would copy the factor)
    x = torch.linalg.solve_triangular(U.T, y.reshape(-1, 1), upper=False)
    x = torch.linalg.solve_triangular(U, x, upper=True).reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise TrainingError("the Cholesky solve produced non-finite coefficients")
    return x


class NystromPreconditioner:
    """``P = U U^T + mu I`` from the kernel columns of ``m`` inducing geometries; ``P^-1`` by Woodbury."""

    def __init__(self, kd: KernelData, sigma: float, inducing: np.ndarray, mu: float):
        N3 = 3 * kd.N
        inducing = np.asarray(inducing, dtype=np.int64)
        C = assemble_rows(kd, torch.from_numpy(inducing), sigma, None).T.contiguous()  # (n, k)
        k_rows = (inducing[:, None] * N3 + np.arange(N3)[None]).reshape(-1)
        W = C[torch.from_numpy(k_rows)]
        W = 0.5 * (W + W.T)
        jitter = 1e-10 * float(W.diagonal().mean())
        Lw, info = torch.linalg.cholesky_ex(W + jitter * torch.eye(W.shape[0], dtype=W.dtype))
        if int(info) != 0:
            raise TrainingError("the Nyström preconditioner's inducing-point kernel is not positive definite")
        U = torch.linalg.solve_triangular(Lw, C.T, upper=False).T  # (n, k): U U^T = C W^-1 C^T
        del C
        self.U = U
        self.mu = float(mu)
        inner = U.T @ U
        inner.diagonal().add_(self.mu)
        self.Li = torch.linalg.cholesky(inner)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        t = self.U.T @ r
        t = torch.cholesky_solve(t.reshape(-1, 1), self.Li).reshape(-1)
        return (r - self.U @ t) / self.mu


def solve_pcg(op: KernelOperator, y: torch.Tensor, precond=None, tol: float = 1e-6, maxiter: int = 3000,
              x0: torch.Tensor | None = None, progress=None, state: dict | None = None,
              on_iteration=None) -> tuple[torch.Tensor, dict]:
    """Preconditioned conjugate gradients on (K + lam I) x = y; stops at ``|r| <= tol |y|``.

    Resumable: ``on_iteration(it, get_state)`` is called after every iteration (it may write a
    checkpoint from ``get_state()`` and raise to stop); ``state``, such a dict, continues that
    run. The state is the complete recurrence (``x``, ``r``, ``p``, ``rz``, iteration count),
    so a resumed solve performs exactly the same arithmetic as an uninterrupted one.
    """
    t0 = time.perf_counter()
    ynorm = float(torch.linalg.vector_norm(y))
    if state is not None:
        x, r, p = state["x"].clone(), state["r"].clone(), state["p"].clone()
        rz = torch.as_tensor(state["rz"], dtype=y.dtype)
        it = int(state["it"])
        history = [tuple(h) for h in state.get("history", [])]
    else:
        x = torch.zeros_like(y) if x0 is None else x0.clone()
        r = y - op.matvec(x) if x0 is not None else y.clone()
        z = precond.apply(r) if precond is not None else r
        p = z.clone()
        rz = torch.dot(r, z)
        it = 0
        history = []
    rel = float(torch.linalg.vector_norm(r)) / ynorm
    while rel > tol and it < maxiter:
        Ap = op.matvec(p)
        pAp = torch.dot(p, Ap)
        if not float(pAp) > 0:
            raise TrainingError(f"conjugate gradients broke down at iteration {it} (p^T K p = {float(pAp):.3g})")
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        it += 1
        rel = float(torch.linalg.vector_norm(r)) / ynorm
        if it % 25 == 0:
            history.append((it, rel))
            if progress is not None:
                progress(f"CG iteration {it}: relative residual {rel:.2e} (target {tol:.0e})")
        z = precond.apply(r) if precond is not None else r
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
        if on_iteration is not None and rel > tol and it < maxiter:
            on_iteration(it, lambda: {"x": x, "r": r, "p": p, "rz": float(rz), "it": it,
                                      "history": [list(h) for h in history]})
    info = {"iterations": it, "relative_residual": rel, "time_s": time.perf_counter() - t0,
            "history": history}
    if rel > tol or not bool(torch.isfinite(x).all()):
        raise TrainingError(
            f"conjugate gradients did not converge: relative residual {rel:.3g} after {it} iterations "
            f"(tolerance {tol:g}); increase lam, the number of inducing geometries or maxiter"
        )
    return x, info
