"""Shared fixtures: the real data set (found as the package finds it) and small random texts;
and the Hypothesis profile every property test runs under."""
import numpy as np
import pytest
from hypothesis import settings

from tinygpt import data, ops

# Property tests draw the same examples on every run and every machine (derandomize: examples
# come from a hash of the test, not from a random seed), and keep no example database, so a CI
# failure is a failure of the code, reproducible locally, not of a lucky draw or a stale
# .hypothesis directory. No deadline: timing on a loaded machine is not a property. Each test
# keeps its own max_examples.
settings.register_profile("tinygpt", derandomize=True, database=None, deadline=None,
                          print_blob=True)
settings.load_profile("tinygpt")


@pytest.fixture(scope="session")
def shakespeare_path():
    """tiny_shakespeare, found where the package finds it ($TINYGPT_DATA, the user cache, a
    download); a missing copy fails the test, never skips it."""
    try:
        return data.dataset_path()
    except (OSError, ValueError) as err:
        pytest.fail(f"tiny_shakespeare not found: {err}")


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path):
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture(params=["numpy", "cython"])
def backend(request):
    """Run a test on each backend, restoring the previous one afterwards."""
    previous = ops.get_backend()
    ops.set_backend(request.param)
    yield request.param
    ops.set_backend(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
