"""Shared fixtures: the real data set (from $TINYGPT_DATA or ../shared) and small random texts."""
import os
from pathlib import Path

import numpy as np
import pytest

from tinygpt import ops

REPO = Path(__file__).resolve().parent.parent


def data_path():
    """Where the verified tiny_shakespeare copy lies; a missing copy fails the test, never skips it."""
    env = os.environ.get("TINYGPT_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "tinyshakespeare.txt")
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail("tiny_shakespeare not found: set TINYGPT_DATA to ../shared/data/tinyshakespeare.txt")


@pytest.fixture(scope="session")
def shakespeare_path():
    return data_path()


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
