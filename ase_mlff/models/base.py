"""What every model family declares and the one evaluation path they share.

A model is a ``torch.nn.Module`` that maps a :class:`~ase_mlff.graph.Graph` to per-atom
energies (eV). :meth:`Model.compute` turns that into total energies, forces and the strain
derivative by autograd; a family with a faster analytic path (sGDML kernels, MFF splines)
overrides :meth:`Model.compute` and must return exactly the same quantities.

Serialisation: a model is ``config`` (JSON-able hyperparameters, enough to rebuild the empty
module) plus named numpy arrays (its parameters and buffers). :mod:`ase_mlff.io` stores both
without pickle.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from ase.data import chemical_symbols

from ..errors import InputError
from ..graph import Graph

MODEL_REGISTRY: dict[str, type["Model"]] = {}


def register_model(cls: type["Model"]) -> type["Model"]:
    """Class decorator: make a family loadable from model files by its ``family`` name."""
    MODEL_REGISTRY[cls.family] = cls
    return cls


def symbols(numbers: Iterable[int]) -> list[str]:
    return [chemical_symbols[int(z)] for z in numbers]


class Model(torch.nn.Module):
    #: name of the model family, written into model files ("sgdml", "mff", ...)
    family: ClassVar[str] = "base"
    #: global models see all atoms in a fixed order and have no cutoff (sGDML)
    is_global: ClassVar[bool] = False
    #: extra per-structure results the model can produce (e.g. "energy_uncertainty")
    extra_results: ClassVar[tuple[str, ...]] = ()

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

    # ----------------------------------------------------------------- properties
    @property
    def supports_stress(self) -> bool:
        return not self.is_global

    @property
    def dtype(self) -> torch.dtype:
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Index of each atom's element in ``self.species``."""
        return self._species_table[numbers]

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
        """Hook for global models: check (and possibly reorder) the atoms.

        Returns ``(order, inverse)`` index arrays or ``None`` when atoms are used as given.
        """
        self.check_numbers(numbers)
        return None

    # ----------------------------------------------------------------- evaluation
    def forward(self, graph: Graph) -> torch.Tensor:  # pragma: no cover - abstract
        """Per-atom energies (N,) in eV."""
        raise NotImplementedError

    def compute(self, graph: Graph, forces: bool = True, stress: bool = False,
                create_graph: bool = False) -> dict[str, torch.Tensor]:
        """Energies and their derivatives by autograd.

        Returns ``energy`` (B,), ``energies`` (N,), and when asked ``forces`` (N, 3) and
        ``virial`` (B, 3, 3) = dE/d(strain), i.e. volume times ASE stress.
        """
        if stress:
            graph = graph.strained()
        inputs = []
        if forces:
            if not graph.positions.requires_grad:
                graph.positions.requires_grad_(True)
            inputs.append(graph.positions)
        if stress:
            inputs.append(graph.strain)
        # Evaluate with grad enabled even if the caller is in no_grad mode.
        with torch.enable_grad():
            energies = self(graph)
            energy = torch.zeros(graph.n_graphs, dtype=energies.dtype, device=energies.device)
            energy = energy.index_add(0, graph.batch, energies)
            out = {"energy": energy, "energies": energies}
            if inputs:
                grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
                grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
                if forces:
                    out["forces"] = -grads[0]
                if stress:
                    out["virial"] = grads[-1]
        return out

    def hessian(self, graph: Graph) -> torch.Tensor:
        """Second derivatives of the energy, (3N, 3N) in eV/Å², by double backward."""
        positions = graph.positions.detach().clone().requires_grad_(True)
        g = Graph(**{**graph.__dict__, "positions": positions})
        forces = self.compute(g, forces=True, create_graph=True)["forces"].reshape(-1)
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
_MISSING = object()


def config_int(config: dict[str, Any], key: str, lo: int, hi: int, default: Any = _MISSING) -> int:
    value = config.get(key, default)
    if value is _MISSING:
        raise ValueError(f"hyperparameters.{key} is missing")
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"hyperparameters.{key} must be an integer from {lo} to {hi}, got {_short(value)}")
    return value


def config_float(config: dict[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf,
                 default: Any = _MISSING, lo_open: bool = False) -> float:
    value = config.get(key, default)
    if value is _MISSING:
        raise ValueError(f"hyperparameters.{key} is missing")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo < value if lo_open else lo <= value) or not value <= hi:
        low = f"> {lo}" if lo_open else f">= {lo}"
        raise ValueError(f"hyperparameters.{key} must be a finite number {low} and <= {hi}, got {_short(value)}")
    return float(value)


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
