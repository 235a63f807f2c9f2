"""A small analytic many-body potential used ONLY by the tests (never shipped as a feature).

E = sum_i [ 1/2 sum_j phi_ij(r_ij) + F(rho_i) + c3 sum_{j != k} fc(r_ij) fc(r_ik) cos(theta_jik) ]
with a Morse pair term, an EAM-like embedding F(rho) = -sqrt(1 + rho) and an angular
3-body term, all with a smooth cosine cutoff. Species-dependent so that permutation and
multi-element paths are exercised.
"""

import math

import torch

from ase_mlff.models.base import Model, register_model


def cosine_cutoff(r, rc):
    return torch.where(r < rc, 0.5 * (torch.cos(math.pi * r / rc) + 1.0), torch.zeros_like(r))


@register_model
class AnalyticTestPotential(Model):
    family = "test_analytic"

    def __init__(self, species=(29,), cutoff=4.5, r0=2.5, three_body=0.05, **config):
        super().__init__(species, cutoff, {"r0": r0, "three_body": three_body, **config})
        n = len(self.species)
        # per-species strengths, deterministic and distinct
        self.depth = torch.nn.Parameter(torch.linspace(0.3, 0.5, n, dtype=torch.float64))
        self.rho_scale = torch.nn.Parameter(torch.linspace(1.0, 1.5, n, dtype=torch.float64))
        self.r0 = r0
        self.c3 = three_body

    def forward(self, graph):
        i, j = graph.edge_index
        vec = graph.edge_vectors()
        r = torch.linalg.norm(vec, dim=1)
        s = self.species_index(graph.numbers)
        fc = cosine_cutoff(r, self.cutoff)
        depth = torch.sqrt(self.depth[s[i]] * self.depth[s[j]])
        x = torch.exp(-1.5 * (r - self.r0))
        phi = depth * (x * x - 2.0 * x) * fc
        e = torch.zeros(graph.n_atoms, dtype=vec.dtype, device=vec.device)
        e = e.index_add(0, i, 0.5 * phi)
        rho = torch.zeros_like(e).index_add(0, i, self.rho_scale[s[j]] * torch.exp(-r) * fc)
        e = e - torch.sqrt(1.0 + rho)
        if self.c3 and len(i) > 1:
            same = (i[:, None] == i[None, :]) & ~torch.eye(len(i), dtype=torch.bool, device=i.device)
            a, b = torch.nonzero(same, as_tuple=True)
            cos = (vec[a] * vec[b]).sum(1) / (r[a] * r[b])
            e = e.index_add(0, i[a], self.c3 * fc[a] * fc[b] * cos)
        return e
