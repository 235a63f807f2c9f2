"""BPNN (ase-mlff) against TorchANI: cost per MD step (energy + forces + stress through each
library's ASE calculator), peak memory, and training time per epoch, for liquid water boxes
of 192, 1,536 and 12,288 atoms (the 64-molecule DeePMD frame of tests/data/water_deepmd_4.extxyz
repeated 1x1x1, 2x2x2, 4x4x4).

    python benchmarks/bpnn.py                 # both libraries, all sizes, training epochs
    python benchmarks/bpnn.py --quick         # 192 atoms only, 2 timed steps, 1 training epoch
    python benchmarks/bpnn.py --library ase-mlff --model none --sizes 1 2 4
    python benchmarks/bpnn.py --library ase-mlff --before /path/to/older/checkout --epochs 0

``--before DIR`` times a second ase-mlff build beside this one in the same run: DIR is a checkout
(of an older commit, its extension built in place) whose ``ase_mlff`` the MD child imports instead
(``PYTHONPATH=DIR``, run from a temporary directory outside both checkouts, so that neither
checkout's ``ase_mlff`` is picked up by accident; each row records the ``ase_mlff`` it imported).
Its rows are labelled "ase-mlff (before)", and the ratios current / before of time per step and
peak memory are printed per size. The structures and the model file are this checkout's.

The two models have the same size: TorchANI gets an AEV with as many radial terms per element
(our G2 shifts) and angular terms per element pair (our G5: widths x zeta x lambda = its
shifts x sections), the same cutoff (its angular cutoff must be strictly below the radial one:
cutoff - 0.001 Å), the cosine cutoff function, and per-element networks with our hidden widths
and activation (tanh). Its weights are random: pretrained ANI weights cannot be downloaded
here, and the cost does not depend on the weight values. Differences that remain, by design
of each library: TorchANI's networks read its whole AEV (no selection of functions), ours read
the selected functions (e.g. 33 of 88 for H), so its first layers are ~2.7x wider; ANI angular
terms have one zeta and one width but several radial shifts, ours several widths and zetas
with no shift; both are computed from the pairs within the cutoff.

Neighbour lists: ours is the calculator's (``--skin``: 0 rebuilds every step). TorchANI's best
available one: with ``--skin 0`` its adaptive cell list (the compiled ``fast_adaptive`` one
when its extension is built, else the pure-torch ``adaptive``: a cell list above 190 atoms with
PBC); with ``--skin > 0`` its ``VerletCellList(skin)``, which, like ours, reuses the list while
atoms move less than half the skin. Periodic cells go through TorchANI's PBC path (cell and pbc
passed to the model); its stress is the strain derivative (``stress_kind="scaling"``), the
same definition as ours.

Each (library, size) runs in its own child process, so that its peak resident memory
(``ru_maxrss``) is its own. Both use the same number of torch threads (``--threads``, default
2; OMP/MKL threads are set to it as well). Time per step is the best of ``--steps`` timed
steps after one untimed warm-up step (each step displaces the atoms by ~1e-3 Å, as an MD step
does); the median is printed too. Training: ``--epochs`` epochs on the 4 frames of
water_deepmd_4.extxyz (batch of 4, energy + force loss, Adam); ours through ``train_bpnn``
(which caches the symmetry functions and their derivatives once: reported separately as
setup), TorchANI's by its usual double backward through the AEV. The first epoch is not timed.

TorchANI is optional: ``pip install torchani --no-deps`` (2.9.0 accepts torch <= 2.13; never
let pip replace torch). Of its other requirements only ``huggingface_hub`` is imported by its
model module, for weight downloads; without it a stub stands in (:func:`_import_torchani`).
Without torchani the script says so and the ase-mlff rows still run.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WATER = os.path.join(ROOT, "tests", "data", "water_deepmd_4.extxyz")
DEFAULT_MODEL = os.path.join(ROOT, "potentials", "water_bpnn.mlff")


# ----------------------------------------------------------------------------- models
def our_model(model_path):
    """The shipped water model, or (``none`` / missing) an untrained one of the same shape."""
    if model_path and model_path != "none" and os.path.exists(model_path):
        from ase_mlff.io import load_model

        return load_model(model_path)
    from ase_mlff import data
    from ase_mlff.training.bpnn_train import prepare_model

    model, _ = prepare_model(data.read(WATER).frames, cutoff=6.0)
    return model


def model_shape(model) -> dict:
    """What the TorchANI model must match: counts of radial and angular terms, cutoff, widths."""
    import numpy as np

    c = model.get_config()
    eta_r = np.asarray(c["radial_eta"], dtype=float)  # (S, S, n_radial)
    shift_r = np.asarray(c["radial_shift"], dtype=float)
    eta_a = np.asarray(c["angular_eta"], dtype=float)  # (S, n_eta)
    n_zl = len(c["angular_zeta"])
    symbols = [__import__("ase.data").data.chemical_symbols[z] for z in c["species"]]
    return {"symbols": symbols, "cutoff": float(c["cutoff"]), "n_radial": int(shift_r.shape[-1]),
            "radial_eta": float(eta_r.ravel()[0]), "radial_shifts": shift_r[0, 0].tolist(),
            "n_eta": int(eta_a.shape[-1]), "n_zl": n_zl, "zetas": sorted({int(z) for z in c["angular_zeta"]}),
            "angular_eta": float(eta_a[eta_a > 0].mean()),
            "hidden": [int(h) for h in c["hidden"]], "activation": c["activation"],
            "n_selected": {s: len(v) for s, v in c["selected"].items()}}


def _import_torchani():
    """Import torchani. Its model module imports ``huggingface_hub`` (used only to download
    pretrained weights, which this benchmark never does); when that package is missing a stub
    that refuses downloads stands in for it."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        import types

        def refuse(*args, **kwargs):
            raise RuntimeError("this benchmark downloads no TorchANI weights")

        stub = types.ModuleType("huggingface_hub")
        stub.hf_hub_download = refuse
        sys.modules["huggingface_hub"] = stub
    import torchani
    import torchani.arch  # noqa: F401
    import torchani.ase  # noqa: F401

    return torchani


def _activation(name: str):
    import torch

    return {"tanh": torch.nn.Tanh(), "silu": torch.nn.SiLU()}[name]


def torchani_model(shape: dict, skin: float, dtype):
    """A TorchANI ANI model of the same size as ours (module docstring), random weights."""
    import numpy as np
    import torch

    _import_torchani()
    from torchani.aev import AEVComputer, ANIAngular, ANIRadial
    from torchani.arch import ANI
    from torchani.neighbors import CLIST_IS_INSTALLED, AdaptiveList, FastAdaptiveList, VerletCellList
    from torchani.nn import ANINetworks, AtomicNetwork
    from torchani.sae import SelfEnergy

    rc = shape["cutoff"]
    n_sections = shape["n_zl"]  # our zeta x lambda pairs <-> its angle sections
    n_shifts_a = shape["n_eta"]  # our G5 widths <-> its angular radial shifts
    radial = ANIRadial(shape["radial_eta"], shape["radial_shifts"], rc, cutoff_fn="cosine")
    angular = ANIAngular(shape["angular_eta"], 4.0, np.linspace(0.9, rc, n_shifts_a, endpoint=False).tolist(),
                         (np.pi / n_sections * (np.arange(n_sections) + 0.5)).tolist(), rc - 1e-3,
                         cutoff_fn="cosine")
    if skin > 0:
        nl, nl_name = VerletCellList(skin=skin), f"VerletCellList(skin={skin})"
    elif CLIST_IS_INSTALLED:
        nl, nl_name = FastAdaptiveList(), "fast_adaptive (compiled cell list)"
    else:
        nl, nl_name = AdaptiveList(), "adaptive (pure-torch cell list above 190 atoms with PBC)"
    aev = AEVComputer(radial, angular, num_species=len(shape["symbols"]), strategy="pyaev", cutoff_fn="cosine",
                      neighborlist=nl)
    torch.manual_seed(0)
    dims = [aev.out_dim, *shape["hidden"], 1]
    nets = ANINetworks({s: AtomicNetwork(dims, activation=_activation(shape["activation"]), bias=True)
                        for s in shape["symbols"]})
    model = ANI(shape["symbols"], aev, nets, SelfEnergy(shape["symbols"], [0.0] * len(shape["symbols"])))
    model = model.to(dtype)
    info = {"aev_radial": aev.radial_len, "aev_angular": aev.angular_len, "aev_length": aev.out_dim,
            "networks": [aev.out_dim, *shape["hidden"], 1], "neighbour_list": nl_name,
            "angular_cutoff": rc - 1e-3, "radial_cutoff": rc}
    return model, info


# ----------------------------------------------------------------------------- children
def _threads(n):
    import torch

    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


def _water(rep):
    from ase.io import read

    return read(WATER, index=0).repeat(rep)


def _time_steps(atoms, steps):
    import numpy as np

    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps + 1):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        t = time.perf_counter()
        atoms.calc.calculate(atoms, ["energy", "forces", "stress"], ["positions"])
        r = atoms.calc.results
        assert r["forces"].shape == (len(atoms), 3) and np.size(r["stress"]) in (6, 9)
        times.append(time.perf_counter() - t)
    return times


def _result(library, atoms, times, dtype, threads, extra):
    import numpy as np

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    best = float(min(times[1:]))
    return {"library": library, "n_atoms": len(atoms), "dtype": dtype, "threads": threads,
            "s_per_step_best": best, "us_per_atom_best": best / len(atoms) * 1e6,
            "s_per_step_median": float(np.median(times[1:])),
            "first_call_s": times[0], "timed_steps": len(times) - 1, "peak_rss_GiB": rss / 2 ** 30,
            "peak_rss_kB_per_atom": rss / 1024 / len(atoms), **extra}


def child_md(library, model_path, rep, dtype, steps, threads, skin):
    import torch

    _threads(threads)
    atoms = _water(rep)
    if library == "ase-mlff":
        from ase_mlff.calculator import MLFFCalculator

        import ase_mlff

        atoms.calc = MLFFCalculator(our_model(model_path), dtype=dtype, skin=skin)
        extra = {"neighbour_list": f"ase-mlff (skin {skin} Å)", "ase_mlff": os.path.dirname(ase_mlff.__file__)}
    else:
        model, info = torchani_model(model_shape(our_model(model_path)), skin, getattr(torch, dtype))
        atoms.calc = model.ase(stress_kind="scaling")
        extra = info
    times = _time_steps(atoms, steps)
    return _result(library, atoms, times, dtype, threads, extra)


def child_train(library, model_path, dtype, epochs, threads):
    import numpy as np
    import torch

    from ase_mlff import data

    _threads(threads)
    ds = data.read(WATER)
    shape = model_shape(our_model(model_path))
    if library == "ase-mlff":
        from ase_mlff.training.bpnn_train import train_bpnn

        t0 = time.perf_counter()
        _, rep = train_bpnn(ds, len(ds), 0, 0, cutoff=shape["cutoff"], hidden=shape["hidden"],
                            activation=shape["activation"], n_radial=shape["n_radial"], n_eta=shape["n_eta"],
                            zetas=shape["zetas"], dtype=dtype, epochs=epochs + 1, batch_size=len(ds))
        total = time.perf_counter() - t0
        hist = rep.get("history") or []
        per = [h.get("epoch_s", h.get("time_s")) for h in hist if "epoch_s" in h or "time_s" in h]
        if len(per) > 1:
            epoch_s = float(np.mean(per[1:]))
            setup = total - sum(per)
        else:  # a trainer that does not record epoch times: the total over epochs (setup included)
            epoch_s, setup = total / (epochs + 1), None
        return {"library": library, "mode": "train", "frames": len(ds), "n_atoms": len(ds[0].numbers),
                "threads": threads, "dtype": dtype, "s_per_epoch": epoch_s, "setup_s": setup,
                "epochs_timed": max(len(per) - 1, 0) if per else epochs + 1,
                "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30}
    tdtype = getattr(torch, dtype)
    model, info = torchani_model(shape, 0.0, tdtype)
    species = torch.tensor(np.stack([f.numbers for f in ds.frames]), dtype=torch.long)
    coords = torch.tensor(np.stack([f.positions for f in ds.frames]), dtype=tdtype)
    cells = [torch.tensor(np.asarray(f.cell), dtype=tdtype) for f in ds.frames]
    pbc = torch.tensor([True, True, True])
    hartree = 27.211386245988
    E_ref = torch.tensor([f.energy for f in ds.frames], dtype=torch.float64) / hartree
    F_ref = torch.tensor(np.stack([f.forces for f in ds.frames]), dtype=tdtype) / hartree
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = species.shape[1]
    times = []
    for epoch in range(epochs + 1):
        t = time.perf_counter()
        opt.zero_grad()
        loss = 0.0
        # TorchANI's cell list takes one structure at a time (no batches with PBC): one
        # backward per batch of all frames, as ours
        for b in range(len(ds)):
            x = coords[b:b + 1].clone().requires_grad_(True)
            e = model((species[b:b + 1], x), cells[b], pbc).energies
            (g,) = torch.autograd.grad(e.sum(), x, create_graph=True)
            loss = loss + 10.0 * ((e.double() - E_ref[b]) / n) ** 2 + ((-g - F_ref[b:b + 1]) ** 2).mean()
        loss.sum().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return {"library": library, "mode": "train", "frames": len(ds), "n_atoms": n, "threads": threads,
            "dtype": dtype, "s_per_epoch": float(np.mean(times[1:])) if len(times) > 1 else times[0],
            "setup_s": 0.0, "epochs_timed": len(times) - 1, "neighbour_list": info["neighbour_list"],
            "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30}


# ----------------------------------------------------------------------------- driver
def have_torchani() -> str | None:
    """TorchANI's version, or None when it cannot be imported."""
    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_check_torchani"],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "TORCHANI_NO_WARN_EXTENSIONS": "1"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _run_child(args, spec, before=None):
    """One child process; ``before``: a checkout whose ase_mlff the child imports (``--before``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TORCHANI_NO_WARN_EXTENSIONS": "1"}
    cwd = None
    if before is not None:
        env["PYTHONPATH"] = os.path.abspath(before)
        cwd = tempfile.mkdtemp(prefix="bpnn-before-")  # outside both checkouts
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec), "--model", args.model,
           "--dtype", args.dtype, "--steps", str(args.steps), "--threads", str(args.threads), "--skin",
           str(args.skin), "--epochs", str(args.epochs)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    finally:
        if cwd is not None:
            os.rmdir(cwd)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        res = {**spec, "error": (out.stderr.strip() or out.stdout.strip())[-1500:]}
    else:
        res = json.loads(lines[-1])
    if before is not None:
        res["library"] = "ase-mlff (before)"
    return res


def _ratio_line(current, before):
    """current / before of time per step and peak memory, one line."""
    if "error" in current or "error" in before:
        return None
    return (f"# {current['n_atoms']} atoms: current / before = "
            f"{current['s_per_step_best'] / before['s_per_step_best']:.3g} time per step "
            f"({current['us_per_atom_best']:.3g} vs {before['us_per_atom_best']:.3g} µs/atom), "
            f"{current['peak_rss_GiB'] / before['peak_rss_GiB']:.3g} peak RSS "
            f"({current['peak_rss_GiB']:.3g} vs {before['peak_rss_GiB']:.3g} GiB)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="our water model (default potentials/water_bpnn.mlff; 'none': an untrained one of the "
                        "same shape)")
    p.add_argument("--library", choices=["both", "ase-mlff", "torchani"], default="both")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4],
                   help="repetitions of the 192-atom box along each axis (default 1 2 4)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per size (best of them is reported)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")),
                   help="torch/OMP threads of every child (default 2 or $BENCH_THREADS)")
    p.add_argument("--skin", type=float, default=0.0, help="neighbour-list skin (Å) of both libraries (default 0)")
    p.add_argument("--epochs", type=int, default=None,
                   help="timed training epochs (default 3, --quick 1; 0: no training benchmark)")
    p.add_argument("--quick", action="store_true", help="192 atoms, 2 timed steps, 1 training epoch")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--before", default=None, metavar="DIR",
                   help="also time the ase_mlff of the checkout DIR (extension built) beside this one: "
                        "rows 'ase-mlff (before)' and ratios current / before")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_check_torchani", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._check_torchani:
        print(_import_torchani().__version__)
        return 0
    if a._child is not None:
        spec = json.loads(a._child)
        a.epochs = 1 if a.epochs is None else a.epochs
        if spec["mode"] == "md":
            res = child_md(spec["library"], a.model, spec["rep"], a.dtype, a.steps, a.threads, a.skin)
        else:
            res = child_train(spec["library"], a.model, a.dtype, a.epochs, a.threads)
        print(json.dumps(res))
        return 0
    if a.quick:
        a.sizes, a.steps = [1], 2
    if a.epochs is None:
        a.epochs = 1 if a.quick else 3
    libs = ["ase-mlff", "torchani"] if a.library == "both" else [a.library]
    version = have_torchani() if "torchani" in libs else None
    if "torchani" in libs and version is None:
        print("# torchani cannot be imported here: its rows are skipped (pip install torchani --no-deps)",
              flush=True)
        libs.remove("torchani")
    print(f"# threads {a.threads}, dtype {a.dtype}, skin {a.skin} Å, best of {a.steps} steps; torchani "
          f"{version or 'not used'}", flush=True)
    if a.before is not None and not os.path.isdir(os.path.join(a.before, "ase_mlff")):
        p.error(f"--before {a.before}: no ase_mlff package there")
    results = []
    for rep in a.sizes:
        for lib in libs:
            r = _run_child(a, {"mode": "md", "library": lib, "rep": rep})
            results.append(r)
            print(json.dumps(r), flush=True)
            if lib == "ase-mlff" and a.before is not None:
                old = _run_child(a, {"mode": "md", "library": lib, "rep": rep}, before=a.before)
                results.append(old)
                print(json.dumps(old), flush=True)
                line = _ratio_line(r, old)
                if line:
                    print(line, flush=True)
            mine = os.path.join(ROOT, "ase_mlff")
            if lib == "ase-mlff" and r.get("ase_mlff") and os.path.realpath(r["ase_mlff"]) != os.path.realpath(mine):
                print(f"# note: the current rows imported {r['ase_mlff']}, not {mine} (set PYTHONPATH)", flush=True)
    if a.epochs > 0:
        for lib in libs:
            r = _run_child(a, {"mode": "train", "library": lib})
            results.append(r)
            print(json.dumps(r), flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"torchani": version, "threads": a.threads, "results": results}, fh, indent=1)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
