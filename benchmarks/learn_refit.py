"""Cost of one GAP refit of ``ase-mlff learn`` against the number of labelled frames.

    python benchmarks/learn_refit.py [--sizes 20 60 120 200] [--repeat 3]

BLAS and torch run on ``OMP_NUM_THREADS`` threads (1 unless set): on a 2-core machine shared
with other work, OpenBLAS's default of one thread per core made the QR and the calibration
pass 4-8 times slower and their times erratic.

The data: EMT copper frames from Langevin MD (300-1200 K), taken in turn from four cells of 31
to 108 atoms (fcc bulk of 32 and 108 atoms, each with and without a vacancy), labelled with
EMT's energy, forces and stress. The GAP: the settings of benchmarks/active_learning.py (SOAP
cutoff 5 Å, n_max 8, l_max 4, 600 sparse environments, 2-body term), so T = 616 parameters.

For each size N the learn fitter (:class:`ase_mlff.workflows.learn.fitting.GapFitter`) holds a
fit of the first N - 1 frames with a kept sparse set (chosen on the first sizes[0] - 1 frames,
then one frame added per refit, as in the loop), and frame N is added in three ways, each from
that same state:

* ``old``: the refit before the incremental update: ``fit_gap`` continued from the stored rows
  of the N - 1 frames (the model built again, the new frame's rows, the QR of all rows and the
  leave-one-frame-out calibration over all of them);
* ``new``: the incremental refit (the new frame's rows added to the QR factor, the kept model
  updated in place, the last calibration reused);
* ``calibrate``: the incremental refit with the leave-one-frame-out calibration due (what one
  refit in the schedule of ``recalibrate_growth`` costs).

Also printed: the memory the design rows of the N frames take (what the fitter keeps for the
next calibration), the time it took to compute them (what a resumed run spends on them again at
its first calibration), and the size of the QR factor (what the learn checkpoint keeps). Times
are wall clock, the best of ``--repeat`` calls from the same state. At the end: the relative difference of the incremental weights
from those of a QR from scratch of the same rows, beside that of two QRs from scratch of the
rows in different orders, the condition number of R, and the same differences in the fitted
labels (``Phi x``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import replace

# before numpy is imported: BLAS reads its thread count once (module docstring)
THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from active_learning import GAP_OPTIONS  # noqa: E402  (the GAP of the loop's own benchmark)

TEMPERATURES = (300.0, 600.0, 900.0, 1200.0)


def md_frames(n: int, seed: int = 0) -> list:
    """``n`` labelled frames, taken in turn from four EMT Langevin runs (20 steps of 2 fs apart,
    each cell's temperature rising through TEMPERATURES)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.units import fs

    from ase_mlff.data import Dataset
    from ase_mlff.workflows.learn.walkers import thermalise

    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cells = [cu.repeat(2), cu.repeat(3)]
    for c in list(cells):
        v = c.copy()
        del v[0]
        cells.append(v)  # 31 and 107 atoms
    runs = []
    for k, atoms in enumerate(cells):
        atoms.calc = EMT()
        rng = np.random.default_rng(seed + k)
        thermalise(atoms, TEMPERATURES[0], rng)
        runs.append((atoms, Langevin(atoms, 2 * fs, temperature_K=TEMPERATURES[0], friction=0.02 / fs, fixcm=False,
                                     rng=rng)))
    frames = []
    for i in range(n):
        atoms, dyn = runs[i % len(runs)]
        dyn.set_temperature(temperature_K=TEMPERATURES[min(len(TEMPERATURES) - 1, i * len(TEMPERATURES) // n)])
        dyn.run(20)
        frames.append(Dataset.from_atoms([atoms])[0])
    return frames


def snapshot(fitter) -> dict:
    return {"factor": fitter.factor, "n_factored": fitter.n_factored, "blocks": list(fitter.blocks),
            "cal": fitter.cal, "fits": fitter.fits}


def restore(fitter, snap: dict) -> None:
    fitter.factor, fitter.n_factored, fitter.cal, fitter.fits = (snap["factor"], snap["n_factored"], snap["cal"],
                                                                 snap["fits"])
    fitter.blocks = list(snap["blocks"])


def old_refit(fitter, frames) -> tuple[float, float, float]:
    """The refit as it was: fit_gap continued from the stored rows of all but the last frame;
    returns its time, that of its QR and that of its calibration pass (s)."""
    from ase_mlff.data import Dataset
    from ase_mlff.training.gap_train import fit_gap

    sp = fitter.sparse
    n = len(frames) - 1
    state = {"stage": "design", "n_sparse": sp["n_sparse"], "n_environments": int(sum(len(f) for f in frames)),
             "design_frames": n}
    saved = {"sparse": sp["sparse"], "pair_sparse": sp["pair_sparse"], "design_rows": np.concatenate(fitter.blocks)}
    t = time.perf_counter()
    _, info = fit_gap(Dataset(frames), np.arange(len(frames)), fitter.opts, log=lambda msg: None, quiet=True,
                      resume=(state, saved), reference=fitter.reference)
    return time.perf_counter() - t, info["solve_s"], info["cross_validation_s"]


def accuracy(fitter) -> None:
    """How far the weights of the incremental fit are from a QR from scratch of the same rows
    (its data rows and the prior rows, same sparse set), against how far two QRs from scratch
    of the rows in two orders are from each other (the rounding the conditioning allows)."""
    import torch

    from ase_mlff.training.gap_train import gap_prior
    from ase_mlff.training.sparse_gp import factor_solution

    model = fitter.model
    rows = np.concatenate(fitter.blocks)
    T = rows.shape[1] - 1
    prior = np.zeros((T, T + 1))
    for cols, U in gap_prior(model, fitter.opts["jitter"], fitter.opts["sigma_e0"]):
        prior[cols, cols] = U
    stacked = np.concatenate([rows, prior])
    x_new = factor_solution(fitter.factor)[0]
    R0 = torch.linalg.qr(torch.from_numpy(stacked), mode="r")[1].numpy()
    x0 = factor_solution(R0)[0]
    order = np.random.default_rng(0).permutation(len(stacked))
    x1 = factor_solution(torch.linalg.qr(torch.from_numpy(stacked[order]), mode="r")[1].numpy())[0]
    norm = np.linalg.norm(x0)
    print(f"\nweights at {fitter.n_factored} frames, |dx| / |x|: incremental vs QR from scratch "
          f"{np.linalg.norm(x_new - x0) / norm:.1e}; QR from scratch of the rows in another order "
          f"{np.linalg.norm(x1 - x0) / norm:.1e}; cond(R) {np.linalg.cond(R0[:T, :T]):.1e}")
    # the fitted labels (energies, forces, virials; weighted): what the weights are for
    phi = rows[:, :T]
    y0 = phi @ x0
    print(f"fitted labels Phi x, |dy| / |y|: incremental vs QR from scratch "
          f"{np.linalg.norm(phi @ x_new - y0) / np.linalg.norm(y0):.1e}; QR from scratch in another order "
          f"{np.linalg.norm(phi @ x1 - y0) / np.linalg.norm(y0):.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 60, 120, 200], help="numbers of labelled frames")
    ap.add_argument("--repeat", type=int, default=3, help="each refit timed this many times, the best kept")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(THREADS)
    from ase_mlff.workflows.learn import LearnSettings
    from ase_mlff.workflows.learn.fitting import GapFitter

    sizes = sorted(args.sizes)
    t = time.perf_counter()
    frames = md_frames(sizes[-1])
    print(f"{sizes[-1]} EMT frames ({min(len(f) for f in frames)}-{max(len(f) for f in frames)} atoms) in "
          f"{time.perf_counter() - t:.0f} s")
    # no re-selection (the sparse set of the first fit is kept) and no calibration unless asked
    settings = LearnSettings(reference="ase.calculators.emt:EMT", reselect_growth=1e9, novelty=1e-9,
                             recalibrate_growth=1e9)
    fitter = GapFitter(dict(GAP_OPTIONS), settings, None)
    t = time.perf_counter()
    fitter.fit(frames[:sizes[0] - 1])
    print(f"first fit on {sizes[0] - 1} frames (sparse set chosen): {time.perf_counter() - t:.1f} s; "
          f"T = {fitter.model.n_parameters} parameters")
    # the time spent on design rows, each frame's counted once
    rows_time = [0.0]
    t = time.perf_counter()
    fitter._rows(frames[:sizes[0] - 1])
    rows_time[0] += time.perf_counter() - t
    rows_of = fitter._rows

    counting = [True]  # off while the same frame's rows are computed again (repeats, calibrate runs)

    def timed_rows(some):
        t = time.perf_counter()
        out = rows_of(some)
        if counting[0]:
            rows_time[0] += time.perf_counter() - t
        return out

    fitter._rows = timed_rows
    print(f"\n{'frames':>6} {'atoms':>6} {'rows':>7} {'old s':>7} {'(QR s':>6} {'LOFO s)':>7} {'new s':>7} "
          f"{'calibrate s':>11} {'rows MB':>8} {'rows s':>7} {'factor MB':>9}")
    growth = []  # the times of the refits between the sizes (no calibration)
    for n in sizes:
        while fitter.n_factored < n - 1:  # grow to n - 1 frames one at a time, as the loop does
            t = time.perf_counter()
            fitter.fit(frames[:fitter.n_factored + 1])
            growth.append(time.perf_counter() - t)
        snap = snapshot(fitter)
        t_old, t_qr, t_lofo = min(old_refit(fitter, frames[:n]) for _ in range(args.repeat))
        t_new = t_cal = np.inf
        for k in range(args.repeat):
            restore(fitter, snap)
            counting[0] = k == 0  # each frame's rows counted once
            t = time.perf_counter()
            _, _, _, how = fitter.fit(frames[:n])
            t_new = min(t_new, time.perf_counter() - t)
            assert "kept" in how and "reused" in how, how
        counting[0] = False
        fitter.settings = replace(settings, recalibrate_growth=1.0)
        for _ in range(args.repeat):
            restore(fitter, snap)
            t = time.perf_counter()
            _, _, _, how = fitter.fit(frames[:n])
            t_cal = min(t_cal, time.perf_counter() - t)
            assert "calibrated now" in how, how
        fitter.settings = settings
        counting[0] = True
        rows_mb = sum(b.nbytes for b in fitter.blocks) / 1e6
        print(f"{n:>6} {sum(len(f) for f in frames[:n]):>6} {sum(len(b) for b in fitter.blocks):>7} {t_old:>7.2f} "
              f"{t_qr:>6.2f} {t_lofo:>7.2f} {t_new:>7.2f} {t_cal:>11.2f} {rows_mb:>8.0f} {rows_time[0]:>7.1f} "
              f"{fitter.factor.nbytes / 1e6:>9.1f}")
    if growth:
        print(f"\n{len(growth)} refits between the sizes, one new frame each (no calibration): "
              f"{np.mean(growth):.2f} s on average, {np.max(growth):.2f} s at most")
    accuracy(fitter)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu}"
          f", {os.cpu_count()} cores, {THREADS} thread(s), Python {platform.python_version()}, torch "
          f"{torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
