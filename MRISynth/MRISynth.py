"""MRISynth Slicer module: a thin panel over the MRISynthLib library.

The library (``MRISynthLib``) does the work and never imports Qt; this file builds the
GUI, keeps every setting in a parameter node (saved with the scene), and calls the MRML
helpers of ``MRISynthLib.mrml``. Console use::

    logic = slicer.util.getModuleLogic("MRISynth")
    out = logic.reparameterize(inputNode, targetTE=0.09, targetTR=3.0, inputTE=0.05, inputTR=4.5)
"""
import os
import pathlib
import shutil
import sys
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.util import VTKObservationMixin

try:
    from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode
except ImportError:  # pragma: no cover
    vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode = "vtkMRMLScalarVolumeNode", "vtkMRMLSequenceNode"

REQUIREMENTS = os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")


class MRISynth(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MRISynth"
        self.parent.categories = ["Image Synthesis"]
        self.parent.dependencies = []
        self.parent.contributors = ["MRISynth developers"]
        self.parent.helpText = (
            "Deep-learning MRI contrast synthesis: re-parameterize a spin-echo volume to another "
            "TE/TR (Param-Net, after Narang et al. 2022). See "
            "<a href='https://github.com/mrisynth/SlicerMRISynth'>the documentation</a>.")
        self.parent.acknowledgementText = (
            "Trained on the BrainWeb brain model (Cocosco et al. 1997) as shipped by MRiLab (Liu et al. 2017).")
        # sample data appear in the Sample Data module once the application has started
        slicer.app.connect("startupCompleted()", registerSampleData)


SAMPLE_CATEGORY = "MRISynth"


def registerSampleData():
    """Register the shipped samples (MRISynthLib/Resources/sample_data) with Sample Data.

    Sample Data copies each file into Slicer's cache and checks its SHA256. Clicking a volume
    loads it with its TE/TR recorded on the node; the k-space file is set as the
    reconstruction input of this module's panel.
    """
    import SampleData
    from MRISynthLib.sampledata import load_samples  # json and paths only: works before torch is installed

    if not hasattr(slicer.modules, "sampleDataSources"):
        slicer.modules.sampleDataSources = {}
    sources = slicer.modules.sampleDataSources.setdefault(SAMPLE_CATEGORY, [])
    for s in load_samples().values():
        source = SampleData.SampleDataSource(
            sampleName=s.name, sampleDescription=s.title, uris=s.uri(), fileNames=s.file,
            nodeNames=s.name if s.kind == "volume" else None, checksums=s.checksum(),
            loadFiles=s.kind == "volume", thumbnailFileName=str(s.thumbnail_path()),
            customDownloader=lambda source, name=s.name: loadSample(name))
        if not SampleData.SampleDataLogic.isSampleDataSourceRegistered(SAMPLE_CATEGORY, source):
            sources.append(source)


def loadSample(name):
    """Fetch an MRISynth sample through Sample Data (cache + SHA256 check). A volume sample is
    loaded with its TE/TR recorded on the node and returned; for the k-space sample the file
    path is returned and set as the reconstruction input of the module's parameter node."""
    import SampleData
    from MRISynthLib.mrml import set_acquisition
    from MRISynthLib.sampledata import load_samples

    s = load_samples()[name]
    got = SampleData.SampleDataLogic().downloadFromURL(
        uris=s.uri(), fileNames=s.file, nodeNames=s.name if s.kind == "volume" else None,
        checksums=s.checksum(), loadFiles=s.kind == "volume")
    if not got:
        raise RuntimeError(f"loading the sample {name} failed (see the log)")
    if s.kind == "volume":
        set_acquisition(got[0], s.acquisition)
        return got[0]
    p = MRISynthLogic().getParameterNode()
    p.task, p.reconSource, p.kspaceFile = TASK_RECON, RECON_FROM_FILE, pathlib.Path(got[0])
    return got[0]


def ensureDependencies(askUser=True):
    """Install what MRISynthLib needs on first use, after the user agrees; never at import.

    torch comes through the PyTorch extension (it picks the CUDA build); the rest through
    pip with Resources/requirements.txt (>= bounds), never replacing Slicer's SimpleITK.
    """
    missing = []
    for mod in ("torch", "h5py", "safetensors", "tqdm", "scipy", "zuko"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if not missing:
        return True
    if askUser and not slicer.util.confirmOkCancelDisplay(
            f"MRISynth needs these Python packages: {', '.join(missing)}. Install them now?",
            "MRISynth dependencies"):
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("torch is missing: install the PyTorch extension from the Extensions Manager")
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise RuntimeError("installing torch through the PyTorch extension failed")
    try:
        import slicer.pydeps as pydeps  # Slicer 5.11+
    except ImportError:
        pydeps = None
    if pydeps is not None:
        pydeps.pip_ensure(pydeps.load_requirements(REQUIREMENTS), requester="MRISynth")
    else:
        slicer.util.pip_install(f"-r {REQUIREMENTS}")
    return True


TASK_REPARAM = "Contrast re-parameterization (TE/TR)"
TASK_SYNTH = "Physics-informed synthesis (any contrast)"
TASK_RECON = "Multi-coil reconstruction (k-space)"
TASK_TRANSLATE = "T1w / T2w translation (CycleGAN)"
TASK_CINE = "Cine reconstruction (2D+time)"
APPLY_TIPS = {TASK_REPARAM: "Synthesize the target spin-echo contrast for the whole volume",
              TASK_SYNTH: "Estimate PD/T1/T2 and render the target contrast for the whole volume",
              TASK_RECON: "Reconstruct the undersampled k-space",
              TASK_TRANSLATE: "Translate the whole volume slice by slice",
              TASK_CINE: "Undersample the sequence (ky-t) and reconstruct it into a new sequence"}
RECON_FROM_FILE = "k-space file (HDF5)"


@parameterNodeWrapper
class MRISynthParameterNode:
    """Every GUI setting; saved with the scene. Times in seconds, flip angle in degrees."""

    task: str = TASK_REPARAM
    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    inputTE: float = 0.05
    inputTR: float = 4.5
    targetTE: float = 0.09
    targetTR: float = 3.0
    model: str = "d2p"
    device: str = "auto"
    livePreview: bool = False
    synthSequence: str = "ir"
    synthTE: float = 0.12
    synthTR: float = 9.0
    synthTI: float = 2.5
    synthFlip: float = 30.0
    synthSecondVolume: vtkMRMLScalarVolumeNode
    synthSecondTE: float = 0.015
    synthSecondTR: float = 0.6
    synthAssist: bool = False
    synthNull: str = "none"
    saveMaps: bool = False
    liveRender: bool = False
    reconSource: str = "input volume (simulated)"
    kspaceFile: pathlib.Path = pathlib.Path()
    reconMask: str = "vd1d"
    reconAccel: float = 4.0
    reconMethod: str = "cs"
    translateDirection: str = "t1_to_t2"
    inputSequence: vtkMRMLSequenceNode
    outputSequence: vtkMRMLSequenceNode
    cineAccel: float = 5.0
    cineMethod: str = "cascade"
    runInBackground: bool = True


class MRISynthWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiObservation = None
        self._running = False
        self._cancelRequested = False
        self._job = None
        self._showingTI = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MRISynth.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MRISynthLogic()
        self.ui.deviceComboBox.clear()
        for label, value in MRISynthLogic.deviceChoices():
            self.ui.deviceComboBox.addItem(label, value)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelsFolderButton.connect("clicked(bool)", self.onModelsFolder)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        for slider in (self.ui.targetTESlider, self.ui.targetTRSlider):
            slider.connect("valueChanged(double)", self.onTargetChanged)
        for slider in (self.ui.synthTESlider, self.ui.synthTRSlider, self.ui.synthTISlider, self.ui.synthFlipSlider):
            slider.connect("valueChanged(double)", self.onSynthTargetChanged)
        for combo in (self.ui.synthSequenceComboBox, self.ui.synthNullComboBox):
            combo.connect("currentIndexChanged(int)", self.onSynthTargetChanged)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.synthSecondVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSecondInputChanged)
        self.ui.progressBar.setVisible(False)
        self.initializeParameterNode()
        self.layout.addStretch(1)

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiObservation)
            self._guiObservation = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiObservation)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._guiObservation = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()
            self.onTaskChanged()

    def onTaskChanged(self, index=None):
        task = self._parameterNode.task if self._parameterNode is not None else TASK_REPARAM
        self.ui.targetCollapsibleButton.setVisible(task == TASK_REPARAM)
        self.ui.synthCollapsibleButton.setVisible(task == TASK_SYNTH)
        self.ui.reconCollapsibleButton.setVisible(task == TASK_RECON)
        self.ui.translateCollapsibleButton.setVisible(task == TASK_TRANSLATE)
        self.ui.cineCollapsibleButton.setVisible(task == TASK_CINE)

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameterNode
        if self._running:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        # with 'TI nulls' set the TI comes from the estimate; the slider then shows the TI used
        self.ui.synthTISlider.enabled = p is None or p.synthNull == "none"
        problem = MRISynthLogic.validateSettings(p)
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or APPLY_TIPS.get(p.task, "")

    def onInputChanged(self, node):
        self._timesFromNode(node, "inputTE", "inputTR", "input")

    def onSecondInputChanged(self, node):
        self._timesFromNode(node, "synthSecondTE", "synthSecondTR", "second input")

    def _timesFromNode(self, node, teName, trName, label):
        # TE/TR recorded on the node (samples, MRISynth outputs) or in its DICOM header
        acq = MRISynthLogic.acquisitionFromNode(node) if node else {}
        if acq.get("te") and acq.get("tr") and self._parameterNode:
            setattr(self._parameterNode, teName, acq["te"])
            setattr(self._parameterNode, trName, acq["tr"])
            self.log(f"{label} TE/TR of {node.GetName()}: {acq['te'] * 1e3:g} / {acq['tr'] * 1e3:g} ms")

    def onDeviceChanged(self, index):
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onTargetChanged(self, value):
        if self._parameterNode and self._parameterNode.livePreview and not self._running:
            with slicer.util.tryWithErrorDisplay("Preview failed.", waitCursor=True):
                self.logic.previewRedSlice(self._parameterNode)

    def onSynthTargetChanged(self, value=None):
        p = self._parameterNode
        if self._showingTI or not (p and p.liveRender and p.task == TASK_SYNTH and p.outputVolume
                                   and not self._running):
            return
        if MRISynthLogic.validateSettings(p) is None:  # maps are cached: this only re-renders
            with slicer.util.tryWithErrorDisplay("Re-render failed.", waitCursor=True):
                self.logic.synthesizeFromParameters(p, withMaps=False)

    def _showNulledTI(self, out):
        # the TI slider shows the TI that 'TI nulls' chose (without re-rendering for it)
        ti = MRISynthLogic.nulledTI(self._parameterNode, out)
        if ti is not None:
            self._showingTI = True
            try:
                self._parameterNode.synthTI = ti
            finally:
                self._showingTI = False

    def onModelsFolder(self):
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(MRISynthLogic.modelsFolder()))

    def log(self, text):
        self.ui.logBox.appendPlainText(text)
        slicer.app.processEvents()

    def onApplyButton(self):
        if self._running:
            self._cancelRequested = True
            self.log("cancelling...")
            if self._job is not None:
                self._job.cancel()
            return
        p = self._parameterNode
        if p.runInBackground:
            self.startBackgroundRun(p)
            return
        self._running, self._cancelRequested = True, False
        self._checkCanApply()
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        start = time.time()

        def progress(fraction):
            self.ui.progressBar.value = int(100 * fraction)
            self.ui.statusLabel.text = f"running... {time.time() - start:.1f} s"
            slicer.app.processEvents()  # chunked in-process work: the GUI stays responsive

        try:
            with slicer.util.tryWithErrorDisplay(f"{p.task} failed.", waitCursor=True):
                if not ensureDependencies():
                    return
                cancel = lambda: self._cancelRequested  # noqa: E731
                if p.task == TASK_SYNTH:
                    out = self.logic.synthesizeFromParameters(p, cancel=cancel, progress=progress)
                    self._showNulledTI(out)
                elif p.task == TASK_CINE:
                    seq = self.logic.reconstructCine(p.inputSequence, method=p.cineMethod, accel=p.cineAccel,
                                                     device=p.device, outputSequence=p.outputSequence,
                                                     cancel=cancel, progress=progress)
                    p.outputSequence = seq
                    self.log(f"{seq.GetName()}: {seq.GetNumberOfDataNodes()} frames in {time.time() - start:.1f} s")
                    return
                elif p.task == TASK_TRANSLATE:
                    out = self.logic.translate(p.inputVolume, p.translateDirection, device=p.device,
                                               outputNode=p.outputVolume, cancel=cancel, progress=progress)
                elif p.task == TASK_RECON:
                    fromFile = p.reconSource == RECON_FROM_FILE
                    out = self.logic.reconstruct(None if fromFile else p.inputVolume,
                                                 str(p.kspaceFile) if fromFile else None, method=p.reconMethod,
                                                 mask=p.reconMask, accel=p.reconAccel, device=p.device,
                                                 outputNode=p.outputVolume, cancel=cancel, progress=progress)
                else:
                    out = self.logic.reparameterize(p.inputVolume, p.targetTE, p.targetTR, p.inputTE, p.inputTR,
                                                    model=p.model, device=p.device, outputNode=p.outputVolume,
                                                    cancel=cancel, progress=progress)
                p.outputVolume = out
                slicer.util.setSliceViewerLayers(background=out, fit=True)
                self.log(f"{out.GetName()}: done in {time.time() - start:.1f} s")
        finally:
            self._running = False
            self.ui.progressBar.setVisible(False)
            self.ui.statusLabel.text = "cancelled" if self._cancelRequested else ""
            self._checkCanApply()

    def startBackgroundRun(self, p):
        """Run the task in a PythonSlicer process; Apply becomes Cancel until it ends."""
        start = time.time()

        def progress(fraction):
            self.ui.progressBar.value = int(100 * fraction)
            self.ui.statusLabel.text = f"running in the background... {time.time() - start:.1f} s"

        def done(out, error):
            self._job, self._running = None, False
            self.ui.progressBar.setVisible(False)
            self.ui.statusLabel.text = ""
            if error:
                self.log(f"failed: {error}")
                slicer.util.errorDisplay(f"{p.task} failed.", detailedText=error)
            elif out is None:
                self.log("cancelled; nothing was added to the scene")
                self.ui.statusLabel.text = "cancelled"
            else:
                if isinstance(out, tuple):  # synthesis: (output, maps)
                    out = out[0]
                    self._showNulledTI(out)
                if out.IsA("vtkMRMLSequenceNode"):
                    p.outputSequence = out
                else:
                    p.outputVolume = out
                    slicer.util.setSliceViewerLayers(background=out, fit=True)
                self.log(f"{out.GetName()}: done in {time.time() - start:.1f} s (background process)")
            self._checkCanApply()

        with slicer.util.tryWithErrorDisplay(f"{p.task} could not start.", waitCursor=True):
            if not ensureDependencies():
                return
            self._running, self._cancelRequested = True, False
            try:
                self._job = self.logic.startBackground(p, onProgress=progress, onLog=self.log, onDone=done)
            except Exception:
                self._running = False
                raise
            finally:
                self._checkCanApply()
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)


def pythonSlicerExecutable():
    """The interpreter for background runs: PythonSlicer (Slicer's Python with its libraries)."""
    return shutil.which("PythonSlicer") or sys.executable


class BackgroundRun:
    """One task as ``PythonSlicer -m MRISynthLib --progress-lines <task> ...`` in a qt.QProcess.

    The inputs are written into a fresh work folder (NRRD/HDF5, see MRISynthLib.jobs), the
    process reports progress on stdout, and when it succeeds its outputs are put into the
    scene (MRISynthLib.mrml.job_result_to_scene: same names, geometry and study as an
    in-process run). cancel() kills the process. The work folder is always removed and
    nothing is added to the scene unless the run succeeded. ``onDone(node, error)`` gets the
    output (None when cancelled or failed) and the error text (None unless it failed).
    ``secondNode``: synthesis's optional second input (with ``settings["second_input"]`` true).
    """

    def __init__(self, task, settings, inputNode=None, kspaceFile=None, outputNode=None, onProgress=None,
                 onLog=None, onDone=None, secondNode=None):
        import MRISynthLib
        from MRISynthLib import jobs, mrml

        self.task, self.settings = task, settings
        self.inputNode, self.outputNode = inputNode, outputNode
        self.onProgress, self.onLog, self.onDone = onProgress, onLog, onDone
        self.cancelled, self.finished = False, False
        self.stderr = ""
        self.parser = jobs.ProgressParser()
        self.workdir = jobs.new_workdir()
        try:
            mrml.write_job_inputs(task, self.workdir, settings, input_node=inputNode, kspace_file=kspaceFile,
                                  second_node=secondNode)
        except Exception:
            jobs.cleanup(self.workdir)
            raise
        args = jobs.command(task, self.workdir, settings, python=pythonSlicerExecutable())
        env = qt.QProcessEnvironment.systemEnvironment()
        libParent = os.path.dirname(os.path.dirname(os.path.abspath(MRISynthLib.__file__)))
        env.insert("PYTHONPATH", os.pathsep.join(filter(None, [libParent, env.value("PYTHONPATH")])))
        self.proc = qt.QProcess()
        self.proc.setProcessEnvironment(env)
        self.proc.readyReadStandardOutput.connect(self._onStdout)
        self.proc.readyReadStandardError.connect(self._onStderr)
        self.proc.finished.connect(lambda *args: self._onFinished())
        self.proc.errorOccurred.connect(self._onError)  # e.g. the interpreter could not be started
        if self.onLog:
            self.onLog("background: " + " ".join(args[1:]))
        self.proc.start(args[0], args[1:])

    def _onStdout(self):
        text = self.proc.readAllStandardOutput().data().decode(errors="replace")
        for fraction in self.parser.feed(text):
            if self.onProgress:
                self.onProgress(fraction)

    def _onStderr(self):
        self.stderr += self.proc.readAllStandardError().data().decode(errors="replace")

    def cancel(self):
        self.cancelled = True
        self.proc.kill()

    def _onError(self, *args):
        if self.proc.error() == qt.QProcess.FailedToStart:  # no finished() follows
            self._onFinished(f"could not start {self.proc.program()}: {self.proc.errorString()}")

    def _onFinished(self, startError=None):
        from MRISynthLib import jobs, mrml

        if self.finished:
            return
        self.finished = True
        self._onStdout()
        self._onStderr()
        out, error = None, None
        try:
            if startError:
                error = startError
            elif self.cancelled:
                pass
            elif self.proc.exitStatus() == qt.QProcess.NormalExit and self.proc.exitCode() == 0:
                for message in self.parser.messages:
                    if self.onLog:
                        self.onLog(message)
                result = jobs.read_outputs(self.task, self.workdir, save_maps=self.settings.get("save_maps", False))
                out = mrml.job_result_to_scene(slicer.mrmlScene, self.task, result, self.settings,
                                               input_node=self.inputNode, output_node=self.outputNode)
            else:
                error = self.stderr.strip() or f"the process ended with status {self.proc.exitCode()}"
        except Exception as e:  # reading or placing the result failed: report, add nothing more
            error = str(e)
        finally:
            jobs.cleanup(self.workdir)
        if self.onDone:
            self.onDone(out, error)


class MRISynthLogic(ScriptedLoadableModuleLogic):
    """Console-usable logic; a thin shell over MRISynthLib.mrml."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MRISynthParameterNode(super().getParameterNode())

    @staticmethod
    def deviceChoices():
        try:
            from MRISynthLib.device import available_devices
            return available_devices()
        except ImportError:  # torch not installed yet
            return [("Auto", "auto"), ("CPU", "cpu")]

    @staticmethod
    def modelsFolder():
        from MRISynthLib.catalog import MODELS_DIR
        return str(MODELS_DIR)

    @staticmethod
    def acquisitionFromNode(node):
        from MRISynthLib.mrml import acquisition_from_node
        return acquisition_from_node(node)

    @staticmethod
    def nulledTI(p, node):
        """The TI that a synthesis nulling a tissue used (recorded on its output node), else None."""
        if node is None or MRISynthLogic.nullFromParameters(p) is None:
            return None
        return MRISynthLogic.acquisitionFromNode(node).get("ti")

    @staticmethod
    def validateSettings(p):
        """None when the settings can run, else the reason (shown as the Apply tooltip)."""
        if p is None:
            return "Select an input volume"
        if p.task == TASK_CINE:
            if not p.inputSequence:
                return "Select an input sequence"
            if p.outputSequence and p.outputSequence == p.inputSequence:
                return "The output must not be the input sequence"
            return None if p.cineAccel >= 2 else "The acceleration must be at least 2"
        if p.outputVolume and p.outputVolume == p.inputVolume:
            return "The output must not be the input volume"
        if p.task == TASK_RECON:
            if p.reconSource == RECON_FROM_FILE:
                return None if p.kspaceFile.is_file() else "Choose an existing k-space HDF5 file"
            if not p.inputVolume:
                return "Select an input volume"
            return None if p.reconAccel >= 1 else "The acceleration must be at least 1"
        if not p.inputVolume:
            return "Select an input volume"
        if p.task == TASK_TRANSLATE:
            return None
        synth = p.task == TASK_SYNTH
        target = (p.synthTE, p.synthTR) if synth else (p.targetTE, p.targetTR)
        times = [((p.inputTE, p.inputTR), "input"), (target, "target")]
        if synth and p.synthSecondVolume:
            if p.synthSecondVolume == p.inputVolume:
                return "The second input must be another volume than the input"
            if p.outputVolume and p.outputVolume == p.synthSecondVolume:
                return "The output must not be the second input"
            times.append(((p.synthSecondTE, p.synthSecondTR), "second input"))
        for (te, tr), what in times:
            if not (0 < te < tr):
                return f"The {what} TE must be positive and shorter than TR"
        if synth and p.synthSequence == "ir" and not (0 < p.synthTI < p.synthTR - p.synthTE):
            return "TI must lie between 0 and TR - TE"
        if synth and p.synthNull != "none" and p.synthSequence != "ir":
            return "Nulling a tissue needs the ir (inversion recovery) sequence"
        if synth and p.synthSequence == "gre" and not (0 < p.synthFlip <= 180):
            return "The flip angle must lie in (0, 180] degrees"
        return None

    @staticmethod
    def nullFromParameters(p):
        """The tissue whose estimated T1 sets TI ("csf", "fat"), or None (TI as set)."""
        return p.synthNull if p.synthSequence == "ir" and p.synthNull != "none" else None

    @staticmethod
    def targetFromParameters(p):
        from MRISynthLib.physics.signal import SequenceParams
        return SequenceParams(p.synthSequence, p.synthTE, p.synthTR,
                              ti=p.synthTI if p.synthSequence == "ir" else None,
                              flip=p.synthFlip if p.synthSequence == "gre" else None)

    def synthesize(self, inputNode, target, inputTE=None, inputTR=None, device="auto", outputNode=None,
                   saveMaps=False, cancel=None, progress=None, secondNode=None, secondTE=None, secondTR=None,
                   assist=False, null=None):
        """Render ``target`` (a MRISynthLib.physics.signal.SequenceParams, e.g. PRESETS["FLAIR"]) from a
        spin-echo input (and optionally a second spin echo of the same grid, ``secondNode``) through the
        estimated PD/T1/T2; returns (outputNode, maps dict). ``assist``: one input only; also fit the
        spin echoes the re-parameterization Param-Net predicts from it (better renders, 15 to 20 times slower).
        ``null``: "csf" or "fat": an ir target's TI is set to null that tissue as estimated."""
        from MRISynthLib.mrml import synthesize_node
        return synthesize_node(slicer.mrmlScene, inputNode, target, inputTE, inputTR, device=device,
                               output_node=outputNode, save_maps=saveMaps, cancel=cancel, progress_callback=progress,
                               second_node=secondNode, second_te=secondTE, second_tr=secondTR, assist=assist,
                               null=null)

    def reconstruct(self, inputNode=None, kspaceFile=None, method="cs", mask="vd1d", accel=4.0, device="auto",
                    outputNode=None, cancel=None, progress=None):
        """Multi-coil reconstruction: k-space simulated from ``inputNode`` (mask, acceleration) or read from
        ``kspaceFile`` (fastMRI / seed-004 HDF5); returns the magnitude volume node."""
        from MRISynthLib.mrml import reconstruct_node
        return reconstruct_node(slicer.mrmlScene, inputNode, kspaceFile, method=method, mask=mask, accel=accel,
                                device=device, output_node=outputNode, cancel=cancel, progress_callback=progress)

    def translate(self, inputNode, direction="t1_to_t2", device="auto", outputNode=None, cancel=None,
                  progress=None):
        """T1w -> T2w (``t1_to_t2``) or T2w -> T1w (``t2_to_t1``) with the shipped CycleGAN; returns the
        output node (the input's geometry and intensity range)."""
        from MRISynthLib.mrml import translate_node
        return translate_node(slicer.mrmlScene, inputNode, direction, device=device, output_node=outputNode,
                              cancel=cancel, progress_callback=progress)

    def reconstructCine(self, inputSequence, method="cascade", accel=5.0, device="auto", outputSequence=None,
                        cancel=None, progress=None):
        """Cine reconstruction of a sequence node of fully sampled frames, undersampled retrospectively
        at ``accel`` (ky-t variable density); returns a new sequence node (the input's geometry)."""
        from MRISynthLib.mrml import cine_node
        return cine_node(slicer.mrmlScene, inputSequence, method=method, accel=accel, device=device,
                         output_node=outputSequence, cancel=cancel, progress_callback=progress)

    @staticmethod
    def jobFromParameters(p):
        """(task, settings, input node, k-space file, output node) of a background run for the
        panel's settings (see MRISynthLib.jobs.command for the settings)."""
        base = {"device": p.device}
        if p.task == TASK_REPARAM:
            return ("reparam", {**base, "target_te": p.targetTE, "target_tr": p.targetTR, "input_te": p.inputTE,
                                "input_tr": p.inputTR, "model": p.model}, p.inputVolume, None, p.outputVolume)
        if p.task == TASK_SYNTH:
            settings = {**base, "sequence": p.synthSequence, "te": p.synthTE, "tr": p.synthTR, "ti": p.synthTI,
                        "flip": p.synthFlip, "input_te": p.inputTE, "input_tr": p.inputTR, "save_maps": p.saveMaps,
                        "second_input": bool(p.synthSecondVolume), "assist": p.synthAssist and not p.synthSecondVolume,
                        "null": MRISynthLogic.nullFromParameters(p)}
            if p.synthSecondVolume:  # the node itself: MRISynthLogic.startBackground passes it on
                settings.update(second_te=p.synthSecondTE, second_tr=p.synthSecondTR)
            return "synth", settings, p.inputVolume, None, p.outputVolume
        if p.task == TASK_TRANSLATE:
            return ("translate", {**base, "direction": p.translateDirection}, p.inputVolume, None, p.outputVolume)
        if p.task == TASK_RECON:
            settings = {**base, "method": p.reconMethod, "mask": p.reconMask, "accel": p.reconAccel}
            if p.reconSource == RECON_FROM_FILE:
                return "recon", {**settings, "kspace_file": str(p.kspaceFile)}, None, str(p.kspaceFile), p.outputVolume
            return "recon", settings, p.inputVolume, None, p.outputVolume
        if p.task == TASK_CINE:
            return ("cine", {**base, "method": p.cineMethod, "accel": p.cineAccel}, p.inputSequence, None,
                    p.outputSequence)
        raise ValueError(f"unknown task {p.task}")

    def startBackground(self, p, onProgress=None, onLog=None, onDone=None):
        """Start the panel's task in a PythonSlicer process; returns the BackgroundRun (cancel())."""
        problem = self.validateSettings(p)
        if problem:
            raise ValueError(problem)
        task, settings, inputNode, kspaceFile, outputNode = self.jobFromParameters(p)
        return BackgroundRun(task, settings, inputNode, kspaceFile, outputNode, onProgress=onProgress, onLog=onLog,
                             onDone=onDone, secondNode=p.synthSecondVolume if settings.get("second_input") else None)

    def synthesizeFromParameters(self, p, cancel=None, progress=None, withMaps=True):
        second = p.synthSecondVolume or None
        out, maps = self.synthesize(p.inputVolume, self.targetFromParameters(p), p.inputTE, p.inputTR,
                                    device=p.device, outputNode=p.outputVolume, saveMaps=p.saveMaps and withMaps,
                                    cancel=cancel, progress=progress, secondNode=second,
                                    secondTE=p.synthSecondTE if second else None,
                                    secondTR=p.synthSecondTR if second else None,
                                    assist=p.synthAssist and not second, null=self.nullFromParameters(p))
        p.outputVolume = out
        return out

    def reparameterize(self, inputNode, targetTE, targetTR, inputTE=None, inputTR=None, model="d2p",
                       device="auto", outputNode=None, cancel=None, progress=None):
        """Synthesize the spin-echo volume at (targetTE, targetTR), seconds; returns the output node."""
        from MRISynthLib.mrml import reparameterize_node
        return reparameterize_node(slicer.mrmlScene, inputNode, targetTE, targetTR, inputTE, inputTR, model=model,
                                   device=device, output_node=outputNode, cancel=cancel, progress_callback=progress)

    def previewRedSlice(self, p):
        """Re-parameterize only the axial slice shown in the Red view, into a preview node."""
        import numpy as np
        from MRISynthLib.mrml import volume_from_node, write_volume_node
        from MRISynthLib.tasks.reparam import reparameterize

        if not p.inputVolume:
            return None
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        ras = [red.GetSliceToRAS().GetElement(i, 3) for i in range(3)] + [1]
        m = vtk.vtkMatrix4x4()
        p.inputVolume.GetRASToIJKMatrix(m)
        k = int(round(m.MultiplyPoint(ras)[2]))
        vol = volume_from_node(p.inputVolume)
        k = int(np.clip(k, 0, vol.array.shape[0] - 1))
        sl = reparameterize(vol.array[k:k + 1], p.inputTE, p.inputTR, p.targetTE, p.targetTR, model=p.model,
                            device=p.device)
        prev = np.zeros_like(vol.array, dtype=np.float32)
        prev[k] = sl[0]
        node = slicer.mrmlScene.GetFirstNodeByName("MRISynth preview")
        node = write_volume_node(slicer.mrmlScene, vol.with_array(prev), "MRISynth preview", output_node=node)
        slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=1.0)
        return node


class MRISynthTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_imports()
        self.setUp()
        self.test_reparameterize_logic()
        self.setUp()
        self.test_synthesize_logic()
        self.setUp()
        self.test_reconstruct_logic()
        self.setUp()
        self.test_translate_logic()
        self.setUp()
        self.test_cine_logic()
        self.setUp()
        self.test_sample_data()

    @staticmethod
    def _phantomNode(boxes, te, tr, name, slices=3):
        """A volume node of nested squares: ``boxes`` is [(label, lo, hi)], outermost first."""
        import numpy as np
        from MRISynthLib.physics.phantoms import Phantom
        from MRISynthLib.physics.signal import SequenceParams

        labels = np.zeros((slices, 64, 64), np.uint8)
        for label, lo, hi in boxes:
            labels[:, lo:hi, lo:hi] = label
        img = Phantom.from_labels(labels).render(SequenceParams("se", te, tr)).astype(np.float32)
        return slicer.util.addVolumeFromArray(img, name=name), img

    def test_library_imports(self):
        import MRISynthLib
        from MRISynthLib.physics.signal import spin_echo

        self.assertTrue(MRISynthLib.__version__)
        self.assertAlmostEqual(float(spin_echo(1.0, 1.0, 0.1, 1e-9, 1e3)), 1.0, places=5)

    def test_reparameterize_logic(self):
        import numpy as np

        node, img = self._phantomNode([(2, 16, 48), (3, 24, 40)], 0.05, 4.5, "phantom")
        out = MRISynthLogic().reparameterize(node, 0.09, 3.0, 0.05, 4.5, model="d2p", device="cpu")
        self.assertIsNot(out, node)
        self.assertEqual(slicer.util.arrayFromVolume(out).shape, img.shape)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), img)
        self.delayDisplay("re-parameterization logic ok")

    def test_synthesize_logic(self):
        import numpy as np
        from MRISynthLib.physics.signal import PRESETS

        node, img = self._phantomNode([(1, 8, 56), (2, 16, 48), (3, 24, 40)], 0.05, 4.5, "phantom")
        out, maps = MRISynthLogic().synthesize(node, PRESETS["FLAIR"], 0.05, 4.5, device="cpu", saveMaps=True)
        self.assertIsNot(out, node)
        self.assertEqual(slicer.util.arrayFromVolume(out).shape, img.shape)
        self.assertEqual(sorted(maps), ["pd", "t1", "t2", "t2star"])
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), img)
        self.delayDisplay("physics-informed synthesis logic ok")

    def test_reconstruct_logic(self):
        import numpy as np

        rng = np.random.default_rng(0)
        img = rng.uniform(0, 1, (2, 64, 64)).astype(np.float32)
        node = slicer.util.addVolumeFromArray(img, name="image")
        out = MRISynthLogic().reconstruct(node, method="cg-sense", mask="vd1d", accel=2.0)
        self.assertIsNot(out, node)
        self.assertEqual(slicer.util.arrayFromVolume(out).shape, img.shape)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), img)
        self.delayDisplay("reconstruction logic ok")

    def test_translate_logic(self):
        import numpy as np

        node, img = self._phantomNode([(3, 8, 56), (2, 16, 48), (1, 24, 40)], 0.014, 0.55, "t1w", slices=2)
        out = MRISynthLogic().translate(node, "t1_to_t2", device="cpu")
        self.assertIsNot(out, node)
        self.assertEqual(slicer.util.arrayFromVolume(out).shape, img.shape)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), img)
        self.delayDisplay("translation logic ok")

    def test_cine_logic(self):
        import numpy as np
        from MRISynthLib.data.io import Volume
        from MRISynthLib.mrml import sequence_from_node, write_sequence_node

        yy, xx = np.mgrid[:64, :64] / 64 - 0.5
        frames = np.stack([(np.hypot(yy, xx) < 0.25 + 0.05 * np.sin(2 * np.pi * f / 20)).astype(np.float32)
                           for f in range(20)])
        geom = Volume(frames[:1], spacing=(1.5, 1.5, 8.0), origin=(10.0, 20.0, 30.0))
        seq = write_sequence_node(slicer.mrmlScene, frames, geom, "cine", index_values=np.arange(20) * 0.05)
        out = MRISynthLogic().reconstructCine(seq, method="cascade", accel=5.0, device="cpu")
        self.assertIsNot(out, seq)
        rec, g, values = sequence_from_node(out)
        self.assertEqual(rec.shape, (20, 1, 64, 64))
        np.testing.assert_allclose(g.origin, geom.origin)
        np.testing.assert_allclose(values, np.arange(20) * 0.05)
        np.testing.assert_array_equal(sequence_from_node(seq)[0][:, 0], frames)
        self.delayDisplay("cine reconstruction logic ok")

    def test_sample_data(self):
        import numpy as np
        from MRISynthLib.mrml import acquisition_from_node

        registerSampleData()
        names = [src.sampleName for src in slicer.modules.sampleDataSources[SAMPLE_CATEGORY]]
        self.assertIn("MRISynthBrainWebSE", names)
        node = loadSample("MRISynthBrainWebSE")
        self.assertAlmostEqual(acquisition_from_node(node)["tr"], 4.5)
        before = slicer.util.arrayFromVolume(node).copy()
        out = MRISynthLogic().reparameterize(node, 0.1, 4.0, device="cpu")  # input TE/TR from the node
        self.assertEqual(slicer.util.arrayFromVolume(out).shape, before.shape)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        kspace = loadSample("MRISynthBrainWebKspace")
        self.assertEqual(str(MRISynthLogic().getParameterNode().kspaceFile), kspace)
        rec = MRISynthLogic().reconstruct(kspaceFile=kspace, method="cg-sense")
        self.assertEqual(slicer.util.arrayFromVolume(rec).shape, (4, 216, 180))
        self.delayDisplay("sample data ok")
