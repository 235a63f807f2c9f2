"""The state of a training run, and how a checkpoint stores it.

A checkpoint (:mod:`ase_mlff.training.checkpoint`) of the trainer holds, under these keys:
``loop`` (:func:`new_loop_state`: position in the epoch, history, best weights, ...),
``reference`` (reference energies and energy scale), ``model``, ``optimizer``, ``scheduler``
and ``ema`` (state dicts), ``rng`` and ``torch_rng`` (the shuffling stream's and torch's random
states): :func:`training_state` writes them, :func:`restore_training_state` reads them back, so
that a resumed run reaches the same weights as an uninterrupted one. Also here: the weight
average (:class:`EMA`) and the model's training dtype (:func:`cast_model`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

KIND = "nn"  # the trainer's name in the checkpoint identity (checkpoint_identity)


# =============================================================================== weights: dtype and average
def cast_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model.to(dtype)``; buffers a family lists in ``float64_buffers`` stay float64 (that is
    :class:`~ase_mlff.models.base.Model`'s own rule), and a ``config["dtype"]`` follows, so the
    model file rebuilds the module in the trained dtype."""
    model.to(dtype)
    if isinstance(getattr(model, "config", None), dict) and "dtype" in model.config:
        model.config["dtype"] = str(dtype).removeprefix("torch.")
    return model


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of the parameters the optimizer updates (``requires_grad``)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class EMA:
    """Exponential moving average of the trainable parameters (buffers are not averaged).

    After update ``n``: ``avg ← d·avg + (1−d)·w`` with ``d = min(decay, (1+n)/(10+n))``, the
    usual warm-up, so the average does not remember the random initial weights for long.
    """

    def __init__(self, model, decay: float):
        self.decay = float(decay)
        self.n = 0
        self.shadow = {n: p.detach().clone() for n, p in trainable(model)}

    @torch.no_grad()
    def update(self, model) -> None:
        self.n += 1
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))
        for n, p in trainable(model):
            self.shadow[n].lerp_(p.detach(), 1.0 - d)

    @torch.no_grad()
    def swap(self, model) -> None:
        """Exchange the model's parameters with the averages (call twice to undo)."""
        for n, p in trainable(model):
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


# =============================================================================== the run's state
def new_loop_state() -> dict[str, Any]:
    """The loop's bookkeeping at the start of a run (the checkpoint's ``loop``): ``epoch`` epochs
    done; ``step`` optimizer steps done in the current epoch's order ``perm`` (None between
    epochs), with ``sums`` of the loss and its energy, force and stress terms over its
    ``n_steps`` steps; ``history`` one entry per epoch; ``best_loss``, ``best_epoch`` and
    ``best_state`` (weights) of the best epoch; ``finished`` and ``stopped`` (why);
    ``reference`` (energies and scale, None when not used); ``elapsed`` training seconds."""
    return {"epoch": 0, "step": 0, "perm": None, "sums": [0.0, 0.0, 0.0, 0.0], "n_steps": 0,
            "history": [], "best_loss": math.inf, "best_epoch": None, "best_state": None,
            "finished": False, "stopped": None, "reference": None, "elapsed": 0.0}


def training_state(loop, model, optimizer, scheduler, ema, rng) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(js, arrays)`` (:func:`pack_state`) of everything a resume needs: the loop state
    ``loop``, the weights, the optimizer, scheduler and weight average (``ema``: an
    :class:`EMA` or None), the shuffling stream ``rng`` and torch's random state."""
    state = {"loop": loop, "reference": loop["reference"], "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "ema": ema.state_dict() if ema is not None else None,
             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
    return pack_state(state)


def restore_training_state(saved, model, optimizer, scheduler, ema, rng, device) -> dict[str, Any]:
    """Load a checkpoint's state (:func:`unpack_state` of what :func:`training_state` wrote)
    into the run's objects (the model's tensors onto ``device``); returns its loop state."""
    model.load_state_dict({k: v.to(device) for k, v in saved["model"].items()})
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None:
        ema.load_state_dict(saved["ema"])
    rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    return saved["loop"]


# =============================================================================== checkpoint identity
def _frames_sha256(train_frames, valid_frames) -> str:
    from ...data import Dataset

    import hashlib

    h = hashlib.sha256(b"ase-mlff nn trainer data")
    for part in (train_frames, valid_frames):
        h.update(Dataset(list(part), validate=False).sha256().encode())
    return h.hexdigest()


def checkpoint_identity(model, train_frames, valid_frames, opts) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (:func:`ase_mlff.training.checkpoint.identity`):
    the frames (sha256), the family and its hyperparameters, every option that changes the
    trained weights (:class:`~.options.TrainerOptions`, less ``RUN_CONTROL``), the split sizes."""
    from ..checkpoint import identity

    return identity(KIND, _frames_sha256(train_frames, valid_frames), {
        "family": getattr(model, "family", type(model).__name__),
        "model": model.get_config() if hasattr(model, "get_config") else None,
        **{k: v for k, v in opts.as_dict().items() if k not in opts.RUN_CONTROL},
        "n_train": len(train_frames), "n_valid": len(valid_frames)})
