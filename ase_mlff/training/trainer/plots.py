"""What a run shows: a progress bar over the epochs, and the plots written after training.

The plots, a learning curve and a parity plot (PNG), go beside the model file by default,
``<stem>.learning_curve.png`` and ``<stem>.parity.png`` (:func:`default_plots`);
:func:`write_plots` draws them.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from .options import TrainingRecord


# =============================================================================== progress
class EpochBar:
    """Progress bar over epochs with the latest metrics (stderr; see
    :class:`~ase_mlff.console.ProgressBar`); the ETA counts this session's epochs."""

    def __init__(self, total, start, enabled):
        from ...console import ProgressBar

        bar = self

        class Bar(ProgressBar):
            def rate(self):
                dt = time.perf_counter() - self.t0
                return (self.done - start) / dt if dt > 0 and self.done > start else float("nan")

            def _line(self):
                return super()._line() + (f" | {bar.text}" if bar.text else "")

        self.text = ""
        self.enabled = enabled
        self.bar = Bar(total, label="epoch", unit="epochs", enabled=enabled)
        self.bar.done = start

    def update(self, done, text):
        self.text = text
        self.bar.update(done)

    def close(self):
        self.bar.close()


# =============================================================================== plots
def default_plots(output, plot_dir) -> list[str]:
    """The two plot paths of a model file ``output`` (in ``plot_dir`` when given; named
    ``training.*`` without an output); none when neither is given."""
    if output is None and plot_dir is None:
        return []
    base = os.path.basename(os.fspath(output)) if output is not None else "training"
    stem = base[:-5] if base.endswith(".mlff") else base
    where = os.fspath(plot_dir) if plot_dir is not None else os.path.dirname(os.fspath(output))
    return [os.path.join(where, f"{stem}.learning_curve.png"), os.path.join(where, f"{stem}.parity.png")]


def write_plots(record: TrainingRecord, model, frames, paths: Sequence[str]) -> list[str]:
    """Learning curve (losses and validation MAEs per epoch) and a parity plot of ``model`` on
    ``frames`` (energy per atom and force components), PNG, to ``paths[0]`` and ``paths[1]``."""
    from ...graph import FrameGraphs
    from ...figures import figure, save

    written = []
    hist = record.history
    if hist:
        ep = [h["epoch"] for h in hist]
        fig = figure(7.0, 3.2)
        ax = fig.add_subplot(1, 2, 1)
        ax.semilogy(ep, [h["train_loss"] for h in hist], label="train")
        if hist[0].get("valid_loss") is not None:
            ax.semilogy(ep, [h["valid_loss"] for h in hist], label="validation")
        if record.best_epoch:
            ax.axvline(record.best_epoch, color="0.6", lw=0.8, ls="--", label="best")
        ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        for key, name, factor in (("valid_energy_mae", "E MAE (meV/atom)", 1e3), ("valid_forces_mae", "F MAE (meV/Å)", 1e3)):
            vals = [h.get(key) for h in hist]
            if any(v is not None for v in vals):
                ax.semilogy(ep, [np.nan if v is None else factor * v for v in vals], label=name)
        ax.set_xlabel("epoch"), ax.set_ylabel("validation error"), ax.legend(fontsize=8)
        written.append(save(fig, paths[0], dpi=110))
    fg = FrameGraphs(frames, model.cutoff, dtype=model.dtype, device=next(model.parameters()).device)
    e_ref, e_pred, f_ref, f_pred = [], [], [], []
    for k, fr in enumerate(frames):
        out = model.compute(fg[k], forces=fr.forces is not None)
        if fr.energy is not None:
            e_ref.append(fr.energy / len(fr)), e_pred.append(float(out.energy[0]) / len(fr))
        if fr.forces is not None:
            f_ref.append(fr.forces.ravel()), f_pred.append(out.forces.detach().cpu().numpy().ravel())
    panels = []
    if e_ref:
        shift = float(np.mean(e_ref))
        panels.append(("energy per atom − mean (meV/atom)", 1e3 * (np.array(e_ref) - shift),
                       1e3 * (np.array(e_pred) - shift), 1.0, "meV/atom"))
    if f_ref:
        panels.append(("force component (eV/Å)", np.concatenate(f_ref), np.concatenate(f_pred), 1e3, "meV/Å"))
    if panels:
        fig = figure(3.4 * len(panels), 3.4)
        for k, (name, ref, pred, factor, unit) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), k + 1)
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8)
            ax.plot(ref, pred, ".", ms=2, alpha=0.5, color=f"C{k}")
            ax.set_title(f"MAE {np.abs(pred - ref).mean() * factor:.3g} {unit}", fontsize=9)
            ax.set_xlabel(f"reference {name}", fontsize=8), ax.set_ylabel(f"model {name}", fontsize=8)
        written.append(save(fig, paths[1], dpi=110))
    return written
