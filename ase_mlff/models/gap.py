"""GAP: a sparse Gaussian process on SOAP environments, plus an optional 2-body term.

Energy of atom ``i`` of species ``s_i`` (Csányi, Willatt & Ceriotti 2020, "Machine-Learning of Atomic-Scale Properties
Based on Physical Principles", §6.2; docs/references.md)::

    eps_i = e0[s_i] + delta^2 sum_{m: s_m = s_i} alpha_m (q_i . q_m)^zeta + 1/2 sum_j V_{s_i s_j}(r_ij)
    V_ab(r) = f_c(r) delta_2^2 sum_{u in ab} beta_u exp(-(r - r_u)^2 / (2 theta^2))

``q = p / |p|`` are normalised SOAP power spectra (:mod:`ase_mlff.descriptors.soap`), ``m``
runs over the sparse (representative) environments with coefficients ``alpha``, ``u`` over the
sparse distances of the 2-body term of each element pair, ``f_c`` the cosine cutoff of the
2-body term. Environments of different central elements never correlate. Forces and stress
are exact derivatives: on CPU from the compiled serving core (:meth:`GAPModel.analytic`,
``_ext/gap_core.hpp``: SOAP, the kernel and its gradient, the backward pass through SOAP and
the 2-body term in one pass over the atoms); elsewhere, and as the reference, by autograd
through :meth:`GAPModel.forward` (the SOAP backward pass compiled, the rest in torch).

Parameters ``x = [alpha, beta, e0]`` come from :mod:`ase_mlff.training.gap_train`: the
projected-process solution on energies, forces and virials. When the model file keeps the
triangular factor ``R`` of that fit (``variance``; ``R^T R = Phi^T Lambda^-1 Phi + prior``),
the GP gives the predictive variance of any output that is a linear functional of the local
energies: with ``phi`` the output's row of the design matrix (:meth:`GAPModel.design`)::

    var = |R^-T phi|^2

the posterior variance of the fitted sparse GP (the "subset of regressors" variance): near
zero on training data fitted with small sigmas, larger away from them. The uncertainties
(``MLFFCalculator(..., uncertainty=True)``) are calibrated standard deviations::

    energy_uncertainty      c_E sqrt(var E)                                   eV, per structure
    forces_uncertainty[a]   c_F sqrt(var F_ax + var F_ay + var F_az)          eV/Å, per atom
    stress_uncertainty      c_S sqrt(var W_b) / V                             eV/Å³, per component

with the committees' meaning (docs/uncertainty.md): the estimated RMS error of the energy, the
RMS length of atom a's force error vector, the RMS error of each stress component. The factors
``c`` (``calibration``, in the model file) are fitted when the model is trained, on
leave-one-frame-out errors of the training frames (:mod:`ase_mlff.training.gap_train`): the raw
posterior standard deviations are 7-14 times smaller than the held-out errors at the default
``delta`` (docs/gap.md). A file written before calibration gives the raw values, with one
warning.

How the variances are computed (:meth:`GAPModel.sampled_variance`, the default): energies
exactly (one row per structure, ``phi_E = sum_i k_i``, a triangular solve). Force and virial
components from ``R`` samples of the posterior, kept in the file (``posterior_samples``,
columns ``b_k = R^-1 w_k`` with ``w_k ~ N(0, I / R)``, ``R = 8`` by default)::

    var F_ac = sum_k (phi_ac . b_k)^2      (mean over the draws: |R^-T phi_ac|^2 exactly)

that is, the mean square of the forces of the R sample deviations, as for a committee of R
members around the fitted model. Each sample's forces are one more channel of the SOAP backward
pass, all channels in one compiled call (``_core.soap_backward_channels``), after one matrix
product for all samples' gradients with respect to the descriptors: no design rows, no SOAP
Jacobian. The estimate is unbiased with a relative noise of about ``sqrt(2 / (3 R))`` per atom
(29 % for R = 8 with equal components, more otherwise; it ranks the held-out Si force errors
with Spearman 0.90 against the exact variance's 0.91). The cost is ``R`` times ``N M D`` multiply-adds plus the backward pass:
a call with uncertainty takes 2.6-2.7 times a plain one on one thread (64-1000 Si atoms,
docs/benchmarks.md), where the design rows took 20-29 times: their ``(3P x D) (D x M)`` product
is ``84 N D M`` multiply-adds with ~28 neighbours per atom, 40 times the ``2 N D M`` of the
plain call's kernel, so no exact method can be cheap.

The exact variance from the design rows is :meth:`GAPModel.predictive_variance` (the reference
the fast path is tested against: with the T columns of ``R^-1`` as its samples it sums the exact
variance, to 1e-10 relative) and what the calculator uses when ``variance_method = "exact"`` on
the model. The deterministic-training-conditional (DTC) variance adds ``L K L^T - |L_M^-1
k_M|^2``, the part of the SOAP prior the sparse environments do not span (``L_M`` the Cholesky
factor of ``K_MM``): :meth:`GAPModel.predictive_variance` with ``include_residual=True``. For
forces that residual is large even on the training data (the span of ``k(., q_m)`` holds no
derivative directions), and on held-out mlearn Si frames it ranked the per-atom force errors
worse than the posterior variance alone (Spearman 0.85 against 0.91, ``python
benchmarks/gap.py uncertainty``), so it is not used for the uncertainties.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable

import numpy as np
import torch

from .._warn import warn
from ..descriptors.soap import GRID_SPACING, SOAP, SoapFunction, cutoff_function
from ..graph import Graph
from .base import (MIN_SCALE, MIN_WIDTH, Model, ModelOutput, config_cutoff, config_float, config_int,
                   config_reference_energies, config_species, core_inputs, core_output, register_model)
# the calibration factors have the committee's names and bounds (docs/uncertainty.md)
from .committee import CALIBRATION_KEYS, MAX_CALIBRATION
from .gap_posterior import (add_rows, clipped_sqrt, draw_posterior_samples, int_power, nystrom_variance,
                            posterior_variance, scatter_pair_rows, soap_prior_variance)

_SOAP_KEYS = ("cutoff", "n_max", "l_max", "atom_sigma", "cutoff_width", "central_weight", "basis_radius")

#: posterior samples a new fit keeps (``--variance-samples``): relative noise of one atom's
#: force variance at least ~29 % (sqrt(2/(3R))), and a call with uncertainty within 3 times a
#: plain one (module docstring)
DEFAULT_VARIANCE_SAMPLES = 8
#: most samples a file may declare: the (M x D R) product matrix cached for them grows with R
#: (8 samples: 21 MB for 1000 sparse points of 324 components)
MAX_VARIANCE_SAMPLES = 64
#: seed of the samples drawn for a file written before they were stored (uncalibrated anyway)
LEGACY_SAMPLE_SEED = 0


def pair_key(a, b, n_species: int):
    """Index of the unordered element pair (a <= b) among all pairs (numpy or torch arrays)."""
    return a * n_species - a * (a - 1) // 2 + (b - a)


def soap_dim(n_species: int, n_max: int, l_max: int) -> int:
    S, N = n_species, n_max
    return (S * (S - 1) // 2 * N * N + S * N * (N + 1) // 2) * (l_max + 1)


@register_model
class GAPModel(Model):
    """Sparse GP on SOAP (+ 2-body). ``soap``: the descriptor's hyperparameters; ``n_sparse``:
    sparse environments per element; ``two_body``: ``{"cutoff", "width", "delta", "theta",
    "n_sparse"}`` (``n_sparse`` sparse distances per element pair) or None; ``variance``:
    whether the file keeps the factors for the predictive variance; ``variance_samples``: how
    many posterior samples it keeps for the fast force and stress variance (None: a file
    written before they were kept; they are drawn on first use); ``calibration``: the
    factors ``{"energy", "forces", "stress"}`` applied to the uncertainties (None:
    uncalibrated, a file written before calibration)."""

    family = "gap"
    extra_results = ("energy_uncertainty", "forces_uncertainty", "stress_uncertainty")
    # Everything is kept and computed in float64 whatever the model's dtype: the coefficients of
    # a GP cancel (|alpha| reaches 1e3 for |E| of 1 eV), so rounding the descriptors or the sparse
    # points to float32 would cost meV; a float32 model only rounds its inputs and outputs.
    # the compiled SOAP backward is first-order only: no Hessian by double backward
    supports_hessian = False
    float64_buffers = ("sparse", "pair_sparse", "alpha", "beta", "e0", "posterior_r", "prior_chol",
                       "posterior_samples", "soap_table", "soap_central")
    #: how compute_extras gets the force and stress variances: "samples" (the default, fast
    #: and unbiased) or "exact" (the design rows; 10-25 times slower); set on an instance
    variance_method = "samples"

    def __init__(self, species: Iterable[int], cutoff: float | None = None, soap: dict | None = None,
                 zeta: int = 4, delta: float = 1.0, n_sparse: Iterable[int] = (), two_body: dict | None = None,
                 reference_energies: Iterable[float] | None = None, variance: bool = True,
                 variance_samples: int | None = None, calibration: dict[str, float] | None = None,
                 dtype: str = "float64", _defer_tables: bool = False):
        species = sorted({int(z) for z in species})
        soap = {k: v for k, v in dict(soap or {}).items() if k in _SOAP_KEYS}
        soap.setdefault("cutoff", 5.0)
        rc = max(float(soap["cutoff"]), float(two_body["cutoff"]) if two_body else 0.0)
        if cutoff is not None and float(cutoff) != rc:  # the loader refuses such a file (check_config)
            raise ValueError(f"cutoff {cutoff} does not match the reach of the SOAP and 2-body terms, {rc}")
        super().__init__(species, rc)
        S = len(species)
        self.zeta, self.delta = int(zeta), float(delta)
        self.n_sparse = [int(n) for n in n_sparse] or [0] * S
        self.two_body = dict(two_body) if two_body else None
        self.variance = bool(variance)
        self.variance_samples = int(variance_samples) if variance_samples is not None and self.variance else None
        self.calibration = ({k: float(calibration[k]) for k in CALIBRATION_KEYS}
                            if calibration is not None and self.variance else None)
        e0 = list(reference_energies) if reference_energies is not None else [0.0] * S
        self.soap = SOAP(species, **soap, compute_tables=not _defer_tables)
        self.config = {"soap": self.soap.hypers(), "zeta": self.zeta, "delta": self.delta, "n_sparse": self.n_sparse,
                       "two_body": self.two_body, "reference_energies": [float(v) for v in e0],
                       "variance": self.variance, "dtype": dtype}
        # written only when set, so that a file from before them is saved again as it was
        if self.variance_samples is not None:
            self.config["variance_samples"] = self.variance_samples
        if self.calibration is not None:
            self.config["calibration"] = dict(self.calibration)
        self.config["soap"].pop("species")
        self._warned_uncalibrated = False
        self._channels = None  # cached (per element) sparse points times posterior samples
        ft = getattr(torch, dtype)
        M, D = sum(self.n_sparse), self.soap.dim
        # first floating buffer: Model.dtype reads it (the declared dtype of inputs and outputs)
        self.register_buffer("_dtype_marker", torch.zeros(0, dtype=ft), persistent=False)
        self.register_buffer("sparse", torch.zeros(M, D, dtype=torch.float64))
        self.register_buffer("soap_table", torch.from_numpy(self.soap.table).to(torch.float64))
        self.register_buffer("soap_central", torch.from_numpy(self.soap.central).to(torch.float64))
        self.register_buffer("sparse_species", torch.repeat_interleave(
            torch.arange(S), torch.tensor(self.n_sparse, dtype=torch.long)))
        self.register_buffer("alpha", torch.zeros(M, dtype=torch.float64))
        U = self.n_pair_sparse
        self.register_buffer("pair_sparse", torch.zeros(U, dtype=torch.float64))
        self.register_buffer("beta", torch.zeros(U, dtype=torch.float64))
        self.register_buffer("e0", torch.tensor(e0, dtype=torch.float64), persistent=False)
        T = self.n_parameters
        self.register_buffer("posterior_r", torch.zeros((T, T) if self.variance else (0, 0), dtype=torch.float64))
        self.register_buffer("prior_chol", torch.zeros((M, M) if self.variance else (0, 0), dtype=torch.float64))
        # (T, R) columns R^-1 w_k (w_k ~ N(0, I / R)): the deviations of R posterior samples from
        # the fitted x. A file from before they were kept has none: they are drawn on first use
        # (not persistent, so such a file is saved again without them)
        R_s = self.variance_samples or 0
        self.register_buffer("posterior_samples", torch.zeros((T, R_s) if self.variance else (0, 0),
                                                              dtype=torch.float64),
                             persistent=self.variance_samples is not None)

    # ----------------------------------------------------------------- sizes
    @property
    def n_pair_keys(self) -> int:
        S = len(self.species)
        return S * (S + 1) // 2 if self.two_body else 0

    @property
    def n_pair_sparse(self) -> int:
        return self.n_pair_keys * int(self.two_body["n_sparse"]) if self.two_body else 0

    @property
    def n_parameters(self) -> int:
        """Length of x = [alpha (M), beta (U), e0 (S)]."""
        return sum(self.n_sparse) + self.n_pair_sparse + len(self.species)

    def describe(self) -> str:
        h = self.config["soap"]
        two = (f" + 2-body (cutoff {self.two_body['cutoff']:g} Å)" if self.two_body else "")
        return (f"gap model for {', '.join(self.elements)}: SOAP (cutoff {h['cutoff']:g} Å, n_max {h['n_max']}, "
                f"l_max {h['l_max']}, zeta {self.zeta}), {sum(self.n_sparse)} sparse environments{two}")

    def pair_key_of(self) -> torch.Tensor:
        """(U,) element-pair index of each sparse distance."""
        return torch.arange(self.n_pair_keys).repeat_interleave(int(self.two_body["n_sparse"])) if self.two_body \
            else torch.zeros(0, dtype=torch.long)

    def set_parameters(self, x: np.ndarray) -> None:
        """Set [alpha, beta, e0] (the training solution)."""
        M, U = sum(self.n_sparse), self.n_pair_sparse
        x = np.asarray(x, dtype=np.float64)
        self.alpha.copy_(torch.from_numpy(x[:M]))
        self.beta.copy_(torch.from_numpy(x[M:M + U]))
        e0 = x[M + U:]
        self.e0.copy_(torch.from_numpy(e0))
        self.config["reference_energies"] = [float(v) for v in e0]

    def parameters_vector(self) -> np.ndarray:
        return np.concatenate([self.alpha.numpy(), self.beta.numpy(), self.e0.numpy()])

    # ----------------------------------------------------------------- energy
    def _soap_inputs(self, graph: Graph):
        s = self.species_index(graph.numbers)
        i, j = graph.edge_index
        first = i.cpu().numpy()
        nbr = s[j].to(torch.int32).cpu().numpy()
        centre = s.to(torch.int32).cpu().numpy()
        return s, first, nbr, centre

    def environments(self, graph: Graph) -> tuple[np.ndarray, np.ndarray]:
        """Every atom's element index (into :attr:`species`) and its unit-length SOAP vector,
        the descriptor the kernel compares with the sparse environments (numpy, float64)."""
        s, first, nbr, centre = self._soap_inputs(graph)
        p = self.soap.raw(graph.n_atoms, first, nbr, centre, graph.edge_vectors(torch.float64).numpy())[0]
        return s.numpy(), p / np.linalg.norm(p, axis=1, keepdims=True)

    def _pair_energy(self, graph: Graph, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """V(r) of every edge (differentiable in r), zero beyond the 2-body cutoff."""
        tb = self.two_body
        i, j = graph.edge_index
        a, b = torch.minimum(s[i], s[j]), torch.maximum(s[i], s[j])
        S = len(self.species)
        key = pair_key(a, b, S)
        rc, w = float(tb["cutoff"]), float(tb["width"])
        fc, _ = cutoff_function(r, rc, w)
        k = torch.exp(-0.5 * (r[:, None] - self.pair_sparse[None, :]) ** 2 / float(tb["theta"]) ** 2)
        k = k * (key[:, None] == self.pair_key_of()[None, :].to(key.device))
        return fc * float(tb["delta"]) ** 2 * (k @ self.beta)

    def forward(self, graph: Graph) -> torch.Tensor:
        s, first, nbr, centre = self._soap_inputs(graph)
        vec = graph.edge_vectors(torch.float64)  # float64 inside (see float64_buffers)
        energies = self.e0[s]
        if sum(self.n_sparse):
            p = SoapFunction.apply(vec, self.soap, graph.n_atoms, first, nbr, centre)
            q = p / torch.linalg.norm(p, dim=1, keepdim=True)
            klin = q @ self.sparse.T
            if self.soap.last is not None:  # kept for the variance of this call (sampled_variance)
                self.soap.last["klin"] = klin.detach()
            same = s[:, None] == self.sparse_species[None, :]
            kz = torch.where(same, klin, torch.zeros_like(klin)) ** self.zeta
            energies = energies + self.delta ** 2 * (kz @ self.alpha)
        if self.two_body and self.n_pair_sparse:
            r = torch.linalg.norm(vec, dim=1)
            energies = energies.index_add(0, graph.edge_index[0], 0.5 * self._pair_energy(graph, s, r))
        return energies.to(graph.dtype)

    # ----------------------------------------------------------------- serving path
    def __getstate__(self):
        # copies and pickles leave the compiled core behind (it cannot be copied); the copy
        # builds its own on first use
        state = dict(super().__getstate__())
        state.pop("_core_cache", None)
        return state

    def core_arrays(self) -> dict:
        """The model in the compiled serving core's flat layout (``_ext/gap_core.hpp``'s Params):
        float64 arrays and scalars, what :meth:`core_parameters` hands to the core and what the
        LAMMPS plugin's model file stores (``ase_mlff.export.plugin``)."""
        table, central = self.soap.table, self.soap.central
        tb = self.two_body
        S, D = len(self.species), self.soap.dim
        Dp = (D + 7) // 8 * 8  # rows padded with zeros to whole blocks of 8 (the core's vector lanes)
        sparse = np.zeros((self.sparse.shape[0], Dp))
        sparse[:, :D] = self.sparse.detach().cpu().numpy()
        start = np.concatenate([[0], np.cumsum(self.n_sparse)]).astype(np.int64)
        f64 = lambda t: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)  # noqa: E731
        keys, U = S * (S + 1) // 2, (int(tb["n_sparse"]) if tb else 0)
        U = U if self.n_pair_sparse else 0
        pair = (float(tb["cutoff"]), float(tb["width"]), float(tb["delta"]), float(tb["theta"])) if U else \
            (0.0, 0.0, 0.0, 1.0)
        return {"n_species": S, "n_max": self.soap.n_max, "l_max": self.soap.l_max,
                "soap_cutoff": float(self.soap.cutoff), "inv_h": float(self.soap.inv_h),
                "soap_table": np.ascontiguousarray(table, dtype=np.float64),
                "soap_central": np.ascontiguousarray(central, dtype=np.float64), "zeta": int(self.zeta),
                "delta": float(self.delta), "sparse_start": start, "sparse": sparse, "alpha": f64(self.alpha),
                "pair": pair, "pair_sparse": f64(self.pair_sparse).reshape(keys, U),
                "beta": f64(self.beta).reshape(keys, U), "e0": f64(self.e0)}

    def core_parameters(self):
        """The model as a compiled serving core (a :class:`ase_mlff._ext._core.GapCore` over
        :meth:`core_arrays`), built once and rebuilt when a parameter, the SOAP tables or a
        hyperparameter changes (training, loading)."""
        from .._ext import _core

        bufs = (self.sparse, self.alpha, self.pair_sparse, self.beta, self.e0)
        table, central = self.soap.table, self.soap.central
        tb = self.two_body
        key = (tuple((b.data_ptr(), b._version, b.device) for b in bufs), id(table), id(central), self.zeta,
               self.delta, tuple(self.n_sparse), tuple(sorted(tb.items())) if tb else None,
               self.soap.cutoff, self.soap.inv_h)
        cached = getattr(self, "_core_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        a = self.core_arrays()
        core = _core.GapCore(a["n_species"], a["n_max"], a["l_max"], a["soap_cutoff"], a["inv_h"], a["soap_table"],
                             a["soap_central"], a["zeta"], a["delta"], a["sparse_start"], a["sparse"], a["alpha"],
                             *a["pair"], a["pair_sparse"], a["beta"], a["e0"])
        # the table and central arrays stay referenced here, so their ids in the key stay theirs
        self._core_cache = (key, core, (table, central))
        return core

    @torch.no_grad()
    def analytic(self, graph: Graph, forces: bool, stress: bool, n_energy_atoms: int | None = None) -> ModelOutput:
        """Serving path (CPU): energies, forces and per-atom virials in one compiled pass over the
        atoms (``_ext/gap_core.hpp``): SOAP, the kernel against the sparse points and its
        gradient, the backward pass through SOAP to the pair vectors one atom at a time, the
        2-body term and e0; no autograd graph and no (atoms x sparse points) matrix. The same
        float64 arithmetic as :meth:`forward` (equal to ~1e-11 relative); a float32 model rounds
        the results, as its torch path does. Training, graphs that need grad and GPUs use
        :meth:`forward` with autograd.

        ``n_energy_atoms``: only atoms ``0 .. n_energy_atoms-1`` have energies (the others, a
        domain-decomposed host's ghost atoms, get 0 and are only neighbours): forces and virial
        are the derivatives of their sum."""
        s, n_energy = core_inputs(self, graph, n_energy_atoms)
        i, j = graph.edge_index
        vec = graph.edge_vectors(torch.float64).numpy()
        keep = self.soap.keep_last  # a call with uncertainty: the variance reuses this pass's SOAP
        e, f, w, p, c = self.core_parameters().compute(s.numpy(), i.numpy(), j.numpy(), vec, n_energy, forces, stress,
                                                       keep, 0)
        if keep:
            _, first, nbr, centre = self._soap_inputs(graph)
            self.soap.last = {"inputs": (first, nbr, centre, vec), "p": p, "coeffs": c}
        # atoms from n_energy_atoms on have energy 0 from the core (never evaluated)
        return core_output(graph, e, f if forces else None, w if stress else None, energies_dtype=graph.dtype)

    # ----------------------------------------------------------------- design rows and variance
    def design(self, graph: Graph, forces: bool = True, virial: bool = True, chunk: int = 4096):
        """Rows of the linear map x -> outputs for ``graph`` (float64 numpy): energies (B, T),
        forces (N, 3, T) and virials (B, 3, 3) x T as (B, 3, 3, T), with T = len(x) and
        x = [alpha, beta, e0]; the model's outputs are these rows times x. Also returns the
        per-atom SOAP quantities the variance needs (``q``, per-pair ``dq``)."""
        g = graph.to(dtype=torch.float64)
        s, first, nbr, centre = self._soap_inputs(g)
        s_np = s.cpu().numpy()
        vec = g.edge_vectors().detach().cpu().numpy()
        i_np, j_np = g.edge_index.cpu().numpy()
        batch = g.batch.cpu().numpy()
        N, B, P = g.n_atoms, g.n_graphs, len(i_np)
        M, U, S = sum(self.n_sparse), self.n_pair_sparse, len(self.species)
        T = M + U + S
        E = np.zeros((N, T))  # per-atom energy rows
        F = np.zeros((N, 3, T)) if forces else None
        W = np.zeros((B, 3, 3, T)) if virial else None
        need_grad = forces or virial
        extra = {}
        if M:
            p, _, J = self.soap.raw(N, first, nbr, centre, vec, jacobian=need_grad)
            norm = np.linalg.norm(p, axis=1)
            q = p / norm[:, None]
            Z = self.sparse.detach().cpu().numpy().astype(np.float64)
            same = s_np[:, None] == self.sparse_species.numpy()[None, :]
            klin = np.where(same, q @ Z.T, 0.0)
            d2 = self.delta ** 2
            E[:, :M] = d2 * klin ** self.zeta
            extra.update(q=q, klin=klin, same=same)
            if need_grad:
                dk = d2 * self.zeta * klin ** (self.zeta - 1) * same
                qi = q[i_np]
                J -= qi[:, None, :] * np.einsum("pcd,pd->pc", J, qi)[:, :, None]
                J /= norm[i_np][:, None, None]
                extra["dq"] = J
                for lo in range(0, P, chunk):
                    hi = min(P, lo + chunk)
                    Gc = (J[lo:hi].reshape(-1, J.shape[2]) @ Z.T).reshape(hi - lo, 3, M) * dk[i_np[lo:hi]][:, None, :]
                    scatter_pair_rows(Gc, slice(0, M), i_np[lo:hi], j_np[lo:hi], vec[lo:hi], batch, F, W)
        if U:
            r, vals, dv = self._pair_rows(vec, s_np, i_np, j_np)
            torch.from_numpy(E)[:, M:M + U].index_add_(0, torch.from_numpy(i_np), torch.from_numpy(vals))
            if need_grad:
                Gc = dv[:, None, :] * (vec / r[:, None])[:, :, None]
                scatter_pair_rows(Gc, slice(M, M + U), i_np, j_np, vec, batch, F, W)
        E[np.arange(N), M + U + s_np] = 1.0
        energy = np.zeros((B, T))
        np.add.at(energy, batch, E)
        return {"energy": energy, "atoms": E, "forces": F, "virial": W, **extra}

    def _pair_rows(self, vec: np.ndarray, s_np: np.ndarray, i_np: np.ndarray, j_np: np.ndarray):
        """The 2-body term's rows of every directed pair (float64 numpy): distances ``r`` (P,),
        each pair's half of ``V`` against the sparse distances ``vals`` (P, U), and its
        derivative in ``r`` ``dv`` (P, U) (module docstring: ``V_ab(r)``)."""
        tb = self.two_body
        r = np.linalg.norm(vec, axis=1)
        a, b = np.minimum(s_np[i_np], s_np[j_np]), np.maximum(s_np[i_np], s_np[j_np])
        key = pair_key(a, b, len(self.species))
        fc, dfc = cutoff_function(r, float(tb["cutoff"]), float(tb["width"]))
        rs = self.pair_sparse.numpy().astype(np.float64)
        th2 = float(tb["theta"]) ** 2
        same_pair = key[:, None] == self.pair_key_of().numpy()[None, :]
        k = np.exp(-0.5 * (r[:, None] - rs[None, :]) ** 2 / th2) * same_pair
        d2 = float(tb["delta"]) ** 2
        vals = 0.5 * d2 * fc[:, None] * k
        dv = 0.5 * d2 * (dfc[:, None] * k - fc[:, None] * k * (r[:, None] - rs[None, :]) / th2)
        return r, vals, dv

    def _posterior(self, rows: np.ndarray) -> np.ndarray:
        """|R^-T phi|^2 for each row phi (..., T)."""
        return posterior_variance(self.posterior_r.numpy(), rows)

    def _nystrom(self, rows: np.ndarray) -> np.ndarray:
        """|L_M^-1 k_M|^2 for the SOAP part of each row."""
        return nystrom_variance(self.prior_chol.numpy(), rows, sum(self.n_sparse))

    def _require_variance(self) -> None:
        from ..errors import InputError

        if not self.variance or self.posterior_r.numel() == 0:
            raise InputError("this gap model file was written without the variance factors (trained with "
                             "--no-variance): it gives no uncertainty")

    def predictive_variance(self, graph: Graph, stress: bool = False, include_residual: bool = False) -> dict:
        """Exact variances (numpy) of the total energies (B,), force components (N, 3) and, with
        ``stress``, virial components (B, 3, 3): the posterior variance of the fitted model,
        ``|R^-T phi|^2`` from the design rows (the reference :meth:`sampled_variance` is
        checked against; slow for forces, module docstring); with ``include_residual`` also
        the part of the SOAP prior the sparse environments do not span,
        ``L K L^T - |L_M^-1 k_M|^2`` (the DTC variance; see the module docstring for why it is
        not the default). Uncalibrated."""
        self._require_variance()
        d = self.design(graph, forces=True, virial=stress)
        keys = ("energy", "forces") + (("virial",) if stress else ())
        out = {k: self._posterior(d[k]) for k in keys}
        if include_residual and sum(self.n_sparse):
            vec = graph.to(dtype=torch.float64).edge_vectors().detach().cpu().numpy() if stress else None
            terms = soap_prior_variance(d["q"], d["dq"], self.species_index(graph.numbers).cpu().numpy(),
                                        graph.batch.cpu().numpy(), graph.edge_index.cpu().numpy(), graph.n_graphs,
                                        self.delta, self.zeta, vec)
            prior = dict(zip(("energy", "forces", "virial"), terms))
            for k in keys:
                out[k] = out[k] + prior[k] - self._nystrom(d[k])
        return out

    # ----------------------------------------------------------------- fast variance: posterior samples
    def samples(self) -> np.ndarray:
        """(T, R) deviations ``R^-1 w_k`` of the posterior samples from x; for a file written
        before they were kept, drawn now from its ``R`` (:func:`draw_posterior_samples`,
        :data:`DEFAULT_VARIANCE_SAMPLES` samples, seed :data:`LEGACY_SAMPLE_SEED`)."""
        self._require_variance()
        if self.posterior_samples.shape[1] == 0:
            drawn = draw_posterior_samples(self.posterior_r.numpy(), DEFAULT_VARIANCE_SAMPLES, LEGACY_SAMPLE_SEED)
            self.posterior_samples = torch.from_numpy(drawn).to(self.posterior_r.device)
            self._channels = None
        return self.posterior_samples.detach().cpu().numpy()

    def _channel_matrices(self, samples: np.ndarray) -> list[np.ndarray]:
        """Per element a: the (M_a, D R) matrix ``Z[m, d] * B[m, r]`` of its sparse points Z and
        the samples' SOAP coefficients B, so that one matrix product gives every sample's
        gradient with respect to every descriptor of that element."""
        Z = self.sparse.detach().cpu().numpy()
        out, start = [], 0
        for n in self.n_sparse:
            block = Z[start:start + n, :, None] * samples[start:start + n, None, :]
            out.append(np.ascontiguousarray(block.reshape(n, -1)))
            start += n
        return out

    def sampled_variance(self, graph: Graph, stress: bool = False, samples: np.ndarray | None = None,
                         chunk: int = 2048) -> dict:
        """The variances of :meth:`predictive_variance` (same keys, uncalibrated), fast: energies
        exactly (``|R^-T phi_E|^2``: one row per structure), force and virial components as the
        mean square over the posterior samples ``x + b_k`` of their deviation from the fitted
        model, ``sum_k (phi . b_k)^2`` (``b_k = R^-1 w_k``, ``w_k ~ N(0, I / R)``; its mean over
        the draws is the exact variance). Each sample's forces come from one backward pass of
        the SOAP shared by all samples (:func:`ase_mlff._ext._core.soap_backward_channels`),
        never from design rows. ``samples``: other columns b_k, e.g. ``R^-1`` itself (T
        columns), with which the sum is the exact variance (tests)."""
        import scipy.linalg
        import scipy.sparse

        self._require_variance()
        if samples is None:
            B = self.samples()
            if self._channels is None:
                self._channels = self._channel_matrices(B)
            channels = self._channels
        else:
            B = np.ascontiguousarray(samples, dtype=np.float64)
            if B.ndim != 2 or B.shape[0] != self.n_parameters or B.shape[1] < 1:
                raise ValueError(f"samples must be (n_parameters, R) = ({self.n_parameters}, R), got {B.shape}")
            channels = self._channel_matrices(B)
        g = graph.to(dtype=torch.float64)
        s, first, nbr, centre = self._soap_inputs(g)
        s_np = s.cpu().numpy()
        vec = np.ascontiguousarray(g.edge_vectors().detach().cpu().numpy())
        i_np, j_np = g.edge_index.cpu().numpy()
        batch = g.batch.cpu().numpy()
        N, n_graphs, P = g.n_atoms, g.n_graphs, len(i_np)
        M, U, S = sum(self.n_sparse), self.n_pair_sparse, len(self.species)
        n_samples = B.shape[1]
        phi_e = np.zeros((n_graphs, M + U + S))  # the energy rows, summed over each structure's atoms
        pair_grad = np.zeros((P, 3, n_samples))  # d eps_k / d d_p of every sample k
        if M:
            # the SOAP of this structure from the energy pass of the same call, when it kept it
            last, self.soap.last = self.soap.last, None
            inputs = (first, nbr, centre, vec)
            if last is not None and all(np.array_equal(x, y) for x, y in zip(last["inputs"], inputs)):
                p, coeffs, klin_all = last["p"], last["coeffs"], last.get("klin")
                klin_all = None if klin_all is None else klin_all.cpu().numpy()
            else:
                p, coeffs, _ = self.soap.raw(N, first, nbr, centre, vec)
                klin_all = None
            norm = np.linalg.norm(p, axis=1)
            q = p / norm[:, None]
            D = q.shape[1]
            Z = self.sparse.detach().cpu().numpy()
            d2, zeta = self.delta ** 2, self.zeta
            # d eps_k / d p_i = (1 - q_i q_i^T) g_ik / |p_i| with g_ik = d eps_k / d q_i: g / |p| from
            # one product for all samples, and q_i . g_ik = zeta delta^2 sum_m klin^zeta B_mk
            gp = np.zeros((N, D, n_samples))
            qg = np.zeros((N, n_samples))
            start = 0
            for a, n in enumerate(self.n_sparse):
                cols = slice(start, start + n)
                start += n
                rows = np.flatnonzero(s_np == a)
                for lo in range(0, len(rows) if n else 0, chunk):
                    r = rows[lo:lo + chunk]
                    klin = q[r] @ Z[cols].T if klin_all is None else klin_all[r, cols]
                    kz1 = int_power(klin, zeta - 1)
                    kz = kz1 * klin
                    add_rows(phi_e[:, cols], batch[r], d2 * kz)
                    scale = (d2 * zeta) / norm[r]
                    gp[r] = ((kz1 * scale[:, None]) @ channels[a]).reshape(len(r), D, n_samples)
                    qg[r] = (kz * scale[:, None]) @ B[cols]
            gp -= q[:, :, None] * qg[:, None, :]
            pair_grad += self.soap.backward_channels(gp, coeffs, first, nbr, centre, vec)
            del gp
        if U:
            r, vals, dv = self._pair_rows(vec, s_np, i_np, j_np)
            add_rows(phi_e[:, M:M + U], batch[i_np], vals)
            pair_grad += (dv @ B[M:M + U])[:, None, :] * (vec / r[:, None])[:, :, None]
        np.add.at(phi_e, (batch, M + U + s_np), 1.0)
        z = scipy.linalg.solve_triangular(self.posterior_r.numpy(), phi_e.T, trans="T", lower=False)
        out = {"energy": (z * z).sum(0)}
        # forces -dE/dr: a pair vector d_p = r_j - r_i moves with r_j and against r_i
        incidence = scipy.sparse.csr_matrix(
            (np.concatenate([np.ones(P), -np.ones(P)]), (np.concatenate([i_np, j_np]), np.tile(np.arange(P), 2))),
            shape=(N, P))
        forces = incidence @ pair_grad.reshape(P, 3 * n_samples)
        out["forces"] = (forces.reshape(N, 3, n_samples) ** 2).sum(-1)
        if stress:
            virial = np.zeros((n_graphs, 3, 3, n_samples))
            for b_ in range(n_graphs):
                sel = batch[i_np] == b_
                virial[b_] = np.einsum("pa,pcr->acr", vec[sel], pair_grad[sel], optimize=True)
            out["virial"] = (virial ** 2).sum(-1)
        return out

    @contextlib.contextmanager
    def extras_call(self):
        """The energy pass of a call with uncertainty keeps its SOAP (and kernel values) for
        :meth:`sampled_variance`, which then needs no second SOAP; dropped when the call ends,
        so plain calls keep nothing."""
        self.soap.keep_last = self.variance_method == "samples"
        try:
            yield
        finally:
            self.soap.keep_last, self.soap.last = False, None

    def compute_extras(self, graph: Graph, output, stress: bool) -> dict[str, torch.Tensor]:
        """Calibrated uncertainties: ``c * sqrt(variance)`` with the factors ``c`` of
        :attr:`calibration` (1 for a file written before calibration, with a warning) and the
        variances of :meth:`sampled_variance`, or of :meth:`predictive_variance` when
        :attr:`variance_method` is ``"exact"``."""
        from ..errors import InputError

        if self.variance_method == "samples":
            var = self.sampled_variance(graph, stress)
        elif self.variance_method == "exact":
            var = self.predictive_variance(graph, stress)
        else:
            raise InputError(f"GAPModel.variance_method must be 'samples' or 'exact', got {self.variance_method!r}")
        cal = self.calibration
        if cal is None:
            self._warn_uncalibrated()
            cal = {k: 1.0 for k in CALIBRATION_KEYS}
        out = {"energy_uncertainty": cal["energy"] * clipped_sqrt(var["energy"]),
               "forces_uncertainty": cal["forces"] * clipped_sqrt(np.clip(var["forces"], 0, None).sum(1))}
        if stress:
            out["stress_uncertainty"] = cal["stress"] * clipped_sqrt(var["virial"])
        return {k: torch.from_numpy(np.asarray(v)).to(device=graph.device, dtype=graph.dtype) for k, v in out.items()}

    def _warn_uncalibrated(self) -> None:
        if self._warned_uncalibrated:
            return
        self._warned_uncalibrated = True
        warn("this gap model file was written before ase-mlff calibrated the GP variance: its "
             "uncertainties are the raw posterior standard deviations, which were 7-14 times smaller "
             "than the errors on held-out frames (docs/gap.md); fit it again with `ase-mlff train gap` "
             "to store calibration factors")

    # ----------------------------------------------------------------- serialisation
    def get_config(self) -> dict[str, Any]:
        return {"species": self.species, "cutoff": self.cutoff, **self.config}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GAPModel":
        # the radial tables come with the arrays (set_arrays), not from a new quadrature
        return cls(**config, _defer_tables=True)

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        species = config_species(config)
        S = len(species)
        soap = config.get("soap")
        if not isinstance(soap, dict):
            raise ValueError("hyperparameters.soap must be a table of SOAP settings")
        rc = config_cutoff(soap, "cutoff", 30.0, prefix="soap.")
        n_max = config_int(soap, "n_max", 1, 20, prefix="soap.")
        l_max = config_int(soap, "l_max", 0, 20, prefix="soap.")
        for key in ("atom_sigma", "basis_radius"):
            config_float(soap, key, MIN_WIDTH, 100.0, prefix="soap.")
        config_float(soap, "cutoff_width", 0.0, rc, prefix="soap.")
        config_float(soap, "central_weight", 0.0, 100.0, prefix="soap.")
        config_int(config, "zeta", 1, 20)
        config_float(config, "delta", MIN_SCALE, 1e6)
        n_sparse = config.get("n_sparse")
        if not isinstance(n_sparse, list) or len(n_sparse) != S or not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 10 ** 6 for n in n_sparse):
            raise ValueError("hyperparameters.n_sparse must be one count per element")
        config_reference_energies(config, S)
        tb = config.get("two_body")
        U, reach = 0, rc
        if tb is not None:
            if not isinstance(tb, dict):
                raise ValueError("hyperparameters.two_body must be a table or null")
            r2 = config_cutoff(tb, "cutoff", 30.0, prefix="two_body.")
            config_float(tb, "width", 0.0, r2, prefix="two_body.")
            config_float(tb, "delta", MIN_SCALE, 1e6, prefix="two_body.")
            # the kernel divides by theta^2: a tiny theta gives 0/0 forces
            config_float(tb, "theta", MIN_WIDTH, 100.0, prefix="two_body.")
            U = S * (S + 1) // 2 * config_int(tb, "n_sparse", 1, 10 ** 5, prefix="two_body.")
            reach = max(rc, r2)
        # The neighbour list is built for hyperparameters.cutoff; SOAP and the 2-body term each
        # need every pair within their own cutoff, so a smaller one silently drops neighbours
        # (the model's constructor always writes the largest of the two).
        cutoff = config_float(config, "cutoff", default=reach)
        if cutoff != reach:
            raise ValueError(f"hyperparameters.cutoff {cutoff:g} must equal the largest of soap.cutoff and "
                             f"two_body.cutoff ({reach:g}), the reach of the model")
        dtype = config.get("dtype", "float64")
        if dtype not in ("float32", "float64"):
            raise ValueError("hyperparameters.dtype must be 'float32' or 'float64'")
        if not isinstance(config.get("variance", True), bool):
            raise ValueError("hyperparameters.variance must be true or false")
        M, D = sum(n_sparse), soap_dim(S, n_max, l_max)
        T = M + U + S
        var = config.get("variance", True)
        # both absent in a file written before they existed (uncalibrated; samples drawn on use)
        n_samples, cal = config.get("variance_samples"), config.get("calibration")
        if not var and (n_samples is not None or cal is not None):
            raise ValueError("hyperparameters.variance_samples and .calibration belong to a model with variance "
                             "true (this one keeps no variance factors)")
        if n_samples is not None:
            config_int(config, "variance_samples", 1, MAX_VARIANCE_SAMPLES)
        if cal is not None:
            if not isinstance(cal, dict) or set(cal) != set(CALIBRATION_KEYS):
                raise ValueError(f"hyperparameters.calibration must be an object with the keys "
                                 f"{', '.join(CALIBRATION_KEYS)}")
            for k in CALIBRATION_KEYS:
                config_float(cal, k, MIN_SCALE, MAX_CALIBRATION, prefix="calibration.")
        G = int(math.ceil(rc / GRID_SPACING))
        specs = {"soap_table": ((G, 4, n_max * (l_max + 1)), "float64"), "soap_central": ((n_max,), "float64"),
                 "sparse": ((M, D), "float64"), "sparse_species": ((M,), "int64"), "alpha": ((M,), "float64"),
                 "pair_sparse": ((U,), "float64"), "beta": ((U,), "float64"),
                 "posterior_r": ((T, T) if var else (0, 0), "float64"),
                 "prior_chol": ((M, M) if var else (0, 0), "float64")}
        if n_samples is not None:
            specs["posterior_samples"] = ((T, n_samples), "float64")
        return specs

    @classmethod
    def check_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        n_sparse = config["n_sparse"]
        want = np.repeat(np.arange(len(n_sparse)), n_sparse)
        if not np.array_equal(arrays["sparse_species"], want):
            raise ValueError("array sparse_species does not match hyperparameters.n_sparse")
        # the variance solves triangular systems with these factors (upper R, lower L_M): a zero
        # on the diagonal makes them singular
        for name, what in (("posterior_r", "posterior factor R"), ("prior_chol", "prior factor L_M")):
            diag = np.diagonal(arrays[name])
            if np.any(diag == 0):
                k = int(np.argmin(np.abs(diag)))
                raise ValueError(f"array {name} (the {what} of the predictive variance) is singular: its "
                                 f"diagonal element {k} is zero")

    def set_posterior(self, R: np.ndarray, prior_chol: np.ndarray, samples: np.ndarray | None = None) -> None:
        """Keep the fit's factors: ``R`` (T, T), ``L_M`` (M, M) and the posterior samples'
        deviations (T, variance_samples) (training)."""
        self.posterior_r.copy_(torch.as_tensor(R, dtype=torch.float64))
        self.prior_chol.copy_(torch.as_tensor(prior_chol, dtype=torch.float64))
        if samples is not None:
            self.posterior_samples.copy_(torch.as_tensor(samples, dtype=torch.float64))
        self._channels = None

    def set_calibration(self, factors: dict[str, float] | None) -> None:
        """Set (None: remove) the calibration factors ``{"energy", "forces", "stress"}``."""
        if factors is None:
            self.calibration = None
            self.config.pop("calibration", None)
            return
        if not self.variance:
            raise ValueError("a gap model without variance factors has no uncertainty to calibrate")
        cal = {k: float(factors[k]) for k in CALIBRATION_KEYS}
        if not all(math.isfinite(v) and MIN_SCALE <= v <= MAX_CALIBRATION for v in cal.values()):
            raise ValueError(f"calibration factors must be from {MIN_SCALE:g} to {MAX_CALIBRATION:g}, got {cal}")
        self.calibration = cal
        self.config["calibration"] = dict(cal)

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super().set_arrays(arrays)
        self._channels = None
        # the descriptor uses the stored radial table (bit-for-bit the one it was trained with)
        self.soap.table = np.ascontiguousarray(arrays["soap_table"], dtype=np.float64)
        self.soap.central = np.ascontiguousarray(arrays["soap_central"], dtype=np.float64)
        self.soap._tables = {}

    def adopt_soap(self, soap: SOAP) -> None:
        """Use ``soap`` (same hyperparameters, tables computed) instead of computing the tables
        again: training builds the model after it has described the data with its own SOAP."""
        if soap.hypers() != {"species": self.species, **self.config["soap"]}:
            raise ValueError("adopt_soap: the SOAP hyperparameters differ from the model's")
        self.soap = soap
        self.soap_table.copy_(torch.from_numpy(soap.table))
        self.soap_central.copy_(torch.from_numpy(soap.central))
