"""Test a model on a labelled dataset: energy, force and stress errors, broken down by element
and by groups of frames, per-frame errors and a parity plot.

Errors are prediction minus reference. Units in the report: energy meV (total) and meV/atom,
forces meV/Å (over Cartesian components), stress meV/Å³ (over the six Voigt components; GPa
alongside). Frames are evaluated in batches (:meth:`MLFFCalculator.evaluate_batch`) for local
models and one by one for global ones.

Breakdowns (:meth:`EvalResult.metrics`, printed by :meth:`EvalResult.summary`):

* per element: force errors over the components of the atoms of that element; energy errors
  (per atom) over the frames that *contain* the element. An energy belongs to a whole frame,
  so a frame with Ni and O counts in both rows, and the energy rows do not add up to the total.
* per group: frames grouped by the value of an ``info`` key (default ``config_type``, when
  any frame has one; frames without the key form the group ``(missing)``). Each group gets
  the same table as the whole set, so the overall MAE is the average of the group MAEs
  weighted by their number of energies (force components, stresses).
* per frame (:meth:`EvalResult.frame_errors`, :meth:`EvalResult.write_csv`): signed energy
  error per atom, force MAE/RMSE and the largest force-vector error, stress MAE/RMSE.
"""

from __future__ import annotations

import csv as _csv
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
from ase import units
from ase.data import chemical_symbols

from ..errors import InputError
from ..console import ProgressBar
from ..metrics import mae_rmse, metrics_of_errors
from ._common import refuse_existing

#: default file names in ``outdir``
METRICS_FILE, PLOT_FILE, CSV_FILE = "eval_metrics.json", "parity.png", "eval_frames.csv"
#: the group of frames that lack the info key
MISSING = "(missing)"
#: columns of the per-frame CSV after index, n_atoms, formula and the group keys
CSV_COLUMNS = ("energy_error_meV_per_atom", "forces_mae_meV_per_A", "forces_rmse_meV_per_A",
               "forces_max_error_meV_per_A", "stress_mae_GPa", "stress_rmse_GPa")


def _group_label(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value.item() if isinstance(value, np.generic) else value)


@dataclass
class EvalResult:
    n_frames: int
    n_atoms: int
    energy_ref: np.ndarray
    energy_pred: np.ndarray
    natoms: np.ndarray
    forces_ref: np.ndarray
    forces_pred: np.ndarray
    force_numbers: np.ndarray
    stress_ref: np.ndarray
    stress_pred: np.ndarray
    wall_time: float
    files: list = field(default_factory=list)
    # Per-frame bookkeeping, filled by evaluate(); None on a result built from the arrays alone
    # (then metrics() has the overall table and forces_per_element only).
    frame_natoms: np.ndarray | None = None  # (n_frames,) atoms of each frame
    frame_numbers: list | None = None  # atomic numbers of each frame
    energy_frame: np.ndarray | None = None  # frame of each entry of energy_ref
    forces_frame: np.ndarray | None = None  # frame of each row of forces_ref
    stress_frame: np.ndarray | None = None  # frame of each row of stress_ref
    frame_index: np.ndarray | None = None  # index of each frame in the data file (CSV 'index')
    groups: dict = field(default_factory=dict)  # info key -> per-frame labels (None: missing)

    # ------------------------------------------------------------------ tables
    def _table(self, fm=None) -> dict:
        """Overall metrics of the frames selected by boolean mask ``fm`` (all when None)."""
        if fm is None:
            e = slice(None), slice(None), slice(None)
            m: dict = {"n_frames": self.n_frames, "n_atoms": self.n_atoms}
        else:
            e = fm[self.energy_frame], fm[self.forces_frame], fm[self.stress_frame]
            m = {"n_frames": int(fm.sum()), "n_atoms": int(self.frame_natoms[fm].sum())}
        se, sf, ss = e
        m.update(metrics_of_errors(self.energy_pred[se] - self.energy_ref[se], self.natoms[se],
                                   self.forces_pred[sf] - self.forces_ref[sf], self.force_numbers[sf][:, 0],
                                   self.stress_pred[ss] - self.stress_ref[ss]))
        return m

    @property
    def _has_frames(self) -> bool:
        return self.frame_natoms is not None

    def element_metrics(self) -> dict:
        """Per element (by atomic number): ``n_atoms`` (in the evaluated frames), ``n_frames``
        (frames containing it); force MAE/RMSE (meV/Å) over the components of its atoms
        (``n_forces`` atoms); energy-per-atom MAE/RMSE (meV/atom) over the frames containing it
        that have an energy label (``n_energy``)."""
        if not self._has_frames:
            return {}
        zs = sorted(set(np.concatenate(self.frame_numbers).tolist())) if self.frame_numbers else []
        df = self.forces_pred - self.forces_ref
        out = {}
        for z in zs:
            contains = np.array([np.any(n == z) for n in self.frame_numbers])
            row = {"n_atoms": int(sum((n == z).sum() for n in self.frame_numbers)), "n_frames": int(contains.sum())}
            rows = self.force_numbers[:, 0] == z
            if rows.any():
                row["forces_mae_meV_per_A"], row["forces_rmse_meV_per_A"] = (1e3 * x for x in mae_rmse(df[rows]))
                row["n_forces"] = int(rows.sum())
            sel = contains[self.energy_frame]
            if sel.any():
                de = (self.energy_pred[sel] - self.energy_ref[sel]) / self.natoms[sel]
                row["energy_per_atom_mae_meV"], row["energy_per_atom_rmse_meV"] = (1e3 * x for x in mae_rmse(de))
                row["n_energy"] = int(sel.sum())
            out[chemical_symbols[z]] = row
        return out

    def group_metrics(self, key: str) -> dict:
        """``{value: table}`` for the frames of each value of info ``key`` (the table of
        :meth:`metrics` without the breakdowns); frames without the key under ``'(missing)'``."""
        labels = self.groups.get(key)
        if labels is None:
            raise KeyError(f"no grouping by {key!r} in this result (have {sorted(self.groups)})")
        labels = np.array([MISSING if v is None else v for v in labels], dtype=object)
        values = sorted(set(labels.tolist()) - {MISSING}) + ([MISSING] if MISSING in labels else [])
        return {v: self._table(labels == v) for v in values}

    @staticmethod
    def group_json_key(key: str) -> str:
        """Name of the per-group table in :meth:`metrics`: ``per_<key>`` (``per_config_type``,
        as in the training records); ``per_info_element`` for a key named ``element``."""
        return "per_info_element" if key == "element" else f"per_{key}"

    def metrics(self) -> dict:
        """MAE and RMSE: energy meV and meV/atom, forces meV/Å (and per element), stress meV/Å³
        and GPa. With the per-frame bookkeeping of :func:`evaluate` also ``per_element``
        (:meth:`element_metrics`) and ``per_<key>`` for each grouping (:meth:`group_metrics`)."""
        m = self._table()
        if self._has_frames:
            m["per_element"] = self.element_metrics()
            for key in self.groups:
                m[self.group_json_key(key)] = self.group_metrics(key)
        return m

    # ------------------------------------------------------------------ per frame
    def frame_errors(self) -> list[dict]:
        """One dict per frame: ``index`` (in the data file), ``n_atoms``, ``formula``, the group
        labels, and the :data:`CSV_COLUMNS` (None where the frame has no such label):
        energy error (prediction - reference) per atom in meV/atom, force MAE/RMSE over the
        frame's components and the largest norm of an atom's force error in meV/Å, stress
        MAE/RMSE over the six components in GPa."""
        if not self._has_frames:
            raise ValueError("per-frame errors need a result of evaluate()")
        from ase.formula import Formula

        n = self.n_frames
        rows = []
        for k in range(n):
            row = {"index": int(self.frame_index[k]) if self.frame_index is not None else k,
                   "n_atoms": int(self.frame_natoms[k]),
                   "formula": Formula.from_list([chemical_symbols[z] for z in self.frame_numbers[k]]).format("hill")}
            for key, labels in self.groups.items():
                row[key] = labels[k]
            row.update(dict.fromkeys(CSV_COLUMNS))
            rows.append(row)
        for j, k in enumerate(self.energy_frame):
            de = float(self.energy_pred[j] - self.energy_ref[j])
            rows[k]["energy_error_meV_per_atom"] = 1e3 * de / self.natoms[j]
        if len(self.forces_ref):
            df = self.forces_pred - self.forces_ref
            count = 3 * np.bincount(self.forces_frame, minlength=n)
            abs_sum = np.bincount(self.forces_frame, weights=np.abs(df).sum(axis=1), minlength=n)
            sq_sum = np.bincount(self.forces_frame, weights=(df ** 2).sum(axis=1), minlength=n)
            worst = np.zeros(n)
            np.maximum.at(worst, self.forces_frame, np.linalg.norm(df, axis=1))
            for k in np.flatnonzero(count):
                rows[k]["forces_mae_meV_per_A"] = 1e3 * abs_sum[k] / count[k]
                rows[k]["forces_rmse_meV_per_A"] = 1e3 * np.sqrt(sq_sum[k] / count[k])
                rows[k]["forces_max_error_meV_per_A"] = 1e3 * worst[k]
        for j, k in enumerate(self.stress_frame):
            mae, rmse = mae_rmse(self.stress_pred[j] - self.stress_ref[j])
            rows[k]["stress_mae_GPa"], rows[k]["stress_rmse_GPa"] = mae / units.GPa, rmse / units.GPa
        return rows

    def write_csv(self, path) -> str:
        """:meth:`frame_errors` as CSV, one row per frame; empty cells where a label is missing."""
        rows = self.frame_errors()
        header = ["index", "n_atoms", "formula", *self.groups, *CSV_COLUMNS]
        path = os.fspath(path)
        with open(path, "w", newline="") as fh:
            w = _csv.writer(fh)
            w.writerow(header)
            for row in rows:
                w.writerow(["" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                            for c in header])
        return path

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        m = self._table()
        rate = self.n_frames / self.wall_time if self.wall_time > 0 else float("nan")
        lines = [f"eval    {self.n_frames} frames, {self.n_atoms} atoms ({self.wall_time:.1f} s, {rate:.1f} frames/s)",
                 f"{'':22s} {'MAE':>10} {'RMSE':>10}"]
        if "energy_mae_meV" in m:
            lines.append(f"{'energy [meV/atom]':22s} {m['energy_per_atom_mae_meV']:10.3f} {m['energy_per_atom_rmse_meV']:10.3f}")
            lines.append(f"{'energy [meV]':22s} {m['energy_mae_meV']:10.3f} {m['energy_rmse_meV']:10.3f}")
        if "forces_mae_meV_per_A" in m:
            lines.append(f"{'forces [meV/Å]':22s} {m['forces_mae_meV_per_A']:10.3f} {m['forces_rmse_meV_per_A']:10.3f}")
            if not self._has_frames:  # otherwise in the per-element table
                for el, v in m["forces_per_element"].items():
                    lines.append(f"{'  ' + el + ' (' + str(v['n_atoms']) + ' atoms)':22s} "
                                 f"{v['mae_meV_per_A']:10.3f} {v['rmse_meV_per_A']:10.3f}")
        if "stress_mae_meV_per_A3" in m:
            lines.append(f"{'stress [meV/Å^3]':22s} {m['stress_mae_meV_per_A3']:10.4f} {m['stress_rmse_meV_per_A3']:10.4f}")
            lines.append(f"{'stress [GPa]':22s} {m['stress_mae_GPa']:10.4f} {m['stress_rmse_GPa']:10.4f}")
        if self._has_frames:
            lines += ["", *self._element_lines(m)]
            for key in self.groups:
                lines += ["", *self._group_lines(key, m)]
        if self.files:
            lines.append("")
        for name in self.files:
            lines.append(f"written {name}")
        return "\n".join(lines)

    def _quantity_columns(self, m):
        """(name, unit, key, digits) of the error columns present in the overall table ``m``."""
        cols = []
        if "energy_mae_meV" in m:
            cols += [("E MAE", "meV/atom", "energy_per_atom_mae_meV", 3),
                     ("E RMSE", "meV/atom", "energy_per_atom_rmse_meV", 3)]
        if "forces_mae_meV_per_A" in m:
            cols += [("F MAE", "meV/Å", "forces_mae_meV_per_A", 3), ("F RMSE", "meV/Å", "forces_rmse_meV_per_A", 3)]
        if "stress_mae_GPa" in m:
            cols += [("S MAE", "GPa", "stress_mae_GPa", 4), ("S RMSE", "GPa", "stress_rmse_GPa", 4)]
        return cols

    def _element_lines(self, m):
        cols = [c for c in self._quantity_columns(m) if c[0][0] in "FE"]
        cols = [c for c in cols if c[0][0] == "F"] + [c for c in cols if c[0][0] == "E"]  # forces first
        head = [("element", ""), ("atoms", ""), ("frames", ""), *((c[0], c[1]) for c in cols)]
        body = [[el, str(r["n_atoms"]), str(r["n_frames"]),
                 *(f"{r[c[2]]:.{c[3]}f}" if c[2] in r else "-" for c in cols)]
                for el, r in self.element_metrics().items()]
        lines = _aligned(head, body)
        if any(c[0][0] == "E" for c in cols):
            lines.append("(E: energy error per atom over the frames containing the element)")
        return lines

    def _group_lines(self, key, m):
        cols = self._quantity_columns(m)
        head = [(key, ""), ("frames", ""), ("atoms", ""), *((c[0], c[1]) for c in cols)]
        body = [[value, str(r["n_frames"]), str(r["n_atoms"]),
                 *(f"{r[c[2]]:.{c[3]}f}" if c[2] in r else "-" for c in cols)]
                for value, r in self.group_metrics(key).items()]
        return _aligned(head, body)


def _aligned(head, body) -> list[str]:
    """Text table: ``head`` (name, unit) per column, first column left-aligned."""
    widths = [max(len(h[0]), len(h[1]) + 2 * bool(h[1]), *(len(r[i]) for r in body)) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line([h[0] for h in head])]
    if any(h[1] for h in head):
        out.append(line([h[1] and f"[{h[1]}]" for h in head]))
    return out + [line(r) for r in body]


# ------------------------------------------------------------------------------ evaluate
def evaluate(calc, dataset, *, batch_size: int = 16, stress: bool | None = None, progress: bool = False,
             outdir=None, plot: bool = True, overwrite: bool = False, summary_stream=None,
             group_by=None, group_values: dict | None = None, frame_index=None, csv=None) -> EvalResult:
    """Evaluate ``calc`` on ``dataset`` (a :class:`~ase_mlff.data.Dataset`, a list of Frames or
    of ase Atoms with reference results). ``stress``: compare stresses (default: where the
    model gives them and the frame has a stress label and a periodic cell).

    ``group_by``: info key or keys to break the errors down by (default ``config_type`` when
    any frame has it); ``group_values``: ``{key: per-frame values}`` given by the caller, for
    keys the frames do not carry. ``frame_index``: index of each frame in its file (the CSV's
    ``index``; default 0, 1, ...).

    ``outdir``: ``eval_metrics.json``, ``parity.png`` (unless ``plot=False``) and the per-frame
    ``eval_frames.csv``; ``csv``: another path for the CSV, or False for none (default: in
    ``outdir``, none without one). Existing files are only replaced with ``overwrite=True``.
    Data without any label to compare with is an :class:`~ase_mlff.errors.InputError`."""
    frames = list(dataset)
    src = repr(dataset.source) if getattr(dataset, "source", None) else "the data"
    if not frames:
        raise InputError(f"{src} is empty: no frames to evaluate")
    from ..data import Frame

    raw_info = None
    if not isinstance(frames[0], Frame):
        from ..data import Dataset

        raw_info = [dict(a.info) for a in frames]  # Dataset keeps only some info keys
        frames = list(Dataset.from_atoms(frames))

    # labels: refuse data with nothing to compare before anything is written
    model_stress = "stress" in calc.implemented_properties
    if stress and not model_stress:
        raise InputError(f"{calc.model.family} models do not give stress")
    use_stress = model_stress if stress is None else bool(stress)
    want_stress = [use_stress and f.stress is not None and bool(all(f.pbc)) and f.volume > 1e-10 for f in frames]
    if not any(f.energy is not None or f.forces is not None for f in frames) and not any(want_stress):
        why = ""
        if any(f.stress is not None for f in frames):
            why = (" (only stress labels, and " + ("stress comparison is off" if stress is False else
                   f"{calc.model.family} models do not give stress" if not model_stress else
                   "no frame with one is periodic with a cell") + ")")
        raise InputError(f"{src} has no energy, forces or stress labels to compare the model with{why}")

    # groups
    keys = [group_by] if isinstance(group_by, str) else list(group_by or [])
    group_values = dict(group_values or {})
    infos = raw_info if raw_info is not None else [f.info or {} for f in frames]
    if group_by is None and (any("config_type" in i for i in infos) or "config_type" in group_values):
        keys = ["config_type"]
    groups = {}
    for key in keys:
        if key in group_values:
            values = list(group_values[key])
            if len(values) != len(frames):
                raise InputError(f"group_values[{key!r}] has {len(values)} values for {len(frames)} frames")
        else:
            values = [i.get(key) for i in infos]
        labels = [_group_label(v) for v in values]
        if all(v is None for v in labels):
            found = sorted({k for i in infos for k in i})
            raise InputError(f"no frame of {src} has the info key {key!r} to group by"
                             + (f" (keys found: {', '.join(found)})" if found else ""))
        groups[key] = labels
    if frame_index is None:
        frame_index = np.arange(len(frames))
    frame_index = np.asarray(frame_index, dtype=int)
    if frame_index.shape != (len(frames),):
        raise InputError(f"frame_index has {frame_index.size} entries for {len(frames)} frames")

    # outputs: refuse to replace existing files before any work
    csv_path = None
    if csv is not None and csv is not False:
        csv_path = os.fspath(csv)
    elif csv is None and outdir is not None:
        csv_path = os.path.join(os.fspath(outdir), CSV_FILE)
    if not overwrite:
        names = [METRICS_FILE] + ([PLOT_FILE] if plot else []) if outdir is not None else []
        refuse_existing([os.path.join(os.fspath(outdir), n) for n in names] + [csv_path],
                        "pass overwrite=True (ase-mlff eval: --overwrite) to replace them")

    elements = set(np.unique(np.concatenate([f.numbers for f in frames])).tolist())
    calc.model.check_numbers(np.array(sorted(elements)))

    e_ref, e_pred, nat, e_frm, f_ref, f_pred, f_num, f_frm, s_ref, s_pred, s_frm = ([] for _ in range(11))
    bar = ProgressBar(len(frames), label="eval", unit="frames", enabled=progress)
    t0 = time.perf_counter()
    bs = max(1, int(batch_size))
    for start in range(0, len(frames), bs):
        chunk = frames[start:start + bs]
        images = [f.to_atoms() for f in chunk]
        for a in images:
            a.calc = None
        want = want_stress[start:start + bs]
        results = calc.evaluate_batch(images, stress=any(want) or None)
        for k, (f, r, w) in enumerate(zip(chunk, results, want), start=start):
            if f.energy is not None:
                e_ref.append(f.energy)
                e_pred.append(r["energy"])
                nat.append(len(f))
                e_frm.append(k)
            if f.forces is not None:
                f_ref.append(f.forces)
                f_pred.append(r["forces"])
                f_num.append(f.numbers)
                f_frm.append(np.full(len(f), k))
            if w and "stress" in r:
                s_ref.append(f.stress)
                s_pred.append(r["stress"])
                s_frm.append(k)
        bar.update(min(start + bs, len(frames)))
    bar.close()
    wall = time.perf_counter() - t0
    cat = lambda xs, shape, dtype=float: np.concatenate(xs) if xs else np.zeros(shape, dtype)  # noqa: E731
    res = EvalResult(
        n_frames=len(frames), n_atoms=int(sum(len(f) for f in frames)),
        energy_ref=np.array(e_ref), energy_pred=np.array(e_pred), natoms=np.array(nat, dtype=float),
        forces_ref=cat(f_ref, (0, 3)), forces_pred=cat(f_pred, (0, 3)),
        force_numbers=np.concatenate([np.repeat(n[:, None], 3, axis=1) for n in f_num]) if f_num
        else np.zeros((0, 3), dtype=int),
        stress_ref=np.array(s_ref).reshape(-1, 6), stress_pred=np.array(s_pred).reshape(-1, 6),
        wall_time=wall,
        frame_natoms=np.array([len(f) for f in frames]), frame_numbers=[np.asarray(f.numbers) for f in frames],
        energy_frame=np.array(e_frm, dtype=int), forces_frame=cat(f_frm, (0,), int),
        stress_frame=np.array(s_frm, dtype=int), frame_index=frame_index, groups=groups,
    )
    if outdir is not None:
        outdir = os.fspath(outdir)
        os.makedirs(outdir, exist_ok=True)
        name = os.path.join(outdir, METRICS_FILE)
        with open(name, "w") as fh:
            json.dump(res.metrics(), fh, indent=1)
        res.files.append(name)
        if plot:
            from .plotting import plot_parity

            name = os.path.join(outdir, PLOT_FILE)
            plot_parity(res, name)
            res.files.append(name)
    if csv_path is not None:
        d = os.path.dirname(csv_path)
        if d:
            os.makedirs(d, exist_ok=True)
        res.files.append(res.write_csv(csv_path))
    if summary_stream is not None:
        print(res.summary(), file=summary_stream)
    return res


# ------------------------------------------------------------------------------ helpers for files
def file_indices(path, index, dataset) -> np.ndarray:
    """Index in ``path`` of each frame that ``ase_mlff.data.read(path, index=index)`` gave as
    ``dataset``: from the selection itself where it does not count from the end, otherwise
    after counting the frames of the file."""
    from ..data import apply_index, parse_index

    n = len(dataset)
    meta = getattr(dataset, "metadata", None) or {}
    if "npz_indices" in meta:
        return np.asarray(meta["npz_indices"], dtype=int)
    idx = parse_index(index)
    if isinstance(idx, int) and idx >= 0:
        sel = np.array([idx])
    elif isinstance(idx, slice) and (idx.step or 1) > 0 and (idx.start or 0) >= 0:
        sel = (idx.start or 0) + (idx.step or 1) * np.arange(n)
    else:  # counts from the end: needs the number of frames in the file
        if getattr(dataset, "format", None) == "db":
            import ase.db

            with ase.db.connect(os.fspath(path), type="db") as db:
                m = db.count()
        else:
            import ase.io

            m = len(ase.io.read(os.fspath(path), index=":"))
        sel = apply_index(m, index, path)
    return sel if len(sel) == n else np.arange(n)


def read_group_values(path, index, dataset, keys) -> dict:
    """``{key: per-frame values}`` for the info ``keys`` that the frames of ``dataset`` (read
    from ``path`` with ``index``) lack because the reader keeps only some info keys
    (``config_type``, ``description``, ``name``, ``tag`` and numbers): taken from an .npz
    file's per-frame integer arrays, or read again from the file's info (ASE formats) or key
    values and data (ASE databases). A key found nowhere is an :class:`InputError` that lists
    the keys there are."""
    out: dict = {}
    missing = []
    meta = getattr(dataset, "metadata", None) or {}
    for key in keys or ():
        if any(key in (f.info or {}) for f in dataset):
            continue
        if f"npz:{key}" in meta:
            out[key] = list(meta[f"npz:{key}"])
        else:
            missing.append(key)
    fmt = getattr(dataset, "format", None)
    if not missing:
        return out
    infos = [f.info or {} for f in dataset]
    if fmt == "npz":
        infos = [{k[4:]: None for k in meta if k.startswith("npz:")}]
    from ..data import apply_index, parse_index

    path = os.fspath(path)
    if fmt == "db":
        import ase.db

        with ase.db.connect(path, type="db") as db:
            rows = list(db.select())
        infos = [{**dict(rows[i].key_value_pairs), **dict(rows[i].data)} for i in apply_index(len(rows), index, path)]
    elif fmt != "npz":
        import ase.io

        images = ase.io.read(path, index=parse_index(index), format=None if fmt in (None, "ase") else fmt)
        infos = [a.info for a in (images if isinstance(images, list) else [images])]
    for key in missing:
        if len(infos) == len(dataset) and any(key in i for i in infos):
            out[key] = [i.get(key) for i in infos]
        else:
            found = sorted({k for i in infos for k in i})
            raise InputError(f"no frame of {path!r} has the info key {key!r} to group by"
                             + (f" (keys found: {', '.join(found)})" if found else " (it has no info keys)"))
    return out
