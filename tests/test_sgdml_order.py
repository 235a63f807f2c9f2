"""sGDML atom order: every input is identified (same-element relabellings included) or refused.

sGDML sees the atoms in one fixed order; numbers in that order do not prove the order (swapping
the two carbons of ethanol gave +46 eV before this check). Uses the shipped ethanol model
(rMD17, C C O H H H H H H) and the rMD17 test frames in tests/data, which it was not trained on.
"""

from __future__ import annotations

import os

import ase
import numpy as np
import pytest

import ase_mlff
from ase_mlff.errors import InputError
from ase_mlff.descriptors.matching import OrderTracker
from ase_mlff.models.sgdml import REORDER_MAX_RESIDUAL, SGDMLModel
from sgdml_rounding import tolerances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "potentials", "ethanol_sgdml.mlff")
DATA = os.path.join(ROOT, "tests", "data", "rmd17_ethanol_300.npz")
REFUSED = "cannot be identified|ambiguous"


@pytest.fixture(scope="module")
def frames():
    d = np.load(DATA)
    test = np.flatnonzero(d["split"] == 1)  # frames the shipped model was not trained on
    return d["nuclear_charges"].astype(np.int64), d["coords"][test].astype(np.float64)


@pytest.fixture
def calc():
    return ase_mlff.load(MODEL)


def roles(z, R):
    """Which atom is which in ethanol, from the elements and the distances of one geometry."""
    dist = np.linalg.norm(R[:, None] - R[None], axis=-1)
    C, O, H = np.flatnonzero(z == 6), int(np.flatnonzero(z == 8)[0]), np.flatnonzero(z == 1)
    c_oh = int(C[np.argmin(dist[C, O])])  # the carbon bonded to O
    c_me = int(C[C != c_oh][0])
    nearest = {int(h): int(np.argmin(np.where(z == 1, np.inf, dist[h]))) for h in H}
    return {"C_OH": c_oh, "C_Me": c_me, "O": O,
            "H_O": [h for h in H if nearest[h] == O],
            "H_CH2": [h for h in H if nearest[h] == c_oh],
            "H_Me": [h for h in H if nearest[h] == c_me]}


def swap(n, i, j):
    p = np.arange(n)
    p[i], p[j] = j, i
    return p


def evaluate(calc, numbers, positions):
    atoms = ase.Atoms(numbers=numbers, positions=positions)
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_roles_of_the_shipped_model(calc, frames):
    z, R = frames
    assert calc.model.z.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    r = roles(z, R[0])
    assert (r["C_OH"], r["C_Me"], r["O"]) == (0, 1, 2)
    assert r["H_CH2"] == [3, 4] and r["H_Me"] == [5, 6, 7] and r["H_O"] == [8]


def test_model_order_is_evaluated_as_given(calc, frames):
    z, R = frames
    model = calc.model
    for pos in R[:5]:
        assert model.prepare_atoms(z, pos) is None
        e, f = evaluate(calc, z, pos)
        e_ref, f_ref = model.predict_numpy(pos)
        tol_e, tol_f = tolerances(model, pos)  # rounding of sums of ~1e8 eV (sgdml_rounding.py)
        assert e == pytest.approx(e_ref[0], rel=0, abs=tol_e)
        np.testing.assert_allclose(f, f_ref, rtol=0, atol=tol_f)


@pytest.mark.parametrize("kind", ["carbons", "methyl_H_with_hydroxyl_H", "CH2_H_with_hydroxyl_H",
                                  "CH2_H_with_methyl_H", "random_within_elements"])
def test_same_element_relabelling_gives_the_right_answer(calc, frames, kind):
    """Numbers unchanged, two or more same-element atoms relabelled: the answer is that of the
    molecule, with the forces in the caller's labelling (never the silently wrong number that
    evaluating the order as given produces)."""
    z, R = frames
    r = roles(z, R[0])
    rng = np.random.default_rng(5)
    n = len(z)
    for pos in R[:8]:
        if kind == "carbons":
            p = swap(n, r["C_OH"], r["C_Me"])
        elif kind == "methyl_H_with_hydroxyl_H":
            p = swap(n, r["H_Me"][1], r["H_O"][0])
        elif kind == "CH2_H_with_hydroxyl_H":
            p = swap(n, r["H_CH2"][0], r["H_O"][0])
        elif kind == "CH2_H_with_methyl_H":
            p = swap(n, r["H_CH2"][1], r["H_Me"][2])
        else:
            p = np.arange(n)
            for e in (6, 1):
                idx = np.flatnonzero(z == e)
                p[idx] = rng.permutation(idx)
        assert np.array_equal(z[p], z)
        e_ref, f_ref = evaluate(calc, z, pos)
        e_as_given = calc.model.predict_numpy(pos[p])[0][0]
        assert abs(e_as_given - e_ref) > 0.05 or kind == "random_within_elements"  # the trap is real
        # the contract allows a refusal, never a wrong number; these ordinary test frames are
        # close enough to training that every relabelling must be identified
        e, f = evaluate(calc, z, pos[p])
        tol_e, tol_f = tolerances(calc.model, pos)
        assert e == pytest.approx(e_ref, rel=0, abs=tol_e)
        np.testing.assert_allclose(f, f_ref[p], rtol=0, atol=tol_f)


def test_other_element_order_is_identified(calc, frames):
    z, R = frames
    order = np.array([5, 2, 8, 0, 7, 3, 1, 6, 4])
    for pos in R[:5]:
        e_ref, f_ref = evaluate(calc, z, pos)
        perm, inverse = calc.model.prepare_atoms(z[order], pos[order])
        assert np.array_equal(z[order][perm], z) and np.array_equal(perm[inverse], np.arange(9))
        e, f = evaluate(calc, z[order], pos[order])
        tol_e, tol_f = tolerances(calc.model, pos)
        assert e == pytest.approx(e_ref, rel=0, abs=tol_e)
        np.testing.assert_allclose(f, f_ref[order], rtol=0, atol=tol_f)


def test_symmetry_relabellings_are_used_as_given(calc, frames):
    """A relabelling within the model's permutation group is an exact symmetry: no reordering,
    no refusal, the same energy."""
    z, R = frames
    model = calc.model
    group = model.perms.numpy()
    r = roles(z, R[0])
    me = r["H_Me"]
    rotation = np.arange(9)
    rotation[me] = np.roll(me, 1)  # methyl rotation by 120 degrees
    assert any(np.array_equal(q, rotation) for q in group)
    assert len(group) == 6
    for pos in R[:4]:
        e_ref, f_ref = evaluate(calc, z, pos)
        tol_e, tol_f = tolerances(model, pos)
        for q in group[1:]:
            assert model.prepare_atoms(z, pos[q]) is None
            e, f = evaluate(calc, z, pos[q])
            assert e == pytest.approx(e_ref, rel=0, abs=tol_e)
            np.testing.assert_allclose(f, f_ref[q], rtol=0, atol=tol_f)


def md_positions(calc, z, start, steps=120):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = ase.Atoms(numbers=z, positions=start)
    atoms.calc = calc
    kT = units.kB * 500.0  # Maxwell-Boltzmann velocities at 500 K
    sd = np.sqrt(kT / atoms.get_masses())[:, None]
    atoms.set_momenta(atoms.get_masses()[:, None] * sd * np.random.default_rng(0).normal(size=(len(z), 3)))
    traj = []
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.attach(lambda: traj.append(atoms.positions.copy()), interval=1)
    dyn.run(steps)
    return np.array(traj)


def test_md_sequence_uses_the_cheap_path_and_catches_a_relabelling(frames):
    z, R = frames
    traj = md_positions(ase_mlff.load(MODEL), z, R[10])
    reference = [ase_mlff.load(MODEL).model.predict_numpy(pos) for pos in traj]
    calc = ase_mlff.load(MODEL)
    tracker = calc.model.order_tracker
    relabel = swap(9, 5, 8)  # a methyl H exchanged with the hydroxyl H half way through
    half = len(traj) // 2
    for k, pos in enumerate(traj):
        p = relabel if k >= half else np.arange(9)
        misses = tracker.misses
        e, f = evaluate(calc, z, pos[p])
        tol_e, tol_f = tolerances(calc.model, pos)
        assert e == pytest.approx(reference[k][0][0], rel=0, abs=tol_e)
        np.testing.assert_allclose(f, reference[k][1][p], rtol=0, atol=tol_f)
        # the full identification ran for the first geometry and at the relabelling only
        assert tracker.misses - misses == (1 if k in (0, half) else 0), k
    assert tracker.hits == len(traj) - 2
    assert calc.model.prepare_atoms(z, traj[-1][relabel] + 3.0) is not None  # a translation is no step


def test_distinct_geometries_reuse_the_order_and_a_relabelling_after_1000_calls_is_caught(frames):
    """Distinct geometries (test frames, randomly rotated and moved: never a small step) reuse
    the identified order after the cheap check, without identifying it again; after 1,000 such
    calls every exchange of two same-element atoms that is not a model symmetry is still
    caught: evaluated right, in the caller's labelling."""
    from scipy.spatial.transform import Rotation

    z, R = frames
    calc = ase_mlff.load(MODEL)
    model = calc.model
    tracker = model.order_tracker
    rng = np.random.default_rng(2)
    rotations = Rotation.random(1000, random_state=3).as_matrix()
    for k in range(1000):
        pos = R[k % len(R)] @ rotations[k].T + rng.normal(scale=5.0, size=3)
        assert model.prepare_atoms(z, pos) is None
    assert tracker.identified == 1 and tracker.verified == 999 and tracker.hits == 0
    group = {tuple(q) for q in model.perms.numpy().tolist()}
    reference = ase_mlff.load(MODEL)
    caught = 0
    for pos in R[:6]:
        for a in range(9):
            for b in range(a + 1, 9):
                p = swap(9, a, b)
                if z[a] != z[b] or tuple(p.tolist()) in group:
                    continue
                e_ref, f_ref = evaluate(reference, z, pos)
                tol_e, tol_f = tolerances(model, pos)
                evaluate(calc, z, pos)  # the original first: the relabelling comes after it
                identified = tracker.identified
                e, f = evaluate(calc, z, pos[p])
                assert e == pytest.approx(e_ref, rel=0, abs=tol_e), (a, b)
                np.testing.assert_allclose(f, f_ref[p], rtol=0, atol=tol_f)
                caught += tracker.identified - identified
    assert caught > 0  # the relabellings went through the full identification


def test_exchange_cost_changes_match_the_swapped_matrices():
    from ase_mlff.descriptors.matching import ExchangeCosts

    rng = np.random.default_rng(0)
    n, k = 7, 4
    def sym(m):
        m = m + np.swapaxes(m, -1, -2)
        m[..., np.arange(n), np.arange(n)] = 0.0
        return m
    B, refs = sym(rng.random((n, n))), sym(rng.random((k, n, n)))
    i, j = np.triu_indices(n, 1)
    got = ExchangeCosts(refs, i, j)(B)
    for m, (a, b) in enumerate(zip(i, j)):
        p = swap(n, a, b)
        Bs = B[np.ix_(p, p)]
        want = ((Bs - refs) ** 2).sum((1, 2)) - ((B - refs) ** 2).sum((1, 2))
        np.testing.assert_allclose(got[:, m], want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_refused_geometry_is_not_remembered(calc, frames):
    z, R = frames
    model = calc.model
    rng = np.random.default_rng(3)
    # strongly distorted and relabelled (carbons swapped): cannot be identified
    bad = (R[0] + rng.normal(scale=0.35, size=R[0].shape))[swap(9, 0, 1)]
    assert model.prepare_atoms(z, R[0]) is None
    for pos in (bad, bad + 0.01):  # the second is a small step from the first: still checked
        misses = model.order_tracker.misses
        with pytest.raises(InputError, match=REFUSED):
            evaluate(calc, z, pos)
        assert model.order_tracker.misses == misses + 1


def test_strongly_distorted_geometry_is_used_as_given_but_refused_relabelled(calc, frames):
    """Far from training, the order given is still trusted when it is the best fit (that is
    extrapolation, not an order problem); relabelled, the same geometry cannot be identified."""
    z, R = frames
    model = calc.model
    rng = np.random.default_rng(11)
    for pos in R[:10]:
        bad = pos + rng.normal(scale=0.35, size=pos.shape)  # bonds off by ~0.5 Å
        model.order_tracker.clear()
        assert model.prepare_atoms(z, bad) is None
        model.order_tracker.clear()
        with pytest.raises(InputError, match=REFUSED):
            evaluate(calc, z, bad[swap(9, 0, 1)])


def test_wrong_elements_still_name_the_model(calc, frames):
    z, R = frames
    zn = z.copy()
    zn[2] = 7
    with pytest.raises(InputError, match=r"C2H6O \(9 atoms in order C C O H H H H H H\); got C2H6N"):
        evaluate(calc, zn, R[0])
    calc.model.prepare_atoms(z, R[0])  # a remembered geometry must not let other numbers through
    with pytest.raises(InputError, match="got C2H6N"):
        calc.model.prepare_atoms(zn, R[0])


# ---------------------------------------------------------------- far from training, unambiguous
@pytest.fixture
def toy():
    """C C O with one carbon bonded to O: exchanging the carbons is no symmetry and changes the
    C-O distances by 1 Å, so the order stays unambiguous far from the training geometries."""
    base = np.array([[0.0, 0.0, 0.0], [-0.8, 1.3, 0.0], [1.4, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    R = base + rng.normal(scale=0.02, size=(6, 3, 3))
    iu = np.tril_indices(3, -1)
    desc = np.array([1.0 / np.linalg.norm(r[:, None] - r[None], axis=-1)[iu] for r in R])
    model = SGDMLModel.from_training([6, 6, 8], [[0, 1, 2]], desc, np.zeros_like(desc), 10.0, 1e-10, 0.0)
    return model, base


def test_given_order_far_from_training_is_accepted_when_unambiguous(toy):
    model, base = toy
    far = base * 1.25  # RMS residual about 0.39 Å, above REORDER_MAX_RESIDUAL
    z = np.array([6, 6, 8])
    def dist(r):
        return np.linalg.norm(r[:, None] - r[None], axis=-1)

    assert np.sqrt(np.mean((dist(far) - dist(base)) ** 2)) > REORDER_MAX_RESIDUAL
    assert model.prepare_atoms(z, far) is None
    # a relabelling is identified only close to the training geometries
    model.order_tracker.clear()
    with pytest.raises(InputError, match="cannot be identified"):
        model.prepare_atoms(z, far[[1, 0, 2]])
    with pytest.raises(InputError, match="cannot be identified"):
        model.prepare_atoms(z[[2, 0, 1]], far[[2, 0, 1]])
    perm, _ = model.prepare_atoms(z, base[[1, 0, 2]])
    assert perm.tolist() == [1, 0, 2]


# ---------------------------------------------------------------- the cache on its own
def test_tracker_never_reuses_an_answer_across_a_relabelling():
    t = OrderTracker(max_step=0.25)
    numbers = np.array([1, 1, 8])
    pos = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.2, 1.0, 0.0]])  # H-H 0.5 Å: limit 0.5/3
    t.store(numbers, pos, "answer")
    assert t.limit == pytest.approx(0.5 / 3)
    assert t.lookup(numbers, pos[[1, 0, 2]]) == (False, None)  # swapped H's
    assert t.lookup(numbers, pos + [2.0, -1.0, 0.5]) == (True, "answer")  # rigid translation
    assert t.lookup(numbers, pos + [[0.3, 0, 0], [0, 0, 0], [0, 0, 0]]) == (False, None)  # too far
    step = pos + [[0.05, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert t.lookup(numbers, step) == (True, "answer")
    assert t.lookup(numbers, step + [[0.05, 0, 0], [0, 0, 0], [0, 0, 0]]) == (True, "answer")  # follows
    assert t.lookup(np.array([1, 8, 1]), step) == (False, None)
    assert (t.hits, t.misses) == (3, 3)


def test_new_arrays_reset_the_cache(frames):
    z, R = frames
    model = ase_mlff.load(MODEL).model
    model.prepare_atoms(z, R[0])
    assert model.order_tracker.limit > 0
    model.set_arrays({k: getattr(model, k).numpy() for k in ("z", "perms", "desc_train", "v_train")})
    assert model.order_tracker.limit == 0 and model.order_tracker.misses == 0
