"""Shared test settings: deterministic seeds, predictable threads, hypothesis profile."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("normbook", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "normbook"))


@pytest.fixture
def rng():
    """A seeded NumPy generator, fresh for each test."""
    return np.random.default_rng(0)


@pytest.fixture(params=["fused", "composite"])
def cpu_path(request, monkeypatch):
    """Run the test on each of normlib.torch's CPU paths: the fused Numba kernels (for every input
    they can take, however small) and the composite ops. Hypothesis tests may use
    it: the flags it sets hold for every example of the test."""
    from normlib.torch import core
    if request.param == "fused":
        pytest.importorskip("normlib.torch.numba_norm")
        monkeypatch.setattr(core, "MIN_RUN", 1)
        monkeypatch.setattr(core, "MIN_NUMEL", 0)
    monkeypatch.setattr(core, "CPU_KERNELS", request.param == "fused")
    return request.param
