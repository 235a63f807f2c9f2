"""Training data (moved into a package; split into modules in the next commit)."""

from .dataset import *  # noqa: F401,F403
from .dataset import (  # noqa: F401
    COMMAND_LINE_FLAGS, _apply_index, _parse_index, command_line_message, label_options, stratified_indices,
)
