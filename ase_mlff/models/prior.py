"""A declared short-range repulsion for neural-network families (BPNN, SchNet).

A network has seen no pair closer than the training data's closest one, and nothing stops it
from being attractive there: MD that strays below reaches a hole and atoms collapse onto each
other (the first water BPNN did in NVT; the first water SchNet in NVE after ~420 steps at
0.5 fs). The prior is the ZBL screened nuclear repulsion switched on below ``inner[I, J]`` (the
smallest I–J distance of the training frames) and fully on ``width`` closer, with the C² switch
``t³ (10 − 15 t + 6 t²)``, ``t = (inner − r) / width``. It is exactly zero on every training
frame, so a network trains the same with or without it; it is a hyperparameter (JSON, in the
model file's config), independent of the weights.

Units: Å, eV.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import MIN_WIDTH

#: ZBL universal screening function (Ziegler, Biersack, Littmark 1985): coefficients, exponents
_ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_D = (3.19980, 0.94229, 0.40290, 0.20162)
_COULOMB = 14.399645  # e²/(4π ε0) in eV·Å


def zbl(r: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
    """ZBL screened nuclear repulsion (eV) of nuclei ``zi``, ``zj`` at distance ``r`` (Å):
    ``k zi zj / r · φ(r/a)``, ``a = 0.46850 / (zi^0.23 + zj^0.23)`` Å."""
    a = 0.46850 / (zi ** 0.23 + zj ** 0.23)
    x = r / a
    phi = sum(c * torch.exp(-d * x) for c, d in zip(_ZBL_C, _ZBL_D))
    return _COULOMB * zi * zj / r * phi


def check_repulsion(rep, n_species: int) -> dict:
    """``{"inner": (S, S) Å, symmetric, "width": Å}``: the wall is ZBL switched on below
    ``inner`` and fully on below ``inner − width``."""
    if not isinstance(rep, dict) or set(rep) != {"inner", "width"}:
        raise ValueError("hyperparameters.repulsion must be {'inner': [[Å per element pair]], 'width': Å}")
    inner = np.asarray(rep["inner"], dtype=float)
    width = rep["width"]
    if inner.shape != (n_species, n_species) or not np.all(np.isfinite(inner)) or np.any(inner < 0) \
            or not np.allclose(inner, inner.T):
        raise ValueError("hyperparameters.repulsion.inner must be a symmetric (elements x elements) table "
                         "of distances >= 0 (Å)")
    # the switch divides by the width: at least MIN_WIDTH, so that it stays a smooth C2 ramp
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not MIN_WIDTH <= width < 100:
        raise ValueError(f"hyperparameters.repulsion.width must be a distance from {MIN_WIDTH:g} to 100 Å, "
                         f"got {width!r:.40}")
    return {"inner": inner.tolist(), "width": float(width)}


def repulsion_atom_energies(rep: dict | None, numbers: torch.Tensor, species_index: torch.Tensor,
                            i: torch.Tensor, j: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """Per-atom energies (N,) eV of the prior ``rep`` (zeros without one): half of each pair's
    ``ZBL(r) · sw(r)`` goes to each atom (the pair list is directed). Differentiable in ``vec``."""
    N = len(numbers)
    if rep is None or len(i) == 0:
        return torch.zeros(N, dtype=vec.dtype, device=vec.device)
    inner = torch.tensor(rep["inner"], dtype=vec.dtype, device=vec.device)[species_index[i], species_index[j]]
    r = torch.linalg.norm(vec, dim=1)
    near = r < inner
    if not bool(near.any()):
        return torch.zeros(N, dtype=vec.dtype, device=vec.device)
    # only the few pairs inside the wall are evaluated (most steps: none)
    r, inner = r[near], inner[near]
    zi = numbers[i[near]].to(vec.dtype)
    zj = numbers[j[near]].to(vec.dtype)
    t = ((inner - r) / float(rep["width"])).clamp(0.0, 1.0)
    sw = t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)  # 0 at inner, 1 at inner - width; C2
    e_pair = zbl(r, zi, zj) * sw
    return torch.zeros(N, dtype=vec.dtype, device=vec.device).index_add(0, i[near], 0.5 * e_pair)


def repulsion_for(frames, species: Sequence[int], cutoff: float, width: float = 0.5) -> dict:
    """The prior from the training frames: ZBL switched on below the smallest I–J distance seen
    (so it is exactly zero on every training frame and the networks fit what they did before)
    and fully on ``min(width, r0/2)`` closer."""
    from ..descriptors.acsf import smallest_distances

    r0 = smallest_distances(frames, species, cutoff)
    r0 = np.where(np.isfinite(r0), r0, 0.0)  # a pair never seen: no wall (nothing to go below)
    positive = r0[r0 > 0]
    w = min(float(width), 0.5 * float(positive.min())) if len(positive) else float(width)
    return {"inner": r0.tolist(), "width": w}
