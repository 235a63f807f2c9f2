"""MD walkers of the learning loop: state, Maxwell-Boltzmann momenta, the Berendsen barostat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._common import GPA
from .settings import BAROSTAT_MODULUS_GPA, BAROSTAT_TAU_FS


# ----------------------------------------------------------------------------- walkers
@dataclass
class Walker:
    start: int
    t_index: int
    step: int
    rng: np.random.Generator
    atoms: Any  # ase.Atoms with momenta
    restarts: int = 0


def thermalise(atoms, temperature: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` (K) from ``rng``, zero total momentum."""
    from ase.units import kB

    m = atoms.get_masses()[:, None]
    p = rng.standard_normal((len(atoms), 3)) * np.sqrt(m * kB * temperature)
    if len(atoms) > 1:
        p -= m * (p.sum(0) / m.sum())
    atoms.set_momenta(p)


def berendsen(atoms, pressure_gpa: float, timestep: float) -> None:
    """Rescale a periodic cell and the positions towards ``pressure_gpa`` (Berendsen)."""
    if not all(atoms.pbc):
        return
    stress = atoms.get_stress(include_ideal_gas=True)
    p_now = -float(np.mean(stress[:3]))
    beta = 1.0 / (BAROSTAT_MODULUS_GPA * GPA)
    mu = (1.0 - beta * timestep / BAROSTAT_TAU_FS * (pressure_gpa * GPA - p_now)) ** (1.0 / 3.0)
    mu = float(np.clip(mu, 0.99, 1.01))
    atoms.set_cell(np.asarray(atoms.cell) * mu, scale_atoms=True)
