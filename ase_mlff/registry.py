"""Where model families come from: the package's own modules, and other installed distributions
that declare entry points.

A family lives in three places: its model class (registered with
:func:`ase_mlff.models.base.register_model`), its training recipe (``OPTIONS``, ``train``,
``configure_parser``, ``run``; see :mod:`ase_mlff.training`) and its conformance example. Inside
ase-mlff they are ``ase_mlff/models/<family>.py``, ``ase_mlff/training/<family>_train.py`` and
an entry of ``tests/conformance_examples.py``. A family kept in a package of its own declares
the same pieces as entry points, and ase-mlff finds them without any edit of its own files::

    # pyproject.toml of the package "ase-mlff-toy"
    [project.entry-points."ase_mlff.models"]
    toy = "ase_mlff_toy.model"            # a module that registers the model class on import
    [project.entry-points."ase_mlff.recipes"]
    toy = "ase_mlff_toy.recipe"           # the recipe module: ``ase-mlff train toy``
    [project.entry-points."ase_mlff.conformance_examples"]
    toy = "ase_mlff_toy.example:example"  # a function returning the conformance Example

Installed like that, ``ase_mlff.load`` reads the family's model files, ``ase-mlff train toy``
trains it, and ``pytest tests/test_conformance.py`` checks it with every other family.

Only installed code is imported: a model file names its family, and the family's code comes
from what is installed under that name, never from the file. A plugin that fails to import is
reported (a warning naming the distribution's entry point and the error) and left out; the
package's own families are unaffected.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata

#: entry-point groups: model modules, recipe modules, conformance-example functions
MODELS, RECIPES, CONFORMANCE_EXAMPLES = "ase_mlff.models", "ase_mlff.recipes", "ase_mlff.conformance_examples"

_imported: set[str] = set()


@functools.lru_cache(maxsize=None)
def _scan(group: str) -> tuple:
    # reading every installed distribution's metadata is slow (tens of ms): once per group and process
    return tuple(metadata.entry_points(group=group))


def entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """The installed entry points of ``group`` by name (the first one found for a repeated name;
    read once per process)."""
    out: dict[str, metadata.EntryPoint] = {}
    for ep in _scan(group):
        out.setdefault(ep.name, ep)
    return out


def _describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value!r} (group {ep.group}{where})"


def import_model_plugins() -> None:
    """Import every module of the ``ase_mlff.models`` group once (each registers its family).
    A module that fails to import is reported and skipped."""
    from ._warn import warn

    for ep in entry_points(MODELS).values():
        if ep.value in _imported:
            continue
        _imported.add(ep.value)
        try:
            importlib.import_module(ep.value)
        except Exception as exc:  # a broken plugin must not take the package's families down with it
            warn(f"model family plugin not loaded: {_describe(ep)} failed to import "
                 f"({type(exc).__name__}: {exc})")


def recipe_modules() -> dict[str, str]:
    """family -> module name of the recipes other distributions declare (``ase_mlff.recipes``)."""
    return {name: ep.value for name, ep in entry_points(RECIPES).items()}


def conformance_examples() -> dict:
    """family -> callable building its conformance example, from ``ase_mlff.conformance_examples``
    (loaded when called, so that a broken plugin fails its own tests only)."""
    return {name: (lambda ep=ep: ep.load()()) for name, ep in entry_points(CONFORMANCE_EXAMPLES).items()}
