"""The shared neural-network trainer (being split into modules; everything is in :mod:`.loop` for now)."""

from .loop import (DTYPES, EMA, KIND, SCHEDULES, Distributed, FamilyCache, TrainerOptions, TrainingRecord,  # noqa: F401
                   _error_classes, build_model, build_parser, cast_model, configure_parser, distributed_run,
                   energy_scale, fit_reference_energies, has_training_hook, in_step, init_distributed, main,
                   options_from_args, pack_state, process_rank, recipe_failure, reference_record, reported_elsewhere,
                   run_recipe, run_training, save_recipe_result, train_network, unpack_state, write_plots)
