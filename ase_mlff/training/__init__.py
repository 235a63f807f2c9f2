"""Training routines. ``from ase_mlff.training import train_sgdml``."""


def train_sgdml(*args, **kwargs):
    """See :func:`ase_mlff.training.sgdml_train.train_sgdml`."""
    from .sgdml_train import train_sgdml as _train

    return _train(*args, **kwargs)


__all__ = ["train_sgdml"]
