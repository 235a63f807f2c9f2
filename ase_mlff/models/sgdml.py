"""sGDML: symmetric gradient-domain machine learning (Chmiela et al.), as an ase-mlff model.

The energy is a Gaussian process with a Matérn-5/2 kernel on the inverse-distance descriptor
``D(x)``, symmetrised over a permutation group ``{P_q}``; the model is trained on forces only.
With ``delta = D(x) - Pi_q D_i``, ``d = |delta|`` and ``a = sqrt(5)/sigma``::

    g(d) = 5/(3 sigma^2) (1 + a d) exp(-a d)         (gradient of the Matérn kernel / delta)
    h(d) = 25/(3 sigma^4) exp(-a d)
    H(delta) = g(d) I - h(d) delta delta^T           (cross second derivative, positive definite)

    E(x) = c - sum_{i,q} g(d_iq) delta_iq . (Pi_q v_i)
    F(x) = J(x)^T w,  w = sum_{i,q} H(delta_iq) Pi_q v_i   (= -dE/dx exactly)

``v_i = J(x_i) alpha_i`` are the descriptor-space coefficients of training geometry ``i`` and
``c`` the integration constant. Everything is in eV and Å.

Fast path: with ``Y`` the stacked permuted training descriptors and ``V`` the permuted
coefficients, ``delta . v = x.v - y.v`` and ``d^2 = |x|^2 - 2 x.y + |y|^2``, so one prediction
is two matrix-vector products with the (2 S M, P) matrix ``[Y; V]`` plus element-wise work on
``S M`` numbers: no per-training-point loops and no autograd. Forces are the scatter of ``w``
over atom pairs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from ase.symbols import Symbols

from ..descriptors.inverse_distance import (
    descriptor_permutation,
    incidence_matrix,
    inverse_distances_torch,
    pair_indices,
)
from ..errors import InputError
from ..graph import Graph
from ..descriptors.matching import (OrderTracker, distance_matrix, element_pairs, ExchangeCosts,
                                   labelling_residuals, polish, same_element_swaps)
from .base import (MAX_REFERENCE_ENERGY, MIN_SCALE, Model, ModelOutput, config_float, config_int, config_species,
                   register_model, symbols)

#: largest RMS difference (Å) between the distance matrix of a reordered input and the
#: closest training geometry for which the atom order is identified automatically (inputs whose
#: given order is itself the best fit are accepted beyond it, see ``find_order``)
REORDER_MAX_RESIDUAL = 0.25
#: a same-element swap that is not a model symmetry must raise the residual by at least this
#: much (Å) and by this factor for the identified order to count as unambiguous
REORDER_MIN_GAP = 0.02
REORDER_MIN_RATIO = 1.5
#: largest atom displacement (Å, after removing the mean displacement) between two calls for
#: which the previous call's order is reused without a full identification; also capped at a
#: third of the smallest same-element distance (see ``descriptors.matching.OrderTracker``)
REORDER_TRACK_MAX_STEP = 0.25
#: bonds of a remembered geometry, as a fraction of the sum of covalent radii: a pair closer
#: than REORDER_BOND is bonded when an order is identified; a later geometry keeps that bond
#: graph while bonded pairs stay below REORDER_BOND_KEPT and other pairs above
#: REORDER_BOND_FREE (the gap between the limits keeps a pair near REORDER_BOND from flapping)
REORDER_BOND = 1.25
REORDER_BOND_KEPT = 1.6
REORDER_BOND_FREE = 1.1
#: the remembered order is re-checked cheaply only for geometries within this RMS residual (Å)
#: of the training geometries it keeps (below REORDER_MAX_RESIDUAL: the rMD17 ethanol test
#: frames reach 0.19 Å, geometries with 0.35 Å of noise per coordinate start at 0.22 Å); the
#: references kept are the identified geometry's nearest and REORDER_CHECK_COVER training
#: geometries spread over the training set (farthest-point sampling of the fingerprints)
REORDER_CHECK_MAX_RESIDUAL = 0.2
REORDER_CHECK_COVER = 16


def _spread(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` rows of ``points`` spread over them (farthest-point sampling from row 0)."""
    chosen = [0]
    d2 = ((points - points[0]) ** 2).sum(1)
    for _ in range(min(n, len(points)) - 1):
        k = int(np.argmax(d2))
        chosen.append(k)
        d2 = np.minimum(d2, ((points - points[k]) ** 2).sum(1))
    return np.unique(chosen)


def _formula(numbers) -> str:
    return Symbols(np.asarray(numbers, dtype=int)).get_chemical_formula(mode="hill")


@register_model
class SGDMLModel(Model):
    family = "sgdml"
    periodic = False  # an isolated molecule
    per_atom_energies = False  # one energy per structure: no per-atom energies, no stress
    # the analytic path is numpy on the CPU and closed-form torch elsewhere
    analytic_devices = ("cpu", "cuda", "mps", "xpu")
    # The coefficients reach ~1e7 and cancel: rounded to float32 they moved ethanol's energy by
    # 0.23 eV and its forces by 4 %. They stay float64 under model.to(float32); the kernel
    # sums run in float64 and only the results take the caller's dtype.
    float64_buffers = ("desc_train", "v_train", "Y", "V", "yy", "yv")

    def __init__(self, species=None, cutoff=None, n_atoms: int = 1, n_train: int = 1, n_perms: int = 1,
                 sigma: float = 10.0, lam: float = 1e-10, c: float = 0.0, **config: Any):
        if species is None:
            species = [1]
        config = dict(config)
        super().__init__(species, None, config)
        self.n_atoms = int(n_atoms)
        self.n_train = int(n_train)
        self.n_perms = int(n_perms)
        self.sigma = float(sigma)
        self.lam = float(lam)
        self.c = float(c)
        n, m, s = self.n_atoms, self.n_train, self.n_perms
        p = n * (n - 1) // 2
        self.n_desc = p
        self.register_buffer("z", torch.zeros(n, dtype=torch.long))
        self.register_buffer("perms", torch.arange(n, dtype=torch.long).repeat(s, 1))
        self.register_buffer("desc_train", torch.zeros(m, p, dtype=torch.float64))
        self.register_buffer("v_train", torch.zeros(m, p, dtype=torch.float64))
        # derived (not stored in files): permuted copies, (S*M, P), copy q of point i at q*M + i.
        # They start empty because _derive replaces them: S*M*P zeros here would double the
        # peak memory of a load and allocate before the arrays are known to fit the sizes.
        self.register_buffer("Y", torch.zeros(0, p, dtype=torch.float64), persistent=False)
        self.register_buffer("V", torch.zeros(0, p, dtype=torch.float64), persistent=False)
        self.register_buffer("yy", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.register_buffer("yv", torch.zeros(0, dtype=torch.float64), persistent=False)
        a, b = pair_indices(n)
        self._pa, self._pb = a, b
        self._inc = incidence_matrix(n)
        self._np = None
        self._ref_dist = None
        self._ref_fp = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_training(cls, z, perms, desc_train, v_train, sigma, lam, c, **config) -> "SGDMLModel":
        z = np.asarray(z, dtype=np.int64)
        perms = np.asarray(perms, dtype=np.int64)
        model = cls(species=sorted(set(z.tolist())), n_atoms=len(z), n_train=len(desc_train),
                    n_perms=len(perms), sigma=sigma, lam=lam, c=c, **config)
        model.set_arrays({"z": z, "perms": perms, "desc_train": np.asarray(desc_train, np.float64),
                          "v_train": np.asarray(v_train, np.float64)})
        return model

    #: bounds on hyperparameters read from files (far beyond any molecule sGDML can train on)
    MAX_ATOMS = 10_000
    MAX_TRAIN = 10_000_000
    MAX_PERMS = 1_000_000

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shapes of z (N,), perms (S, N), desc_train and v_train (M, P), without allocating."""
        species = config_species(config)
        if config.get("cutoff") is not None:
            raise ValueError(f"hyperparameters.cutoff must be null for sGDML (a global model), "
                             f"got {config['cutoff']!r:.40}")
        n = config_int(config, "n_atoms", 2, cls.MAX_ATOMS)
        m = config_int(config, "n_train", 1, cls.MAX_TRAIN)
        s = config_int(config, "n_perms", 1, cls.MAX_PERMS)
        if len(species) > n:
            raise ValueError(f"hyperparameters.species lists {len(species)} elements for {n} atoms")
        # the kernel divides by sigma^2: a denormal sigma gives 0/0 (NaN)
        config_float(config, "sigma", MIN_SCALE, default=10.0)
        config_float(config, "lam", 0.0, default=1e-10)
        # c is the energy of the whole molecule (eV): bounded like a per-atom reference energy
        bound = MAX_REFERENCE_ENERGY * n
        config_float(config, "c", -bound, bound, default=0.0)
        p = n * (n - 1) // 2
        return {"z": ((n,), "int64"), "perms": ((s, n), "int64"),
                "desc_train": ((m, p), "float64"), "v_train": ((m, p), "float64")}

    @classmethod
    def check_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """z holds exactly the species; perms are distinct element-preserving permutations (each
        is a symmetry the kernel sums over, so a duplicate would count a term twice); the
        descriptors are inverse distances, hence positive."""
        z, perms = arrays["z"], arrays["perms"]
        if sorted(set(z.tolist())) != sorted(config["species"]):
            raise ValueError(f"array 'z' holds elements {sorted(set(z.tolist()))}, "
                             f"hyperparameters.species says {sorted(config['species'])}")
        n = len(z)
        if not np.array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(n), perms.shape)):
            raise ValueError("array 'perms' holds a row that is not a permutation of the atoms")
        if not np.array_equal(z[perms], np.broadcast_to(z, perms.shape)):
            raise ValueError("array 'perms' holds a permutation that exchanges different elements")
        if len(np.unique(perms, axis=0)) != len(perms):
            raise ValueError("array 'perms' holds the same permutation twice")
        if not (arrays["desc_train"] > 0).all():
            raise ValueError("array 'desc_train' holds non-positive inverse distances")

    def get_config(self) -> dict[str, Any]:
        return {"species": self.species, "cutoff": None, "n_atoms": self.n_atoms, "n_train": self.n_train,
                "n_perms": self.n_perms, "sigma": self.sigma, "lam": self.lam, "c": self.c, **self.config}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        super().set_arrays(arrays)
        self._derive()

    def _derive(self) -> None:
        """Permuted copies of the training descriptors and coefficients."""
        z = self.z.cpu().numpy()
        perms = self.perms.cpu().numpy()
        if perms.shape != (self.n_perms, self.n_atoms) or len(z) != self.n_atoms:
            raise InputError("sGDML model arrays have inconsistent shapes")
        for p in perms:
            if sorted(p.tolist()) != list(range(self.n_atoms)) or np.any(z[p] != z):
                raise InputError("sGDML model holds a permutation that is not an element-preserving permutation")
        dperm = np.stack([descriptor_permutation(p) for p in perms])  # (S, P)
        idx = torch.as_tensor(dperm, device=self.desc_train.device)
        with torch.no_grad():
            Y = self.desc_train[:, idx].permute(1, 0, 2).reshape(-1, self.n_desc)
            V = self.v_train[:, idx].permute(1, 0, 2).reshape(-1, self.n_desc)
            self.Y = Y.contiguous()
            self.V = V.contiguous()
            self.yy = (Y * Y).sum(1)
            self.yv = (Y * V).sum(1)
        self.dperm = dperm
        self._np = None
        self._ref_dist = None
        self._ref_fp = None

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._np = None
        return out

    def _numpy_cache(self):
        """Arrays for the single-geometry fast path (float64 numpy).

        Instead of the S*M permuted training copies it permutes the query: since
        ``|x - Pi_q D_i| = |Pi_q^T x - D_i|`` and ``H(Pi delta) Pi v = Pi H(delta) v``, the sums over
        (i, q) become one (S, P) x (P, 2M) product with the unpermuted ``[D; V]`` (small enough
        to stay in cache), and ``w = sum_q Pi_q w'_q``.
        """
        if self._np is None:
            D = self.desc_train.detach().cpu().numpy().astype(np.float64)
            V = self.v_train.detach().cpu().numpy().astype(np.float64)
            dperm = self.dperm
            inv = np.argsort(dperm, axis=1)
            S, P = dperm.shape
            self._np = {
                "DV": np.ascontiguousarray(np.concatenate([D, V], 0)),
                "DVt": np.ascontiguousarray(np.concatenate([D, V], 0).T),
                "dd": (D * D).sum(1),
                "dv": (D * V).sum(1),
                "m": D.shape[0],
                "inv": inv,
                "gather": (np.arange(S)[:, None] * P + dperm).ravel(),
                "S": S,
                "P": P,
            }
        return self._np

    # ------------------------------------------------------------------ constants
    def _consts(self):
        s = self.sigma
        a = math.sqrt(5.0) / s
        return a, 5.0 / (3.0 * s * s), 25.0 / (3.0 * s ** 4)

    @property
    def model_symbols(self) -> list[str]:
        return symbols(self.z.cpu().numpy())

    # ------------------------------------------------------------------ prediction (numpy)
    def predict_numpy(self, R: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Energies (B,) and forces (B, N, 3) for positions (B, N, 3) or (N, 3), model order."""
        R = np.asarray(R, dtype=np.float64)
        single = R.ndim == 2
        if single:
            e, f = self._predict_one(R)
            return np.array([e]), f
        B = R.shape[0]
        E = np.empty(B)
        F = np.empty_like(R)
        for s in range(0, B, chunk):
            E[s:s + chunk], F[s:s + chunk] = self._predict_many(R[s:s + chunk])
        return E, F

    def _predict_one(self, r: np.ndarray):
        cache = self._np or self._numpy_cache()
        a, c1, c2 = self._consts()
        m = cache["m"]
        DV = cache["DV"]
        diff = r[self._pa] - r[self._pb]
        x = 1.0 / np.sqrt(np.einsum("ij,ij->i", diff, diff))
        X = x[cache["inv"]]  # (S, P): Pi_q^T x
        proj = X @ cache["DVt"]  # (S, 2M)
        d2 = proj[:, :m] * -2.0
        d2 += x @ x
        d2 += cache["dd"]
        np.maximum(d2, 0.0, out=d2)
        ad = np.sqrt(d2, out=d2)
        ad *= a
        ex = np.exp(-ad)
        dv = proj[:, m:] - cache["dv"]  # delta'.v
        hdv = ex * dv  # h(d) delta'.v / c2
        g = ad
        g += 1.0
        g *= ex  # g(d) / c1
        energy = self.c - c1 * float(np.einsum("ij,ij->", g, dv))
        hdv *= c2
        g *= c1
        Wq = np.concatenate([hdv, g], 1) @ DV  # (S, P)
        Wq -= hdv.sum(1)[:, None] * X
        w = Wq.ravel()[cache["gather"]].reshape(cache["S"], -1).sum(0)
        s = w * x * (x * x)
        forces = -(self._inc @ (s[:, None] * diff))
        return energy, forces

    def _predict_many(self, R: np.ndarray):
        cache = self._numpy_cache()
        a, c1, c2 = self._consts()
        m, S, P = cache["m"], cache["S"], cache["P"]
        DV = cache["DV"]
        B = R.shape[0]
        diff = R[:, self._pa] - R[:, self._pb]
        x = 1.0 / np.sqrt(np.einsum("bij,bij->bi", diff, diff))  # (B, P)
        X = x[:, cache["inv"]].reshape(B * S, P)
        proj = X @ cache["DVt"]  # (B*S, 2M)
        d2 = np.repeat((x * x).sum(1), S)[:, None] - 2.0 * proj[:, :m] + cache["dd"][None]
        ad = a * np.sqrt(np.maximum(d2, 0.0))
        ex = np.exp(-ad)
        dv = proj[:, m:] - cache["dv"][None]
        g = (1.0 + ad) * ex
        hdv = ex * dv
        E = self.c - c1 * (g * dv).sum(1).reshape(B, S).sum(1)
        Wq = np.concatenate([c2 * hdv, c1 * g], 1) @ DV - (c2 * hdv.sum(1))[:, None] * X  # (B*S, P)
        w = Wq.reshape(B, S * P)[:, cache["gather"]].reshape(B, S, P).sum(1)
        s = w * x ** 3
        F = -np.einsum("np,bpk->bnk", self._inc, s[:, :, None] * diff)
        return E, F

    # ------------------------------------------------------------------ prediction (torch)
    def _torch_terms(self, R: torch.Tensor):
        """Shared terms, in float64 (``R`` is upcast; see ``float64_buffers``)."""
        R = R.to(torch.float64)
        a, c1, c2 = self._consts()
        X = inverse_distances_torch(R)  # (B, P)
        Y, V = self.Y.to(R.dtype), self.V.to(R.dtype)
        YX = X @ Y.T
        VX = X @ V.T
        d2 = (X * X).sum(-1, keepdim=True) - 2.0 * YX + self.yy.to(R.dtype)
        d = torch.sqrt(torch.clamp(d2, min=1e-30))
        ex = torch.exp(-a * d)
        dv = VX - self.yv.to(R.dtype)
        g = c1 * (1.0 + a * d) * ex
        return X, d, ex, dv, g

    def energy_torch(self, R: torch.Tensor) -> torch.Tensor:
        """Differentiable energies (B,) of positions (B, N, 3) (used for Hessians)."""
        X, d, ex, dv, g = self._torch_terms(R)
        return self.c - (g * dv).sum(-1)  # float64

    def energy_forces_torch(self, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Analytic energies (B,) and forces (B, N, 3) in torch (any device, differentiable)."""
        a, c1, c2 = self._consts()
        dtype = R.dtype
        X, d, ex, dv, g = self._torch_terms(R)
        R = R.to(torch.float64)
        Y, V = self.Y, self.V
        E = self.c - (g * dv).sum(-1)
        hdv = c2 * ex * dv
        w = g @ V + hdv @ Y - hdv.sum(-1, keepdim=True) * X
        pa = torch.as_tensor(self._pa, device=R.device)
        pb = torch.as_tensor(self._pb, device=R.device)
        diff = R[:, pa] - R[:, pb]
        fp = (w * X ** 3).unsqueeze(-1) * diff
        F = torch.zeros_like(R)
        F = F.index_add(1, pa, -fp).index_add(1, pb, fp)
        return E, F.to(dtype)

    # ------------------------------------------------------------------ Model API
    def _positions(self, graph: Graph) -> torch.Tensor:
        pos = graph.positions
        if pos.shape[0] != graph.n_graphs * self.n_atoms:
            raise InputError(
                f"this sGDML model is for {self.n_atoms} atoms per structure; got {pos.shape[0]} atoms "
                f"in {graph.n_graphs} structure(s)"
            )
        return pos.reshape(graph.n_graphs, self.n_atoms, 3)

    def forward(self, graph: Graph) -> torch.Tensor:
        """Per-structure energies (sGDML has no per-atom energies)."""
        return self.energy_torch(self._positions(graph))

    def analytic(self, graph: Graph, forces: bool, stress: bool) -> ModelOutput:
        """Closed-form energies and forces (module docstring): numpy on the CPU (one geometry:
        two small matrix-vector products), torch on other devices."""
        pos = graph.positions
        if pos.device.type == "cpu":
            R = self._positions(graph).detach().numpy()
            if graph.n_graphs == 1:
                e, f = self._predict_one(R[0] if R.dtype == np.float64 else R[0].astype(np.float64))
                E, F = torch.from_numpy(np.array([e])), torch.from_numpy(f)
            else:
                E, F = self.predict_numpy(R)
                E, F = torch.from_numpy(E), torch.from_numpy(F.reshape(-1, 3))
        else:
            with torch.no_grad():
                E, F = self.energy_forces_torch(self._positions(graph))
            F = F.reshape(-1, 3)
        return ModelOutput(energy=E.to(torch.float64), forces=F.to(graph.dtype) if forces else None)

    def hessian(self, graph: Graph) -> torch.Tensor:
        """d2E/dx2 (3N, 3N) in eV/Å² by double backward through :meth:`energy_torch`."""
        pos = graph.positions.detach().clone().reshape(1, self.n_atoms, 3).requires_grad_(True)
        with torch.enable_grad():
            energy = self.energy_torch(pos).sum()
            (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
            grad = grad.reshape(-1)
            eye = torch.eye(grad.numel(), dtype=grad.dtype, device=grad.device)
            (hess,) = torch.autograd.grad(grad, pos, grad_outputs=eye, is_grads_batched=True)
        hess = hess.reshape(grad.numel(), -1)
        return 0.5 * (hess + hess.T)

    # ------------------------------------------------------------------ atom order
    def describe(self) -> str:
        z = self.z.cpu().numpy()
        return f"{_formula(z)} ({self.n_atoms} atoms in order {' '.join(symbols(z))})"

    def prepare_atoms(self, numbers: np.ndarray, positions: np.ndarray):
        """Identify which input atom is which model atom, for every input.

        Returns ``None`` when the atoms can be used as given (the given order is the best
        assignment up to the model's symmetries), ``(perm, inverse)`` when the input is a
        relabelling that :meth:`find_order` identifies unambiguously (``positions[perm]`` is in
        the model's order, ``forces[inverse]`` back in the caller's), and raises
        :class:`InputError` for other elements, another atom count, or an order that cannot be
        identified. Numbers in the model's order do not prove the order: two atoms of one element
        may still be swapped, and sGDML would silently give wrong energies and forces for them.

        The full identification runs once per labelling; later calls with the same numbers reuse
        its answer after one of two cheap checks (``order_tracker`` counts each outcome):

        1. a small step from the last answered geometry (``hits``): no atom moved by more than
           ``REORDER_TRACK_MAX_STEP`` (see :class:`~ase_mlff.descriptors.matching.OrderTracker`);
        2. any other geometry (``verified``): :meth:`_check_remembered` finds the remembered
           order still right (same bond graph, and no exchange of two same-element atoms fitting
           the training geometries clearly better).

        Otherwise (``identified``) :meth:`find_order` runs again.
        """
        state = self._order_state()
        numbers = np.asarray(numbers)
        pos = np.asarray(positions, dtype=np.float64)
        tracker = state["tracker"]
        hit, result = tracker.lookup(numbers, pos)
        if hit:
            return result
        z = state["z"]
        if len(numbers) != len(z) or not np.array_equal(np.sort(numbers), np.sort(z)):
            got = (f"{_formula(numbers)} ({len(numbers)} atoms in order {' '.join(symbols(numbers))})"
                   if len(numbers) else "no atoms")
            raise InputError(f"this sGDML model is for {self.describe()}; got {got}")
        remembered = tracker.remembered
        if remembered is not None and self._check_remembered(remembered, numbers, pos):
            tracker.verified += 1
            tracker.store(numbers, pos, remembered["answer"])
            return remembered["answer"]
        # a geometry that is refused below must not stay the reference of the cheap paths
        tracker.clear()
        tracker.identified += 1
        perm, near = self._identify(numbers, pos, with_refs=True)
        if perm is None:
            result = None
        else:
            inverse = np.argsort(perm)
            perm.setflags(write=False)  # the same arrays are handed out again from the cache
            inverse.setflags(write=False)
            result = (perm, inverse)
        tracker.store(numbers, pos, result)
        tracker.remembered = self._remember_order(numbers, pos, perm, near, result)
        return result

    def _remember_order(self, numbers, positions, perm, near, answer) -> dict:
        """What :meth:`_check_remembered` needs to re-check ``answer`` on other geometries: the
        bond graph of the identified geometry (caller's labelling), the training geometries the
        identification compared with (``near``) and those spread over the training set
        (``REORDER_CHECK_COVER``), each relabelled by every model symmetry, and
        the exchanges of two same-element model atoms that are not symmetries."""
        from ase.data import covalent_radii

        state = self._order_state()
        z, group = state["z"], state["group"]
        n = len(z)
        model_perm = np.arange(n) if perm is None else np.asarray(perm)
        radii = covalent_radii[numbers]
        scale = radii[:, None] + radii[None, :]
        ratio = distance_matrix(positions) / scale
        iu = np.triu_indices(n, 1)
        bonded = ratio[iu] < REORDER_BOND
        # comparing B = A[perm][:, perm] with R[q][:, q] minimised over the group is comparing
        # B[q^-1][:, q^-1] with R: the group holds both, so the references are relabelled instead
        refs = state["ref_dist"][np.union1d(near, state["cover"])]
        refs = refs[:, group[:, :, None], group[:, None, :]].reshape(-1, n, n)
        _, pairs = same_element_swaps(model_perm, z, group)
        return {"numbers": np.array(numbers, copy=True), "answer": answer, "perm": perm,
                "inv_scale": 1.0 / scale,
                "bond": (iu[0][bonded], iu[1][bonded]), "free": (iu[0][~bonded], iu[1][~bonded]),
                "ref_sq": np.einsum("kij,kij->k", refs, refs),
                "refs_flat": np.ascontiguousarray(refs.reshape(len(refs), n * n)),
                "exchanges": ExchangeCosts(refs, pairs[:, 0], pairs[:, 1]) if len(pairs) else None}

    @staticmethod
    def _check_remembered(r: dict, numbers, positions) -> bool:
        """Whether the remembered answer ``r`` (:meth:`_remember_order`) holds for a geometry
        with the same numbers: the bond graph is the identified one (bonded pairs below
        ``REORDER_BOND_KEPT``, others above ``REORDER_BOND_FREE`` times their covalent radii),
        and no exchange of two same-element model atoms that is not a symmetry fits the
        remembered training geometries clearly better (by the margins ``REORDER_MIN_GAP`` and
        ``REORDER_MIN_RATIO`` of :meth:`find_order`), for a geometry within
        ``REORDER_CHECK_MAX_RESIDUAL`` of them (farther away only the full identification
        decides). A relabelling of two atoms bonded to different neighbours changes the bond
        graph; one of two atoms with the same neighbours (the hydrogens of one CH2) is found by
        the exchange test when the identification could tell them apart. Cost: one distance
        matrix and one matrix product for all exchanges
        (:class:`~ase_mlff.descriptors.matching.ExchangeCosts`)."""
        if r["numbers"].shape != numbers.shape or not (r["numbers"] == numbers).all():
            return False
        A = distance_matrix(positions)
        ratio = A * r["inv_scale"]
        if (ratio[r["bond"]] >= REORDER_BOND_KEPT).any() or (ratio[r["free"]] <= REORDER_BOND_FREE).any():
            return False
        B = A if r["perm"] is None else A[np.ix_(r["perm"], r["perm"])]
        n = len(B)
        b = B.ravel()
        cost = b @ b + r["ref_sq"] - 2.0 * (r["refs_flat"] @ b)  # (K,) squared differences
        res = np.sqrt(max(float(cost.min()), 0.0) / (n * n))
        if not res <= REORDER_CHECK_MAX_RESIDUAL:
            # far from the training geometries exchanges of more than two atoms can fit better
            # than any single exchange: only the full identification decides there
            return False
        if r["exchanges"] is None:
            return True
        delta = r["exchanges"](B)
        res_alt = np.sqrt(max(float((cost[:, None] + delta).min()), 0.0) / (n * n))
        return bool(res < res_alt + REORDER_MIN_GAP or res < REORDER_MIN_RATIO * res_alt)

    @property
    def order_tracker(self) -> OrderTracker:
        """The cache of :meth:`prepare_atoms` (``hits``: answered from the cache, ``misses``: full
        identifications)."""
        return self._order_state()["tracker"]

    def _order_state(self) -> dict:
        """Arrays for the atom-order checks and the order cache. ``_derive`` drops
        ``_ref_dist`` when the model's arrays change; everything here is rebuilt with it."""
        state = getattr(self, "_order", None)
        if state is None or state["ref_dist"] is not self._ref_dist:
            ref_dist, ref_fp = self._refs()
            state = {"ref_dist": ref_dist, "ref_fp": ref_fp, "z": self._cache_z(),
                     "group": self.perms.cpu().numpy().astype(np.int64),
                     "pairs": element_pairs(self._z_np),
                     "cover": _spread(ref_fp, REORDER_CHECK_COVER),
                     "tracker": OrderTracker(REORDER_TRACK_MAX_STEP)}
            self._order = state
        return state

    def _cache_z(self):
        self._z_np = self.z.cpu().numpy().astype(np.int64)
        return self._z_np

    def _refs(self):
        if self._ref_dist is None:
            D = self.desc_train.detach().cpu().numpy().astype(np.float64)
            n = self.n_atoms
            dist = np.zeros((len(D), n, n))
            dist[:, self._pa, self._pb] = 1.0 / D
            dist[:, self._pb, self._pa] = 1.0 / D
            self._ref_dist = dist
            self._ref_fp = self._fingerprint(dist, self.z.cpu().numpy())
        return self._ref_dist, self._ref_fp

    def _fingerprint(self, dist, numbers):
        """Order-independent fingerprint: sorted distances per element pair type."""
        numbers = np.asarray(numbers)
        a, b = self._pa, self._pb
        za, zb = np.maximum(numbers[a], numbers[b]), np.minimum(numbers[a], numbers[b])
        parts = []
        for t in sorted(set(zip(za.tolist(), zb.tolist()))):
            sel = (za == t[0]) & (zb == t[1])
            parts.append(np.sort(dist[..., a[sel], b[sel]], axis=-1))
        return np.concatenate(parts, axis=-1)

    def find_order(self, numbers, positions, n_refs: int = 5) -> np.ndarray:
        """``perm`` with ``positions[perm]`` in the model's atom order (``arange(N)`` when the
        atoms can be used as given); :class:`InputError` when the order cannot be identified.

        Criterion (residuals as in :mod:`~ase_mlff.descriptors.matching`: RMS distance-matrix
        difference to the closest of the ``n_refs`` training geometries nearest in an
        order-independent fingerprint, minimised over the model's symmetries ``perms``):

        1. Candidates: for each of those training geometries, atoms are assigned within each
           element by the Hungarian algorithm on per-atom sorted-distance signatures and polished
           by same-element swaps; when the numbers are in the model's order, the given order is
           a candidate too. The best candidate (the given order on a tie) is kept.
        2. Numbers in the model's order and the given order as good as the best candidate (it is
           the best up to symmetry, or within the margins of 3): used as given, whatever its
           residual (a geometry far from training is extrapolation, not an order problem).
        3. Otherwise the best candidate is a relabelling, identified only if its residual is
           <= ``REORDER_MAX_RESIDUAL`` Å and every exchange of two same-element atoms that is not
           a model symmetry raises the residual by at least ``REORDER_MIN_GAP`` Å and by a
           factor ``REORDER_MIN_RATIO`` (unambiguous).
        """
        perm = self._identify(numbers, positions, n_refs)
        return np.arange(self.n_atoms) if perm is None else perm

    def _identify(self, numbers, positions, n_refs: int = 5, with_refs: bool = False):
        """:meth:`find_order`, returning ``None`` for "use as given" (and, ``with_refs``, the
        indices of the training geometries it compared with)."""
        from scipy.optimize import linear_sum_assignment

        state = self._order_state()
        z, group = state["z"], state["group"]
        ref_dist, ref_fp = state["ref_dist"], state["ref_fp"]
        numbers = np.asarray(numbers)
        n = len(z)
        A = distance_matrix(np.asarray(positions, dtype=np.float64))
        fp = self._fingerprint(A, numbers)
        near = np.argsort(((ref_fp - fp[None]) ** 2).sum(1))[:n_refs]
        refs = ref_dist[near]
        elems = sorted(set(z.tolist()))
        given = bool(np.array_equal(numbers, z))

        def signatures(dist, nums):
            # per atom: its sorted distances to each element (self-distance 0 sorts first)
            return np.concatenate([np.sort(dist[:, nums == e], axis=1) for e in elems], axis=1)

        sig_in = signatures(A, numbers)
        cands = []
        for Aref in refs:
            sig_ref = signatures(Aref, z)
            cost = ((sig_ref[:, None, :] - sig_in[None, :, :]) ** 2).sum(-1)
            cost = cost + (z[:, None] != numbers[None, :]) * (cost.max() + 1.0) * 10.0
            rows, cols = linear_sum_assignment(cost)
            perm = np.empty(n, dtype=np.int64)
            perm[rows] = cols  # model atom rows[i] is input atom cols[i]
            cands.append(polish(A, Aref, perm, state["pairs"]))
        if given:
            cands.append(np.arange(n))
        cands = np.stack(cands)
        res = labelling_residuals(A, cands, group, refs)
        best = int(np.argmin(res))
        if given and res[-1] <= res[best]:
            best = len(cands) - 1
        perm, r_best = cands[best], float(res[best])
        # identity[q] = q: the given order is the best up to symmetry iff perm is in the group
        given_best = given and bool(np.any(np.all(group == perm[None], axis=1)))
        if given and (given_best or res[-1] < r_best + REORDER_MIN_GAP or res[-1] < REORDER_MIN_RATIO * r_best):
            # The caller's order is the best fit up to symmetry, or as good as the best within the
            # ambiguity margin. A same-element swap that fits about as well (in ethanol: the two
            # CH2 hydrogens, whose exchange mirrors the molecule) is no evidence of a wrong order,
            # and refusing would reject ordinary distorted frames; a wrong order shows as another
            # labelling fitting clearly better (a swapped carbon pair: by tenths of an Å).
            return (None, near) if with_refs else None
        what = f"this sGDML model ({self.describe()})"
        if r_best > REORDER_MAX_RESIDUAL:
            lead = ("the atoms' numbers are in the model's order, but another labelling of "
                    "same-element atoms fits the training geometries better; " if given else
                    f"the atoms are not in the order of {what}, and ")
            raise InputError(
                f"{lead}the order cannot be identified: the closest training geometry differs by an "
                f"RMS {r_best:.3f} Å in interatomic distances (limit {REORDER_MAX_RESIDUAL} Å); put "
                f"the atoms in the model's order and check that the structure is an intact, not "
                f"strongly distorted {_formula(z)} molecule"
            )
        alts, pairs = same_element_swaps(perm, z, group)
        if len(alts):
            r_alt = labelling_residuals(A, alts, group, refs)
            close = (r_alt < r_best + REORDER_MIN_GAP) | (r_alt < REORDER_MIN_RATIO * r_best)
            if np.any(close):
                k = int(np.flatnonzero(close)[np.argmin(r_alt[close])])
                i, j = (int(v) for v in pairs[k])
                raise InputError(
                    f"the atom order for {what} cannot be identified, it is ambiguous: exchanging "
                    f"model atoms {i} and {j} ({symbols([z[i]])[0]}) fits the training geometries "
                    f"almost as well (RMS residual {r_alt[k]:.3f} Å vs {r_best:.3f} Å), so the model "
                    f"cannot tell which atom is which; check that the structure is an intact, not "
                    f"strongly distorted {_formula(z)} molecule near the training geometries"
                )
        return (perm, near) if with_refs else perm

