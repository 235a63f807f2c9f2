"""Active learning on the fly: MD with the current model, the reference where the model is unsure.

``ase-mlff learn START --reference SPEC --family FAMILY -o DIR`` (and :func:`learn`) grows a
training set with as few reference calls as it can. The reference is any ASE calculator
(:mod:`ase_mlff.workflows.reference`: ``module:Class key=value ...``). The loop:

1. Label every start structure with the reference (one call each) and fit a first model.
2. MD walkers: Langevin NVT, Maxwell-Boltzmann velocities from the walker's own random
   stream; with ``pressure`` (GPa) a Berendsen barostat rescales periodic cells after every
   step. ``walkers="each"``: one walker per start structure and temperature of
   ``temperatures``, each staying at its temperature; ``"ramp"``: one walker per start
   structure from the first temperature, moving to the next after a turn without crossing
   (step 3). The walkers take turns; a turn (a *segment*) is at most ``segment_steps`` steps.
3. Every ``check_interval`` steps the model's calibrated per-atom force uncertainty
   ``sigma_F[a]`` (eV/Å) is computed; a frame's uncertainty is ``u = max_a sigma_F[a]``. The
   first frame with ``u`` above the threshold ends the segment and is sent to the reference.
   A segment that reaches ``segment_steps`` without crossing sends its most uncertain checked
   frame instead (``fallback``, on by default: the budget is spent where the model knows least).
4. The new frame is added, the model refitted and the walker continues from where it stopped
   with the new model. A walker whose MD fails (overlapping atoms, a runaway temperature) is
   restarted from its start structure with fresh velocities.
5. Stop after ``max_calls`` reference calls (the starts count), or when no checked frame has
   crossed the threshold for ``patience`` MD steps (all walkers together; default ten turns,
   at least two of every walker): ``stop_reason``
   ``"max_calls"`` or ``"converged"``.

Before a frame is added, the model's errors on it (energy per atom, force MAE and largest
per-atom force error) are recorded next to the uncertainty that selected it: a prospective
check of the uncertainty on exactly the frames the loop chose, printed as it goes.

Uncertainty, per family (docs/active_learning.md, docs/uncertainty.md):

* ``gap``: the GP's own posterior variance, calibrated on the labels collected so far by
  leave-one-frame-out cross-validation (:mod:`ase_mlff.training.gap_train`), redone on the
  schedule of ``recalibrate_growth`` (below):
  ``sigma_F[a]`` estimates the RMS length of atom a's force error. ``variance="exact"`` (the
  default here) computes it from the design rows, ``"samples"`` from the posterior samples
  (faster on large cells, noisier per atom).
* committees (``committee=K``, for mff, bpnn, schnet, and sgdml on one molecule): the spread
  of K members refitted after every call (:func:`ase_mlff.training.committee.train_committee`),
  calibrated on the frames the family holds out (``n_test`` / ``n_valid`` in ``options``).
  mff and sgdml members are refitted from scratch; bpnn and schnet members fine-tune from the
  current committee's weights (``finetune_epochs``), with a fresh fit at the first fit and
  whenever the frames have grown by ``fresh_fit_growth`` (docs/active_learning.md).

Threshold (eV/Å): ``threshold`` when given; otherwise, after every calibration, ``threshold_factor``
times the RMS per-atom force error that the fit's calibration measured on the labels so far
(GAP: leave-one-frame-out; committees: the held-out calibration frames). A frame is sent to
the reference when the model predicts an error on some atom's force ``threshold_factor`` times
larger than its typical error on the data it has: the threshold tightens as the data grow.

GAP refits (``family="gap"``): the sparse environments stay fixed between refits, and a refit
adds the new frames' weighted design rows to the last fit's QR factor ``[R, Q^T y]``
(:func:`ase_mlff.training.sparse_gp.update_factor`: the QR of ``[R, Q^T y ; new rows]``, the
fit from scratch on all rows to rounding, at (T + r) T^2 instead of (all rows) T^2); the last
fit's model is updated in place (no SOAP tables built again). The leave-one-frame-out
calibration, which reads every row, runs when the sparse set is chosen and when the labelled
environments have grown by ``recalibrate_growth`` (default 1.2) since the last one; the refits
in between reuse its factors and held-out force RMS. The fitter keeps every frame's rows in
memory for it; the checkpoint keeps the factor, not the rows. The sparse set is chosen
again (a full refit) while it holds fewer environments than ``n_sparse`` asks for, when the
labelled environments have grown by ``reselect_growth`` since the last choice, when a new
element appears, or when a new frame has an environment whose kernel similarity to every
sparse environment is below ``novelty``.

Files in the output folder:

* ``model.mlff``: the current (at the end: the final) model, written after every fit.
* ``data.extxyz``: every labelled frame, with the reference's energy, forces and (periodic
  cells, when the reference gives it) stress, and in ``atoms.info``: ``learn_call``,
  ``learn_iteration`` (fits before it), ``learn_reason`` (start, threshold, max_steps),
  ``learn_uncertainty`` (eV/Å, the u that selected it), ``learn_threshold``,
  ``learn_walker``, ``learn_start``, ``learn_temperature``, ``learn_step`` and the model's
  errors on it before it was added (``learn_error_energy_per_atom`` eV/atom, ``learn_error_forces_mae`` eV/Å,
  ``learn_error_forces_max`` eV/Å); per atom ``learn_forces_uncertainty`` (eV/Å) and
  ``learn_model_forces`` (the model's forces before the frame was added, eV/Å).
* ``failures.extxyz`` and ``failures.json``: structures on which the reference failed (an
  exception or non-finite numbers), with the error; they are skipped, never fatal.
* ``learn.log``: the progress lines; ``learning_curve.png`` (with matplotlib).
* ``checkpoint.ckpt``: the whole state after every reference call and every fit (written to a
  temporary file and renamed): labelled frames bit for bit, every walker's positions, momenta,
  cell, step and random-generator state, the sparse set of the last GAP fit. ``resume=True``
  continues from it; the run then gives the same data and model as one never interrupted (the
  neighbour lists are rebuilt at every step, so no state hides in them). Ctrl-C or a killed
  process loses at most the reference call in flight. A finished run can be resumed with a
  larger ``max_calls`` or ``patience``; other settings must be the same.

An existing, non-empty output folder is refused unless ``resume`` is given.
"""


from __future__ import annotations

from .loop import LearnResult, learn
from .plot import plot_learning_curve
from .settings import CHECKPOINT_NAME, LearnSettings

__all__ = ["learn", "LearnResult", "LearnSettings", "plot_learning_curve", "CHECKPOINT_NAME"]
