import os
import sys

# Threaded OpenBLAS makes small 3x3 matrix functions (ase's cell filters) orders of magnitude
# slower on a loaded 2-core machine; the tests time nothing, so use one BLAS thread.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Property-based tests explore new random cases on developers' machines; in CI they replay a
# fixed set, so that a red CI always means a reproducible failure.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def analytic_model():
    from analytic_potential import AnalyticTestPotential

    return AnalyticTestPotential(species=(13, 29), cutoff=4.5)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny test systems: one intra-op thread is ~10x faster than two on a loaded machine.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
