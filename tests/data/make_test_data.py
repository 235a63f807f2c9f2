"""Regenerate the small test data files in this folder from the public reference data sets.

Usage (from the repository root, with the data sets of docs/datasets.md in the data folder,
``$ASE_MLFF_DATA`` or ``data/``)::

    python tests/data/make_test_data.py [path/to/data]

The extxyz frames are copied as raw text (byte-identical lines of the upstream conversion), except for
``si_virial_mlearn.extxyz`` whose comment line is rewritten (see README.md in this folder).
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

RMD17_TRAIN, RMD17_TEST = 200, 100
NI_FRAMES = [0, 4, 7, 8, 9, 12, 18, 80, 150, 220, 285, 286, 310, 340, 370, 393, 394, 410, 420, 429]
MO_FRAMES = [0, 10, 21, 80, 128, 129, 130, 134, 138, 192]
SI_FRAMES = [0, 57, 69, 159]
SI_GAP_FRAMES = [1, 9, 17, 33, 63, 64, 65, 67, 68, 70, 100, 130, 150, 160, 180, 200]


def raw_frames(path):
    """List of frames, each the list of its raw text lines (count, comment, atoms)."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    frames, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        n = int(lines[i])
        frames.append(lines[i : i + n + 2])
        i += n + 2
    return frames


def write_raw(path, frames, picks):
    with open(path, "w") as fh:
        for k in picks:
            fh.write("\n".join(frames[k]) + "\n")


def make_rmd17(shared):
    src = os.path.join(shared, "rmd17")
    tr = np.load(os.path.join(src, "rmd17_ethanol_train_01.npz"))
    te = np.load(os.path.join(src, "rmd17_ethanol_test_01.npz"))
    assert np.array_equal(tr["nuclear_charges"], te["nuclear_charges"])
    out = {"nuclear_charges": tr["nuclear_charges"]}
    for key in ("coords", "energies", "forces", "old_indices"):
        out[key] = np.concatenate([tr[key][:RMD17_TRAIN], te[key][:RMD17_TEST]])
    out["split"] = np.concatenate([np.zeros(RMD17_TRAIN, np.int64), np.ones(RMD17_TEST, np.int64)])
    np.savez_compressed(os.path.join(HERE, "rmd17_ethanol_300.npz"), **out)


def make_si_virial(shared):
    """mlearn Si frames rewritten in the libAtoms/GAP style: forces as `dft_force`, `virial` (eV)."""
    import ase.io

    src = os.path.join(shared, "mlearn_pbe", "Si_train.extxyz")
    raw = raw_frames(src)
    atoms = ase.io.read(src, ":")
    out = []
    for k in SI_FRAMES:
        a = atoms[k]
        assert raw[k][1].count("Properties=species:S:1:pos:R:3:forces:R:3") == 1
        s = a.get_stress(voigt=False)  # eV/Å^3, ASE sign
        virial = -s * a.get_volume()  # eV, libAtoms convention
        lat = " ".join(repr(float(x)) for x in a.cell.array.ravel())
        vir = " ".join(repr(float(x)) for x in virial.ravel())
        comment = (
            f'Lattice="{lat}" Properties=species:S:1:pos:R:3:dft_force:R:3 '
            f'energy={float(a.get_potential_energy())!r} virial="{vir}" '
            f'config_type={a.info["config_type"]} mlearn_index={k} pbc="T T T"'
        )
        out.append([raw[k][0], comment] + raw[k][2:])
    with open(os.path.join(HERE, "si_virial_mlearn.extxyz"), "w") as fh:
        for fr in out:
            fh.write("\n".join(fr) + "\n")


def main(shared):
    make_rmd17(shared)
    write_raw(os.path.join(HERE, "ni_mlearn_20.extxyz"),
              raw_frames(os.path.join(shared, "mlearn_pbe", "Ni_train.extxyz")), NI_FRAMES)
    write_raw(os.path.join(HERE, "mo_mlearn_10.extxyz"),
              raw_frames(os.path.join(shared, "mlearn_pbe", "Mo_train.extxyz")), MO_FRAMES)
    make_si_virial(shared)
    write_raw(os.path.join(HERE, "si_mlearn_16.extxyz"),
              raw_frames(os.path.join(shared, "mlearn_pbe", "Si_train.extxyz")), SI_GAP_FRAMES)


if __name__ == "__main__":
    default = os.environ.get("ASE_MLFF_DATA") or os.path.join(HERE, "..", "..", "data")
    main(sys.argv[1] if len(sys.argv) > 1 else default)
