"""What a test needs from the environment: skip locally, FAIL in CI (CI=true).

A module of its own (not conftest) because the library's and the Slicer side's test folders both have a conftest.py:
`from conftest import ...` finds whichever was imported first when pytest collects both folders in one run.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

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


def import_segment_anything():
    """segment-anything's modeling and registry, without its package __init__ (which imports
    torchvision for the predictor helpers; torchvision has no CPU build for our torch)."""
    if "segment_anything.build_sam" in sys.modules:
        return sys.modules["segment_anything.build_sam"], sys.modules["segment_anything.modeling"]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        missing("segment-anything is not installed (pip install --no-deps segment-anything)")
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = package
    import segment_anything.build_sam as build_sam
    import segment_anything.modeling as modeling

    return build_sam, modeling
