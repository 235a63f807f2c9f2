"""The regularised least-squares solve shared by the sparse-GP families (GAP, sparse MFF).

A sparse (projected-process) GP whose predictions are linear in its parameters ``x``
(coefficients of the sparse points, per-element ``e0``) is fitted to total energies, forces
and virials by minimising (Csányi, Willatt & Ceriotti 2020, "Machine-Learning of Atomic-Scale
Properties Based on Physical Principles", Eqs. 6.5-6.7, 6.22-6.23; docs/references.md)::

    |Lambda^-1/2 (Phi x - y)|^2 + x^T P x

``Phi`` the design matrix (one row per label, from the family's ``design(frame)``), ``Lambda``
the expected errors and ``P`` the block-diagonal prior precision. It is solved by a QR
decomposition of the stacked matrix ``[Lambda^-1/2 Phi, Lambda^-1/2 y ; chol(P)^T, 0]``
(mode "r": the last column of ``R`` is ``Q^T y``, so ``Q`` is never formed): no normal
equations (which square the condition number) and no threaded OpenBLAS Cholesky (OpenBLAS 0.3.31's
multi-threaded Cholesky reports large positive-definite matrices as indefinite).

Expected errors: ``sigma_energy`` and ``sigma_virial`` are per atom and scaled by ``sqrt(N)``
for a frame of N atoms (gap_fit's ``sigma_per_atom=T``), ``sigma_force`` per component;
per-config_type overrides replace all three for frames of that config_type.

Fixed parameters: a trailing block of ``x`` with known values (the per-element ``e0`` given
with ``--reference-energies``) is left out of the solve: its columns' contribution is taken off
the labels and only the other parameters are fitted. ``R`` then gets :data:`FIXED_PRECISION` on
the diagonal of that block (the limit of a prior of zero width), so a known ``e0`` adds nothing
to the predictive variance.

Cross-validation (``cross_validate=True``, GAP's calibration): the errors and predictive
variances of every frame's labels under the fit *without that frame* (leave one frame out),
exactly and without refitting. With ``Phi_f``, ``y_f`` the frame's weighted rows and labels,
``e_f = y_f - Phi_f x`` its weighted residuals and ``H_f = Phi_f R^-1 R^-T Phi_f^T`` its block
of the hat matrix, removing the frame from the normal equations (``R^T R - Phi_f^T Phi_f``,
Sherman-Morrison-Woodbury) gives the held-out residuals ``(1 - H_f)^-1 e_f`` and the
posterior covariance of the held-out predictions ``H_f (1 - H_f)^-1``, whose diagonal is that
of ``(1 - H_f)^-1`` minus one; ``1 - H_f`` is positive definite because the prior is. The sparse
points stay those chosen with the frame (the usual approximation of cross-validating a sparse
GP). Cost: a triangular solve per frame for all its rows (rows x T^2 in all): 5 s for the
mlearn Si fit, whose QR takes 1.4 s and whose design rows 33 s.

Incremental updates (the learning loop's GAP refits): with ``keep`` :func:`solve` also hands
back the factor ``[R, Q^T y]`` ((T + 1, T + 1); its last diagonal element is the norm of the
weighted residual) and the weighted data rows. New labels' rows (:func:`weighted_rows`, the rows
:func:`solve` builds, bit for bit) are then added by a QR of ``[R, Q^T y ; new rows]``
(:func:`update_factor`, (T + r) T^2) and :func:`factor_solution` gives ``x`` and ``R``: the
fit from scratch on all rows with the same prior, to rounding, since each frame's rows carry its
own weights and the fixed parameters' part of its own labels.

Checkpoints: the design matrix is built frame by frame, and :func:`solve` hands the rows built
so far to a trainer's safe point after every frame (``on_rows``) and continues from stored rows
(``rows``), so GAP and the sparse MFF fit resume an interrupted design to the same matrix, and
so to the same solution, bit for bit. The QR itself cannot be stopped half-way.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DatasetError, TrainingError
from .common import Option, UsageError

#: order of the six virial components in the design matrix (ASE Voigt: xx yy zz yz xz xy)
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
#: diagonal of ``R`` on fixed parameters: the precision of a prior 1e-100 wide, i.e. a value known
#: exactly (a fixed e0 then adds at most (N / 1e100)^2 to a variance, nothing in float64 terms,
#: and ``R`` stays finite, triangular and non-singular as model files require)
FIXED_PRECISION = 1e100


def solve_options(sigma_force: float, sigma_virial: float, scope: str = "") -> tuple[Option, ...]:
    """The training options of :func:`solve` (expected errors, per-config_type sigmas, e0 prior,
    jitter) for a recipe's OPTIONS; the recipes differ only in their default force and virial
    errors and in ``scope``, a prefix of the help texts (e.g. ``"sparse fit: "``)."""
    return (
        Option("sigma_energy", 0.002, f"{scope}expected energy error per atom (eV/atom; times sqrt(N) per frame)",
               float),
        Option("sigma_force", sigma_force, f"{scope}expected force error per component (eV/Å)", float),
        Option("sigma_virial", sigma_virial, f"{scope}expected virial error per atom (eV/atom; times sqrt(N) per "
                                             "frame)", float),
        Option("sigma_config_type", None, f"{scope}per-config_type sigmas 'TYPE=E,F,V;TYPE2=E,F,V' (or a YAML "
                                          "mapping)"),
        Option("sigma_e0", 100.0, f"{scope}prior width of the per-element reference energies (eV)", float),
        Option("jitter", 1e-8, f"{scope}relative jitter added to the diagonal of the sparse prior", float),
    )


def parse_config_type_sigmas(value) -> dict[str, tuple[float, float, float]]:
    """``'A=e,f,v;B=e,f,v'`` or a mapping ``{A: [e, f, v]}`` -> ``{A: (e, f, v)}``."""
    if value in (None, "", {}):
        return {}
    items = value.items() if isinstance(value, dict) else (
        part.split("=", 1) for part in str(value).split(";") if part.strip())
    out = {}
    for name, sig in items:
        vals = sig if isinstance(sig, (list, tuple)) else str(sig).split(",")
        try:
            e, f, v = (float(x) for x in vals)
        except (TypeError, ValueError):
            raise UsageError(f"--sigma-config-type {name!r}: expected three numbers E,F,V, got {sig!r}") from None
        if min(e, f, v) <= 0:
            raise UsageError(f"--sigma-config-type {name!r}: sigmas must be positive")
        out[str(name).strip()] = (e, f, v)
    return out


def cholesky_upper(K: np.ndarray, what: str) -> np.ndarray:
    """``L^T`` of ``K = L L^T`` (torch/LAPACK); a matrix that is not positive definite is a
    :class:`TrainingError` naming ``what``."""
    L, info = torch.linalg.cholesky_ex(torch.from_numpy(np.ascontiguousarray(K)))
    if int(info) != 0:
        raise TrainingError(f"the prior covariance of the {what} is not positive definite (leading minor "
                            f"{int(info)} of {len(K)}): raise --jitter or use fewer, more distinct sparse points")
    return L.numpy().T


def has_virial(frame) -> bool:
    return frame.stress is not None and bool(np.all(frame.pbc))


def label_counts(frames: Sequence) -> dict[str, int]:
    """Energies, force components and virial components the frames hold (rows of the fit)."""
    return {"energy": sum(f.energy is not None for f in frames),
            "forces": sum(3 * len(f) for f in frames if f.forces is not None),
            "virial": 6 * sum(has_virial(f) for f in frames)}


def count_rows(frames: Sequence) -> int:
    return sum(label_counts(frames).values())


def progress(items, desc: str, quiet: bool):
    """``items`` with the package's progress bar on stderr (the one ``ase-mlff md`` and
    ``eval`` show), unless ``quiet``."""
    if quiet:
        yield from items
        return
    from ..console import ProgressBar

    items = list(items)
    bar = ProgressBar(len(items), label=desc, unit="frames")
    for k, item in enumerate(items):
        yield item
        bar.update(k + 1)
    bar.close()


def solve(frames: Sequence, design: Callable[[int], dict], n_params: int, prior: Sequence[tuple[slice, np.ndarray]],
          sigmas: tuple[float, float, float], config_type_sigmas: dict | None = None, log=print,
          quiet: bool = True, rows: tuple[int, np.ndarray] | None = None,
          on_rows: Callable[[int, np.ndarray], None] | None = None,
          fixed: np.ndarray | None = None,
          cross_validate: bool = False, keep: dict | None = None) -> tuple[np.ndarray, torch.Tensor, dict]:
    """Fit ``x`` (length ``n_params``); returns ``(x, R, info)`` with ``R`` the (T, T) upper
    triangular factor of ``Phi^T Lambda^-1 Phi + P`` (for the predictive variance).

    ``fixed``: the values of the last ``len(fixed)`` parameters, which are then not fitted
    (module docstring); prior blocks must lie wholly among the fitted or the fixed columns.

    ``design(k)``: rows of frame ``k`` against ``x``: ``{"energy": (T,), "forces": (N, 3, T)
    or None, "virial": (3, 3, T) or None}``, ``virial`` being ``dE/d(strain)`` (the label is
    ``stress * volume``). ``prior``: ``(columns, U)`` blocks with ``U^T U`` the prior precision
    of those columns. ``sigmas``: default ``(sigma_E, sigma_F, sigma_V)``.

    Checkpoints: ``on_rows(n, A)`` is called after the rows of every frame, ``A`` (a view, not
    a copy) holding the weighted rows ``[Lambda^-1/2 Phi, Lambda^-1/2 y]`` of the first ``n``
    frames: a trainer's safe point (:meth:`~ase_mlff.training.checkpoint.Checkpointer.safe_point`)
    that saves them when a checkpoint is due. ``rows=(n, A)`` from such a checkpoint continues
    the design at frame ``n``. Each frame's rows depend on that frame only and the QR sees the
    same matrix, so a resumed fit gives the uninterrupted one's ``x`` and ``R`` bit for bit.

    ``cross_validate``: also the leave-one-frame-out errors and variances (module docstring),
    summed per observable in ``info["cross_validation"]`` (:func:`leave_one_frame_out`).

    ``keep``: a dict that receives ``factor`` ((T + 1, T + 1): ``R`` with ``Q^T y`` as its last
    column, for :func:`update_factor`) and ``rows`` (the weighted data rows, for a later
    :func:`leave_one_frame_out`): what an incremental refit continues from.
    """
    n_all = int(n_params)
    fixed = np.zeros(0) if fixed is None else np.asarray(fixed, dtype=np.float64).ravel()
    T = n_all - len(fixed)  # the fitted parameters: columns [0, T) of every design row
    if T < 0:
        raise ValueError(f"{len(fixed)} fixed parameters of {n_all}")

    n_rows = count_rows(frames)
    if n_rows == 0:
        raise DatasetError("the training frames carry no energies, forces or stresses to fit")
    config_type_sigmas = config_type_sigmas or {}
    A = np.zeros((n_rows + T, T + 1))
    row, counts, start = 0, {"energy": 0, "forces": 0, "virial": 0}, 0
    if rows is not None:
        start, done = int(rows[0]), np.asarray(rows[1])
        if not 0 <= start <= len(frames) or done.shape != (count_rows(frames[:start]), T + 1):
            raise TrainingError(f"the checkpoint's design rows ({done.shape[0]} x {done.shape[1] - 1}) do not "
                                f"belong to this fit ({count_rows(frames[:start])} rows of {start} frames x {T}); "
                                "delete the checkpoint to start over")
        row = len(done)
        A[:row] = done
        counts = label_counts(frames[:start])
        del done
    t0 = time.perf_counter()
    for k in progress(range(start, len(frames)), "design matrix", quiet):
        row = _fill_rows(A, row, frames[k], design(k), n_all, fixed, sigmas, config_type_sigmas, counts)
        if on_rows is not None:
            on_rows(k + 1, A[:row])
    t_design = time.perf_counter() - t0
    log(f"design matrix {n_rows} x {T} ({counts}) in {t_design:.1f} s, {A.nbytes / 1e9:.2f} GB")
    for cols, U in prior:
        if cols.start >= T:  # the prior of fixed parameters: they are not fitted
            continue
        if cols.stop > T:
            raise ValueError(f"prior block {cols} straddles the fitted ({T}) and fixed parameters")
        A[n_rows + cols.start:n_rows + cols.stop, cols] = U
    t1 = time.perf_counter()
    R_aug = torch.linalg.qr(torch.from_numpy(A), mode="r")[1]
    if keep is not None:  # the factor and the data rows, for update_factor and a later cross-validation
        keep.update(factor=R_aug.numpy(), rows=A[:n_rows])
    if not cross_validate:
        del A  # (cross-validation reads the frames' rows again)
    x, R = _solution(R_aug, T)
    t_solve = time.perf_counter() - t1
    log(f"QR solve of {n_rows + T} x {T} in {t_solve:.1f} s")
    info = {"n_rows": int(n_rows), "labels": counts, "design_s": t_design, "solve_s": t_solve}
    if cross_validate:
        t2 = time.perf_counter()
        info["cross_validation"] = leave_one_frame_out(frames, A, R.numpy(), x.numpy(), sigmas, config_type_sigmas)
        info["cross_validation_s"] = time.perf_counter() - t2
        log(f"leave-one-frame-out errors and variances of {len(frames)} frames in {info['cross_validation_s']:.1f} s")
        del A
    if len(fixed):
        x_all, R_all = with_fixed(x.numpy(), R, fixed)
        return x_all, R_all, {**info, "n_fixed": int(len(fixed))}
    return x.numpy(), R, info


def _fill_rows(A: np.ndarray, row: int, f, d: dict, n_all: int, fixed: np.ndarray, sigmas, config_type_sigmas,
               counts: dict) -> int:
    """Write the weighted rows ``[Lambda^-1/2 Phi, Lambda^-1/2 y]`` of frame ``f`` (its design
    rows ``d``, :func:`solve`) into ``A`` from ``row`` on, over the fitted columns (the fixed
    parameters' part taken off the labels); counts the labels in ``counts``; returns the next row."""
    T = n_all - len(fixed)

    def fitted(rows_, label):  # fitted columns of design rows (..., n_all), and the label minus the fixed part
        rows_ = np.asarray(rows_)
        return rows_[..., :T], (label - rows_[..., T:] @ fixed if len(fixed) else label)

    # the expected errors from frame_rows, which the leave-one-frame-out pass reads back
    sigma_e, sF, sigma_v = frame_rows(f, sigmas, config_type_sigmas)["sigma"]
    n = len(f)
    if f.energy is not None:
        w = 1.0 / sigma_e
        phi, y = fitted(d["energy"], f.energy)
        A[row, :T] = w * phi
        A[row, T] = w * y
        row += 1
        counts["energy"] += 1
    if f.forces is not None:
        phi, y = fitted(np.reshape(d["forces"], (3 * n, n_all)), f.forces.reshape(-1))
        A[row:row + 3 * n, :T] = phi / sF
        A[row:row + 3 * n, T] = y / sF
        row += 3 * n
        counts["forces"] += 3 * n
    if has_virial(f):
        w = 1.0 / sigma_v
        s6 = f.stress
        full = np.array([[s6[0], s6[5], s6[4]], [s6[5], s6[1], s6[3]], [s6[4], s6[3], s6[2]]])
        full *= abs(np.linalg.det(f.cell))
        for a, b in VOIGT:
            phi, y = fitted(d["virial"][a, b], full[a, b])
            A[row, :T] = w * phi
            A[row, T] = w * y
            row += 1
        counts["virial"] += 6
    return row


def _solution(R_aug: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, R)`` from the factor ``R_aug`` of ``[Lambda^-1/2 Phi, Lambda^-1/2 y ; chol(P)^T, 0]``
    (its first T columns are ``R``, its last ``Q^T y``); a zero on the diagonal of ``R`` is a
    :class:`TrainingError`."""
    R, qy = R_aug[:T, :T], R_aug[:T, T]
    diag = R.diagonal().abs()
    if not torch.isfinite(R_aug).all() or float(diag.min()) <= 1e-13 * float(diag.max()):
        raise TrainingError("the least-squares system is rank deficient (a zero on the diagonal of R): "
                            "check for sparse points without data or duplicated labels")
    x = torch.linalg.solve_triangular(R, qy[:, None], upper=True)[:, 0]
    return x, R


def with_fixed(x: np.ndarray, R: torch.Tensor, fixed: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The fitted ``x`` and ``R`` extended by the fixed parameters (:data:`FIXED_PRECISION` on
    the diagonal of their block of ``R``)."""
    n_all = len(x) + len(fixed)
    R_all = torch.zeros((n_all, n_all), dtype=R.dtype)
    R_all[:len(x), :len(x)] = R
    R_all[len(x):, len(x):] = FIXED_PRECISION * torch.eye(len(fixed), dtype=R.dtype)
    return np.concatenate([x, fixed]), R_all


# ------------------------------------------------------------------------------ incremental updates
def weighted_rows(frames: Sequence, design: Callable[[int], dict], n_params: int,
                  sigmas: tuple[float, float, float], config_type_sigmas: dict | None = None,
                  fixed: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The weighted rows ``[Lambda^-1/2 Phi, Lambda^-1/2 y]`` of ``frames`` (``design(k)``
    as in :func:`solve`) over the fitted columns: the rows :func:`solve` builds for them, bit for
    bit; returns ``(rows, label counts)``."""
    fixed = np.zeros(0) if fixed is None else np.asarray(fixed, dtype=np.float64).ravel()
    T = int(n_params) - len(fixed)
    A = np.zeros((count_rows(frames), T + 1))
    row, counts = 0, {"energy": 0, "forces": 0, "virial": 0}
    for k, f in enumerate(frames):
        row = _fill_rows(A, row, f, design(k), int(n_params), fixed, sigmas, config_type_sigmas or {}, counts)
    return A, counts


def update_factor(factor: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The factor of :func:`solve` (``keep["factor"]``, (T + 1, T + 1)) with the weighted rows
    ``rows`` (r, T + 1) of new labels appended: ``R'`` of the QR of ``[factor ; rows]``.

    The least-squares problem is unchanged by an orthogonal transformation of its rows, and the
    rows of ``factor`` are ``Q^T`` of every earlier row (data and prior), so ``R'^T R' = R^T R +
    rows^T rows`` (the normal matrix with the new rows) and the last column keeps ``Q^T y`` and, in
    its last element, the norm of the weighted residual: the fit from scratch on all the rows, to
    within rounding, at a cost of (T + r) T^2 instead of (all rows) T^2. The rows' signs may
    differ from those of a QR of all rows (R is unique up to them); ``x`` and ``R^T R`` do not."""
    factor, rows = np.asarray(factor, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    if factor.ndim != 2 or factor.shape[0] != factor.shape[1] or rows.ndim != 2 or rows.shape[1] != factor.shape[1]:
        raise ValueError(f"update_factor: a square factor and rows of its width, got {factor.shape} and {rows.shape}")
    return torch.linalg.qr(torch.from_numpy(np.concatenate([factor, rows])), mode="r")[1].numpy()


def factor_solution(factor: np.ndarray, fixed: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor, dict]:
    """``(x, R, fitted)`` from a factor of :func:`update_factor`: ``x`` and ``R`` as :func:`solve`
    returns them (the fixed parameters appended), ``fitted`` = ``{"x", "R"}`` of the fitted
    parameters alone (what :func:`leave_one_frame_out` takes)."""
    fixed = np.zeros(0) if fixed is None else np.asarray(fixed, dtype=np.float64).ravel()
    T = len(factor) - 1
    x, R = _solution(torch.from_numpy(np.asarray(factor, dtype=np.float64)), T)
    fitted = {"x": x.numpy(), "R": R.numpy()}
    if len(fixed):
        x_all, R_all = with_fixed(x.numpy(), R, fixed)
        return x_all, R_all, fitted
    return x.numpy(), R, fitted


def frame_rows(frame, sigmas: tuple[float, float, float], config_type_sigmas: dict | None = None) -> dict:
    """The rows :func:`solve` builds for ``frame``: how many energy, force and virial rows, and
    the expected error (the inverse weight) of each kind."""
    sE, sF, sV = (config_type_sigmas or {}).get(str((frame.info or {}).get("config_type")), sigmas)
    n = len(frame)
    return {"energy": int(frame.energy is not None), "forces": 3 * n if frame.forces is not None else 0,
            "virial": 6 if has_virial(frame) else 0,
            "sigma": (sE * np.sqrt(n), sF, sV * np.sqrt(n))}


def leave_one_frame_out(frames: Sequence, A: np.ndarray, R: np.ndarray, x: np.ndarray,
                        sigmas: tuple[float, float, float], config_type_sigmas: dict | None = None) -> dict:
    """Held-out errors and predictive variances of every frame's labels under the fit without
    that frame (module docstring), in physical units, summed per observable:
    ``{"energy": {"n": frames, "sum_error2": eV^2, "sum_variance": eV^2}, "forces": {"n": atoms,
    "sum_error2": sum over atoms of |dF|^2 (eV/Å)^2, ...}, "stress": {"n": components, ...
    (eV/Å^3)^2}, "n_frames": ..., "skipped": frames whose 1 - H_f was not numerically positive
    definite}``. ``A``: the weighted rows ``[Phi, y]`` of :func:`solve`, frames in order."""
    import scipy.linalg

    T = len(R)
    out = {k: {"n": 0, "sum_error2": 0.0, "sum_variance": 0.0} for k in ("energy", "forces", "stress")}
    out.update(n_frames=len(frames), skipped=0)
    row = 0
    for f in frames:
        spec = frame_rows(f, sigmas, config_type_sigmas)
        n_rows = spec["energy"] + spec["forces"] + spec["virial"]
        block = A[row:row + n_rows]
        row += n_rows
        if not n_rows:
            continue
        phi = block[:, :T]
        resid = block[:, T] - phi @ x
        Y = scipy.linalg.solve_triangular(R, phi.T, trans="T", lower=False)  # R^-T Phi_f^T
        try:
            factor = scipy.linalg.cho_factor(np.eye(n_rows) - Y.T @ Y)
        except np.linalg.LinAlgError:
            out["skipped"] += 1
            continue
        err = scipy.linalg.cho_solve(factor, resid)
        var = np.diag(scipy.linalg.cho_solve(factor, np.eye(n_rows))) - 1.0
        # back to physical units: each row was divided by its expected error
        scale = np.repeat(spec["sigma"], [spec["energy"], spec["forces"], spec["virial"]])
        if spec["virial"]:
            scale[-6:] /= abs(np.linalg.det(f.cell))  # virial (eV) -> stress (eV/Å^3)
        err, var = err * scale, var * scale ** 2
        parts = (("energy", slice(0, spec["energy"]), spec["energy"]),
                 ("forces", slice(spec["energy"], spec["energy"] + spec["forces"]), spec["forces"] // 3),
                 ("stress", slice(n_rows - spec["virial"], n_rows), spec["virial"]))
        for key, sl, count in parts:
            if count:
                out[key]["n"] += int(count)
                out[key]["sum_error2"] += float((err[sl] ** 2).sum())
                out[key]["sum_variance"] += float(var[sl].sum())
    return out
