"""ase-mlff sGDML vs the ``sgdml`` package on rMD17, same frames, side by side.

    python benchmarks/sgdml.py                         # ethanol and aspirin, n_train 1000
    python benchmarks/sgdml.py --molecules ethanol --sigmas 10
    python benchmarks/sgdml.py --quick                 # ethanol, n_train 100, seconds
    python benchmarks/sgdml.py --molecules ethanol --calls OURS.mlff SGDML.npz --rounds 3 --before DIR
                                                       # per-call times only, of models trained before

For each molecule and package it reports the training wall time, peak memory (max RSS of the
worker process), energy and force MAE on the rMD17 test file (1000 frames) and the time per
single-geometry energy+forces call through each package's ASE calculator (geometry changed
before each call). Each package trains in its own subprocess (clean peak-memory numbers).

Frames: training = ``n_train`` frames of ``rmd17_<mol>_train_01.npz`` drawn stratified by
energy (all 1000 when n_train = 1000), given to both packages as the same dataset;
validation (only used to pick sigma when several are given) = the first ``n_valid`` frames of
the test file; test = all frames of the test file. Both search the same sigma grid and pick
the lowest validation force RMSE. The ``sgdml`` worker runs with OPENBLAS_NUM_THREADS=1: its
analytic solver uses scipy's Cholesky, whose threaded OpenBLAS build mis-reports the 27000^2
ethanol kernel as not positive definite on this machine (OpenBLAS 0.3.31 of the numpy/scipy
wheels; the same matrix factorises single-threaded and with torch).

Data: rMD17 split 01 (Christensen & von Lilienfeld 2020) in ``$ASE_MLFF_DATA/rmd17``
(``--data-dir``; benchmarks/public_data.py says where to get it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import public_data  # noqa: E402  (where the reference data come from and must be put)

DATA = os.path.dirname(public_data.path("rmd17", "x", must_exist=False))
KCAL = 0.0433641043  # eV per kcal/mol (ase.units.kcal / ase.units.mol)


def _rmd17_file(data_dir, name):
    path = os.path.join(data_dir, name)
    if not os.path.exists(path):
        raise public_data.MissingData(f"{path} not found: it belongs to {public_data.describe('rmd17')}")
    return path


def load(mol, data_dir):
    tr = np.load(_rmd17_file(data_dir, f"rmd17_{mol}_train_01.npz"))
    te = np.load(_rmd17_file(data_dir, f"rmd17_{mol}_test_01.npz"))
    pick = lambda d: {"R": d["coords"].astype(np.float64), "z": d["nuclear_charges"].astype(np.int64),
                      "E": d["energies"].astype(np.float64), "F": d["forces"].astype(np.float64)}
    return pick(tr), pick(te)


def stratified(E, n, seed=0):
    if n >= len(E):
        return np.arange(len(E))
    order = np.argsort(E, kind="stable")
    rng = np.random.default_rng(seed)
    return np.sort(np.array([b[rng.integers(len(b))] for b in np.array_split(order, n)]))


def maxrss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_ase_calls(calc, z, R, n_calls, rounds=1):
    """ms per energy + forces call, each on the next frame of R (best of ``rounds`` rounds)."""
    import ase

    atoms = ase.Atoms(numbers=z, positions=R[0])
    atoms.calc = calc
    for k in range(20):  # warm-up
        atoms.positions = R[k % len(R)]
        atoms.get_forces()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for k in range(n_calls):
            atoms.positions = R[k % len(R)]
            atoms.get_potential_energy()
            atoms.get_forces()
        best = min(best, (time.perf_counter() - t) / n_calls * 1e3)
    return best


def errors(Ep, E, Fp, F):
    """The shared metrics (:func:`ase_mlff.metrics.error_metrics`, meV-based names) of
    predictions against references given in kcal/mol and kcal/mol/Å."""
    from ase_mlff.metrics import error_metrics

    F = np.asarray(F)
    m = error_metrics(np.asarray(E) * KCAL, np.asarray(Ep) * KCAL, np.full(len(F), F.shape[-2]),
                      F.reshape(-1, 3) * KCAL, np.asarray(Fp).reshape(-1, 3) * KCAL, None)
    return {k: m[k] for k in ("energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")}


def kcal(meV: float) -> float:
    """meV (per Å) in kcal/mol (per Å), the unit the rMD17 tables use."""
    return meV * 1e-3 / KCAL


# ----------------------------------------------------------------------------- workers
def worker_ours(a):
    import ase_mlff
    from ase_mlff.io import save_model
    from ase_mlff.training.sgdml_train import train_sgdml, training_record

    tr, te = load(a.molecule, a.data_dir)
    idx = stratified(tr["E"], a.n_train)
    nv = a.n_valid
    data = {"R": np.concatenate([tr["R"][idx], te["R"][:nv]]), "z": tr["z"],
            "E": np.concatenate([tr["E"][idx], te["E"][:nv]]) * KCAL,
            "F": np.concatenate([tr["F"][idx], te["F"][:nv]]) * KCAL, "energy_unit": "kcal/mol"}
    t0 = time.perf_counter()
    model, rep = train_sgdml(data, len(idx), nv, sigmas=a.sigmas, train_indices=np.arange(len(idx)),
                             valid_indices=np.arange(len(idx), len(idx) + nv),
                             progress=lambda m: print(f"  [ours {time.perf_counter() - t0:6.0f} s] {m}",
                                                      file=sys.stderr, flush=True))
    t_train = time.perf_counter() - t0
    Ep, Fp = model.predict_numpy(te["R"])
    path = os.path.join(a.workdir, f"ours_{a.molecule}.mlff")
    save_model(model, path, training=training_record(rep))
    calc = ase_mlff.load(path)
    ms = time_ase_calls(calc, te["z"], te["R"], a.n_calls)
    before = {}
    if a.before:  # the same model file served by the earlier build, timed in this run
        before = {"ms_per_call_before": time_before(a, path)}
    return {**before, "train_s": t_train, "peak_gib": maxrss_gib(), "sigma": model.sigma, "solver": rep["solver"],
            "n_sym": rep["n_symmetries"], **errors(Ep / KCAL, te["E"], Fp / KCAL, te["F"]), "ms_per_call": ms,
            "model_bytes": os.path.getsize(path)}


def worker_calls(a):
    """Time ASE calls of an ase-mlff model file (run under the --before build's PYTHONPATH)."""
    import ase_mlff

    _, te = load(a.molecule, a.data_dir)
    return {"ms_per_call": time_ase_calls(ase_mlff.load(a.model_file), te["z"], te["R"], a.n_calls, a.rounds),
            "ase_mlff": os.path.dirname(ase_mlff.__file__)}


def worker_sgdml_calls(a):
    """Time ASE calls of an sgdml model file through ``SGDMLCalculator(use_torch=True)``."""
    _drop_own_directory()
    from sgdml.intf.ase_calc import SGDMLCalculator

    _, te = load(a.molecule, a.data_dir)
    return {"ms_per_call": time_ase_calls(SGDMLCalculator(a.model_file, use_torch=True), te["z"], te["R"],
                                          a.n_calls, a.rounds)}


def _child(a, worker, model_file, env=None) -> float:
    """ms per call measured by ``worker`` in a child process (outside both checkouts)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--molecule", a.molecule,
           "--model-file", os.path.abspath(model_file), "--n-calls", str(a.n_calls), "--rounds", str(a.rounds),
           "--data-dir", os.path.abspath(a.data_dir)]
    proc = subprocess.run(cmd, env=env or dict(os.environ), stdout=subprocess.PIPE, text=True,
                          cwd=tempfile.gettempdir())
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"{worker} child failed (exit {proc.returncode})")
    return json.loads(line[-1][7:])


def time_calls_only(a) -> int:
    """--calls OURS SGDML: per-call times of two models trained before (e.g. the files a full
    run keeps), without training: ours through this checkout (and --before), sgdml's calculator
    with the default BLAS threads and with OPENBLAS_NUM_THREADS=1, each in its own process."""
    ours, theirs = a.calls
    a.molecule = a.molecules.split(",")[0]
    rows = [("ase-mlff", _child(a, "calls", ours)["ms_per_call"])]
    if a.before:
        rows.append(("ase-mlff (before)", time_before(a, ours)))
    rows.append(("sgdml, default BLAS threads", _child(a, "sgdml-calls", theirs)["ms_per_call"]))
    rows.append(("sgdml, OPENBLAS_NUM_THREADS=1",
                 _child(a, "sgdml-calls", theirs, dict(os.environ, OPENBLAS_NUM_THREADS="1"))["ms_per_call"]))
    print(f"{a.molecule}: ms per energy + forces call, each on the next test frame, best of {a.rounds} rounds "
          f"of {a.n_calls}")
    for name, ms in rows:
        print(f"  {name:32s} {ms:7.3f}   ratio to ours {ms / rows[0][1]:5.2f}")
    return 0


def time_before(a, path) -> float:
    """ms per call of ``path`` through the ase-mlff checkout ``a.before`` (its extension built),
    in a child process whose working directory is outside both checkouts."""
    res = _child(a, "calls", path, dict(os.environ, PYTHONPATH=os.path.abspath(a.before)))
    if not res["ase_mlff"].startswith(os.path.abspath(a.before)):
        raise RuntimeError(f"--before {a.before}: the child imported ase_mlff from {res['ase_mlff']}")
    return res["ms_per_call"]


def _drop_own_directory():
    # this file is called sgdml.py: drop its directory from the path so "import sgdml" is the package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [q for q in sys.path if os.path.abspath(q or ".") != here]
    sys.modules.pop("sgdml", None)


def worker_sgdml(a):
    _drop_own_directory()
    from sgdml.predict import GDMLPredict
    from sgdml.train import GDMLTrain
    from sgdml.utils import io as sio

    tr, te = load(a.molecule, a.data_dir)
    idx = stratified(tr["E"], a.n_train)
    nv = a.n_valid

    def dataset(R, z, E, F, name):
        d = {"type": "d", "code_version": "1.0.3", "name": np.array(name), "theory": np.array("rMD17 PBE/def2-SVP"),
             "R": R, "z": z, "E": E.reshape(-1, 1), "F": F, "r_unit": np.array("Ang"), "e_unit": np.array("kcal/mol")}
        d["md5"] = np.array(sio.dataset_md5(d))
        return d

    train_ds = dataset(tr["R"][idx], tr["z"], tr["E"][idx], tr["F"][idx], f"{a.molecule}_train")
    valid_ds = dataset(te["R"][:nv], te["z"], te["E"][:nv], te["F"][:nv], f"{a.molecule}_valid")
    gdml = GDMLTrain()
    t0 = time.perf_counter()
    best = None
    for sig in a.sigmas:
        task = gdml.create_task(train_ds, len(idx), valid_ds, nv, sig=int(sig), lam=1e-10)
        assert len(task["idxs_train"]) == len(idx)
        model = gdml.train(task)
        if len(a.sigmas) > 1:
            pred = GDMLPredict(model)
            _, Fv = pred.predict(valid_ds["R"].reshape(nv, -1))
            score = float(np.sqrt(((Fv.reshape(valid_ds["F"].shape) - valid_ds["F"]) ** 2).mean()))
        else:
            score = 0.0
        print(f"  [sgdml {time.perf_counter() - t0:6.0f} s] sigma {sig}: valid F RMSE {score:.4f}", file=sys.stderr,
              flush=True)
        if best is None or score < best[0]:
            best = (score, model, sig)
    t_train = time.perf_counter() - t0
    model = best[1]
    pred = GDMLPredict(model)
    Ep, Fp = pred.predict(te["R"].reshape(len(te["R"]), -1))
    path = os.path.join(a.workdir, f"sgdml_{a.molecule}.npz")
    np.savez_compressed(path, **model)
    from sgdml.intf.ase_calc import SGDMLCalculator

    out = {"train_s": t_train, "peak_gib": maxrss_gib(), "sigma": best[2], "solver": str(model.get("solver_name", "")),
           "n_sym": int(len(model["perms"])), **errors(Ep.ravel(), te["E"], Fp.reshape(te["F"].shape), te["F"]),
           "model_bytes": os.path.getsize(path)}
    for use_torch in (True, False):
        calc = SGDMLCalculator(path, use_torch=use_torch)
        out["ms_per_call" if use_torch else "ms_per_call_numpy"] = time_ase_calls(
            calc, te["z"], te["R"], a.n_calls if use_torch else max(50, a.n_calls // 10))
    return out


# ----------------------------------------------------------------------------- driver
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", default="ethanol,aspirin")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-valid", type=int, default=200)
    p.add_argument("--sigmas", default="10,20,30", help="comma-separated sigma grid for both packages")
    p.add_argument("--quick", action="store_true", help="ethanol, n_train 100, sigma 20")
    p.add_argument("--packages", default="ours,sgdml")
    p.add_argument("--n-calls", type=int, default=1000)
    p.add_argument("--data-dir", default=DATA)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--before", default=None,
                   help="a checkout of an earlier ase-mlff commit with its extension built: our trained "
                        "model is also timed through it, in the same run ('ours (before)')")
    p.add_argument("--calls", nargs=2, metavar=("OURS", "SGDML"), default=None,
                   help="no training: time the ASE calls of an ase-mlff model file and an sgdml model file "
                        "(e.g. those a full run keeps in its work directory) on the first molecule's test frames")
    p.add_argument("--rounds", type=int, default=1, help="timed rounds of --n-calls calls (best is reported)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model-file", help=argparse.SUPPRESS)
    p.add_argument("--molecule", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.sigmas = [float(s) for s in a.sigmas.split(",")]
    if a.quick:
        a.molecules, a.n_train, a.sigmas, a.n_valid, a.n_calls = "ethanol", 100, [20.0], 50, 300
    if a.worker:
        res = {"ours": worker_ours, "sgdml": worker_sgdml, "calls": worker_calls,
               "sgdml-calls": worker_sgdml_calls}[a.worker](a)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    if a.calls:
        return time_calls_only(a)
    results = {}
    workdir = tempfile.mkdtemp(prefix="sgdml_bench_")
    print(f"# trained models are kept in {workdir} (for --calls)", file=sys.stderr, flush=True)
    for mol in a.molecules.split(","):
        for pkg in a.packages.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", pkg, "--molecule", mol, "--workdir", workdir,
                   "--n-train", str(a.n_train), "--n-valid", str(a.n_valid), "--n-calls", str(a.n_calls),
                   "--sigmas", ",".join(str(s) for s in a.sigmas), "--data-dir", a.data_dir]
            if a.before and pkg == "ours":
                cmd += ["--before", a.before]
            env = dict(os.environ)
            if pkg == "sgdml":
                env["OPENBLAS_NUM_THREADS"] = "1"
            print(f"== {mol}: {pkg} (n_train {a.n_train}, sigmas {a.sigmas})", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            results[(mol, pkg)] = json.loads(line[-1][7:]) if line else {"failed": proc.returncode}
            print(f"   {results[(mol, pkg)]}", file=sys.stderr, flush=True)

    print(f"\nrMD17 split 01, n_train {a.n_train}, sigma grid {a.sigmas}; test = 1000 test_01 frames; "
          "errors in kcal/mol and kcal/mol/Å")
    hdr = f"{'molecule':9s} {'package':9s} {'sigma':>5s} {'sym':>4s} {'train s':>8s} {'peak GiB':>8s} " \
          f"{'E MAE':>7s} {'F MAE':>7s} {'F RMSE':>7s} {'ms/call':>8s}"
    print(hdr)
    for (mol, pkg), r in results.items():
        if "failed" in r:
            print(f"{mol:9s} {pkg:9s} failed (exit {r['failed']})")
            continue
        print(f"{mol:9s} {pkg:9s} {r['sigma']:5g} {r['n_sym']:4d} {r['train_s']:8.1f} {r['peak_gib']:8.2f} "
              f"{kcal(r['energy_mae_meV']):7.3f} {kcal(r['forces_mae_meV_per_A']):7.3f} "
              f"{kcal(r['forces_rmse_meV_per_A']):7.3f} {r['ms_per_call']:8.3f}"
              + (f"  (numpy path {r['ms_per_call_numpy']:.2f} ms)" if "ms_per_call_numpy" in r else "")
              + (f"  (before: {r['ms_per_call_before']:.3f} ms)" if "ms_per_call_before" in r else ""))
    for mol in a.molecules.split(","):
        o, s = results.get((mol, "ours")), results.get((mol, "sgdml"))
        if o and s and "failed" not in o and "failed" not in s:
            print(f"{mol}: sgdml/ours training time {s['train_s'] / o['train_s']:.2f}x, peak memory "
                  f"{s['peak_gib'] / o['peak_gib']:.2f}x, prediction time {s['ms_per_call'] / o['ms_per_call']:.2f}x; "
                  f"F MAE ours/sgdml {o['forces_mae_meV_per_A'] / s['forces_mae_meV_per_A']:.3f}"
                  + (f"; prediction time sgdml/ours (before) {s['ms_per_call'] / o['ms_per_call_before']:.2f}x"
                     if "ms_per_call_before" in o else ""))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({f"{m}/{k}": v for (m, k), v in results.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
