"""A family added from outside the package, in three files and nothing else: a model module, a
recipe module and a conformance example, declared as entry points (docs/contributing_a_family.md,
ase_mlff.registry). Written to a temporary folder (plus the packaging metadata a ``pip install``
would write), it must train from the command line, serve through the calculator with forces
= -dE/dx, load from its model file, and pass the conformance suite like every other family.

Everything runs in subprocesses whose only addition to the path is that folder, so the family
exists nowhere else in the test session.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

TESTS = pathlib.Path(__file__).parent
NI = TESTS / "data" / "ni_mlearn_20.extxyz"

MODEL = '''
"""A pair potential linear in its coefficients: E_i = e0[Z_i] + 1/2 sum_j sum_k c[s_i, s_j, k] g_k(r_ij),
g_k(r) = exp(-(r - mu_k)^2 / 0.5) f_c(r), with the cosine cutoff f_c. eV and Angstrom."""
import math

import torch

from ase_mlff.models.base import (Model, config_cutoff, config_int, config_reference_energies, config_species,
                                  register_model)


@register_model
class ToyPair(Model):
    family = "toy"

    def __init__(self, species=(28,), cutoff=4.5, n_basis=6, reference_energies=None, seed=0):
        n = len(set(species))
        e0 = [0.0] * n if reference_energies is None else [float(v) for v in reference_energies]
        super().__init__(species, cutoff, {"n_basis": n_basis, "reference_energies": e0, "seed": seed})
        g = torch.Generator().manual_seed(seed)
        self.coefficients = torch.nn.Parameter(0.05 * torch.randn((n, n, n_basis), generator=g, dtype=torch.float64))
        self.register_buffer("centers", torch.linspace(1.5, cutoff, n_basis, dtype=torch.float64))

    def forward(self, graph):
        i, j = graph.edge_index
        r = torch.linalg.norm(graph.edge_vectors(), dim=1)
        fc = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        g = torch.exp(-((r[:, None] - self.centers) ** 2) / 0.5) * fc[:, None]
        s = self.species_index(graph.numbers)
        pair = 0.5 * (g * self.coefficients[s[i], s[j]]).sum(1)
        e = torch.zeros(graph.n_atoms, dtype=pair.dtype, device=pair.device).index_add(0, i, pair)
        e0 = torch.tensor(self.config["reference_energies"], dtype=torch.float64, device=e.device)
        return e0[s] + e.to(torch.float64)

    def set_reference_energies(self, e0, energy_scale=None):  # the shared trainer's hook
        self.config["reference_energies"] = [float(v) for v in e0]

    @classmethod
    def check_config(cls, config):
        n = len(config_species(config))
        n_basis = config_int(config, "n_basis", 1, 64)
        config_cutoff(config)
        config_reference_energies(config, n)
        return {"coefficients": ((n, n, n_basis), "float64"), "centers": ((n_basis,), "float64")}
'''

RECIPE = '''
"""Train the toy pair potential with ase-mlff's shared network trainer."""
import argparse

from ase_mlff.data import read
from ase_mlff.training.common import Option, add_options
from ase_mlff.training.trainer import TrainerOptions, configure_parser as trainer_flags, run_training, train_network

from toy_model import ToyPair

SUMMARY = "train the toy pair potential"
OPTIONS = (Option("n_valid", 2, "validation frames (the last ones)", int),
           Option("n_basis", 6, "Gaussians per element pair", int))


def _model(frames, n_basis):
    return ToyPair(sorted({int(z) for f in frames for z in f.numbers}), n_basis=n_basis)


def train(data, progress=None, n_valid=2, n_basis=6, **trainer):
    frames = list(read(data) if isinstance(data, str) else data)
    model = _model(frames, n_basis)
    opts = TrainerOptions(**{"dtype": "float64", **trainer}).check()
    return train_network(model, frames[:-n_valid], frames[-n_valid:], opts,
                         log=progress or (lambda m: None), plots=False)


def configure_parser(parser):
    parser.add_argument("dataset", help="frames with energies and forces")
    parser.add_argument("-o", "--output", default="toy.mlff", help="model file to write")
    add_options(parser, OPTIONS)
    trainer_flags(parser, TrainerOptions(dtype="float64"))
    return parser


def run(args):
    frames = list(read(args.dataset))
    model = _model(frames, args.n_basis)
    return run_training(model, frames[:-args.n_valid], frames[-args.n_valid:], args, "ase-mlff train toy")
'''

EXAMPLE = '''
"""The toy family's conformance example: seeded coefficients for Al and Cu."""
import torch

from conformance_examples import Example
from toy_model import ToyPair


def example():
    model = ToyPair(species=(13, 29), cutoff=4.5, n_basis=6, seed=3)
    with torch.no_grad():
        model.coefficients.mul_(20.0)  # forces well above the finite-difference noise
    return Example(model, notes="a pair potential from outside the package")
'''

ENTRY_POINTS = '''
[ase_mlff.models]
toy = toy_model

[ase_mlff.recipes]
toy = toy_recipe

[ase_mlff.conformance_examples]
toy = toy_example:example
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The folder holding the family's three files and the metadata that declares them."""
    root = tmp_path_factory.mktemp("toy_family")
    for name, text in (("toy_model.py", MODEL), ("toy_recipe.py", RECIPE), ("toy_example.py", EXAMPLE)):
        (root / name).write_text(textwrap.dedent(text).lstrip())
    info = root / "ase_mlff_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ase-mlff-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS.lstrip())
    return root


def _run(toy, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=toy, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def test_toy_family_trains_from_the_cli_and_serves(toy):
    proc = _run(toy, "-m", "ase_mlff", "train", "--help")
    assert proc.returncode == 0 and "train the toy pair potential" in proc.stdout, proc.stderr
    proc = _run(toy, "-m", "ase_mlff", "train", "toy", str(NI), "-o", "toy.mlff", "--epochs", "3",
                "--batch-size", "4", "--n-valid", "3", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert (toy / "toy.mlff").exists()
    check = textwrap.dedent(f'''
        import ase.io, numpy as np
        import ase_mlff
        from ase_mlff.io import read_metadata
        assert read_metadata("toy.mlff")["family"] == "toy"
        atoms = ase.io.read({str(NI)!r}, 0)
        atoms.calc = ase_mlff.load("toy.mlff", dtype="float64")
        f = atoms.get_forces()
        h, k = 1e-4, 3
        fd = []
        for d in range(3):
            p = atoms.positions.copy(); p[k, d] += h; a = atoms.copy(); a.positions = p; a.calc = atoms.calc
            ep = a.get_potential_energy()
            p[k, d] -= 2 * h; a.positions = p
            fd.append(-(ep - a.get_potential_energy()) / (2 * h))
        scale = np.abs(f).max()
        assert scale > 1e-3 and np.abs(np.array(fd) - f[k]).max() < 1e-6 * scale + 1e-8, (fd, f[k])
        print("served", atoms.get_potential_energy())
    ''')
    proc = _run(toy, "-c", check)
    assert proc.returncode == 0 and "served" in proc.stdout, proc.stderr


def test_toy_family_passes_the_conformance_suite(toy):
    proc = _run(toy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(toy),
                str(TESTS / "test_conformance.py"), "-k", "toy")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_conformance_runs_every_check_on_the_toy_family(toy):
    proc = _run(toy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(toy),
                str(TESTS / "test_conformance.py"), "-k", "toy", "--co")
    ids = [line for line in proc.stdout.splitlines() if "[toy" in line]
    # forces, stress, rotation, translation, permutation, batch, float32, Hessian, round trip, ...
    assert len(ids) >= 10, proc.stdout[-3000:]


def test_a_broken_family_plugin_is_reported_and_the_others_still_load(tmp_path):
    (tmp_path / "broken_family.py").write_text("raise RuntimeError('missing dependency xyz')\n")
    info = tmp_path / "broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ase_mlff.models]\nbroken = broken_family\n")
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import ase_mlff.models as m; print(sorted(m.MODEL_REGISTRY))")
    proc = _run(tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "broken = 'broken_family'" in proc.stderr and "missing dependency xyz" in proc.stderr
    assert "'gap'" in proc.stdout and "'sgdml'" in proc.stdout
