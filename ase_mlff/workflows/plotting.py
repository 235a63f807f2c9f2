"""PNG plots of the workflow results (matplotlib, Agg canvas; pyplot's global state untouched)."""

from __future__ import annotations

import numpy as np

from ..figures import figure, save


def plot_phonons(res, path, title: str = "") -> str:
    """Band structure (left) and total DOS (right) of a :class:`PhononResult`."""
    have_bands, have_dos = bool(res.frequencies), res.dos is not None
    fig = figure(7.0 if have_dos and have_bands else 5.0, 4.0)
    if have_bands and have_dos:
        gs = fig.add_gridspec(1, 2, width_ratios=[3, 1])
        ax, axd = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    elif have_bands:
        ax, axd = fig.add_subplot(), None
    else:
        ax, axd = None, fig.add_subplot()
    if ax is not None:
        ticks, ticklabels = [res.distances[0][0]], [res.labels[0]]
        k = 1
        for i, (d, f) in enumerate(zip(res.distances, res.frequencies)):
            ax.plot(d, f, color="C0", lw=1.2)
            ticks.append(d[-1])
            if res.connections[i] or i == len(res.distances) - 1:
                ticklabels.append(res.labels[k])
                k += 1
            else:
                ticklabels.append(f"{res.labels[k]}|{res.labels[k + 1]}")
                k += 2
        for t in ticks:
            ax.axvline(t, color="0.7", lw=0.6)
        ax.axhline(0, color="0.4", lw=0.6, ls=":")
        ax.set_xticks(ticks, ticklabels)
        ax.set_xlim(ticks[0], ticks[-1])
        ax.set_ylabel("frequency (THz)")
        ax.set_title(f"{title} phonons ({'analytic Hessian' if res.method == 'hessian' else 'finite displacements'})"
                     if title else "phonons")
    if axd is not None:
        axd.plot(res.dos, res.dos_frequencies, color="C1", lw=1.2)
        axd.fill_betweenx(res.dos_frequencies, 0, res.dos, color="C1", alpha=0.3)
        axd.set_xlabel("DOS (states/THz)")
        axd.set_xlim(left=0)
        if ax is not None:
            axd.set_ylim(ax.get_ylim())
            axd.tick_params(labelleft=False)
        else:
            axd.set_ylabel("frequency (THz)")
    return save(fig, path)


def plot_eos(res, path, title: str = "") -> str:
    """Energy per atom against volume per atom, with the fit and its parameters."""
    fig = figure(5.0, 3.8)
    ax = fig.add_subplot()
    n = res.natoms
    v = np.linspace(res.volumes.min(), res.volumes.max(), 200)
    fit = res.eos.func(v, *res.eos.eos_parameters)
    ax.plot(res.volumes / n, res.energies / n, "o", color="C0", label="model")
    ax.plot(v / n, fit / n, "-", color="C1", label=f"{res.form} fit")
    ax.axvline(res.v0 / n, color="0.6", lw=0.6, ls=":")
    ax.set_xlabel("volume (Å³/atom)")
    ax.set_ylabel("energy (eV/atom)")
    ax.set_title(f"{title + ': ' if title else ''}V0 = {res.v0 / n:.3f} Å³/atom, B = {res.bulk_modulus:.1f} GPa",
                 fontsize=10)
    ax.legend(frameon=False)
    return save(fig, path)


def plot_parity(res, path, max_points: int = 20000) -> str:
    """Predicted against reference: energy per atom, force components and stress."""
    # (axis label, reference, prediction, factor to the MAE unit, MAE unit)
    panels = []
    if len(res.energy_ref):
        panels.append(("energy (eV/atom)", res.energy_ref / res.natoms, res.energy_pred / res.natoms,
                       1e3, "meV/atom"))
    if len(res.forces_ref):
        panels.append(("force component (eV/Å)", res.forces_ref.ravel(), res.forces_pred.ravel(), 1e3, "meV/Å"))
    if len(res.stress_ref):
        from ase import units

        panels.append(("stress component (GPa)", res.stress_ref.ravel() / units.GPa,
                       res.stress_pred.ravel() / units.GPa, 1.0, "GPa"))
    fig = figure(3.3 * max(len(panels), 1), 3.4)
    rng = np.random.default_rng(0)
    for k, (name, ref, pred, factor, unit) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        if len(ref) > max_points:
            sel = rng.choice(len(ref), max_points, replace=False)
            ref, pred = ref[sel], pred[sel]
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8)
        ax.plot(ref, pred, ".", ms=2, alpha=0.5, color=f"C{k}")
        mae = np.abs(pred - ref).mean()
        ax.set_title(f"MAE {mae * factor:.3g} {unit}", fontsize=9)
        ax.set_xlabel(f"reference {name}", fontsize=9)
        ax.set_ylabel(f"model {name}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
    return save(fig, path)


def plot_md(result, path, title: str = "") -> str:
    """Energies and temperature against time (:class:`MDResult`); for NPT also the volume
    and the pressure.

    The top panel is the quantity the integrator conserves: Etot for NVE, the MTK H for NPT
    (Etot is not conserved there, so its drift would say nothing about the integration);
    Etot for NVT, marked as not conserved.
    """
    npt = result.ensemble == "npt" and result.volume is not None
    fig = figure(6.0, 8.4 if npt else 5.4)
    axes = fig.subplots(5 if npt else 3, 1, sharex=True)
    ax0, ax1, ax2 = axes[:3]
    t = result.time_ps
    n = result.natoms
    if npt and result.conserved is not None:
        ax0.plot(t, 1e3 * (result.conserved - result.conserved[0]), lw=1.0, color="C3")
        ax0.set_ylabel("H - H(0)\n(meV)")
        if len(t) >= 3:
            ax0.set_title(f"{title + ': ' if title else ''}MTK conserved quantity H: drift "
                          f"{1e3 * result.conserved_drift:+.3g} meV/atom/ps", fontsize=9)
    else:
        ax0.plot(t, 1e3 * (result.etot - result.etot[0]), lw=1.0, color="C3")
        what = "conserved" if result.ensemble == "nve" else "not conserved: thermostat"
        ax0.set_ylabel("Etot - Etot(0)\n(meV)")
        if len(result.etot) >= 3:
            ax0.set_title(f"{title + ': ' if title else ''}Etot drift {1e3 * result.drift:+.3g} meV/atom/ps ({what})",
                          fontsize=9)
    ax1.plot(t, (result.epot - result.epot[0]) / n, lw=0.8, color="C0", label="Epot - Epot(0)")
    ax1.plot(t, result.ekin / n, lw=0.8, color="C1", label="Ekin")
    ax1.set_ylabel("eV/atom")
    ax1.legend(frameon=False, fontsize=8, loc="upper right", ncol=2)
    ax2.plot(t, result.temperature, lw=0.8, color="C2")
    ax2.set_ylabel("T (K)")
    if npt:
        ax3, ax4 = axes[3:]
        ax3.plot(t, result.volume / n, lw=0.8, color="C4")
        ax3.set_ylabel("V (Å³/atom)")
        if result.pressure_gpa is not None:
            ok = np.isfinite(result.pressure_gpa)  # the pressure is only evaluated on log steps
            ax4.plot(t[ok], result.pressure_gpa[ok], ".-", lw=0.8, ms=3, color="C5")
        ax4.set_ylabel("P (GPa)")
    axes[-1].set_xlabel("time (ps)")
    return save(fig, path)
