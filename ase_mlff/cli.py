"""The ``ase-mlff`` command.

Units everywhere: energies in eV, lengths in Å, forces in eV/Å, stress in eV/Å³ (ASE sign:
positive = tensile). Datasets in other units (kcal/mol, Hartree, Bohr) are converted on
reading; say which with ``--energy-unit`` / ``--length-unit`` when the file does not.

Exit status (the same in every verb): 0 success; 1 unusable data, model file or structure
(the error is printed as one line, no traceback); 2 wrong usage of the command line, including
an output file that exists already (nothing was written; ask with --overwrite / --append /
--resume); 3 the job ran but did not reach its goal (relax not converged, md stopped by
--max-uncertainty);
130 stopped by Ctrl-C (SIGINT); 143 stopped by SIGTERM. Long jobs stop cleanly on either
signal: files are flushed, training writes its checkpoint (resume with ``--resume``).
141 (as for SIGPIPE): whoever read the output stopped reading (``ase-mlff info M | head -1``);
the rest of the output is dropped quietly.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import signal
import sys
import threading
import warnings

from ._version import __version__

def _info(args) -> int:
    from .io import read_metadata
    from ._warn import warn
    from .training.common import trained_on, untrained_stress_warning

    meta = read_metadata(args.model)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    seen, how = trained_on(meta)
    trained = ("unknown (this file does not record it)" if seen is None
               else (", ".join(seen) or "no labels") + ("" if how == "recorded" else f" ({how})"))
    rows = [
        ("file", args.model),
        ("family", meta.get("family")),
        ("elements", " ".join(meta.get("elements", []))),
        ("cutoff", "none (global model)" if meta.get("cutoff") is None else f"{meta['cutoff']} Å"),
        ("units", ", ".join(f"{k} {v}" for k, v in (meta.get("units") or {}).items())),
        ("training units", json.dumps(meta.get("training_units"))),
        ("dtype", meta.get("dtype")),
        ("format version", meta.get("format_version")),
        ("written by", f"ase-mlff {meta.get('package_version')} on {meta.get('created')}"),
        ("training data sha256", meta.get("training_data_hash")),
        ("trained on", trained),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("hyperparameters:")
    for k, v in sorted((meta.get("hyperparameters") or {}).items()):
        text = json.dumps(v)
        print(f"  {k}: {text if len(text) < 100 else text[:97] + '...'}")
    hp = meta.get("hyperparameters") or {}
    if meta.get("family") == "gap" and hp.get("variance", True) is True:
        cal = hp.get("calibration")
        if cal is None:
            print("uncertainty calibration: none; the file was written before ase-mlff calibrated GAP variances, so "
                  "its uncertainties are not calibrated (raw posterior standard deviations; fit it again with "
                  "`ase-mlff train gap` to calibrate)")
        else:
            factors = ", ".join(f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v!r:.20}"
                                for k, v in (cal.items() if isinstance(cal, dict) else []))
            print(f"uncertainty calibration: {factors} (factors on the GP standard deviations, docs/gap.md)")
    training = meta.get("training") or {}
    if training:
        print("training:")
        for k, v in sorted(training.items()):
            text = json.dumps(v)
            print(f"  {k}: {text if len(text) < 200 else text[:197] + '...'}")
    n = sum(1 for _ in meta.get("arrays", {}))
    print(f"arrays: {n} ({', '.join(sorted(meta.get('arrays', {}))[:8])}{', ...' if n > 8 else ''})")
    warning = untrained_stress_warning(meta, args.model, "the stress and pressure it gives are")
    if warning:
        warn(warning)  # printed as 'ase-mlff: warning: ...' (main's warning handler)
    return 0


def _add_delegated(sub, name, module, help_text=None):
    """The subcommand ``name`` run by ``module`` (its ``configure_parser(parser)`` and
    ``run(args)``); the help is ``help_text``, else the module's ``SUMMARY`` line."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # a family not built into this installation
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_run=lambda args, exc=exc: _unavailable(name, exc))
        return p
    help_text = help_text or getattr(mod, "SUMMARY", None) or f"train a {name} model"
    p = sub.add_parser(name, help=help_text, description=help_text)
    mod.configure_parser(p)
    p.set_defaults(_run=mod.run)
    return p


def _add_committee(p, family) -> None:
    """``--committee K`` and its options on a family's train parser, exactly when the family's
    recipe provides a committee hook (its module's ``COMMITTEE``): with it, the committee
    trainer runs instead of the family's own (which then only reads its flags)."""
    try:
        from .training import committee

        hook = committee.hook(family)
    except ImportError:  # a family not built into this installation (its parser says so)
        return
    if hook is None:
        return
    committee.add_arguments(p, hook)
    single = p.get_default("_run")

    def dispatch(args):
        if getattr(args, "committee", None) is not None:
            return committee.run(family, args)
        return single(args)

    p.set_defaults(_run=dispatch)


def _add_label_options(p) -> None:
    """``--energy-key``, ``--forces-key``, ``--stress-key`` and ``--allow-missing-forces`` on a
    family's train parser: the command then runs inside :func:`ase_mlff.data.label_options`, so
    they apply to every file it reads (the training data, ``--test``, ``--calibration-data``)."""
    g = p.add_argument_group("labels in the data files (default: found by their usual names, "
                             "docs/datasets.md)")
    g.add_argument("--energy-key", metavar="NAME", default=None,
                   help="the info key (npz: array) holding each frame's energy")
    g.add_argument("--forces-key", metavar="NAME", default=None,
                   help="the per-atom array (npz: array) holding the forces")
    g.add_argument("--stress-key", metavar="NAME", default=None,
                   help="the info key holding the stress (eV/Å³, ASE sign)")
    g.add_argument("--allow-missing-forces", action="store_true",
                   help="read frames without forces (their energies still count) instead of refusing them; "
                        "families that need forces on every frame (sgdml, bpnn) still refuse them")
    run = p.get_default("_run")

    def with_labels(args):
        from .data import label_options

        with label_options(args.energy_key, args.forces_key, args.stress_key, args.allow_missing_forces):
            return run(args)

    p.set_defaults(_run=with_labels)


def _unavailable(name, exc) -> int:
    print(f"ase-mlff: '{name}' is not available in this installation ({exc})", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ase-mlff",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ase-mlff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print a model file's metadata (family, elements, units, provenance)")
    p.add_argument("model", help="model file (.mlff)")
    p.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    p.set_defaults(_run=_info)

    train = sub.add_parser("train", help="train a model from reference data (see `ase-mlff train FAMILY --help`)")
    train_sub = train.add_subparsers(dest="family", metavar="FAMILY")
    from .training import recipe_modules  # a new family's recipe appears here without an edit

    for name, module in sorted(recipe_modules().items()):
        p = _add_delegated(train_sub, name, module)
        _add_committee(p, name)
        _add_label_options(p)

    export = _add_delegated(sub, "export", "ase_mlff.export.lammps",
                            "export a model to files LAMMPS reads (--lammps): MFF as pair_style uf3, "
                            "GAP, BPNN, SchNet and committees as ase-mlff's pair_style mlff plugin")
    export.add_argument("--lammps", action="store_true",
                        help="LAMMPS format: the potential files, the plugin where needed, an example input "
                             "and a JSON of the pair_style lines (the default and, for now, the only format)")
    _add_delegated(sub, "fit-head", "ase_mlff.training.head",
                   "fit a ridge head on a frozen model's pooled per-atom descriptors")
    try:  # md, relax, phonons, eos, eval
        from .cli_workflows import register
    except ImportError:  # pragma: no cover - only in a partial installation
        pass
    else:
        register(sub)
    return parser


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM = 0, 1, 2, 130, 141, 143


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has closed it (poll reports an error on
    it), as opposed to a broken pipe elsewhere (a worker process, a socket), which is a real
    failure. Where poll is missing, a broken pipe is taken to be stdout's."""
    if not hasattr(select, "poll"):
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        return False


def _drop_stdout() -> None:
    """Send what is left of stdout to /dev/null: its reader has gone, and the interpreter's
    final flush would otherwise fail again and print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _SigtermAsInterrupt:
    """While active (main thread only), SIGTERM stops the command the way Ctrl-C does, so that
    every clean-stop path (MD flushing its files, training writing its checkpoint) also runs
    when a batch system or ``kill`` ends the job; ``received`` tells the exit status apart."""

    def __init__(self):
        self.received = False
        self._old = None

    def _handler(self, signum, frame):
        self.received = True
        raise KeyboardInterrupt

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
            self._old = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None
        return False


class _WarningsAsMessages:
    """While active, ase-mlff's own warnings (:class:`~ase_mlff.errors.MLFFWarning`) print as
    ``ase-mlff: warning: ...`` on stderr, like the command's other messages: the line of code
    they would otherwise name is ase-mlff's or ASE's, which a command-line user did not write.
    Other packages' warnings keep Python's format (their location is what a report needs)."""

    def __enter__(self):
        from .errors import MLFFWarning

        self._saved = warnings.catch_warnings()
        self._saved.__enter__()
        python_format = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, MLFFWarning):
                print(f"ase-mlff: warning: {message}", file=sys.stderr if file is None else file, flush=True)
            else:
                python_format(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        return self._saved.__exit__(*exc)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return EXIT_OK if args.command is None else EXIT_USAGE
    from .errors import MLFFError, OutputExistsError

    with _SigtermAsInterrupt() as term, _WarningsAsMessages():
        try:
            rc = run(args)
            rc = rc if isinstance(rc, int) else EXIT_OK
            sys.stdout.flush()  # here, where a reader that has gone is handled, not at exit
        except BrokenPipeError:
            if not _stdout_reader_gone():
                raise
            _drop_stdout()
            rc = EXIT_SIGPIPE
        except OutputExistsError as exc:  # the fix is another command line: a usage error
            print(f"ase-mlff: error: {exc}", file=sys.stderr)
            rc = EXIT_USAGE
        except MLFFError as exc:
            text = str(exc)
            if args.command == "train":  # the readers name their Python keywords; give the flags
                from .data import command_line_message

                text = command_line_message(text)
            print(f"ase-mlff: error: {text}", file=sys.stderr)
            rc = EXIT_ERROR
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            # a path the user gave cannot be read or written: their data, not our bug
            print(f"ase-mlff: error: {exc.strerror or exc}: {exc.filename!r}", file=sys.stderr)
            rc = EXIT_ERROR
        except KeyboardInterrupt as exc:
            print("ase-mlff: terminated" if term.received else "ase-mlff: interrupted", file=sys.stderr)
            # training's TrainingInterrupted knows which signal stopped it (130 or 143)
            rc = getattr(exc, "exit_code", EXIT_SIGINT)
    if term.received and rc in (EXIT_OK, EXIT_SIGINT):
        rc = EXIT_SIGTERM
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
