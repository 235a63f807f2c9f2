"""What every training recipe shares: reference energies, error metrics, options and configs,
progress lines and the training record written into model files.

Metrics (one naming, the same as ``ase-mlff eval``, :mod:`ase_mlff.workflows.evaluate`):
errors are prediction minus reference; MAE and RMSE of

==============================  ==========================================================
``energy_{mae,rmse}_meV``         total energy, meV
``energy_per_atom_{mae,rmse}_meV`` energy per atom, meV/atom
``forces_{mae,rmse}_meV_per_A``    force components, meV/Å (``forces_per_element``: the same
                                  per element, ``mae_meV_per_A``, ``rmse_meV_per_A``, ``n_atoms``)
``stress_{mae,rmse}_GPa``         the six Voigt components, GPa (and ``..._meV_per_A3``)
``n_frames``, ``n_atoms``, ``n_energy``, ``n_forces``, ``n_stress``  counts
``per_config_type``               the same table per ``frame.info["config_type"]``, when any
                                  frame has one
==============================  ==========================================================

Per-element reference energies: ``e0 = argmin sum_f (E_f - sum_i e0[s_i])^2`` (least squares
over the frames' element counts), the constant part every local model subtracts first.

Options: every recipe declares its options once, as :class:`Option` rows; the library call
(``ase_mlff.train(family, data, **options)``), the command-line flags (``--n-train``) and the
YAML/JSON config keys (``n_train`` or ``n-train``) are generated from that table. Precedence:
flags, then the config file, then the defaults.

Split check (:func:`check_split_elements`): every recipe, once its split is known and before
any expensive work, refuses a split whose validation or test frames (or, for committees, whose
pool and calibration frames) hold an element that a model's training frames lack
(:class:`SplitError`: exit status 2 on the command line).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from ase import units
from ase.data import chemical_symbols

from ..errors import DatasetError

# ------------------------------------------------------------------------------ reference energies


def reference_energies(frames, species: Sequence[int], with_rank: bool = False):
    """Per-element constants e0 (eV, float64, in the order of ``species``) minimising
    sum_f (E_f - sum_i e0[s_i])**2 over the frames with an energy (zeros when none has one).

    With fewer independent compositions than elements (e.g. every frame is the same molecule)
    the minimum-norm solution is returned: it reproduces the composition-weighted mean, which
    is all that matters. ``with_rank``: also return the rank of the composition matrix."""
    frames = [f for f in frames if f.energy is not None]
    if not frames:
        e0, rank = np.zeros(len(species)), 0
    else:
        counts = np.array([[np.sum(np.asarray(f.numbers) == z) for z in species] for f in frames], dtype=float)
        energies = np.array([f.energy for f in frames], dtype=np.float64)
        e0, _, rank, _ = np.linalg.lstsq(counts, energies, rcond=None)
    return (e0, int(rank)) if with_rank else e0


def read_training_data(data, energy_unit=None):
    """A Dataset (or dict of arrays) as given; a path read by :func:`ase_mlff.data.read`."""
    if isinstance(data, (str, os.PathLike)):
        from .. import data as data_mod

        return data_mod.read(data, energy_unit=energy_unit)
    return data


# ------------------------------------------------------------------------------ metrics
def _mae_rmse(err) -> tuple[float, float]:
    err = np.asarray(err, dtype=float).ravel()
    if err.size == 0:
        return float("nan"), float("nan")
    return float(np.abs(err).mean()), float(np.sqrt((err ** 2).mean()))


def error_metrics(energy_ref=(), energy_pred=(), n_atoms=(), forces_ref=(), forces_pred=(), numbers=(),
                  stress_ref=(), stress_pred=()) -> dict[str, Any]:
    """Metrics (module docstring) of labelled predictions, eV and Å in.

    ``energy_ref``/``energy_pred``/``n_atoms`` (M,) per frame with an energy; ``forces_ref``/
    ``forces_pred`` lists of (N, 3) arrays (or stacked (K, 3)) with the atomic ``numbers`` of
    their atoms; ``stress_ref``/``stress_pred`` (S, 6) Voigt, eV/Å³."""
    m: dict[str, Any] = {}
    e_ref, e_pred = np.asarray(energy_ref, float).ravel(), np.asarray(energy_pred, float).ravel()
    if len(e_ref):
        de = e_pred - e_ref
        m["energy_mae_meV"], m["energy_rmse_meV"] = (1e3 * x for x in _mae_rmse(de))
        m["energy_per_atom_mae_meV"], m["energy_per_atom_rmse_meV"] = (
            1e3 * x for x in _mae_rmse(de / np.asarray(n_atoms, dtype=float).ravel()))
        m["n_energy"] = int(len(de))
    if len(forces_ref):
        f_ref = np.concatenate([np.reshape(f, (-1, 3)) for f in forces_ref])
        f_pred = np.concatenate([np.reshape(f, (-1, 3)) for f in forces_pred])
        z = np.concatenate([np.ravel(n) for n in numbers]) if not np.isscalar(numbers[0]) else np.asarray(numbers)
        df = f_pred - f_ref
        m["forces_mae_meV_per_A"], m["forces_rmse_meV_per_A"] = (1e3 * x for x in _mae_rmse(df))
        m["n_forces"] = int(len(df))
        per = {}
        for el in np.unique(z):
            mae, rmse = _mae_rmse(df[z == el])
            per[chemical_symbols[int(el)]] = {"mae_meV_per_A": 1e3 * mae, "rmse_meV_per_A": 1e3 * rmse,
                                              "n_atoms": int((z == el).sum())}
        m["forces_per_element"] = per
    s_ref = np.asarray(stress_ref, float).reshape(-1, 6)
    if len(s_ref):
        ds = np.asarray(stress_pred, float).reshape(-1, 6) - s_ref
        m["stress_mae_meV_per_A3"], m["stress_rmse_meV_per_A3"] = (1e3 * x for x in _mae_rmse(ds))
        m["stress_mae_GPa"], m["stress_rmse_GPa"] = (x / units.GPa for x in _mae_rmse(ds))
        m["n_stress"] = int(len(ds))
    return m


def frame_metrics(frames: Sequence, predictions: Sequence[dict]) -> dict[str, Any]:
    """Metrics of ``predictions`` (dicts with ``energy`` eV, ``forces`` eV/Å and optionally
    ``stress``, one per frame) against the labels of ``frames`` (:class:`~ase_mlff.data.Frame`);
    a label enters only where the frame has it (stress: where the prediction has one too).
    Adds ``per_config_type`` when frames carry ``info["config_type"]``."""

    def table(idx):
        e_ref, e_pred, nat, f_ref, f_pred, z, s_ref, s_pred = [], [], [], [], [], [], [], []
        for k in idx:
            fr, p = frames[k], predictions[k]
            if fr.energy is not None and p.get("energy") is not None:
                e_ref.append(fr.energy), e_pred.append(float(p["energy"])), nat.append(len(fr))
            if fr.forces is not None and p.get("forces") is not None:
                f_ref.append(fr.forces), f_pred.append(p["forces"]), z.append(fr.numbers)
            if fr.stress is not None and p.get("stress") is not None:
                s_ref.append(fr.stress), s_pred.append(p["stress"])
        m = {"n_frames": len(idx), "n_atoms": int(sum(len(frames[k]) for k in idx))}
        m.update(error_metrics(e_ref, e_pred, nat, f_ref, f_pred, z, s_ref, s_pred))
        return m

    out = table(range(len(frames)))
    types = [(fr.info or {}).get("config_type") for fr in frames]
    if any(t is not None for t in types):
        out["per_config_type"] = {str(t): table([k for k, u in enumerate(types) if u == t])
                                  for t in sorted({str(t) for t in types if t is not None})}
    return out


def predict_frames(calc, frames: Sequence, stress: bool = True) -> list[dict]:
    """Energy, forces (and stress of periodic frames with a stress label, when ``stress``) of
    ``calc`` on each frame, one structure at a time."""
    out = []
    for fr in frames:
        atoms = fr.to_atoms()
        atoms.calc = calc
        p = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if stress and fr.stress is not None and np.all(fr.pbc):
            p["stress"] = atoms.get_stress()
        out.append(p)
    return out


def format_metrics(name: str, m: dict) -> str:
    """One line of the main metrics, for progress output."""
    parts = [f"{name} ({m.get('n_frames', m.get('n_energy', '?'))} frames):"]
    if "energy_mae_meV" in m:
        parts.append(f"energy MAE {m['energy_per_atom_mae_meV']:.3g} meV/atom ({m['energy_mae_meV']:.3g} meV)")
    if "forces_mae_meV_per_A" in m:
        parts.append(f"forces MAE {m['forces_mae_meV_per_A']:.3g} meV/Å, RMSE {m['forces_rmse_meV_per_A']:.3g} meV/Å")
    if "stress_rmse_GPa" in m:
        parts.append(f"stress RMSE {m['stress_rmse_GPa']:.3g} GPa")
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:])


# ------------------------------------------------------------------------------ record
def training_record(family: str, recipe: str, *, data_sha256, source, seed, options: dict, split: dict,
                    metrics: dict, units: dict | None = None, **family_items) -> dict[str, Any]:
    """The ``training`` dict saved in a model file, the same keys for every family.

    ``split``: ``{"train": [...], "valid": [...], "test": [...]}`` frame indices (``None`` where
    a family does not use a set); ``metrics``: ``{"valid": ..., "test": ...}`` tables of
    :func:`frame_metrics`; ``units``: the units of the source data (recorded as
    ``training_units``); ``family_items``: the family's own results (e.g. ``sigma``)."""
    return {
        "family": family, "recipe": recipe, "source": source, "data_sha256": data_sha256,
        "units": units or {"energy": "eV", "length": "Ang"}, "seed": seed,
        "options": _jsonable(options), "split": split, "metrics": metrics, **family_items,
    }


def _jsonable(options: dict) -> dict:
    def conv(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (np.integer, np.floating)):
            return v.item()
        if v is None or isinstance(v, (bool, int, float, str, dict)):
            return v
        return str(v)

    return {k: conv(v) for k, v in options.items()}


# ------------------------------------------------------------------------------ progress
def timed_printer(stream=None) -> Callable[[str], None]:
    """Progress callback for the command line: ``[  12.3 s] message`` lines on stderr."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=stream or sys.stderr, flush=True)

    return say


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class Option:
    """One training option: Python keyword ``name``, flag ``--name-with-dashes``, config key
    (either spelling). ``default`` is stated in the help text; ``kind``: "value", "flag"
    (store_true) or "dataset" (a path read like the training data on the command line)."""

    name: str
    default: Any
    help: str
    type: Callable | None = None
    kind: str = "value"
    choices: Sequence | None = None
    cli: bool = True  # False: library only (e.g. arrays of indices)
    library: bool = True  # False: command line only (output file, plot, ...)
    short: str | None = None  # e.g. "-o"


class UsageError(Exception):
    """A problem with the command line or the config file (exit status 2)."""


# ------------------------------------------------------------------------------ split checks
class SplitError(UsageError, DatasetError):
    """Held-out frames (validation, test, calibration, a committee's pool) hold an element that
    the training frames of a model lack: the model could never learn it. Raised before any
    training work; a usage error on the command line (exit status 2: the fix is another split,
    seed or data file), a :class:`~ase_mlff.errors.DatasetError` in Python."""


#: what to change, in the words of the command line (every train command has --seed)
SPLIT_HINT = ("choose a split whose training frames hold every element (another --seed, more training frames), "
              "or leave those frames out of the data")


def _element_sets(frames) -> list[frozenset]:
    """The elements of each frame (a :class:`~ase_mlff.data.Frame` or an array of atomic
    numbers); frames that share one array (a molecule's frames) are looked at once."""
    seen: dict[int, tuple] = {}  # id -> (the array itself, kept alive so that its id is not reused; its set)
    out = []
    for f in frames:
        numbers = getattr(f, "numbers", f)
        key = id(numbers)
        if key not in seen:
            seen[key] = (numbers, frozenset(int(z) for z in np.unique(np.asarray(numbers))))
        out.append(seen[key][1])
    return out


def check_split_elements(train, held: dict[str, Sequence], known: Iterable[int] = (), model: str | None = None,
                         hint: str = SPLIT_HINT) -> None:
    """Refuse (:class:`SplitError`) a split in which a frame of ``held`` (``{"validation":
    frames, "test": frames, ...}``) holds an element that no frame of ``train`` holds.

    Every train command calls this once its split is known and before the first expensive step,
    so that a model is never trained to the end only to fail on its test frames, and never
    ships an element (SchNet's embedding, a BPNN network, an MFF or GAP kernel block) that no
    training frame ever taught it. ``known``: elements the model has learnt elsewhere (the
    parent of a fine-tuned model). ``model`` names the model in the message (a committee
    member; default: the only one); ``hint`` says what to change. Frames: :class:`~ase_mlff.data.Frame` objects or
    arrays of atomic numbers."""
    train = list(train)
    have = set(int(z) for z in known).union(*_element_sets(train))
    missing = {}
    for name, frames in held.items():
        for elements in _element_sets(frames):
            for z in elements - have:
                missing.setdefault(z, {}).setdefault(name, [0, len(frames)])[0] += 1
    if not missing:
        return
    parts = []
    for z in sorted(missing):
        where = ", ".join(f"{n} of the {total} {name} frames" for name, (n, total) in missing[z].items())
        parts.append(f"{chemical_symbols[z]} (in {where})")
    one = len(parts) == 1
    whose = f" of {model}, which" if model else ", so the model"
    raise SplitError(f"{'element' if one else 'elements'} {'; '.join(parts)} {'is' if one else 'are'} in none of "
                     f"the {len(train)} training frames{whose} could never learn {'it' if one else 'them'}: {hint}")


class _Given(argparse.Action):
    """Stores like ``store`` / ``store_true`` and records that the flag was given, so that a
    config file overrides defaults but never a flag the user typed."""

    def __init__(self, option_strings, dest, flag=False, **kwargs):
        if flag:
            kwargs.update(nargs=0)
        self.flag = flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True if self.flag else values)
        given = set(getattr(namespace, "_given", ()))
        given.add(self.dest)
        setattr(namespace, "_given", given)


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> argparse.ArgumentParser:
    """Flags for the command-line ``options`` (defaults and units stated in the help) plus
    ``--config``. Parsed values carry the defaults; the flags actually typed are recorded in
    ``args._given`` for :func:`resolve_options`."""
    for opt in options:
        if not opt.cli:
            continue
        flag = "--" + opt.name.replace("_", "-")
        shown = "none" if opt.default is None else ("off" if opt.default is False else opt.default)
        text = f"{opt.help} (default: {shown})"
        flags = (opt.short, flag) if opt.short else (flag,)
        if opt.kind == "flag":
            parser.add_argument(*flags, dest=opt.name, action=_Given, flag=True, default=opt.default, help=text)
        else:
            parser.add_argument(*flags, dest=opt.name, action=_Given, type=opt.type, choices=opt.choices,
                                default=opt.default, help=text)
    parser.add_argument("--config", help="YAML (or JSON) file of options, keys = flag names without '--' "
                                         "(n-train or n_train); flags override it (default: none)")
    parser.set_defaults(_given=frozenset())
    return parser


def load_config(path) -> dict[str, Any]:
    """Options from a YAML or JSON file (a mapping; ``-`` in keys read as ``_``)."""
    import yaml

    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read --config {path}: {exc}") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise UsageError(f"--config {path} must hold a mapping of option names to values, got {type(cfg).__name__}")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def resolve_options(options: Sequence[Option], args=None, given: dict | None = None,
                    extra: Sequence[str] = (), aliases: dict | None = None) -> dict[str, Any]:
    """Defaults, then ``--config`` (from ``args``), then the flags typed on the command line
    (``args._given``; without that record, every value of ``args`` that is not None), then
    ``given`` (library keywords). Unknown names raise :class:`UsageError` (config) or
    ``TypeError`` (keywords); ``extra`` names are accepted as they are; ``aliases`` maps other
    config spellings to option names (e.g. ``dataset`` -> ``data``)."""
    names = {o.name for o in options} | set(extra)
    opts: dict[str, Any] = {o.name: o.default for o in options}
    config = getattr(args, "config", None) if args is not None else None
    if config:
        cfg = load_config(config)
        for old, new in (aliases or {}).items():
            if old in cfg and new not in cfg:
                cfg[new] = cfg.pop(old)
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise UsageError(f"unknown option(s) in --config {config}: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(names))})")
        opts.update(cfg)
    if args is not None:
        typed = getattr(args, "_given", None)
        declared = {o.name for o in options}
        for k in names:
            v = getattr(args, k, None)
            if k in declared and typed is not None:
                if k in typed:
                    opts[k] = v
            elif v is not None:  # positional arguments (None unless given), hand-built namespaces
                opts[k] = v
    if given:
        unknown = sorted(set(given) - names)
        if unknown:
            raise TypeError(f"unknown training option(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        opts.update(given)
    return opts


def resolve_cli_options(options: Sequence[Option], args) -> dict[str, Any]:
    """Options of a ``train FAMILY`` command line (:func:`resolve_options`, with the data file
    as the first argument or ``data`` in --config), refusing a missing data or output file."""
    opts = resolve_options([o for o in options if o.cli], args, extra=("data",), aliases={"dataset": "data"})
    if not opts.get("data"):
        raise UsageError("no data given (the first argument, or \"data\" in --config)")
    if not opts.get("output"):
        raise UsageError("no output model file given (-o/--output, or \"output\" in --config)")
    return opts


def check_new_output(output, overwrite: bool, resume: bool, checkpoint: str) -> None:
    """Refuse (UsageError) to replace a model file or a checkpoint that was not asked for."""
    from .checkpoint import check_output

    try:
        check_output(output, overwrite, resume)
    except FileExistsError as exc:
        raise UsageError(str(exc)) from None
    if not resume and os.path.exists(checkpoint):
        raise UsageError(f"checkpoint {checkpoint} exists from an interrupted run; add --resume to continue it, "
                         "or delete it to start over")
    if resume and not os.path.exists(checkpoint):
        raise UsageError(f"--resume: there is no checkpoint {checkpoint} (give it with --checkpoint, "
                         "or start without --resume)")
