"""Exceptions with messages a user can act on."""


class MLFFError(Exception):
    """Base class of every error raised by ase-mlff."""


class MLFFWarning(UserWarning):
    """Base class of the warnings ase-mlff issues (an MD run crossing its uncertainty limit, a
    suspicious training label, ...). They are attributed to the line of the caller's code that
    led to them, not to ase-mlff's or ASE's internals (:func:`ase_mlff._warn.warn`); the
    command line prints them as ``ase-mlff: warning: ...``. Silence them all with
    ``warnings.simplefilter("ignore", ase_mlff.MLFFWarning)``."""


class InputError(MLFFError, ValueError):
    """The structure given to a model or a routine is unusable (NaN positions, unknown element,
    wrong atom order, overlapping atoms, singular cell, ...)."""


class OutputExistsError(InputError, FileExistsError):
    """An output file a command would write exists already; nothing was written. Replacing it
    (or continuing it) must be asked for: ``--overwrite`` / ``--append`` / ``--resume``. The
    command line treats it as a usage error (exit status 2): the fix is a different command."""


class ModelFileError(MLFFError, ValueError):
    """A model file is missing, truncated, corrupted, modified or of an unknown version."""


class DatasetError(MLFFError, ValueError):
    """A dataset is unusable: missing labels, mismatched shapes, unknown units."""


class TrainingError(MLFFError, RuntimeError):
    """Training failed in a way that must not be hidden (e.g. a failed factorisation)."""
