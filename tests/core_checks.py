"""Checks shared by the compiled-core tests (tests/test_core_*.py): a core against autograd
through the model's forward, and the same bits for any thread count."""

from __future__ import annotations

import numpy as np
import torch

import ase_mlff
from ase_mlff.graph import graph_from_structure


def assert_close(a, b, rtol, what):
    """max |a - b| <= rtol * max |b| (relative to the magnitude compared)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(b).max(), 1e-300)
    err = np.abs(a - b).max() / scale
    assert err <= rtol, f"{what}: differ by {err:.3g} relative to the largest (> {rtol:g})"


def compare_with_autograd(model, atoms, dtype=torch.float64, rtol=1e-10):
    """The core's energy, per-atom energies, forces and virial against autograd through
    ``forward`` on ``atoms``; returns the core's output."""
    g = graph_from_structure(atoms, model.cutoff, dtype=dtype)
    assert model.uses_analytic(g)
    fast = model.compute(g, forces=True, stress=True)
    slow = model._autograd(g, True, True, False)
    for key in ("energy", "energies", "forces", "virial"):
        x, y = getattr(fast, key), getattr(slow, key)
        assert x.dtype == y.dtype, f"{key}: dtype {x.dtype} against {y.dtype}"
        assert x.shape == y.shape, key
        assert_close(x.numpy(), y.numpy(), rtol, key)
    return fast


def assert_thread_counts_bitwise(model, graph, counts=(1, 2, 3)):
    """model.compute gives the same bits with every configured thread count."""
    before = ase_mlff.get_num_threads()
    outs = []
    try:
        for n in counts:
            ase_mlff.set_num_threads(n)
            outs.append(model.compute(graph, forces=True, stress=True))
    finally:
        ase_mlff.set_num_threads(before)
    for o in outs[1:]:
        for key in ("energies", "forces", "virial"):
            assert torch.equal(getattr(o, key), getattr(outs[0], key)), key


def ghost_layout(atoms, distance):
    """A periodic structure as a domain-decomposed host sees it: its atoms first, then every
    periodic image within ``distance`` of the cell's atoms as an open structure (no cell).
    Returns ``(host_atoms, images)``: ``images[k]`` is the atom that atom ``k`` of the host
    structure images (the identity for the first ``len(atoms)``)."""
    from itertools import product

    from ase import Atoms

    n = len(atoms)
    cell = atoms.cell.array
    volume = abs(np.linalg.det(cell))
    widths = [volume / np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3])) for a in range(3)]
    reach = distance / np.array(widths)  # in fractional coordinates
    frac = atoms.get_scaled_positions(wrap=False)
    positions, images = [atoms.positions], [np.arange(n)]
    k = int(np.ceil(reach.max())) + 1  # the atoms may sit a little outside their cell
    for shift in product(range(-k, k + 1), repeat=3):
        if shift == (0, 0, 0):
            continue
        s = frac + np.array(shift)
        keep = np.all((s >= frac.min(axis=0) - reach) & (s <= frac.max(axis=0) + reach), axis=1)
        positions.append(s[keep] @ cell)
        images.append(np.flatnonzero(keep))
    images = np.concatenate(images)
    return Atoms(numbers=atoms.numbers[images], positions=np.concatenate(positions), pbc=False), images
