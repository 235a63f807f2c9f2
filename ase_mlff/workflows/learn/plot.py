"""The learning-curve plot of ``ase-mlff learn`` (through :mod:`ase_mlff.figures`)."""

from __future__ import annotations

import numpy as np

from ...figures import figure, save


def plot_learning_curve(history, path) -> str | None:
    """The model's errors on each selected frame before it was added, beside the uncertainty
    that selected it and the threshold, against the number of reference calls."""
    sel = [h for h in history if h.get("status") == "labelled" and "error_forces_mae" in h]
    if not sel:
        return None
    calls = np.array([h["call"] for h in sel])
    fig = figure(6.0, 6.0)
    ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    ax1.semilogy(calls, [h["error_forces_max"] * 1000 for h in sel], "o-", color="C3", ms=3,
                 label="largest per-atom force error")
    ax1.semilogy(calls, [h["uncertainty"] * 1000 for h in sel], "s--", color="C0", ms=3,
                 label="largest per-atom uncertainty (selection)")
    ax1.semilogy(calls, [h["error_forces_mae"] * 1000 for h in sel], "^-", color="C2", ms=3, label="force MAE")
    thr = np.array([h["threshold"] if h.get("threshold") is not None else np.nan for h in sel], dtype=float)
    thr[~np.isfinite(thr)] = np.nan  # no threshold yet (the first fits)
    if np.isfinite(thr).any():
        ax1.semilogy(calls, thr * 1000, ":", color="0.4", label="threshold")
    ax1.set_ylabel("meV/Å")
    ax1.set_title("model on each selected frame, before it was added")
    ax1.legend(fontsize=7)
    ax2.semilogy(calls, [max(h["error_energy_per_atom"] * 1000, 1e-4) for h in sel], "o-", color="C1", ms=3)
    ax2.set_ylabel("|energy error| (meV/atom)")
    ax2.set_xlabel("reference calls")
    return save(fig, path)
