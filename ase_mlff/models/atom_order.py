"""Moved to :mod:`ase_mlff.descriptors.matching` (shared by the sGDML model and symmetry
detection in training, so models/ no longer holds code training needs). Kept so that old
imports work."""

from ..descriptors.matching import *  # noqa: F401,F403
from ..descriptors.matching import OrderTracker, distance_matrix, element_pairs, labelling_residuals  # noqa: F401
from ..descriptors.matching import polish, same_element_swaps  # noqa: F401
