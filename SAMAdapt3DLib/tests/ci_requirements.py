"""What a test needs from the environment: skip locally, FAIL in CI (CI=true).

A module of its own (not conftest) because the library's and the Slicer side's test folders both have a conftest.py:
`from conftest import ...` finds whichever was imported first when pytest collects both folders in one run.
"""
from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(why: str) -> None:
    """Something a test needs (an oracle, a wheel, data) is not installed: skip locally, FAIL in CI, so that a broken
    environment cannot hide the strongest tests."""
    if in_ci():
        pytest.fail(f"{why} (required in CI)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def require_module(name: str, install: str):
    """The imported module, or `missing` (skip locally, fail in CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not installed ({install})")
