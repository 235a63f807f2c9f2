"""Hostile model files: damaged, edited or crafted archives either load as exactly the model
that was saved or raise ModelFileError, quickly and without allocating what they claim.

The shipped potentials are mutated the way an attacker or a broken disk would: single
meta.json edits with the checksum recomputed (so only the schema checks stand in the way),
bit flips and truncations of the zip, array members rewritten with other dtypes, shapes or
NaNs (table entry and checksum updated), and zip members whose inflated size is a lie.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ase_mlff import ModelFileError
from ase_mlff.cli import main
from ase_mlff.io import load_model, read_metadata

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"sgdml": ROOT / "potentials" / "ethanol_sgdml.mlff", "mff": ROOT / "potentials" / "ni_mff.mlff"}
#: a refused file may use at most this much traced memory while being refused
MAX_REFUSED_BYTES = 32 * 2**20


# --------------------------------------------------------------------------- crafting
def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i.filename) for i in zf.infolist()}


def _npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _zip(members: dict[str, bytes], level: int = 1) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def craft(src, edit_meta=None, arrays=None, raw=None) -> bytes:
    """Bytes of a copy of ``src`` with meta.json edited in place by ``edit_meta(meta)``, arrays
    replaced (``{name: ndarray}``, table entry and checksums updated) or members replaced by
    ``raw`` (``{member: bytes}``, nothing updated); meta.sha256 always matches meta.json."""
    members = _members(src)
    meta = json.loads(members["meta.json"])
    for name, arr in (arrays or {}).items():
        blob = _npy(arr, allow_pickle=arr.dtype.hasobject)
        members[f"arrays/{name}.npy"] = blob
        meta["arrays"][name] = {"shape": list(arr.shape), "dtype": str(arr.dtype),
                                "sha256": hashlib.sha256(blob).hexdigest()}
    if edit_meta is not None:
        edit_meta(meta)
    members.update(raw or {})
    meta_bytes = json.dumps(meta).encode()
    members["meta.json"] = meta_bytes
    members["meta.sha256"] = hashlib.sha256(meta_bytes).hexdigest().encode()
    return _zip(members)


def _array(src, name) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(_members(src)[f"arrays/{name}.npy"]))


def _patch_sizes(data: bytes, member: str, file_size: int, crc: int, compress_size: int | None = None) -> bytes:
    """Rewrite the recorded uncompressed size and CRC (and, when given, the compressed size) of
    ``member`` in both zip headers."""
    data = bytearray(data)
    name = member.encode()
    local = data.find(b"PK\x03\x04")  # first local header
    while local >= 0:
        nlen = struct.unpack_from("<H", data, local + 26)[0]
        if data[local + 30:local + 30 + nlen] == name:
            struct.pack_into("<I", data, local + 14, crc)
            struct.pack_into("<I", data, local + 22, file_size)
            if compress_size is not None:
                struct.pack_into("<I", data, local + 18, compress_size)
            break
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        nlen = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46:central + 46 + nlen] == name:
            struct.pack_into("<I", data, central + 16, crc)
            struct.pack_into("<I", data, central + 24, file_size)
            if compress_size is not None:
                struct.pack_into("<I", data, central + 20, compress_size)
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


def _npy_claiming(shape, data: bytes) -> bytes:
    """A .npy member whose header declares float64 ``shape`` but that holds only ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


def _lying_member(tmp_path, n_train: int, compress_ratio: int | None) -> Path:
    """The ethanol model whose hyperparameters, table, .npy header and zip directory all say
    that desc_train holds (n_train, 36) float64, while the member holds the real 1000 rows. With
    ``compress_ratio`` the directory also claims ``1/compress_ratio`` of that as compressed size
    (more than the file holds), so that the inflation ratio looks harmless."""
    src = SHIPPED["sgdml"]
    real = io.BytesIO(_members(src)["arrays/desc_train.npy"])
    assert np.lib.format.read_magic(real) == (1, 0)
    np.lib.format.read_array_header_1_0(real)  # skip the header: the data follow
    blob = _npy_claiming((n_train, 36), real.read())

    def edit(m):
        m["hyperparameters"]["n_train"] = n_train
        for name in ("desc_train", "v_train"):
            m["arrays"][name]["shape"] = [n_train, 36]
        m["arrays"]["desc_train"]["sha256"] = hashlib.sha256(blob).hexdigest()

    data = craft(src, edit, raw={"arrays/desc_train.npy": blob})
    claimed = len(blob) - 1000 * 36 * 8 + n_train * 36 * 8
    compressed = None if compress_ratio is None else claimed // compress_ratio
    data = _patch_sizes(data, "arrays/desc_train.npy", claimed, zlib.crc32(blob), compressed)
    # v_train claims the same (the table says so); desc_train is read first and gives out first
    real_v = _members(src)["arrays/v_train.npy"]
    data = _patch_sizes(data, "arrays/v_train.npy", claimed, zlib.crc32(real_v), compressed)
    path = tmp_path / f"lying_{n_train}_{compress_ratio}.mlff"
    path.write_bytes(data)
    return path


def _many_zero_members(tmp_path, n_train: int) -> Path:
    """The ethanol committee (9 sGDML models) with every desc_train and v_train replaced by
    (n_train, 36) zeros: each member stays below the size at which its own inflation ratio is
    checked, but together they inflate to far more than the file holds."""
    src = ROOT / "potentials" / "ethanol_sgdml_committee.mlff"
    members = _members(src)
    meta = json.loads(members["meta.json"])
    hp = meta["hyperparameters"]
    for cfg in hp["members"] + ([hp["mean"]] if hp.get("mean") else []):
        cfg["n_train"] = n_train
    blob = _npy(np.zeros((n_train, 36)))  # one bytes object shared by every member
    sha = hashlib.sha256(blob).hexdigest()
    for name in meta["arrays"]:
        if name.endswith(("desc_train", "v_train")):
            meta["arrays"][name] = {"shape": [n_train, 36], "dtype": "float64", "sha256": sha}
            members[f"arrays/{name}.npy"] = blob
    members["meta.json"] = json.dumps(meta).encode()
    members["meta.sha256"] = hashlib.sha256(members["meta.json"]).hexdigest().encode()
    path = tmp_path / "many_zero_members.mlff"
    path.write_bytes(_zip(members, level=9))  # zeros deflate 1000:1
    return path


# --------------------------------------------------------------------------- reference results
def _structure(family):
    if family == "sgdml":
        return read(ROOT / "potentials" / "ethanol_start.xyz")
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True)
    atoms.positions += np.random.default_rng(7).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def _predict(model, family):
    from ase_mlff import MLFFCalculator

    atoms = _structure(family)
    atoms.calc = MLFFCalculator(model)
    return atoms.get_potential_energy(), atoms.get_forces()


_REFERENCE: dict[str, tuple] = {}


def _reference(family):
    if family not in _REFERENCE:
        _REFERENCE[family] = _predict(load_model(SHIPPED[family]), family)
    return _REFERENCE[family]


def _load_bounded(path):
    """load_model(path) with the traced peak memory; the result is a model or the exception."""
    tracemalloc.start()
    try:
        try:
            result = load_model(path)
        except ModelFileError as exc:
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


# --------------------------------------------------------------------------- fuzz
def _paths(value, prefix=()):
    """Paths to every field of meta.json (the first three items of long lists)."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _nested(depth):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


REPLACEMENTS = {
    "delete": None, "none": None, "str": "x", "empty_str": "", "list": [1, 2], "dict": {"a": 1},
    "huge_int": 10**30, "huge_digits": int("9" * 30), "negative": -1, "negative_float": -2.5,
    "nan": math.nan, "inf": math.inf, "true": True, "zero": 0, "float": 0.5, "nested": _nested(200),
    "mildly_nested": _nested(40),
}

#: hyperparameters for which any finite number gives a valid (but different) model
FREE_PARAMETERS = {("hyperparameters", "c"), ("hyperparameters", "sigma")}


def _edit(meta, path, kind):
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = json.loads(json.dumps(REPLACEMENTS[kind]))


mutation = st.one_of(
    st.tuples(st.just("meta"), st.integers(0, 10**6), st.sampled_from(sorted(REPLACEMENTS))),
    st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**7), st.just(0)),
    st.tuples(st.just("dtype"), st.integers(0, 10), st.sampled_from(
        ["complex128", "U3", "object", "float32", "int64", "int32", "bool", ">f8", "float16"])),
    st.tuples(st.just("shape"), st.integers(0, 10), st.sampled_from(["drop_row", "transpose", "flat", "add_axis"])),
    st.tuples(st.just("nan"), st.integers(0, 10), st.sampled_from([math.nan, math.inf, -math.inf])),
)


def _mutate(family, kind, a, b) -> tuple[bytes, tuple | None]:
    """Bytes of the mutated shipped file and, for meta edits, the edited path."""
    src = SHIPPED[family]
    data = src.read_bytes()
    if kind == "flip":
        out = bytearray(data)
        out[a % len(data)] ^= b
        return bytes(out), None
    if kind == "truncate":
        return data[:a % len(data)], None
    if kind == "meta":
        meta = json.loads(_members(src)["meta.json"])
        paths = _paths(meta)
        path = paths[a % len(paths)]
        return craft(src, lambda m: _edit(m, path, b)), path
    names = sorted(json.loads(_members(src)["meta.json"])["arrays"])
    name = names[a % len(names)]
    arr = _array(src, name)
    if kind == "dtype":
        if b == "complex128":
            new = arr.astype(np.complex128) + (1j if arr.dtype.kind == "f" else 0)
        elif b == "U3":
            new = arr.astype(str).astype("U3")
        elif b == "object":
            new = arr.astype(object)
        else:
            new = arr.astype(b)
    elif kind == "shape":
        if b == "drop_row":
            new = arr[:-1] if arr.ndim and len(arr) else np.zeros(1)
        elif b == "transpose":
            new = np.ascontiguousarray(arr.T) if arr.ndim > 1 else arr[::-1].copy()
        elif b == "flat":
            new = arr.reshape(-1) if arr.ndim > 1 else arr.reshape(1, -1)
        else:
            new = arr[None]
    else:  # nan
        new = arr.astype(np.float64) if arr.dtype.kind != "f" else arr.copy()
        if new.size:
            new.reshape(-1)[new.size // 2] = b
        else:
            new = np.array([b])
    return craft(src, arrays={name: new}), None


@pytest.mark.parametrize("family", ["sgdml", "mff"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=mutation)
def test_mutated_model_file_is_refused_or_identical(family, change, tmp_path):
    kind, a, b = change
    data, path = _mutate(family, kind, a, b)
    bad = tmp_path / f"{family}.mlff"
    bad.write_bytes(data)
    result, peak = _load_bounded(bad)
    if isinstance(result, ModelFileError):
        assert peak < MAX_REFUSED_BYTES, f"refusing used {peak / 2**20:.1f} MiB"
        assert str(bad) in str(result)
        return
    e, f = _predict(result, family)
    e0, f0 = _reference(family)
    if path in FREE_PARAMETERS and e != e0:
        # a valid edit of a free parameter: the loader must have taken exactly the file's value
        assert getattr(result, path[1]) == float(result.meta["hyperparameters"][path[1]])
        assert np.isfinite(e) and np.isfinite(f).all()
        return
    assert e == e0, (kind, a, b, path)
    np.testing.assert_array_equal(f, f0)


@pytest.mark.parametrize("family", ["sgdml", "mff"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=st.tuples(st.integers(0, 10**6), st.sampled_from(sorted(REPLACEMENTS))))
def test_info_on_edited_meta_never_shows_a_traceback(family, edit, tmp_path, capsys):
    src = SHIPPED[family]
    paths = _paths(json.loads(_members(src)["meta.json"]))
    path = paths[edit[0] % len(paths)]
    bad = tmp_path / "edited.mlff"
    bad.write_bytes(craft(src, lambda m: _edit(m, path, edit[1])))
    rc = main(["info", str(bad)])
    out, err = capsys.readouterr()
    assert rc in (0, 1)
    if rc == 1:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(bad) in err


# --------------------------------------------------------------------------- explicit cases
def _refused(path, match):
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)
    return info.value


def test_shipped_files_load_unchanged():
    for family, path in SHIPPED.items():
        e, f = _predict(load_model(path), family)
        assert np.isfinite(e) and np.isfinite(f).all()
        assert read_metadata(path)["family"] == family


def test_huge_sizes_in_hyperparameters_are_refused_before_allocating(tmp_path):
    src = SHIPPED["sgdml"]
    cases = {
        "n_train": lambda m: m["hyperparameters"].update(n_train=10**7),
        "n_perms": lambda m: m["hyperparameters"].update(n_perms=10**6),
        "n_atoms": lambda m: m["hyperparameters"].update(n_atoms=10**4),
        "beyond_bounds": lambda m: m["hyperparameters"].update(n_train=10**12),
    }
    for field, edit in cases.items():
        path = tmp_path / f"{field}.mlff"
        path.write_bytes(craft(src, edit))
        result, peak = _load_bounded(path)
        assert isinstance(result, ModelFileError), field
        assert "n_train" in str(result) or "arrays." in str(result)
        assert peak < MAX_REFUSED_BYTES
    # the table agrees with the hyperparameters, but the members do not hold that much data
    path = tmp_path / "table.mlff"

    def both(m):
        m["hyperparameters"]["n_train"] = 10**7
        for name in ("desc_train", "v_train"):
            m["arrays"][name]["shape"] = [10**7, 36]

    path.write_bytes(craft(src, both))
    _refused(path, r"member arrays/desc_train.npy is \d+ bytes uncompressed, but meta.json field "
                   r"'arrays.desc_train' declares float64 \[10000000, 36\]")
    mff = tmp_path / "mff.mlff"
    mff.write_bytes(craft(SHIPPED["mff"], lambda m: m["hyperparameters"].update(n3=5000)))
    _refused(mff, "arrays.coef3")


def _bomb(tmp_path, honest: bool) -> Path:
    """The ethanol model whose desc_train member inflates to 200 MiB more than its array; with
    ``honest`` the zip directory says so, otherwise it claims the array's true size."""
    src = SHIPPED["sgdml"]
    members = _members(src)
    real = members["arrays/desc_train.npy"]
    inflated = real + bytes(200 * 2**20)
    members["arrays/desc_train.npy"] = inflated
    data = _zip(members)
    if not honest:
        data = _patch_sizes(data, "arrays/desc_train.npy", len(real), zlib.crc32(inflated))
    path = tmp_path / f"bomb_{honest}.mlff"
    path.write_bytes(data)
    assert path.stat().st_size < 2 * 2**20
    return path


def test_zip_bomb_is_refused_without_inflating(tmp_path):
    result, peak = _load_bounded(_bomb(tmp_path, honest=True))
    assert isinstance(result, ModelFileError) and "declares float64 [1000, 36]" in str(result)
    assert peak < MAX_REFUSED_BYTES
    result, peak = _load_bounded(_bomb(tmp_path, honest=False))
    assert isinstance(result, ModelFileError) and "desc_train" in str(result)
    assert peak < MAX_REFUSED_BYTES


def test_honest_but_extreme_compression_is_refused(tmp_path):
    src = SHIPPED["sgdml"]
    n_train = 70 * 2**20 // (36 * 8)
    zeros = np.zeros((n_train, 36))
    path = tmp_path / "zeros.mlff"
    path.write_bytes(craft(src, lambda m: m["hyperparameters"].update(n_train=n_train),
                           arrays={"desc_train": zeros, "v_train": zeros}))
    result, peak = _load_bounded(path)
    assert isinstance(result, ModelFileError) and "zip bomb" in str(result)
    assert peak < MAX_REFUSED_BYTES


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_is_refused():
    _refused("/dev/zero", "not a regular file")
    assert main(["info", "/dev/zero"]) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.mlff"
    os.mkfifo(fifo)
    outcome = []

    def attempt():
        try:
            load_model(fifo)
        except ModelFileError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # blocked opening the FIFO: give it a writer so the thread ends
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=5)
        pytest.fail("load_model blocked on a FIFO")
    assert outcome and "not a regular file" in str(outcome[0])


def test_directory_is_refused(tmp_path):
    _refused(tmp_path, "not a regular file")


def test_nan_and_inf_coefficients_are_refused(tmp_path):
    for family, name in (("mff", "coef2"), ("mff", "coef3"), ("sgdml", "v_train")):
        for value in (math.nan, math.inf):
            arr = _array(SHIPPED[family], name).copy()
            arr.reshape(-1)[arr.size // 3] = value
            path = tmp_path / f"{family}_{name}.mlff"
            path.write_bytes(craft(SHIPPED[family], arrays={name: arr}))
            _refused(path, f"array '{name}' holds NaN or infinite values")


@pytest.mark.parametrize("dtype,match", [
    ("complex128", "'arrays.desc_train.dtype' must be one of"),
    ("object", "'arrays.desc_train.dtype' must be one of"),
    ("U8", "'arrays.desc_train.dtype' must be one of"),
    ("float32", "float32"),
])
def test_array_dtypes_are_checked(tmp_path, dtype, match):
    arr = _array(SHIPPED["sgdml"], "desc_train").astype(dtype)
    path = tmp_path / "dtype.mlff"
    path.write_bytes(craft(SHIPPED["sgdml"], arrays={"desc_train": arr}))
    _refused(path, match)


def test_npy_header_must_agree_with_the_table(tmp_path):
    """A member whose .npy header says complex (or object, or another shape) is refused from
    the header, even when the table entry and checksum were forged to claim float64."""
    src = SHIPPED["sgdml"]
    arr = _array(src, "desc_train")
    for stored, match in ((arr.astype(np.complex128)[:, :18], "stored as '<c16'"),
                          (arr.astype(object), "stored as '\\|O'|uncompressed"),
                          (arr.reshape(36, 1000), r"has shape \[36, 1000\]")):
        blob = _npy(stored, allow_pickle=True)

        def forge(m, blob=blob):
            m["arrays"]["desc_train"]["sha256"] = hashlib.sha256(blob).hexdigest()

        path = tmp_path / "header.mlff"
        path.write_bytes(craft(src, forge, raw={"arrays/desc_train.npy": blob}))
        _refused(path, match)


def test_wrong_content_is_refused(tmp_path):
    src = SHIPPED["sgdml"]
    perms = _array(src, "perms").copy()
    perms[1] = perms[0]
    path = tmp_path / "perms.mlff"
    path.write_bytes(craft(src, arrays={"perms": perms}))
    _refused(path, "same permutation twice")
    z = _array(src, "z").copy()
    z[0] = 7
    path.write_bytes(craft(src, arrays={"z": z}))
    _refused(path, "array 'z' holds elements")


@pytest.mark.parametrize("field,value,match", [
    ("elements", [1, 6, 8], "'elements'"),
    ("elements", ["H", "C", "N"], "'elements' must name the elements"),
    ("atomic_numbers", "168", "'atomic_numbers'"),
    ("cutoff", math.nan, "'cutoff'"),
    ("cutoff", -1.0, "'cutoff'"),
    ("format_version", "1", "format version '1'"),
    ("family", ["sgdml"], "'family'"),
    ("units", {"energy": "kcal/mol"}, "'units'"),
    ("hyperparameters", [], "'hyperparameters'"),
    ("training", "x", "'training'"),
    ("arrays", {"z": [9]}, "'arrays.z'"),
])
def test_meta_fields_are_checked(tmp_path, field, value, match, capsys):
    path = tmp_path / "meta.mlff"
    path.write_bytes(craft(SHIPPED["sgdml"], lambda m: m.update({field: value})))
    _refused(path, match)
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ase-mlff: error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("key,value", [("sigma", -1.0), ("sigma", "10"), ("n_atoms", 9.5), ("n_perms", True),
                                       ("lam", math.nan), ("c", None), ("n_train", -3), ("cutoff", 5.0)])
def test_sgdml_hyperparameters_are_checked(tmp_path, key, value):
    path = tmp_path / "hp.mlff"
    path.write_bytes(craft(SHIPPED["sgdml"], lambda m: m["hyperparameters"].update({key: value})))
    _refused(path, f"hyperparameters.{key}")


def test_deeply_nested_meta_is_refused(tmp_path, capsys):
    src = SHIPPED["mff"]
    for depth in (100, 100_000):
        text = "[" * depth + "]" * depth
        edit = lambda m: m["training"].update(x="@@")  # noqa: E731
        data = craft(src, edit)
        members = _members(io.BytesIO(data))
        meta_bytes = members["meta.json"].replace(b'"@@"', text.encode())
        members["meta.json"] = meta_bytes
        members["meta.sha256"] = hashlib.sha256(meta_bytes).hexdigest().encode()
        path = tmp_path / f"nested{depth}.mlff"
        path.write_bytes(_zip(members))
        _refused(path, "nested too deeply")
        assert main(["info", str(path)]) == 1
        assert "Traceback" not in capsys.readouterr().err


def test_extra_members_and_oversized_meta_are_refused(tmp_path):
    src = SHIPPED["mff"]
    path = tmp_path / "extra.mlff"
    path.write_bytes(craft(src, raw={"payload.bin": bytes(100)}))
    _refused(path, "payload.bin")
    path.write_bytes(craft(src, lambda m: m["training"].update(blob="x" * 5 * 2**20)))
    _refused(path, "meta.json is .* bytes")


def test_refused_crafted_files_stay_small_in_a_fresh_process(tmp_path):
    """In a fresh interpreter with the address space capped a few hundred MiB above what
    importing needs, every crafted file is a ModelFileError (an allocation of what the file
    claims would fail instead), and the resident peak grows by at most tens of MiB."""
    if not sys.platform.startswith("linux"):
        pytest.skip("uses /proc and RLIMIT_AS")
    files = []
    src = SHIPPED["sgdml"]
    for name, edit in {"n_train": lambda m: m["hyperparameters"].update(n_train=10**7),
                       "n_perms": lambda m: m["hyperparameters"].update(n_perms=10**6),
                       "n_atoms": lambda m: m["hyperparameters"].update(n_atoms=10**4)}.items():
        path = tmp_path / f"{name}.mlff"
        path.write_bytes(craft(src, edit))
        files.append(str(path))
    files += [str(_bomb(tmp_path, True)), str(_bomb(tmp_path, False))]
    mff = tmp_path / "mff_n3.mlff"
    mff.write_bytes(craft(SHIPPED["mff"], lambda m: m["hyperparameters"].update(n3=5000)))
    files.append(str(mff))
    # a 0.6 MB file whose directory claims a 2.9 GB member and 19 MB of compressed data for it
    # (an inflation of 150:1, below the zip-bomb ratio); and a 1.0 MB committee whose 18 members
    # of zeros each stay below the size at which one member's ratio is checked but add up to 1 GB
    files += [str(_lying_member(tmp_path, 10**7, compress_ratio=150)), str(_many_zero_members(tmp_path, 200_000))]
    script = textwrap.dedent("""
        import json, resource, sys
        from ase_mlff import ModelFileError
        from ase_mlff.io import load_model
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 400 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {}
        for path in sys.argv[1:]:
            try:
                load_model(path)
                out[path] = "loaded"
            except ModelFileError as exc:
                out[path] = "ModelFileError"
            except BaseException as exc:
                out[path] = type(exc).__name__ + ": " + str(exc)[:200]
            out[path + ":peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps(out))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # cwd outside the source tree: the child must import the installed (compiled) package
    proc = subprocess.run([sys.executable, "-c", script, *files], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in files:
        assert out[path] == "ModelFileError", (path, out[path])
    assert max(out[p + ":peak_kib"] for p in files) < 48 * 1024, out


# --------------------------------------------------------------------------- sizes the directory claims
def test_member_claiming_more_compressed_bytes_than_the_file_holds_is_refused(tmp_path):
    """Sizes and CRC of desc_train are true, but its directory entry claims the whole file as
    compressed data: zipfile stops at the end of the deflate stream and would read it fine; a
    member that reaches into the next one is how a small archive passes the ratio check."""
    src = SHIPPED["sgdml"]
    real = _members(src)["arrays/desc_train.npy"]
    path = tmp_path / "overlapping.mlff"
    path.write_bytes(src.read_bytes())
    path.write_bytes(_patch_sizes(path.read_bytes(), "arrays/desc_train.npy", len(real), zlib.crc32(real),
                                  compress_size=path.stat().st_size))
    _refused(path, r"archive member 'arrays/desc_train.npy' claims \d+ compressed bytes at offset \d+, more than")


def test_member_that_holds_less_than_its_entry_claims_costs_what_it_holds(tmp_path):
    """The directory, table and header agree on 43 MB (below the size at which one member's
    inflation is checked); the stream holds 0.3 MB. The loader reads what is there and stops."""
    path = _lying_member(tmp_path, 150_000, compress_ratio=None)
    result, peak = _load_bounded(path)
    assert isinstance(result, ModelFileError), result
    assert "desc_train" in str(result) and str(path) in str(result)
    assert peak < 4 * 2**20, f"refusing used {peak / 2**20:.1f} MiB"


def test_members_that_together_inflate_too_much_are_refused(tmp_path):
    """Two 60 MB members of zeros (each below the single-member check) in a 0.3 MB file."""
    n_train = 60 * 2**20 // (36 * 8)
    zeros = np.zeros((n_train, 36))
    path = tmp_path / "zeros.mlff"
    path.write_bytes(craft(SHIPPED["sgdml"], lambda m: m["hyperparameters"].update(n_train=n_train),
                           arrays={"desc_train": zeros, "v_train": zeros}))
    del zeros
    assert path.stat().st_size < 2**20
    result, peak = _load_bounded(path)
    assert isinstance(result, ModelFileError)
    assert "members would inflate to" in str(result) and "zip bomb" in str(result)
    assert peak < MAX_REFUSED_BYTES
    assert main(["info", str(path)]) == 1


def test_out_of_memory_is_a_model_file_error(tmp_path, monkeypatch):
    """An honest model that does not fit in the memory left: ModelFileError, not MemoryError."""
    import ase_mlff.io as mio

    def no_memory(self, name):
        raise MemoryError

    monkeypatch.setattr(mio._Archive, "read_array", no_memory)
    for call in (load_model, mio.read_archive):
        with pytest.raises(ModelFileError, match="not enough memory to load it") as info:
            call(SHIPPED["mff"])
        assert str(SHIPPED["mff"]) in str(info.value)


# --------------------------------------------------------------------------- hyperparameters, edited
POTENTIALS = ROOT / "potentials"


def _set(path: str, value):
    """An edit of meta.json setting ``hyperparameters.<path>`` (dotted); ``cutoff`` also sets
    the top-level field, which must agree with it."""
    def edit(m):
        d = m["hyperparameters"]
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        if path == "cutoff":
            m["cutoff"] = value
    return edit


@pytest.mark.parametrize("name,path,value,match", [
    # the cases of the report: each loaded and gave NaN, inf, a wrong energy or a raw exception
    ("si_gap", "two_body.theta", 1e-200, r"hyperparameters.two_body.theta must be a finite number >= 0.001"),
    ("si_gap", "cutoff", 3.0, r"hyperparameters.cutoff 3 must equal the largest of soap.cutoff and two_body.cutoff"),
    ("si_gap", "reference_energies", [1e308], r"hyperparameters.reference_energies .* below 1e\+06 eV"),
    ("water_schnet", "cutoff", 1e-300, r"field 'cutoff' .* at least 0.1"),
    # the same bounds on the other scales and widths
    ("si_gap", "cutoff", 6.0, r"hyperparameters.cutoff 6 must equal"),
    ("si_gap", "soap.atom_sigma", 1e-300, r"hyperparameters.soap.atom_sigma"),
    ("si_gap", "delta", 5e-324, r"hyperparameters.delta"),
    ("si_gap", "two_body.delta", 0.0, r"hyperparameters.two_body.delta"),
    ("water_schnet", "energy_scale", 1e-300, r"hyperparameters.energy_scale"),
    ("water_schnet", "reference_energies", [-1e7, 0.0], r"hyperparameters.reference_energies"),
    ("water_schnet", "repulsion.width", 1e-300, r"hyperparameters.repulsion.width"),
    ("water_bpnn", "energy_scale", 1e-300, r"hyperparameters.energy_scale"),
    ("water_bpnn", "radial_eta.0.0.0", 1e300, r"hyperparameters.radial_eta must be at most"),
    ("water_bpnn", "reference_energies", [1e308, 0.0], r"hyperparameters.reference_energies"),
    ("ni_mff", "rc3", 1e-300, r"hyperparameters.rc3 must be 0 \(no 3-body term\) or at least 0.1"),
    ("ethanol_sgdml", "sigma", 1e-300, r"hyperparameters.sigma"),
    ("ethanol_sgdml", "c", 1e308, r"hyperparameters.c must be a finite number"),
    ("ethanol_sgdml_committee", "calibration.forces", 1e-300, r"hyperparameters.calibration.forces"),
    ("ethanol_sgdml_committee", "members.1.sigma", 1e-300, r"hyperparameters.members\[1\].sigma"),
])
def test_edited_hyperparameters_are_refused(tmp_path, name, path, value, match):
    """Hyperparameters edited with the checksum recomputed: every scale, width, cutoff and
    reference energy is bounded, so that what loads gives finite numbers."""
    bad = tmp_path / f"{name}.mlff"
    bad.write_bytes(craft(POTENTIALS / f"{name}.mlff", _set(path, value)))
    _refused(bad, match)


def test_schnet_gaussians_must_not_be_narrower_than_a_thousandth_of_an_angstrom():
    from ase_mlff.models.schnet import SchNetModel

    config = json.loads(_members(POTENTIALS / "water_schnet.mlff")["meta.json"])["hyperparameters"]
    SchNetModel.check_config({**config, "cutoff": 0.5, "n_rbf": 500})  # 0.001 Å apart
    with pytest.raises(ValueError, match=r"spacing and width of the Gaussians, must be at least 0.001 Å"):
        SchNetModel.check_config({**config, "cutoff": 0.1, "n_rbf": 512})


def test_edited_arrays_are_refused(tmp_path):
    """Array edits with the table and checksums recomputed: a BPNN scale of 1e-45 (NaN energies
    before), a zero GAP variance factor (a raw LinAlgError with uncertainty=True before), an
    MFF reference energy of 1e300, an empty BPNN training range."""
    cases = []
    std = _array(POTENTIALS / "water_bpnn.mlff", "nets.1.std")
    cases.append(("water_bpnn", {"nets.1.std": np.full_like(std, 1e-45)}, r"array 'nets.1.std' holds 1.4e-45"))
    fmin = _array(POTENTIALS / "water_bpnn.mlff", "nets.0.fmin").copy()
    fmin[3] = 1e6
    cases.append(("water_bpnn", {"nets.0.fmin": fmin}, r"'nets.0.fmin' and 'nets.0.fmax' give an empty training range"))
    e0 = _array(POTENTIALS / "ni_mff.mlff", "e0").copy()
    e0[0] = 1e300
    cases.append(("ni_mff", {"e0": e0}, r"array 'e0' holds 1e\+300 eV"))
    r = _array(POTENTIALS / "si_gap.mlff", "posterior_r")
    cases.append(("si_gap", {"posterior_r": np.zeros_like(r)}, r"posterior_r .* is singular: its diagonal element 0 is zero"))
    for name, arrays, match in cases:
        bad = tmp_path / f"{name}.mlff"
        bad.write_bytes(craft(POTENTIALS / f"{name}.mlff", arrays=arrays))
        _refused(bad, match)


def test_every_shipped_potential_passes_the_checks():
    for path in sorted(POTENTIALS.glob("*.mlff")):
        assert load_model(path).family == read_metadata(path)["family"]
