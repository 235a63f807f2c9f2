"""Frozen descriptors with a ridge head: ``ase-mlff fit-head`` and :func:`fit_head`.

    ase-mlff fit-head rmd17_schnet_pretrained.mlff qm9.extxyz --target energy --pooling sum
    ase-mlff fit-head water_bpnn.mlff frames.extxyz --target gap --splits 20 -o gap_head.mlff

A trained network's per-atom features (``MLFFCalculator.get_descriptors``: SchNet's atom
features after the last interaction block, Behler–Parrinello symmetry functions) are kept
fixed; each structure's features are pooled into one vector and a linear model with an L2
penalty (ridge regression) maps that vector to any per-structure scalar of the data (an extxyz
``info`` key, or ``energy``). Tsubaki & Mizoguchi 2021 ("Quantum Deep Descriptor: Physically
Informed Transfer Learning from Small Molecules to Polymers", docs/references.md) read a frozen
pre-trained network this way; it
measures how much of a new property the representation already holds, with a fit that takes
seconds and has one hyperparameter.

Pooling. ``sum`` adds the atoms' features, so the prediction grows with the number of atoms:
right for extensive targets (total or atomisation energies, heat capacities). ``mean`` averages
them, so two copies of a molecule (or a bigger supercell of a crystal) give the same value:
right for intensive targets (a HOMO–LUMO gap, an energy per atom, a band gap, a dipole per
volume). Otherwise summed atom contributions make a predicted gap grow with molecule size,
which a gap does not do. The default (``auto``) is ``sum`` for the
total-energy label (``energy``/``free_energy``), ``mean`` for every other key, and the choice is
printed; say ``--pooling`` to decide yourself.

Composition. The element counts (sum pooling) or fractions (mean pooling) are appended to the
pooled features unless ``--no-composition``: total energies are dominated by per-element
constants (about −1,035 eV per carbon atom), which a linear map of pooled features need not
contain. On QM9 U0 with the rMD17-pre-trained SchNet (sum pooling) it takes the test MAE
from 177 eV to 0.27 eV (benchmarks/transfer.py heads; docs/transfer_learning.md).

The ridge fit. Features are standardised on the training frames (columns with no spread are
dropped), the target is centred, and the penalty α is chosen from a logarithmic grid by exact
leave-one-out cross-validation on the training frames only (closed form from one SVD: the
LOO residual is ``r_i / (1 − h_ii)``), so the test frames never influence α. Errors are
measured on ``--splits`` repeated random splits (``--n-train`` frames, or ``--train-fraction``,
to train, the rest to test; seeded) and reported as mean ± standard deviation over the splits,
as Tsubaki & Mizoguchi 2021 report theirs, beside the error of predicting the training mean (the baseline a head must
beat). With ``--output`` the head fitted on all frames is written as an archive (no code
executed on loading; records the descriptor model's identity, the target, pooling and α) that
:func:`load_head` reads and :meth:`RidgeHead.predict` applies.

Which model a head belongs to. A head is a linear map of one model's features, meaningless on
any other model's. :func:`model_identity` gives every model, loaded from a file or built in
memory alike, its family and a sha256 over the family, the hyperparameters and the arrays (see
there); the head records it and :meth:`RidgeHead.predict` refuses (InputError naming both
families and hashes) a calculator whose model has another. Heads written before this identity
existed carry only the sha256 of their model *file*: they are still accepted with a calculator
loaded from that very file (the check they were written with, sound for files), and refused
with a model in memory, which they cannot identify, with the advice to fit them again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DatasetError, InputError, ModelFileError
from ..graph import batch_graphs
from ..metrics import mae_rmse

POOLINGS = ("mean", "sum")
#: labels that are total energies (extensive): pooled by summing unless told otherwise
EXTENSIVE_KEYS = ("energy", "free_energy")
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-8, 4, 25))
CONTENT = "ridge head"


def default_pooling(target: str) -> str:
    return "sum" if target in EXTENSIVE_KEYS else "mean"


# ------------------------------------------------------------------------- model identity
def _canonical(value):
    """Hyperparameters as JSON that does not depend on how they were built: every number a
    float, tuples lists, and the ``dtype`` the model computes in left out (below)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items() if k != "dtype"}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_canonical(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, str):
        return bool(value) if isinstance(value, np.bool_) else value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return str(value)


def model_identity(model) -> dict[str, str]:
    """``{"family", "sha256"}`` of a model: the same function for a model loaded from a file and
    one in memory, so a head can tell them apart by what they compute, not by where they came
    from. The sha256 covers the family, the hyperparameters (``get_config()``, canonical JSON)
    and every array of ``get_arrays()`` in sorted order: its name, its shape and its values,
    floating-point arrays as float64 (a float32 value is exactly a float64 one) and integer or
    boolean ones as int64. The dtype is left out on purpose: a float32 model file evaluated by
    a float64 calculator (``MLFFCalculator(path, dtype="float64")``, an exact cast) is the same
    model; a float64 model rounded to float32 has other values and so another identity."""
    h = hashlib.sha256(b"ase-mlff model identity 1\0")
    family = str(getattr(model, "family", type(model).__name__))
    h.update(family.encode() + b"\0")
    config = model.get_config() if hasattr(model, "get_config") else {}
    h.update(json.dumps(_canonical(config), sort_keys=True, separators=(",", ":")).encode() + b"\0")
    for name, a in sorted(model.get_arrays().items()):
        a = np.asarray(a)
        kind = "<f8" if np.issubdtype(a.dtype, np.floating) else "<i8"
        h.update(f"{name}:{list(a.shape)}:{kind}\0".encode())
        h.update(np.ascontiguousarray(a, dtype=kind).tobytes())
    return {"family": family, "sha256": h.hexdigest()}


# ------------------------------------------------------------------------- features
def pooled_descriptors(calc, structures: Sequence, pooling: str, chunk: int = 64,
                       composition: bool = False) -> np.ndarray:
    """(n_structures, D) float64: each structure's per-atom descriptors (``calc``'s model, an
    :class:`~ase_mlff.calculator.MLFFCalculator`) summed or averaged over its atoms.
    ``structures``: ase.Atoms or :class:`~ase_mlff.data.Frame` objects. ``composition``: append
    the count of each of the model's elements (sum pooling) or its fraction (mean pooling), so
    that a linear head can give each element its own offset."""
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    model = calc.model
    if not model.has_descriptors:
        model.atom_descriptors(None)  # raises InputError naming the family
    out = []
    with calc._lock, torch.no_grad():
        for start in range(0, len(structures), chunk):
            graphs = [calc._prepare(_as_atoms(s))[0] for s in structures[start:start + chunk]]
            g = batch_graphs(graphs)
            x = model.atom_descriptors(g).to(torch.float64)
            b = g.batch.to(x.device)
            pooled = torch.zeros(len(graphs), x.shape[1], dtype=torch.float64, device=x.device).index_add(0, b, x)
            counts = torch.bincount(b, minlength=len(graphs)).to(torch.float64)
            if pooling == "mean":
                pooled = pooled / counts[:, None]
            if composition:
                s = model.species_index(g.numbers).to(b.device)
                comp = torch.zeros(len(graphs), len(model.species), dtype=torch.float64, device=x.device)
                comp.index_put_((b, s), torch.ones_like(b, dtype=torch.float64), accumulate=True)
                if pooling == "mean":
                    comp = comp / counts[:, None]
                pooled = torch.cat([pooled, comp], dim=1)
            out.append(pooled.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def _as_atoms(s):
    if hasattr(s, "get_positions"):
        return s
    return s.to_atoms()


# ------------------------------------------------------------------------- ridge
@dataclass
class RidgeFit:
    """``y ≈ ((x − mean) / scale)[keep] · weights + intercept``."""

    mean: np.ndarray
    scale: np.ndarray
    keep: np.ndarray
    weights: np.ndarray
    intercept: float
    alpha: float
    loo_rmse: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale)[:, self.keep]
        return Z @ self.weights + self.intercept


def ridge_fit(X: np.ndarray, y: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS) -> RidgeFit:
    """Ridge regression on standardised features with α chosen by exact leave-one-out CV.

    With ``Z = U S Vᵀ`` (thin SVD of the standardised, centred features) the fit for penalty α
    is ``w = V diag(s / (s² + α)) Uᵀ y_c`` and the diagonal of the hat matrix (intercept
    included) ``h_i = 1/n + Σ_k U_ik² s_k² / (s_k² + α)``; the leave-one-out residual is
    ``(y_i − ŷ_i) / (1 − h_i)``. No normal equations are formed, so nothing squares the
    condition number of ``Z``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if X.ndim != 2 or len(X) != n:
        raise InputError(f"features {X.shape} and targets {y.shape} do not match")
    if n < 3:
        raise InputError(f"a ridge head needs at least 3 training structures, got {n}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise InputError("features or targets contain NaN or infinite values")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    keep = scale > 1e-12 * max(1.0, float(np.abs(X).max(initial=0.0)))
    scale = np.where(keep, scale, 1.0)
    Z = ((X - mean) / scale)[:, keep]
    ym = float(y.mean())
    yc = y - ym
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    Uty = U.T @ yc
    best = None
    for alpha in alphas:
        f = s ** 2 / (s ** 2 + alpha)
        fitted = U @ (f * Uty)
        h = 1.0 / n + (U ** 2) @ f
        loo = (yc - fitted) / np.maximum(1.0 - h, 1e-12)
        mse = float(np.mean(loo ** 2))
        if best is None or mse < best[0]:
            best = (mse, float(alpha))
    mse, alpha = best
    w = Vt.T @ ((s / (s ** 2 + alpha)) * Uty)
    return RidgeFit(mean=mean, scale=scale, keep=keep, weights=w, intercept=ym, alpha=alpha,
                    loo_rmse=float(np.sqrt(mse)))


# ------------------------------------------------------------------------- experiment
@dataclass
class HeadReport:
    target: str
    pooling: str
    n_structures: int
    n_train: int
    n_splits: int
    mae: list[float] = field(default_factory=list)
    rmse: list[float] = field(default_factory=list)
    baseline_mae: list[float] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def ms(v):
            return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}

        return {"target": self.target, "pooling": self.pooling, "structures": self.n_structures,
                "train": self.n_train, "test": self.n_structures - self.n_train, "splits": self.n_splits,
                "mae": ms(self.mae), "rmse": ms(self.rmse), "baseline_mae": ms(self.baseline_mae),
                "alpha_median": float(np.median(self.alphas))}


def repeated_splits(X: np.ndarray, y: np.ndarray, n_train: int, n_splits: int = 10, seed: int = 0,
                    alphas: Sequence[float] = DEFAULT_ALPHAS, target: str = "", pooling: str = "") -> HeadReport:
    """Fit on ``n_train`` random structures and test on the rest, ``n_splits`` times."""
    n = len(y)
    if not 3 <= n_train < n:
        raise InputError(f"n_train must lie in 3..{n - 1} (there are {n} structures), got {n_train}")
    from ..rng import random_stream

    rng = random_stream(seed, "fit-head splits")
    rep = HeadReport(target=target, pooling=pooling, n_structures=n, n_train=n_train, n_splits=n_splits)
    for _ in range(n_splits):
        perm = rng.permutation(n)
        tr, te = perm[:n_train], perm[n_train:]
        fit = ridge_fit(X[tr], y[tr], alphas)
        err = fit.predict(X[te]) - y[te]
        mae, rmse = mae_rmse(err)
        rep.mae.append(mae)
        rep.rmse.append(rmse)
        rep.baseline_mae.append(mae_rmse(y[te] - y[tr].mean())[0])
        rep.alphas.append(fit.alpha)
    return rep


# ------------------------------------------------------------------------- the head
@dataclass
class RidgeHead:
    """A ridge head on a frozen model's pooled descriptors, fitted on all the given frames."""

    fit: RidgeFit
    target: str
    pooling: str
    #: sha256 of the model *file* the head was fitted on (None for a model in memory); the only
    #: identity heads written before :func:`model_identity` carry
    model_sha256: str | None
    info: dict[str, Any] = field(default_factory=dict)
    composition: bool = False
    #: :func:`model_identity` of the descriptor model (None in heads written before it existed)
    descriptor: dict[str, str] | None = None

    def check_model(self, model) -> None:
        """InputError unless ``model`` is the model this head was fitted on (module docstring)."""
        fitted_on = self.info.get("model_path")
        where = f" ({fitted_on})" if fitted_on else ""
        refit = "fit a head on this model's descriptors (ase-mlff fit-head MODEL DATA --target ...)"
        if self.descriptor is not None:
            mine = model_identity(model)
            if mine["sha256"] != self.descriptor.get("sha256"):
                fam = self.descriptor.get("family")
                why = ("same family, other weights or hyperparameters" if fam == mine["family"]
                       else "another family")
                raise InputError(
                    f"this head was fitted on the descriptors of a {fam} model (sha256 "
                    f"{str(self.descriptor.get('sha256'))[:16]}...{', ' + fitted_on if fitted_on else ''}), "
                    f"not on this {mine['family']} model "
                    f"(sha256 {mine['sha256'][:16]}...: {why}); its weights mean nothing for other features: use "
                    f"a calculator of the model it was fitted on, or {refit}")
            return
        source = getattr(model, "source", None) or {}
        if self.model_sha256 is None:
            raise InputError(f"this head records no identity of its descriptor model (written by an older "
                             f"ase-mlff from a model in memory), so it cannot be checked against any model; {refit}")
        if source.get("sha256") is None:
            raise InputError(
                f"this head (written by an older ase-mlff) identifies its descriptor model only by the sha256 of "
                f"its file, {self.model_sha256[:16]}...{where}, and this model was not loaded from a file; load it "
                f"from that file (MLFFCalculator(path)), or {refit}")
        if source["sha256"] != self.model_sha256:
            raise InputError(
                f"this head was fitted on the descriptors of the model file with sha256 {self.model_sha256[:16]}..."
                f"{where}, not {source.get('path')} ({source['sha256'][:16]}...); use that file, or {refit}")

    def predict(self, calc, structures) -> np.ndarray:
        """Predicted targets of ``structures`` (a list of ase.Atoms), with ``calc`` an
        MLFFCalculator of the model the head was fitted on (checked: :meth:`check_model`)."""
        self.check_model(calc.model)
        single = hasattr(structures, "get_positions")
        X = pooled_descriptors(calc, [structures] if single else list(structures), self.pooling,
                               composition=self.composition)
        if X.shape[1] != len(self.fit.mean):  # cannot happen for the model checked above; never a raw numpy error
            raise InputError(f"this head expects {len(self.fit.mean)} pooled descriptor columns, the model gives "
                             f"{X.shape[1]}")
        y = self.fit.predict(X)
        return y[0] if single else y

    def save(self, path) -> None:
        from .._version import __version__
        from ..io import FORMAT_NAME, FORMAT_VERSION, write_archive

        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "content": CONTENT,
                "package_version": __version__, "target": self.target, "pooling": self.pooling,
                "model_sha256": self.model_sha256, "descriptor_model": self.descriptor, "alpha": self.fit.alpha,
                "intercept": self.fit.intercept, "loo_rmse": self.fit.loo_rmse, "info": self.info,
                "composition": self.composition}
        arrays = {"mean": self.fit.mean, "scale": self.fit.scale, "keep": self.fit.keep.astype(np.int8),
                  "weights": self.fit.weights}
        write_archive(path, meta, arrays)


def load_head(path) -> RidgeHead:
    """Read a head written by :meth:`RidgeHead.save` (verified archive; ModelFileError if not)."""
    from ..io import read_archive

    meta, arrays = read_archive(path)
    if meta.get("content") != CONTENT:
        raise ModelFileError(f"{path} is not a ridge head (content {meta.get('content')!r})")
    try:
        mean, scale = np.asarray(arrays["mean"], float), np.asarray(arrays["scale"], float)
        keep, weights = np.asarray(arrays["keep"]).astype(bool), np.asarray(arrays["weights"], float)
        ok = (mean.ndim == 1 and scale.shape == mean.shape and keep.shape == mean.shape
              and weights.shape == (int(keep.sum()),) and np.all(scale > 0) and meta["pooling"] in POOLINGS)
        fit = RidgeFit(mean=mean, scale=scale, keep=keep, weights=weights, intercept=float(meta["intercept"]),
                       alpha=float(meta["alpha"]), loo_rmse=float(meta["loo_rmse"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: incomplete ridge head ({exc})") from None
    if not ok:
        raise ModelFileError(f"{path}: inconsistent ridge head arrays")
    descriptor = meta.get("descriptor_model")  # absent from heads written before model_identity
    if descriptor is not None and not (isinstance(descriptor, dict)
                                       and all(isinstance(descriptor.get(k), str) for k in ("family", "sha256"))):
        raise ModelFileError(f"{path}: descriptor_model must name a family and a sha256")
    return RidgeHead(fit=fit, target=str(meta["target"]), pooling=meta["pooling"],
                     model_sha256=meta.get("model_sha256"), info=meta.get("info") or {},
                     composition=bool(meta.get("composition", False)), descriptor=descriptor)


# ------------------------------------------------------------------------- data
def read_targets(path, target: str, energy_unit=None, length_unit=None, index=":"):
    """(frames, y): the structures of ``path`` and their scalar ``target`` (float64). For
    ``energy``/``free_energy`` the dataset's energy label (eV, converted from ``energy_unit``);
    for any other key the ``info`` value as stored (no unit conversion)."""
    from .. import data as mdata

    ds = mdata.read(path, index=index, energy_unit=energy_unit, length_unit=length_unit,
                    require_energy=target in EXTENSIVE_KEYS, require_forces=False)
    frames = list(ds)
    y = []
    for k, f in enumerate(frames):
        if target in EXTENSIVE_KEYS:
            v = f.energy
        elif target in f.info:
            v = f.info[target]
        else:
            keys = sorted(k2 for k2, v2 in f.info.items() if np.ndim(v2) == 0 and _is_number(v2))
            raise DatasetError(f"{path}, frame {k}: no info key {target!r}; scalar keys there: "
                               f"{', '.join(keys) or 'none'} (or 'energy')")
        if not _is_number(v) or np.ndim(v) != 0:
            raise DatasetError(f"{path}, frame {k}: {target} = {str(v)[:40]!r} is not a scalar number")
        v = float(v)
        if not np.isfinite(v):
            raise DatasetError(f"{path}, frame {k}: {target} is {v}")
        y.append(v)
    return frames, np.array(y)


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, (str, bytes))


def _unknown_element_frames(model, frames) -> list[int]:
    known = set(model.species)
    return [k for k, f in enumerate(frames) if not set(np.unique(f.numbers).tolist()) <= known]


def fit_head(model, data, target: str, pooling: str | None = None, n_train: int | None = None,
             train_fraction: float = 0.8, n_splits: int = 10, seed: int = 0, skip_unknown: bool = False,
             alphas: Sequence[float] = DEFAULT_ALPHAS, energy_unit=None, length_unit=None, say=None,
             composition: bool = True):
    """Python entry point of ``ase-mlff fit-head``: returns ``(head fitted on all frames,
    HeadReport of the repeated splits)``. ``model``: a model file path or an MLFFCalculator."""
    from ..calculator import MLFFCalculator
    from ..models.base import symbols

    say = say or (lambda *_: None)
    calc = model if isinstance(model, MLFFCalculator) else MLFFCalculator(model)
    frames, y = read_targets(data, target, energy_unit, length_unit) if isinstance(data, (str, os.PathLike)) \
        else data
    bad = _unknown_element_frames(calc.model, frames)
    if bad:
        elements = sorted({int(z) for k in bad for z in frames[k].numbers} - set(calc.model.species))
        if not skip_unknown:
            raise InputError(
                f"{len(bad)} of {len(frames)} structures contain element(s) {', '.join(symbols(elements))} "
                f"that the model ({', '.join(calc.model.elements)}) has no descriptors for; "
                "--skip-unknown leaves them out"
            )
        say(f"left out {len(bad)} structures with {', '.join(symbols(elements))} (unknown to the model)")
        keep = np.setdiff1d(np.arange(len(frames)), bad)
        frames, y = [frames[k] for k in keep], y[keep]
    pooling = pooling or default_pooling(target)
    if n_train is None:
        n_train = int(round(train_fraction * len(frames)))
    X = pooled_descriptors(calc, frames, pooling, composition=composition)
    say(f"{len(frames)} structures, {X.shape[1]} descriptor columns"
        + (f" ({len(calc.model.species)} of them the composition)" if composition else "") + f", {pooling} pooling")
    report = repeated_splits(X, y, n_train, n_splits, seed, alphas, target, pooling)
    full = ridge_fit(X, y, alphas)
    source = getattr(calc.model, "source", None) or {}
    digest = hashlib.sha256(np.ascontiguousarray(y).tobytes())
    for f in frames:
        digest.update(np.ascontiguousarray(f.positions, dtype=np.float64).tobytes())
    head = RidgeHead(fit=full, target=target, pooling=pooling, model_sha256=source.get("sha256"), composition=composition,
                     descriptor=model_identity(calc.model),
                     info={"model_path": source.get("path"), "data": str(data) if isinstance(data, (str, os.PathLike))
                           else None, "data_sha256": digest.hexdigest(), "report": report.summary()})
    return head, report


# ------------------------------------------------------------------------- command line
def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ..console import HelpFormatter  # "(default: X)" unless the help states it

    p.formatter_class = HelpFormatter
    p.description = ("Fit a ridge regression from a frozen model's pooled per-atom descriptors to a\n"
                     "per-structure property (as Tsubaki & Mizoguchi 2021 read a pre-trained network); report the\n"
                     "test error over repeated random splits.")
    p.add_argument("model", help="model file whose per-atom descriptors are used, frozen (schnet, bpnn)")
    p.add_argument("data", help="structures with the target (extxyz info key, or energy)")
    p.add_argument("--target", required=True, help="per-structure scalar to fit: an info key, or energy")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="sum (extensive targets) or mean (intensive targets); default: sum for energy, "
                        "mean for any other key")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--n-train", type=int, default=None, help="training structures per split")
    g.add_argument("--train-fraction", type=float, default=0.8, help="fraction of structures to train on per split")
    p.add_argument("--splits", type=int, default=10, help="repeated random splits")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits")
    p.add_argument("--no-composition", dest="composition", action="store_false",
                   help="features only: without the element counts (sum) or fractions (mean) appended, a "
                        "linear head cannot give each element its own offset")
    p.add_argument("--skip-unknown", action="store_true",
                   help="leave out structures with elements the model does not know (else an error)")
    p.add_argument("--energy-unit", default=None, help="energy unit of the data when not eV (target energy)")
    p.add_argument("--length-unit", default=None, help="length unit of the data when not Å")
    p.add_argument("--output", "-o", default=None, help="write the head fitted on all structures here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(_run=run)
    return p


def run(args) -> int:
    import json

    from ..errors import OutputExistsError

    if args.output and os.path.exists(args.output) and not args.overwrite:
        raise OutputExistsError(f"{args.output} exists; add --overwrite to replace it")
    if args.splits < 1:
        print("ase-mlff fit-head: error: --splits must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.train_fraction < 1:
        print("ase-mlff fit-head: error: --train-fraction must lie strictly between 0 and 1", file=sys.stderr)
        return 2

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.pooling is None:
        say(f"pooling: {default_pooling(args.target)} "
            f"({'a total energy is extensive' if args.target in EXTENSIVE_KEYS else 'an intensive target is assumed'}; "
            "--pooling to choose)")
    try:
        head, report = fit_head(args.model, args.data, args.target, args.pooling, args.n_train, args.train_fraction,
                                args.splits, args.seed, args.skip_unknown, energy_unit=args.energy_unit,
                                length_unit=args.length_unit, say=say, composition=args.composition)
    except InputError as exc:
        if "n_train" in str(exc):
            print(f"ase-mlff fit-head: error: --n-train: {exc}", file=sys.stderr)
            return 2
        raise
    s = report.summary()
    if args.output:
        head.save(args.output)
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        print(f"target {s['target']} ({s['pooling']} pooling): {s['structures']} structures, "
              f"{s['train']} train / {s['test']} test, {s['splits']} random splits")
        print(f"  test MAE  {s['mae']['mean']:.6g} ± {s['mae']['std']:.2g}")
        print(f"  test RMSE {s['rmse']['mean']:.6g} ± {s['rmse']['std']:.2g}")
        print(f"  baseline MAE (training mean) {s['baseline_mae']['mean']:.6g}; ridge alpha (median) "
              f"{s['alpha_median']:.3g}")
        if args.output:
            print(f"head fitted on all {s['structures']} structures written to {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(configure_parser(argparse.ArgumentParser(prog="ase-mlff fit-head")).parse_args()))
