"""Model families. Importing this package registers every family for :func:`ase_mlff.load`."""

from .base import MODEL_REGISTRY, Model, register_model  # noqa: F401
from . import sgdml  # noqa: F401
from . import mff  # noqa: F401
from . import committee  # noqa: F401
from . import bpnn  # noqa: F401
