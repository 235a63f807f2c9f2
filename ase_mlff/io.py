"""The model file: one zip archive, loaded without executing any code.

Layout::

    meta.json            format name and version, family, elements, cutoff, units, dtype,
                         package version, training-data hash, hyperparameters, the table
                         of arrays (shape, dtype, sha256) and free-form training records
    meta.sha256          sha256 of meta.json's bytes
    arrays/<name>.npy    one numpy array each (real numeric dtypes only, C order)

A truncated, corrupted or modified file, an unknown format version or family, and arrays
that do not match their recorded checksums all raise :class:`~ase_mlff.errors.ModelFileError`
with the reason.

Reading is bounded by what the file declares, and every declaration is checked before it is
trusted (docs/model_files.md lists the guarantees):

1. the path must be a regular file (checked before opening, and again on the open descriptor),
   so a device such as ``/dev/zero`` or a FIFO is refused instead of read forever;
2. ``meta.json`` is at most :data:`MAX_META_BYTES`, nested at most :data:`MAX_JSON_DEPTH`
   deep, and every field the loader or ``ase-mlff info`` reads has its type and range checked;
3. the family turns its hyperparameters into the exact array names, shapes and dtypes they
   imply (:meth:`Model.check_config`) *without allocating them*, and bounds every value; the
   ``arrays`` table and the zip directory (member names, uncompressed and compressed sizes)
   must agree with that before a single array byte is decompressed; members may not overlap or
   claim more compressed bytes than the file holds, and together may inflate to at most
   :data:`BOMB_RATIO` times the file's size;
4. each ``.npy`` header is parsed and compared with the table before its data is read, and
   decompression stops at the declared size (a zip bomb is refused, never inflated) into a
   buffer that grows with what is really decompressed;
5. float arrays must be finite, and the family checks their content (:meth:`Model.check_arrays`);
   only then is the model constructed, so the memory it allocates is bounded by data the file
   really holds.

Files are written atomically: a temporary file ``.{name}.{pid}.{random}.tmp`` in the same
directory is fsynced and renamed over the destination, so a crash never leaves a half-written
model; temporary files that a killed writer left behind are removed by the next save to the
same path.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import stat
import struct
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import ModelFileError
from .models.base import MIN_CUTOFF, MODEL_REGISTRY, Model, symbols

FORMAT_NAME = "ase-mlff-model"
FORMAT_VERSION = 1

#: largest meta.json accepted; real ones are tens of kB (train indices included)
MAX_META_BYTES = 4 * 2**20
#: deepest JSON nesting accepted; real files nest 4 levels, and printing or checking a deeper
#: structure recursively could exhaust the interpreter's stack
MAX_JSON_DEPTH = 64
#: most members a model or checkpoint archive may have
MAX_MEMBERS = 1024
#: largest .npy header accepted (numpy writes 128 bytes for any realistic shape)
MAX_NPY_HEADER = 4096
#: a model-file member larger than BOMB_MIN_BYTES that compresses better than BOMB_RATIO:1 is
#: refused: trained float arrays compress 1-5:1, while a crafted run of zeros reaches 1000:1
BOMB_MIN_BYTES = 64 * 2**20
BOMB_RATIO = 200
#: temporary files of a save older than this are stale even if their writer's pid is in use
STALE_TMP_SECONDS = 3600.0
#: bytes decompressed per read of an array member
_CHUNK = 1 << 20

#: dtypes an array member may have: real numbers and booleans, nothing that needs pickle,
#: nothing complex (which would be cast to real silently) and no strings
ARRAY_DTYPES = {
    name: np.dtype(name)
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64")
}
_FLOAT_DTYPES = {"float16", "float32", "float64"}
_ARRAY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_FAMILY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
UNITS = {"energy": "eV", "length": "Ang", "forces": "eV/Ang", "stress": "eV/Ang^3"}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- writing
_TMP_NAME = re.compile(r"(?:(\d+)\.)?[A-Za-z0-9_]+\.tmp\Z")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists, owned by someone else (or a pid we cannot ask about)
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that interrupted saves to ``path`` left behind.

    A temporary file ``.{name}.{pid}.{random}.tmp`` is stale when process ``pid`` no longer
    exists or when it is older than :data:`STALE_TMP_SECONDS` (pids are reused); one of an
    older ase-mlff (``.{name}.{random}.tmp``, no pid) only by age. Returns the removed paths.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        m = _TMP_NAME.match(entry.name[len(prefix):])
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):  # never follow a link or touch anything but a file
            continue
        old = now - st.st_mtime > STALE_TMP_SECONDS
        dead = m.group(1) is not None and not _pid_alive(int(m.group(1)))
        if old or dead:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # another writer removed it first, or the directory is read-only
    return removed


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    # the pid in the name lets a later save tell a dead writer's leftover from a live one
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_archive(path, meta: dict[str, Any], arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """Write meta + arrays as a model-file-style archive (also used for checkpoints).
    ``compress=False`` stores the members uncompressed: float weights shrink little under
    deflate and compressing them took ~0.4 s per SchNet checkpoint, more than an epoch."""
    blobs = {name: _npy_bytes(np.asarray(a)) for name, a in arrays.items()}
    meta = dict(meta)
    meta["arrays"] = {
        name: {"shape": list(np.shape(arrays[name])), "dtype": str(np.asarray(arrays[name]).dtype),
               "sha256": _sha256(b)}
        for name, b in blobs.items()
    }
    meta_bytes = json.dumps(meta, indent=1, sort_keys=True).encode()

    def write(fh):
        mode = dict(compression=zipfile.ZIP_DEFLATED, compresslevel=6) if compress else dict(
            compression=zipfile.ZIP_STORED)
        with zipfile.ZipFile(fh, "w", **mode) as zf:
            zf.writestr("meta.json", meta_bytes)
            zf.writestr("meta.sha256", _sha256(meta_bytes))
            for name, b in blobs.items():
                zf.writestr(f"arrays/{name}.npy", b)

    atomic_write_bytes(path, write)


# --------------------------------------------------------------------------- reading
# What zipfile and zlib raise on damaged input (struct.error and IndexError from truncated
# headers, RuntimeError for an encrypted member, NotImplementedError for unknown compression).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError,
                RuntimeError, struct.error, IndexError, OverflowError)


def _open_regular(path: Path):
    """Open ``path`` for reading, refusing anything but a regular file.

    The type is checked before opening because opening a FIFO blocks until a writer appears
    and a device such as /dev/zero never ends; it is checked again on the descriptor (opened
    non-blocking) so that a file swapped for a FIFO in between cannot hang the reader.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read ({exc.strerror or exc})") from None
    not_regular = ModelFileError(
        f"{path} is not a regular file (a directory, device, pipe or socket); give the path of a "
        f".mlff model file")
    if not stat.S_ISREG(st.st_mode):
        raise not_regular
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise not_regular
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _json_depth_ok(value, limit: int) -> bool:
    """True when ``value`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                return False
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


class _Hashing:
    """File-like view of a zip member that hashes what it reads and never reads past ``limit``."""

    def __init__(self, fh, limit: int):
        self.fh, self.left, self.sha = fh, limit, hashlib.sha256()

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.left))
        out = bytearray()
        while len(out) < n:
            chunk = self.fh.read(min(n - len(out), _CHUNK))
            if not chunk:
                break
            out += chunk
        self.left -= len(out)
        self.sha.update(out)
        return bytes(out)


def _npy_header(stream: _Hashing, where: str) -> tuple[str, bool, tuple]:
    """``(descr, fortran_order, shape)`` of a .npy stream, parsed with a bounded header."""
    magic = stream.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise ModelFileError(f"{where} is not a .npy array")
    size_fmt = "<H" if magic[6] == 1 else "<I"
    raw = stream.read(struct.calcsize(size_fmt))
    if len(raw) != struct.calcsize(size_fmt):
        raise ModelFileError(f"{where} is truncated")
    (hlen,) = struct.unpack(size_fmt, raw)
    if hlen > MAX_NPY_HEADER:
        raise ModelFileError(f"{where} has a {hlen}-byte .npy header (at most {MAX_NPY_HEADER} accepted)")
    text = stream.read(hlen)
    if len(text) != hlen:
        raise ModelFileError(f"{where} is truncated")
    try:
        header = ast.literal_eval(text.decode("utf-8" if magic[6] == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, UnicodeDecodeError):
        raise ModelFileError(f"{where} has an unreadable .npy header") from None
    if (not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}
            or not isinstance(header["descr"], str) or not isinstance(header["fortran_order"], bool)
            or not isinstance(header["shape"], tuple) or not all(_is_int(n) for n in header["shape"])):
        raise ModelFileError(f"{where} has an unreadable .npy header")
    return header["descr"], header["fortran_order"], header["shape"]


def stream_sha256(fh) -> str:
    """sha256 (hex) of what is left to read in the binary file object ``fh``, in 1 MiB blocks."""
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path) -> str:
    """sha256 (hex) of the file at ``path`` (model files, checkpoints: what provenance records)."""
    with open(path, "rb") as fh:
        return stream_sha256(fh)


class _Archive:
    """An open model-file archive whose directory has been checked against its meta.json."""

    def __init__(self, path, bomb_check: bool):
        self.path = Path(path)
        self.bomb_check = bomb_check
        self.fh = _open_regular(self.path)
        try:
            self.zf = zipfile.ZipFile(self.fh, "r")
        except _READ_ERRORS:
            self.fh.close()
            raise ModelFileError(
                f"{self.path} is not an ase-mlff model file, or it is truncated (not a readable zip archive)"
            ) from None

    def close(self):
        self.zf.close()
        self.fh.close()

    def file_sha256(self) -> str:
        """sha256 of the whole file, as read through the same (regular-file) handle."""
        self.fh.seek(0)
        return stream_sha256(self.fh)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ members
    def _members(self) -> dict[str, zipfile.ZipInfo]:
        infos = self.zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ModelFileError(f"{self.path} has {len(infos)} archive members (at most {MAX_MEMBERS})")
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in members:
                raise ModelFileError(f"{self.path}: archive member {info.filename!r} appears twice")
            members[info.filename] = info
        # Each member's compressed bytes must lie between its own header and the next member's
        # (the last: before the directory). Otherwise the sizes the directory records are lies
        # that nothing else bounds: members sharing one run of compressed data, or claiming more
        # compressed bytes than the file holds to pass the inflation-ratio check. Together the
        # members then hold at most the file's size.
        order = sorted(infos, key=lambda i: i.header_offset)
        ends = [i.header_offset for i in order[1:]] + [self.zf.start_dir]
        for info, end in zip(order, ends):
            if info.header_offset + info.compress_size > end:
                raise ModelFileError(
                    f"{self.path}: archive member {_short(info.filename)} claims {info.compress_size} compressed "
                    f"bytes at offset {info.header_offset}, more than the archive holds before the next member "
                    f"(offset {end}); the zip directory is damaged or crafted")
        return members

    def _read(self, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
        """A whole small member, never decompressing more than ``limit`` bytes."""
        if info.file_size > limit:
            raise ModelFileError(f"{self.path}: {what} is {info.file_size} bytes (at most {limit} accepted)")
        self._check_compression(info, what)
        try:
            with self.zf.open(info) as fh:
                data = _Hashing(fh, limit).read(limit)
                if fh.read(1):
                    raise ModelFileError(f"{self.path}: {what} is larger than its zip entry says")
        except ModelFileError:
            raise
        except _READ_ERRORS as exc:
            raise ModelFileError(f"{self.path}: {what} is corrupted ({exc})") from None
        return data

    def _check_compression(self, info: zipfile.ZipInfo, what: str) -> None:
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{self.path}: {what} is encrypted; ase-mlff writes no encrypted members")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{self.path}: {what} uses compression method {info.compress_type}; "
                                 "ase-mlff model files use deflate")

    # ------------------------------------------------------------------ meta.json
    def read_meta(self) -> dict[str, Any]:
        """meta.json, verified against meta.sha256 and against the archive's directory."""
        self.members = members = self._members()
        if "meta.json" not in members or "meta.sha256" not in members:
            raise ModelFileError(f"{self.path} is a zip archive but not an ase-mlff model file (no meta.json)")
        meta_bytes = self._read(members["meta.json"], MAX_META_BYTES, "meta.json")
        recorded = self._read(members["meta.sha256"], 256, "meta.sha256").decode(errors="replace").strip()
        if _sha256(meta_bytes) != recorded:
            raise ModelFileError(f"{self.path}: meta.json does not match its checksum (file corrupted or modified)")
        try:
            meta = json.loads(meta_bytes)
        except RecursionError:
            raise ModelFileError(f"{self.path}: meta.json is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
        except ValueError as exc:  # also bad UTF-8 and integers with too many digits
            raise ModelFileError(f"{self.path}: meta.json is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{self.path}: meta.json is not a JSON object")
        if not _json_depth_ok(meta, MAX_JSON_DEPTH):
            raise ModelFileError(f"{self.path}: meta.json is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
        if meta.get("format") != FORMAT_NAME:
            raise ModelFileError(f"{self.path} is not an ase-mlff model file (format {_short(meta.get('format'))})")
        version = meta.get("format_version")
        if not _is_int(version) or version > FORMAT_VERSION or version < 1:
            raise ModelFileError(
                f"{self.path} has model-file format version {_short(version)}, but this ase-mlff "
                f"({__version__}) reads versions 1 to {FORMAT_VERSION}; upgrade ase-mlff to load it"
            )
        self.table = self._check_table(meta.get("arrays", {}))
        self._check_directory()
        return meta

    def _check_table(self, table) -> dict[str, tuple[tuple[int, ...], str, str]]:
        """meta.json's ``arrays``: name -> (shape, dtype name, sha256), every entry checked."""
        where = f"{self.path}: meta.json field"
        if not isinstance(table, dict):
            raise ModelFileError(f"{where} 'arrays' must be an object of name -> {{shape, dtype, sha256}}")
        out = {}
        for name, entry in table.items():
            def field(sub=""):
                return f"{where} 'arrays.{name}{sub}'"
            if not _ARRAY_NAME.match(name):
                raise ModelFileError(f"{where} 'arrays' has an invalid array name {_short(name)}")
            if not isinstance(entry, dict) or set(entry) != {"shape", "dtype", "sha256"}:
                raise ModelFileError(f"{field()} must be an object with exactly shape, dtype and sha256")
            shape, dtype, sha = entry["shape"], entry["dtype"], entry["sha256"]
            if (not isinstance(shape, list) or len(shape) > 32
                    or not all(_is_int(n) and 0 <= n < 2**62 for n in shape)):
                raise ModelFileError(f"{field('.shape')} must be a list of non-negative integers, got {_short(shape)}")
            if not isinstance(dtype, str) or dtype not in ARRAY_DTYPES:
                raise ModelFileError(f"{field('.dtype')} must be one of {', '.join(ARRAY_DTYPES)}, got {_short(dtype)}")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise ModelFileError(f"{field('.sha256')} must be 64 lowercase hex digits, got {_short(sha)}")
            out[name] = (tuple(shape), dtype, sha)
        return out

    def _check_directory(self) -> None:
        """The zip directory holds exactly the table's arrays, each of a plausible size.

        Only sizes recorded in the directory are used here: nothing is decompressed yet.
        """
        expected = {"meta.json", "meta.sha256"} | {f"arrays/{n}.npy" for n in self.table}
        extra = sorted(set(self.members) - expected)
        if extra:
            raise ModelFileError(f"{self.path}: archive member {_short(extra[0])} is not listed in meta.json's arrays")
        for name, (shape, dtype, _) in self.table.items():
            member = f"arrays/{name}.npy"
            info = self.members.get(member)
            if info is None:
                raise ModelFileError(f"{self.path}: array {name!r} listed in meta.json is missing")
            nbytes = math.prod(shape) * ARRAY_DTYPES[dtype].itemsize
            if not nbytes + 10 <= info.file_size <= nbytes + 10 + MAX_NPY_HEADER:
                raise ModelFileError(
                    f"{self.path}: member {member} is {info.file_size} bytes uncompressed, but meta.json "
                    f"field 'arrays.{name}' declares {dtype} {list(shape)} ({nbytes} bytes of data)")
            self._check_compression(info, member)
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise ModelFileError(f"{self.path}: member {member} has inconsistent sizes in the zip directory")
            # deflate never expands data by more than ~0.1 % plus a few bytes
            if info.compress_size > info.file_size + info.file_size // 500 + 1024:
                raise ModelFileError(f"{self.path}: member {member} has inconsistent sizes in the zip directory")
            if (self.bomb_check and info.file_size > BOMB_MIN_BYTES
                    and info.file_size > BOMB_RATIO * max(info.compress_size, 1)):
                raise ModelFileError(
                    f"{self.path}: member {member} would inflate {info.compress_size} bytes to "
                    f"{info.file_size} (more than {BOMB_RATIO}:1, which trained arrays never reach); "
                    "refusing it as a possible zip bomb")
        # the same bound on the whole archive: many members, each small enough to escape the
        # test above, must not add up to more than BOMB_RATIO times what the file holds
        total = sum(info.file_size for info in self.members.values())
        size = os.fstat(self.fh.fileno()).st_size
        if self.bomb_check and total > max(BOMB_MIN_BYTES, BOMB_RATIO * size):
            raise ModelFileError(
                f"{self.path}: its members would inflate to {total} bytes, more than {BOMB_RATIO} times the "
                f"{size} bytes of the file (trained arrays compress a few to one); refusing it as a possible "
                "zip bomb")

    # ------------------------------------------------------------------ arrays
    def read_array(self, name: str) -> np.ndarray:
        shape, dtype_name, sha = self.table[name]
        dtype = ARRAY_DTYPES[dtype_name]
        member = f"arrays/{name}.npy"
        info = self.members[member]
        where = f"{self.path}: array {name!r}"
        try:
            with self.zf.open(info) as fh:
                # the stream ends where the directory says; _check_directory bounded that size
                stream = _Hashing(fh, info.file_size)
                descr, fortran, header_shape = _npy_header(stream, where)
                try:
                    header_dtype = np.dtype(descr) if len(descr) <= 8 else None
                except (TypeError, ValueError):
                    header_dtype = None
                if header_dtype != dtype:
                    raise ModelFileError(f"{where} is stored as {_short(descr)}, but meta.json says {dtype_name}")
                if tuple(header_shape) != shape or fortran:
                    raise ModelFileError(
                        f"{where} has shape {list(header_shape)}{' (Fortran order)' if fortran else ''}, "
                        f"but meta.json says {list(shape)}")
                # The buffer grows with the bytes really decompressed, so a member whose directory
                # entry claims more than its stream holds costs what it holds, not what it claims.
                want = math.prod(shape) * dtype.itemsize
                data = bytearray()
                while len(data) < want:
                    chunk = stream.read(min(want - len(data), _CHUNK))
                    if not chunk:
                        break
                    data += chunk
                if len(data) != want or stream.left != 0 or fh.read(1):
                    raise ModelFileError(f"{where} does not hold the {want} bytes its header declares")
        except ModelFileError:
            raise
        except _READ_ERRORS as exc:
            raise ModelFileError(f"{self.path}: member {member} is corrupted ({exc})") from None
        if stream.sha.hexdigest() != sha:
            raise ModelFileError(f"{where} does not match its checksum (file corrupted or modified)")
        return np.frombuffer(data, dtype=dtype).reshape(shape)


def read_archive(path, load_arrays: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify an archive written by :func:`write_archive` (model file or checkpoint).

    Checks the container (format, version, the arrays table against the zip directory, each
    array's header, size and checksum) but not what a model family requires; see
    :func:`load_model` for that.
    """
    with _out_of_memory_is_a_file_error(path), _Archive(path, bomb_check=False) as archive:
        meta = archive.read_meta()
        arrays = {name: archive.read_array(name) for name in archive.table} if load_arrays else {}
    return meta, arrays


@contextlib.contextmanager
def _out_of_memory_is_a_file_error(path):
    """Turn a MemoryError while reading ``path`` into a ModelFileError naming the file. What the
    loader allocates is bounded by what the file holds (the module docstring), so this is an
    honest model larger than the memory left, or a crafted one within the bounds."""
    try:
        yield
    except MemoryError:
        raise ModelFileError(f"{path}: not enough memory to load it (its arrays, or what the model builds from "
                             "them, do not fit in the memory left); free memory or use a larger machine") from None


def save_model(model: Model, path, training: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` (atomically). ``training`` records provenance: the dataset
    hash (``data_sha256``), its source and source units, split sizes, measured errors, ..."""
    training = dict(training or {})
    arrays = model.get_arrays()
    dtypes = {str(a.dtype) for a in arrays.values() if np.issubdtype(a.dtype, np.floating)}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package": "ase-mlff",
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "family": model.family,
        "global_model": bool(model.is_global),
        "elements": symbols(model.species),
        "atomic_numbers": list(model.species),
        "cutoff": model.cutoff,
        "units": dict(UNITS),
        "training_units": training.pop("units", None),
        "dtype": sorted(dtypes)[0] if len(dtypes) == 1 else sorted(dtypes),
        "training_data_hash": training.pop("data_sha256", None),
        "hyperparameters": model.get_config(),
        "training": training,
    }
    write_archive(path, meta, arrays)
    return Path(path)


def check_model_meta(meta: dict[str, Any], path) -> None:
    """Check the type (and, where it matters, the value) of every meta.json field that
    :func:`load_model` or ``ase-mlff info`` reads; raise :class:`ModelFileError` naming it."""

    def bad(field, should, value=None, show=True):
        got = f", got {_short(value)}" if show else ""
        return ModelFileError(f"{path}: meta.json field '{field}' {should}{got}; the file is damaged "
                              "or was not written by ase-mlff")

    for field in ("family", "global_model", "elements", "atomic_numbers", "cutoff", "hyperparameters",
                  "arrays"):
        if field not in meta:
            raise ModelFileError(f"{path}: meta.json has no field '{field}'; the file is damaged or was "
                                 "not written by ase-mlff")
    family = meta["family"]
    if not isinstance(family, str) or not _FAMILY.match(family):
        raise bad("family", "must be a family name such as \"sgdml\"", family)
    if not isinstance(meta["global_model"], bool):
        raise bad("global_model", "must be true or false", meta["global_model"])
    numbers, elements = meta["atomic_numbers"], meta["elements"]
    if (not isinstance(numbers, list) or not 1 <= len(numbers) <= 118
            or not all(_is_int(z) and 1 <= z <= 118 for z in numbers)
            or any(a >= b for a, b in zip(numbers, numbers[1:]))):
        raise bad("atomic_numbers", "must be a non-empty increasing list of atomic numbers (1-118)", numbers)
    if not isinstance(elements, list) or not all(isinstance(e, str) for e in elements):
        raise bad("elements", "must be a list of element symbols", elements)
    if elements != symbols(numbers):
        raise bad("elements", f"must name the elements of atomic_numbers ({' '.join(symbols(numbers))})",
                  elements)
    cutoff = meta["cutoff"]
    if cutoff is not None and not (_is_real(cutoff) and cutoff >= MIN_CUTOFF):
        raise bad("cutoff", f"must be null (global model) or a finite number of Å, at least {MIN_CUTOFF:g}", cutoff)
    for field, should in (("package", "must be a string"), ("package_version", "must be a string"),
                          ("created", "must be a string"), ("training_data_hash", "must be a string or null")):
        value = meta.get(field)
        if value is not None and not isinstance(value, str):
            raise bad(field, should, value)
    if "units" in meta and meta["units"] != UNITS:
        raise bad("units", f"must be {json.dumps(UNITS)} (models always compute in eV and Å)", meta["units"])
    tu = meta.get("training_units")
    if tu is not None and (not isinstance(tu, dict) or not all(isinstance(v, str) for v in tu.values())):
        raise bad("training_units", "must be null or an object of unit names", tu)
    for field in ("hyperparameters", "training"):
        if field in meta and not isinstance(meta[field], dict):
            raise bad(field, "must be an object", meta[field])
    dtype = meta.get("dtype")
    floats = sorted({d for _, d, _ in _table_entries(meta) if d in _FLOAT_DTYPES})
    want = floats[0] if len(floats) == 1 else floats
    if "dtype" in meta and dtype != want:
        raise bad("dtype", f"must be {json.dumps(want)}, the floating dtype(s) of the arrays", dtype)
    hp = meta["hyperparameters"]
    if hp.get("species") != numbers:
        raise bad("hyperparameters.species", f"must equal atomic_numbers {numbers}", hp.get("species"))
    hc = hp.get("cutoff")
    if not (hc is None and cutoff is None or _is_real(hc) and cutoff is not None and hc == cutoff):
        raise bad("hyperparameters.cutoff", f"must equal the field 'cutoff' ({cutoff})", hc)


def _table_entries(meta):
    return [(n, e["dtype"], e["shape"]) for n, e in meta["arrays"].items()]


def read_metadata(path) -> dict[str, Any]:
    """meta.json of a model file (verified), without loading the arrays."""
    with _out_of_memory_is_a_file_error(path), _Archive(path, bomb_check=True) as archive:
        meta = archive.read_meta()
    check_model_meta(meta, path)
    return meta


def load_model(path, device: str = "cpu") -> Model:
    """Rebuild the model stored in ``path``.

    Everything the file declares is checked before memory is allocated for it (see the module
    docstring), so a damaged or crafted file raises :class:`ModelFileError` early and cheaply.
    """
    with _out_of_memory_is_a_file_error(path):
        return _load_model(path, device)


def _load_model(path, device: str) -> Model:
    from . import models  # noqa: F401  (registers the families)

    with _Archive(path, bomb_check=True) as archive:
        meta = archive.read_meta()
        check_model_meta(meta, path)
        family = meta["family"]
        if family not in MODEL_REGISTRY:
            raise ModelFileError(
                f"{path} holds a model of family {family!r}, unknown to this ase-mlff "
                f"(known: {', '.join(sorted(MODEL_REGISTRY))})"
            )
        cls = MODEL_REGISTRY[family]
        if meta["global_model"] != (meta["cutoff"] is None):  # a global model is one without a cutoff
            raise ModelFileError(f"{path}: meta.json field 'global_model' must be "
                                 f"{str(meta['cutoff'] is None).lower()} for a model with cutoff {meta['cutoff']}")
        config = meta["hyperparameters"]
        try:
            specs = cls.check_config(config)
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise ModelFileError(f"{path}: hyperparameters do not describe a valid {family} model ({exc})") from None
        _match_table(path, family, specs, archive.table)
        arrays = {}
        for name in archive.table:
            arr = archive.read_array(name)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ModelFileError(f"{path}: array {name!r} holds NaN or infinite values; the model "
                                     "is unusable (retrain it, or restore the file from a copy)")
            arrays[name] = arr
        # provenance of the loaded model: which file, byte for byte (ASE trajectories record it
        # through MLFFCalculator.todict)
        source = {"path": str(Path(path).resolve()), "sha256": archive.file_sha256()}
    try:
        cls.check_arrays(config, arrays)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise ModelFileError(f"{path}: the arrays do not describe a valid {family} model ({exc})") from None
    try:
        model = cls.from_config(config)
        model.set_arrays(arrays)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as exc:
        # The checks above are meant to make this unreachable; a family that misses a case
        # must still give a ModelFileError, not a traceback.
        raise ModelFileError(f"{path}: cannot rebuild the {family} model from this file ({exc})") from None
    model.meta = meta
    model.source = source
    return model.to(device)


def _match_table(path, family, specs, table) -> None:
    """The arrays table lists exactly the arrays the hyperparameters imply, same shapes and dtypes."""
    missing = sorted(set(specs) - set(table))
    extra = sorted(set(table) - set(specs))
    if missing or extra:
        raise ModelFileError(
            f"{path}: meta.json field 'arrays' does not list the arrays of a {family} model"
            f"{' (missing ' + ', '.join(missing) + ')' if missing else ''}"
            f"{' (unexpected ' + ', '.join(extra) + ')' if extra else ''}")
    for name, (shape, dtype) in specs.items():
        tshape, tdtype, _ = table[name]
        if tuple(shape) != tshape or dtype != tdtype:
            raise ModelFileError(
                f"{path}: meta.json field 'arrays.{name}' declares {tdtype} {list(tshape)}, but the "
                f"hyperparameters imply {dtype} {list(shape)}")
