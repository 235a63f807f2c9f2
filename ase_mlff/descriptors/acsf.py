"""Atom-centred symmetry functions (Behler): radial G2 and angular G5, linear in atoms.

Equations (Hellström & Behler 2020, "High-Dimensional Neural Network Potentials for Atomistic
Simulations", §13.3, docs/references.md; distances in Å, η in Å⁻², every function dimensionless):

* cosine cutoff (Eq. 13.4): ``f_c(r) = ½ [cos(π r / r_c) + 1]`` for ``r < r_c``, 0 beyond;
  value and slope vanish at ``r_c``.
* radial G2 (Eq. 13.8), centre ``i`` of element I, neighbours of element J::

      G2^{I:J}(i; η, r_s) = Σ_{j∈J, j≠i} exp(−η (r_ij − r_s)²) f_c(r_ij)

* angular G5 (the variant of Eq. 13.9 without the ``r_jk`` factors), neighbour elements J ≤ K::

      G5^{I:JK}(i; η, ζ, λ) = 2^{1−ζ} Σ_{unique pairs {j,k}, j∈J, k∈K} (1 + λ cos θ_jik)^ζ
                              exp(−η (r_ij² + r_ik²)) f_c(r_ij) f_c(r_ik)

  with ``cos θ_jik = u_ij · u_ik`` (unit vectors from i), ``λ = ±1`` and integer ``ζ ≥ 1``.

Why G5 and not G4. G5 factorises over the two neighbours, which makes it computable from the
pair list alone, with no triplet list (below): memory and time stay linear in the number of
pairs, however many neighbours an atom has (a water molecule at 6 Å has ~90 neighbours,
~4000 neighbour pairs per atom). It also keeps pairs of neighbours on opposite sides of the
centre (``r_jk`` up to ``2 r_c``), which G4's ``f_c(r_jk)`` removes (Hellström & Behler 2020 §13.3.2 notes G5
"reaches further" for this reason).

How G5 is computed without triplets. Write ``w_j = exp(−η r_ij²) f_c(r_ij)``. By the
binomial theorem ``(1 + λ u_j·u_k)^ζ = Σ_m C(ζ, m) λ^m (u_j·u_k)^m``, and
``(u_j·u_k)^m = Σ_{|α|=m} (m! / α!) u_j^α u_k^α`` over multi-indices ``α = (a, b, c)``
(``u^α = u_x^a u_y^b u_z^c``). With the per-atom moments ``T^J_α = Σ_{j∈J} w_j u_j^α``
(one ``index_add`` over pairs), the sum over *ordered* neighbour pairs is
``S^{JK} = Σ_m C(ζ, m) λ^m Σ_{|α|=m} (m!/α!) T^J_α T^K_α``. For J ≠ K every unique pair
appears once in it. For J = K every pair appears twice and each neighbour once with itself
(``cos θ = 1``), so the unique-pair sum is ``(S^{JJ} − (1+λ)^ζ Σ_{j∈J} w_j²) / 2``. A
neighbour ``j`` means one *pair entry* (an atom or one of its periodic images), exactly as in
the direct sum. ζ up to ``MAX_ZETA`` = 8 needs multi-indices up to degree 8 (165 moments).

Library and selection. :class:`SymmetryFunctionSet` holds a *library* of functions, the same
layout for every centre element I (columns: G2 blocks J = species[0], species[1], ...; then
G5 blocks for the neighbour pairs (J, K), J ≤ K, each ``n_eta × n_zeta_lambda``) and, per
element, the *selected* columns the model uses. :func:`automatic_set` builds the library
from training structures by a stated rule and selects by Hellström & Behler 2020 §13.3.3: drop functions that
are flat or dominated by outliers on the training set, and functions correlated above
``max_correlation`` (0.9) with one kept earlier. Parameters live in the model file's
hyperparameters; nothing is hard-coded per system.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations_with_replacement
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from ..errors import DatasetError, InputError

#: largest ζ accepted (moments up to this degree: (ζ+1)(ζ+2)(ζ+3)/6 of them per η)
MAX_ZETA = 8


def cosine_cutoff(r: torch.Tensor, rc: float) -> torch.Tensor:
    """Hellström & Behler 2020, Eq. 13.4: ½ [cos(π r / rc) + 1] inside the cutoff, 0 outside."""
    inside = r < rc
    # clamp before cos so that the discarded branch has a finite gradient too
    x = torch.clamp(r / rc, max=1.0)
    return torch.where(inside, 0.5 * (torch.cos(math.pi * x) + 1.0), torch.zeros_like(r))


def multi_indices(m_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ``α = (a, b, c)`` with ``|α| ≤ m_max``: exponents (K, 3), degree (K,), and the
    multinomial weight ``m! / (a! b! c!)`` (K,)."""
    rows = [(a, b, m - a - b) for m in range(m_max + 1) for a in range(m, -1, -1) for b in range(m - a, -1, -1)]
    exps = np.array(rows, dtype=np.int64).reshape(-1, 3)
    deg = exps.sum(1)
    weight = np.array([math.factorial(m) // (math.factorial(a) * math.factorial(b) * math.factorial(c))
                       for (a, b, c), m in zip(exps, deg)], dtype=np.float64)
    return exps, deg, weight


def element_pairs(n_species: int) -> list[tuple[int, int]]:
    """Neighbour-element pairs (J, K), J ≤ K, in the order of the G5 blocks (Hellström & Behler 2020, Eq. 13.7)."""
    return list(combinations_with_replacement(range(n_species), 2))


@dataclass
class SymmetryFunctionSet:
    """Parameters of a symmetry-function library and the columns selected per element.

    ``radial_eta``, ``radial_shift``: (S, S, n_radial) η (Å⁻²) and r_s (Å) of G2^{I:J};
    ``angular_eta``: (S, n_eta) η (Å⁻²) of G5 for centre element I; ``angular_zeta``,
    ``angular_lambda``: (n_zl,) the (ζ, λ) combinations used with every η;
    ``selected``: per element (in ``species`` order), the library columns kept.
    """

    species: list[int]
    cutoff: float
    radial_eta: np.ndarray
    radial_shift: np.ndarray
    angular_eta: np.ndarray
    angular_zeta: np.ndarray
    angular_lambda: np.ndarray
    selected: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self):
        self.species = [int(z) for z in self.species]
        S = len(self.species)
        self.cutoff = float(self.cutoff)
        self.radial_eta = np.asarray(self.radial_eta, dtype=np.float64).reshape(S, S, -1)
        self.radial_shift = np.asarray(self.radial_shift, dtype=np.float64).reshape(S, S, -1)
        self.angular_eta = np.asarray(self.angular_eta, dtype=np.float64).reshape(S, -1)
        self.angular_zeta = np.asarray(self.angular_zeta, dtype=np.int64).reshape(-1)
        self.angular_lambda = np.asarray(self.angular_lambda, dtype=np.float64).reshape(-1)
        if not self.selected:
            self.selected = [np.arange(self.n_library) for _ in range(S)]
        self.selected = [np.asarray(s, dtype=np.int64).reshape(-1) for s in self.selected]
        check_set(self.as_config())

    # ----------------------------------------------------------------- layout
    @property
    def n_radial(self) -> int:
        return self.radial_eta.shape[2]

    @property
    def n_eta(self) -> int:
        return self.angular_eta.shape[1]

    @property
    def n_zl(self) -> int:
        return len(self.angular_zeta)

    @property
    def n_library(self) -> int:
        S = len(self.species)
        return library_size(S, self.n_radial, self.n_eta, self.n_zl)

    def labels(self, element: int) -> list[str]:
        """Human-readable name of every library column for centre element index ``element``."""
        sym = [chemical_symbols[z] for z in self.species]
        I = sym[element]
        out = []
        for J in range(len(sym)):
            for n in range(self.n_radial):
                out.append(f"G2 {I}:{sym[J]} eta={self.radial_eta[element, J, n]:.4g} "
                           f"rs={self.radial_shift[element, J, n]:.4g}")
        for J, K in element_pairs(len(sym)):
            for e in range(self.n_eta):
                for z, lam in zip(self.angular_zeta, self.angular_lambda):
                    out.append(f"G5 {I}:{sym[J]}{sym[K]} eta={self.angular_eta[element, e]:.4g} "
                               f"zeta={int(z)} lambda={int(lam):+d}")
        return out

    # ----------------------------------------------------------------- serialisation
    def as_config(self) -> dict[str, Any]:
        """JSON-able description (stored in the model file's hyperparameters)."""
        return {
            "radial_eta": self.radial_eta.tolist(),
            "radial_shift": self.radial_shift.tolist(),
            "angular_eta": self.angular_eta.tolist(),
            "angular_zeta": [int(z) for z in self.angular_zeta],
            "angular_lambda": [float(v) for v in self.angular_lambda],
            "selected": {chemical_symbols[z]: [int(c) for c in s] for z, s in zip(self.species, self.selected)},
        }

    @classmethod
    def from_config(cls, species: Sequence[int], cutoff: float, config: dict[str, Any]) -> "SymmetryFunctionSet":
        species = sorted(int(z) for z in species)
        sel = config.get("selected") or {}
        return cls(species, cutoff, config["radial_eta"], config["radial_shift"], config["angular_eta"],
                   config["angular_zeta"], config["angular_lambda"],
                   [sel[chemical_symbols[z]] for z in species] if sel else [])


def library_size(n_species: int, n_radial: int, n_eta: int, n_zl: int) -> int:
    return n_species * n_radial + len(element_pairs(n_species)) * n_eta * n_zl


def _nested_shape(value, depth: int, name: str) -> tuple[int, ...]:
    """Shape of a rectangular nested list of finite numbers of the given depth (ValueError otherwise)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"hyperparameters.{name} must be a rectangular array of numbers") from None
    if arr.ndim != depth or not np.all(np.isfinite(arr)):
        raise ValueError(f"hyperparameters.{name} must be a {depth}-d array of finite numbers")
    return arr.shape


def check_set(config: dict[str, Any], species: Sequence[int] | None = None) -> dict[str, Any]:
    """Validate a set's hyperparameters (from a file); returns sizes. Raises ValueError naming
    the field. Allocates nothing larger than the (small) parameter lists themselves."""
    for key in ("radial_eta", "radial_shift", "angular_eta", "angular_zeta", "angular_lambda"):
        if key not in config:
            raise ValueError(f"hyperparameters.{key} is missing")
    re = _nested_shape(config["radial_eta"], 3, "radial_eta")
    rs = _nested_shape(config["radial_shift"], 3, "radial_shift")
    ae = _nested_shape(config["angular_eta"], 2, "angular_eta")
    S = re[0]
    if re[1] != S or rs != re or ae[0] != S or (species is not None and S != len(species)):
        raise ValueError("hyperparameters.radial_eta/radial_shift must be (S, S, n) and angular_eta (S, n) "
                         "for the S elements of the model")
    if np.any(np.asarray(config["radial_eta"]) < 0) or np.any(np.asarray(config["angular_eta"]) < 0):
        raise ValueError("hyperparameters.radial_eta and angular_eta must be >= 0")
    zeta, lam = config["angular_zeta"], config["angular_lambda"]
    if (not isinstance(zeta, list) or not isinstance(lam, list) or len(zeta) != len(lam)
            or not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= MAX_ZETA for z in zeta)
            or not all(isinstance(v, (int, float)) and v in (-1, 1) for v in lam)):
        raise ValueError(f"hyperparameters.angular_zeta (integers 1..{MAX_ZETA}) and angular_lambda (+1 or -1) "
                         "must be lists of equal length")
    n_lib = library_size(S, re[2], ae[1], len(zeta))
    sizes = {"n_species": S, "n_library": n_lib}
    sel = config.get("selected")
    if sel is not None:
        if not isinstance(sel, dict) or (species is not None and set(sel) != {chemical_symbols[z] for z in species}):
            raise ValueError("hyperparameters.selected must map every element symbol to a list of columns")
        for name, cols in sel.items():
            if (not isinstance(cols, list) or not cols
                    or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n_lib for c in cols)
                    or len(set(cols)) != len(cols)):
                raise ValueError(f"hyperparameters.selected[{name!r}] must be distinct column indices in 0..{n_lib - 1}")
        sizes["n_selected"] = {k: len(v) for k, v in sel.items()}
    return sizes


# --------------------------------------------------------------------------- the descriptor
class ACSF(torch.nn.Module):
    """The library of a :class:`SymmetryFunctionSet` as a differentiable function of a Graph.

    ``forward(graph)`` -> (N, n_library) in the graph's dtype. Parameters are buffers that are
    not saved (the model file keeps them in its hyperparameters, as JSON numbers).
    """

    def __init__(self, sfset: SymmetryFunctionSet):
        super().__init__()
        self.species = list(sfset.species)
        self.cutoff = float(sfset.cutoff)
        S = len(self.species)
        self.n_species = S
        self.n_radial, self.n_eta, self.n_zl = sfset.n_radial, sfset.n_eta, sfset.n_zl
        self.n_library = sfset.n_library
        self.pairs = element_pairs(S)
        zeta = sfset.angular_zeta
        lam = sfset.angular_lambda
        self.m_max = int(zeta.max()) if len(zeta) else 0
        exps, deg, weight = multi_indices(self.m_max)
        # A[k, t]: weight of moment product k in function t, 2^{1-ζ} C(ζ, m) λ^m m!/α!
        A = np.zeros((len(deg), len(zeta)))
        for t, (z, lm) in enumerate(zip(zeta, lam)):
            for k, m in enumerate(deg):
                if m <= z:
                    A[k, t] = 2.0 ** (1 - int(z)) * math.comb(int(z), int(m)) * lm ** int(m) * weight[k]
        diag = np.array([2.0 ** (1 - int(z)) * (1 + lm) ** int(z) for z, lm in zip(zeta, lam)])
        table = torch.full((119,), -1, dtype=torch.long)
        table[torch.tensor(self.species)] = torch.arange(S)
        buffers = {
            "species_table": table,
            "radial_eta": torch.tensor(sfset.radial_eta),
            "radial_shift": torch.tensor(sfset.radial_shift),
            "angular_eta": torch.tensor(sfset.angular_eta),
            "exps": torch.tensor(exps),
            "A": torch.tensor(A),
            "diag": torch.tensor(diag),
        }
        for k, v in buffers.items():
            self.register_buffer(k, v, persistent=False)

    def forward(self, graph) -> torch.Tensor:
        i, j = graph.edge_index
        vec = graph.edge_vectors()
        r = torch.linalg.norm(vec.detach(), dim=1)
        if len(r) and float(r.max()) >= self.cutoff:
            # the graph's list may come from a longer cutoff (a shared neighbour list)
            keep = r < self.cutoff
            i, j, vec = i[keep], j[keep], vec[keep]
        return self.from_vectors(graph.numbers, i, j, vec)

    def from_vectors(self, numbers: torch.Tensor, i: torch.Tensor, j: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The library (N, n_library) from pair vectors ``vec`` (P, 3) (all shorter than the
        cutoff) from atom ``i`` to atom ``j``: a function of the pair vectors alone, which
        is what lets training cache d(functions)/d(vectors) (see training/bpnn_train.py)."""
        N, S = len(numbers), self.n_species
        dtype = vec.dtype
        r = torch.linalg.norm(vec, dim=1)
        si = self.species_table[numbers[i]]
        sj = self.species_table[numbers[j]]
        if len(si) and bool((sj < 0).any()):
            bad = sorted({chemical_symbols[int(z)] for z in numbers[j][sj < 0].tolist()})
            raise InputError(f"element(s) {', '.join(bad)} not known to these symmetry functions "
                             f"(elements {', '.join(chemical_symbols[z] for z in self.species)})")
        fc = cosine_cutoff(r, self.cutoff)
        slot = i * S + sj  # (centre, neighbour element) accumulator row

        # radial G2: (P, n_radial) per pair, summed per centre and neighbour element
        eta = self.radial_eta.to(dtype)[si, sj]
        rs = self.radial_shift.to(dtype)[si, sj]
        g2 = torch.exp(-eta * (r[:, None] - rs) ** 2) * fc[:, None]
        radial = torch.zeros(N * S, self.n_radial, dtype=dtype, device=r.device).index_add(0, slot, g2)
        blocks = [radial.reshape(N, S * self.n_radial)]

        if self.n_zl and self.n_eta:
            # angular G5 through per-atom moments T^J_α = Σ_j w_j u_j^α (see the module docstring)
            u = vec / r[:, None]
            powers = [torch.ones_like(u)]
            for _ in range(self.m_max):
                powers.append(powers[-1] * u)
            pw = torch.stack(powers, dim=2)  # (P, 3, m_max + 1)
            e = self.exps
            mono = pw[:, 0, e[:, 0]] * pw[:, 1, e[:, 1]] * pw[:, 2, e[:, 2]]  # (P, K)
            w = torch.exp(-self.angular_eta.to(dtype)[si] * (r * r)[:, None]) * fc[:, None]  # (P, n_eta)
            K = mono.shape[1]
            T = torch.zeros(N * S, self.n_eta * K, dtype=dtype, device=r.device)
            T = T.index_add(0, slot, (w[:, :, None] * mono[:, None, :]).reshape(-1, self.n_eta * K))
            T = T.reshape(N, S, self.n_eta, K)
            Q = torch.zeros(N * S, self.n_eta, dtype=dtype, device=r.device).index_add(0, slot, w * w)
            Q = Q.reshape(N, S, self.n_eta)
            A, diag = self.A.to(dtype), self.diag.to(dtype)
            for J, Kel in self.pairs:
                G = torch.einsum("nek,nek,kt->net", T[:, J], T[:, Kel], A)
                if J == Kel:
                    G = 0.5 * (G - Q[:, J, :, None] * diag)
                blocks.append(G.reshape(N, self.n_eta * self.n_zl))
        return torch.cat(blocks, dim=1)


    def pair_jacobian(self, numbers: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                      vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The library (N, n_library) and, per pair ``p``, ``d library(i_p) / d vec_p``
        (P, n_library, 3), analytically (no autograd; pairs shorter than the cutoff).

        Atom i's functions depend on i's own pair vectors only (G5 has no r_jk term), so this
        is the whole Jacobian. Derivatives used (r = |vec|, u = vec/r, du/dvec = (1 − u uᵀ)/r):
        G2 pair term g(r) → g'(r) u; G5 moments T^J_α(i) = Σ_j w(r_ij) u_ij^α, so
        dT^J_α/dvec_p = w' u u^α + (w/r) (∂u^α/∂u − m u u^α) (Euler: u·∂u^α/∂u = m u^α for
        |α| = m); G5 = Σ_α A_α T^J_α T^K_α is bilinear in the moments, and the J = K
        self-term subtracts diag · Σ_j w_j², whose derivative is 2 w w' u. One pass over the
        pairs replaces one backward pass per function (measured in docs/bpnn.md)."""
        with torch.no_grad():
            N, S = len(numbers), self.n_species
            dtype = vec.dtype
            lib = self.from_vectors(numbers, i, j, vec)
            P = len(i)
            jac = torch.zeros(P, self.n_library, 3, dtype=dtype, device=vec.device)
            if P == 0:
                return lib, jac
            r = torch.linalg.norm(vec, dim=1)
            u = vec / r[:, None]
            si = self.species_table[numbers[i]]
            sj = self.species_table[numbers[j]]
            rc = self.cutoff
            x = torch.clamp(r / rc, max=1.0)
            fc = 0.5 * (torch.cos(math.pi * x) + 1.0)
            dfc = -0.5 * math.pi / rc * torch.sin(math.pi * x)
            # G2: columns sj * n_radial + k of the pair's centre
            eta = self.radial_eta.to(dtype)[si, sj]
            rs = self.radial_shift.to(dtype)[si, sj]
            ex = torch.exp(-eta * (r[:, None] - rs) ** 2)
            dg2 = ex * (-2.0 * eta * (r[:, None] - rs) * fc[:, None] + dfc[:, None])  # (P, n_radial)
            cols = sj[:, None] * self.n_radial + torch.arange(self.n_radial, device=vec.device)
            jac.scatter_(1, cols[:, :, None].expand(-1, -1, 3), dg2[:, :, None] * u[:, None, :])
            if not (self.n_zl and self.n_eta):
                return lib, jac
            e = self.exps
            powers = [torch.ones_like(u)]
            for _ in range(self.m_max):
                powers.append(powers[-1] * u)
            pw = torch.stack(powers, dim=2)  # (P, 3, m_max + 1)
            mono = pw[:, 0, e[:, 0]] * pw[:, 1, e[:, 1]] * pw[:, 2, e[:, 2]]  # (P, K)
            # ∂u^α/∂u_β = α_β u^(α − e_β)
            lower = (e - 1).clamp_min(0)
            d_mono = torch.stack([
                e[:, 0] * pw[:, 0, lower[:, 0]] * pw[:, 1, e[:, 1]] * pw[:, 2, e[:, 2]],
                e[:, 1] * pw[:, 0, e[:, 0]] * pw[:, 1, lower[:, 1]] * pw[:, 2, e[:, 2]],
                e[:, 2] * pw[:, 0, e[:, 0]] * pw[:, 1, e[:, 1]] * pw[:, 2, lower[:, 2]]], dim=2)  # (P, K, 3)
            deg = e.sum(1).to(dtype)
            aeta = self.angular_eta.to(dtype)[si]  # (P, n_eta)
            ew = torch.exp(-aeta * (r * r)[:, None])
            w = ew * fc[:, None]
            dw = ew * (-2.0 * aeta * r[:, None] * fc[:, None] + dfc[:, None])
            K = mono.shape[1]
            slot = i * S + sj
            T = torch.zeros(N * S, self.n_eta * K, dtype=dtype, device=vec.device)
            T = T.index_add(0, slot, (w[:, :, None] * mono[:, None, :]).reshape(-1, self.n_eta * K))
            T = T.reshape(N, S, self.n_eta, K)
            A, diag = self.A.to(dtype), self.diag.to(dtype)
            radial_width = S * self.n_radial
            width = self.n_eta * self.n_zl
            for b, (J, Kel) in enumerate(self.pairs):
                mask = (sj == J) | (sj == Kel)
                if not bool(mask.any()):
                    continue
                pm = torch.nonzero(mask).squeeze(1)
                other = torch.where(sj[pm] == J, torch.full_like(pm, Kel), torch.full_like(pm, J))
                To = T[i[pm], other]  # (p, n_eta, K): the moments of the other neighbour element
                # Σ_α A_αt T_α ∂(w u^α)/∂vec; for J = K the factor 2 of the product rule meets the ½
                H = torch.einsum("pk,pek,kt->pet", mono[pm], To, A)
                Hm = torch.einsum("pk,pek,kt->pet", mono[pm] * deg, To, A)
                Hd = torch.einsum("pkb,pek,kt->petb", d_mono[pm], To, A)
                up, rp = u[pm], r[pm]
                d = (dw[pm][:, :, None, None] * H[..., None] * up[:, None, None, :]
                     + (w[pm] / rp[:, None])[:, :, None, None] * (Hd - Hm[..., None] * up[:, None, None, :]))
                if J == Kel:
                    d = d - (diag[None, None, :, None] * (w[pm] * dw[pm])[:, :, None, None]
                             * up[:, None, None, :])
                start = radial_width + b * width
                jac[pm, start:start + width] = d.reshape(len(pm), width, 3)
            return lib, jac


# --------------------------------------------------------------------------- automatic set
@dataclass
class Selection:
    """Outcome of :func:`select_functions` for one element: kept columns and why others went."""

    kept: np.ndarray
    dropped: dict[int, str]


def select_functions(X: np.ndarray, max_correlation: float = 0.9, min_relative_std: float = 1e-3,
                     max_range_over_std: float = 50.0, candidates: Iterable[int] | None = None) -> Selection:
    """Hellström & Behler 2020 §13.3.3 on the values ``X`` (n_atoms, n_functions) of one element's library.

    In column order, a function is dropped when it is *flat* (std below ``min_relative_std``
    times its mean magnitude, or zero: it carries no information and scaling by its std would
    amplify noise), *outlier-dominated* (``(max − min)/std > max_range_over_std``: nearly all
    atoms share one value, a few far away; Hellström & Behler call ≈10 healthy), or *redundant* (|Pearson
    correlation| > ``max_correlation`` with a function kept earlier). Returns the kept columns
    (sorted) and the reason for each dropped one.
    """
    X = np.asarray(X, dtype=np.float64)
    cols = range(X.shape[1]) if candidates is None else candidates
    dropped: dict[int, str] = {}
    kept: list[int] = []
    mean, std = X.mean(0), X.std(0)
    span = X.max(0) - X.min(0) if len(X) else np.zeros(X.shape[1])
    Z = (X - mean) / np.where(std > 0, std, 1.0)
    for c in cols:
        if not std[c] > min_relative_std * abs(mean[c]) or std[c] == 0:
            dropped[c] = f"flat (std {std[c]:.3g}, mean {mean[c]:.3g})"
            continue
        if span[c] / std[c] > max_range_over_std:
            dropped[c] = f"outlier-dominated ((max-min)/std = {span[c] / std[c]:.3g})"
            continue
        if kept:
            corr = np.abs(Z[:, kept].T @ Z[:, c]) / len(X)
            k = int(np.argmax(corr))
            if corr[k] > max_correlation:
                dropped[c] = f"correlation {corr[k]:.3f} with column {kept[k]}"
                continue
        kept.append(c)
    return Selection(np.array(sorted(kept), dtype=np.int64), dropped)


def _keep_every_neighbour(sel: Selection, k: int, species: Sequence[int], rmin: np.ndarray,
                          n_radial: int) -> Selection:
    """The selection with, for every element J found within the cutoff of element ``k``, at least
    one radial function of the pair (k, J).

    Correlation is measured over the whole data, where composition can dominate: with pure Cu
    and a few Cu-Ni frames, every Cu:Cu function correlates with a Cu:Ni one (fewer Cu
    neighbours where there are more Ni), and dropping them all would leave pure-Cu frames with
    inputs that do not depend on their geometry (zero forces). A pair whose radial functions
    were all dropped as redundant gets back the first of them (the nearest shell); a pair whose
    functions are all flat or outlier-dominated stays without one (it carries no information)."""
    kept = [int(c) for c in sel.kept]
    dropped = dict(sel.dropped)
    for J in range(len(species)):
        if not np.isfinite(rmin[k, J]):
            continue  # never a neighbour of this element in the data
        block = range(J * n_radial, (J + 1) * n_radial)
        if any(c in block for c in kept):
            continue
        redundant = [c for c in block if dropped.get(c, "").startswith("correlation")]
        if redundant:
            c = redundant[0]
            kept.append(c)
            dropped.pop(c)
    return Selection(np.array(sorted(kept), dtype=np.int64), dropped)


def smallest_distances(structures, species: Sequence[int], cutoff: float) -> np.ndarray:
    """(S, S) smallest distance (Å) seen between elements I and J in ``structures``
    (``inf`` where no such pair occurs within ``cutoff``)."""
    from ..neighbors import neighbor_list

    S = len(species)
    table = np.full(119, -1)
    table[list(species)] = np.arange(S)
    rmin = np.full((S, S), np.inf)
    for st in structures:
        numbers = np.asarray(st.numbers)
        cell = np.asarray(getattr(st.cell, "array", st.cell), dtype=np.float64)
        p = neighbor_list(np.asarray(st.positions), cell, np.asarray(st.pbc), cutoff)
        if not len(p):
            continue
        a, b = table[numbers[p.i]], table[numbers[p.j]]
        np.minimum.at(rmin, (a, b), p.distances)
    return np.minimum(rmin, rmin.T)


def library_for(species: Sequence[int], cutoff: float, rmin: np.ndarray, n_radial: int = 8, n_eta: int = 4,
                zetas: Sequence[int] = (1, 2, 4), lambdas: Sequence[int] = (-1, 1)) -> SymmetryFunctionSet:
    """The library of the automatic rule, for smallest observed distances ``rmin`` (S, S).

    Radial, per element pair (I, J): ``n_radial`` shifted Gaussians on an even grid from the
    smallest observed distance ``r0`` towards the cutoff, ``r_s = r0 + k Δ`` (k = 0..n−1) with
    ``Δ = (r_c − r0) / n_radial`` and ``η = 1/Δ²`` (neighbouring Gaussians cross at e^{-1/4}
    of their peak, so the grid covers every distance without gaps). Angular, per centre I:
    ``η = 0`` (a pure cutoff product) and ``n_eta − 1`` Gaussians ``η = ln 2 / ρ²`` whose
    half-value radius ``ρ`` runs geometrically from I's shortest bond ``r0_I`` towards
    ``r_c`` (``ρ_k = r0_I (r_c / r0_I)^{k/(n_eta−1)}``, k = 0..n_eta−2), each with every
    (ζ, λ) in ``zetas × lambdas``. Pairs never observed use ``r0 = r_c / 4``.
    """
    species = sorted(int(z) for z in species)
    S = len(species)
    rmin = np.where(np.isfinite(rmin), rmin, cutoff / 4.0)
    rmin = np.minimum(rmin, 0.95 * cutoff)
    eta = np.zeros((S, S, n_radial))
    shift = np.zeros((S, S, n_radial))
    for a in range(S):
        for b in range(S):
            r0 = float(rmin[a, b])
            delta = (cutoff - r0) / n_radial
            shift[a, b] = r0 + delta * np.arange(n_radial)
            eta[a, b] = 1.0 / delta ** 2
    aeta = np.zeros((S, n_eta))
    for a in range(S):
        r0 = float(rmin[a].min())
        k = np.arange(n_eta - 1)
        rho = r0 * (cutoff / r0) ** (k / max(n_eta - 1, 1))
        aeta[a, 1:] = np.log(2.0) / rho ** 2
    zl = [(int(z), int(lm)) for z in zetas for lm in lambdas]
    return SymmetryFunctionSet(species, cutoff, eta, shift, aeta, [z for z, _ in zl], [lm for _, lm in zl])


def library_values(sfset: SymmetryFunctionSet, structures, dtype=torch.float64) -> list[np.ndarray]:
    """Library values (n_atoms_of_element, n_library) per element over ``structures``."""
    from ..graph import graph_from_structure

    acsf = ACSF(sfset)
    per = [[] for _ in sfset.species]
    table = {z: k for k, z in enumerate(sfset.species)}
    with torch.no_grad():
        for st in structures:
            g = graph_from_structure(st, sfset.cutoff, dtype=dtype)
            X = acsf(g).numpy()
            idx = np.array([table.get(int(z), -1) for z in g.numbers.tolist()])
            if np.any(idx < 0):
                raise DatasetError("a training structure contains an element outside the model's species")
            for k in range(len(sfset.species)):
                per[k].append(X[idx == k])
    return [np.concatenate(p) if p else np.zeros((0, sfset.n_library)) for p in per]


def automatic_set(structures, cutoff: float, species: Sequence[int] | None = None, n_radial: int = 8,
                  n_eta: int = 4, zetas: Sequence[int] = (1, 2, 4), lambdas: Sequence[int] = (-1, 1),
                  max_correlation: float = 0.9, max_range_over_std: float = 50.0,
                  min_relative_std: float = 1e-3, max_structures: int = 64, seed: int = 0):
    """Library by :func:`library_for`, selection by :func:`select_functions`, both on (up to
    ``max_structures``, evenly spaced) training structures.

    Returns ``(sfset, report)``; ``report[symbol]`` lists the kept and dropped functions with
    their reasons. Raises :class:`DatasetError` when an element has no atoms in the data or
    loses every function.
    """
    structures = list(structures)
    if not structures:
        raise DatasetError("no structures to choose symmetry functions from")
    if species is None:
        species = sorted({int(z) for st in structures for z in np.asarray(st.numbers)})
    species = sorted(int(z) for z in species)
    if len(structures) > max_structures:
        pick = np.linspace(0, len(structures) - 1, max_structures).round().astype(int)
        structures = [structures[k] for k in np.unique(pick)]
    rmin = smallest_distances(structures, species, cutoff)
    lib = library_for(species, cutoff, rmin, n_radial, n_eta, zetas, lambdas)
    values = library_values(lib, structures)
    selected, report = [], {}
    for k, z in enumerate(species):
        sym = chemical_symbols[z]
        X = values[k]
        if len(X) < 2:
            raise DatasetError(f"element {sym} has {len(X)} atom(s) in the training structures; "
                               "symmetry functions cannot be chosen for it")
        sel = select_functions(X, max_correlation, min_relative_std, max_range_over_std)
        sel = _keep_every_neighbour(sel, k, species, rmin, lib.n_radial)
        if not len(sel.kept):
            raise DatasetError(f"every symmetry function of {sym} is flat on the training structures "
                               "(are its atoms isolated, with no neighbour within the cutoff?)")
        labels = lib.labels(k)
        selected.append(sel.kept)
        report[sym] = {"kept": [labels[c] for c in sel.kept],
                       "dropped": {labels[c]: why for c, why in sel.dropped.items()},
                       "n_library": lib.n_library}
    lib.selected = selected
    return lib, report
