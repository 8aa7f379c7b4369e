"""Test-session setup. Runs before any test module imports numba, so the CUDA simulator
switch set here takes effect: the CUDA kernels are tested on the CPU when no GPU is present."""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# "ci" (the default) derandomizes, so every run of `make test` draws the same examples;
# HYPOTHESIS_PROFILE=dev explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
