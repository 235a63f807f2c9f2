"""``python -m ase_mlff ...`` is ``ase-mlff ...`` (for recipes that must name the interpreter)."""

import sys

from .cli import main

sys.exit(main())
