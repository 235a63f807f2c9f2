"""Train SchNet models: ``train_schnet`` (Python) and ``ase-mlff train schnet``.

    ase-mlff train schnet ethanol.npz --energy-unit kcal/mol --n-train 1000 --n-valid 100 -o ethanol.mlff
    ase-mlff train schnet paracetamol.npz --init pretrained.mlff --freeze embedding --n-train 100 ...

The recipe:

1. split the frames (``Dataset.split``, seed): training, validation, test; a split whose validation
   or test frames hold an element that neither the training frames nor ``--init``'s parent know is
   refused before anything is built (:func:`ase_mlff.training.common.check_split_elements`);
2. a fresh model (random weights from the seed), or with ``--init PARENT`` a copy of a
   pre-trained SchNet (transfer learning as in Krawczuk & Venturi 2020; see below);
3. the shared trainer (:func:`ase_mlff.training.trainer.train_network`): per-element reference
   energies (fitted on the training frames, or given with ``--reference-energies``, e.g.
   isolated-atom energies: the network then learns ``E - sum e0``) and energy scale (fresh
   models only), AdamW on energies per atom, forces and, with ``--stress-weight``, stresses,
   plateau schedule, EMA, early stopping, checkpoints/resume; forces are autograd derivatives
   and the loss is differentiated through them;
4. validation and test errors through the serving path (``Model.compute``); without test
   frames, the errors on the training frames, labelled as training-set errors.

Transfer learning. ``--init PARENT`` starts from PARENT's weights; ``--freeze`` names the
parameter groups (``embedding``, ``interactions``, ``output``; repeatable or comma-separated)
kept fixed: Krawczuk & Venturi's schemes TL1-TL3 are no ``--freeze`` (fine-tune everything), ``--freeze embedding``
and ``--freeze embedding,interactions`` (train the output network only). What a pre-trained
model means must not change under it, so the new model keeps PARENT's cutoff, widths, energy
scale and reference energies (the networks learned residuals relative to them; refitting
``e0`` on a few frames would shift every atomic energy the network was trained to give). An
element absent from PARENT gets a new random embedding row and a reference energy fitted on
the training residuals (or the given one, ``--reference-energies``: given values of elements
the parent knows are not used, and the log says so); with a frozen embedding it could never
learn one, so that is refused,
as are a different cutoff or width (the filters are functions of distance on [0, r_c]) and a
parent of another family. The model file records the parent (path, sha256 of the file,
frozen groups) in its ``training["parent"]``.

Frozen parameters get ``requires_grad = False``: the shared trainer builds its optimizer,
weight average (EMA) and gradient clipping from the trainable parameters only, so AdamW's
weight decay never touches them either, and they stay bit-identical (same dtype: with
``--init`` the training dtype defaults to the parent's, so no cast rounds them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ..errors import DatasetError, InputError, MLFFError, OutputExistsError
from ..graph import graph_from_structure
from ..models.prior import repulsion_for
from ..models.schnet import GROUPS, SchNetModel
from .network_committee import network_committee
from .common import (check_given_reference, check_split_elements, format_training_metrics, load_parent,
                     parse_reference_energies, reference_energies_record)

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2
#: architecture of a fresh model (a small SchNet: 64 features, as the Materials Project model
#: of Schütt, Tkatchenko & Müller 2020, §11.4; 3 blocks, 25 Gaussians)
ARCHITECTURE = {"cutoff": 5.0, "n_features": 64, "n_interactions": 3, "n_rbf": 25}


# ------------------------------------------------------------------------- transfer learning
def parse_freeze(values) -> list[str]:
    """Group names from ``--freeze`` values (repeatable, each possibly comma-separated), in
    the order of :data:`GROUPS`; InputError for an unknown name."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    names = {v.strip() for item in values for v in str(item).split(",") if v.strip()}
    unknown = sorted(names - set(GROUPS))
    if unknown:
        raise InputError(f"--freeze {', '.join(unknown)}: the groups are {', '.join(GROUPS)}")
    return [g for g in GROUPS if g in names]


def transfer_model(parent, frames, freeze: Sequence[str] = (), cutoff: float | None = None,
                   n_features: int | None = None, n_interactions: int | None = None, n_rbf: int | None = None,
                   dtype: str | None = None, seed: int = 0, say: Callable[[str], None] | None = None,
                   reference=None):
    """A SchNet for the elements of ``frames`` initialised from ``parent`` (see the module
    docstring), with ``freeze`` groups frozen. ``reference``: given reference energies
    (:class:`~ase_mlff.training.common.GivenReferenceEnergies`) for the elements new to the
    parent. Raises InputError for what cannot transfer."""
    say = say or (lambda msg: None)
    if getattr(parent, "family", None) != "schnet":
        raise InputError(f"--init: the parent is a {getattr(parent, 'family', type(parent).__name__)} model; "
                         "only a schnet model can initialise a schnet model")
    if cutoff is not None and abs(float(cutoff) - parent.cutoff) > 1e-12:
        raise InputError(f"--cutoff {cutoff:g} Å differs from the parent's {parent.cutoff:g} Å; its filters are "
                         "functions of distance on [0, cutoff] and do not transfer to another cutoff (omit --cutoff)")
    pc = parent.config
    for name, given in (("n_features", n_features), ("n_interactions", n_interactions), ("n_rbf", n_rbf)):
        if given is not None and int(given) != int(pc[name]):
            raise InputError(f"--{name.replace('_', '-')} {given} differs from the parent's {pc[name]} "
                             "(the architecture of a fine-tuned model is the parent's; omit the flag)")
    data_species = sorted({int(z) for f in frames for z in f.numbers})
    new = sorted(set(data_species) - set(parent.species))
    if new and "embedding" in freeze:
        from ..models.base import symbols

        raise InputError(f"element(s) {', '.join(symbols(new))} are not in the parent model "
                         f"({', '.join(parent.elements)}) and the embedding is frozen, so they could never get one; "
                         "train without --freeze embedding, or choose a parent that knows them")
    species = sorted(set(parent.species) | set(data_species))
    pdtype = str(parent.embedding.weight.dtype).removeprefix("torch.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SchNetModel(species, cutoff=parent.cutoff, n_features=pc["n_features"],
                            n_interactions=pc["n_interactions"], n_rbf=pc["n_rbf"],
                            energy_scale=pc["energy_scale"], dtype=pdtype)
    if pc.get("repulsion") is not None:  # the parent's wall; element pairs new to it get none
        idx = [parent.species.index(z) if z in parent.species else None for z in species]
        inner = [[pc["repulsion"]["inner"][a][b] if a is not None and b is not None else 0.0 for b in idx]
                 for a in idx]
        model.set_repulsion({"inner": inner, "width": pc["repulsion"]["width"]})
    state = model.state_dict()
    pstate = parent.state_dict()
    rows = [species.index(z) for z in parent.species]
    with torch.no_grad():
        for k, v in pstate.items():
            if k == "embedding.weight":
                state[k][rows] = v.to(state[k].dtype)  # new elements keep their random rows
            else:
                state[k].copy_(v)
    # reference energies: the parent's; new elements given, or by least squares on what the
    # parent's e0 leave over
    e0 = dict(zip(parent.species, pc["reference_energies"]))
    kept = [z for z in parent.species if reference is not None and z in reference.energies
            and abs(reference.energies[z] - e0[z]) > 1e-9 * max(1.0, abs(e0[z]))]
    if kept:
        from ..models.base import symbols

        say(f"--reference-energies: the parent's e0 of {', '.join(symbols(kept))} are kept (its networks learned "
            "residuals relative to them); given values are used for new elements only")
    if new and reference is not None:
        e0.update(zip(new, reference.for_species(new, "training frames (elements new to the parent)")))
        from ..models.base import symbols

        say("new element(s) " + ", ".join(f"{el} e0 {e0[z]:.6f} eV (given)" for el, z in zip(symbols(new), new)))
    elif new:
        A, y = [], []
        for f in frames:
            if f.energy is None:
                continue
            A.append([np.count_nonzero(f.numbers == z) for z in new])
            y.append(f.energy - sum(e0[int(z)] for z in f.numbers if int(z) in e0))
        if not A:
            raise DatasetError("new elements need training frames with energies to fit their reference energies")
        coef, *_ = np.linalg.lstsq(np.asarray(A, float), np.asarray(y, float), rcond=None)
        e0.update({z: float(c) for z, c in zip(new, coef)})
        from ..models.base import symbols

        say("new element(s) " + ", ".join(f"{el} e0 {e0[z]:.6f} eV" for el, z in zip(symbols(new), new)))
    model.set_reference_energies([e0[z] for z in species])
    if dtype is not None and dtype != pdtype:
        model.to(dtype=getattr(torch, dtype))
        model.config.pop("dtype", None)
    model.freeze(freeze)
    return model


# ------------------------------------------------------------------------- evaluation
def evaluate_frames(model, frames) -> dict[str, float]:
    """Energy (meV/atom) and force (meV/Å) MAE/RMSE through the serving path."""
    des, dfs = [], []
    with torch.no_grad():
        for f in frames:
            out = model.compute(graph_from_structure(f, model.cutoff, dtype=model.dtype), forces=True)
            if f.energy is not None:
                des.append((float(out.energy[0]) - f.energy) / len(f.numbers))
            if f.forces is not None:
                dfs.append((out.forces.double().cpu().numpy() - f.forces).ravel())
    de = np.asarray(des)
    df = np.concatenate(dfs) if dfs else np.zeros(0)
    m = {"n_frames": len(frames)}
    if len(de):
        m.update(energy_per_atom_mae_meV=1e3 * float(np.abs(de).mean()),
                 energy_per_atom_rmse_meV=1e3 * float(np.sqrt((de ** 2).mean())))
    if len(df):
        m.update(forces_mae_meV_per_A=1e3 * float(np.abs(df).mean()),
                 forces_rmse_meV_per_A=1e3 * float(np.sqrt((df ** 2).mean())))
    return m


# ------------------------------------------------------------------------- the recipe
#: keywords of train_schnet that are TrainerOptions fields (passed through unchanged)
TRAINER_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "energy_weight", "force_weight", "stress_weight",
                "schedule", "lr_factor", "lr_patience", "min_lr", "warmup_epochs", "ema", "clip", "patience",
                "device", "fit_reference", "checkpoint_interval")


def train_schnet(dataset, n_train: int, n_valid: int, n_test: int | None = None, seed: int = 0,
                 cutoff: float | None = None, n_features: int | None = None, n_interactions: int | None = None,
                 n_rbf: int | None = None, init=None, freeze: Iterable[str] | str | None = (),
                 dtype: str | None = None, epochs: int = 100, batch_size: int = 8, lr: float = 1e-3,
                 weight_decay: float = 0.0, energy_weight: float = 1.0, force_weight: float = 10.0,
                 stress_weight: float = 0.0, schedule: str = "plateau", lr_factor: float = 0.5,
                 lr_patience: int = 10, min_lr: float = 1e-6,
                 warmup_epochs: int = 0, ema: float = 0.99, clip: float = 10.0, patience: int = 30,
                 device: str = "cpu", fit_reference: bool = True, checkpoint_interval: float = 60.0,
                 progress: Callable[[str], None] | None = None, checkpoint=None, resume: bool = False,
                 stop_after: int | None = None, repulsion: bool = True, repulsion_width: float = 0.5,
                 reference_energies=None):
    """Split ``dataset``, build (or transfer, ``init``) a SchNet and train it with the shared
    trainer. Returns ``(model, report)``: split, options, parent, validation/test errors
    (training-set errors without test frames), reference energies and the trainer's record
    (``report["record"]``). InputError for impossible transfers. ``reference_energies``: given
    e0 (a :class:`~ase_mlff.training.common.GivenReferenceEnergies`, or anything
    :func:`~ase_mlff.training.common.parse_reference_energies` reads, in eV)."""
    from .trainer import TrainerOptions, reference_record, train_network

    say = progress or (lambda msg: None)
    given = parse_reference_energies(reference_energies)
    given_e0 = None
    freeze = parse_freeze(freeze)
    if freeze and init is None:
        raise InputError("--freeze needs --init MODEL: only pre-trained parameters can be frozen")
    if len(freeze) == len(GROUPS):
        raise InputError("--freeze embedding,interactions,output leaves nothing to train")
    split = dataset.split(n_train, n_valid, n_test, seed=seed)
    frames = dataset.frames
    train_f = [frames[k] for k in split.train]
    valid_f = [frames[k] for k in split.valid]
    test_f = [frames[k] for k in split.test]
    parent_info = parent = None
    if init is not None:
        parent, parent_info = load_parent(init, "schnet")
    # before the first epoch: an element only in held-out frames would get a never-trained embedding
    check_split_elements(train_f, {"validation": valid_f, "test": test_f}, known=parent.species if parent else ())
    if parent is not None:
        model = transfer_model(parent, train_f + valid_f, freeze, cutoff, n_features, n_interactions, n_rbf,
                               dtype, seed, say, reference=given)
        parent_info.update({"family": parent.family, "elements": list(parent.elements), "freeze": freeze,
                            "reference_energies": dict(zip(parent.elements, parent.config["reference_energies"]))})
        say(f"initialised from {parent_info['path'] or 'the given model'} (sha256 {parent_info['sha256']}); "
            f"frozen: {', '.join(freeze) or 'nothing'}")
        fit_reference = False  # the parent's e0 and energy scale stay (see the module docstring)
        dtype = str(model.embedding.weight.dtype).removeprefix("torch.")
    else:
        arch = {k: v if v is not None else ARCHITECTURE[k] for k, v in
                (("cutoff", cutoff), ("n_features", n_features), ("n_interactions", n_interactions),
                 ("n_rbf", n_rbf))}
        dtype = dtype or "float32"
        species = sorted({int(z) for f in train_f + valid_f for z in f.numbers})
        if given is not None:  # checked before anything trains; the trainer then uses them
            given_e0 = dict(zip([chemical_symbols[z] for z in species],
                                check_given_reference(train_f, species, given, say)["e0"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SchNetModel(species, dtype=dtype, **arch)
        if repulsion:
            model.set_repulsion(repulsion_for(train_f, species, model.cutoff, repulsion_width))
            say("short-range prior: ZBL below the closest training distances (" + ", ".join(
                f"{a}-{b} {model.config['repulsion']['inner'][p][q]:.2f}" for p, a in enumerate(model.elements)
                for q, b in enumerate(model.elements) if q >= p) + " Å)")
    local = dict(locals())
    opts = TrainerOptions(dtype=dtype, seed=seed, reference_energies=given_e0,
                          **{k: local[k] for k in TRAINER_KEYS}).check()
    model, record = train_network(model, train_f, valid_f, opts, checkpoint=checkpoint, resume=resume, plots=False,
                                  log=say, stop_after=stop_after)
    options = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test, "seed": seed, "cutoff": model.cutoff,
               **{k: model.config[k] for k in ("n_features", "n_interactions", "n_rbf")}, "dtype": dtype,
               "freeze": freeze, "repulsion": model.config.get("repulsion") is not None,
               "reference_energies": None if given is None else given.given_as,
               **{k: local[k] for k in TRAINER_KEYS}}
    if parent is not None:  # the parent's e0, and given or fitted ones for new elements
        new = [chemical_symbols[z] for z in model.species if z not in parent.species]
        how = "the parent's (its networks learned residuals relative to them)" + (
            f"; {', '.join(new)}: {'given' if given is not None else 'least squares on the residuals'}" if new else "")
        reference = reference_energies_record(model.species, model.config["reference_energies"], "parent", how,
                                              given if new else None)
    else:
        reference = reference_record(record, given)
    report = {"split": {k: getattr(split, k).tolist() for k in ("train", "valid", "test")}, "options": options,
              "parent": parent_info, "history": record.history, "record": record,
              "train_time_s": record.train_time_s, "valid": evaluate_frames(model, valid_f) if valid_f else None,
              "test": evaluate_frames(model, test_f) if test_f else None,
              "data_sha256": dataset.sha256(), "source": getattr(dataset, "source", None),
              "reference_energies": reference, "trained_on": record.trained_on}
    if not test_f:  # nothing held out for testing: at least the fit to the training frames, labelled as such
        from .common import model_metrics

        report["train"] = model_metrics(model, train_f)
        say(format_training_metrics(report["train"]))
    return model, report


def training_record(report: dict[str, Any]) -> dict[str, Any]:
    """The ``training`` dict of the model file."""
    rec = {k: report[k] for k in ("options", "split", "parent", "valid", "test", "train", "train_time_s",
                                  "data_sha256", "source", "reference_energies", "trained_on")
           if report.get(k) is not None}
    rec["recipe"] = "ase_mlff.training.schnet_train"
    rec["epochs_run"] = len(report["history"])
    rec["trainer"] = report["record"].as_dict()
    return rec


def train(data, progress=None, **options):
    """``ase_mlff.train("schnet", data, n_train=..., n_valid=..., init=..., freeze=...)``:
    keywords of :func:`train_schnet`; ``data`` a Dataset or a path (eV, Å; ``energy_unit`` to
    convert). Returns ``(model, record)``."""
    from .. import data as data_mod

    unit = options.pop("energy_unit", None)
    ds = data if isinstance(data, data_mod.Dataset) else data_mod.read(data, energy_unit=unit)
    model, report = train_schnet(ds, progress=progress, **options)
    return model, training_record(report)


# ------------------------------------------------------------------------- command line
def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .trainer import configure_parser as trainer_flags

    parser.description = (parser.description or "") + (
        " SchNet (continuous-filter convolutions; Schütt et al. 2017, 2018) trained on energies and forces by "
        "the shared trainer; --init/--freeze fine-tune a pre-trained SchNet (the schemes of Krawczuk & Venturi "
        "2020, 'Improving neural network predictions of material properties with limited data using transfer "
        "learning'). Units: eV, Å.")
    a = parser.add_argument
    a("dataset", help="training data (extxyz, ASE db, npz) with energies and forces")
    a("--output", "-o", default="schnet.mlff", help="model file to write")
    a("--energy-unit", default=None, help="energy unit of the data when not eV")
    a("--length-unit", default=None, help="length unit of the data when not Å")
    a("--n-train", type=int, required=True, help="training frames")
    a("--n-valid", type=int, required=True, help="validation frames (schedule, early stopping, best model)")
    a("--n-test", type=int, default=None, help="test frames (default: all the rest; without any, the training-set "
                                               "errors are printed instead)")
    a("--cutoff", type=float, default=None, help=f"cutoff in Å (default {ARCHITECTURE['cutoff']:g}; with --init: "
                                                 "the parent's)")
    a("--n-features", type=int, default=None, help=f"features per atom (default {ARCHITECTURE['n_features']})")
    a("--n-interactions", type=int, default=None,
      help=f"interaction blocks (default {ARCHITECTURE['n_interactions']})")
    a("--n-rbf", type=int, default=None, help=f"Gaussians of the distance expansion (default {ARCHITECTURE['n_rbf']})")
    a("--init", default=None, metavar="MODEL", help="start from this pre-trained schnet model file (fine-tuning)")
    a("--freeze", action="append", default=None, metavar="GROUPS",
      help="with --init: keep these parameter groups fixed (embedding, interactions, output; repeat the flag or "
           "give a comma list)")
    a("--no-repulsion", dest="repulsion", action="store_false",
      help="no short-range prior (by default a fresh model gets ZBL repulsion below the closest training "
           "distances, zero on every training frame; with --init the parent's prior is kept)")
    a("--repulsion-width", type=float, default=0.5, help="Å over which the prior switches on")
    trainer_flags(parser)
    # None: float32 for a fresh model, the parent's dtype with --init (no rounding of frozen weights)
    parser.set_defaults(dtype=None, device="cpu")
    return parser


def run(args) -> int:
    from .trainer import run_recipe

    return run_recipe("ase-mlff train schnet", _run, args)  # under torchrun: one process group (see _run)


def _run(args, ddp) -> int:
    """The command on one process; under torchrun every rank trains, rank 0 alone checks and
    writes the files and prints, and a failure on any rank stops all of them."""
    from ..console import timed_printer
    from .checkpoint import TrainingInterrupted, default_checkpoint_path
    from .common import UsageError
    from .trainer import read_recipe_data, recipe_failure, save_recipe_result

    prog = "ase-mlff train schnet"
    fail = recipe_failure(prog)
    ckpt = args.checkpoint or default_checkpoint_path(args.output)
    progress = timed_printer() if ddp.is_main else (lambda msg: None)
    got = read_recipe_data(args, ddp, prog, ckpt, lambda: parse_freeze(args.freeze))
    if isinstance(got, int):
        return got
    ds, reference, freeze = got
    progress(f"read {len(ds)} frames from {args.dataset}")
    keys = {k: getattr(args, k) for k in TRAINER_KEYS}
    try:
        model, report = train_schnet(ds, args.n_train, args.n_valid, args.n_test, seed=args.seed, cutoff=args.cutoff,
                                     n_features=args.n_features, n_interactions=args.n_interactions,
                                     n_rbf=args.n_rbf, init=args.init, freeze=freeze, dtype=args.dtype,
                                     progress=progress, checkpoint=ckpt, resume=args.resume,
                                     stop_after=args.stop_after, repulsion=args.repulsion,
                                     repulsion_width=args.repulsion_width, reference_energies=reference, **keys)
    except TrainingInterrupted as exc:
        if ddp.is_main:  # the rank that wrote the checkpoint
            print(exc.command_message(prog), file=sys.stderr)
        return exc.exit_code
    except (OutputExistsError, InputError, UsageError) as exc:  # UsageError: e.g. a split missing an element
        return fail(exc, EXIT_USAGE)
    except MLFFError as exc:
        return fail(exc, EXIT_DATA)
    try:
        save_recipe_result(model, training_record(report), report, ds, args, progress, ddp)
    except (MLFFError, OSError) as exc:
        return fail(exc, EXIT_DATA)
    if not ddp.is_main:
        return EXIT_OK
    print(f"SchNet model written to {args.output} ({model.describe()}"
          + (f"; fine-tuned from {args.init}, frozen: {', '.join(freeze) or 'nothing'}" if args.init else "") + ")")
    for name in ("valid", "test"):
        m = report.get(name)
        if m and "forces_rmse_meV_per_A" in m:
            print(f"{name:5s} ({m['n_frames']} frames): energy MAE {m.get('energy_per_atom_mae_meV', float('nan')):.3f} "
                  f"meV/atom; forces RMSE {m['forces_rmse_meV_per_A']:.1f} meV/Å, MAE {m['forces_mae_meV_per_A']:.1f} meV/Å")
    if report.get("train"):
        print(format_training_metrics(report["train"], "hold out test frames with --n-test N"))
    return EXIT_OK


# ------------------------------------------------------------------------- committees
#: ``ase-mlff train schnet --committee K``: the split and member scheme of the shared trainer's
#: recipes (:func:`~ase_mlff.training.network_committee.network_committee`), each member a
#: :func:`train_schnet` model.
COMMITTEE = network_committee("schnet", train_schnet)


def main(argv=None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m ase_mlff.training.schnet_train",
                                                      description="Train a SchNet force field."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
