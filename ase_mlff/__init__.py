"""ase-mlff: trained machine-learned force fields as fast, trustworthy ASE calculators.

>>> import ase_mlff
>>> calc = ase_mlff.load("potentials/ethanol_sgdml.mlff")   # doctest: +SKIP
>>> atoms.calc = calc                                        # doctest: +SKIP
"""

import os as _os
import sys as _sys

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads its OpenMP runtime,
# so only effective when ase_mlff is imported before torch; a value the user set is kept).
# Spinning workers hold a core while they wait: on a machine with any other process running,
# the thread doing the work then waits for a core, and small models became up to ~3x slower on
# two threads than on one (docs/benchmarks.md, "Threads under contention").
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    #: OMP_WAIT_POLICY as torch's OpenMP runtime reads it; None: not set when torch, imported
    #: before ase_mlff, read the environment (ase_mlff.threads.describe)
    OPENMP_WAIT_POLICY: str | None = _os.environ["OMP_WAIT_POLICY"]
else:  # torch read the environment at its import: what was set before Python started, if anything
    OPENMP_WAIT_POLICY = _os.environ.get("OMP_WAIT_POLICY")

from ._version import __version__  # noqa: E402
from .calculator import MLFFCalculator  # noqa: E402
from .errors import (DatasetError, InputError, MLFFError, MLFFWarning, ModelFileError,  # noqa: E402
                     OutputExistsError, TrainingError)
from .neighbors import NeighborList, neighbor_list  # noqa: E402
from .threads import get_num_threads, num_threads, set_num_threads  # noqa: E402


def load(path, **calculator_options) -> MLFFCalculator:
    """Load a model file and return a ready :class:`MLFFCalculator`.

    ``calculator_options`` go to the calculator (device, dtype, skin, uncertainty, ...).
    """
    from .io import load_model

    return MLFFCalculator(load_model(path), **calculator_options)


def train(family: str, data, **options):
    """Train a model of ``family`` ("sgdml", "mff", ...) on ``data`` (a Dataset or a path);
    returns ``(model, record)``, ``record`` being the training record for its model file::

        model, record = ase_mlff.train("mff", "train.extxyz", rc2=5.0, rc3=3.7, n_test=60)
        ase_mlff.io.save_model(model, "ni.mlff", training=record)

    Options: the family's flags with ``_`` for ``-`` (docs/training.md)."""
    from .training import train as _train

    return _train(family, data, **options)


__all__ = [
    "__version__", "load", "train", "MLFFCalculator", "NeighborList", "neighbor_list",
    "get_num_threads", "set_num_threads", "num_threads",
    "MLFFError", "InputError", "ModelFileError", "DatasetError", "TrainingError", "OutputExistsError",
    "MLFFWarning",
]
