"""Compiled core (built by setup.py from the .cpp files in this folder)."""
try:
    from ._core import closest_pair, filter_pairs, neighbor_list  # noqa: F401
except ImportError as exc:  # pragma: no cover - only when the build is missing
    raise ImportError(
        "ase_mlff's compiled extension is missing: install the package with "
        "`pip install .` (or `pip install -e .`) so that it is built"
    ) from exc
