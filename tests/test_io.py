"""Model files: round trip, self-description, and clear errors for every kind of damage."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from ase.build import bulk

import ase_mlff
from ase_mlff import ModelFileError
from ase_mlff.io import FORMAT_VERSION, load_model, read_metadata, save_model


@pytest.fixture
def model_file(tmp_path, analytic_model):
    path = tmp_path / "model.mlff"
    save_model(analytic_model, path, training={"data_sha256": "ab" * 32, "units": {"energy": "eV"}, "n_train": 3})
    return path


def _rewrite(src, dst, change):
    """Copy a zip archive, letting change(name, bytes) -> bytes alter members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))


def test_round_trip_identical_predictions(model_file, analytic_model, rng):
    atoms = bulk("Cu", "fcc", a=3.7).repeat(2)
    atoms.numbers[::3] = 13
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    atoms.calc = ase_mlff.MLFFCalculator(analytic_model)
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = ase_mlff.load(model_file)
    assert atoms.get_potential_energy() == e
    np.testing.assert_array_equal(atoms.get_forces(), f)
    np.testing.assert_array_equal(atoms.get_stress(), s)


def test_metadata_self_describing(model_file):
    meta = read_metadata(model_file)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["family"] == "test_analytic"
    assert meta["elements"] == ["Al", "Cu"]
    assert meta["cutoff"] == 4.5
    assert meta["units"]["energy"] == "eV" and meta["units"]["length"] == "Ang"
    assert meta["dtype"] == "float64"
    assert meta["training_data_hash"] == "ab" * 32
    assert meta["package_version"] == ase_mlff.__version__
    assert meta["hyperparameters"]["r0"] == 2.5
    assert meta["training"]["n_train"] == 3


def test_file_permissions_follow_umask(model_file):
    umask = os.umask(0)
    os.umask(umask)
    assert (model_file.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_no_pickle_in_file(model_file):
    with zipfile.ZipFile(model_file) as zf:
        for name in zf.namelist():
            if name.endswith(".npy"):
                arr = np.lib.format.read_array(io.BytesIO(zf.read(name)), allow_pickle=False)
                assert arr.dtype != object


def test_missing_and_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.mlff")
    junk = tmp_path / "junk.mlff"
    junk.write_text("hello")
    with pytest.raises(ModelFileError, match="not an ase-mlff model file|truncated"):
        load_model(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x.txt", "y")
    with pytest.raises(ModelFileError, match="no meta.json"):
        load_model(other)


def test_truncated(model_file, tmp_path):
    data = model_file.read_bytes()
    for keep in (len(data) // 2, len(data) - 30):
        bad = tmp_path / f"trunc{keep}.mlff"
        bad.write_bytes(data[:keep])
        with pytest.raises(ModelFileError):
            load_model(bad)


def test_corrupted_byte(model_file, tmp_path):
    """Every single flipped byte gives either a ModelFileError or (for bytes in zip header
    fields that do not touch content, e.g. timestamps) exactly the original model."""
    original = load_model(model_file).get_arrays()
    data = bytearray(model_file.read_bytes())
    caught = 0
    for pos in range(0, len(data), max(1, len(data) // 60)):
        bad = tmp_path / "corrupt.mlff"
        damaged = data.copy()
        damaged[pos] ^= 0xFF
        bad.write_bytes(bytes(damaged))
        try:
            arrays = load_model(bad).get_arrays()
        except ModelFileError:
            caught += 1
            continue
        assert arrays.keys() == original.keys()
        for k in arrays:
            np.testing.assert_array_equal(arrays[k], original[k])
    assert caught >= 30


def test_tampered_array_and_meta(model_file, tmp_path):
    def change_array(name, blob):
        if name.startswith("arrays/"):
            arr = np.lib.format.read_array(io.BytesIO(blob))
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr * 1.01)
            return buf.getvalue()
        return blob

    bad = tmp_path / "tampered.mlff"
    _rewrite(model_file, bad, change_array)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(bad)

    def change_meta(name, blob):
        if name == "meta.json":
            return blob.replace(b'"cutoff": 4.5', b'"cutoff": 9.5')
        return blob

    _rewrite(model_file, bad, change_meta)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(bad)


def _with_meta(model_file, dst, edit):
    import hashlib

    with zipfile.ZipFile(model_file) as zf:
        meta = json.loads(zf.read("meta.json"))
    edit(meta)
    new = json.dumps(meta).encode()

    def change(name, blob):
        if name == "meta.json":
            return new
        if name == "meta.sha256":
            return hashlib.sha256(new).hexdigest().encode()
        return blob

    _rewrite(model_file, dst, change)


def test_unknown_version_and_family(model_file, tmp_path):
    bad = tmp_path / "future.mlff"
    _with_meta(model_file, bad, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match=f"version {FORMAT_VERSION + 1}.*versions 1 to {FORMAT_VERSION}"):
        load_model(bad)
    _with_meta(model_file, bad, lambda m: m.update(family="alien"))
    with pytest.raises(ModelFileError, match="alien"):
        load_model(bad)


def test_atomic_write_keeps_old_file_on_failure(model_file, analytic_model, monkeypatch):
    before = model_file.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(analytic_model, "get_arrays", lambda: {"x": np.zeros(3)})
    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(RuntimeError):
        save_model(analytic_model, model_file)
    assert model_file.read_bytes() == before
    assert [p for p in os.listdir(model_file.parent) if p.endswith(".tmp")] == []


def test_killed_save_leaves_a_recognisable_temporary_that_the_next_save_removes(model_file, analytic_model):
    """A writer killed mid-save leaves ``.{name}.{pid}.{random}.tmp``; once that pid is gone,
    the next save to the same path removes it, and leftovers of live writers or of other
    files stay."""
    import re
    import subprocess
    import sys
    import time

    script = (
        "import os, sys\n"
        "from ase_mlff.io import atomic_write_bytes\n"
        "def write(fh):\n"
        "    fh.write(b'half a model')\n"
        "    fh.flush()\n"
        "    os._exit(9)\n"
        "atomic_write_bytes(sys.argv[1], write)\n"
    )
    # cwd outside the source tree: the child must import the installed (compiled) package
    subprocess.run([sys.executable, "-c", script, str(model_file)], check=False, cwd=model_file.parent)
    folder = model_file.parent
    leftovers = [p for p in os.listdir(folder) if p.endswith(".tmp")]
    assert len(leftovers) == 1
    assert re.fullmatch(r"\.model\.mlff\.\d+\.\w+\.tmp", leftovers[0])
    live = folder / f".model.mlff.{os.getpid()}.livewriter.tmp"  # this process: still writing
    other = folder / ".other.mlff.1.x.tmp"  # another file's temporary
    old_style = folder / ".model.mlff.abcd1234.tmp"  # no pid; removed only once old
    recent_old_style = folder / ".model.mlff.efgh5678.tmp"
    for p in (live, other, old_style, recent_old_style):
        p.write_bytes(b"x")
    hours_ago = time.time() - 7200
    os.utime(old_style, (hours_ago, hours_ago))
    save_model(analytic_model, model_file)
    remaining = sorted(p for p in os.listdir(folder) if p.endswith(".tmp"))
    assert remaining == sorted([live.name, other.name, recent_old_style.name])
    load_model(model_file)  # the model itself is whole


def test_stale_temporary_of_a_live_pid_is_removed_when_old(model_file, analytic_model):
    import time

    stale = model_file.parent / f".model.mlff.{os.getpid()}.abandoned.tmp"
    stale.write_bytes(b"x")
    hours_ago = time.time() - 7200
    os.utime(stale, (hours_ago, hours_ago))
    save_model(analytic_model, model_file)
    assert not stale.exists()


def test_temporary_cleanup_never_follows_links(model_file, analytic_model, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = model_file.parent / ".model.mlff.1.link.tmp"
    os.symlink(target, link)
    save_model(analytic_model, model_file)
    assert target.read_text() == "keep me"


def test_cutoff_below_a_tenth_of_an_angstrom_is_refused(model_file, tmp_path):
    """A local model's cutoff sizes its neighbour list: 1e-300 loaded before (SchNet then divided
    by it), and no pair of real atoms is closer than 0.1 Å."""
    for cutoff in (1e-300, 0.05):
        bad = tmp_path / "tiny_cutoff.mlff"

        def edit(m, cutoff=cutoff):
            m["cutoff"] = cutoff
            m["hyperparameters"]["cutoff"] = cutoff

        _with_meta(model_file, bad, edit)
        with pytest.raises(ModelFileError, match=r"field 'cutoff' must be null \(global model\) or a finite "
                                                 r"number of Å, at least 0.1"):
            load_model(bad)
    _with_meta(model_file, bad, lambda m: (m.update(cutoff=0.1), m["hyperparameters"].update(cutoff=0.1)))
    assert load_model(bad).cutoff == 0.1


def test_archive_member_reaching_into_the_next_is_refused_for_checkpoints_too(tmp_path):
    """read_archive (checkpoints, fit-head files) checks the zip directory like load_model: a
    member whose entry claims more compressed bytes than lie before the next member is refused,
    although zipfile would stop at the end of its deflate stream and read it fine."""
    import struct

    from ase_mlff.io import read_archive, write_archive

    path = tmp_path / "ckpt.mlff"
    arrays = {"w": np.arange(5000.0), "b": np.ones(3)}
    write_archive(path, {"format": "ase-mlff-model", "format_version": FORMAT_VERSION}, arrays)
    meta, got = read_archive(path)
    np.testing.assert_array_equal(got["w"], arrays["w"])
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    while central >= 0:  # the central directory entry of arrays/w.npy claims the whole file
        nlen = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46:central + 46 + nlen] == b"arrays/w.npy":
            struct.pack_into("<I", data, central + 20, len(data))
        central = data.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"'arrays/w.npy' claims \d+ compressed bytes"):
        read_archive(path)
