"""Shared test setup (kept minimal on purpose: nothing happens at import time).

The repository root is the package ``facesmith`` (its name when pip-installed). The session fixture ``facesmith``
returns that package; if nothing has imported it yet, it is registered as a bare package pointing at the repository,
without running the pack's ``__init__`` (which imports every node module), as ``tests/tiny_models.py`` does.
"""
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def facesmith():
    if "facesmith" not in sys.modules:
        spec = importlib.machinery.ModuleSpec("facesmith", None, is_package=True)
        module = importlib.util.module_from_spec(spec)
        module.__path__ = [str(ROOT)]
        sys.modules["facesmith"] = module
    return sys.modules["facesmith"]
