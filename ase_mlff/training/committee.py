"""Train committees of any family: ``train_committee`` (Python), ``ase-mlff train FAMILY --committee K``.

Recipe (the model is :class:`ase_mlff.models.committee.CommitteeModel`; its docstring gives
the equations of the served prediction and the uncertainties):

0. Before anything trains, every member's subsample (its training part) and the served mean's
   training frames are checked to hold every element of the training pool, of the validation
   frames and of the calibration frames (:class:`_ElementCheck`); a member that could never
   learn an element is refused, naming the member, instead of failing after every member trained.
1. Hold out calibration frames: ``calibration`` data when given (``n_calibration`` of them,
   drawn from the named stream "calibration" of ``seed``), else the validation frames of the
   training data (sGDML: ``n_valid``; MFF and BPNN: ``n_test``).
2. Members ``k = 0 .. K-1``: member ``k`` is trained on ``n_member`` frames drawn without
   replacement from the training pool (stream ``"committee-member-{k}"``), with seed
   ``seed + k + 1`` for the family's own random choices. Different frames make the members
   disagree where the data are thin, which is the point: their spread measures how well the
   data pin the model down at a geometry.
3. Served mean (``mean``): ``"all"`` trains one more model on the whole pool and serves it;
   ``"members"`` serves the member average; a :class:`~ase_mlff.models.base.Model` (e.g. a
   shipped model trained on the same data) is served as it is. ``"all"`` is the default
   because the average of K members trained on subsamples is less accurate than one model
   trained on all frames (docs/uncertainty.md measures it for rMD17 ethanol).
4. Calibration (:func:`fit_calibration`): factors ``c`` such that on the held-out frames the
   mean predicted variance equals the mean squared error of the served prediction, for
   energies, forces (per atom, vector length) and, when those frames carry stress, stress;
   without stress labels the stress factor is the force factor (both are spreads of
   derivatives of the same members). Without calibration frames the uncertainties stay raw,
   and the served prediction's errors on the training pool are reported instead
   (``metrics["train"]``), labelled as training-set errors.

Reference energies given with ``--reference-energies`` go to every model the committee
trains (the served mean and each member); sGDML records them only (one constant per
molecule). The record lists them (``reference_energies``) and what the members were trained
on (``trained_on``).

sGDML members use ``train_sgdml`` with explicit ``train_indices``; their length scale is the
served mean's (chosen by its own validation search) unless ``sigmas`` is given, so that the
spread reflects the data and not a noisy hyperparameter search on small subsets. MFF members
use ``train_mff`` on a sub-dataset with no test frames of their own.

BPNN: the data are split as ``ase-mlff train bpnn`` splits them (``Dataset.split(n_train,
n_valid, n_test, seed)``), so the served mean ("all") is the very model that command trains
(same frames, seed and initial weights); the test frames are the calibration frames. The pool
is the training plus validation frames (the networks keep their best-validation weights, so
the validation frames are not held out). Member ``k`` is ``train_bpnn`` on its ``n_member``
pool frames, of which a share ``n_valid / n_pool`` (at least one when ``n_valid > 0``) is its
own validation set, with seed ``seed + k + 1`` (initial weights, batch order, that split). Its
symmetry functions are selected from its own frames, as any BPNN's are.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np
from ase.data import chemical_symbols

from .._warn import warn
from ..errors import DatasetError, InputError, TrainingError
from ..models.base import Model
from ..models.committee import CommitteeModel
from ..rng import random_stream

FAMILIES = ("sgdml", "mff", "bpnn", "schnet")


def _as_dataset(data):
    from ..data import Dataset

    if not isinstance(data, Dataset):
        raise DatasetError("pass a Dataset (ase_mlff.data.read(path, energy_unit=...)) to train a committee")
    return data


def _member_indices(pool: np.ndarray, n_member: int, k: int, seed: int) -> np.ndarray:
    rng = random_stream(seed, f"committee-member-{k}")
    return np.sort(rng.choice(pool, n_member, replace=False)).astype(np.int64)


# ----------------------------------------------------------------------------- calibration
def committee_errors(model: CommitteeModel, frames, calibrated: bool = False) -> dict[str, np.ndarray]:
    """Served predictions, their errors and the (raw or calibrated) uncertainties on ``frames``.

    Returns arrays: ``dE`` (frames,) eV, ``sigma_E`` (frames,), ``dF2`` (atoms,) squared length
    of each atom's force error (eV/Å)², ``sigma_F`` (atoms,), ``frame`` (atoms,) frame index of
    each atom, and ``dS``/``sigma_S`` (frames with stress, 6) eV/Å³ when frames carry stress.
    """
    from ..calculator import MLFFCalculator

    saved = dict(model.calibration)
    if not calibrated:
        model.calibration = {k: 1.0 for k in saved}
    try:
        calc = MLFFCalculator(model, uncertainty=True)
        out = {k: [] for k in ("dE", "sigma_E", "dF2", "sigma_F", "frame", "dS", "sigma_S")}
        for n, fr in enumerate(frames):
            atoms = fr.to_atoms()
            want_stress = fr.stress is not None and bool(np.all(fr.pbc)) and model.supports_stress
            calc.calculate(atoms, ["energy", "forces"] + (["stress"] if want_stress else []))
            r = calc.results
            if fr.energy is not None:
                out["dE"].append(r["energy"] - fr.energy)
                out["sigma_E"].append(r["energy_uncertainty"])
            if fr.forces is not None:
                d = r["forces"] - fr.forces
                out["dF2"].append((d * d).sum(1))
                out["sigma_F"].append(r["forces_uncertainty"])
                out["frame"].append(np.full(len(fr), n))
            if want_stress and "stress_uncertainty" in r:
                out["dS"].append(r["stress"] - fr.stress)
                out["sigma_S"].append(r["stress_uncertainty"])
    finally:
        model.calibration = saved
    res = {}
    for k, v in out.items():
        if k in ("dF2", "sigma_F", "frame"):
            res[k] = np.concatenate(v) if v else np.zeros(0)
        else:
            res[k] = np.array(v, dtype=float)
    return res


def fit_calibration(model: CommitteeModel, frames) -> tuple[dict[str, float], dict[str, Any]]:
    """Calibration factors (module docstring, step 4) fitted on held-out ``frames``; returns
    ``(factors, record)``; the record has the frame count and the raw RMS error and spread."""
    e = committee_errors(model, frames, calibrated=False)
    factors, record = {}, {"n_frames": len(frames)}

    def ratio(err2, var, what):
        if len(err2) == 0:
            return None
        if not np.mean(var) > 0:
            raise TrainingError(f"the committee members agree exactly on the {what} of every calibration "
                                "frame (zero spread); train them on different frames or seeds")
        record[what] = {"rms_error": float(np.sqrt(np.mean(err2))), "rms_spread": float(np.sqrt(np.mean(var))),
                        "n": int(len(err2))}
        return float(np.sqrt(np.mean(err2) / np.mean(var)))

    factors["energy"] = ratio(e["dE"] ** 2, e["sigma_E"] ** 2, "energy")
    factors["forces"] = ratio(e["dF2"], e["sigma_F"] ** 2, "forces")
    factors["stress"] = ratio((e["dS"] ** 2).ravel(), (e["sigma_S"] ** 2).ravel(), "stress") if len(e["dS"]) else None
    if factors["forces"] is None:
        raise DatasetError("the calibration frames have no forces; give frames with forces")
    if factors["energy"] is None:
        factors["energy"] = 1.0
        record["energy"] = "no energies in the calibration frames: factor 1 (uncalibrated)"
    if factors["stress"] is None:
        factors["stress"] = factors["forces"]
        record["stress"] = "no stress in the calibration frames: the force factor is used"
    return factors, record


# ----------------------------------------------------------------------------- training
def train_committee(family: str, data, K: int, *, n_member: int | None = None, mean="all", seed: int = 0,
                    calibration=None, n_calibration: int | None = None,
                    progress: Callable[[str], None] | None = None, reference_energies=None,
                    **options) -> tuple[CommitteeModel, dict]:
    """Train a committee of ``K`` ``family`` models on ``data`` (a Dataset); returns
    ``(model, report)``. See the module docstring for the recipe.

    ``n_member``: frames per member (default: a quarter of the training pool). ``mean``:
    ``"all"``, ``"members"`` or a trained model of ``family`` to serve. ``calibration``: a
    Dataset of held-out frames (``n_calibration`` of them are used; default all); without
    it the validation/test frames held out of ``data`` are used. ``options``: the family's
    training options — sGDML: keywords of :func:`~ase_mlff.training.sgdml_train.train_sgdml`
    (``n_valid``, ``sigmas``, ``lam``, ``symmetries``, ``solver``); MFF: options of
    ``ase-mlff train mff`` by their Python names (``rc2``, ``rc3``, ``n_test``, ``n_energy``,
    ``n_force_atoms``, ``h2``, ...); BPNN: keywords of
    :func:`~ase_mlff.training.bpnn_train.train_bpnn` (``n_train``, ``n_valid``, ``n_test``,
    ``cutoff``, ``hidden``, ``epochs``, ...; ``n_member`` defaults to half of the pool).
    ``reference_energies``: given per-element reference energies for every model (anything
    :func:`~ase_mlff.training.common.parse_reference_energies` reads; numbers in eV).
    """
    from .common import (check_given_reference, format_training_metrics, model_metrics, parse_reference_energies,
                         reference_energies_record)

    say = progress or (lambda msg: None)
    ds = _as_dataset(data)
    reference = parse_reference_energies(reference_energies)
    if reference is not None:  # every element of the data needs one: checked before anything trains
        check_given_reference(list(ds), list(ds.elements), reference, say)
        if family in ("bpnn", "schnet"):
            options["reference_energies"] = reference
        elif family == "mff":
            if options.get("args") is not None:
                options["args"].reference_energies = reference
            else:
                options["reference_energies"] = reference
    if family not in FAMILIES:
        raise InputError(f"committees can be trained for {', '.join(FAMILIES)}, not {family!r}")
    if not isinstance(K, int) or K < 2:
        raise InputError(f"a committee needs K >= 2 members (--committee), got {K!r}")
    if isinstance(mean, Model):
        if mean.family != family:
            raise InputError(f"the served mean is a {mean.family} model; the committee is of {family} models")
    elif mean not in ("all", "members"):
        raise InputError(f"mean must be 'all', 'members' or a trained {family} model, got {mean!r}")
    t0 = time.perf_counter()

    # ---- calibration frames: never frames the served mean or a member was trained on; chosen
    # before anything trains, so that the element check (step 0) sees them
    if calibration is not None:
        cal = _as_dataset(calibration)
        n = len(cal) if n_calibration is None else int(n_calibration)
        if not 0 < n <= len(cal):
            raise DatasetError(f"asked for {n} calibration frames (n_calibration), the calibration data have {len(cal)}")
        cal_idx = np.sort(random_stream(seed, "calibration").choice(len(cal), n, replace=False))

    def calibration_frames(held_out):
        """(frames, record) of the calibration frames, given the family's held-out indices."""
        if calibration is not None:
            return cal[cal_idx], {"source": cal.source, "data_sha256": cal.sha256(), "indices": cal_idx.tolist()}
        idx = np.asarray(held_out, dtype=np.int64)
        if n_calibration is not None:
            idx = idx[: int(n_calibration)]
        return ds[idx], {"source": ds.source, "data_sha256": ds.sha256(), "indices": idx.tolist()}

    check = _ElementCheck(ds, K, seed, mean, lambda held: calibration_frames(held)[0])
    if family == "sgdml":
        members, served, report, held_out, pool = _train_sgdml(ds, K, n_member, mean, seed, say, options, check)
    elif family in ("bpnn", "schnet"):  # SchNet: the same split and member scheme as BPNN
        members, served, report, held_out, pool = _train_bpnn(ds, K, n_member, mean, seed, say, options, check,
                                                              family)
    else:
        members, served, report, held_out, pool = _train_mff(ds, K, n_member, mean, seed, say, options, check)
    model = CommitteeModel(members, served)
    seen = {o for rec in report["members"] for o in rec.get("trained_on", ())}
    report["trained_on"] = [o for o in ("energy", "forces", "stress") if o in seen]
    if reference is None:
        report["reference_energies"] = reference_energies_record(
            [], [], "none" if family == "sgdml" else "fitted",
            "an sGDML model has one energy constant for the molecule, no per-element energies" if family == "sgdml"
            else "each model of the committee fitted its own on its training frames")
    else:
        report["reference_energies"] = reference_energies_record(
            ds.elements, reference.for_species(ds.elements), "given",
            "given; recorded only (each sGDML model's energy constant absorbs sum e0)" if family == "sgdml"
            else "given to every model of the committee", reference)
    frames, where = calibration_frames(held_out)
    if calibration is None and isinstance(mean, Model):
        _check_disjoint(mean, ds, np.asarray(where["indices"], dtype=np.int64))
    if len(frames) == 0:
        warn("no calibration frames: the uncertainties are the raw member spread (factors 1)")
        factors, record = {"energy": 1.0, "forces": 1.0, "stress": 1.0}, {"n_frames": 0}
        # nothing held out: at least the served prediction's fit to the training pool, labelled as such
        pool_frames = [ds[int(i)] for i in pool]
        report["metrics"] = {"train": model_metrics(model, pool_frames)}
        say(format_training_metrics(report["metrics"]["train"]))
    else:
        say(f"calibrating on {len(frames)} held-out frames")
        factors, record = fit_calibration(model, frames)
    model.calibration = factors
    say(f"calibration factors: energy {factors['energy']:.3g}, forces {factors['forces']:.3g}, "
        f"stress {factors['stress']:.3g}")
    report.update(family=family, K=K, seed=seed, calibration={**record, "factors": factors, **where},
                  train_time_s=time.perf_counter() - t0, data_sha256=ds.sha256(), source=ds.source,
                  energy_unit=getattr(ds, "source_energy_unit", None) or "eV")
    return model, report


def _check_disjoint(mean: Model, ds, idx) -> None:
    """A given served mean must not have been trained on the calibration frames."""
    meta = getattr(mean, "meta", None) or {}
    training = meta.get("training") or {}
    train = training.get("train_indices")
    split = training.get("split")
    if train is None and isinstance(split, dict):  # the shared record: train and valid frames were fitted on
        used = [i for key in ("train", "valid") for i in (split.get(key) or [])]
        train = used or None
    if meta.get("training_data_hash") == ds.sha256() and train is not None:
        both = np.intersect1d(np.asarray(train, dtype=np.int64), idx)
        if len(both):
            raise DatasetError(f"the served mean was trained on {len(both)} of the calibration frames of this "
                               "data file; give separate calibration data (--calibration-data)")


class _ElementCheck:
    """Step 0, before anything trains: every model the committee will hold, the served mean
    trained here and each member, must have in its own training frames every element of the
    training pool (members describe the same elements as each other and as the served mean), of
    the validation frames it is scored on and of the calibration frames; otherwise it could
    never learn that element, and the committee would fail after every member had trained.
    The members' subsamples are drawn here exactly as :func:`_train_members` draws them.
    A served mean given as a model must know the pool's elements. Raises
    :class:`~ase_mlff.training.common.SplitError` naming the member."""

    def __init__(self, ds, K: int, seed: int, mean, calibration_frames):
        self.ds, self.K, self.seed, self.mean = ds, K, seed, mean
        self.calibration_frames = calibration_frames
        self._sets: dict[int, np.ndarray] = {}
        self._interned: dict[tuple, np.ndarray] = {}

    def _elements(self, i) -> np.ndarray:
        """Frame ``i`` as the array of its elements, one shared array per distinct set: the K + 1
        checks then look at each set once (check_split_elements skips arrays it has seen), not
        at every frame of the pool K + 1 times."""
        i = int(i)
        if i not in self._sets:
            key = tuple(np.unique(self.ds.frames[i].numbers).tolist())
            self._sets[i] = self._interned.setdefault(key, np.array(key, dtype=np.int64))
        return self._sets[i]

    def __call__(self, pool, n_member: int, held_out, hint: str, served_train=None, validation=(), test=(),
                 member_train=None) -> None:
        """``served_train``: training frames of the served mean "all"; ``validation``: frames
        every model is scored on besides the pool; ``test``: frames every model is evaluated on;
        ``member_train(indices, member_seed)``: the training part of a member's subsample (all
        of it by default)."""
        from .common import check_split_elements

        held = {"training pool": [self._elements(i) for i in pool]}
        if len(validation):
            held["validation"] = [self._elements(i) for i in validation]
        if len(test):
            held["test"] = list(test)
        cal = list(self.calibration_frames(held_out))
        if cal:
            held["calibration"] = cal
        if self.mean == "all" and served_train is not None:
            check_split_elements([self._elements(i) for i in served_train], held, model="the served mean")
        for k in range(self.K):
            idx = _member_indices(pool, n_member, k, self.seed)
            train = idx if member_train is None else member_train(idx, self.seed + k + 1)
            check_split_elements([self._elements(i) for i in train], held,
                                 model=f"committee member {k + 1} of {self.K}", hint=hint)
        if isinstance(self.mean, Model):  # the members know exactly the pool's elements now
            need = {int(z) for els in {id(a): a for a in held["training pool"]}.values() for z in els}
            if set(self.mean.species) != need:
                raise InputError(f"the served mean (--committee-mean) is for elements {', '.join(self.mean.elements)}; "
                                 f"the committee's training frames hold "
                                 f"{', '.join(chemical_symbols[z] for z in sorted(need))}: give a model trained on "
                                 "the same data")


#: what to change when a member's frames lack an element, in the flags of each family
_MEMBER_HINT = ("choose another --seed or more frames per member ({}), or leave the frames of that element out of "
                "the data")


def _served_mean(mean, fit_all, say, what: str):
    """The served model and its report entry: ``mean`` is "all" (``fit_all()`` -> (model, report
    entry) trains one model on all the training frames), a given :class:`Model`, or "members"
    (the member average is served: None)."""
    if mean == "all":
        say(f"served mean: {what}")
        served, entry = fit_all()
        return served, {"kind": "all", **entry}
    if isinstance(mean, Model):
        source = getattr(mean, "source", None) or {}
        return mean, {"kind": "given", "source": source.get("path"), "sha256": source.get("sha256")}
    return None, {"kind": "members"}


def _train_members(K: int, pool: np.ndarray, n_member: int, seed: int, fit_member, say, note: str = ""):
    """K members, member k on its own subsample of ``pool`` with seed ``seed + k + 1``:
    ``fit_member(indices, member_seed)`` -> (model, record); returns (models, records)."""
    members, recs = [], []
    for k in range(K):
        idx = _member_indices(pool, n_member, k, seed)
        say(f"member {k + 1}/{K}: {n_member} frames{note}")
        model, rec = fit_member(idx, seed + k + 1)
        members.append(model)
        recs.append({"seed": seed + k + 1, **rec})
    return members, recs


def _train_sgdml(ds, K, n_member, mean, seed, say, options, check):
    from .sgdml_train import train_sgdml

    options = dict(options)
    n_valid = int(options.pop("n_valid", 0) or 0)
    sigmas = options.pop("sigmas", None)
    for drop in ("n_train", "test", "n_test", "checkpoint", "resume"):
        options.pop(drop, None)
    M = len(ds)
    if n_valid >= M:
        raise DatasetError(f"{n_valid} validation frames leave no training frames: the data have {M}")
    valid = np.sort(random_stream(seed, "committee-validation").choice(M, n_valid, replace=False)).astype(np.int64)
    pool = np.setdiff1d(np.arange(M), valid)
    n_member = len(pool) // 4 if n_member is None else int(n_member)
    if not 1 <= n_member <= len(pool):
        raise DatasetError(f"{n_member} frames per member (--n-train) from a pool of {len(pool)} training frames")
    report: dict[str, Any] = {"n_member": n_member, "n_pool": int(len(pool)), "valid_indices": valid.tolist()}
    check(pool, n_member, valid, _MEMBER_HINT.format("--n-train"), served_train=pool, validation=valid)

    def fit_all():
        model, rep = train_sgdml(ds, len(pool), len(valid), sigmas=sigmas, seed=seed, train_indices=pool,
                                 valid_indices=valid, test_indices=np.zeros(0, np.int64), progress=say, **options)
        return model, {"sigma": rep["sigma"], "n_train": rep["n_train"], "valid": rep["valid"]}

    served, report["mean"] = _served_mean(mean, fit_all, say, f"sGDML on all {len(pool)} training frames")
    if report["mean"]["kind"] == "given":
        report["mean"].update(n_train=getattr(mean, "n_train", None), sigma=getattr(mean, "sigma", None))
    member_sigmas = sigmas if sigmas is not None or served is None else [served.sigma]
    if member_sigmas is not None and len(member_sigmas) > 1 and not len(valid):
        raise DatasetError("choosing sigma for the members needs validation frames (--n-valid) or one --sigmas value")

    def fit_member(idx, member_seed):
        m, rep = train_sgdml(ds, n_member, len(valid), sigmas=member_sigmas, seed=member_seed,
                             train_indices=idx, valid_indices=valid, test_indices=np.zeros(0, np.int64),
                             progress=say, **options)
        return m, {"sigma": rep["sigma"], "n_symmetries": rep["n_symmetries"], "train_indices": idx.tolist(),
                   "valid": rep["valid"], "trained_on": ["energy", "forces"]}

    members, recs = _train_members(K, pool, n_member, seed, fit_member, say)
    report["members"] = recs
    return members, served, report, valid, pool


def mff_options(**overrides) -> argparse.Namespace:
    """The options of ``ase-mlff train mff`` (defaults) with ``overrides`` by Python name."""
    from .mff_train import configure_parser

    args = configure_parser(argparse.ArgumentParser()).parse_args(["data", "-o", "unused.mlff"])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise InputError(f"unknown MFF training option(s): {', '.join(sorted(unknown))}")
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def _train_mff(ds, K, n_member, mean, seed, say, options, check):
    from .common import read_training_data
    from .mff_train import train_mff

    args = options.pop("args", None) or mff_options(**options)
    n_test = int(args.n_test)
    if n_test >= len(ds):
        raise DatasetError(f"--n-test {n_test} leaves no training frames: the data have {len(ds)} frames")
    split = ds.split(len(ds) - n_test, 0, n_test, seed=seed)
    pool, held = split.train, split.test
    n_member = len(pool) // 2 if n_member is None else int(n_member)
    if not 1 <= n_member <= len(pool):
        raise DatasetError(f"{n_member} frames per member from a pool of {len(pool)} training frames")
    report: dict[str, Any] = {"n_member": n_member, "n_pool": int(len(pool)), "held_out_indices": held.tolist()}
    # every model (mean and members) is also evaluated on a --test file, when one is given
    test = [] if getattr(args, "test", None) is None else list(
        read_training_data(args.test, getattr(args, "energy_unit", None)))
    check(pool, n_member, held, _MEMBER_HINT.format("--committee-frames"), served_train=pool, test=test)

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

    served, report["mean"] = _served_mean(mean, fit_all, say, f"MFF on all {len(pool)} training frames")
    members, recs = _train_members(K, pool, n_member, seed, fit_member, say)
    report["members"] = recs
    report["options"] = {k: v for k, v in vars(args).items() if not k.startswith("_") and _jsonable(v)}
    return members, served, report, held, pool


def _bpnn_split_counts(M: int, options: dict) -> tuple[int, int, int | None]:
    n_valid = int(options.pop("n_valid", 0) or 0)
    n_test = options.pop("n_test", None)
    n_train = options.pop("n_train", None)
    if n_train is None:  # every frame that is not validation or test
        n_train = M - n_valid - int(n_test or 0)
    n_test = None if n_test is None else int(n_test)
    if int(n_train) < 1 or n_train + n_valid + (n_test or 0) > M:
        raise DatasetError(f"{n_train} training + {n_valid} validation + {n_test or 0} test frames: the data "
                           f"have {M} frames")
    return int(n_train), n_valid, n_test


def _train_bpnn(ds, K, n_member, mean, seed, say, options, check, family="bpnn"):
    train_bpnn = _nn_recipe(family)

    options = dict(options)
    for drop in ("seed", "progress", "checkpoint", "resume", "stop_after", "dataset"):
        options.pop(drop, None)
    n_train, n_valid, n_test = _bpnn_split_counts(len(ds), options)
    # the split of ``ase-mlff train bpnn`` with the same counts and seed
    split = ds.split(n_train, n_valid, n_test, seed=seed)
    pool = np.sort(np.concatenate([split.train, split.valid])).astype(np.int64)
    held = split.test
    n_member = len(pool) // 2 if n_member is None else int(n_member)
    if not 2 <= n_member <= len(pool):
        raise DatasetError(f"{n_member} frames per member (--committee-frames) from a pool of {len(pool)} "
                           "training and validation frames; a member needs at least 2")
    n_valid_member = 0 if n_valid == 0 else min(n_member - 1, max(1, round(n_valid * n_member / len(pool))))
    report: dict[str, Any] = {"n_member": n_member, "n_pool": int(len(pool)), "n_valid_member": n_valid_member,
                              "split": {"train": split.train.tolist(), "valid": split.valid.tolist(),
                                        "test": held.tolist()}, "held_out_indices": held.tolist(),
                              "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}}

    def member_train(idx, member_seed):  # the training part of the split train_bpnn makes below
        return idx[ds[idx].split(n_member - n_valid_member, n_valid_member, 0, seed=member_seed).train]

    check(pool, n_member, held, _MEMBER_HINT.format("--committee-frames"), served_train=split.train,
          member_train=member_train)

    def fit_all():
        # n_test=0: the same split (train and valid come first in the permutation), no test pass here;
        # the test frames are evaluated below, as calibration frames
        model, rep = train_bpnn(ds, n_train, n_valid, 0, seed=seed, progress=say, **options)
        return model, {"n_train": n_train, "n_valid": n_valid, "valid": rep.get("valid"),
                       "epochs_run": len(rep.get("history") or [])}

    def fit_member(idx, member_seed):
        m, rep = train_bpnn(ds[idx], n_member - n_valid_member, n_valid_member, 0, seed=member_seed,
                            progress=say, **options)
        sub = rep.get("split") or {}
        return m, {"frames": idx.tolist(),
                   "train_indices": idx[np.asarray(sub.get("train", []), dtype=np.int64)].tolist(),
                   "valid_indices": idx[np.asarray(sub.get("valid", []), dtype=np.int64)].tolist(),
                   "valid": rep.get("valid"), "epochs_run": len(rep.get("history") or []),
                   "trained_on": rep.get("trained_on", [])}

    served, report["mean"] = _served_mean(
        mean, fit_all, say, f"{family} on all {n_train} training frames ({n_valid} validation)")
    members, recs = _train_members(K, pool, n_member, seed, fit_member, say,
                                   f" ({n_valid_member} of them for validation)")
    report["members"] = recs
    report["options"] = {k: (getattr(v, "given_as", v) if k == "reference_energies" else v)
                         for k, v in report["options"].items()}
    return members, served, report, held, pool


def _nn_recipe(family: str):
    """The one-model trainer of a shared-trainer family (same keywords and split counts)."""
    if family == "schnet":
        from .schnet_train import train_schnet

        return train_schnet
    from .bpnn_train import train_bpnn

    return train_bpnn


def bpnn_options(args, family: str = "bpnn") -> dict[str, Any]:
    """Keywords of :func:`~ase_mlff.training.bpnn_train.train_bpnn` (or of
    :func:`~ase_mlff.training.schnet_train.train_schnet`) from the parsed flags of
    ``ase-mlff train bpnn`` (``schnet``): those of its parameters that the parser has."""
    import inspect

    train_bpnn = _nn_recipe(family)
    given = vars(args)
    skip = {"dataset", "seed", "progress", "checkpoint", "resume", "stop_after"}
    opts = {}
    for name in inspect.signature(train_bpnn).parameters:
        if name in skip or name not in given or given[name] is None and name != "n_test":
            continue
        v = given[name]
        if name in ("hidden", "zetas") and isinstance(v, str):
            try:
                v = tuple(int(x) for x in v.split(","))
            except ValueError:
                raise InputError(f"--{name} takes comma-separated integers, got {v!r}") from None
        opts[name] = v
    return opts


def _jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def training_record(report: dict[str, Any]) -> dict[str, Any]:
    """The ``training`` dict of the committee's model file."""
    rec = {k: v for k, v in report.items() if k not in ("energy_unit",)}
    rec["method"] = f"committee of {report['K']} {report['family']} models (ase-mlff)"
    unit = report.get("energy_unit") or "eV"
    rec["units"] = {"energy": unit, "length": "Ang", "forces": f"{unit}/Ang"}
    return rec


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The committee options of the ``ase-mlff train FAMILY`` parser of every family in
    :data:`FAMILIES` (the only ones the committee trainer supports)."""
    g = parser.add_argument_group(
        "committee (uncertainty; docs/uncertainty.md)",
        "With --committee K, K models are trained on random subsets of the training frames and stored "
        "in one file with a served mean; MLFFCalculator(..., uncertainty=True) then gives "
        "energy_uncertainty (eV), forces_uncertainty (eV/Å per atom) and stress_uncertainty.")
    g.add_argument("--committee", type=int, default=None, metavar="K",
                   help="train a committee of K >= 2 members (default: one model). sGDML: --n-train is then "
                        "the frames per member; MFF: --committee-frames")
    g.add_argument("--committee-mean", default="all", metavar="all|members|MODEL",
                   help="what the committee serves as energy and forces: 'all' (a model trained on all "
                        "training frames; the default), 'members' (the member average) or a model file of "
                        "the same family trained on the same data")
    g.add_argument("--committee-frames", type=int, default=None, metavar="N",
                   help="MFF, BPNN: frames per member (default: half of the training pool; BPNN: of the "
                        "--n-train + --n-valid frames)")
    g.add_argument("--calibration-data", default=None, metavar="FILE",
                   help="held-out frames (same units) on which the uncertainty is calibrated (default: the "
                        "validation frames (sGDML --n-valid) or test frames (MFF, BPNN --n-test) of the data)")
    g.add_argument("--n-calibration", type=int, default=None, metavar="N",
                   help="calibration frames drawn from --calibration-data (default: all)")


def run(family: str, args) -> int:
    """``ase-mlff train FAMILY --committee K ...``; exit status 0, 1 (data), 2 (usage)."""
    from .. import data as data_mod
    from ..errors import MLFFError
    from ..io import load_model, save_model
    from .checkpoint import check_output
    from ..console import timed_printer
    from .common import UsageError, parse_reference_energies

    def fail(msg, code):
        print(f"ase-mlff train {family} --committee: error: {msg}", file=sys.stderr)
        return code

    progress = timed_printer()
    K = args.committee
    if K < 2:
        return fail(f"--committee {K}: a committee needs at least 2 members", 2)
    if getattr(args, "resume", False):
        return fail("--resume is not available for committees (each member trains in one go)", 2)
    if family == "sgdml":
        from .sgdml_train import _resolve, _UsageError, parse_sigmas

        try:
            opts = _resolve(args)
            sigmas = parse_sigmas(opts["sigmas"])
        except (_UsageError, ValueError) as exc:
            return fail(exc, 2)
        if not opts.get("dataset"):
            return fail("no dataset given", 2)
        dataset, unit, output, overwrite = opts["dataset"], opts["energy_unit"], opts["output"], opts["overwrite"]
        options = {"n_valid": int(opts["n_valid"]),
                   "sigmas": sigmas, "lam": float(opts["lam"]), "symmetries": opts["symmetries"],
                   "solver": opts["solver"]}
        n_member, seed = int(opts["n_train"]), int(opts["seed"])
        raw_reference = opts.get("reference_energies")
    elif family in ("bpnn", "schnet"):
        try:
            options = bpnn_options(args, family)
        except InputError as exc:
            return fail(exc, 2)
        dataset, unit, output = args.dataset, getattr(args, "energy_unit", None), args.output
        overwrite = getattr(args, "overwrite", False)
        n_member, seed = args.committee_frames, int(getattr(args, "seed", 0) or 0)
        raw_reference = getattr(args, "reference_energies", None)
    else:
        given = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        try:  # flags over --config over defaults, as in ``train mff`` itself
            from .common import resolve_options
            from .mff_train import OPTIONS

            given.update(resolve_options([o for o in OPTIONS if o.cli], args, extra=("data",),
                                         aliases={"dataset": "data"}))
        except ImportError:  # pragma: no cover - a training package without option layering
            pass
        except UsageError as exc:
            return fail(exc, 2)
        if not given.get("data") or not given.get("output"):
            return fail("give the data file and -o/--output", 2)
        dataset, unit, output = given["data"], given.get("energy_unit"), given["output"]
        overwrite = given.get("overwrite")
        options = {"args": argparse.Namespace(**given)}
        n_member, seed = args.committee_frames, int(given.get("seed") or 0)
        raw_reference = given.get("reference_energies")
    try:
        check_output(output, bool(overwrite), False)
        reference = parse_reference_energies(raw_reference, unit)  # in --energy-unit, like the data
    except FileExistsError as exc:
        return fail(exc, 2)
    except UsageError as exc:
        return fail(exc, 2)
    try:
        units = {"energy_unit": unit}
        if getattr(args, "length_unit", None):
            units["length_unit"] = args.length_unit
        ds = data_mod.read(dataset, **units)
        cal = data_mod.read(args.calibration_data, **units) if args.calibration_data else None
        mean = args.committee_mean
        if mean not in ("all", "members"):
            mean = load_model(mean)
        model, report = train_committee(family, ds, K, n_member=n_member, mean=mean, seed=seed, calibration=cal,
                                        n_calibration=args.n_calibration, progress=progress,
                                        reference_energies=reference, **options)
    except UsageError as exc:  # e.g. a member's frames lack an element (checked before anything trains)
        return fail(exc, 2)
    except MLFFError as exc:
        from .sgdml_train import cli_message

        return fail(cli_message(exc), 1)
    rec = training_record(report)
    rec["command"] = " ".join(sys.argv)
    save_model(model, output, training=rec)
    c = report["calibration"]
    print(f"committee of {K} {family} models written to {output} (serving "
          f"{report['mean']['kind']}; calibration factors energy {c['factors']['energy']:.3g}, "
          f"forces {c['factors']['forces']:.3g} on {c['n_frames']} held-out frames; "
          f"{report['train_time_s']:.0f} s)")
    f = c.get("forces")
    if isinstance(f, dict):
        print(f"held-out force error (RMS per-atom vector length) {1e3 * f['rms_error']:.2f} meV/Å, "
              f"raw member spread {1e3 * f['rms_spread']:.2f} meV/Å")
    if (report.get("metrics") or {}).get("train"):
        from .common import format_training_metrics

        print(format_training_metrics(report["metrics"]["train"], "give --calibration-data FILE or hold out test "
                                                                  "frames, which also calibrate the uncertainty"))
    return 0
