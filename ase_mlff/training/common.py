"""What every training recipe shares: reference energies, error metrics, options and configs,
progress lines and the training record written into model files.

Metrics: :mod:`ase_mlff.metrics` computes and names every error table (the same as
``ase-mlff eval``); :func:`model_metrics` is that table for a model on labelled frames.

Per-element reference energies: ``e0 = argmin sum_f (E_f - sum_i e0[s_i])^2`` (least squares
over the frames' element counts), the constant part every local model subtracts first, unless
the user gives them (``--reference-energies FILE|El=E,...``, every train command; typically
isolated-atom energies): :func:`parse_reference_energies` reads them (eV, or the command's
``--energy-unit``), :meth:`GivenReferenceEnergies.for_species` checks that every training
element has one, and :func:`reference_energies_record` is what the model file records
(``training["reference_energies"]``: the values, ``source`` "given" or "fitted", and how).
With the frames of one molecule the least-squares values are one solution among many (only
their composition-weighted sum is fixed), so per-atom energies mean nothing; isolated-atom
energies make ``E - sum e0`` the atomisation energy.

What a model was trained on: ``training["trained_on"]`` lists the observables whose labels
entered the fit (``"energy"``, ``"forces"``, ``"stress"``; :func:`observables`).
:func:`trained_on` reads it back, and for files written before it was recorded infers it from
the recorded fit (label counts of the kernel families, loss weights of the networks) or says
that it is unknown (None); ``md``, ``relax --cell`` and ``info`` warn about a model that never
saw a stress label (:func:`untrained_stress_warning`).

Training-set errors: a recipe without test frames reports ``metrics["train"]``, the errors on
the frames the model was fitted to, printed with :data:`TRAINING_SET_CAVEAT` (they say nothing
about how the model does on new structures).

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
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from ..errors import DatasetError
from ..metrics import format_metrics, frame_metrics

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


def model_metrics(model, frames: Sequence) -> dict[str, Any]:
    """:func:`frame_metrics` of ``model`` (evaluation mode) on ``frames``, predicted through
    the calculator: the training-set, test or pool errors every recipe reports."""
    from ..calculator import MLFFCalculator

    model.eval()
    return frame_metrics(frames, predict_frames(MLFFCalculator(model), frames))


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


# ------------------------------------------------------------------------------ given reference energies
class ReferenceEnergiesError(UsageError, DatasetError):
    """``--reference-energies`` cannot be used: an unreadable file, a value that is not a finite
    number, an unknown element, or a training element without a value. A usage error on the
    command line (exit status 2: the fix is the flag's value), a
    :class:`~ase_mlff.errors.DatasetError` in Python."""


#: the ``--help`` text of ``--reference-energies``; ``{unit}`` says in which unit the numbers are read
REFERENCE_ENERGIES_HELP = (
    "per-element reference energies e0 to use instead of fitting them, typically isolated-atom energies of the "
    "same DFT setup: a FILE (JSON {{\"H\": -13.6, ...}} or lines 'El E') or 'El=E,El=E'; {unit}; every element of "
    "the training frames needs one (others are ignored); recorded in the model file (default: least squares on "
    "the training energies)")
#: the unit phrase of :data:`REFERENCE_ENERGIES_HELP` for a command with ``--energy-unit``
IN_ENERGY_UNIT = "numbers in --energy-unit when it is given, else in eV"

#: |E - sum e0| per atom above which given reference energies look wrong (eV/atom): cohesive and
#: atomisation energies stay below ~10 eV/atom, so more means another unit or another DFT setup
SUSPICIOUS_RESIDUAL_EV = 20.0


@dataclass(frozen=True)
class GivenReferenceEnergies:
    """Reference energies given by the user (:func:`parse_reference_energies`): ``energies``
    atomic number -> eV, ``given_as`` where they came from (``file PATH`` or the text given),
    ``unit`` the unit the numbers were written in."""

    energies: Mapping[int, float]
    given_as: str
    unit: str = "eV"

    def for_species(self, species: Iterable[int], where: str = "training frames") -> np.ndarray:
        """e0 (eV, float64) in the order of ``species``; :class:`ReferenceEnergiesError` naming
        every element of ``species`` that has no value."""
        species = [int(z) for z in species]
        missing = [chemical_symbols[z] for z in species if z not in self.energies]
        if missing:
            have = ", ".join(chemical_symbols[z] for z in sorted(self.energies)) or "none"
            raise ReferenceEnergiesError(
                f"--reference-energies ({self.given_as}) has no value for {', '.join(missing)}, which the {where} "
                f"hold (it gives {have}); add {'it' if len(missing) == 1 else 'them'}, or leave the flag out to fit "
                "every reference energy")
        return np.array([float(self.energies[z]) for z in species], dtype=np.float64)

    def provenance(self) -> dict[str, Any]:
        return {"given_as": self.given_as, "unit": self.unit}


def _reference_items_from_file(path: str) -> list[tuple[Any, Any, str]]:
    """``(symbol, value, where)`` of a JSON object or of ``El E`` lines (``#`` comments, blank
    lines, ``El=E`` and ``El: E`` accepted)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReferenceEnergiesError(f"--reference-energies: cannot read {path} ({exc})") from None
    if text.lstrip().startswith("{"):
        def pairs(items):
            seen = [k for k, _ in items]
            dup = sorted({k for k in seen if seen.count(k) > 1})
            if dup:
                raise ReferenceEnergiesError(f"--reference-energies {path}: {', '.join(dup)} given twice")
            return dict(items)

        try:
            obj = json.loads(text, object_pairs_hook=pairs)
        except ValueError as exc:
            if isinstance(exc, ReferenceEnergiesError):
                raise
            raise ReferenceEnergiesError(f"--reference-energies {path}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ReferenceEnergiesError(f"--reference-energies {path}: expected a JSON object of element: energy")
        return [(k, v, path) for k, v in obj.items()]
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace("=", " ").replace(":", " ").replace(",", " ").split()
        if not line:
            continue
        if len(line) != 2:
            raise ReferenceEnergiesError(f"--reference-energies {path}, line {n}: expected 'El E' (an element and "
                                         f"its energy), got {' '.join(line)!r}")
        items.append((line[0], line[1], f"{path}, line {n}"))
    return items


def parse_reference_energies(spec, energy_unit: str | None = None) -> GivenReferenceEnergies | None:
    """The reference energies of ``--reference-energies`` (None when not given).

    ``spec``: a file (JSON object ``{"H": -13.6, ...}`` or text lines ``El E``), the text
    ``El=E,El=E``, or a mapping ``{"H": -13.6}`` (Python, YAML config); an already parsed
    :class:`GivenReferenceEnergies` is returned as it is. The numbers are in ``energy_unit``
    (the command's ``--energy-unit``; eV when None) and converted to eV. Every symbol must be a
    chemical element, every value a finite number whose magnitude (in eV) a model file accepts;
    an element given twice is refused. Raises :class:`ReferenceEnergiesError`."""
    from ..units import canonical_energy_unit, energy_factor

    if spec is None or isinstance(spec, GivenReferenceEnergies):
        return spec
    if isinstance(spec, Mapping):
        items, given_as = [(k, v, "the mapping") for k, v in spec.items()], json.dumps(
            {str(k): v for k, v in spec.items()}, default=str)
    elif isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec).strip()
        if os.path.isfile(text):
            items, given_as = _reference_items_from_file(text), f"file {text}"
        elif "=" in text:
            items, given_as = [], text
            for part in text.split(","):
                if not part.strip():
                    continue
                if "=" not in part:
                    raise ReferenceEnergiesError(f"--reference-energies {text!r}: expected El=E,El=E (e.g. "
                                                 f"H=-13.6,O=-432.1), got {part.strip()!r}")
                k, v = part.split("=", 1)
                items.append((k.strip(), v.strip(), repr(text)))
        else:
            raise ReferenceEnergiesError(f"--reference-energies {text!r}: no such file, and not a list El=E,El=E "
                                         "(e.g. H=-13.6,O=-432.1)")
    else:
        raise ReferenceEnergiesError(f"reference energies must be a file, 'El=E,...' or a mapping of element to "
                                     f"energy, got {type(spec).__name__}")
    unit = canonical_energy_unit(energy_unit or "eV")
    factor = energy_factor(unit)
    from ..models.base import MAX_REFERENCE_ENERGY

    energies: dict[int, float] = {}
    for sym, value, where in items:
        z = atomic_numbers.get(str(sym).strip()) if isinstance(sym, str) else None
        if not z:  # None, or 0 for the dummy symbol X
            raise ReferenceEnergiesError(f"--reference-energies ({where}): {sym!r} is not a chemical element symbol "
                                         "(H, He, Li, ...; case matters)")
        if z in energies:
            raise ReferenceEnergiesError(f"--reference-energies ({where}): {sym} given twice")
        try:
            v = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v) or abs(v * factor) >= MAX_REFERENCE_ENERGY:
            raise ReferenceEnergiesError(f"--reference-energies ({where}): the energy of {sym} must be a finite "
                                         f"number of magnitude below {MAX_REFERENCE_ENERGY:g} eV per atom, got "
                                         f"{value!r}")
        energies[z] = v * factor
    if not energies:
        raise ReferenceEnergiesError(f"--reference-energies ({given_as}) gives no element")
    return GivenReferenceEnergies(energies, given_as, unit)


def reference_energies_record(species: Sequence[int], e0, source: str, how: str,
                              given: GivenReferenceEnergies | None = None, **extra) -> dict[str, Any]:
    """``training["reference_energies"]`` of a model file: ``eV`` (element -> e0 used),
    ``source`` ("given" by the user, "fitted" to the training data, "parent" of a fine-tuned
    model, or "none" for a family without per-element energies), ``how`` (a sentence) and,
    when given, ``given_as`` and ``unit``."""
    rec = {"eV": {chemical_symbols[int(z)]: float(v) for z, v in zip(species, e0)}, "source": source, "how": how}
    if given is not None:
        rec.update(given.provenance())
    rec.update(extra)
    return rec


def reference_residual(frames, species: Sequence[int], e0) -> float | None:
    """Mean of ``|E - sum_i e0[s_i]| / N`` (eV/atom) over the frames with an energy (None without)."""
    index = {int(z): k for k, z in enumerate(species)}
    e0 = np.asarray(e0, dtype=np.float64)
    res = [abs(f.energy - float(e0[[index[int(z)] for z in f.numbers]].sum())) / len(f)
           for f in frames if f.energy is not None and len(f)]
    return float(np.mean(res)) if res else None


def check_given_reference(frames, species: Sequence[int], given: GivenReferenceEnergies,
                          say: Callable[[str], None]) -> dict[str, Any]:
    """e0 of ``given`` for ``species`` (:meth:`~GivenReferenceEnergies.for_species`) and what the
    record keeps of the check: the mean residual energy per atom of the training ``frames``;
    above :data:`SUSPICIOUS_RESIDUAL_EV` ``say`` gets a warning (most likely numbers in another
    unit than the data, or isolated atoms of another DFT setup). Returns ``{"e0": array,
    "mean_residual_per_atom_eV": float | None}``."""
    e0 = given.for_species(species)
    res = reference_residual(frames, species, e0)
    if res is not None and res > SUSPICIOUS_RESIDUAL_EV:
        say(f"warning: with the given reference energies ({given.given_as}, read in {given.unit}) the training "
            f"energies are {res:.4g} eV/atom away from sum e0, where atomisation and cohesive energies stay below "
            "~10 eV/atom: check their unit (--energy-unit converts them too) and that they come from the same DFT "
            "setup as the data")
    else:
        say("reference energies given (" + given.given_as + "): " + ", ".join(
            f"{chemical_symbols[int(z)]} {v:.6f}" for z, v in zip(species, e0)) + " eV"
            + ("" if res is None else f"; training energies {res:.4g} eV/atom from sum e0"))
    return {"e0": e0, "mean_residual_per_atom_eV": res}


# ------------------------------------------------------------------------------ observables trained on
#: the observables a model can be trained on, in the order records list them
OBSERVABLES = ("energy", "forces", "stress")
#: label-count keys of the recipes' records -> observable (GAP and the sparse MFF count
#: ``energy``/``forces``/``virial`` rows, the full MFF GP ``energies``/``force_components``)
_COUNT_KEYS = {"energy": "energy", "energies": "energy", "forces": "forces", "force_components": "forces",
               "virial": "stress", "stress": "stress"}


def observables(counts: Mapping[str, Any]) -> list[str]:
    """The observables with labels in a fit, from its label counts (e.g. ``{"energy": 171,
    "forces": 31707, "virial": 1026}`` -> ``["energy", "forces", "stress"]``)."""
    seen = {_COUNT_KEYS[k] for k, v in counts.items()
            if k in _COUNT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}
    return [o for o in OBSERVABLES if o in seen]


def nn_observables(frames, energy_weight: float, force_weight: float, stress_weight: float) -> list[str]:
    """What the shared trainer fitted: an observable with a positive loss weight and a label in
    at least one training frame (stress: with a cell)."""
    seen = []
    if energy_weight > 0 and any(f.energy is not None for f in frames):
        seen.append("energy")
    if force_weight > 0 and any(f.forces is not None for f in frames):
        seen.append("forces")
    if stress_weight > 0 and any(f.stress is not None and f.volume > 1e-12 for f in frames):
        seen.append("stress")
    return seen


#: families that never fit a stress in this package (sGDML: one molecule, no cell; BPNN: its
#: training hook gives energies and forces only, so the trainer refuses a stress weight)
_NO_STRESS_FAMILIES = ("sgdml", "bpnn")


def trained_on(meta: Mapping[str, Any]) -> tuple[list[str] | None, str]:
    """``(observables, how)``: what the model of ``meta`` (a model file's ``meta.json``) was
    trained on, and how that is known: "recorded" (``training["trained_on"]``), "inferred ..."
    from the record of a file written before it was kept (label counts of GAP and MFF, loss
    weights of the shared trainer, families that cannot fit stress), or ``(None, "unknown ...")``.

    Stress metrics in the record are not used: they say a model was tested on stress, not that
    it was trained on it."""
    training = meta.get("training") if isinstance(meta, Mapping) else None
    training = training if isinstance(training, Mapping) else {}
    rec = training.get("trained_on")
    if isinstance(rec, list) and all(isinstance(x, str) and x in OBSERVABLES for x in rec):
        return [o for o in OBSERVABLES if o in rec], "recorded"
    family = meta.get("family") if isinstance(meta, Mapping) else None
    if family == "committee":
        hyper = meta.get("hyperparameters")
        family = hyper.get("member_family") if isinstance(hyper, Mapping) else None
    for key in ("labels", "training_labels"):  # GAP, MFF
        counts = training.get(key)
        if isinstance(counts, Mapping) and observables(counts):
            return observables(counts), f"inferred from the label counts of its training record ({key})"
    trainer = training.get("trainer")
    opts = trainer.get("options") if isinstance(trainer, Mapping) else None
    if isinstance(opts, Mapping) and all(isinstance(opts.get(w), (int, float)) for w in
                                         ("energy_weight", "force_weight", "stress_weight")):
        seen = [o for o, w in zip(OBSERVABLES, ("energy_weight", "force_weight", "stress_weight")) if opts[w] > 0]
        return seen, "inferred from the loss weights of its training record"
    if family in _NO_STRESS_FAMILIES:
        return ["energy", "forces"], f"inferred: the {family} recipe fits energies and forces, never a stress"
    return None, "unknown (not in this file's training record)"


def untrained_stress_warning(meta: Mapping[str, Any] | None, name: str, what: str) -> str | None:
    """A one-line warning (without prefix) when ``meta`` describes a local model that never saw
    a stress label, else None (a global model gives no stress; an unknown record gets no
    warning: it may well have been trained on stress). ``what``: the number at stake, e.g.
    "the pressures it prints"."""
    if not isinstance(meta, Mapping) or meta.get("global_model"):
        return None
    seen, how = trained_on(meta)
    if seen is None or "stress" in seen:
        return None
    labels = " and ".join(seen) if seen else "no labels"
    note = "" if how == "recorded" else ", inferred from its training record"
    family = meta.get("family")
    if family == "committee" and isinstance(meta.get("hyperparameters"), Mapping):
        family = meta["hyperparameters"].get("member_family")
    retrain = {"bpnn": " (the bpnn recipe fits no stress)",
               "schnet": " or retrain it on frames with stress labels (--stress-weight)"}.get(
        family, " or retrain it on frames with stress labels")
    return (f"{name} never saw a stress label (trained on {labels}{note}): {what} untested; compare its stress "
            f"with reference data (ase-mlff eval {name} DATA){retrain}")


# ------------------------------------------------------------------------------ training-set errors
#: printed beside the errors a recipe reports on its own training frames (no test frames given)
TRAINING_SET_CAVEAT = ("training-set errors: the frames the model was fitted to; they say nothing about how it "
                       "does on other structures")


def format_training_metrics(m: dict, hint: str = "") -> str:
    """The line of training-set errors (``metrics["train"]``), labelled as such; ``hint``: how
    to hold out test frames with the command's flags."""
    return (format_metrics("train", m) + f"  [{TRAINING_SET_CAVEAT}" + (f"; {hint}" if hint else "") + "]")


class _Given(argparse.Action):
    """Stores like ``store`` / ``store_true`` and records that the flag was given, so that a
    config file overrides defaults but never a flag the user typed."""

    def __init__(self, option_strings, dest, flag=False, value=True, **kwargs):
        if flag:
            kwargs.update(nargs=0)
        self.flag, self.value = flag, value
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.value if self.flag else values)
        given = set(getattr(namespace, "_given", ()))
        given.add(self.dest)
        setattr(namespace, "_given", given)


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> argparse.ArgumentParser:
    """Flags for the command-line ``options`` (defaults and units stated in the help) plus
    ``--config``. Parsed values carry the defaults; the flags actually typed are recorded in
    ``args._given`` for :func:`resolve_options`. A flag that is on by default also gets
    ``--no-NAME``, which switches it off."""
    for opt in options:
        if not opt.cli:
            continue
        flag = "--" + opt.name.replace("_", "-")
        shown = ("none" if opt.default is None else "on" if opt.default is True
                 else "off" if opt.default is False else opt.default)
        text = f"{opt.help} (default: {shown})"
        flags = (opt.short, flag) if opt.short else (flag,)
        if opt.kind == "flag":
            parser.add_argument(*flags, dest=opt.name, action=_Given, flag=True, default=opt.default, help=text)
            if opt.default is True:
                parser.add_argument("--no-" + opt.name.replace("_", "-"), dest=opt.name, action=_Given, flag=True,
                                    value=False, default=opt.default, help=f"switch {flag} off")
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


def load_parent(init, family: str) -> tuple[Any, dict]:
    """``(parent model, {"path", "sha256"})`` of ``--init``: a model file path or a loaded model
    (its ``source`` names the file); InputError when the file is missing or unreadable, or when
    the parent is not a ``family`` model (fine-tuning starts from a model of the same family)."""
    import torch

    from ..errors import InputError, MLFFError
    from ..io import file_sha256, load_model

    if isinstance(init, torch.nn.Module):
        src = getattr(init, "source", None) or {}
        parent, info = init, {"path": src.get("path"), "sha256": src.get("sha256")}
    else:
        if not os.path.exists(init):
            raise InputError(f"--init {init}: no such model file")
        try:
            parent = load_model(init)
        except MLFFError as exc:
            raise InputError(f"--init {init}: cannot be read as a model file ({exc})") from None
        info = {"path": os.path.abspath(init), "sha256": file_sha256(init)}
    if getattr(parent, "family", None) != family:
        raise InputError(f"--init: the parent is a {getattr(parent, 'family', type(parent).__name__)} model; only a "
                         f"{family} model can initialise a {family} model")
    return parent, info
