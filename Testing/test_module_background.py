"""The module's BackgroundRun (MRISynth/MRISynth.py) driving a real QProcess.

Slicer's ``qt`` is PythonQt; here PySide6's QtCore stands in for it (the same QProcess API),
slicer-core gives the MRML scene, and the few Slicer-application names the module file
imports at load time (ScriptedLoadableModule bases, parameterNodeWrapper,
VTKObservationMixin) are stand-ins. What runs is the module's own code: input files
written from the scene, the separate process, progress lines, results placed in the scene,
cancel, cleanup.
"""
import importlib.util
import os
import sys
import time
import types

import numpy as np
import pytest

from conftest import ROOT

QtCore = pytest.importorskip("PySide6.QtCore", reason="PySide6 not installed")
slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from MRISynthLib import jobs, mrml  # noqa: E402
from MRISynthLib.data.io import Volume, read_volume  # noqa: E402
from MRISynthLib.sampledata import sample_path  # noqa: E402


@pytest.fixture
def module(monkeypatch):
    # a QApplication (not just a QCoreApplication): the panel screenshot test shares the process
    QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 not installed")
    monkeypatch.setenv("QT_QPA_PLATFORM", os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    qt = types.SimpleNamespace(QProcess=QtCore.QProcess, QProcessEnvironment=QtCore.QProcessEnvironment)
    base = type("Base", (), {"__init__": lambda self, *a, **k: None})
    sl = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(sl, name, type(name, (base,), {}))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", sl)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setattr(slicer.util, "VTKObservationMixin", type("VTKObservationMixin", (), {}), raising=False)
    scene = mrml.new_scene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location("MRISynth_under_test", ROOT / "MRISynth" / "MRISynth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, scene, app


def _wait(app, until, timeout=120):
    t0 = time.time()
    while not until():
        app.processEvents()
        time.sleep(0.02)
        assert time.time() - t0 < timeout, "the background run did not finish"


def _se_node(scene):
    v = read_volume(sample_path("MRISynthBrainWebSE"))
    node = mrml.write_volume_node(scene, Volume(v.array[43:46], v.spacing, v.origin, v.direction), "SE")
    mrml.set_acquisition(node, {"te": 0.05, "tr": 4.5})
    return node


def test_background_run_puts_the_result_in_the_scene(module):
    mod, scene, app = module
    node = _se_node(scene)
    before = slicer.util.arrayFromVolume(node).copy()
    progress, logs, done = [], [], []
    run = mod.BackgroundRun("reparam", {"target_te": 0.1, "target_tr": 4.0, "model": "d2p", "device": "cpu"}, node,
                            onProgress=progress.append, onLog=logs.append, onDone=lambda o, e: done.append((o, e)))
    assert run.workdir.exists()
    _wait(app, lambda: done)
    out, error = done[0]
    assert error is None and out is not None and out.GetName().startswith("SE_TE100_TR4000")
    assert progress and progress[-1] == pytest.approx(1.0)
    assert any(m.startswith("wrote") for m in logs)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(out), mrml.node_ijk_to_ras(node))
    assert slicer.util.arrayFromVolume(out).shape == before.shape
    assert mrml.acquisition_from_node(out) == pytest.approx({"te": 0.1, "tr": 4.0})
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    assert not run.workdir.exists()


def test_cancel_and_failure_add_nothing_and_clean_up(module):
    mod, scene, app = module
    k = sample_path("MRISynthBrainWebKspace")
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    done = []
    run = mod.BackgroundRun("recon", {"method": "cs", "device": "cpu", "kspace_file": str(k)}, None, kspaceFile=str(k),
                            onProgress=lambda f: run.cancel(), onDone=lambda o, e: done.append((o, e)))
    _wait(app, lambda: done)
    assert done[0] == (None, None) and run.cancelled
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n and not run.workdir.exists()
    # a failing run reports the command's error and adds nothing
    node = _se_node(scene)
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    done.clear()
    run = mod.BackgroundRun("reparam", {"target_te": 5.0, "target_tr": 4.0, "device": "cpu"}, node,
                            onDone=lambda o, e: done.append((o, e)))
    _wait(app, lambda: done)
    out, error = done[0]
    assert out is None and "TE" in error
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n and not run.workdir.exists()


def test_a_run_that_cannot_start_reports_it(module, monkeypatch):
    mod, scene, app = module
    node = _se_node(scene)
    monkeypatch.setattr(mod, "pythonSlicerExecutable", lambda: "/nonexistent/PythonSlicer")
    done = []
    run = mod.BackgroundRun("translate", {"direction": "t1_to_t2", "device": "cpu"}, node,
                            onDone=lambda o, e: done.append((o, e)))
    _wait(app, lambda: done, timeout=20)
    assert done == [(None, done[0][1])] and "could not start" in done[0][1]
    assert not run.workdir.exists()


def test_job_from_parameters_covers_every_task(module):
    mod = module[0]
    scene = module[1]
    node = _se_node(scene)
    p = types.SimpleNamespace(task=None, device="cpu", targetTE=0.1, targetTR=4.0, inputTE=0.05, inputTR=4.5,
                              model="d2p", synthSequence="gre", synthTE=0.005, synthTR=0.02, synthTI=1.0,
                              synthFlip=20.0, saveMaps=False, synthSecondVolume=None, synthSecondTE=0.015,
                              synthSecondTR=0.6, synthAssist=True, synthNull="csf", translateDirection="t1_to_t2",
                              reconMethod="cs",
                              reconMask="vd1d", reconAccel=4.0, reconSource=mod.RECON_FROM_FILE,
                              kspaceFile=sample_path("MRISynthBrainWebKspace"), cineMethod="cascade", cineAccel=5.0,
                              inputVolume=node, outputVolume=None, inputSequence="seq", outputSequence=None)
    tasks = {mod.TASK_REPARAM: "reparam", mod.TASK_SYNTH: "synth", mod.TASK_TRANSLATE: "translate",
             mod.TASK_RECON: "recon", mod.TASK_CINE: "cine"}
    for label, name in tasks.items():
        p.task = label
        task, settings, inp, kfile, _ = mod.MRISynthLogic.jobFromParameters(p)
        assert task == name
        args = jobs.command(task, "/tmp/w", settings)  # every setting the command needs is there
        assert args[4] == name and "--device" in args
        assert mrml.output_name(task, "SE", **settings)
        if task == "synth":                      # one input: the panel's assistance reaches the command
            assert settings["assist"] and "--assist" in args and not settings["second_input"]
            assert settings["null"] is None and "--null" not in args     # nulling is for ir targets only
    assert kfile is None and inp == "seq"


def test_synthesis_from_two_scans_with_the_panel_settings(module):
    """The panel's second-input settings: checked before a run, and the background run
    (PythonSlicer process) gives the in-process two-scan result; the inputs are untouched."""
    mod, scene, app = module
    node = _se_node(scene)
    t1 = read_volume(sample_path("MRISynthBrainWebT1w"))
    second = mrml.write_volume_node(scene, Volume(t1.array[43:46], t1.spacing, t1.origin, t1.direction), "T1w")
    before = [slicer.util.arrayFromVolume(n).copy() for n in (node, second)]
    p = types.SimpleNamespace(task=mod.TASK_SYNTH, device="cpu", inputTE=0.05, inputTR=4.5, synthSequence="ir",
                              synthTE=0.12, synthTR=9.0, synthTI=2.5, synthFlip=20.0, saveMaps=False,
                              synthSecondVolume=second, synthSecondTE=0.015, synthSecondTR=0.5, inputVolume=node,
                              outputVolume=None, synthAssist=True, synthNull="csf")
    check = mod.MRISynthLogic.validateSettings
    assert check(p) is None
    assert "ir" in check(types.SimpleNamespace(**{**vars(p), "synthSequence": "se"}))
    for change, problem in (({"synthSecondVolume": node}, "another volume"), ({"outputVolume": second}, "second input"),
                            ({"synthSecondTE": 0.6}, "second input TE")):
        assert problem in check(types.SimpleNamespace(**{**vars(p), **change}))
    task, settings, inp, _, _ = mod.MRISynthLogic.jobFromParameters(p)
    assert settings["second_input"] and settings["second_tr"] == 0.5 and inp is node
    assert not settings["assist"]                # assistance is for one input; two scans are fitted instead
    logic = mod.MRISynthLogic()
    direct = logic.synthesizeFromParameters(types.SimpleNamespace(**vars(p)))
    done = []
    run = logic.startBackground(p, onDone=lambda o, e: done.append((o, e)))
    _wait(app, lambda: done)
    (out, maps), error = done[0]
    assert error is None and maps == {}
    a, b = slicer.util.arrayFromVolume(out), slicer.util.arrayFromVolume(direct)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    # TI nulls the estimated CSF in both runs, recorded on the nodes and in their names
    ti = [mrml.acquisition_from_node(n)["ti"] for n in (out, direct)]
    assert ti[0] == pytest.approx(ti[1], rel=1e-6) and abs(ti[0] - 2.5) > 1e-3
    assert f"TI{ti[0] * 1e3:.0f}" in direct.GetName() and out.GetName().startswith(direct.GetName())
    # ... which the panel's TI slider then shows; without nulling the slider's TI stands
    assert mod.MRISynthLogic.nulledTI(p, direct) == pytest.approx(ti[1])
    assert mod.MRISynthLogic.nulledTI(types.SimpleNamespace(**{**vars(p), "synthNull": "none"}), direct) is None
    for n, arr in zip((node, second), before):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(n), arr)
    assert not run.workdir.exists()
