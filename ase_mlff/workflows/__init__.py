"""Simulation workflows on top of :class:`~ase_mlff.MLFFCalculator`, as ASE users run them.

* :func:`run_md` — NVE (velocity Verlet), NVT (Langevin), NPT (MTK, isotropic or full cell)
* :func:`relax` — BFGS/FIRE, optionally with the cell (FrechetCellFilter) under pressure
* :func:`phonons` — phonopy band structure and DOS, from finite displacements or the
  analytic Hessian
* :func:`equation_of_state` — E(V) with a Birch-Murnaghan fit
* :func:`evaluate` — energy/force/stress errors on a labelled dataset, parity plot

Each is also an ``ase-mlff`` subcommand (``md``, ``relax``, ``phonons``, ``eos``, ``eval``).
Units: eV, Å, fs, K, GPa (pressures), THz (phonon frequencies).
"""

from .eos import EOSResult, equation_of_state
from .evaluate import EvalResult, evaluate
from .md import MDResult, initialize_velocities, make_integrator, run_md
from .phonons import PhononResult, band_path, hessian_force_constants, phonons
from .relax import RelaxResult, relax

__all__ = [
    "run_md", "MDResult", "initialize_velocities", "make_integrator",
    "relax", "RelaxResult",
    "phonons", "PhononResult", "band_path", "hessian_force_constants",
    "equation_of_state", "EOSResult",
    "evaluate", "EvalResult",
]
