"""The extension's CMake really installs the library with the module (issue 13, part 4): configure SAMAdapt3D/ with
CMake under a stand-in for Slicer's build macro, build, install into a prefix laid out like an Extensions-Manager
install, and import the torch-free client from there (no checkout, no pip)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from SAMAdapt3DSlicerLib import dependencies

ROOT = Path(__file__).resolve().parents[1]
SCRIPTED = "lib/Slicer-5.8/qt-scripted-modules"

STUB = f"""
cmake_minimum_required(VERSION 3.16)
project(SAMAdapt3DPackagingCheck NONE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED})
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR {SCRIPTED})
set(BUILD_TESTING OFF)
# stand-in for Slicer's macro: builds and installs SCRIPTS and RESOURCES at their relative paths, as
# ctkMacroCompilePythonScript does (DESTINATION_DIR in the build tree, INSTALL_DIR in the package)
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
  foreach(f ${{MY_SCRIPTS}} ${{MY_RESOURCES}})
    if(NOT EXISTS ${{CMAKE_CURRENT_SOURCE_DIR}}/${{f}})
      message(FATAL_ERROR "listed but missing: ${{f}}")
    endif()
    get_filename_component(d ${{f}} DIRECTORY)
    file(COPY ${{CMAKE_CURRENT_SOURCE_DIR}}/${{f}} DESTINATION ${{CMAKE_BINARY_DIR}}/${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}/${{d}})
    install(FILES ${{CMAKE_CURRENT_SOURCE_DIR}}/${{f}} DESTINATION ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}/${{d}})
  endforeach()
endfunction()
add_subdirectory("{(ROOT / 'SAMAdapt3D').as_posix()}" SAMAdapt3D)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if shutil.which("cmake") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("cmake is needed for the packaging check")
        pytest.skip("cmake not installed")
    tmp = tmp_path_factory.mktemp("packaging")
    (tmp / "stub").mkdir()
    (tmp / "stub" / "CMakeLists.txt").write_text(STUB)
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(["cmake", "-S", str(tmp / "stub"), "-B", str(tmp / "build")], **run)
    subprocess.run(["cmake", "--build", str(tmp / "build")], **run)
    subprocess.run(["cmake", "--install", str(tmp / "build"), "--prefix", str(tmp / "install")], **run)
    return tmp


def test_library_is_installed_beside_the_module(installed):
    module_dir = installed / "install" / SCRIPTED
    assert (module_dir / "SAMAdapt3D.py").is_file()
    library = module_dir / "SAMAdapt3DLib"
    assert (library / "samadapt3d" / "client" / "__init__.py").is_file()
    assert (library / "pyproject.toml").is_file() and (library / "README.md").is_file()
    source = {p.relative_to(ROOT / "SAMAdapt3DLib") for p in (ROOT / "SAMAdapt3DLib" / "samadapt3d").rglob("*.py")}
    copied = {p.relative_to(library) for p in (library / "samadapt3d").rglob("*.py")}
    assert source == copied
    assert not list(library.rglob("__pycache__"))
    # Slicer's scanner reads the .py files directly in the module folder: only modules lie there
    assert sorted(p.name for p in module_dir.glob("*.py")) == ["SAMAdapt3D.py", "SegmentEditorSAMAdapt3D.py"]
    assert dependencies.find_library(str(module_dir)) == str(library)


def test_build_tree_has_the_library_for_ctest(installed):
    build_module_dir = installed / "build" / SCRIPTED
    assert (build_module_dir / "SAMAdapt3D.py").is_file()
    assert (build_module_dir / "SAMAdapt3DLib" / "samadapt3d" / "__init__.py").is_file()
    assert dependencies.find_library(str(build_module_dir)) == str(build_module_dir / "SAMAdapt3DLib")


def test_client_imports_from_the_install_alone(installed):
    """A Python that knows nothing but the installed module folder finds samadapt3d.client there."""
    module_dir = installed / "install" / SCRIPTED
    code = (f"import sys; sys.path.insert(0, {str(module_dir)!r}); "
            "from SAMAdapt3DSlicerLib import dependencies as d; "
            f"folder = d.put_library_on_path({str(module_dir)!r}); "
            "import samadapt3d.client, samadapt3d; print(folder); print(samadapt3d.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          cwd=str(installed))
    assert done.returncode == 0, done.stderr
    folder, package = done.stdout.split()
    assert folder == str(module_dir / "SAMAdapt3DLib")
    assert package.startswith(folder)  # the installed copy, not this checkout's (pip -e) one


def test_extensions_index_description():
    entry = json.loads((ROOT / "SAMAdapt3D.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0")
    assert entry["category"] == "Segmentation" and entry["scm_url"].startswith("https://github.com/")
    assert entry["scm_type"] == "git" and entry["build_dependencies"] == []


def test_a_clean_slicer_python_imports_the_library_through_the_package_alone(installed):
    """Slicer's Python without samadapt3d installed (no .pth files read: this checkout's editable install is not
    seen): the first import of SAMAdapt3DSlicerLib puts the installed library on the path, so the effect, the
    self-test and ctest work before (or without) the module's panel ever creating its Logic."""
    import site

    module_dir = installed / "install" / SCRIPTED
    code = (f"import sys; sys.path[:0] = [{str(module_dir)!r}, *{site.getsitepackages()!r}]\n"
            "try:\n    import samadapt3d\n    print('precondition failed: samadapt3d importable')\n"
            "except ImportError:\n    pass\n"
            "from SAMAdapt3DSlicerLib import scene_bridge  # the self-test's first import (needs samadapt3d)\n"
            "import samadapt3d.client; print(samadapt3d.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=60,
                          cwd=str(installed))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(module_dir / "SAMAdapt3DLib" / "samadapt3d")), done.stdout
