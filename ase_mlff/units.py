"""Energy and length units used by data files, with conversion factors to eV and Å.

Every factor is "eV per unit" (energies) or "Å per unit" (lengths) and is taken from
:mod:`ase.units`, so that ase-mlff and ASE always agree.  Unit names are matched
case-insensitively and with surrounding whitespace ignored; a small set of common aliases
is accepted for each unit (``Ha``/``hartree``/``au`` for Hartree, ``Å``/``angstrom`` for Å ...).

    energy_factor("kcal/mol")        # 0.0433641... eV per kcal/mol
    canonical_length_unit("bohr")    # 'Bohr'
"""

from __future__ import annotations

from ase import units as _u

from .errors import DatasetError

__all__ = [
    "ENERGY_UNITS",
    "LENGTH_UNITS",
    "energy_factor",
    "length_factor",
    "canonical_energy_unit",
    "canonical_length_unit",
    "known_energy_units",
    "known_length_units",
]

#: canonical energy unit name -> eV per unit
ENERGY_UNITS: dict[str, float] = {
    "eV": _u.eV,
    "meV": 1e-3 * _u.eV,
    "kcal/mol": _u.kcal / _u.mol,
    "kJ/mol": _u.kJ / _u.mol,
    "Hartree": _u.Hartree,
    "Ry": _u.Ry,
}

#: canonical length unit name -> Å per unit
LENGTH_UNITS: dict[str, float] = {
    "Ang": _u.Angstrom,
    "Bohr": _u.Bohr,
    "nm": _u.nm,
}

# aliases (compared after .strip().lower()); the canonical names are added automatically
_ENERGY_ALIASES: dict[str, tuple[str, ...]] = {
    "eV": ("ev", "electronvolt", "electronvolts", "electron_volt"),
    "meV": ("mev", "millielectronvolt"),
    "kcal/mol": ("kcal/mol", "kcal mol-1", "kcal mol^-1", "kcal_mol", "kcal_per_mol", "kcalmol"),
    "kJ/mol": ("kj/mol", "kj mol-1", "kj mol^-1", "kj_mol", "kj_per_mol", "kjmol"),
    "Hartree": ("hartree", "ha", "au", "a.u.", "eh", "hartrees"),
    "Ry": ("ry", "rydberg", "rydbergs"),
}

_LENGTH_ALIASES: dict[str, tuple[str, ...]] = {
    "Ang": ("ang", "å", "angstrom", "angstroms", "angstroem"),
    "Bohr": ("bohr", "a0", "au", "a.u.", "bohrs"),
    "nm": ("nm", "nanometer", "nanometre", "nanometers", "nanometres"),
}


def _build_lookup(aliases: dict[str, tuple[str, ...]]) -> dict[str, str]:
    lookup: dict[str, str] = {}
    for canonical, names in aliases.items():
        for name in (canonical, *names):
            key = name.strip().lower()
            if key in lookup and lookup[key] != canonical:  # pragma: no cover - table bug
                raise RuntimeError(f"unit alias {name!r} is ambiguous")
            lookup[key] = canonical
    return lookup


_ENERGY_LOOKUP = _build_lookup(_ENERGY_ALIASES)
_LENGTH_LOOKUP = _build_lookup(_LENGTH_ALIASES)


def _normalise(name) -> str:
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace")
    if not isinstance(name, str):
        # numpy 0-d string arrays (as stored in npz files) and similar
        try:
            import numpy as np

            arr = np.asarray(name)
            if arr.ndim == 0 and arr.dtype.kind in "US":
                return _normalise(arr.item())
        except Exception:  # pragma: no cover - defensive
            pass
        raise DatasetError(f"a unit name must be a string, got {name!r} ({type(name).__name__})")
    return name.strip().lower()


def _describe(aliases: dict[str, tuple[str, ...]]) -> str:
    parts = []
    for canonical, names in aliases.items():
        extra = sorted({n for n in names if n != canonical.lower()})
        parts.append(f"{canonical} ({', '.join(extra)})" if extra else canonical)
    return "; ".join(parts)


def canonical_energy_unit(name) -> str:
    """Canonical spelling of energy unit ``name`` (e.g. ``'ha'`` -> ``'Hartree'``).

    Raises :class:`DatasetError` listing the known units when ``name`` is unknown."""
    key = _normalise(name)
    try:
        return _ENERGY_LOOKUP[key]
    except KeyError:
        raise DatasetError(
            f"unknown energy unit {name!r}; known energy units (case-insensitive, aliases in "
            f"parentheses): {_describe(_ENERGY_ALIASES)}"
        ) from None


def canonical_length_unit(name) -> str:
    """Canonical spelling of length unit ``name`` (e.g. ``'angstrom'`` -> ``'Ang'``).

    Raises :class:`DatasetError` listing the known units when ``name`` is unknown."""
    key = _normalise(name)
    try:
        return _LENGTH_LOOKUP[key]
    except KeyError:
        raise DatasetError(
            f"unknown length unit {name!r}; known length units (case-insensitive, aliases in "
            f"parentheses): {_describe(_LENGTH_ALIASES)}"
        ) from None


def energy_factor(name) -> float:
    """eV per unit of energy unit ``name`` (multiply a value in that unit to get eV)."""
    return float(ENERGY_UNITS[canonical_energy_unit(name)])


def length_factor(name) -> float:
    """Å per unit of length unit ``name`` (multiply a value in that unit to get Å)."""
    return float(LENGTH_UNITS[canonical_length_unit(name)])


def known_energy_units() -> list[str]:
    """Canonical names of the known energy units."""
    return list(ENERGY_UNITS)


def known_length_units() -> list[str]:
    """Canonical names of the known length units."""
    return list(LENGTH_UNITS)
