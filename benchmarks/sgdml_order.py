"""Atom-order identification of the shipped sGDML ethanol model on the rMD17 test frames.

    python benchmarks/sgdml_order.py

Prints how often geometries given in the model's order (with random noise per coordinate) are
refused, and the outcome of every single exchange of two same-element atoms per frame (identified
with the right energy and forces / evaluated wrongly / refused), plus the cost per call of the
cached check along a trajectory, the check of the remembered order on distinct frames, and the
full check.
"""

import os
import time

import ase
import numpy as np

import ase_mlff
from ase_mlff.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    d = np.load(os.path.join(ROOT, "tests", "data", "rmd17_ethanol_300.npz"))
    z = d["nuclear_charges"].astype(int)
    R = d["coords"][d["split"] == 1].astype(float)
    calc = ase_mlff.load(os.path.join(ROOT, "potentials", "ethanol_sgdml.mlff"))
    model = calc.model

    def evaluate(pos):
        atoms = ase.Atoms(numbers=z, positions=pos)
        atoms.calc = calc
        return atoms.get_potential_energy(), atoms.get_forces()

    rng = np.random.default_rng(0)
    print(f"{'input':<36} {'frames':>7} {'refused':>8}")
    for noise in (0.0, 0.06, 0.1, 0.2, 0.35):
        refused = 0
        for pos in R:
            model.order_tracker.clear()
            try:
                model.prepare_atoms(z, pos + rng.normal(scale=noise, size=pos.shape))
            except InputError:
                refused += 1
        print(f"{f'model order, noise {noise} Å':<36} {len(R):7d} {refused:8d}")

    pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z)) if z[i] == z[j]]
    for fresh in (True, False):  # full identification each time / right after the original frame
        ok = wrong = refused = 0
        for pos in R:
            model.order_tracker.clear()
            e0, f0 = evaluate(pos)
            for i, j in pairs:
                p = np.arange(len(z))
                p[i], p[j] = j, i
                if fresh:
                    model.order_tracker.clear()
                else:
                    evaluate(pos)  # the remembered order is that of the original
                try:
                    e, f = evaluate(pos[p])
                except InputError:
                    refused += 1
                    continue
                if abs(e - e0) < 1e-6 and np.allclose(f, f0[p], atol=1e-6):
                    ok += 1
                else:
                    wrong += 1
        how = "full identification" if fresh else "after the original (remembered order)"
        print(f"same-element exchanges, {how}: {ok + wrong + refused} inputs, {ok} right, {wrong} wrong, "
              f"{refused} refused")

    pos = R[0].copy()
    model.order_tracker.clear()
    model.prepare_atoms(z, pos)
    n = 2000
    t0 = time.perf_counter()
    for k in range(n):
        pos[0, 0] += 1e-5 * (1 if k % 2 else -1)
        model.prepare_atoms(z, pos)
    cached = (time.perf_counter() - t0) / n
    tracker = model.order_tracker
    tracker.clear()
    model.prepare_atoms(z, R[0])
    counts = (tracker.verified, tracker.identified)
    t0 = time.perf_counter()
    for k in range(n):  # distinct frames: the remembered order, re-checked
        model.prepare_atoms(z, R[1 + k % (len(R) - 1)])
    verified = (time.perf_counter() - t0) / n
    print(f"{n} calls on distinct test frames after the first: {tracker.verified - counts[0]} answered by "
          f"the check of the remembered order, {tracker.identified - counts[1]} full identifications")
    t0 = time.perf_counter()
    for _ in range(200):
        model.order_tracker.clear()
        model.prepare_atoms(z, pos)
    full = (time.perf_counter() - t0) / 200
    t0 = time.perf_counter()
    for _ in range(200):
        model.predict_numpy(pos)
    predict = (time.perf_counter() - t0) / 200
    print(f"cost per call: cached check (small step) {1e6 * cached:.1f} µs, check of the remembered order "
          f"(distinct frames) {1e6 * verified:.1f} µs, full check {1e3 * full:.2f} ms, "
          f"prediction {1e3 * predict:.2f} ms")


if __name__ == "__main__":
    main()
