"""Threads of the compiled kernels: one setting (ase_mlff.set_num_threads), its default, the pool.

The default is ASE_MLFF_NUM_THREADS, else OMP_NUM_THREADS, else torch.get_num_threads(),
capped by the affinity mask; kernels read the configured count and report back what they
used (``last_threads_used``); their workers are started once and reused.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from ase.build import bulk

import ase_mlff
from ase_mlff import _ext, threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NI_MFF = os.path.join(ROOT, "potentials", "ni_mff.mlff")
# the checkout whose ase_mlff this process imported: child interpreters must import the same
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ase_mlff.__file__)))
CPUS = threads.available_cpus()


@pytest.fixture(autouse=True)
def restore_thread_count():
    before = ase_mlff.get_num_threads()
    yield
    ase_mlff.set_num_threads(before)


@pytest.fixture(scope="module")
def calc():
    return ase_mlff.load(NI_MFF)


def big_ni():
    """2048 atoms: the MFF core shares its centres and its force gathers among threads."""
    atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((8, 8, 8))
    atoms.rattle(0.05, seed=4)
    return atoms


def evaluate(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    calc.reset()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    return energy, forces, threads.last_threads_used()


# ----------------------------------------------------------------------------- the default
def _clean_env(monkeypatch, cpus=64, torch_threads=5):
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: cpus)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)


@pytest.mark.parametrize("env, expected", [
    ({"ASE_MLFF_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"}, 3),  # ours first
    ({"OMP_NUM_THREADS": "2"}, 2),
    ({"OMP_NUM_THREADS": "4,2"}, 4),  # OpenMP's nested list: the outer level
    ({}, 5),  # torch.get_num_threads()
])
def test_default_follows_environment_then_torch(monkeypatch, env, expected):
    _clean_env(monkeypatch)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert threads.default_num_threads() == expected


@pytest.mark.parametrize("env", [{"ASE_MLFF_NUM_THREADS": "8"}, {"OMP_NUM_THREADS": "8"}, {}])
def test_default_is_capped_by_the_affinity_mask(monkeypatch, env):
    _clean_env(monkeypatch, cpus=2, torch_threads=8)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert threads.default_num_threads() == 2


@pytest.mark.parametrize("bad", ["0", "-2", "four", "2.5"])
def test_unusable_environment_value_is_ignored_with_a_warning(monkeypatch, bad):
    _clean_env(monkeypatch)
    monkeypatch.setenv("ASE_MLFF_NUM_THREADS", bad)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with pytest.warns(RuntimeWarning, match="ASE_MLFF_NUM_THREADS"):
        assert threads.default_num_threads() == 3


CHILD = textwrap.dedent("""
    import json, os, sys
    cpus = sys.argv[1]
    if cpus != "-":  # pin this process before ase_mlff (and its default) is imported
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    import ase_mlff, torch
    from ase_mlff import threads
    report = {"file": ase_mlff.__file__, "count": ase_mlff.get_num_threads(),
              "torch": torch.get_num_threads(), "cpus": threads.available_cpus()}
    if sys.argv[2] == "compute":
        from ase.build import bulk
        atoms = bulk("Ni", "fcc", a=3.52, cubic=True).repeat((8, 8, 8))
        atoms.calc = ase_mlff.load(sys.argv[3])
        forces = atoms.get_forces()
        report["used"] = threads.last_threads_used()
        report["workers"] = threads.pool_workers_created()
        if hasattr(os, "fork"):  # the pool of a forked child: its own workers, same numbers
            pid = os.fork()
            if pid == 0:
                atoms.calc.reset()
                ok = (abs(atoms.get_forces() - forces).max() == 0.0
                      and threads.last_threads_used() == report["used"]
                      and threads.pool_workers_created() == report["used"] - 1)
                os._exit(0 if ok else 1)
            report["fork_ok"] = os.waitpid(pid, 0)[1] == 0
    print(json.dumps(report))
""")


def run_child(tmp_path, env, cpus="-", compute=False, prefix=()):
    full_env = {k: v for k, v in os.environ.items() if k not in threads.ENV_VARS}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    cmd = [*prefix, sys.executable, "-c", CHILD, cpus, "compute" if compute else "-", NI_MFF]
    proc = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert os.path.dirname(os.path.dirname(report["file"])) == PACKAGE_ROOT  # the package under test
    return report


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity masks")
def test_child_honours_environment_and_affinity_mask(tmp_path):
    one_cpu = str(min(os.sched_getaffinity(0)))
    # OMP_NUM_THREADS=2 in a process pinned to one CPU: one thread, and the kernel uses one
    report = run_child(tmp_path, {"OMP_NUM_THREADS": "2"}, cpus=one_cpu, compute=True)
    assert (report["cpus"], report["count"], report["used"], report["workers"]) == (1, 1, 1, 0)
    assert report["fork_ok"]
    # nothing set: torch's count (itself capped by the mask)
    report = run_child(tmp_path, {})
    assert report["count"] == max(1, min(report["torch"], report["cpus"]))
    if shutil.which("taskset"):  # the mask set from outside, as a job script would
        report = run_child(tmp_path, {"ASE_MLFF_NUM_THREADS": "2"}, prefix=("taskset", "-c", one_cpu))
        assert (report["cpus"], report["count"]) == (1, 1)


@pytest.mark.skipif(CPUS < 2, reason="needs two CPUs in the affinity mask")
def test_child_reads_ase_mlff_num_threads_before_omp(tmp_path):
    report = run_child(tmp_path, {"ASE_MLFF_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}, compute=True)
    assert (report["count"], report["used"], report["workers"]) == (2, 2, 1)
    assert report["fork_ok"]


# ----------------------------------------------------------------------------- the setting
def test_mff_kernel_uses_the_configured_count(calc):
    atoms = big_ni()
    ase_mlff.set_num_threads(2)
    assert ase_mlff.get_num_threads() == 2
    e2, f2, used2 = evaluate(calc, atoms)
    ase_mlff.set_num_threads(1)
    e1, f1, used1 = evaluate(calc, atoms)
    assert (used2, used1) == (2, 1)
    # each atom's energy and each pair's gradient come from one centre, and forces are gathered
    # per atom: the same numbers for any count
    assert e1 == e2
    assert np.array_equal(f2, f1)
    # small systems: the last step (the force gathers, below 512 atoms) stays on the calling thread
    ase_mlff.set_num_threads(2)
    assert evaluate(calc, bulk("Ni", "fcc", a=3.52, cubic=True).repeat((2, 2, 2)))[2] == 1


def test_same_count_gives_identical_numbers_from_concurrent_callers():
    """Two Python threads computing at once (one of them finds the pool busy and runs its
    tasks itself) get exactly the numbers of a lone caller with the same count."""
    ase_mlff.set_num_threads(2)
    calcs = [ase_mlff.load(NI_MFF) for _ in range(2)]
    atoms = big_ni()
    reference = evaluate(calcs[0], atoms)[1]
    results, errors = [], []

    def work(c):
        try:
            for _ in range(2):
                results.append(evaluate(c, atoms)[1])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(c,)) for c in calcs]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert len(results) == 4 and all(np.array_equal(f, reference) for f in results)


def test_pool_is_reused_across_calls(calc):
    atoms = big_ni()
    atoms.calc = calc
    ase_mlff.set_num_threads(2)
    atoms.get_forces()
    created = threads.pool_workers_created()
    assert _ext._core.pool_size() == 1
    for _ in range(8):  # MD-like: positions change, every call runs the kernel
        atoms.positions += 0.001
        atoms.get_forces()
        assert threads.last_threads_used() == 2
    assert threads.pool_workers_created() == created
    # lowering the count stops the surplus worker; raising it starts one only when needed
    ase_mlff.set_num_threads(1)
    assert _ext._core.pool_size() == 0
    ase_mlff.set_num_threads(2)
    assert _ext._core.pool_size() == 0
    atoms.positions += 0.001
    atoms.get_forces()
    assert threads.pool_workers_created() == created + 1 and _ext._core.pool_size() == 1


def _gram_input(rng, n_entries, n_groups, channels):
    x = rng.uniform(2.0, 4.0, size=(n_entries, 1))
    grp = np.sort(rng.integers(0, n_groups, size=n_entries))
    spec = np.zeros((n_entries, 2), dtype=np.int32)
    a = rng.normal(size=(n_entries, channels))
    b = rng.normal(size=(n_entries, channels, 1))
    return x, grp, spec, a, b, n_groups


def test_gram_matrix_is_identical_for_any_thread_count(rng):
    s1 = _gram_input(rng, 60, 12, 3)
    s2 = _gram_input(rng, 50, 9, 1)
    gram = lambda n: _ext._core.gp_gram(*s1, *s2, 0.7, False, n)  # noqa: E731
    ase_mlff.set_num_threads(1)
    k1 = gram(0)
    assert threads.last_threads_used() == 1
    ase_mlff.set_num_threads(2)
    k2 = gram(0)
    assert threads.last_threads_used() == 2
    k3 = gram(3)  # an explicit count in the call is used as given
    assert threads.last_threads_used() == 3
    assert np.array_equal(k1, k2) and np.array_equal(k1, k3)


def test_num_threads_context_restores_the_count():
    ase_mlff.set_num_threads(1)
    with ase_mlff.num_threads(2) as n:
        assert n == 2 and ase_mlff.get_num_threads() == 2
    assert ase_mlff.get_num_threads() == 1
    with pytest.raises(RuntimeError), ase_mlff.num_threads(3):
        raise RuntimeError("inside")
    assert ase_mlff.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None, True, threads.MAX_THREADS + 1])
def test_bad_counts_are_refused(bad):
    ase_mlff.set_num_threads(1)
    with pytest.raises(ValueError, match="number of threads"):
        ase_mlff.set_num_threads(bad)
    with pytest.raises(ValueError, match="number of threads"):
        with ase_mlff.num_threads(bad):
            pass  # pragma: no cover
    assert ase_mlff.get_num_threads() == 1


def test_numpy_integers_are_accepted_and_the_core_checks_too():
    ase_mlff.set_num_threads(np.int64(2))
    assert ase_mlff.get_num_threads() == 2
    with pytest.raises(ValueError):
        _ext._core.set_num_threads(0)
    with pytest.raises(ValueError):
        _ext._core.gp_gram(*_gram_input(np.random.default_rng(0), 4, 2, 1),
                           *_gram_input(np.random.default_rng(1), 4, 2, 1), 0.7, False, -1)
    assert ase_mlff.get_num_threads() == 2


def _fresh(code, **env):
    import subprocess
    import sys

    # a developer's own thread settings must not change what a fresh import does
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "ASE_MLFF_SERIAL_BELOW", "ASE_MLFF_NUM_THREADS")}
    full.update(env)
    # run outside the checkout: `python -c` puts the working directory first on sys.path, and the
    # checkout's ase_mlff/ has no compiled extension after `pip install .`
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def test_importing_ase_mlff_first_makes_idle_openmp_threads_sleep():
    """Spinning OpenMP workers made small models up to ~3x slower on a busy machine
    (docs/benchmarks.md, benchmarks/threads.py): ase_mlff sets
    OMP_WAIT_POLICY=PASSIVE before torch loads its runtime, keeps a user's value, and says when
    torch was loaded first and it could not."""
    code = "import ase_mlff, os, ase_mlff.threads as t; print(os.environ.get('OMP_WAIT_POLICY')); print(t.describe())"
    policy, line = _fresh(code)
    assert policy == "PASSIVE" and "idle OpenMP threads sleep" in line and "for torch" in line
    policy, line = _fresh(code, OMP_WAIT_POLICY="active")
    assert policy == "active" and "idle OpenMP threads spin (OMP_WAIT_POLICY=ACTIVE)" in line
    policy, line = _fresh("import torch; " + code)
    assert policy == "None" and "set it before starting Python" in line
    # the small-structure threshold is read from the environment at import; 0 turns it off
    code = ("import ase_mlff, torch, ase_mlff.threads as t; torch.set_num_threads(2); print(t.SERIAL_BELOW); "
            "print(t.describe())")
    assert _fresh(code, ASE_MLFF_SERIAL_BELOW="0")[0] == "0"
    below, line = _fresh(code)
    assert below == "128" and "2 for torch (1 below 128 atoms)" in line


def test_small_structures_run_torch_on_one_thread_and_restore_the_count(monkeypatch):
    """Below SERIAL_BELOW atoms a call runs torch on one thread (its parallel regions are too
    short to pay for a second thread, and wait for a descheduled one on a busy machine); the
    count is restored afterwards, in every thread that made such a call."""
    import threading as _threading

    import torch

    from ase_mlff.threads import SERIAL_BELOW, serial_torch_for

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}
        with serial_torch_for(SERIAL_BELOW - 1):
            seen["small"] = torch.get_num_threads()
        with serial_torch_for(SERIAL_BELOW):
            seen["large"] = torch.get_num_threads()
        with serial_torch_for(None):  # a GPU calculation
            seen["gpu"] = torch.get_num_threads()
        assert seen == {"small": 1, "large": 2, "gpu": 2} and torch.get_num_threads() == 2
        # torch's count belongs to each thread: calls in two threads at once each run on one
        # thread, this thread keeps its count, and both restore theirs when they leave
        inside, release = _threading.Barrier(3), _threading.Event()  # two callers and this thread
        during, after = [], []

        def call():
            torch.set_num_threads(2)
            with serial_torch_for(10):
                with serial_torch_for(10):  # nested: restored once, by the outer block
                    during.append(torch.get_num_threads())
                inside.wait(timeout=30)
                release.wait(timeout=30)
            after.append(torch.get_num_threads())

        workers = [_threading.Thread(target=call) for _ in range(2)]
        for w in workers:
            w.start()
        inside.wait(timeout=30)
        assert torch.get_num_threads() == 2
        release.set()
        for w in workers:
            w.join()
        assert during == [1, 1] and after == [2, 2] and torch.get_num_threads() == 2
        monkeypatch.setattr(ase_mlff.threads, "SERIAL_BELOW", 0)  # ASE_MLFF_SERIAL_BELOW=0: turned off
        with serial_torch_for(5):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_calculator_evaluates_small_structures_on_one_torch_thread(analytic_model):
    import torch
    from ase.build import bulk

    from ase_mlff.calculator import MLFFCalculator

    counts = []
    forward = type(analytic_model).forward

    def spy(self, graph):
        counts.append(torch.get_num_threads())
        return forward(self, graph)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        analytic_model.forward = spy.__get__(analytic_model)
        atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
        atoms.calc = MLFFCalculator(analytic_model)
        atoms.get_forces()
        atoms.calc.evaluate_batch([atoms])
        assert counts == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
