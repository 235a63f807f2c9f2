"""Refits of the learning loop: GAP with a fixed sparse set between re-selections (the new rows
added to the last fit's QR factor), committees of networks fine-tuned from the current
committee, other committees refitted from scratch (module docstring of
:mod:`ase_mlff.workflows.learn`)."""

from __future__ import annotations

import time

import numpy as np

from ...errors import InputError
from .settings import LearnSettings
from .store import jsonable


# ----------------------------------------------------------------------------- fitting
class GapFitter:
    """GAP refits with a fixed sparse set between re-selections, each an update of the last
    fit's QR factor by the new frames' rows, with the calibration on a schedule (module
    docstring)."""

    def __init__(self, options: dict, settings: LearnSettings, log):
        from ...training.gap_train import OPTIONS
        from ...training.common import UsageError, parse_reference_energies, resolve_options
        from ...training.sparse_gp import parse_config_type_sigmas

        bad = sorted(set(options) & {"test", "n_test", "checkpoint", "checkpoint_interval", "resume", "no_variance"})
        if bad:
            raise InputError(f"training option(s) {', '.join(bad)} do not apply to learn (the loop holds out no "
                             "test frames, writes its own checkpoints and needs the variance)")
        try:
            self.opts = resolve_options([o for o in OPTIONS if o.library], given=dict(options))
            self.config_type_sigmas = parse_config_type_sigmas(self.opts.get("sigma_config_type"))
        except TypeError as exc:
            raise InputError(str(exc)) from None
        except UsageError as exc:
            raise InputError(str(exc)) from None
        try:
            self.reference = parse_reference_energies(self.opts["reference_energies"], self.opts["energy_unit"])
        except UsageError as exc:
            raise InputError(str(exc)) from None
        self.settings = settings
        self.log = log
        self.sigmas = (self.opts["sigma_energy"], self.opts["sigma_force"], self.opts["sigma_virial"])
        # the sparse set of the last selection
        self.sparse: dict | None = None
        # the factor [R, Q^T y] ((T + 1, T + 1), sparse_gp.update_factor) of the prior and the rows
        # of the first n_factored frames; it is what a refit with the same sparse set continues from
        self.factor: np.ndarray | None = None
        self.n_factored = 0
        # those frames' weighted rows, for the next calibration (None: not in memory, after a
        # restore; computed again when a calibration is due)
        self.blocks: list[np.ndarray] | None = None
        # the last calibration: its record (factors included), held-out force RMS and when it was made
        self.cal: dict | None = None
        self.fits = 0
        self.model = None  # the last fit's model, updated in place while the sparse set is kept

    # ------------------------------------------------------------------ state
    def state(self) -> tuple[dict, dict]:
        """What the learn checkpoint keeps: the sparse set, the QR factor (T + 1)^2 and the last
        calibration; not the design rows (module docstring: they are computed again, bit for bit,
        when a resumed run's next calibration needs them)."""
        if self.sparse is None:
            return {}, {}
        meta = {k: self.sparse[k] for k in ("n_sparse", "species", "selected_at_atoms", "selected_at_frames")}
        meta.update(n_factored=self.n_factored, fits=self.fits, calibration=self.cal)
        return meta, {"fit_sparse": self.sparse["sparse"], "fit_pair_sparse": self.sparse["pair_sparse"],
                      "fit_factor": self.factor}

    def restore(self, meta: dict, arrays: dict) -> None:
        if meta:
            self.sparse = {**{k: meta[k] for k in ("n_sparse", "species", "selected_at_atoms", "selected_at_frames")},
                           "sparse": arrays["fit_sparse"], "pair_sparse": arrays["fit_pair_sparse"]}
            self.factor = arrays["fit_factor"]
            self.n_factored, self.fits, self.cal = int(meta["n_factored"]), int(meta["fits"]), meta["calibration"]
        self.blocks, self.model = None, None  # built again when needed

    # ------------------------------------------------------------------ pieces
    def _reselect(self, frames) -> str | None:
        """Why the sparse set must be chosen again (None: keep it)."""
        sp = self.sparse
        if sp is None:
            return "first fit"
        species = sorted({int(z) for f in frames for z in f.numbers})
        if species != sp["species"]:
            return "new element"
        if any(n < int(self.opts["n_sparse"]) for n in sp["n_sparse"]):
            return "sparse set not full"
        atoms = sum(len(f) for f in frames)
        if atoms >= self.settings.reselect_growth * sp["selected_at_atoms"]:
            return f"labelled environments grew {atoms / sp['selected_at_atoms']:.2f}x"
        # the frames not checked yet: those of earlier refits passed against this same sparse set
        unchecked = frames[max(sp["selected_at_frames"], self.n_factored):]
        if unchecked:
            sim = self._similarity(unchecked)
            if sim < self.settings.novelty:
                return f"an environment {sim:.3f} similar to the sparse set"
        return None

    def _model(self):
        """The model of the kept sparse set: the last fit's, or (after a restore) one built from
        the sparse set as :func:`~ase_mlff.training.gap_train.fit_gap` builds it (SOAP tables
        computed once; the parameters are set by the next fit)."""
        import torch

        from ...models.gap import GAPModel
        from ...training.gap_train import gap_prior, model_settings

        if self.model is None:
            sp = self.sparse
            common, two_body, variance, _ = model_settings(self.opts)
            model = GAPModel(sp["species"], n_sparse=sp["n_sparse"], two_body=two_body, **variance, **common)
            model.sparse.copy_(torch.from_numpy(np.asarray(sp["sparse"])))
            model.pair_sparse.copy_(torch.from_numpy(np.asarray(sp["pair_sparse"])))
            prior_chol = gap_prior(model, self.opts["jitter"], self.opts["sigma_e0"])[0][1].T
            model.set_posterior(model.posterior_r, prior_chol)
            self.model = model
        return self.model

    def _similarity(self, frames) -> float:
        """Least, over the environments of ``frames``, of the largest kernel value with a sparse
        environment of the same element (1: every environment is a sparse point)."""
        from ...graph import FrameGraphs

        o, sp = self.opts, self.sparse
        probe = self._model()  # its SOAP is the fit's (as fit_gap builds it for the descriptors)
        Z = np.asarray(sp["sparse"])
        zs = np.repeat(np.arange(len(sp["n_sparse"])), sp["n_sparse"])
        worst = 1.0
        graphs = FrameGraphs(frames, float(o["cutoff"]))
        for k in range(len(frames)):
            s, q = probe.environments(graphs[k])  # the descriptors fit_gap chooses sparse points from
            K = np.where(s[:, None] == zs[None, :], q @ Z.T, 0.0) ** int(o["zeta"])
            worst = min(worst, float(K.max(1).min()) if K.size else 0.0)
        return worst

    def _fixed(self):
        """The given e0 of the sparse set's elements (held fixed in the fit), or None."""
        return None if self.reference is None else self.reference.for_species(self.sparse["species"])

    def _rows(self, frames) -> tuple[np.ndarray, dict]:
        """The weighted rows of ``frames`` against the kept model (those fit_gap builds, bit for bit)."""
        from ...graph import FrameGraphs
        from ...training.gap_train import frame_design, model_settings
        from ...training.sparse_gp import weighted_rows

        model = self._model()
        graphs = FrameGraphs(frames, model_settings(self.opts)[3])
        return weighted_rows(frames, lambda k: frame_design(model, graphs[k], frames[k]), model.n_parameters,
                             self.sigmas, self.config_type_sigmas, self._fixed())

    # ------------------------------------------------------------------ fits
    def fit(self, frames, previous=None):
        from ...data import Dataset
        from ...training.common import observables
        from ...training.sparse_gp import label_counts

        t0 = time.perf_counter()
        ds = Dataset(frames)
        if len(frames) < self.n_factored:
            raise InputError(f"the learn data shrank from {self.n_factored} to {len(frames)} frames")
        why = self._reselect(frames)
        if why is None:
            model, how, cal = self._update(frames)
        else:
            model, how, cal = self._full_fit(ds, frames, why)
        self.fits += 1
        if cal is not None:  # a new calibration (None: the last one's factors were used)
            f_rec = cal.get("forces")
            self.cal = {"record": cal, "at_atoms": sum(len(f) for f in frames), "at_frames": len(frames),
                        "at_fit": self.fits, "loo": float(f_rec["rms_error"]) if isinstance(f_rec, dict) else None}
        c = self.cal
        note = f"calibrated on {c['at_frames']} frames at fit {c['at_fit']}"
        how += "; calibrated now" if cal is not None else f"; calibration reused ({note})"
        record = {"recipe": "ase_mlff.workflows.learn (gap, incremental sparse GP)",
                  "data_sha256": ds.sha256(), "options": jsonable(self.opts), "how": how,
                  "calibration": jsonable({**c["record"], "calibrated": note}),
                  "trained_on": observables(label_counts(frames)), "n_frames": len(frames),
                  "fit_s": time.perf_counter() - t0}
        return model, record, c["loo"], how

    def _full_fit(self, ds, frames, why: str):
        """A fit from scratch (:func:`~ase_mlff.training.gap_train.fit_gap`) with a new sparse set."""
        from ...training.gap_train import fit_gap

        keep = {}
        model, info = fit_gap(ds, np.arange(len(ds)), self.opts, log=lambda msg: None, quiet=True,
                              reference=self.reference, keep=keep)
        self.sparse = {"n_sparse": [int(n) for n in model.n_sparse], "species": [int(z) for z in model.species],
                       "selected_at_atoms": int(sum(len(f) for f in frames)), "selected_at_frames": len(frames),
                       "sparse": model.sparse.numpy().copy(), "pair_sparse": model.pair_sparse.numpy().copy()}
        self.factor, self.blocks, self.n_factored = keep["factor"], [keep["rows"]], len(frames)
        self.model = model
        return model, f"sparse set chosen ({why})", info["calibration"]

    def _update(self, frames):
        """The refit with the kept sparse set: the new frames' rows into the factor (exact, to
        rounding), the kept model's parameters and posterior set in place; the leave-one-frame-out
        calibration when the labelled environments have grown by ``recalibrate_growth`` since
        the last one, else the last one's factors."""
        from ...models.gap import draw_posterior_samples
        from ...training.gap_train import calibration_factors
        from ...training.sparse_gp import factor_solution, leave_one_frame_out, update_factor

        model = self._model()
        new = frames[self.n_factored:]
        rows = self._rows(new)[0] if new else None
        factor = self.factor if rows is None else update_factor(self.factor, rows)
        x, R, fitted = factor_solution(factor, self._fixed())  # (a rank-deficient update changes nothing)
        self.factor, self.n_factored = factor, len(frames)
        if self.blocks is not None and rows is not None:
            self.blocks.append(rows)
        model.set_parameters(x)
        R = R.numpy()
        model.set_posterior(R, model.prior_chol, draw_posterior_samples(R, model.variance_samples, self.opts["seed"]))
        record = None
        if sum(len(f) for f in frames) >= self.settings.recalibrate_growth * self.cal["at_atoms"]:
            if self.blocks is None:  # after a restore: every frame's rows again (each depends on its frame only)
                self.blocks = [self._rows(frames)[0]]
            A = np.concatenate(self.blocks) if len(self.blocks) > 1 else self.blocks[0]
            self.blocks = [A]
            cv = leave_one_frame_out(frames, A, fitted["R"], fitted["x"], self.sigmas, self.config_type_sigmas)
            record = calibration_factors(cv)[1]
        model.set_calibration((record or self.cal["record"])["factors"])
        return model, f"sparse set kept, rows of {len(new)} new frame(s) added to the QR factor", record


class CommitteeFitter:
    """A committee: trained from scratch on the data so far at the first fit, then (for families
    whose recipe has a warm start: the networks) fine-tuned from the current committee.

    Fine-tuning (``train_committee(start_from=...)``): member k trains from member k's current
    weights, the served mean from the current mean, for ``finetune_epochs`` epochs (an entry of
    the learn options; default a quarter of ``epochs``, or 25 when ``epochs`` is the recipe's
    default of 100). Every frame keeps the role it got when it arrived, so the calibration
    frames are never frames a member trained on at some earlier fit: the fresh fit's held-out
    frames stay held out and its members keep their frames; a frame labelled later is held out
    with the probability ``n_held / n_frames`` of that fit, and otherwise joins the pool and each
    member's frames independently with probability ``n_member / n_pool`` (each member stays a
    random subsample of the pool, as in a fresh fit). The draws come from the named stream
    ``"learn-committee-frames"`` of the loop's seed, whose state is part of the checkpoint, as
    are the roles and the current committee itself (so that a resumed run fine-tunes from the
    same weights even if the model file of its last fit was lost).

    A fresh fit is made instead, and logged with the reason, when the labelled frames have grown
    by ``fresh_fit_growth`` (a learn option, default 1.5) since the last fresh fit, when there is
    no committee to start from, when the warm start is refused (e.g. a new element for a BPNN),
    or when the learn options say ``finetune=False`` (every refit from scratch, as for the other
    families). The periodic fresh fit matters: a fine-tuned model keeps what its fresh ancestor
    chose from the data of its day, e.g. a BPNN's symmetry-function scaling, and the frames an
    active-learning loop selects are the ones that leave that range (fresh fits are at ~1.5^n
    times the first data, so they stay a small share of the refits)."""

    #: the stream of the member draws of new frames
    STREAM = "learn-committee-frames"

    def __init__(self, options: dict, settings: LearnSettings, log):
        from ...training.committee import hook

        self.options = dict(options)
        self.settings = settings
        self.log = log
        found = hook(settings.family)
        self.warm = bool(found is not None and found.warm_start)
        self.finetune = self.options.pop("finetune", True)
        if not isinstance(self.finetune, bool):
            raise InputError(f"finetune must be True or False, got {self.finetune!r}")
        ft = self.options.pop("finetune_epochs", None)
        if ft is not None and (isinstance(ft, bool) or not isinstance(ft, (int, np.integer)) or ft < 1):
            raise InputError(f"finetune_epochs must be a positive integer (epochs of a fine-tuning refit), got {ft!r}")
        if ft is not None and not self.warm:
            raise InputError(f"finetune_epochs: {settings.family} committees are refitted from scratch (their "
                             "recipe has no warm start); leave it out")
        self.finetune_epochs = int(ft) if ft is not None else max(1, int(self.options.get("epochs", 100)) // 4)
        growth = self.options.pop("fresh_fit_growth", 1.5)
        if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not growth > 1.0:
            raise InputError(f"fresh_fit_growth must be a number > 1 (growth of the labelled frames since the last "
                             f"fresh fit that makes the next one fresh), got {growth!r}")
        self.fresh_fit_growth = float(growth)
        self.fits = 0  # fits made by this fitter (the loop's fit count)
        self.roles: dict | None = None  # held-out frames, pool, member frames, draw probabilities, stream
        self.parent: bytes | None = None  # the current committee as a model file (for the checkpoint)

    # ------------------------------------------------------------------ checkpoint
    def state(self):
        if not self.warm:
            return {}, {}
        meta = {"fits": self.fits, "roles": self.roles}
        arrays = {} if self.parent is None else {"fit_committee": np.frombuffer(self.parent, dtype=np.uint8)}
        return meta, arrays

    def restore(self, meta, arrays):
        if not self.warm or not meta:
            return
        self.fits = int(meta.get("fits", 0))
        self.roles = meta.get("roles")
        self.parent = arrays["fit_committee"].tobytes() if "fit_committee" in arrays else None

    # ------------------------------------------------------------------ fitting
    def fit(self, frames, previous=None):
        from ...data import Dataset
        from ...training.common import SplitError

        s = self.settings
        if s.family == "sgdml" and len({tuple(f.numbers) for f in frames}) > 1:
            raise InputError("sgdml learns one molecule: every start structure must have the same atoms in the "
                             "same order")
        if len(frames) < 3:
            raise InputError(f"a {s.family} committee needs at least 3 labelled frames to train and calibrate on "
                             f"(have {len(frames)}): give more start structures")
        ds = Dataset(frames)
        why = self._why_fresh(previous, len(frames))
        start = None if why is not None else (previous if previous is not None else self._stored())
        if start is not None:
            try:
                model, report, how = self._finetune(frames, start)
            except (InputError, SplitError) as exc:  # raised before anything trains (train_committee's checks)
                why = f"fresh fit (warm start refused: {exc})"
        if why is not None:
            model, report, how = self._fresh(ds, why)
        self.fits += 1
        if self.warm:
            self.parent = _model_bytes(model)
        cal = report.get("calibration") or {}
        f_rec = cal.get("forces")
        rms = float(f_rec["rms_error"]) if isinstance(f_rec, dict) else None
        record = {"recipe": f"ase_mlff.workflows.learn ({s.family} committee of {s.committee}, {how})",
                  "how": how, "data_sha256": ds.sha256(), "options": jsonable(self.options),
                  "calibration": jsonable(cal), "trained_on": report.get("trained_on"), "n_frames": len(frames)}
        if self.warm:
            record["finetune"] = {"on": self.finetune, "epochs": self.finetune_epochs,
                                  "fresh_fit_growth": self.fresh_fit_growth}
        if self.roles is not None:
            record["frames"] = {"held_out": list(self.roles["held"]), "members": [list(m) for m in
                                                                                 self.roles["members"]]}
        return model, record, rms, how

    def _why_fresh(self, previous, n_frames: int) -> str | None:
        """Why this fit starts from scratch (None: it fine-tunes)."""
        if not self.warm:
            return f"refitted from scratch ({self.settings.family} committees have no warm start)"
        if self.fits == 0 or self.roles is None:
            return "fresh fit (first fit)"
        if not self.finetune:
            return "fresh fit (finetune=False)"
        grown = n_frames / self.roles["fresh_frames"]
        if grown >= self.fresh_fit_growth:
            return f"fresh fit (the frames grew {grown:.2f}x since the last fresh fit)"
        if previous is None and self.parent is None:
            return "fresh fit (no current committee to start from)"
        return None

    def _stored(self):
        """The committee of the last fit, from the checkpoint (the model file did not survive)."""
        import os
        import tempfile

        from ...io import load_model

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "committee.mlff")
            with open(path, "wb") as fh:
                fh.write(self.parent)
            return load_model(path)

    def _fresh(self, ds, why: str):
        from ...training.committee import train_committee

        s = self.settings
        options = dict(self.options)
        # the calibration frames: a quarter of the data so far (the recipes' defaults are for a data
        # set, not for the first few labels of a loop), and members of half the rest
        held_key = {"mff": "n_test", "sgdml": "n_valid"}.get(s.family)
        if held_key is not None and held_key not in options:
            options[held_key] = max(1, len(ds) // 4)
        if held_key is not None and "n_member" not in options:
            options["n_member"] = max(1, (len(ds) - int(options[held_key])) // 2)
        if self.warm and "n_member" not in options:  # half the pool, but at least 2 frames (few labels early on)
            pool = len(ds) - int(options.get("n_test") or 0)
            options["n_member"] = min(pool, max(2, (pool + 1) // 2))
        model, report = train_committee(s.family, ds, int(s.committee), seed=s.seed, **options)
        if self.warm:  # every frame's role from here on (class docstring)
            held = sorted(int(i) for i in report.get("held_out_indices") or [])
            pool = sorted(set(range(len(ds))) - set(held))
            rng = self.roles["rng"] if self.roles is not None else None
            if rng is None:
                from ...rng import random_stream

                rng = random_stream(s.seed, self.STREAM).bit_generator.state
            self.roles = {"held": held, "pool": pool,
                          "members": [sorted(int(i) for i in r["frames"]) for r in report["members"]],
                          "p_held": len(held) / len(ds), "p_member": int(report["n_member"]) / len(pool),
                          "n_seen": len(ds), "rng": rng, "fresh_fit": self.fits + 1, "fresh_frames": len(ds)}
        return model, report, why

    def _finetune(self, frames, start):
        """Fine-tune ``start`` on the frames so far: the new frames get their roles, then
        :func:`~ase_mlff.training.committee.train_committee` with ``start_from``."""
        from ...data import Dataset
        from ...training.committee import train_committee

        s = self.settings
        roles = {**self.roles, "held": list(self.roles["held"]), "pool": list(self.roles["pool"]),
                 "members": [list(m) for m in self.roles["members"]]}
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = roles["rng"]
        for i in range(roles["n_seen"], len(frames)):  # K + 1 draws per new frame, used or not
            u = rng.random(1 + len(roles["members"]))
            if u[0] < roles["p_held"]:
                roles["held"].append(i)
                continue
            roles["pool"].append(i)
            for k, m in enumerate(roles["members"]):
                if u[1 + k] < roles["p_member"]:
                    m.append(i)
        roles["n_seen"] = len(frames)
        roles["rng"] = rng.bit_generator.state
        pool = roles["pool"]
        at = {i: p for p, i in enumerate(pool)}
        options = {k: v for k, v in self.options.items() if k not in ("n_member", "n_train", "n_test")}
        options.update(n_test=0, epochs=self.finetune_epochs)
        held = [frames[i] for i in roles["held"]]
        model, report = train_committee(
            s.family, Dataset([frames[i] for i in pool]), int(s.committee), seed=s.seed, start_from=start,
            member_frames=[[at[i] for i in m] for m in roles["members"]],
            calibration=Dataset(held) if held else None, **options)
        self.roles = roles  # only once the fit succeeded: a refused warm start leaves them as they were
        parent = self.fits  # the fit whose committee this one starts from
        return model, report, f"fine-tuned from fit {parent} for {self.finetune_epochs} epochs"


def _model_bytes(model) -> bytes:
    """``model`` as the bytes of its model file (what the checkpoint keeps of the current committee)."""
    import os
    import tempfile

    from ...io import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "committee.mlff")
        save_model(model, path)
        with open(path, "rb") as fh:
            return fh.read()
