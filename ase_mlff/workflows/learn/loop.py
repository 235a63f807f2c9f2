"""The learning loop (:func:`learn`; module docstring of :mod:`ase_mlff.workflows.learn`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import DatasetError, InputError, MLFFError, OutputExistsError
from ...io import atomic_write_bytes, file_sha256
from ..reference import ReferenceFailure, ReferenceSpec, label, parse_spec
from .fitting import CommitteeFitter, GapFitter
from .plot import plot_learning_curve
from .settings import CHECKPOINT_NAME, CHECKPOINT_VERSION, RUNAWAY_FACTOR, LearnSettings
from .store import (frame_atoms, jsonable, labelled_frame, pack_structures, structures_sha256,
                    unpack_structures, write_extxyz)
from .walkers import Walker, berendsen, thermalise


# ----------------------------------------------------------------------------- results
@dataclass
class LearnResult:
    """What a :func:`learn` run did; ``history`` has one record per reference call."""

    out_dir: str
    calls: int
    n_data: int
    n_failed: int
    fits: int
    md_steps: int
    stop_reason: str | None
    threshold: float | None
    history: list = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> str:
        sel = [h for h in self.history if h.get("status") == "labelled" and h.get("reason") != "start"]
        lines = [f"learn: {self.calls} reference calls ({self.n_data} labelled, {self.n_failed} failed), "
                 f"{self.fits} fits, {self.md_steps} MD steps, {self.wall_s:.0f} s; stopped: "
                 f"{self.stop_reason or 'interrupted'}"]
        if self.threshold is not None:
            lines.append(f"  threshold {self.threshold * 1000:.1f} meV/Å (largest per-atom force uncertainty)")
        if sel:
            last = sel[-min(5, len(sel)):]
            lines.append("  model before each of the last {} selected frames: F MAE {} meV/Å".format(
                len(last), " ".join(f"{h['error_forces_mae'] * 1000:.1f}" for h in last)))
        lines.append(f"  files in {self.out_dir}: model.mlff, data.extxyz, learn.log, checkpoint.ckpt")
        return "\n".join(lines)




# ----------------------------------------------------------------------------- the loop
class Learner:
    def __init__(self, starts, reference, out: Path, settings: LearnSettings, progress):
        self.starts = [a.copy() for a in starts]
        for a in self.starts:
            a.calc = None
        self.out = out
        self.s = settings
        self.progress = progress
        self.reference_calc = reference  # an ASE calculator, or a ReferenceSpec built on first use
        self.frames = []  # labelled Frames, in call order
        self.failures = []  # {"call", "error", ...} with the structure in "atoms"
        self.history = []
        self.walkers: list[Walker] = []
        self.st = {"calls": 0, "next_start": 0, "fits": 0, "turn": 0, "md_steps": 0, "since_crossing": 0,
                   "needs_fit": False, "threshold": settings.threshold, "stop_reason": None, "model_sha256": None,
                   "loo_force_rms": None}
        if settings.committee is not None:
            self.fitter = CommitteeFitter(settings.options, settings, self.say)
        else:
            self.fitter = GapFitter(settings.options, settings, self.say)
        self.model = None
        self._log = None
        self.t0 = time.perf_counter()

    # --------------------------------------------------------------- output
    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()
        if self.progress is not None:
            self.progress(msg)

    def timestep(self) -> float:
        if self.s.timestep is not None:
            return float(self.s.timestep)
        return 0.5 if any(1 in a.numbers for a in self.starts) else 1.0

    # --------------------------------------------------------------- checkpoint
    def checkpoint(self) -> None:
        from ...io import FORMAT_NAME, FORMAT_VERSION, write_archive

        fit_meta, fit_arrays = self.fitter.state()
        arrays = pack_structures("d_", ({"numbers": f.numbers, "positions": f.positions, "cell": f.cell,
                                          "pbc": f.pbc} for f in self.frames))
        arrays["d_energy"] = np.array([f.energy for f in self.frames], dtype=np.float64)
        arrays["d_forces"] = (np.concatenate([f.forces for f in self.frames]) if self.frames else np.zeros((0, 3)))
        arrays["d_stress"] = np.array([f.stress if f.stress is not None else np.full(6, np.nan)
                                       for f in self.frames], dtype=np.float64).reshape(-1, 6)
        arrays["d_has_stress"] = np.array([f.stress is not None for f in self.frames], dtype=bool)
        arrays["d_unc"] = (np.concatenate([np.asarray(f.info.get("learn_forces_uncertainty",
                                                                 np.full(len(f), np.nan)), dtype=np.float64)
                                           for f in self.frames]) if self.frames else np.zeros(0))
        arrays["d_model_forces"] = (np.concatenate([np.asarray(f.info.get("learn_model_forces",
                                                                          np.full((len(f), 3), np.nan)),
                                                               dtype=np.float64) for f in self.frames])
                                    if self.frames else np.zeros((0, 3)))
        arrays.update(pack_structures("f_", ({"numbers": r["atoms"].numbers, "positions": r["atoms"].positions,
                                               "cell": np.array(r["atoms"].cell), "pbc": r["atoms"].pbc}
                                              for r in self.failures)))
        arrays.update(pack_structures("w_", ({"numbers": w.atoms.numbers, "positions": w.atoms.positions,
                                               "cell": np.array(w.atoms.cell), "pbc": w.atoms.pbc}
                                              for w in self.walkers)))
        arrays["w_momenta"] = (np.concatenate([w.atoms.get_momenta() for w in self.walkers])
                               if self.walkers else np.zeros((0, 3)))
        arrays.update(fit_arrays)
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": "ase-mlff learn checkpoint",
                "version": CHECKPOINT_VERSION,
                "settings": self.s.identity(), "starts_sha256": structures_sha256(self.starts), "state": self.st,
                "data_info": [{k: v for k, v in f.info.items() if not isinstance(v, np.ndarray)}
                              for f in self.frames],
                "failures": [{k: v for k, v in r.items() if k != "atoms"} for r in self.failures],
                "history": self.history, "fit": fit_meta,
                "walkers": [{"start": w.start, "t_index": w.t_index, "step": w.step, "restarts": w.restarts,
                             "rng": w.rng.bit_generator.state} for w in self.walkers]}
        write_archive(self.out / CHECKPOINT_NAME, jsonable(meta), arrays, compress=False)

    def restore(self) -> None:
        from ase import Atoms

        from ...data import Frame
        from ...errors import ModelFileError
        from ...io import read_archive

        path = self.out / CHECKPOINT_NAME
        if not path.exists():
            raise OutputExistsError(f"--resume: {self.out} holds no {CHECKPOINT_NAME} to continue from (start a "
                                    "new run in another folder)")
        try:
            meta, arrays = read_archive(path)
        except ModelFileError as exc:
            raise InputError(f"--resume: the checkpoint {path} cannot be read ({exc})") from None
        if meta.get("kind") != "ase-mlff learn checkpoint":
            raise InputError(f"--resume: {path} is not a learn checkpoint")
        if meta.get("version") != CHECKPOINT_VERSION:
            raise InputError(f"--resume: {path} is a learn checkpoint of version {meta.get('version')}; this ase-mlff "
                             f"reads version {CHECKPOINT_VERSION} (continue the run with the ase-mlff that started "
                             "it, or start a new run)")
        mine = self.s.identity()
        theirs = meta["settings"]
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise OutputExistsError(
                f"--resume: the run in {self.out} was started with other settings ({', '.join(diff)}: "
                + "; ".join(f"{k} was {theirs.get(k)!r}, now {mine.get(k)!r}" for k in diff)
                + "); only max_calls and patience may change")
        if meta["starts_sha256"] != structures_sha256(self.starts):
            raise OutputExistsError(f"--resume: the start structures differ from those the run in {self.out} began "
                                    "with")
        self.st = meta["state"]
        self.history = meta["history"]
        self.frames = []
        per_atom = arrays["d_unc"]
        for k, s in enumerate(unpack_structures("d_", arrays)):
            info = dict(meta["data_info"][k])
            unc = per_atom[s["slice"]]
            if not np.all(np.isnan(unc)):
                info["learn_forces_uncertainty"] = unc.copy()
                info["learn_model_forces"] = arrays["d_model_forces"][s["slice"]].copy()
            self.frames.append(Frame(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"],
                                     energy=float(arrays["d_energy"][k]), forces=arrays["d_forces"][s["slice"]],
                                     stress=arrays["d_stress"][k] if arrays["d_has_stress"][k] else None,
                                     info=info))
        self.failures = []
        for r, s in zip(meta["failures"], unpack_structures("f_", arrays)):
            self.failures.append({**r, "atoms": Atoms(numbers=s["numbers"], positions=s["positions"],
                                                      cell=s["cell"], pbc=s["pbc"])})
        self.walkers = []
        for w, s in zip(meta["walkers"], unpack_structures("w_", arrays)):
            start = self.starts[w["start"]]
            atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"],
                          info=dict(start.info))  # config_type and the like, as before
            atoms.set_constraint([c.copy() for c in start.constraints])  # fixed atoms stay fixed
            atoms.set_momenta(arrays["w_momenta"][s["slice"]])
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = w["rng"]
            self.walkers.append(Walker(w["start"], w["t_index"], w["step"], rng, atoms, w.get("restarts", 0)))
        self.fitter.restore(meta.get("fit") or {}, arrays)
        model_path = self.out / "model.mlff"
        if self.st["fits"]:
            if model_path.exists() and file_sha256(model_path) == self.st["model_sha256"]:
                self.model = self._load(model_path)
            else:  # the model file of the last fit did not survive (killed while writing it): the same fit again
                self.st["needs_fit"] = True
        self.say(f"resumed from {path}: {self.st['calls']} reference calls, {len(self.frames)} labelled frames, "
                 f"{self.st['fits']} fits")

    # --------------------------------------------------------------- pieces
    def _load(self, path):
        from ...io import load_model

        model = load_model(path)
        if model.family == "gap":
            model.variance_method = self.s.variance
        return model

    def reference(self):
        if isinstance(self.reference_calc, ReferenceSpec):
            self.reference_calc = self.reference_calc.build()
        return self.reference_calc

    def call(self, atoms, record: dict) -> bool:
        """One reference call on ``atoms``: the frame is added (True) or the failure recorded."""
        self.st["calls"] += 1
        record = {"call": self.st["calls"], "iteration": self.st["fits"], **record}
        t = time.perf_counter()
        try:
            labels = label(self.reference(), atoms)
        except ReferenceFailure as exc:
            record.update(status="failed", error=str(exc), reference_s=time.perf_counter() - t)
            self.history.append(jsonable({k: v for k, v in record.items() if k != "pred"}))
            bad = atoms.copy()
            bad.calc = None
            bad.info = {"learn_call": record["call"], "learn_error": str(exc)}
            self.failures.append({"call": record["call"], "error": str(exc), "walker": record.get("walker"),
                                  "atoms": bad})
            self.say(f"call {record['call']}: the reference failed ({exc}); recorded in failures.json, skipped")
            return False
        record["reference_s"] = time.perf_counter() - t
        pred = record.pop("pred", None)
        n = len(atoms)
        info = {"learn_call": record["call"], "learn_iteration": record["iteration"], "learn_reason": record["reason"],
                "learn_walker": record.get("walker", -1), "learn_start": record.get("start", -1),
                "learn_temperature": record.get("temperature", 0.0),
                "learn_step": record.get("step", 0),
                "learn_uncertainty": record.get("uncertainty", float("nan")),
                "learn_threshold": record.get("threshold") if record.get("threshold") is not None else float("nan")}
        if "config_type" in atoms.info:
            info["config_type"] = atoms.info["config_type"]
        if pred is not None:
            dF = pred["forces"] - labels["forces"]
            record.update(error_energy_per_atom=abs(pred["energy"] - labels["energy"]) / n,
                          error_forces_mae=float(np.abs(dF).mean()),
                          error_forces_max=float(np.linalg.norm(dF, axis=1).max()))
            info.update(learn_error_energy_per_atom=record["error_energy_per_atom"],
                        learn_error_forces_mae=record["error_forces_mae"],
                        learn_error_forces_max=record["error_forces_max"],
                        learn_forces_uncertainty=np.asarray(pred["forces_uncertainty"], dtype=np.float64),
                        learn_model_forces=np.asarray(pred["forces"], dtype=np.float64))
        record["status"] = "labelled"
        self.frames.append(labelled_frame(atoms, labels, info))
        self.history.append(jsonable(record))
        return True

    def fit(self) -> None:
        from ...io import save_model

        t = time.perf_counter()
        model, rec, rms, how = self.fitter.fit(self.frames, self.model)
        self.st["fits"] += 1
        rec.update(learn={"reference": self.s.reference, "calls": self.st["calls"], "fits": self.st["fits"],
                          "settings": self.s.identity()})
        path = self.out / "model.mlff"
        save_model(model, path, training=rec)
        self.model = self._load(path)  # what a resumed run would use, bit for bit
        self.st["model_sha256"] = file_sha256(path)
        self.st["loo_force_rms"] = rms
        if self.s.threshold is None:
            # no held-out force error yet (one frame, or only perfect lattices whose forces vanish by
            # symmetry): no threshold, every turn sends its most uncertain frame (the fallback)
            self.st["threshold"] = self.s.threshold_factor * rms if rms else math.inf
            if not rms and not self.s.fallback:
                raise InputError("the fit measured no held-out force error to set the threshold from (too few or "
                                 "too symmetric frames); give --threshold, or leave out --no-fallback")
        self.st["needs_fit"] = False
        fit_s = time.perf_counter() - t
        if self.history:
            self.history[-1].update(fit_s=fit_s, fit=how, n_data=len(self.frames))
        self.say(f"fit {self.st['fits']}: {len(self.frames)} frames, {how}, {fit_s:.1f} s; held-out force error "
                 f"{f'{rms * 1000:.1f} meV/Å' if rms else 'none yet'} per atom (RMS), threshold "
                 f"{self.st['threshold'] * 1000:.1f} meV/Å")

    def _new_walker(self, k: int, t: int = 0) -> Walker:
        from ...rng import random_stream

        atoms = self.starts[k].copy()
        rng = random_stream(self.s.seed, f"learn-walker-{k}" + (f"-{t}" if t else ""))
        thermalise(atoms, self.s.temperatures[t], rng)
        return Walker(start=k, t_index=t, step=0, rng=rng, atoms=atoms)

    def _name(self, w: Walker) -> str:
        return (f"walker {self.walkers.index(w)} (start {w.start}, {self.s.temperatures[w.t_index]:g} K)"
                if self.s.walkers == "each" else f"walker {self.walkers.index(w)}")

    def _restart(self, w: Walker, why: str) -> None:
        atoms = self.starts[w.start].copy()
        thermalise(atoms, self.s.temperatures[w.t_index], w.rng)
        w.atoms = atoms
        w.restarts += 1
        self.say(f"{self._name(w)}: {why}; restarted from its start structure")

    def _predict(self, calc, atoms) -> dict:
        from ase.calculators.calculator import all_changes

        probe = atoms.copy()
        probe.calc = None
        calc.calculate(probe, ["energy", "forces"], all_changes)
        r = calc.results
        return {"energy": float(r["energy"]), "forces": np.array(r["forces"]),
                "forces_uncertainty": np.array(r["forces_uncertainty"])}

    def segment(self, index: int):
        """One turn of walker ``index``; returns (atoms, record) of the frame to label, or None."""
        from ase.md.langevin import Langevin
        from ase.units import fs

        from ...calculator import MLFFCalculator

        w = self.walkers[index]
        T = float(self.s.temperatures[w.t_index])
        dt = self.timestep()
        plain = MLFFCalculator(self.model, skin=0.0)
        unsure = MLFFCalculator(self.model, skin=0.0, uncertainty=True)
        atoms = w.atoms
        atoms.calc = plain
        dyn = Langevin(atoms, dt * fs, temperature_K=T, friction=self.s.friction / fs, fixcm=False, rng=w.rng)
        best = None
        threshold = self.st["threshold"]
        for _ in range(int(self.s.segment_steps)):
            try:
                dyn.step()
                if self.s.pressure is not None:
                    berendsen(atoms, float(self.s.pressure), dt)
                runaway = atoms.get_temperature() > RUNAWAY_FACTOR * T + 500.0
            except MLFFError as exc:
                runaway = str(exc)
            w.step += 1
            self.st["md_steps"] += 1
            self.st["since_crossing"] += 1
            if runaway:
                why = runaway if isinstance(runaway, str) else "the temperature ran away"
                self._restart(w, f"MD stopped at step {w.step} ({why})")
                break
            if w.step % int(self.s.check_interval):
                continue
            try:
                pred = self._predict(unsure, atoms)
            except MLFFError as exc:
                self._restart(w, f"the model failed at step {w.step} ({exc})")
                break
            u = float(pred["forces_uncertainty"].max())
            if best is None or u > best[1]["uncertainty"]:
                snap = atoms.copy()
                snap.calc = None
                best = (snap, {"walker": index, "start": w.start, "temperature": T, "step": w.step,
                               "uncertainty": u, "threshold": threshold, "pred": pred})
            if u > threshold:
                self.st["since_crossing"] = 0
                best[1]["reason"] = "threshold"
                atoms.calc = None
                return best
        else:  # a whole segment without crossing: the next temperature of the schedule
            if self.s.walkers == "ramp" and w.t_index + 1 < len(self.s.temperatures):
                w.t_index += 1
        w.atoms.calc = None
        if best is not None and self.s.fallback:
            best[1]["reason"] = "max_steps"
            return best
        return None

    # --------------------------------------------------------------- run
    def run(self, resume: bool) -> LearnResult:
        self.out.mkdir(parents=True, exist_ok=True)
        self._log = open(self.out / "learn.log", "a")
        try:
            if resume:
                self.restore()
            else:
                self.say(f"learn: {len(self.starts)} start structure(s), reference {self.s.reference}, family "
                         f"{self.s.family}" + (f" committee of {self.s.committee}" if self.s.committee else "")
                         + f", temperatures {' '.join(f'{t:g}' for t in self.s.temperatures)} K"
                         + (f", P = {self.s.pressure:g} GPa" if self.s.pressure is not None else "")
                         + f", at most {self.s.max_calls} reference calls")
                self.checkpoint()
            self._loop()
        finally:
            self.write_files()
            self._log.close()
            self._log = None
        return self.result()

    def _loop(self) -> None:
        s, st = self.s, self.st
        while st["next_start"] < len(self.starts):  # 1. the start structures
            if st["calls"] >= s.max_calls:
                break
            k = st["next_start"]
            ok = self.call(self.starts[k], {"reason": "start", "start": k, "step": 0})
            st["next_start"] += 1
            st["needs_fit"] = st["needs_fit"] or ok
            if ok:
                self.say(f"call {st['calls']}: start structure {k} ({self.starts[k].get_chemical_formula()}) "
                         "labelled")
            self.checkpoint()
        if not self.frames:
            raise DatasetError("the reference failed on every start structure (failures.json says how); nothing "
                               "to learn from")
        if not self.walkers:
            if self.s.walkers == "each":  # every start structure at every temperature
                self.walkers = [self._new_walker(k, t) for t in range(len(self.s.temperatures))
                                for k in range(len(self.starts))]
            else:
                self.walkers = [self._new_walker(k) for k in range(len(self.starts))]
            self.checkpoint()
        while True:
            if st["needs_fit"]:
                self.fit()
                self.checkpoint()
            if st["calls"] >= s.max_calls:
                st["stop_reason"] = "max_calls"
                break
            if st["since_crossing"] >= s.steps_patience(len(self.walkers)):
                st["stop_reason"] = "converged"
                self.say(f"converged: no frame crossed the threshold in {st['since_crossing']} MD steps")
                break
            index = st["turn"]
            w = self.walkers[index]
            st["turn"] = (st["turn"] + 1) % len(self.walkers)
            picked = self.segment(index)
            if picked is not None:
                atoms, rec = picked
                ok = self.call(atoms, rec)
                if ok:
                    h = self.history[-1]
                    self.say(f"call {st['calls']}: walker {index} (start {w.start}) step {rec['step']} at "
                             f"{rec['temperature']:g} K, "
                             f"{rec['reason']}: uncertainty {rec['uncertainty'] * 1000:.1f} meV/Å; model error "
                             f"before adding: F MAE {h['error_forces_mae'] * 1000:.1f} meV/Å, max "
                             f"{h['error_forces_max'] * 1000:.1f} meV/Å, E {h['error_energy_per_atom'] * 1000:.2f} "
                             "meV/atom")
                    st["needs_fit"] = True
                else:  # the failed structure is not a place to continue from
                    self._restart(w, "the reference failed on its frame")
            self.checkpoint()

    # --------------------------------------------------------------- files
    def write_files(self) -> None:
        if self.frames:
            write_extxyz(self.out / "data.extxyz", (frame_atoms(f) for f in self.frames))
        if self.failures:
            write_extxyz(self.out / "failures.extxyz", (r["atoms"] for r in self.failures))
            text = json.dumps([{k: v for k, v in r.items() if k != "atoms"} for r in self.failures], indent=1)
            atomic_write_bytes(self.out / "failures.json", lambda fh: fh.write(text.encode()))
        try:
            plot_learning_curve(self.history, self.out / "learning_curve.png")
        except ImportError:  # matplotlib is optional
            pass
        except Exception as exc:  # noqa: BLE001 - a plot must not hide the run's own outcome
            self.say(f"learning_curve.png not written ({type(exc).__name__}: {exc})")

    def result(self) -> LearnResult:
        return LearnResult(out_dir=str(self.out), calls=self.st["calls"], n_data=len(self.frames),
                           n_failed=len(self.failures), fits=self.st["fits"], md_steps=self.st["md_steps"],
                           stop_reason=self.st["stop_reason"], threshold=self.st["threshold"],
                           history=list(self.history), wall_s=time.perf_counter() - self.t0)



def learn(starts, reference, out_dir, *, family: str = "gap", committee: int | None = None,
          temperatures=(300.0,), pressure: float | None = None, max_calls: int = 100,
          threshold: float | None = None, threshold_factor: float = 3.0, segment_steps: int = 100,
          check_interval: int = 2, patience: int | None = None, timestep: float | None = None,
          friction: float = 0.02, seed: int = 0, variance: str = "exact", fallback: bool = True,
          walkers: str = "ramp", reselect_growth: float = 1.5, novelty: float = 0.9,
          recalibrate_growth: float = 1.2, options: dict | None = None, resume: bool = False,
          progress: Callable[[str], None] | None = None) -> LearnResult:
    """Active learning (module docstring) from the structures ``starts`` (ase.Atoms or a
    list of them) with ``reference``: a SPEC string (``"ase.calculators.emt:EMT"``), a
    :class:`~ase_mlff.workflows.reference.ReferenceSpec` or an ASE calculator instance.
    ``options``: the family's training options (``ase_mlff.train``'s keywords, e.g.
    ``{"cutoff": 4.5, "n_sparse": 200, "sigma_force": 0.02}`` for gap). Writes ``out_dir``
    (refused when it exists and is not empty, unless ``resume``); returns a :class:`LearnResult`."""
    from ase import Atoms

    if isinstance(starts, Atoms):
        starts = [starts]
    starts = list(starts)
    if not starts or not all(isinstance(a, Atoms) and len(a) for a in starts):
        raise InputError("give at least one start structure (non-empty ase.Atoms)")
    if isinstance(reference, str):
        reference = parse_spec(reference)
    ref_text = reference.text if isinstance(reference, ReferenceSpec) else (
        f"{type(reference).__module__}:{type(reference).__qualname__}")
    settings = LearnSettings(reference=ref_text, family=family, committee=committee,
                             temperatures=tuple(float(t) for t in temperatures), pressure=pressure,
                             max_calls=int(max_calls), threshold=threshold, threshold_factor=float(threshold_factor),
                             segment_steps=int(segment_steps), check_interval=int(check_interval), patience=patience,
                             timestep=timestep, friction=float(friction), seed=int(seed), variance=variance,
                             fallback=bool(fallback), reselect_growth=float(reselect_growth), novelty=float(novelty),
                             walkers=walkers, recalibrate_growth=float(recalibrate_growth),
                             options=dict(options or {}))
    settings.check()
    out = Path(out_dir)
    if resume and not (out / CHECKPOINT_NAME).exists():  # refused before anything is created
        raise OutputExistsError(f"--resume: {out} holds no {CHECKPOINT_NAME} to continue from (start a new run "
                                "without --resume)")
    if not resume and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} exists and is not empty: give --resume to continue the run in it, or "
                                "another -o folder (nothing there is replaced)")
    if isinstance(reference, ReferenceSpec):  # a SPEC that does not import fails here, before any file is written
        reference = reference.build()
    learner = Learner(starts, reference, out, settings, progress)
    return learner.run(resume)
