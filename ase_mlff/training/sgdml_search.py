"""The sigma search of sGDML training (step 4 of :func:`~ase_mlff.training.sgdml_train.train_sgdml`).

For each kernel length scale sigma of the grid, the force-only kernel system on the M training
geometries (3NM unknowns; :mod:`ase_mlff.training.gp`) is solved, by a dense Cholesky
factorisation when ~1.1 (3NM)^2 doubles fit in ``MEMORY_SAFETY`` of the available memory, else
by conjugate gradients with a Nyström preconditioner (warm-started from the previous sigma's
solution). Each solution becomes a model whose integration constant is fitted on the training
energies; its force RMSE on the validation frames scores it, and the best is kept. The search
holds what a checkpoint needs to resume in the middle of it (completed sigmas, the best
solution so far, the iterate of a CG solve), so a resumed run gives the same model.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from .._warn import warn
from ..errors import TrainingError
from ..models.sgdml import SGDMLModel
from ..rng import random_stream
from .gp import KernelData, KernelOperator, NystromPreconditioner, assemble_kernel, solve_cholesky, solve_pcg

#: fraction of the available memory the dense Cholesky path may use (one kernel, factorised in place)
MEMORY_SAFETY = 0.75


def _available_memory() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class SigmaSearch:
    """Step 4 of :func:`~ase_mlff.training.sgdml_train.train_sgdml`: the kernel system on the training frames solved for each
    sigma of the grid (Cholesky or preconditioned CG), each solution scored by its validation
    force RMSE; the best is kept. It also holds what a checkpoint needs to resume in the middle
    of the search (completed sigmas, the best solution so far, a CG solve's iterate)."""

    def __init__(self, d, train_idx, valid_idx, perms, lam: float, state: dict, saved: dict):
        R, E, F = d["R"], d["E"], d["F"]
        self.z, self.unit, self.lam, self.perms = d["z"], d["unit"], lam, perms
        self.train_idx, self.valid_idx = train_idx, valid_idx
        self.Rt, self.Ft, self.Et = R[train_idx], F[train_idx], E[train_idx]
        self.Rv, self.Ev, self.Fv = R[valid_idx], E[valid_idx], F[valid_idx]
        self.M, self.N = len(train_idx), R.shape[1]
        self.n = 3 * self.N * self.M  # unknowns
        self.kd = KernelData(self.Rt, perms)
        self.state, self.saved = state, saved
        self.solver: str | None = None
        self.inducing: np.ndarray | None = None
        self.results: list[dict[str, Any]] = list(state.get("results", []))
        self.cg_info: dict[str, Any] = dict(state.get("cg_info", {}))
        self.best = None  # (score, alpha, k)
        if "best_alpha" in saved:
            self.best = (float(state["best_score"]), torch.from_numpy(saved["best_alpha"]), int(state["best_k"]))
        self.x_prev = torch.from_numpy(saved["x_prev"]) if "x_prev" in saved else None
        self.cg_resume = None
        if "cg_x" in saved:
            self.cg_resume = {"x": torch.from_numpy(saved["cg_x"]), "r": torch.from_numpy(saved["cg_r"]),
                              "p": torch.from_numpy(saved["cg_p"]), "rz": state["cg_rz"], "it": state["cg_it"],
                              "history": state.get("cg_history", [])}

    def choose_solver(self, solver: str, memory_limit, n_inducing, seed, say, opt) -> None:
        """Cholesky or CG (the resolved choice is part of the state: memory may differ on resume),
        and CG's inducing geometries."""
        M, N, n = self.M, self.N, self.n
        avail = float(memory_limit) if memory_limit else _available_memory()
        need = 1.1 * n * n * 8
        if "solver" in self.state:
            solver = self.state["solver"]
        elif solver == "auto":
            solver = "cholesky" if need <= MEMORY_SAFETY * avail else "cg"
        if solver == "cholesky" and need > avail:
            raise TrainingError(
                f"the dense kernel for {M} geometries of {N} atoms needs ~{need / 2**30:.1f} GiB, "
                f"only {avail / 2**30:.1f} GiB available; use {opt('solver')} cg"
            )
        say(f"solver: {solver} ({n} unknowns)")
        self.solver = solver
        if solver == "cg":
            if "inducing" in self.saved:
                self.inducing = self.saved["inducing"].astype(np.int64)
            else:
                if n_inducing is None:
                    budget = 0.25 * avail
                    n_inducing = int(max(1, min(M, 200, budget // (2.5 * n * 3 * N * 8))))
                self.inducing = np.sort(random_stream(seed, "inducing").choice(M, min(n_inducing, M), replace=False))

    def model_from(self, alpha: torch.Tensor, sigma: float):
        """The model of the solution ``alpha`` and its integrated (constant-free) training energies;
        the integration constant is fitted on the training energies."""
        v = torch.bmm(self.kd.J, alpha.reshape(self.M, -1, 1)).squeeze(-1).numpy()
        model = SGDMLModel.from_training(self.z, self.perms, self.kd.D.numpy(), v, float(sigma), self.lam, 0.0)
        E0, _ = model.predict_numpy(self.Rt)
        model.c = float(np.mean(self.Et - E0))
        return model, E0

    def snapshot(self, cg: dict | None = None):
        """The checkpoint's ``(state, arrays)`` now (``cg``: the CG solve in progress)."""
        st = {"solver": self.solver, "results": self.results, "cg_info": self.cg_info}
        arr = {"train_idx": self.train_idx, "valid_idx": self.valid_idx, "perms": self.perms}
        if self.inducing is not None:
            arr["inducing"] = self.inducing
        if self.best is not None:
            st.update(best_score=self.best[0], best_k=self.best[2])
            arr["best_alpha"] = self.best[1].numpy()
        if self.x_prev is not None:
            arr["x_prev"] = self.x_prev.numpy()
        if cg is not None:
            st.update(cg_rz=cg["rz"], cg_it=cg["it"], cg_history=cg["history"])
            arr.update(cg_x=cg["x"].numpy(), cg_r=cg["r"].numpy(), cg_p=cg["p"].numpy())
        return st, arr

    def run(self, sigmas, ckpt, cg_tol: float, cg_maxiter: int, say) -> None:
        """Solve and score every sigma not done yet; a sigma whose solve fails is recorded and
        skipped (a warning); a checkpoint is written after each."""
        n = self.n
        y = torch.from_numpy(self.Ft.reshape(-1).copy())
        ystd = float(y.std())
        ys = y / ystd
        K_buf = torch.empty((n, n), dtype=torch.float64) if self.solver == "cholesky" else None
        for k, sigma in enumerate(sigmas):
            if k < len(self.results):
                continue  # completed before the interruption
            ts = time.perf_counter()
            say(f"sigma {sigma} ({k + 1}/{len(sigmas)}): building kernel")
            try:
                if self.solver == "cholesky":
                    assemble_kernel(self.kd, float(sigma), out=K_buf)
                    say(f"sigma {sigma}: Cholesky factorisation of {n}x{n}")
                    alpha = solve_cholesky(K_buf, ys, self.lam) * ystd
                else:
                    alpha = self._solve_cg(sigma, ys, ckpt, cg_tol, cg_maxiter, say) * ystd
            except TrainingError as exc:
                warn(f"sigma {sigma}: {exc}")
                self.results.append({"sigma": float(sigma), "failed": str(exc)})
                ckpt.safe_point(self.snapshot, force=True)
                continue
            self._score(k, sigma, alpha, ts, say)
            ckpt.safe_point(self.snapshot, force=True)

    def _solve_cg(self, sigma, ys, ckpt, cg_tol, cg_maxiter, say) -> torch.Tensor:
        """Preconditioned CG from the previous sigma's solution (or the checkpoint's iterate)."""
        op = KernelOperator(self.kd, float(sigma), self.lam)
        mu = self.lam  # shift of the preconditioner: lam itself worked best (fewest iterations)
        say(f"sigma {sigma}: Nyström preconditioner from {len(self.inducing)} geometries")
        pre = NystromPreconditioner(self.kd, float(sigma), self.inducing, mu)
        xs, cg_info = solve_pcg(
            op, ys, pre, tol=cg_tol, maxiter=cg_maxiter, x0=self.x_prev, state=self.cg_resume,
            progress=lambda m: say(f"sigma {sigma}: {m}"),
            on_iteration=lambda it, get: ckpt.safe_point(lambda: self.snapshot(get())))
        self.cg_resume = None
        del pre
        self.x_prev = xs
        self.cg_info[str(sigma)] = {k2: v for k2, v in cg_info.items() if k2 != "history"}
        return xs

    def _score(self, k: int, sigma, alpha: torch.Tensor, ts: float, say) -> None:
        """Record sigma ``k``'s validation errors; keep its solution if it is the best so far."""
        from .sgdml_train import error_table

        model, _ = self.model_from(alpha, sigma)
        entry = {"sigma": float(sigma), "time_s": time.perf_counter() - ts}
        if len(self.valid_idx):
            Epv, Fpv = model.predict_numpy(self.Rv)
            entry["valid"] = error_table(Epv, self.Ev, Fpv, self.Fv, self.unit, self.z)
            say(f"sigma {sigma}: validation force RMSE {entry['valid']['forces_rmse_meV_per_A']:.2f} meV/Å, "
                f"MAE {entry['valid']['forces_mae_meV_per_A']:.2f} meV/Å ({entry['time_s']:.0f} s)")
            score = entry["valid"]["forces_rmse"]
        else:
            score = 0.0
        self.results.append(entry)
        if self.best is None or score < self.best[0]:
            self.best = (score, alpha, k)

    def best_model(self, sigmas) -> tuple[SGDMLModel, np.ndarray, int]:
        """``(model, integrated training energies, index of its sigma)`` of the best solution."""
        if self.best is None:
            raise TrainingError("training failed for every sigma: " + "; ".join(r.get("failed", "")
                                                                                 for r in self.results))
        _, alpha_best, kbest = self.best
        model, E0 = self.model_from(alpha_best, sigmas[kbest])
        return model, E0, kbest
