"""Exceptions with messages a user can act on."""


class MLFFError(Exception):
    """Base class of every error raised by ase-mlff."""


class InputError(MLFFError, ValueError):
    """The structure given to a model or a routine is unusable (NaN positions, unknown element,
    wrong atom order, overlapping atoms, singular cell, ...)."""


class ModelFileError(MLFFError, ValueError):
    """A model file is missing, truncated, corrupted, modified or of an unknown version."""


class DatasetError(MLFFError, ValueError):
    """A dataset is unusable: missing labels, mismatched shapes, unknown units."""


class TrainingError(MLFFError, RuntimeError):
    """Training failed in a way that must not be hidden (e.g. a failed factorisation)."""
