"""Static checks of the Slicer extension files (what CI can check without Slicer's GUI)."""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SAMAdapt3D"
LIB = MODULE / "SAMAdapt3DSlicerLib"


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SAMAdapt3D")
    scripts = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    listed = set(re.findall(r"[\w/]+\.(?:py|png|ui)", text))
    assert scripts <= listed, scripts - listed
    assert resources <= listed, resources - listed
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT SAMAdapt3D.py)" in text


def test_top_level_cmake_is_a_slicer_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needle in ("project(SAMAdapt3D)", "EXTENSION_HOMEPAGE", 'EXTENSION_CATEGORY "Segmentation"',
                   "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                   "EXTENSION_DEPENDS", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(SAMAdapt3D)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                   "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in text, needle
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_widgets_used_by_the_module_exist_in_the_ui_file():
    names = {w.get("name") for w in ET.parse(MODULE / "Resources/UI/SAMAdapt3D.ui").iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "SAMAdapt3D.py").read_text()))
    assert used <= names, used - names


def test_parameter_names_in_the_ui_match_the_parameter_node():
    tree = ET.parse(MODULE / "Resources/UI/SAMAdapt3D.ui")
    params = {p.findtext("string") for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    source = (LIB / "logic.py").read_text()  # the parameter node's fields
    for name in params:
        assert re.search(rf"^\s+{name}: ", source, re.M), name


def _imports(path):
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module or "")
    return out, path.read_text()


def test_bridge_and_core_import_no_gui():
    for name in ("scene_bridge.py", "segment_io.py", "core.py", "training.py", "downloads.py", "dependencies.py",
                 "server_control.py"):
        imports, text = _imports(LIB / name)
        assert not imports & {"qt", "ctk", "slicer.util", "slicer.ScriptedLoadableModule", "PythonQt"}, imports
        code = re.sub(r'""".*?"""', "", text, flags=re.S)  # docstrings may name what is avoided
        assert "slicer.app" not in code and "slicer.util" not in code and "mrmlScene" not in code


@pytest.mark.parametrize("path", ["SAMAdapt3D.py", "SAMAdapt3DSlicerLib/logic.py", "SAMAdapt3DSlicerLib/self_test.py"])
def test_module_installs_nothing_at_import(path):
    _, text = _imports(MODULE / path)
    top = ast.parse(text).body
    top_imports = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    top_imports |= {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not {"torch", "samadapt3d"} & {m.split(".")[0] for m in top_imports if m}
    assert not any(isinstance(n, ast.Expr) and "pip_install" in ast.unparse(n) for n in top)


def test_slicer_finds_logic_and_test_in_the_module_file():
    """Slicer looks up <Module>Logic / <Module>Test in the module's own namespace."""
    tree = ast.parse((MODULE / "SAMAdapt3D.py").read_text())
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"SAMAdapt3D", "SAMAdapt3DWidget"} <= defined
    assert {"SAMAdapt3DLogic", "SAMAdapt3DTest"} <= imported


def test_only_modules_lie_where_slicer_scans_for_modules():
    """Slicer's scripted-module factory loads every .py file in the module folder as a module named after the file
    (a helper there fails to load, or worse, a class of that name is instantiated as a module): only the setup
    module and the hidden module that registers the Segment Editor effect lie there, each defining its class."""
    assert sorted(p.name for p in MODULE.glob("*.py")) == ["SAMAdapt3D.py", "SegmentEditorSAMAdapt3D.py"]
    tree = ast.parse((MODULE / "SegmentEditorSAMAdapt3D.py").read_text())
    assert "SegmentEditorSAMAdapt3D" in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "self.parent.hidden = True" in ast.unparse(tree)


def test_every_mrml_widget_in_the_ui_gets_the_scene():
    """Slicer's scripted-module template: each MRML widget needs mrmlSceneChanged -> setMRMLScene from the root."""
    tree = ET.parse(MODULE / "Resources/UI/SAMAdapt3D.ui")
    root = tree.getroot().find("widget")
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class", "").startswith("qMRML") and w is not root}
    connected = {c.findtext("receiver") for c in tree.iter("connection")
                 if c.findtext("sender") == root.get("name") and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml and mrml <= connected, mrml - connected


def test_cmake_installs_the_library_with_the_module():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert re.search(r"install\(DIRECTORY \$\{SAMADAPT3D_LIBRARY_SOURCE\}/samadapt3d", text)
    assert "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/SAMAdapt3DLib" in text
    assert "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/SAMAdapt3DLib" in text  # the ctest build tree


def test_slicer_side_never_imports_torch():
    """Models run in the server's process; Slicer's Python imports neither torch nor the torch-using library parts."""
    heavy = {"torch", "samadapt3d.session", "samadapt3d.models", "samadapt3d.families", "samadapt3d.engines"}
    for path in [MODULE / "SAMAdapt3D.py", *LIB.glob("*.py")]:
        imports, _ = _imports(path)
        found = {m for m in imports if m and any(m == h or m.startswith(h + ".") for h in heavy)}
        assert not found, (path.name, found)
