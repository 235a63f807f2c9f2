"""Warnings attributed to the user's call.

A warning issued deep inside ase-mlff, or inside an ASE optimizer or integrator calling back
into it (an MD observer, a calculator), would otherwise be reported at a line of ase-mlff or
of ``ase/optimize/optimize.py`` and look like a bug there. :func:`warn` reports it at the
first frame outside the packages that hand control to each other in such a call: ase-mlff,
ASE and torch (whose ``no_grad`` decorators add frames of their own). Python 3.12 has
``warnings.warn(skip_file_prefixes=...)`` for this; ase-mlff supports 3.10, so the stack
level is computed here by walking the stack the same way ``warnings`` counts it.
"""

from __future__ import annotations

import os
import sys
import warnings

import ase
import torch

from .errors import MLFFWarning

#: folders whose frames are library code, not the user's (each ends with a separator)
LIBRARY_PREFIXES = tuple(os.path.dirname(os.path.abspath(f)) + os.sep
                         for f in (__file__, ase.__file__, torch.__file__))


def _is_library(filename: str) -> bool:
    return os.path.abspath(filename).startswith(LIBRARY_PREFIXES)


def _is_import_machinery(filename: str) -> bool:
    # the frames ``warnings`` itself skips when counting a stacklevel above 1
    return "importlib" in filename and "_bootstrap" in filename


def user_stacklevel(depth: int = 1) -> int:
    """The ``stacklevel`` that makes ``warnings.warn`` name the first frame outside
    :data:`LIBRARY_PREFIXES`, for a ``warnings.warn`` called from ``depth`` frames up this
    stack (1: this function's caller); when every frame is library code (the command line),
    the outermost one."""
    frame = sys._getframe(depth).f_back  # the caller of the frame that calls warnings.warn
    level = 1
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_import_machinery(filename):
            level += 1
            if not _is_library(filename):
                break
        frame = frame.f_back
    return level


def warn(message: str, category: type[Warning] = MLFFWarning) -> None:
    """``warnings.warn(message, category)`` reported at the user's call (module docstring)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
