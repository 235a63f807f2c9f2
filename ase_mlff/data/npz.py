"""Reader of MD17 / rMD17 / sGDML style ``.npz`` files (:func:`ase_mlff.data.read` of a ``.npz``).

Arrays, under any of the names of :data:`NPZ_ALIASES`: positions ``R`` (frames, atoms, 3),
atomic numbers ``z`` (atoms,) or (frames, atoms), energies ``E`` (frames,), forces ``F``
(frames, atoms, 3); optional ``lattice`` (3, 3) (periodic in all three directions), stress or
virial under an explicit key, and the units ``e_unit`` / ``r_unit``. A file without ``e_unit``
needs an explicit ``energy_unit`` (MD17/rMD17 files are in kcal/mol): energy units are never
guessed. Lengths default to Å. Files are opened without pickle.
"""

from __future__ import annotations

import numpy as np

from ..errors import DatasetError
from ..units import canonical_energy_unit, canonical_length_unit, energy_factor, length_factor
from .dataset import Dataset
from .frame import Frame, voigt_from_any
from .index import apply_index
from .labels import MISSING_ENERGY_HINT, MISSING_FORCES_HINT


#: the names each array is looked for under, in this order (MD17 / rMD17 / sGDML spellings)
NPZ_ALIASES = {
    "R": ("R", "coords", "positions"),
    "z": ("z", "nuclear_charges", "numbers", "Z"),
    "E": ("E", "energies", "energy"),
    "F": ("F", "forces"),
}


def _npz_unit(d, key):
    """The unit string stored under ``key`` (None when absent, not a string, or a placeholder)."""
    if key not in d:
        return None
    v = np.asarray(d[key])
    if v.dtype.kind not in "US" or v.size != 1:
        return None
    s = str(v.reshape(()).item()).strip()
    return None if s.lower() in ("", "n/a", "na", "none", "unknown") else s


def read_npz(path, index, energy_unit, length_unit, require_energy, require_forces,
             energy_key=None, forces_key=None, stress_key=None, virial_key=None) -> Dataset:
    """The frames ``index`` of the npz file ``path`` (arguments as :func:`ase_mlff.data.read`)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except ValueError as err:
        raise DatasetError(
            f"cannot read {path!r} as npz without pickle (object arrays are refused for safety): {err}"
        ) from err
    except Exception as err:
        raise DatasetError(f"cannot read {path!r} as npz: {type(err).__name__}: {err}") from err

    def find(role, explicit=None):
        if explicit is not None:
            if explicit not in d:
                raise DatasetError(f"{path!r}: key {explicit!r} not found; keys are {sorted(d)}")
            return explicit
        for k in NPZ_ALIASES[role]:
            if k in d:
                return k
        return None

    rk, zk = find("R"), find("z")
    if rk is None or zk is None:
        raise DatasetError(
            f"{path!r}: not an MD17/sGDML-style npz: need positions (R or coords) and atomic numbers "
            f"(z or nuclear_charges); keys are {sorted(d)}"
        )
    ek, fk = find("E", energy_key), find("F", forces_key)
    sk = find("S", stress_key) if stress_key is not None else None
    vk = find("V", virial_key) if virial_key is not None else None

    # ---- units (never guessed for energies)
    file_eu, file_ru = _npz_unit(d, "e_unit"), _npz_unit(d, "r_unit")
    if file_eu is not None:
        eu = canonical_energy_unit(file_eu)
        if energy_unit is not None and canonical_energy_unit(energy_unit) != eu:
            raise DatasetError(
                f"{path!r} declares e_unit={file_eu!r} but energy_unit={energy_unit!r} was given; "
                "remove the argument or fix the file"
            )
    elif energy_unit is not None:
        eu = canonical_energy_unit(energy_unit)
    elif ek is None and fk is None:
        eu = "eV"  # no energy-like labels at all: nothing to convert
    else:
        raise DatasetError(
            f"{path!r} does not state its energy unit (no 'e_unit' key); pass energy_unit=... explicitly. "
            "MD17/rMD17 npz files are in kcal/mol (energies) and kcal/mol/Ang (forces): use "
            "energy_unit='kcal/mol'. Units are never guessed."
        )
    if file_ru is not None:
        lu = canonical_length_unit(file_ru)
        if length_unit is not None and canonical_length_unit(length_unit) != lu:
            raise DatasetError(
                f"{path!r} declares r_unit={file_ru!r} but length_unit={length_unit!r} was given; "
                "remove the argument or fix the file"
            )
    else:
        lu = canonical_length_unit(length_unit or "Ang")  # MD17/sGDML convention
    ef, lf = energy_factor(eu), length_factor(lu)

    # ---- shapes
    R = np.asarray(d[rk])
    if R.dtype.kind not in "fiu":
        raise DatasetError(f"{path!r}: positions {rk!r} are not numeric (dtype {R.dtype})")
    if R.ndim == 2 and R.shape[1] == 3:
        R = R[None]
    if R.ndim != 3 or R.shape[2] != 3:
        raise DatasetError(f"{path!r}: positions {rk!r} have shape {R.shape}, expected (frames, atoms, 3)")
    m, n = R.shape[:2]
    if m == 0:
        raise DatasetError(f"{path!r}: no frames (empty dataset)")
    Z = np.asarray(d[zk])
    if Z.ndim == 1:
        if Z.shape[0] != n:
            raise DatasetError(f"{path!r}: {zk!r} has {Z.shape[0]} atoms but {rk!r} has {n} atoms per frame")
        Z = np.broadcast_to(Z, (m, n))
    elif Z.shape != (m, n):
        raise DatasetError(f"{path!r}: {zk!r} has shape {Z.shape}, expected ({n},) or ({m}, {n})")

    def frames_check(key, arr):
        if arr.shape[0] != m:
            raise DatasetError(
                f"{path!r}: mismatched frame counts: {key!r} has {arr.shape[0]} frames but {rk!r} has {m}"
            )

    E = F = S = V = None
    if ek is not None:
        E = np.asarray(d[ek], dtype=float)
        if E.ndim == 0:
            E = E.reshape(1)
        if E.ndim == 2 and E.shape[1] == 1:
            E = E[:, 0]
        if E.ndim != 1:
            raise DatasetError(f"{path!r}: energies {ek!r} have shape {E.shape}, expected ({m},) or ({m}, 1)")
        frames_check(ek, E)
    elif require_energy:
        raise DatasetError(
            f"{path!r}: missing energies (no key E or energies; keys are {sorted(d)}); "
            + MISSING_ENERGY_HINT
        )
    if fk is not None:
        F = np.asarray(d[fk], dtype=float)
        if F.ndim == 2 and m == 1:
            F = F[None]
        if F.ndim != 3:
            raise DatasetError(f"{path!r}: forces {fk!r} have shape {F.shape}, expected ({m}, {n}, 3)")
        frames_check(fk, F)
        if F.shape != R.shape:
            raise DatasetError(
                f"{path!r}: forces {fk!r} have shape {F.shape} but positions {rk!r} have shape {R.shape}"
            )
    elif require_forces:
        raise DatasetError(
            f"{path!r}: missing forces (no key F or forces; keys are {sorted(d)}); "
            + MISSING_FORCES_HINT
        )
    for key, ref in ((sk, "S"), (vk, "V")):
        if key is None:
            continue
        a = np.asarray(d[key], dtype=float)
        frames_check(key, a)
        if ref == "S":
            S = a
        else:
            V = a

    cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    if "lattice" in d:
        lat = np.asarray(d["lattice"], dtype=float)
        if lat.shape != (3, 3):
            raise DatasetError(f"{path!r}: 'lattice' has shape {lat.shape}, expected (3, 3)")
        cell, pbc = lat * lf, np.ones(3, dtype=bool)

    sel = apply_index(m, index, path)
    frames = []
    for i in sel:
        tag = f"{path!r}, frame {int(i)}"
        try:
            stress = None
            if S is not None:
                stress = voigt_from_any(S[i], f"stress ({sk})") * (ef / lf**3)
            elif V is not None:
                vol = abs(np.linalg.det(cell))
                if not vol > 1e-12:
                    raise DatasetError(f"virial ({vk}) given but there is no 'lattice' (cell volume 0)")
                stress = -voigt_from_any(V[i], f"virial ({vk})") * ef / vol
            fr = Frame(
                numbers=Z[i],
                positions=R[i] * lf,
                cell=cell,
                pbc=pbc,
                energy=None if E is None else E[i] * ef,
                forces=None if F is None else F[i] * (ef / lf),
                stress=stress,
            )
        except DatasetError as err:
            raise DatasetError(f"{tag}: {err}") from None
        frames.append(fr.validate(tag))
    meta = {"label_keys": {"positions": rk, "numbers": zk, "energy": ek, "forces": fk,
                           "stress": sk or (f"{vk} (stress = -virial/volume)" if vk else None)},
            "npz_indices": sel.tolist()}
    for k, v in d.items():  # small integer side arrays (e.g. 'split', 'old_indices') are kept for reference
        if k not in (rk, zk, ek, fk, sk, vk) and v.dtype.kind in "iub" and v.shape == (m,):
            meta[f"npz:{k}"] = v[sel].tolist()
    return Dataset(frames, source=path, source_energy_unit=eu, source_length_unit=lu, format="npz",
                   metadata=meta, validate=False)
