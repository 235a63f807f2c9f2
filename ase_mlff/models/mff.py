"""Mapped n-body force fields (MFF): 2- and 3-body energies tabulated as cubic B-splines.

Local energy of atom ``i`` (species ``s``), identical in the GP it was mapped from
(:mod:`ase_mlff.models.nbody_gp`), the C++ kernel, the torch oracle below and the LAMMPS
``pair_style uf3`` export (:mod:`ase_mlff.export.lammps`)::

    eps_i = e0[s_i]
          + sum_{j != i, r_ij < rc2}        V2[s_i, s_j](r_ij)
          + sum_{j < k, r_ij, r_ik < rc3}   V3[s_i, s_j, s_k](r_ij, r_ik, r_jk)

``V2`` is a uniform clamped cubic B-spline on ``[0, rc2]`` (``n2`` intervals); ``V3`` is a
tensor product of such splines on ``[0, rc3]^2 x [0, 2 rc3]`` (``n3``, ``n3``, ``2 n3``
intervals; the ``r_jk`` axis is twice as long because LAMMPS uf3 requires it). Each pair
``(i, j)`` enters twice (once from each end), each triangle once per centre. ``e0`` are
per-element reference energies (constants; they do not change forces or stress).

Forces and stress are analytic derivatives of the spline energy, so MD with this model
conserves energy to integrator accuracy. :meth:`MFFModel.compute` runs the compiled serving
core on the CPU (``_ext/mff_core.hpp``, :meth:`MFFModel.analytic`: no Python loop over atoms,
forces and per-atom virials from per-pair gradients); :meth:`MFFModel.forward` evaluates the
same splines with torch (differentiable: Hessians, and the test oracle of the C++ path); the
pairs and triangles it sums over come from :mod:`ase_mlff.descriptors.nbody`, the same code GP
training uses.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from .. import _ext
from ..descriptors.nbody import triangles, triplet_index  # noqa: F401 (triplet_index: old home)
from ..graph import Graph
from ..splines import UniformGrid, torch_basis
from ..threads import serial_torch
from .base import (MAX_REFERENCE_ENERGY, MIN_CUTOFF, Model, ModelOutput, config_cutoff, config_float, config_int,
                   config_species, core_inputs, core_output, register_model)


@register_model
class MFFModel(Model):
    """Mapped 2+3-body force field on uniform cubic B-splines (family ``"mff"``)."""

    family = "mff"
    # the kernel and forward() skip pairs with r >= rc2 and arms with r >= rc3 themselves
    accepts_outer_pairs = True

    def __init__(self, species: Iterable[int], cutoff: float | None = None, rc2: float = 5.0,
                 n2: int = 100, rc3: float = 0.0, n3: int = 0, config: dict[str, Any] | None = None,
                 n3jk: int | None = None, **extra):
        species = sorted({int(z) for z in species})
        rc2 = float(rc2)
        rc3 = float(rc3)
        if not rc2 > 0:
            raise ValueError(f"rc2 must be positive, got {rc2}")
        if rc3 < 0 or (rc3 > 0 and int(n3) < 1):
            raise ValueError("a 3-body term needs rc3 > 0 and n3 >= 1")
        cut = max(rc2, rc3)
        if cutoff is not None and abs(float(cutoff) - cut) > 1e-12:
            raise ValueError(f"cutoff {cutoff} does not match max(rc2, rc3) = {cut}")
        cfg = dict(config or {})
        cfg.update(extra)
        # the third side r_jk spans [0, 2 rc3]: by default the arms' spacing (2 n3 intervals);
        # centred triplets may use a coarser one (a uf3 line holds at most ~90 numbers)
        n3jk = 2 * int(n3) if n3jk is None else int(n3jk)
        if rc3 > 0 and n3jk < 1:
            raise ValueError("a 3-body term needs n3jk >= 1")
        cfg.update({"rc2": rc2, "n2": int(n2), "rc3": rc3, "n3": int(n3), "n3jk": n3jk})
        super().__init__(species, cut, cfg)
        self.rc2, self.n2, self.rc3, self.n3, self.n3jk = rc2, int(n2), rc3, int(n3), n3jk
        S = len(self.species)
        self.grid2 = UniformGrid(rc2, self.n2)
        self.has3 = rc3 > 0
        self.register_buffer("coef2", torch.zeros((S, S, self.grid2.n_coef), dtype=torch.float64))
        self.register_buffer("e0", torch.zeros(S, dtype=torch.float64))
        self.register_buffer("_table2", torch.from_numpy(self.grid2.table().copy()), persistent=False)
        if self.has3:
            self.grid3 = UniformGrid(rc3, self.n3)
            self.grid3jk = UniformGrid(2 * rc3, self.n3jk)
            shape = (S, S, S, self.grid3.n_coef, self.grid3.n_coef, self.grid3jk.n_coef)
            self.register_buffer("coef3", torch.zeros(shape, dtype=torch.float64))
            self.register_buffer("_table3", torch.from_numpy(self.grid3.table().copy()), persistent=False)
            self.register_buffer("_table3jk", torch.from_numpy(self.grid3jk.table().copy()), persistent=False)
        else:
            self.grid3 = self.grid3jk = None
            self.register_buffer("coef3", torch.zeros((0,), dtype=torch.float64))
        self.n_threads = 0  # 0: the configured count (ase_mlff.set_num_threads)

    # ----------------------------------------------------------------- helpers
    def get_config(self) -> dict[str, Any]:
        cfg = {k: v for k, v in self.config.items() if k not in ("rc2", "n2", "rc3", "n3", "n3jk")}
        # n3jk only where it is not the default, so that files of the default grid stay as before
        jk = {"n3jk": self.n3jk} if self.n3jk != 2 * self.n3 else {}
        return {"species": self.species, "cutoff": self.cutoff, "rc2": self.rc2, "n2": self.n2,
                "rc3": self.rc3, "n3": self.n3, **jk, **({"config": cfg} if cfg else {})}

    #: bounds on hyperparameters read from files (far beyond any useful tabulation)
    MAX_CUTOFF = 100.0
    MAX_N2 = 1_000_000
    MAX_N3 = 10_000

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shapes of coef2 (S, S, n2+3), e0 (S,) and coef3 (S, S, S, n3+3, n3+3, n3jk+3) (n3jk
        default 2 n3), or (0,) without a 3-body term, computed without allocating them."""
        species = config_species(config)
        rc2 = config_cutoff(config, "rc2", cls.MAX_CUTOFF, default=5.0)
        n2 = config_int(config, "n2", 1, cls.MAX_N2, default=100)
        rc3 = config_float(config, "rc3", 0.0, cls.MAX_CUTOFF, default=0.0)
        if 0 < rc3 < MIN_CUTOFF:
            raise ValueError(f"hyperparameters.rc3 must be 0 (no 3-body term) or at least {MIN_CUTOFF:g} Å, got {rc3:g}")
        n3 = config_int(config, "n3", 1 if rc3 > 0 else 0, cls.MAX_N3, default=0)
        n3jk = config_int(config, "n3jk", 1 if rc3 > 0 else 0, 2 * cls.MAX_N3, default=2 * n3)
        cutoff = config.get("cutoff")
        if cutoff is not None and config_float(config, "cutoff") != max(rc2, rc3):
            raise ValueError(f"hyperparameters.cutoff {cutoff} does not match max(rc2, rc3) = {max(rc2, rc3)}")
        if not isinstance(config.get("config", {}), dict):
            raise ValueError("hyperparameters.config must be an object")
        S = len(species)
        coef3 = (S, S, S, n3 + 3, n3 + 3, n3jk + 3) if rc3 > 0 else (0,)
        return {"coef2": ((S, S, n2 + 3), "float64"), "e0": ((S,), "float64"), "coef3": (coef3, "float64")}

    @classmethod
    def check_arrays(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """The per-element reference energies ``e0`` must be plausible per-atom energies."""
        e0 = arrays["e0"]
        if np.any(np.abs(e0) >= MAX_REFERENCE_ENERGY):
            raise ValueError(f"array 'e0' holds {float(e0[np.argmax(np.abs(e0))]):.4g} eV: a reference energy "
                             f"must be of magnitude below {MAX_REFERENCE_ENERGY:g} eV per atom")

    def set_splines(self, coef2=None, coef3=None, e0=None) -> "MFFModel":
        """Set coefficients (numpy or torch); 3-body blocks are symmetrised in (j, k)."""
        with torch.no_grad():
            if coef2 is not None:
                c2 = torch.as_tensor(np.asarray(coef2), dtype=torch.float64)
                self.coef2.copy_(0.5 * (c2 + c2.transpose(0, 1)))
            if coef3 is not None:
                if not self.has3:
                    raise ValueError("this model has no 3-body term (rc3 = 0)")
                c3 = torch.as_tensor(np.asarray(coef3), dtype=torch.float64)
                self.coef3.copy_(0.5 * (c3 + c3.permute(0, 2, 1, 4, 3, 5)))
            if e0 is not None:
                self.e0.copy_(torch.as_tensor(np.asarray(e0), dtype=torch.float64))
        return self

    def jk_max(self) -> float:
        """Largest r_jk at which any 3-body spline can be non-zero (triplets beyond are skipped)."""
        if not self.has3:
            return 0.0
        c = self.coef3.detach().abs().cpu().numpy()
        nz = np.nonzero(c.reshape(-1, c.shape[-1]).max(axis=0) > 0)[0]
        if len(nz) == 0:
            return 0.0
        return self.grid3jk.support_end(int(nz[-1]))

    # ----------------------------------------------------------------- torch path
    def forward(self, graph: Graph) -> torch.Tensor:
        dtype = graph.dtype
        n = graph.n_atoms
        s = self.species_index(graph.numbers)
        i, j = graph.edge_index
        vec = graph.edge_vectors()
        r = torch.linalg.norm(vec, dim=1)
        energies = self.e0.to(dtype)[s].clone()
        # 2-body
        keep = r.detach() < self.rc2
        if bool(keep.any()):
            ii, jj, rr = i[keep], j[keep], r[keep]
            m, b, inside = torch_basis(self._table2.to(dtype), self.grid2.h, self.grid2.n, rr)
            c = self.coef2.to(dtype)[s[ii], s[jj]]  # (P, n_coef)
            cc = torch.gather(c, 1, m.unsqueeze(1) + torch.arange(4, device=m.device))
            e = (cc * b).sum(1) * inside
            energies = energies.index_add(0, ii, e)
        # 3-body: triangles beyond the spline's r_jk support add nothing
        if self.has3:
            jk_max = self.jk_max()
            tri = triangles(i, vec, r, self.rc3, jk_max)
            if len(tri) and jk_max > 0:
                e1, e2, rjk = tri.e1, tri.e2, tri.rjk
                ci, cj, ck = i[e1], j[e1], j[e2]
                t3 = self._table3.to(dtype)
                m1, b1, in1 = torch_basis(t3, self.grid3.h, self.grid3.n, r[e1])
                m2, b2, in2 = torch_basis(t3, self.grid3.h, self.grid3.n, r[e2])
                m3, b3, in3 = torch_basis(self._table3jk.to(dtype), self.grid3jk.h, self.grid3jk.n, rjk)
                ar = torch.arange(4, device=m1.device)
                c3 = self.coef3.to(dtype)
                # the 4 x 4 x 4 live coefficients of each triangle, gathered straight from the
                # flat array (never a (T, n3, n3, n3jk) block per triangle: GBs on 100 atoms)
                n_c, n_jk = c3.shape[3], c3.shape[5]
                S = c3.shape[0]
                base = ((s[ci] * S + s[cj]) * S + s[ck]) * (n_c * n_c * n_jk)
                idx1 = (m1[:, None] + ar)[:, :, None, None] * (n_c * n_jk)
                idx2 = (m2[:, None] + ar)[:, None, :, None] * n_jk
                idx3 = (m3[:, None] + ar)[:, None, None, :]
                cc = c3.reshape(-1)[base[:, None, None, None] + idx1 + idx2 + idx3]  # (T, 4, 4, 4)
                e = torch.einsum("tabc,ta,tb,tc->t", cc, b1, b2, b3) * (in1 & in2 & in3)
                energies = energies.index_add(0, ci, e)
        return energies

    # ----------------------------------------------------------------- compiled path
    def __getstate__(self):
        # copies and pickles leave the cached flat arrays behind: the copy's buffers have their
        # own storage, so its key would miss anyway; it builds its own on first use
        state = dict(super().__getstate__())
        state.pop("_core_cache", None)
        return state

    def core_parameters(self) -> dict[str, Any]:
        """The model in the compiled serving core's flat layout (``_ext/mff_core.hpp``): a dict
        holding exactly the fields of its ``Params``: ``n_species``; ``table2`` (n2, 4, 4),
        ``n2``, ``h2``, ``coef2`` (S, S, n2 + 3), ``rc2``; ``table3`` (n3, 4, 4), ``n3``,
        ``h3``, ``table3jk`` (n3jk, 4, 4), ``n3jk``, ``h3jk``, ``coef3`` (S, S, S, n3 + 3,
        n3 + 3, n3jk + 3), ``rc3``, ``jk_max`` (without a 3-body term: the arrays None, the
        counts and cutoffs 0); ``e0`` (S,). Arrays are read-only C-contiguous float64 copies,
        built once and rebuilt when a coefficient or e0 changes (training, loading: the key
        holds each buffer's storage and version counter)."""
        bufs = (self.coef2, self.coef3, self.e0)
        key = tuple((b.data_ptr(), b._version, b.dtype) for b in bufs)
        cached = getattr(self, "_core_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]

        def f64(t):
            a = np.array(t.detach().cpu().numpy(), dtype=np.float64, order="C")  # a copy, never a view
            a.setflags(write=False)
            return a

        def table(grid):
            t = np.array(grid.table(), dtype=np.float64, order="C")
            t.setflags(write=False)
            return t

        params: dict[str, Any] = {"n_species": len(self.species), "table2": table(self.grid2), "n2": self.grid2.n,
                                  "h2": self.grid2.h, "coef2": f64(self.coef2), "rc2": self.rc2}
        if self.has3:
            params.update(table3=table(self.grid3), n3=self.grid3.n, h3=self.grid3.h, table3jk=table(self.grid3jk),
                          n3jk=self.grid3jk.n, h3jk=self.grid3jk.h, coef3=f64(self.coef3), rc3=self.rc3,
                          jk_max=self.jk_max())
        else:
            params.update(table3=None, n3=0, h3=1.0, table3jk=None, n3jk=0, h3jk=1.0, coef3=None, rc3=0.0,
                          jk_max=0.0)
        params["e0"] = f64(self.e0)
        self._core_cache = (key, params)
        return params

    @torch.no_grad()
    def analytic(self, graph: Graph, forces: bool, stress: bool, n_energy_atoms: int | None = None) -> ModelOutput:
        """Serving path (CPU): the compiled spline core (``_ext/mff_core.hpp``) gives per-atom
        energies (e0 included), forces and per-atom virials in one pass over each centre's pairs
        and triangles, from float64 pair vectors; the same numbers as autograd through
        :meth:`forward` (~1e-14 relative on the shipped potentials), which stays the path for
        Hessians and GPUs.

        ``n_energy_atoms``: only atoms ``0 .. n_energy_atoms-1`` have energies (the others, a
        domain-decomposed host's ghost atoms, get 0 and are only neighbours): forces and virial
        are the derivatives of their sum."""
        s, n_energy = core_inputs(self, graph, n_energy_atoms)
        i, j = graph.edge_index
        # the pair vectors with torch on this thread alone: a memory-bound gather that two
        # threads hardly speed up, whose parallel region can wait for a core another process
        # holds (Ni MD, 2,916 atoms, 2 threads on a shared 2-core machine with OpenMP's idle
        # threads spinning, torch imported before ase_mlff: the step took twice as long); the
        # core's own threads follow
        with serial_torch():
            vec = graph.edge_vectors(torch.float64).numpy()
        e, f, w = _ext._core.mff_compute(s.numpy(), i.numpy(), j.numpy(), vec, n_energy, forces, stress,
                                         self.n_threads, **self.core_parameters())
        # atoms from n_energy_atoms on have energy 0 from the core (never evaluated)
        return core_output(graph, e, f, w, energies_dtype=graph.dtype)

    # ----------------------------------------------------------------- tabulated functions
    def pair_energy(self, r, a: int = 0, b: int = 0) -> np.ndarray:
        """V2[a, b](r) for species indices a, b (numpy)."""
        return self.grid2.design(np.asarray(r, dtype=float)) @ self.coef2[a, b].detach().cpu().numpy()

    def triplet_energy(self, rij, rik, rjk, a: int = 0, b: int = 0, c: int = 0) -> np.ndarray:
        """V3[a, b, c](r_ij, r_ik, r_jk) (numpy, broadcast over equal-length arrays)."""
        if not self.has3:
            return np.zeros(np.shape(rij))
        b1 = self.grid3.design(np.ravel(rij))
        b2 = self.grid3.design(np.ravel(rik))
        b3 = self.grid3jk.design(np.ravel(rjk))
        c = self.coef3[a, b, c].detach().cpu().numpy()
        return np.einsum("xa,xb,xc,abc->x", b1, b2, b3, c).reshape(np.shape(rij))
