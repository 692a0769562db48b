"""Optional dependencies in tests: a skip where they are missing, a failure where CI requires
them (the environment variable names the requirement, so CI can never skip silently)."""
import importlib
import os

import pytest


def import_or_skip(required_by, *modules):
    """The modules, imported; missing ones skip the test, or fail it when $required_by is 1."""
    try:
        return tuple(importlib.import_module(name) for name in modules)
    except ImportError as err:
        if os.environ.get(required_by) == "1":
            pytest.fail(f"{required_by}=1 but {err.name} is not installed: {err}")
        pytest.skip(f"needs {', '.join(modules)} ({err})")
