"""SchNet (ase-mlff) against SchNetPack 2.2 running the same architecture: cost per MD step
through each library's ASE calculator, peak memory, and training time per epoch.

    python benchmarks/schnet.py               # both libraries, all systems, training epochs
    python benchmarks/schnet.py --quick       # paracetamol and the 1,536-atom box, 2 timed steps, 1 epoch
    python benchmarks/schnet.py --systems water4 --steps 10 --skin 0
    python benchmarks/schnet.py --quick --spk-nl vesin matscipy ase   # SchNetPack's neighbour lists
    python benchmarks/schnet.py --library ase-mlff --before /work/before   # this build against an older one

Systems: paracetamol (20 atoms, frame 0 of rMD17's ``rmd17_paracetamol_test_01.npz`` in
``$ASE_MLFF_DATA/rmd17``, benchmarks/public_data.py;
energy + forces) and liquid water, the 192-atom DeePMD frame of
``tests/data/water_deepmd_4.extxyz`` repeated 2x2x2 (1,536 atoms) and 4x4x4 (12,288 atoms),
periodic (energy + forces + stress). Without the rMD17 file the molecule is ethanol from
``tests/data/rmd17_ethanol_300.npz`` (9 atoms) and its rows say "ethanol (fallback)".

Our MD step goes through SchNet's serving path (docs/schnet.md: the compiled core, each
block's filter network tabulated as cubic Hermite pieces, the whole network and a hand-written
backward pass in plain C++), which gives the network's numbers to float32 rounding (the
``check`` lines compare with SchNetPack's); ``--autograd`` adds a row of ours differentiating
the network itself by autograd, SchNetPack's way.

``--before DIR`` times an older build of ase-mlff beside this one: DIR is a checkout with its
extension built (e.g. a ``git worktree`` of the commit before a change, ``python setup.py
build_ext --inplace``). Its MD children run this script with ``PYTHONPATH=DIR`` from a
directory outside both checkouts (each child reports the ``ase_mlff`` it imported, and the
driver refuses a row that did not come from DIR); their rows say "ase-mlff (before)", and
``now/before`` gives this build's time and memory growth over the older one's.

The same network in both libraries. Ours is a fresh ``SchNetModel`` (F = 64 features, T = 3
interaction blocks, K = 25 Gaussians, cutoff 5 Å; ``--features/--interactions/--rbf/--cutoff``)
with seeded random weights. SchNetPack's is ``NeuralNetworkPotential(SchNet(n_atom_basis=F,
n_interactions=T, GaussianRBF(K, cutoff) on [0, cutoff] (width = spacing, as ours),
CosineCutoff(cutoff), n_filters=F, shared_interactions=False, activation=shifted_softplus),
Atomwise(n_in=F, n_hidden=None, n_layers=2, activation=shifted_softplus))``: with
``n_hidden=None`` and two layers its output network is F -> F/2 -> 1 with the shifted softplus
between, like ours. Each interaction block is in2f (no bias), filter Dense(K, F)-ssp-Dense(F, F)
times the cosine cutoff, the sum over neighbours, f2out Dense(F, F)-ssp-Dense(F, F) and a
residual update, in both. Before timing, SchNetPack's model gets a copy of our random weights
(its embedding rows for our elements, every Dense layer's weight and bias), so both compute the
same function; the first call of every child records its energy, some forces and the stress,
and the driver checks that the two libraries agree (``check`` lines; exit status 1 when not).
The cost does not depend on the weight values. Both run in float32.

What is not identical, by design of each library: SchNetPack's embedding is a table of 100
rows indexed by Z (ours: one row per element, after a Z -> row lookup); our per-atom energies
are summed in float64 after the float32 network (SchNetPack sums in float32); SchNetPack's
Strain module deforms positions and pair offsets with a non-symmetric strain (ours symmetric:
the same stress for a rotation-invariant energy); our calculator also returns per-atom
energies. Each library builds its own input from the ``ase.Atoms`` on every call (SchNetPack:
``AtomsConverter``, a dict of tensors cast to float32; ours: ``graph_from_structure``).

Neighbour lists: ours is the calculator's (C++ cell list, Verlet skin ``--skin``). SchNetPack's
is ``--spk-nl``, by default ``vesin``, the fastest of its lists, all of which give the same
pairs (building one, through its ``AtomsConverter``, one thread, busy machine: 1,536 atoms
vesin 14 ms, matscipy 34 ms, ASE 1,070 ms; 12,288 atoms vesin 112 ms, matscipy 284 ms).
``TorchNeighborList`` is run for the molecule only: with periodic cells it fails under torch
2.13 (``arange()`` given a tensor bound) and it would build all N² pairs per periodic image.
With ``--skin > 0`` (default 0.5 Å, our calculator's default) SchNetPack's list is wrapped in
its ``SkinNeighborList(cutoff_skin=skin)``, which, like ours, builds for cutoff + skin, reuses
the list while no atom has moved more than half the skin, and passes on only the pairs within
the cutoff (then the list kinds cost about the same per call: the reuse test and the
filtering, ~12-16 ms at 1,536 atoms, ~95 ms at 12,288). ``--skin 0`` rebuilds both lists on
every call. ``--spk-nl a b c`` gives one SchNetPack row per list to compare them.

Each (library, system) runs in its own child process, so that its peak resident memory
(``ru_maxrss``) is its own. Both use the same number of torch threads (``--threads``, default
2; OMP/MKL threads are set to it as well). Time per step is the best of ``--steps`` timed steps
after one untimed warm-up step (each step displaces the atoms by ~1e-3 Å, as an MD step does,
with the same random stream in both libraries); the median is printed too. Memory: ``peak MB``
is the child's peak RSS (Python, torch, the library's imports and the model included); ``+MB``
is the peak minus the RSS reached before the first call, the part that grows with the system,
and ``KB/atom`` that per atom (from 1,000 atoms on), which should be about the same at 1,536
and 12,288 atoms if memory is linear.

Training: ``--frames`` (100) molecule frames (energies and forces of rMD17, kcal/mol -> eV,
mean energy subtracted), batches of ``--batch`` (10) in the same shuffled order, loss
``mean(((E - E_ref) / N)²) + mean((F - F_ref)²)``, Adam (lr 1e-4), forces by double backward
in both. Ours: ``FrameGraphs`` (each frame's neighbour list once), ``batch_graphs`` and
``model.compute(graph, forces=True, create_graph=True)``, as the shared trainer does.
SchNetPack's: each frame's input dict with its neighbour list (the first ``--spk-nl``) computed
once (as its data module caches them), collated per batch by its ``_atoms_collate_fn`` and run
through its model in training mode (``Forces`` keeps the graph). The neighbour lists are built
before the epochs and reported as ``setup``; the collation of each batch is in the epoch time
of both. The first epoch is not timed. This is a bare loop for both: SchNetPack's Lightning
``AtomisticTask`` and our trainer's bookkeeping (validation, checkpoints) are left out.

SchNetPack is optional and is never a dependency of this package. 2.2.0 declares Python >= 3.12
and a long list of requirements (tensorboard, black, pre-commit, pytest...), of which it
imports only a few; on Python 3.11, without letting pip replace torch::

    echo torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])') > /tmp/c.txt
    pip download --no-deps --ignore-requires-python -d /tmp/spk schnetpack==2.2.0
    pip install --no-deps /tmp/spk/schnetpack-2.2.0-py3-none-any.whl
    pip install -c /tmp/c.txt pytorch_lightning torchmetrics tqdm rich hydra-core fasteners \\
        torch-ema matscipy vesin tensorboardX progressbar petname dirsync sympy

Its data loader imports a private TypeVar of torch's DataLoader module (``_T_co``; ``T_co`` in
older releases); where the running torch lacks it, :func:`_import_schnetpack` defines it
before the import (a type annotation is all it is used for). Without SchNetPack the script
says so and the ase-mlff rows still run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WATER = os.path.join(ROOT, "tests", "data", "water_deepmd_4.extxyz")
sys.path.insert(0, HERE)
import public_data  # noqa: E402  (where the reference data come from and must be put)

PARACETAMOL = public_data.path("rmd17", "rmd17_paracetamol_test_01.npz", must_exist=False)
ETHANOL = os.path.join(ROOT, "tests", "data", "rmd17_ethanol_300.npz")
KCAL_MOL = 0.0433641043  # eV
SYSTEMS = {"paracetamol": None, "water1": 1, "water2": 2, "water4": 4, "water8": 8}
DEFAULT_SYSTEMS = ["paracetamol", "water2", "water4"]
SPK_LISTS = ("vesin", "matscipy", "ase", "torch")


# ----------------------------------------------------------------------------- data
def molecule_file() -> tuple[str, str]:
    """(path, name) of the molecule data: rMD17 paracetamol when present, else ethanol from tests/data."""
    if os.path.exists(PARACETAMOL):
        return PARACETAMOL, "paracetamol"
    return ETHANOL, "ethanol (fallback)"


def molecule_frames(n: int | None = None):
    """Atoms of the first ``n`` frames with energies and forces in eV (mean energy subtracted)."""
    import numpy as np
    from ase import Atoms

    path, _ = molecule_file()
    with np.load(path) as d:
        z = np.asarray(d["nuclear_charges"], dtype=int)
        k = len(d["coords"]) if n is None else min(n, len(d["coords"]))
        pos = np.asarray(d["coords"][:k], dtype=float)
        energy = np.asarray(d["energies"][:k], dtype=float) * KCAL_MOL
        forces = np.asarray(d["forces"][:k], dtype=float) * KCAL_MOL
    energy = energy - energy.mean()
    return [Atoms(numbers=z, positions=p) for p in pos], energy, forces


def system(name: str):
    from ase.io import read

    if name == "paracetamol":
        atoms, _, _ = molecule_frames(1)
        return atoms[0]
    return read(WATER, index=0).repeat(SYSTEMS[name])


def system_label(name: str) -> str:
    return molecule_file()[1] if name == "paracetamol" else f"water {SYSTEMS[name]}x{SYSTEMS[name]}x{SYSTEMS[name]}"


# ----------------------------------------------------------------------------- models
def our_model(args, species):
    """A fresh SchNetModel, float32, weights from a fixed seed (the same in every child)."""
    import torch

    from ase_mlff.models.schnet import SchNetModel

    torch.manual_seed(0)
    return SchNetModel(species, cutoff=args.cutoff, n_features=args.features, n_interactions=args.interactions,
                       n_rbf=args.rbf, dtype="float32")


def _import_schnetpack():
    """Import schnetpack. Its data loader imports ``_T_co`` (``T_co`` in older releases) from
    ``torch.utils.data.dataloader``, a private TypeVar that some torch releases do not define;
    a covariant TypeVar of that name stands in where it is missing (only annotations use it)."""
    import typing
    import warnings

    import torch.utils.data.dataloader as loader

    for name in ("T_co", "_T_co"):
        if not hasattr(loader, name):
            setattr(loader, name, typing.TypeVar(name, covariant=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import schnetpack
    return schnetpack


def spk_model(ours, periodic: bool):
    """SchNetPack's NeuralNetworkPotential of the same architecture as ``ours``, with a copy of
    its weights. ``periodic``: a Strain input module (SpkCalculator then adds the stress)."""
    import torch

    spk = _import_schnetpack()
    c = ours.get_config()
    F, T, K, rc = c["n_features"], c["n_interactions"], c["n_rbf"], float(c["cutoff"])
    ssp = spk.nn.shifted_softplus
    representation = spk.representation.SchNet(
        n_atom_basis=F, n_interactions=T, radial_basis=spk.nn.GaussianRBF(n_rbf=K, cutoff=rc),
        cutoff_fn=spk.nn.CosineCutoff(rc), n_filters=F, shared_interactions=False, activation=ssp)
    energy = spk.atomistic.Atomwise(n_in=F, n_out=1, n_hidden=None, n_layers=2, activation=ssp,
                                    output_key="energy")
    inputs = ([spk.atomistic.Strain()] if periodic else []) + [spk.atomistic.PairwiseDistances()]
    forces = spk.atomistic.Forces(calc_forces=True, calc_stress=False, energy_key="energy", force_key="forces")
    model = spk.model.NeuralNetworkPotential(representation=representation, input_modules=inputs,
                                             output_modules=[energy, forces], do_postprocessing=False)
    with torch.no_grad():
        emb = model.representation.embedding.weight
        for row, z in enumerate(ours.species):
            emb[z] = ours.embedding.weight[row]
        pairs = []
        for mine, theirs in zip(ours.interactions, model.representation.interactions):
            pairs += [(mine.in2f, theirs.in2f), (mine.filter1, theirs.filter_network[0]),
                      (mine.filter2, theirs.filter_network[1]), (mine.f2out1, theirs.f2out[0]),
                      (mine.f2out2, theirs.f2out[1])]
        pairs += [(ours.output[0], energy.outnet[0]), (ours.output[2], energy.outnet[1])]
        for mine, theirs in pairs:
            assert mine.weight.shape == theirs.weight.shape, (mine, theirs)
            theirs.weight.copy_(mine.weight)
            assert (mine.bias is None) == (theirs.bias is None), (mine, theirs)
            if mine.bias is not None:
                theirs.bias.copy_(mine.bias)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_spk = sum(p.numel() for p in model.parameters()) - emb.numel() + len(ours.species) * F
    assert n_ours == n_spk, (n_ours, n_spk)  # the same parameters, the embedding rows of our elements
    return model.float()


def spk_neighbor_list(name: str, cutoff: float, skin: float):
    """SchNetPack's neighbour list transform ``name``, in its SkinNeighborList when skin > 0."""
    spk = _import_schnetpack()
    t = spk.transform
    nl = {"ase": t.ASENeighborList, "matscipy": t.MatScipyNeighborList, "vesin": t.VesinNeighborList,
          "torch": t.TorchNeighborList}[name](cutoff=cutoff)
    return t.SkinNeighborList(nl, cutoff_skin=skin) if skin > 0 else nl


# ----------------------------------------------------------------------------- children
def _threads(n):
    import torch

    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _voigt(stress):
    import numpy as np

    s = np.asarray(stress, dtype=float)
    if s.shape == (3, 3):
        s = np.array([s[0, 0], s[1, 1], s[2, 2], 0.5 * (s[1, 2] + s[2, 1]), 0.5 * (s[0, 2] + s[2, 0]),
                      0.5 * (s[0, 1] + s[1, 0])])
    return s.ravel()


def _time_steps(atoms, props, steps):
    """Per-call times (the first is the untimed warm-up) and the first call's results."""
    import numpy as np

    rng = np.random.default_rng(0)
    times, first = [], None
    for _ in range(steps + 1):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        t = time.perf_counter()
        atoms.calc.calculate(atoms, props, ["positions"])
        times.append(time.perf_counter() - t)
        r = atoms.calc.results
        f = np.asarray(r["forces"], dtype=float)
        assert np.isfinite(r["energy"]) and f.shape == (len(atoms), 3) and np.isfinite(f).all()
        if "stress" in props:
            assert np.size(r["stress"]) in (6, 9) and np.isfinite(r["stress"]).all()
        if first is None:
            first = {"energy": float(r["energy"]), "forces_head": f[:50].tolist(),
                     "fmax": float(np.abs(f).max()),
                     "stress": _voigt(r["stress"]).tolist() if "stress" in props else None,
                     "forces_shape": list(f.shape),
                     "stress_shape": list(np.shape(r["stress"])) if "stress" in props else None}
    return times, first


def child_md(spec, args):
    import numpy as np

    _threads(args.threads)
    name, library = spec["system"], spec["library"]
    atoms = system(name)
    periodic = bool(atoms.pbc.any())
    props = ["energy", "forces", "stress"] if periodic else ["energy", "forces"]
    ours = our_model(args, atoms.numbers)
    if library == "ase-mlff":
        from ase_mlff.calculator import MLFFCalculator

        if spec.get("path") == "autograd":
            ours.analytic_devices = ()  # the network itself, differentiated by autograd
        import ase_mlff

        atoms.calc = MLFFCalculator(ours, dtype="float32", skin=args.skin)
        extra = {"neighbour_list": f"ase-mlff cell list (skin {args.skin} Å)", "path": spec.get("path", "serving"),
                 "before": spec.get("before"), "ase_mlff": os.path.dirname(os.path.dirname(ase_mlff.__file__))}
    else:
        import tempfile

        import torch

        spk = _import_schnetpack()
        model = spk_model(ours, periodic)
        del ours
        nl = spk_neighbor_list(spec["nl"], args.cutoff, args.skin)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "schnet.pt")
            torch.save(model, path)
            del model
            atoms.calc = spk.interfaces.SpkCalculator(
                path, neighbor_list=nl, energy_key="energy", force_key="forces",
                stress_key="stress" if periodic else None, energy_unit="eV", position_unit="Angstrom",
                device="cpu", dtype=torch.float32)
        extra = {"neighbour_list": f"{type(nl).__name__}" + (f"({spec['nl']}, skin {args.skin} Å)" if args.skin > 0
                                                              else "")}
    setup_mb = _rss_mb()
    times, first = _time_steps(atoms, props, args.steps)
    return {"mode": "md", "library": library, "system": name, "label": system_label(name), "n_atoms": len(atoms),
            "nl": spec.get("nl"), "properties": props, "threads": args.threads,
            "s_per_step_best": float(min(times[1:])), "s_per_step_median": float(np.median(times[1:])),
            "first_call_s": times[0], "timed_steps": len(times) - 1, "setup_MB": setup_mb, "peak_MB": _rss_mb(),
            "first": first, **extra}


def child_train(spec, args):
    import numpy as np
    import torch

    _threads(args.threads)
    frames, energy, forces = molecule_frames(args.frames)
    n_atoms = len(frames[0])
    ours = our_model(args, frames[0].numbers)
    rng = np.random.default_rng(1)
    orders = [rng.permutation(len(frames)) for _ in range(args.epochs + 1)]
    e_ref = torch.tensor(energy, dtype=torch.float64)
    f_ref = [torch.tensor(f, dtype=torch.float32) for f in forces]
    library = spec["library"]
    if library == "ase-mlff":
        from ase_mlff.graph import FrameGraphs

        model = ours
        t0 = time.perf_counter()
        graphs = FrameGraphs(frames, model.cutoff, dtype=torch.float32)
        for k in range(len(frames)):
            graphs[k]

        def step(idx):
            out = model.compute(graphs.batch(idx), forces=True, create_graph=True)
            return out.energy, out.forces
    else:
        _import_schnetpack()
        from schnetpack import properties as P
        from schnetpack.data.loader import _atoms_collate_fn

        model = spk_model(ours, periodic=False)
        del ours
        nl = spk_neighbor_list(spec["nl"], args.cutoff, 0.0)
        t0 = time.perf_counter()
        cached = []
        for k, a in enumerate(frames):
            inp = {P.n_atoms: torch.tensor([len(a)]), P.Z: torch.from_numpy(a.numbers.astype(np.int64)),
                   P.R: torch.tensor(a.positions, dtype=torch.float32),
                   P.cell: torch.zeros((1, 3, 3), dtype=torch.float32), P.pbc: torch.zeros((1, 3), dtype=bool),
                   P.idx: torch.tensor([k])}
            cached.append(nl(inp))

        def step(idx):
            res = model(_atoms_collate_fn([cached[int(k)] for k in idx]))
            return res["energy"], res["forces"]
    model.train()
    setup = time.perf_counter() - t0
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times, losses = [], []
    for order in orders:
        t = time.perf_counter()
        total = 0.0
        for b in range(0, len(order), args.batch):
            idx = order[b:b + args.batch]
            e, f = step(idx)
            le = (((e.double() - e_ref[idx]) / n_atoms) ** 2).mean()
            lf = ((f - torch.cat([f_ref[int(k)] for k in idx])) ** 2).mean()
            loss = le + lf
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        times.append(time.perf_counter() - t)
        losses.append(total / math.ceil(len(order) / args.batch))
    assert all(math.isfinite(v) for v in losses), losses
    return {"mode": "train", "library": library, "label": molecule_file()[1], "frames": len(frames),
            "n_atoms": n_atoms, "batch": args.batch, "threads": args.threads, "nl": spec.get("nl"),
            "s_per_epoch": float(np.mean(times[1:])) if len(times) > 1 else times[0],
            "epochs_timed": len(times) - 1, "setup_s": setup, "loss_first": losses[0], "loss_last": losses[-1],
            "peak_MB": _rss_mb()}


# ----------------------------------------------------------------------------- driver
def have_schnetpack() -> str | None:
    """SchNetPack's version, or None when it cannot be imported."""
    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_check_schnetpack"],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def _run_child(args, spec):
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cwd = None
    if spec.get("before"):  # the older build: its package first, run from outside both checkouts
        import tempfile

        env["PYTHONPATH"] = spec["before"]
        cwd = tempfile.gettempdir()
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec), "--steps", str(args.steps),
           "--threads", str(args.threads), "--skin", str(args.skin), "--epochs", str(args.epochs),
           "--frames", str(args.frames), "--batch", str(args.batch), "--features", str(args.features),
           "--interactions", str(args.interactions), "--rbf", str(args.rbf), "--cutoff", str(args.cutoff)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {**spec, "error": (out.stderr.strip() or out.stdout.strip())[-1500:]}
    res = json.loads(lines[-1])
    if spec.get("before") and os.path.realpath(res.get("ase_mlff", "")) != os.path.realpath(spec["before"]):
        return {**spec, "error": f"the 'before' child imported ase_mlff from {res.get('ase_mlff')}, not "
                                 f"{spec['before']} (is it a checkout with ase_mlff/ at its top?)"}
    return res


def compare(ours: dict, theirs: dict) -> tuple[bool, str]:
    """Do the first calls of the two libraries agree (same weights, same positions)?"""
    import numpy as np

    a, b = ours["first"], theirs["first"]
    n = ours["n_atoms"]
    de = abs(a["energy"] - b["energy"]) / n
    df = float(np.abs(np.asarray(a["forces_head"]) - np.asarray(b["forces_head"])).max())
    scale = 1.0 + max(a["fmax"], b["fmax"])
    ok = de < 1e-4 and df < 1e-3 * scale and a["forces_shape"] == b["forces_shape"]
    text = f"|dE|/N {de:.1e} eV, max|dF| {df:.1e} eV/Å (first 50 atoms; max|F| {a['fmax']:.2f})"
    if a["stress"] is not None or b["stress"] is not None:
        if a["stress"] is None or b["stress"] is None:
            return False, text + ", stress from one library only"
        ds = float(np.abs(np.asarray(a["stress"]) - np.asarray(b["stress"])).max())
        smax = float(np.abs(np.asarray(a["stress"])).max())
        ok = ok and ds < 1e-3 * (1e-3 + smax)
        text += f", max|dσ| {ds:.1e} eV/Å³ (max|σ| {smax:.1e}); shapes ours {a['stress_shape']}, " \
                f"schnetpack {b['stress_shape']}"
    return ok, text


def _fmt(v, width, spec):
    return format(v, f">{width}{spec}") if v is not None else "-".rjust(width)


def _is_mine(r) -> bool:
    """This build's serving-path row (not the autograd row, not an older build's)."""
    return r["library"] == "ase-mlff" and r.get("path") != "autograd" and not r.get("before")


def print_tables(results, spk_missing: str | None):
    """The MD and training tables; ``spk_missing``: why SchNetPack rows are absent (None: not asked)."""
    md = [r for r in results if r.get("mode") == "md" and "error" not in r]
    systems = []
    for r in md:
        if r["system"] not in systems:
            systems.append(r["system"])
    if md:
        print("\n## MD step (energy + forces, + stress for the periodic boxes), float32")
        head = (f"{'system':<22} {'atoms':>6} {'library':<22} {'ms/step':>9} {'median':>9} {'steps/s':>8} "
                f"{'peak MB':>8} {'+MB':>7} {'KB/atom':>8} {'spk/ours':>8} {'now/before':>10}")
        print(head)
        print("-" * len(head))
        for name in systems:
            rows = [r for r in md if r["system"] == name]
            mine = next((r for r in rows if _is_mine(r)), None)
            before = next((r for r in rows if r.get("before")), None)
            for r in rows:
                lib = (("ase-mlff (autograd)" if r.get("path") == "autograd" else
                        "ase-mlff (before)" if r.get("before") else "ase-mlff")
                       if r["library"] == "ase-mlff" else f"schnetpack ({r['nl']})")
                ms = 1e3 * r["s_per_step_best"]
                grown = r["peak_MB"] - r["setup_MB"]
                # per atom only where the atoms dominate (small systems: allocator noise)
                kb = grown * 1024 / r["n_atoms"] if r["n_atoms"] >= 1000 else None
                ratio = (r["s_per_step_best"] / mine["s_per_step_best"]
                         if mine is not None and r is not mine else None)
                now = (r["s_per_step_best"] / before["s_per_step_best"]
                       if before is not None and r is mine else None)
                print(f"{r['label']:<22} {r['n_atoms']:>6} {lib:<22} {ms:>9.2f} {1e3 * r['s_per_step_median']:>9.2f} "
                      f"{1 / r['s_per_step_best']:>8.1f} {r['peak_MB']:>8.0f} {grown:>7.0f} {_fmt(kb, 8, '.1f')} "
                      f"{_fmt(ratio, 8, '.2f')} {_fmt(now, 10, '.2f')}")
            if before is not None and mine is not None:
                grown_now, grown_before = mine["peak_MB"] - mine["setup_MB"], before["peak_MB"] - before["setup_MB"]
                print(f"{'':<22} {'':>6} now/before: time {mine['s_per_step_best'] / before['s_per_step_best']:.2f}, "
                      f"+MB {grown_now:.0f} / {grown_before:.0f}")
            if spk_missing is not None and not any(r["library"] == "schnetpack" for r in rows):
                print(f"{rows[0]['label']:<22} {rows[0]['n_atoms']:>6} {'schnetpack':<22} {spk_missing}")
    train = [r for r in results if r.get("mode") == "train" and "error" not in r]
    if train:
        t0 = train[0]
        print(f"\n## Training: {t0['frames']} frames of {t0['label']} ({t0['n_atoms']} atoms), batch {t0['batch']}, "
              f"energy + force loss, Adam, float32")
        head = (f"{'library':<22} {'s/epoch':>9} {'setup s':>8} {'peak MB':>8} {'loss 1st':>10} {'loss last':>10} "
                f"{'spk/ours':>8}")
        print(head)
        print("-" * len(head))
        mine = next((r for r in train if r["library"] == "ase-mlff"), None)
        rows = train + ([{"library": "schnetpack", "missing": True}]
                        if spk_missing is not None and not any(r["library"] == "schnetpack" for r in train) else [])
        for r in rows:
            if r.get("missing"):
                print(f"{'schnetpack':<22} {spk_missing}")
                continue
            lib = "ase-mlff" if r["library"] == "ase-mlff" else f"schnetpack ({r['nl']})"
            ratio = r["s_per_epoch"] / mine["s_per_epoch"] if mine is not None and r is not mine else None
            print(f"{lib:<22} {r['s_per_epoch']:>9.3f} {r['setup_s']:>8.3f} {r['peak_MB']:>8.0f} "
                  f"{r['loss_first']:>10.4g} {r['loss_last']:>10.4g} {_fmt(ratio, 8, '.2f')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", choices=["both", "ase-mlff", "schnetpack"], default="both")
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=DEFAULT_SYSTEMS,
                   help="paracetamol (20 atoms), water1 (192), water2 (1,536), water4 (12,288), water8 "
                        "(98,304); default paracetamol water2 water4")
    p.add_argument("--spk-nl", nargs="+", choices=SPK_LISTS, default=["vesin"],
                   help="SchNetPack neighbour list(s): one row each (default vesin, its fastest)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per system (best of them is reported)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")),
                   help="torch/OMP threads of every child (default 2 or $BENCH_THREADS)")
    p.add_argument("--skin", type=float, default=0.5,
                   help="neighbour-list skin (Å) of both libraries (default 0.5; 0 rebuilds every call)")
    p.add_argument("--epochs", type=int, default=None,
                   help="timed training epochs (default 3, --quick 1; 0: no training benchmark)")
    p.add_argument("--frames", type=int, default=100, help="training frames (default 100)")
    p.add_argument("--batch", type=int, default=10, help="training batch size (default 10)")
    p.add_argument("--features", type=int, default=64, help="F, atom features (default 64)")
    p.add_argument("--interactions", type=int, default=3, help="T, interaction blocks (default 3)")
    p.add_argument("--rbf", type=int, default=25, help="K, Gaussians (default 25)")
    p.add_argument("--cutoff", type=float, default=5.0, help="cutoff, Å (default 5)")
    p.add_argument("--autograd", action="store_true",
                   help="also time ours through autograd over the network (no tabulated serving path)")
    p.add_argument("--before", default=None, metavar="DIR",
                   help="also time the ase-mlff build in checkout DIR (its extension built): rows "
                        "'ase-mlff (before)' and this build's time over its (now/before)")
    p.add_argument("--quick", action="store_true", help="paracetamol and 1,536 atoms, 2 timed steps, 1 epoch")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_check_schnetpack", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._check_schnetpack:
        print(_import_schnetpack().__version__)
        return 0
    if a._child is not None:
        spec = json.loads(a._child)
        a.epochs = 1 if a.epochs is None else a.epochs
        res = child_md(spec, a) if spec["mode"] == "md" else child_train(spec, a)
        print(json.dumps(res))
        return 0
    if a.quick:
        a.systems = [s for s in a.systems if s != "water4"] or ["water2"]
        a.steps = 2
    if a.epochs is None:
        a.epochs = 1 if a.quick else 3
    libs = ["ase-mlff", "schnetpack"] if a.library == "both" else [a.library]
    version = have_schnetpack() if "schnetpack" in libs else None
    if "schnetpack" in libs and version is None:
        print("# schnetpack cannot be imported here: its rows are skipped (see the module docstring to install it)",
              flush=True)
        libs.remove("schnetpack")
    print(f"# threads {a.threads}, float32, skin {a.skin} Å, best of {a.steps} steps; SchNet F={a.features} "
          f"T={a.interactions} K={a.rbf} cutoff {a.cutoff} Å; schnetpack {version or 'not used'}; molecule: "
          f"{molecule_file()[1]}" + ("" if os.path.exists(PARACETAMOL) else f" ({PARACETAMOL} is missing: {public_data.describe('rmd17')})"), flush=True)
    if a.before:
        print(f"# before: the ase-mlff build in {os.path.abspath(a.before)}", flush=True)
    specs = []
    for name in a.systems:
        for lib in libs:
            if lib == "ase-mlff":
                specs.append({"mode": "md", "library": lib, "system": name})
                if a.autograd:
                    specs.append({"mode": "md", "library": lib, "system": name, "path": "autograd"})
                if a.before:
                    specs.append({"mode": "md", "library": lib, "system": name, "before": os.path.abspath(a.before)})
                continue
            for nl in a.spk_nl:
                if nl == "torch" and name != "paracetamol":
                    print(f"# schnetpack TorchNeighborList skipped for {name}: periodic cells fail under torch "
                          f"2.13, and it builds all N² pairs for every periodic image", flush=True)
                    continue
                specs.append({"mode": "md", "library": lib, "system": name, "nl": nl})
    if a.epochs > 0:
        for lib in libs:
            specs.append({"mode": "train", "library": lib, **({"nl": a.spk_nl[0]} if lib == "schnetpack" else {})})
    results = []
    for spec in specs:
        r = _run_child(a, spec)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "first"}), flush=True)
    bad = [r for r in results if "error" in r]
    checks_ok = True
    for name in a.systems:
        mine = next((r for r in results if r.get("system") == name and _is_mine(r) and "error" not in r), None)
        for r in results:
            if mine is None or r.get("system") != name or "error" in r:
                continue
            if r["library"] == "schnetpack":
                who = f"schnetpack ({r['nl']})"
            elif r.get("before"):
                who = "ase-mlff (before)"
            else:
                continue
            ok, text = compare(mine, r)
            checks_ok = checks_ok and ok
            print(f"# check {name} {who} vs ase-mlff: {'same' if ok else 'DIFFERENT'}: {text}")
    if "schnetpack" in libs:
        spk_missing = "(failed: see the error below)"
    elif a.library != "ase-mlff":
        spk_missing = "(not installed: no row)"
    else:
        spk_missing = None
    print_tables(results, spk_missing)
    for r in bad:
        print(f"\n# error in {r}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"schnetpack": version, "threads": a.threads, "skin": a.skin, "results": results}, fh, indent=1)
    return 1 if bad or not checks_ok else 0


if __name__ == "__main__":
    sys.exit(main())
