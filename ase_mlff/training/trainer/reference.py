"""Reference energies and target scale of a network, fitted before training (not on resume).

``e0[Z]`` (eV) are fitted by least squares, ``min Σ_b (E_b − Σ_i e0[Z_i])²`` over the training
frames with an energy (or given, e.g. isolated-atom energies: then the network learns
``E − Σ e0``), and handed to ``model.set_reference_energies(e0, energy_scale)`` with an energy
scale ``s`` (eV): the RMS force component of the training set (× 1 Å), or the standard
deviation of the residual energy per atom when there are no forces. The family adds ``e0`` in
float64 and multiplies its network output by ``s``, so the network learns O(1) numbers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from ase.data import chemical_symbols

from ..common import parse_reference_energies, reference_energies_record
from .options import TrainingRecord


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


def fit_reference(model, frames, opts, say) -> dict[str, Any] | None:
    """Fit (or take from ``opts.reference_energies``) the reference energies and the energy
    scale of ``model`` from the training ``frames``, set them on the model and return them as
    the checkpoint's ``reference`` entry; None when the family has none or they are off."""
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
    apply_reference(model, ref)
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


def apply_reference(model, ref) -> None:
    if ref is not None:
        model.set_reference_energies(np.asarray(ref["e0"], dtype=np.float64), ref["scale"])
