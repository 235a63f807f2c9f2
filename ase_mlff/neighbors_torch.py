"""Neighbour lists on the model's torch device: a cell list written in torch, and its Verlet skin.

Same pairs as the compiled list (:mod:`ase_mlff.neighbors`), same conventions: a pair
``(i, j, S)`` has ``vector = positions[j] - positions[i] + S @ cell`` and ``|vector| < cutoff``;
the list is full; the self pair ``(i, i, 0)`` never appears, images of an atom in a cell
smaller than the cutoff do; ``S`` is zero along non-periodic directions; pairs are sorted by
``i``. Vectors and distances are computed from the caller's positions in float64 with the
compiled code's expression and order of operations, so both lists keep exactly the same pairs
(also those within rounding of the cutoff) and give the same vectors bit for bit.

Why: a model on a GPU served through the compiled list sends positions to the host, the pairs
back to the device, every step. :func:`torch_neighbor_list` and :class:`TorchNeighborList` run
where the positions are (CPU, CUDA, any device torch supports with float64), so the
calculator uploads the positions once per step and the pairs never leave the device.

Algorithm. As in the compiled search, atoms are expressed in a basis made of the periodic
cell vectors and, for each non-periodic direction, a unit vector orthogonal to them (so a
non-periodic cell vector may be zero), wrapped into the cell along periodic directions only
and binned: along a periodic direction ``floor(h / cutoff)`` bins (``h``: the cell's height,
the distance between lattice planes), along an open one bins over the atoms' extent, each bin
at least a cutoff thick; the grid is capped at ``max(64, 2N)`` bins so that sparse systems cost
O(N). Each atom is compared with the atoms of the bins within ``reach`` bins (one, or more
when the cell is thinner than the cutoff: every needed periodic image is then one bin of the
stencil, through its image shift). All of it is vectorised: (atom, stencil bin) items are
expanded into candidate pairs with ``repeat_interleave``, a loose test on the wrapped
coordinates keeps the few candidates per pair, and the exact test on the caller's positions
decides. There is no N x N distance matrix: memory is linear in the atoms (and the pairs).

Bounded memory. Items and candidates are generated in chunks: at most ``chunk`` items (atom x
stencil bin) at a time and, per pass, the candidates of consecutive items up to ``chunk`` plus
one item's (one bin's atoms). Beyond the output (60 bytes per pair, and while the chunks are
joined one more field, 24 bytes per pair) and ~150 bytes per atom, the working memory is
proportional to ``chunk`` alone, whatever the system: below 150 MB at the default
``CHUNK = 2**19`` (measured on the CPU for 108,000 and 256,000 atoms of fcc Cu at 5 Å: peak
resident memory 375 and 888 MB for outputs of 260 and 615 MB). Only a bin holding more atoms
than ``chunk`` exceeds that, by its atoms (a dense cluster of a million atoms with one atom far
away shares a bin; the compiled search is slow on it too). The Python loop over chunks runs
between bounded torch operations, so Ctrl-C stops a long search promptly.

Bounded work. The same refusals, with the same messages, as the compiled search, computed
from the cell, the cutoff and the atom count before any pair is generated: ``MAX_IMAGES``,
``MAX_PAIRS``, ``MAX_CANDIDATES`` (see :mod:`ase_mlff.neighbors`), an
:class:`~ase_mlff.errors.InputError` naming the bound.

Host reads. The 3 x 3 geometry of the search (basis, heights, bin counts, limits) is computed
on the host from the cell; a build reads back a handful of numbers (the atoms' extent, the
candidate counts of each chunk) and synchronises on every compaction, which is inherent to
lists of data-dependent length. :meth:`TorchNeighborList.update` without a rebuild reads one
boolean (rebuild or not) and synchronises once more to compact the pairs within the cutoff
(the count of kept pairs); no positions or pairs are copied to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .neighbors import MAX_CANDIDATES, MAX_IMAGES, MAX_PAIRS, NeighborList

# Items (atom x stencil bin) per chunk, and candidate pairs per pass (plus one bin's atoms):
# below 150 MB of working memory (see the module docstring).
CHUNK = 1 << 19

_AXIS = ("a", "b", "c")
_REDUCE_HINT = ("Check the cell; if it is right, describe the same lattice by a reduced cell first, "
                "e.g. atoms.set_cell(atoms.cell.minkowski_reduce()[0]), or use a smaller cutoff.")


@dataclass
class TorchPairs:
    """A full neighbour list as tensors on one device; aligned pair by pair (like
    :class:`~ase_mlff.neighbors.Pairs`)."""

    i: torch.Tensor  # (P,) int64
    j: torch.Tensor  # (P,) int64
    shifts: torch.Tensor  # (P, 3) int32, integer cell shifts
    vectors: torch.Tensor  # (P, 3) float64, Å
    distances: torch.Tensor  # (P,) float64, Å

    def __len__(self) -> int:
        return int(self.i.shape[0])


# --------------------------------------------------------------------------------------------
# The search geometry (3 x 3, on the host): the compiled search's, operation for operation
# --------------------------------------------------------------------------------------------


def _cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a):
    return math.sqrt(_dot(a, a))


def _scaled(a, s):
    return [a[0] * s, a[1] * s, a[2] * s]


def _search_basis(cell, pbc):
    """Rows: the periodic cell vectors and, along open directions, unit vectors orthogonal to
    them. Raises InputError for a cell the search cannot use (as the compiled search does)."""
    periodic = [d for d in range(3) if pbc[d]]
    free = [d for d in range(3) if not pbc[d]]
    for d in periodic:
        n = _norm(cell[d])
        if not (n > 0.0) or not math.isfinite(n):
            raise InputError(f"cell vector {_AXIS[d]} is zero or not finite but that direction is periodic")
    basis = [[0.0, 0.0, 0.0] for _ in range(3)]
    for d in periodic:
        basis[d] = list(cell[d])
    if not periodic:
        basis = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    elif len(periodic) == 1:
        a = cell[periodic[0]]
        k = 0  # the axis least aligned with a
        for d in (1, 2):
            if abs(a[d]) < abs(a[k]):
                k = d
        e = [0.0, 0.0, 0.0]
        e[k] = 1.0
        u = _cross(a, e)
        u = _scaled(u, 1.0 / _norm(u))
        w = _cross(a, u)
        w = _scaled(w, 1.0 / _norm(w))
        basis[free[0]], basis[free[1]] = u, w
    elif len(periodic) == 2:
        a, b = cell[periodic[0]], cell[periodic[1]]
        n = _cross(a, b)
        nn = _norm(n)
        if not (nn > 1e-12 * _norm(a) * _norm(b)):
            raise InputError("the two periodic cell vectors are parallel")
        basis[free[0]] = _scaled(n, 1.0 / nn)
    else:
        vol = _dot(cell[0], _cross(cell[1], cell[2]))
        if not (abs(vol) > 1e-12 * _norm(cell[0]) * _norm(cell[1]) * _norm(cell[2])):
            raise InputError("the periodic cell has zero volume (singular cell)")
    return basis


def _inverse(m):
    """(m^-1)[k][d]: r . m^-1 are the coordinates of r in the basis m (rows)."""
    c = [_cross(m[1], m[2]), _cross(m[2], m[0]), _cross(m[0], m[1])]
    det = _dot(m[0], c[0])
    if det == 0.0 or not math.isfinite(det):
        raise InputError("singular search basis")
    return [[c[d][k] / det for d in range(3)] for k in range(3)]


def _describe_heights(height, pbc) -> str:
    total = sum(bool(p) for p in pbc)
    s, count = "", 0
    for d in range(3):
        if not pbc[d]:
            continue
        s += "its height along " if count == 0 else (" and along " if count + 1 == total else ", along ")
        s += _AXIS[d] + (" is " if count == 0 else " ") + "%.3g" % height[d] + " Å"
        count += 1
    return s


def _check_images(height, pbc, cutoff) -> None:
    images, reach = 1.0, [0.0, 0.0, 0.0]
    for d in range(3):
        if pbc[d]:
            reach[d] = math.ceil(cutoff / height[d])
            images *= 2.0 * reach[d] + 1.0
    if not images > MAX_IMAGES:
        return
    cells = " x ".join("%.0f" % reach[d] for d in range(3) if pbc[d])
    raise InputError(
        "the periodic cell is nearly singular or very skewed for this cutoff: "
        + _describe_heights(height, pbc) + " (distances between lattice planes), so the "
        + "%g" % cutoff + " Å cutoff reaches " + cells + " cells on either side, "
        + "%.3g" % images + " periodic images in all; the neighbour search refuses more than "
        + "%.0e" % MAX_IMAGES + ". " + _REDUCE_HINT)


def _grid(n, cutoff, pbc, recip_norm, extent, span, fine):
    """Bins per direction and the bins within reach on either side (the compiled search's
    rules; ``fine`` = 1: bins at least a cutoff thick)."""
    nbins = [int(min(max(math.floor(extent[d] * fine / cutoff), 1.0), float(1 << 20))) for d in range(3)]
    max_bins = max(64.0, 2.0 * n)
    while float(nbins[0]) * nbins[1] * nbins[2] > max_bins:
        dmax = 0
        for d in (1, 2):
            if nbins[d] > nbins[dmax]:
                dmax = d
        nbins[dmax] = max(1, nbins[dmax] // 2)
    reach = [0, 0, 0]
    for d in range(3):
        if pbc[d]:
            x = cutoff * recip_norm[d] * nbins[d]
            reach[d] = int(math.ceil(x * (1.0 + 1e-9) + 1e-9))
        elif nbins[d] == 1 or span[d] <= 0.0:
            reach[d] = 0
        else:
            x = cutoff * recip_norm[d] * nbins[d] / span[d]
            r = math.ceil(x * (1.0 + 1e-9) + 1e-9)
            reach[d] = nbins[d] - 1 if r >= nbins[d] - 1 else int(r)
    return nbins, reach


def _check_work(n, cutoff, pbc, basis, height, recip_norm, extent, span) -> None:
    """The compiled search's MAX_PAIRS and MAX_CANDIDATES refusals, estimated on the compiled
    search's own grid, so that both lists refuse exactly the same inputs."""
    coarse_bins = 1.0
    for d in range(3):
        coarse_bins *= min(max(math.floor(extent[d] / cutoff), 1.0), 1e7)
    fine = 2.0 if n / coarse_bins >= 2.0 else 1.0
    nbins, reach = _grid(n, cutoff, pbc, recip_norm, extent, span, fine)
    dn = float(n)
    sphere = 4.0 / 3.0 * 3.14159265358979323846 * cutoff * cutoff * cutoff
    volume = abs(_dot(basis[0], _cross(basis[1], basis[2])))
    visited = 1.0
    for d in range(3):
        if not pbc[d]:
            volume *= max(extent[d], 2.0 * cutoff)
        steps = 2.0 * reach[d] + 1.0
        visited *= steps if pbc[d] else min(steps, float(nbins[d]))
    pairs = dn * min(dn * sphere / volume, dn * visited)
    if pairs > MAX_PAIRS:
        raise InputError(
            "about " + "%.2g" % pairs + " pairs are expected within the " + "%g" % cutoff
            + " Å cutoff (" + "%.0f" % dn + " atoms at " + "%.3g" % (dn / volume) + " atoms/Å^3), "
            + "%.3g" % (pairs * 60e-9) + " GB of output; the neighbour search refuses more than "
            + "%.0e" % MAX_PAIRS + ". Check that the positions and the cell are in Å, or use a smaller cutoff.")
    candidates = dn * visited * (dn / float(nbins[0] * nbins[1] * nbins[2]))
    if candidates > MAX_CANDIDATES:
        if any(pbc):
            why = ("for this cutoff the cell is too thin or too skewed (" + _describe_heights(height, pbc)
                   + "). " + _REDUCE_HINT)
        else:
            why = ("the atoms are too dense for this cutoff. Check that the positions are in Å, "
                   "or use a smaller cutoff.")
        raise InputError(
            "the neighbour search would test about " + "%.2g" % candidates + " candidate pairs to find about "
            + "%.2g" % pairs + " (it refuses more than " + "%.0e" % MAX_CANDIDATES + "): " + why)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _host_pbc(pbc) -> np.ndarray:
    if isinstance(pbc, torch.Tensor):
        pbc = pbc.detach().cpu().numpy()
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    if pbc.size == 1:
        pbc = np.repeat(pbc, 3)
    if pbc.size != 3:
        raise InputError(f"pbc must be a bool or 3 bools, got {pbc}")
    return pbc


def _as_tensors(positions, cell, device=None):
    """(positions, cell) as float64 tensors on one device (the positions' unless given)."""
    if not isinstance(positions, torch.Tensor):
        positions = torch.as_tensor(np.asarray(positions, dtype=np.float64), device=device)
    positions = positions.detach().to(device=device, dtype=torch.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"positions must have shape (N, 3), got {tuple(positions.shape)}")
    if not isinstance(cell, torch.Tensor):
        cell = torch.as_tensor(np.asarray(cell, dtype=np.float64))
    if cell.numel() != 9:
        raise InputError(f"cell must have 3 x 3 entries, got shape {tuple(cell.shape)}")
    cell = cell.detach().to(device=positions.device, dtype=torch.float64).reshape(3, 3)
    return positions, cell


def _empty(device) -> TorchPairs:
    return TorchPairs(torch.zeros(0, dtype=torch.long, device=device),
                      torch.zeros(0, dtype=torch.long, device=device),
                      torch.zeros((0, 3), dtype=torch.int32, device=device),
                      torch.zeros((0, 3), dtype=torch.float64, device=device),
                      torch.zeros(0, dtype=torch.float64, device=device))


def _exact(positions, cell, i, j, shifts):
    """``r_j - r_i + S @ cell`` and its squared norm, in the compiled code's order of operations
    (no fused multiply-adds: elementwise kernels), so both lists agree to the last bit."""
    s = shifts.to(torch.float64)
    shift_vec = s[:, 0:1] * cell[0] + s[:, 1:2] * cell[1] + s[:, 2:3] * cell[2]
    v = positions.index_select(0, j) - positions.index_select(0, i) + shift_vec
    rr = v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2]
    return v, rr


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


def torch_neighbor_list(positions, cell, pbc, cutoff: float, chunk: int = CHUNK) -> TorchPairs:
    """Full neighbour list of all pairs closer than ``cutoff`` (Å), computed on the device of
    ``positions`` (an (N, 3) tensor; arrays are taken as CPU tensors).

    ``cell``: (3, 3) rows are cell vectors (tensor or array; a non-periodic row is ignored and
    may be zero); ``pbc``: 3 flags (best given on the host). Same pairs and conventions as
    :func:`ase_mlff.neighbors.neighbor_list`, same :class:`~ase_mlff.errors.InputError` for
    unusable or too costly inputs. ``chunk``: items per chunk (see the module docstring: the
    working memory is proportional to it). Returns a :class:`TorchPairs` on that device.
    """
    positions, cell_t = _as_tensors(positions, cell)
    device = positions.device
    pbc = _host_pbc(pbc)
    cutoff = float(cutoff)
    if not (cutoff > 0.0) or not math.isfinite(cutoff):
        raise InputError("cutoff must be a positive finite number")
    chunk = max(1, int(chunk))
    cell_h = cell_t.cpu().numpy()
    if not np.all(np.isfinite(cell_h)):
        raise InputError("the cell contains NaN or infinite entries")
    n = int(positions.shape[0])
    if n == 0:
        return _empty(device)

    cell_rows = [[float(x) for x in row] for row in cell_h]
    basis = _search_basis(cell_rows, pbc)
    inv = _inverse(basis)
    recip_norm = [math.sqrt(inv[0][d] ** 2 + inv[1][d] ** 2 + inv[2][d] ** 2) for d in range(3)]
    height = [1.0 / r for r in recip_norm]
    _check_images(height, pbc, cutoff)

    # Fractional coordinates in the search basis, wrapped along periodic directions; offset is
    # the image an atom was moved back from: wrapped = positions - offset @ cell.
    per = torch.as_tensor(pbc, device=device)
    frac = positions @ torch.tensor(inv, dtype=torch.float64, device=device)
    offset = torch.where(per, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - offset
    per_cell = torch.where(per[:, None], cell_t, torch.zeros_like(cell_t))  # open rows zeroed
    wrapped = positions - offset @ per_cell
    # One read for all the checks and the extent: finite, within 1e9 cells, min and max.
    stats = torch.cat([torch.isfinite(positions).all().reshape(1).to(torch.float64),
                       torch.isfinite(frac).all().reshape(1).to(torch.float64),
                       offset.abs().max().reshape(1), frac.min(0).values, frac.max(0).values]).cpu().numpy()
    if not stats[0]:
        bad = torch.nonzero(~torch.isfinite(positions).all(1)).reshape(-1)[:10].tolist()
        raise InputError(f"positions of atoms {bad} are NaN or infinite")
    if not stats[1]:
        raise InputError("positions must be finite")
    if stats[2] > 1e9:
        raise InputError("an atom lies more than 1e9 cell lengths outside the periodic cell")
    lo, span, extent = [0.0] * 3, [1.0] * 3, [0.0] * 3
    for d in range(3):
        if pbc[d]:
            extent[d] = height[d]
        else:
            lo[d] = float(stats[3 + d])
            span[d] = float(stats[6 + d]) - lo[d]
            extent[d] = span[d] * (1.0 / recip_norm[d])
    _check_work(n, cutoff, pbc, basis, height, recip_norm, extent, span)

    # The grid searched here: bins at least a cutoff thick.
    nbins, reach = _grid(n, cutoff, pbc, recip_norm, extent, span, 1.0)
    total_bins = nbins[0] * nbins[1] * nbins[2]
    nb = torch.tensor(nbins, dtype=torch.long, device=device)
    scale = torch.tensor([nbins[d] / span[d] if span[d] > 0.0 else 0.0 for d in range(3)],
                         dtype=torch.float64, device=device)
    u = (frac - torch.tensor(lo, dtype=torch.float64, device=device)) * scale
    bin3 = torch.minimum(torch.floor(u).clamp(min=0.0).to(torch.long), nb - 1)
    lin = (bin3[:, 0] * nbins[1] + bin3[:, 1]) * nbins[2] + bin3[:, 2]
    order = torch.argsort(lin, stable=True)  # slot k holds atom order[k]
    start = torch.zeros(total_bins + 1, dtype=torch.long, device=device)
    start[1:] = torch.cumsum(torch.bincount(lin, minlength=total_bins), 0)
    wrapped_sorted = wrapped[order].T.contiguous()  # (3, N): x, y, z of the atoms in bin order
    offset = offset.to(torch.long)
    del frac, u, lin

    # The stencil: bin steps k_d in [-reach_d, reach_d]; a step beyond the grid is another
    # periodic image (periodic d) or nothing (open d). Generated piece by piece.
    m_all = (2 * reach[0] + 1) * (2 * reach[1] + 1) * (2 * reach[2] + 1)
    cut2 = cutoff * cutoff
    loose2 = cut2 * (1.0 + 1e-9)

    out = []
    # Atom-major order throughout (chunks of consecutive atoms, items atom by atom, candidates
    # item by item; a stencil split into pieces only with one atom per chunk): the output comes
    # sorted by i without a sort.
    atoms_per_chunk = max(1, chunk // m_all)
    piece = min(m_all, chunk)
    for a0 in range(0, n, atoms_per_chunk):
        atoms = torch.arange(a0, min(n, a0 + atoms_per_chunk), device=device)
        for s0 in range(0, m_all, piece):
            stencil = _stencil(s0, min(m_all, s0 + piece), reach, device)
            out += _chunk_pairs(atoms, stencil, bin3, nbins, pbc, per_cell, start, order,
                                wrapped, wrapped_sorted, offset, positions, cell_t, loose2, cut2, chunk)
    if not out:
        return _empty(device)
    # joined field by field, each field's chunks freed once joined: the output at most once
    # plus one field (the vectors) in memory
    fields = [list(t) for t in zip(*out)]
    del out
    joined = []
    for f in range(len(fields)):
        joined.append(torch.cat(fields[f]))
        fields[f] = None
    return TorchPairs(*joined)


def _stencil(s0, s1, reach, device):
    """Steps s0 .. s1 - 1 of the stencil [-reach_0, reach_0] x [-reach_1, reach_1] x ... (C order)."""
    n1, n2 = 2 * reach[1] + 1, 2 * reach[2] + 1
    flat = torch.arange(s0, s1, device=device)
    return torch.stack([flat // (n1 * n2) - reach[0], (flat // n2) % n1 - reach[1], flat % n2 - reach[2]], 1)


def _take(t, index):
    """``t[index]`` along the first axis (index_select: several times faster on CPU than indexing)."""
    return t.index_select(0, index)


def _chunk_pairs(atoms, stencil, bin3, nbins, pbc, per_cell, start, order, wrapped, wrapped_sorted,
                 offset, positions, cell, loose2, cut2, chunk):
    """Pairs of the atoms ``atoms`` with the atoms of the bins ``stencil`` steps away."""
    device = atoms.device
    m = int(stencil.shape[0])
    # items: (atom, stencil step) -> the neighbouring bin, the image it is seen through, its atoms
    b = _take(bin3, atoms)
    cs, qs, valid = [], [], None
    for d in range(3):
        c = (b[:, d:d + 1] + stencil[:, d]).reshape(-1)
        if pbc[d]:
            q = torch.div(c, nbins[d], rounding_mode="floor")
            c = c - q * nbins[d]
        else:
            q = torch.zeros_like(c)
            inside = (c >= 0) & (c < nbins[d])
            valid = inside if valid is None else valid & inside
            c = c.clamp(0, nbins[d] - 1)
        cs.append(c)
        qs.append(q)
    lin = (cs[0] * nbins[1] + cs[1]) * nbins[2] + cs[2]
    q = torch.stack(qs, 1)
    first = _take(start, lin)
    count = _take(start, lin + 1) - first
    if valid is not None:
        count = count * valid
    item_atom = atoms.repeat_interleave(m)
    # search-space shift of each item: its image, relative to the centre atom
    base = (q.to(torch.float64) @ per_cell - _take(wrapped, item_atom)).T.contiguous()  # (3, items)
    cum = torch.zeros(count.shape[0] + 1, dtype=torch.long, device=device)
    cum[1:] = torch.cumsum(count, 0)
    total = int(cum[-1])
    if total == 0:
        return []
    delta = first - cum[:-1]  # slot of an item's k-th candidate: cum[item] + k + delta[item]
    # passes over consecutive items with at most `chunk` candidates each, or one item's (one read)
    if total <= chunk:
        bounds = [(0, count.shape[0], 0, total)]
    else:
        marks = torch.arange(chunk, total, chunk, device=device)
        cuts = torch.searchsorted(cum[1:], marks, right=True)  # items whose candidates end by a mark
        cuts = torch.cat([torch.zeros(1, dtype=torch.long, device=device), cuts,
                          torch.tensor([count.shape[0]], device=device)])
        cuts = torch.unique_consecutive(cuts)
        host = torch.stack([cuts, _take(cum, cuts)]).cpu().tolist()
        bounds = [(host[0][t], host[0][t + 1], host[1][t], host[1][t + 1]) for t in range(len(host[0]) - 1)]
    out = []
    for e0, e1, c0, c1 in bounds:
        if c1 == c0:
            continue
        rep = torch.repeat_interleave(torch.arange(e0, e1, device=device), count[e0:e1], output_size=c1 - c0)
        k = torch.arange(c0, c1, device=device) + _take(delta, rep)  # slot of the neighbour
        # loose test on the wrapped coordinates (small numbers), keeps a few candidates per pair;
        # coordinate by coordinate: 1-D gathers and no reduction over a short axis (both slow on CPU)
        rr = None
        for w, bw in zip(wrapped_sorted, base):
            dw = _take(w, k) + _take(bw, rep)
            rr = dw * dw if rr is None else rr + dw * dw
        idx = torch.nonzero(rr < loose2).reshape(-1)
        if idx.numel() == 0:
            continue
        rep, k = _take(rep, idx), _take(k, idx)
        a, j = _take(item_atom, rep), _take(order, k)
        shifts = _take(q, rep) - _take(offset, j) + _take(offset, a)
        # the exact test on the caller's positions; the self pair (own bin, zero image) excluded
        v, rr = _exact(positions, cell, a, j, shifts)
        self_pair = (j == a) & (shifts == 0).all(1)
        idx = torch.nonzero((rr < cut2) & ~self_pair).reshape(-1)
        out.append((_take(a, idx), _take(j, idx), _take(shifts, idx).to(torch.int32), _take(v, idx),
                    torch.sqrt(_take(rr, idx))))
    return out


# --------------------------------------------------------------------------------------------
# Verlet skin on the device
# --------------------------------------------------------------------------------------------


def filter_pairs(positions, cell, pairs: TorchPairs, cutoff: float) -> TorchPairs:
    """The pairs of ``pairs`` closer than ``cutoff`` for new positions and cell, vectors
    recomputed (as :func:`ase_mlff._ext.filter_pairs` does, bit for bit), order kept."""
    v, rr = _exact(positions, cell, pairs.i, pairs.j, pairs.shifts)
    idx = torch.nonzero(rr < cutoff * cutoff).reshape(-1)
    return TorchPairs(pairs.i[idx], pairs.j[idx], pairs.shifts[idx], v[idx], torch.sqrt(rr[idx]))


class TorchNeighborList:
    """:class:`~ase_mlff.neighbors.NeighborList` on the positions' device.

    The list is built for ``cutoff + skin`` and reused while no atom has moved more than
    ``skin / 2`` since the build and the cell, pbc and atom count are unchanged; every call
    returns the pairs closer than ``cutoff`` for the current positions, the same pairs as a
    fresh list. Deciding reads one boolean from the device (the largest displacement against
    ``skin / 2`` and the cell comparison, in one); keeping the pairs within the cutoff
    synchronises once for their count. Nothing else leaves the device.

    >>> nl = TorchNeighborList(cutoff=5.0, skin=0.5)
    >>> pairs = nl.update(positions, cell, atoms.pbc)    # doctest: +SKIP
    """

    def __init__(self, cutoff: float, skin: float = 0.5, chunk: int = CHUNK):
        NeighborList.__init__(self, cutoff, skin)  # the same checks and bookkeeping
        self.chunk = int(chunk)

    def _needs_rebuild(self, positions, cell, pbc) -> bool:
        ref = self._ref_positions
        if self._pairs is None or self.skin == 0.0:
            return True
        if positions.shape != ref.shape or positions.device != ref.device or not np.array_equal(pbc, self._ref_pbc):
            return True
        if positions.shape[0] == 0:
            return not torch.equal(cell, self._ref_cell)
        disp = positions - ref
        moved = (disp * disp).sum(1).max() > (0.5 * self.skin) ** 2
        return bool(moved | (cell != self._ref_cell).any())  # the one read

    def update(self, positions, cell, pbc) -> TorchPairs:
        """Pairs within ``cutoff`` for the current geometry, rebuilding only when needed.

        ``positions``: (N, 3) tensor on the device the pairs are wanted on; ``cell``: (3, 3)
        (a tensor on that device avoids an upload); ``pbc``: 3 flags on the host.
        """
        positions, cell = _as_tensors(positions, cell)
        pbc = _host_pbc(pbc)
        self.n_updates += 1
        if self._needs_rebuild(positions, cell, pbc):
            self._pairs = torch_neighbor_list(positions, cell, pbc, self.cutoff + self.skin, chunk=self.chunk)
            # copies: a CPU tensor may share memory with atoms.positions, which MD moves in place
            self._ref_positions = positions.clone()
            self._ref_cell = cell.clone()
            self._ref_pbc = pbc.copy()
            self.n_builds += 1
            if self.skin == 0.0:
                return self._pairs
        return filter_pairs(positions, cell, self._pairs, self.cutoff)

    def reset(self) -> None:
        """Forget the stored list; the next update rebuilds."""
        self._pairs = None
