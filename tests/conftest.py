"""Shared test set-up: one Numba/tilefuse cache per test run, hypothesis profiles, goldens."""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# one compile cache per test run, shared by the xdist workers of that run
_RUN_CACHE = os.environ.setdefault(
    "TILEFUSE_TEST_CACHE", tempfile.mkdtemp(prefix="tilefuse-test-cache-")
)
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(_RUN_CACHE, "numba"))
# always this run's: the tests of first compiles (cache misses, self-checks, explanations)
# need a tilefuse cache that starts empty, also when `make test` runs twice in one checkout
os.environ["TILEFUSE_CACHE_DIR"] = os.path.join(_RUN_CACHE, "tilefuse")

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"


def gpu_present() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/proc/driver/nvidia/version"))


def use_cuda_simulator() -> None:
    """numba.cuda picks the simulator or the driver once, when it is first imported: choose
    the simulator before that, unless this machine has a GPU (the flag changes nothing for
    the CPU backend's @njit code). Test modules of the cuda target call this first."""
    import sys

    if "numba.cuda" not in sys.modules and not gpu_present():
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        import numba.core.config

        numba.core.config.reload_config()  # numba read its environment when it was imported


ROOT = pathlib.Path(__file__).parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens", action="store_true", help="rewrite tests/golden/ expected outputs"
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))
