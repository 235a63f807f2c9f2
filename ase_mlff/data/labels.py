"""Labels: where the readers find energies, forces and stress, and which names they look for.

A structure's labels come from its calculator results first, then from ``atoms.info`` (per
structure) and ``atoms.arrays`` (per atom) under the names of :data:`ENERGY_KEYS`,
:data:`FORCES_KEYS`, :data:`STRESS_KEYS` and :data:`VIRIAL_KEYS`, unless a key is named
explicitly. A virial (eV) becomes stress = -virial / volume. Labels are converted to eV, Å,
eV/Å and eV/Å^3 with the factors the reader gives (:func:`frame_from_parts`).

The ``train`` commands choose the names for every file they read with :func:`label_options`;
:func:`command_line_message` turns the readers' keywords in an error into those commands' flags.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from ..errors import DatasetError
from .frame import Frame, voigt_from_any

#: names searched (in this order) for labels in ``atoms.info`` / ``atoms.arrays`` / db data when no
#: explicit key is given.  Calculator results (``energy``, ``forces``, ``stress``) are used first.
ENERGY_KEYS = ("energy", "dft_energy", "Energy", "DFT_energy", "REF_energy", "total_energy")
FORCES_KEYS = ("forces", "dft_force", "dft_forces", "force", "Forces", "DFT_force", "REF_forces")
STRESS_KEYS = ("stress", "dft_stress", "Stress", "REF_stress")
VIRIAL_KEYS = ("virial", "dft_virial", "Virial", "DFT_virial", "REF_virial")

#: label options of the command being run (:func:`label_options`); empty outside one
_LABEL_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("ase_mlff_label_options", default={})

#: the readers' keywords in their error messages -> what to give on a ``train`` command line
#: instead (:func:`command_line_message`)
COMMAND_LINE_FLAGS = (
    ("energy_key='NAME'", "--energy-key NAME"),
    ("forces_key='NAME'", "--forces-key NAME"),
    ("stress_key='NAME'", "--stress-key NAME"),
    ("require_forces=False", "--allow-missing-forces"),
    ("; to read frames without energies, pass require_energy=False", " (training needs every frame's energy)"),
    ("energy_unit=", "--energy-unit "),
    ("length_unit=", "--length-unit "),
)


@contextlib.contextmanager
def label_options(energy_key: str | None = None, forces_key: str | None = None,
                  stress_key: str | None = None, allow_missing_forces: bool = False):
    """Within the block, every :func:`read` that does not name a key itself looks for the labels
    under these names, and ``allow_missing_forces`` reads frames without forces instead of
    refusing them (as ``require_forces=False``). The ``train`` commands run inside one, set by
    ``--energy-key``, ``--forces-key``, ``--stress-key`` and ``--allow-missing-forces``, so that
    the options reach every file a recipe reads without each recipe passing them on."""
    token = _LABEL_OPTIONS.set({"energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key,
                                "allow_missing_forces": bool(allow_missing_forces)})
    try:
        yield
    finally:
        _LABEL_OPTIONS.reset(token)


def command_line_message(text: str) -> str:
    """An error message of the readers with their Python keywords replaced by the ``train``
    commands' flags (:data:`COMMAND_LINE_FLAGS`)."""
    for keyword, flag in COMMAND_LINE_FLAGS:
        text = text.replace(keyword, flag)
    return text


def keys_in_effect(energy_key: str | None, forces_key: str | None, stress_key: str | None,
                   require_forces: bool) -> tuple[str | None, str | None, str | None, bool]:
    """The label keys and ``require_forces`` a reader uses: those given, else those of the
    enclosing :func:`label_options` (whose ``allow_missing_forces`` lifts ``require_forces``)."""
    given = _LABEL_OPTIONS.get()
    energy_key = energy_key if energy_key is not None else given.get("energy_key")
    forces_key = forces_key if forces_key is not None else given.get("forces_key")
    stress_key = stress_key if stress_key is not None else given.get("stress_key")
    require_forces = require_forces and not given.get("allow_missing_forces", False)
    return energy_key, forces_key, stress_key, require_forces


# --------------------------------------------------------------------------------------------
# label extraction of the ase / db readers (the npz reader shares the hints)
# --------------------------------------------------------------------------------------------


def _lookup(name, calc_results, info, arrays, per_atom: bool, natoms: int):
    """Value of label ``name`` from calculator results, info or arrays (None when absent)."""
    for src, d in (("calc", calc_results), ("info", info), ("arrays", arrays)):
        if d and name in d:
            v = d[name]
            if v is None:
                continue
            if per_atom and src == "info":
                a = np.asarray(v)
                if a.ndim == 0 or a.shape[0] != natoms:
                    continue
            return f"{src}:{name}", v
    return None, None


MISSING_ENERGY_HINT = ("if the file stores the energy under another name, pass energy_key='NAME'; "
                       "to read frames without energies, pass require_energy=False")
MISSING_FORCES_HINT = ("if the file stores them under another name, pass forces_key='NAME'; "
                       "to use the frames without forces (their energies only), pass require_forces=False")


def frame_from_parts(i, where, *, numbers, positions, cell, pbc, calc_results, info, arrays,
                     keys, require, factors, used) -> Frame:
    """Frame ``i`` of ``where`` (for messages) from a structure in the units of its source and
    its label sources (calculator results, info, arrays): ``keys`` the explicit (energy, forces,
    stress, virial) keys or None, ``require`` (energy, forces), ``factors`` (energy, length) to
    eV and Å. Adds the label keys it used to the sets of ``used`` (``"energy"``, ...)."""
    energy_key, forces_key, stress_key, virial_key = keys
    require_energy, require_forces = require
    ef, lf = factors
    n = len(numbers)
    tag = f"{where}, frame {i}"

    def pick(explicit, calc_name, candidates, per_atom):
        if explicit is not None:  # explicit key: no shape filtering, a wrong shape is reported below
            return _lookup(explicit, calc_results, info, arrays, False, n)
        if calc_name is not None and calc_results and calc_results.get(calc_name) is not None:
            return f"calc:{calc_name}", calc_results[calc_name]
        for name in candidates:
            k, v = _lookup(name, None, info, arrays, per_atom, n)
            if k is not None:
                return k, v
        return None, None

    ek, e = pick(energy_key, "energy", ENERGY_KEYS, False)
    fk, f = pick(forces_key, "forces", FORCES_KEYS, True)
    if virial_key is not None:
        sk, s = None, None
        vk, v = _lookup(virial_key, calc_results, info, arrays, False, n)
    else:
        sk, s = pick(stress_key, "stress", STRESS_KEYS, False)
        vk, v = (None, None) if (sk is not None or stress_key is not None) else pick(None, None, VIRIAL_KEYS, False)

    if e is None and require_energy:
        what = f"key {energy_key!r}" if energy_key else f"calculator results or info keys {list(ENERGY_KEYS)}"
        raise DatasetError(f"{tag}: missing energy (looked in {what}); {MISSING_ENERGY_HINT}")
    if f is None and require_forces:
        what = (f"key {forces_key!r}" if forces_key
                else f"calculator results or arrays {list(FORCES_KEYS)}")
        raise DatasetError(f"{tag}: missing forces (looked in {what}); {MISSING_FORCES_HINT}")
    if stress_key is not None and s is None:
        raise DatasetError(f"{tag}: stress key {stress_key!r} not found")
    if virial_key is not None and v is None:
        raise DatasetError(f"{tag}: virial key {virial_key!r} not found")

    positions = np.asarray(positions, dtype=float) * lf
    cell = np.asarray(cell, dtype=float) * lf
    try:
        energy = None if e is None else float(np.asarray(e, dtype=float).reshape(())) * ef
    except (TypeError, ValueError):
        raise DatasetError(f"{tag}: energy ({ek}) is not a scalar number: {e!r}") from None
    forces = None
    if f is not None:
        f = np.asarray(f, dtype=float)
        if f.shape != (n, 3):
            raise DatasetError(f"{tag}: forces ({fk}) have shape {f.shape} but positions have shape ({n}, 3)")
        forces = f * (ef / lf)
    stress = None
    try:
        if s is not None:
            stress = voigt_from_any(s, f"stress ({sk})") * (ef / lf**3)
        elif v is not None:
            vol = abs(np.linalg.det(cell))
            if not vol > 1e-12:
                raise DatasetError(f"{tag}: virial ({vk}) given but the cell has zero volume")
            # virial = -stress * volume (libAtoms convention) -> ASE stress = -virial / V
            stress = -voigt_from_any(v, f"virial ({vk})") * ef / vol
            sk = f"{vk} (stress = -virial/volume)"
    except DatasetError as err:
        if str(err).startswith(tag):
            raise
        raise DatasetError(f"{tag}: {err}") from None
    for label, k in (("energy", ek), ("forces", fk), ("stress", sk)):
        if k is not None:
            used[label].add(k)
    # labels people group by (strings) and per-structure scalars (targets for fit-head, e.g. a gap)
    keep_info = {k: v for k, v in (info or {}).items()
                 if (k in ("config_type", "description", "name", "tag") and isinstance(v, str))
                 or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)))}
    try:
        fr = Frame(numbers, positions, cell, pbc, energy, forces, stress, info=keep_info)
    except DatasetError as err:
        raise DatasetError(f"{tag}: {err}") from None
    return fr.validate(tag)
