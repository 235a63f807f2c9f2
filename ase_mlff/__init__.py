"""ase-mlff: trained machine-learned force fields as fast, trustworthy ASE calculators.

>>> import ase_mlff
>>> calc = ase_mlff.load("potentials/ethanol_sgdml.mlff")   # doctest: +SKIP
>>> atoms.calc = calc                                        # doctest: +SKIP
"""

from ._version import __version__
from .calculator import MLFFCalculator
from .errors import (DatasetError, InputError, MLFFError, MLFFWarning, ModelFileError, OutputExistsError,
                     TrainingError)
from .neighbors import NeighborList, neighbor_list
from .threads import get_num_threads, num_threads, set_num_threads


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
