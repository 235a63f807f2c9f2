"""Training: one shape for every family.

``ase_mlff.train(family, data, **options) -> (model, record)`` finds the family's recipe by
name, the module ``ase_mlff.training.<family>_train``, and calls its ``train(data, **options)``;
``record`` is the ``training`` dict the model file gets (:func:`ase_mlff.io.save_model`).
A recipe module provides:

- ``OPTIONS``: its :class:`~ase_mlff.training.common.Option` table (keywords, flags, config keys);
- ``train(data, progress=None, **options) -> (model, record)``;
- ``configure_parser(parser)`` and ``run(args)``: the ``ase-mlff train <family>`` command, a thin
  layer over ``train`` (flags, ``--config file.yaml``, model file, exit status).
- optionally ``COMMITTEE``, its committee hook (:class:`~ase_mlff.training.committee.CommitteeHook`),
  which gives ``ase-mlff train <family>`` its ``--committee`` option; or ``NO_COMMITTEE``, why it
  has none.

So a new family adds its recipe file and nothing here: the registry is the module name. A
family in a distribution of its own declares its recipe module as an ``ase_mlff.recipes`` entry
point instead (:mod:`ase_mlff.registry`).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..registry import recipe_modules as recipe_plugins

_SUFFIX = "_train"


def recipe_modules() -> dict[str, str]:
    """family -> module name of every training recipe in this installation: the package's own
    ``<family>_train`` modules, then those other distributions declare (which cannot replace one
    of the package's)."""
    own = {m.name[: -len(_SUFFIX)]: f"{__name__}.{m.name}"
           for m in pkgutil.iter_modules(__path__) if m.name.endswith(_SUFFIX)}
    return {**recipe_plugins(), **own}


def families() -> list[str]:
    """Names of the families that have a training recipe in this installation."""
    return sorted(recipe_modules())


def recipe(family: str):
    """The recipe module of ``family`` (ValueError naming the known families otherwise)."""
    modules = recipe_modules()
    if family not in modules:
        raise ValueError(f"no training recipe for family {family!r} (known: {', '.join(sorted(modules))})")
    return importlib.import_module(modules[family])


def train(family: str, data, **options):
    """Train a model of ``family`` on ``data`` (a Dataset or a path); returns ``(model, record)``.

    >>> model, record = ase_mlff.train("sgdml", ds, n_train=200, n_valid=100)   # doctest: +SKIP
    >>> ase_mlff.io.save_model(model, "m.mlff", training=record)                   # doctest: +SKIP
    """
    return recipe(family).train(data, **options)


def train_sgdml(*args, **kwargs):
    """See :func:`ase_mlff.training.sgdml_train.train_sgdml`."""
    from .sgdml_train import train_sgdml as _train

    return _train(*args, **kwargs)


__all__ = ["train", "families", "recipe", "recipe_modules", "train_sgdml"]
