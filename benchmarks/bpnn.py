"""BPNN cost per MD step (energy + forces + stress through the ASE calculator) and peak memory
for liquid water boxes of 192, 1,536 and 12,288 atoms (the 64-molecule DeePMD frame repeated
1x1x1, 2x2x2, 4x4x4).

    python benchmarks/bpnn.py [--model potentials/water_bpnn.mlff] [--sizes 1 2 4] [--dtype float32]

Each size runs in a fresh child process so that its peak resident memory (ru_maxrss) is its own.
A TorchANI comparison (same boxes, its cell-list neighbour list) is left for a machine where
torchani is installed; it is not a dependency here.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(model_path, rep, dtype, steps):
    import numpy as np
    import torch
    from ase.io import read

    from ase_mlff.calculator import MLFFCalculator

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    atoms = read(os.path.join(ROOT, "tests", "data", "water_deepmd_4.extxyz"), index=0).repeat(rep)
    if model_path and os.path.exists(model_path):
        calc = MLFFCalculator(model_path, dtype=dtype, skin=0.0)
    else:  # an untrained model of the shipped shape (same functions and networks)
        from ase_mlff import data
        from ase_mlff.training.bpnn_train import prepare_model

        model, _ = prepare_model(data.read(os.path.join(ROOT, "tests", "data", "water_deepmd_4.extxyz")).frames,
                                 cutoff=6.0)
        calc = MLFFCalculator(model, dtype=dtype, skin=0.0)
    atoms.calc = calc
    rng = np.random.default_rng(0)
    times = []
    for k in range(steps + 1):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        t = time.perf_counter()
        atoms.get_forces()
        atoms.get_stress()
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n_atoms": len(atoms), "dtype": dtype, "s_per_step_median": float(np.median(times[1:])),
                      "first_call_s": times[0], "peak_rss_GiB": rss / 2 ** 30}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "potentials", "water_bpnn.mlff"))
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child is not None:
        return child(a.model, a._child, a.dtype, a.steps)
    for rep in a.sizes:
        out = subprocess.run([sys.executable, __file__, "--model", a.model, "--dtype", a.dtype, "--steps",
                              str(a.steps), "--_child", str(rep)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip()[-2000:], flush=True)


if __name__ == "__main__":
    main()
