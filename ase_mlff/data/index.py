"""Frame selections of the readers: ``index`` as :func:`ase.io.read` takes it (``':'``, ``'5'``,
``'-1'``, ``'0:100'``, ``'::10'``, an int or a slice), parsed once for every format."""

from __future__ import annotations

import numpy as np

from ..errors import DatasetError


def parse_index(index):
    """':' / '3' / '-1' / '0:10:2' / int / slice -> int or slice."""
    if index is None:
        return slice(None)
    if isinstance(index, (int, np.integer)):
        return int(index)
    if isinstance(index, slice):
        return index
    if isinstance(index, str):
        s = index.strip()
        try:
            if ":" not in s:
                return int(s)
            parts = [p.strip() for p in s.split(":")]
            if len(parts) > 3:
                raise ValueError
            vals = [int(p) if p else None for p in parts]
            return slice(*vals)
        except ValueError:
            raise DatasetError(f"cannot understand index {index!r} (use ':', '5', '-1', '0:100', '::10')") from None
    raise DatasetError(f"index must be an int, slice or string, got {index!r}")


def apply_index(m: int, index, path) -> np.ndarray:
    """The frame numbers (int array) that ``index`` selects of ``m`` frames; ``path`` names the
    file in the message of an index out of range."""
    idx = parse_index(index)
    if isinstance(idx, int):
        if not -m <= idx < m:
            raise DatasetError(f"{path!r}: frame index {idx} out of range ({m} frames)")
        return np.array([idx % m])
    return np.arange(m)[idx]
