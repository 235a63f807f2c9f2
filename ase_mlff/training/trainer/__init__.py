"""The one training loop of every neural-network family (BPNN, SchNet, ...).

Any :class:`~ase_mlff.models.base.Model` with trainable parameters is trained by
:func:`train_network` on labelled frames (:class:`~ase_mlff.data.Frame`). Per optimizer step,
on a mini-batch ``b`` of structures (the *global* batch, whatever the number of processes)::

    L = w_E · Σ_{b∈E} ((Ê_b − E_b) / N_b)² / n_E          energy per atom, (eV/atom)²
      + w_F · Σ_{b∈F} Σ_{i,α} (F̂_iα − F_iα)² / n_F          force components, (eV/Å)²
      + w_S · Σ_{b∈S} Σ_k (σ̂_bk − σ_bk)² / n_S              stress, Voigt, (eV/Å³)²

``E``, ``F``, ``S``: the structures of the batch that carry that label (``n_E`` structures,
``n_F`` = 3 × their atoms, ``n_S`` = 6 × structures with a stress and a cell). The weights
have units (eV/atom)⁻², (eV/Å)⁻² and (eV/Å³)⁻², so L is dimensionless. Defaults:
``w_E = 1``, ``w_F = 10``, ``w_S = 0`` (stress off). Forces and the virial come from the model
contract (``compute(..., create_graph=True)``), so they are exact derivatives of the energy
and the loss is differentiated through them (double backward).

Before training (not on resume):

* reference energies ``e0[Z]`` (eV) are fitted by least squares, ``min Σ_b (E_b − Σ_i e0[Z_i])²``
  over the training frames with an energy (or taken from ``reference_energies``, e.g.
  isolated-atom energies given with ``--reference-energies``: then the network learns
  ``E − Σ e0``), and handed to ``model.set_reference_energies(e0,
  energy_scale)`` together with an energy scale ``s`` (eV): the RMS force component of the
  training set (× 1 Å), or the standard deviation of the residual energy per atom when there
  are no forces. The family adds ``e0`` in float64 and multiplies its network output by ``s``,
  so the network learns O(1) numbers (target scaling);
* ``model.fit_scaling(graphs)`` (optional) lets the family scale its features from the
  training set (:class:`~ase_mlff.graph.FrameGraphs` of the training frames; ``graphs.structures``
  are the frames).

Optimizer AdamW (lr 1e-3, no weight decay by default), learning-rate schedule
ReduceLROnPlateau on the validation loss (factor 0.5, patience 10 epochs, floor 1e-6) or cosine
decay with linear warm-up, gradient-norm clipping at 10, exponential moving average (EMA) of the
weights with decay 0.99 (validation, early stopping and the saved model use the EMA weights),
early stopping after 30 epochs without a better validation loss. The saved model holds the
weights of the best validation epoch.

Nothing is lost: a checkpoint (:mod:`ase_mlff.training.checkpoint`, atomic, uncompressed) is
written every ``checkpoint_interval`` seconds (at the next optimizer step or epoch end), when
training finishes and, on SIGINT/SIGTERM, at the end of the current optimizer step; it holds model
weights, optimizer, scheduler, EMA, best state, random-stream states, position in the epoch and
history, so that ``resume=True`` reaches the same weights as an uninterrupted run. The model
file is written atomically once, at the end.

Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes every W-th structure
of each global batch, gradients are summed with ``all_reduce`` (gloo on CPU, nccl on GPU), and
the result equals the single-process run up to summation order. Only rank 0 checks and writes
files (checkpoints, the model, plots; it removes the checkpoint) and prints; the ranks meet in
:meth:`Distributed.agree` wherever one of them could stop alone (checks, reading the data and
the checkpoint, writing the model), so they stop together and none runs ahead of a file being
written. Command line::

    torchrun --standalone --nproc_per_node 2 -m ase_mlff.training.trainer data.extxyz \\
        --family bpnn --model-config @model.json -o model.mlff --epochs 100

See docs/nn_training.md.

The package, one idea per module: :mod:`.options` (options and record), :mod:`.state` (weight
average, state packing, what a checkpoint holds), :mod:`.distributed` (the process group and
how ranks agree), :mod:`.reference` (reference energies and target scale), :mod:`.loss`
(labels, loss, one optimizer step, validation), :mod:`.loop` (:func:`train_network`),
:mod:`.plots` (progress bar, learning curve and parity plots) and :mod:`.cli` (the shared flags
and the generic command, ``python -m ase_mlff.training.trainer``).
"""

from .cli import (build_model, build_parser, configure_parser, main, options_from_args, read_recipe_data,
                  run_training, save_recipe_result)
from .distributed import (Distributed, distributed_run, in_step, init_distributed, process_rank, recipe_failure,
                          reported_elsewhere, run_recipe)
from .loop import train_network
from .loss import FamilyCache, has_training_hook
from .options import DTYPES, SCHEDULES, TrainerOptions, TrainingRecord
from .plots import write_plots
from .reference import energy_scale, fit_reference_energies, reference_record
from .state import EMA, KIND, cast_model, pack_state, unpack_state

__all__ = ["DTYPES", "EMA", "KIND", "SCHEDULES", "Distributed", "FamilyCache", "TrainerOptions", "TrainingRecord",
           "build_model", "build_parser", "cast_model", "configure_parser", "distributed_run", "energy_scale",
           "fit_reference_energies", "has_training_hook", "in_step", "init_distributed", "main", "options_from_args",
           "pack_state", "process_rank", "read_recipe_data", "recipe_failure", "reference_record", "reported_elsewhere", "run_recipe",
           "run_training", "save_recipe_result", "train_network", "unpack_state", "write_plots"]
