"""Shared fixtures: the real data set (found as the package finds it) and small random texts."""
import numpy as np
import pytest

from tinygpt import data, ops



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
