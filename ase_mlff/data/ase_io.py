"""Reader of every format :func:`ase.io.read` knows (extxyz, ...): :func:`ase_mlff.data.read` of any
file that is neither ``.npz`` nor ``.db``. Labels are found by :meth:`Dataset.from_atoms`
(:mod:`ase_mlff.data.labels`). Units eV/Å unless given."""

from __future__ import annotations

from ..errors import DatasetError
from .dataset import Dataset
from .index import parse_index


def read_ase(path, index, fmt, energy_unit, length_unit, require_energy, require_forces, **keys) -> Dataset:
    """The frames ``index`` of the file ``path`` (arguments as :func:`ase_mlff.data.read`)."""
    import ase.io

    idx = parse_index(index)
    try:
        images = ase.io.read(path, index=idx, format=fmt)
    except DatasetError:
        raise
    except Exception as err:  # UnknownFileTypeError, parse errors, ...
        raise DatasetError(
            f"cannot read {path!r}" + (f" as format {fmt!r}" if fmt else "")
            + f" with ase.io.read: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise DatasetError(f"{path!r}: no structures found (empty dataset)")
    ds = Dataset.from_atoms(
        images,
        require_energy=require_energy,
        require_forces=require_forces,
        energy_unit=energy_unit,
        length_unit=length_unit,
        source=path,
        format=fmt or "ase",
        **keys,
    )
    return ds
