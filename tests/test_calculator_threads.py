"""One calculator shared by threads: every thread gets the results of its own structure.

Before the calculator held a lock, two threads sharing one calculator read each other's
results (energies up to 19.6 eV off) or hit "energy not present in this calculation",
because ase's ``get_property`` resets, computes and reads ``self.results`` in three steps.
"""

import copy
import os
import threading

import numpy as np
import pytest
from ase.build import bulk

import ase_mlff
from ase_mlff import InputError, MLFFCalculator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _structures(n=6):
    rng = np.random.default_rng(7)
    out = []
    for k in range(n):
        atoms = bulk("Ni", "fcc", a=3.56 + 0.04 * k, cubic=True).repeat((2, 2, 2))  # all above a0: distinct energies
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return out


def test_shared_calculator_gives_each_thread_its_own_results():
    calc = ase_mlff.load(os.path.join(ROOT, "potentials", "ni_mff.mlff"))
    images = _structures()
    reference = []
    for atoms in images:
        a = atoms.copy()
        a.calc = calc
        reference.append((a.get_potential_energy(), a.get_forces(), a.get_stress()))
    # the structures differ enough that a mix-up cannot go unnoticed
    energies = [r[0] for r in reference]
    assert min(abs(x - y) for i, x in enumerate(energies) for y in energies[i + 1:]) > 0.1

    errors, mismatches = [], []
    barrier = threading.Barrier(len(images))

    def work(k):
        atoms = images[k].copy()
        atoms.calc = calc
        barrier.wait()
        try:
            for step in range(25):
                # alternate between two geometries so that every call is a new calculation
                atoms.positions[0, 0] += 0.01 if step % 2 == 0 else -0.01
                e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
                if step % 2 == 1:
                    # the same computation again (~180 eV): equal to rounding, 1e-13 relative
                    ok = (abs(e - reference[k][0]) <= 1e-13 * abs(reference[k][0])
                          and np.allclose(f, reference[k][1], atol=1e-9)
                          and np.allclose(s, reference[k][2], atol=1e-12))
                    if not ok:
                        mismatches.append((k, step, e, reference[k][0]))
        except Exception as exc:  # noqa: BLE001 - any failure in a worker fails the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:3]


def test_calculator_can_be_deep_copied():
    calc = ase_mlff.load(os.path.join(ROOT, "potentials", "ni_mff.mlff"))
    twin = copy.deepcopy(calc)
    atoms = _structures(1)[0]
    atoms.calc = calc
    e1 = atoms.get_potential_energy()
    atoms.calc = twin
    assert atoms.get_potential_energy() == pytest.approx(e1, rel=1e-13, abs=0)  # ~180 eV, same computation
    assert twin._lock is not calc._lock


def test_uncertainty_request_without_uncertainty_is_an_error():
    with pytest.raises(InputError, match="gives no uncertainty"):
        ase_mlff.load(os.path.join(ROOT, "potentials", "ethanol_sgdml.mlff"), uncertainty=True)
    from ase_mlff.io import load_model

    with pytest.raises(InputError, match="gives no uncertainty"):
        MLFFCalculator(load_model(os.path.join(ROOT, "potentials", "ni_mff.mlff")), uncertainty=True)
