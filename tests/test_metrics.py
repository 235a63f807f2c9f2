"""ase_mlff.metrics: the one error table every report uses, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units

from ase_mlff.metrics import error_metrics, format_metrics, frame_metrics, mae_rmse, metrics_of_errors


def test_mae_rmse_by_hand():
    assert mae_rmse([3.0, -4.0]) == pytest.approx((3.5, np.sqrt(12.5)), rel=1e-15)
    assert all(np.isnan(x) for x in mae_rmse([]))


def test_error_table_by_hand():
    # two frames of 2 and 4 atoms; energies off by +0.010 and -0.002 eV
    m = error_metrics([1.0, 2.0], [1.010, 1.998], [2, 4],
                      [np.zeros((2, 3)), np.zeros((1, 3))], [np.full((2, 3), 0.1), np.full((1, 3), -0.4)],
                      [np.array([1, 8]), np.array([8])],
                      np.zeros((1, 6)), np.full((1, 6), 1e-3))
    assert m["energy_mae_meV"] == pytest.approx(6.0, rel=1e-9)
    assert m["energy_rmse_meV"] == pytest.approx(np.sqrt((100 + 4) / 2), rel=1e-9)
    assert m["energy_per_atom_mae_meV"] == pytest.approx((5.0 + 0.5) / 2, rel=1e-9)
    assert m["forces_mae_meV_per_A"] == pytest.approx((6 * 100 + 3 * 400) / 9, rel=1e-12)
    assert m["forces_per_element"]["H"] == pytest.approx({"mae_meV_per_A": 100, "rmse_meV_per_A": 100, "n_atoms": 1})
    assert m["forces_per_element"]["O"]["mae_meV_per_A"] == pytest.approx(250, rel=1e-12)
    assert m["forces_per_element"]["O"]["n_atoms"] == 2
    assert m["stress_mae_meV_per_A3"] == pytest.approx(1.0, rel=1e-12)
    assert m["stress_mae_GPa"] == pytest.approx(1e-3 / units.GPa, rel=1e-12)
    assert (m["n_energy"], m["n_forces"], m["n_stress"]) == (2, 3, 1)


def test_stacked_and_listed_forces_agree_and_missing_labels_are_left_out():
    rng = np.random.default_rng(0)
    f_ref, f_pred = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    z = rng.choice([1, 6], 7)
    stacked = error_metrics(forces_ref=f_ref, forces_pred=f_pred, numbers=z)
    listed = error_metrics(forces_ref=[f_ref[:3], f_ref[3:]], forces_pred=[f_pred[:3], f_pred[3:]],
                           numbers=[z[:3], z[3:]])
    assert stacked == listed
    assert not any(k.startswith(("energy", "stress")) for k in stacked)
    assert "forces_per_element" not in error_metrics(forces_ref=f_ref, forces_pred=f_pred, numbers=None)
    assert metrics_of_errors() == {}


def test_frame_metrics_use_only_the_labels_frames_have():
    from ase_mlff.data import Frame

    with_e = Frame(np.array([29, 29]), np.zeros((2, 3)), energy=1.0, forces=np.zeros((2, 3)))
    without_e = Frame(np.array([29]), np.zeros((1, 3)), energy=None, forces=np.zeros((1, 3)))
    preds = [{"energy": 1.002, "forces": np.full((2, 3), 0.01)}, {"energy": 5.0, "forces": np.full((1, 3), 0.04)}]
    m = frame_metrics([with_e, without_e], preds)
    assert m["n_energy"] == 1 and m["energy_mae_meV"] == pytest.approx(2.0, rel=1e-9)
    assert m["forces_mae_meV_per_A"] == pytest.approx((6 * 10 + 3 * 40) / 9, rel=1e-12)
    assert (m["n_frames"], m["n_atoms"]) == (2, 3)
    assert "meV/atom" in format_metrics("test", m)
