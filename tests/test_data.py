"""Tests of ase_mlff.units and ase_mlff.data (readers, validation, splits, statistics, hashing).

Only files in tests/data are required; a few tests also use the public data sets of docs/datasets.md ($ASE_MLFF_DATA) when they are there."""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from ase_mlff import data
from ase_mlff.data import Dataset, Frame, read
from ase_mlff.errors import DatasetError
from ase_mlff.units import (
    canonical_energy_unit,
    canonical_length_unit,
    energy_factor,
    length_factor,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
RMD17 = os.path.join(DATA, "rmd17_ethanol_300.npz")
NI = os.path.join(DATA, "ni_mlearn_20.extxyz")
MO = os.path.join(DATA, "mo_mlearn_10.extxyz")
SI_VIRIAL = os.path.join(DATA, "si_virial_mlearn.extxyz")
# the public data sets (docs/datasets.md): $ASE_MLFF_DATA, else the developers' data folder beside the checkout
SHARED = os.environ.get("ASE_MLFF_DATA") or os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
GAP18 = os.path.join(SHARED, "gap18_si_testing_db", "testing_database.xyz")

KCAL = 0.0433641  # eV per kcal/mol


@pytest.fixture(scope="module")
def rmd17():
    return read(RMD17, energy_unit="kcal/mol")


@pytest.fixture(scope="module")
def rmd17_raw():
    with np.load(RMD17) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ni():
    return read(NI)


def _frame(n=3, seed=0, energy=1.0, forces=True, stress=False, numbers=None):
    rng = np.random.default_rng(seed)
    return Frame(
        numbers=np.full(n, 14) if numbers is None else numbers,
        positions=rng.uniform(0, 5, (n, 3)),
        cell=np.eye(3) * 6.0,
        pbc=True,
        energy=energy,
        forces=rng.normal(size=(n, 3)) if forces else None,
        stress=rng.normal(size=6) * 0.01 if stress else None,
    )


# ------------------------------------------------------------------------------------------ units


def test_energy_units():
    assert energy_factor("kcal/mol") == pytest.approx(KCAL, rel=1e-6)
    assert energy_factor("KCAL/MOL") == energy_factor("kcal/mol")
    assert energy_factor("kJ/mol") == pytest.approx(units.kJ / units.mol)
    assert energy_factor("eV") == 1.0
    assert energy_factor("meV") == pytest.approx(1e-3)
    for alias in ("Hartree", "hartree", "Ha", "au", " HA "):
        assert canonical_energy_unit(alias) == "Hartree"
        assert energy_factor(alias) == units.Hartree
    assert energy_factor("Ry") == pytest.approx(units.Hartree / 2, rel=1e-12)


def test_length_units():
    for alias in ("Ang", "Å", "angstrom", "ANGSTROM"):
        assert canonical_length_unit(alias) == "Ang"
        assert length_factor(alias) == 1.0
    assert length_factor("bohr") == units.Bohr
    assert length_factor("nm") == pytest.approx(10.0)


def test_unknown_unit_lists_known_ones():
    with pytest.raises(DatasetError, match="kcal/mol.*Hartree"):
        energy_factor("furlong")
    with pytest.raises(DatasetError, match="Bohr"):
        length_factor("parsec")


# ------------------------------------------------------------------------------------------ npz


def test_npz_requires_energy_unit():
    with pytest.raises(DatasetError, match=r"energy_unit='kcal/mol'") as err:
        read(RMD17)
    assert "MD17" in str(err.value)


def test_npz_rmd17(rmd17, rmd17_raw):
    ds = rmd17
    assert len(ds) == 300 and ds.format == "npz"
    assert ds.source_energy_unit == "kcal/mol" and ds.source_length_unit == "Ang"
    assert ds.fixed_composition and ds.has_forces and not ds.has_stress
    assert ds.elements == [1, 6, 8]
    arr = ds.arrays()
    assert arr["R"].shape == (300, 9, 3) and arr["F"].shape == (300, 9, 3) and arr["E"].shape == (300,)
    np.testing.assert_array_equal(arr["z"], rmd17_raw["nuclear_charges"])
    np.testing.assert_array_equal(arr["R"], rmd17_raw["coords"])
    np.testing.assert_allclose(arr["E"], rmd17_raw["energies"] * KCAL, rtol=1e-6)
    np.testing.assert_allclose(arr["F"], rmd17_raw["forces"] * KCAL, rtol=1e-6)
    assert not ds[0].pbc.any()
    # the side array 'split' is kept in the metadata
    assert ds.metadata["npz:split"] == rmd17_raw["split"].tolist()
    assert ds.provenance()["sha256"] == ds.sha256()


def test_npz_index():
    ds = read(RMD17, index="10:20:2", energy_unit="kcal/mol")
    assert len(ds) == 5
    full = read(RMD17, index=-1, energy_unit="kcal/mol")
    assert len(full) == 1 and full.metadata["npz_indices"] == [299]


def test_npz_sgdml_units_hartree_bohr(tmp_path, rmd17_raw):
    R = rmd17_raw["coords"][:4] / units.Bohr
    E = rmd17_raw["energies"][:4, None] * KCAL / units.Hartree  # (M, 1) as in sGDML files
    F = rmd17_raw["forces"][:4] * KCAL / units.Hartree * units.Bohr  # Ha/Bohr
    p = tmp_path / "sgdml.npz"
    np.savez(p, R=R, z=rmd17_raw["nuclear_charges"], E=E, F=F, e_unit=np.array("Ha"), r_unit=np.array("bohr"))
    ds = read(p)
    assert ds.source_energy_unit == "Hartree" and ds.source_length_unit == "Bohr"
    np.testing.assert_allclose(ds.arrays()["R"], rmd17_raw["coords"][:4], rtol=1e-12)
    np.testing.assert_allclose(ds.arrays()["E"], rmd17_raw["energies"][:4] * KCAL, rtol=1e-6)
    np.testing.assert_allclose(ds.arrays()["F"], rmd17_raw["forces"][:4] * KCAL, rtol=1e-6)
    # explicit Hartree/Bohr on a file without unit keys gives the same
    p2 = tmp_path / "plain.npz"
    np.savez(p2, R=R, z=rmd17_raw["nuclear_charges"], E=E, F=F)
    ds2 = read(p2, energy_unit="hartree", length_unit="Bohr")
    assert ds2.sha256() == ds.sha256()
    # a unit argument contradicting the file is refused
    with pytest.raises(DatasetError, match="declares e_unit"):
        read(p, energy_unit="eV")


def test_npz_lattice_and_explicit_keys(tmp_path, rmd17_raw):
    p = tmp_path / "lat.npz"
    np.savez(
        p,
        coords=rmd17_raw["coords"][:3],
        nuclear_charges=rmd17_raw["nuclear_charges"],
        energies=rmd17_raw["energies"][:3],
        alt_energies=rmd17_raw["energies"][:3] + 1.0,
        forces=rmd17_raw["forces"][:3],
        lattice=np.eye(3) * 20.0,
        e_unit=np.array("kcal/mol"),
    )
    ds = read(p)
    assert ds[0].pbc.all() and ds[0].volume == pytest.approx(8000.0)
    alt = read(p, energy_key="alt_energies")
    np.testing.assert_allclose(alt.energies - ds.energies, KCAL, rtol=1e-6)
    with pytest.raises(DatasetError, match="'nope' not found"):
        read(p, energy_key="nope")


def test_npz_refuses_pickle(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, R=np.array([object()], dtype=object))
    with pytest.raises(DatasetError, match="pickle"):
        read(p, energy_unit="eV")


# ------------------------------------------------------------------------------------------ extxyz


def test_extxyz_ni(ni):
    ref = ase.io.read(NI, ":")
    assert len(ni) == 20 and ni.has_forces and ni.has_stress and ni.format == "ase"
    assert not ni.fixed_composition and ni.elements == [28]
    for fr, a in zip(ni, ref):
        assert fr.energy == a.get_potential_energy()
        np.testing.assert_array_equal(fr.forces, a.get_forces())
        np.testing.assert_array_equal(fr.stress, a.get_stress())
        np.testing.assert_array_equal(fr.cell, a.cell.array)
        assert fr.pbc.all()
    assert ni[0].info["config_type"] == "Surface_test"
    with pytest.raises(DatasetError, match="fixed-composition"):
        ni.arrays()


def test_extxyz_mo_and_units():
    mo = read(MO)
    assert len(mo) == 10 and mo.has_stress and mo.elements == [42]
    mo_mev = read(MO, energy_unit="meV", length_unit="nm")
    assert mo_mev.source_energy_unit == "meV"
    fr, fr2 = mo[3], mo_mev[3]
    assert fr2.energy == pytest.approx(fr.energy * 1e-3)
    np.testing.assert_allclose(fr2.positions, fr.positions * 10)
    np.testing.assert_allclose(fr2.forces, fr.forces * 1e-3 / 10)
    np.testing.assert_allclose(fr2.stress, fr.stress * 1e-3 / 1000)


def test_virial_to_stress():
    ds = read(SI_VIRIAL)
    raw = ase.io.read(SI_VIRIAL, ":")
    assert ds.has_stress and ds.has_forces
    assert ds.metadata["label_keys"]["forces"] == ["arrays:dft_force"]
    for fr, a in zip(ds, raw):
        vol = abs(np.linalg.det(a.cell.array))
        s = -np.asarray(a.info["virial"]).reshape(3, 3) / vol
        manual = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        np.testing.assert_allclose(fr.stress, manual, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(fr.forces, a.arrays["dft_force"])
    # explicit keys give the same
    ds2 = read(SI_VIRIAL, virial_key="virial", forces_key="dft_force", energy_key="energy")
    assert ds2.sha256() == ds.sha256()


@pytest.mark.skipif(not os.path.exists(GAP18), reason="shared GAP-18 data not present")
def test_virial_gap18_shared():
    ds = read(GAP18, index=":5")
    a = ase.io.read(GAP18, index=0)
    s = -a.info["virial"] / a.get_volume()
    np.testing.assert_allclose(ds[0].stress, [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], rtol=1e-12)


def _labelled_atoms(n_frames=3, natoms=4):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n_frames):
        a = Atoms("Si" * natoms, positions=rng.uniform(0, 4, (natoms, 3)), cell=np.eye(3) * 5, pbc=True)
        a.info["dft_energy"] = -10.0 - i
        a.arrays["dft_force"] = rng.normal(size=(natoms, 3))
        a.info["dft_virial"] = rng.normal(size=9)  # 9 values, not a special extxyz key
        out.append(a)
    return out


def test_info_arrays_labels_autodetect(tmp_path):
    atoms = _labelled_atoms()
    p = tmp_path / "labels.extxyz"
    ase.io.write(p, atoms, format="extxyz")
    ds = read(p)
    assert [fr.energy for fr in ds] == [-10.0, -11.0, -12.0]
    np.testing.assert_allclose(ds[1].forces, atoms[1].arrays["dft_force"])
    v = atoms[2].info["dft_virial"].reshape(3, 3)
    v = 0.5 * (v + v.T)
    s = -v / 125.0
    np.testing.assert_allclose(ds[2].stress, [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], rtol=1e-7)
    # explicit key that is missing -> error naming the key
    with pytest.raises(DatasetError, match="missing forces.*'not_there'"):
        read(p, forces_key="not_there")
    # from_atoms works on in-memory Atoms too
    ds2 = Dataset.from_atoms(atoms)
    np.testing.assert_allclose(ds2.energies, ds.energies)


def test_to_atoms_and_extxyz_roundtrip(ni, tmp_path):
    a = ni[5].to_atoms()
    assert isinstance(a.calc, SinglePointCalculator)
    assert a.get_potential_energy() == ni[5].energy
    np.testing.assert_array_equal(a.get_forces(), ni[5].forces)
    np.testing.assert_array_equal(a.get_stress(), ni[5].stress)
    p = tmp_path / "out.extxyz"
    ni[:4].to_extxyz(p)
    back = read(p)
    assert len(back) == 4
    for x, y in zip(back, ni[:4]):
        assert x.energy == pytest.approx(y.energy, abs=1e-6)
        np.testing.assert_allclose(x.forces, y.forces, atol=1e-6)
        np.testing.assert_allclose(x.stress, y.stress, atol=1e-9)
        np.testing.assert_allclose(x.positions, y.positions, atol=1e-6)


# ------------------------------------------------------------------------------------------ ase db


def test_ase_db(ni, tmp_path):
    import ase.db

    p = tmp_path / "ni.db"
    with ase.db.connect(p) as db:
        for fr in ni[:6]:
            db.write(fr.to_atoms())
    ds = read(p)
    assert len(ds) == 6 and ds.format == "db" and ds.has_stress
    assert ds.sha256() == ni[:6].sha256()
    assert len(read(p, index="1:3")) == 2


def test_ase_db_labels_in_data(tmp_path):
    import ase.db

    atoms = _labelled_atoms(2)
    p = tmp_path / "data.db"
    with ase.db.connect(p) as db:
        for a in atoms:
            plain = Atoms(a.numbers, a.positions, cell=a.cell, pbc=True)
            db.write(plain, dft_energy=a.info["dft_energy"], data={"dft_force": a.arrays["dft_force"]})
    ds = read(p, require_forces=True)
    assert [fr.energy for fr in ds] == [-10.0, -11.0]
    np.testing.assert_allclose(ds[1].forces, atoms[1].arrays["dft_force"])


# ------------------------------------------------------------------------------------------ validation


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_missing_forces_and_energies(tmp_path, rmd17_raw):
    base = dict(coords=rmd17_raw["coords"][:5], nuclear_charges=rmd17_raw["nuclear_charges"])
    p = _save_npz(tmp_path / "noF.npz", energies=rmd17_raw["energies"][:5], **base)
    with pytest.raises(DatasetError, match="missing forces"):
        read(p, energy_unit="kcal/mol")
    ds = read(p, energy_unit="kcal/mol", require_forces=False)
    assert not ds.has_forces and ds.arrays()["F"] is None
    p = _save_npz(tmp_path / "noE.npz", forces=rmd17_raw["forces"][:5], **base)
    with pytest.raises(DatasetError, match="missing energies"):
        read(p, energy_unit="kcal/mol")
    # extxyz without forces
    atoms = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]) for _ in range(2)]
    for i, a in enumerate(atoms):
        a.calc = SinglePointCalculator(a, energy=-1.0 - i)
    x = tmp_path / "noF.extxyz"
    ase.io.write(x, atoms)
    with pytest.raises(DatasetError, match=r"frame 0: missing forces"):
        read(x)
    assert len(read(x, require_forces=False)) == 2


def test_shape_mismatches(tmp_path, rmd17_raw):
    base = dict(coords=rmd17_raw["coords"][:5], nuclear_charges=rmd17_raw["nuclear_charges"])
    p = _save_npz(tmp_path / "badF.npz", energies=rmd17_raw["energies"][:5],
                  forces=rmd17_raw["forces"][:5, :8], **base)
    with pytest.raises(DatasetError, match=r"forces 'forces' have shape \(5, 8, 3\)"):
        read(p, energy_unit="kcal/mol")
    p = _save_npz(tmp_path / "badM.npz", energies=rmd17_raw["energies"][:4],
                  forces=rmd17_raw["forces"][:5], **base)
    with pytest.raises(DatasetError, match="mismatched frame counts.*'energies' has 4 frames"):
        read(p, energy_unit="kcal/mol")
    p = _save_npz(tmp_path / "badZ.npz", energies=rmd17_raw["energies"][:5], forces=rmd17_raw["forces"][:5],
                  coords=rmd17_raw["coords"][:5], nuclear_charges=rmd17_raw["nuclear_charges"][:7])
    with pytest.raises(DatasetError, match="7 atoms"):
        read(p, energy_unit="kcal/mol")
    a = Atoms("Si2", positions=[[0, 0, 0], [1, 1, 1]], cell=np.eye(3) * 4, pbc=True)
    a.info["energy_x"] = 1.0
    a.info["dft_force"] = np.zeros((3, 3))  # wrong number of atoms, stored as info
    with pytest.raises(DatasetError, match=r"frame 0: forces \(info:dft_force\) have shape \(3, 3\)"):
        Dataset.from_atoms([a], forces_key="dft_force", require_forces=True)
    with pytest.raises(DatasetError, match="missing forces"):  # auto-detection skips the wrong-length array
        Dataset.from_atoms([a], require_forces=True)
    with pytest.raises(DatasetError, match=r"forces have shape \(2, 2\)"):
        Frame(numbers=[14, 14], positions=np.zeros((2, 3)), forces=np.zeros((2, 2)))


def test_nan_rejected(tmp_path, rmd17_raw):
    R = rmd17_raw["coords"][:5].copy()
    R[3, 2, 1] = np.nan
    p = _save_npz(tmp_path / "nanR.npz", coords=R, nuclear_charges=rmd17_raw["nuclear_charges"],
                  energies=rmd17_raw["energies"][:5], forces=rmd17_raw["forces"][:5])
    with pytest.raises(DatasetError, match=r"frame 3: positions contain a non-finite value"):
        read(p, energy_unit="kcal/mol")
    E = rmd17_raw["energies"][:5].copy()
    E[2] = np.inf
    p = _save_npz(tmp_path / "infE.npz", coords=rmd17_raw["coords"][:5],
                  nuclear_charges=rmd17_raw["nuclear_charges"], energies=E, forces=rmd17_raw["forces"][:5])
    with pytest.raises(DatasetError, match=r"frame 2: energy is not finite"):
        read(p, energy_unit="kcal/mol")
    atoms = [fr.to_atoms() for fr in read(NI, index=":3")]
    atoms[1].calc.results["forces"][4, 0] = np.nan
    with pytest.raises(DatasetError, match=r"frame 1: forces contain a non-finite value"):
        Dataset.from_atoms(atoms)


def test_empty_and_bad_files(tmp_path, rmd17_raw):
    p = _save_npz(tmp_path / "empty.npz", coords=np.zeros((0, 9, 3)),
                  nuclear_charges=rmd17_raw["nuclear_charges"], energies=np.zeros(0), forces=np.zeros((0, 9, 3)))
    with pytest.raises(DatasetError, match="empty"):
        read(p, energy_unit="eV")
    bad = tmp_path / "weird.foo"
    bad.write_text("not a structure\n")
    with pytest.raises(DatasetError, match="weird.foo"):
        read(bad)
    with pytest.raises(DatasetError, match="not found"):
        read(tmp_path / "missing.extxyz")
    with pytest.raises(DatasetError, match="empty"):
        Dataset.from_atoms([])


# ------------------------------------------------------------------------------------------ dataset ops


def test_indexing(rmd17):
    assert isinstance(rmd17[3], Frame)
    assert rmd17[-1] is rmd17[299]
    sub = rmd17[10:20]
    assert isinstance(sub, Dataset) and len(sub) == 10 and sub[0] is rmd17[10]
    sub2 = rmd17[np.array([5, 1, 7])]
    assert [f is g for f, g in zip(sub2, (rmd17[5], rmd17[1], rmd17[7]))] == [True] * 3
    assert sub2.metadata["parent_indices"] == [5, 1, 7]
    assert sub2.source == rmd17.source and sub2.source_energy_unit == "kcal/mol"
    mask = np.zeros(300, bool)
    mask[[0, 299]] = True
    assert len(rmd17[mask]) == 2
    with pytest.raises(IndexError):
        rmd17[300]


def test_split(rmd17):
    s = rmd17.split(100, 50, 20, seed=3)
    assert (len(s.train), len(s.valid), len(s.test)) == (100, 50, 20)
    allidx = np.concatenate(s)
    assert len(np.unique(allidx)) == 170 and allidx.min() >= 0 and allidx.max() < 300
    s2 = rmd17.split(100, 50, 20, seed=3)
    for a, b in zip(s, s2):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(rmd17.split(100, 50, 20, seed=4).train, s.train)
    rest = rmd17.split(250, 10)
    assert len(rest.test) == 40 and len(np.unique(np.concatenate(rest))) == 300
    with pytest.raises(DatasetError, match="too small.*301.*only 300"):
        rmd17.split(300, 1)
    with pytest.raises(DatasetError, match="non-negative"):
        rmd17.split(-1)


def test_split_and_stratified_selection_draw_from_their_own_named_streams(rmd17):
    """Issue #8: a split and a stratified pick with the same seed are independent draws, each
    from its named stream of ase_mlff.rng (not default_rng(seed), which both used to share)."""
    from ase_mlff.rng import random_stream

    s = rmd17.split(100, 50, 20, seed=7)
    perm = random_stream(7, "split").permutation(len(rmd17))
    np.testing.assert_array_equal(s.train, np.sort(perm[:100]))
    assert not np.array_equal(s.train, np.sort(np.random.default_rng(7).permutation(len(rmd17))[:100]))
    cand = np.arange(len(rmd17))
    order = cand[np.lexsort((cand, rmd17.energies))]
    rng = random_stream(7, "stratified")
    expect = np.sort([int(b[rng.integers(len(b))]) for b in np.array_split(order, 20)])
    np.testing.assert_array_equal(rmd17.select_stratified(None, 20, seed=7), expect)


def test_select_stratified(rmd17):
    train = rmd17.split(200, seed=0).train
    n = 10
    pick = rmd17.select_stratified(train, n, seed=0)
    assert len(pick) == n and len(np.unique(pick)) == n and set(pick) <= set(train)
    np.testing.assert_array_equal(pick, rmd17.select_stratified(train, n, seed=0))
    E = rmd17.energies
    # exactly one pick in every quantile bin of the candidates' energies
    order = train[np.argsort(E[train], kind="stable")]
    for b in np.array_split(order, n):
        assert len(set(b) & set(pick)) == 1
    # covers the range: lowest pick in the lowest decile, highest in the top decile
    q = np.quantile(E[train], [0.1, 0.9])
    assert E[pick].min() <= q[0] and E[pick].max() >= q[1]
    assert len(rmd17.select_stratified(None, 300)) == 300
    with pytest.raises(DatasetError, match="cannot pick"):
        rmd17.select_stratified(train, 201)


def test_statistics_ni(ni):
    st = ni.statistics()
    assert st.n_frames == 20 and st.element_counts == {28: 1668} and st.n_with_stress == 20
    n = ni.natoms.astype(float)
    e_ref = np.dot(n, ni.energies) / np.dot(n, n)
    assert st.reference_method == "least_squares" and not st.reference_degenerate
    assert st.reference_energies[28] == pytest.approx(e_ref, rel=1e-12)
    assert -6.0 < e_ref < -5.0
    epa = ni.energies / n
    assert st.energy_per_atom_mean == pytest.approx(epa.mean())
    assert st.energy_per_atom_std == pytest.approx(epa.std())
    allF = np.concatenate([fr.forces for fr in ni])
    assert st.force_rms_per_element[28] == pytest.approx(np.sqrt(np.mean(allF**2)))
    text = ni.summary()
    assert "Ni" in text and "1668" in text and "stress 20/20" in text


def test_statistics_fixed_composition_is_degenerate(rmd17):
    st = rmd17.statistics()
    assert st.reference_degenerate and st.reference_method == "mean_energy_per_atom"
    assert "degenerate" in st.reference_note
    assert st.reference_energies[1] == pytest.approx(np.mean(rmd17.energies / 9))
    assert "degenerate" in rmd17.summary()


def test_statistics_recovers_reference_energies():
    ref = {1: -13.6, 8: -432.0}
    frames = []
    for k, (nh, no) in enumerate([(2, 1), (4, 2), (2, 2), (1, 3), (6, 1)]):
        z = np.array([1] * nh + [8] * no)
        frames.append(_frame(len(z), seed=k, numbers=z, energy=nh * ref[1] + no * ref[8]))
    st = Dataset.from_frames(frames).statistics()
    assert st.reference_method == "least_squares"
    assert st.reference_energies[1] == pytest.approx(ref[1])
    assert st.reference_energies[8] == pytest.approx(ref[8])
    assert st.reference_rmse_per_atom == pytest.approx(0.0, abs=1e-9)


def test_sha256(ni):
    again = read(NI)
    assert again.sha256() == ni.sha256()
    # pinned: the hash is recorded in model files, its definition must not drift
    assert ni.sha256() == "5b60424d4a40de39809bbba25de9b3a487fab55a782934ba981adb602c20ec0e"
    frames = [fr.copy() for fr in ni]
    frames[7].forces[11, 2] += 1e-12
    assert Dataset.from_frames(frames).sha256() != ni.sha256()
    frames = [fr.copy() for fr in ni]
    frames[0].stress = None
    assert Dataset.from_frames(frames).sha256() != ni.sha256()
    # -0.0 and 0.0 hash the same; frame order matters
    f = [fr.copy() for fr in ni[:2]]
    f[0].positions[0, 0] = 0.0
    g = [fr.copy() for fr in f]
    g[0].positions[0, 0] = -0.0
    assert Dataset.from_frames(f).sha256() == Dataset.from_frames(g).sha256()
    assert ni[[1, 0]].sha256() != ni[[0, 1]].sha256()


def test_sha256_rmd17_stable(rmd17):
    assert read(RMD17, energy_unit="kcal/mol").sha256() == rmd17.sha256()


def test_frame_validation():
    with pytest.raises(DatasetError, match="positions have shape"):
        Frame(numbers=[1, 1], positions=np.zeros((3, 3)))
    with pytest.raises(DatasetError, match="stress"):
        Frame(numbers=[1], positions=np.zeros((1, 3)), stress=np.zeros(4))
    f = Frame(numbers=[1], positions=np.zeros((1, 3)), stress=np.arange(9.0).reshape(3, 3))
    assert f.stress.shape == (6,) and f.stress[3] == pytest.approx((5 + 7) / 2)
    with pytest.raises(DatasetError, match="frame 0: energy is not finite"):
        Dataset.from_frames([_frame(energy=np.nan)])


def test_public_names():
    for name in ("Frame", "Dataset", "Split", "read", "DatasetStatistics"):
        assert hasattr(data, name)
