"""Central finite differences of the energy, independent of the code under test."""

import numpy as np


def numerical_forces(atoms, d=1e-5, components=None):
    """-dE/dx by central differences; ``components``: only these (atom, axis) pairs (the others
    stay 0), for large structures."""
    forces = np.zeros((len(atoms), 3))
    pos0 = atoms.positions.copy()
    if components is None:
        components = [(a, c) for a in range(len(atoms)) for c in range(3)]
    for a, c in components:
        e = []
        for sign in (1, -1):
            pos = pos0.copy()
            pos[a, c] += sign * d
            atoms.positions = pos
            e.append(atoms.get_potential_energy())
        forces[a, c] = -(e[0] - e[1]) / (2 * d)
    atoms.positions = pos0
    return forces


def numerical_stress(atoms, d=1e-6):
    """(1/V) dE/dε_ab for a symmetric strain of cell and positions, ASE Voigt order."""
    cell0 = atoms.cell.array.copy()
    pos0 = atoms.positions.copy()
    volume = abs(np.linalg.det(cell0))
    stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] += 0.5 * sign * d
                eps[b, a] += 0.5 * sign * d
                atoms.set_cell(cell0 @ (np.eye(3) + eps), scale_atoms=False)
                atoms.positions = pos0 @ (np.eye(3) + eps)
                e.append(atoms.get_potential_energy())
            stress[a, b] = (e[0] - e[1]) / (2 * d) / volume
    atoms.set_cell(cell0, scale_atoms=False)
    atoms.positions = pos0
    return stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
