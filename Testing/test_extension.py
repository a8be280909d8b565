"""Static checks of the Slicer extension: CMake files, module file, library purity."""
import ast
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

LIB = ROOT / "MRISynthLib"


def _listed(cmake_text, var):
    m = re.search(rf"set\({var}\s+(.*?)\)", cmake_text, re.S)
    return [t for t in m.group(1).split() if not t.startswith("#")] if m else []


def test_library_cmake_lists_every_python_file():
    listed = set(_listed((LIB / "CMakeLists.txt").read_text(), "MODULE_PYTHON_SCRIPTS"))
    actual = {str(p.relative_to(LIB)) for p in LIB.rglob("*.py") if "__pycache__" not in p.parts}
    assert listed == actual, f"missing: {sorted(actual - listed)}, stale: {sorted(listed - actual)}"
    assert "WITH_SUBDIR" in (LIB / "CMakeLists.txt").read_text()
    resources = set(_listed((LIB / "CMakeLists.txt").read_text(), "MODULE_PYTHON_RESOURCES"))
    shipped = {str(p.relative_to(LIB)) for p in (LIB / "Resources").rglob("*") if p.is_file()}
    assert resources == shipped, f"missing: {sorted(shipped - resources)}, stale: {sorted(resources - shipped)}"


def test_top_level_cmake_follows_the_extension_template():
    t = (ROOT / "CMakeLists.txt").read_text()
    assert "project(MRISynth)" in t
    assert re.search(r'set\(EXTENSION_CATEGORY "Image Synthesis"\)', t)
    assert re.search(r'set\(EXTENSION_DEPENDS "?PyTorch"?\)', t)
    assert t.index("add_subdirectory(MRISynthLib)") < t.index("add_subdirectory(MRISynth)")


def test_module_resources_exist_and_module_classes_defined():
    mod = ROOT / "MRISynth"
    cm = (mod / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MRISynth")
    for f in _listed(cm, "MODULE_PYTHON_SCRIPTS") + _listed(cm, "MODULE_PYTHON_RESOURCES"):
        assert (mod / f).exists(), f
    tree = ast.parse((mod / "MRISynth.py").read_text())
    classes = {n.name: [b.id if isinstance(b, ast.Name) else b.attr for b in n.bases]
               for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["MRISynth"]
    assert "ScriptedLoadableModuleWidget" in classes["MRISynthWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["MRISynthLogic"]
    assert "ScriptedLoadableModuleTest" in classes["MRISynthTest"]


def test_ui_names_used_by_the_module_exist():
    ui = ET.parse(ROOT / "MRISynth/Resources/UI/MRISynth.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (ROOT / "MRISynth/MRISynth.py").read_text()))
    assert used <= names, used - names


def test_library_never_imports_slicer_or_qt():
    banned = {"slicer", "qt", "ctk", "vtk", "PySide6", "PyQt5", "PythonQt"}
    allowed = {"mrml.py"}  # the MRML helpers import slicer and vtk (never Qt) by design
    for p in LIB.rglob("*.py"):
        if p.name in allowed:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            for m in mods:
                assert m.split(".")[0] not in banned, f"{p}: imports {m}"


STUB = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f ${MY_SCRIPTS} ${MY_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
      message(FATAL_ERROR "${MY_NAME}: listed file ${f} does not exist")
    endif()
  endforeach()
  message(STATUS "scripted module ${MY_NAME}: ok")
endmacro()
macro(slicer_add_python_unittest)
endmacro()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_configures_with_a_stub_slicer(tmp_path):
    stub = tmp_path / "slicer"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB)
    (stub / "empty.cmake").write_text("")
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DSlicer_DIR={stub}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scripted module MRISynthLib: ok" in r.stdout and "scripted module MRISynth: ok" in r.stdout


def test_extensions_index_entry_matches_cmake():
    import json

    entry = json.loads((ROOT / "docs/ExtensionsIndex/MRISynth.json").read_text())
    t = (ROOT / "CMakeLists.txt").read_text()
    assert entry["category"] in t and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].startswith("https://") and entry["build_subdirectory"] == "."
