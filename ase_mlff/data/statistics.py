"""Statistics of a :class:`~ase_mlff.data.Dataset` (:meth:`Dataset.statistics`) and its printed
summary (:meth:`Dataset.summary`): element counts, label counts, energies per atom, force RMS,
and reference energies per element fitted to the composition (eV/atom):

    E_frame ~ sum_Z n_Z(frame) e_Z      (least squares over the frames with an energy)

With several elements and one composition in every frame (or a single frame) the fit is
degenerate and each element's reference energy is the mean energy per atom; a rank-deficient
composition matrix gives the minimum-norm solution. Both are flagged (``reference_degenerate``,
``reference_note``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatasetError

if TYPE_CHECKING:
    from .dataset import Dataset


@dataclass
class DatasetStatistics:
    """Result of :meth:`Dataset.statistics` (energies eV, forces eV/Å)."""

    n_frames: int
    n_atoms_total: int
    natoms_min: int
    natoms_max: int
    elements: list[int]
    element_counts: dict[int, int]  # atoms of each element, summed over frames
    frames_with_element: dict[int, int]
    n_with_energy: int
    n_with_forces: int
    n_with_stress: int
    reference_energies: dict[int, float]  # eV/atom
    reference_method: str  # 'least_squares', 'least_squares_min_norm' or 'mean_energy_per_atom'
    reference_degenerate: bool
    reference_note: str
    reference_rmse_per_atom: float | None  # residual of the composition fit, eV/atom
    energy_per_atom_mean: float | None
    energy_per_atom_std: float | None
    force_rms: float | None
    force_rms_per_element: dict[int, float]

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def dataset_statistics(dataset: Dataset) -> DatasetStatistics:
    """Per-element counts, composition-fitted reference energies, energy/force statistics."""
    frames = list(dataset)
    if not frames:
        raise DatasetError("statistics(): the dataset is empty")
    elements = dataset.elements
    col = {z: k for k, z in enumerate(elements)}
    comp = np.zeros((len(frames), len(elements)))
    for i, fr in enumerate(frames):
        zs, cnt = np.unique(fr.numbers, return_counts=True)
        for z, c in zip(zs, cnt):
            comp[i, col[int(z)]] = c
    natoms = comp.sum(axis=1)
    e_mask = np.array([fr.energy is not None for fr in frames])
    E = np.array([fr.energy if fr.energy is not None else np.nan for fr in frames])

    ref: dict[int, float] = {}
    method, degenerate, note, rmse = "none", False, "no energies", None
    e_mean = e_std = None
    if e_mask.any():
        A, y = comp[e_mask], E[e_mask]
        epa = y / natoms[e_mask]
        e_mean, e_std = float(epa.mean()), float(epa.std())
        rank = np.linalg.matrix_rank(A)
        fixed_comp = np.all(A == A[0])
        if len(elements) > 1 and (fixed_comp or len(y) == 1):
            method, degenerate = "mean_energy_per_atom", True
            note = (
                "composition fit is degenerate (every frame has the same composition): the reference "
                "energy of every element is the mean energy per atom"
            )
            ref = {z: e_mean for z in elements}
            rmse = float(epa.std())
        else:
            coef, *_ = np.linalg.lstsq(A, y, rcond=None)
            ref = {z: float(coef[k]) for z, k in col.items()}
            rmse = float(np.sqrt(np.mean(((A @ coef - y) / A.sum(axis=1)) ** 2)))
            if rank < len(elements):
                method, degenerate = "least_squares_min_norm", True
                note = (
                    f"composition matrix has rank {rank} < {len(elements)} elements: the least-squares "
                    "fit is degenerate, minimum-norm solution reported"
                )
            else:
                method, note = "least_squares", "least squares of total energy on composition"

    f_sq: dict[int, list] = {z: [0.0, 0] for z in elements}
    for fr in frames:
        if fr.forces is None:
            continue
        for z in np.unique(fr.numbers):
            sel = fr.forces[fr.numbers == z]
            f_sq[int(z)][0] += float(np.sum(sel**2))
            f_sq[int(z)][1] += sel.size
    f_rms = {z: math.sqrt(s / c) for z, (s, c) in f_sq.items() if c}
    tot_c = sum(c for _, c in f_sq.values())
    force_rms = math.sqrt(sum(s for s, _ in f_sq.values()) / tot_c) if tot_c else None

    frames_with = {z: int(np.sum(comp[:, col[z]] > 0)) for z in elements}
    return DatasetStatistics(
        n_frames=len(frames),
        n_atoms_total=int(natoms.sum()),
        natoms_min=int(natoms.min()),
        natoms_max=int(natoms.max()),
        elements=elements,
        element_counts={z: int(comp[:, col[z]].sum()) for z in elements},
        frames_with_element=frames_with,
        n_with_energy=int(e_mask.sum()),
        n_with_forces=sum(fr.forces is not None for fr in frames),
        n_with_stress=sum(fr.stress is not None for fr in frames),
        reference_energies=ref,
        reference_method=method,
        reference_degenerate=degenerate,
        reference_note=note,
        reference_rmse_per_atom=rmse,
        energy_per_atom_mean=e_mean,
        energy_per_atom_std=e_std,
        force_rms=force_rms,
        force_rms_per_element=f_rms,
    )


def dataset_summary(dataset: Dataset) -> str:
    """Printable text summary (provenance, label counts, per-element table)."""
    from ase.data import chemical_symbols

    st = dataset_statistics(dataset)
    lines = [
        f"Dataset: {st.n_frames} frames, {st.n_atoms_total} atoms "
        f"({st.natoms_min}-{st.natoms_max} per frame), "
        f"{'fixed' if dataset.fixed_composition else 'variable'} composition",
        f"source: {dataset.source or '-'}  format: {dataset.format or '-'}  "
        f"source units: {dataset.source_energy_unit}, {dataset.source_length_unit} (stored in eV, Ang)",
        f"labels: energy {st.n_with_energy}/{st.n_frames}, forces {st.n_with_forces}/{st.n_frames}, "
        f"stress {st.n_with_stress}/{st.n_frames}",
    ]
    if st.energy_per_atom_mean is not None:
        lines.append(
            f"energy per atom: mean {st.energy_per_atom_mean:.6f} eV, std {st.energy_per_atom_std:.6f} eV"
        )
    lines.append(f"reference energies: {st.reference_note}")
    if st.force_rms is not None:
        lines.append(f"force component RMS (all atoms): {st.force_rms:.4f} eV/Ang")
    header = f"{'Z':>4} {'elem':<5} {'atoms':>9} {'frames':>7} {'E_ref [eV/atom]':>16} {'F_rms [eV/Ang]':>15}"
    lines += [header, "-" * len(header)]
    for z in st.elements:
        eref = st.reference_energies.get(z)
        frms = st.force_rms_per_element.get(z)
        lines.append(
            f"{z:>4} {chemical_symbols[z]:<5} {st.element_counts[z]:>9} {st.frames_with_element[z]:>7} "
            f"{'-' if eref is None else f'{eref:.6f}':>16} {'-' if frms is None else f'{frms:.4f}':>15}"
        )
    lines.append(f"sha256: {dataset.sha256()}")
    return "\n".join(lines)
