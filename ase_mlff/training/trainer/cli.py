"""The trainer's command line: the shared flags of every network recipe, and the generic command.

A family's command adds the shared flags to its parser with :func:`configure_parser` and reads
them back with :func:`options_from_args`; :func:`run_training` trains from the parsed flags and
returns the exit status, and :func:`save_recipe_result` ends a recipe that trains by itself
(``ase-mlff train bpnn|schnet``: model file, plots, the checkpoint removed). The generic
command trains any registered family from a JSON config (:func:`main`)::

    python -m ase_mlff.training.trainer data.extxyz --family bpnn --model-config @model.json \\
        -o model.mlff --epochs 100

(also under ``torchrun ... -m ase_mlff.training.trainer``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ...errors import DatasetError, InputError, MLFFError, OutputExistsError, TrainingError
from ..common import (IN_ENERGY_UNIT, REFERENCE_ENERGIES_HELP, UsageError, check_split_elements,
                      parse_reference_energies, reference_energies_record)
from .distributed import Distributed, distributed_run, process_rank, recipe_failure
from .loop import train_network
from .options import DTYPES, SCHEDULES, TrainerOptions
from .plots import default_plots, write_plots


# =============================================================================== the shared flags
def configure_parser(parser: argparse.ArgumentParser, defaults: TrainerOptions | None = None) -> argparse.ArgumentParser:
    """Add the trainer's flags (defaults shown in ``--help``) to a family's parser; the family
    adds its data and hyperparameter flags. Read them back with :func:`options_from_args`."""
    d = defaults or TrainerOptions()
    from ...console import HelpFormatter  # "(default: X)" unless the help states it

    parser.formatter_class = HelpFormatter
    g = parser.add_argument_group("training (shared by every neural-network family)")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="structures per optimizer step, summed over all processes")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decoupled weight decay")
    g.add_argument("--energy-weight", type=float, default=d.energy_weight,
                   help="loss weight of the squared energy error per atom, per (eV/atom)^2")
    g.add_argument("--force-weight", type=float, default=d.force_weight,
                   help="loss weight of the squared force-component error, per (eV/Å)^2")
    g.add_argument("--stress-weight", type=float, default=d.stress_weight,
                   help="loss weight of the squared stress error (Voigt, ASE sign), per (eV/Å^3)^2; 0: off")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="learning-rate schedule: ReduceLROnPlateau on the validation loss, or cosine with warm-up")
    g.add_argument("--lr-factor", type=float, default=d.lr_factor, help="plateau: factor applied to the learning rate")
    g.add_argument("--lr-patience", type=int, default=d.lr_patience,
                   help="plateau: epochs without improvement before the learning rate drops")
    g.add_argument("--min-lr", type=float, default=d.min_lr, help="smallest learning rate of either schedule")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="cosine: epochs of linear warm-up")
    g.add_argument("--ema", type=float, default=d.ema,
                   help="decay of the exponential moving average of the weights (0: off)")
    g.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clipping limit (0: off)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better validation loss (0: never)")
    g.add_argument("--dtype", choices=tuple(DTYPES), default=d.dtype,
                   help="network dtype (reference energies and energy sums are always float64)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the random streams (split, shuffling)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="auto: one GPU per process when CUDA is available")
    g.add_argument("--no-reference", dest="fit_reference", action="store_false",
                   help="do not fit per-element reference energies")
    g.add_argument("--reference-energies", default=None, metavar="FILE|El=E,...",
                   help=REFERENCE_ENERGIES_HELP.format(unit=IN_ENERGY_UNIT))
    g.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUTPUT.ckpt), removed at the end")
    g.add_argument("--checkpoint-interval", type=float, default=d.checkpoint_interval,
                   help="least seconds between checkpoints (one is also written at the end and on "
                        "Ctrl-C/SIGTERM)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint (same data and options)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output model file")
    g.add_argument("--plot-dir", default=None,
                   help="folder of the learning-curve and parity PNGs (default: beside the model)")
    g.add_argument("--no-plots", dest="plots", action="store_false", help="write no plots")
    g.add_argument("--progress", action="store_true", help="progress bar on stderr")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests
    return parser


def options_from_args(args) -> TrainerOptions:
    names = {f.name for f in fields(TrainerOptions)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    if kw.get("reference_energies") is not None:  # FILE or El=E,... in --energy-unit (eV without it)
        given = parse_reference_energies(kw["reference_energies"], getattr(args, "energy_unit", None))
        kw["reference_energies"] = {chemical_symbols[z]: v for z, v in given.energies.items()}
    return TrainerOptions(**kw).check()


# =============================================================================== a recipe's run
def run_training(model, train_frames, valid_frames, args, prog: str, training: dict[str, Any] | None = None) -> int:
    """Train from parsed :func:`configure_parser` flags (plus ``args.output``) and return the
    exit status: 0, 1 (bad data or failed training), 2 (usage: an existing output or
    checkpoint), 130/143 (interrupted by SIGINT/SIGTERM; the checkpoint was written). Under
    torchrun only rank 0 prints; an error is printed once, by the lowest rank that met it."""
    from ..checkpoint import TrainingInterrupted

    main_rank = process_rank() == 0
    fail = recipe_failure(prog)

    try:
        opts = options_from_args(args)
        _, record = train_network(
            model, train_frames, valid_frames, opts, output=args.output, overwrite=args.overwrite,
            checkpoint=args.checkpoint, resume=args.resume, plots=args.plots, plot_dir=args.plot_dir,
            log=lambda m: print(m, file=sys.stderr, flush=True), progress=args.progress,
            training=training, stop_after=args.stop_after)
    except TrainingInterrupted as exc:
        if main_rank:  # the one that wrote the checkpoint
            print(exc.command_message(prog), file=sys.stderr)
        return exc.exit_code
    except OutputExistsError as exc:
        return fail(exc, 2)
    except (InputError, UsageError) as exc:  # UsageError: e.g. --reference-energies missing an element
        return fail(exc, 2)
    except MLFFError as exc:
        return fail(exc, 1)
    if main_rank:
        print(record.summary(), file=sys.stderr)
    return 0


def read_recipe_data(args, ddp: Distributed, prog: str, checkpoint: str, check_flags: Callable[[], Any] = lambda: None):
    """The first step of a network recipe's command (``ase-mlff train bpnn|schnet``), on every
    rank: ``check_flags()`` (the family's own flag parsing, raising UsageError or InputError),
    the output and checkpoint check (rank 0 alone: only it writes), the reference energies and
    the dataset. A failure on any rank is printed once and stops every rank.

    Returns ``(dataset, reference_energies, check_flags())``, or the exit status (an int: 2 for
    wrong usage, 1 for unusable data)."""
    from .. import common
    from ...data import read

    failure = None
    try:
        flags = check_flags()
        if ddp.is_main:
            common.check_new_output(args.output, bool(args.overwrite), bool(args.resume), checkpoint)
        reference = common.parse_reference_energies(args.reference_energies, args.energy_unit)
        dataset = read(args.dataset, energy_unit=args.energy_unit, length_unit=args.length_unit)
    except (UsageError, InputError, DatasetError, OSError) as exc:
        failure = exc
    try:
        ddp.agree(failure)
    except (UsageError, InputError, DatasetError, OSError) as exc:
        usage = isinstance(exc, UsageError) or not isinstance(exc, (DatasetError, OSError))
        return recipe_failure(prog)(exc, 2 if usage else 1)
    return dataset, reference, flags


def save_recipe_result(model, training: dict[str, Any], report: dict[str, Any], dataset, args, progress,
                       ddp: Distributed | None = None) -> None:
    """The end of a family recipe's command (``ase-mlff train bpnn|schnet``): write the model
    file with its training record (plus the command line), the learning-curve and parity plots
    of the validation frames (training frames without any) unless ``--no-plots``, and remove
    the checkpoint, which only served a resume. Under torchrun (``ddp`` of
    :func:`distributed_run`) rank 0 alone does it and the other ranks wait for it; a failure
    to write is raised on every rank."""
    from ...io import save_model
    from ..checkpoint import default_checkpoint_path

    ddp = ddp or Distributed()
    failure = None
    if ddp.is_main:
        try:
            save_model(model, args.output, training=dict(training, command=" ".join(sys.argv)))
            if args.plots:
                split = report["split"]
                frames = [dataset.frames[k] for k in split["valid"]] or [dataset.frames[k] for k in split["train"]]
                for path in write_plots(report["record"], model, frames, default_plots(args.output, args.plot_dir)):
                    progress(f"plot written to {path}")
            ckpt = args.checkpoint or default_checkpoint_path(args.output)
            if os.path.exists(ckpt):
                os.unlink(ckpt)
        except (MLFFError, OSError) as exc:
            failure = exc
    ddp.agree(failure)


# =============================================================================== the generic command
def _model_config(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        with open(text[1:]) as fh:
            text = fh.read()
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--model-config is not valid JSON ({exc}); give a JSON object or @file.json") from None
    if not isinstance(cfg, dict):
        raise InputError("--model-config must be a JSON object of the family's hyperparameters")
    return cfg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ase_mlff.training.trainer",
                                description="Train any registered neural-network family with the shared trainer "
                                            "(also under torchrun for data-parallel training).")
    p.add_argument("data", help="training data (extxyz, npz, db ...; eV, Å after unit conversion)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.mlff)")
    p.add_argument("--family", required=True, help="registered model family (bpnn, ...)")
    p.add_argument("--model-config", default="{}",
                   help="the family's hyperparameters as JSON (or @file.json); species default to the data's")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="import this module first (one that registers a model family)")
    p.add_argument("--energy-unit", default=None, help="energy unit of the data (default: from the file, else eV)")
    p.add_argument("--n-train", type=int, default=None, help="training frames (default: all but the validation ones)")
    p.add_argument("--n-valid", type=int, default=None, help="validation frames (default: 10 %% of the data)")
    return configure_parser(p)


def _exit_status(exc: BaseException) -> int:
    """2 for a usage problem (flags, JSON, an existing output), 1 for unusable data or a failed run."""
    if isinstance(exc, UsageError):  # also a SplitError, although it is a DatasetError
        return 2
    return 2 if isinstance(exc, (InputError, ValueError, TypeError)) and not isinstance(exc, DatasetError) else 1


def build_model(family: str, config: dict[str, Any], train_frames: Sequence):
    """A fresh model of a registered ``family`` from its hyperparameters ``config``. A family
    whose hyperparameters depend on the data (BPNN: the symmetry functions chosen from the
    training frames) completes them in the optional class method
    ``config_for_frames(config, frames)``; the others are built by ``from_config``."""
    from ...models.base import MODEL_REGISTRY

    if family not in MODEL_REGISTRY:
        import ase_mlff.models  # noqa: F401  (registers the built-in families)
    if family not in MODEL_REGISTRY:
        raise InputError(f"unknown model family {family!r}; known: {', '.join(sorted(MODEL_REGISTRY))}")
    cls = MODEL_REGISTRY[family]
    complete = getattr(cls, "config_for_frames", None)
    if complete is not None:
        config = complete(dict(config), list(train_frames))
    return cls.from_config(config)


def main(argv=None) -> int:
    prog = "python -m ase_mlff.training.trainer"
    args = build_parser().parse_args(argv)
    try:
        with distributed_run(args.device) as ddp:
            return _main(args, ddp, prog)
    except TrainingError as exc:  # joining the process group failed (e.g. --device cuda without a GPU)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def _main(args, ddp: Distributed, prog: str) -> int:
    import importlib

    from ... import data as data_mod

    failure = given = None
    try:
        for name in args.imports:
            importlib.import_module(name)
        ds = data_mod.read(args.data, energy_unit=args.energy_unit)
        n_valid = args.n_valid if args.n_valid is not None else (max(1, len(ds) // 10) if len(ds) > 1 else 0)
        n_train = args.n_train if args.n_train is not None else len(ds) - n_valid
        split = ds.split(n_train, n_valid, 0, seed=args.seed)
        train = [ds[int(i)] for i in split.train]
        valid = [ds[int(i)] for i in split.valid]
        # before the first epoch: a validation element no training frame holds would never be learnt
        check_split_elements(train, {"validation": valid})
        cfg = _model_config(args.model_config)
        cfg.setdefault("species", [int(z) for z in ds.elements])
        given = parse_reference_energies(args.reference_energies, args.energy_unit)
        if given is not None:  # every element the model knows needs one; recorded with where it came from
            reference = reference_energies_record(cfg["species"], given.for_species(cfg["species"]), "given",
                                                  "given; the networks learn E - sum e0", given)
        # the same initial weights in every process and every run with this seed
        torch.manual_seed(int(np.random.SeedSequence([args.seed, 0x6E6E]).generate_state(1)[0]))
        model = build_model(args.family, cfg, train)
    except (MLFFError, OSError, ValueError, TypeError, ImportError) as exc:
        failure = exc
    try:
        ddp.agree(failure)  # every rank read the same data and built the same model, or all stop
    except (MLFFError, OSError, ValueError, TypeError, ImportError) as exc:
        return recipe_failure(prog)(exc, _exit_status(exc))
    training = {"data_sha256": ds.sha256(), "source": args.data, "recipe": "ase_mlff.training.trainer",
                "split": {"train": split.train.tolist(), "valid": split.valid.tolist()}, "seed": args.seed,
                "command": " ".join(sys.argv)}
    if given is not None:
        training["reference_energies"] = reference
    return run_training(model, train, valid, args, prog, training=training)
