"""The module's .ui against the module file, and an offscreen screenshot of the panel."""
import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

UI = ROOT / "MRISynth/Resources/UI/MRISynth.ui"
MOD = ROOT / "MRISynth/MRISynth.py"


def _parameter_fields():
    tree = ast.parse(MOD.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MRISynthParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def _ui_parameter_names():
    out = {}
    for w in ET.parse(UI).iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[w.get("name")] = p.find("string").text
    return out


def test_every_ui_name_used_exists_and_parameters_match():
    names = {w.get("name") for w in ET.parse(UI).iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MOD.read_text()))
    assert used <= names, f"used in MRISynth.py but not in the .ui: {sorted(used - names)}"
    params = _ui_parameter_names()
    fields = _parameter_fields()
    assert set(params.values()) <= fields, f"SlicerParameterName without a parameter: {set(params.values()) - fields}"
    assert len(set(params.values())) == len(params), "two widgets bound to one parameter"
    # every user-facing parameter has a widget (device is chosen from a list filled at run time)
    assert fields - set(params.values()) <= {"device"}


def test_every_node_selector_gets_the_scene():
    # Slicer hands the scene to the panel's qMRMLWidget, which passes it on only through
    # these connections: a selector without one stays empty in Slicer
    root = ET.parse(UI).getroot()
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    fed = {c.findtext("receiver") for c in root.iter("connection")
           if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert "synthSecondVolumeSelector" in selectors and len(selectors) == 5
    assert selectors <= fed, f"selectors without the scene: {sorted(selectors - fed)}"


def test_task_choices_match_the_module_constants():
    tree = ast.parse(MOD.read_text())
    tasks = {n.value.value for n in tree.body if isinstance(n, ast.Assign)
             and n.targets[0].id.startswith("TASK_")}
    combo = next(w for w in ET.parse(UI).iter("widget") if w.get("name") == "taskComboBox")
    items = {i.find("property/string").text for i in combo.findall("item")}
    assert items == tasks and len(tasks) == 5
    directions = next(w for w in ET.parse(UI).iter("widget") if w.get("name") == "translateDirectionComboBox")
    from MRISynthLib.tasks.translate import DIRECTIONS
    assert [i.find("property/string").text for i in directions.findall("item")] == list(DIRECTIONS)
    cine = next(w for w in ET.parse(UI).iter("widget") if w.get("name") == "cineMethodComboBox")
    from MRISynthLib.tasks.cine import CINE_METHODS
    assert [i.find("property/string").text for i in cine.findall("item")] == list(CINE_METHODS)


def test_panel_loads_offscreen_and_screenshot(tmp_path):
    QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 not installed")
    from PySide6 import QtCore, QtUiTools

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])

    # stand-ins for the CTK / qMRML widget classes that only exist inside Slicer
    class ctkCollapsibleButton(QtWidgets.QGroupBox):
        def _get_text(self):
            return self.title()

        def _set_text(self, t):
            self.setTitle(t)

        text = QtCore.Property(str, _get_text, _set_text)
        collapsed = QtCore.Property(bool, lambda self: False, lambda self, v: None)

    class ctkSliderWidget(QtWidgets.QDoubleSpinBox):
        pass

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        def __init__(self, parent=None):
            super().__init__(parent)
            self.addItem("T2w (BrainWeb)")

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    class ctkPathLineEdit(QtWidgets.QLineEdit):
        pass

    loader = QtUiTools.QUiLoader()
    for cls in (ctkCollapsibleButton, ctkSliderWidget, qMRMLNodeComboBox, qMRMLWidget, ctkPathLineEdit):
        loader.registerCustomWidget(cls)
    f = QtCore.QFile(str(UI))
    assert f.open(QtCore.QFile.ReadOnly)
    w = loader.load(f)
    f.close()
    assert w is not None, loader.errorString()
    for name in ("inputVolumeSelector", "targetTESlider", "targetTRSlider", "applyButton", "modelComboBox",
                 "synthTISlider", "saveMapsCheckBox", "kspaceFilePathLineEdit", "reconMethodComboBox",
                 "translateDirectionComboBox", "inputSequenceSelector", "cineMethodComboBox", "cineAccelSlider",
                 "outputSequenceSelector", "synthSecondVolumeSelector", "synthSecondTESpinBox"):
        assert w.findChild(QtWidgets.QWidget, name) is not None, name
    te = w.findChild(QtWidgets.QWidget, "targetTESlider")
    assert te.maximum() == pytest.approx(1.0) and te.suffix() == " s"
    w.resize(400, w.sizeHint().height())
    w.show()
    app.processEvents()
    shot = tmp_path / "panel.png"
    assert w.grab().save(str(shot))
    assert shot.stat().st_size > 2000
    out = os.environ.get("MRISYNTH_SCREENSHOT")
    if out:  # MRISYNTH_SCREENSHOT=docs/panel.png python -m pytest Testing/test_module_ui.py refreshes it
        w.grab().save(out)
