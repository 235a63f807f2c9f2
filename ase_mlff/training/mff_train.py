"""Recipe: train a 2+3-body GP on a dataset, map it onto splines, evaluate, save an ``mff`` model.

Command line (also ``ase-mlff train mff ...``)::

    python -m ase_mlff.training.mff_train data/mlearn_pbe/Ni_train.extxyz \\
        -o potentials/ni_mff.mlff --rc2 5.0 --rc3 3.7 --n-test 60 --n-energy 8 --n-force-atoms 120 \\
        --hyper-force-atoms 40 --hyper-energy 4 --h2 0.1 --h3 0.1 --samples-per-interval 2 --n-gp-eval 6

Steps: read the data (:func:`ase_mlff.data.read`), hold out ``--n-test`` frames (random,
``--seed``; every random choice has its own named stream of the seed, see
:mod:`ase_mlff.rng`: "split", "stratified", "force-atoms", "hyper-force-atoms"), refuse test
frames that hold an element no training frame holds (before any fit), pick ``--n-energy``
training energies spread over the energy distribution and
the forces of ``--n-force-atoms`` random atoms of random training frames, fit per-element
reference energies by least squares (or take them from ``--reference-energies``: then they
stay fixed through the fit and are not refitted after the mapping), optimise the GP
hyperparameters by the log marginal
likelihood on a smaller subset, train the GP, map it onto splines, and report the errors of
the GP and of the mapped model against DFT on the test frames (the GP on the first
``--n-gp-eval`` of them: it is ~1e3-1e4 times slower) and the mapped-vs-GP difference. With no
test frames (``--n-test 0`` and no ``--test``) the mapped model's errors on its training frames
are reported instead, labelled as training-set errors.

Checkpoints (:mod:`ase_mlff.training.checkpoint`): the hyperparameter search is checkpointed
after every length-scale evaluation, the sparse fit's design matrix (the rows of the frames done
so far) every ``--checkpoint-interval`` seconds while it is built, the GP after its fit, the
mapping after every spline block (element pair / triple); Ctrl-C or SIGTERM stops at the next of these points after
writing the checkpoint (exit 130 / 143) and ``--resume`` continues to the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


from ..console import timed_printer
from ..metrics import format_metrics, frame_metrics
from .committee import CommitteeCommand, CommitteeHook, CommitteePlan
from .common import (IN_ENERGY_UNIT, REFERENCE_ENERGIES_HELP, Option, UsageError, add_options, check_given_reference,
                     check_new_output, check_split_elements, format_training_metrics, observables,
                     parse_reference_energies, predict_frames, read_training_data, reference_energies,
                     reference_energies_record, resolve_cli_options, resolve_options)
from .common import training_record as common_record
from .sparse_gp import solve_options

#: options that change the trained model (recorded in checkpoints; a resume must match them)

#: one line for ``ase-mlff train --help``
SUMMARY = "train a 2/3-body GP and map it onto splines (MFF)"

MODEL_OPTIONS = ("rc2", "rc3", "n_test", "n_energy", "n_force_atoms", "atoms_per_frame", "hyper_energy",
                 "hyper_force_atoms", "no_optimise", "l2", "l3", "h2", "h3", "samples_per_interval", "seed",
                 "fit", "n_sparse2", "n_sparse3", "sigma_energy", "sigma_force", "sigma_virial",
                 "sigma_config_type", "sigma_e0", "jitter", "sigma2", "sigma3", "width2", "width3",
                 "triplets", "h3jk", "reference_energies")

#: every option of ``train mff``: library keyword, flag and config key (docs/training.md)
OPTIONS = (
    Option("energy_unit", None, "energy unit of the data file, e.g. kcal/mol (none: the unit the file states)"),
    Option("reference_energies", None, REFERENCE_ENERGIES_HELP.format(unit=IN_ENERGY_UNIT)
           + "; given e0 stay fixed through the fit"),
    Option("rc2", 5.0, "2-body cutoff (Å; 0: no 2-body term)", float),
    Option("rc3", 3.7, "3-body cutoff (Å; 0: no 3-body term)", float),
    Option("test", None, "held-out test data file (none: --n-test random frames of the data)", kind="dataset"),
    Option("n_test", 60, "frames held out for testing when --test is not given (0: the training-set errors are "
                         "printed instead)", int),
    Option("write_test", None, "write the held-out test frames to this extxyz file", library=False),
    Option("fit", "sparse", "sparse: inducing-point GP on every energy, force and virial of the training "
                            "frames; full: exact GP on --n-energy energies and --n-force-atoms atoms",
           choices=("sparse", "full")),
    Option("n_sparse2", 40, "sparse fit: inducing distances per element pair", int),
    Option("n_sparse3", 1000, "sparse fit: inducing triangles per species triple (farthest points)", int),
    *solve_options(sigma_force=0.05, sigma_virial=0.02, scope="sparse fit: "),
    Option("n_energy", 8, "full fit: training energies (sparse fit: energies of the hyperparameter search)", int),
    Option("n_force_atoms", 100, "full fit: atoms whose forces are used", int),
    Option("atoms_per_frame", 2, "force atoms taken per frame", int),
    Option("hyper_energy", 4, "energies in the hyperparameter subset", int),
    Option("hyper_force_atoms", 40, "force atoms in the hyperparameter subset", int),
    Option("no_optimise", False, "keep the initial hyperparameters", kind="flag"),
    Option("l2", 0.8, "initial 2-body length scale (Å)", float),
    Option("l3", 1.0, "initial 3-body length scale (Å)", float),
    Option("sigma2", 1.0, "initial 2-body amplitude (eV)", float),
    Option("sigma3", 0.1, "initial 3-body amplitude (eV)", float),
    Option("width2", None, "sparse fit: width of the 2-body cutoff transition (Å; none: the whole cutoff, "
                           "the original MFF cutoff that is 1/2 at rc2/2)", float),
    Option("width3", None, "sparse fit: width of the 3-body cutoff transition (Å; none: the whole cutoff; a "
                           "narrow transition needs a finer --h3 to keep the mapping exact)", float),
    Option("triplets", "triangle", "sparse fit: 3-body points; triangle: one symmetric function of the three "
                                   "sides, every side below rc3 (the original MFF); centred: a function per "
                                   "centre atom of its two arms (below rc3) and the third side (below 2 rc3), "
                                   "the form of uf3 and Stillinger-Weber", choices=("triangle", "centred")),
    Option("h2", 0.1, "2-body spline knot spacing (Å; LAMMPS export: rc2/h2 <= ~55)", float),
    Option("h3", 0.1, "3-body spline knot spacing (Å; LAMMPS export: rc3/h3 <= ~45)", float),
    Option("h3jk", None, "centred triplets: knot spacing along the third side r_jk, which spans [0, 2 rc3] "
                         "(Å; none: --h3; LAMMPS export: 2 rc3/h3jk <= ~55)", float),
    Option("samples_per_interval", 2, "GP samples per 3-body spline interval (LS fit)", int),
    Option("n_gp_eval", 8, "test frames on which the unmapped GP is evaluated", int),
    Option("seed", 0, "seed of the random streams (test split, training energies and force atoms)", int),
    Option("checkpoint", None, "checkpoint file, removed after the model is saved "
                               "(none: OUTPUT.ckpt on the command line; no checkpoints in Python)"),
    Option("checkpoint_interval", 60.0, "least seconds between checkpoints (one is always written after "
                                        "the fit, and on Ctrl-C/SIGTERM)", float),
    Option("resume", False, "continue an interrupted run from its checkpoint (same data and options)", kind="flag"),
    Option("output", None, "model file to write (.mlff; required)", library=False, short="-o"),
    Option("overwrite", False, "replace an existing output model file", kind="flag", library=False),
    Option("report", None, "write the measured errors and timings to this JSON file", library=False),
    Option("plot", None, "write a parity plot (PNG) of the mapped model on the test frames", library=False),
)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("data", nargs="?", help="training data file (extxyz, npz, db ...; eV, Å; "
                                                "default: \"data\" in --config)")
    return add_options(parser, OPTIONS)


def _pick_force_atoms(dataset, pool, n_atoms, per_frame, rng):
    frames = rng.permutation(pool)
    out, total = [], 0
    for f in frames:
        if total >= n_atoms:
            break
        fr = dataset[int(f)]
        if fr.forces is None:
            continue
        k = min(per_frame, len(fr), n_atoms - total)
        out.append((int(f), np.sort(rng.choice(len(fr), k, replace=False))))
        total += k
    return out


def _check_counts(args, n_frames: int) -> None:
    from ..errors import DatasetError

    for flag, v in (("--n-test", args.n_test), ("--n-energy", args.n_energy), ("--n-force-atoms", args.n_force_atoms),
                    ("--atoms-per-frame", args.atoms_per_frame), ("--hyper-energy", args.hyper_energy),
                    ("--hyper-force-atoms", args.hyper_force_atoms), ("--n-gp-eval", args.n_gp_eval)):
        if v < 0:
            raise _UsageError(f"{flag} must be a non-negative integer, got {v}")
    if args.rc2 <= 0 and args.rc3 <= 0:
        raise _UsageError("at least one of --rc2 and --rc3 must be positive")
    widths = [w for w in (getattr(args, "width2", None), getattr(args, "width3", None)) if w is not None]
    h3jk = getattr(args, "h3jk", None)
    if h3jk is not None and (getattr(args, "triplets", "triangle") != "centred" or not h3jk > 0):
        raise _UsageError("--h3jk needs --triplets centred (a triangle's third side shares the arms' grid) "
                          "and a positive spacing")
    if getattr(args, "triplets", "triangle") == "centred":
        if getattr(args, "fit", "full") == "full" or not args.no_optimise:
            raise _UsageError("--triplets centred needs the sparse fit and --no-optimise (the marginal-likelihood "
                              "search uses the full GP's triangles); give --l2 --l3 --sigma2 --sigma3")
    if widths and getattr(args, "fit", "full") == "full":
        raise _UsageError("--width2/--width3 need the sparse fit (--fit sparse)")
    if widths and not args.no_optimise:
        raise _UsageError("--width2/--width3 need --no-optimise: the marginal-likelihood search uses the "
                          "full GP with the original cutoff; give --l2 --l3 --sigma2 --sigma3")
    for flag, w, rc in (("--width2", getattr(args, "width2", None), args.rc2),
                        ("--width3", getattr(args, "width3", None), args.rc3)):
        if w is not None and not 0 < w <= rc:
            raise _UsageError(f"{flag} must be in (0, cutoff], got {w}")
    if args.n_test >= n_frames:
        raise DatasetError(f"--n-test {args.n_test} leaves no training frames: the data have {n_frames} frames")


_UsageError = UsageError  # old name


def train_mff(args, ds, log=print, checkpoint=None, resume: bool = False, checkpoint_interval: float = 60.0,
              stop_after: int | None = None):
    """Train the GP, map it, evaluate; returns ``(model, gp, report)``. ``args``: the parsed
    options (an ``argparse.Namespace`` of :func:`configure_parser`); ``ds``: the dataset.
    ``checkpoint``/``resume``/``stop_after``: see :mod:`ase_mlff.training.checkpoint`."""
    from ..calculator import MLFFCalculator
    from ..rng import random_stream
    from .checkpoint import Checkpointer, StopGuard, identity
    from .mff_gp import Hyper, NBodyGP

    t_start = time.perf_counter()
    test_file = getattr(args, "test", None)
    if test_file is not None:
        args.n_test = 0
    _check_counts(args, len(ds))
    reference = parse_reference_energies(getattr(args, "reference_energies", None),
                                         getattr(args, "energy_unit", None))  # in the data's unit, like the data
    # given e0 enter the identity as the numbers used (eV), whatever file or unit they came from
    ident = identity("mff", ds.sha256(), {**{k: getattr(args, k, None) for k in MODEL_OPTIONS if k != "test"},
                                          "reference_energies": None if reference is None else
                                          {str(z): v for z, v in sorted(reference.energies.items())}})
    split = ds.split(len(ds) - args.n_test, 0, args.n_test, seed=args.seed)
    pool = split.train
    # the test frames are read (and checked) now, not after the fit: a test element that no training
    # frame holds would otherwise surface only after the whole fit and mapping
    if test_file is not None:
        test = list(read_training_data(test_file, getattr(args, "energy_unit", None)))
    else:
        test = [ds[int(i)] for i in split.test]
    check_split_elements([ds[int(i)] for i in pool], {"test": test})
    energy_pool = [int(i) for i in pool if ds[int(i)].energy is not None]
    energy_frames = [int(i) for i in ds.select_stratified(np.array(energy_pool), n=min(args.n_energy, len(energy_pool)),
                                                          seed=args.seed)] if args.n_energy > 0 else []
    force_atoms = _pick_force_atoms(ds, pool, args.n_force_atoms, args.atoms_per_frame,
                                    random_stream(args.seed, "force-atoms"))
    hyper_energy = energy_frames[: args.hyper_energy]
    hyper_force = _pick_force_atoms(ds, [f for f, _ in force_atoms], args.hyper_force_atoms, args.atoms_per_frame,
                                    random_stream(args.seed, "hyper-force-atoms"))
    species = ds.elements
    n_test = len(split.test) if test_file is None else f"the frames of {test_file}"
    if args.fit == "sparse":
        log(f"data: {len(ds)} frames, elements {species}; sparse fit on all {len(pool)} training frames, "
            f"test {n_test}; hyperparameters from {len(hyper_energy)} energies and "
            f"{sum(len(a) for _, a in hyper_force)} force atoms")
    else:
        log(f"data: {len(ds)} frames, elements {species}; training pool {len(pool)}, test {n_test}; "
            f"{len(energy_frames)} energies, {sum(len(a) for _, a in force_atoms)} force atoms")
    gp = NBodyGP(species, rc2=args.rc2, rc3=args.rc3,
                 hyper=Hyper(l2=args.l2, l3=args.l3, sigma2=args.sigma2, sigma3=args.sigma3),
                 width2=getattr(args, "width2", None), width3=getattr(args, "width3", None),
                 triplets=getattr(args, "triplets", "triangle"))
    e0, given = None, None
    if reference is not None:
        given = check_given_reference([ds[int(i)] for i in energy_pool], gp.species, reference, log)
        e0 = given["e0"]
    elif energy_frames:
        e0 = reference_energies([ds[int(i)] for i in energy_pool], gp.species)

    with StopGuard(stream=sys.stderr) as guard:
        ckpt = Checkpointer(checkpoint, ident, interval_s=checkpoint_interval, stop_after=stop_after, guard=guard)
        state, saved = {}, {}
        if resume:
            state, saved = ckpt.load()
            log(f"resuming from {ckpt.path}: stage {state.get('stage')}")
        elif ckpt.exists():
            from ..errors import TrainingError

            raise TrainingError(f"checkpoint {ckpt.path} exists from an interrupted run; continue it with "
                                "--resume, or delete it to start over")
        evaluations = list(state.get("evaluations", []))
        blocks = {k: v for k, v in saved.items() if k.startswith("coef")}

        def snapshot():
            fitted = "alpha" in arrays_fit or "sparse_x" in arrays_fit
            st = {"stage": "mapping" if fitted else "hyperparameters", "evaluations": evaluations}
            st.update(fit_state)
            return st, {**arrays_fit, **blocks}

        fit_state = {k: state[k] for k in ("hyper", "lml", "history") if k in state}
        arrays_fit = {k: saved[k] for k in ("alpha", "sparse_x") if k in saved}

        def on_evaluation(rec):
            evaluations.append(rec)
            ckpt.safe_point(snapshot)

        sparse_info = None
        if args.fit == "sparse":
            from .mff_sparse import fit_sparse, restore_sparse
            from .nbody_labels import build_labels

            if "hyper" in fit_state:
                gp.hyper = Hyper(**fit_state["hyper"])
                gp.history = list(fit_state.get("history", []))
                gp.log_marginal_likelihood = fit_state.get("lml")
            else:
                if not args.no_optimise and (hyper_energy or hyper_force):
                    sub = build_labels(ds, list(hyper_energy), list(hyper_force), gp.species, gp.rc2, gp.rc3,
                                       e0 if e0 is not None else np.zeros(len(gp.species)))
                    gp.optimise_hyperparameters(sub, log=log, replay=evaluations, on_evaluation=on_evaluation)
                else:
                    gp.log_marginal_likelihood = None
                fit_state.update(hyper=gp.hyper.as_dict(), lml=gp.log_marginal_likelihood, history=gp.history)
                ckpt.safe_point(snapshot, force=True)
            train_frames = [ds[int(i)] for i in pool]
            sparse_kw = dict(n2=args.n_sparse2, n3=args.n_sparse3, seed=args.seed)
            if "sparse_x" in arrays_fit:
                restore_sparse(gp, train_frames, x=arrays_fit["sparse_x"], **sparse_kw)
            else:
                from .sparse_gp import parse_config_type_sigmas

                def on_rows(n, rows):  # a safe point after every frame's design rows (sparse_gp.solve)
                    def design_snapshot():
                        st, arrays = snapshot()
                        return {**st, "stage": "design", "design_frames": n}, {**arrays, "design_rows": rows}

                    ckpt.safe_point(design_snapshot)

                done = (int(state["design_frames"]), saved["design_rows"]) if "design_rows" in saved else None
                if done is not None:
                    log(f"resuming the sparse design matrix after {done[0]} of {len(train_frames)} frames")
                sparse_info = fit_sparse(gp, train_frames, sigmas=(args.sigma_energy, args.sigma_force, args.sigma_virial),
                                         config_type_sigmas=parse_config_type_sigmas(args.sigma_config_type),
                                         jitter=args.jitter, sigma_e0=args.sigma_e0, log=log, quiet=False,
                                         rows=done, on_rows=on_rows, e0=None if given is None else e0, **sparse_kw)
                del done
                arrays_fit["sparse_x"] = gp.sparse_x
                ckpt.safe_point(snapshot, force=True)
        elif "alpha" in arrays_fit:
            gp.hyper = Hyper(**fit_state["hyper"])
            gp.history = list(fit_state["history"])
            gp.fit(ds, energy_frames=energy_frames, force_atoms=force_atoms, e0=e0, optimise=False,
                   alpha=arrays_fit["alpha"])
            gp.log_marginal_likelihood = fit_state["lml"]
        else:
            gp.fit(ds, energy_frames=energy_frames, force_atoms=force_atoms, e0=e0,
                   hyper_subset=(hyper_energy, hyper_force), optimise=not args.no_optimise, log=log,
                   replay=evaluations, on_evaluation=on_evaluation)
            fit_state.update(hyper=gp.hyper.as_dict(), lml=float(gp.log_marginal_likelihood), history=gp.history)
            arrays_fit["alpha"] = gp.alpha
            ckpt.safe_point(snapshot, force=True)
        log(f"GP trained: {gp.hyper.as_dict()}  timings {gp.timings}")

        def on_block(key, coef):
            blocks[key] = coef
            ckpt.safe_point(snapshot)

        model = gp.to_mff(h2=args.h2, h3=args.h3, samples_per_interval=args.samples_per_interval, log=log,
                          done=dict(blocks), on_block=on_block, h3jk=getattr(args, "h3jk", None))
    if energy_pool and args.fit == "full" and given is None:
        # Forces fix the n-body functions, energies only weakly (sigma_e may go to its bound):
        # re-fit the per-element constants e0 by least squares on all training-pool energies
        # with the mapped model (cheap), and give the GP the same e0. (Given e0 stay as given.)
        e0_old = model.e0.numpy().copy()
        model.set_splines(e0=np.zeros(len(model.species)))
        calc0 = MLFFCalculator(model)
        counts, resid = [], []
        for i in energy_pool:
            fr = ds[int(i)]
            a = fr.to_atoms()
            a.calc = calc0
            resid.append(fr.energy - a.get_potential_energy())
            counts.append([np.sum(fr.numbers == z) for z in model.species])
        e0_new = np.linalg.lstsq(np.array(counts, float), np.array(resid), rcond=None)[0]
        model.set_splines(e0=e0_new)
        gp.e0 = e0_new
        log(f"reference energies e0: {e0_old} -> {e0_new} (least squares on {len(energy_pool)} energies)")

    mapped_calc = MLFFCalculator(model)
    gp_calc = MLFFCalculator(gp.as_model())
    t = time.perf_counter()
    pred_mapped = predict_frames(mapped_calc, test)
    err_mapped = frame_metrics(test, pred_mapped)
    sub = test[: args.n_gp_eval]
    err_mapped_sub = frame_metrics(sub, pred_mapped[: len(sub)])
    t_mapped = time.perf_counter() - t
    t = time.perf_counter()
    pred_gp = predict_frames(gp_calc, sub)
    err_gp_sub = frame_metrics(sub, pred_gp)
    t_gp = time.perf_counter() - t
    diff = [pm["forces"] - pg["forces"] for pm, pg in zip(pred_mapped, pred_gp)]
    mapped_vs_gp = 1e3 * float(np.sqrt(np.mean(np.concatenate(diff) ** 2))) if diff else None
    err_train = None
    if not test:  # nothing held out: at least the fit to the training frames, labelled as such
        train_frames = [ds[int(i)] for i in pool]
        err_train = frame_metrics(train_frames, predict_frames(mapped_calc, train_frames))
        log(format_training_metrics(err_train))
    if given is not None:
        ref = reference_energies_record(gp.species, gp.e0, "given", "given; held fixed in the fit", reference,
                                        mean_residual_per_atom_eV=given["mean_residual_per_atom_eV"])
    elif args.fit == "sparse":
        ref = reference_energies_record(gp.species, gp.e0, "fitted", "fitted jointly with the sparse GP under a "
                                        f"Gaussian prior of width --sigma-e0 {args.sigma_e0:g} eV around 0")
    else:
        ref = reference_energies_record(gp.species, gp.e0, "fitted", "least squares on the training energies "
                                        "(refitted with the mapped model)" if energy_pool else
                                        "none: no training frame has an energy")
    report = {
        "command": " ".join(sys.argv) if sys.argv else None,
        "data": getattr(args, "data", None) or getattr(ds, "source", None),
        "data_sha256": ds.sha256(),
        "seed": args.seed,
        "test_source": None if test_file is None else str(test_file),
        "fit": args.fit,
        "sparse": sparse_info,
        "split": {"n_pool": len(pool), "n_test": len(test), "test_indices": [int(i) for i in split.test],
                  "pool_indices": [int(i) for i in pool]},
        "training_labels": gp.n_labels,
        "energy_frames": energy_frames,
        "hyperparameters": gp.hyper.as_dict(),
        "log_marginal_likelihood": gp.log_marginal_likelihood,
        "reference_energies_eV": gp.e0.tolist(),
        "reference_energies": ref,
        "trained_on": observables(gp.n_labels or {}),
        "grid": {"rc2": model.rc2, "n2": model.n2, "rc3": model.rc3, "n3": model.n3, "n3jk": model.n3jk},
        "timings_s": {**gp.timings, "eval_mapped_s": t_mapped, "eval_gp_s": t_gp},
        "test_mapped": err_mapped,
        "test_subset_mapped": err_mapped_sub,
        "test_subset_gp": err_gp_sub,
        "train_mapped": err_train,
        "mapped_vs_gp_forces_rmse_meV_per_A": mapped_vs_gp,
        "resumed": bool(resume),
        "total_s": time.perf_counter() - t_start,
    }
    return model, gp, report


def training_record(model, gp, report: dict, options: dict, ds) -> dict:
    """The ``training`` dict of an MFF model file: the shared record (split, metrics, units,
    seed) plus the GP's results, and a periodic training frame for ``export --lammps``."""
    from ..export.lammps import example_frame_index, structure_record

    extra = {}
    held_out = set(report["split"]["test_indices"])
    k = example_frame_index(ds, model.species, [i for i in range(len(ds)) if i not in held_out])
    if k is not None:  # lets `ase-mlff export --lammps` write a runnable example without the data
        extra["example_structure"] = structure_record(ds[k].to_atoms(), f"frame {k} of {report['data']}")
    return common_record(
        "mff", "ase_mlff.training.mff_train", data_sha256=report["data_sha256"], source=report["data"],
        seed=report["seed"], options=options,
        split={"train": report["split"]["pool_indices"], "valid": None, "test": report["split"]["test_indices"]},
        metrics={"test": report["test_mapped"], "test_subset": report["test_subset_mapped"],
                 "test_subset_gp": report["test_subset_gp"],
                 **({"train": report["train_mapped"]} if report.get("train_mapped") else {})},
        method="2+3-body GP mapped onto splines (ase-mlff)",
        mapped_vs_gp_forces_rmse_meV_per_A=report["mapped_vs_gp_forces_rmse_meV_per_A"],
        hyperparameters=report["hyperparameters"], log_marginal_likelihood=report["log_marginal_likelihood"],
        reference_energies_eV=report["reference_energies_eV"], reference_energies=report["reference_energies"],
        trained_on=report["trained_on"], training_labels=report["training_labels"],
        energy_frames=report["energy_frames"], train_time_s=report["total_s"], resumed=report["resumed"],
        **extra)


def train(data, progress=None, stop_after: int | None = None, _cli: bool = False, **options):
    """``ase_mlff.train("mff", data, **options)``: train the GP, map it, evaluate; returns
    ``(model, record)``, the record being the ``training`` dict its model file gets. ``data``:
    a Dataset or a path; ``options``: the names of :data:`OPTIONS`."""
    opts = resolve_options([o for o in OPTIONS if o.library], given=options)
    ds = read_training_data(data, opts["energy_unit"])
    args = argparse.Namespace(**opts)
    args.data = data if isinstance(data, (str, os.PathLike)) else getattr(ds, "source", None)
    model, gp, report = train_mff(args, ds, log=progress or (lambda msg: None), checkpoint=opts["checkpoint"],
                                  resume=bool(opts["resume"]), checkpoint_interval=float(opts["checkpoint_interval"]),
                                  stop_after=stop_after)
    given = report["reference_energies"]
    rec = training_record(model, gp, report, {**opts, "reference_energies": given.get("given_as")}, ds)
    rec["_report"] = report  # taken out by run() (--report); not saved
    return model, rec


def _parity(path, model, frames) -> None:
    from ..calculator import MLFFCalculator
    from .sgdml_train import parity_plot

    calc = MLFFCalculator(model)
    E_ref, E_pred, F_ref, F_pred, n = [], [], [], [], []
    for fr in frames:
        if fr.energy is None or fr.forces is None:
            continue
        atoms = fr.to_atoms()
        atoms.calc = calc
        E_pred.append(atoms.get_potential_energy())
        F_pred.append(atoms.get_forces())
        E_ref.append(fr.energy)
        F_ref.append(fr.forces)
        n.append(len(fr))
    if E_ref:
        parity_plot(path, np.array(E_pred), np.array(E_ref), F_pred, F_ref, np.array(n),
                    title=f"MFF test parity ({len(E_ref)} frames)")


def run(args) -> int:
    """The ``train mff`` command: options (flags over --config over defaults), then
    :func:`train`, then the model file; returns the exit code (0, 1 bad data, 2 usage,
    130/143 interrupted)."""
    from ..errors import MLFFError
    from ..io import save_model
    from .checkpoint import TrainingInterrupted, default_checkpoint_path
    from ..data import command_line_message

    def fail(msg, code):
        print(f"ase-mlff train mff: error: {msg}", file=sys.stderr)
        return code

    try:
        opts = resolve_cli_options(OPTIONS, args)
        output = opts["output"]
        ckpt_path = opts["checkpoint"] or default_checkpoint_path(output)
        check_new_output(output, bool(opts["overwrite"]), bool(opts["resume"]), ckpt_path)
        if opts.get("write_test") and os.path.exists(opts["write_test"]) and not opts["overwrite"]:
            raise UsageError(f"{opts['write_test']} exists; pass --overwrite to replace it")
    except UsageError as exc:
        return fail(exc, 2)
    progress = timed_printer()
    lib = {o.name: opts[o.name] for o in OPTIONS if o.library and o.cli}
    lib["checkpoint"] = ckpt_path
    try:
        ds = read_training_data(opts["data"], opts["energy_unit"])
        model, rec = train(ds, progress=progress,
                           stop_after=getattr(args, "_stop_after", None), _cli=True, **lib)
    except UsageError as exc:
        return fail(exc, 2)
    except TrainingInterrupted as exc:
        print(exc.command_message("ase-mlff train mff"), file=sys.stderr)
        return exc.exit_code
    except (MLFFError, OSError) as exc:
        return fail(command_line_message(str(exc)), 1)
    report = rec.pop("_report")
    rec["source"] = report["data"] = opts["data"]
    rec["command"] = " ".join(sys.argv)
    save_model(model, output, training=rec)
    if os.path.exists(ckpt_path):
        os.unlink(ckpt_path)  # the model holds everything the checkpoint did
    print(f"MFF model written to {output} (rc2 {model.rc2:g} Å, rc3 {model.rc3:g} Å, "
          f"{report['total_s']:.0f} s)")
    for name, m in rec["metrics"].items():
        if name == "train":
            print(format_training_metrics(m, "hold out frames with --n-test N or give --test FILE"))
        elif m.get("n_frames"):
            print(format_metrics(name, m))
    if opts.get("report"):
        with open(opts["report"], "w") as fh:
            json.dump(report, fh, indent=1)
    if opts.get("write_test"):
        import ase.io

        held = ds if opts.get("test") is None else read_training_data(opts["test"], opts["energy_unit"])
        idx = report["split"]["test_indices"] if opts.get("test") is None else range(len(held))
        ase.io.write(opts["write_test"], [held[int(i)].to_atoms() for i in idx], format="extxyz")
        print(f"held-out test frames written to {opts['write_test']}")
    if opts.get("plot"):
        _parity(opts["plot"], model, [ds[int(i)] for i in report["split"]["test_indices"]])
        print(f"parity plot written to {opts['plot']}")
    return 0


# ---------------------------------------------------------------------------------- committees
def options_namespace(**overrides) -> argparse.Namespace:
    """The options of ``ase-mlff train mff`` (defaults) with ``overrides`` by Python name."""
    from ..errors import InputError

    args = configure_parser(argparse.ArgumentParser()).parse_args(["data", "-o", "unused.mlff"])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise InputError(f"unknown MFF training option(s): {', '.join(sorted(unknown))}")
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def _jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _committee_plan(ds, options, *, n_member, seed, reference, say) -> CommitteePlan:
    """MFF committees (:data:`COMMITTEE`): the data are split into the training pool and
    ``n_test`` held-out frames (``Dataset.split``, ``seed``), which calibrate; the served mean
    ("all") and each member (``n_member`` pool frames, default half of the pool) are
    :func:`train_mff` on their frames with no test frames of their own. ``options``: those of
    ``ase-mlff train mff`` by their Python names (``rc2``, ``rc3``, ``n_test``, ``n_energy``,
    ``n_force_atoms``, ``h2``, ...), or ``args``, its parsed flags."""
    from ..errors import DatasetError

    args = options.pop("args", None) or options_namespace(**options)
    if reference is not None:
        args.reference_energies = reference
    n_test = int(args.n_test)
    if n_test >= len(ds):
        raise DatasetError(f"--n-test {n_test} leaves no training frames: the data have {len(ds)} frames")
    split = ds.split(len(ds) - n_test, 0, n_test, seed=seed)
    pool, held = split.train, split.test
    n_member = len(pool) // 2 if n_member is None else int(n_member)
    if not 1 <= n_member <= len(pool):
        raise DatasetError(f"{n_member} frames per member from a pool of {len(pool)} training frames")
    # every model (mean and members) is also evaluated on a --test file, when one is given
    test = [] if getattr(args, "test", None) is None else list(
        read_training_data(args.test, getattr(args, "energy_unit", None)))

    def fit(indices, member_seed):
        a = argparse.Namespace(**{**vars(args), "n_test": 0, "n_gp_eval": 0, "seed": member_seed})
        model, _gp, rep = train_mff(a, ds[indices], log=say)
        return model, rep

    def fit_all():
        model, rep = fit(pool, seed)
        return model, {"hyperparameters": rep["hyperparameters"]}

    def fit_member(idx, member_seed):
        m, rep = fit(idx, member_seed)
        return m, {"train_indices": idx.tolist(), "hyperparameters": rep["hyperparameters"],
                   "trained_on": rep["trained_on"]}

    report = {"n_member": n_member, "n_pool": int(len(pool)), "held_out_indices": held.tolist(),
              "options": {k: v for k, v in vars(args).items() if not k.startswith("_") and _jsonable(v)}}
    return CommitteePlan(pool=pool, held_out=held, n_member=n_member, report=report,
                         check={"served_train": pool, "test": test}, fit_all=fit_all,
                         mean_label=f"MFF on all {len(pool)} training frames", member_trainer=lambda served: fit_member)


def _committee_command(args) -> CommitteeCommand:
    """``ase-mlff train mff --committee K``: the flags over --config over defaults, as in
    ``train mff`` itself."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    given.update(resolve_options([o for o in OPTIONS if o.cli], args, extra=("data",), aliases={"dataset": "data"}))
    if not given.get("data") or not given.get("output"):
        raise UsageError("give the data file and -o/--output")
    return CommitteeCommand(dataset=given["data"], energy_unit=given.get("energy_unit"), output=given["output"],
                            overwrite=given.get("overwrite"), options={"args": argparse.Namespace(**given)},
                            n_member=args.committee_frames, seed=int(given.get("seed") or 0),
                            reference_energies=given.get("reference_energies"))


#: ``ase-mlff train mff --committee K`` (:mod:`ase_mlff.training.committee`)
COMMITTEE = CommitteeHook(plan=_committee_plan, command=_committee_command)


def main(argv=None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="ase-mlff train mff", description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
