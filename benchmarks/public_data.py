"""The public reference data sets the benchmarks and the shipped potentials' recipes read: what
each is, who computed it, where to download it and where to put it (docs/datasets.md has the
same table for readers).

Files are looked for in one folder per data set under ``$ASE_MLFF_DATA`` (default: ``data/``
in the repository root, which git ignores)::

    data/rmd17/rmd17_ethanol_train_01.npz           rMD17, split 01 (as downloaded)
    data/mlearn_pbe/Si_train.extxyz                  mlearn, converted by this script
    data/deepmd_water/water_deepmd_train.extxyz      DeePMD-kit water example, converted here
    data/qm9_subset/qm9_500_U0.extxyz                the first 500 QM9 molecules, U0 in eV
    data/ethanol_pbe_extrapolation/test_*.xyz        BOTNet ethanol tests (as downloaded)

A benchmark asking for a missing file stops with a message naming the data set, its source and
the path it expects (:func:`path`), never with a bare ``FileNotFoundError``.

Command line::

    python benchmarks/public_data.py                    # which data sets are present, where from
    python benchmarks/public_data.py mlearn Si mlearn/data/Si/training.json data/mlearn_pbe/Si_train.extxyz
    python benchmarks/public_data.py deepmd deepmd-kit/examples/water/data/data_{0,1,2} \\
        data/deepmd_water/water_deepmd_train.extxyz

Conversions (each writes extended XYZ with ASE's units and signs: eV, Å, eV/Å, stress in
eV/Å³ with positive = tensile):

* **mlearn** (pymatgen JSON, a list of documents with ``structure``, ``outputs.energy``,
  ``outputs.forces`` and ``outputs.virial_stress``): the stress is in kbar with VASP's sign
  (positive = compressive), and its six components come in the order ``xx yy zz xy yz xz`` for
  Si, Ge and Li but ``xx yy zz xy xz yz`` for Mo, Ni and Cu (established from the energy-stress
  consistency ``dE = V sigma : d(epsilon)`` of pairs of strained cells; mlearn does not document
  it). ASE component = -0.1 GPa/kbar x the component of the same name. The original values and
  their order are kept in ``info``.
* **deepmd** (DeePMD-kit's ``deepmd/npy`` systems: ``type.raw``, ``type_map.raw`` and
  ``set.*/{box,coord,energy,force}.npy``, eV and Å): one frame per row, in the order of the
  systems and sets given.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclass(frozen=True)
class PublicDataset:
    folder: str  # under the data root
    name: str
    reference: str  # authors, year, title, where published
    obtain: str  # where to download it and what to do with it
    licence: str


DATASETS = {
    "rmd17": PublicDataset(
        "rmd17", "rMD17 (revised MD17), split 01",
        "A. S. Christensen, O. A. von Lilienfeld, \"On the role of gradients for machine learning of molecular "
        "energies and forces\", Mach. Learn.: Sci. Technol. 1, 045018 (2020), arXiv:2007.09593; geometries from "
        "MD17: S. Chmiela et al., Sci. Adv. 3, e1603015 (2017)",
        "download the files rmd17_<molecule>_train_01.npz and rmd17_<molecule>_test_01.npz from the folder "
        "rmd17-npz/ of https://github.com/andersx/rmd17-npz (the full data set: "
        "https://doi.org/10.6084/m9.figshare.12672038) and copy them unchanged; energies are in kcal/mol "
        "(--energy-unit kcal/mol)",
        "CC0 1.0"),
    "mlearn": PublicDataset(
        "mlearn_pbe", "mlearn elemental benchmark (Si, Ge, Li, Mo, Ni, Cu; DFT PBE)",
        "Y. Zuo et al., \"Performance and Cost Assessment of Machine Learning Interatomic Potentials\", "
        "J. Phys. Chem. A 124, 731 (2020), doi:10.1021/acs.jpca.9b08723",
        "download data/<El>/training.json (and test.json) from https://github.com/materialsvirtuallab/mlearn and "
        "convert each with `python benchmarks/public_data.py mlearn <El> training.json <El>_train.extxyz`; the Ni "
        "training set is not in that repository: the copy used here is the mlearn Ni set in "
        "https://github.com/Bismarrck/tensoralloy (tensoralloy/data/datasets/snap-Ni.db, 461 rows), without the 31 "
        "rows that are mlearn's data/Ni/test.json, written to Ni_train.extxyz with ase.io after putting each "
        "row's stress (eV/Å³, ASE sign) in ASE's order: that database stores it as xx yy zz xy yz xz, ASE wants "
        "xx yy zz yz xz xy",
        "BSD-3-Clause"),
    "deepmd_water": PublicDataset(
        "deepmd_water", "liquid water, 64 H2O (DeePMD-kit example data)",
        "H. Wang, L. Zhang, J. Han, W. E, \"DeePMD-kit: A deep learning package for many-body potential energy "
        "representation and molecular dynamics\", Comput. Phys. Commun. 228, 178 (2018); the DFT functional of "
        "the example is not documented",
        "download examples/water/data/data_0, data_1 and data_2 from https://github.com/deepmodeling/deepmd-kit "
        "and convert them with `python benchmarks/public_data.py deepmd data_0 data_1 data_2 "
        "water_deepmd_train.extxyz` (320 frames)",
        "LGPL-3.0"),
    "qm9_subset": PublicDataset(
        "qm9_subset", "QM9, the first 500 molecules (B3LYP/6-31G(2df,p) U0)",
        "R. Ramakrishnan, P. O. Dral, M. Rupp, O. A. von Lilienfeld, \"Quantum chemistry structures and properties "
        "of 134 kilo molecules\", Sci. Data 1, 140022 (2014), doi:10.1038/sdata.2014.22",
        "download QM9 (https://doi.org/10.6084/m9.figshare.c.978904, or SchNetPack's QM9 loader) and write its first "
        "500 molecules to qm9_500_U0.extxyz with the internal energy U0 in eV as the energy label",
        "see the QM9 figshare record"),
    "ethanol_extrapolation": PublicDataset(
        "ethanol_pbe_extrapolation", "ethanol far from equilibrium at the rMD17 level of theory (BOTNet data)",
        "I. Batatia, S. Batzner, D. P. Kovács et al., \"The Design Space of E(3)-Equivariant Atom-Centered "
        "Interatomic Potentials\", arXiv:2205.06643 (2022)",
        "download test_H_removal.xyz, test_norm_mode_874.xyz and test_norm_mode_3005.xyz from the folder "
        "dataset_ethanol/ of https://github.com/davkovacs/BOTNet-datasets and copy them unchanged",
        "MIT"),
}


class MissingData(SystemExit):
    """A data file a benchmark needs is not there: the message says what it is and how to get it."""


def data_root() -> str:
    return os.path.abspath(os.environ.get("ASE_MLFF_DATA") or os.path.join(ROOT, "data"))


def describe(key: str) -> str:
    d = DATASETS[key]
    return (f"{d.name}. Source: {d.reference}. To get it: {d.obtain}. Licence: {d.licence}. Put the files in "
            f"{os.path.join(data_root(), d.folder)} (the folder {d.folder}/ of $ASE_MLFF_DATA, default data/ in "
            "the repository; docs/datasets.md)")


def path(key: str, *parts: str, must_exist: bool = True) -> str:
    """The path of ``parts`` in data set ``key``'s folder; :class:`MissingData` (a SystemExit
    whose message names the data set and how to obtain it) when it is not there."""
    where = os.path.join(data_root(), DATASETS[key].folder, *parts)
    if must_exist and not os.path.exists(where):
        raise MissingData(f"{where} not found: it belongs to {describe(key)}")
    return where


# ------------------------------------------------------------------------------ conversions
#: component order of mlearn's ``virial_stress`` per element (module docstring)
MLEARN_STRESS_ORDER = {"Si": "xx yy zz xy yz xz", "Ge": "xx yy zz xy yz xz", "Li": "xx yy zz xy yz xz",
                       "Mo": "xx yy zz xy xz yz", "Ni": "xx yy zz xy xz yz", "Cu": "xx yy zz xy xz yz"}
_ASE_VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")


def mlearn_atoms(doc: dict, element: str):
    """One mlearn document as an :class:`ase.Atoms` with energy, forces and stress (ASE units
    and sign) in a SinglePointCalculator."""
    import numpy as np
    from ase import Atoms, units
    from ase.calculators.singlepoint import SinglePointCalculator

    structure, out = doc["structure"], doc["outputs"]
    symbols = [max(site["species"], key=lambda s: s["occu"])["element"] for site in structure["sites"]]
    atoms = Atoms(symbols, positions=[site["xyz"] for site in structure["sites"]],
                  cell=structure["lattice"]["matrix"], pbc=True)
    order = MLEARN_STRESS_ORDER[element].split()
    kbar = dict(zip(order, np.asarray(out["virial_stress"], dtype=float)))
    stress = np.array([-0.1 * kbar[c] * units.GPa for c in _ASE_VOIGT])
    atoms.calc = SinglePointCalculator(atoms, energy=float(out["energy"]), forces=np.asarray(out["forces"], float),
                                       stress=stress)
    for key, info_key in (("group", "config_type"), ("description", "description"), ("tag", "mlearn_tag")):
        if doc.get(key) is not None:
            atoms.info[info_key] = doc[key]
    atoms.info["virial_stress_kbar_original"] = np.asarray(out["virial_stress"], dtype=float)
    atoms.info["virial_stress_original_order"] = "_".join(order)
    return atoms


def convert_mlearn(element: str, json_path: str, output: str) -> int:
    import ase.io

    if element not in MLEARN_STRESS_ORDER:
        raise SystemExit(f"mlearn has no element {element!r} (it has {', '.join(MLEARN_STRESS_ORDER)})")
    with open(json_path) as fh:
        docs = json.load(fh)
    frames = [mlearn_atoms(doc, element) for doc in docs]
    ase.io.write(output, frames, format="extxyz")
    return len(frames)


def deepmd_frames(system: str):
    """The frames of one DeePMD-kit ``deepmd/npy`` system folder (module docstring)."""
    import numpy as np
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    types = np.loadtxt(os.path.join(system, "type.raw"), dtype=int, ndmin=1)
    with open(os.path.join(system, "type_map.raw")) as fh:
        type_map = fh.read().split()
    symbols = [type_map[t] for t in types]
    frames = []
    for set_dir in sorted(glob.glob(os.path.join(system, "set.*"))):
        box, coord, energy, force = (np.load(os.path.join(set_dir, f"{name}.npy"))
                                     for name in ("box", "coord", "energy", "force"))
        for k in range(len(energy)):
            atoms = Atoms(symbols, positions=coord[k].reshape(-1, 3), cell=box[k].reshape(3, 3), pbc=True)
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy[k]), forces=force[k].reshape(-1, 3))
            atoms.info["source"] = f"{os.path.basename(os.path.normpath(system))}/{os.path.basename(set_dir)}/frame{k}"
            frames.append(atoms)
    return frames


def convert_deepmd(systems, output: str) -> int:
    import ase.io

    frames = [a for system in systems for a in deepmd_frames(system)]
    ase.io.write(output, frames, format="extxyz")
    return len(frames)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    m = sub.add_parser("mlearn", help="convert an mlearn JSON file to extended XYZ")
    m.add_argument("element", choices=sorted(MLEARN_STRESS_ORDER))
    m.add_argument("json")
    m.add_argument("output")
    d = sub.add_parser("deepmd", help="convert DeePMD-kit deepmd/npy systems to one extended XYZ file")
    d.add_argument("systems", nargs="+")
    d.add_argument("output")
    args = p.parse_args(argv)
    if args.command == "mlearn":
        print(f"{convert_mlearn(args.element, args.json, args.output)} frames written to {args.output}")
    elif args.command == "deepmd":
        print(f"{convert_deepmd(args.systems, args.output)} frames written to {args.output}")
    else:
        print(f"data folder: {data_root()} (set ASE_MLFF_DATA to change it)")
        for key, d in DATASETS.items():
            where = os.path.join(data_root(), d.folder)
            state = "present" if os.path.isdir(where) and os.listdir(where) else "missing"
            print(f"\n{d.folder}/ ({state}): {describe(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
