import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def analytic_model():
    from analytic_potential import AnalyticTestPotential

    return AnalyticTestPotential(species=(13, 29), cutoff=4.5)
