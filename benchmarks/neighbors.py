"""Benchmark of ase_mlff's neighbour list against other implementations.

Compares, on fcc Cu and diamond C supercells of about 1k, 10k and 100k atoms at cutoffs 3 and
5 Å, the wall time of one full neighbour list (i, j, S, distances and vectors; every pair
twice) computed by

* ase_mlff.neighbors.neighbor_list        (this package, C++ cell list; one thread, and
                                          --threads threads: ``ase_mlff_mt``)
* ase_mlff.neighbors_torch                (this package, the torch cell list the calculator
  .torch_neighbor_list                    uses on a GPU; timed on CUDA when there is a device,
                                          else on the CPU with torch's threads)
* ase.neighborlist.neighbor_list          (ASE, numpy)
* vesin.NeighborList                      (optional, ``pip install vesin``), unsorted, run
                                          with one thread and with --threads (``vesin_mt``)
* matscipy.neighbours.neighbour_list      (optional, ``pip install matscipy``)
* torch_cluster.radius_graph              (optional; not periodic, so it is only timed on
                                          the same positions without periodic images and
                                          its pair count is not compared)

Each timing is the best of several rounds; a round calls every library once, in turn. Every peer must report the same number of pairs
as ase_mlff; a mismatch is printed and makes the script exit with status 1. The two ratio
columns compare like with like: vesin / ours on one thread each, and vesin_mt / ours_mt on
--threads each (default: the CPUs this process may use).

    python benchmarks/neighbors.py            # full run (a few minutes)
    python benchmarks/neighbors.py --quick    # small systems, few repeats (seconds)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time

import numpy as np
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from ase_mlff.neighbors import neighbor_list as mlff_neighbor_list

# ASE needs roughly this many seconds per million pairs (measured: ~1.3 s at 10k atoms,
# ~0.6 M pairs; it scales linearly). Used to skip runs that would take too long.
ASE_SECONDS_PER_MPAIR = 2.5
ASE_TIME_LIMIT = 60.0


def supercell(kind: str, target_atoms: int):
    """Cubic supercell of fcc Cu (a = 3.61 Å) or diamond C (a = 3.567 Å) with ~target atoms."""
    if kind == "fcc":
        unit = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms
    elif kind == "diamond":
        unit = bulk("C", "diamond", a=3.567, cubic=True)  # 8 atoms
    else:
        raise ValueError(kind)
    n = max(1, round((target_atoms / len(unit)) ** (1.0 / 3.0)))
    atoms = unit.repeat((n, n, n))
    # Small random displacements so that no distance sits exactly on a shell.
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
    return atoms


def best_time(fn, repeats: int, budget: float = 20.0):
    """Best wall time of ``fn()`` over ``repeats`` calls (fewer if the budget is exhausted)."""
    best = float("inf")
    result = None
    spent = 0.0
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent > budget:
            break
    return best, result


def make_peers(threads: int):
    """name -> (callable(atoms, cutoff) -> number of pairs) or a string saying why it is missing."""
    peers = {}

    def run_ours(atoms, rc, n_threads):
        return len(mlff_neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, rc, n_threads=n_threads))

    peers["ase_mlff"] = lambda atoms, rc: run_ours(atoms, rc, 1)
    peers["ase_mlff_mt"] = lambda atoms, rc: run_ours(atoms, rc, threads)
    peers["ase"] = lambda atoms, rc: len(ase_neighbor_list("ijSdD", atoms, rc)[0])

    import torch

    from ase_mlff.neighbors_torch import torch_neighbor_list

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def run_torch(atoms, rc):
        positions = torch.tensor(atoms.positions, device=device)  # the upload, as in the calculator
        n = len(torch_neighbor_list(positions, atoms.cell.array, atoms.pbc, rc))
        if device == "cuda":
            torch.cuda.synchronize()
        return n

    peers["ase_mlff_torch"] = run_torch

    try:
        import vesin

        def run_vesin(atoms, rc, n_threads):
            # unsorted: asking vesin to sort its pairs is extra work our list is not asked for
            # (ours comes out grouped by i as a by-product of its cell loop); the same outputs
            # otherwise: i, j, shifts, distances, vectors
            kwargs = {"cutoff": rc, "full_list": True, "sorted": False}
            try:
                nl = vesin.NeighborList(n_threads=n_threads, **kwargs)
            except TypeError:  # older vesin without n_threads
                nl = vesin.NeighborList(**kwargs)
            i, j, S, d, D = nl.compute(
                points=atoms.positions, box=atoms.cell.array, periodic=bool(atoms.pbc.all()),
                quantities="ijSdD",
            )
            return len(i)

        peers["vesin"] = lambda atoms, rc: run_vesin(atoms, rc, 1)
        peers["vesin_mt"] = lambda atoms, rc: run_vesin(atoms, rc, threads)
    except ImportError as exc:
        peers["vesin"] = f"vesin not importable ({exc}); pip install vesin"

    try:
        from matscipy.neighbours import neighbour_list as msp_neighbour_list

        peers["matscipy"] = lambda atoms, rc: len(msp_neighbour_list("ijSdD", atoms, rc)[0])
    except ImportError as exc:
        peers["matscipy"] = f"matscipy not importable ({exc}); pip install matscipy"

    try:
        import torch
        from torch_cluster import radius_graph

        def run_tc(atoms, rc):
            x = torch.from_numpy(atoms.positions)
            edge = radius_graph(x, r=rc, loop=False, max_num_neighbors=10**6)
            return int(edge.shape[1])

        peers["torch_cluster"] = run_tc
    except ImportError as exc:
        peers["torch_cluster"] = (
            f"torch_cluster not importable ({exc.__class__.__name__}: {exc}); it builds from "
            "source for a long time, install it yourself to include it"
        )
    return peers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1k and ~10k atoms, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="target atom counts")
    parser.add_argument("--cutoffs", type=float, nargs="*", default=[3.0, 5.0])
    parser.add_argument("--systems", nargs="*", default=["fcc", "diamond"])
    parser.add_argument("--no-ase", action="store_true", help="do not time ASE")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads of ase_mlff_mt and vesin_mt (default: the CPUs available)")
    args = parser.parse_args(argv)

    sizes = args.sizes or ([1000, 10000] if args.quick else [1000, 10000, 100000])
    repeats = args.repeats or (2 if args.quick else 5)

    peers = make_peers(args.threads)
    if args.no_ase:
        peers["ase"] = "skipped (--no-ase)"
    for name, p in peers.items():
        if isinstance(p, str):
            print(f"# {name}: skipped: {p}")
    if not isinstance(peers.get("torch_cluster"), str):
        print("# torch_cluster: radius_graph has no periodic images; timed on the same "
              "positions without periodicity, pair count not compared")
    print(f"# python {platform.python_version()}, {platform.machine()}, numpy {np.__version__}, "
          f"best of {repeats}; ase_mlff_mt and vesin_mt on {args.threads} threads")

    names = [n for n in ["ase_mlff", "ase_mlff_mt", "ase_mlff_torch", "ase", "vesin", "vesin_mt", "matscipy",
                         "torch_cluster"]
             if n in peers and not isinstance(peers[n], str)]
    header = (f"{'system':<8} {'atoms':>7} {'rc/Å':>5} {'pairs':>10} "
              + " ".join(f"{n + ' ms':>13}" for n in names)
              + f" {'ase/ours':>9} {'vesin/ours':>10} {'mt ratio':>9}")
    print(header)
    print("-" * len(header))

    mismatches = []
    for system in args.systems:
        for size in sizes:
            atoms = supercell(system, size)
            for rc in args.cutoffs:
                times, notes = {}, []
                counts = {"ase_mlff": peers["ase_mlff"](atoms, rc)}  # also a warm-up call
                timed = []
                for name in names:
                    if name == "ase":
                        est = ASE_SECONDS_PER_MPAIR * counts.get("ase_mlff", 0) / 1e6
                        if est > ASE_TIME_LIMIT:
                            notes.append(f"ase skipped: estimated {est:.0f} s per call "
                                         f"> {ASE_TIME_LIMIT:.0f} s")
                            continue
                    timed.append(name)
                # Rounds: every library once per round, in turn, the best of each kept, so a
                # slow phase of the (shared, noisy) machine does not fall on one library only.
                for _ in range(repeats):
                    for name in timed:
                        if name == "ase" and name in times and times[name] > 5.0 / repeats:
                            continue
                        t, count = best_time(lambda: peers[name](atoms, rc), 1)
                        times[name] = min(times.get(name, float("inf")), t)
                        if name != "torch_cluster":  # not periodic: its count is not comparable
                            counts[name] = count
                ref = counts["ase_mlff"]
                for name, c in counts.items():
                    if c != ref:
                        mismatches.append((system, len(atoms), rc, name, c, ref))
                        notes.append(f"PAIR COUNT MISMATCH {name}: {c} != {ref}")
                cells = " ".join(
                    f"{times[n] * 1e3:>13.2f}" if n in times else f"{'-':>13}" for n in names
                )
                ours = times["ase_mlff"]
                r_ase = f"{times['ase'] / ours:>9.1f}" if "ase" in times else f"{'-':>9}"
                r_ves = f"{times['vesin'] / ours:>10.2f}" if "vesin" in times else f"{'-':>10}"
                r_mt = (f"{times['vesin_mt'] / times['ase_mlff_mt']:>9.2f}" if "vesin_mt" in times
                        else f"{'-':>9}")
                print(f"{system:<8} {len(atoms):>7} {rc:>5.1f} {ref:>10} {cells} {r_ase} {r_ves} {r_mt}")
                for note in notes:
                    print(f"#   {note}")
                sys.stdout.flush()
    if mismatches:
        print("# pair count mismatches:", mismatches)
        return 1
    print("# all peers returned the same number of pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
