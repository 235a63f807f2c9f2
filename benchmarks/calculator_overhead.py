"""Calculator overhead per MD step, and NVE energy drift of the shipped potentials.

1. Overhead. For the 9-atom ethanol sGDML model on distinct rMD17 test frames (each call a new
   geometry: energy and forces), and for fcc Ni cells of 100 and 10 000 atoms (primitive-cell supercells 5x5x4 and
   25x20x20) the script times, per MD-like step (every atom moved by ~0.01 Å, as in one
   time step, so the Verlet-skin neighbour list is reused most of the time):

   * ``step``: ``atoms.get_forces()`` through :class:`MLFFCalculator` (forces and, since the
     cell is periodic, stress), i.e. everything an ASE integrator pays per step;
   * ``model``: ``model.compute(graph, forces=True, stress=True)`` on a graph prepared
     beforehand (the model's own evaluation);
   * ``overhead = step - model``: checks, neighbour-list update, graph construction,
     tensor conversions and ASE's calculator bookkeeping. The neighbour-list update alone is
     shown too (``nl``; for MFF, which takes the Verlet list unfiltered, the closest-pair check
     and the rebuilds), and ``in-call``: the median of (get_forces time minus the time spent
     inside ``model.compute`` during that same call), a direct measure that machine-load
     noise between two separate timings cannot distort, and its best (``in-call best``).

   Best (minimum) of ``--repeat`` steps after a warm-up, the least noisy statistic on a busy
   machine; the median step time is printed too. The model: potentials/ni_mff.mlff
   (``--model`` for another periodic model).

2. Drift (``--drift``): NVE (velocity Verlet) from 300 K Maxwell-Boltzmann velocities for each
   shipped potential: ethanol sGDML at 0.5 fs; Ni MFF (108 atoms) at 1 and 2 fs. Reports the
   slope of a linear fit of the total energy per atom against time (meV/atom/ps) and the
   largest excursion of the total energy.

    python benchmarks/calculator_overhead.py                 # overhead table
    python benchmarks/calculator_overhead.py --drift         # and the drift table
    python benchmarks/calculator_overhead.py --quick --drift # seconds, rough numbers

Timings on a shared machine are contended: the script prints the load average and the thread
counts (torch's and the C++ kernels') with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import ase
import numpy as np
import torch
from ase.build import bulk
from ase.io import read

import ase_mlff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NI_MODEL = os.path.join(ROOT, "potentials", "ni_mff.mlff")
ETHANOL_MODEL = os.path.join(ROOT, "potentials", "ethanol_sgdml.mlff")
ETHANOL_START = os.path.join(ROOT, "potentials", "ethanol_start.xyz")

SIZES = {100: (5, 5, 4), 10000: (25, 20, 20)}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def crystal(model_path: str, reps) -> object:
    calc = ase_mlff.load(model_path)
    element = ase_mlff.models.base.symbols(calc.model.species)[0]
    a = {"Ni": 3.52, "Cu": 3.61, "Al": 4.05, "Mo": 3.15, "Si": 5.43}.get(element, 3.5)
    structure = "bcc" if element == "Mo" else ("diamond" if element == "Si" else "fcc")
    atoms = bulk(element, structure, a=a) * reps
    atoms.calc = calc
    return atoms


def molecule_frames():
    """The ethanol sGDML model on distinct rMD17 test frames (tests/data): ``(atoms, move)``,
    where each move puts the next frame in (a new geometry, not an MD step)."""
    d = np.load(os.path.join(ROOT, "tests", "data", "rmd17_ethanol_300.npz"))
    R = d["coords"][d["split"] == 1].astype(np.float64)
    atoms = ase.Atoms(numbers=d["nuclear_charges"], positions=R[0])
    atoms.calc = ase_mlff.load(ETHANOL_MODEL)
    frame = iter(range(10**9))

    def move():
        atoms.positions = R[next(frame) % len(R)]

    return atoms, move


def time_overhead(model_path: str, natoms: int, reps, repeat: int, rng, molecule: bool = False) -> dict:
    if molecule:
        atoms, move = molecule_frames()
    else:
        atoms = crystal(model_path, reps)
        step = 0.01 / np.sqrt(3)

        def move():
            atoms.positions = atoms.positions + rng.normal(scale=step, size=atoms.positions.shape)
    calc = atoms.calc
    model = calc.model
    stress = model.supports_stress

    # warm-up (first neighbour list, allocations, lazy initialisation)
    for _ in range(2):
        move()
        atoms.get_forces()
    # the model alone, on a graph prepared beforehand
    graph, _ = calc._prepare(atoms)
    model.compute(graph, forces=True, stress=stress)
    # time spent inside model.compute during each get_forces call (the direct measure)
    inner = []
    compute = model.compute

    def timed_compute(*a, **k):
        t0 = time.perf_counter()
        out = compute(*a, **k)
        inner.append(time.perf_counter() - t0)
        return out

    # interleaved, so that both see the same machine load
    t_step, t_model, t_incall = [], [], []
    for _ in range(repeat):
        move()
        inner.clear()
        model.compute = timed_compute
        t0 = time.perf_counter()
        atoms.get_forces()
        t_step.append(time.perf_counter() - t0)
        del model.compute  # back to the class method
        t_incall.append(t_step[-1] - sum(inner))
        t0 = time.perf_counter()
        out = model.compute(graph, forces=True, stress=stress)
        out.forces.sum().item()
        t_model.append(time.perf_counter() - t0)
    # the neighbour-list update on its own (same kind of displacements), as the calculator
    # does it: the skin list unfiltered for a model that ignores outer pairs, else filtered
    if calc.nl is None:  # a global model: no neighbour list
        return {"natoms": len(atoms), "step": min(t_step), "model": min(t_model), "nl": 0.0,
                "incall": statistics.median(t_incall), "incall_best": min(t_incall),
                "step_median": statistics.median(t_step), "pairs": 0}
    t_nl = []
    update = calc.nl.update_outer if model.accepts_outer_pairs and calc.nl.skin > 0 else calc.nl.update
    for _ in range(repeat):
        move()
        t0 = time.perf_counter()
        update(atoms)
        t_nl.append(time.perf_counter() - t0)
    return {"natoms": len(atoms), "step": min(t_step), "model": min(t_model), "nl": min(t_nl),
            "incall": statistics.median(t_incall), "incall_best": min(t_incall),
            "step_median": statistics.median(t_step), "pairs": int(graph.edge_index.shape[1])}


def overhead_table(model_path: str, repeat: int, sizes) -> None:
    rng = np.random.default_rng(0)
    print(f"model {os.path.relpath(model_path)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"ase_mlff C++ kernels {ase_mlff.get_num_threads()} threads; "
          f"{platform.processor() or platform.machine()}; load average {load_average()}")
    print("best of N timings (ms); overhead = step - model")
    print(f"{'atoms':>7} {'pairs':>9} {'N':>4} {'step':>9} {'model':>9} {'overhead':>9} {'share':>7} "
          f"{'nl':>8} {'us/atom':>8} {'step median':>12} {'in-call':>8} {'in-call best':>12}")
    rows = [("sgdml", 9)] if os.path.exists(ETHANOL_MODEL) else []
    for kind, n in rows + [("crystal", n) for n in sizes]:
        nrep = repeat if n <= 1000 else max(5, repeat // 5)
        if kind == "sgdml":  # 9-atom ethanol, distinct test frames (not MD steps)
            r = time_overhead(ETHANOL_MODEL, n, None, max(nrep, 200), rng, molecule=True)
        else:
            r = time_overhead(model_path, n, SIZES[n], nrep, rng)
        over = r["step"] - r["model"]
        print(f"{r['natoms']:7d} {r['pairs']:9d} {nrep:4d} {1e3 * r['step']:9.3f} {1e3 * r['model']:9.3f} "
              f"{1e3 * over:9.3f} {100 * over / r['step']:6.1f}% {1e3 * r['nl']:8.3f} "
              f"{1e6 * over / r['natoms']:8.3f} {1e3 * r['step_median']:12.3f} {1e3 * r['incall']:8.3f} "
              f"{1e3 * r['incall_best']:12.3f}")
        sys.stdout.flush()


def drift_table(quick: bool) -> None:
    from ase_mlff.workflows import run_md

    cases = []
    if os.path.exists(ETHANOL_MODEL) and os.path.exists(ETHANOL_START):
        cases.append(("ethanol sGDML", ETHANOL_MODEL, lambda: read(ETHANOL_START), 0.5))
    if os.path.exists(NI_MODEL):
        ni = lambda: bulk("Ni", "fcc", a=3.52, cubic=True) * (3, 3, 3)  # noqa: E731
        cases += [("Ni MFF", NI_MODEL, ni, 1.0), ("Ni MFF", NI_MODEL, ni, 2.0)]
    if not cases:
        print("drift: no shipped potential in potentials/ yet")
        return
    print(f"\nNVE from 300 K, velocity Verlet; load average {load_average()}")
    print(f"{'potential':>14} {'atoms':>6} {'dt/fs':>6} {'steps':>6} {'t/ps':>6} {'drift meV/atom/ps':>18} "
          f"{'max|dE| meV/atom':>17} {'<T>/K':>7} {'steps/s':>8}")
    for name, path, make, dt in cases:
        atoms = make()
        t_ps = 0.1 if quick else 1.0
        steps = int(round(t_ps * 1000 / dt))
        res = run_md(atoms, ase_mlff.load(path), ensemble="nve", temperature=300.0, timestep=dt, steps=steps,
                     seed=1)
        print(f"{name:>14} {len(atoms):6d} {dt:6.1f} {steps:6d} {steps * dt / 1000:6.2f} {1e3 * res.drift:18.4f} "
              f"{1e3 * res.max_energy_deviation / len(atoms):17.4f} {res.temperature.mean():7.1f} "
              f"{res.steps_per_second:8.1f}")
        sys.stdout.flush()


def outer_pairs_ab(model_path: str, repeat: int) -> None:
    """The model's own time on the 10k-atom cell with the pairs within its cutoff and with the
    calculator's unfiltered cutoff + skin list (what an ``accepts_outer_pairs`` model gets),
    interleaved so that both see the same machine load."""
    from ase_mlff.graph import graph_from_arrays
    from ase_mlff.neighbors import NeighborList

    atoms = crystal(model_path, SIZES[10000])
    model = atoms.calc.model
    rng = np.random.default_rng(0)
    nl = NeighborList(model.cutoff, 0.5)
    nl.update(atoms)
    for _ in range(5):  # a few MD-like steps away from the build
        atoms.positions = atoms.positions + rng.normal(scale=0.01 / np.sqrt(3), size=atoms.positions.shape)
    within = nl.update(atoms)
    outer, _, _ = nl.update_outer(atoms)
    graphs = {name: graph_from_arrays(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc, p)
              for name, p in (("within cutoff", within), ("cutoff + skin", outer))}
    times = {name: [] for name in graphs}
    for _ in range(repeat):
        for name, g in graphs.items():
            t0 = time.perf_counter()
            model.compute(g, forces=True, stress=True)
            times[name].append(time.perf_counter() - t0)
    print(f"model time on the two pair lists, {len(atoms)} atoms, {repeat} interleaved calls (ms):")
    for name, (p, t) in zip(graphs, ((within, times["within cutoff"]), (outer, times["cutoff + skin"]))):
        print(f"  {name:<14} {len(p):9d} pairs  best {1e3 * min(t):8.2f}  median {1e3 * statistics.median(t):8.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=NI_MODEL, help="periodic model for the overhead table")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10000], choices=sorted(SIZES))
    ap.add_argument("--repeat", type=int, default=50, help="timed steps per size (10k atoms: a tenth)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads and ase_mlff's C++ kernel threads (default: each one's default)")
    ap.add_argument("--drift", action="store_true", help="also measure NVE drift of the shipped potentials")
    ap.add_argument("--quick", action="store_true", help="few repeats, 0.1 ps drift runs")
    ap.add_argument("--outer-ab", action="store_true",
                    help="also time the model on the pairs within its cutoff against the unfiltered skin list")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        ase_mlff.set_num_threads(args.threads)
    if args.quick:
        args.repeat = min(args.repeat, 10)
    if os.path.exists(args.model):
        overhead_table(args.model, args.repeat, args.sizes)
    else:
        print(f"overhead: {os.path.relpath(args.model)} not found (the shipped Ni MFF potential); "
              "give a periodic model with --model")
        if not args.drift:
            return 2
    if args.outer_ab and os.path.exists(args.model):
        outer_pairs_ab(args.model, max(10, args.repeat // 3))
    if args.drift:
        drift_table(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
