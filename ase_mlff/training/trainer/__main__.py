"""``python -m ase_mlff.training.trainer`` (also under ``torchrun ... -m``): the generic command."""

import sys

from .cli import main

sys.exit(main())
