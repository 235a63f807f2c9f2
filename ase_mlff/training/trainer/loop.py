"""The training loop: :func:`train_network`, in named steps (the sections below, in order).

1. :func:`_check_inputs`: model, labels and (rank 0) the files of :class:`_Files`;
2. :func:`_set_up`: the model in its training dtype and device, graphs or the family's
   caches, labels, optimizer, schedule, weight average;
3. :func:`_start` (reference energies, feature scaling, rank 0's weights everywhere) or
   :func:`_resume` (all of it from the checkpoint);
4. :func:`_train_epochs`: per epoch :func:`_train_epoch` (optimizer steps), :func:`_end_epoch`
   (validate, keep the best, schedule, early stop), :func:`_report_epoch`; safe points;
5. :func:`_finish` (best weights, record), then :meth:`_Files.write` (model file, plots).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ...errors import DatasetError, MLFFError, OutputExistsError, TrainingError
from ..checkpoint import Checkpointer, StopGuard, check_output, default_checkpoint_path
from ..common import nn_observables
from .distributed import Distributed, init_distributed
from .loss import FamilyCache, Labels, check_labels, has_training_hook, train_step, validate
from .options import DTYPES, TrainerOptions, TrainingRecord, metrics_text
from .plots import EpochBar, default_plots, write_plots
from .reference import apply_reference, fit_reference, reference_record
from .state import (EMA, cast_model, checkpoint_identity, new_loop_state, restore_training_state, trainable,
                    training_state, unpack_state)


def train_network(model, train_frames: Sequence, valid_frames: Sequence = (), options: TrainerOptions | None = None,
                  *, output=None, overwrite: bool = False, checkpoint=None, resume: bool = False,
                  plots: bool = True, plot_dir=None, log: Callable[[str], None] | None = None,
                  progress: bool = False, training: dict[str, Any] | None = None,
                  callback: Callable[[dict[str, Any]], None] | None = None,
                  stop_after: int | None = None):
    """Train ``model`` in place; returns ``(model, record)`` (:class:`TrainingRecord`).

    ``train_frames``/``valid_frames``: :class:`~ase_mlff.data.Frame` lists (eV, Å; labels may
    be missing per frame). ``output``: model file written atomically at the end (refused when
    it exists unless ``overwrite``), with ``training`` (the family's provenance) and the record
    in its ``training`` entry; learning-curve and parity PNGs beside it (``plot_dir``
    elsewhere; ``plots=False`` none). ``checkpoint``: file written every
    ``checkpoint_interval`` seconds and on SIGINT/SIGTERM (default ``<output>.ckpt``; None
    without output: no file), removed after the model is saved; ``resume``: continue from it. ``log``: receives one line per epoch;
    ``progress``: a progress bar on stderr. ``callback(event)`` is called after each optimizer
    step (``{"epoch", "step", "loss"}``) and ``stop_after=k`` stops after the k-th safe point
    (both for tests). Raises :class:`~ase_mlff.training.checkpoint.TrainingInterrupted` (after
    writing the checkpoint) when stopped by a signal.
    """
    opts = (options or TrainerOptions()).check()
    train_frames, valid_frames = list(train_frames), list(valid_frames)
    ddp = init_distributed(opts.device)
    # every rank computes the same numbers; rank 0 alone reports them
    say = (log or (lambda msg: None)) if ddp.is_main else (lambda msg: None)
    error = None
    try:
        files = _Files.of(output, overwrite, checkpoint, resume, plots, plot_dir)
        _check_inputs(model, train_frames, valid_frames, opts, ddp, files)
        run = _set_up(model, train_frames, valid_frames, opts, ddp, say)
        with StopGuard(stream=sys.stderr if ddp.is_main else None) as guard:
            ckpt = Checkpointer(files.checkpoint if ddp.is_main else None, run.ident,
                                interval_s=opts.checkpoint_interval, stop_after=stop_after, guard=guard)
            if resume:
                _resume(run, ckpt, files.checkpoint)
            else:
                _start(run)
            _train_epochs(run, ckpt, guard, progress, callback)
        _finish(run)
        files.write(run, training)
        model.to(run.original_device)
        return model, run.record
    except BaseException as exc:
        error = exc
        raise
    finally:
        ddp.close(error)


# =============================================================================== 1. checks
@dataclass
class _Files:
    """The files of a run, all written by rank 0: the model file ``output`` (None: none), its
    ``plots`` (paths; empty: none) and the ``checkpoint`` (None: none)."""

    output: Any
    overwrite: bool
    checkpoint: Any
    resume: bool
    plots: list[str]

    @classmethod
    def of(cls, output, overwrite, checkpoint, resume, plots, plot_dir) -> "_Files":
        if checkpoint is None and output is not None:
            checkpoint = default_checkpoint_path(output)
        return cls(output, overwrite, checkpoint, resume, default_plots(output, plot_dir) if plots else [])

    def check(self) -> None:
        """Refuse to start over existing outputs (unless ``overwrite`` or ``resume``), over the
        checkpoint of an interrupted run, or to resume without a checkpoint."""
        check_output(self.output, self.overwrite, self.resume)
        if not (self.overwrite or self.resume):
            for p in self.plots:
                check_output(p, False, False)
        if self.checkpoint is not None and not self.resume and os.path.exists(self.checkpoint):
            raise OutputExistsError(f"checkpoint {self.checkpoint} exists from an interrupted run; resume it "
                                    "(--resume) or delete it to start over")
        if self.resume and (self.checkpoint is None or not os.path.exists(self.checkpoint)):
            raise TrainingError(f"there is no checkpoint {self.checkpoint} to resume from; give it with "
                                "--checkpoint, or start without --resume")

    def write(self, run: "_Run", training: dict[str, Any] | None) -> None:
        """Rank 0 writes the model file (``training``: the family's provenance, plus the record)
        and the plots, and removes the checkpoint; a failure is raised on every rank."""
        record, failure = run.record, None
        if run.ddp.is_main:
            try:
                if self.output is not None:
                    from ...io import save_model

                    save_model(run.model, self.output, training={"trained_on": record.trained_on,
                                                                 "reference_energies": reference_record(record),
                                                                 **(training or {}), "trainer": record.as_dict()})
                    run.say(f"model written to {self.output}")
                if self.plots:
                    record.plots = write_plots(record, run.model, run.valid_frames or run.train_frames, self.plots)
                if self.checkpoint is not None and self.output is not None and os.path.exists(self.checkpoint):
                    os.unlink(self.checkpoint)  # the model file holds everything the checkpoint did
            except (MLFFError, OSError) as exc:
                failure = exc
        # the other ranks wait here until rank 0 has written (or failed to write) its files
        run.ddp.agree(failure)


def _check_inputs(model, train_frames, valid_frames, opts: TrainerOptions, ddp: Distributed, files: _Files) -> None:
    """Every rank checks the model and the data, rank 0 the files; all stop if one refuses."""
    failure = None
    try:
        if not trainable(model):
            raise TrainingError(f"this {getattr(model, 'family', type(model).__name__)} model has no trainable "
                                "parameters; kernel and spline families have their own training recipes")
        if not train_frames:
            raise DatasetError("no training frames; give at least one labelled structure")
        check_labels(model, train_frames, valid_frames, opts)
        if ddp.is_main:
            files.check()
    except MLFFError as exc:
        failure = exc
    # nobody starts (or reads a checkpoint) unless every rank may: a refusal on rank 0 alone
    # would leave the others waiting in the first collective
    ddp.agree(failure)


# =============================================================================== 2. set-up
@dataclass
class _Run:
    """What the steps of one run share (built by :func:`_set_up`)."""

    model: Any
    opts: TrainerOptions
    ddp: Distributed
    say: Callable[[str], None]
    train_frames: list
    valid_frames: list
    original_device: torch.device  # where the model goes back to at the end
    ident: dict[str, Any]  # the checkpoint identity: data, model and options
    params: list  # the trainable parameters
    graphs: Any  # FrameGraphs of the training frames (for fit_scaling)
    tsource: Any  # what the loss evaluates: the FrameGraphs, or the family's FamilyCache
    vsource: Any
    labels: Labels
    vlabels: Labels
    record: TrainingRecord
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA | None
    rng: Any  # numpy Generator of the batch order
    steps_per_epoch: int
    st: dict[str, Any]  # the loop state (state.new_loop_state), checkpointed


def _set_up(model, train_frames, valid_frames, opts: TrainerOptions, ddp: Distributed, say) -> _Run:
    """The model in its training dtype on this process's device, the frames' graphs or caches
    and labels, the record, optimizer, schedule and weight average (the same on every rank)."""
    from ...graph import FrameGraphs
    from ...rng import random_stream

    dtype = DTYPES[opts.dtype]
    original_device = next(model.parameters()).device
    ident = checkpoint_identity(model, train_frames, valid_frames, opts)
    # e.g. a family that chose its hyperparameters from the frames on each rank, or nodes
    # reading different files: refused before rank 0's weights are broadcast into them
    ddp.same_everywhere(json.dumps(ident, sort_keys=True), "their training data, options or model "
                                                           "hyperparameters")
    cast_model(model, dtype)
    model.to(ddp.device)
    params = [p for _, p in trainable(model)]
    graphs = FrameGraphs(train_frames, model.cutoff, dtype=dtype, device=ddp.device)
    vgraphs = FrameGraphs(valid_frames, model.cutoff, dtype=dtype, device=ddp.device)
    if has_training_hook(model):
        # the family's cache (e.g. BPNN: descriptor values and Jacobians), built once here
        # and again on resume; fit_scaling still sees the FrameGraphs
        tsource, vsource = FamilyCache(model, train_frames, say), FamilyCache(model, valid_frames, say)
    else:
        tsource, vsource = graphs, vgraphs
    labels, vlabels = Labels(train_frames, ddp.device), Labels(valid_frames, ddp.device)
    record = TrainingRecord(options=opts.as_dict(), n_train=len(train_frames), n_valid=len(valid_frames),
                            world_size=ddp.world,
                            trained_on=nn_observables(train_frames, opts.energy_weight, opts.force_weight,
                                                      opts.stress_weight))

    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = math.ceil(len(train_frames) / opts.batch_size)
    scheduler = _scheduler(optimizer, opts, steps_per_epoch)
    ema = EMA(model, opts.ema) if opts.ema > 0 else None
    rng = random_stream(opts.seed, "nn-shuffle")
    return _Run(model=model, opts=opts, ddp=ddp, say=say, train_frames=train_frames, valid_frames=valid_frames,
                original_device=original_device, ident=ident, params=params, graphs=graphs, tsource=tsource,
                vsource=vsource, labels=labels, vlabels=vlabels, record=record, optimizer=optimizer,
                scheduler=scheduler, ema=ema, rng=rng, steps_per_epoch=steps_per_epoch, st=new_loop_state())


def _scheduler(optimizer, opts: TrainerOptions, steps_per_epoch: int):
    """The learning-rate schedule: "plateau" steps once per epoch on the monitored loss,
    "cosine" (with its linear warm-up) once per optimizer step."""
    sched = torch.optim.lr_scheduler
    if opts.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=opts.lr_factor, patience=opts.lr_patience,
                                       min_lr=opts.min_lr)
    total = max(opts.epochs * steps_per_epoch, 1)
    warm = min(opts.warmup_epochs * steps_per_epoch, total - 1)
    cosine = sched.CosineAnnealingLR(optimizer, T_max=max(total - warm, 1), eta_min=opts.min_lr)
    if warm <= 0:
        return cosine
    linear = sched.LinearLR(optimizer, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
    return sched.SequentialLR(optimizer, [linear, cosine], milestones=[warm])


# =============================================================================== 3. start or resume
def _start(run: _Run) -> None:
    """A new run: reference energies and scale (fitted or given), the family's feature scaling
    from the training set, rank 0's weights on every rank, the weight average from there."""
    run.st["reference"] = fit_reference(run.model, run.train_frames, run.opts, run.say)
    if hasattr(run.model, "fit_scaling"):
        run.model.fit_scaling(run.graphs)
    run.ddp.broadcast_module(run.model)
    if run.ema is not None:
        run.ema = EMA(run.model, run.opts.ema)  # average from the scaled, broadcast start


def _resume(run: _Run, ckpt: Checkpointer, path) -> None:
    """Go on from the checkpoint ``path``: weights, optimizer, schedule, average, random
    streams and the loop state become the saved ones."""
    # every process reads the checkpoint (multi-node: a shared file system)
    ckpt.path = path
    failure = None
    try:
        js, arrays = ckpt.load()
    except MLFFError as exc:  # e.g. a node that does not see the checkpoint
        failure = exc
    run.ddp.agree(failure)
    if not run.ddp.is_main:
        ckpt.path = None
    saved = unpack_state(js, arrays)
    apply_reference(run.model, saved["reference"])
    run.st = restore_training_state(saved, run.model, run.optimizer, run.scheduler, run.ema, run.rng,
                                    run.ddp.device)
    run.say(f"resumed from {path} at epoch {run.st['epoch'] + 1}, step {run.st['step']}")


# =============================================================================== 4. the epochs
def _train_epochs(run: _Run, ckpt: Checkpointer, guard: StopGuard, progress: bool, callback) -> None:
    """Epochs until the last one or early stopping; a safe point (checkpoint when due, stop
    when asked) after every optimizer step and every epoch."""
    st, opts, ddp = run.st, run.opts, run.ddp
    run.record.history = st["history"]

    def safe_point(force=False):
        # every process must stop at the same step: share the stop request
        flag = torch.tensor([guard.requested or 0], dtype=torch.int64, device=ddp.device)
        ddp.all_reduce(flag, "max")
        if int(flag) and guard.requested is None:
            guard.requested = int(flag)
        ckpt.safe_point(lambda: training_state(st, run.model, run.optimizer, run.scheduler, run.ema, run.rng),
                        force=force)

    bar = EpochBar(opts.epochs, st["epoch"], enabled=progress and ddp.is_main)
    t_start = time.perf_counter()
    elapsed0 = st["elapsed"]

    def clock():  # training seconds, those before a resume included
        return elapsed0 + time.perf_counter() - t_start

    while not st["finished"] and st["epoch"] < opts.epochs:
        t_epoch = time.perf_counter()
        _train_epoch(run, safe_point, clock, callback)
        entry = _end_epoch(run, t_epoch)
        _report_epoch(run, entry, bar)
        st["elapsed"] = clock()
        # epochs of small data sets take a fraction of a second: a checkpoint after each
        # would cost more than the epoch; the interval (and the stop request) decide,
        # and the finished state is always written
        safe_point(force=st["finished"])
    bar.close()
    if not st["finished"]:  # epochs == 0 left after a resume with the same options
        st["finished"], st["stopped"] = True, st["stopped"] or "epochs"


def _train_epoch(run: _Run, safe_point, clock, callback) -> None:
    """The optimizer steps of one epoch over a new shuffled order of the training frames (a
    resumed epoch goes on at its next step)."""
    st, opts = run.st, run.opts
    if st["perm"] is None:
        st["perm"] = run.rng.permutation(len(run.train_frames))
        st["step"], st["sums"], st["n_steps"] = 0, [0.0, 0.0, 0.0, 0.0], 0
    run.model.train()
    while st["step"] < run.steps_per_epoch:
        s = st["step"]
        batch = st["perm"][s * opts.batch_size:(s + 1) * opts.batch_size]
        terms = train_step(run.model, run.params, run.optimizer, batch, run.tsource, run.labels, opts, run.ddp,
                           opts.stress_weight > 0)
        if opts.schedule == "cosine":
            run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.model)
        st["sums"] = [a + b for a, b in zip(st["sums"], terms)]
        st["n_steps"] += 1
        st["step"] += 1
        if callback is not None:
            callback({"epoch": st["epoch"], "step": s, "loss": terms[0]})
        st["elapsed"] = clock()
        safe_point()


def _end_epoch(run: _Run, t_epoch: float) -> dict[str, Any]:
    """Validate with the averaged weights and keep them when best; the epoch's history entry
    (returned), the plateau schedule's step, and whether to stop."""
    st, opts, model, ema = run.st, run.opts, run.model, run.ema
    if ema is not None:
        ema.swap(model)
    try:
        val = validate(model, run.vsource, run.vlabels, opts, run.ddp) if run.valid_frames else {}
        mean = [x / max(st["n_steps"], 1) for x in st["sums"]]
        entry = {"epoch": st["epoch"] + 1, "lr": run.optimizer.param_groups[0]["lr"],
                 "train_loss": mean[0], "train_energy": mean[1], "train_forces": mean[2],
                 "train_stress": mean[3], **val, "time_s": time.perf_counter() - t_epoch}
        monitor = val["valid_loss"] if run.valid_frames else mean[0]
        if monitor < st["best_loss"]:
            st["best_loss"], st["best_epoch"] = monitor, st["epoch"] + 1
            st["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        if ema is not None:
            ema.swap(model)
    st["history"].append(entry)
    if opts.schedule == "plateau":
        run.scheduler.step(monitor)
    st["epoch"] += 1
    st["perm"], st["step"] = None, 0
    if opts.patience and st["epoch"] - (st["best_epoch"] or 0) >= opts.patience:
        st["finished"], st["stopped"] = True, "early_stopping"
    elif st["epoch"] >= opts.epochs:
        st["finished"], st["stopped"] = True, "epochs"
    return entry


def _report_epoch(run: _Run, entry: dict[str, Any], bar: EpochBar) -> None:
    """The epoch's line (to ``log``) or the progress bar's text."""
    from ...console import format_duration as _format_duration

    st, opts = run.st, run.opts
    recent = [h["time_s"] for h in st["history"][-5:]]
    eta = (opts.epochs - st["epoch"]) * sum(recent) / len(recent)  # at most: early stop may come first
    line = (f"epoch {st['epoch']}/{opts.epochs} lr {entry['lr']:.3g} " + metrics_text(entry)
            + f", ETA {_format_duration(eta)}")
    if run.ddp.is_main and not bar.enabled:  # the bar shows the same numbers
        run.say(line)
    bar.update(st["epoch"], metrics_text(entry))


# =============================================================================== 5. finish
def _finish(run: _Run) -> None:
    """The weights of the best epoch (the averaged ones when the average is on), and the record."""
    st, record = run.st, run.record
    if st["best_state"] is not None:
        run.model.load_state_dict(st["best_state"])
    record.history = st["history"]
    record.best_epoch = st["best_epoch"]
    record.best = next((h for h in st["history"] if h["epoch"] == st["best_epoch"]), None)
    record.stopped = st["stopped"]
    record.train_time_s = st["elapsed"]
    if st["reference"] is not None:
        record.reference_energies = dict(zip(st["reference"]["elements"], st["reference"]["e0"]))
        record.reference_rank = st["reference"]["rank"]
        record.reference_source = st["reference"].get("source", "fitted")  # older checkpoints: fitted
        record.energy_scale = st["reference"]["scale"]
    run.model.eval()
