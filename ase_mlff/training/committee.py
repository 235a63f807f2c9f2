"""Train committees: ``train_committee`` (Python), ``ase-mlff train FAMILY --committee K``.

Recipe (the model is :class:`ase_mlff.models.committee.CommitteeModel`; its docstring gives
the equations of the served prediction and the uncertainties):

0. Before anything trains, every member's subsample (its training part) and the served mean's
   training frames are checked to hold every element of the training pool, of the validation
   frames and of the calibration frames (:class:`_ElementCheck`); a member that could never
   learn an element is refused, naming the member, instead of failing after every member trained.
1. Hold out calibration frames: ``calibration`` data when given (``n_calibration`` of them,
   drawn from the named stream "calibration" of ``seed``), else the frames the family holds
   out of the training data (its validation or test frames: :attr:`CommitteePlan.held_out`).
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

What is particular to a family is the hook its recipe provides: the module attribute
``COMMITTEE`` of ``ase_mlff.training.<family>_train``, a :class:`CommitteeHook`. It counts the
family's split into the training pool and the held-out frames from its options, says how one
member trains on given frame indices and how the served mean trains on the whole pool
(:class:`CommitteePlan`), and which of the family's command-line options a committee reads
(:class:`CommitteeCommand`). This module names no family: :func:`committee_families` lists
those whose recipe has a hook, ``ase-mlff train FAMILY`` offers ``--committee`` exactly for
them, and a recipe without one may say why in ``NO_COMMITTEE`` (quoted when a committee of it
is asked for). Recipes trained by the shared network trainer take their hook from
:func:`~ase_mlff.training.network_committee.network_committee`.

Warm start (``start_from``, a trained committee of the same family and size): member ``k``
trains from member ``k`` of it and the served mean "all" from its served mean, instead of
from fresh weights (the family's fine-tuning: e.g. ``train_bpnn(init=...)``); everything else
of the recipe is unchanged. ``member_frames`` gives each member's frames explicitly instead of
the draws of step 2 (a learning loop keeps each member's frames and adds new ones to them).
The family says whether and how its models start from a parent (:attr:`CommitteePlan.check_init`,
None: no warm start); what cannot carry over (another family, a new element for a BPNN,
other architecture options) is an InputError naming why, raised before anything trains.

Reference energies given with ``--reference-energies`` go to every model the committee
trains (the served mean and each member), or are recorded only for a family whose models have
no per-element energies (:attr:`CommitteeHook.given_reference`). The record lists them
(``reference_energies``) and what the members were trained on (``trained_on``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from ase.data import chemical_symbols

from .._warn import warn
from ..errors import DatasetError, InputError, TrainingError
from ..models.base import Model
from ..models.committee import CommitteeModel
from ..rng import random_stream
from .common import UsageError


# ----------------------------------------------------------------------------- the recipes' hook
@dataclass
class CommitteePlan:
    """A family's committee on one data set, planned before anything trains (what
    :attr:`CommitteeHook.plan` returns). Indices are frames of the training data."""

    #: frames the members draw their subsamples from (and the served mean "all" trains on)
    pool: np.ndarray
    #: the calibration frames when no calibration data are given (validation or test frames)
    held_out: np.ndarray
    #: frames per member
    n_member: int
    #: the family's entries of the training report (counts, split, options)
    report: dict[str, Any]
    #: ``fit_all(init=None) -> (model, report entry)``: the served mean "all", one model on the
    #: pool (from the weights of the model ``init`` when given: a warm start)
    fit_all: Callable[..., tuple[Model, dict]]
    #: what ``fit_all`` trains, for the progress line (e.g. "... on all 50 training frames")
    mean_label: str
    #: ``member_trainer(served) -> fit_member``, ``fit_member(indices, member_seed, init=None) ->
    #: (model, record)``: how one member trains on the frames ``indices`` with seed
    #: ``member_seed`` (from the weights of ``init`` when given), given the served mean (None
    #: when the member average is served)
    member_trainer: Callable[[Model | None], Callable[..., tuple[Model, dict]]]
    #: keywords of the element check (step 0): ``served_train``, ``validation``, ``test``,
    #: ``member_train`` (:meth:`_ElementCheck.__call__`)
    check: dict[str, Any] = field(default_factory=dict)
    #: appended to each member's progress line
    member_note: str = ""
    #: ``describe_given_mean(model) -> dict``: report entries for a served mean given as a model
    describe_given_mean: Callable[[Model], dict] | None = None
    #: ``check_init(model)``: raises InputError when a model of this plan cannot start from the
    #: weights of ``model`` (a member or the served mean of a committee given as ``start_from``); None:
    #: the family has no warm start
    check_init: Callable[[Model], None] | None = None


@dataclass
class CommitteeCommand:
    """What ``ase-mlff train FAMILY --committee K`` trains on, read from the family's flags (what
    :attr:`CommitteeHook.command` returns)."""

    dataset: str
    energy_unit: str | None
    output: str
    overwrite: bool
    #: the family's training options, passed to :attr:`CommitteeHook.plan`
    options: dict[str, Any]
    #: frames per member (None: the family's default)
    n_member: int | None
    seed: int
    #: ``--reference-energies`` as given (in the data's energy unit)
    reference_energies: Any = None


@dataclass(frozen=True)
class CommitteeHook:
    """What a recipe provides so that committees of its family can be trained: its module's
    ``COMMITTEE`` attribute. See the module docstring for the recipe it plugs into."""

    #: ``plan(ds, options, *, n_member, seed, reference, say) -> CommitteePlan``: the family's
    #: split of the Dataset ``ds`` counted from its ``options`` (a dict the plan may consume),
    #: ``n_member`` frames per member (None: its default), ``seed``; ``reference``: given
    #: reference energies or None; ``say``: the progress callback for the training it runs
    plan: Callable[..., CommitteePlan]
    #: ``command(args) -> CommitteeCommand`` from the parsed flags of ``ase-mlff train FAMILY``;
    #: raises :class:`~ase_mlff.training.common.UsageError` (exit status 2)
    command: Callable[[argparse.Namespace], CommitteeCommand]
    #: the flag that sets the frames per member (in help texts and messages)
    member_frames: str = "--committee-frames"
    #: the default frames per member, for ``--committee-frames --help``
    frames_default: str = "half of the training pool"
    #: the frames that calibrate by default, for ``--calibration-data --help``
    held_out: str = "the test frames (--n-test)"
    #: the record's note on given reference energies
    given_reference: str = "given to every model of the committee"
    #: the record's (source, note) without given reference energies
    no_reference: tuple[str, str] = ("fitted", "each model of the committee fitted its own on its training frames")
    #: whether its committees can start from a trained one (``train_committee(start_from=...)``;
    #: its plans then give :attr:`CommitteePlan.check_init`)
    warm_start: bool = False


def hook(family: str) -> CommitteeHook | None:
    """The committee hook of ``family``'s recipe (None when it provides none); ValueError for a
    family without a recipe."""
    from . import recipe

    module = recipe(family)
    found = getattr(module, "COMMITTEE", None)
    if found is not None and not isinstance(found, CommitteeHook):
        raise TypeError(f"{module.__name__}.COMMITTEE must be a CommitteeHook, not {type(found).__name__}")
    return found


def committee_families() -> list[str]:
    """The families whose recipe provides a committee hook (recipes that fail to import count
    as none)."""
    from . import families

    out = []
    for name in families():
        try:
            if hook(name) is not None:
                out.append(name)
        except ImportError:  # pragma: no cover - a family not built into this installation
            continue
    return out


def _hook_or_refuse(family: str) -> CommitteeHook:
    """The hook of ``family``; an InputError (a ValueError) naming the families that have one,
    and why this one has none when its recipe says (``NO_COMMITTEE``)."""
    from . import families, recipe

    found, why = None, None
    if family in families():
        found = hook(family)
        why = getattr(recipe(family), "NO_COMMITTEE", None)
    if found is None:
        raise InputError(f"committees can be trained for {', '.join(committee_families())}, not {family!r}"
                         + (f": {why}" if why else ""))
    return found


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
                    start_from: CommitteeModel | None = None, member_frames=None,
                    **options) -> tuple[CommitteeModel, dict]:
    """Train a committee of ``K`` ``family`` models on ``data`` (a Dataset); returns
    ``(model, report)``. See the module docstring for the recipe.

    ``n_member``: frames per member (default: the family's, a quarter or half of the training
    pool). ``mean``: ``"all"``, ``"members"`` or a trained model of ``family`` to serve.
    ``calibration``: a Dataset of held-out frames (``n_calibration`` of them are used; default
    all); without it the validation/test frames held out of ``data`` are used. ``options``: the
    family's training options, as its recipe's hook reads them (the section on committees of
    the recipe module ``ase_mlff.training.<family>_train``). ``reference_energies``: given
    per-element reference energies for every model (anything
    :func:`~ase_mlff.training.common.parse_reference_energies` reads; numbers in eV). A family
    whose recipe has no committee hook is refused with an InputError (a ValueError).

    ``start_from``: a trained committee of ``K`` ``family`` members to start from (module docstring,
    "Warm start"); the number of epochs and the like are the family's ``options`` as always.
    ``member_frames``: ``K`` lists of frame indices of ``data``, each member's training frames
    (instead of ``n_member`` frames drawn from the pool); each must lie in the family's pool.
    """
    from .common import (check_given_reference, format_training_metrics, model_metrics, parse_reference_energies,
                         reference_energies_record)

    say = progress or (lambda msg: None)
    family_hook = _hook_or_refuse(family)
    ds = _as_dataset(data)
    reference = parse_reference_energies(reference_energies)
    if reference is not None:  # every element of the data needs one: checked before anything trains
        check_given_reference(list(ds), list(ds.elements), reference, say)
    if not isinstance(K, int) or K < 2:
        raise InputError(f"a committee needs K >= 2 members (--committee), got {K!r}")
    if isinstance(mean, Model):
        if mean.family != family:
            raise InputError(f"the served mean is a {mean.family} model; the committee is of {family} models")
    elif mean not in ("all", "members"):
        raise InputError(f"mean must be 'all', 'members' or a trained {family} model, got {mean!r}")
    _check_start_from(start_from, family, K, mean)
    t0 = time.perf_counter()

    # ---- calibration frames: never frames the served mean or a member was trained on; chosen
    # before anything trains, so that the element check (step 0) sees them
    if calibration is not None:
        cal = _as_dataset(calibration)
        n = len(cal) if n_calibration is None else int(n_calibration)
        if not 0 < n <= len(cal):
            raise DatasetError(f"asked for {n} calibration frames (n_calibration), the calibration data have "
                               f"{len(cal)}")
        cal_idx = np.sort(random_stream(seed, "calibration").choice(len(cal), n, replace=False))

    def calibration_frames(held_out):
        """(frames, record) of the calibration frames, given the family's held-out indices."""
        if calibration is not None:
            return cal[cal_idx], {"source": cal.source, "data_sha256": cal.sha256(), "indices": cal_idx.tolist()}
        idx = np.asarray(held_out, dtype=np.int64)
        if n_calibration is not None:
            idx = idx[: int(n_calibration)]
        return ds[idx], {"source": ds.source, "data_sha256": ds.sha256(), "indices": idx.tolist()}

    # ---- the family's plan, every model's elements checked, then the served mean and the members
    if member_frames is not None and n_member is None:  # the plan's count: the smallest member's
        n_member = min((len(f) for f in member_frames), default=None)
    plan = family_hook.plan(ds, dict(options), n_member=n_member, seed=seed, reference=reference, say=say)
    given_frames = None if member_frames is None else _given_member_frames(member_frames, K, plan.pool)
    if start_from is not None:  # everything that must carry over, before anything trains
        if plan.check_init is None:
            raise InputError(f"committees of {family} cannot start from a trained committee (start_from): its recipe "
                             "has no warm start")
        for name, m in _start_models(start_from):
            try:
                plan.check_init(m)
            except InputError as exc:
                raise InputError(f"cannot start from {name} of the given committee: {exc}") from None
    check = _ElementCheck(ds, K, seed, mean, lambda held: calibration_frames(held)[0], given_frames)
    check(plan.pool, plan.n_member, plan.held_out, _MEMBER_HINT.format(family_hook.member_frames), **plan.check)
    report = dict(plan.report)
    served, report["mean"] = _served_mean(mean, plan, say, start_from)
    members, report["members"] = _train_members(K, plan.pool, plan.n_member, seed, plan.member_trainer(served), say,
                                                plan.member_note, given_frames, start_from)
    if given_frames is not None:
        report["n_member"] = [len(f) for f in given_frames]
    if start_from is not None:
        src = getattr(start_from, "source", None) or {}
        how = "member k from member k of this committee"
        if served is not None and mean == "all":
            how += ", the served mean from its served mean"
        report["start_from"] = {"path": src.get("path"), "sha256": src.get("sha256"), "how": how}
    model = CommitteeModel(members, served)
    seen = {o for rec in report["members"] for o in rec.get("trained_on", ())}
    report["trained_on"] = [o for o in ("energy", "forces", "stress") if o in seen]
    if reference is None:
        report["reference_energies"] = reference_energies_record([], [], *family_hook.no_reference)
    else:
        report["reference_energies"] = reference_energies_record(
            ds.elements, reference.for_species(ds.elements), "given", family_hook.given_reference, reference)
    frames, where = calibration_frames(plan.held_out)
    if calibration is None and isinstance(mean, Model):
        _check_disjoint(mean, ds, np.asarray(where["indices"], dtype=np.int64))
    if len(frames) == 0:
        warn("no calibration frames: the uncertainties are the raw member spread (factors 1)")
        factors, record = {"energy": 1.0, "forces": 1.0, "stress": 1.0}, {"n_frames": 0}
        # nothing held out: at least the served prediction's fit to the training pool, labelled as such
        pool_frames = [ds[int(i)] for i in plan.pool]
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

    def __init__(self, ds, K: int, seed: int, mean, calibration_frames, given_frames=None):
        self.ds, self.K, self.seed, self.mean = ds, K, seed, mean
        self.given_frames = given_frames  # explicit member frames (train_committee's member_frames)
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
            idx = _member_indices(pool, n_member, k, self.seed) if self.given_frames is None else self.given_frames[k]
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




#: what to change when a member's frames lack an element (the hook names its frames flag)
_MEMBER_HINT = ("choose another --seed or more frames per member ({}), or leave the frames of that element out of "
                "the data")


def _served_mean(mean, plan: CommitteePlan, say, start: CommitteeModel | None = None):
    """The served model and its report entry: ``mean`` is "all" (``plan.fit_all()`` -> (model,
    report entry) trains one model on the whole pool, from ``start``'s served mean when given), a
    given :class:`Model`, or "members" (the member average is served: None)."""
    if mean == "all":
        if start is not None:
            say(f"served mean: {plan.mean_label}, from the given committee's served mean")
            served, entry = plan.fit_all(init=start.mean_model)
            return served, {"kind": "all", "init": "the given committee's served mean", **entry}
        say(f"served mean: {plan.mean_label}")
        served, entry = plan.fit_all()
        return served, {"kind": "all", **entry}
    if isinstance(mean, Model):
        source = getattr(mean, "source", None) or {}
        extra = plan.describe_given_mean(mean) if plan.describe_given_mean is not None else {}
        return mean, {"kind": "given", "source": source.get("path"), "sha256": source.get("sha256"), **extra}
    return None, {"kind": "members"}


def _train_members(K: int, pool: np.ndarray, n_member: int, seed: int, fit_member, say, note: str = "",
                   given_frames=None, start: CommitteeModel | None = None):
    """K members, member k on its own subsample of ``pool`` (or on ``given_frames[k]``) with seed
    ``seed + k + 1``, from member k of ``start`` when given: ``fit_member(indices, member_seed[,
    init=model])`` -> (model, record); returns (models, records)."""
    members, recs = [], []
    note = note if given_frames is None else ""  # the family's note counts drawn members
    for k in range(K):
        idx = _member_indices(pool, n_member, k, seed) if given_frames is None else given_frames[k]
        if start is None:
            say(f"member {k + 1}/{K}: {len(idx)} frames{note}")
            model, rec = fit_member(idx, seed + k + 1)
        else:
            say(f"member {k + 1}/{K}: {len(idx)} frames{note}, from member {k + 1} of the given committee")
            model, rec = fit_member(idx, seed + k + 1, init=start.members[k])
            rec = {**rec, "init": f"member {k + 1} of the given committee"}
        members.append(model)
        recs.append({"seed": seed + k + 1, **rec})
    return members, recs


def _check_start_from(start, family: str, K: int, mean) -> None:
    """``start`` (train_committee's ``start_from``) is None or a committee that fits the one asked for."""
    if start is None:
        return
    if not isinstance(start, CommitteeModel):
        raise InputError(f"start_from must be a trained committee (a CommitteeModel), not {type(start).__name__}")
    if start.member_family != family:
        raise InputError(f"start_from is a committee of {start.member_family} models; this one is of {family} models")
    if start.n_members != K:
        raise InputError(f"start_from has {start.n_members} members; this committee has {K} (member k starts from "
                         "member k)")
    if mean == "all" and start.mean_model is None:
        raise InputError("start_from serves its member average, so the served mean 'all' has no weights to start from; "
                         "train with mean='members', or without start_from")


def _start_models(start: CommitteeModel):
    """(name, model) of every model of ``start`` a warm start reads."""
    out = [(f"member {k + 1}", m) for k, m in enumerate(start.members)]
    if start.mean_model is not None:
        out.append(("the served mean", start.mean_model))
    return out


def _given_member_frames(member_frames, K: int, pool: np.ndarray) -> list[np.ndarray]:
    """``member_frames`` as K sorted index arrays, each of at least 2 distinct frames of ``pool``."""
    frames = [np.asarray(f, dtype=np.int64) for f in member_frames]
    if len(frames) != K:
        raise InputError(f"member_frames gives {len(frames)} lists of frames; the committee has {K} members")
    inside = set(int(i) for i in pool)
    out = []
    for k, f in enumerate(frames):
        if f.ndim != 1 or len(np.unique(f)) != len(f) or len(f) < 2:
            raise InputError(f"member_frames[{k}] must be at least 2 distinct frame indices, got {f.tolist()}")
        outside = [int(i) for i in f if int(i) not in inside]
        if outside:
            raise InputError(f"member_frames[{k}] holds frame(s) {outside[:5]} outside the training pool (the "
                             "family holds them out, or the data are shorter)")
        out.append(np.sort(f))
    return out


# ----------------------------------------------------------------------------- shared-trainer recipes
#: options of a shared-trainer recipe that a committee sets itself (or that do not apply to one)
def training_record(report: dict[str, Any]) -> dict[str, Any]:
    """The ``training`` dict of the committee's model file."""
    rec = {k: v for k, v in report.items() if k not in ("energy_unit",)}
    rec["method"] = f"committee of {report['K']} {report['family']} models (ase-mlff)"
    unit = report.get("energy_unit") or "eV"
    rec["units"] = {"energy": unit, "length": "Ang", "forces": f"{unit}/Ang"}
    return rec



# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser, family_hook: CommitteeHook) -> None:
    """The committee options of the ``ase-mlff train FAMILY`` parser of a family whose recipe
    provides ``family_hook`` (the CLI adds them for those families only)."""
    g = parser.add_argument_group(
        "committee (uncertainty; docs/uncertainty.md)",
        "With --committee K, K models are trained on random subsets of the training frames and stored "
        "in one file with a served mean; MLFFCalculator(..., uncertainty=True) then gives "
        "energy_uncertainty (eV), forces_uncertainty (eV/Å per atom) and stress_uncertainty.")
    frames = family_hook.member_frames
    g.add_argument("--committee", type=int, default=None, metavar="K",
                   help=f"train a committee of K >= 2 members (default: one model); {frames} then gives the "
                        "frames per member")
    g.add_argument("--committee-mean", default="all", metavar="all|members|MODEL",
                   help="what the committee serves as energy and forces: 'all' (a model trained on all "
                        "training frames; the default), 'members' (the member average) or a model file of "
                        "the same family trained on the same data")
    g.add_argument("--committee-frames", type=int, default=None, metavar="N",
                   help=f"frames per member (default: {family_hook.frames_default})"
                   if frames == "--committee-frames" else f"not used: {frames} gives the frames per member")
    g.add_argument("--calibration-data", default=None, metavar="FILE",
                   help="held-out frames (same units) on which the uncertainty is calibrated (default: "
                        f"{family_hook.held_out} of the data)")
    g.add_argument("--n-calibration", type=int, default=None, metavar="N",
                   help="calibration frames drawn from --calibration-data (default: all)")


def run(family: str, args) -> int:
    """``ase-mlff train FAMILY --committee K ...``; exit status 0, 1 (data), 2 (usage)."""
    from .. import data as data_mod
    from ..data import command_line_message
    from ..errors import MLFFError
    from ..io import load_model, save_model
    from .checkpoint import check_output
    from ..console import timed_printer
    from .common import parse_reference_energies

    def fail(msg, code):
        print(f"ase-mlff train {family} --committee: error: {msg}", file=sys.stderr)
        return code

    progress = timed_printer()
    K = args.committee
    if K < 2:
        return fail(f"--committee {K}: a committee needs at least 2 members", 2)
    if getattr(args, "resume", False):
        return fail("--resume is not available for committees (each member trains in one go)", 2)
    try:
        cmd = _hook_or_refuse(family).command(args)
    except UsageError as exc:
        return fail(exc, 2)
    try:
        check_output(cmd.output, bool(cmd.overwrite), False)
        reference = parse_reference_energies(cmd.reference_energies, cmd.energy_unit)  # in --energy-unit, like the data
    except FileExistsError as exc:
        return fail(exc, 2)
    except UsageError as exc:
        return fail(exc, 2)
    try:
        units = {"energy_unit": cmd.energy_unit}
        if getattr(args, "length_unit", None):
            units["length_unit"] = args.length_unit
        ds = data_mod.read(cmd.dataset, **units)
        cal = data_mod.read(args.calibration_data, **units) if args.calibration_data else None
        mean = args.committee_mean
        if mean not in ("all", "members"):
            mean = load_model(mean)
        model, report = train_committee(family, ds, K, n_member=cmd.n_member, mean=mean, seed=cmd.seed,
                                        calibration=cal, n_calibration=args.n_calibration, progress=progress,
                                        reference_energies=reference, **cmd.options)
    except UsageError as exc:  # e.g. a member's frames lack an element (checked before anything trains)
        return fail(exc, 2)
    except MLFFError as exc:
        return fail(command_line_message(str(exc)), 1)
    rec = training_record(report)
    rec["command"] = " ".join(sys.argv)
    save_model(model, cmd.output, training=rec)
    c = report["calibration"]
    print(f"committee of {K} {family} models written to {cmd.output} (serving "
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
