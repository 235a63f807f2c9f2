"""Train sGDML models: ``train_sgdml`` (Python) and the ``train sgdml`` command line.

    python -m ase_mlff.training.sgdml_train data.npz --energy-unit kcal/mol \\
        --n-train 1000 --n-valid 500 --output model.mlff

The recipe: energy-stratified training set, symmetry detection, one closed-form (or
preconditioned-CG) solve per sigma of the grid, the sigma with the lowest validation force
RMSE wins, the integration constant is fitted on the training energies.

Reference energies: an sGDML model describes one molecule and has one energy constant (the
integration constant), so per-element reference energies cannot change a prediction; given
ones (``--reference-energies``) are checked (every element of the molecule needs one) and
recorded in the model file, with the mean of ``(E - sum e0) / N`` over the training frames
(the atomisation energy per atom when e0 are isolated-atom energies).

Without test frames (``--n-test 0``, or no frame left) the errors on the training frames are
reported instead (``metrics["train"]``), labelled as training-set errors.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from .._warn import warn
from ..console import timed_printer
from ..metrics import error_metrics, format_metrics
from ..data import command_line_message, stratified_indices
from ..errors import DatasetError, MLFFError, TrainingError
from ..models.sgdml import SGDMLModel
from ..rng import random_stream
from ..units import energy_factor
from .checkpoint import Checkpointer, StopGuard, identity
from .committee import CommitteeCommand, CommitteeHook, CommitteePlan
from .common import (IN_ENERGY_UNIT, REFERENCE_ENERGIES_HELP, Option, UsageError, add_options, check_given_reference,
                     check_new_output, check_split_elements, format_training_metrics, parse_reference_energies,
                     read_training_data, reference_energies_record, resolve_options)
from .common import training_record as common_record
from .sgdml_search import MEMORY_SAFETY, SigmaSearch  # noqa: F401  (MEMORY_SAFETY: see train_sgdml)
from .symmetries import close_group, find_symmetries

#: one line for ``ase-mlff train --help``
SUMMARY = "train an sGDML model (global, one molecule)"

#: default sigma grid (descriptor units, 1/Å), as in the reference sGDML code
DEFAULT_SIGMAS = tuple(range(10, 100, 10))


# ---------------------------------------------------------------------------------- data
def _unpack(data) -> dict[str, Any]:
    """Arrays (eV, Å) and provenance from a Dataset, a path or a dict of arrays."""
    if isinstance(data, (str, os.PathLike)):
        raise DatasetError("pass a Dataset (ase_mlff.data.read(path, energy_unit=...)) or arrays, not a path")
    if isinstance(data, dict):
        arr = {k: (None if data.get(k) is None else np.asarray(data[k])) for k in ("R", "z", "E", "F")}
        unit = data.get("energy_unit", "eV")
        return {**arr, "sha256": data.get("sha256"), "source": data.get("source"), "unit": unit, "ds": None}
    arr = data.arrays()
    return {**arr, "sha256": data.sha256(), "source": getattr(data, "source", None),
            "unit": getattr(data, "source_energy_unit", None) or "eV", "ds": data}


def _stratified(E: np.ndarray, cand: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Same picks as :meth:`ase_mlff.data.Dataset.select_stratified` (the same code)."""
    return stratified_indices(E[cand], cand, n, seed)


def error_table(E_pred, E_ref, F_pred, F_ref, unit: str, z=None) -> dict[str, float]:
    """The shared metrics (:func:`ase_mlff.metrics.error_metrics`: meV, meV/atom, meV/Å, per
    element when ``z`` is given), ``n`` frames, and the energy and force MAE/RMSE converted to
    the data's ``unit`` (energy) and ``unit``/Å (``energy_mae``, ``forces_rmse``, ...)."""
    f = energy_factor(unit)
    E_ref = np.asarray(E_ref)
    F_ref = np.asarray(F_ref)
    n_atoms = F_ref.shape[-2] if F_ref.ndim >= 2 else 1
    numbers = None if z is None else np.broadcast_to(np.asarray(z), F_ref.shape[:-1]).reshape(-1)
    shared = error_metrics(E_ref, E_pred, np.full(len(E_ref), n_atoms), F_ref.reshape(-1, 3),
                           np.asarray(F_pred).reshape(-1, 3), numbers)
    return {
        "n": int(len(E_ref)), "n_frames": int(len(E_ref)), "n_atoms": int(len(E_ref) * n_atoms), **shared,
        "unit": unit,
        "energy_mae": 1e-3 * shared["energy_mae_meV"] / f, "energy_rmse": 1e-3 * shared["energy_rmse_meV"] / f,
        "forces_mae": 1e-3 * shared["forces_mae_meV_per_A"] / f,
        "forces_rmse": 1e-3 * shared["forces_rmse_meV_per_A"] / f,
    }


#: keys of :func:`error_table` in the data's own unit (not part of the shared metrics)
_DATA_UNIT_KEYS = ("n", "unit", "energy_mae", "energy_rmse", "forces_mae", "forces_rmse")


def shared_metrics(table: dict | None) -> dict | None:
    """The shared-metrics part of an :func:`error_table` (what model files record)."""
    return None if table is None else {k: v for k, v in table.items() if k not in _DATA_UNIT_KEYS}


def _peak_memory_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _symmetry_group(symmetries, R, z, seed):
    N = len(z)
    if isinstance(symmetries, str):
        if symmetries == "none":
            return np.arange(N)[None].astype(np.int64)
        if symmetries == "auto":
            return find_symmetries(R, z, seed=seed)
        raise ValueError(f"symmetries must be 'auto', 'none' or a list of permutations, got {symmetries!r}")
    perms = [np.asarray(p, dtype=np.int64) for p in symmetries]
    for p in perms:
        if sorted(p.tolist()) != list(range(N)):
            raise ValueError(f"{p.tolist()} is not a permutation of {N} atoms")
        if np.any(z[p] != z):
            raise ValueError(f"permutation {p.tolist()} exchanges atoms of different elements")
    group, complete = close_group(perms, N, 1000)
    if not complete:
        raise ValueError("the given permutations generate a group of more than 1000 elements")
    return np.stack(group).astype(np.int64)


def _label_checks(E_ref, E0) -> dict[str, float]:
    """Regress reference energies on the integrated (constant-free) predictions."""
    x = E0 - E0.mean()
    yv = E_ref - E_ref.mean()
    denom = float(x @ x)
    slope = float(x @ yv) / denom if denom > 0 else float("nan")
    r = float(np.corrcoef(E0, E_ref)[0, 1]) if denom > 0 and float(yv @ yv) > 0 else float("nan")
    if slope < 0:
        warn("forces look like gradients (sign): the reference energies fall where the integrated "
             f"force model rises (slope {slope:.3g})")
    elif abs(slope - 1) > 0.1:
        warn(f"energy and force units look inconsistent: reference energies vs integrated forces "
             f"have slope {slope:.3g} (expected 1)")
    if not r >= 0.95:
        warn(f"energy labels look inconsistent with the forces: Pearson r = {r:.3g} between "
             "reference energies and the integrated force model")
    return {"slope": slope, "pearson_r": r}


# ---------------------------------------------------------------------------------- training
def _namer(cli: bool) -> Callable[[str], str]:
    """How messages name an option: ``--n-train`` on the command line, ``n_train`` in Python."""
    if cli:
        return lambda name: "--" + name.replace("_", "-")
    return lambda name: {"resume": "resume=True", "solver": "solver="}.get(name, name)


def _arrays_sha256(R, z, E, F) -> str:
    import hashlib

    h = hashlib.sha256(b"ase-mlff sgdml arrays v1")
    for a in (z, R, E, F):
        a = np.ascontiguousarray(a, dtype=np.int64 if a is z else np.float64)
        h.update(str(a.shape).encode())
        h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def train_sgdml(
    data,
    n_train: int,
    n_valid: int,
    sigmas: Sequence[float] | None = None,
    lam: float = 1e-10,
    symmetries="auto",
    solver: str = "auto",
    seed: int = 0,
    train_indices=None,
    valid_indices=None,
    progress: Callable[[str], None] | None = None,
    test=None,
    n_test: int | None = None,
    test_indices=None,
    cg_tol: float = 1e-4,
    cg_maxiter: int = 5000,
    n_inducing: int | None = None,
    memory_limit: float | None = None,
    checkpoint=None,
    resume: bool = False,
    checkpoint_interval: float = 60.0,
    checkpoint_every: int | None = None,
    stop_after: int | None = None,
    _cli: bool = False,
) -> tuple[SGDMLModel, dict[str, Any]]:
    """Train an sGDML model on forces; returns ``(model, report)``.

    ``data``: :class:`ase_mlff.data.Dataset` or dict ``R`` (M,N,3) Å, ``z``, ``E`` (M,) eV,
    ``F`` (M,N,3) eV/Å (optionally ``energy_unit`` for reporting, ``sha256``, ``source``).
    ``n_train`` geometries are drawn stratified by energy (unless ``train_indices``), ``n_valid``
    at random from the rest (unless ``valid_indices``). ``sigmas``: kernel length scales to
    try (default 10, 20, ..., 90). ``symmetries``: "auto" (detected), "none" or a list of atom
    permutations (closed into a group). ``solver``: "auto" (Cholesky when ~2 (3NM)^2 doubles fit
    in ``MEMORY_SAFETY`` of the available memory, else CG), "cholesky" or "cg".
    ``test``: optional separate test data (default: frames not used for training/validation);
    ``n_test``: how many test frames (default all). ``progress(str)`` gets status lines.

    Random choices draw from named streams of ``seed`` (:func:`ase_mlff.rng.random_stream`):
    "stratified" (training frames), "validation", "inducing" (CG preconditioner), "test".

    Checkpoints (see :mod:`ase_mlff.training.checkpoint`): with ``checkpoint`` (a path) the
    state is written atomically after every completed sigma, every ``checkpoint_interval``
    seconds (and every ``checkpoint_every`` CG iterations) of a CG solve, and when SIGINT or
    SIGTERM asks training to stop (it stops at the next safe point and raises
    :class:`~ase_mlff.training.checkpoint.TrainingInterrupted`). ``resume=True`` continues
    from the checkpoint and gives the same model as an uninterrupted run; it refuses a
    checkpoint of other data or options. The checkpoint is left in place: delete it after
    saving the model (the command line does). ``stop_after=k`` requests a stop after the
    k-th safe point (CG iteration or completed sigma), for tests.
    """
    t_start = time.perf_counter()
    say = progress or (lambda msg: None)
    opt = _namer(_cli)
    # 1. the data: arrays checked and in float64
    d = _training_arrays(data)
    dt = None if test is None else _unpack(test)
    sigmas = list(DEFAULT_SIGMAS if sigmas is None else sigmas)
    if solver not in ("auto", "cholesky", "cg"):
        raise ValueError(f"{opt('solver')} must be 'auto', 'cholesky' or 'cg', got {solver!r}")
    ident = _run_identity(d, sigmas, n_train=n_train, n_valid=n_valid, lam=lam, symmetries=symmetries,
                          solver=solver, seed=seed, cg_tol=cg_tol, cg_maxiter=cg_maxiter, n_inducing=n_inducing,
                          train_indices=train_indices, valid_indices=valid_indices)
    with StopGuard(stream=sys.stderr) as guard:
        ckpt = Checkpointer(checkpoint, ident, interval_s=checkpoint_interval, every=checkpoint_every,
                            stop_after=stop_after, guard=guard)
        state, saved = _start_or_resume(ckpt, resume, len(sigmas), say, opt)
        # 2. training and validation frames (a resumed run takes the very same from its checkpoint)
        train_idx, valid_idx = _choose_frames(d, dt, saved, n_train, n_valid, train_indices, valid_indices,
                                              seed, len(sigmas), opt)
        # 3. the permutational symmetries of the training geometries
        t0 = time.perf_counter()
        perms = _symmetry_step(d, train_idx, saved, symmetries, seed, say)
        t_sym = time.perf_counter() - t0
        say(f"{len(perms)} symmetries ({t_sym:.1f} s)")
        # 4. the search over sigmas: one solve each, scored on the validation frames
        search = SigmaSearch(d, train_idx, valid_idx, perms, lam, state, saved)
        search.choose_solver(solver, memory_limit, n_inducing, seed, say, opt)
        search.run(sigmas, ckpt, cg_tol, cg_maxiter, say)
    # 5. the final model: the best sigma's solution, its integration constant, label checks
    model, E0, kbest = search.best_model(sigmas)
    if len(sigmas) > 1 and (model.sigma == min(map(float, sigmas)) or model.sigma == max(map(float, sigmas))):
        warn(f"the best sigma ({model.sigma:g}) is at the edge of the grid {sigmas}; extend the grid")
    checks = _label_checks(search.Et, E0)
    # 6. test errors (the training-set errors when nothing is held out)
    tested = _test_errors(model, d, dt, search, test_indices, n_test, seed, say)
    # 7. the record
    return model, _report(model, search, kbest, sigmas, tested, checks, d, lam=lam, seed=seed, resume=resume,
                          checkpoint=ckpt.path, t_start=t_start, t_sym=t_sym)


def _training_arrays(data) -> dict[str, Any]:
    """:func:`_unpack`, with the labels sGDML needs checked and the arrays in float64."""
    d = _unpack(data)
    R, z, E, F = d["R"], np.asarray(d["z"], dtype=np.int64), d["E"], d["F"]
    if F is None:
        raise DatasetError("sGDML trains on forces; the training data have none")
    if E is None:
        raise DatasetError("sGDML needs energies to fit the integration constant; the training data have none")
    return {**d, "R": np.asarray(R, np.float64), "z": z, "E": np.asarray(E, np.float64),
            "F": np.asarray(F, np.float64)}


def _run_identity(d, sigmas, *, n_train, n_valid, lam, symmetries, solver, seed, cg_tol, cg_maxiter, n_inducing,
                  train_indices, valid_indices) -> dict[str, Any]:
    """What this run is, for its checkpoint: the data and everything that changes the model."""
    sym_opt = symmetries if isinstance(symmetries, str) else [np.asarray(p).tolist() for p in symmetries]
    return identity("sgdml", d["sha256"] or _arrays_sha256(d["R"], d["z"], d["E"], d["F"]), {
        "n_train": None if train_indices is not None else int(n_train),
        "n_valid": None if valid_indices is not None else int(n_valid),
        "sigmas": [float(s) for s in sigmas], "lam": float(lam), "symmetries": sym_opt, "solver": solver,
        "seed": seed, "cg_tol": float(cg_tol), "cg_maxiter": int(cg_maxiter), "n_inducing": n_inducing,
        "train_indices": None if train_indices is None else np.asarray(train_indices).tolist(),
        "valid_indices": None if valid_indices is None else np.asarray(valid_indices).tolist(),
    })


def _start_or_resume(ckpt, resume: bool, n_sigmas: int, say, opt) -> tuple[dict, dict]:
    """``(state, arrays)`` of the interrupted run to resume, or empty ones for a fresh run (which
    refuses to start over a checkpoint left by an interrupted one)."""
    if resume:
        state, saved = ckpt.load()
        say(f"resuming from {ckpt.path}: {len(state.get('results', []))} of {n_sigmas} sigmas done")
        return state, saved
    if ckpt.exists():
        raise TrainingError(f"checkpoint {ckpt.path} exists from an interrupted run; continue it with "
                            f"{opt('resume')}, or delete it to start over")
    return {}, {}


def _choose_frames(d, dt, saved, n_train, n_valid, train_indices, valid_indices, seed, n_sigmas,
                   opt) -> tuple[np.ndarray, np.ndarray]:
    """Training frames (stratified by energy unless given) and validation frames (at random from
    the rest unless given), or those of the checkpoint; checked before any kernel work."""
    E, M_all = d["E"], len(d["R"])
    if "train_idx" in saved:
        train_idx, valid_idx = saved["train_idx"].astype(np.int64), saved["valid_idx"].astype(np.int64)
    else:
        if train_indices is None:
            if n_train + n_valid > M_all:
                raise DatasetError(f"asked for {n_train} training ({opt('n_train')}) + {n_valid} validation "
                                   f"({opt('n_valid')}) frames, the data have {M_all}")
            if d["ds"] is not None and hasattr(d["ds"], "select_stratified"):
                train_idx = np.asarray(d["ds"].select_stratified(None, n_train, seed), dtype=np.int64)
            else:
                train_idx = _stratified(E, np.arange(M_all), n_train, seed)
        else:
            train_idx = np.asarray(train_indices, dtype=np.int64)
        rest = np.setdiff1d(np.arange(M_all), train_idx)
        if valid_indices is None:
            if n_valid > len(rest):
                raise DatasetError(f"only {len(rest)} frames left for {n_valid} validation frames "
                                   f"({opt('n_valid')})")
            vrng = random_stream(seed, "validation")
            valid_idx = np.sort(vrng.choice(rest, n_valid, replace=False)) if n_valid else np.zeros(0, np.int64)
        else:
            valid_idx = np.asarray(valid_indices, dtype=np.int64)
    if len(np.intersect1d(train_idx, valid_idx)):
        raise DatasetError("training and validation frames overlap")
    # every frame of one data set holds the same atoms: only a test set of another molecule can
    # fail, with the shared element check (exit 2) first, before any kernel work
    z = d["z"]
    if dt is not None and not np.array_equal(np.asarray(dt["z"]), z):
        check_split_elements([z], {"test": [np.asarray(dt["z"])]})
        raise DatasetError("test data have different atoms (or atom order) than the training data")
    if len(valid_idx) == 0 and n_sigmas > 1:
        raise DatasetError(f"the sigma search needs validation frames ({opt('n_valid')} > 0) "
                           f"or a single sigma ({opt('sigmas')})")
    return train_idx, valid_idx


def _symmetry_step(d, train_idx, saved, symmetries, seed, say) -> np.ndarray:
    """The symmetry group of the training geometries (``(S, N)`` permutations), or the checkpoint's."""
    if "perms" in saved:
        return saved["perms"].astype(np.int64)
    say("finding permutational symmetries" if symmetries == "auto" else "setting up symmetries")
    return _symmetry_group(symmetries, d["R"][train_idx], d["z"], seed)


def _test_errors(model, d, dt, search: SigmaSearch, test_indices, n_test, seed, say):
    """``(test indices, test errors, training-set errors)``: the errors on the test frames (of
    ``dt``, else the frames of ``d`` not used for training or validation), or, with nothing
    held out, on the training frames (labelled as such); the other of the two is None."""
    unit, z = d["unit"], d["z"]
    if dt is not None:
        Rte, Ete, Fte = np.asarray(dt["R"], np.float64), dt["E"], dt["F"]
        te_idx = np.arange(len(Rte)) if test_indices is None else np.asarray(test_indices, np.int64)
        if test_indices is None and n_test is not None:
            te_idx = te_idx[:n_test]
    else:
        Rte, Ete, Fte = d["R"], d["E"], d["F"]
        if test_indices is not None:
            te_idx = np.asarray(test_indices, np.int64)
        else:
            te_idx = np.setdiff1d(np.arange(len(Rte)), np.concatenate([search.train_idx, search.valid_idx]))
            if n_test is not None:
                te_idx = np.sort(random_stream(seed, "test").choice(te_idx, min(n_test, len(te_idx)), replace=False))
    test_report = train_report = None
    if len(te_idx) and Ete is not None and Fte is not None:
        say(f"testing on {len(te_idx)} frames")
        Ep, Fp = model.predict_numpy(Rte[te_idx])
        test_report = error_table(Ep, Ete[te_idx], Fp, Fte[te_idx], unit, z)
    else:  # nothing held out for testing: at least the fit to the training frames, labelled as such
        Ep, Fp = model.predict_numpy(search.Rt)
        train_report = error_table(Ep, search.Et, Fp, search.Ft, unit, z)
        say(format_training_metrics(shared_metrics(train_report)))
    return te_idx, test_report, train_report


def _report(model, search: SigmaSearch, kbest: int, sigmas, tested, checks, d, *, lam, seed, resume, checkpoint,
            t_start: float, t_sym: float) -> dict[str, Any]:
    """The report :func:`train_sgdml` returns (``tested``: what :func:`_test_errors` returned)."""
    te_idx, test_report, train_report = tested
    results = search.results
    report = {
        "sigma": model.sigma,
        "sigmas": [float(s) for s in sigmas],
        "per_sigma": results,
        "lam": lam,
        "n_symmetries": int(len(search.perms)),
        "symmetries": search.perms.tolist(),
        "solver": search.solver,
        "cg": search.cg_info or None,
        "n_train": int(search.M),
        "n_valid": int(len(search.valid_idx)),
        "n_test": int(len(te_idx)),
        "train_indices": search.train_idx.tolist(),
        "valid_indices": search.valid_idx.tolist(),
        "test_indices": np.asarray(te_idx).tolist(),
        "integration_constant_eV": model.c,
        "label_checks": checks,
        "train_time_s": time.perf_counter() - t_start,
        "symmetry_time_s": t_sym,
        "peak_memory_bytes": _peak_memory_bytes(),
        "valid": results[kbest].get("valid"),
        "test": test_report,
        "train": train_report,
        "energy_unit": d["unit"],
        "data_sha256": d["sha256"],
        "source": d["source"],
        "seed": seed,
        "resumed": bool(resume),
        "checkpoint": checkpoint,
    }
    ok = [r["sigma"] for r in results if "failed" not in r]
    if ok and len(ok) < len(sigmas):
        report["failed_sigmas"] = [r["sigma"] for r in results if "failed" in r]
    return report


def training_record(report: dict[str, Any], options: dict | None = None) -> dict[str, Any]:
    """The ``training`` dict for :func:`ase_mlff.io.save_model`: the shared record
    (:func:`ase_mlff.training.common.training_record`: split, metrics, units, seed) plus the
    sGDML results (sigma search, symmetries, solver, label checks)."""
    unit = report.get("energy_unit")
    valid = shared_metrics(report.get("valid"))
    return common_record(
        "sgdml", "ase_mlff.training.sgdml_train", data_sha256=report.get("data_sha256"),
        source=report.get("source"), seed=report.get("seed"),
        options=options if options is not None else {k: report.get(k) for k in ("sigmas", "lam", "solver")},
        split={"train": report["train_indices"], "valid": report["valid_indices"],
               "test": report.get("test_indices")},
        metrics={"valid": valid, "test": shared_metrics(report.get("test")),
                 **({"train": shared_metrics(report["train"])} if report.get("train") else {})},
        units={"energy": unit, "length": "Ang", "forces": f"{unit}/Ang"},
        method="sGDML (ase-mlff)",
        sigma=report.get("sigma"), sigmas=report.get("sigmas"), lam=report.get("lam"), n_symmetries=report.get("n_symmetries"), solver=report.get("solver"),
        n_train=report.get("n_train"), n_valid=report.get("n_valid"), n_test=report.get("n_test"),
        per_sigma=[{k: (shared_metrics(v) if k == "valid" else v) for k, v in r.items()}
                   for r in report["per_sigma"]],
        label_checks=report.get("label_checks"), train_time_s=report.get("train_time_s"),
        resumed=report.get("resumed"), integration_constant_eV=report.get("integration_constant_eV"),
        # energies fix the integration constant, forces everything else; a molecule has no stress
        trained_on=["energy", "forces"],
    )


# ---------------------------------------------------------------------------------- options
#: every option of ``train sgdml``: library keyword, flag and config key (docs/training.md)
OPTIONS = (
    Option("energy_unit", None, "energy unit of the data file, e.g. kcal/mol (default: the unit the file states)"),
    Option("reference_energies", None, REFERENCE_ENERGIES_HELP.format(unit=IN_ENERGY_UNIT)
           + "; sGDML has one energy constant per molecule, so they are recorded but change no prediction"),
    Option("n_train", 1000, "training geometries (drawn stratified by energy)", int),
    Option("n_valid", 500, "validation geometries (choose sigma)", int),
    Option("n_test", None, "test geometries (none: all remaining; 0: the training-set errors are printed instead)",
           int),
    Option("test", None, "separate test data file, same units (none: the frames not used)", kind="dataset"),
    Option("sigmas", None, "kernel length scales, e.g. '10,20,30' or '10:100:10' (none: 10:100:10)"),
    Option("lam", 1e-10, "regulariser", float),
    Option("symmetries", "auto", "detect permutational symmetries (auto) or not (none)", choices=["auto", "none"]),
    Option("solver", "auto", "linear solver", choices=["auto", "cholesky", "cg"]),
    Option("seed", 0, "seed of the random streams: training/validation/test frames, CG inducing geometries", int),
    Option("cg_tol", 1e-4, "relative residual at which CG stops", float),
    Option("cg_maxiter", 5000, "most CG iterations", int),
    Option("n_inducing", None, "geometries of the CG preconditioner (none: by memory)", int),
    Option("memory_limit", None, "bytes of memory the solver may assume (none: what is available)", float),
    Option("train_indices", None, "explicit training frames", cli=False),
    Option("valid_indices", None, "explicit validation frames", cli=False),
    Option("test_indices", None, "explicit test frames", cli=False),
    Option("checkpoint", None, "checkpoint file, written during training and removed after the model is saved "
                               "(none: OUTPUT.ckpt on the command line; no checkpoints in Python)"),
    Option("checkpoint_interval", 60.0, "seconds between checkpoints during a CG solve; one is also written "
                                        "after every sigma and on Ctrl-C/SIGTERM", float),
    Option("checkpoint_every", None, "CG iterations between checkpoints", int, cli=False),
    Option("resume", False, "continue an interrupted run from its checkpoint (same data and options)", kind="flag"),
    Option("output", "model.mlff", "model file to write", library=False, short="-o"),
    Option("overwrite", False, "replace an existing output model file", kind="flag", library=False),
    Option("plot", None, "parity plot (PNG) of the test predictions", library=False),
)
_DEFAULTS = {o.name: o.default for o in OPTIONS if o.cli}

#: exit codes of ``train sgdml`` and ``train mff`` (documented in docs/training.md)
EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


def train(data, progress: Callable[[str], None] | None = None, stop_after: int | None = None,
          _cli: bool = False, **options) -> tuple[SGDMLModel, dict[str, Any]]:
    """``ase_mlff.train("sgdml", data, **options)``: train and return ``(model, record)``, the
    record being the ``training`` dict its model file gets. ``data``: a Dataset, a path (read
    with ``energy_unit``) or a dict of arrays (see :func:`train_sgdml`); ``options``: the names
    of :data:`OPTIONS`. ``test`` may be a Dataset or a path."""
    opts = resolve_options([o for o in OPTIONS if o.library], given=options)
    reference = parse_reference_energies(opts["reference_energies"], opts["energy_unit"])
    ds = read_training_data(data, opts["energy_unit"])
    given = None
    if reference is not None:  # checked before any kernel work; the model does not depend on them
        species = (sorted({int(v) for v in np.ravel(ds["z"])}) if isinstance(ds, dict)
                   else ds.elements)
        if hasattr(ds, "frames"):
            given = check_given_reference(ds.frames, species, reference, progress or (lambda msg: None))
        else:
            given = {"e0": reference.for_species(species), "mean_residual_per_atom_eV": None}
    test = read_training_data(opts["test"], opts["energy_unit"]) if opts["test"] is not None else None
    kw = {k: v for k, v in opts.items()
          if k not in ("energy_unit", "test", "n_train", "n_valid", "sigmas", "reference_energies")}
    model, report = train_sgdml(ds, int(opts["n_train"]), int(opts["n_valid"]), sigmas=parse_sigmas(opts["sigmas"]),
                                test=test, progress=progress, stop_after=stop_after, _cli=_cli, **kw)
    rec = training_record(report, {**opts, "reference_energies": None if reference is None else reference.given_as})
    if given is None:
        rec["reference_energies"] = reference_energies_record(
            [], [], "none", "an sGDML model has one energy constant for the molecule (integration_constant_eV), no "
                            "per-element energies")
    else:
        species = sorted({int(v) for v in model.z.cpu().numpy()})
        rec["reference_energies"] = reference_energies_record(
            species, given["e0"], "given", "given; recorded only (the molecule's energy constant absorbs sum e0)", reference,
            mean_residual_per_atom_eV=given["mean_residual_per_atom_eV"])
    if test is not None:
        rec["test_source"] = getattr(test, "source", None)
        rec["test_data_sha256"] = test.sha256() if hasattr(test, "sha256") else None
    return model, rec


# ---------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("dataset", nargs="?", help="training data (npz, extxyz, ASE db, ...; default: \"data\" "
                                                   "in --config)")
    return add_options(parser, OPTIONS)


def parse_sigmas(text) -> list[float] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        return [float(s) for s in text]
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            start, stop, step = (parts + [10.0])[:3] if len(parts) == 2 else parts
            out = [float(s) for s in np.arange(start, stop, step)]
        else:
            out = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out or not all(np.isfinite(out)) or min(out) <= 0:
        raise ValueError(f"--sigmas {text!r} is not a list of positive numbers like '10,20,30' or a range "
                         "START:STOP[:STEP] like '10:100:10'")
    return out


def _resolve(args) -> dict[str, Any]:
    """Options of a parsed command line: defaults, then --config, then the flags typed."""
    return resolve_options([o for o in OPTIONS if o.cli], args, extra=("dataset",), aliases={"data": "dataset"})


def parity_plot(path, E_pred, E_ref, F_pred, F_ref, n_atoms, title: str = "") -> str:
    """Predicted against reference, in the units of ``ase-mlff eval``: energy per atom in
    meV/atom (relative to the mean reference energy per atom, so the ticks stay readable for
    molecules with energies of -10^4 eV) and force components in eV/Å; the titles give the
    MAE in meV/atom and meV/Å. Arrays in eV and eV/Å; ``n_atoms`` per frame."""
    from ..figures import figure, save

    n_atoms = np.broadcast_to(np.asarray(n_atoms, dtype=float), np.shape(E_ref))
    e_ref, e_pred = np.asarray(E_ref) / n_atoms, np.asarray(E_pred) / n_atoms
    shift = float(e_ref.mean())
    panels = [("energy per atom - mean (meV/atom)", 1e3 * (e_ref - shift), 1e3 * (e_pred - shift), 1.0, "meV/atom"),
              ("force component (eV/Å)", np.concatenate([np.ravel(f) for f in F_ref]),
               np.concatenate([np.ravel(f) for f in F_pred]), 1e3, "meV/Å")]
    fig = figure(6.8, 3.5)
    for k, (name, ref, pred, factor, unit) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8)
        ax.plot(ref, pred, ".", ms=2, alpha=0.5, color=f"C{k}")
        ax.ticklabel_format(useOffset=False)
        ax.set_title(f"MAE {np.abs(pred - ref).mean() * factor:.3g} {unit}", fontsize=9)
        ax.set_xlabel(f"reference {name}", fontsize=9)
        ax.set_ylabel(f"model {name}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path, dpi=120)


def run(args) -> int:
    """The ``train sgdml`` command: options (flags over --config over defaults), then
    :func:`train`, then the model file (and parity plot). Exit status 0, 1 (data), 2 (usage),
    130/143 (interrupted; resume with --resume)."""
    from ..io import save_model
    from .checkpoint import TrainingInterrupted, default_checkpoint_path

    def fail(msg, code):
        print(f"ase-mlff train sgdml: error: {msg}", file=sys.stderr)
        return code

    try:
        opts = _resolve(args)
        parse_sigmas(opts["sigmas"])
        if not opts.get("dataset"):
            raise UsageError("no dataset given (the first argument, or \"data\" in --config)")
        output = opts["output"]
        ckpt_path = opts["checkpoint"] or default_checkpoint_path(output)
        check_new_output(output, bool(opts["overwrite"]), bool(opts["resume"]), ckpt_path)
    except (UsageError, ValueError) as exc:
        return fail(exc, EXIT_USAGE)
    progress = timed_printer()
    lib = {o.name: opts[o.name] for o in OPTIONS if o.library and o.cli}
    lib["checkpoint"] = ckpt_path
    try:
        ds = read_training_data(opts["dataset"], opts["energy_unit"])
        progress(f"read {len(ds)} frames from {opts['dataset']}")
        model, rec = train(ds, progress=progress, stop_after=getattr(args, "_stop_after", None), _cli=True, **lib)
    except TrainingInterrupted as exc:
        print(exc.command_message("ase-mlff train sgdml"), file=sys.stderr)
        return exc.exit_code
    except UsageError as exc:  # e.g. a split whose held-out frames hold an element the training frames lack
        return fail(exc, EXIT_USAGE)
    except (MLFFError, OSError) as exc:
        return fail(command_line_message(str(exc)), EXIT_DATA)
    rec["command"] = " ".join(sys.argv)
    save_model(model, output, training=rec)
    if os.path.exists(ckpt_path):
        os.unlink(ckpt_path)  # the model holds everything the checkpoint did
    print(f"sGDML model written to {output} (sigma {rec['sigma']:g}, {rec['n_symmetries']} "
          f"symmetries, solver {rec['solver']}, {rec['n_train']} training geometries, "
          f"{rec['train_time_s']:.0f} s)")
    for name in ("valid", "test"):
        if rec["metrics"].get(name):
            print(format_metrics(name, rec["metrics"][name]))
    if rec["metrics"].get("train"):
        print(format_training_metrics(rec["metrics"]["train"], "hold out frames with --n-test N or give --test FILE"))
    if opts.get("plot"):
        test = read_training_data(opts["test"], opts["energy_unit"]) if opts.get("test") else ds
        arr = test.arrays()
        idx = np.asarray(rec["split"]["test"], dtype=np.int64)
        if len(idx):
            Ep, Fp = model.predict_numpy(arr["R"][idx])
            parity_plot(opts["plot"], Ep, arr["E"][idx], Fp, arr["F"][idx], arr["R"].shape[1],
                        title=f"sGDML test parity ({len(idx)} frames)")
            print(f"parity plot written to {opts['plot']}")
    return EXIT_OK


# ---------------------------------------------------------------------------------- committees
def _committee_plan(ds, options, *, n_member, seed, reference, say) -> CommitteePlan:
    """sGDML committees (:data:`COMMITTEE`): ``n_valid`` validation frames (stream
    "committee-validation" of ``seed``) are held out, to choose sigma and to calibrate; the rest
    is the pool. The served mean ("all") and each member (``n_member`` pool frames, default a
    quarter of the pool) are :func:`train_sgdml` with explicit ``train_indices``. A member's
    length scale is the served mean's (chosen by its own validation search) unless ``sigmas``
    is given, so that the spread reflects the data and not a noisy hyperparameter search on
    small subsets. ``options``: keywords of :func:`train_sgdml` (``n_valid``, ``sigmas``,
    ``lam``, ``symmetries``, ``solver``). Given reference energies are recorded only."""
    n_valid = int(options.pop("n_valid", 0) or 0)
    sigmas = options.pop("sigmas", None)
    for drop in ("n_train", "test", "n_test", "checkpoint", "resume"):
        options.pop(drop, None)
    M = len(ds)
    if n_valid >= M:
        raise DatasetError(f"{n_valid} validation frames leave no training frames: the data have {M}")
    valid = np.sort(random_stream(seed, "committee-validation").choice(M, n_valid, replace=False)).astype(np.int64)
    pool = np.setdiff1d(np.arange(M), valid)
    n_member = len(pool) // 4 if n_member is None else int(n_member)
    if not 1 <= n_member <= len(pool):
        raise DatasetError(f"{n_member} frames per member (--n-train) from a pool of {len(pool)} training frames")

    def fit_all():
        model, rep = train_sgdml(ds, len(pool), len(valid), sigmas=sigmas, seed=seed, train_indices=pool,
                                 valid_indices=valid, test_indices=np.zeros(0, np.int64), progress=say, **options)
        return model, {"sigma": rep["sigma"], "n_train": rep["n_train"], "valid": rep["valid"]}

    def member_trainer(served):
        member_sigmas = sigmas if sigmas is not None or served is None else [served.sigma]
        if member_sigmas is not None and len(member_sigmas) > 1 and not len(valid):
            raise DatasetError("choosing sigma for the members needs validation frames (--n-valid) or one --sigmas "
                               "value")

        def fit_member(idx, member_seed):
            m, rep = train_sgdml(ds, n_member, len(valid), sigmas=member_sigmas, seed=member_seed,
                                 train_indices=idx, valid_indices=valid, test_indices=np.zeros(0, np.int64),
                                 progress=say, **options)
            return m, {"sigma": rep["sigma"], "n_symmetries": rep["n_symmetries"], "train_indices": idx.tolist(),
                       "valid": rep["valid"], "trained_on": ["energy", "forces"]}

        return fit_member

    return CommitteePlan(pool=pool, held_out=valid, n_member=n_member,
                         report={"n_member": n_member, "n_pool": int(len(pool)), "valid_indices": valid.tolist()},
                         check={"served_train": pool, "validation": valid}, fit_all=fit_all,
                         mean_label=f"sGDML on all {len(pool)} training frames", member_trainer=member_trainer,
                         describe_given_mean=lambda mean: {"n_train": getattr(mean, "n_train", None),
                                                           "sigma": getattr(mean, "sigma", None)})


def _committee_command(args) -> CommitteeCommand:
    """``ase-mlff train sgdml --committee K``: --n-train is the frames per member."""
    try:
        opts = _resolve(args)
        sigmas = parse_sigmas(opts["sigmas"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not opts.get("dataset"):
        raise UsageError("no dataset given")
    options = {"n_valid": int(opts["n_valid"]), "sigmas": sigmas, "lam": float(opts["lam"]),
               "symmetries": opts["symmetries"], "solver": opts["solver"]}
    return CommitteeCommand(dataset=opts["dataset"], energy_unit=opts["energy_unit"], output=opts["output"],
                            overwrite=opts["overwrite"], options=options, n_member=int(opts["n_train"]),
                            seed=int(opts["seed"]), reference_energies=opts.get("reference_energies"))


#: ``ase-mlff train sgdml --committee K`` (:mod:`ase_mlff.training.committee`)
COMMITTEE = CommitteeHook(
    plan=_committee_plan, command=_committee_command, member_frames="--n-train",
    frames_default="a quarter of the training pool", held_out="the validation frames (--n-valid)",
    given_reference="given; recorded only (each sGDML model's energy constant absorbs sum e0)",
    no_reference=("none", "an sGDML model has one energy constant for the molecule, no per-element energies"))


def main(argv=None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m ase_mlff.training.sgdml_train",
                                                      description="Train an sGDML force field."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
