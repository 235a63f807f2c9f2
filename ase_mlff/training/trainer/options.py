"""What a training run is given and what it gives back.

:class:`TrainerOptions`: the options of :func:`~ase_mlff.training.trainer.train_network` (the
shared command-line flags of :func:`~ase_mlff.training.trainer.configure_parser`); every one
that changes the trained weights is part of the checkpoint's identity. :class:`TrainingRecord`:
the per-epoch history and the outcome, returned and written into the model file's
``training`` entry.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols

from ...errors import InputError
from ..common import parse_reference_energies

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SCHEDULES = ("plateau", "cosine")


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
            lines.append(f"best epoch {self.best_epoch}: " + metrics_text(b))
        return "\n".join(lines)


def metrics_text(h: dict[str, Any]) -> str:
    """One line of an epoch's numbers (a :attr:`TrainingRecord.history` entry): losses and the
    validation MAEs in meV units."""
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
