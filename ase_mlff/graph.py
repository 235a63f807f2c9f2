"""Atoms -> tensors: the one input every model receives.

A :class:`Graph` holds one structure or a batch of structures (atoms of structure ``b`` have
``batch == b``) with their neighbour pairs. :func:`graph_from_structure` is the one builder:
the calculator (one ``ase.Atoms``), ``evaluate_batch`` and training (dataset frames, through
:class:`FrameGraphs`, which computes each frame's neighbour list once) all use it, so a model
sees exactly the same input when it is trained and when it is served. On a GPU the calculator
builds the same Graph with :func:`graph_from_tensors` from tensors already on the device and
pairs from :mod:`ase_mlff.neighbors_torch`, so nothing per step goes through the host.
Edge vectors are always computed from the positions and the cell, ``r_j - r_i + S @ cell``,
so that autograd sees every dependence: forces are ``-dE/dpositions`` and, after
:meth:`Graph.strained`, the stress is ``(1/V) dE/d(strain)``, exact derivatives of the
model's energy.

Two dtypes. The geometry (positions, cell, shifts, strain) is always float64; ``Graph.dtype``
is the dtype the model computes in. Edge vectors are formed in float64 and only then rounded
to ``Graph.dtype``, so a float32 model sees the same pair vectors (to float32 rounding of the
vector) wherever the structure sits: float32 absolute coordinates of 1e4 Å are spaced
~1e-3 Å apart, and even at 50 Å their rounding (~4e-6 Å) moves forces by ~1e-4 eV/Å.
Forces and virials come back in ``Graph.dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from .neighbors import Pairs, neighbor_list
from .neighbors_torch import TorchPairs


GEOMETRY_DTYPE = torch.float64


@dataclass
class Graph:
    positions: torch.Tensor  # (N, 3) float64
    numbers: torch.Tensor  # (N,) int64 atomic numbers
    cell: torch.Tensor  # (B, 3, 3) float64, rows are cell vectors
    pbc: torch.Tensor  # (B, 3) bool
    edge_index: torch.Tensor  # (2, P) int64: i (centre), j (neighbour)
    shifts: torch.Tensor  # (P, 3) integer cell shifts, as float64
    batch: torch.Tensor  # (N,) int64 structure index of each atom
    n_graphs: int = 1
    strain: torch.Tensor | None = None  # (B, 3, 3) float64 when built by strained()
    dtype: torch.dtype = torch.float64  # the dtype the model computes in (and returns forces in)

    def __post_init__(self):
        # the geometry stays float64 whatever the model's dtype (module docstring); converting
        # a float64 tensor is a no-op, and .to() keeps autograd's link to a caller's leaf
        for name in ("positions", "cell", "shifts"):
            t = getattr(self, name)
            if t.dtype != GEOMETRY_DTYPE:
                setattr(self, name, t.to(GEOMETRY_DTYPE))

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def edge_vectors(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(P, 3) vectors from atom i to the image of atom j, formed in float64 and returned in
        ``dtype`` (default: the graph's compute dtype)."""
        i, j = self.edge_index
        # index_select and addmm: the same numbers as positions[j] - positions[i] + shifts @ cell,
        # several times faster on large pair lists (the (P, 3) @ (3, 3) product alone was
        # slower than the whole BPNN core on 1,536 atoms with two threads); in place, because
        # on millions of pairs every fresh (P, 3) array is a round of page faults (the same
        # numbers either way)
        vec = self.positions.index_select(0, j)
        vec.sub_(self.positions.index_select(0, i))
        if self.n_graphs == 1:
            return vec.addmm_(self.shifts, self.cell[0]).to(dtype or self.dtype)
        owner = self.batch.index_select(0, i)
        if owner.numel() and bool((owner[1:] >= owner[:-1]).all()):
            # pairs grouped by structure (batch_graphs makes them so): the same addmm on each
            # structure's slice, so a structure gets the same vectors in a batch as alone
            counts = torch.bincount(owner, minlength=self.n_graphs).tolist()
            parts = [torch.addmm(v, s, self.cell[b]) for b, (v, s) in
                     enumerate(zip(vec.split(counts), self.shifts.split(counts)))]
            return torch.cat(parts).to(dtype or self.dtype)
        vec = vec + torch.einsum("pk,pkl->pl", self.shifts, self.cell[owner])
        return vec.to(dtype or self.dtype)

    def strained(self) -> "Graph":
        """Copy in which positions and cell are deformed by a zero strain that requires grad.

        With ``eps`` symmetric, ``r -> r (1 + eps)`` and ``cell -> cell (1 + eps)``; the
        derivative of the energy with respect to ``eps`` at zero is the virial-like tensor
        ``V * stress`` in ASE's sign convention.
        """
        eps = torch.zeros((self.n_graphs, 3, 3), dtype=GEOMETRY_DTYPE, device=self.device, requires_grad=True)
        sym = 0.5 * (eps + eps.transpose(1, 2))
        if self.n_graphs == 1:
            positions = self.positions + self.positions @ sym[0]
        else:
            positions = self.positions + torch.einsum("nk,nkl->nl", self.positions, sym[self.batch])
        cell = self.cell + self.cell @ sym
        return replace(self, positions=positions, cell=cell, strain=eps)

    def to(self, device=None, dtype=None) -> "Graph":
        """The graph on ``device`` with compute dtype ``dtype`` (the geometry stays float64)."""
        names = ("positions", "numbers", "cell", "pbc", "edge_index", "shifts", "batch")
        return replace(self, **{n: getattr(self, n).to(device=device) for n in names}, dtype=dtype or self.dtype)


def graph_from_arrays(
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    pairs: Pairs | None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    edges: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Graph:
    """Single-structure graph. ``pairs`` may be None for global models (no neighbour list).
    ``edges``: ``(edge_index, shifts)`` tensors made before (shifts float64, both on the device
    asked for), used instead of ``pairs``; the calculator reuses them between MD steps."""
    n = len(numbers)
    if edges is not None:
        edge_index, shifts = edges
    elif pairs is None:
        edge_index = torch.zeros((2, 0), dtype=torch.long)
        shifts = torch.zeros((0, 3), dtype=GEOMETRY_DTYPE)
    else:
        edge_index = torch.from_numpy(np.stack([pairs.i, pairs.j]))
        shifts = torch.from_numpy(pairs.shifts).to(GEOMETRY_DTYPE)
    return Graph(
        positions=torch.as_tensor(np.asarray(positions, dtype=np.float64), device=device),
        numbers=torch.as_tensor(np.asarray(numbers, dtype=np.int64), device=device),
        cell=torch.as_tensor(np.asarray(cell, dtype=np.float64).reshape(1, 3, 3), device=device),
        pbc=torch.as_tensor(np.asarray(pbc, dtype=bool).reshape(1, 3), device=device),
        edge_index=edge_index.to(device),
        shifts=shifts.to(device),
        batch=torch.zeros(n, dtype=torch.long, device=device),
        n_graphs=1,
        dtype=dtype,
    )


def graph_from_tensors(
    positions: torch.Tensor,
    numbers: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    pairs: TorchPairs | None,
    dtype: torch.dtype | None = None,
) -> Graph:
    """Single-structure graph from tensors already on the model's device (positions (N, 3),
    numbers (N,), cell (3, 3), pbc (3,), ``pairs`` from :mod:`ase_mlff.neighbors_torch` or
    None for a global model): everything stays on that device, nothing goes through the host.
    The same Graph as :func:`graph_from_arrays` gives for the same structure and pairs."""
    device = positions.device
    dtype = dtype or positions.dtype
    if pairs is None:
        edge_index = torch.zeros((2, 0), dtype=torch.long, device=device)
        shifts = torch.zeros((0, 3), dtype=GEOMETRY_DTYPE, device=device)
    else:
        edge_index = torch.stack([pairs.i, pairs.j])
        shifts = pairs.shifts.to(GEOMETRY_DTYPE)
    return Graph(
        positions=positions.to(GEOMETRY_DTYPE),
        numbers=numbers.to(device=device, dtype=torch.long),
        cell=cell.to(device=device, dtype=GEOMETRY_DTYPE).reshape(1, 3, 3),
        pbc=pbc.to(device=device, dtype=torch.bool).reshape(1, 3),
        edge_index=edge_index,
        shifts=shifts,
        batch=torch.zeros(positions.shape[0], dtype=torch.long, device=device),
        n_graphs=1,
        dtype=dtype,
    )


def batch_graphs(graphs: Sequence[Graph]) -> Graph:
    """Concatenate single or batched graphs into one batched graph."""
    if len(graphs) == 1:
        return graphs[0]
    dtypes = {g.dtype for g in graphs}
    if len(dtypes) != 1:
        raise ValueError(f"cannot batch graphs of different compute dtypes {sorted(map(str, dtypes))}")
    offsets = np.cumsum([0] + [g.n_atoms for g in graphs[:-1]])
    graph_offsets = np.cumsum([0] + [g.n_graphs for g in graphs[:-1]])
    return Graph(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=torch.cat([g.edge_index + int(o) for g, o in zip(graphs, offsets)], dim=1),
        shifts=torch.cat([g.shifts for g in graphs]),
        batch=torch.cat([g.batch + int(o) for g, o in zip(graphs, graph_offsets)]),
        n_graphs=sum(g.n_graphs for g in graphs),
        dtype=graphs[0].dtype,
    )


def graph_from_structure(structure, cutoff: float | None, pairs: Pairs | None = None, order=None,
                         dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Graph:
    """Graph of an ``ase.Atoms`` or a dataset :class:`~ase_mlff.data.Frame` (anything with
    ``positions``, ``numbers``, ``cell`` and ``pbc``).

    ``cutoff``: the model's (``None`` for a global model: no pairs). ``pairs``: a neighbour list
    computed already (e.g. by a :class:`~ase_mlff.neighbors.NeighborList` with a Verlet skin);
    computed here when omitted. ``order``: index array putting the atoms into a global model's
    order (``positions[order]``).
    """
    positions = np.asarray(structure.positions, dtype=np.float64)
    numbers = np.asarray(structure.numbers)
    cell = np.asarray(getattr(structure.cell, "array", structure.cell), dtype=np.float64)
    pbc = np.asarray(structure.pbc, dtype=bool)
    if order is not None:
        positions, numbers = positions[order], numbers[order]
    if cutoff is None:
        pairs = None
    elif pairs is None:
        pairs = neighbor_list(positions, cell, pbc, cutoff)
    return graph_from_arrays(positions, numbers, cell, pbc, pairs, dtype=dtype, device=device)


class FrameGraphs:
    """Graphs of many structures for training or batched evaluation: each structure's
    neighbour list is computed once (on first use) and kept; :meth:`batch` joins any subset.

    ``structures``: a :class:`~ase_mlff.data.Dataset`, a list of frames or of ``ase.Atoms``.
    """

    def __init__(self, structures, cutoff: float | None, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu"):
        self.structures = structures
        self.cutoff = cutoff
        self.dtype = dtype
        self.device = device
        self._cache: dict[int, Graph] = {}

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int) -> Graph:
        index = int(index)
        graph = self._cache.get(index)
        if graph is None:
            graph = graph_from_structure(self.structures[index], self.cutoff, dtype=self.dtype,
                                         device=self.device)
            self._cache[index] = graph
        return graph

    def batch(self, indices) -> Graph:
        """One batched graph of the structures ``indices`` (in that order)."""
        return batch_graphs([self[i] for i in indices])
