"""GAP/SOAP against its peers: the SOAP descriptor (featomic, QUIP/quippy, DScribe) and a
GAP fit with QUIP's ``gap_fit`` on the mlearn Si data set (Zuo et al. 2020, PBE).

Subcommands (each prints a Markdown table):

    python benchmarks/gap.py soap [--threads 1] [--frames 10] [--reference]
        SOAP environment kernels K(A, B) = p_A.p_B / (|p_A||p_B|) on 10 frames of
        mlearn Si_train.extxyz (and 2 frames of DeePMD water for two elements): max |K_x - K_y|
        for every pair of implementations, and the descriptor (and descriptor + gradient)
        time per frame set; each calculator object is built once and its setup time shown
        apart. Settings: "mlearn" (r_c 5.4, w 0.5, sigma 0.5, n_max 8, l_max 8)
        and "small" (n_max 6, l_max 4). --reference adds a slow numpy implementation of the
        definition below (first frame only), which featomic matches to ~1e-9.
    python benchmarks/gap.py split
        The held-out split used by every GAP benchmark: test = frames with index % 5 == 0 of
        Si_train.extxyz (43), train = the rest (171); writes out/gap/si_train.xyz and
        out/gap/si_test.xyz.
    python benchmarks/gap.py gap-fit [--dry-run] [--n-train 20 --n-sparse 50 --l-max 4 --n-max 4]
        Runs QUIP's gap_fit (2-body + SOAP, the mlearn Si settings) on the training split,
        recording wall time and peak RSS; the potential goes to out/gap/.
        The full run (n_sparse 1000, l_max = n_max = 8) takes ~30 min and ~10 GB.
    python benchmarks/gap.py gap-eval [--potential out/gap/si_gap.xml]
        Errors of a gap_fit potential on the test split (energy meV/atom, forces meV/Å,
        stress GPa; overall and per config_type) and the time of energy + forces + stress for
        a 1000-atom diamond Si cell (best of 3).
    python benchmarks/gap.py ours
        Same training and evaluation with ase-mlff's GAP (``python -m ase_mlff train gap``).
    python benchmarks/gap.py uncertainty [--model potentials/si_gap.mlff]
        The GP uncertainty against the real errors on the test split, for each way of getting
        it (exact posterior variance, DTC, the posterior samples the calculator uses, raw and
        calibrated): Spearman rank correlation with the errors and rms(error) / rms(sigma)
        (1 = calibrated), for energies, per-atom forces and stress components.
    python benchmarks/gap.py uncertainty-cost [--sizes 2 3 5] [--thread-counts 1 2] [--repeat 7]
        Time of one energy + forces + stress call with and without uncertainty=True on diamond
        Si cells of 64, 216 and 1000 atoms (rattled by 0.05 Å; each size and thread count in a
        fresh process; best of --repeat, the three kinds of call interleaved so that a busy
        machine slows them alike): plain, with the default uncertainty (posterior samples) and
        with the exact variance (variance_method="exact", the implementation before the samples).
    python benchmarks/gap.py memory [--sizes 3 5 8 10]
        Peak memory and time of one energy + forces + stress call for 216 ... 8000 atoms.
    python benchmarks/gap.py serve [--threads 2] [--sizes 4 8 12 16 20] [--repeat 3] [--before DIR]
        The serving path of the calculator (energy + forces + stress per MD-like step: atoms
        displaced by ~1e-3 Å between calls, the Verlet list reused) on diamond Si supercells of
        8 n^3 atoms (512 ... 64,000), potentials/si_gap.mlff; each size in its own child
        process: best and median time per call of --repeat calls after one warm-up, its peak
        RSS (ru_maxrss) and the part of it that grew during the calls (+MB, KiB per atom: flat
        when memory is linear in atoms). --before DIR runs the same children again with
        PYTHONPATH=DIR (a checkout of an earlier commit with its extension built, e.g. the one
        before the compiled GAP core) and labels those rows "ase-mlff (before)"; the ratio is
        time(current) / time(before), and |dE|/N compares the two builds' first energies.

SOAP definition being compared (the normalised kernel does not depend on the overall scale):
density rho_a(r) = sum_{j of species a} f_c(r_j) exp(-|r - r_j|^2 / (2 sigma^2)), the centre
included with weight 1 in its own species channel; f_c = 1 below r_c - w,
0.5 (1 + cos(pi (r - r_c + w) / w)) on [r_c - w, r_c], 0 beyond; radial basis: the GTOs
r^k exp(-r^2 / (2 s_k^2)), s_k = R max(sqrt(k), 1) / n_max, k = 0..n_max-1, R = r_c,
orthonormalised with the weight r^2 on [0, inf); real spherical harmonics l <= l_max;
p_{a a' n n' l} = (2l + 1)^(-1/2) sum_m c_{a n l m} c_{a' n' l m} over all ordered species
pairs (stored as a <= a' with sqrt(2) on a != a', which gives the same dot products).

What each peer is, with these settings (see the docstrings of the peer functions):
  * featomic 0.6 ``SoapPowerSpectrum``: exactly this definition. Gto ``max_radial`` =
    n_max - 1; the GTO radius is the cutoff radius (the native calculator refuses another
    one); per-l factor (-1)^l / sqrt(2l+1) (the sign cancels in dot products); centre weight
    ``center_atom_weight`` (default 1); species pairs a <= a' with sqrt(2) off the diagonal;
    all (n, n') pairs stored.
  * QUIP ``soap`` (quippy 0.10): ``radial_basis=GTO`` is used (its default for this
    ``xml_version`` is another, older basis); stores n <= n' with sqrt(2) off the diagonal and
    one extra constant column (dropped here); its radial basis is not the one above, so its
    kernels differ by ~0.03 (max |dK|) from featomic's; central_weight 1.
  * DScribe 2.1 ``SOAP(rbf="gto")``: an l-dependent GTO basis (r^l exp(-alpha_{nl} r^2),
    decaying to 1e-3 at radii linspace(1, r_c, n_max)); no cosine cutoff (a sharp cutoff
    on the neighbours, or a ``weighting`` function); per-l factor pi sqrt(8/(2l+1)) (times
    an internal constant for l > 1); stores n <= n' for a = a' and n x n for a < a' WITHOUT
    the sqrt(2) weights: this script multiplies them in before comparing.

Thread counts: ``--threads`` sets OMP_NUM_THREADS, RAYON_NUM_THREADS (featomic) and
MKL/OpenBLAS threads before numpy is imported, DScribe's ``n_jobs`` and
``ase_mlff.set_num_threads``.

Peers: ``pip install featomic dscribe quippy-ase`` (none of them pulls torch or another numpy);
quippy-ase ships the ``gap_fit`` executable inside the quippy package. Any peer that is not
installed is skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time


def _threads_from_argv(argv, default=1):
    """The --threads value, read before numpy is imported so that BLAS/OpenMP see it."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return str(default)


_THREADS = _threads_from_argv(sys.argv)
for _var in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = _THREADS

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import public_data  # noqa: E402  (where the reference data come from and must be put)

WATER_FILE = public_data.path("deepmd_water", "water_deepmd_train.extxyz", must_exist=False)
OUT = os.path.join(ROOT, "out", "gap")
EV_A3_TO_GPA = 160.21766208

SETTINGS = {
    "mlearn": dict(cutoff=5.4, cutoff_width=0.5, atom_sigma=0.5, n_max=8, l_max=8),
    "small": dict(cutoff=5.4, cutoff_width=0.5, atom_sigma=0.5, n_max=6, l_max=4),
}


# ----------------------------------------------------------------------------- helpers

def _normalise(X):
    """Rows scaled to unit length."""
    X = np.asarray(X, dtype=np.float64)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _best_time(fn, repeat):
    """(best wall time of ``repeat`` calls, result of the last call)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _table(header, rows):
    """Print a Markdown table."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print()


def _peak_rss_run(cmd, log_path, env=None):
    """Run ``cmd``; return (wall s, peak RSS MiB, return code). Uses ``/usr/bin/time -v``
    when present (the child's own maximum resident set), else RUSAGE_CHILDREN."""
    import resource

    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        if os.path.exists("/usr/bin/time"):
            proc = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdout=log, stderr=subprocess.PIPE,
                                  text=True, env=env)
            wall = time.perf_counter() - t0
            log.write(proc.stderr)
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
            rss = int(m.group(1)) / 1024 if m else float("nan")
        else:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            wall = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, rss, proc.returncode


# ----------------------------------------------------------------------------- SOAP peers

_CALCULATORS = {}
SETUP_TIME = {}


def _cached(name, species, st, factory):
    """The calculator object of peer ``name`` for these settings, built once (its build time
    goes to SETUP_TIME[name]; the timed runs reuse it, as an MD code would)."""
    key = (name, tuple(species), tuple(sorted(st.items())))
    if key not in _CALCULATORS:
        t0 = time.perf_counter()
        _CALCULATORS[key] = factory()
        SETUP_TIME[name] = time.perf_counter() - t0
    return _CALCULATORS[key]

#
# Each peer function takes (frames, species, settings, gradients) and returns the normalised
# per-atom vectors of all frames stacked in frame order, (N_total, D). With gradients=True
# it also computes the gradients with respect to positions (only timed, not compared).

def soap_featomic(frames, species, st, gradients=False):
    """featomic SoapPowerSpectrum. max_radial = n_max - 1 (it counts from 0); the GTO radius
    is the cutoff (not settable in the native calculator); density Gaussian exp(-r^2/(2 w^2))
    with w = atom_sigma (its (pi w^2)^(-3/4) prefactor cancels); centre weight 1; per-l
    factor (-1)^l/sqrt(2l+1); keys (centre, a1 <= a2) with sqrt(2) on a1 < a2."""
    import featomic

    calc = _cached("featomic", species, st, lambda: featomic.SoapPowerSpectrum(
        cutoff={"radius": st["cutoff"], "smoothing": {"type": "ShiftedCosine", "width": st["cutoff_width"]}},
        density={"type": "Gaussian", "width": st["atom_sigma"], "center_atom_weight": st.get("central_weight", 1.0)},
        basis={"type": "TensorProduct", "max_angular": st["l_max"],
               "radial": {"type": "Gto", "max_radial": st["n_max"] - 1}},
    ))
    tm = calc.compute(frames, gradients=["positions"] if gradients else None)
    offsets = np.cumsum([0] + [len(a) for a in frames])
    pairs = [(a, b) for i, a in enumerate(species) for b in species[i:]]
    nprop = (st["l_max"] + 1) * st["n_max"] ** 2
    out = np.zeros((offsets[-1], len(pairs) * nprop))
    for key, block in tm.items():
        p = pairs.index((int(key["neighbor_1_type"]), int(key["neighbor_2_type"])))
        s = block.samples.values
        out[offsets[s[:, 0]] + s[:, 1], p * nprop:(p + 1) * nprop] = block.values
    return _normalise(out)


def soap_quippy(frames, species, st, gradients=False):
    """QUIP soap descriptor with radial_basis=GTO, one descriptor per central species
    (n_Z=1 Z={z}), normalise=T; drops QUIP's last (constant, covariance_sigma0) column.
    Stores n <= n' (and a <= a') with sqrt(2) off the diagonal."""
    from quippy.descriptors import Descriptor

    zs = " ".join(str(z) for z in species)
    descs = _cached("quippy", species, st, lambda: {z: Descriptor(
        f"soap cutoff={st['cutoff']} cutoff_transition_width={st['cutoff_width']} "
        f"atom_sigma={st['atom_sigma']} n_max={st['n_max']} l_max={st['l_max']} "
        f"central_weight={st.get('central_weight', 1.0)} radial_basis=GTO "
        f"n_species={len(species)} species_Z={{{zs}}} n_Z=1 Z={{{z}}}") for z in species})
    rows = []
    for atoms in frames:
        P = None
        for z, d in descs.items():
            if not np.any(atoms.numbers == z):
                continue
            r = d.calc(atoms, grad=gradients)
            data = np.asarray(r["data"])[:, :-1]
            if P is None:
                P = np.zeros((len(atoms), data.shape[1]))
            P[np.asarray(r["ci"]) - 1] = data
        rows.append(P)
    return _normalise(np.vstack(rows))


def _dscribe_full_layout_weights(n_species, n_max, l_max):
    """Weights that turn DScribe's stored (a <= a', l, n[<=n'] ) vector into one whose dot
    products are those of the full (a, a', n, n') power spectrum: sqrt(2) on n < n' within a
    species pair a = a' and on every entry of a pair a < a'."""
    w = []
    for a in range(n_species):
        for b in range(a, n_species):
            for _l in range(l_max + 1):
                if a == b:
                    w += [1.0 if n1 == n2 else np.sqrt(2) for n1 in range(n_max) for n2 in range(n1, n_max)]
                else:
                    w += [np.sqrt(2)] * (n_max * n_max)
    return np.array(w)


def soap_dscribe(frames, species, st, gradients=False, n_jobs=1):
    """DScribe SOAP(rbf="gto"): its own l-dependent GTO basis, sharp cutoff at r_c (no
    smooth cutoff; ``weighting`` offers other functions), centre included with weight 1
    (``w0``), per-l factor pi*sqrt(8/(2l+1)); layout reweighted to the full kernel."""
    from dscribe.descriptors import SOAP

    ds = _cached("dscribe", species, st, lambda: SOAP(
        species=list(species), r_cut=st["cutoff"], n_max=st["n_max"], l_max=st["l_max"],
        sigma=st["atom_sigma"], rbf="gto", periodic=True, sparse=False))
    if gradients:
        # DScribe 2.1 has no analytical derivatives for periodic systems: "auto" falls back to
        # central finite differences (every atom moved, the whole frame recomputed)
        _, X = ds.derivatives(frames, method="auto", n_jobs=n_jobs)
    else:
        X = ds.create(frames, n_jobs=n_jobs)
    X = np.concatenate(list(X)) if isinstance(X, list) or np.ndim(X) == 3 else X
    return _normalise(X * _dscribe_full_layout_weights(len(species), st["n_max"], st["l_max"]))


def soap_ours(frames, species, st, gradients=False):
    """ase-mlff SOAP (GTO radius = cutoff unless basis_radius is given); returns normalised
    vectors; ``compute(atoms, gradients=True)`` returns P_normalised first, then gradients."""
    from ase_mlff.descriptors.soap import SOAP

    s = _cached("ours", species, st, lambda: SOAP(
        species=list(species), cutoff=st["cutoff"], n_max=st["n_max"], l_max=st["l_max"],
        atom_sigma=st["atom_sigma"], cutoff_width=st["cutoff_width"],
        central_weight=st.get("central_weight", 1.0)))
    rows = []
    for atoms in frames:
        if gradients:
            # returns (P, ...gradient arrays...): currently (P, pair index (2, n), dP (n, 3, D))
            P = s.compute(atoms, gradients=True)[0]
        else:
            P = s.compute(atoms)
        rows.append(np.asarray(P, dtype=np.float64))
    return _normalise(np.vstack(rows))


def soap_reference(frames, species, st, gradients=False):
    """Slow numpy implementation of the definition in the module docstring (radial integrals
    on a grid, angular ones analytic: 4 pi exp(-(r^2+r_j^2)/2s^2) i_l(r r_j/s^2) Y_lm(r_j))."""
    import scipy.special as sp
    from ase.neighborlist import neighbor_list

    rc, w, sig, nmax, lmax = st["cutoff"], st["cutoff_width"], st["atom_sigma"], st["n_max"], st["l_max"]
    R = st.get("basis_radius", rc)
    rg = np.linspace(0.0, rc + 8 * sig + 3 * R, 4001)[1:]
    dr = rg[1] - rg[0]
    s = R * np.maximum(np.sqrt(np.arange(nmax)), 1.0) / nmax
    G = np.array([rg ** k * np.exp(-rg ** 2 / (2 * s[k] ** 2)) for k in range(nmax)])
    e, V = np.linalg.eigh((G * rg ** 2) @ G.T * dr)
    B = (V @ np.diag(e ** -0.5) @ V.T) @ G * rg ** 2 * dr   # orthonormal basis x quadrature weights
    rows = []
    for atoms in frames:
        ii, jj, D = neighbor_list("ijD", atoms, rc)
        for a in range(len(atoms)):
            c = np.zeros((len(species), lmax + 1, 2 * lmax + 1, nmax), complex)
            sel = ii == a
            d = D[sel]
            r = np.linalg.norm(d, axis=1)
            z = atoms.numbers[jj[sel]]
            theta, phi = np.arccos(np.clip(d[:, 2] / r, -1, 1)), np.arctan2(d[:, 1], d[:, 0])
            fc = np.where(r <= rc - w, 1.0, 0.5 * (1 + np.cos(np.pi * (r - rc + w) / w)))
            x = np.outer(r, rg) / sig ** 2
            g = np.exp(-(rg[None, :] - r[:, None]) ** 2 / (2 * sig ** 2))
            for l in range(lmax + 1):
                il = sp.ive(l + 0.5, x) * np.sqrt(np.pi / (2 * x))   # e^{-x} i_l(x)
                rad = (g * il) @ B.T * (4 * np.pi * fc)[:, None]
                for m in range(-l, l + 1):
                    Y = np.conj(sp.sph_harm_y(l, m, theta, phi))
                    for k, sz in enumerate(species):
                        c[k, l, m + lmax] += (Y[z == sz, None] * rad[z == sz]).sum(0)
            c[species.index(atoms.numbers[a]), 0, lmax] += (
                st.get("central_weight", 1.0) * np.sqrt(4 * np.pi) * (np.exp(-rg ** 2 / (2 * sig ** 2)) @ B.T))
            p = [np.einsum("amn,bmk->abnk", c[:, l], c[:, l].conj()).real / np.sqrt(2 * l + 1)
                 for l in range(lmax + 1)]
            rows.append(np.concatenate([q.ravel() for q in p]))
    return _normalise(np.array(rows))


PEERS = {"ours": soap_ours, "featomic": soap_featomic, "quippy": soap_quippy, "dscribe": soap_dscribe}
PEER_MODULES = {"ours": "ase_mlff.descriptors.soap", "featomic": "featomic", "quippy": "quippy",
                "dscribe": "dscribe"}


def _available(name):
    """Whether the peer's package imports."""
    import importlib

    try:
        importlib.import_module(PEER_MODULES[name])
        return True
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        print(f"<!-- {name}: not available ({type(exc).__name__}: {exc}) -->")
        return False


# ----------------------------------------------------------------------------- soap

def run_soap(args):
    """Kernel agreement and descriptor timing, ours against featomic, QUIP and DScribe."""
    from ase.io import read

    threads = int(args.threads)
    try:
        import ase_mlff

        ase_mlff.set_num_threads(threads)
    except Exception:  # noqa: BLE001
        pass
    sets = [("Si (mlearn)", read(public_data.path("mlearn", "Si_train.extxyz"), f":{args.frames}"))]
    if args.water_frames > 0 and os.path.exists(WATER_FILE):
        sets.append(("H2O (DeePMD)", read(WATER_FILE, f":{args.water_frames}")))
    names = [n for n in args.peers if _available(n)]
    print(f"threads: {threads} (OMP/RAYON/BLAS, DScribe n_jobs, ase_mlff); times: whole frame "
          f"set, best of {args.repeat} after an untimed warm-up on frame 0\n")
    for label, frames in sets:
        species = sorted({int(z) for a in frames for z in a.numbers})
        zs = np.concatenate([a.numbers for a in frames])
        same = zs[:, None] == zs[None, :]   # kernels compared between same-species centres
        for sname in args.settings:
            st = SETTINGS[sname]
            print(f"### {label}: {len(frames)} frames, {len(zs)} environments, setting '{sname}' "
                  f"(r_c {st['cutoff']}, w {st['cutoff_width']}, sigma {st['atom_sigma']}, "
                  f"n_max {st['n_max']}, l_max {st['l_max']})\n")
            P, rows = {}, []
            for n in names:
                kw = {"n_jobs": threads} if n == "dscribe" else {}
                fn = PEERS[n]
                try:
                    fn(frames[:1], species, st, **kw)   # untimed warm-up (imports, JIT, tables)
                    t, P[n] = _best_time(lambda: fn(frames, species, st, **kw), args.repeat)
                except Exception as exc:  # noqa: BLE001 - report and go on with the others
                    rows.append([n, "failed", "", f"{type(exc).__name__}: {exc}"[:80], ""])
                    continue
                tg = "n/a"
                if args.gradients and n == "dscribe" and max(len(a) for a in frames) > 100:
                    tg = "skipped (numerical only for PBC; too large)"
                elif args.gradients:
                    try:
                        tg, _ = _best_time(lambda: fn(frames, species, st, gradients=True, **kw), args.repeat)
                        tg = f"{tg:.3f}" + (" (numerical: no analytical PBC derivatives)" if n == "dscribe" else "")
                    except Exception as exc:  # noqa: BLE001
                        tg = f"failed ({type(exc).__name__}: {exc})"[:90]
                rows.append([n, P[n].shape[1], f"{SETUP_TIME.get(n, float('nan')):.3f}", f"{t:.3f}", tg])
            _table(["implementation", "D", "setup s (once)", "descriptor s", "descriptor + gradients s"], rows)
            _kernel_table(P, same)
            if args.reference:
                n0 = len(frames[0])
                ref = {"reference (numpy)": soap_reference(frames[:1], species, st)}
                ref.update({n: X[:n0] for n, X in P.items()})
                print(f"frame 0 only ({n0} environments):\n")
                _kernel_table(ref, same[:n0, :n0], only_first=True)


def _kernel_table(P, same, only_first=False):
    """max/mean |K_x - K_y| over same-species environment pairs, for every pair (x, y) of
    implementations (only pairs with the first one if ``only_first``)."""
    keys = list(P)
    rows = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            dK = np.abs(P[a] @ P[a].T - P[b] @ P[b].T)[same]
            rows.append([a, b, f"{dK.max():.2e}", f"{dK.mean():.2e}"])
        if only_first:
            break
    _table(["x", "y", "max abs(K_x - K_y)", "mean abs(K_x - K_y)"], rows)


# ----------------------------------------------------------------------------- split

def _gap_frame(atoms):
    """A copy of ``atoms`` for the split files: energy/forces/stress as ASE results (read by
    ase-mlff) plus gap_fit's keys dft_energy, dft_forces, dft_virial (= -stress * volume, eV,
    3x3), config_type kept."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    out = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    res = {"energy": e, "forces": f}
    out.info["config_type"] = atoms.info.get("config_type", "default")
    out.info["dft_energy"] = e
    out.arrays["dft_forces"] = f.copy()
    if "stress" in atoms.calc.results:
        s = atoms.get_stress(voigt=False)
        res["stress"] = atoms.get_stress()
        out.info["dft_virial"] = -s * atoms.get_volume()
    out.calc = SinglePointCalculator(out, **res)
    return out


def split_frames():
    """(train, test) frames of Si_train.extxyz: test = index % 5 == 0."""
    from ase.io import read

    frames = read(public_data.path("mlearn", "Si_train.extxyz"), ":")
    test = [_gap_frame(a) for i, a in enumerate(frames) if i % 5 == 0]
    train = [_gap_frame(a) for i, a in enumerate(frames) if i % 5 != 0]
    return train, test


def run_split(args):
    """Write out/gap/si_train.xyz and out/gap/si_test.xyz."""
    from collections import Counter

    from ase.io import write

    os.makedirs(OUT, exist_ok=True)
    train, test = split_frames()
    for name, fr in (("si_train.xyz", train), ("si_test.xyz", test)):
        write(os.path.join(OUT, name), fr, format="extxyz")
    rows = []
    for name, fr in (("train", train), ("test", test)):
        c = Counter(a.info["config_type"] for a in fr)
        rows.append([name, len(fr), sum(len(a) for a in fr), ", ".join(f"{k} {v}" for k, v in sorted(c.items()))])
    _table(["split", "frames", "atoms", "config_type"], rows)


# ----------------------------------------------------------------------------- gap_fit

def _gap_fit_executable():
    """quippy-ase ships gap_fit inside the quippy package (the venv's bin/gap_fit is a Python
    wrapper around it)."""
    try:
        import quippy

        exe = os.path.join(os.path.dirname(quippy.__file__), "gap_fit")
        if os.path.exists(exe):
            return exe
    except ImportError:
        pass
    return os.path.join(os.path.dirname(sys.executable), "gap_fit")


def gap_fit_command(args, train_file, xml):
    """The gap_fit command line (a list of arguments).

    2-body term: distance_2b, cutoff 5.4 (the SOAP cutoff) with a 1 Å cosine transition,
    squared-exponential (ard_se) kernel of length 1 Å, delta 1 eV, 20 uniformly spaced
    sparse points. SOAP term: the mlearn Si settings, zeta 4 dot-product kernel, delta 1 eV,
    CUR-selected sparse environments. default_sigma {0.002 0.1 0.1 0} with sigma_per_atom=T
    (gap_fit's default, stated explicitly): the energy and virial sigmas are per atom and scaled
    by sqrt(N) for a configuration of N atoms, as ase-mlff's --sigma-energy/--sigma-virial; the
    force sigma is per component (eV/Å). e0 = average energy per atom of the training set
    (e0_method=average; ase-mlff fits e0 jointly instead)."""
    two_body = (f"distance_2b cutoff={args.cutoff} cutoff_transition_width=1.0 covariance_type=ard_se "
                f"delta={args.delta_2b} theta_uniform=1.0 sparse_method=uniform n_sparse={args.n_sparse_2b} "
                f"add_species=T")
    soap = (f"soap l_max={args.l_max} n_max={args.n_max} atom_sigma={args.atom_sigma} cutoff={args.cutoff} "
            f"cutoff_transition_width={args.cutoff_width} central_weight=1.0 zeta={args.zeta} "
            f"delta={args.delta_soap} f0=0.0 covariance_type=dot_product sparse_method=cur_points "
            f"n_sparse={args.n_sparse} add_species=T")
    sig = args.default_sigma
    return [
        _gap_fit_executable(),
        f"at_file={train_file}",
        f"gap={{{two_body} : {soap}}}",
        f"default_sigma={{{sig[0]} {sig[1]} {sig[2]} {sig[3]}}}",
        "sigma_per_atom=T",
        "e0_method=average",
        "energy_parameter_name=dft_energy",
        "force_parameter_name=dft_forces",
        "virial_parameter_name=dft_virial",
        "config_type_parameter_name=config_type",
        "sparse_jitter=1.0e-8",
        f"rnd_seed={args.seed}",
        "do_copy_at_file=F",
        "sparse_separate_file=T",
        f"gp_file={xml}",
    ]


def run_gap_fit(args):
    """Fit with gap_fit; print the command, wall time and peak RSS."""
    import shlex

    os.makedirs(OUT, exist_ok=True)
    train_file = os.path.join(OUT, "si_train.xyz")
    if not os.path.exists(train_file) and not args.dry_run:
        run_split(args)
    if args.n_train:
        from ase.io import read, write

        sub = os.path.join(OUT, f"si_train_sub{args.n_train}.xyz")
        if not args.dry_run:   # evenly strided, so that every config_type is represented
            frames = read(train_file, ":")
            stride = max(len(frames) // args.n_train, 1)
            write(sub, frames[::stride][:args.n_train], format="extxyz")
        train_file = sub
    xml = args.output or os.path.join(OUT, "si_gap.xml" if not args.n_train else f"si_gap_n{args.n_train}.xml")
    cmd = gap_fit_command(args, os.path.relpath(train_file, ROOT), os.path.relpath(xml, ROOT))
    print("```\nOMP_NUM_THREADS=%s %s\n```\n" % (args.threads, " ".join(shlex.quote(c) for c in cmd)))
    if args.dry_run:
        return
    xml_dir = os.path.dirname(os.path.abspath(xml))
    for old in (f for f in os.listdir(xml_dir) if f.startswith(os.path.basename(xml) + ".sparseX")):
        os.remove(os.path.join(xml_dir, old))  # stale sparse-point files of an earlier fit
    log = xml + ".log"
    wall, rss, rc = _peak_rss_run(cmd, log, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    _table(["fit", "threads", "train file", "n_sparse (SOAP)", "wall s", "peak RSS MiB", "exit"],
           [["gap_fit", args.threads, os.path.relpath(train_file, ROOT), args.n_sparse,
             f"{wall:.1f}", f"{rss:.0f}", rc]])
    print(f"potential: {os.path.relpath(xml, ROOT)}; log: {os.path.relpath(log, ROOT)}")
    if rc != 0:
        sys.exit(rc)


# ----------------------------------------------------------------------------- evaluation

def evaluate_calculator(calc, test_frames, label):
    """Print energy/force/stress MAEs of ``calc`` on ``test_frames`` (overall and per
    config_type)."""
    err = {}
    for ref in test_frames:
        a = ref.copy()
        a.calc = calc
        ct = ref.info.get("config_type", "default")
        e = a.get_potential_energy()
        f = a.get_forces()
        d = err.setdefault(ct, {"e": [], "f": [], "s": []})
        d["e"].append(abs(e - ref.get_potential_energy()) / len(a) * 1000)
        d["f"].append(np.abs(f - ref.get_forces()).ravel() * 1000)
        if "stress" in ref.calc.results:
            d["s"].append(np.abs(a.get_stress() - ref.get_stress()) * EV_A3_TO_GPA)
    rows = []
    groups = sorted(err) + ["all"]
    for g in groups:
        ds = list(err.values()) if g == "all" else [err[g]]
        e = np.concatenate([np.array(d["e"]) for d in ds])
        f = np.concatenate([np.concatenate(d["f"]) for d in ds])
        s = [x for d in ds for x in d["s"]]
        rows.append([g, len(e), f"{e.mean():.2f}", f"{f.mean():.1f}",
                     f"{np.concatenate(s).mean():.3f}" if s else "n/a"])
    print(f"### {label}: test errors (MAE)\n")
    _table(["config_type", "frames", "energy meV/atom", "forces meV/Å", "stress GPa"], rows)


def time_1000_atoms(calc, label, repeat=3):
    """Best-of-``repeat`` time of energy + forces + stress on a 1000-atom diamond Si cell
    (random displacements, seed 0; each repetition moves the atoms by ~1e-3 Å so nothing is
    served from a cache)."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", 5.47, cubic=True) * (5, 5, 5)
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    atoms.calc = calc
    times = []
    for _ in range(repeat):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        t0 = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        atoms.get_stress()
        times.append(time.perf_counter() - t0)
    _table(["model", "atoms", "energy+forces+stress s (best of %d)" % repeat, "all runs s"],
           [[label, len(atoms), f"{min(times):.3f}", ", ".join(f"{t:.3f}" for t in times)]])


def _test_frames(path):
    """Test frames from the split file (written by ``split`` if missing)."""
    from ase.io import read

    if not os.path.exists(path):
        run_split(None)
    return read(path, ":")


def run_gap_eval(args):
    """Evaluate a gap_fit potential through quippy's ASE calculator."""
    from quippy.potential import Potential

    xml = args.potential or os.path.join(OUT, "si_gap.xml")
    pot = Potential(param_filename=xml)
    evaluate_calculator(pot, _test_frames(args.test), f"GAP (QUIP) {os.path.relpath(xml, ROOT)}")
    time_1000_atoms(pot, "GAP (QUIP)", args.repeat)


# ----------------------------------------------------------------------------- ours

def run_ours(args):
    """Train ase-mlff's GAP with the same hyperparameters as ``gap-fit`` (wall time, peak RSS),
    then evaluate it like ``gap-eval``."""
    import ase_mlff

    ase_mlff.set_num_threads(int(args.threads))
    train_file = os.path.join(OUT, "si_train.xyz")
    if not os.path.exists(train_file):
        run_split(args)
    model = os.path.join(OUT, "si_gap_bench.mlff")
    cmd = [sys.executable, "-m", "ase_mlff", "train", "gap", train_file, "-o", model,
           "--cutoff", str(args.cutoff), "--n-max", str(args.n_max), "--l-max", str(args.l_max),
           "--atom-sigma", str(args.atom_sigma), "--cutoff-width", str(args.cutoff_width),
           "--zeta", str(args.zeta), "--n-sparse", str(args.n_sparse), "--sparse-method", "cur",
           "--two-body", "--sigma-energy", str(args.default_sigma[0]),
           "--sigma-force", str(args.default_sigma[1]), "--sigma-virial", str(args.default_sigma[2])]
    print("```\n" + " ".join(cmd) + "\n```\n")
    if args.dry_run:
        return
    wall, rss, rc = _peak_rss_run(cmd, model + ".log", env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    _table(["fit", "threads", "n_sparse (SOAP)", "wall s", "peak RSS MiB", "exit"],
           [["ase-mlff gap", args.threads, args.n_sparse, f"{wall:.1f}", f"{rss:.0f}", rc]])
    if rc != 0:
        sys.exit(rc)
    calc = ase_mlff.load(model)  # MLFFCalculator
    evaluate_calculator(calc, _test_frames(args.test), "GAP (ase-mlff)")
    time_1000_atoms(calc, "GAP (ase-mlff)", args.repeat)


# ----------------------------------------------------------------------------- uncertainty

def run_uncertainty(args):
    """How the GP uncertainty of an ase-mlff GAP ranks and scales with its real errors on the
    test split: per-atom force error |F - F_DFT| against sigma_F, per-frame energy error
    against sigma_E and per-component stress error against sigma_S. Variances: the exact
    posterior variance (design rows), the DTC variance (plus the prior residual), the mean
    square over the model's posterior samples (what the calculator computes), and the latter
    times the model's calibration factors (what the calculator reports). Spearman rank
    correlation and rms(error) / rms(sigma)."""
    from scipy.stats import spearmanr

    from ase_mlff.graph import graph_from_structure
    from ase_mlff.io import load_model

    model = load_model(args.model)
    cal = model.calibration or {"energy": 1.0, "forces": 1.0, "stress": 1.0}
    frames = _test_frames(args.test)
    err = {"forces": [], "energy": [], "stress": []}
    kinds = ("exact", "DTC", "samples", "samples, calibrated")
    sig = {k: {"forces": [], "energy": [], "stress": []} for k in kinds}
    for a in frames:
        g = graph_from_structure(a, model.cutoff)
        out = model.compute(g, forces=True, stress=True)
        volume = a.get_volume()
        err["forces"].append(np.linalg.norm(out.forces.numpy() - a.get_forces(), axis=1))
        err["energy"].append(abs(float(out.energy[0]) - a.get_potential_energy()))
        voigt = out.virial.numpy()[0][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] / volume
        err["stress"].append(np.abs(voigt - a.get_stress()))
        var = {"exact": model.predictive_variance(g, stress=True),
               "DTC": model.predictive_variance(g, stress=True, include_residual=True),
               "samples": model.sampled_variance(g, stress=True)}
        var["samples, calibrated"] = var["samples"]
        for kind in kinds:
            v = var[kind]
            c = cal if kind == "samples, calibrated" else {"energy": 1.0, "forces": 1.0, "stress": 1.0}
            sig[kind]["forces"].append(c["forces"] * np.sqrt(np.clip(v["forces"], 0, None).sum(1)))
            sig[kind]["energy"].append(c["energy"] * np.sqrt(max(float(v["energy"][0]), 0.0)))
            sv = np.clip(v["virial"][0][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], 0, None)
            sig[kind]["stress"].append(c["stress"] * np.sqrt(sv) / volume)
    e = {k: np.concatenate(v) if k != "energy" else np.array(v) for k, v in err.items()}
    rows = []
    for kind in kinds:
        row = [kind]
        for obs in ("forces", "energy", "stress"):
            s = np.concatenate(sig[kind][obs]) if obs != "energy" else np.array(sig[kind][obs])
            row += [f"{spearmanr(s, e[obs])[0]:.2f}", f"{np.sqrt((e[obs] ** 2).mean() / (s ** 2).mean()):.2f}"]
        rows.append(row)
    print(f"### GP uncertainty vs errors: {os.path.relpath(args.model, ROOT)} on {len(frames)} test frames "
          f"({len(e['forces'])} atoms, {len(e['stress'])} stress components); calibration "
          + (", ".join(f"{k} {v:.3g}" for k, v in model.calibration.items()) if model.calibration else "none")
          + "\n")
    _table(["variance", "forces: Spearman", "forces: rms(err)/rms(σ)", "energy: Spearman",
            "energy: rms(err)/rms(σ)", "stress: Spearman", "stress: rms(err)/rms(σ)"], rows)


def _cost_one(model_path, sizes, repeat):
    """Child process: best-of-``repeat`` seconds of E+F+S calls, plain / samples / exact, for
    each size; prints one JSON line per size."""
    import json
    import warnings

    from ase.build import bulk

    import ase_mlff
    from ase_mlff.io import load_model

    ase_mlff.set_num_threads(int(_THREADS))
    warnings.simplefilter("ignore")  # an uncalibrated file warns once; not what is timed
    calcs = {}
    for kind in ("plain", "samples", "exact"):
        model = load_model(model_path)
        if kind == "exact":
            model.variance_method = "exact"
        calcs[kind] = ase_mlff.MLFFCalculator(model, uncertainty=kind != "plain")
    for reps in sizes:
        atoms = bulk("Si", "diamond", 5.47, cubic=True) * (reps, reps, reps)
        atoms.rattle(0.05, seed=0)
        best = {k: float("inf") for k in calcs}
        for r in range(repeat + 1):  # the first round warms up (caches, first-use allocations)
            for kind, calc in calcs.items():
                atoms.positions[0, 0] += 1e-4  # a new structure: nothing served from a cache
                t0 = time.perf_counter()
                calc.calculate(atoms, ["energy", "forces", "stress"])
                dt = time.perf_counter() - t0
                if r:
                    best[kind] = min(best[kind], dt)
        print(json.dumps({"atoms": len(atoms), **best}))


def run_uncertainty_cost(args):
    """Time per call with and without uncertainty (module docstring), one fresh process per
    thread count."""
    import json

    if args.one:
        _cost_one(args.model, args.sizes, args.repeat)
        return
    rows = []
    for threads in args.thread_counts:
        out = subprocess.run([sys.executable, __file__, "uncertainty-cost", "--threads", str(threads), "--model",
                              args.model, "--one", "--repeat", str(args.repeat), "--sizes", *map(str, args.sizes)],
                             capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            r = json.loads(line)
            rows.append([r["atoms"], threads, f"{r['plain'] * 1e3:.1f}", f"{r['samples'] * 1e3:.1f}",
                         f"{r['samples'] / r['plain']:.2f}", f"{r['exact'] * 1e3:.0f}",
                         f"{r['exact'] / r['plain']:.1f}"])
    print(f"### E+F+S per call, {os.path.relpath(args.model, ROOT)} (best of {args.repeat})\n")
    _table(["atoms", "threads", "plain ms", "uncertainty ms", "ratio", "exact variance ms", "ratio"], rows)


# ----------------------------------------------------------------------------- memory

def _one_size(model_path, reps):
    """Child process: E+F+S of a diamond cell repeated reps^3 times; prints atoms, time, RSS."""
    import resource

    from ase.build import bulk

    import ase_mlff

    calc = ase_mlff.load(model_path)
    atoms = bulk("Si", "diamond", 5.47, cubic=True) * (reps, reps, reps)
    atoms.rattle(0.05, seed=0)
    atoms.calc = calc
    t0 = time.perf_counter()
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    dt = time.perf_counter() - t0
    print(len(atoms), dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_memory(args):
    """Peak RSS and time of one energy+forces+stress call against the number of atoms, each
    size in a fresh process (the RSS includes Python, torch and the model)."""
    if args.one is not None:
        _one_size(args.model, args.one)
        return
    rows, base = [], None
    for reps in args.sizes:
        out = subprocess.run([sys.executable, __file__, "memory", "--threads", str(args.threads), "--model",
                              args.model, "--one", str(reps)], capture_output=True, text=True, check=True)
        n, dt, rss = out.stdout.split()[-3:]
        n, dt, rss = int(n), float(dt), float(rss)
        if base is None:
            base = (n, rss)
        per_atom = (rss - base[1]) / (n - base[0]) * 1024 if n > base[0] else float("nan")
        rows.append([n, f"{dt:.3f}", f"{rss:.0f}", "" if n == base[0] else f"{per_atom:.1f}"])
    _table(["atoms", "E+F+S s", "peak RSS MiB", "KiB per extra atom"], rows)


# ----------------------------------------------------------------------------- serving path

def _serve_one(model_path, reps, repeat):
    """Child process: time E+F+S calls on a diamond Si cell of 8 reps^3 atoms; prints one JSON
    line (atoms, best and median s per call, energy of the first call, RSS before and after)."""
    import json
    import resource
    import warnings

    from ase.build import bulk

    import ase_mlff

    ase_mlff.set_num_threads(int(_THREADS))
    warnings.simplefilter("ignore")
    calc = ase_mlff.load(model_path)
    atoms = bulk("Si", "diamond", 5.47, cubic=True) * (reps, reps, reps)
    atoms.rattle(0.05, seed=0)
    rng = np.random.default_rng(1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    calc.calculate(atoms, ["energy", "forces", "stress"])  # warm-up: neighbour list, first-use allocations
    energy = float(calc.results["energy"])
    times = []
    for _ in range(repeat):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        t0 = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces", "stress"])
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"atoms": len(atoms), "best": min(times), "median": float(np.median(times)),
                      "energy": energy, "rss0": rss0, "rss": rss}))


def _serve_child(args, reps, pythonpath):
    """Run one size in a child with ``PYTHONPATH=pythonpath``, from a folder outside every
    checkout (so that neither is imported from the working directory)."""
    import json
    import tempfile

    env = {**os.environ, "PYTHONPATH": pythonpath, "ASE_MLFF_NUM_THREADS": str(args.threads)}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, os.path.abspath(__file__), "serve", "--threads", str(args.threads), "--model",
           os.path.abspath(args.model), "--repeat", str(args.repeat), "--one", str(reps)]
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"serve child ({pythonpath}) failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def run_serve(args):
    """Time per call and memory of the serving path against the number of atoms (module
    docstring), optionally beside an earlier build (--before)."""
    if args.one is not None:
        _serve_one(args.model, args.one, args.repeat)
        return
    builds = [("ase-mlff", ROOT)]
    if args.before:
        before = os.path.abspath(args.before)
        if not os.path.isdir(os.path.join(before, "ase_mlff")):
            raise SystemExit(f"--before {args.before}: no ase_mlff package in that folder")
        builds.append(("ase-mlff (before)", before))
    rows = []
    for reps in args.sizes:
        res = {label: _serve_child(args, reps, path) for label, path in builds}
        cur = res["ase-mlff"]
        n = cur["atoms"]
        for label, r in res.items():
            grown = r["rss"] - r["rss0"]
            ratio = f"{cur['best'] / r['best']:.2f}" if label != "ase-mlff" else ""
            de = f"{abs(r['energy'] - cur['energy']) / n:.1e}" if label != "ase-mlff" else ""
            rows.append([n, label, f"{r['best'] * 1e3:.1f}", f"{r['median'] * 1e3:.1f}", ratio, f"{r['rss']:.0f}",
                         f"{grown:.0f}", f"{grown * 1024 / n:.1f}", de])
    print(f"### E+F+S per call, {os.path.relpath(os.path.abspath(args.model), ROOT)}, {args.threads} threads "
          f"(best / median of {args.repeat})\n")
    _table(["atoms", "build", "best ms", "median ms", "current / before", "peak RSS MiB", "+MiB in calls",
            "KiB per atom", "|dE|/N eV"], rows)


# ----------------------------------------------------------------------------- CLI

def _fit_options(p):
    """Hyperparameters shared by gap-fit and ours (defaults: the mlearn Si settings)."""
    p.add_argument("--cutoff", type=float, default=5.4)
    p.add_argument("--cutoff-width", type=float, default=0.5)
    p.add_argument("--atom-sigma", type=float, default=0.5)
    p.add_argument("--n-max", type=int, default=8)
    p.add_argument("--l-max", type=int, default=8)
    p.add_argument("--zeta", type=int, default=4)
    p.add_argument("--n-sparse", type=int, default=1000, help="SOAP sparse points (CUR)")
    p.add_argument("--n-sparse-2b", type=int, default=20, help="2-body sparse points (uniform)")
    p.add_argument("--delta-soap", type=float, default=1.0)
    p.add_argument("--delta-2b", type=float, default=1.0)
    p.add_argument("--default-sigma", type=float, nargs=4, default=[0.002, 0.1, 0.1, 0.0],
                   metavar=("E", "F", "V", "H"), help="energy (eV), force (eV/Å), virial (eV), hessian")
    p.add_argument("--seed", type=int, default=1, help="gap_fit rnd_seed (must not be 0)")
    p.add_argument("--n-train", type=int, default=0, help="use only N evenly strided training frames (0: all)")
    p.add_argument("--output", default=None, help="potential file (default out/gap/si_gap.xml)")
    p.add_argument("--test", default=os.path.join(OUT, "si_test.xyz"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="print the command only")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    # read from sys.argv at import time (before numpy); declared here for --help and checking
    common.add_argument("--threads", default=_THREADS, help="threads for every library (default 1)")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("soap", parents=[common], help="SOAP kernel agreement and descriptor timing")
    p.add_argument("--frames", type=int, default=10, help="Si frames")
    p.add_argument("--water-frames", type=int, default=2, help="DeePMD water frames (0: none)")
    p.add_argument("--settings", nargs="+", default=["mlearn", "small"], choices=sorted(SETTINGS))
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--no-gradients", dest="gradients", action="store_false")
    p.add_argument("--reference", action="store_true", help="add the numpy reference (frame 0)")
    p.add_argument("--repeat", type=int, default=1)
    p.set_defaults(func=run_soap)

    p = sub.add_parser("split", parents=[common], help="write out/gap/si_train.xyz and si_test.xyz")
    p.set_defaults(func=run_split)

    p = sub.add_parser("gap-fit", parents=[common], help="fit with QUIP's gap_fit")
    _fit_options(p)
    p.set_defaults(func=run_gap_fit)

    p = sub.add_parser("gap-eval", parents=[common], help="evaluate a gap_fit potential")
    p.add_argument("--potential", default=None)
    p.add_argument("--test", default=os.path.join(OUT, "si_test.xyz"))
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(func=run_gap_eval)

    p = sub.add_parser("ours", parents=[common], help="ase-mlff GAP fit + evaluation (same settings)")
    _fit_options(p)
    p.set_defaults(func=run_ours)

    p = sub.add_parser("uncertainty", parents=[common],
                       help="GP variance of a GAP model against its errors on the test split")
    p.add_argument("--model", default=os.path.join(ROOT, "potentials", "si_gap.mlff"))
    p.add_argument("--test", default=os.path.join(OUT, "si_test.xyz"))
    p.set_defaults(func=run_uncertainty)

    p = sub.add_parser("uncertainty-cost", parents=[common],
                       help="time per call with and without uncertainty=True (64, 216, 1000 atoms)")
    p.add_argument("--model", default=os.path.join(ROOT, "potentials", "si_gap.mlff"))
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 5], help="diamond cubic repeats")
    p.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_uncertainty_cost)

    p = sub.add_parser("memory", parents=[common],
                       help="peak memory and time of E+F+S against the number of atoms")
    p.add_argument("--model", default=os.path.join(ROOT, "potentials", "si_gap.mlff"))
    p.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 8, 10], help="diamond cubic repeats")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_memory)

    p = sub.add_parser("serve", parents=[common],
                       help="time and memory of E+F+S on 512 ... 64,000 Si atoms (optionally beside an earlier build)")
    p.add_argument("--model", default=os.path.join(ROOT, "potentials", "si_gap.mlff"))
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 12, 16, 20],
                   help="diamond cubic repeats n (8 n^3 atoms; default 512, 4,096, 13,824, 32,768, 64,000)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per size (after one warm-up)")
    p.add_argument("--before", default=None, metavar="DIR",
                   help="also time the checkout DIR (its extension built) and print current / before")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_serve)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
