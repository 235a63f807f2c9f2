"""Recipe: fit a GAP (sparse GP on SOAP, plus a 2-body term) to energies, forces and virials.

Command line (also ``ase-mlff train gap ...``; options also from ``--config FILE.yaml``)::

    python -m ase_mlff.training.gap_train out/gap/si_train.xyz --test out/gap/si_test.xyz \\
        -o potentials/si_gap.mlff

The defaults are the recipe of docs/gap.md (the mlearn GAP settings for Si: SOAP cutoff 5.4 Å,
n_max = l_max = 8, atom sigma 0.5 Å, zeta 4, 1000 CUR sparse environments per element) plus the
2-body term (``--no-two-body`` leaves it out); the cutoff is a property of the material, so
set ``--cutoff`` for another one.

Steps: read the data (:func:`ase_mlff.data.read`); hold out ``--test`` (a file) or
``--n-test`` random frames; compute the SOAP vector of every training environment; choose
``--n-sparse`` representative environments per element (``--sparse-method`` cur: leverage
scores of the descriptor matrix, Csányi, Willatt & Ceriotti 2020, Eq. 6.11, sampled without replacement; fps: farthest
points in the kernel distance; random) after removing duplicate environments; build the design
matrix of every label (total energy, force components, the six virial components) against the
parameters ``x = [alpha, beta, e0]`` (:meth:`ase_mlff.models.gap.GAPModel.design`); weight each
row by its expected error; solve.

Expected errors (``Lambda``): ``--sigma-energy`` is per atom, so a frame of N atoms gets
``sigma_E sqrt(N)`` on its total energy; ``--sigma-virial`` likewise (the virial is
extensive); ``--sigma-force`` per component. ``--sigma-config-type`` overrides them per
config_type, e.g. ``Surface=0.005,0.2,0.2;Vacancy=0.003,0.1,0.1`` (or a mapping in the YAML
config). e0 (one per element) is fitted jointly with the GP, with a Gaussian prior of width
``--sigma-e0`` eV around zero, unless ``--reference-energies`` gives them (e.g. isolated-atom
energies): then they are fixed, their columns are left out of the solve and their part is
taken off the energy labels (:func:`ase_mlff.training.sparse_gp.solve`, ``fixed``).

Without test frames (no ``--test``, ``--n-test 0``) the errors on the training frames are
reported instead (``metrics["train"]``), labelled as training-set errors.

Solve (Csányi, Willatt & Ceriotti 2020, Eqs. 6.5-6.7; docs/references.md): minimise ``|Lambda^-1/2 (Phi x - y)|^2 + x^T P x`` with ``P`` the
block-diagonal prior (``K_MM`` of the sparse environments, ``K_UU`` of the sparse distances,
``1 / sigma_e0^2``), by a QR decomposition of the stacked matrix ``[Lambda^-1/2 Phi ; chol(P)^T]``
(never the normal equations, which square the condition number). The triangular factor is kept in
the model file for the predictive variance unless ``--no-variance``, with
``--variance-samples`` posterior samples drawn from it (stream "gap-posterior-samples" of
``--seed``) for the fast force and stress variance. Any failure of a factorisation is a
:class:`~ase_mlff.errors.TrainingError`.

Calibration (with the variance): the leave-one-frame-out errors and predictive variances of
the training frames, exact from the QR factor (:func:`ase_mlff.training.sparse_gp.leave_one_frame_out`),
give one factor per observable with the committees' definition (docs/uncertainty.md), so that
the mean calibrated variance equals the mean squared held-out error::

    c_E^2 = sum over frames dE^2 / sum over frames var_E
    c_F^2 = sum over atoms |dF_a|^2 / sum over atoms (var_Fx + var_Fy + var_Fz)
    c_S^2 = sum over stress components dS^2 / sum of their variances

(the force factor stands in for stress when no frame has a stress label, 1 for energies when
none has an energy; each factor is kept within the bounds a model file accepts, 1e-6 to 1e6).
They go into the model file (``hyperparameters.calibration``) with their record
(``training.calibration``), and with ``--test`` frames the record adds the calibrated
uncertainty's ratio to the errors on them (``test_check``).

Before anything is computed, test frames holding an element that no training frame holds are
refused (:func:`ase_mlff.training.common.check_split_elements`, exit status 2).

Checkpoints (:mod:`ase_mlff.training.checkpoint`; ``OUTPUT.ckpt`` on the command line): one is
written after the sparse environments are chosen (they are stored, so a resumed run skips the
descriptors), every ``--checkpoint-interval`` seconds while the design matrix is built (the
weighted rows of the frames done so far) and after the solve and its cross-validation (``x``,
``R`` and the held-out sums of the calibration; the posterior samples are drawn again from ``R``
and the seed). Ctrl-C or SIGTERM stops at the next of these points after writing the checkpoint
(exit 130 / 143; the QR and the cross-validation are not interruptible: a stop asked for during
them comes after them); ``--resume``
continues to the same model, bit for bit (every frame's rows depend on that frame alone and the
QR sees the same matrix). A checkpoint of other data or options is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from ..console import timed_printer
from ..metrics import format_metrics
from ..models.gap import DEFAULT_VARIANCE_SAMPLES, MAX_VARIANCE_SAMPLES
from .common import (IN_ENERGY_UNIT, REFERENCE_ENERGIES_HELP, GivenReferenceEnergies, Option, UsageError, add_options,
                     check_given_reference, check_new_output, check_split_elements, format_training_metrics,
                     model_metrics, observables, parse_reference_energies, read_training_data,
                     reference_energies_record, resolve_cli_options, resolve_options)
from .common import training_record as common_record
from . import sparse_gp
from .sparse_gp import cholesky_upper, has_virial, parse_config_type_sigmas

OPTIONS = (
    Option("energy_unit", None, "energy unit of the data file, e.g. kcal/mol (none: the unit the file states)"),
    Option("reference_energies", None, REFERENCE_ENERGIES_HELP.format(unit=IN_ENERGY_UNIT)
           + "; given e0 are fixed in the fit, not fitted (--sigma-e0 then plays no part)"),
    Option("test", None, "held-out test data file (none: --n-test random frames)", kind="dataset"),
    Option("n_test", 0, "frames held out at random when --test is not given (none held out: the training-set "
                        "errors are printed instead)", int),
    Option("cutoff", 5.4, "SOAP cutoff r_c (Å; the mlearn Si value of docs/gap.md: choose it for the material)",
           float),
    Option("cutoff_width", 0.5, "width of the cosine transition below the cutoff (Å)", float),
    Option("n_max", 8, "radial functions", int),
    Option("l_max", 8, "largest angular momentum", int),
    Option("atom_sigma", 0.5, "Gaussian width of each atom's density (Å)", float),
    Option("central_weight", 1.0, "weight of the centre atom's own Gaussian", float),
    Option("zeta", 4, "power of the normalised dot-product kernel", int),
    Option("delta", 1.0, "signal scale of the SOAP term (eV)", float),
    Option("n_sparse", 1000, "sparse environments per element", int),
    Option("sparse_method", "cur", "how sparse environments are chosen", choices=("cur", "fps", "random")),
    Option("two_body", True, "a 2-body term (its own sparse GP on pair distances), which carries most of the "
                             "binding energy (docs/gap.md)", kind="flag"),
    Option("two_body_cutoff", None, "2-body cutoff (Å; none: the SOAP cutoff)", float),
    Option("two_body_width", 1.0, "2-body cosine transition width (Å)", float),
    Option("two_body_delta", 1.0, "2-body signal scale (eV)", float),
    Option("two_body_theta", 1.0, "2-body squared-exponential length scale (Å)", float),
    Option("two_body_n_sparse", 20, "sparse distances per element pair (uniform grid)", int),
    *sparse_gp.solve_options(sigma_force=0.1, sigma_virial=0.1),
    Option("no_variance", False, "do not keep the factors of the predictive variance in the model file", kind="flag"),
    Option("variance_samples", DEFAULT_VARIANCE_SAMPLES, "posterior samples kept for the force and stress "
           f"uncertainty (1-{MAX_VARIANCE_SAMPLES}; more: less noise per atom, slower uncertainty)", int),
    Option("seed", 0, "seed of the random choices (test split, sparse points)", int),
    Option("checkpoint", None, "checkpoint file, removed after the model is saved "
                               "(none: OUTPUT.ckpt on the command line; no checkpoints in Python)"),
    Option("checkpoint_interval", 60.0, "least seconds between checkpoints while the design matrix is built (one "
                                        "is always written after the sparse points are chosen, after the solve "
                                        "and on Ctrl-C/SIGTERM)", float),
    Option("resume", False, "continue an interrupted run from its checkpoint (same data and options)", kind="flag"),
    Option("output", None, "model file to write (.mlff; required)", library=False, short="-o"),
    Option("overwrite", False, "replace an existing output model file", kind="flag", library=False),
    Option("report", None, "write the measured errors and timings to this JSON file", library=False),
)

#: options that do not change the fitted model (left out of a checkpoint's identity)
_NOT_MODEL = ("test", "checkpoint", "checkpoint_interval", "resume")
#: how to get test errors, in the command's words (printed beside training-set errors)
_HOLD_OUT = "hold out frames with --n-test N or give --test FILE"


#: why this recipe provides no committee hook (:mod:`ase_mlff.training.committee`; so ``train
#: gap`` has no ``--committee``), quoted when a GAP committee is asked for
NO_COMMITTEE = ("a GAP gives its own calibrated predictive variance, no committee needed "
                "(MLFFCalculator(model, uncertainty=True); docs/gap.md)")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("data", nargs="?", help="training data file (extxyz, npz, db ...; eV, Å; "
                                                "default: \"data\" in --config)")
    return add_options(parser, OPTIONS)


# ------------------------------------------------------------------------------ pieces
def select_sparse(X: np.ndarray, k: int, method: str, rng: np.random.Generator, zeta: int = 1) -> np.ndarray:
    """Indices of ``k`` representative rows of ``X`` (normalised descriptors), duplicates removed
    first (identical environments would make the sparse prior singular)."""
    _, first = np.unique(np.round(X, 10), axis=0, return_index=True)
    first = np.sort(first)
    if k >= len(first):
        return first
    Xu = X[first]
    if method == "random":
        pick = rng.choice(len(first), k, replace=False)
    elif method == "cur":
        u, s, _ = np.linalg.svd(Xu, full_matrices=False)
        rank = int((s > s[0] * 1e-10).sum())
        lev = (u[:, :rank] ** 2).sum(1)
        lev = lev / lev.sum()
        nz = int((lev > 0).sum())
        pick = rng.choice(len(first), min(k, nz), replace=False, p=lev)
        if len(pick) < k:
            rest = np.setdiff1d(np.arange(len(first)), pick)
            pick = np.concatenate([pick, rng.choice(rest, k - len(pick), replace=False)])
    elif method == "fps":
        pick = [int(rng.integers(len(first)))]
        dist = 2.0 - 2.0 * (Xu @ Xu[pick[0]]) ** zeta
        for _ in range(k - 1):
            nxt = int(np.argmax(dist))
            pick.append(nxt)
            dist = np.minimum(dist, 2.0 - 2.0 * (Xu @ Xu[nxt]) ** zeta)
        pick = np.array(pick)
    else:
        raise UsageError(f"unknown sparse method {method!r}")
    return first[np.sort(pick)]


def gap_prior(model, jitter: float, sigma_e0: float) -> list[tuple[slice, np.ndarray]]:
    """The prior blocks of :func:`ase_mlff.training.sparse_gp.solve` for ``model`` (its sparse
    points chosen): ``U^T U = K_MM + jitter delta^2`` of the sparse environments (first, also
    when empty), ``K_UU + jitter delta_2^2`` of the 2-body distances, ``1 / sigma_e0^2``."""
    M, U, S = sum(model.n_sparse), model.n_pair_sparse, len(model.species)
    Z = model.sparse.numpy()
    sp = model.sparse_species.numpy()
    Kmm = np.where(sp[:, None] == sp[None, :], Z @ Z.T, 0.0) ** model.zeta * model.delta ** 2
    Kmm[np.diag_indices(M)] += jitter * model.delta ** 2
    prior = [(slice(0, M), cholesky_upper(Kmm, "sparse environments") if M else np.zeros((0, 0)))]
    if U:
        two_body = model.two_body
        rs = model.pair_sparse.numpy()
        keys = model.pair_key_of().numpy()
        Kuu = two_body["delta"] ** 2 * np.exp(-0.5 * (rs[:, None] - rs[None, :]) ** 2 / two_body["theta"] ** 2)
        Kuu *= keys[:, None] == keys[None, :]
        Kuu[np.diag_indices(U)] += jitter * two_body["delta"] ** 2
        prior.append((slice(M, M + U), cholesky_upper(Kuu, "2-body sparse distances")))
    prior.append((slice(M + U, M + U + S), np.eye(S) / sigma_e0))
    return prior


def model_settings(opts: dict) -> tuple[dict, dict | None, dict, float]:
    """What the options say of the model: ``(common, two_body, variance, graph_cutoff)``, the
    keyword groups of :class:`~ase_mlff.models.gap.GAPModel` (``GAPModel(species,
    n_sparse=..., two_body=two_body, **variance, **common)``) and the reach of its graphs (Å)."""
    soap_h = {"cutoff": opts["cutoff"], "n_max": opts["n_max"], "l_max": opts["l_max"],
              "atom_sigma": opts["atom_sigma"], "cutoff_width": opts["cutoff_width"],
              "central_weight": opts["central_weight"]}
    two_body = None
    if opts["two_body"]:
        two_body = {"cutoff": float(opts["two_body_cutoff"] or opts["cutoff"]), "width": opts["two_body_width"],
                    "delta": opts["two_body_delta"], "theta": opts["two_body_theta"],
                    "n_sparse": int(opts["two_body_n_sparse"])}
    common = dict(soap=soap_h, zeta=opts["zeta"], delta=opts["delta"])
    variance = {"variance": not opts["no_variance"],
                "variance_samples": None if opts["no_variance"] else int(opts["variance_samples"])}
    graph_cutoff = max(float(opts["cutoff"]), two_body["cutoff"]) if two_body else float(opts["cutoff"])
    return common, two_body, variance, graph_cutoff


def frame_design(model, graph, frame) -> dict:
    """The design rows of one labelled ``frame`` (its ``graph``) as
    :func:`ase_mlff.training.sparse_gp.solve` takes them: ``{"energy", "forces", "virial"}``."""
    d = model.design(graph, forces=frame.forces is not None, virial=has_virial(frame))
    return {"energy": d["energy"][0], "forces": d["forces"], "virial": None if d["virial"] is None else d["virial"][0]}


def fit_gap(ds, train_idx, opts: dict, log=print, quiet: bool = False, ckpt=None,
            resume: tuple[dict, dict] | None = None, reference: GivenReferenceEnergies | None = None,
            keep: dict | None = None):
    """Build and solve the GAP on the frames ``train_idx`` of ``ds``; returns ``(model, info)``.

    ``ckpt``: a :class:`~ase_mlff.training.checkpoint.Checkpointer` whose safe points are called
    after the sparse points are chosen, after every frame's design rows and after the solve
    (module docstring); ``resume``: the ``(state, arrays)`` it loaded, to continue from;
    ``reference``: given e0 (:func:`~ase_mlff.training.common.parse_reference_energies`), held
    fixed instead of fitted; ``keep``: a dict that receives the solve's factor and weighted rows
    (:func:`ase_mlff.training.sparse_gp.solve`; not with a resume from a solved checkpoint),
    what an incremental refit continues from."""
    from ..graph import FrameGraphs
    from ..models.gap import GAPModel, draw_posterior_samples
    from ..rng import random_stream

    t0 = time.perf_counter()
    state, saved = resume or ({}, {})
    safe_point = ckpt.safe_point if ckpt is not None else (lambda snapshot, force=False: None)
    frames = [ds[int(i)] for i in train_idx]
    species = sorted({int(z) for f in frames for z in f.numbers})
    S = len(species)
    # given e0: checked against the training elements before any descriptor is computed
    given = check_given_reference(frames, species, reference, log) if reference is not None else None
    common, two_body, variance, graph_cutoff = model_settings(opts)
    graphs = FrameGraphs(frames, graph_cutoff)
    if "sparse" in saved:
        # 1-2. from the checkpoint: the chosen sparse points (the descriptors are not needed again)
        n_sparse, n_env = [int(n) for n in state["n_sparse"]], int(state["n_environments"])
        model = GAPModel(species, n_sparse=n_sparse, two_body=two_body, **variance, **common)
        model.sparse.copy_(torch.from_numpy(saved["sparse"]))
        model.pair_sparse.copy_(torch.from_numpy(saved["pair_sparse"]))
        log(f"resumed: sparse environments per element {dict(zip(species, n_sparse))} from the checkpoint")
    else:
        # 1. descriptors of every training environment (a model with no sparse points yet)
        probe = GAPModel(species, n_sparse=[0] * S, two_body=None, variance=False, **common)
        desc, desc_species, rmin = [], [], np.inf
        for k in sparse_gp.progress(range(len(frames)), "SOAP descriptors", quiet):
            g = graphs[k]
            s, q = probe.environments(g)
            desc.append(q)
            desc_species.append(s)
            vec = g.edge_vectors().numpy()
            if len(vec):
                rmin = min(rmin, float(np.linalg.norm(vec, axis=1).min()))
        X = np.concatenate(desc)
        xs = np.concatenate(desc_species)
        n_env = int(len(X))
        log(f"SOAP: {len(X)} environments, {X.shape[1]} components, {time.perf_counter() - t0:.1f} s")
        # 2. sparse environments
        rng = random_stream(opts["seed"], "sparse")
        chosen = [select_sparse(X[xs == a], int(opts["n_sparse"]), opts["sparse_method"], rng, opts["zeta"])
                  for a in range(S)]
        n_sparse = [len(c) for c in chosen]
        model = GAPModel(species, n_sparse=n_sparse, two_body=two_body, _defer_tables=True, **variance, **common)
        model.adopt_soap(probe.soap)  # the probe's tables: no second quadrature
        model.sparse.copy_(torch.from_numpy(np.concatenate([X[xs == a][c] for a, c in enumerate(chosen)])))
        del X, desc
        if two_body:
            lo = max(0.5, rmin if np.isfinite(rmin) else 0.5)
            grid = np.linspace(lo, two_body["cutoff"], two_body["n_sparse"])
            model.pair_sparse.copy_(torch.from_numpy(np.tile(grid, model.n_pair_keys)))
        log(f"sparse environments per element {dict(zip(species, n_sparse))} ({opts['sparse_method']})"
            + (f"; 2-body grid {model.n_pair_sparse} distances from {grid[0]:.2f} Å" if two_body else ""))
    # what every later checkpoint holds: the sparse points (a resumed run needs no descriptors)
    base_state = {"stage": "design", "n_sparse": n_sparse, "n_environments": n_env}
    base_arrays = {"sparse": model.sparse.numpy(), "pair_sparse": model.pair_sparse.numpy()}
    if "sparse" not in saved:
        safe_point(lambda: (base_state, base_arrays), force=True)
    # 3. prior blocks, then the weighted least-squares solve (ase_mlff.training.sparse_gp)
    prior = gap_prior(model, opts["jitter"], opts["sigma_e0"])
    Um = prior[0][1]

    def design(k):
        return frame_design(model, graphs[k], frames[k])

    if "x" in saved:
        x, R, fit_info = saved["x"], torch.from_numpy(saved.get("R", np.zeros((0, 0)))), dict(state["fit_info"])
        log("resumed: the solution from the checkpoint")
    else:
        def on_rows(n, rows):  # a safe point after every frame: the rows so far, when a checkpoint is due
            safe_point(lambda: ({**base_state, "design_frames": n}, {**base_arrays, "design_rows": rows}))

        done = (int(state["design_frames"]), saved["design_rows"]) if "design_rows" in saved else None
        if done is not None:
            log(f"resumed: design rows of {done[0]} of {len(frames)} frames from the checkpoint")
        x, R, fit_info = sparse_gp.solve(frames, design, model.n_parameters, prior,
                                         (opts["sigma_energy"], opts["sigma_force"], opts["sigma_virial"]),
                                         parse_config_type_sigmas(opts.get("sigma_config_type")), log=log,
                                         quiet=quiet, rows=done, on_rows=on_rows,
                                         fixed=None if given is None else given["e0"], cross_validate=model.variance,
                                         keep=keep)
        del done
        solved = {"x": x, **({"R": R.numpy()} if model.variance else {})}
        safe_point(lambda: ({**base_state, "stage": "solved", "fit_info": fit_info}, {**base_arrays, **solved}),
                   force=True)
    model.set_parameters(x)
    if given is None:
        ref = reference_energies_record(species, model.e0.numpy(), "fitted", "fitted jointly with the GP under a "
                                        f"Gaussian prior of width --sigma-e0 {opts['sigma_e0']:g} eV around 0")
    else:
        ref = reference_energies_record(species, model.e0.numpy(), "given", "given; held fixed in the fit",
                                        reference, mean_residual_per_atom_eV=given["mean_residual_per_atom_eV"])
    info = {"n_environments": n_env, "n_sparse": n_sparse, **fit_info, "fit_s": time.perf_counter() - t0,
            "reference_energies_eV": [float(v) for v in model.e0], "reference_energies": ref,
            "trained_on": observables(fit_info.get("labels") or {}),
            "resumed_from": state.get("stage") if resume else None}
    cv = info.pop("cross_validation", None)
    if model.variance:
        R = R.numpy()
        model.set_posterior(R, Um.T, draw_posterior_samples(R, model.variance_samples, opts["seed"]))
        factors, info["calibration"] = calibration_factors(cv)
        model.set_calibration(factors)
        log("uncertainty calibration (leave-one-frame-out): " + ", ".join(f"{k} {v:.3g}" for k, v in factors.items()))
    return model, info


def calibration_factors(cv: dict) -> tuple[dict[str, float], dict]:
    """The calibration factors (module docstring) from the sums of
    :func:`~ase_mlff.training.sparse_gp.leave_one_frame_out`; returns ``(factors, record)``."""
    from ..models.base import MIN_SCALE
    from ..models.committee import MAX_CALIBRATION

    record = {"method": "leave-one-frame-out cross-validation of the fit (exact, from its QR factor)",
              "n_frames": cv["n_frames"], "skipped_frames": cv["skipped"]}
    factors = {}
    for key in ("energy", "forces", "stress"):
        c = cv[key]
        if c["n"] == 0 or not c["sum_variance"] > 0:
            continue
        f = float(np.sqrt(c["sum_error2"] / c["sum_variance"]))
        record[key] = {"n": c["n"], "rms_error": float(np.sqrt(c["sum_error2"] / c["n"])),
                       "rms_sigma": float(np.sqrt(c["sum_variance"] / c["n"]))}
        if not MIN_SCALE <= f <= MAX_CALIBRATION:
            record[key]["clipped_from"] = f
            f = float(np.clip(f, MIN_SCALE, MAX_CALIBRATION))
        factors[key] = f
    if "forces" not in factors:
        factors["forces"] = 1.0
        record["forces"] = "no force labels: factor 1 (uncalibrated)"
    if "energy" not in factors:
        factors["energy"] = 1.0
        record["energy"] = "no energy labels: factor 1 (uncalibrated)"
    if "stress" not in factors:
        factors["stress"] = factors["forces"]
        record["stress"] = "no stress labels: the force factor is used"
    record["factors"] = {k: factors[k] for k in ("energy", "forces", "stress")}
    return record["factors"], record


def held_out_check(model, frames) -> dict:
    """How the calibrated uncertainty of ``model`` compares with its errors on held-out
    ``frames``: per observable the RMS error, the RMS uncertainty and their ratio (1 =
    calibrated), with the committees' definitions (forces per atom, stress per component)."""
    from .committee import committee_errors

    e = committee_errors(model, frames, calibrated=True)
    out = {}
    for key, err2, sig in (("energy", e["dE"] ** 2, e["sigma_E"]), ("forces", e["dF2"], e["sigma_F"]),
                           ("stress", (e["dS"] ** 2).ravel(), e["sigma_S"].ravel())):
        if len(err2) and np.mean(sig ** 2) > 0:
            rms_e, rms_s = float(np.sqrt(np.mean(err2))), float(np.sqrt(np.mean(sig ** 2)))
            out[key] = {"n": int(len(err2)), "rms_error": rms_e, "rms_sigma": rms_s, "ratio": rms_e / rms_s}
    return out


def train(data, progress=None, quiet: bool = True, stop_after: int | None = None, **options):
    """``ase_mlff.train("gap", data, **options)``: fit a GAP, evaluate on the held-out frames;
    returns ``(model, record)``, the record being the ``training`` dict of its model file.
    ``checkpoint``/``resume``/``checkpoint_interval`` (options) and ``stop_after`` (a stop after
    that many safe points, for tests): see the module docstring."""
    from ..errors import DatasetError, TrainingError
    from .checkpoint import Checkpointer, StopGuard, identity

    opts = resolve_options([o for o in OPTIONS if o.library], given=options)

    if not 1 <= int(opts["variance_samples"]) <= MAX_VARIANCE_SAMPLES:
        raise UsageError(f"--variance-samples must be from 1 to {MAX_VARIANCE_SAMPLES}, got {opts['variance_samples']}")
    log = progress or (lambda msg: None)
    t0 = time.perf_counter()
    reference = parse_reference_energies(opts["reference_energies"], opts["energy_unit"])
    ds = read_training_data(data, opts["energy_unit"])
    test_frames, test_idx = [], None
    if opts["test"] is not None:
        test_ds = read_training_data(opts["test"], opts["energy_unit"])
        test_frames = list(test_ds)
        train_idx = np.arange(len(ds))
    else:
        n_test = int(opts["n_test"])
        if not 0 <= n_test < len(ds):
            raise DatasetError(f"--n-test {n_test} leaves no training frames: the data have {len(ds)} frames")
        split = ds.split(len(ds) - n_test, 0, n_test, seed=opts["seed"])
        train_idx, test_idx = np.asarray(split.train), np.asarray(split.test)
        test_frames = [ds[int(i)] for i in test_idx]
    check_split_elements([ds[int(i)] for i in train_idx], {"test": test_frames})
    log(f"data: {len(ds)} frames; training on {len(train_idx)}, testing on {len(test_frames)}")
    # the given e0 enter the identity as the numbers used (eV), whatever file or unit they came from
    ident = identity("gap", ds.sha256(), {**{k: v for k, v in opts.items() if k not in _NOT_MODEL},
                                          "reference_energies": None if reference is None else
                                          {str(z): v for z, v in sorted(reference.energies.items())}})
    with StopGuard(stream=sys.stderr) as guard:
        ckpt = Checkpointer(opts["checkpoint"], ident, interval_s=float(opts["checkpoint_interval"]),
                            stop_after=stop_after, guard=guard)
        resume = None
        if opts["resume"]:
            resume = ckpt.load()
            log(f"resuming from {ckpt.path}: stage {resume[0].get('stage')}")
        elif ckpt.exists():
            raise TrainingError(f"checkpoint {ckpt.path} exists from an interrupted run; continue it with "
                                "--resume, or delete it to start over")
        model, info = fit_gap(ds, train_idx, opts, log=log, quiet=quiet, ckpt=ckpt, resume=resume,
                              reference=reference)
    metrics = {}
    if test_frames:
        t = time.perf_counter()
        metrics["test"] = model_metrics(model, test_frames)
        info["test_eval_s"] = time.perf_counter() - t
        log(format_metrics("test", metrics["test"]))
        if model.variance:
            info["calibration"]["test_check"] = check = held_out_check(model, test_frames)
            log("test frames, RMS error / RMS calibrated uncertainty: "
                + ", ".join(f"{k} {v['ratio']:.2f}" for k, v in check.items()))
    else:  # no held-out frames: at least the fit to the training frames, labelled as such
        t = time.perf_counter()
        train_frames = [ds[int(i)] for i in train_idx]
        metrics["train"] = model_metrics(model, train_frames)
        info["train_eval_s"] = time.perf_counter() - t
        log(format_training_metrics(metrics["train"]))
    info["total_s"] = time.perf_counter() - t0
    src = data if isinstance(data, (str, os.PathLike)) else getattr(ds, "source", None)
    rec = common_record(
        "gap", "ase_mlff.training.gap_train", data_sha256=ds.sha256(), source=None if src is None else str(src),
        seed=opts["seed"], options={**{k: v for k, v in opts.items() if k not in _NOT_MODEL},
                                    "reference_energies": None if reference is None else reference.given_as},
        split={"train": [int(i) for i in train_idx], "valid": None,
               "test": None if test_idx is None else [int(i) for i in test_idx]},
        metrics=metrics, method="sparse GP on SOAP (+2-body), projected process, QR solve (ase-mlff)",
        test_source=None if opts["test"] is None else str(opts["test"]), **info)
    return model, rec


def run(args) -> int:
    """The ``train gap`` command; returns the exit code (0, 1 bad data, 2 usage, 130/143
    interrupted after writing the checkpoint)."""
    from ..errors import MLFFError
    from ..io import save_model
    from .checkpoint import TrainingInterrupted, default_checkpoint_path
    from ..data import command_line_message

    def fail(msg, code):
        print(f"ase-mlff train gap: error: {msg}", file=sys.stderr)
        return code

    try:
        opts = resolve_cli_options(OPTIONS, args)
        ckpt_path = opts["checkpoint"] or default_checkpoint_path(opts["output"])
        check_new_output(opts["output"], bool(opts["overwrite"]), bool(opts["resume"]), ckpt_path)
        parse_config_type_sigmas(opts.get("sigma_config_type"))
    except UsageError as exc:
        return fail(exc, 2)
    except MLFFError as exc:
        return fail(command_line_message(str(exc)), 2)
    lib = {o.name: opts[o.name] for o in OPTIONS if o.library and o.cli}
    lib["checkpoint"] = ckpt_path
    try:
        model, rec = train(opts["data"], progress=timed_printer(), quiet=False,
                           stop_after=getattr(args, "_stop_after", None), **lib)
    except UsageError as exc:
        return fail(exc, 2)
    except TrainingInterrupted as exc:
        print(exc.command_message("ase-mlff train gap"), file=sys.stderr)
        return exc.exit_code
    except (MLFFError, OSError) as exc:
        return fail(command_line_message(str(exc)), 1)
    rec["command"] = " ".join(sys.argv)
    save_model(model, opts["output"], training=rec)
    if os.path.exists(ckpt_path):
        os.unlink(ckpt_path)  # the model holds everything the checkpoint did
    print(f"GAP model written to {opts['output']}: {model.describe()}; fit {rec['fit_s']:.0f} s")
    for name, m in rec["metrics"].items():
        print(format_training_metrics(m, _HOLD_OUT) if name == "train" else format_metrics(name, m))
        for ct, mm in sorted((m.get("per_config_type") or {}).items()):
            print("   " + format_metrics(ct, mm))
    if model.calibration is not None:
        cal = rec["calibration"]
        check = cal.get("test_check") or {}
        print("uncertainty calibration factors (leave-one-frame-out, " + f"{cal['n_frames']} frames): "
              + ", ".join(f"{k} {v:.3g}" for k, v in model.calibration.items())
              + ("; on the test frames RMS error / RMS uncertainty " + ", ".join(
                  f"{k} {v['ratio']:.2f}" for k, v in check.items()) if check else ""))
    if opts.get("report"):
        with open(opts["report"], "w") as fh:
            json.dump(rec, fh, indent=1)
    return 0


def main(argv=None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="ase-mlff train gap",
                                                      description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
