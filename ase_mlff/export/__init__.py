"""Export ase-mlff models to other simulation codes (LAMMPS: :func:`export_lammps`)."""


def export_lammps(*args, **kwargs):
    """See :func:`ase_mlff.export.lammps.export_lammps`."""
    from .lammps import export_lammps as _export

    return _export(*args, **kwargs)
