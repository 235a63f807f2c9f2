"""``ase-mlff md | relax | phonons | eos | eval | learn``: the workflows as subcommands.

``register(subparsers)`` adds them to the ``ase-mlff`` parser; each sets ``_run`` to a
function ``run(args) -> int``. Units: eV, Å, fs, K, pressure in GPa, frequencies in THz.
Structures are read with :func:`ase.io.read` (any format it knows; ``--index`` picks the
frame, default the last one, as ase does).

Conventions shared by the verbs: every ``--help`` shows each option's default; a bad value
of an option is a usage error naming the flag (exit status 2, from argparse); a bad file,
model or structure is an :class:`~ase_mlff.errors.MLFFError` (exit status 1, printed by
``ase-mlff``'s main); Ctrl-C stops after the current step with exit status 130; ``md`` stopped
by ``--max-uncertainty`` exits with status 3. No verb
replaces an existing output file unless asked (``--overwrite``; ``md`` also ``--append``).
"""

from __future__ import annotations

import argparse
import os
import sys

from ._warn import warn
from .console import HelpFormatter

_UNITS = ("Units: eV, Å, fs, K; pressures in GPa; phonon frequencies in THz. STRUCTURE is any file\n"
          "ase.io.read reads; --index picks the frame (default the last one, as ase does).")
_MODEL_HELP = "model file (.mlff)"
_LEARN_UNITS = ("Units: eV, Å, fs, K; pressures in GPa; uncertainties and thresholds in eV/Å (the largest per-atom\n"
                "force uncertainty of a frame). docs/active_learning.md describes the loop, the files in DIR and\n"
                "--resume.")


def _number(kind, low=None, strict=False, what="a number"):
    """argparse type: ``kind`` (int/float) with a lower bound, so that a bad value is a usage
    error that names the flag (argparse adds "argument --steps: ...")."""

    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if low is not None and (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its own messages
    return convert


_pos_float = _number(float, 0.0, strict=True, what="a positive number")
_nonneg_float = _number(float, 0.0, what="a number >= 0")
_pos_int = _number(int, 1, what="a positive integer")
_nonneg_int = _number(int, 0, what="an integer >= 0")


def _index(text):
    from .errors import InputError
    from .workflows._common import parse_index

    try:
        return parse_index(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
_STRUCT_HELP = "structure file: any format ase.io.read reads (extxyz, cif, POSCAR, .traj, ...)"


_THREADS_HELP = ("threads: OMP_NUM_THREADS sets how many threads a run uses (ASE_MLFF_NUM_THREADS: ase-mlff's "
                 "compiled kernels alone); the run prints the counts it uses. Idle threads sleep "
                 "(OMP_WAIT_POLICY=PASSIVE, set by ase-mlff unless you set it), so a busy machine costs little; "
                 "for small systems on a machine shared with other work, OMP_NUM_THREADS=1 is often fastest "
                 "(docs/user_guide.md, section 8).")


def _add_common(p, structure: bool = True) -> None:
    if not p.epilog:
        p.epilog = _THREADS_HELP
    p.add_argument("model", help=_MODEL_HELP)
    if structure:
        p.add_argument("structure", help=_STRUCT_HELP)
        p.add_argument("-i", "--index", default=None, type=_index,
                       help="frame of STRUCTURE to use (ase index: 0, -1, ...; default: the last frame)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="evaluation precision (default: the model's own)")


def _calc_and_atoms(args):
    from .workflows._common import load_calculator, read_structure

    calc = load_calculator(args.model, device=args.device, dtype=args.dtype)
    atoms = read_structure(args.structure, args.index) if hasattr(args, "structure") else None
    return calc, atoms


def _warn_untrained_stress(calc, name, what: str) -> None:
    """One line on stderr when the model was never trained on stress (``training.trained_on``
    of its file, or what its training record implies); nothing when the record does not say."""
    from .training.common import untrained_stress_warning

    text = untrained_stress_warning(getattr(calc.model, "meta", None), name, what)
    if text:
        warn(text)  # the command line prints it as 'ase-mlff: warning: ...'


def _default_timestep(atoms) -> float:
    return 0.5 if any(s == "H" for s in atoms.get_chemical_symbols()) else 1.0


# ----------------------------------------------------------------------------------- md
def _md_mode(args) -> str:
    return "append" if args.append else ("overwrite" if args.overwrite else "new")


def _run_md(args) -> int:
    from .threads import describe
    from .workflows._common import has_stress, refuse_existing
    from .workflows.md import run_md

    traj = None if args.trajectory in (None, "", "none") else args.trajectory
    log = None if args.log in (None, "", "none") else args.log
    mode = _md_mode(args)
    # checked before the model is loaded and anything runs, in the words of the command line
    if mode == "new":
        refuse_existing([traj, None if log == "-" else log],
                        "give --append to continue that run or --overwrite to replace it, -o/--log for other "
                        "names")
    if args.plot and mode != "overwrite":  # also with --append: the old plot may be all the user has of run 1
        refuse_existing([args.plot], "give another --plot name (or --overwrite, which also replaces the run's "
                                     "trajectory and log)")
    calc, atoms = _calc_and_atoms(args)
    if has_stress(calc, atoms) and all(atoms.pbc):  # the log and the summary then give the pressure
        _warn_untrained_stress(calc, args.model, "the pressures it logs" + (" and the NPT cell" if args.ensemble
                                                                           == "npt" else "") + " are")
    timestep = args.timestep if args.timestep is not None else _default_timestep(atoms)
    print(f"model   {args.model}: {calc.model.family}, {atoms.get_chemical_formula()} ({len(atoms)} atoms), "
          f"{args.ensemble.upper()}, T = {args.temperature:g} K"
          + (f", P = {args.pressure:g} GPa" if args.ensemble == "npt" else "") + f", dt = {timestep:g} fs",
          flush=True)
    print(describe(), flush=True)  # the threads, and whether idle ones sleep
    res = run_md(atoms, calc, ensemble=args.ensemble, temperature=args.temperature, timestep=timestep,
                 steps=args.steps, pressure=args.pressure, friction=args.friction, tdamp=args.tdamp,
                 pdamp=args.pdamp, barostat=args.barostat, init_velocities=not args.keep_velocities,
                 seed=args.seed, trajectory=traj, traj_interval=args.traj_interval, logfile=log,
                 log_interval=args.log_interval, mode=mode, progress=not args.no_progress,
                 max_uncertainty=args.max_uncertainty, on_uncertainty=args.on_uncertainty)
    print(res.summary())
    if args.plot:
        from .workflows.plotting import plot_md

        print(f"written {plot_md(res, args.plot, title=f'{args.ensemble.upper()} {atoms.get_chemical_formula()}')}")
    if res.interrupted:
        return 130
    return EXIT_UNCERTAIN if res.stop_reason else 0


#: exit status of ``md`` stopped by --max-uncertainty: not an error of the input (1) or of the
#: command line (2), but a run that ended early on purpose, which scripts must tell apart
EXIT_UNCERTAIN = 3


def _md_parser(p) -> None:
    _add_common(p)
    g = p.add_argument_group("dynamics")
    g.add_argument("-e", "--ensemble", choices=["nve", "nvt", "npt"], default="nve",
                   help="nve: velocity Verlet; nvt: Langevin; npt: MTK barostat + Nose-Hoover chains "
                        "(ase IsotropicMTKNPT, or MTKNPT with --barostat anisotropic)")
    g.add_argument("-T", "--temperature", type=_nonneg_float, default=300.0,
                   help="temperature in K: of the initial Maxwell-Boltzmann velocities and of the thermostat")
    g.add_argument("-P", "--pressure", type=float, default=0.0, help="external pressure in GPa for npt")
    g.add_argument("-t", "--timestep", type=_pos_float, default=None,
                   help="time step in fs (default 0.5 with hydrogen in the structure, else 1.0)")
    g.add_argument("-n", "--steps", type=_nonneg_int, default=1000, help="number of steps")
    g.add_argument("--friction", type=_nonneg_float, default=0.01, help="Langevin friction in 1/fs")
    g.add_argument("--tdamp", type=_pos_float, default=None,
                   help="npt thermostat time constant in fs (default 100 steps)")
    g.add_argument("--pdamp", type=_pos_float, default=None,
                   help="npt barostat time constant in fs (default 1000 steps)")
    g.add_argument("--barostat", choices=["isotropic", "anisotropic"], default="isotropic",
                   help="npt: isotropic volume only, or all cell degrees of freedom")
    g.add_argument("--seed", type=_nonneg_int, default=None,
                   help="random seed; the velocities and the Langevin noise get independent streams of it "
                        "(default: none, a different run each time)")
    g.add_argument("--keep-velocities", action="store_true",
                   help="use the velocities stored in STRUCTURE instead of drawing Maxwell-Boltzmann ones "
                        "(by default: Maxwell-Boltzmann at --temperature, zero total momentum and, for a "
                        "molecule, zero angular momentum)")
    u = p.add_argument_group("uncertainty (models that give it, e.g. committees: docs/uncertainty.md)")
    u.add_argument("--max-uncertainty", type=_pos_float, default=None, metavar="EV_PER_A",
                   help="limit on the largest per-atom force uncertainty in eV/Å, checked every step; above it "
                        "the run stops cleanly (exit status 3; the frame is written) or warns, see "
                        "--on-uncertainty (default: no limit). A model without uncertainty is an error")
    u.add_argument("--on-uncertainty", choices=["stop", "warn"], default="stop",
                   help="what to do when --max-uncertainty is crossed")
    o = p.add_argument_group("output (an existing trajectory or log is never replaced without --overwrite)")
    o.add_argument("-o", "--trajectory", default="md.traj",
                   help="trajectory file, .traj or .extxyz by extension; 'none' for no file. Frames keep "
                        "velocities, step and time")
    o.add_argument("--traj-interval", type=_pos_int, default=10, help="write a frame every N steps")
    o.add_argument("--log", default="md.log",
                   help="log file (step, time, Epot, Ekin, Etot, T, and P and V with stress); '-' for stdout, "
                        "'none' for no log")
    o.add_argument("--log-interval", type=_pos_int, default=10, help="log every N steps")
    w = o.add_mutually_exclusive_group()
    w.add_argument("--append", action="store_true",
                   help="continue the run in the existing trajectory: start from its last frame (positions, cell, "
                        "velocities), continue its step count and time, append frames and log rows "
                        "(STRUCTURE then only checks that the system is the same)")
    w.add_argument("--overwrite", action="store_true", help="replace an existing trajectory, log and --plot file")
    o.add_argument("--plot", default=None, metavar="PNG",
                   help="also plot energies and temperature (npt: also volume and pressure) to PNG "
                        "(default: no plot)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(_run=_run_md)


# ----------------------------------------------------------------------------------- relax
def _run_relax(args) -> int:
    from .threads import describe
    from .workflows.relax import relax

    calc, atoms = _calc_and_atoms(args)
    if args.cell:
        _warn_untrained_stress(calc, args.model, "the relaxed cell and its pressure are")
    output = args.output
    if output is None:
        stem = os.path.splitext(os.path.basename(args.structure))[0]
        output = f"{stem}_relaxed.extxyz"
    traj = None if args.trajectory in (None, "", "none") else args.trajectory
    log = None if args.log == "none" else args.log
    print(describe(), flush=True)
    res = relax(atoms, calc, optimizer=args.optimizer, fmax=args.fmax, steps=args.steps, cell=args.cell,
                pressure=args.pressure, hydrostatic=args.hydrostatic, trajectory=traj, output=output,
                logfile=log, progress=False, overwrite=args.overwrite)
    print(res.summary())
    if res.interrupted:
        return 130
    if not res.converged:
        print(f"ase-mlff: warning: not converged to fmax = {args.fmax} eV/Å in {args.steps} steps "
              "(exit status 3)", file=sys.stderr)
        return 3
    return 0


def _relax_parser(p) -> None:
    _add_common(p)
    p.add_argument("--optimizer", default="BFGS", choices=["BFGS", "FIRE", "LBFGS", "BFGSLineSearch"],
                   help="ase optimizer")
    p.add_argument("--fmax", type=_pos_float, default=0.01, help="force convergence in eV/Å")
    p.add_argument("-n", "--steps", type=_nonneg_int, default=500, help="maximum number of steps")
    p.add_argument("--cell", action="store_true",
                   help="relax the cell too (ase.filters.FrechetCellFilter); needs a periodic model with stress")
    p.add_argument("-P", "--pressure", type=float, default=0.0, help="external pressure in GPa with --cell")
    p.add_argument("--hydrostatic", action="store_true", help="with --cell: keep the cell shape, relax the volume")
    p.add_argument("-o", "--output", default=None,
                   help="relaxed structure, any format ase.io.write knows (default STRUCTURE-stem_relaxed.extxyz)")
    p.add_argument("--trajectory", default="relax.traj",
                   help="trajectory of the optimisation (.traj/.extxyz; 'none' for no file; default relax.traj)")
    p.add_argument("--log", default="-", help="optimizer log: '-' stdout, a file, or 'none'")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --output, --trajectory and --log files (default: refuse)")
    p.set_defaults(_run=_run_relax)
    p.epilog = "Exit status 0 when converged, 3 when not converged within --steps."


# ----------------------------------------------------------------------------------- phonons
def _run_phonons(args) -> int:
    from .workflows.phonons import phonons

    calc, atoms = _calc_and_atoms(args)
    primitive = None if args.primitive == "none" else args.primitive
    res = phonons(atoms, calc, supercell=args.supercell, method="hessian" if args.hessian else "displacement",
                  displacement=args.displacement, primitive=primitive, path=args.path, npoints=args.npoints,
                  mesh=args.mesh, outdir=args.outdir, plot=not args.no_plot, batch_size=args.batch_size,
                  symmetrize=args.symmetrize, overwrite=args.overwrite)
    print(res.summary())
    return 0


def _phonons_parser(p) -> None:
    _add_common(p)
    p.add_argument("-s", "--supercell", type=int, nargs="+", default=[3], metavar="N",
                   help="supercell: N (NxNxN), Na Nb Nc, or 9 integers of a matrix (default 3)")
    p.add_argument("-d", "--displacement", type=_pos_float, default=0.01,
                   help="finite displacement amplitude in Å")
    p.add_argument("--hessian", action="store_true",
                   help="force constants from the model's analytic Hessian of the supercell instead of "
                        "finite displacements")
    p.add_argument("--primitive", default="auto", choices=["auto", "none"],
                   help="auto: phonopy finds the primitive cell; none: use the input cell")
    p.add_argument("--path", default=None,
                   help="band path in ASE notation, e.g. GXWKGLUWLK,UX (default: ASE's standard path for "
                        "the Bravais lattice)")
    p.add_argument("--npoints", type=_nonneg_int, default=51, help="q-points per band segment (0: no bands)")
    p.add_argument("--mesh", type=_nonneg_int, nargs="+", default=[20],
                   help="q-mesh for the DOS: N or Na Nb Nc (0: no DOS)")
    p.add_argument("--symmetrize", action="store_true", help="symmetrise the force constants (phonopy)")
    p.add_argument("--batch-size", type=_pos_int, default=8, help="displaced supercells per batched evaluation")
    p.add_argument("--outdir", default=".", help="directory for phonopy_params.yaml, band.yaml, "
                                                 "total_dos.dat and phonons.png")
    p.add_argument("--no-plot", action="store_true", help="do not write phonons.png")
    p.add_argument("--overwrite", action="store_true", help="replace those files if they exist (default: refuse)")
    p.set_defaults(_run=_run_phonons)


# ----------------------------------------------------------------------------------- eos
def _run_eos(args) -> int:
    from .workflows.eos import equation_of_state

    calc, atoms = _calc_and_atoms(args)
    res = equation_of_state(atoms, calc, volumes=tuple(args.range), npoints=args.points, form=args.eos,
                            outdir=args.outdir, plot=not args.no_plot, overwrite=args.overwrite)
    print(res.summary())
    return 0


def _eos_parser(p) -> None:
    from .workflows.eos import EOS_FORMS

    _add_common(p)
    p.add_argument("--range", type=_pos_float, nargs=2, default=[0.90, 1.10], metavar=("VMIN", "VMAX"),
                   help="volume range as fractions of the input volume")
    p.add_argument("--points", type=_number(int, 5, what="an integer >= 5"), default=11, help="number of volumes")
    p.add_argument("--eos", default="birchmurnaghan", choices=EOS_FORMS, help="EOS form")
    p.add_argument("--outdir", default=".", help="directory for eos.dat and eos.png")
    p.add_argument("--no-plot", action="store_true", help="do not write eos.png")
    p.add_argument("--overwrite", action="store_true", help="replace those files if they exist (default: refuse)")
    p.set_defaults(_run=_run_eos)


# ----------------------------------------------------------------------------------- eval
def _run_eval(args) -> int:
    from .data import read
    from .workflows._common import load_calculator
    from .workflows.evaluate import evaluate, file_indices, read_group_values

    calc = load_calculator(args.model, device=args.device, dtype=args.dtype)
    data = read(args.data, index=args.index, energy_unit=args.energy_unit, length_unit=args.length_unit,
                require_energy=False, require_forces=False)
    csv = False if args.csv is not None and args.csv.lower() == "none" else args.csv
    res = evaluate(calc, data, batch_size=args.batch_size, stress=False if args.no_stress else None,
                   progress=not args.no_progress, outdir=args.outdir, plot=not args.no_plot,
                   overwrite=args.overwrite, group_by=args.group_by,
                   group_values=read_group_values(args.data, args.index, data, args.group_by),
                   frame_index=file_indices(args.data, args.index, data), csv=csv)
    print(f"model   {args.model}: {calc.model.family}; data {args.data} (index {args.index})")
    print(res.summary())
    return 0


def _eval_parser(p) -> None:
    _add_common(p, structure=False)
    p.add_argument("data", help="labelled data: extxyz/ase formats, ASE .db, or MD17-style .npz")
    p.add_argument("-i", "--index", default=":", help="frames to evaluate: ':' (all), '0:100', '::10', '-1'")
    p.add_argument("--energy-unit", default=None,
                   help="energy unit of the data: eV, meV, kcal/mol, kJ/mol, Hartree, Ry "
                        "(default: eV, or what an .npz file says)")
    p.add_argument("--length-unit", default=None, help="length unit of the data: Ang or Bohr (default Ang)")
    p.add_argument("--batch-size", type=_pos_int, default=16, help="frames per batched evaluation")
    p.add_argument("--no-stress", action="store_true", help="do not compare stresses")
    p.add_argument("--group-by", action="append", metavar="KEY",
                   help="info key of the frames to break the errors down by; repeat for several tables "
                        "(default: config_type when the frames have one)")
    p.add_argument("--outdir", default=".", help="directory for eval_metrics.json, parity.png and eval_frames.csv")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="per-frame errors as CSV, one row per frame; 'none' for none "
                        "(default: OUTDIR/eval_frames.csv)")
    p.add_argument("--no-plot", action="store_true", help="do not write parity.png")
    p.add_argument("--overwrite", action="store_true", help="replace those files if they exist (default: refuse)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(_run=_run_eval)

# ----------------------------------------------------------------------------------- learn
def _read_starts(paths):
    """Every frame of every START file (any format ase.io.read reads)."""
    from .errors import InputError
    from .workflows._common import read_structures

    images = [atoms for path in paths for atoms in read_structures(path)]
    if not images:
        raise InputError("the START files hold no structures")
    return images


def _training_options(items):
    """``--option KEY=VALUE`` (repeated) -> {KEY: VALUE}, values read as Python literals."""
    from .workflows.reference import literal

    out = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key.isidentifier():
            raise argparse.ArgumentTypeError(f"--option {item!r}: expected KEY=VALUE, e.g. n_sparse=200")
        out[key] = literal(value.strip())
    return out


def _run_learn(args) -> int:
    from .errors import DatasetError, InputError, OutputExistsError
    from .workflows.learn import learn
    from .workflows.reference import ReferenceSpecError, parse_spec

    def usage(msg) -> int:
        print(f"ase-mlff learn: error: {msg}", file=sys.stderr)
        return 2

    try:
        options = _training_options(args.option)
        spec = parse_spec(args.reference)
        starts = _read_starts(args.start)
    except (argparse.ArgumentTypeError, ReferenceSpecError) as exc:
        return usage(exc)
    try:
        res = learn(starts, spec, args.output, family=args.family, committee=args.committee,
                    temperatures=args.temperature, pressure=args.pressure, max_calls=args.max_calls,
                    threshold=args.threshold, threshold_factor=args.threshold_factor,
                    segment_steps=args.segment_steps, check_interval=args.check_interval, patience=args.patience,
                    timestep=args.timestep, friction=args.friction, seed=args.seed, variance=args.variance,
                    fallback=not args.no_fallback, walkers=args.walkers,
                    recalibrate_growth=args.recalibrate_growth, options=options, resume=args.resume,
                    progress=lambda msg: print(msg, flush=True))
    except (ReferenceSpecError, OutputExistsError) as exc:
        return usage(exc)
    except DatasetError:
        raise  # exit status 1 (main prints it)
    except InputError as exc:  # settings the loop refuses (before anything was written)
        return usage(exc)
    except KeyboardInterrupt:
        print(f"ase-mlff learn: interrupted; every finished reference call is kept in {args.output}: continue with "
              "the same command and --resume", file=sys.stderr)
        return 130
    print(res.summary())
    return 0


def _learn_parser(p) -> None:
    p.epilog = _THREADS_HELP
    p.add_argument("start", nargs="+", metavar="START",
                   help="start structures: files ase.io.read reads, every frame of each (MD walkers start from "
                        "each frame: see --walkers)")
    p.add_argument("--reference", required=True, nargs="+", metavar="SPEC",
                   help="the reference: an ASE calculator as module:Class with optional key=value arguments "
                        "(values read as Python literals, else kept as text), e.g. ase.calculators.emt:EMT or "
                        "tblite.ase:TBLite method=GFN2-xTB")
    p.add_argument("--family", default="gap",
                   help="model family: gap (its own calibrated variance) or, with --committee, mff, bpnn, "
                        "schnet, sgdml (one molecule)")
    p.add_argument("--committee", type=_number(int, 2, what="an integer >= 2"), default=None, metavar="K",
                   help="a committee of K models, refitted after every call (networks fine-tune from the current "
                        "committee; default: none; required for families without their own variance)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a training option of the family (the `ase-mlff train FAMILY` flag with _ for -), "
                        "repeatable, e.g. --option cutoff=4.5 --option n_sparse=200 (default: the recipe's)")
    g = p.add_argument_group("dynamics (Langevin NVT; with --pressure a Berendsen barostat on periodic cells)")
    g.add_argument("-T", "--temperature", type=_pos_float, nargs="+", default=[300.0], metavar="K",
                   help="temperatures in K (see --walkers)")
    g.add_argument("--walkers", choices=["each", "ramp"], default="ramp",
                   help="each: one walker per start structure and temperature, each at its own temperature; "
                        "ramp: one walker per start structure, moving to the next temperature after a turn "
                        "without crossing the threshold")
    g.add_argument("-P", "--pressure", type=float, default=None, help="pressure in GPa (default: constant volume)")
    g.add_argument("-t", "--timestep", type=_pos_float, default=None,
                   help="time step in fs (default 0.5 with hydrogen in a start structure, else 1.0)")
    g.add_argument("--friction", type=_nonneg_float, default=0.02, help="Langevin friction in 1/fs")
    g.add_argument("--segment-steps", type=_pos_int, default=100,
                   help="most MD steps of a walker's turn; a turn without crossing sends its most uncertain frame "
                        "to the reference (see --no-fallback)")
    g.add_argument("--check-interval", type=_pos_int, default=2, help="compute the uncertainty every N steps")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the velocities and the Langevin noise")
    u = p.add_argument_group("selection and stopping")
    u.add_argument("--max-calls", type=_pos_int, default=100,
                   help="most reference calls, start structures and failed calls included")
    u.add_argument("--threshold", type=_pos_float, default=None, metavar="EV_PER_A",
                   help="call the reference when the largest per-atom force uncertainty (calibrated, eV/Å) "
                        "exceeds this (default: --threshold-factor times the held-out RMS force error of the "
                        "current fit, recomputed at every calibration)")
    u.add_argument("--threshold-factor", type=_pos_float, default=3.0,
                   help="the automatic threshold in units of the fit's held-out RMS per-atom force error")
    u.add_argument("--patience", type=_pos_int, default=None, metavar="STEPS",
                   help="stop when no frame crossed the threshold for this many MD steps, all walkers together "
                        "(default: ten turns, at least two of every walker)")
    u.add_argument("--no-fallback", action="store_true",
                   help="a turn without crossing sends nothing to the reference (default: its most uncertain frame)")
    u.add_argument("--variance", choices=["exact", "samples"], default="exact",
                   help="gap: the force variance from the design rows (exact) or the posterior samples (faster on "
                        "large cells, noisier)")
    u.add_argument("--recalibrate-growth", type=_pos_float, default=1.2, metavar="X",
                   help="gap: redo the leave-one-frame-out calibration (and so the automatic threshold) when the "
                        "labelled atoms have grown X times since the last one (1: at every fit)")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder for model.mlff, data.extxyz, learn.log, learning_curve.png, checkpoint.ckpt "
                        "(refused when it exists and is not empty, unless --resume)")
    o.add_argument("--resume", action="store_true",
                   help="continue the run in DIR from its checkpoint (same settings; --max-calls and --patience "
                        "may grow)")
    p.set_defaults(_run=_run_learn)


_COMMANDS = {
    "md": (_md_parser, "molecular dynamics: NVE, NVT (Langevin) or NPT (MTK) with trajectory and log"),
    "relax": (_relax_parser, "relax positions (and with --cell the cell, under --pressure) with BFGS or FIRE"),
    "phonons": (_phonons_parser, "phonon band structure and DOS with phonopy (finite displacements or "
                                 "the analytic Hessian)"),
    "eos": (_eos_parser, "equation of state: E(V) with a Birch-Murnaghan fit (V0, E0, B)"),
    "eval": (_eval_parser, "errors of a model on a labelled dataset (energy, forces, stress), per element, "
                           "per config_type (or --group-by KEY) and per frame, and a parity plot"),
    "learn": (_learn_parser, "active learning: MD with the current model, the reference (any ASE calculator) on "
                             "the frames whose force uncertainty crosses a threshold, refit, repeat"),
}


def register(subparsers) -> None:
    """Add md, relax, phonons, eos and eval to the ``ase-mlff`` subparsers."""
    for name, (configure, help_text) in _COMMANDS.items():
        units = _LEARN_UNITS if name == "learn" else _UNITS
        p = subparsers.add_parser(name, help=help_text, description=f"{help_text}.\n\n{units}",
                                  formatter_class=HelpFormatter)
        configure(p)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with only the workflow commands (the ``ase-mlff`` one has them too)."""
    parser = argparse.ArgumentParser(prog="ase-mlff")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser
