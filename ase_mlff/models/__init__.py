"""Model families. Importing this package registers every family for :func:`ase_mlff.load`.

Every module of this package is imported (``pkgutil``), so a new family registers itself by
being a module here with ``@register_model``: nothing else to edit. Families of other installed
distributions are imported too, from their ``ase_mlff.models`` entry points
(:mod:`ase_mlff.registry`).
"""

import importlib
import pkgutil

from .base import MODEL_REGISTRY, Model, register_model  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from ..registry import import_model_plugins  # noqa: E402

import_model_plugins()
