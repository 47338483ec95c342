"""Shared test settings: deterministic seeds, predictable threads, hypothesis profile."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("normbook", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "normbook"))


@pytest.fixture
def rng():
    """A seeded NumPy generator, fresh for each test."""
    return np.random.default_rng(0)
