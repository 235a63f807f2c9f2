"""Threads under contention: time per ASE call with the default thread count against one
thread, on an idle machine and with busy-loop processes beside the run.

Users' machines are never idle (a browser, another job, a second MD run), and a thread pool
that spins while it waits takes the core the working thread needs: before ase-mlff made idle
OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``, set when ``ase_mlff`` is imported before
torch), a 192-atom water step with the Behler-Parrinello model took 126.5 ms on two threads next
to one busy process, against 44.1 ms on one thread (docs/benchmarks.md).

For each shipped model and size, each configuration runs in a fresh process (the OpenMP
runtime reads its wait policy once, at load):

* ``default``: what a user gets (``import ase_mlff`` first; threads as configured, here the
  machine's cores);
* ``spin``: the same with ``OMP_WAIT_POLICY=ACTIVE`` (OpenMP's usual default, i.e. the
  behaviour before the change, or of a script that imports torch before ase_mlff);
* ``1 thread``: ``OMP_NUM_THREADS=1`` (torch and the compiled kernels on one thread).

and each of them ``--busy 0`` (idle) and ``--busy 1`` (one busy-loop process per extra core
asked for: ``--busy 1`` on a 2-core machine occupies one core). Per call: energy, forces and
(periodic cells) stress of a slightly moved structure, the median of ``--repeat`` calls after a
warm-up. The table gives ms per call and the ratio default / 1 thread (what the issue asked:
the default must never be much slower than one thread).

    python benchmarks/threads.py                 # every model, idle and busy
    python benchmarks/threads.py --quick         # fewer calls
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POTENTIALS = os.path.join(ROOT, "potentials")

#: (label, model file, structure builder source, repeat of the cell)
CASES = (
    ("Si GAP", "si_gap.mlff", "si", 2),
    ("Si GAP", "si_gap.mlff", "si", 3),
    ("water BPNN", "water_bpnn.mlff", "water", 1),
    ("water SchNet", "water_schnet.mlff", "water", 1),
    ("Ni MFF", "ni_mff.mlff", "ni", 3),
    ("ethanol sGDML", "ethanol_sgdml.mlff", "ethanol", 1),
)

_CHILD = r"""
import json, sys, time
import numpy as np
import ase_mlff
from ase.build import bulk
from ase.io import read

model, kind, rep, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
calc = ase_mlff.load(model)
if kind == "si":
    atoms = bulk("Si", "diamond", a=5.47, cubic=True).repeat(rep)
elif kind == "ni":
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat(rep)
elif kind == "water":
    atoms = read(sys.argv[5], 0).repeat(rep)
else:
    atoms = read(sys.argv[5])
atoms.calc = calc
rng = np.random.default_rng(0)
pos0 = atoms.positions.copy()
times = []
for k in range(repeat + 3):
    atoms.positions = pos0 + rng.normal(scale=0.01, size=pos0.shape)
    t = time.perf_counter()
    atoms.get_forces()
    if atoms.pbc.all():
        atoms.get_stress()
    times.append(time.perf_counter() - t)
import ase_mlff.threads as th
print(json.dumps({"n_atoms": len(atoms), "median_ms": 1e3 * float(np.median(times[3:])),
                  "threads": th.describe()}))
"""


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _run(model: str, kind: str, rep: int, repeat: int, env_extra: dict) -> dict:
    extra = {"water": os.path.join(ROOT, "tests", "data", "water_deepmd_4.extxyz"),
             "ethanol": os.path.join(POTENTIALS, "ethanol_start.xyz")}.get(kind, "")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                              "ASE_MLFF_NUM_THREADS")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _CHILD, os.path.join(POTENTIALS, model), kind, str(rep),
                          str(repeat), extra], capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


CONFIGS = (("default", {}), ("spin", {"OMP_WAIT_POLICY": "ACTIVE"}), ("1 thread", {"OMP_NUM_THREADS": "1"}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="10 calls per configuration")
    p.add_argument("--busy", type=int, nargs="*", default=[0, 1], help="busy-loop processes beside the run")
    args = p.parse_args(argv)
    repeat = 10 if args.quick else args.repeat
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}")
    header = f"| model | atoms | busy | " + " | ".join(f"{c} ms" for c, _ in CONFIGS) + " | default / 1 thread | spin / 1 thread |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, model, kind, rep in CASES:
        for busy in args.busy:
            procs = _busy(busy)
            try:
                time.sleep(0.5)
                res = {c: _run(model, kind, rep, repeat, env) for c, env in CONFIGS}
            finally:
                for pr in procs:
                    pr.kill()
            ms = {c: r["median_ms"] for c, r in res.items()}
            print(f"| {label} | {res['default']['n_atoms']} | {busy} | "
                  + " | ".join(f"{ms[c]:.1f}" for c, _ in CONFIGS)
                  + f" | {ms['default'] / ms['1 thread']:.2f} | {ms['spin'] / ms['1 thread']:.2f} |", flush=True)
    print(f"# {res['default']['threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
