"""The model file: one zip archive, loaded without executing any code.

Layout::

    meta.json            format name and version, family, elements, cutoff, units, dtype,
                         package version, training-data hash, hyperparameters, the table
                         of arrays (shape, dtype, sha256) and free-form training records
    meta.sha256          sha256 of meta.json's bytes
    arrays/<name>.npy    one numpy array each, read with allow_pickle=False

A truncated, corrupted or modified file, an unknown format version or family, and arrays
that do not match their recorded checksums all raise :class:`~ase_mlff.errors.ModelFileError`
with the reason. Files are written atomically: a temporary file in the same directory is
fsynced and renamed over the destination, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import ModelFileError
from .models.base import MODEL_REGISTRY, Model, symbols

FORMAT_NAME = "ase-mlff-model"
FORMAT_VERSION = 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def write_archive(path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write meta + arrays as a model-file-style archive (also used for checkpoints)."""
    blobs = {name: _npy_bytes(np.asarray(a)) for name, a in arrays.items()}
    meta = dict(meta)
    meta["arrays"] = {
        name: {"shape": list(np.shape(arrays[name])), "dtype": str(np.asarray(arrays[name]).dtype),
               "sha256": _sha256(b)}
        for name, b in blobs.items()
    }
    meta_bytes = json.dumps(meta, indent=1, sort_keys=True).encode()

    def write(fh):
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            zf.writestr("meta.json", meta_bytes)
            zf.writestr("meta.sha256", _sha256(meta_bytes))
            for name, b in blobs.items():
                zf.writestr(f"arrays/{name}.npy", b)

    atomic_write_bytes(path, write)


_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError)


def _member(zf: zipfile.ZipFile, name: str, path) -> bytes:
    """Bytes of one archive member; KeyError when absent, ModelFileError when damaged."""
    try:
        return zf.read(name)
    except KeyError:
        raise
    except _READ_ERRORS as exc:
        raise ModelFileError(f"{path}: {name} is corrupted ({exc})") from None


def read_archive(path, load_arrays: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify an archive written by :func:`write_archive`."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        zf = zipfile.ZipFile(path, "r")
    except _READ_ERRORS:
        raise ModelFileError(
            f"{path} is not an ase-mlff model file, or it is truncated (not a readable zip archive)"
        ) from None
    with zf:
        try:
            meta_bytes = _member(zf, "meta.json", path)
            recorded = _member(zf, "meta.sha256", path).decode(errors="replace").strip()
        except KeyError:
            raise ModelFileError(f"{path} is a zip archive but not an ase-mlff model file (no meta.json)") from None
        if _sha256(meta_bytes) != recorded:
            raise ModelFileError(f"{path}: meta.json does not match its checksum (file corrupted or modified)")
        try:
            meta = json.loads(meta_bytes)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise ModelFileError(f"{path}: meta.json is not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT_NAME:
            raise ModelFileError(f"{path} is not an ase-mlff model file (format {meta.get('format')!r})")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ModelFileError(
                f"{path} has model-file format version {version}, but this ase-mlff "
                f"({__version__}) reads versions 1 to {FORMAT_VERSION}; upgrade ase-mlff to load it"
            )
        arrays: dict[str, np.ndarray] = {}
        if load_arrays:
            for name, info in meta.get("arrays", {}).items():
                try:
                    blob = _member(zf, f"arrays/{name}.npy", path)
                except KeyError:
                    raise ModelFileError(f"{path}: array {name!r} listed in meta.json is missing") from None
                if _sha256(blob) != info.get("sha256"):
                    raise ModelFileError(
                        f"{path}: array {name!r} does not match its checksum (file corrupted or modified)"
                    )
                try:
                    arr = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
                except ValueError as exc:
                    raise ModelFileError(f"{path}: array {name!r} cannot be read without pickle ({exc})") from None
                if list(arr.shape) != list(info.get("shape", [])):
                    raise ModelFileError(f"{path}: array {name!r} has shape {arr.shape}, meta.json says {info.get('shape')}")
                arrays[name] = arr
    return meta, arrays


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
        "units": {"energy": "eV", "length": "Ang", "forces": "eV/Ang", "stress": "eV/Ang^3"},
        "training_units": training.pop("units", None),
        "dtype": sorted(dtypes)[0] if len(dtypes) == 1 else sorted(dtypes),
        "training_data_hash": training.pop("data_sha256", None),
        "hyperparameters": model.get_config(),
        "training": training,
    }
    write_archive(path, meta, arrays)
    return Path(path)


def read_metadata(path) -> dict[str, Any]:
    """meta.json of a model file (verified), without loading the arrays."""
    meta, _ = read_archive(path, load_arrays=False)
    return meta


def load_model(path, device: str = "cpu") -> Model:
    """Rebuild the model stored in ``path``."""
    from . import models  # noqa: F401  (registers the families)

    meta, arrays = read_archive(path)
    family = meta.get("family")
    if family not in MODEL_REGISTRY:
        raise ModelFileError(
            f"{path} holds a model of family {family!r}, unknown to this ase-mlff "
            f"(known: {', '.join(sorted(MODEL_REGISTRY))})"
        )
    cls = MODEL_REGISTRY[family]
    try:
        model = cls.from_config(meta["hyperparameters"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: hyperparameters do not describe a valid {family} model ({exc})") from None
    model.set_arrays(arrays)
    model.meta = meta
    return model.to(device)
