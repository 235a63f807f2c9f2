"""Tests of the compiled neighbour list and of the Verlet-skin NeighborList.

The reference is an independent brute force written here: atoms are wrapped into the periodic
cell with a pseudo-inverse (no cell list, no binning), and every pair is compared with every
integer image within a range computed from the cutoff and the spacing of the lattice planes.
Pairs whose distance lies within TIE of the cutoff are ignored in the comparisons: on which
side of the cutoff they fall depends on rounding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ase_mlff
from ase_mlff import _ext
from ase_mlff.errors import InputError
from ase_mlff.neighbors import MAX_IMAGES, NeighborList, Pairs, neighbor_list

TIE = 1e-8  # Å; pairs this close to the cutoff may go either way


# --------------------------------------------------------------------------------------------
# Independent brute-force reference
# --------------------------------------------------------------------------------------------


def image_bounds(cell, pbc, cutoff):
    """Largest |n_d| of an image needed once both atoms are wrapped into the cell.

    For wrapped atoms the fractional difference is in (-1, 1); a vector shorter than the
    cutoff changes the fractional coordinate along a periodic d by at most cutoff * |g_d|,
    where g_d is the d-th row of the pseudo-inverse (reciprocal vector within the periodic
    span, 1 / distance between lattice planes).
    """
    cell = np.asarray(cell, dtype=float)
    per = np.flatnonzero(pbc)
    bounds = np.zeros(3, dtype=np.int64)
    if per.size:
        ginv = np.linalg.pinv(cell[per].T)  # rows: reciprocal vectors of the periodic lattice
        for row, d in zip(ginv, per):
            bounds[d] = int(np.ceil(cutoff * np.linalg.norm(row))) + 1
    return bounds


def wrap(positions, cell, pbc):
    """(wrapped positions, integer offsets) with positions = wrapped + offsets @ cell."""
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    offsets = np.zeros((len(positions), 3), dtype=np.int64)
    per = np.flatnonzero(pbc)
    if per.size and len(positions):
        frac = positions @ np.linalg.pinv(cell[per])  # coefficients along the periodic vectors
        offsets[:, per] = np.floor(frac).astype(np.int64)
    return positions - offsets @ cell, offsets


def brute_force(positions, cell, pbc, cutoff, max_images=200_000):
    """Every (i, j, S) with |r_j - r_i + S @ cell| < cutoff, (i, i, 0) excluded.

    Returns (i, j, S, distances) with the vector computed from the caller's positions.
    """
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    pbc = np.asarray(pbc, dtype=bool)
    n = len(positions)
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3), int), np.zeros(0))
    if n == 0:
        return empty
    bounds = image_bounds(cell, pbc, cutoff)
    n_images = int(np.prod(2 * bounds + 1))
    assert n_images <= max_images, f"brute force would enumerate {n_images} images"
    grids = np.meshgrid(*[np.arange(-b, b + 1) for b in bounds], indexing="ij")
    images = np.stack([g.ravel() for g in grids], axis=1)  # (M, 3)
    image_vecs = images @ cell
    w, off = wrap(positions, cell, pbc)
    out_i, out_j, out_s, out_d = [], [], [], []
    for i in range(n):
        # Candidate search on wrapped coordinates (small numbers) with a loose margin ...
        dw = (w - w[i])[:, None, :] + image_vecs[None, :, :]  # (n, M, 3)
        d2 = np.einsum("jmk,jmk->jm", dw, dw)
        jj, mm = np.nonzero(d2 < (cutoff + 1e-6) ** 2)
        if jj.size == 0:
            continue
        # ... then the exact definition on the caller's positions: S = n - o_j + o_i.
        S = images[mm] - off[jj] + off[i]
        vec = positions[jj] - positions[i] + S @ cell
        dist = np.linalg.norm(vec, axis=1)
        keep = (dist < cutoff) & ~((jj == i) & np.all(S == 0, axis=1))
        out_i.append(np.full(keep.sum(), i))
        out_j.append(jj[keep])
        out_s.append(S[keep])
        out_d.append(dist[keep])
    if not out_i:
        return empty
    return (np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s),
            np.concatenate(out_d))


def as_set(i, j, S, d, cutoff):
    """Set of (i, j, S) of the pairs that are not ties at the cutoff."""
    keep = np.abs(np.asarray(d) - cutoff) > TIE
    S = np.asarray(S).reshape(-1, 3)
    return {(int(a), int(b), tuple(int(x) for x in s))
            for a, b, s in zip(np.asarray(i)[keep], np.asarray(j)[keep], S[keep])}


def check_consistent(p: Pairs, positions, cell, pbc):
    """Internal consistency of a result: dtypes, shapes, vectors, sortedness, no duplicates."""
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    P = len(p)
    assert p.i.dtype == np.int64 and p.j.dtype == np.int64 and p.shifts.dtype == np.int32
    assert p.i.shape == (P,) and p.j.shape == (P,) and p.distances.shape == (P,)
    assert p.shifts.shape == (P, 3) and p.vectors.shape == (P, 3)
    if P == 0:
        return
    assert np.all(np.diff(p.i) >= 0), "pairs are not sorted by i"
    assert np.all(p.shifts[:, ~np.asarray(pbc, dtype=bool)] == 0), "shift along a non-periodic axis"
    expected = positions[p.j] - positions[p.i] + p.shifts.astype(float) @ cell
    scale = 1e-12 * (1.0 + np.abs(positions).max() + np.abs(p.shifts).max() * np.abs(cell).max())
    np.testing.assert_allclose(p.vectors, expected, rtol=0, atol=scale)
    np.testing.assert_allclose(p.distances, np.linalg.norm(p.vectors, axis=1), rtol=1e-14,
                               atol=1e-300)
    keys = np.concatenate([p.i[:, None], p.j[:, None], p.shifts.astype(np.int64)], axis=1)
    assert len(np.unique(keys, axis=0)) == P, "duplicate pairs"
    assert not np.any((p.i == p.j) & np.all(p.shifts == 0, axis=1)), "self pair (i, i, 0)"


def compare_with_references(positions, cell, pbc, cutoff, with_ase=True):
    p = neighbor_list(positions, cell, pbc, cutoff)
    check_consistent(p, positions, cell, pbc)
    # pairs are kept when |r|^2 < cutoff^2; sqrt of a square one ulp below cutoff^2 can round to
    # exactly the cutoff (one atom, images at 1, 2, ... 5 Å, cutoff 5 Å), so <= here
    assert np.all(p.distances <= cutoff)
    ours = as_set(p.i, p.j, p.shifts, p.distances, cutoff)
    bi, bj, bS, bd = brute_force(positions, cell, pbc, cutoff)
    ref = as_set(bi, bj, bS, bd, cutoff)
    assert ours == ref, (f"{len(ours - ref)} extra pairs, e.g. {sorted(ours - ref)[:3]}; "
                         f"{len(ref - ours)} missing, e.g. {sorted(ref - ours)[:3]}")
    if with_ase:
        atoms = Atoms(positions=positions, cell=cell, pbc=pbc)
        ai, aj, aS, ad = ase_neighbor_list("ijSd", atoms, cutoff, self_interaction=False)
        assert ours == as_set(ai, aj, aS, ad, cutoff)
    return p


# --------------------------------------------------------------------------------------------
# Property test on random structures
# --------------------------------------------------------------------------------------------


def heights(cell):
    vol = abs(np.linalg.det(cell))
    return np.array([vol / np.linalg.norm(np.cross(cell[(d + 1) % 3], cell[(d + 2) % 3]))
                     for d in range(3)])


@st.composite
def structures(draw):
    n = draw(st.integers(1, 15))
    pbc = np.array(draw(st.tuples(st.booleans(), st.booleans(), st.booleans())))
    kind = draw(st.sampled_from(["normal", "skewed", "tiny"]))
    if kind == "tiny":
        diag = draw(st.lists(st.floats(0.2, 1.5), min_size=3, max_size=3))
    else:
        diag = draw(st.lists(st.floats(1.0, 12.0), min_size=3, max_size=3))
    skew = 3.0 if kind == "skewed" else 0.4
    off = draw(st.lists(st.floats(-skew, skew), min_size=3, max_size=3))
    cell = np.diag(diag)
    cell[1, 0] = off[0] * diag[0]
    cell[2, 0] = off[1] * diag[0]
    cell[2, 1] = off[2] * diag[1]
    # a random rotation so that no cell vector is aligned with an axis
    angles = draw(st.lists(st.floats(0.0, 2 * np.pi), min_size=3, max_size=3))
    for ax, ang in enumerate(angles):
        c, s = np.cos(ang), np.sin(ang)
        R = np.eye(3)
        a, b = [k for k in range(3) if k != ax]
        R[a, a], R[a, b], R[b, a], R[b, b] = c, -s, s, c
        cell = cell @ R.T
    assume(heights(cell).min() > 0.05)
    # Fractional coordinates well outside [0, 1), plus a far global offset.
    frac = np.array(draw(st.lists(st.lists(st.floats(-3.0, 4.0), min_size=3, max_size=3),
                                  min_size=n, max_size=n)))
    spread = draw(st.sampled_from([1.0, 1.0, 5.0]))  # a molecule of large extent, sometimes
    gen = cell.copy()
    gen[~pbc] *= spread
    positions = frac @ gen
    shift = np.array(draw(st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3)))
    if draw(st.booleans()):
        positions = positions + shift
    # Non-periodic cell vectors are ignored: sometimes zero them.
    if draw(st.booleans()):
        cell = cell.copy()
        cell[~pbc] = 0.0
    cutoff = draw(st.floats(0.5, 7.0))
    # Keep the brute force (and the output) small: shrink the cutoff until few images remain.
    while np.prod(2 * image_bounds(cell, pbc, cutoff) + 1) > 6000:
        cutoff *= 0.8
    return positions, cell, pbc, cutoff


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_random_structures_match_brute_force_and_ase(structure):
    positions, cell, pbc, cutoff = structure
    compare_with_references(positions, cell, pbc, cutoff)


ALL_PBC = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]


def gas_in_box(seed, n):
    """(positions, cell): n atoms spread over and around a random skewed box (seeded)."""
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(2.0, 9.0, 3))
    cell[2, :2] = rng.uniform(-4, 4, 2)
    return rng.uniform(-0.5, 1.5, (n, 3)) @ cell, cell


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.floats(0.5, 6.0))
def test_random_gas_in_box(seed, n, cutoff):
    """Dense random gas in an orthorhombic and a skewed box, all pbc combinations."""
    positions, cell = gas_in_box(seed, n)
    for pbc in ALL_PBC:
        compare_with_references(positions, cell, np.array(pbc, bool), cutoff, with_ase=False)


# --------------------------------------------------------------------------------------------
# Explicit cases
# --------------------------------------------------------------------------------------------


def test_single_atom_in_tiny_cell_sees_its_images():
    cell = np.array([[0.8, 0.0, 0.0], [0.3, 0.9, 0.0], [0.1, -0.2, 0.7]])
    positions = np.array([[0.1, 0.2, 0.3]])
    cutoff = 3.0
    p = compare_with_references(positions, cell, [True] * 3, cutoff)
    assert len(p) > 100
    assert np.all(p.i == 0) and np.all(p.j == 0)
    # images come in +/- pairs
    assert as_set(p.i, p.j, p.shifts, p.distances, cutoff) == as_set(
        p.i, p.j, -p.shifts, p.distances, cutoff)


def test_empty_structure():
    p = neighbor_list(np.zeros((0, 3)), np.eye(3) * 5, [True] * 3, 3.0)
    assert len(p) == 0
    assert p.shifts.shape == (0, 3) and p.vectors.shape == (0, 3)
    assert p.i.dtype == np.int64 and p.shifts.dtype == np.int32
    p = neighbor_list(np.zeros((0, 3)), np.zeros((3, 3)), [False] * 3, 3.0)
    assert len(p) == 0


def test_atoms_far_apart_are_cheap():
    t0 = time.perf_counter()
    # non-periodic, zero cell
    p = neighbor_list([[0, 0, 0], [1e6, 0, 0]], np.zeros((3, 3)), [False] * 3, 5.0)
    assert len(p) == 0
    p = neighbor_list([[0, 0, 0], [1e6, -1e6, 3e5], [1e6, -1e6, 3e5 + 1.0]], np.zeros((3, 3)),
                      [False] * 3, 5.0)
    assert sorted(zip(p.i.tolist(), p.j.tolist())) == [(1, 2), (2, 1)]
    # periodic cell, atoms 1e6 Å apart (1e5 cell lengths)
    positions = np.array([[0.5, 0.5, 0.5], [1e6 + 0.5, 1.5, 0.5]])
    p = compare_with_references(positions, np.eye(3) * 10.0, [True] * 3, 4.0)
    assert len(p) > 0
    # a slab: periodic in x and y only, atoms far apart in z
    p = neighbor_list([[0, 0, 0], [0, 0, 1e6]], np.diag([3.0, 3.0, 0.0]), [True, True, False], 3.5)
    assert set(p.j.tolist()) == {0, 1} and np.all(p.i == p.j)
    assert time.perf_counter() - t0 < 5.0


def test_molecule_with_zero_cell():
    rng = np.random.default_rng(3)
    positions = rng.normal(scale=3.0, size=(30, 3)) + [1e3, -2e3, 5.0]
    compare_with_references(positions, np.zeros((3, 3)), [False] * 3, 3.0)
    # a wire periodic along z with zero x and y cell vectors
    cell = np.diag([0.0, 0.0, 4.0])
    compare_with_references(positions, cell, [False, False, True], 3.0)


def test_singular_periodic_cell_raises():
    positions = np.zeros((2, 3))
    positions[1] = [1.0, 0.0, 0.0]
    singular = np.array([[3.0, 0, 0], [0, 3.0, 0], [3.0, 3.0, 0]])
    with pytest.raises(InputError, match="singular|zero volume"):
        neighbor_list(positions, singular, [True] * 3, 2.0)
    with pytest.raises(InputError, match="zero"):
        neighbor_list(positions, np.diag([3.0, 0.0, 3.0]), [True] * 3, 2.0)
    with pytest.raises(InputError, match="parallel"):
        neighbor_list(positions, [[3.0, 0, 0], [6.0, 0, 0], [0, 0, 0]], [True, True, False], 2.0)
    # a zero vector along a non-periodic direction is fine
    assert len(neighbor_list(positions, np.diag([3.0, 3.0, 0.0]), [True, True, False], 2.0)) > 0


# --------------------------------------------------------------------------------------------
# Bounded work: refused before searching, legitimate edge cases unaffected, Ctrl-C
# --------------------------------------------------------------------------------------------


def test_nearly_singular_cell_is_refused_at_once():
    """Issue #8: this cell made the search visit 3e8 images (15 s to minutes, no Ctrl-C)."""
    cell = np.array([[7.04, 0.0, 0.0], [7.04, 0.001, 0.0], [0.0, 0.0, 7.04]])
    positions = np.random.default_rng(0).random((4, 3)) @ cell
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="nearly singular") as err:
        neighbor_list(positions, cell, [True] * 3, 5.0)
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "height along a is 0.001 Å" in msg and "along b 0.001 Å" in msg
    assert "minkowski_reduce" in msg and "1e+06" in msg
    # The same lattice in a reduced cell is accepted (and correct): the hint in the message works.
    from ase.cell import Cell

    reduced = Cell(cell).minkowski_reduce()[0].array
    p = neighbor_list(positions, reduced, [True] * 3, 5.0)
    check_consistent(p, positions, reduced, [True] * 3)
    ref = brute_force(positions, reduced, [True] * 3, 5.0, max_images=400_000)
    assert as_set(p.i, p.j, p.shifts, p.distances, 5.0) == as_set(*ref, 5.0)
    assert len(p) > 100_000


def test_image_limit_is_the_documented_one():
    """One atom in a 0.1 Å cube: 49 images on either side (99^3 < 1e6) pass, 50 (101^3) do not."""
    assert MAX_IMAGES == 1e6
    cell = np.eye(3) * 0.1
    positions = np.array([[0.01, 0.02, 0.03]])
    cutoff = 4.85
    p = neighbor_list(positions, cell, [True] * 3, cutoff)
    ours = as_set(p.i, p.j, p.shifts, p.distances, cutoff)
    ref = as_set(*brute_force(positions, cell, [True] * 3, cutoff, max_images=2_000_000), cutoff)
    assert ours == ref and len(ours) > 400_000
    with pytest.raises(InputError, match="101 x 101 x 101 cells|1.03e\\+06 periodic images"):
        neighbor_list(positions, cell, [True] * 3, 5.0)
    # a slab reaches images along its periodic directions only
    assert len(neighbor_list(positions, cell, [True, True, False], cutoff)) > 7000


def test_too_many_pairs_are_refused_at_once():
    # positions in nm read as Å: 1e5 atoms in a (10 Å)^3 box
    positions = np.random.default_rng(1).random((100_000, 3)) * 10.0
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"about 5.2e\+09 pairs .* refuses more than 1e\+09"):
        neighbor_list(positions, np.eye(3) * 10.0, [True] * 3, 5.0)
    # a molecule: every pair of 50000 atoms piled within the cutoff
    with pytest.raises(InputError, match="pairs are expected"):
        neighbor_list(positions[:50_000] * 0.1, np.zeros((3, 3)), [False] * 3, 5.0)
    assert time.perf_counter() - t0 < 1.0


def test_too_many_candidates_are_refused():
    """A thin cell with many atoms: few pairs but billions of candidates."""
    cell = np.array([[20.0, 0.0, 0.0], [20.0, 0.02, 0.0], [0.0, 0.0, 20.0]])
    positions = np.random.default_rng(2).random((400, 3)) @ cell
    with pytest.raises(InputError, match="candidate pairs .* too thin or too skewed"):
        neighbor_list(positions, cell, [True] * 3, 5.0)


def test_legitimate_edge_cases_are_not_refused():
    # a 2.5 Å fcc primitive cell with a 6 Å cutoff (heights 2.04 Å: 343 images)
    fcc = bulk("Ni", "fcc", a=2.5 * np.sqrt(2.0))
    fcc.rattle(0.05, seed=3)
    compare_with_references(fcc.positions, fcc.cell.array, fcc.pbc, 6.0)
    # a slab with 2000 Å of vacuum, periodic in all three directions
    slab = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 2))
    slab.center(vacuum=1000.0, axis=2)
    slab.rattle(0.05, seed=4)
    compare_with_references(slab.positions, slab.cell.array, [True] * 3, 5.0)
    # a long thin skewed cell that is not pathological (heights 1.2 Å, 7 images each side)
    cell = np.array([[1.5, 0.0, 0.0], [1.0, 1.4, 0.0], [0.3, 0.8, 1.3]])
    positions = np.random.default_rng(5).random((3, 3)) @ cell
    compare_with_references(positions, cell, [True] * 3, 8.0, with_ase=False)


def test_quarter_million_atoms():
    """256,000 atoms of perfect fcc: exactly 12 neighbours each within 3 Å."""
    a = 3.61
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((40, 40, 40))
    p = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.0)
    assert len(p) == 12 * len(atoms)
    np.testing.assert_allclose(p.distances, a / np.sqrt(2.0), rtol=1e-10)
    assert np.array_equal(np.bincount(p.i, minlength=len(atoms)), np.full(len(atoms), 12))


# Within the limits but slow: 200 atoms in a 0.02 Å thin cell with a 5 Å cutoff visit 7.5e5
# images each, about 6e9 candidates (tens of seconds uninterrupted).
SLOW_SEARCH = r"""
import signal, time
import numpy as np
from ase_mlff.neighbors import neighbor_list

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
cell = np.array([[20.0, 0.0, 0.0], [20.0, 0.02, 0.0], [0.0, 0.0, 20.0]])
positions = np.random.default_rng(0).random((200, 3)) @ cell
print("searching", flush=True)
t0 = time.perf_counter()
try:
    neighbor_list(positions, cell, [True] * 3, 5.0)
    print("finished after", time.perf_counter() - t0, flush=True)
except KeyboardInterrupt:
    print("interrupted after", time.perf_counter() - t0, flush=True)
# the threads are free again: a large search afterwards runs on all of them
import ase_mlff
from ase.build import bulk
atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((10, 10, 10))
pairs = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
print("then", len(pairs), "pairs on", ase_mlff.threads.last_threads_used(), "threads", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.skipif(
    ase_mlff.threads.available_cpus() < 2, reason="the default count is capped by the CPUs"))])
def test_ctrl_c_stops_a_long_search(tmp_path, threads):
    """Also on two threads: only the calling thread checks for Ctrl-C, and stops the other."""
    # cwd outside the source tree: the child must import the installed (compiled) package
    env = dict(os.environ, ASE_MLFF_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SEARCH], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        assert proc.stdout.readline().strip() == "searching", proc.stderr.read()
        time.sleep(0.5)  # well inside the C++ search by now
        proc.send_signal(signal.SIGINT)
        t_signal = time.perf_counter()
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the search went on for 15 s after SIGINT")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    waited = time.perf_counter() - t_signal
    assert out.startswith("interrupted after"), (out, err)
    # 12 + 6 + 24 neighbours within 5 Å
    assert out.splitlines()[1] == f"then {42 * 4000} pairs on {threads} threads", (out, err)
    assert waited < 5.0, f"KeyboardInterrupt came {waited:.1f} s after SIGINT"


def test_nan_positions_raise():
    positions = np.array([[0.0, 0.0, 0.0], [np.nan, 1.0, 1.0]])
    with pytest.raises(InputError, match="NaN"):
        neighbor_list(positions, np.eye(3) * 5, [True] * 3, 2.0)
    with pytest.raises(InputError):
        neighbor_list([[0.0, 0.0, np.inf]], np.eye(3) * 5, [False] * 3, 2.0)
    with pytest.raises(InputError):
        neighbor_list(np.zeros((2, 3)), np.eye(3) * 5, [True] * 3, -1.0)


def test_self_interaction_adds_self_pairs():
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
    p = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.0)
    q = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.0, self_interaction=True)
    assert len(q) == len(p) + len(atoms)
    assert np.all(np.diff(q.i) >= 0)


def test_bulk_matches_ase_exactly():
    """Larger periodic systems, including a rattled triclinic one, against ASE."""
    for atoms, cutoff in [
        (bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 5)), 5.0),
        (bulk("C", "diamond", a=3.567).repeat((6, 5, 4)), 3.3),
        (bulk("Mg", "hcp", a=3.2, c=5.2).repeat((4, 4, 3)), 6.0),
    ]:
        atoms.rattle(0.05, seed=1)
        p = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        check_consistent(p, atoms.positions, atoms.cell.array, atoms.pbc)
        ai, aj, aS, ad = ase_neighbor_list("ijSd", atoms, cutoff)
        assert len(p) == len(ai)
        assert as_set(p.i, p.j, p.shifts, p.distances, cutoff) == as_set(ai, aj, aS, ad, cutoff)


def test_filter_pairs_matches_fresh_list():
    atoms = bulk("Cu", "fcc", a=3.61).repeat((3, 3, 3))
    atoms.rattle(0.1, seed=2)
    big = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    i, j, s, v, d = _ext.filter_pairs(atoms.positions, atoms.cell.array, big.i, big.j,
                                      big.shifts, 4.0)
    fresh = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
    assert as_set(i, j, s, d, 4.0) == as_set(fresh.i, fresh.j, fresh.shifts, fresh.distances, 4.0)
    assert np.all(np.diff(i) >= 0)
    with pytest.raises(ValueError):
        _ext.filter_pairs(atoms.positions, atoms.cell.array, big.i + 10_000, big.j, big.shifts, 4.0)


# --------------------------------------------------------------------------------------------
# Verlet skin: reuse along real MD trajectories
# --------------------------------------------------------------------------------------------


def sorted_pairs(p: Pairs):
    keys = np.concatenate([p.i[:, None], p.j[:, None], p.shifts.astype(np.int64)], axis=1)
    order = np.lexsort(keys.T[::-1])
    return keys[order], p.vectors[order], p.distances[order]


def assert_same_pairs(a: Pairs, b: Pairs):
    ka, va, da = sorted_pairs(a)
    kb, vb, db = sorted_pairs(b)
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(da, db)


def run_md_with_skin(atoms, cutoff, skin, steps, temperature=1500.0, seed=7):
    """Velocity-Verlet MD with EMT; every step, the skin list must equal a fresh list."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.verlet import VelocityVerlet

    atoms.calc = EMT()
    # Maxwell-Boltzmann momenta at twice the target: about half goes into potential energy.
    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) *
                      np.sqrt(masses * units.kB * 2.0 * temperature))
    dyn = VelocityVerlet(atoms, timestep=4.0 * units.fs)
    nl = NeighborList(cutoff, skin)
    for _ in range(steps):
        dyn.run(1)
        got = nl.update(atoms)
        fresh = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        assert np.all(np.diff(got.i) >= 0)
        assert_same_pairs(got, fresh)
    return nl


def test_skin_reuse_along_md_cubic():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    steps = 200
    nl = run_md_with_skin(atoms, cutoff=4.0, skin=0.5, steps=steps)
    assert nl.n_updates == steps
    assert 1 < nl.n_builds < steps, nl.n_builds


def test_skin_reuse_along_md_triclinic():
    atoms = bulk("Cu", "fcc", a=3.61).repeat((4, 4, 4))  # rhombohedral primitive cell
    atoms.cell[2] += atoms.cell[0] * 0.5  # make it more skewed (same lattice, other basis)
    atoms.wrap()
    steps = 150
    nl = run_md_with_skin(atoms, cutoff=5.0, skin=0.4, steps=steps, seed=11)
    assert 1 < nl.n_builds < steps, nl.n_builds


def test_skin_rebuilds_on_cell_or_atom_count_change():
    atoms = bulk("Cu", "fcc", a=3.61).repeat((3, 3, 3))
    nl = NeighborList(4.0, 0.5)
    nl.update(atoms)
    nl.update(atoms)
    assert nl.n_builds == 1
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    got = nl.update(atoms)
    assert nl.n_builds == 2
    assert_same_pairs(got, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0))
    del atoms[5]
    got = nl.update(atoms)
    assert nl.n_builds == 3
    assert_same_pairs(got, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0))
    atoms.pbc = [True, True, False]
    got = nl.update(atoms)
    assert nl.n_builds == 4
    assert_same_pairs(got, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0))
    # moving a single atom by more than skin / 2 also rebuilds
    atoms.positions[0] += [0.3, 0.0, 0.0]
    got = nl.update(atoms)
    assert nl.n_builds == 5
    assert_same_pairs(got, neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0))


def test_skin_refresh_is_the_same_on_one_and_two_threads():
    """filter_pairs runs on the thread pool above 50k pairs; its output must be the serial one."""
    import ase_mlff
    from ase.build import bulk

    from ase_mlff._ext import _core

    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((8, 8, 8))
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
    pairs = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.5)
    assert len(pairs) > 50000
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    before = ase_mlff.get_num_threads()
    try:
        out = {}
        for n in (1, 2):
            ase_mlff.set_num_threads(n)
            out[n] = _core.filter_pairs(atoms.positions, atoms.cell.array, pairs.i, pairs.j, pairs.shifts, 5.0)
    finally:
        ase_mlff.set_num_threads(before)
    for a, b in zip(out[1], out[2]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    fresh = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    assert len(out[2][0]) == len(fresh)


# --------------------------------------------------------------------------------------------
# Threads: large searches run on the thread pool and give the serial list, bit for bit
# --------------------------------------------------------------------------------------------

FIELDS = ("i", "j", "shifts", "vectors", "distances")


@pytest.fixture
def set_threads():
    """ase_mlff.set_num_threads, with the count restored afterwards."""
    before = ase_mlff.get_num_threads()
    yield ase_mlff.set_num_threads
    ase_mlff.set_num_threads(before)


def large_system(name):
    """(positions, cell, pbc, cutoff, self_interaction): all above the size from which the
    search shares its work (about 6e4 candidate pairs)."""
    rng = np.random.default_rng(7)
    if name == "fcc":
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((10, 10, 10))
        atoms.rattle(0.05, seed=1)
        return atoms.positions, atoms.cell.array, atoms.pbc, 5.0, False
    if name == "diamond":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((8, 8, 8))
        atoms.rattle(0.05, seed=2)
        return atoms.positions, atoms.cell.array, atoms.pbc, 4.5, True
    if name == "slab":  # periodic along a and b only
        atoms = fcc111("Cu", size=(16, 16, 8), vacuum=10.0)
        atoms.rattle(0.05, seed=3)
        return atoms.positions, atoms.cell.array, atoms.pbc, 5.0, False
    if name == "triclinic":  # some atoms outside the cell
        cell = np.array([[30.0, 0.0, 0.0], [9.0, 28.0, 0.0], [6.0, 7.0, 26.0]])
        return rng.random((3000, 3)) @ cell - 3.0, cell, [True] * 3, 4.5, False
    if name == "wire":  # periodic along a only
        cell = np.diag([10.0, 0.0, 0.0])
        return rng.random((3000, 3)) * [10.0, 30.0, 30.0], cell, [True, False, False], 4.0, False
    if name == "cluster":  # no periodicity: a rattled copper ball
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((14, 14, 14))
        atoms.rattle(0.05, seed=5)
        p = atoms.positions - atoms.positions.mean(axis=0)
        return p[np.linalg.norm(p, axis=1) < 22.0], np.zeros((3, 3)), [False] * 3, 5.0, False
    if name == "at_cutoff":
        # Simple cubic, 1 Å spacing, cutoff 2 Å: every coordinate is an integer, so the 6
        # neighbours at exactly 2 Å pass the search's loose test but not the strict one, in
        # every chunk of atoms; the threads' slices of the output are then closed up.
        grid = np.stack(np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
        return grid, np.eye(3) * 16.0, [True] * 3, 2.0, False
    raise ValueError(name)


LARGE = ["fcc", "diamond", "slab", "triclinic", "wire", "cluster", "at_cutoff"]


@pytest.mark.parametrize("name", LARGE)
def test_threaded_search_is_the_serial_one(name, set_threads):
    positions, cell, pbc, cutoff, self_interaction = large_system(name)
    out = {}
    for n in (1, 2, 3):
        set_threads(n)
        out[n] = neighbor_list(positions, cell, pbc, cutoff, self_interaction)
        assert ase_mlff.threads.last_threads_used() == n
    for n in (2, 3):
        for field in FIELDS:
            a, b = getattr(out[1], field), getattr(out[n], field)
            assert a.dtype == b.dtype and np.array_equal(a, b), (name, n, field)
    # an explicit count in the call is used as given, whatever the setting
    got = _ext._core.neighbor_list(positions, cell, pbc, cutoff, self_interaction, n_threads=2)
    assert _ext._core.last_threads_used() == 2
    assert all(np.array_equal(a, getattr(out[1], f)) for a, f in zip(got, FIELDS))
    if name == "at_cutoff":
        assert len(out[1]) == 26 * len(positions)  # 6 at 1 Å, 12 at 1.41 Å, 8 at 1.73 Å
        assert out[1].distances.max() < 2.0


def test_threaded_search_matches_the_brute_force(set_threads):
    positions, cell, pbc, cutoff, _ = large_system("wire")  # the cheapest for the brute force
    set_threads(2)
    compare_with_references(positions, cell, pbc, cutoff, with_ase=False)
    assert ase_mlff.threads.last_threads_used() == 2


def test_small_searches_stay_on_the_calling_thread(set_threads):
    set_threads(2)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))
    neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.0)
    assert ase_mlff.threads.last_threads_used() == 1
    with pytest.raises(ValueError, match="n_threads"):
        _ext._core.neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0, n_threads=-1)


def test_concurrent_threaded_searches_are_the_serial_one(set_threads):
    """Two Python threads searching at once (one finds the pool busy and searches alone)."""
    positions, cell, pbc, cutoff, _ = large_system("fcc")
    set_threads(1)
    reference = neighbor_list(positions, cell, pbc, cutoff)
    set_threads(2)
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(neighbor_list(positions, cell, pbc, cutoff))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors and len(results) == 6
    for p in results:
        assert all(np.array_equal(getattr(p, f), getattr(reference, f)) for f in FIELDS)


def test_closest_pair_of_a_stored_list(set_threads):
    """_ext.closest_pair: the closest pair of an existing list for new positions, the same on
    any thread count, (inf, -1) for an empty list."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((8, 8, 8))
    atoms.rattle(0.05, seed=5)
    p = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
    moved = atoms.positions + np.random.default_rng(3).normal(scale=0.05, size=atoms.positions.shape)
    v = moved[p.j] - moved[p.i] + p.shifts @ atoms.cell.array
    d = np.linalg.norm(v, axis=1)
    for n in (1, 2):
        set_threads(n)
        d2, k = _ext._core.closest_pair(moved, atoms.cell.array, p.i, p.j, p.shifts)
        assert k == int(np.argmin(d)) and np.sqrt(d2) == pytest.approx(d.min(), rel=1e-14)
    assert _ext._core.closest_pair(moved, atoms.cell.array, p.i[:0], p.j[:0], p.shifts[:0]) == (np.inf, -1)
