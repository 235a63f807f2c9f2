"""Every train command refuses, before any training work, a split in which held-out frames
(validation, test, a committee's pool and calibration frames) hold an element that a model's
training frames lack: exit status 2, a message naming the element, the split (and the
committee member), and no checkpoint or model file left behind.

The data are the 16 mlearn Si frames with one frame replaced by an mlearn Mo frame, placed
where the command's own split (the same seed) puts it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ase_mlff.cli import main
from ase_mlff.data import Dataset, read
from ase_mlff.errors import DatasetError
from ase_mlff.training.common import SplitError, check_split_elements

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = os.path.join(os.path.dirname(__file__), "data")
SI = os.path.join(DATA, "si_mlearn_16.extxyz")
MO = os.path.join(DATA, "mo_mlearn_10.extxyz")
ETH = os.path.join(DATA, "rmd17_ethanol_300.npz")

#: the bpnn/schnet split of these tests: 10 training, 3 validation, 3 test frames, seed 0
NN_SPLIT = ["--n-train", "10", "--n-valid", "3", "--n-test", "3", "--seed", "0"]
BPNN = ["--cutoff", "4", "--hidden", "4", "--n-radial", "2", "--n-eta", "1", "--zetas", "1", "--epochs", "2"]
SCHNET = ["--n-features", "4", "--n-interactions", "1", "--n-rbf", "4", "--epochs", "2", "--no-plots"]
GAP = ["--cutoff", "4", "--n-max", "3", "--l-max", "2", "--n-sparse", "20"]
MFF = ["--rc2", "4.0", "--rc3", "0", "--n-energy", "3", "--n-force-atoms", "10", "--hyper-energy", "2",
       "--hyper-force-atoms", "4", "--no-optimise", "--h2", "0.2"]


def _with_mo(tmp_path, k: int):
    """The Si frames with frame ``k`` replaced by a Mo frame, as an extxyz file."""
    frames = list(read(SI))
    frames[k] = read(MO)[0]
    path = tmp_path / f"si_mo{k}.extxyz"
    Dataset.from_frames(frames).to_extxyz(path)
    return str(path)


def _nn_index(part: str) -> int:
    return int(getattr(read(SI).split(10, 3, 3, seed=0), part)[0])


def _refused(tmp_path, capsys, argv, *words):
    """Run ``ase-mlff argv``: exit 2, the words in the message, nothing written."""
    before = set(os.listdir(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert "epoch" not in err and "Traceback" not in err  # refused before the first epoch
    assert set(os.listdir(tmp_path)) == before  # no model, no checkpoint
    return err


@pytest.mark.parametrize("family, flags", [("bpnn", BPNN), ("schnet", SCHNET)])
@pytest.mark.parametrize("part, name", [("test", "test"), ("valid", "validation")])
def test_network_families_refuse_an_element_only_in_held_out_frames(tmp_path, capsys, family, flags, part, name):
    data = _with_mo(tmp_path, _nn_index(part))
    out = tmp_path / "m.mlff"
    err = _refused(tmp_path, capsys, ["train", family, data, *NN_SPLIT, *flags, "-o", str(out)],
                   "element Mo", f"1 of the 3 {name} frames", "none of the 10 training frames", "--seed")
    assert "Si" not in err.split("error:")[1].split("(")[0]  # names only the missing element


def test_gap_refuses_an_element_only_in_the_test_frames(tmp_path, capsys):
    k = int(read(SI).split(13, 0, 3, seed=0).test[0])
    data = _with_mo(tmp_path, k)
    _refused(tmp_path, capsys, ["train", "gap", data, "--n-test", "3", *GAP, "-o", str(tmp_path / "g.mlff")],
             "element Mo", "1 of the 3 test frames", "13 training frames")


def test_gap_refuses_a_test_file_with_another_element(tmp_path, capsys):
    test = tmp_path / "mo.extxyz"
    read(MO)[:2].to_extxyz(test)
    _refused(tmp_path, capsys, ["train", "gap", SI, "--test", str(test), *GAP, "-o", str(tmp_path / "g.mlff")],
             "element Mo", "2 of the 2 test frames", "16 training frames")


def test_mff_refuses_an_element_only_in_the_test_frames(tmp_path, capsys):
    k = int(read(SI).split(13, 0, 3, seed=0).test[0])
    data = _with_mo(tmp_path, k)
    _refused(tmp_path, capsys, ["train", "mff", data, "--n-test", "3", *MFF, "-o", str(tmp_path / "m.mlff")],
             "element Mo", "1 of the 3 test frames")


def test_sgdml_refuses_a_test_molecule_with_another_element(tmp_path):
    """sGDML's frames all hold the same atoms, so only a test set of another molecule can fail
    the shared check; it is refused before the first kernel, not after training."""
    from ase_mlff.training.sgdml_train import train_sgdml

    d = np.load(ETH)
    arrays = {"R": d["coords"][:40].astype(float), "z": d["nuclear_charges"].astype(np.int64),
              "E": d["energies"][:40] * 0.0434, "F": d["forces"][:40] * 0.0434}
    other = dict(arrays, z=np.where(arrays["z"] == 8, 7, arrays["z"]))  # O -> N
    said = []
    with pytest.raises(SplitError, match="element N .*test"):
        train_sgdml(arrays, 20, 5, sigmas=[20], test=other, progress=said.append,
                    checkpoint=tmp_path / "s.ckpt")
    assert not said and not os.listdir(tmp_path)  # nothing computed, no checkpoint


def test_committee_member_without_an_element_is_refused_before_any_training(tmp_path, capsys):
    """The Mo frame is in the training pool and in the served mean's frames, but the second
    member's subsample misses it: refused before the served mean or any member trains."""
    data = _with_mo(tmp_path, _nn_index("train"))
    out = tmp_path / "c.mlff"
    _refused(tmp_path, capsys, ["train", "bpnn", data, *NN_SPLIT, *BPNN, "--committee", "2",
                                "--committee-frames", "6", "-o", str(out)],
             "element Mo", "training pool frames", "committee member 2 of 2", "--committee-frames")
    # the committee trainer itself (Python): a DatasetError too
    from ase_mlff.training.committee import train_committee

    said = []
    with pytest.raises(DatasetError, match="committee member 2 of 2"):
        train_committee("bpnn", read(data), 2, n_member=6, seed=0, progress=said.append, n_train=10, n_valid=3,
                        n_test=3, cutoff=4.0, hidden=(4,), epochs=1)
    assert not said  # nothing trained


def test_mff_committee_checks_every_member_up_front(tmp_path, capsys):
    data = _with_mo(tmp_path, int(read(SI).split(13, 0, 3, seed=0).train[0]))
    _refused(tmp_path, capsys, ["train", "mff", data, "--n-test", "3", *MFF, "--committee", "2",
                                "--committee-frames", "4", "-o", str(tmp_path / "c.mlff")],
             "element Mo", "committee member 1 of 2")


def test_generic_trainer_refuses_an_element_only_in_the_validation_frames(tmp_path, capsys):
    from ase_mlff.training.trainer import main as trainer_main

    k = int(read(SI).split(14, 2, 0, seed=0).valid[0])
    data = _with_mo(tmp_path, k)
    before = set(os.listdir(tmp_path))
    assert trainer_main([data, "-o", str(tmp_path / "t.mlff"), "--family", "test_pair_mlp", "--import",
                         "test_trainer", "--model-config", '{"cutoff": 4.0}', "--n-train", "14", "--n-valid",
                         "2", "--epochs", "1"]) == 2
    assert "element Mo (in 1 of the 2 validation frames)" in capsys.readouterr().err
    assert set(os.listdir(tmp_path)) == before


def test_check_split_elements_counts_and_knows_a_parent():
    si, mo = read(SI), read(MO)
    check_split_elements(list(si[:3]), {"test": list(si[3:5])})  # nothing missing
    mixed = [si[0], mo[0], mo[1]]
    with pytest.raises(SplitError) as exc:
        check_split_elements(list(si[:2]), {"validation": mixed[:2], "test": mixed})
    assert "Mo (in 1 of the 2 validation frames, 2 of the 3 test frames)" in str(exc.value)
    assert isinstance(exc.value, DatasetError)
    check_split_elements(list(si[:2]), {"test": mixed}, known=[42])  # a fine-tuned parent knows Mo
