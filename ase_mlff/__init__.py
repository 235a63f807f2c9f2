"""ase-mlff: trained machine-learned force fields as fast, trustworthy ASE calculators.

>>> import ase_mlff
>>> calc = ase_mlff.load("potentials/ethanol_sgdml.mlff")   # doctest: +SKIP
>>> atoms.calc = calc                                        # doctest: +SKIP
"""

from ._version import __version__
from .calculator import MLFFCalculator
from .errors import DatasetError, InputError, MLFFError, ModelFileError, OutputExistsError, TrainingError
from .neighbors import NeighborList, neighbor_list


def load(path, **calculator_options) -> MLFFCalculator:
    """Load a model file and return a ready :class:`MLFFCalculator`.

    ``calculator_options`` go to the calculator (device, dtype, skin, uncertainty, ...).
    """
    from .io import load_model

    return MLFFCalculator(load_model(path), **calculator_options)


__all__ = [
    "__version__", "load", "MLFFCalculator", "NeighborList", "neighbor_list",
    "MLFFError", "InputError", "ModelFileError", "DatasetError", "TrainingError", "OutputExistsError",
]
