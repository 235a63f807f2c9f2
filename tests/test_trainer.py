"""The shared neural-network trainer (ase_mlff.training.trainer): it learns, reference energies
by least squares, float64 totals from a float32 network, interrupt + resume = uninterrupted,
a real signal leaves existing files alone, the CLI exit codes, and data-parallel training with
two processes gives the single-process loss curve.

The model trained here is a tiny per-element MLP on radial features defined below (the test
does not wait for a real family); it follows the hooks of docs/nn_training.md."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ase_mlff.errors import OutputExistsError
from ase_mlff.models.base import Model, register_model
from ase_mlff.training.checkpoint import TrainingInterrupted
from ase_mlff.training.trainer import (TrainerOptions, fit_reference_energies, main, pack_state,
                                       train_network, unpack_state)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = os.path.join(os.path.dirname(__file__), "data")
NI = os.path.join(DATA, "ni_mlearn_20.extxyz")
MO = os.path.join(DATA, "mo_mlearn_10.extxyz")


@register_model
class PairMLP(Model):
    """E_i = e0[Z_i] + s · MLP_{Z_i}((G_i − μ)/σ), G_ik = Σ_j exp(−(r_ij − μ_k)²/0.5) f_c(r_ij).

    e0 and s live in the config (JSON, float64) as the trainer's hooks recommend; μ, σ are
    buffers set by ``fit_scaling``."""

    family = "test_pair_mlp"

    def __init__(self, species=(28,), cutoff=4.0, n_basis=6, hidden=8, dtype="float64",
                 reference_energies=None, energy_scale=1.0, init_seed=0):
        e0 = [0.0] * len(set(species)) if reference_energies is None else [float(v) for v in reference_energies]
        super().__init__(species, cutoff, {"n_basis": n_basis, "hidden": hidden, "dtype": dtype,
                                           "reference_energies": e0, "energy_scale": float(energy_scale),
                                           "init_seed": init_seed})
        dt = getattr(torch, dtype)
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            self.nets = torch.nn.ModuleList(
                torch.nn.Sequential(torch.nn.Linear(n_basis, hidden, dtype=dt), torch.nn.Tanh(),
                                    torch.nn.Linear(hidden, 1, dtype=dt)) for _ in self.species)
        self.register_buffer("centers", torch.linspace(1.5, cutoff, n_basis, dtype=dt))
        self.register_buffer("mean", torch.zeros(n_basis, dtype=dt))
        self.register_buffer("std", torch.ones(n_basis, dtype=dt))

    def features(self, graph):
        i, _ = graph.edge_index
        r = torch.linalg.norm(graph.edge_vectors(), dim=1)
        fc = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        g = torch.exp(-((r[:, None] - self.centers) ** 2) / 0.5) * fc[:, None]
        return torch.zeros((graph.n_atoms, len(self.centers)), dtype=g.dtype, device=g.device).index_add(0, i, g)

    def forward(self, graph):
        s = self.species_index(graph.numbers)
        x = (self.features(graph) - self.mean) / self.std
        y = torch.zeros(graph.n_atoms, dtype=x.dtype, device=x.device)
        for k, net in enumerate(self.nets):
            y = torch.where(s == k, net(x).squeeze(-1), y)
        e0 = torch.tensor(self.config["reference_energies"], dtype=torch.float64, device=x.device)
        # the reference energies are added in float64, whatever the network's dtype
        return e0[s] + self.config["energy_scale"] * y.to(torch.float64)

    def set_reference_energies(self, e0, energy_scale=None):
        self.config["reference_energies"] = [float(v) for v in e0]
        if energy_scale is not None:
            self.config["energy_scale"] = float(energy_scale)

    def fit_scaling(self, graphs):
        with torch.no_grad():
            x = torch.cat([self.features(graphs[k]) for k in range(len(graphs))])
            self.mean.copy_(x.mean(0))
            self.std.copy_(x.std(0).clamp_min(1e-6))


@pytest.fixture(scope="module")
def ni():
    from ase_mlff import data

    return list(data.read(NI))


def _small(ni):
    # the six smallest cells (6-40 atoms): cheap steps
    return sorted(ni, key=len)[:6]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------- statistics
def test_reference_energies_recover_known_values():
    from ase_mlff.data import Frame

    rng = np.random.default_rng(1)
    e0 = {1: -13.6, 8: -2041.3, 6: -1027.5}
    frames = []
    for _ in range(12):
        numbers = rng.choice([1, 6, 8], size=rng.integers(3, 9))
        energy = sum(e0[int(z)] for z in numbers) + 1e-3 * rng.normal()
        frames.append(Frame(numbers, rng.normal(size=(len(numbers), 3)), energy=energy))
    fit, rank = fit_reference_energies(frames, [1, 6, 8])
    assert rank == 3 and fit.dtype == np.float64
    np.testing.assert_allclose(fit, [e0[1], e0[6], e0[8]], atol=2e-3)


def test_checkpoint_state_round_trip_is_exact():
    opt_state = {0: {"step": torch.tensor(3.0), "m": torch.randn(4, dtype=torch.float32)}}
    state = {"a": [1, 2.5, None, "x", math.inf], "t": (torch.arange(3), np.array([0.1, 0.2])),
             "opt": opt_state, "big": 2**100, "u8": torch.tensor([0, 255], dtype=torch.uint8)}
    js, arrays = pack_state(state)
    back = unpack_state(js, arrays)
    assert back["a"] == [1, 2.5, None, "x", math.inf] and back["big"] == 2**100
    assert list(back["opt"]) == [0] and back["opt"][0]["m"].dtype == torch.float32
    assert torch.equal(back["opt"][0]["m"], opt_state[0]["m"]) and back["u8"].dtype == torch.uint8
    assert isinstance(back["t"], tuple) and isinstance(back["t"][1], np.ndarray)


# ---------------------------------------------------------------------------------- learning
def test_training_lowers_validation_force_error(ni):
    """On real Ni frames the validation force MAE falls well below predicting zero forces
    (0.39 eV/Å on this set) and below its value after the first epoch."""
    order = np.random.default_rng(0).permutation(len(ni))
    train = [ni[k] for k in order[:14]]
    valid = [ni[k] for k in order[14:]]
    model = PairMLP(species=[28], cutoff=4.0, hidden=16, dtype="float32")
    opts = TrainerOptions(epochs=25, batch_size=4, lr=5e-3, patience=0, ema=0.9, seed=0)
    model, rec = train_network(model, train, valid, opts, plots=False)
    zero = np.mean(np.abs(np.concatenate([f.forces.ravel() for f in valid])))
    first, best = rec.history[0]["valid_forces_mae"], rec.best["valid_forces_mae"]
    assert best < 0.6 * zero, (best, zero)
    assert best < 0.8 * first, (best, first)
    assert rec.best["valid_energy_mae"] < 0.05  # eV/atom
    assert rec.stopped == "epochs" and len(rec.history) == 25


def test_float32_training_gives_float64_totals(ni):
    """A float32 network with reference energies of -1000 eV/atom: totals are float64 and equal
    the float64 evaluation of the same weights to 1e-3 eV (float32 sums would be off by ~0.01 eV)."""
    from ase_mlff.calculator import MLFFCalculator
    from ase_mlff.graph import graph_from_structure

    frames = []
    for f in _small(ni):
        g = f.copy()
        g.energy -= 1000.0 * len(g)
        frames.append(g)
    model = PairMLP(species=[28], dtype="float32")
    model, rec = train_network(model, frames[:4], frames[4:], TrainerOptions(epochs=1, batch_size=2), plots=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert rec.reference_energies["Ni"] < -1000
    ref64 = PairMLP.from_config({**model.get_config(), "dtype": "float64"})
    ref64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    for f in frames:
        e32 = model.compute(graph_from_structure(f, model.cutoff, dtype=torch.float32), forces=False).energy
        e64 = ref64.compute(graph_from_structure(f, model.cutoff), forces=False).energy
        assert e32.dtype == torch.float64
        assert abs(float(e32[0]) - float(e64[0])) < 1e-3, (float(e32[0]), float(e64[0]))
    atoms = frames[0].to_atoms()
    atoms.calc = MLFFCalculator(model)
    assert abs(atoms.get_potential_energy() - float(ref64.compute(
        graph_from_structure(frames[0], model.cutoff), forces=False).energy[0])) < 1e-3


# ---------------------------------------------------------------------------------- nothing is lost
@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_interrupt_then_resume_equals_uninterrupted(ni, tmp_path, schedule):
    """float64: stopped mid-epoch (after the 5th of 12 safe points: 3 steps + 1 epoch end per
    epoch), resumed, the weights, optimizer-driven history and best epoch equal a run without
    interruption to 1e-6 relative."""
    frames = _small(ni)
    opts = TrainerOptions(epochs=3, batch_size=2, dtype="float64", schedule=schedule, warmup_epochs=1,
                          ema=0.9, lr=3e-3, seed=3)
    full, rec_full = train_network(PairMLP(dtype="float64"), frames[:5], frames[5:], opts, plots=False)

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(TrainingInterrupted) as info:
        train_network(PairMLP(dtype="float64"), frames[:5], frames[5:], opts, checkpoint=ckpt, plots=False,
                      stop_after=5)
    assert info.value.exit_code == 130 and ckpt.exists()
    resumed, rec = train_network(PairMLP(dtype="float64"), frames[:5], frames[5:], opts, checkpoint=ckpt,
                                 resume=True, plots=False)
    a, b = _weights(full), _weights(resumed)
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-6, atol=1e-12, err_msg=k)
    assert rec.best_epoch == rec_full.best_epoch
    np.testing.assert_allclose([h["valid_loss"] for h in rec.history],
                               [h["valid_loss"] for h in rec_full.history], rtol=1e-6)
    assert resumed.config["reference_energies"] == full.config["reference_energies"]


def test_bpnn_hook_interrupt_then_resume_equals_uninterrupted(tmp_path):
    """The BPNN trains through its training_batch hook (cached descriptor Jacobians, rebuilt
    on resume, never stored): stopped mid-run after the 4th of 6 safe points and resumed, it
    reaches the weights of the uninterrupted run."""
    from ase_mlff import data
    from ase_mlff.training.bpnn_train import prepare_model, repulsion_for

    frames = data.read(os.path.join(DATA, "rmd17_ethanol_300.npz"), index="0:60:10", energy_unit="kcal/mol").frames

    def model():
        m, _ = prepare_model(frames[:4], cutoff=3.5, hidden=(6,), n_radial=3, n_eta=2, zetas=(1,), dtype="float64",
                             seed=0)
        m.set_repulsion(repulsion_for(frames[:4], m.species, 3.5))
        return m

    opts = TrainerOptions(epochs=2, batch_size=2, dtype="float64", ema=0.9, lr=3e-3, seed=1, energy_weight=10.0,
                          force_weight=1.0)
    calls = []
    full = model()
    full.prepare_training_frame = lambda fr, _m=full: calls.append(1) or type(_m).prepare_training_frame(_m, fr)
    full, rec_full = train_network(full, frames[:4], frames[4:], opts, plots=False)
    assert len(calls) == 6  # one cache per training and validation frame, built once
    ckpt = tmp_path / "bpnn.ckpt"
    with pytest.raises(TrainingInterrupted):
        train_network(model(), frames[:4], frames[4:], opts, checkpoint=ckpt, plots=False, stop_after=4)
    resumed, rec = train_network(model(), frames[:4], frames[4:], opts, checkpoint=ckpt, resume=True, plots=False)
    a, b = _weights(full), _weights(resumed)
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-6, atol=1e-12, err_msg=k)
    np.testing.assert_allclose([h["valid_loss"] for h in rec.history],
                               [h["valid_loss"] for h in rec_full.history], rtol=1e-6)
    assert rec.best_epoch == rec_full.best_epoch


def test_resume_refuses_other_options(ni, tmp_path):
    from ase_mlff.errors import TrainingError

    frames = _small(ni)
    ckpt = tmp_path / "run.ckpt"
    opts = TrainerOptions(epochs=2, batch_size=3, dtype="float64")
    with pytest.raises(TrainingInterrupted):
        train_network(PairMLP(), frames[:4], frames[4:], opts, checkpoint=ckpt, plots=False, stop_after=1)
    with pytest.raises(TrainingError, match="force_weight"):
        train_network(PairMLP(), frames[:4], frames[4:], TrainerOptions(epochs=2, batch_size=3, dtype="float64",
                                                                         force_weight=50.0),
                      checkpoint=ckpt, resume=True, plots=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_stops_cleanly_and_never_touches_the_model_file(ni, tmp_path, signum):
    """A real signal mid-epoch: training stops at the end of that step with a checkpoint and
    exit code 128 + signal; an existing model file (even with overwrite) keeps its bytes until
    the resumed run finishes and replaces it atomically."""
    frames = _small(ni)
    out = tmp_path / "ni.mlff"
    out.write_bytes(b"an earlier model")
    opts = TrainerOptions(epochs=2, batch_size=2, dtype="float64")

    def kill(event):
        if event["step"] == 1:
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted) as info:
        train_network(PairMLP(), frames[:4], frames[4:], opts, output=out, overwrite=True, callback=kill)
    assert info.value.exit_code == 128 + signum
    assert out.read_bytes() == b"an earlier model"
    assert os.path.exists(str(out) + ".ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ni.mlff", "ni.mlff.ckpt"]  # no temporary left behind
    model, rec = train_network(PairMLP(), frames[:4], frames[4:], opts, output=out, resume=True)
    from ase_mlff.io import load_model

    loaded = load_model(out)
    assert loaded.family == "test_pair_mlp" and len(rec.history) == 2
    assert not os.path.exists(str(out) + ".ckpt")
    assert (tmp_path / "ni.learning_curve.png").stat().st_size > 1000
    assert (tmp_path / "ni.parity.png").stat().st_size > 1000


def test_existing_output_is_refused_without_overwrite(ni, tmp_path):
    out = tmp_path / "ni.mlff"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train_network(PairMLP(), _small(ni)[:2], (), TrainerOptions(epochs=1), output=out)
    assert out.read_bytes() == b"keep me" and sorted(os.listdir(tmp_path)) == ["ni.mlff"]


def test_cli_interrupt_exit_code_and_resume(tmp_path, capsys):
    out = tmp_path / "mo.mlff"
    argv = [MO, "-o", str(out), "--family", "test_pair_mlp", "--model-config", '{"cutoff": 4.0}',
            "--epochs", "2", "--batch-size", "4", "--n-valid", "2", "--dtype", "float64", "--no-plots"]
    assert main(argv + ["--stop-after", "2"]) == 130
    assert not out.exists() and os.path.exists(str(out) + ".ckpt")
    assert main(argv) == 2  # a checkpoint exists: resume it or delete it
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    from ase_mlff.io import read_metadata

    meta = read_metadata(out)
    assert len(meta["training"]["trainer"]["history"]) == 2
    assert meta["hyperparameters"]["reference_energies"][0] < -5  # Mo, eV/atom


# ---------------------------------------------------------------------------------- data parallel


def _needs_gloo():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available in this torch build")


def _worker_env(**extra):
    """The environment of a worker process: the installed package, as the tests themselves use
    (the checkout's ase_mlff/ has no compiled extension after `pip install .`; a developer's
    PYTHONPATH is inherited), the tests' module for --import, and one thread per process (2
    processes on a 2-core machine)."""
    path = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_run(path_ddp, path_one, world):
    """Same loss curves (float64 summation order) and the same final weights."""
    from ase_mlff.io import load_model, read_metadata

    h2 = read_metadata(path_ddp)["training"]["trainer"]
    h1 = read_metadata(path_one)["training"]["trainer"]
    assert h2["world_size"] == world and h1["world_size"] == 1
    assert len(h2["history"]) == len(h1["history"])
    for key in ("train_loss", "valid_loss", "valid_forces_mae"):
        np.testing.assert_allclose([h[key] for h in h2["history"]], [h[key] for h in h1["history"]],
                                   rtol=1e-9, err_msg=key)
    a, b = load_model(path_ddp).state_dict(), load_model(path_one).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        scale = float(b[k].abs().max()) if b[k].numel() else 0.0
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-8, atol=1e-12 * scale, err_msg=k)


def test_torchrun_documented_command_writes_once_and_matches_one_process(tmp_path):
    """The command of docs/nn_training.md (torchrun, 2 gloo processes, --family bpnn with a JSON
    config file) runs; rank 0 alone logs and writes the model and plots and removes the
    checkpoint (written at every step here); the result is the single-process run with the same
    global batch: loss curves to 1e-9 relative, weights to 1e-8."""
    _needs_gloo()
    (tmp_path / "bpnn.json").write_text('{"cutoff": 4.0, "hidden": [6], "n_radial": 4, "n_eta": 2, "zetas": [1]}')
    flags = ["--family", "bpnn", "--model-config", "@bpnn.json", "--epochs", "2", "--batch-size", "4",
             "--n-valid", "2", "--dtype", "float64", "--device", "cpu", "--checkpoint-interval", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ase_mlff.training.trainer", MO, *flags, "-o", "mo.mlff"]
    run = subprocess.run(cmd, cwd=tmp_path, env=_worker_env(), capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["bpnn.json", "mo.learning_curve.png", "mo.mlff", "mo.parity.png"]
    for line in ("model written to mo.mlff", "epoch 2/2", "reference energies", "trained 2 epochs on 8 structures "
                 "(2 processes)"):
        assert log.count(line) == 1, (line, log[-3000:])
    old = os.getcwd()
    try:  # the same command in one process
        os.chdir(tmp_path)
        assert main([MO, *flags, "-o", "one.mlff", "--no-plots"]) == 0
    finally:
        os.chdir(old)
    _assert_same_run(tmp_path / "mo.mlff", tmp_path / "one.mlff", world=2)


def _two_workers(module, args, cwds, timeout=300):
    """``python -m module args`` as the 2 workers of ``torchrun --nproc_per_node 2`` (the
    environment torchrun gives them, a free port; no agent, whose start-up costs seconds), each
    in its own folder, like two nodes without a shared file system. Returns [(status, stdout,
    stderr)] by rank."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwds[r], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_worker_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                              MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_recipe_under_two_processes_rank0_alone_writes_refuses_and_resumes(tmp_path):
    """A family recipe (``-m ase_mlff.training.schnet_train``, the autograd path of the trainer)
    under 2 processes, each in its own folder: rank 0 alone writes (model, plots, checkpoint)
    and prints; an output refused on rank 0 stops both processes at once (nobody waits in a
    collective); an interrupted run leaves the checkpoint, which both ranks read on --resume;
    the checkpoint is removed at the end; and the model is the single-process model."""
    _needs_gloo()
    a, b = tmp_path / "rank0", tmp_path / "rank1"
    a.mkdir(), b.mkdir()
    ckpt = str(a / "mo.mlff.ckpt")  # one path every rank reads (a shared file system)
    flags = [MO, "--n-train", "8", "--n-valid", "2", "--n-features", "8", "--n-interactions", "1", "--n-rbf", "6",
             "--cutoff", "4.0", "--epochs", "2", "--batch-size", "4", "--dtype", "float64", "--checkpoint", ckpt]
    (a / "mo.mlff").write_text("keep me")
    out = _two_workers("ase_mlff.training.schnet_train", flags + ["-o", "mo.mlff"], [a, b], timeout=120)
    assert [o[0] for o in out] == [2, 2], out
    assert "mo.mlff exists" in out[0][2] and "error" not in out[1][2]  # reported once, by rank 0
    assert (a / "mo.mlff").read_text() == "keep me"
    (a / "mo.mlff").unlink()

    out = _two_workers("ase_mlff.training.schnet_train", flags + ["-o", "mo.mlff", "--stop-after", "3"], [a, b])
    assert [o[0] for o in out] == [130, 130], out
    assert os.listdir(a) == ["mo.mlff.ckpt"] and os.listdir(b) == []
    assert "interrupted (SIGINT)" in out[0][2] and out[1][1] == out[1][2] == ""

    out = _two_workers("ase_mlff.training.schnet_train", flags + ["-o", "mo.mlff", "--resume"], [a, b])
    assert [o[0] for o in out] == [0, 0], out
    assert sorted(os.listdir(a)) == ["mo.learning_curve.png", "mo.mlff", "mo.parity.png"] and os.listdir(b) == []
    assert out[0][1].count("SchNet model written to mo.mlff") == 1 and out[1][1] == out[1][2] == ""

    from ase_mlff.training import schnet_train

    one = tmp_path / "one"
    one.mkdir()
    assert schnet_train.main([*flags[:-1], str(one / "one.ckpt"), "-o", str(one / "one.mlff"), "--no-plots"]) == 0
    _assert_same_run(a / "mo.mlff", one / "one.mlff", world=2)


def test_diverging_loss_is_an_error_not_nan_weights(ni):
    from ase_mlff.errors import TrainingError

    frames = [f.copy() for f in _small(ni)[:2]]
    frames[1].forces[0, 0] = 1e200  # finite label, but its square overflows
    model = PairMLP()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    with pytest.raises(TrainingError, match="lower --lr"):
        train_network(model, frames, (), TrainerOptions(epochs=1, batch_size=2, dtype="float64",
                                                         fit_reference=False), plots=False)
    for k, p in model.named_parameters():  # the step that diverged was not taken
        assert torch.equal(p.detach(), before[k]), k


def test_recipe_errors_are_printed_once_across_ranks(monkeypatch, capsys):
    """Under torchrun an error every rank met by itself (the same split check) is printed by
    rank 0 alone; one the ranks agreed on by the rank that met it; another rank's never."""
    from ase_mlff.training.common import SplitError
    from ase_mlff.training.trainer import distributed

    fail = distributed.recipe_failure("ase-mlff train x")
    for rank, mark, printed in ((0, {}, True), (1, {}, False), (1, {"all_ranks": True}, True),
                                (0, {"all_ranks": True, "peer_rank": 1}, False)):
        monkeypatch.setattr(distributed, "process_rank", lambda r=rank: r)
        exc = SplitError("element Mo only in the validation frames")
        for k, v in mark.items():
            setattr(exc, k, v)
        assert fail(exc, 2) == 2
        assert ("only in the validation frames" in capsys.readouterr().err) == printed, (rank, mark)
    # another rank's split error arrives as a SplitError (same exit status), not a TrainingError
    assert distributed.error_classes()["SplitError"] is SplitError
