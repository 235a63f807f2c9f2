"""Training: one shape for every family.

``ase_mlff.train(family, data, **options) -> (model, record)`` finds the family's recipe by
name, the module ``ase_mlff.training.<family>_train``, and calls its ``train(data, **options)``;
``record`` is the ``training`` dict the model file gets (:func:`ase_mlff.io.save_model`).
A recipe module provides:

- ``OPTIONS``: its :class:`~ase_mlff.training.common.Option` table (keywords, flags, config keys);
- ``train(data, progress=None, **options) -> (model, record)``;
- ``configure_parser(parser)`` and ``run(args)``: the ``ase-mlff train <family>`` command, a thin
  layer over ``train`` (flags, ``--config file.yaml``, model file, exit status).

So a new family adds its recipe file and nothing here: the registry is the module name.
"""

from __future__ import annotations

import importlib
import pkgutil

_SUFFIX = "_train"


def families() -> list[str]:
    """Names of the families that have a training recipe in this installation."""
    return sorted(m.name[: -len(_SUFFIX)] for m in pkgutil.iter_modules(__path__) if m.name.endswith(_SUFFIX))


def recipe(family: str):
    """The recipe module of ``family`` (ValueError naming the known families otherwise)."""
    if family not in families():
        raise ValueError(f"no training recipe for family {family!r} (known: {', '.join(families())})")
    return importlib.import_module(f"{__name__}.{family}{_SUFFIX}")


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


__all__ = ["train", "families", "recipe", "train_sgdml"]
