"""The reference of active learning: any ASE calculator, named on the command line.

A SPEC is ``module:Class`` followed by optional ``key=value`` arguments of the class, e.g.::

    ase.calculators.emt:EMT
    tblite.ase:TBLite method=GFN2-xTB
    mypackage.dft:MyVasp encut=520 kpts=(4,4,4) xc=PBE

Values are read as Python literals (numbers, strings, tuples, lists, dicts, True/False/None)
with :func:`ast.literal_eval`; anything that is not a literal is kept as the string it is
(``xc=PBE`` gives ``"PBE"``). Nothing in a SPEC is executed: the module is imported, the class
looked up by name and called with those keyword arguments.

:func:`label` runs the reference on a copy of a structure and returns its energy (eV), forces
(eV/Å) and, for a periodic structure whose reference gives one, its stress (eV/Å³, ASE sign);
an exception of the reference (an unconverged SCF, a crashed executable) or a non-finite
number becomes a :class:`ReferenceFailure`, which the learning loop records and skips.
"""

from __future__ import annotations

import ast
import importlib
import shlex
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, MLFFError


class ReferenceSpecError(InputError):
    """A SPEC that cannot be parsed, imported or instantiated (a usage error: exit status 2)."""


class ReferenceFailure(MLFFError):
    """The reference failed on one structure (its exception, or non-finite results)."""


def literal(text: str):
    """A Python literal, or the text itself when it is not one (``PBE``, ``GFN2-xTB``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


@dataclass
class ReferenceSpec:
    """``module:Class key=value ...``, parsed (:func:`parse_spec`)."""

    module: str
    name: str
    kwargs: dict = field(default_factory=dict)
    text: str = ""

    def build(self):
        """Import the module and instantiate the class (a :class:`ReferenceSpecError` naming
        what failed otherwise)."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError as exc:
            raise ReferenceSpecError(f"reference {self.text!r}: cannot import module {self.module!r} ({exc}); "
                                     "install the package that provides the calculator, or check the name") from None
        except Exception as exc:  # noqa: BLE001 - a module that fails while importing
            raise ReferenceSpecError(f"reference {self.text!r}: importing {self.module!r} failed: "
                                     f"{type(exc).__name__}: {exc}") from None
        cls = mod
        for part in self.name.split("."):
            cls = getattr(cls, part, None)
            if cls is None:
                raise ReferenceSpecError(f"reference {self.text!r}: module {self.module!r} has no {self.name!r}")
        if not callable(cls):
            raise ReferenceSpecError(f"reference {self.text!r}: {self.module}:{self.name} is not a class")
        try:
            calc = cls(**self.kwargs)
        except Exception as exc:  # noqa: BLE001 - the calculator's own complaint about its arguments
            raise ReferenceSpecError(f"reference {self.text!r}: {self.name}({_show(self.kwargs)}) failed: "
                                     f"{type(exc).__name__}: {exc}") from None
        if not (hasattr(calc, "get_potential_energy") or hasattr(calc, "calculate")):
            raise ReferenceSpecError(f"reference {self.text!r}: {self.name} is not an ASE calculator (it has "
                                     "neither get_potential_energy nor calculate)")
        return calc


def _show(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def parse_spec(spec) -> ReferenceSpec:
    """Parse ``module:Class key=value ...`` (a string, or the words of a command line)."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [str(spec)]
    try:  # an item may hold several words ("tblite.ase:TBLite method=GFN2-xTB" quoted as one); a word
        # without spaces is taken as it is (the shell has removed its quotes already)
        words = [w for item in map(str, items) for w in (shlex.split(item) if any(c.isspace() for c in item)
                                                         else [item])]
    except ValueError as exc:  # an unclosed quote
        raise ReferenceSpecError(f"reference {' '.join(map(str, items))!r}: {exc}") from None
    text = " ".join(words)
    if not words or ":" not in words[0]:
        raise ReferenceSpecError(f"reference {text!r}: expected module:Class (e.g. ase.calculators.emt:EMT) "
                                 "followed by optional key=value arguments")
    module, _, name = words[0].partition(":")
    if not module or not name or not all(p.isidentifier() for p in module.split(".") + name.split(".")):
        raise ReferenceSpecError(f"reference {text!r}: {words[0]!r} does not name a class as module:Class "
                                 "(e.g. ase.calculators.emt:EMT)")
    kwargs = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or not key.isidentifier():
            raise ReferenceSpecError(f"reference {text!r}: argument {word!r} is not key=value")
        kwargs[key] = literal(value)
    return ReferenceSpec(module, name, kwargs, text)


def label(calc, atoms) -> dict:
    """Energy, forces and (periodic structures, when the reference gives it) stress of
    ``atoms`` from the reference ``calc``; a :class:`ReferenceFailure` when the reference
    raises or returns non-finite numbers. ``atoms`` is not modified."""
    work = atoms.copy()
    work.calc = calc
    try:
        energy = float(work.get_potential_energy())
        # the reference's own forces: a constraint of the structure (fixed slab layers) would zero them
        forces = np.array(work.get_forces(apply_constraint=False), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - whatever the reference raises is a failed call, not ours
        raise ReferenceFailure(f"{type(exc).__name__}: {exc}") from exc
    stress = None
    if all(work.pbc) and "stress" in getattr(calc, "implemented_properties", ()):
        try:
            stress = np.array(work.get_stress(voigt=True), dtype=np.float64)
        except Exception as exc:  # noqa: BLE001
            raise ReferenceFailure(f"stress: {type(exc).__name__}: {exc}") from exc
    if not np.isfinite(energy):
        raise ReferenceFailure(f"non-finite energy {energy}")
    if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise ReferenceFailure("non-finite forces" if forces.shape == (len(atoms), 3)
                               else f"forces of shape {forces.shape} for {len(atoms)} atoms")
    if stress is not None and (stress.shape != (6,) or not np.all(np.isfinite(stress))):
        raise ReferenceFailure("non-finite stress" if stress.shape == (6,) else f"stress of shape {stress.shape}")
    return {"energy": energy, "forces": forces, "stress": stress}
