"""Threads of ase-mlff's compiled (C++) kernels: the one place their number is set.

The multithreaded kernels (the neighbour search ``_core.neighbor_list`` and the Verlet-skin
refresh ``_core.filter_pairs``, the family cores (MFF ``_core.mff_compute``, GAP, BPNN,
SchNet), the n-body GP Gram matrix ``_core.gp_gram``, SchNet's tabulated filters and SOAP) all
run on one persistent pool of worker threads, with the count this module sets::

    import ase_mlff
    ase_mlff.set_num_threads(4)          # from now on
    with ase_mlff.num_threads(1):        # for a block, then back
        atoms.get_forces()
    ase_mlff.get_num_threads()

Until :func:`set_num_threads` is called the count is :func:`default_num_threads`, read once
when ``ase_mlff`` is imported: ``ASE_MLFF_NUM_THREADS`` if set, else ``OMP_NUM_THREADS`` if set,
else ``torch.get_num_threads()``, capped by the CPUs this process may run on (its affinity
mask: ``taskset``, cpusets), and at least 1. An explicit :func:`set_num_threads` is taken as
given. torch's own threads (networks, sGDML kernels in torch) follow
``torch.set_num_threads``, not this setting.

A kernel may use fewer threads than configured where the work is too small to share (the
family cores' force gathers below 512 atoms, the neighbour search below about 6e4
candidate pairs, the skin refresh below 50,000 pairs); :func:`last_threads_used` reads
back what the last kernel call of the calling thread actually ran on. The pool's workers
are started when first needed and reused by every later call (:func:`pool_workers_created`
stays constant); lowering the count stops the surplus workers. For a given count the
results do not depend on how the threads are scheduled.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from typing import Iterator

from ._ext import _core
from ._warn import warn

#: environment variables read for the default, first set one wins
ENV_VARS = ("ASE_MLFF_NUM_THREADS", "OMP_NUM_THREADS")
#: largest accepted count (a guard against typos)
MAX_THREADS = int(_core.MAX_THREADS)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _env_count(var: str) -> int | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    first = raw.split(",")[0].strip()  # OMP_NUM_THREADS may list nested levels: "4,2"
    try:
        n = int(first)
    except ValueError:
        n = 0
    if n < 1:
        warn(f"ignoring {var}={raw!r}: not a positive integer", RuntimeWarning)
        return None
    return n


def default_num_threads() -> int:
    """The count used until :func:`set_num_threads` is called (see the module docstring)."""
    for var in ENV_VARS:
        n = _env_count(var)
        if n is not None:
            break
    else:
        import torch

        n = torch.get_num_threads()
    return max(1, min(n, available_cpus(), MAX_THREADS))


def _checked(n) -> int:
    if isinstance(n, bool):
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    try:
        value = operator.index(n)  # ints and numpy integers; not floats or strings
    except TypeError:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(f"number of threads must be between 1 and {MAX_THREADS}, got {value}")
    return value


def set_num_threads(n: int) -> None:
    """Run the compiled kernels on ``n`` threads (a positive integer, else ValueError)."""
    _core.set_num_threads(_checked(n))


def get_num_threads() -> int:
    """The thread count of the compiled kernels."""
    return int(_core.get_num_threads())


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[int]:
    """``with num_threads(n):`` runs the block's kernels on ``n`` threads, then restores the
    previous count (also when the block raises)."""
    n = _checked(n)
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        set_num_threads(before)


def last_threads_used() -> int:
    """Threads (the calling one included) that the last multithreaded kernel called from this
    thread ran on: the configured count, or fewer where the work was too small to share."""
    return int(_core.last_threads_used())


def pool_workers_created() -> int:
    """Worker threads started in this process so far; unchanged while the pool is reused."""
    return int(_core.pool_workers_created())


def _serial_below_from_env(default: int = 128) -> int:
    raw = os.environ.get("ASE_MLFF_SERIAL_BELOW", "").strip()
    if not raw:
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        warn(f"ignoring ASE_MLFF_SERIAL_BELOW={raw!r}: not a non-negative integer", RuntimeWarning)
        return default


#: structures with fewer atoms are evaluated with torch on the calling thread alone: their
#: parallel regions are too short to pay for a second thread, and when another process holds
#: a core the region waits for the thread that has none (Si GAP, 64 atoms, one busy-loop process
#: beside it: 19.9 ms on two threads against 8.1 on one; idle, one thread is as fast).
#: ``ASE_MLFF_SERIAL_BELOW`` (atoms, read once at import like the thread count) changes it; 0
#: turns it off.
SERIAL_BELOW = _serial_below_from_env()

_serial = threading.local()


@contextlib.contextmanager
def serial_torch_for(n_atoms: int | None) -> Iterator[None]:
    """Run torch on one thread inside the block when ``n_atoms`` is below the threshold
    (:data:`SERIAL_BELOW`; None: never, e.g. for a GPU), then restore the count
    (:func:`serial_torch`)."""
    if n_atoms is None or n_atoms >= SERIAL_BELOW:
        yield
        return
    with serial_torch():
        yield


@contextlib.contextmanager
def serial_torch() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the count. torch's count
    (OpenMP's) belongs to the calling thread, so each thread saves and restores its own;
    nested blocks restore once, when the outermost leaves. ``torch.set_num_threads`` also sets
    the count a thread starts with when it first uses torch, so a Python thread that does so
    while another is inside this block starts on one thread (and keeps that until it sets its
    own); threads that first use torch before or after are unaffected."""
    import torch

    depth = getattr(_serial, "depth", 0)
    if depth == 0:
        _serial.saved = torch.get_num_threads()
        if _serial.saved != 1:
            torch.set_num_threads(1)
    _serial.depth = depth + 1
    try:
        yield
    finally:
        _serial.depth -= 1
        if _serial.depth == 0 and _serial.saved != 1:
            torch.set_num_threads(_serial.saved)


def describe() -> str:
    """One line: the threads a run uses and whether idle OpenMP threads sleep (printed by
    ``ase-mlff md`` and ``relax``)."""
    import torch

    import ase_mlff

    policy = ase_mlff.OPENMP_WAIT_POLICY
    if policy is None:
        waits = ("idle OpenMP threads spin (torch was imported before ase_mlff, which could not set "
                 "OMP_WAIT_POLICY=PASSIVE: set it before starting Python)")
    elif policy.strip().upper() == "ACTIVE":
        waits = "idle OpenMP threads spin (OMP_WAIT_POLICY=ACTIVE)"
    else:
        waits = f"idle OpenMP threads sleep (OMP_WAIT_POLICY={policy})"
    below = SERIAL_BELOW
    serial = f" (1 below {below} atoms)" if below and torch.get_num_threads() > 1 else ""
    line = (f"threads: {get_num_threads()} for ase-mlff's kernels, {torch.get_num_threads()} for torch{serial}; "
            f"{waits}")
    if max(get_num_threads(), torch.get_num_threads()) > 1:
        line += "; on a machine shared with other work, OMP_NUM_THREADS=1 is often fastest for small systems"
    return line


_core.set_num_threads(default_num_threads())
