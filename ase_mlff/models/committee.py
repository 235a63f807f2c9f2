"""Committees: K models of one family in one file, served with their spread as uncertainty.

A committee holds ``K >= 2`` members ``m_1 .. m_K`` of one family (sGDML, MFF, ...) trained on
different subsamples of the data with different seeds, and optionally one more model ``m_0``
of the same family, the *served mean*, trained on all the data. What it returns:

* energy, forces (and stress, per-atom energies) of the served mean ``m_0`` when the file has
  one, else the member average ``E = (1/K) sum_k E_k`` (and likewise forces, virial);
* with ``extras=True`` (``MLFFCalculator(..., uncertainty=True)``), the calibrated spread of
  the members around *their own* average (sample standard deviations, ``K - 1`` in the
  denominator; bars denote member averages)::

      energy_uncertainty        c_E sqrt( 1/(K-1) sum_k (E_k - Ebar)^2 )                eV
      forces_uncertainty[a]     c_F sqrt( 1/(K-1) sum_k |F_k[a] - Fbar[a]|^2 )         eV/Å, per atom
      stress_uncertainty[b]     c_S sqrt( 1/(K-1) sum_k (W_k[b] - Wbar[b])^2 )         eV (B, 3, 3),
                                element-wise over the virial W = dE/d(strain); the calculator
                                divides by the cell volume and reports Voigt eV/Å³.

  ``|.|`` is the length of the atom's 3-vector, so ``forces_uncertainty[a]`` estimates the RMS
  length of the error vector of atom ``a``'s force, ``sqrt(E|F_pred[a] - F_true[a]|^2)``
  (per Cartesian component that is ``forces_uncertainty / sqrt(3)`` for isotropic errors).

Calibration. The raw spread of members trained on subsamples is not the error of the served
mean (it is the spread of weaker models), so each factor ``c`` is fitted on held-out frames
(:func:`ase_mlff.training.committee.fit_calibration`) such that the mean predicted variance
equals the mean squared error there: ``c_F^2 = mean_a |dF_a|^2 / mean_a sigma_F,a^2`` over all
atoms of the frames, ``c_E^2 = mean dE^2 / mean sigma_E^2``. The factors live in the model
file (``hyperparameters.calibration``) and are applied to every reported uncertainty.

File layout (:mod:`ase_mlff.io`, pickle-free): ``hyperparameters`` holds ``member_family``,
the members' own hyperparameters (``members``: a list) and the served mean's (``mean``, or
null), and ``calibration``; the arrays are the members' arrays named ``m{k}.<name>`` and the
served mean's ``mean.<name>``. :meth:`CommitteeModel.check_config` asks each member's family
for the shapes its hyperparameters imply and prefixes them, so the strict loader checks every
nested array before reading any.

Evaluation. :meth:`CommitteeModel.analytic` calls each needed model's own
:meth:`~ase_mlff.models.base.Model.compute` (sGDML kernels, MFF C++ splines keep their fast
paths); :meth:`forward` (autograd, Hessians, ``create_graph``) is the served mean's forward, or
the member average, so forces are always ``-dE/dx`` of the energy that is served. With a
served mean and ``extras=False`` the members are not evaluated at all (no extra cost).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelFileError
from ..graph import Graph
from .base import MIN_SCALE, MODEL_REGISTRY, Model, ModelOutput, config_species, register_model

#: largest committee a model file may declare (each member adds its arrays to the archive)
MAX_MEMBERS = 64
#: calibration factors accepted from a file
MAX_CALIBRATION = 1e6
CALIBRATION_KEYS = ("energy", "forces", "stress")


def _std(values: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation over the first axis (K - 1 in the denominator)."""
    return values.std(dim=0, unbiased=True)


@register_model
class CommitteeModel(Model):
    """``K`` models of one family; the served mean plus the members' calibrated spread."""

    family = "committee"
    # a committee runs any needed model's compute(), and each member picks its own path there
    analytic_devices = ("cpu", "cuda", "mps", "xpu")

    def __init__(self, members: list[Model], mean: Model | None = None,
                 calibration: dict[str, float] | None = None, config: dict[str, Any] | None = None):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a committee needs at least 2 members to have a spread, got {len(members)}")
        first = members[0]
        for k, m in enumerate(members + ([mean] if mean is not None else [])):
            name = "the served mean" if k == len(members) else f"member {k}"
            if m.family == self.family:
                raise ValueError("a committee cannot hold committees")
            if m.family != first.family:
                raise ValueError(f"{name} is a {m.family} model, member 0 a {first.family} model: "
                                 "a committee holds models of one family")
            if m.species != first.species or m.cutoff != first.cutoff:
                raise ValueError(f"{name} is for elements {m.elements} with cutoff {m.cutoff}, member 0 for "
                                 f"{first.elements} with cutoff {first.cutoff}: members must describe the "
                                 "same system")
        super().__init__(first.species, first.cutoff, config)
        self.members = torch.nn.ModuleList(members)
        self.mean_model = mean
        self.member_family = first.family
        # the committee is whatever its members are (instance attributes shadow the class ones)
        self.periodic = first.periodic
        self.per_atom_energies = first.per_atom_energies
        extras = ["energy_uncertainty", "forces_uncertainty"]
        if first.supports_stress:
            extras.append("stress_uncertainty")
        self.extra_results = tuple(extras)
        cal = {k: 1.0 for k in CALIBRATION_KEYS}
        cal.update({k: float(v) for k, v in (calibration or {}).items()})
        self.calibration = cal
        self._members_out = None  # (graph, stress, outputs) of the last analytic() member pass

    # ----------------------------------------------------------------- declarations
    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def served(self) -> Model | None:
        """The model whose predictions are served (None: the member average)."""
        return self.mean_model

    def describe(self) -> str:
        mean = "a model trained on all the data" if self.mean_model is not None else "the member average"
        base = (self.mean_model or self.members[0]).describe()
        return f"committee of {self.n_members} {self.member_family} models (serving {mean}): {base}"

    def prepare_atoms(self, numbers, positions):
        # all members share one atom order (checked on loading), so one of them identifies it
        return (self.mean_model or self.members[0]).prepare_atoms(numbers, positions)

    # ----------------------------------------------------------------- evaluation
    def forward(self, graph: Graph) -> torch.Tensor:
        """The served energies: the mean model's, or the member average."""
        if self.mean_model is not None:
            return self.mean_model(graph)
        return torch.stack([m(graph) for m in self.members]).mean(dim=0)

    def atom_descriptors(self, graph: Graph) -> torch.Tensor:
        """The served model's descriptors when the committee serves a model trained on all the
        data; otherwise every member's, side by side (N, K·D), in member order."""
        if self.mean_model is not None:
            return self.mean_model.atom_descriptors(graph)
        return torch.cat([m.atom_descriptors(graph) for m in self.members], dim=1)

    @property
    def has_descriptors(self) -> bool:
        return (self.mean_model or self.members[0]).has_descriptors

    def _member_outputs(self, graph: Graph, stress: bool) -> list[ModelOutput]:
        cached = self._members_out
        self._members_out = None
        if cached is not None and cached[0] is graph and cached[1] == stress:
            return cached[2]
        return [m.compute(graph, forces=True, stress=stress).detach() for m in self.members]

    def analytic(self, graph: Graph, forces: bool, stress: bool) -> ModelOutput:
        if self.mean_model is not None:
            self._members_out = None
            return self.mean_model.compute(graph, forces=forces, stress=stress)
        outs = [m.compute(graph, forces=True, stress=stress) for m in self.members]
        # kept for compute_extras of the same call (compute passes it the same graph object)
        self._members_out = (graph, stress, outs)
        return _average(outs, forces, stress)

    def compute_extras(self, graph: Graph, output: ModelOutput, stress: bool) -> dict[str, torch.Tensor]:
        """Calibrated member spread (module docstring); ``output`` is the served prediction."""
        return self.spread(self._member_outputs(graph, stress), stress)

    def spread(self, outs: list[ModelOutput], stress: bool, calibrated: bool = True) -> dict[str, torch.Tensor]:
        """Uncertainties from member outputs (each with forces; virials when ``stress``)."""
        cal = self.calibration if calibrated else {k: 1.0 for k in CALIBRATION_KEYS}
        energy = torch.stack([o.energy.to(torch.float64) for o in outs])  # (K, B)
        forces = torch.stack([o.forces.to(torch.float64) for o in outs])  # (K, N, 3)
        dev = forces - forces.mean(dim=0, keepdim=True)
        sigma_f = torch.sqrt((dev * dev).sum(dim=(0, 2)) / (len(outs) - 1))
        res = {"energy_uncertainty": cal["energy"] * _std(energy),
               "forces_uncertainty": cal["forces"] * sigma_f}
        if stress and "stress_uncertainty" in self.extra_results:
            virial = torch.stack([o.virial.to(torch.float64) for o in outs])  # (K, B, 3, 3)
            res["stress_uncertainty"] = cal["stress"] * _std(virial)
        return res

    def member_predictions(self, graph: Graph, stress: bool = False) -> list[ModelOutput]:
        """Each member's own output for ``graph`` (detached), e.g. to study the committee."""
        return [m.compute(graph, forces=True, stress=stress).detach() for m in self.members]

    @property
    def supports_hessian(self) -> bool:
        served = [self.mean_model] if self.mean_model is not None else list(self.members)
        return all(m.supports_hessian for m in served)

    def hessian(self, graph: Graph) -> torch.Tensor:  # each path refuses a family without one
        if self.mean_model is not None:  # keeps a family's own Hessian (sGDML: batched double backward)
            return self.mean_model.hessian(graph)
        return super().hessian(graph)

    # ----------------------------------------------------------------- serialisation
    def get_config(self) -> dict[str, Any]:
        return {"species": self.species, "cutoff": self.cutoff, "member_family": self.member_family,
                "members": [m.get_config() for m in self.members],
                "mean": None if self.mean_model is None else self.mean_model.get_config(),
                "calibration": dict(self.calibration), **self.config}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CommitteeModel":
        mcls = MODEL_REGISTRY[config["member_family"]]
        members = [mcls.from_config(c) for c in config["members"]]
        mean = None if config.get("mean") is None else mcls.from_config(config["mean"])
        extra = {k: v for k, v in config.items()
                 if k not in ("species", "cutoff", "member_family", "members", "mean", "calibration")}
        return cls(members, mean, config.get("calibration"), extra)

    def _parts(self) -> list[tuple[str, Model]]:
        parts = [(f"m{k}.", m) for k, m in enumerate(self.members)]
        if self.mean_model is not None:
            parts.append(("mean.", self.mean_model))
        return parts

    def get_arrays(self) -> dict[str, np.ndarray]:
        return {prefix + name: a for prefix, m in self._parts() for name, a in m.get_arrays().items()}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        parts = self._parts()
        known = {p for p, _ in parts}
        stray = sorted(k for k in arrays if k.split(".", 1)[0] + "." not in known)
        if stray:
            raise ModelFileError(f"committee arrays {stray[:5]} belong to no member (expected prefixes "
                                 f"{', '.join(sorted(known))})")
        for prefix, m in parts:
            m.set_arrays({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """The members' own :meth:`check_config`, each with its prefix; nothing is allocated."""
        species = config_species(config)
        family = config.get("member_family")
        if not isinstance(family, str) or family not in MODEL_REGISTRY or family == cls.family:
            raise ValueError(f"hyperparameters.member_family must name a model family known to this "
                             f"ase-mlff ({', '.join(sorted(k for k in MODEL_REGISTRY if k != cls.family))}), "
                             f"got {str(family)[:40]!r}")
        members = config.get("members")
        if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
            raise ValueError(f"hyperparameters.members must be a list of 2 to {MAX_MEMBERS} member "
                             "hyperparameter objects")
        mean = config.get("mean")
        cal = config.get("calibration", {})
        if not isinstance(cal, dict) or set(cal) - set(CALIBRATION_KEYS):
            raise ValueError(f"hyperparameters.calibration must be an object with keys among "
                             f"{', '.join(CALIBRATION_KEYS)}")
        for k, v in cal.items():
            if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                    or not MIN_SCALE <= v <= MAX_CALIBRATION):
                raise ValueError(f"hyperparameters.calibration.{k} must be a number from {MIN_SCALE:g} to "
                                 f"{MAX_CALIBRATION:g}, got {v!r:.40}")
        mcls = MODEL_REGISTRY[family]
        parts = [(f"m{k}.", f"members[{k}]", c) for k, c in enumerate(members)]
        if mean is not None:
            parts.append(("mean.", "mean", mean))
        specs = {}
        for prefix, where, cfg in parts:
            if not isinstance(cfg, dict):
                raise ValueError(f"hyperparameters.{where} must be an object")
            if cfg.get("species") != species or cfg.get("cutoff") != config.get("cutoff"):
                raise ValueError(f"hyperparameters.{where} has species {str(cfg.get('species'))[:40]} and cutoff "
                                 f"{cfg.get('cutoff')!r:.20}; the committee's are {species} and "
                                 f"{config.get('cutoff')!r:.20}")
            try:
                sub = mcls.check_config(cfg)
            except (TypeError, ValueError, KeyError, OverflowError) as exc:
                raise ValueError(f"{where}: {exc}".replace("hyperparameters.", f"hyperparameters.{where}."))
            specs.update({prefix + name: spec for name, spec in sub.items()})
        return specs

    @classmethod
    def check_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Each member's own content checks; all members must share one atom order (arrays
        named ``z``: global models see atoms in a fixed order, and the committee serves them
        together)."""
        mcls = MODEL_REGISTRY[config["member_family"]]
        parts = [(f"m{k}.", c) for k, c in enumerate(config["members"])]
        if config.get("mean") is not None:
            parts.append(("mean.", config["mean"]))
        order = None
        for prefix, cfg in parts:
            sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            try:
                mcls.check_arrays(cfg, sub)
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise ValueError(f"{prefix.rstrip('.')}: {exc}") from None
            if "z" in sub:
                if order is None:
                    order = sub["z"]
                elif not np.array_equal(order, sub["z"]):
                    raise ValueError(f"array '{prefix}z' gives another atom order than 'm0.z': every "
                                     "member must be trained on the atoms in the same order")


def _average(outs: list[ModelOutput], forces: bool, stress: bool) -> ModelOutput:
    """Member average of energies, per-atom energies, forces and virials."""
    def mean(ts):
        return None if any(t is None for t in ts) else torch.stack(ts).mean(dim=0)

    return ModelOutput(energy=mean([o.energy.to(torch.float64) for o in outs]),
                       energies=mean([o.energies for o in outs]),
                       forces=mean([o.forces for o in outs]) if forces else None,
                       virial=mean([o.virial for o in outs]) if stress else None)


def committee_from_models(members: list[Model], mean: Model | None = None,
                          calibration: dict[str, float] | None = None) -> CommitteeModel:
    """A committee of trained models (copied into it as they are); see the module docstring."""
    if not members:
        raise InputError("a committee needs members")
    return CommitteeModel(list(members), mean, calibration)
