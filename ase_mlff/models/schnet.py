"""SchNet: continuous-filter convolutional neural network (Schütt et al. 2017, 2018; Schütt,
Tkatchenko & Müller 2020, "Learning Representations of Molecules and Materials with Atomistic
Neural Networks"; docs/references.md).

Energy (eV) as a sum of atomic energies::

    E = Σ_i E_i,    E_i = e0[Z_i] + s · y_i

* embedding: ``x_i⁰ = A[Z_i]`` (F features per element; a learned table, shape (S, F));
* ``T`` interaction blocks, each a residual update ``x_i ← x_i + v_i`` with::

      v_i = W₄ ssp(W₃ m_i + b₃) + b₄,         m_i = Σ_{j ∈ N(i)} (W₁ x_j) ⊙ W(r_ij)
      W(r) = (U₂ ssp(U₁ e(r) + c₁) + c₂) · f_c(r)

  ``e_k(r) = exp(−γ (r − μ_k)²)`` K Gaussians (Å⁻² γ, centres μ_k evenly spaced on [0, r_c],
  γ = 1/(2Δμ²) so that neighbouring Gaussians overlap at half height), the cosine cutoff
  ``f_c(r) = ½ (cos(π r / r_c) + 1)`` for ``r < r_c`` and 0 beyond (the filter, and so the
  energy and its first derivative, go smoothly to zero at the cutoff), and the shifted softplus
  ``ssp(x) = ln(½ eᵡ + ½)`` (ssp(0) = 0, smooth, unbounded like a ReLU);
* atom-wise output network ``y_i = w₂ · ssp(W_o x_iᵀ + b_o) + b₂`` (F → F/2 → 1), dimensionless;
* ``e0[Z]`` (eV) per-element reference energies and ``s`` (eV) the energy scale: both
  hyperparameters in the config (JSON numbers, exact in float64), set by the shared trainer's
  ``set_reference_energies`` hook, so the network learns O(1) residuals and the large constant
  is added in float64 whatever the network dtype.

The convolution runs over the Graph's directed pair list (``edge_index``), so time and memory
are linear in the number of atoms (tensors are (P, F) with P pairs). Forces ``−dE/dr`` and the
virial ``dE/dε`` are autograd derivatives through the model contract
(:mod:`ase_mlff.models.base`); periodic cells work because the pair vectors carry the cell
shifts. Serving on the CPU (:meth:`SchNetModel.analytic`) runs the same network, with each
filter network tabulated, and its hand-written backward pass in a plain-C++ core
(``_ext/schnet_core.hpp``; docs/schnet.md). Units: positions Å, energies eV.

Transfer learning (the schemes of Krawczuk & Venturi 2020): the parameters form three groups, ``embedding`` (A),
``interactions`` (every block) and ``output`` (the atom-wise network), which
:meth:`SchNetModel.freeze` switches off for training (``requires_grad = False``; the shared
trainer then leaves them out of the optimizer, the weight average and weight decay).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..graph import Graph
from ..splines import hermite_coefficients
from .base import (MIN_SCALE, MIN_WIDTH, Model, ModelOutput, config_cutoff, config_dtype, config_float, config_int,
                   config_reference_energies, config_species, core_inputs, core_output, register_model,
                   sum_per_structure)
from .prior import check_repulsion, repulsion_atom_energies

try:  # the compiled kernel of the serving path; without it, the same numbers from torch ops
    from .._ext import _core
    if not hasattr(_core, "cfconv_forward"):  # pragma: no cover - an extension built before it
        _core = None
except ImportError:  # pragma: no cover
    _core = None

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the parameter groups that transfer learning can freeze (prefix of the parameter names)
GROUPS = ("embedding", "interactions", "output")
_LN2 = math.log(2.0)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``ln(½eˣ + ½) = softplus(x) − ln 2``: zero at zero, so an untrained block starts near
    the identity (the residual adds little)."""
    return torch.nn.functional.softplus(x) - _LN2


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """½(cos(πr/r_c) + 1) inside the cutoff, 0 outside (pair lists may be built for a longer one)."""
    return torch.where(r < cutoff, 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0), torch.zeros_like(r))


class Interaction(torch.nn.Module):
    """One SchNet interaction block (continuous-filter convolution and atom-wise update)."""

    def __init__(self, n_features: int, n_rbf: int, dtype: torch.dtype):
        super().__init__()
        F, K = n_features, n_rbf
        self.in2f = torch.nn.Linear(F, F, bias=False, dtype=dtype)
        self.filter1 = torch.nn.Linear(K, F, dtype=dtype)
        self.filter2 = torch.nn.Linear(F, F, dtype=dtype)
        self.f2out1 = torch.nn.Linear(F, F, dtype=dtype)
        self.f2out2 = torch.nn.Linear(F, F, dtype=dtype)

    def filter(self, rbf, fcut):
        """The continuous filter W(r) (P, F) from the distance expansion and the cutoff."""
        return self.filter2(shifted_softplus(self.filter1(rbf))) * fcut[:, None]

    def forward(self, x, w, i, j):
        msg = self.in2f(x)[j] * w
        m = torch.zeros_like(x).index_add(0, i, msg)  # Σ over the neighbours j of i
        return self.f2out2(shifted_softplus(self.f2out1(m)))

    @torch.no_grad()
    def filter_table(self, centres: torch.Tensor, gamma: float, cutoff: float, r: torch.Tensor):
        """Values and r-derivatives (G, F) of W at the distances ``r`` (float64), in closed form."""
        W1, b1 = self.filter1.weight.to(torch.float64), self.filter1.bias.to(torch.float64)
        W2, b2 = self.filter2.weight.to(torch.float64), self.filter2.bias.to(torch.float64)
        d = r[:, None] - centres[None, :]
        e = torch.exp(-gamma * d ** 2)                      # (G, K)
        de = -2.0 * gamma * d * e
        z1 = e @ W1.T + b1
        dz1 = de @ W1.T
        a, da = shifted_softplus(z1), torch.sigmoid(z1) * dz1
        z2, dz2 = a @ W2.T + b2, da @ W2.T
        inside = r < cutoff
        fc = torch.where(inside, 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0), torch.zeros_like(r))
        dfc = torch.where(inside, -0.5 * (math.pi / cutoff) * torch.sin(r * (math.pi / cutoff)), torch.zeros_like(r))
        return z2 * fc[:, None], dz2 * fc[:, None] + z2 * dfc[:, None]


def _hermite(r, table, inv_h):
    """(W, dW/dr) (P, F) from a filter table (torch ops; the compiled kernel does this inline)."""
    G = table.shape[0]
    u = (r * inv_h).clamp(0.0, float(G))
    k = u.floor().to(torch.long).clamp_(max=G - 1)
    t = (u - k)[:, None]
    c0, c1, c2, c3 = table[k].unbind(1)
    return c0 + t * (c1 + t * (c2 + t * c3)), (c1 + t * (2.0 * c2 + 3.0 * t * c3)) * inv_h


def cfconv_forward(y, r, table, inv_h, i, j):
    """m_i = Σ_j y_j ⊙ W(r_ij) with W from ``table`` (N, F)."""
    if _core is not None and y.device.type == "cpu":
        return torch.from_numpy(_core.cfconv_forward(y.contiguous().numpy(), r.contiguous().numpy(), i.numpy(),
                                                     j.numpy(), table.numpy(), float(inv_h)))
    w, _ = _hermite(r, table, inv_h)
    return torch.zeros_like(y).index_add(0, i, y[j] * w)


def cfconv_backward(grad_m, y, r, table, inv_h, i, j):
    """(dL/dy (N, F), dL/dr (P,)) of :func:`cfconv_forward` given dL/dm."""
    if _core is not None and y.device.type == "cpu":
        gy, gr = _core.cfconv_backward(grad_m.contiguous().numpy(), y.contiguous().numpy(), r.contiguous().numpy(),
                                       i.numpy(), j.numpy(), table.numpy(), float(inv_h))
        return torch.from_numpy(gy), torch.from_numpy(gr)
    w, dw = _hermite(r, table, inv_h)
    gi = grad_m[i]
    return torch.zeros_like(y).index_add(0, j, gi * w), (gi * y[j] * dw).sum(dim=1)


@register_model
class SchNetModel(Model):
    family = "schnet"
    periodic = True
    per_atom_energies = True
    MAX_FEATURES = 1024
    MAX_INTERACTIONS = 16
    MAX_RBF = 512

    def __init__(self, species: Iterable[int], cutoff: float = 5.0, n_features: int = 64,
                 n_interactions: int = 3, n_rbf: int = 25, reference_energies: Sequence[float] | None = None,
                 energy_scale: float = 1.0, dtype: str = "float32", repulsion: dict | None = None):
        species = sorted({int(z) for z in species})
        e0 = [0.0] * len(species) if reference_energies is None else [float(v) for v in reference_energies]
        if len(e0) != len(species):
            raise ValueError("reference_energies needs one value per element")
        config = {"n_features": int(n_features), "n_interactions": int(n_interactions), "n_rbf": int(n_rbf),
                  "reference_energies": e0, "energy_scale": float(energy_scale)}
        if repulsion is not None:
            config["repulsion"] = check_repulsion(repulsion, len(species))
        super().__init__(species, cutoff, config)
        dt = _DTYPES[dtype]
        F, T, K = int(n_features), int(n_interactions), int(n_rbf)
        self.embedding = torch.nn.Embedding(len(species), F, dtype=dt)
        self.interactions = torch.nn.ModuleList(Interaction(F, K, dt) for _ in range(T))
        self.output = torch.nn.Sequential(torch.nn.Linear(F, max(F // 2, 1), dtype=dt),
                                          _SSP(), torch.nn.Linear(max(F // 2, 1), 1, dtype=dt))

    # ----------------------------------------------------------------- evaluation
    def rbf(self, r: torch.Tensor) -> torch.Tensor:
        """(P, K) Gaussian expansion of the distances ``r`` (Å)."""
        mu, gamma = self.rbf_grid(r.dtype, r.device)
        return torch.exp(-gamma * (r[:, None] - mu[None, :]) ** 2)

    def rbf_grid(self, dtype, device=None) -> tuple[torch.Tensor, float]:
        """(centres μ_k (K,), γ Å⁻²) of the Gaussian expansion: K centres evenly on [0, r_c],
        γ = 1/(2Δμ²)."""
        K = self.config["n_rbf"]
        mu = torch.linspace(0.0, self.cutoff, K, dtype=dtype, device=device)
        return mu, 0.5 / (self.cutoff / max(K - 1, 1)) ** 2

    def features(self, graph: Graph) -> torch.Tensor:
        """Per-atom features (N, F) after the last interaction block (the descriptor that the
        output network reads)."""
        s = self.species_index(graph.numbers)
        if bool((s < 0).any()):
            self.check_numbers(graph.numbers.cpu().numpy())  # raises InputError naming the element
        dt = self.embedding.weight.dtype
        i, j = graph.edge_index
        r = torch.linalg.norm(graph.edge_vectors(dt), dim=1)
        x = self.embedding(s)
        rbf, fcut = self.rbf(r), cosine_cutoff(r, self.cutoff)
        for block in self.interactions:
            x = x + block(x, block.filter(rbf, fcut), i, j)
        return x

    # ----------------------------------------------------------------- serving path
    #: table spacing (Å) of the tabulated filters by network dtype: the cubic Hermite error
    #: (h⁴/384 · max|W⁗|) stays orders of magnitude below the dtype's rounding
    TABLE_SPACING = {torch.float32: 0.004, torch.float64: 0.0005}

    def filter_tables(self):
        """Each block's filter W(r) as cubic Hermite coefficients on [0, r_c] (exact values and
        derivatives at the nodes, from :meth:`Interaction.filter_table`), built once and rebuilt
        when a filter parameter changes (training, loading, another dtype or device)."""
        params = [p for b in self.interactions for p in (b.filter1.weight, b.filter1.bias, b.filter2.weight,
                                                          b.filter2.bias)]
        dt = self.embedding.weight.dtype
        key = (dt, self.embedding.weight.device, tuple((p.data_ptr(), p._version) for p in params))
        cached = getattr(self, "_tables", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        h_target = self.TABLE_SPACING.get(dt, 0.004)
        G = max(8, int(math.ceil(self.cutoff / h_target)))
        h = self.cutoff / G
        r = torch.linspace(0.0, self.cutoff, G + 1, dtype=torch.float64)
        centres, gamma = self.rbf_grid(torch.float64)
        tables = []
        for block in self.interactions:
            w, dw = block.filter_table(centres, gamma, self.cutoff, r)
            coeffs = hermite_coefficients(w, dw, h)
            tables.append(coeffs.to(dtype=dt, device=self.embedding.weight.device).contiguous())
        self._tables = (key, tables, 1.0 / h)
        return tables, 1.0 / h

    def core_parameters(self):
        """The model as the compiled core takes it (layout in ``_ext/schnet_core.hpp``): a dict
        of the flat parameter array in the network's dtype (the filter tables of
        :meth:`filter_tables` included), its sizes ``(S, F, H, T, G)``, the table's ``inv_h``
        and the float64 constants (e0, energy scale, the prior). Built once and rebuilt when a
        parameter, the reference energies or the prior change, so a call converts nothing."""
        params = list(self.parameters())
        rep = self.config.get("repulsion")
        key = (self.embedding.weight.dtype, tuple((p.data_ptr(), p._version) for p in params),
               tuple(self.config["reference_energies"]), self.config["energy_scale"], repr(rep))
        cached = getattr(self, "_core_params", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        tables, inv_h = self.filter_tables()
        pieces = [self.embedding.weight]
        for b, table in zip(self.interactions, tables):
            pieces += [b.in2f.weight.T, b.in2f.weight, b.f2out1.weight.T, b.f2out1.weight, b.f2out1.bias,
                       b.f2out2.weight.T, b.f2out2.weight, b.f2out2.bias, table]
        lin1, lin2 = self.output[0], self.output[2]
        pieces += [lin1.weight.T, lin1.weight, lin1.bias, lin2.weight, lin2.bias]
        with torch.no_grad():
            flat = torch.cat([p.detach().cpu().reshape(-1) for p in pieces]).numpy()
        self.__dict__.pop("_tables", None)  # now in `flat` (float64 tables are ~60 MB: not twice)
        S, F = self.embedding.weight.shape
        core = {"weights": flat, "sizes": (S, F, lin1.weight.shape[0], len(self.interactions),
                                           tables[0].shape[0] if tables else 1),
                "inv_h": float(inv_h) if tables else 1.0, "cutoff": float(self.cutoff),
                "e0": np.asarray(self.config["reference_energies"], dtype=np.float64),
                "energy_scale": float(self.config["energy_scale"]), "inner": None, "width": 1.0,
                "atomic_numbers": None}
        if rep is not None:
            core.update(inner=np.asarray(rep["inner"], dtype=np.float64), width=float(rep["width"]),
                        atomic_numbers=np.asarray(self.species, dtype=np.float64))
        self._core_params = (key, core)
        return core

    @torch.no_grad()
    def analytic(self, graph: Graph, forces: bool, stress: bool, n_energy_atoms: int | None = None) -> ModelOutput:
        """Serving path: the whole network, its hand-written backward pass and the prior in the
        compiled core (``_ext/schnet_core.cpp``), each block's filter network replaced by its
        cubic Hermite table (:meth:`filter_tables`): same W(r) to ~1e-9 relative and the exact
        derivative of the interpolant, so forces stay conservative. No (pairs x features)
        array and no autograd graph: time and memory linear in atoms. Training, Hessians and
        graphs needing grad differentiate the network (:meth:`forward`).

        ``n_energy_atoms``: only atoms ``0 .. n_energy_atoms-1`` count (the others still pass
        messages): ``energy`` is the sum of their energies and forces and virial are its
        derivatives (how a domain-decomposed host passes its ghost atoms after its own)."""
        s_idx, n_energy = core_inputs(self, graph, n_energy_atoms)
        if _core is None or not hasattr(_core, "schnet_compute") or graph.device.type != "cpu":
            if n_energy_atoms is not None and n_energy != graph.n_atoms:
                raise InputError("n_energy_atoms needs the compiled extension (ase_mlff._ext) on the CPU")
            return self._analytic_torch(graph, forces, stress)
        i, j = graph.edge_index
        core = self.core_parameters()
        e, f, v = _core.schnet_compute(
            species=s_idx.numpy(), first=i.contiguous().numpy(), second=j.contiguous().numpy(),
            vectors=graph.edge_vectors(torch.float64).contiguous().numpy(),
            n_energy_atoms=n_energy, forces=forces, virials=stress,
            **core)
        return core_output(graph, e, f if forces else None, v if stress else None, n_energy_atoms)

    @torch.no_grad()
    def _analytic_torch(self, graph: Graph, forces: bool, stress: bool) -> ModelOutput:
        """The serving path in torch operations, where the compiled core is missing (an
        extension built before it) and a reference for it in the tests: the same filter tables
        and hand-written backward pass, with the convolution and its gradient in one compiled
        pass over the pairs each (``cfconv.cpp``, or torch ops without the extension)."""
        s_idx = self.species_index(graph.numbers)
        if bool((s_idx < 0).any()):
            self.check_numbers(graph.numbers.cpu().numpy())
        dt = self.embedding.weight.dtype
        i, j = graph.edge_index
        vec_in = graph.edge_vectors()  # in the graph's dtype (the prior), once per call
        vec = vec_in.to(dt)
        r = torch.linalg.norm(vec, dim=1)
        tables, inv_h = self.filter_tables()
        F = torch.nn.functional
        x = self.embedding.weight[s_idx]
        saved = []
        for block, table in zip(self.interactions, tables):
            y = F.linear(x, block.in2f.weight)
            z1 = F.linear(cfconv_forward(y, r, table, inv_h, i, j), block.f2out1.weight, block.f2out1.bias)
            x = x + F.linear(shifted_softplus(z1), block.f2out2.weight, block.f2out2.bias)
            saved.append((y, z1))
        lin1, lin2 = self.output[0], self.output[2]
        h = F.linear(x, lin1.weight, lin1.bias)
        out_y = F.linear(shifted_softplus(h), lin2.weight, lin2.bias).squeeze(-1)
        e0 = torch.tensor(self.config["reference_energies"], dtype=torch.float64, device=out_y.device)
        scale = self.config["energy_scale"]
        energies = e0[s_idx] + scale * out_y.to(torch.float64)
        g_prior = None
        if self.config.get("repulsion") is not None:  # the short-range wall (usually no pair inside)
            with torch.enable_grad():
                v = vec_in.detach().requires_grad_(forces or stress)
                e_rep = repulsion_atom_energies(self.config["repulsion"], graph.numbers, s_idx, i, j, v)
                if e_rep.requires_grad:
                    (g_prior,) = torch.autograd.grad(e_rep.sum(), v)
            energies = energies + e_rep.detach().to(torch.float64)
        out = ModelOutput(energy=sum_per_structure(energies, graph.batch, graph.n_graphs), energies=energies)
        if not (forces or stress):
            return out
        # backward: dE/dx through the output network, then through the blocks in reverse
        g_h = (scale * lin2.weight) * torch.sigmoid(h)          # (N, H): ssp' = sigmoid
        g_x = g_h @ lin1.weight                                  # (N, F)
        g_r = torch.zeros_like(r)
        for block, table, (y, z1) in zip(reversed(self.interactions), reversed(tables), reversed(saved)):
            g_z1 = (g_x @ block.f2out2.weight) * torch.sigmoid(z1)
            g_y, g_rt = cfconv_backward(g_z1 @ block.f2out1.weight, y, r, table, inv_h, i, j)
            g_x = g_x + g_y @ block.in2f.weight
            g_r = g_r + g_rt
        g_vec = (g_r / torch.where(r > 0, r, torch.ones_like(r)))[:, None] * vec   # dE/d(pair vector)
        if g_prior is not None:
            g_vec = g_vec + g_prior.to(dt)
        if forces:
            dpos = torch.zeros_like(x[:, :3]).index_add(0, j, g_vec).index_add(0, i, -g_vec)
            out.forces = (-dpos).to(graph.dtype)
        if stress:
            per_pair = vec[:, :, None] * g_vec[:, None, :]                         # (P, 3, 3)
            vir = torch.zeros((graph.n_graphs, 3, 3), dtype=dt, device=vec.device).index_add(
                0, graph.batch[i], per_pair)
            out.virial = (0.5 * (vir + vir.transpose(1, 2))).to(graph.dtype)
        return out

    def atom_descriptors(self, graph: Graph) -> torch.Tensor:
        """The learned per-atom representation: :meth:`features` (N, F)."""
        return self.features(graph)

    def forward(self, graph: Graph) -> torch.Tensor:
        """Per-atom energies (N,) float64, eV."""
        y = self.output(self.features(graph)).squeeze(-1)
        e0 = torch.tensor(self.config["reference_energies"], dtype=torch.float64, device=y.device)
        s = self.species_index(graph.numbers)
        e = e0[s] + self.config["energy_scale"] * y.to(torch.float64)
        if self.config.get("repulsion") is not None:
            i, j = graph.edge_index
            e = e + repulsion_atom_energies(self.config["repulsion"], graph.numbers, s, i, j,
                                            graph.edge_vectors()).to(torch.float64)
        return e

    # ----------------------------------------------------------------- transfer learning
    def parameter_groups(self) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
        """Parameters by group (``embedding``, ``interactions``, ``output``)."""
        return {g: [(n, p) for n, p in self.named_parameters() if n.split(".")[0] == g] for g in GROUPS}

    def freeze(self, groups: Iterable[str]) -> None:
        """Exclude the named groups from training (requires_grad False); the others train."""
        groups = set(groups)
        unknown = groups - set(GROUPS)
        if unknown:
            raise InputError(f"cannot freeze {', '.join(sorted(unknown))}: the groups are {', '.join(GROUPS)}")
        for g, params in self.parameter_groups().items():
            for _, p in params:
                p.requires_grad_(g not in groups)

    # ----------------------------------------------------------------- shared-trainer hook
    def set_reference_energies(self, e0: Sequence[float], energy_scale: float | None = None) -> None:
        self.config["reference_energies"] = [float(v) for v in e0]
        if energy_scale is not None:
            self.config["energy_scale"] = float(energy_scale)

    def prior_energies(self, graph: Graph) -> torch.Tensor:
        """Per-atom energies (N,) eV of the declared short-range prior alone (zeros without one)."""
        i, j = graph.edge_index
        return repulsion_atom_energies(self.config.get("repulsion"), graph.numbers,
                                       self.species_index(graph.numbers), i, j, graph.edge_vectors())

    def set_repulsion(self, repulsion) -> None:
        """Declare (or with None remove) the short-range prior (:mod:`ase_mlff.models.prior`)."""
        if repulsion is None:
            self.config.pop("repulsion", None)
        else:
            self.config["repulsion"] = check_repulsion(repulsion, len(self.species))

    # ----------------------------------------------------------------- serialisation
    def get_config(self) -> dict[str, Any]:
        return {"species": self.species, "cutoff": self.cutoff, **self.config,
                "dtype": str(self.embedding.weight.dtype).removeprefix("torch.")}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SchNetModel":
        return cls(**config)

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """Array shapes from the hyperparameters alone (nothing allocated)."""
        known = {"species", "cutoff", "n_features", "n_interactions", "n_rbf", "reference_energies",
                 "energy_scale", "dtype", "repulsion"}
        extra = sorted(set(config) - known)
        if extra:
            raise ValueError(f"unknown schnet hyperparameters: {', '.join(extra)}")
        species = config_species(config)
        cutoff = config_cutoff(config, "cutoff", 100.0)
        config_float(config, "energy_scale", MIN_SCALE, 1e6)
        F = config_int(config, "n_features", 1, cls.MAX_FEATURES)
        T = config_int(config, "n_interactions", 0, cls.MAX_INTERACTIONS)
        K = config_int(config, "n_rbf", 2, cls.MAX_RBF)
        # the Gaussians are spaced (and as wide as) cutoff / (K - 1): gamma = 1 / (2 spacing^2)
        if cutoff / (K - 1) < MIN_WIDTH:
            raise ValueError(f"hyperparameters.cutoff / (n_rbf - 1), the spacing and width of the Gaussians, "
                             f"must be at least {MIN_WIDTH:g} Å, got {cutoff / (K - 1):.3g}")
        dtype = config_dtype(config)
        config_reference_energies(config, len(species))
        if config.get("repulsion") is not None:
            check_repulsion(config["repulsion"], len(species))
        H = max(F // 2, 1)
        shapes = {"embedding.weight": ((len(species), F), dtype)}
        for t in range(T):
            p = f"interactions.{t}."
            shapes[p + "in2f.weight"] = ((F, F), dtype)
            shapes[p + "filter1.weight"] = ((F, K), dtype)
            shapes[p + "filter1.bias"] = ((F,), dtype)
            for name in ("filter2", "f2out1", "f2out2"):
                shapes[p + name + ".weight"] = ((F, F), dtype)
                shapes[p + name + ".bias"] = ((F,), dtype)
        shapes["output.0.weight"] = ((H, F), dtype)
        shapes["output.0.bias"] = ((H,), dtype)
        shapes["output.2.weight"] = ((1, H), dtype)
        shapes["output.2.bias"] = ((1,), dtype)
        return shapes


class _SSP(torch.nn.Module):
    def forward(self, x):
        return shifted_softplus(x)
