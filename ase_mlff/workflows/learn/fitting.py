"""Refits of the learning loop: GAP with a fixed sparse set between re-selections (design rows
reused), committees refitted from scratch (module docstring of :mod:`ase_mlff.workflows.learn`)."""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from .settings import LearnSettings
from .store import jsonable


# ----------------------------------------------------------------------------- fitting
class GapFitter:
    """GAP refits with a fixed sparse set between re-selections (module docstring)."""

    def __init__(self, options: dict, settings: LearnSettings, log):
        from ...training.gap_train import OPTIONS
        from ...training.common import UsageError, parse_reference_energies, resolve_options

        bad = sorted(set(options) & {"test", "n_test", "checkpoint", "checkpoint_interval", "resume", "no_variance"})
        if bad:
            raise InputError(f"training option(s) {', '.join(bad)} do not apply to learn (the loop holds out no "
                             "test frames, writes its own checkpoints and needs the variance)")
        try:
            self.opts = resolve_options([o for o in OPTIONS if o.library], given=dict(options))
        except TypeError as exc:
            raise InputError(str(exc)) from None
        try:
            self.reference = parse_reference_energies(self.opts["reference_energies"], self.opts["energy_unit"])
        except UsageError as exc:
            raise InputError(str(exc)) from None
        self.settings = settings
        self.log = log
        # the sparse set of the last selection and the design rows of the frames fitted since
        self.sparse: dict | None = None
        self.rows: np.ndarray | None = None
        self.rows_frames = 0
        self._probe = None

    def state(self) -> tuple[dict, dict]:
        if self.sparse is None:
            return {}, {}
        meta = {k: self.sparse[k] for k in ("n_sparse", "species", "selected_at_atoms", "selected_at_frames")}
        return meta, {"fit_sparse": self.sparse["sparse"], "fit_pair_sparse": self.sparse["pair_sparse"]}

    def restore(self, meta: dict, arrays: dict) -> None:
        if meta:
            self.sparse = {**meta, "sparse": arrays["fit_sparse"], "pair_sparse": arrays["fit_pair_sparse"]}
        self.rows, self.rows_frames = None, 0  # recomputed on the next fit: each frame's rows are its own

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
        if len(frames) > sp["selected_at_frames"]:
            sim = self._similarity(frames[sp["selected_at_frames"]:])
            if sim < self.settings.novelty:
                return f"an environment {sim:.3f} similar to the sparse set"
        return None

    def _similarity(self, frames) -> float:
        """Least, over the environments of ``frames``, of the largest kernel value with a sparse
        environment of the same element (1: every environment is a sparse point)."""
        from ...graph import FrameGraphs
        from ...models.gap import GAPModel

        o, sp = self.opts, self.sparse
        if self._probe is None:  # the SOAP of the fit's settings (as fit_gap builds it for the descriptors)
            self._probe = GAPModel(sp["species"], n_sparse=[0] * len(sp["species"]), two_body=None, variance=False,
                                   soap={k: o[k] for k in ("cutoff", "n_max", "l_max", "atom_sigma", "cutoff_width",
                                                           "central_weight")}, zeta=o["zeta"], delta=o["delta"])
        probe = self._probe
        Z = sp["sparse"]
        zs = np.repeat(np.arange(len(sp["n_sparse"])), sp["n_sparse"])
        worst = 1.0
        graphs = FrameGraphs(frames, float(o["cutoff"]))
        for k in range(len(frames)):
            g = graphs[k]
            s, first, nbr, centre = probe._soap_inputs(g)  # the descriptor's inputs, as fit_gap builds them
            p = probe.soap.raw(g.n_atoms, first, nbr, centre, g.edge_vectors().numpy())[0]
            q = p / np.linalg.norm(p, axis=1, keepdims=True)
            K = np.where(s.numpy()[:, None] == zs[None, :], q @ Z.T, 0.0) ** int(o["zeta"])
            worst = min(worst, float(K.max(1).min()) if K.size else 0.0)
        return worst

    def fit(self, frames, previous=None):
        from ...data import Dataset
        from ...training.gap_train import fit_gap

        ds = Dataset(frames)
        why = self._reselect(frames)
        capture = RowCapture()
        if why is None:
            sp = self.sparse
            state = {"stage": "design", "n_sparse": sp["n_sparse"], "n_environments": int(sum(len(f) for f in frames)),
                     "design_frames": self.rows_frames}
            saved = {"sparse": sp["sparse"], "pair_sparse": sp["pair_sparse"]}
            if self.rows_frames:
                saved["design_rows"] = self.rows
            resume = (state, saved)
            how = f"sparse set kept, design rows of {len(frames) - self.rows_frames} new frame(s)"
        else:
            resume = None
            how = f"sparse set chosen ({why})"
        model, info = fit_gap(ds, np.arange(len(ds)), self.opts, log=lambda msg: None, quiet=True, ckpt=capture,
                              resume=resume, reference=self.reference)
        rows = capture.rows()
        if rows is not None:
            self.rows, self.rows_frames = rows, len(frames)
        elif why is not None:  # no frame gave rows (cannot happen with labelled frames)
            self.rows, self.rows_frames = None, 0
        if why is not None:
            self._probe = None
            self.sparse = {"n_sparse": [int(n) for n in model.n_sparse],
                           "species": [int(z) for z in model.species],
                           "selected_at_atoms": int(sum(len(f) for f in frames)), "selected_at_frames": len(frames),
                           "sparse": model.sparse.numpy().copy(), "pair_sparse": model.pair_sparse.numpy().copy()}
        cal = info.get("calibration") or {}
        f_rec = cal.get("forces")
        loo = float(f_rec["rms_error"]) if isinstance(f_rec, dict) else None
        record = {"recipe": "ase_mlff.workflows.learn (gap, incremental sparse GP)",
                  "data_sha256": ds.sha256(), "options": jsonable(self.opts), "how": how,
                  "calibration": jsonable(cal), "trained_on": info.get("trained_on"),
                  "n_frames": len(frames), "fit_s": info.get("fit_s")}
        return model, record, loo, how


class RowCapture:
    """A stand-in for fit_gap's checkpointer: keeps the last snapshot that holds design rows
    (the weighted rows of every frame so far), so that the next fit continues from them."""

    def __init__(self):
        self._last = None

    def safe_point(self, snapshot, force: bool = False) -> None:
        if not force:  # the per-frame safe points of the design loop (the others are forced)
            self._last = snapshot

    def rows(self) -> np.ndarray | None:
        if self._last is None:
            return None
        state, arrays = self._last()
        return np.array(arrays["design_rows"]) if "design_rows" in arrays else None


class CommitteeFitter:
    """A committee refitted from scratch on the data so far."""

    def __init__(self, options: dict, settings: LearnSettings, log):
        self.options = dict(options)
        self.settings = settings
        self.log = log

    def state(self):
        return {}, {}

    def restore(self, meta, arrays):
        pass

    def fit(self, frames, previous=None):
        from ...data import Dataset
        from ...training.committee import train_committee

        s = self.settings
        if s.family == "sgdml" and len({tuple(f.numbers) for f in frames}) > 1:
            raise InputError("sgdml learns one molecule: every start structure must have the same atoms in the "
                             "same order")
        ds = Dataset(frames)
        options = dict(self.options)
        # the calibration frames: a quarter of the data so far (the recipes' defaults are for a data
        # set, not for the first few labels of a loop), and members of half the rest
        held_key = {"mff": "n_test", "sgdml": "n_valid"}.get(s.family)
        if held_key is not None and held_key not in options:
            options[held_key] = max(1, len(frames) // 4)
        if held_key is not None and "n_member" not in options:
            options["n_member"] = max(1, (len(frames) - int(options[held_key])) // 2)
        if len(frames) < 3:
            raise InputError(f"a {s.family} committee needs at least 3 labelled frames to train and calibrate on "
                             f"(have {len(frames)}): give more start structures")
        model, report = train_committee(s.family, ds, int(s.committee), seed=s.seed, **options)
        cal = report.get("calibration") or {}
        f_rec = cal.get("forces")
        rms = float(f_rec["rms_error"]) if isinstance(f_rec, dict) else None
        record = {"recipe": f"ase_mlff.workflows.learn ({s.family} committee of {s.committee}, refitted from "
                            "scratch)", "data_sha256": ds.sha256(), "options": jsonable(self.options),
                  "calibration": jsonable(cal), "trained_on": report.get("trained_on"), "n_frames": len(frames)}
        return model, record, rms, "committee refitted from scratch"
