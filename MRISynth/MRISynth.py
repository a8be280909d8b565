"""MRISynth Slicer module: a thin panel over the MRISynthLib library.

The library (``MRISynthLib``) does the work and never imports Slicer or Qt; this file
only builds the GUI and moves data between MRML nodes and the library.
"""
import os

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


class MRISynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MRISynth"
        self.parent.categories = ["Image Synthesis"]
        self.parent.dependencies = []
        self.parent.contributors = ["MRISynth developers"]
        self.parent.helpText = (
            "Deep-learning MRI contrast synthesis and reconstruction of undersampled k-space. "
            "See <a href='https://github.com/mrisynth/SlicerMRISynth'>the documentation</a>.")
        self.parent.acknowledgementText = (
            "Uses the BrainWeb brain model (Cocosco et al. 1997) as shipped by MRiLab (Liu et al. 2017).")


class MRISynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRISynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MRISynthLogic()
        self.layout.addStretch(1)


class MRISynthLogic(ScriptedLoadableModuleLogic):
    """Console-usable logic; capabilities are added as the library gains them."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)


class MRISynthTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_imports()

    def test_library_imports(self):
        import MRISynthLib
        from MRISynthLib.physics.signal import spin_echo

        self.assertTrue(MRISynthLib.__version__)
        self.assertAlmostEqual(float(spin_echo(1.0, 1.0, 0.1, 1e-9, 1e3)), 1.0, places=5)
        self.delayDisplay("MRISynthLib imports and computes")
