"""Descriptors shared by model families (global inverse-distance descriptor for sGDML)."""

from .inverse_distance import (  # noqa: F401
    descriptor_permutation,
    incidence_matrix,
    inverse_distances,
    inverse_distances_torch,
    jacobian,
    pair_indices,
)
