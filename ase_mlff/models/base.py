"""The model contract: what every family declares, and the one evaluation path they share.

A model is a ``torch.nn.Module`` with these declarations (class attributes unless noted):

==================  ========================================================================
``family``          name written into model files ("sgdml", "mff", ...)
``species``         (instance) sorted atomic numbers it was trained on; ``elements`` symbols
``cutoff``          (instance) Å for local models; ``None`` for global models (sGDML), which
                    see all atoms in a fixed order with no neighbour list
``periodic``        whether periodic cells are accepted (local models: yes; sGDML: no)
``per_atom_energies`` whether :meth:`forward` gives one energy per atom (N,) or per
                    structure (B,); only the former give ``energies`` and stress
``units``           ``{"energy": "eV", "length": "Å"}`` for every family: data in other units
                    are converted on reading (:mod:`ase_mlff.units`)
``extra_results``   names of extra results :meth:`compute` can add with ``extras=True``
                    (``energy_uncertainty``, ``forces_uncertainty``, ``stress_uncertainty``)
==================  ========================================================================

Evaluation. :meth:`forward` is the family's differentiable energy (eV), a function of the
:class:`~ase_mlff.graph.Graph` alone. :meth:`compute` is the only entry point callers use and
no family overrides it; it returns a :class:`ModelOutput` and never modifies its inputs. It
decides in one place between two ways of getting the derivatives:

* the family's analytic path, :meth:`analytic` (sGDML kernels, MFF splines in C++), when the
  family has one, the graph lives on a device in ``analytic_devices``, and nobody needs
  gradients through the result (``create_graph=False`` and positions not requiring grad);
* otherwise autograd through :meth:`forward`: forces ``-dE/dr`` and the virial
  ``dE/d(strain)`` on a copy of the graph whose positions (and strain) are fresh leaves.

Both paths must give the same numbers (the conformance suite checks it). Total energies are
accumulated in float64 whatever the model's dtype: a float32 total of -14,000 eV has a
rounding step near 1 meV, which would ruin finite differences and NVE conservation.

Serialisation: a model is ``config`` (JSON-able hyperparameters, enough to rebuild the empty
module) plus named numpy arrays (its parameters and buffers). :mod:`ase_mlff.io` stores both
without pickle.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from ase.data import chemical_symbols

from ..errors import InputError
from ..graph import Graph

MODEL_REGISTRY: dict[str, type["Model"]] = {}

#: extra results a model may declare, with their units
EXTRA_RESULTS = {
    "energy_uncertainty": "eV, one per structure",
    "forces_uncertainty": "eV/Å, one per atom",
    # compute() gives it like the virial, (B, 3, 3) in eV; the calculator divides by the volume
    # and returns ASE Voigt order in eV/Å³, like stress
    "stress_uncertainty": "eV, (B, 3, 3) spread of the virial dE/d(strain)",
    "energies_uncertainty": "eV, one per atom",
}


def register_model(cls: type["Model"]) -> type["Model"]:
    """Class decorator: make a family loadable from model files by its ``family`` name."""
    MODEL_REGISTRY[cls.family] = cls
    return cls


def symbols(numbers: Iterable[int]) -> list[str]:
    return [chemical_symbols[int(z)] for z in numbers]


@dataclass
class ModelOutput:
    """What :meth:`Model.compute` returns (torch tensors; energies in eV, lengths in Å).

    ``energy`` (B,) float64 total energy of each structure; ``energies`` (N,) per-atom energies
    (None for global models); ``forces`` (N, 3) eV/Å when asked; ``virial`` (B, 3, 3)
    ``dE/d(strain)`` in eV (volume times ASE stress, same sign) when asked; ``extras``: the
    declared extra results that were asked for (``extras=True``).
    """

    energy: torch.Tensor
    energies: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    virial: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def detach(self) -> "ModelOutput":
        def d(t):
            return None if t is None else t.detach()

        return ModelOutput(d(self.energy), d(self.energies), d(self.forces), d(self.virial),
                           {k: v.detach() for k, v in self.extras.items()})


def sum_per_structure(values: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """(B,) float64 sums of per-atom ``values`` (N,) over the atoms of each structure."""
    total = torch.zeros(n_graphs, dtype=torch.float64, device=values.device)
    return total.index_add(0, batch, values.to(torch.float64))


def core_inputs(model: "Model", graph: Graph, n_energy_atoms: int | None) -> tuple[torch.Tensor, int]:
    """What every compiled family core takes besides the pairs: each atom's index in the
    model's species (InputError naming an element the model lacks) and the checked
    ``n_energy_atoms`` (-1 for all atoms, the cores' default)."""
    s = model.species_index(graph.numbers)
    if bool((s < 0).any()):
        model.check_numbers(graph.numbers.cpu().numpy())
    n = graph.n_atoms
    if n_energy_atoms is None:
        return s, -1
    if not 0 <= int(n_energy_atoms) <= n:
        raise InputError(f"n_energy_atoms must be from 0 to the {n} atoms, got {n_energy_atoms}")
    return s, int(n_energy_atoms)


def core_output(graph: Graph, energies: np.ndarray, forces: np.ndarray | None, virials: np.ndarray | None,
                n_energy_atoms: int | None = None, energies_dtype: torch.dtype | None = None) -> ModelOutput:
    """The :class:`ModelOutput` of a compiled family core (``ase_mlff/_ext/*_core``): its
    per-atom energies (N,), forces (N, 3) and per-atom virials (N, 3, 3), float64 numpy, become
    structure energies (sums over the atoms below ``n_energy_atoms``, all when None) and the
    symmetric part of each structure's summed virial; forces and virials in the graph's dtype,
    per-atom energies in ``energies_dtype`` (float64 when None)."""
    e = torch.from_numpy(energies)
    counted = e
    if n_energy_atoms is not None:
        counted = torch.where(torch.arange(len(e)) < int(n_energy_atoms), e, torch.zeros_like(e))
    out = ModelOutput(energy=sum_per_structure(counted, graph.batch, graph.n_graphs),
                      energies=e if energies_dtype is None else e.to(energies_dtype))
    if forces is not None:
        out.forces = torch.from_numpy(forces).to(graph.dtype)
    if virials is not None:
        vir = torch.zeros((graph.n_graphs, 3, 3), dtype=torch.float64).index_add(0, graph.batch,
                                                                                 torch.from_numpy(virials))
        out.virial = (0.5 * (vir + vir.transpose(1, 2))).to(graph.dtype)
    return out


class Model(torch.nn.Module):
    #: name of the model family, written into model files ("sgdml", "mff", ...)
    family: ClassVar[str] = "base"
    #: periodic cells accepted (global molecular models set False)
    periodic: ClassVar[bool] = True
    #: forward() gives per-atom energies (N,) (False: one energy per structure, (B,))
    per_atom_energies: ClassVar[bool] = True
    #: units of every input and output (data in other units are converted on reading)
    units: ClassVar[dict[str, str]] = {"energy": "eV", "length": "Å"}
    #: extra results compute(..., extras=True) can add (names from EXTRA_RESULTS)
    extra_results: ClassVar[tuple[str, ...]] = ()
    #: devices on which analytic() may be used (checked by compute, never by families)
    analytic_devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: edges beyond ``cutoff`` add nothing to every output (both forward() and analytic() test
    #: each edge's length), so a calculator with a Verlet skin may hand the model its skin list
    #: unfiltered instead of rewriting the pairs within the cutoff every step
    accepts_outer_pairs: ClassVar[bool] = False
    #: buffers that stay float64 when the model is moved to another dtype (``model.to(float32)``):
    #: kernel coefficients that cancel (sGDML's reach 1e7), reference energies of -1000 eV/atom
    float64_buffers: ClassVar[tuple[str, ...]] = ()
    #: :meth:`hessian` (second derivatives by double backward through :meth:`forward`) is exact.
    #: False for a family whose forward goes through a compiled first-order backward (GAP's
    #: SOAP): autograd would treat that backward as constant and return a wrong Hessian without
    #: a word, so :meth:`hessian` raises InputError instead
    supports_hessian: ClassVar[bool] = True

    def __init__(self, species: Iterable[int], cutoff: float | None, config: dict[str, Any] | None = None):
        super().__init__()
        species = sorted({int(z) for z in species})
        if not species:
            raise ValueError("a model needs at least one element")
        self.species = species
        self.cutoff = None if cutoff is None else float(cutoff)
        self.config: dict[str, Any] = dict(config or {})
        table = torch.full((max(119, max(species) + 1),), -1, dtype=torch.long)
        table[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("_species_table", table, persistent=False)

    def _apply(self, fn, *args, **kwargs):
        keep = {n: self._buffers[n] for n in self.float64_buffers if self._buffers.get(n) is not None}
        out = super()._apply(fn, *args, **kwargs)
        for name, original in keep.items():
            moved = self._buffers[name]
            if moved.dtype != torch.float64:  # take the float64 original, on the new device
                self._buffers[name] = original.to(device=moved.device, dtype=torch.float64)
        return out

    # ----------------------------------------------------------------- declarations
    @property
    def is_global(self) -> bool:
        """A global model (no cutoff) sees all atoms of a structure in a fixed order."""
        return self.cutoff is None

    @property
    def elements(self) -> list[str]:
        return symbols(self.species)

    @property
    def supports_stress(self) -> bool:
        return self.per_atom_energies and self.cutoff is not None

    @property
    def dtype(self) -> torch.dtype:
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Index of each atom's element in ``self.species``."""
        return self._species_table[numbers]

    def describe(self) -> str:
        """One line: family, elements, cutoff."""
        cut = "global (no cutoff)" if self.cutoff is None else f"cutoff {self.cutoff:g} Å"
        return f"{self.family} model for {', '.join(self.elements)}, {cut}"

    # ----------------------------------------------------------------- checks
    def check_numbers(self, numbers: np.ndarray) -> None:
        """Raise :class:`InputError` naming any element the model was not trained on."""
        unknown = sorted(set(np.unique(numbers).tolist()) - set(self.species))
        if unknown:
            raise InputError(
                f"element(s) {', '.join(symbols(unknown))} not known to this {self.family} model, "
                f"which was trained on {', '.join(symbols(self.species))}"
            )

    def prepare_atoms(self, numbers: np.ndarray, positions: np.ndarray):
        """Check the atoms (and, for global models, identify their order).

        Returns ``(order, inverse)`` index arrays (``positions[order]`` is in the model's order,
        ``forces[inverse]`` back in the caller's) or ``None`` when the atoms are used as given.
        """
        self.check_numbers(numbers)
        return None

    # ----------------------------------------------------------------- evaluation
    def forward(self, graph: Graph) -> torch.Tensor:  # pragma: no cover - abstract
        """Differentiable energies in eV: per atom (N,), or per structure (B,) when
        ``per_atom_energies`` is False."""
        raise NotImplementedError

    def analytic(self, graph: Graph, forces: bool, stress: bool) -> ModelOutput:  # pragma: no cover
        """Optional fast path with the same results as autograd through :meth:`forward`
        (detached). Families without one do not override it."""
        raise NotImplementedError

    def compute_extras(self, graph: Graph, output: ModelOutput, stress: bool) -> dict[str, torch.Tensor]:
        """The declared extra results for ``graph`` (families with ``extra_results`` override)."""
        raise InputError(f"this {self.family} model gives no extra results (no uncertainty)")

    def atom_descriptors(self, graph: Graph) -> torch.Tensor:
        """Per-atom descriptors (N, D) of ``graph``: what the family's energy is a function of,
        e.g. SchNet's features after the last interaction block or Behler–Parrinello symmetry
        functions. Frozen, they serve as a learned representation for other targets (as in
        Tsubaki & Mizoguchi 2021; :mod:`ase_mlff.training.head`). Families with such features override this and
        :attr:`has_descriptors`; the others (global or kernel models) raise InputError."""
        raise InputError(
            f"{self.family} models have no per-atom descriptors (get_descriptors needs a local "
            "family with atom features: schnet, bpnn, or a committee of them)"
        )

    @property
    def has_descriptors(self) -> bool:
        return type(self).atom_descriptors is not Model.atom_descriptors

    @property
    def has_analytic(self) -> bool:
        return type(self).analytic is not Model.analytic

    def uses_analytic(self, graph: Graph, create_graph: bool = False) -> bool:
        """The one rule choosing the analytic path over autograd (see the module docstring)."""
        return (self.has_analytic and not create_graph and not graph.positions.requires_grad
                and graph.device.type in self.analytic_devices)

    def compute(self, graph: Graph, forces: bool = True, stress: bool = False,
                create_graph: bool = False, extras: bool = False) -> ModelOutput:
        """Energies and, when asked, forces, the virial and the declared extra results.

        ``create_graph``: keep the autograd graph of forces/virial (training on forces,
        Hessians). ``graph`` is never modified.
        """
        if stress and not self.supports_stress:
            raise InputError(f"{self.family} models give no stress (global model without per-atom energies)")
        if extras and not self.extra_results:
            raise InputError(f"this {self.family} model gives no extra results (no uncertainty)")
        with self.extras_call() if extras else contextlib.nullcontext():
            if self.uses_analytic(graph, create_graph):
                out = self.analytic(graph, forces, stress)
            else:
                out = self._autograd(graph, forces, stress, create_graph)
            if extras:
                missing = [k for k in self.extra_results if k not in out.extras]
                if missing:
                    out.extras.update(self.compute_extras(graph, out, stress))
        return out

    def extras_call(self):
        """Context of one :meth:`compute` call that asks for extra results, around both the
        energy pass and :meth:`compute_extras`: a family whose extras reuse what its energy
        pass computes (GAP's variance, the SOAP) keeps it for that call only. Default: nothing."""
        return contextlib.nullcontext()

    def _autograd(self, graph: Graph, forces: bool, stress: bool, create_graph: bool) -> ModelOutput:
        positions = graph.positions
        if forces and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)  # a fresh leaf: the input stays as it was
        g = replace(graph, positions=positions)
        if stress:
            g = g.strained()
        inputs = ([positions] if forces else []) + ([g.strain] if stress else [])
        # with grad enabled even when the caller is in no_grad mode
        with torch.enable_grad():
            e = self(g)
            if self.per_atom_energies:
                energies, energy = e, sum_per_structure(e, graph.batch, graph.n_graphs)
            else:
                energies, energy = None, e.to(torch.float64)
            out = ModelOutput(energy=energy, energies=energies)
            if inputs:
                grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
                grads = [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, inputs)]
                if forces:
                    out.forces = -grads[0].to(graph.dtype)
                if stress:
                    out.virial = grads[-1].to(graph.dtype)
        if not create_graph:
            out = out.detach()
        return out

    def hessian(self, graph: Graph) -> torch.Tensor:
        """Second derivatives of the energy, (3N, 3N) in eV/Å², by double backward."""
        if not self.supports_hessian:
            raise InputError(
                f"{self.family} models give no analytic Hessian (their compiled descriptor gradient "
                "is first-order only, so double backward would be wrong); compute force constants "
                "from finite displacements of the forces instead (ase-mlff phonons without --hessian, "
                "or phonons(..., method='displacement'))")
        positions = graph.positions.detach().clone().requires_grad_(True)
        g = replace(graph, positions=positions)
        forces = self.compute(g, forces=True, create_graph=True).forces.reshape(-1)
        rows = []
        for k in range(forces.numel()):
            (row,) = torch.autograd.grad(-forces[k], positions, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(positions).reshape(-1) if row is None else row.reshape(-1))
        hess = torch.stack(rows)
        return 0.5 * (hess + hess.T)

    # ----------------------------------------------------------------- serialisation
    def get_config(self) -> dict[str, Any]:
        """JSON-able hyperparameters from which ``from_config`` rebuilds the empty model."""
        return {"species": self.species, "cutoff": self.cutoff, **self.config}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Model":
        return cls(**config)

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """Check hyperparameters read from a file; return the arrays they imply.

        Returns ``{name: (shape, dtype name)}`` for every array :meth:`get_arrays` would give;
        raises ``ValueError`` or ``TypeError`` naming the offending field. The loader compares
        the result with the file before reading any array, so a family whose hyperparameters
        set array sizes (sGDML, MFF) must override this to compute the shapes *without
        allocating them*. This default builds the empty model to learn them, which is only
        safe for families whose sizes do not come from the file.
        """
        model = cls.from_config(config)
        return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
                for k, v in model.state_dict().items()}

    @classmethod
    def check_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Check the content of arrays read from a file (their names, shapes and dtypes already
        match :meth:`check_config`, and float arrays are finite); raise ``ValueError`` naming
        the array. Families override this for invariants such as valid permutations."""

    def get_arrays(self) -> dict[str, np.ndarray]:
        """All learned parameters and persistent buffers as numpy arrays."""
        return {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        from ..errors import ModelFileError

        own = self.state_dict()
        missing = sorted(set(own) - set(arrays))
        unexpected = sorted(set(arrays) - set(own))
        if missing or unexpected:
            raise ModelFileError(
                f"{self.family} model file arrays do not match the model: missing {missing}, "
                f"unexpected {unexpected}"
            )
        state = {}
        for k, v in arrays.items():
            v = np.asarray(v)
            # load_state_dict would cast complex to real (dropping the imaginary part) and
            # float to int without a word; a mismatch means the arrays belong to another model
            want = own[k]
            if v.dtype.kind not in "biuf" or tuple(v.shape) != tuple(want.shape):
                raise ModelFileError(
                    f"{self.family} model array {k!r} is {v.dtype} {list(v.shape)}, the model needs "
                    f"{str(want.dtype).removeprefix('torch.')} {list(want.shape)}")
            if want.is_floating_point() != (v.dtype.kind == "f"):
                raise ModelFileError(
                    f"{self.family} model array {k!r} is {v.dtype}, the model needs "
                    f"{str(want.dtype).removeprefix('torch.')}")
            state[k] = torch.from_numpy(np.ascontiguousarray(v))
        self.load_state_dict(state, strict=True)


# --------------------------------------------------------------------- config checks
# Helpers for check_config: each returns the value or raises ValueError naming the field.
# A hyperparameter read from a file must give finite numbers on every structure, so besides
# its type the checks bound its magnitude: a width of 1e-200 Å squares to zero and turns the
# next division into 0/0, and a reference energy of 1e308 eV sums to infinity.
_MISSING = object()

#: smallest cutoff (Å) a local model may have: no two real atoms are closer than 0.1 Å
MIN_CUTOFF = 0.1
#: smallest positive width (Å) of a Gaussian or a switching function: trained ones are tenths
#: of an Å, and the square of a denormal width is zero
MIN_WIDTH = 1e-3
#: smallest positive scale (an energy scale in eV, a kernel length scale, a calibration factor):
#: trained ones are of order one; 1e-6 keeps their squares and inverse squares far from
#: underflow and overflow
MIN_SCALE = 1e-6
#: largest magnitude (eV) of a per-atom reference energy: all-electron total energies reach
#: about 7.6e5 eV per atom (uranium); a larger one is damage, and 1e308 sums to infinity
MAX_REFERENCE_ENERGY = 1e6


def config_int(config: dict[str, Any], key: str, lo: int, hi: int, default: Any = _MISSING,
               prefix: str = "") -> int:
    """``config[key]``, an integer from ``lo`` to ``hi``; ``prefix`` names the table that
    holds it in messages (``"soap."`` for ``hyperparameters.soap.n_max``)."""
    value = config.get(key, default)
    if value is _MISSING:
        raise ValueError(f"hyperparameters.{prefix}{key} is missing")
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"hyperparameters.{prefix}{key} must be an integer from {lo} to {hi}, got {_short(value)}")
    return value


def config_float(config: dict[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf,
                 default: Any = _MISSING, prefix: str = "") -> float:
    """``config[key]``, a finite number in ``[lo, hi]``."""
    value = config.get(key, default)
    if value is _MISSING:
        raise ValueError(f"hyperparameters.{prefix}{key} is missing")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ValueError(f"hyperparameters.{prefix}{key} must be a finite number >= {lo:g} and <= {hi:g}, "
                         f"got {_short(value)}")
    return float(value)


def config_dtype(config: dict[str, Any], default: str = "float32") -> str:
    """A network's declared dtype: "float32" or "float64"."""
    dtype = config.get("dtype", default)
    if dtype not in ("float32", "float64"):
        raise ValueError("hyperparameters.dtype must be 'float32' or 'float64'")
    return dtype


def config_reference_energies(config: dict[str, Any], n_species: int) -> list[float]:
    """Per-element reference energies (eV): one finite number per element, kept in the config
    (JSON numbers are float64, so moving the model to float32 never rounds them)."""
    e0 = config.get("reference_energies")
    if (not isinstance(e0, list) or len(e0) != n_species
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       and abs(v) < MAX_REFERENCE_ENERGY for v in e0)):
        raise ValueError(f"hyperparameters.reference_energies must be one finite number per element, each "
                         f"of magnitude below {MAX_REFERENCE_ENERGY:g} eV (an energy per atom), got {_short(e0)}")
    return [float(v) for v in e0]


def config_cutoff(config: dict[str, Any], key: str = "cutoff", hi: float = 100.0, default: Any = _MISSING,
                  prefix: str = "") -> float:
    """A cutoff radius (Å) from :data:`MIN_CUTOFF` to ``hi``."""
    return config_float(config, key, MIN_CUTOFF, hi, default=default, prefix=prefix)


def config_species(config: dict[str, Any]) -> list[int]:
    value = config.get("species", _MISSING)
    if (not isinstance(value, list) or not 1 <= len(value) <= 118
            or not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118 for z in value)
            or len(set(value)) != len(value)):
        raise ValueError(f"hyperparameters.species must be a list of distinct atomic numbers, got {_short(value)}")
    return sorted(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
