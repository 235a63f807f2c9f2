"""Training data: labelled structures (frames), datasets, readers, splits and statistics.

Internal units are always eV (energies), Å (lengths), eV/Å (forces) and eV/Å^3 (stress, ASE Voigt order
``xx, yy, zz, yz, xz, xy``, ASE sign: positive = tensile).  Readers convert on input and record the
units of the source in the :class:`Dataset` metadata.

Supported inputs (:func:`read`):

* ``.npz``: MD17 / rMD17 / sGDML style arrays (``R``/``z``/``E``/``F`` or
  ``coords``/``nuclear_charges``/``energies``/``forces``; optional ``lattice``, ``e_unit``, ``r_unit``).
  A file without unit keys needs an explicit ``energy_unit`` (MD17/rMD17 files are in kcal/mol).
* ``.db``: ASE database (labels from the stored calculator results, key-value pairs or ``data``).
* anything else: :func:`ase.io.read` (extxyz and every other format ASE knows).

Label names and required labels: ``read(..., energy_key=, forces_key=, stress_key=,
require_forces=)`` in Python. The ``train`` commands set the same for every file they read
(training data, ``--test``, ``--calibration-data``) with ``--energy-key``, ``--forces-key``,
``--stress-key`` and ``--allow-missing-forces``, through :func:`label_options`; errors name
the keyword, and :func:`command_line_message` turns them into those flags.

One idea per module (every public name is importable from ``ase_mlff.data``):

* :mod:`~ase_mlff.data.frame`: :class:`Frame`, one labelled structure, and the bytes its hash reads;
* :mod:`~ase_mlff.data.labels`: label names (:data:`ENERGY_KEYS` ...), :func:`label_options`,
  :func:`command_line_message`, and the search for a structure's labels;
* :mod:`~ase_mlff.data.dataset`: :class:`Dataset`, frames with provenance and a content hash;
* :mod:`~ase_mlff.data.splits`: :class:`Split` and :func:`stratified_indices`;
* :mod:`~ase_mlff.data.statistics`: :class:`DatasetStatistics` and the printed summary;
* :mod:`~ase_mlff.data.index`: :func:`parse_index` / :func:`apply_index`, the ``index`` argument;
* :mod:`~ase_mlff.data.reader`: :func:`read`, which hands a file to the reader of its format
  family: :mod:`~ase_mlff.data.npz`, :mod:`~ase_mlff.data.ase_db`, :mod:`~ase_mlff.data.ase_io`.
"""

from ..errors import DatasetError  # noqa: F401  (the readers' exception, as before the package)
from .dataset import Dataset
from .frame import Frame
from .index import apply_index, parse_index  # noqa: F401
from .labels import (  # noqa: F401
    COMMAND_LINE_FLAGS,
    ENERGY_KEYS,
    FORCES_KEYS,
    STRESS_KEYS,
    VIRIAL_KEYS,
    command_line_message,
    label_options,
)
from .reader import read
from .splits import Split, stratified_indices  # noqa: F401
from .statistics import DatasetStatistics

__all__ = [
    "Frame",
    "Dataset",
    "Split",
    "DatasetStatistics",
    "read",
    "ENERGY_KEYS",
    "FORCES_KEYS",
    "STRESS_KEYS",
    "VIRIAL_KEYS",
]
