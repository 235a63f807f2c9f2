"""The one training loop of every neural-network family (BPNN, SchNet, ...).

Any :class:`~ase_mlff.models.base.Model` with trainable parameters is trained by
:func:`train_network` on labelled frames (:class:`~ase_mlff.data.Frame`). Per optimizer step,
on a mini-batch ``b`` of structures (the *global* batch, whatever the number of processes)::

    L = w_E · Σ_{b∈E} ((Ê_b − E_b) / N_b)² / n_E          energy per atom, (eV/atom)²
      + w_F · Σ_{b∈F} Σ_{i,α} (F̂_iα − F_iα)² / n_F          force components, (eV/Å)²
      + w_S · Σ_{b∈S} Σ_k (σ̂_bk − σ_bk)² / n_S              stress, Voigt, (eV/Å³)²

``E``, ``F``, ``S``: the structures of the batch that carry that label (``n_E`` structures,
``n_F`` = 3 × their atoms, ``n_S`` = 6 × structures with a stress and a cell). The weights
have units (eV/atom)⁻², (eV/Å)⁻² and (eV/Å³)⁻², so L is dimensionless. Defaults:
``w_E = 1``, ``w_F = 10``, ``w_S = 0`` (stress off). Forces and the virial come from the model
contract (``compute(..., create_graph=True)``), so they are exact derivatives of the energy
and the loss is differentiated through them (double backward).

Before training (not on resume):

* reference energies ``e0[Z]`` (eV) are fitted by least squares, ``min Σ_b (E_b − Σ_i e0[Z_i])²``
  over the training frames with an energy (or taken from ``reference_energies``, e.g.
  isolated-atom energies given with ``--reference-energies``: then the network learns
  ``E − Σ e0``), and handed to ``model.set_reference_energies(e0,
  energy_scale)`` together with an energy scale ``s`` (eV): the RMS force component of the
  training set (× 1 Å), or the standard deviation of the residual energy per atom when there
  are no forces. The family adds ``e0`` in float64 and multiplies its network output by ``s``,
  so the network learns O(1) numbers (target scaling);
* ``model.fit_scaling(graphs)`` (optional) lets the family scale its features from the
  training set (:class:`~ase_mlff.graph.FrameGraphs` of the training frames; ``graphs.structures``
  are the frames).

Optimizer AdamW (lr 1e-3, no weight decay by default), learning-rate schedule
ReduceLROnPlateau on the validation loss (factor 0.5, patience 10 epochs, floor 1e-6) or cosine
decay with linear warm-up, gradient-norm clipping at 10, exponential moving average (EMA) of the
weights with decay 0.99 (validation, early stopping and the saved model use the EMA weights),
early stopping after 30 epochs without a better validation loss. The saved model holds the
weights of the best validation epoch.

Nothing is lost: a checkpoint (:mod:`ase_mlff.training.checkpoint`, atomic, uncompressed) is
written every ``checkpoint_interval`` seconds (at the next optimizer step or epoch end), when
training finishes and, on SIGINT/SIGTERM, at the end of the current optimizer step; it holds model
weights, optimizer, scheduler, EMA, best state, random-stream states, position in the epoch and
history, so that ``resume=True`` reaches the same weights as an uninterrupted run. The model
file is written atomically once, at the end.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes every W-th structure
of each global batch, gradients are summed with ``all_reduce`` (gloo on CPU, nccl on GPU), and
the result equals the single-process run up to summation order. Only rank 0 checks and writes
files (checkpoints, the model, plots; it removes the checkpoint) and prints; the ranks meet in
:meth:`Distributed.agree` wherever one of them could stop alone (checks, reading the data and
the checkpoint, writing the model), so they stop together and none runs ahead of a file being
written. Command line::

    torchrun --standalone --nproc_per_node 2 -m ase_mlff.training.trainer data.extxyz \\
        --family bpnn --model-config @model.json -o model.mlff --epochs 100

See docs/nn_training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ...errors import DatasetError, InputError, MLFFError, OutputExistsError, TrainingError
from ..common import (IN_ENERGY_UNIT, REFERENCE_ENERGIES_HELP, UsageError, check_split_elements, nn_observables,
                     parse_reference_energies, reference_energies_record)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SCHEDULES = ("plateau", "cosine")
KIND = "nn"


# =============================================================================== options
@dataclass
class TrainerOptions:
    """Options of :func:`train_network` (the command-line flags of :func:`configure_parser`).

    Loss weights: ``energy_weight`` (eV/atom)⁻², ``force_weight`` (eV/Å)⁻², ``stress_weight``
    (eV/Å³)⁻² (0: stress not fitted). ``batch_size``: structures per optimizer step, summed over
    all processes. ``lr`` learning rate; ``schedule`` "plateau" (ReduceLROnPlateau on the
    validation loss: ``lr_factor``, ``lr_patience`` epochs, floor ``min_lr``) or "cosine"
    (linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr`` at ``epochs``);
    ``ema`` decay of the weight average (0: off); ``clip`` gradient-norm limit (0: off);
    ``patience`` epochs without a better validation loss before stopping (0: never stop early);
    ``dtype`` of the network ("float32" or "float64"); ``seed`` of the shuffling stream;
    ``device`` "auto" (cuda when available), "cpu" or "cuda". ``reference_energies``: element
    symbol -> eV, used instead of fitting them (every training element needs one).
    """

    epochs: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    energy_weight: float = 1.0
    force_weight: float = 10.0
    stress_weight: float = 0.0
    schedule: str = "plateau"
    lr_factor: float = 0.5
    lr_patience: int = 10
    min_lr: float = 1e-6
    warmup_epochs: int = 0
    ema: float = 0.99
    clip: float = 10.0
    patience: int = 30
    dtype: str = "float32"
    seed: int = 0
    device: str = "auto"
    fit_reference: bool = True
    checkpoint_interval: float = 60.0
    reference_energies: dict[str, float] | None = None

    #: options that do not change the trained weights (a resume may change them)
    RUN_CONTROL = ("checkpoint_interval", "device")

    def check(self) -> "TrainerOptions":
        def bad(name, what):
            raise InputError(f"trainer option {name} must be {what}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                bad(name, "a positive integer")
        for name in ("lr_patience", "patience", "warmup_epochs", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                bad(name, "a non-negative integer")
        for name in ("lr", "weight_decay", "energy_weight", "force_weight", "stress_weight", "min_lr", "clip",
                     "checkpoint_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                bad(name, "a finite number >= 0")
        if self.lr <= 0:
            bad("lr", "positive")
        if not 0 < self.lr_factor < 1:
            bad("lr_factor", "between 0 and 1 (exclusive)")
        if not 0 <= self.ema < 1:
            bad("ema", "a decay in [0, 1) (0 switches the average off)")
        if self.energy_weight == self.force_weight == self.stress_weight == 0:
            raise InputError("every loss weight is 0; give --energy-weight, --force-weight or --stress-weight > 0")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            bad("dtype", "'float32' or 'float64'")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", "'auto', 'cpu' or 'cuda'")
        if self.reference_energies is not None:
            # the same checks as --reference-energies (elements, finite eV values); stored as
            # element -> eV, so the options stay JSON (the checkpoint identity, the record)
            given = parse_reference_energies(dict(self.reference_energies))
            self.reference_energies = {chemical_symbols[z]: v for z, v in given.energies.items()}
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# =============================================================================== record
@dataclass
class TrainingRecord:
    """What :func:`train_network` returns (and writes into the model file's ``training``).

    ``history``: one dict per epoch (``epoch``, ``lr``, ``train_loss`` and its ``train_energy``/
    ``train_forces``/``train_stress`` terms, ``valid_loss``, ``valid_energy_mae``/``_rmse``
    eV/atom, ``valid_forces_mae``/``_rmse`` eV/Å, ``valid_stress_mae`` eV/Å³, ``time_s``);
    ``best_epoch`` and ``best`` (that epoch's entry); ``stopped``: "epochs" or
    "early_stopping"; ``reference_energies`` {element: eV}, ``reference_source`` ("given" or
    "fitted"), ``energy_scale`` eV; ``trained_on``: the observables with a label and a
    positive loss weight.
    """

    options: dict[str, Any]
    n_train: int
    n_valid: int
    world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best: dict[str, Any] | None = None
    stopped: str | None = None
    reference_energies: dict[str, float] | None = None
    reference_rank: int | None = None
    reference_source: str | None = None
    energy_scale: float | None = None
    trained_on: list[str] = field(default_factory=list)
    train_time_s: float = 0.0
    plots: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        b = self.best or {}
        lines = [f"trained {len(self.history)} epochs on {self.n_train} structures ({self.world_size} process"
                 f"{'es' if self.world_size > 1 else ''}), stopped by {self.stopped}, {self.train_time_s:.1f} s"]
        if b:
            lines.append(f"best epoch {self.best_epoch}: " + _metrics_text(b))
        return "\n".join(lines)


def _metrics_text(h: dict[str, Any]) -> str:
    parts = [f"loss {h['train_loss']:.4g}"]
    if h.get("valid_loss") is not None:
        parts.append(f"valid {h['valid_loss']:.4g}")
    if h.get("valid_energy_mae") is not None:
        parts.append(f"E MAE {1e3 * h['valid_energy_mae']:.3g} meV/atom")
    if h.get("valid_forces_mae") is not None:
        parts.append(f"F MAE {1e3 * h['valid_forces_mae']:.3g} meV/Å")
    if h.get("valid_stress_mae") is not None:
        parts.append(f"S MAE {1e3 * h['valid_stress_mae']:.3g} meV/Å³")
    return ", ".join(parts)


# =============================================================================== statistics
def fit_reference_energies(frames: Sequence, species: Sequence[int]) -> tuple[np.ndarray, int]:
    """``(e0, rank)``: :func:`ase_mlff.training.common.reference_energies` (least squares of the
    energies on the element counts, minimum-norm when compositions are collinear)."""
    from ..common import reference_energies

    return reference_energies(frames, [int(z) for z in species], with_rank=True)


def energy_scale(frames: Sequence, species: Sequence[int], e0: np.ndarray) -> float:
    """Target scale (eV): RMS force component of ``frames`` (eV/Å × 1 Å), or the standard
    deviation of the energy per atom after subtracting ``e0`` when no frame has forces; 1 when
    neither is available or both vanish."""
    sq, n = 0.0, 0
    for fr in frames:
        if fr.forces is not None:
            sq += float(np.sum(fr.forces ** 2))
            n += fr.forces.size
    if n and sq > 0:
        return math.sqrt(sq / n)
    index = {int(z): k for k, z in enumerate(species)}
    res = [(fr.energy - sum(e0[index[int(z)]] for z in fr.numbers)) / len(fr) for fr in frames
           if fr.energy is not None]
    std = float(np.std(res)) if len(res) > 1 else 0.0
    return std if std > 0 else 1.0


# =============================================================================== model helpers
def cast_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(dtype)``; buffers a family lists in ``float64_buffers`` stay float64 (that is
    :class:`~ase_mlff.models.base.Model`'s own rule), and a ``config["dtype"]`` follows, so the
    model file rebuilds the module in the trained dtype."""
    model.to(dtype)
    if isinstance(getattr(model, "config", None), dict) and "dtype" in model.config:
        model.config["dtype"] = str(dtype).removeprefix("torch.")
    return model


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class EMA:
    """Exponential moving average of the trainable parameters (buffers are not averaged).

    After update ``n``: ``avg ← d·avg + (1−d)·w`` with ``d = min(decay, (1+n)/(10+n))``, the
    usual warm-up, so the average does not remember the random initial weights for long.
    """

    def __init__(self, model, decay: float):
        self.decay = float(decay)
        self.n = 0
        self.shadow = {n: p.detach().clone() for n, p in _trainable(model)}

    @torch.no_grad()
    def update(self, model) -> None:
        self.n += 1
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))
        for n, p in _trainable(model):
            self.shadow[n].lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def swap(self, model) -> None:
        """Exchange the model's parameters with the averages (call twice to undo)."""
        for n, p in _trainable(model):
            tmp = p.detach().clone()
            p.copy_(self.shadow[n])
            self.shadow[n].copy_(tmp)

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "decay": self.decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state) -> None:
        self.n = int(state["n"])
        with torch.no_grad():
            for n, t in state["shadow"].items():
                self.shadow[n].copy_(t)


# =============================================================================== checkpoint packing
# Optimizer, scheduler and EMA states are nested dicts of tensors, numbers and strings (with
# integer keys). They are stored without pickle: tensors go into two flat arrays (floats as
# float64, exact for float32/float16; integers and bools as int64), everything else into JSON.
def _pack(obj, floats: list, ints: list):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        entry = {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if t.is_floating_point():
            entry["f"] = sum(a.size for a in floats)
            floats.append(t.to(torch.float64).numpy().ravel())
        else:
            entry["i"] = sum(a.size for a in ints)
            ints.append(t.to(torch.int64).numpy().ravel())
        return entry
    if isinstance(obj, np.ndarray):
        return _pack(torch.from_numpy(np.ascontiguousarray(obj)), floats, ints) | {"numpy": True}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _pack(v, floats, ints) for k, v in obj.items()}}
        return {"__items__": [[_pack(k, floats, ints), _pack(v, floats, ints)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [_pack(v, floats, ints) for v in obj]}
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else {"__float__": repr(float(obj))}
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training checkpoint")


def _unpack(obj, floats: np.ndarray, ints: np.ndarray, device=None):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            shape = tuple(obj["shape"])
            n = math.prod(shape)
            if "f" in obj:
                a = floats[obj["f"]:obj["f"] + n]
            else:
                a = ints[obj["i"]:obj["i"] + n]
            t = torch.from_numpy(np.array(a).reshape(shape)).to(getattr(torch, obj["__tensor__"]))
            if obj.get("numpy"):
                return t.numpy()
            return t if device is None else t.to(device)
        if "__dict__" in obj:
            return {k: _unpack(v, floats, ints, device) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {_unpack(k, floats, ints, device): _unpack(v, floats, ints, device) for k, v in obj["__items__"]}
        if "__list__" in obj:
            return [_unpack(v, floats, ints, device) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_unpack(v, floats, ints, device) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
    return obj


def pack_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    floats, ints = [], []
    js = _pack(state, floats, ints)
    arrays = {"floats": np.concatenate(floats) if floats else np.zeros(0),
              "ints": np.concatenate(ints) if ints else np.zeros(0, dtype=np.int64)}
    return js, arrays


def unpack_state(js, arrays, device=None) -> dict[str, Any]:
    return _unpack(js, np.asarray(arrays["floats"]), np.asarray(arrays["ints"]), device)


# =============================================================================== distributed
# What another rank's failure looks like on this one: the same class (so every process exits with
# the same status) and message, marked with ``peer_rank`` so the command line does not print it
# a second time (the rank that met it did).
def _error_classes() -> dict[str, type]:
    from ...errors import ModelFileError
    from ..common import ReferenceEnergiesError, SplitError, UsageError

    return {c.__name__: c for c in (MLFFError, InputError, OutputExistsError, ModelFileError, DatasetError,
                                    TrainingError, UsageError, SplitError, ReferenceEnergiesError, ValueError,
                                    TypeError, OSError, FileNotFoundError, PermissionError, ImportError,
                                    ModuleNotFoundError)}


def reported_elsewhere(exc: BaseException) -> bool:
    """Whether ``exc`` stands for another rank's error, which that rank reports (see
    :meth:`Distributed.agree`): a command prints nothing for it and exits with the same status."""
    return getattr(exc, "peer_rank", None) is not None


def process_rank() -> int:
    """This process's rank: the process group's when one is joined, else torchrun's ``RANK``
    (0 for a single process). Decides who prints and writes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


@dataclass
class Distributed:
    """This process's place in a data-parallel run (``world == 1``: a single process).

    Who does what: every rank trains; **rank 0 alone** checks and writes files (checkpoint,
    model, plots; it removes the checkpoint) and prints; the other ranks wait for it at
    :meth:`agree`, a collective that also shares a failure, so a rank never trains on while
    another has stopped, and no rank goes on past a file rank 0 is still writing.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Every process starts from rank 0's weights and buffers."""
        if self.world > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(t.data, src=0)

    def broadcast_text(self, text: str, src: int = 0) -> str:
        """``src``'s ``text`` on every rank (UTF-8 bytes in a tensor: no pickle)."""
        if self.world <= 1:
            return text
        import torch.distributed as dist

        data = text.encode() if self.rank == src else b""
        n = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(n, src=src)
        buf = (torch.tensor(list(data), dtype=torch.uint8) if self.rank == src
               else torch.zeros(int(n), dtype=torch.uint8)).to(self.device)
        dist.broadcast(buf, src=src)
        return bytes(buf.cpu().tolist()).decode()

    def agree(self, error: BaseException | None = None) -> None:
        """Collective (every rank calls it, also as a barrier): when any rank passes an error,
        every rank raises. The lowest failing rank raises its own ``error``; every other rank
        raises one of the same class and message with ``peer_rank`` set (see
        :func:`reported_elsewhere`). A single process just raises ``error``."""
        if self.world <= 1:
            if error is not None:
                raise error
            return
        flags = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        flags[self.rank] = int(error is not None)
        self.all_reduce(flags)
        failed = torch.nonzero(flags).flatten().tolist()
        if not failed:
            return
        src = int(failed[0])
        what = self.broadcast_text(f"{type(error).__name__}\n{error}" if self.rank == src else "", src)
        if self.rank == src:
            error.all_ranks = True
            raise error
        name, _, message = what.partition("\n")
        exc = _error_classes().get(name, TrainingError)(message if name in _error_classes()
                                                          else f"rank {src}: {name}: {message}")
        exc.peer_rank, exc.all_ranks = src, True
        raise exc

    def same_everywhere(self, text: str, what: str) -> None:
        """Refuse (TrainingError on every rank) to go on when the ranks' ``text`` differ: the
        processes must train the same model on the same data with the same options."""
        if self.world <= 1:
            return
        import hashlib

        h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")  # fits an int64
        lo_hi = torch.tensor([-h, h], dtype=torch.int64, device=self.device)
        self.all_reduce(lo_hi, "max")
        if -int(lo_hi[0]) != int(lo_hi[1]):
            exc = TrainingError(f"the {self.world} processes differ in {what}; every process must read the same "
                                "data with the same command (multi-node: the same data file and flags on every node)")
            exc.all_ranks = True
            if not self.is_main:  # every rank found it; rank 0 reports it
                exc.peer_rank = 0
            raise exc

    def close(self, error: BaseException | None = None) -> None:
        """Leave the group this object joined (nothing for a group joined elsewhere). ``error``:
        the exception on the way out, if any."""
        if self.initialized_here:
            import torch.distributed as dist

            # Everyone waits for everyone before the group is torn down: a rank that destroyed its
            # gloo group early aborted at exit now and then ("terminate called without an active
            # exception", status -6). Not after an error only this rank met: the others are in
            # another collective, and leaving at once makes theirs fail instead of hang.
            try:
                if error is None or in_step(error):
                    dist.barrier()
            finally:
                dist.destroy_process_group()
                self.initialized_here = False


def in_step(exc: BaseException) -> bool:
    """Whether every rank raised ``exc`` at the same point (shared by :meth:`Distributed.agree`,
    a stop request shared at a safe point, a diverging loss every rank sums alike)."""
    from ..checkpoint import TrainingInterrupted

    return bool(getattr(exc, "all_ranks", False) or reported_elsewhere(exc) or isinstance(exc, TrainingInterrupted))


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); a single process when
    ``WORLD_SIZE`` is unset or 1. Backend nccl with one GPU per process when CUDA is used,
    gloo otherwise. A group joined before (e.g. by :func:`distributed_run`) is reused, and
    left for its owner to close."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for, but torch sees no GPU; use --device cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if world <= 1:
        return Distributed(0, 1, dev, False)
    import torch.distributed as dist

    if not dist.is_available():
        raise TrainingError("WORLD_SIZE > 1 but this torch was built without torch.distributed; "
                            "run a single process")
    if dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), dev, False)
    if use_cuda:
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), dev, True)


class distributed_run:
    """``with distributed_run(device) as ddp:`` holds the process group (under torchrun) for a
    whole command, so that what comes before and after :func:`train_network` (reading the
    data, checking the outputs, writing the model) can use :meth:`Distributed.agree` too;
    :func:`train_network` reuses the group. Closes it (after a barrier) on the way out."""

    def __init__(self, device: str = "auto"):
        self.device = device
        self.ddp: Distributed | None = None

    def __enter__(self) -> Distributed:
        self.ddp = init_distributed(self.device)
        return self.ddp

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.ddp.close(exc)
        return False


def run_recipe(prog: str, body: Callable[[Any, "Distributed"], int], args) -> int:
    """A network recipe's command: ``body(args, ddp)`` inside one process group for the whole
    command (:class:`distributed_run`); a group that cannot be joined is an error of ``prog``
    (exit status 1)."""
    try:
        with distributed_run(args.device) as ddp:
            return body(args, ddp)
    except MLFFError as exc:  # joining the process group failed, or another rank's error
        if not reported_elsewhere(exc):
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def recipe_failure(prog: str) -> Callable[[BaseException, int], int]:
    """``fail(exc, code)`` of a recipe's command: print the error in the command line's words
    unless another rank reports it (:func:`reported_elsewhere`), return ``code``."""
    from ...data import command_line_message

    def fail(exc, code):
        # printed by the rank that met it when the ranks agreed on it (Distributed.agree marks it
        # all_ranks); one that every rank met by itself (a split check of the same data), by rank 0
        if not reported_elsewhere(exc) and (getattr(exc, "all_ranks", False) or process_rank() == 0):
            print(f"{prog}: error: {command_line_message(str(exc))}", file=sys.stderr)
        return code

    return fail


# =============================================================================== labels and loss
class _Labels:
    """Per-frame targets as float64 tensors, and which labels each frame has."""

    def __init__(self, frames, device):
        self.frames = frames
        self.natoms = np.array([len(f) for f in frames], dtype=np.int64)
        self.has_e = np.array([f.energy is not None for f in frames])
        self.has_f = np.array([f.forces is not None for f in frames])
        self.volume = np.array([f.volume for f in frames])
        self.has_s = np.array([f.stress is not None and v > 1e-12 for f, v in zip(frames, self.volume)])
        self.device = device

    def counts(self, idx) -> tuple[int, int, int]:
        """(n_E, n_F, n_S) of a global batch: the denominators of the loss terms."""
        idx = np.asarray(idx, dtype=np.int64)
        return (int(self.has_e[idx].sum()), int(3 * self.natoms[idx][self.has_f[idx]].sum()),
                int(6 * self.has_s[idx].sum()))

    def batch(self, idx):
        idx = list(idx)
        d = self.device
        f64 = torch.float64
        e = torch.tensor([self.frames[i].energy if self.has_e[i] else 0.0 for i in idx], dtype=f64, device=d)
        n = torch.tensor(self.natoms[idx], dtype=f64, device=d)
        me = torch.tensor(self.has_e[idx], device=d)
        forces = torch.cat([torch.as_tensor(self.frames[i].forces if self.has_f[i] else np.zeros((len(self.frames[i]), 3)),
                                            dtype=f64) for i in idx]).to(d)
        mf = torch.cat([torch.full((int(self.natoms[i]),), bool(self.has_f[i])) for i in idx]).to(d)
        stress = torch.tensor(np.array([self.frames[i].stress if self.has_s[i] else np.zeros(6) for i in idx]),
                              dtype=f64, device=d)
        ms = torch.tensor(self.has_s[idx], device=d)
        vol = torch.tensor(np.where(self.has_s[idx], self.volume[idx], 1.0), dtype=f64, device=d)
        return e, n, me, forces, mf, stress, ms, vol


_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


class FamilyCache:
    """The family's training-time caches of a frame list (the ``training_batch`` hook):
    ``model.prepare_training_frame(frame)`` once per frame, after the model has its training
    dtype and device. Rebuilt (never stored) on resume: a cache depends only on the frame and
    the model's hyperparameters."""

    def __init__(self, model, frames, say=None):
        t0 = time.perf_counter()
        self.items = [model.prepare_training_frame(fr) for fr in frames]
        if say is not None and frames:
            say(f"prepared the training caches of {len(frames)} frames ({time.perf_counter() - t0:.1f} s)")

    def __len__(self):
        return len(self.items)


def has_training_hook(model) -> bool:
    """Whether the family supplies its own training-time evaluation (both hooks)."""
    return callable(getattr(model, "training_batch", None)) and callable(getattr(model, "prepare_training_frame", None))


def _errors(model, source, labels, idx, need_f: bool, need_s: bool, create_graph: bool):
    """Errors of the model on one batch (``idx`` into ``source``: :class:`FrameGraphs`, or a
    :class:`FamilyCache`): (dE/N over frames with energy, dF over atoms with forces, dσ over
    frames with stress), float64."""
    e, n, me, forces, mf, stress, ms, vol = labels.batch(idx)
    if isinstance(source, FamilyCache):
        # the family's own evaluation: same energies/forces as compute(), cheaper to train
        energy, f_pred = model.training_batch([source.items[int(k)] for k in idx], create_graph=create_graph)
        de = ((energy - e) / n)[me]
        df = (f_pred.to(torch.float64) - forces)[mf] if need_f else forces[:0]
        return de, df, stress[:0]
    out = model.compute(source.batch(idx), forces=need_f, stress=need_s, create_graph=create_graph)
    de = ((out.energy - e) / n)[me]
    df = (out.forces.to(torch.float64) - forces)[mf] if need_f else forces[:0]
    if need_s:
        sig = out.virial.to(torch.float64) / vol[:, None, None]
        voigt = torch.stack([sig[:, a, b] for a, b in _VOIGT], dim=1)
        ds = (voigt - stress)[ms]
    else:
        ds = stress[:0]
    return de, df, ds


# =============================================================================== the loop
def _frames_sha256(train_frames, valid_frames) -> str:
    from ...data import Dataset

    import hashlib

    h = hashlib.sha256(b"ase-mlff nn trainer data")
    for part in (train_frames, valid_frames):
        h.update(Dataset(list(part), validate=False).sha256().encode())
    return h.hexdigest()


def _default_plots(output, plot_dir) -> list[str]:
    if output is None and plot_dir is None:
        return []
    base = os.path.basename(os.fspath(output)) if output is not None else "training"
    stem = base[:-5] if base.endswith(".mlff") else base
    where = os.fspath(plot_dir) if plot_dir is not None else os.path.dirname(os.fspath(output))
    return [os.path.join(where, f"{stem}.learning_curve.png"), os.path.join(where, f"{stem}.parity.png")]


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
    ``checkpoint_interval`` seconds and on SIGINT/SIGTERM (default ``<output>.ckpt``; None without output: no file), removed after the
    model is saved; ``resume``: continue from it. ``log``: receives one line per epoch;
    ``progress``: a progress bar on stderr. ``callback(event)`` is called after each optimizer
    step (``{"epoch", "step", "loss"}``) and ``stop_after=k`` stops after the k-th safe point
    (both for tests). Raises :class:`~ase_mlff.training.checkpoint.TrainingInterrupted` (after
    writing the checkpoint) when stopped by a signal.
    """
    from ...graph import FrameGraphs
    from ...rng import random_stream
    from ..checkpoint import Checkpointer, StopGuard, check_output, default_checkpoint_path, identity

    opts = (options or TrainerOptions()).check()
    train_frames, valid_frames = list(train_frames), list(valid_frames)
    ddp = init_distributed(opts.device)
    # every rank computes the same numbers; rank 0 alone reports them
    say = (log or (lambda msg: None)) if ddp.is_main else (lambda msg: None)
    error = None
    try:
        # ---------------------------------------------------------------- checks (rank 0: files)
        if checkpoint is None and output is not None:
            checkpoint = default_checkpoint_path(output)
        plot_paths = _default_plots(output, plot_dir) if plots else []
        failure = None
        try:
            if not _trainable(model):
                raise TrainingError(f"this {getattr(model, 'family', type(model).__name__)} model has no trainable "
                                    "parameters; kernel and spline families have their own training recipes")
            if not train_frames:
                raise DatasetError("no training frames; give at least one labelled structure")
            _check_labels(model, train_frames, valid_frames, opts)
            if ddp.is_main:
                check_output(output, overwrite, resume)
                if not (overwrite or resume):
                    for p in plot_paths:
                        check_output(p, False, False)
                if checkpoint is not None and not resume and os.path.exists(checkpoint):
                    raise OutputExistsError(f"checkpoint {checkpoint} exists from an interrupted run; resume it "
                                            "(--resume) or delete it to start over")
                if resume and (checkpoint is None or not os.path.exists(checkpoint)):
                    raise TrainingError(f"there is no checkpoint {checkpoint} to resume from; give it with "
                                        "--checkpoint, or start without --resume")
        except MLFFError as exc:
            failure = exc
        # nobody starts (or reads a checkpoint) unless every rank may: a refusal on rank 0 alone
        # would leave the others waiting in the first collective
        ddp.agree(failure)

        dtype = DTYPES[opts.dtype]
        original_device = next(model.parameters()).device
        ident = identity(KIND, _frames_sha256(train_frames, valid_frames), {
            "family": getattr(model, "family", type(model).__name__),
            "model": model.get_config() if hasattr(model, "get_config") else None,
            **{k: v for k, v in opts.as_dict().items() if k not in TrainerOptions.RUN_CONTROL},
            "n_train": len(train_frames), "n_valid": len(valid_frames)})
        # e.g. a family that chose its hyperparameters from the frames on each rank, or nodes
        # reading different files: refused before rank 0's weights are broadcast into them
        ddp.same_everywhere(json.dumps(ident, sort_keys=True), "their training data, options or model "
                                                               "hyperparameters")
        cast_model(model, dtype)
        model.to(ddp.device)
        params = [p for _, p in _trainable(model)]
        graphs = FrameGraphs(train_frames, model.cutoff, dtype=dtype, device=ddp.device)
        vgraphs = FrameGraphs(valid_frames, model.cutoff, dtype=dtype, device=ddp.device)
        if has_training_hook(model):
            # the family's cache (e.g. BPNN: descriptor values and Jacobians), built once here
            # and again on resume; fit_scaling still sees the FrameGraphs
            tsource, vsource = FamilyCache(model, train_frames, say), FamilyCache(model, valid_frames, say)
        else:
            tsource, vsource = graphs, vgraphs
        labels, vlabels = _Labels(train_frames, ddp.device), _Labels(valid_frames, ddp.device)
        record = TrainingRecord(options=opts.as_dict(), n_train=len(train_frames), n_valid=len(valid_frames),
                                world_size=ddp.world,
                                trained_on=nn_observables(train_frames, opts.energy_weight, opts.force_weight,
                                                          opts.stress_weight))

        optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
        steps_per_epoch = math.ceil(len(train_frames) / opts.batch_size)
        scheduler = _scheduler(optimizer, opts, steps_per_epoch)
        ema = EMA(model, opts.ema) if opts.ema > 0 else None
        rng = random_stream(opts.seed, "nn-shuffle")
        st: dict[str, Any] = {"epoch": 0, "step": 0, "perm": None, "sums": [0.0, 0.0, 0.0, 0.0], "n_steps": 0,
                              "history": [], "best_loss": math.inf, "best_epoch": None, "best_state": None,
                              "finished": False, "stopped": None, "reference": None, "elapsed": 0.0}

        with StopGuard(stream=sys.stderr if ddp.is_main else None) as guard:
            ckpt = Checkpointer(checkpoint if ddp.is_main else None, ident, interval_s=opts.checkpoint_interval,
                                stop_after=stop_after, guard=guard)
            if resume:
                # every process reads the checkpoint (multi-node: a shared file system)
                ckpt.path = checkpoint
                failure = None
                try:
                    js, arrays = ckpt.load()
                except MLFFError as exc:  # e.g. a node that does not see the checkpoint
                    failure = exc
                ddp.agree(failure)
                if not ddp.is_main:
                    ckpt.path = None
                saved = unpack_state(js, arrays)
                _apply_reference(model, saved["reference"], record)
                model.load_state_dict({k: v.to(ddp.device) for k, v in saved["model"].items()})
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
                if ema is not None:
                    ema.load_state_dict(saved["ema"])
                rng.bit_generator.state = saved["rng"]
                torch.set_rng_state(saved["torch_rng"])
                st = saved["loop"]
                say(f"resumed from {checkpoint} at epoch {st['epoch'] + 1}, step {st['step']}")
            else:
                st["reference"] = _fit_reference(model, train_frames, opts, record, say)
                if hasattr(model, "fit_scaling"):
                    model.fit_scaling(graphs)
                ddp.broadcast_module(model)
                if ema is not None:
                    ema = EMA(model, opts.ema)  # average from the scaled, broadcast start
            record.history = st["history"]

            def snapshot():
                state = {"loop": st, "reference": st["reference"], "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "ema": ema.state_dict() if ema is not None else None,
                         "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
                return pack_state(state)

            def safe_point(force=False):
                # every process must stop at the same step: share the stop request
                flag = torch.tensor([guard.requested or 0], dtype=torch.int64, device=ddp.device)
                ddp.all_reduce(flag, "max")
                if int(flag) and guard.requested is None:
                    guard.requested = int(flag)
                ckpt.safe_point(snapshot, force=force)

            bar = _EpochBar(opts.epochs, st["epoch"], enabled=progress and ddp.is_main)
            t_start = time.perf_counter()
            elapsed0 = st["elapsed"]
            need_s_any = opts.stress_weight > 0
            while not st["finished"] and st["epoch"] < opts.epochs:
                t_epoch = time.perf_counter()
                if st["perm"] is None:
                    st["perm"] = rng.permutation(len(train_frames))
                    st["step"], st["sums"], st["n_steps"] = 0, [0.0, 0.0, 0.0, 0.0], 0
                model.train()
                while st["step"] < steps_per_epoch:
                    s = st["step"]
                    batch = st["perm"][s * opts.batch_size:(s + 1) * opts.batch_size]
                    terms = _train_step(model, params, optimizer, batch, tsource, labels, opts, ddp, need_s_any)
                    if opts.schedule == "cosine":
                        scheduler.step()
                    if ema is not None:
                        ema.update(model)
                    st["sums"] = [a + b for a, b in zip(st["sums"], terms)]
                    st["n_steps"] += 1
                    st["step"] += 1
                    if callback is not None:
                        callback({"epoch": st["epoch"], "step": s, "loss": terms[0]})
                    st["elapsed"] = elapsed0 + time.perf_counter() - t_start
                    safe_point()
                # ------------------------------------------------------------ end of epoch
                if ema is not None:
                    ema.swap(model)
                try:
                    val = _validate(model, vsource, vlabels, opts, ddp) if valid_frames else {}
                    mean = [x / max(st["n_steps"], 1) for x in st["sums"]]
                    entry = {"epoch": st["epoch"] + 1, "lr": optimizer.param_groups[0]["lr"],
                             "train_loss": mean[0], "train_energy": mean[1], "train_forces": mean[2],
                             "train_stress": mean[3], **val, "time_s": time.perf_counter() - t_epoch}
                    monitor = val["valid_loss"] if valid_frames else mean[0]
                    if monitor < st["best_loss"]:
                        st["best_loss"], st["best_epoch"] = monitor, st["epoch"] + 1
                        st["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                finally:
                    if ema is not None:
                        ema.swap(model)
                st["history"].append(entry)
                if opts.schedule == "plateau":
                    scheduler.step(monitor)
                st["epoch"] += 1
                st["perm"], st["step"] = None, 0
                if opts.patience and st["epoch"] - (st["best_epoch"] or 0) >= opts.patience:
                    st["finished"], st["stopped"] = True, "early_stopping"
                elif st["epoch"] >= opts.epochs:
                    st["finished"], st["stopped"] = True, "epochs"
                from ...console import format_duration as _format_duration

                recent = [h["time_s"] for h in st["history"][-5:]]
                eta = (opts.epochs - st["epoch"]) * sum(recent) / len(recent)  # at most: early stop may come first
                line = (f"epoch {st['epoch']}/{opts.epochs} lr {entry['lr']:.3g} " + _metrics_text(entry)
                        + f", ETA {_format_duration(eta)}")
                if ddp.is_main and not bar.enabled:  # the bar shows the same numbers
                    say(line)
                bar.update(st["epoch"], _metrics_text(entry))
                st["elapsed"] = elapsed0 + time.perf_counter() - t_start
                # epochs of small data sets take a fraction of a second: a checkpoint after each
                # would cost more than the epoch; the interval (and the stop request) decide,
                # and the finished state is always written
                safe_point(force=st["finished"])
            bar.close()
            if not st["finished"]:  # epochs == 0 left after a resume with the same options
                st["finished"], st["stopped"] = True, st["stopped"] or "epochs"

        # ---------------------------------------------------------------- result
        if st["best_state"] is not None:
            model.load_state_dict(st["best_state"])
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
        model.eval()
        failure = None
        if ddp.is_main:
            try:
                if output is not None:
                    from ...io import save_model

                    save_model(model, output, training={"trained_on": record.trained_on,
                                                        "reference_energies": reference_record(record),
                                                        **(training or {}), "trainer": record.as_dict()})
                    say(f"model written to {output}")
                if plot_paths:
                    record.plots = write_plots(record, model, valid_frames or train_frames, plot_paths)
                if checkpoint is not None and output is not None and os.path.exists(checkpoint):
                    os.unlink(checkpoint)  # the model file holds everything the checkpoint did
            except (MLFFError, OSError) as exc:
                failure = exc
        # the other ranks wait here until rank 0 has written (or failed to write) its files
        ddp.agree(failure)
        model.to(original_device)
        return model, record
    except BaseException as exc:
        error = exc
        raise
    finally:
        ddp.close(error)


def _check_labels(model, train_frames, valid_frames, opts) -> None:
    for name, frames in (("training", train_frames), ("validation", valid_frames)):
        for k, fr in enumerate(frames):
            try:
                model.check_numbers(fr.numbers)
            except InputError as exc:
                raise DatasetError(f"{name} frame {k}: {exc}") from None
    if opts.energy_weight > 0 and not any(f.energy is not None for f in train_frames) and opts.force_weight == 0:
        raise DatasetError("no training frame has an energy and the force weight is 0; nothing to fit")
    if opts.force_weight > 0 and not any(f.forces is not None for f in train_frames) and opts.energy_weight == 0:
        raise DatasetError("no training frame has forces and the energy weight is 0; nothing to fit")
    if opts.stress_weight > 0:
        if has_training_hook(model):
            raise TrainingError(f"--stress-weight {opts.stress_weight:g}: the {model.family} family trains "
                                "through its training_batch hook, which gives energies and forces only; set "
                                "the stress weight to 0")
        if not getattr(model, "supports_stress", False):
            raise TrainingError(f"--stress-weight {opts.stress_weight:g}: this {model.family} model gives no "
                                "stress; set the stress weight to 0")
        if not any(f.stress is not None and f.volume > 1e-12 for f in train_frames):
            raise DatasetError(f"--stress-weight {opts.stress_weight:g} but no training frame has a stress "
                               "label and a cell; set the stress weight to 0 or add stress labels")


def _fit_reference(model, frames, opts, record, say) -> dict[str, Any] | None:
    if not hasattr(model, "set_reference_energies"):
        return None
    if opts.reference_energies is not None:  # given (e.g. isolated atoms): the network learns E - sum e0
        given = parse_reference_energies(opts.reference_energies)
        e0, rank, source = given.for_species(model.species), None, "given"
    elif opts.fit_reference:
        (e0, rank), source = fit_reference_energies(frames, model.species), "fitted"
    else:
        return None
    scale = energy_scale(frames, model.species, e0)
    ref = {"elements": list(model.elements), "e0": [float(v) for v in e0], "rank": rank, "scale": scale,
           "source": source}
    _apply_reference(model, ref, record)
    note = ("" if rank is None or rank >= len(e0)
            else f" (composition rank {rank} < {len(e0)} elements: minimum-norm solution)")
    say(f"reference energies ({source}) " + ", ".join(f"{el} {v:.6f}" for el, v in zip(ref["elements"], ref["e0"]))
        + f" eV{note}; energy scale {scale:.4g} eV")
    return ref


def reference_record(record: TrainingRecord, given=None) -> dict[str, Any] | None:
    """``training["reference_energies"]`` (:func:`ase_mlff.training.common.reference_energies_record`)
    of a trained network from its :class:`TrainingRecord`; ``given``: the
    :class:`~ase_mlff.training.common.GivenReferenceEnergies` they came from, for the record."""
    if record.reference_energies is None:
        return None
    els = list(record.reference_energies)
    species = [chemical_symbols.index(el) for el in els]
    if record.reference_source == "given":
        how = "given; the networks learn E - sum e0"
    else:
        rank = record.reference_rank
        how = "least squares on the training energies"
        if rank is not None and rank < len(els):
            how += (f" (composition rank {rank} < {len(els)} elements: the minimum-norm solution, one of many; "
                    "only composition-weighted sums are fixed, so per-atom energies mean nothing: give "
                    "isolated-atom energies with --reference-energies)")
    return reference_energies_record(species, [record.reference_energies[el] for el in els],
                                     record.reference_source or "fitted", how,
                                     given if record.reference_source == "given" else None)


def _apply_reference(model, ref, record) -> None:
    if ref is not None:
        model.set_reference_energies(np.asarray(ref["e0"], dtype=np.float64), ref["scale"])


def _scheduler(optimizer, opts: TrainerOptions, steps_per_epoch: int):
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


def _train_step(model, params, optimizer, batch, graphs, labels, opts, ddp, need_s_any) -> list[float]:
    """One optimizer step on a global batch; returns [loss, energy, forces, stress terms]."""
    n_e, n_f, n_s = labels.counts(batch)
    w_e = opts.energy_weight / n_e if n_e else 0.0
    w_f = opts.force_weight / n_f if n_f else 0.0
    w_s = opts.stress_weight / n_s if n_s else 0.0
    local = batch[ddp.rank::ddp.world]
    optimizer.zero_grad(set_to_none=True)
    terms = torch.zeros(4, dtype=torch.float64, device=ddp.device)
    if len(local):
        need_f = w_f > 0 and bool(labels.has_f[local].any())
        need_s = need_s_any and w_s > 0 and bool(labels.has_s[local].any())
        de, df, ds = _errors(model, graphs, labels, local, need_f, need_s, create_graph=need_f or need_s)
        # sums divided by the global counts: the processes' losses add up to the global loss
        parts = torch.stack([w_e * (de ** 2).sum(), w_f * (df ** 2).sum(), w_s * (ds ** 2).sum()])
        loss = parts.sum()
        loss.backward()
        terms[0] = loss.detach()
        terms[1:] = parts.detach()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if ddp.world > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        ddp.all_reduce(flat)
        ddp.all_reduce(terms)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(p).clone()
            offset += g.numel()
    else:
        for p, g in zip(params, grads):
            p.grad = g
    values = [float(x) for x in terms.cpu()]
    if not math.isfinite(values[0]):
        # every process sees the same summed loss, so all of them stop here together
        exc = TrainingError(f"the training loss became {values[0]} (learning rate "
                            f"{optimizer.param_groups[0]['lr']:.3g}); lower --lr or --clip, or look for "
                            "frames with absurd labels; the weights were not updated")
        exc.all_ranks = True
        if not ddp.is_main:  # rank 0 reports it
            exc.peer_rank = 0
        raise exc
    if opts.clip > 0:
        torch.nn.utils.clip_grad_norm_(params, opts.clip)
    optimizer.step()
    return values


@torch.no_grad()
def _validate(model, vgraphs, vlabels, opts, ddp) -> dict[str, Any]:
    """Validation loss (the training formula over all validation frames) and MAE/RMSE."""
    model.eval()
    n = len(vlabels.frames)
    mine = np.arange(n)[ddp.rank::ddp.world]
    need_f = bool(vlabels.has_f.any())
    need_s = opts.stress_weight > 0 and bool(vlabels.has_s.any())
    # sums: |dE|, dE², |dF|, dF², |dσ|, dσ²
    sums = torch.zeros(6, dtype=torch.float64, device=ddp.device)
    for k in range(0, len(mine), opts.batch_size):
        idx = mine[k:k + opts.batch_size]
        de, df, ds = _errors(model, vgraphs, vlabels, idx, need_f, need_s, create_graph=False)
        sums += torch.stack([de.abs().sum(), (de ** 2).sum(), df.abs().sum(), (df ** 2).sum(),
                             ds.abs().sum(), (ds ** 2).sum()])
    ddp.all_reduce(sums)
    s = [float(x) for x in sums.cpu()]
    n_e, n_f, n_s = vlabels.counts(np.arange(n))
    if not need_f:
        n_f = 0
    if not need_s:
        n_s = 0
    loss = ((opts.energy_weight * s[1] / n_e if n_e else 0.0) + (opts.force_weight * s[3] / n_f if n_f else 0.0)
            + (opts.stress_weight * s[5] / n_s if n_s else 0.0))
    model.train()
    return {"valid_loss": loss,
            "valid_energy_mae": s[0] / n_e if n_e else None, "valid_energy_rmse": math.sqrt(s[1] / n_e) if n_e else None,
            "valid_forces_mae": s[2] / n_f if n_f else None, "valid_forces_rmse": math.sqrt(s[3] / n_f) if n_f else None,
            "valid_stress_mae": s[4] / n_s if n_s else None}


# =============================================================================== progress and plots
class _EpochBar:
    """Progress bar over epochs with the latest metrics (stderr; see
    :class:`~ase_mlff.console.ProgressBar`); the ETA counts this session's epochs."""

    def __init__(self, total, start, enabled):
        from ...console import ProgressBar

        bar = self

        class Bar(ProgressBar):
            def rate(self):
                dt = time.perf_counter() - self.t0
                return (self.done - start) / dt if dt > 0 and self.done > start else float("nan")

            def _line(self):
                return super()._line() + (f" | {bar.text}" if bar.text else "")

        self.text = ""
        self.enabled = enabled
        self.bar = Bar(total, label="epoch", unit="epochs", enabled=enabled)
        self.bar.done = start

    def update(self, done, text):
        self.text = text
        self.bar.update(done)

    def close(self):
        self.bar.close()


def write_plots(record: TrainingRecord, model, frames, paths: Sequence[str]) -> list[str]:
    """Learning curve (losses and validation MAEs per epoch) and a parity plot of ``model`` on
    ``frames`` (energy per atom and force components), PNG, to ``paths[0]`` and ``paths[1]``."""
    from ...graph import FrameGraphs
    from ...figures import figure, save

    written = []
    hist = record.history
    if hist:
        ep = [h["epoch"] for h in hist]
        fig = figure(7.0, 3.2)
        ax = fig.add_subplot(1, 2, 1)
        ax.semilogy(ep, [h["train_loss"] for h in hist], label="train")
        if hist[0].get("valid_loss") is not None:
            ax.semilogy(ep, [h["valid_loss"] for h in hist], label="validation")
        if record.best_epoch:
            ax.axvline(record.best_epoch, color="0.6", lw=0.8, ls="--", label="best")
        ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        for key, name, factor in (("valid_energy_mae", "E MAE (meV/atom)", 1e3), ("valid_forces_mae", "F MAE (meV/Å)", 1e3)):
            vals = [h.get(key) for h in hist]
            if any(v is not None for v in vals):
                ax.semilogy(ep, [np.nan if v is None else factor * v for v in vals], label=name)
        ax.set_xlabel("epoch"), ax.set_ylabel("validation error"), ax.legend(fontsize=8)
        written.append(save(fig, paths[0], dpi=110))
    fg = FrameGraphs(frames, model.cutoff, dtype=model.dtype, device=next(model.parameters()).device)
    e_ref, e_pred, f_ref, f_pred = [], [], [], []
    for k, fr in enumerate(frames):
        out = model.compute(fg[k], forces=fr.forces is not None)
        if fr.energy is not None:
            e_ref.append(fr.energy / len(fr)), e_pred.append(float(out.energy[0]) / len(fr))
        if fr.forces is not None:
            f_ref.append(fr.forces.ravel()), f_pred.append(out.forces.detach().cpu().numpy().ravel())
    panels = []
    if e_ref:
        shift = float(np.mean(e_ref))
        panels.append(("energy per atom − mean (meV/atom)", 1e3 * (np.array(e_ref) - shift),
                       1e3 * (np.array(e_pred) - shift), 1.0, "meV/atom"))
    if f_ref:
        panels.append(("force component (eV/Å)", np.concatenate(f_ref), np.concatenate(f_pred), 1e3, "meV/Å"))
    if panels:
        fig = figure(3.4 * len(panels), 3.4)
        for k, (name, ref, pred, factor, unit) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), k + 1)
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8)
            ax.plot(ref, pred, ".", ms=2, alpha=0.5, color=f"C{k}")
            ax.set_title(f"MAE {np.abs(pred - ref).mean() * factor:.3g} {unit}", fontsize=9)
            ax.set_xlabel(f"reference {name}", fontsize=8), ax.set_ylabel(f"model {name}", fontsize=8)
        written.append(save(fig, paths[1], dpi=110))
    return written


# =============================================================================== command line
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
            where = (f"checkpoint written to {exc.checkpoint}; resume with the same command plus --resume"
                     if exc.checkpoint else "no checkpoint was written")
            print(f"{prog}: interrupted ({exc.signal_name}); {where}", file=sys.stderr)
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
                for path in write_plots(report["record"], model, frames, _default_plots(args.output, args.plot_dir)):
                    progress(f"plot written to {path}")
            ckpt = args.checkpoint or default_checkpoint_path(args.output)
            if os.path.exists(ckpt):
                os.unlink(ckpt)
        except (MLFFError, OSError) as exc:
            failure = exc
    ddp.agree(failure)


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


if __name__ == "__main__":
    sys.exit(main())
