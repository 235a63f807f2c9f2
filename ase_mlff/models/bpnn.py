"""Behler–Parrinello neural-network potential (HDNNP; Hellström & Behler 2020, "High-Dimensional
Neural Network Potentials for Atomistic Simulations"; Gastegger & Marquetand 2020, §12.2;
docs/references.md).

Energy (eV) as a sum of atomic energies, one feed-forward network per element (Eqs. 13.1–13.3)::

    E = Σ_i E_i,    E_i = e0[Z_i] + s · NN_{Z_i}( (G(i) − μ_{Z_i}) / σ_{Z_i} )

* ``G(i)``: the element's selected symmetry functions (radial G2, angular G5, cosine cutoff;
  :mod:`ase_mlff.descriptors.acsf`), dimensionless;
* ``μ, σ``: per-element mean and standard deviation of each function on the training set
  (Hellström & Behler 2020, Eq. 13.11), stored in the model file. Every input the network sees is O(1), which is
  what keeps its weights O(1) (n2p2's NaN weights come from unscaled inputs);
* ``NN_Z``: ``len(hidden)`` hidden layers of ``tanh`` (Hellström & Behler's choice: smooth, and bounded, so
  an atom whose functions leave the training range gets a bounded energy instead of a
  runaway one; the second derivative needed for force training is smooth) and one linear
  output node;
* ``e0[Z]`` (eV): per-element reference energies fitted by least squares on the training
  energies before the networks, ``s`` (eV): an energy scale (the RMS force component of the
  training set, eV/Å × 1 Å). Both are hyperparameters (JSON numbers, exact in float64), so the
  networks learn O(1) residuals and the large constant is added in float64.

Forces ``−dE/dr`` and the virial ``dE/dε`` are exact derivatives: served on the CPU by the
compiled core (:meth:`BPNNModel.analytic`, ase_mlff/_ext/bpnn_core.hpp: descriptors, networks and
prior with a hand-written backward pass), and by autograd through the model contract
(:mod:`ase_mlff.models.base`) for training, Hessians and other devices. The descriptor is built
from the Graph's pairs only (no triplet list), so memory and time are linear in atoms.

dtype: networks and descriptors run in float32 by default (measured in docs/bpnn.md: about
2x faster than float64 on CPU, force differences ~1e-5 eV/Å, far below the model error); per-atom energies
are returned in float64 (network output + e0), and ``compute`` sums them in float64.

Extrapolation (Hellström & Behler 2020, §13.4): the training-set minimum and maximum of every function are stored;
:meth:`BPNNModel.extrapolation` counts atoms outside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ..descriptors.acsf import ACSF, SymmetryFunctionSet, check_set
from ..errors import InputError
from ..graph import Graph, graph_from_structure
from .base import (MIN_SCALE, Model, ModelOutput, config_cutoff, config_dtype, config_float,
                   config_reference_energies, config_species, core_inputs, core_output, register_model)
from .prior import check_repulsion as _check_repulsion  # shared with SchNet
from .prior import repulsion_atom_energies, zbl  # noqa: F401  (zbl: part of this module's API)

try:  # the compiled serving core (ase_mlff/_ext/bpnn_core.hpp); without it, autograd serves
    from .._ext import _core
    if not hasattr(_core, "bpnn_compute"):  # pragma: no cover - an extension built before it
        _core = None
except ImportError:  # pragma: no cover
    _core = None

ACTIVATIONS = {"tanh": torch.nn.Tanh, "silu": torch.nn.SiLU}
#: activation codes of the compiled core
_CORE_ACTIVATIONS = {"tanh": 0, "silu": 1}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ElementNetwork(torch.nn.Module):
    """Feed-forward network of one element: (n, F) scaled functions -> (n,) outputs.

    Buffers ``mean``, ``std`` (F,) scale the inputs; ``fmin``, ``fmax`` (F,) are the training
    range (for extrapolation checks).
    """

    def __init__(self, n_in: int, hidden: Sequence[int], activation: str, dtype: torch.dtype):
        super().__init__()
        sizes = [n_in, *hidden, 1]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b, dtype=dtype) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()
        for name in ("mean", "fmin", "fmax"):
            self.register_buffer(name, torch.zeros(n_in, dtype=dtype))
        self.register_buffer("std", torch.ones(n_in, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        for layer in self.layers[:-1]:
            h = self.act(layer(h))
        return self.layers[-1](h).squeeze(-1)


@register_model
class BPNNModel(Model):
    """Behler–Parrinello model; build one with :func:`ase_mlff.training.bpnn_train.train_bpnn`
    or from a :class:`~ase_mlff.descriptors.acsf.SymmetryFunctionSet` (``BPNNModel.from_set``)."""

    family = "bpnn"
    periodic = True
    per_atom_energies = True

    MAX_WIDTH = 4096
    MAX_LAYERS = 16
    #: largest symmetry-function exponent eta (Å^-2) read from a file
    MAX_ETA = 1e4
    #: smallest std / (1 + |mean|) of a stored scaling: set_scaling keeps a spread only above
    #: 1e-8 (1 + |mean|) (float32 rounding of it stays far above this half)
    MIN_STD_RATIO = 5e-9

    def __init__(self, species, cutoff, radial_eta, radial_shift, angular_eta, angular_zeta, angular_lambda,
                 selected, hidden=(25, 25), activation="tanh", reference_energies=None, energy_scale=1.0,
                 dtype="float32", repulsion=None):
        species = sorted(int(z) for z in species)
        sfset = SymmetryFunctionSet.from_config(species, cutoff, {
            "radial_eta": radial_eta, "radial_shift": radial_shift, "angular_eta": angular_eta,
            "angular_zeta": list(angular_zeta), "angular_lambda": list(angular_lambda), "selected": selected})
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        e0 = [0.0] * len(species) if reference_energies is None else [float(v) for v in reference_energies]
        if len(e0) != len(species):
            raise ValueError("reference_energies needs one value per element")
        config = {**sfset.as_config(), "hidden": [int(h) for h in hidden], "activation": activation,
                  "reference_energies": e0, "energy_scale": float(energy_scale)}
        if repulsion is not None:
            config["repulsion"] = _check_repulsion(repulsion, len(species))
        super().__init__(species, cutoff, config)
        torch_dtype = _DTYPES[dtype]
        self.sfset = sfset
        self.acsf = ACSF(sfset)
        self.nets = torch.nn.ModuleList(ElementNetwork(len(sel), hidden, activation, torch_dtype)
                                        for sel in sfset.selected)
        for k, sel in enumerate(sfset.selected):
            self.register_buffer(f"_selected_{k}", torch.as_tensor(sel, dtype=torch.long), persistent=False)

    @classmethod
    def from_set(cls, sfset: SymmetryFunctionSet, **kwargs) -> "BPNNModel":
        c = sfset.as_config()
        return cls(sfset.species, sfset.cutoff, c["radial_eta"], c["radial_shift"], c["angular_eta"],
                   c["angular_zeta"], c["angular_lambda"], c["selected"], **kwargs)

    # ----------------------------------------------------------------- evaluation
    def descriptors(self, graph) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per element: (atom indices, selected functions (n, F) before scaling)."""
        s = self.species_index(graph.numbers)
        if bool((s < 0).any()):
            self.check_numbers(graph.numbers.cpu().numpy())
        lib = self.acsf(graph)
        out = []
        for k in range(len(self.species)):
            idx = torch.nonzero(s == k).squeeze(1)
            out.append((idx, lib[idx][:, getattr(self, f"_selected_{k}")]))
        return out

    def atom_descriptors(self, graph) -> torch.Tensor:
        """Every symmetry function of the library for every atom (N, L), before scaling: the
        same columns for every element (each element's network reads its selected subset)."""
        s = self.species_index(graph.numbers)
        if bool((s < 0).any()):
            self.check_numbers(graph.numbers.cpu().numpy())
        dtype = self.nets[0].mean.dtype
        return self.acsf(graph if graph.dtype == dtype else graph.to(dtype=dtype))

    def forward(self, graph) -> torch.Tensor:
        """Per-atom energies (N,) in eV, float64."""
        dtype = self.nets[0].mean.dtype
        if graph.dtype != dtype:
            graph = graph.to(dtype=dtype)
        y = torch.zeros(graph.n_atoms, dtype=dtype, device=graph.device)
        for (idx, x), net in zip(self.descriptors(graph), self.nets):
            if len(idx):
                y = y.index_copy(0, idx, net(x))
        s = self.species_index(graph.numbers)
        # e0 from the (JSON, float64) hyperparameters: never rounded by .to(float32)
        e0 = torch.tensor(self.config["reference_energies"], dtype=torch.float64, device=graph.device)
        e = e0[s] + self.config["energy_scale"] * y.to(torch.float64)
        if self.config.get("repulsion") is not None:
            i, j = graph.edge_index
            e = e + self.prior_atom_energies(graph.numbers, i, j, graph.edge_vectors()).to(torch.float64)
        return e

    # ----------------------------------------------------------------- serving path
    def core_parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """The symmetry functions and networks as the compiled core's flat arrays ``(ints,
        reals)`` (layout in ase_mlff/_ext/bpnn_core.hpp; ``reals`` in the networks' dtype),
        built once and rebuilt when a weight or scaling buffer changes (training, loading,
        another dtype): the key holds every tensor's storage and version counter."""
        tensors = [t for net in self.nets for t in (*net.parameters(), net.mean, net.std)]
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        cached = getattr(self, "_core_params", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        acsf, sf = self.acsf, self.sfset
        hidden = [int(h) for h in self.config["hidden"]]
        ints = [len(self.species), acsf.n_radial, acsf.n_eta, acsf.n_zl, int(acsf.exps.shape[0]),
                _CORE_ACTIVATIONS[self.config["activation"]], len(hidden), *hidden, *self.species,
                *[len(sel) for sel in sf.selected], *acsf.exps.reshape(-1).tolist()]
        for sel in sf.selected:
            ints.extend(int(c) for c in sel)
        dt = self.nets[0].mean.dtype
        parts = [acsf.radial_eta, acsf.radial_shift, acsf.angular_eta, acsf.A, acsf.diag]
        for net in self.nets:
            parts += [net.mean, net.std]
            for layer in net.layers:
                parts += [layer.weight, layer.bias]
        with torch.no_grad():
            reals = torch.cat([t.detach().to(device="cpu", dtype=dt).reshape(-1) for t in parts]).numpy()
        self._core_params = (key, np.asarray(ints, dtype=np.int64), reals)
        return self._core_params[1], self._core_params[2]

    def _core_doubles(self) -> np.ndarray:
        """The float64 part of the core's parameters (cutoff, energy scale, e0, the prior): a
        few numbers from the hyperparameters, which set_reference_energies / set_repulsion may
        change between calls."""
        rep = self.config.get("repulsion")
        out = [self.cutoff, self.config["energy_scale"], *self.config["reference_energies"]]
        if rep is None:
            out += [0.0, 1.0]
        else:
            out += [1.0, rep["width"], *np.asarray(rep["inner"], dtype=np.float64).reshape(-1).tolist()]
        return np.asarray(out, dtype=np.float64)

    @torch.no_grad()
    def analytic(self, graph: Graph, forces: bool, stress: bool, n_energy_atoms: int | None = None) -> ModelOutput:
        """Serving path: the compiled core (ase_mlff/_ext/bpnn_core.hpp) computes the symmetry
        functions, the networks, the prior and their hand-written backward pass in one call,
        in the networks' dtype, with memory linear in atoms (no autograd graph, no
        (functions x pairs x 3) Jacobian). The same numbers as autograd through :meth:`forward`,
        which stays the path for training, Hessians and graphs on other devices.
        ``n_energy_atoms``: only atoms ``0 .. n_energy_atoms-1`` count (the others are
        neighbours only, as a domain-decomposed host's ghost atoms)."""
        s_idx, n_energy = core_inputs(self, graph, n_energy_atoms)
        if _core is None:  # pragma: no cover - no compiled extension
            if n_energy_atoms is not None and n_energy != graph.n_atoms:
                raise InputError("n_energy_atoms needs the compiled extension (ase_mlff._ext) on the CPU")
            return self._autograd(graph, forces, stress, False)
        ints, reals = self.core_parameters()
        dt = self.nets[0].mean.dtype
        i, j = graph.edge_index
        vec = graph.edge_vectors(dt).contiguous()
        e, f, v = _core.bpnn_compute(ints, reals, self._core_doubles(), s_idx.numpy(), i.numpy(), j.numpy(),
                                     vec.numpy(), n_energy, forces, stress, 0)
        return core_output(graph, e, f if forces else None, v if stress else None, n_energy_atoms)

    # ----------------------------------------------------------------- short-range prior
    def prior_atom_energies(self, numbers, i, j, vec) -> torch.Tensor:
        """Per-atom energies (N,) eV of the declared short-range repulsion (zeros without one):
        half of each pair's ``ZBL(r) · sw(r)`` goes to each atom (the pair list is directed)."""
        return repulsion_atom_energies(self.config.get("repulsion"), numbers, self.species_index(numbers), i, j, vec)

    def prior_terms(self, numbers, i, j, vec) -> tuple[float, torch.Tensor]:
        """Energy (eV) and forces (N, 3) of the short-range prior alone, for the training cache
        (it does not depend on the weights). Pairs given as in ``ACSF.from_vectors``."""
        N = len(numbers)
        if self.config.get("repulsion") is None:
            return 0.0, torch.zeros(N, 3, dtype=vec.dtype, device=vec.device)
        with torch.enable_grad():
            v = vec.detach().clone().requires_grad_(True)
            e = self.prior_atom_energies(numbers, i, j, v).sum()
            if not e.requires_grad:
                return float(e.detach()), torch.zeros(N, 3, dtype=vec.dtype, device=vec.device)
            (dv,) = torch.autograd.grad(e, v)
        # vec_p = r_j - r_i (+ shift): F_i = +dE/dvec_p, F_j = -dE/dvec_p
        f = torch.zeros(N, 3, dtype=vec.dtype, device=vec.device).index_add(0, i, dv).index_add(0, j, -dv)
        return float(e.detach()), f

    def extrapolation(self, graph, tolerance: float = 0.0) -> dict[str, Any]:
        """Atoms whose functions leave the training range [min, max] (widened by ``tolerance``
        times the range): Hellström & Behler 2020's cheap extrapolation warning. Returns counts per element."""
        out = {}
        with torch.no_grad():
            for (idx, x), net, z in zip(self.descriptors(graph), self.nets, self.species):
                width = (net.fmax - net.fmin) * tolerance
                outside = ((x < net.fmin - width) | (x > net.fmax + width)).any(dim=1)
                out[chemical_symbols[z]] = int(outside.sum())
        return out

    # ----------------------------------------------------------------- serialisation
    def get_config(self) -> dict[str, Any]:
        return {"species": self.species, "cutoff": self.cutoff, **self.config,
                "dtype": str(self.nets[0].mean.dtype).removeprefix("torch.")}

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """Array shapes of every network, from the hyperparameters alone (nothing allocated)."""
        species = config_species(config)
        config_cutoff(config, "cutoff", 100.0)
        config_float(config, "energy_scale", MIN_SCALE, 1e6)
        sizes = check_set(config, species)
        # exp(-eta r^2) underflows to 0 long before eta r^2 overflows, but its derivative
        # -2 eta r exp(-eta r^2) is then inf * 0 = NaN; a function of width below 0.01 Å
        # (eta = 1e4 / Å^2) sees nothing anyway
        for key in ("radial_eta", "angular_eta"):
            if np.max(np.asarray(config[key], dtype=np.float64), initial=0.0) > cls.MAX_ETA:
                raise ValueError(f"hyperparameters.{key} must be at most {cls.MAX_ETA:g} / Å^2")
        if "selected" not in config:
            raise ValueError("hyperparameters.selected is missing")
        hidden = config.get("hidden")
        if (not isinstance(hidden, list) or not 1 <= len(hidden) <= cls.MAX_LAYERS
                or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= cls.MAX_WIDTH for h in hidden)):
            raise ValueError(f"hyperparameters.hidden must be 1..{cls.MAX_LAYERS} layer widths in 1..{cls.MAX_WIDTH}")
        if config.get("activation") not in ACTIVATIONS:
            raise ValueError(f"hyperparameters.activation must be one of {sorted(ACTIVATIONS)}")
        dtype = config_dtype(config)
        config_reference_energies(config, len(species))
        if config.get("repulsion") is not None:
            _check_repulsion(config["repulsion"], len(species))
        shapes = {}
        for k, z in enumerate(species):
            F = sizes["n_selected"][chemical_symbols[z]]
            dims = [F, *hidden, 1]
            for name in ("mean", "std", "fmin", "fmax"):
                shapes[f"nets.{k}.{name}"] = ((F,), dtype)
            for l, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
                shapes[f"nets.{k}.layers.{l}.weight"] = ((b, a), dtype)
                shapes[f"nets.{k}.layers.{l}.bias"] = ((b,), dtype)
        return shapes

    @classmethod
    def check_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """The scaling of each network: ``std`` divides the symmetry functions, so it must be at
        least ``MIN_STD_RATIO (1 + |mean|)`` (:meth:`set_scaling` writes 1 for any smaller spread:
        a denormal std turns the inputs into inf and the energy into NaN), and the training
        range must be a range (``fmin <= fmax``)."""
        for k in range(len(config["species"])):
            p = f"nets.{k}."
            mean, std = (np.asarray(arrays[p + n], dtype=np.float64) for n in ("mean", "std"))
            bad = np.nonzero(~(std >= cls.MIN_STD_RATIO * (1.0 + np.abs(mean))))[0]
            if len(bad):
                f = int(bad[0])
                raise ValueError(f"array '{p}std' holds {std[f]:.3g} for function {f} (mean {mean[f]:.3g}): a "
                                 f"scale must be at least {cls.MIN_STD_RATIO:g} (1 + |mean|)")
            bad = np.nonzero(arrays[p + "fmin"] > arrays[p + "fmax"])[0]
            if len(bad):
                raise ValueError(f"arrays '{p}fmin' and '{p}fmax' give an empty training range for function "
                                 f"{int(bad[0])} (min above max)")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BPNNModel":
        return cls(**config)

    #: keys of :meth:`config_for_frames` that choose the symmetry functions (the recipe's defaults)
    SELECTION_DEFAULTS = {"cutoff": 6.0, "n_radial": 8, "n_eta": 4, "zetas": [1, 2, 4], "max_correlation": 0.9}

    @classmethod
    def config_for_frames(cls, config: dict[str, Any], frames) -> dict[str, Any]:
        """Hook of the shared trainer's generic command (``python -m ase_mlff.training.trainer
        --family bpnn``): complete ``config`` from the training ``frames``. A config with
        ``selected`` (e.g. a model file's hyperparameters) is complete already. Otherwise the
        symmetry functions are chosen from the frames as ``ase-mlff train bpnn`` chooses them
        (:func:`~ase_mlff.descriptors.acsf.automatic_set`) with the keys of
        :data:`SELECTION_DEFAULTS`; ``"repulsion": true`` adds the short-range prior below the
        smallest training distances (``repulsion_width``, Å, default 0.5). The other keys
        (``species``, ``hidden``, ``activation``, ``dtype``, ...) are the constructor's."""
        from ..descriptors.acsf import automatic_set
        from .prior import repulsion_for

        config = dict(config)
        if "selected" in config:
            return config
        opts = {k: config.pop(k, v) for k, v in cls.SELECTION_DEFAULTS.items()}
        width = config.pop("repulsion_width", 0.5)
        species = config.get("species")
        sfset, _ = automatic_set(frames, float(opts["cutoff"]), species=species, n_radial=int(opts["n_radial"]),
                                 n_eta=int(opts["n_eta"]), zetas=[int(z) for z in opts["zetas"]],
                                 max_correlation=float(opts["max_correlation"]))
        config.update(species=list(sfset.species), cutoff=float(opts["cutoff"]), **sfset.as_config())
        if config.get("repulsion") is True:
            config["repulsion"] = repulsion_for(frames, sfset.species, sfset.cutoff, float(width))
        elif config.get("repulsion") is False:
            config.pop("repulsion")
        return config

    def set_scaling(self, element_index: int, X: np.ndarray) -> None:
        """Store mean/std/min/max of the selected functions ``X`` (n, F) of one element."""
        net = self.nets[element_index]
        X = np.asarray(X, dtype=np.float64)
        std = X.std(0)
        # a function that is constant on the training set is excluded by the selection; this
        # floor only guards a set chosen by hand
        std = np.where(std > 1e-8 * (1 + np.abs(X.mean(0))), std, 1.0)
        with torch.no_grad():
            for name, v in (("mean", X.mean(0)), ("std", std), ("fmin", X.min(0)), ("fmax", X.max(0))):
                getattr(net, name).copy_(torch.as_tensor(v))

    #: True while a fine-tuned model trains (``train_bpnn(init=...)``): its scaling is the
    #: parent's, which its weights were trained against, so :meth:`fit_scaling` leaves it alone
    keep_scaling = False

    def fit_scaling(self, graphs) -> None:
        """Hook of the shared trainer (:mod:`ase_mlff.training.trainer`): per-element mean/std/
        range of the selected functions on (up to 64 evenly spaced) training structures; nothing
        while :attr:`keep_scaling` is set."""
        from ..descriptors.acsf import library_values

        if self.keep_scaling:
            return
        frames = list(getattr(graphs, "structures", graphs))
        frames = frames[:: max(1, len(frames) // 64)]
        values = library_values(self.sfset, frames)
        for k, sel in enumerate(self.sfset.selected):
            if len(values[k]):
                self.set_scaling(k, values[k][:, sel])

    def set_repulsion(self, repulsion) -> None:
        """Declare (or with None remove) the short-range prior: a hyperparameter, saved in the file."""
        if repulsion is None:
            self.config.pop("repulsion", None)
        else:
            self.config["repulsion"] = _check_repulsion(repulsion, len(self.species))

    # ----------------------------------------------------------------- shared-trainer hooks
    def prepare_training_frame(self, frame):
        """Training-time cache of one labelled frame (:class:`FrameCache`):
        selected functions and their pair-vector Jacobian, which depend only on the frame and
        the hyperparameters (never on weights or scaling), so the trainer rebuilds it on resume."""
        return cache_frame(self, frame)

    def training_batch(self, caches, create_graph: bool = True):
        """Energies (B,) float64 and forces (ΣN, 3) of cached frames, differentiable in the
        weights: forces by the chain rule through the cached Jacobian (no double backward
        through the descriptor)."""
        return predict_cached(self, caches, create_graph=create_graph)

    def set_reference_energies(self, e0: Sequence[float], energy_scale: float | None = None) -> None:
        self.config["reference_energies"] = [float(v) for v in e0]
        if energy_scale is not None:
            self.config["energy_scale"] = float(energy_scale)


# ------------------------------------------------------------------------- training-time cache
# The shared trainer's hook (prepare_training_frame / training_batch) of this family. It lives
# here, beside the model, so that models/ never imports training/.
@dataclass
class FrameCache:
    """What a training step needs of one frame (see the module docstring)."""

    n_atoms: int
    species: torch.Tensor  # (N,) element index
    x: list  # per element: (n_k, F_k) selected functions
    atoms: list  # per element: (n_k,) atom indices
    i: torch.Tensor  # (P,) pair centre
    j: torch.Tensor  # (P,) pair neighbour
    jac: torch.Tensor  # (P, Fmax, 3) d(selected functions of i_p, padded)/d(vec_p)
    energy: float
    forces: torch.Tensor  # (N, 3)
    prior_energy: float = 0.0  # eV: the model's fixed short-range repulsion (weights not involved)
    prior_forces: torch.Tensor | None = None  # (N, 3) eV/Å, of the same term


def cache_frame(model: "BPNNModel", frame) -> FrameCache:
    """Functions and their pair-vector derivatives of one frame (weights not involved), on the
    model's device and in its dtype."""
    dev = next(model.parameters()).device
    g = graph_from_structure(frame, model.cutoff, dtype=model.nets[0].mean.dtype)
    if dev.type != "cpu":
        g = g.to(device=dev)
    i, j = g.edge_index
    vec = g.edge_vectors().detach()
    keep = torch.linalg.norm(vec, dim=1) < model.cutoff  # a list built for a longer cutoff
    i, j, vec = i[keep], j[keep], vec[keep]
    s = model.species_index(g.numbers)
    if bool((s < 0).any()):
        model.check_numbers(g.numbers.cpu().numpy())
    # analytic derivatives (ACSF.pair_jacobian): one pass instead of one backward per function
    lib, jac_lib = model.acsf.pair_jacobian(g.numbers, i, j, vec)
    sels = [getattr(model, f"_selected_{k}") for k in range(len(model.species))]
    fmax = max(len(x) for x in sels)
    # padded per-atom column table: column f of atom n is lib[n, cols[n, f]] (padding repeats col 0
    # and is multiplied by a zero adjoint)
    cols = torch.zeros(g.n_atoms, fmax, dtype=torch.long, device=dev)
    for k, sel in enumerate(sels):
        cols[s == k, :len(sel)] = sel
    xsel = torch.gather(lib, 1, cols)
    jac = torch.gather(jac_lib, 1, cols[i][:, :, None].expand(-1, -1, 3))
    atoms = [torch.nonzero(s == k).squeeze(1) for k in range(len(sels))]
    x = [xsel[a][:, :len(sel)] for a, sel in zip(atoms, sels)]
    pe, pf = model.prior_terms(g.numbers, i, j, vec)
    return FrameCache(g.n_atoms, s.to(dev), [t.to(dev) for t in x], [a.to(dev) for a in atoms], i.to(dev),
                      j.to(dev), jac.to(dev), float(frame.energy) if frame.energy is not None else float("nan"),
                      torch.as_tensor(frame.forces if frame.forces is not None else np.zeros((g.n_atoms, 3)),
                                      dtype=vec.dtype).to(dev), pe, pf.to(dev))


def collate(caches: Sequence[FrameCache]) -> dict[str, Any]:
    """Join cached frames into one batch (atom and pair indices offset, Jacobians padded)."""
    n_el = len(caches[0].x)
    dev = caches[0].jac.device
    fmax = max(c.jac.shape[1] for c in caches)
    offsets = np.cumsum([0] + [c.n_atoms for c in caches[:-1]])
    jac = [torch.nn.functional.pad(c.jac, (0, 0, 0, fmax - c.jac.shape[1])) for c in caches]
    return {
        "n_atoms": int(sum(c.n_atoms for c in caches)),
        "batch": torch.cat([torch.full((c.n_atoms,), b, dtype=torch.long, device=dev) for b, c in enumerate(caches)]),
        "species": torch.cat([c.species for c in caches]),
        "x": [torch.cat([c.x[k] for c in caches]) for k in range(n_el)],
        "atoms": [torch.cat([c.atoms[k] + int(o) for c, o in zip(caches, offsets)]) for k in range(n_el)],
        "i": torch.cat([c.i + int(o) for c, o in zip(caches, offsets)]),
        "j": torch.cat([c.j + int(o) for c, o in zip(caches, offsets)]),
        "jac": torch.cat(jac),
        "energy": torch.tensor([c.energy for c in caches], dtype=torch.float64, device=dev),
        "n": torch.tensor([c.n_atoms for c in caches], dtype=torch.float64, device=dev),
        "forces": torch.cat([c.forces for c in caches]),
        "prior_energy": torch.tensor([c.prior_energy for c in caches], dtype=torch.float64, device=dev),
        "prior_forces": torch.cat([c.prior_forces if c.prior_forces is not None
                                   else torch.zeros_like(c.forces) for c in caches]),
    }


def predict_cached(model: "BPNNModel", caches, create_graph: bool = True):
    """Energies (B,) float64 and forces (sum N, 3) of cached frames (a list of
    :class:`FrameCache` or a :func:`collate` batch), differentiable in the weights. This is
    the BPNN's ``training_batch`` hook of the shared trainer."""
    b = caches if isinstance(caches, dict) else collate(caches)
    dev = b["jac"].device
    scale = model.config["energy_scale"]
    e0 = torch.tensor(model.config["reference_energies"], dtype=torch.float64, device=dev)
    N = b["n_atoms"]
    with torch.enable_grad():  # also under the trainer's no_grad validation: forces need dE/dG
        xs = [x.clone().requires_grad_(True) for x in b["x"]]
        y = torch.zeros(N, dtype=b["jac"].dtype, device=dev)
        for net, x, a in zip(model.nets, xs, b["atoms"]):
            if len(a):
                y = y.index_copy(0, a, net(x))
        grads = torch.autograd.grad(y.sum(), xs, create_graph=create_graph, allow_unused=True)
    v = torch.zeros(N, b["jac"].shape[1], dtype=y.dtype, device=dev)
    for a, gr, x in zip(b["atoms"], grads, xs):
        if gr is not None and len(a):
            v = v.index_put((a[:, None], torch.arange(x.shape[1], device=dev)[None, :]), gr)
    dvec = torch.einsum("pf,pfc->pc", v[b["i"]], b["jac"])  # dE_nn/d(vec_p)
    # vec_p = r_j - r_i + shift: dE/dr_j += dvec_p, dE/dr_i -= dvec_p; F = -dE/dr
    f = torch.zeros(N, 3, dtype=dvec.dtype, device=dev).index_add(0, b["i"], dvec).index_add(0, b["j"], -dvec)
    n_frames = len(b["energy"])
    e_atoms = e0[b["species"]] + scale * y.to(torch.float64)
    energies = torch.zeros(n_frames, dtype=torch.float64, device=dev).index_add(0, b["batch"], e_atoms)
    # the fixed short-range prior (zero on frames without contacts inside its wall)
    return energies + b["prior_energy"], scale * f + b["prior_forces"]
