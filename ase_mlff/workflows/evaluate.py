"""Test a model on a labelled dataset: energy, force and stress errors and a parity plot.

Errors are prediction minus reference. Units in the report: energy meV (total) and meV/atom,
forces meV/Å (over Cartesian components, overall and per element), stress meV/Å³ (over the
six Voigt components; GPa alongside). Frames are evaluated in batches
(:meth:`MLFFCalculator.evaluate_batch`) for local models and one by one for global ones.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
from ase import units
from ase.data import chemical_symbols

from ..errors import InputError
from ._common import ProgressBar, refuse_existing


def _mae_rmse(err) -> tuple[float, float]:
    err = np.asarray(err, dtype=float).ravel()
    if err.size == 0:
        return float("nan"), float("nan")
    return float(np.abs(err).mean()), float(np.sqrt((err ** 2).mean()))


@dataclass
class EvalResult:
    n_frames: int
    n_atoms: int
    energy_ref: np.ndarray
    energy_pred: np.ndarray
    natoms: np.ndarray
    forces_ref: np.ndarray
    forces_pred: np.ndarray
    force_numbers: np.ndarray
    stress_ref: np.ndarray
    stress_pred: np.ndarray
    wall_time: float
    files: list = field(default_factory=list)

    def metrics(self) -> dict:
        """MAE and RMSE: energy meV and meV/atom, forces meV/Å (and per element), stress meV/Å³."""
        m: dict = {"n_frames": self.n_frames, "n_atoms": self.n_atoms}
        if len(self.energy_ref):
            de = self.energy_pred - self.energy_ref
            m["energy_mae_meV"], m["energy_rmse_meV"] = (1e3 * x for x in _mae_rmse(de))
            m["energy_per_atom_mae_meV"], m["energy_per_atom_rmse_meV"] = (
                1e3 * x for x in _mae_rmse(de / self.natoms))
            m["n_energy"] = int(len(de))
        if len(self.forces_ref):
            df = self.forces_pred - self.forces_ref
            m["forces_mae_meV_per_A"], m["forces_rmse_meV_per_A"] = (1e3 * x for x in _mae_rmse(df))
            m["n_forces"] = int(len(df))
            per = {}
            for z in np.unique(self.force_numbers):
                mae, rmse = _mae_rmse(df[self.force_numbers == z])
                per[chemical_symbols[int(z)]] = {"mae_meV_per_A": 1e3 * mae, "rmse_meV_per_A": 1e3 * rmse,
                                                 "n_atoms": int((self.force_numbers[:, 0] == z).sum())}
            m["forces_per_element"] = per
        if len(self.stress_ref):
            ds = self.stress_pred - self.stress_ref
            m["stress_mae_meV_per_A3"], m["stress_rmse_meV_per_A3"] = (1e3 * x for x in _mae_rmse(ds))
            m["stress_mae_GPa"], m["stress_rmse_GPa"] = (x / units.GPa for x in _mae_rmse(ds))
            m["n_stress"] = int(len(ds))
        return m

    def summary(self) -> str:
        m = self.metrics()
        rate = self.n_frames / self.wall_time if self.wall_time > 0 else float("nan")
        lines = [f"eval    {self.n_frames} frames, {self.n_atoms} atoms ({self.wall_time:.1f} s, {rate:.1f} frames/s)",
                 f"{'':22s} {'MAE':>10} {'RMSE':>10}"]
        if "energy_mae_meV" in m:
            lines.append(f"{'energy [meV/atom]':22s} {m['energy_per_atom_mae_meV']:10.3f} {m['energy_per_atom_rmse_meV']:10.3f}")
            lines.append(f"{'energy [meV]':22s} {m['energy_mae_meV']:10.3f} {m['energy_rmse_meV']:10.3f}")
        if "forces_mae_meV_per_A" in m:
            lines.append(f"{'forces [meV/Å]':22s} {m['forces_mae_meV_per_A']:10.3f} {m['forces_rmse_meV_per_A']:10.3f}")
            for el, v in m["forces_per_element"].items():
                lines.append(f"{'  ' + el + ' (' + str(v['n_atoms']) + ' atoms)':22s} "
                             f"{v['mae_meV_per_A']:10.3f} {v['rmse_meV_per_A']:10.3f}")
        if "stress_mae_meV_per_A3" in m:
            lines.append(f"{'stress [meV/Å^3]':22s} {m['stress_mae_meV_per_A3']:10.4f} {m['stress_rmse_meV_per_A3']:10.4f}")
            lines.append(f"{'stress [GPa]':22s} {m['stress_mae_GPa']:10.4f} {m['stress_rmse_GPa']:10.4f}")
        for name in self.files:
            lines.append(f"written {name}")
        return "\n".join(lines)


def evaluate(calc, dataset, *, batch_size: int = 16, stress: bool | None = None, progress: bool = False,
             outdir=None, plot: bool = True, overwrite: bool = False, summary_stream=None) -> EvalResult:
    """Evaluate ``calc`` on ``dataset`` (a :class:`~ase_mlff.data.Dataset`, a list of Frames or
    of ase Atoms with reference results). ``stress``: compare stresses (default: where the
    model gives them and the frame has a stress label and a periodic cell). ``outdir``:
    ``eval_metrics.json`` and ``parity.png``; existing ones only replaced with ``overwrite=True``."""
    frames = list(dataset)
    if not frames:
        raise InputError("the dataset is empty")
    if outdir is not None and not overwrite:
        refuse_existing([os.path.join(os.fspath(outdir), n) for n in ("eval_metrics.json", "parity.png" if plot else "")
                         if n], "pass overwrite=True (ase-mlff eval: --overwrite) to replace them")
    from ..data import Frame

    if not isinstance(frames[0], Frame):
        from ..data import Dataset

        frames = list(Dataset.from_atoms(frames))
    model_stress = "stress" in calc.implemented_properties
    if stress and not model_stress:
        raise InputError(f"{calc.model.family} models do not give stress")
    use_stress = model_stress if stress is None else bool(stress)
    elements = set(np.unique(np.concatenate([f.numbers for f in frames])).tolist())
    calc.model.check_numbers(np.array(sorted(elements)))

    e_ref, e_pred, nat, f_ref, f_pred, f_num, s_ref, s_pred = [], [], [], [], [], [], [], []
    bar = ProgressBar(len(frames), label="eval", unit="frames", enabled=progress)
    t0 = time.perf_counter()
    bs = max(1, int(batch_size))
    for start in range(0, len(frames), bs):
        chunk = frames[start:start + bs]
        images = [f.to_atoms() for f in chunk]
        for a in images:
            a.calc = None
        want = [use_stress and f.stress is not None and all(f.pbc) and f.volume > 1e-10 for f in chunk]
        results = calc.evaluate_batch(images, stress=any(want) or None)
        for f, r, w in zip(chunk, results, want):
            if f.energy is not None:
                e_ref.append(f.energy)
                e_pred.append(r["energy"])
                nat.append(len(f))
            if f.forces is not None:
                f_ref.append(f.forces)
                f_pred.append(r["forces"])
                f_num.append(f.numbers)
            if w and "stress" in r:
                s_ref.append(f.stress)
                s_pred.append(r["stress"])
        bar.update(min(start + bs, len(frames)))
    bar.close()
    wall = time.perf_counter() - t0
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)  # noqa: E731
    res = EvalResult(
        n_frames=len(frames), n_atoms=int(sum(len(f) for f in frames)),
        energy_ref=np.array(e_ref), energy_pred=np.array(e_pred), natoms=np.array(nat, dtype=float),
        forces_ref=cat(f_ref, (0, 3)), forces_pred=cat(f_pred, (0, 3)),
        force_numbers=np.concatenate([np.repeat(n[:, None], 3, axis=1) for n in f_num]) if f_num
        else np.zeros((0, 3), dtype=int),
        stress_ref=np.array(s_ref).reshape(-1, 6), stress_pred=np.array(s_pred).reshape(-1, 6),
        wall_time=wall,
    )
    if outdir is not None:
        outdir = os.fspath(outdir)
        os.makedirs(outdir, exist_ok=True)
        name = os.path.join(outdir, "eval_metrics.json")
        with open(name, "w") as fh:
            json.dump(res.metrics(), fh, indent=1)
        res.files.append(name)
        if plot:
            from .plotting import plot_parity

            name = os.path.join(outdir, "parity.png")
            plot_parity(res, name)
            res.files.append(name)
    if summary_stream is not None:
        print(res.summary(), file=summary_stream)
    return res
