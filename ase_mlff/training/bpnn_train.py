"""Train Behler–Parrinello models: ``train_bpnn`` (Python) and ``ase-mlff train bpnn``.

    python -m ase_mlff.training.bpnn_train water.extxyz --cutoff 6 --n-train 256 --n-valid 32 \\
        --epochs 200 --output water_bpnn.mlff

The recipe:

1. split the frames (``Dataset.split``, seed): training, validation, test; a split whose validation
   or test frames hold an element the training frames lack is refused before anything is computed
   (:func:`ase_mlff.training.common.check_split_elements`);
2. symmetry functions chosen from the training frames (:func:`ase_mlff.descriptors.acsf.automatic_set`:
   stated library rule, then the selection of Hellström & Behler 2020, §13.3.3), and per-element scaling (mean/std);
3. per-element reference energies ``e0`` by least squares on the training energies (element
   counts), or given ones (``--reference-energies``, e.g. isolated-atom energies; the networks
   then learn ``E - sum e0``), energy scale ``s`` = RMS training force component (so the
   networks fit O(1) residuals);
4. Adam on the loss ``w_E mean((ΔE/N)²) + w_F mean(ΔF²)`` (eV²/atom², eV²/Å²; Hellström & Behler 2020, Eq. 13.24,
   per-atom energies as in Gastegger & Marquetand 2020, Eq. 12.4; docs/references.md), learning rate halved after ``patience`` epochs
   without a better validation loss; the model with the best validation loss is kept;
5. validation and test errors; without test frames, the errors on the training frames,
   labelled as training-set errors.

Fine-tuning (``init=PARENT``, ``--init PARENT``): steps 2 and 3 are skipped and the model
starts as a copy of PARENT, a trained BPNN: its symmetry functions, their per-element scaling
(mean, std, range), reference energies, energy scale, short-range prior and network weights. The
weights were trained against exactly that descriptor and those offsets, so nothing of it is
refitted on the new frames, and before the first epoch the model predicts what PARENT predicts,
bit for bit. Refused (InputError): a parent of another family; an element of the data that the
parent lacks (a BPNN has one network per element, and the parent's functions have no terms for
it); a given ``cutoff``, ``hidden``, ``activation``, ``dtype`` or ``repulsion`` that differs from
the parent's (omit them: they are the parent's). The selection options (``n_radial``, ``n_eta``,
``zetas``, ``max_correlation``) choose functions, which the parent fixes: they are not used.
Given reference energies that differ from the parent's are not used either (its networks learned
residuals relative to its own), and the log says so. The model file records the parent (path,
sha256) in ``training["parent"]``.

Why training is fast. The symmetry functions do not depend on the weights, so for every
training frame their values ``G`` and their derivatives with respect to the pair vectors,
``dG(i)/d(r_ij)`` ((P, F, 3): G5 has no ``r_jk`` term, so atom i's functions depend on i's
own pairs only), are computed once. A training step then needs only the networks: forces are
``F = −Σ_p (∂E/∂G(i_p)) · dG(i_p)/d(vec_p)`` scattered to ``i_p`` and ``j_p``, and the
gradient of the force loss flows through the small networks alone (no double backward through
the descriptor: ~40x faster per frame than autograd through :meth:`Model.compute`; the
test suite checks both give the same forces).
"""

from __future__ import annotations

import argparse
import resource
import sys
from typing import Callable, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ..descriptors.acsf import automatic_set, library_values
from ..errors import DatasetError, InputError, MLFFError
from ..graph import graph_from_structure
from ..metrics import metrics_of_errors
from ..models.bpnn import BPNNModel, FrameCache, cache_frame, collate, predict_cached  # noqa: F401
from ..models.prior import repulsion_for  # noqa: F401  (re-exported: the recipe and its tests use it)
from .checkpoint import TrainingInterrupted
from .network_committee import network_committee
from .common import (IN_ENERGY_UNIT, REFERENCE_ENERGIES_HELP, UsageError, check_given_reference, check_split_elements,
                     format_training_metrics, load_parent, model_metrics, parse_reference_energies,
                     reference_energies, reference_energies_record)

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


# ------------------------------------------------------------------------- model set-up

#: one line for ``ase-mlff train --help``
SUMMARY = "train a Behler-Parrinello network on atom-centred symmetry functions"


def prepare_model(frames, cutoff: float = 6.0, hidden: Sequence[int] = (25, 25), activation: str = "tanh",
                  n_radial: int = 8, n_eta: int = 4, zetas: Sequence[int] = (1, 2, 4),
                  max_correlation: float = 0.9, dtype: str = "float32", seed: int = 0,
                  species: Sequence[int] | None = None):
    """An untrained model whose functions, scaling, e0 and energy scale come from ``frames``.
    Returns ``(model, selection_report)``."""
    frames = list(frames)
    if any(f.energy is None or f.forces is None for f in frames):
        raise DatasetError("BPNN training needs energies and forces in every training frame")
    sfset, report = automatic_set(frames, cutoff, species=species, n_radial=n_radial, n_eta=n_eta, zetas=zetas,
                                  max_correlation=max_correlation)
    torch.manual_seed(seed)
    e0 = reference_energies(frames, sfset.species)
    f_rms = float(np.sqrt(np.mean(np.concatenate([np.ravel(f.forces) for f in frames]) ** 2)))
    model = BPNNModel.from_set(sfset, hidden=tuple(hidden), activation=activation, reference_energies=e0.tolist(),
                               energy_scale=max(f_rms, 1e-3), dtype=dtype)
    values = library_values(sfset, frames[:: max(1, len(frames) // 64)])
    for k, sel in enumerate(sfset.selected):
        model.set_scaling(k, values[k][:, sel])
    return model, report


#: the model options of a fresh model (``train_bpnn``'s None means these; with ``init``, the parent's)
ARCHITECTURE = {"cutoff": 6.0, "hidden": (25, 25), "activation": "tanh", "dtype": "float32", "repulsion": True}
#: the options that choose the symmetry functions of a fresh model (not used with ``init``)
SELECTION = {"n_radial": 8, "n_eta": 4, "zetas": (1, 2, 4), "max_correlation": 0.9}


def check_parent(parent: BPNNModel, frames, cutoff: float | None = None, hidden: Sequence[int] | None = None,
                 activation: str | None = None, dtype: str | None = None, repulsion: bool | None = None) -> None:
    """Raise InputError when a model of the given options on ``frames`` cannot start from
    ``parent`` (see the module docstring, "Fine-tuning"); None options are the parent's."""
    if getattr(parent, "family", None) != "bpnn":
        raise InputError(f"the parent is a {getattr(parent, 'family', type(parent).__name__)} model; only a bpnn "
                         "model can initialise a bpnn model")
    data = sorted({int(z) for f in frames for z in f.numbers})
    new = [z for z in data if z not in parent.species]
    if new:
        raise InputError(f"element(s) {', '.join(chemical_symbols[z] for z in new)} of the training frames are not "
                         f"in the parent model ({', '.join(parent.elements)}): a BPNN has one network per element "
                         "and the parent's symmetry functions have no terms for them; train from scratch (without "
                         "--init)")
    pc = parent.get_config()
    theirs = {"cutoff": float(parent.cutoff), "hidden": [int(h) for h in pc["hidden"]],
              "activation": pc["activation"], "dtype": pc["dtype"], "repulsion": pc.get("repulsion") is not None}
    given = {"cutoff": None if cutoff is None else float(cutoff),
             "hidden": None if hidden is None else [int(h) for h in hidden],
             "activation": activation, "dtype": dtype, "repulsion": repulsion}
    def shown(v):
        return ",".join(str(h) for h in v) if isinstance(v, list) else "off" if v is False else "on" if v is True else v

    for name, v in given.items():
        if v is not None and v != theirs[name]:
            raise InputError(f"--{name.replace('_', '-')} {shown(v)} differs from the parent's "
                             f"{shown(theirs[name])} (the architecture and descriptor of a fine-tuned model are "
                             "the parent's; omit the option)")


def model_from_parent(parent: BPNNModel) -> BPNNModel:
    """A copy of ``parent`` to fine-tune: the same configuration (symmetry functions, reference
    energies, energy scale, prior) and the same arrays (weights and scaling), nothing shared."""
    model = BPNNModel.from_config(parent.get_config())
    model.load_state_dict(parent.state_dict())
    return model


# ------------------------------------------------------------------------- training cache
def _loss(model, caches, w_e, w_f, create_graph=True):
    b = caches if isinstance(caches, dict) else collate(caches)
    E, F = predict_cached(model, b, create_graph)
    E_ref, n, F_ref = b["energy"], b["n"], b["forces"]
    de = (E - E_ref) / n
    df = F - F_ref
    loss = w_e * (de ** 2).mean() + w_f * (df.to(torch.float64) ** 2).mean()
    return loss, de.detach(), df.detach()


def _errors(de: np.ndarray, df: np.ndarray, n: np.ndarray) -> dict[str, float]:
    """The metrics table (:mod:`ase_mlff.metrics`) of per-frame energy errors per atom ``de``
    (eV), force component errors ``df`` (eV/Å) and atom counts ``n``."""
    return {"n_frames": int(len(de)), **metrics_of_errors(de * n, n, np.reshape(df, (-1, 3)))}


def evaluate_cached(model, caches, batch: int = 16) -> dict[str, float]:
    """Energy (meV/atom, meV per frame) and force (meV/Å) MAE/RMSE of cached frames."""
    des, dfs, ns = [], [], []
    for k in range(0, len(caches), batch):
        part = caches[k:k + batch]
        _, de, df = _loss(model, part, 1.0, 1.0, create_graph=False)
        des.append(de.numpy())
        dfs.append(df.numpy().ravel())
        ns.append([c.n_atoms for c in part])
    de, df, n = np.concatenate(des), np.concatenate(dfs), np.concatenate(ns)
    return _errors(de, df, n)


def evaluate_frames(model, frames) -> dict[str, float]:
    """The errors of :func:`evaluate_cached`, through the serving path (``Model.compute``)."""
    des, dfs, ns = [], [], []
    with torch.no_grad():
        for f in frames:
            out = model.compute(graph_from_structure(f, model.cutoff, dtype=model.dtype), forces=True)
            n = len(f.numbers)
            des.append((float(out.energy[0]) - f.energy) / n)
            dfs.append((out.forces.double().numpy() - f.forces).ravel())
            ns.append(n)
    de, df, n = np.array(des), np.concatenate(dfs), np.array(ns)
    return _errors(de, df, n)


# ------------------------------------------------------------------------- the loop
def trainer_options(epochs: int = 100, lr: float = 3e-3, batch_size: int = 8, energy_weight: float = 10.0,
                    force_weight: float = 1.0, patience: int = 10, stop_patience: int = 30, ema: float = 0.99,
                    min_lr: float = 1e-5, dtype: str = "float32", seed: int = 0, device: str = "cpu",
                    reference_energies: dict[str, float] | None = None, fit_reference: bool = True):
    """The BPNN recipe as options of the shared trainer: Adam (AdamW without decay), rate
    halved after ``patience`` epochs without a better validation loss, floor ``min_lr``,
    early stop after ``stop_patience`` such epochs, EMA of the weights; ``reference_energies``
    (element -> eV) given instead of fitted; ``fit_reference=False`` keeps the model's own
    (a fine-tuned model's, from its parent)."""
    from .trainer import TrainerOptions

    return TrainerOptions(epochs=epochs, batch_size=batch_size, lr=lr, energy_weight=energy_weight,
                          force_weight=force_weight, schedule="plateau", lr_factor=0.5, lr_patience=patience,
                          min_lr=min_lr, ema=ema, patience=stop_patience, dtype=dtype, seed=seed,
                          device=device, reference_energies=reference_energies, fit_reference=fit_reference).check()


def fit(model: BPNNModel, train_frames, valid_frames, options=None, **kwargs):
    """Train ``model`` on labelled frames with the shared trainer
    (:func:`ase_mlff.training.trainer.train_network`; the BPNN's ``training_batch`` hook makes
    each step run the networks only). ``kwargs`` go to ``train_network`` (``checkpoint``,
    ``resume``, ``log``, ``stop_after``, ...). Returns ``(model, record)``."""
    from .trainer import train_network

    kwargs.setdefault("plots", False)
    return train_network(model, train_frames, valid_frames, options or trainer_options(), **kwargs)


def train_bpnn(dataset, n_train: int, n_valid: int, n_test: int | None = None, seed: int = 0,
               cutoff: float | None = None, hidden: Sequence[int] | None = None, activation: str | None = None,
               n_radial: int | None = None, n_eta: int | None = None, zetas: Sequence[int] | None = None,
               max_correlation: float | None = None, dtype: str | None = None, epochs: int = 100, lr: float = 3e-3,
               batch_size: int = 8, energy_weight: float = 10.0, force_weight: float = 1.0, patience: int = 10,
               progress: Callable[[str], None] | None = None, checkpoint=None, resume: bool = False,
               stop_after: int | None = None, stop_patience: int = 30, ema: float = 0.99,
               repulsion: bool | None = None, repulsion_width: float = 0.5, device: str = "cpu",
               reference_energies=None, init=None):
    """Split ``dataset`` (:class:`ase_mlff.data.Dataset`), prepare (or, with ``init``, copy from a
    parent) and fit a model with the shared trainer; returns ``(model, report)`` with the split,
    the selection report, the parent, validation/test errors (training-set errors without test
    frames), the reference energies and the trainer's record (``report["record"]``).
    ``reference_energies``: given e0 (a
    :class:`~ase_mlff.training.common.GivenReferenceEnergies`, or anything
    :func:`~ase_mlff.training.common.parse_reference_energies` reads, in eV). ``init``: a
    trained BPNN (model or file path) to fine-tune (module docstring, "Fine-tuning"). Model
    options left None are :data:`ARCHITECTURE` and :data:`SELECTION` (fresh) or the parent's."""
    from .trainer import reference_record

    say = progress or (lambda msg: None)
    given = parse_reference_energies(reference_energies)
    split = dataset.split(n_train, n_valid, n_test, seed=seed)
    frames = dataset.frames
    train_f = [frames[k] for k in split.train]
    valid_f = [frames[k] for k in split.valid]
    test_f = [frames[k] for k in split.test]
    parent, parent_info = (None, None) if init is None else load_parent(init, "bpnn")
    check_split_elements(train_f, {"validation": valid_f, "test": test_f})
    species = sorted({int(z) for f in train_f for z in f.numbers})
    if parent is not None:
        # everything of the model is the parent's: checked before anything is computed
        check_parent(parent, train_f + valid_f + test_f, cutoff, hidden, activation, dtype, repulsion)
        model = model_from_parent(parent)
        pc = model.get_config()
        cutoff, hidden, activation, dtype = model.cutoff, list(pc["hidden"]), pc["activation"], pc["dtype"]
        repulsion = pc.get("repulsion") is not None
        selection = {chemical_symbols[z]: {"kept": [int(i) for i in sel], "dropped": [], "n_library": None}
                     for z, sel in zip(model.species, model.sfset.selected)}
        e0 = dict(zip(model.elements, pc["reference_energies"]))
        differ = [] if given is None else [el for el, z in zip(model.elements, model.species)
                                           if z in given.energies
                                           and abs(given.energies[z] - e0[el]) > 1e-9 * max(1.0, abs(e0[el]))]
        if differ:
            say(f"--reference-energies: the parent's e0 of {', '.join(differ)} are kept (its networks learned "
                "residuals relative to them)")
        parent_info.update({"family": "bpnn", "elements": list(model.elements), "reference_energies": e0})
        say(f"initialised from {parent_info['path'] or 'the given model'} (sha256 {parent_info['sha256']}): its "
            "symmetry functions, scaling, reference energies and weights")
        given_e0 = None
        sel_opts = {k: None for k in SELECTION}  # not used: the parent's functions
    else:
        cutoff = ARCHITECTURE["cutoff"] if cutoff is None else cutoff
        hidden = ARCHITECTURE["hidden"] if hidden is None else hidden
        activation = activation or ARCHITECTURE["activation"]
        dtype = dtype or ARCHITECTURE["dtype"]
        repulsion = ARCHITECTURE["repulsion"] if repulsion is None else repulsion
        sel_opts = {k: SELECTION[k] if v is None else v for k, v in (
            ("n_radial", n_radial), ("n_eta", n_eta), ("zetas", zetas), ("max_correlation", max_correlation))}
        given_e0 = None if given is None else dict(zip(
            [chemical_symbols[z] for z in species], check_given_reference(train_f, species, given, say)["e0"]))
        model, selection = prepare_model(train_f, cutoff, hidden, activation, sel_opts["n_radial"],
                                         sel_opts["n_eta"], sel_opts["zetas"], sel_opts["max_correlation"],
                                         dtype, seed)
        if repulsion:
            rep = repulsion_for(train_f, model.species, cutoff, repulsion_width)
            model.set_repulsion(rep)
            say("short-range prior: ZBL below " + ", ".join(
                f"{chemical_symbols[a]}-{chemical_symbols[b]} {rep['inner'][p][q]:.2f} Å"
                for p, a in enumerate(model.species) for q, b in enumerate(model.species) if p <= q)
                + f" (fully on {rep['width']:.2f} Å closer)")
        say("symmetry functions: " + ", ".join(f"{k} {len(v['kept'])} of {v['n_library']}"
                                               for k, v in selection.items()))
    options = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test, "seed": seed, "cutoff": cutoff,
               "hidden": list(hidden), "activation": activation,
               **{k: list(v) if isinstance(v, tuple) else v for k, v in sel_opts.items()}, "dtype": dtype,
               "epochs": epochs, "lr": lr, "batch_size": batch_size, "energy_weight": energy_weight,
               "force_weight": force_weight, "patience": patience, "stop_patience": stop_patience, "ema": ema,
               "repulsion": repulsion, "repulsion_width": repulsion_width if parent is None else None,
               "reference_energies": None if given is None else given.given_as}
    opts = trainer_options(epochs, lr, batch_size, energy_weight, force_weight, patience, stop_patience, ema,
                           dtype=dtype, seed=seed, device=device, reference_energies=given_e0,
                           fit_reference=parent is None)
    model.keep_scaling = parent is not None  # the parent's scaling stays (its weights were trained on it)
    try:
        model, record = fit(model, train_f, valid_f, opts, checkpoint=checkpoint, resume=resume, log=say,
                            stop_after=stop_after)
    finally:
        model.keep_scaling = False
    if parent is not None:
        reference = reference_energies_record(model.species, model.config["reference_energies"], "parent",
                                              "the parent's (its networks learned residuals relative to them)")
    else:
        reference = reference_record(record, given)
    report = {"split": {k: getattr(split, k).tolist() for k in ("train", "valid", "test")}, "options": options,
              "selection": {k: {"kept": v["kept"], "n_dropped": len(v["dropped"])} for k, v in selection.items()},
              "parent": parent_info,
              "history": record.history, "record": record, "train_time_s": record.train_time_s,
              "valid": evaluate_frames(model, valid_f) if valid_f else None,
              "peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
              "data_sha256": dataset.sha256(), "source": getattr(dataset, "source", None),
              "reference_energies": reference, "trained_on": record.trained_on}
    if test_f:
        report["test"] = evaluate_frames(model, test_f)
    else:  # nothing held out for testing: at least the fit to the training frames, labelled as such
        report["train"] = model_metrics(model, train_f)
        say(format_training_metrics(report["train"]))
    return model, report


# ------------------------------------------------------------------------- command line
def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = (parser.description or "") + (
        " Units: energies eV, lengths Å, forces eV/Å (other units: --energy-unit/--length-unit). "
        "Symmetry functions are chosen from the training frames (G2 grid, G5; the selection rules of Hellström "
        "& Behler 2020, 'High-Dimensional Neural Network Potentials for Atomistic Simulations'); "
        "per-element tanh networks are fitted to energies and forces.")
    a = parser.add_argument
    a("dataset", help="training data (extxyz, ASE db, npz) with energies and forces")
    a("--output", "-o", default="bpnn.mlff", help="model file to write (default bpnn.mlff)")
    a("--overwrite", action="store_true", help="replace an existing output file")
    a("--energy-unit", default=None, help="energy unit of the data when not eV")
    a("--length-unit", default=None, help="length unit of the data when not Å")
    a("--reference-energies", default=None, metavar="FILE|El=E,...",
      help=REFERENCE_ENERGIES_HELP.format(unit=IN_ENERGY_UNIT))
    a("--n-train", type=int, required=True, help="training frames")
    a("--n-valid", type=int, required=True, help="validation frames (learning-rate schedule, best model)")
    a("--n-test", type=int, default=None, help="test frames (default: all the rest; without any, the training-set "
                                               "errors are printed instead)")
    a("--seed", type=int, default=0, help="split, initial weights and batch order")
    a("--cutoff", type=float, default=None, help="cutoff radius in Å (default 6; with --init the parent's)")
    a("--hidden", default=None, help="hidden layer widths, comma-separated (default 25,25; with --init the "
                                     "parent's)")
    a("--activation", default=None, choices=["tanh", "silu"], help="(default tanh; with --init the parent's)")
    a("--n-radial", type=int, default=None, help="G2 shifts per element pair before selection (default 8)")
    a("--n-eta", type=int, default=None, help="G5 widths per element before selection (default 4)")
    a("--zetas", default=None, help="G5 zeta values (default 1,2,4), each with lambda = -1 and +1")
    a("--max-correlation", type=float, default=None, help="drop functions correlated above this (default 0.9)")
    a("--dtype", default=None, choices=["float32", "float64"], help="(default float32; with --init the parent's)")
    a("--init", default=None, metavar="MODEL",
      help="start from this pre-trained bpnn model file (fine-tuning): its symmetry functions, scaling, reference "
           "energies and weights are kept, so the selection options above do not apply")
    a("--epochs", type=int, default=100)
    a("--lr", type=float, default=3e-3, help="initial Adam learning rate (default 3e-3)")
    a("--batch-size", type=int, default=8, help="frames per step (default 8)")
    a("--energy-weight", type=float, default=10.0, help="weight of (energy error per atom)^2, eV^-2 (default 10)")
    a("--force-weight", type=float, default=1.0, help="weight of (force error)^2, Å^2/eV^2 (default 1)")
    a("--patience", type=int, default=10, help="epochs without improvement before halving the rate")
    a("--stop-patience", type=int, default=30, help="epochs without improvement before stopping (0: never)")
    a("--ema", type=float, default=0.99, help="decay of the moving average of the weights (0: off)")
    a("--no-repulsion", dest="repulsion", action="store_false", default=None,
      help="no short-range prior (ZBL below the smallest distance of each element pair in the training frames)")
    a("--repulsion-width", type=float, default=0.5, help="Å over which the prior switches on (default 0.5)")
    a("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="training device (default cpu)")
    a("--no-plots", dest="plots", action="store_false", help="no learning-curve and parity PNGs beside the model")
    a("--plot-dir", default=None, help="folder of the learning-curve and parity PNGs (default: beside the model)")
    a("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop after k safe points
    a("--checkpoint", default=None, help="checkpoint file (default OUTPUT.ckpt)")
    a("--resume", action="store_true", help="continue from the checkpoint of an interrupted run")
    return parser


def run(args) -> int:
    from .trainer import run_recipe

    return run_recipe("ase-mlff train bpnn", _run, args)  # under torchrun: one process group (see _run)


def _run(args, ddp) -> int:
    """The command on one process; under torchrun every rank trains, rank 0 alone checks and
    writes the files and prints, and a failure on any rank stops all of them."""
    from ..console import timed_printer
    from .checkpoint import default_checkpoint_path
    from .trainer import read_recipe_data, recipe_failure, save_recipe_result

    prog = "ase-mlff train bpnn"
    fail = recipe_failure(prog)
    ckpt = args.checkpoint or default_checkpoint_path(args.output)
    progress = timed_printer() if ddp.is_main else (lambda msg: None)

    def integer_lists():
        try:
            return ([int(h) for h in str(args.hidden).split(",")] if args.hidden is not None else None,
                    [int(z) for z in str(args.zetas).split(",")] if args.zetas is not None else None)
        except ValueError:
            raise UsageError("--hidden and --zetas take comma-separated integers") from None

    got = read_recipe_data(args, ddp, prog, ckpt, integer_lists)
    if isinstance(got, int):
        return got
    ds, reference, (hidden, zetas) = got
    progress(f"read {len(ds)} frames from {args.dataset}")
    try:
        model, report = train_bpnn(ds, args.n_train, args.n_valid, args.n_test, seed=args.seed, cutoff=args.cutoff,
                                   hidden=hidden, activation=args.activation, n_radial=args.n_radial,
                                   n_eta=args.n_eta, zetas=zetas, max_correlation=args.max_correlation,
                                   dtype=args.dtype, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                   energy_weight=args.energy_weight, force_weight=args.force_weight,
                                   patience=args.patience, progress=progress, checkpoint=ckpt, resume=args.resume,
                                   stop_patience=args.stop_patience, ema=args.ema, repulsion=args.repulsion,
                                   repulsion_width=args.repulsion_width, device=args.device,
                                   stop_after=args.stop_after, reference_energies=reference, init=args.init)
    except TrainingInterrupted as exc:
        if ddp.is_main:  # the rank that wrote the checkpoint
            print(exc.command_message(prog), file=sys.stderr)
        return exc.exit_code
    except UsageError as exc:  # e.g. a split whose test frames hold an element the training frames lack
        return fail(exc, EXIT_USAGE)
    except MLFFError as exc:
        return fail(exc, EXIT_DATA)
    rec = {k: report[k] for k in ("options", "split", "selection", "valid", "test", "train", "train_time_s",
                                  "peak_memory_bytes", "source", "reference_energies", "trained_on", "parent")
           if k in report and (k != "parent" or report[k] is not None)}
    rec["data_sha256"] = report["data_sha256"]
    rec["epochs_run"] = len(report["history"])
    rec["trainer"] = report["record"].as_dict()
    try:
        save_recipe_result(model, rec, report, ds, args, progress, ddp)
    except (MLFFError, OSError) as exc:
        return fail(exc, EXIT_DATA)
    if not ddp.is_main:
        return EXIT_OK
    functions = ", ".join(f"{k} {len(v['kept'])} functions" for k, v in report["selection"].items())
    print(f"BPNN model written to {args.output} ({functions}" + (f"; fine-tuned from {args.init}" if args.init else "")
          + ")")
    for name in ("valid", "test"):
        m = report.get(name)
        if m:
            print(f"{name:5s} ({m['n_frames']} frames): energy RMSE {m['energy_per_atom_rmse_meV']:.3f} meV/atom, "
                  f"MAE {m['energy_per_atom_mae_meV']:.3f} meV/atom; forces RMSE {m['forces_rmse_meV_per_A']:.1f} meV/Å, "
                  f"MAE {m['forces_mae_meV_per_A']:.1f} meV/Å")
    if report.get("train"):
        print(format_training_metrics(report["train"], "hold out test frames with --n-test N"))
    return EXIT_OK


# ------------------------------------------------------------------------- committees
#: ``ase-mlff train bpnn --committee K``: the split and member scheme of the shared trainer's
#: recipes (:func:`~ase_mlff.training.network_committee.network_committee`). Each member is a
#: :func:`train_bpnn` model whose symmetry functions are selected from its own frames; a warm
#: start (``train_committee(init=...)``) keeps each parent's (:func:`check_parent`).
COMMITTEE = network_committee("bpnn", train_bpnn, lambda parent, frames, options: check_parent(
    parent, frames, **{k: options.get(k) for k in ("cutoff", "hidden", "activation", "dtype", "repulsion")}))


def main(argv=None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m ase_mlff.training.bpnn_train",
                                                      description="Train a Behler-Parrinello force field."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
