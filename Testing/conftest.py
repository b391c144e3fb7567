"""Shared setup for the Slicer-side tests: a real MRML scene from the PyPI package slicer-core (headless)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "SAMAdapt3D"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def _import_slicer_core():
    try:
        import slicer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.exit(f"cannot import slicer ({exc}); install the PyPI package slicer-core: pip install slicer-core",
                    returncode=1)
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.exit(
            f"`import slicer` found {getattr(slicer, '__file__', '?')}, which is not slicer-core: the unrelated PyPI "
            "package `slicer` shadows it. Fix: pip uninstall -y slicer && pip install --force-reinstall slicer-core",
            returncode=1,
        )
    return slicer


@pytest.fixture
def scene():
    slicer = _import_slicer_core()
    scene = slicer.vtkMRMLScene()
    # the segmentations logic must know the scene before segments are added (default display / terminology)
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    yield scene
    logic.SetMRMLScene(None)
    scene.Clear(1)
