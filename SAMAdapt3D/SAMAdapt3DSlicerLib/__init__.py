"""The SAMAdapt3D module's own code, kept in a package so that Slicer's module scanner, which takes every .py file
next to SAMAdapt3D.py for a module, sees only SAMAdapt3D.py.

- scene_bridge: MRML nodes <-> samadapt3d volumes, prompts and masks (MRML / VTK only);
- core: scene -> request -> session -> segment, Qt-free;
- training: fine-tuning's export of the scene and its `samadapt3d train` child process, Qt-free;
- logic: the parameter node and SAMAdapt3DLogic (Qt, worker thread);
- self_test: SAMAdapt3DTest, which runs inside Slicer.
scene_bridge, core and training are tested headless against slicer-core (Testing/).
"""
import os as _os

from . import dependencies as _dependencies

#: the library shipped with the extension (SAMAdapt3DLib), put on sys.path when this package is first imported:
#: the effect, the self-test and ctest import `samadapt3d` before (or without) the module's panel and its Logic
LIBRARY_DIR = _dependencies.put_library_on_path(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
