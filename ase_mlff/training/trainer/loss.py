"""Labels and loss: the errors of a batch, one optimizer step, the validation pass.

Per optimizer step, on a global batch ``b`` of structures::

    L = w_E · Σ_{b∈E} ((Ê_b − E_b) / N_b)² / n_E          energy per atom, (eV/atom)²
      + w_F · Σ_{b∈F} Σ_{i,α} (F̂_iα − F_iα)² / n_F          force components, (eV/Å)²
      + w_S · Σ_{b∈S} Σ_k (σ̂_bk − σ_bk)² / n_S              stress, Voigt, (eV/Å³)²

with ``n_E``, ``n_F``, ``n_S`` the labelled structures, force components and stress components
of the *global* batch, so that the processes' partial losses add up to the global loss. The
model's outputs come from :meth:`~ase_mlff.models.base.Model.compute` (``create_graph=True``),
or from the family's ``training_batch`` hook over a :class:`FamilyCache`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ...errors import DatasetError, InputError, TrainingError


# =============================================================================== labels and errors
class Labels:
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


def batch_errors(model, source, labels, idx, need_f: bool, need_s: bool, create_graph: bool):
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


# =============================================================================== checks, step, validation
def check_labels(model, train_frames, valid_frames, opts) -> None:
    """Refuse frames the model cannot take (elements) and options with nothing to fit (every
    weighted label missing, a stress weight the model or the data cannot serve)."""
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


def train_step(model, params, optimizer, batch, graphs, labels, opts, ddp, need_s_any) -> list[float]:
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
        de, df, ds = batch_errors(model, graphs, labels, local, need_f, need_s, create_graph=need_f or need_s)
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
def validate(model, vgraphs, vlabels, opts, ddp) -> dict[str, Any]:
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
        de, df, ds = batch_errors(model, vgraphs, vlabels, idx, need_f, need_s, create_graph=False)
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
