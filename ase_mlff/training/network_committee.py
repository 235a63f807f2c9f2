"""The committee hook of the recipes trained with the shared network trainer (bpnn, schnet):
:func:`network_committee` builds it from the recipe's one-model trainer, :func:`network_options`
reads the trainer's options from the command line (:mod:`ase_mlff.training.committee`)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import DatasetError, InputError
from ..models.base import Model
from .committee import CommitteeCommand, CommitteeHook, CommitteePlan
from .common import UsageError

_NETWORK_OWN = ("seed", "progress", "checkpoint", "resume", "stop_after", "dataset")


def _network_split_counts(M: int, options: dict) -> tuple[int, int, int | None]:
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


def network_committee(family: str, train_one: Callable,
                      check_parent: Callable[[Model, list, dict], None] | None = None) -> CommitteeHook:
    """The committee hook of a recipe whose one-model trainer has the shared network trainer's
    split: ``train_one(dataset, n_train, n_valid, n_test, seed=..., progress=..., **options) ->
    (model, report)``, splitting with ``Dataset.split(n_train, n_valid, n_test, seed)``.

    The data are split as ``ase-mlff train FAMILY`` splits them (same counts and seed), so the
    served mean ("all") is the very model that command trains (same frames, seed and initial
    weights); the test frames are the calibration frames. The pool is the training plus
    validation frames (the networks keep their best-validation weights, so the validation
    frames are not held out). Member ``k`` is ``train_one`` on its ``n_member`` pool frames
    (default: half of the pool), of which a share ``n_valid / n_pool`` (at least one when
    ``n_valid > 0``) is its own validation set, with seed ``seed + k + 1`` (initial weights,
    batch order, that split). Options: the keywords of ``train_one`` (``n_train``, ``n_valid``,
    ``n_test``, ...); on the command line, those of its parameters the parser has.

    Warm start: when ``train_one`` takes ``init`` (a parent model to fine-tune), a committee can
    start from a trained one (``train_committee(start_from=...)``): each model is ``train_one(...,
    init=its parent)``. ``check_parent(parent, frames, options)`` is the recipe's check, before
    anything trains, that a model of ``options`` on ``frames`` can start from ``parent`` (it
    raises InputError naming why not); without it only the parent's family is checked. Members
    given their frames explicitly (``member_frames``) each hold out the same share for
    validation."""
    import inspect

    warm = "init" in inspect.signature(train_one).parameters

    def plan(ds, options, *, n_member, seed, reference, say) -> CommitteePlan:
        """The committee plan of a shared-trainer recipe: see :func:`network_committee`."""
        if reference is not None:
            options["reference_energies"] = reference
        for drop in _NETWORK_OWN:
            options.pop(drop, None)
        n_train, n_valid, n_test = _network_split_counts(len(ds), options)
        split = ds.split(n_train, n_valid, n_test, seed=seed)
        pool = np.sort(np.concatenate([split.train, split.valid])).astype(np.int64)
        held = split.test
        n_member = len(pool) // 2 if n_member is None else int(n_member)
        if not 2 <= n_member <= len(pool):
            raise DatasetError(f"{n_member} frames per member (--committee-frames) from a pool of {len(pool)} "
                               "training and validation frames; a member needs at least 2")
        def valid_share(m):  # a member of m frames validates on the pool's share of them
            return 0 if n_valid == 0 else min(m - 1, max(1, round(n_valid * m / len(pool))))

        n_valid_member = valid_share(n_member)
        recorded = {}
        for k, v in options.items():
            v = list(v) if isinstance(v, tuple) else v
            recorded[k] = getattr(v, "given_as", v) if k == "reference_energies" else v
        report = {"n_member": n_member, "n_pool": int(len(pool)), "n_valid_member": n_valid_member,
                  "split": {"train": split.train.tolist(), "valid": split.valid.tolist(), "test": held.tolist()},
                  "held_out_indices": held.tolist(), "options": recorded}

        def member_train(idx, member_seed):  # the training part of the split train_one makes below
            nv = valid_share(len(idx))
            return idx[ds[idx].split(len(idx) - nv, nv, 0, seed=member_seed).train]

        def check_init(parent):
            if getattr(parent, "family", None) != family:
                raise InputError(f"it is a {getattr(parent, 'family', type(parent).__name__)} model, not a {family} "
                                 "model")
            if check_parent is not None:
                check_parent(parent, [ds.frames[int(i)] for i in np.concatenate([pool, held])], dict(options))

        def keywords(init):  # the options, with the parent to start from (it replaces a given --init)
            return options if init is None else {**options, "init": init}

        def fit_all(init=None):
            # n_test=0: the same split (train and valid come first in the permutation), no test pass here;
            # the test frames are evaluated by the committee, as calibration frames
            model, rep = train_one(ds, n_train, n_valid, 0, seed=seed, progress=say, **keywords(init))
            return model, {"n_train": n_train, "n_valid": n_valid, "valid": rep.get("valid"),
                           "epochs_run": len(rep.get("history") or [])}

        def fit_member(idx, member_seed, init=None):
            nv = valid_share(len(idx))
            m, rep = train_one(ds[idx], len(idx) - nv, nv, 0, seed=member_seed, progress=say, **keywords(init))
            sub = rep.get("split") or {}
            return m, {"frames": idx.tolist(),
                       "train_indices": idx[np.asarray(sub.get("train", []), dtype=np.int64)].tolist(),
                       "valid_indices": idx[np.asarray(sub.get("valid", []), dtype=np.int64)].tolist(),
                       "valid": rep.get("valid"), "epochs_run": len(rep.get("history") or []),
                       "trained_on": rep.get("trained_on", [])}

        return CommitteePlan(pool=pool, held_out=held, n_member=n_member, report=report,
                             check={"served_train": split.train, "member_train": member_train},
                             fit_all=fit_all, mean_label=f"{family} on all {n_train} training frames ({n_valid} "
                                                         "validation)",
                             member_trainer=lambda served: fit_member,
                             member_note=f" ({n_valid_member} of them for validation)",
                             check_init=check_init if warm else None)

    def command(args) -> CommitteeCommand:
        try:
            options = network_options(train_one, args)
        except InputError as exc:
            raise UsageError(str(exc)) from None
        return CommitteeCommand(dataset=args.dataset, energy_unit=getattr(args, "energy_unit", None),
                                output=args.output, overwrite=getattr(args, "overwrite", False), options=options,
                                n_member=args.committee_frames, seed=int(getattr(args, "seed", 0) or 0),
                                reference_energies=getattr(args, "reference_energies", None))

    return CommitteeHook(plan=plan, command=command, frames_default="half of the --n-train + --n-valid frames",
                         warm_start=warm)


def network_options(train_one: Callable, args) -> dict[str, Any]:
    """Keywords of ``train_one`` (a shared-trainer recipe's one-model trainer) from the parsed
    flags of its ``ase-mlff train`` command: those of its parameters that the parser has. The
    committee sets the seed and passes reference energies itself."""
    import inspect

    given = vars(args)
    skip = {*_NETWORK_OWN, "reference_energies"}
    opts = {}
    for name in inspect.signature(train_one).parameters:
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
