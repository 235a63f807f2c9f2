"""Small shims over ase versions (ase >= 3.25 is supported)."""

from __future__ import annotations

import numpy as np


def thermalize(atoms, temperature_K: float, rng: np.random.Generator | None = None) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` (ase's thermalize_momenta where it exists)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ase < 3.27
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    else:
        thermalize_momenta(atoms, temperature_K, rng=rng)
