"""Error metrics: one computation and one naming for every place that reports errors (the
training recipes, ``ase-mlff eval``, ``fit-head`` and the benchmarks).

Errors are prediction minus reference, in eV-based units; MAE and RMSE of

=====================================  ===================================================
``energy_{mae,rmse}_meV``              total energy, meV
``energy_per_atom_{mae,rmse}_meV``     energy per atom, meV/atom
``forces_{mae,rmse}_meV_per_A``        force components, meV/Å (``forces_per_element``: the
                                       same per element, ``mae_meV_per_A``,
                                       ``rmse_meV_per_A``, ``n_atoms``)
``stress_{mae,rmse}_meV_per_A3``       the six Voigt components, meV/Å³ (and ``..._GPa``)
``n_energy``, ``n_forces``, ``n_stress``  how many labels entered each
``n_frames``, ``n_atoms``, ``per_config_type``  added by :func:`frame_metrics`
=====================================  ===================================================

A quantity without labels is left out of the table (never reported as zero).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from ase import units
from ase.data import chemical_symbols

__all__ = ["mae_rmse", "error_metrics", "metrics_of_errors", "frame_metrics", "format_metrics"]


def mae_rmse(err) -> tuple[float, float]:
    """Mean absolute and root-mean-square value of ``err`` (any shape); NaN for no values."""
    err = np.asarray(err, dtype=float).ravel()
    if err.size == 0:
        return float("nan"), float("nan")
    return float(np.abs(err).mean()), float(np.sqrt((err ** 2).mean()))


def _rows(arrays) -> np.ndarray:
    """(K, 3) rows from an (K, 3) array or a list of (N, 3) arrays (one per frame)."""
    if isinstance(arrays, np.ndarray) and arrays.ndim == 2:
        return np.asarray(arrays, dtype=float)
    return np.concatenate([np.reshape(np.asarray(a, dtype=float), (-1, 3)) for a in arrays])


def _atom_numbers(numbers) -> np.ndarray:
    """(K,) atomic numbers from an array or a list of per-frame arrays."""
    if isinstance(numbers, np.ndarray):
        return numbers.ravel()
    return np.concatenate([np.ravel(n) for n in numbers]) if not np.isscalar(numbers[0]) else np.asarray(numbers)


def metrics_of_errors(energy_errors=(), n_atoms=(), force_errors=None, force_numbers=None,
                      stress_errors=()) -> dict[str, Any]:
    """The metrics table of errors already taken (prediction minus reference, eV and Å).

    ``energy_errors``/``n_atoms`` (M,) per frame with an energy; ``force_errors`` (K, 3) with
    ``force_numbers`` (K,), the atomic number of each row (None: no per-element breakdown);
    ``stress_errors`` (S, 6) Voigt, eV/Å³."""
    m: dict[str, Any] = {}
    de = np.asarray(energy_errors, dtype=float).ravel()
    if len(de):
        m["energy_mae_meV"], m["energy_rmse_meV"] = (1e3 * x for x in mae_rmse(de))
        m["energy_per_atom_mae_meV"], m["energy_per_atom_rmse_meV"] = (
            1e3 * x for x in mae_rmse(de / np.asarray(n_atoms, dtype=float).ravel()))
        m["n_energy"] = int(len(de))
    if force_errors is not None and len(force_errors):
        df = np.asarray(force_errors, dtype=float).reshape(-1, 3)
        m["forces_mae_meV_per_A"], m["forces_rmse_meV_per_A"] = (1e3 * x for x in mae_rmse(df))
        m["n_forces"] = int(len(df))
        if force_numbers is not None:
            z = np.asarray(force_numbers).ravel()
            per = {}
            for el in np.unique(z):
                mae, rmse = mae_rmse(df[z == el])
                per[chemical_symbols[int(el)]] = {"mae_meV_per_A": 1e3 * mae, "rmse_meV_per_A": 1e3 * rmse,
                                                  "n_atoms": int((z == el).sum())}
            m["forces_per_element"] = per
    ds = np.asarray(stress_errors, dtype=float).reshape(-1, 6)
    if len(ds):
        m["stress_mae_meV_per_A3"], m["stress_rmse_meV_per_A3"] = (1e3 * x for x in mae_rmse(ds))
        m["stress_mae_GPa"], m["stress_rmse_GPa"] = (x / units.GPa for x in mae_rmse(ds))
        m["n_stress"] = int(len(ds))
    return m


def error_metrics(energy_ref=(), energy_pred=(), n_atoms=(), forces_ref=(), forces_pred=(), numbers=(),
                  stress_ref=(), stress_pred=()) -> dict[str, Any]:
    """The metrics table of labelled predictions, eV and Å in.

    ``energy_ref``/``energy_pred``/``n_atoms`` (M,) per frame with an energy; ``forces_ref``/
    ``forces_pred`` lists of (N, 3) arrays (or stacked (K, 3)) with the atomic ``numbers`` of
    their atoms (None: no per-element breakdown); ``stress_ref``/``stress_pred`` (S, 6) Voigt,
    eV/Å³."""
    de = np.asarray(energy_pred, dtype=float).ravel() - np.asarray(energy_ref, dtype=float).ravel()
    df = z = None
    if len(forces_ref):
        df = _rows(forces_pred) - _rows(forces_ref)
        z = None if numbers is None else _atom_numbers(numbers)
    s_ref = np.asarray(stress_ref, dtype=float).reshape(-1, 6)
    ds = np.asarray(stress_pred, dtype=float).reshape(-1, 6) - s_ref if len(s_ref) else s_ref
    return metrics_of_errors(de, n_atoms, df, z, ds)


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
