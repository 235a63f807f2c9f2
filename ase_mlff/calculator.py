"""One ASE calculator for every model family.

Units: energy eV, forces eV/Å, stress eV/Å³ in ASE Voigt order (xx, yy, zz, yz, xz, xy) and
ASE's sign (positive = tensile; pressure is ``-trace/3``).

Stress is ``(1/V) dE/dε`` for a homogeneous strain ε applied to positions and cell together,
exactly what ``ase.Atoms.set_cell(..., scale_atoms=True)`` finite differences measure. ``V`` is
``|det(atoms.cell)|`` for any periodicity: for a slab or a wire the cell vectors along the
non-periodic directions (the vacuum you set) enter the volume, so the stress of a slab is
the strain derivative per volume of the simulation cell. Asking for stress of a structure
whose cell has zero volume raises :class:`~ase_mlff.errors.InputError`.

Threads: one calculator may be shared by several threads. ASE keeps a calculator's state
(``atoms``, ``results``, here also the reused neighbour list) on the object and reads results
back after ``calculate``, so every entry point that touches that state (``get_property`` and
everything built on it, ``calculate``, ``get_hessian``, ``evaluate_batch``) holds one
re-entrant lock: calls from different threads run one after the other and each gets the
results of its own structure. For parallel throughput give each thread its own calculator
(``copy.deepcopy(calc)``, which gets its own lock and model) or use :meth:`evaluate_batch`.
"""

from __future__ import annotations

import functools
import threading
from typing import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .errors import InputError
from .graph import batch_graphs, graph_from_arrays, graph_from_structure, graph_from_tensors
from .models.base import Model, ModelOutput
from .neighbors import NeighborList, neighbor_list
from .neighbors_torch import TorchNeighborList, torch_neighbor_list
from .threads import serial_torch_for

NEIGHBOR_LISTS = ("auto", "compiled", "torch")

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}
    if str(dtype) not in names:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return names[str(dtype)]


#: names of ModelOutput fields in messages: the ASE results they become
_RESULT_NAMES = {"virial": "stress"}


def _finite(name: str, t: torch.Tensor, family: str) -> np.ndarray:
    """``t`` as float64 numpy, or InputError naming the result when any value is NaN or inf."""
    a = t.detach().cpu().numpy().astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(
            f"the {family} model's result '{_RESULT_NAMES.get(name, name)}' is NaN or infinite for this "
            "structure; check the structure (overlapping atoms, atoms far from each other or outside the "
            "training data) and the model file (damaged or edited hyperparameters or arrays)")
    return a


def _as_numpy(out: ModelOutput, family: str) -> dict:
    """Every tensor of ``out`` as float64 numpy, once (a batch is then sliced, not converted
    again per structure).

    Every result reaches ASE through here (and the Hessian and descriptors through
    :func:`_finite` too), so this is where a non-finite one is refused: NaN forces would
    otherwise move atoms to NaN and an infinite energy would pass for a number.
    """
    def conv(name, t):
        return None if t is None else _finite(name, t, family)

    return {"energy": conv("energy", out.energy), "energies": conv("energies", out.energies),
            "forces": conv("forces", out.forces), "virial": conv("virial", out.virial),
            "extras": {k: conv(k, v) for k, v in out.extras.items()}}


@functools.lru_cache(maxsize=8)
def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays of all pairs i < j of n atoms (a global model's overlap check)."""
    i, j = np.triu_indices(n, 1)
    i.setflags(write=False)
    j.setflags(write=False)
    return i, j


def virial_to_voigt(virial: np.ndarray, volume: float) -> np.ndarray:
    """(3, 3) dE/dε -> ASE Voigt stress (6,) in eV/Å³."""
    return np.array([virial[a, b] for a, b in _VOIGT]) / volume


class MLFFCalculator(Calculator):
    """ASE calculator serving any ase-mlff model.

    Parameters
    ----------
    model:
        a :class:`~ase_mlff.models.base.Model` or the path of a model file.
    device:
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (default: cpu).
    dtype:
        ``"float64"`` or ``"float32"``; default: the model's own dtype.
    skin:
        Verlet skin (Å) of the reused neighbour list; 0 rebuilds every call.
    min_distance:
        two atoms closer than this (Å) are reported as overlapping instead of evaluated.
    uncertainty:
        also compute the model's uncertainty results (costs extra time). A model without
        uncertainty results raises :class:`~ase_mlff.errors.InputError` instead of silently
        returning none.
    neighbor_list:
        ``"compiled"``: the C++ cell list on the host (:mod:`ase_mlff.neighbors`);
        ``"torch"``: the torch cell list on ``device`` (:mod:`ase_mlff.neighbors_torch`), so that
        positions are uploaded once per step and the pairs never leave the device; ``"auto"``
        (default): compiled on the CPU, torch on any other device. Both give the same pairs.
    """

    def __init__(self, model: Model | str, device: str = "cpu", dtype=None, skin: float = 0.5,
                 min_distance: float = 0.2, uncertainty: bool = False, neighbor_list: str = "auto",
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, Model):
            from .io import load_model

            model = load_model(model)
        dtype = _resolve_dtype(dtype) or model.dtype
        if neighbor_list not in NEIGHBOR_LISTS:
            raise InputError(f"neighbor_list must be one of {', '.join(NEIGHBOR_LISTS)}; got {neighbor_list!r}")
        self.device = torch.device(device)
        if neighbor_list == "auto":
            neighbor_list = "compiled" if self.device.type == "cpu" else "torch"
        self.neighbor_list = neighbor_list  # which list serves this calculator: compiled or torch
        self._device_cache: dict = {}
        # (key of the Verlet list build, (edge_index, shifts)) for accepts_outer_pairs models
        self._outer_edges: tuple | None = None
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.min_distance = float(min_distance)
        self.uncertainty = bool(uncertainty)
        if self.uncertainty and not any("uncertainty" in r for r in model.extra_results):
            raise InputError(
                f"uncertainty=True was asked for, but this {model.family} model gives no uncertainty "
                f"(no committee or predictive variance is stored in it); load it without uncertainty=True"
            )
        self._lock = threading.RLock()
        props = ["energy", "free_energy", "forces"]
        if not model.is_global:
            props.append("energies")
        if model.supports_stress:
            props.append("stress")
        if self.uncertainty:  # atoms.calc.get_property("forces_uncertainty") works like "forces"
            props += [k for k in model.extra_results if k != "stress_uncertainty" or model.supports_stress]
        self.implemented_properties = props
        if model.is_global:
            self.nl = None
        elif self.neighbor_list == "torch":
            self.nl = TorchNeighborList(model.cutoff, skin)
        else:
            self.nl = NeighborList(model.cutoff, skin)
        # what made these numbers, in ASE's place for it: todict() goes into trajectories
        source = getattr(model, "source", None) or {}
        self.parameters.update(
            model=source.get("path"), model_sha256=source.get("sha256"), family=model.family,
            elements=model.elements, cutoff=model.cutoff, device=str(self.device),
            dtype=str(dtype).removeprefix("torch."), skin=float(skin), min_distance=self.min_distance,
            uncertainty=self.uncertainty, neighbor_list=self.neighbor_list)

    def todict(self) -> dict:
        """The model file (path and sha256) and the options: ASE writes this into trajectories."""
        return dict(self.parameters)

    def __getstate__(self):
        # a lock cannot be copied or pickled; a copy gets its own (copy.deepcopy(calc) works)
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ checks
    def _check_structure(self, atoms) -> None:
        if len(atoms) == 0:
            raise InputError("the structure has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            bad = np.unique(np.nonzero(~np.isfinite(atoms.positions))[0])
            raise InputError(f"positions of atoms {bad[:10].tolist()} are NaN or infinite")
        if np.any(atoms.pbc) and not self.model.periodic:
            raise InputError(
                f"this {self.model.family} model describes an isolated molecule; "
                "set atoms.pbc = False to evaluate it"
            )

    def _check_distances(self, i, j, d) -> None:
        if len(d) and d.min() < self.min_distance:
            k = int(np.argmin(d))
            raise InputError(
                f"atoms {int(i[k])} and {int(j[k])} overlap: distance {d[k]:.3g} Å is below "
                f"min_distance={self.min_distance} Å"
            )

    def _check_distances_on_device(self, pairs) -> None:
        """:meth:`_check_distances` of pairs on the device: a device-side min, one scalar read
        (the culprit is looked up only when there is one)."""
        if len(pairs) and float(pairs.distances.min()) < self.min_distance:
            k = int(torch.argmin(pairs.distances))
            self._check_distances([int(pairs.i[k])], [int(pairs.j[k])], np.array([float(pairs.distances[k])]))

    @staticmethod
    def _volume(atoms) -> float:
        # the triple product on Python floats: np.linalg.det costs ~20 µs per call for a 3x3
        (a, b, c), (d, e, f), (g, h, i) = atoms.cell.array.tolist()
        return abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g))

    # ------------------------------------------------------------------ graph
    def _want_stress(self, atoms, properties) -> bool:
        if not self.model.supports_stress:
            if "stress" in properties:
                raise InputError(f"{self.model.family} models do not give stress")
            return False
        volume = self._volume(atoms)
        if "stress" in properties and volume < 1e-10:
            raise InputError(
                "stress was asked for, but the cell has zero volume; give the structure a cell "
                "(for a slab or a molecule: vacuum along the non-periodic directions)"
            )
        return volume >= 1e-10 and ("stress" in properties or bool(np.any(atoms.pbc)))

    # ------------------------------------------------------------------ ASE entry point
    def check_state(self, atoms, tol=1e-15):
        """What changed since the last calculation, as ase's ``compare_atoms`` reports it, by
        exact comparison: ase compares every array with ``np.allclose(atol=tol)``, which took
        ~0.25 ms of a 1.3 ms step at 100 atoms. A change below ``tol`` (1e-15 Å) counts as a
        change here, which only costs a recomputation. Other tolerances go to ase."""
        old = self.atoms
        if old is None or tol != 1e-15:
            return super().check_state(atoms, tol)
        check = set(all_changes) - set(self.ignored_changes)
        changes = [p for p in ("cell", "pbc")
                   if p in check and not np.array_equal(np.asarray(getattr(old, p)), np.asarray(getattr(atoms, p)))]
        check -= {"cell", "pbc"}
        a1, a2 = old.arrays, atoms.arrays
        changes += list(check & (set(a1) ^ set(a2)))
        changes += [p for p in check & set(a1) & set(a2) if not np.array_equal(a1[p], a2[p])]
        return changes

    def get_property(self, name, atoms=None, allow_calculation=True):
        # ase's get_property resets, computes and then reads self.results: the whole sequence
        # must be atomic, or a second thread's structure replaces the results in between
        with self._lock:
            return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        with self._lock:
            self._calculate(atoms, properties, system_changes)

    def _calculate(self, atoms, properties, system_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if atoms is None:
            raise InputError("no structure given: pass the atoms (calc.get_property(name, atoms))")
        want_stress = self._want_stress(atoms, properties)
        graph, order = self._prepare(atoms, self.nl)
        with self._torch_threads(graph):
            out = self.model.compute(graph, forces=True, stress=want_stress, extras=self.uncertainty)
        self.results = self._unpack(_as_numpy(out, self.model.family), atoms, want_stress, order)

    # ------------------------------------------------------------------ the one data path
    def _prepare(self, atoms, nl: NeighborList | None = None):
        """Checks, atom order and neighbour list of ``atoms`` -> ``(graph, order)``.

        The only place structures become model input: ``calculate``, ``get_hessian`` and
        ``evaluate_batch`` all come through here. ``nl``: the reused neighbour list (MD);
        without it the pairs are computed afresh. ``order``: ``(perm, inverse)`` for a global
        model given its atoms in another order, else None.
        """
        self._check_structure(atoms)
        model = self.model
        order = model.prepare_atoms(atoms.numbers, atoms.positions)
        if model.is_global:
            pos = atoms.positions
            if len(pos) > 1:
                i, j = _upper_pairs(len(pos))
                diff = pos[i] - pos[j]
                d2 = np.einsum("ij,ij->i", diff, diff)
                k = int(np.argmin(d2))
                self._check_distances(i[k:k + 1], j[k:k + 1], np.sqrt(d2[k:k + 1]))
            pairs = None
        elif self.neighbor_list == "torch":
            return self._prepare_on_device(atoms, nl, order), order
        elif nl is not None and nl.skin > 0 and model.accepts_outer_pairs:
            return self._prepare_outer(atoms, nl), order
        else:
            pairs = nl.update(atoms) if nl is not None else neighbor_list(
                atoms.positions, atoms.cell.array, atoms.pbc, model.cutoff)
            self._check_distances(pairs.i, pairs.j, pairs.distances)
        graph = graph_from_structure(atoms, model.cutoff, pairs=pairs,
                                     order=None if order is None else order[0],
                                     dtype=self.dtype, device=self.device)
        return graph, order

    def _torch_threads(self, graph):
        """Small structures on the CPU evaluate torch on one thread (:func:`serial_torch_for`)."""
        return serial_torch_for(graph.n_atoms if self.device.type == "cpu" else None)

    def _prepare_outer(self, atoms, nl: NeighborList):
        """The MD path of a model that ignores pairs beyond its cutoff: the graph holds the
        Verlet list (``cutoff + skin``) itself, so nothing is rewritten per step; its edge
        tensors are made once per rebuild. The closest pair is still checked every step."""
        pairs, d_min, k = nl.update_outer(atoms)
        if k >= 0:
            self._check_distances(pairs.i[k:k + 1], pairs.j[k:k + 1], np.array([d_min]))
        key = (id(nl), nl.n_builds, self.dtype, str(self.device))
        cached = self._outer_edges
        if cached is None or cached[0] != key:
            edges = (torch.from_numpy(np.stack([pairs.i, pairs.j])).to(self.device),
                     torch.from_numpy(pairs.shifts).to(device=self.device, dtype=torch.float64))
            self._outer_edges = cached = (key, edges)
        return graph_from_arrays(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc, None,
                                 dtype=self.dtype, device=self.device, edges=cached[1])

    def _on_device(self, name: str, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device, uploaded again only when it changed (atomic numbers, cell
        and pbc stay the same through an MD run; only the positions move)."""
        cached = self._device_cache.get(name)
        if cached is None or not np.array_equal(cached[0], array):
            array = array.copy()  # on the CPU the tensor shares this copy, never the caller's array
            cached = (array, torch.as_tensor(array, device=self.device))
            self._device_cache[name] = cached
        return cached[1]

    def _prepare_on_device(self, atoms, nl: TorchNeighborList | None, order):
        """The torch path of :meth:`_prepare` (local models): the positions go to the device
        once (float64, as the search needs them), the neighbour list runs there and the Graph
        is built from device tensors, so the pairs never leave the device."""
        positions, numbers = atoms.positions, atoms.numbers
        if order is not None:
            positions, numbers = positions[order[0]], numbers[order[0]]
        positions = torch.tensor(np.asarray(positions, dtype=np.float64), device=self.device)
        cell = self._on_device("cell", np.asarray(atoms.cell.array, dtype=np.float64))
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if nl is not None:
            pairs = nl.update(positions, cell, pbc)
        else:
            pairs = torch_neighbor_list(positions, cell, pbc, self.model.cutoff)
        self._check_distances_on_device(pairs)
        return graph_from_tensors(positions, self._on_device("numbers", np.asarray(numbers, dtype=np.int64)),
                                  cell, self._on_device("pbc", pbc), pairs, dtype=self.dtype)

    def _unpack(self, out: dict, atoms, want_stress: bool, order=None, b: int = 0, sel=None) -> dict:
        """ASE results (the caller's atom order) of structure ``b`` of ``out`` (:func:`_as_numpy`
        of a ModelOutput); ``sel`` selects that structure's atoms in a batch."""
        def atoms_of(a):
            a = a if sel is None else a[sel]
            return a if order is None else a[order[1]]

        energy = float(out["energy"][b])
        res = {"energy": energy, "free_energy": energy, "forces": atoms_of(out["forces"])}
        if out["energies"] is not None:
            res["energies"] = atoms_of(out["energies"])
        if want_stress:
            volume = self._volume(atoms)
            res["stress"] = virial_to_voigt(out["virial"][b], volume)
        for key, value in out["extras"].items():
            if key == "stress_uncertainty":
                if want_stress:
                    res[key] = virial_to_voigt(value[b], volume)
            elif key.startswith("energy_"):
                res[key] = float(value[b])
            else:  # per atom
                res[key] = atoms_of(value)
        return res

    # ------------------------------------------------------------------ extras
    def get_descriptors(self, atoms=None) -> np.ndarray:
        """Per-atom descriptors (N, D), float64, in the caller's atom order: the features the
        model's energy is computed from (SchNet: the atom features after the last interaction
        block; Behler–Parrinello: the symmetry functions). Frozen, they are a representation
        for other targets (``ase-mlff fit-head``, :mod:`ase_mlff.training.head`). A family
        without per-atom features (sGDML, MFF) raises :class:`~ase_mlff.errors.InputError`."""
        with self._lock:
            atoms = atoms if atoms is not None else self.atoms
            if atoms is None:
                raise InputError("no structure given: pass the atoms (calc.get_descriptors(atoms))")
            if not self.model.has_descriptors:
                self.model.atom_descriptors(None)  # raises InputError naming the family
            graph, order = self._prepare(atoms)
            with torch.no_grad():
                x = _finite("descriptors", self.model.atom_descriptors(graph), self.model.family)
            return x if order is None else x[order[1]]

    def get_hessian(self, atoms=None) -> np.ndarray:
        """Analytic Hessian d²E/dr² of shape (3N, 3N) in eV/Å² (second derivatives by autograd).
        A family without exact second derivatives (GAP) raises :class:`InputError` instead."""
        with self._lock:
            return self._hessian(atoms)

    def _hessian(self, atoms) -> np.ndarray:
        atoms = atoms if atoms is not None else self.atoms
        if atoms is None:
            raise InputError("no structure given")
        graph, order = self._prepare(atoms)
        if order is not None:
            raise InputError("the Hessian needs the atoms in the model's own order")
        return _finite("hessian", self.model.hessian(graph), self.model.family)

    def evaluate_batch(self, images: Sequence, stress: bool | None = None) -> list[dict]:
        """Evaluate many structures in one batched model call (local models).

        Returns one results dict per image with ``energy``, ``forces``, ``energies`` and,
        for images with a non-zero cell volume (or all when ``stress=True``), ``stress``.
        """
        with self._lock:
            return self._evaluate_batch(images, stress)

    def _evaluate_batch(self, images, stress):
        if self.model.is_global:
            out = []
            for atoms in images:
                self.calculate(atoms, ["energy", "forces"])
                out.append(dict(self.results))
            return out
        graphs, flags = [], []
        for atoms in images:
            graphs.append(self._prepare(atoms)[0])
            flags.append(self._want_stress(atoms, ["stress"] if stress else []))
        graph = batch_graphs(graphs)
        with self._torch_threads(graph):
            out = self.model.compute(graph, forces=True, stress=any(flags), extras=self.uncertainty)
        out = _as_numpy(out, self.model.family)
        batch = graph.batch.cpu().numpy()
        return [self._unpack(out, atoms, flags[b], b=b, sel=batch == b) for b, atoms in enumerate(images)]
