"""Background runs: inputs written to a work folder, the command run as a separate process
(as the Slicer module's QProcess does), progress parsed, results read back, cancel."""
import subprocess
import sys
import time

import numpy as np
import pytest

from MRISynthLib import jobs
from MRISynthLib.data.io import Volume, read_volume
from MRISynthLib.sampledata import sample_path


def _run(task, workdir, settings):
    """Run the job's command; return (exit status, progress fractions, messages, stderr)."""
    proc = subprocess.Popen(jobs.command(task, workdir, settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    parser = jobs.ProgressParser()
    fractions = []
    for chunk in iter(lambda: proc.stdout.read(7), ""):  # odd chunks: lines arrive split
        fractions += parser.feed(chunk)
    err = proc.stderr.read()
    return proc.wait(), fractions, parser.messages, err


@pytest.fixture(scope="module")
def se_slab():
    v = read_volume(sample_path("MRISynthBrainWebSE"))
    return Volume(v.array[43:46].astype(np.float32), v.spacing, v.origin, v.direction)


def test_progress_parser_handles_split_lines_and_keeps_messages():
    p = jobs.ProgressParser()
    assert p.feed("MRISYNTH_PRO") == []
    assert p.feed("GRESS 0.2500\nwrote x") == [0.25]
    assert p.feed(".nrrd\nMRISYNTH_PROGRESS 1.0000\n") == [1.0]
    assert p.messages == ["wrote x.nrrd"] and p.fraction == 1.0


def test_reparam_job_equals_the_in_process_result(tmp_path, se_slab):
    from MRISynthLib.tasks.reparam import reparameterize

    jobs.write_inputs("reparam", tmp_path, se_slab, acquisition={"te": 0.05, "tr": 4.5})
    rc, fractions, messages, err = _run("reparam", tmp_path, {"target_te": 0.1, "target_tr": 4.0, "model": "d2p",
                                                              "device": "cpu"})
    assert rc == 0, err
    assert fractions and fractions[-1] == pytest.approx(1.0) and fractions == sorted(fractions)
    assert any(m.startswith("wrote") for m in messages)
    res = jobs.read_outputs("reparam", tmp_path)
    ref = reparameterize(se_slab.array, 0.05, 4.5, 0.1, 4.0, model="d2p", device="cpu", progress=False)
    np.testing.assert_allclose(res.volume.array, ref, rtol=1e-4, atol=1e-3 * float(ref.max()))
    assert res.volume.spacing == pytest.approx(se_slab.spacing) and res.volume.origin == pytest.approx(se_slab.origin)
    assert res.volume.acquisition == pytest.approx({"te": 0.1, "tr": 4.0})
    jobs.cleanup(tmp_path)
    assert not tmp_path.exists()


@pytest.mark.parametrize("task,settings", [
    ("synth", {"sequence": "ir", "te": 0.12, "tr": 9.0, "ti": 2.5, "save_maps": True}),
    ("translate", {"direction": "t2_to_t1"}),
    ("recon", {"method": "cg-sense"}),
])
def test_volume_jobs_keep_the_geometry(tmp_path, se_slab, task, settings):
    if task == "recon":
        jobs.write_inputs(task, tmp_path, se_slab, simulate={"mask_kind": "vd1d", "accel": 4.0, "n_coils": 4})
    else:
        jobs.write_inputs(task, tmp_path, se_slab, acquisition={"te": 0.05, "tr": 4.5})
    rc, fractions, _, err = _run(task, tmp_path, {**settings, "device": "cpu"})
    assert rc == 0, err
    assert fractions[-1] == pytest.approx(1.0)
    res = jobs.read_outputs(task, tmp_path, save_maps=settings.get("save_maps", False))
    for v in [res.volume, *res.maps.values()]:
        assert v.array.shape == se_slab.array.shape and np.isfinite(v.array).all()
        assert v.spacing == pytest.approx(se_slab.spacing) and v.origin == pytest.approx(se_slab.origin)
        assert v.direction == pytest.approx(se_slab.direction)
    if task == "synth":
        assert sorted(res.maps) == sorted(jobs.MAP_NAMES)
        assert res.volume.acquisition == pytest.approx({"te": 0.12, "tr": 9.0, "ti": 2.5})


def test_cine_job_returns_a_sequence(tmp_path):
    yy, xx = np.mgrid[:64, :64] / 64 - 0.5
    frames = np.stack([(np.hypot(yy, xx) < 0.25 + 0.05 * np.sin(2 * np.pi * f / 20)).astype(np.float32) * 100
                       for f in range(20)])
    geom = Volume(frames[:1], spacing=(1.4, 1.4, 8.0), origin=(10.0, -5.0, 30.0))
    jobs.write_inputs("cine", tmp_path, frames=frames, geometry=geom, times=np.arange(20) * 0.04)
    rc, fractions, _, err = _run("cine", tmp_path, {"method": "cascade", "accel": 5.0, "device": "cpu"})
    assert rc == 0, err
    res = jobs.read_outputs("cine", tmp_path)
    assert res.frames.shape == (20, 1, 64, 64)
    np.testing.assert_allclose(res.times, np.arange(20) * 0.04)
    assert res.geometry.origin == pytest.approx(geom.origin)


def test_bad_settings_fail_cleanly_and_cancel_leaves_no_output(tmp_path, se_slab):
    jobs.write_inputs("reparam", tmp_path, se_slab, acquisition={"te": 0.05, "tr": 4.5})
    rc, _, _, err = _run("reparam", tmp_path, {"target_te": 5.0, "target_tr": 4.0, "device": "cpu"})
    assert rc == 2 and "error" in err and "TE" in err
    with pytest.raises(FileNotFoundError):
        jobs.read_outputs("reparam", tmp_path)
    # cancel: kill the process once it reports progress
    work = tmp_path / "cancel"
    work.mkdir()
    jobs.write_inputs("recon", work, kspace_file=sample_path("MRISynthBrainWebKspace"))
    proc = subprocess.Popen(jobs.command("recon", work, {"method": "cs", "device": "cpu"}), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    parser = jobs.ProgressParser()
    while not parser.feed(proc.stdout.readline()):
        assert proc.poll() is None, "finished before reporting progress"
    proc.kill()
    proc.wait()
    time.sleep(0.1)
    assert not (work / jobs.OUTPUT["recon"]).exists()
    with pytest.raises(FileNotFoundError):
        jobs.read_outputs("recon", work)
    jobs.cleanup(work)
    assert not work.exists()


def test_inputs_are_checked_and_the_users_file_is_copied(tmp_path, se_slab):
    with pytest.raises(ValueError, match="unknown task"):
        jobs.write_inputs("segment", tmp_path, se_slab)
    with pytest.raises(ValueError, match="either"):
        jobs.write_inputs("recon", tmp_path)
    src = sample_path("MRISynthBrainWebKspace")
    before = src.read_bytes()
    p = jobs.write_inputs("recon", tmp_path, kspace_file=src)
    assert p.parent == tmp_path and p.read_bytes() == before and src.read_bytes() == before
    assert jobs.command("reparam", tmp_path, {"target_te": 0.1, "target_tr": 3.0}, python="PythonSlicer")[:5] == [
        "PythonSlicer", "-m", "MRISynthLib", "--progress-lines", "reparam"]
    assert sys.executable  # the default interpreter


@pytest.mark.parametrize("task,settings", [
    ("reparam", {"target_te": 0.1, "target_tr": 4.0, "model": "d2p"}),
    ("recon", {"method": "cg-sense", "mask": "vd1d", "accel": 4.0}),
    ("translate", {"direction": "t1_to_t2"}),
])
def test_background_run_gives_the_same_node_as_the_in_process_run(tmp_path, se_slab, task, settings):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    import slicer

    from MRISynthLib import mrml

    scene = mrml.new_scene()
    node = mrml.write_volume_node(scene, se_slab, "SE")
    mrml.set_acquisition(node, {"te": 0.05, "tr": 4.5})
    before = slicer.util.arrayFromVolume(node).copy()
    if task == "reparam":
        direct = mrml.reparameterize_node(scene, node, 0.1, 4.0, model="d2p", device="cpu")
    elif task == "translate":
        direct = mrml.translate_node(scene, node, "t1_to_t2", device="cpu")
        assert mrml.acquisition_from_node(direct) == pytest.approx({"te": 0.1, "tr": 4.0})  # the model's T2w
    else:
        direct = mrml.reconstruct_node(scene, node, method="cg-sense", mask="vd1d", accel=4.0)
    settings = {**settings, "device": "cpu"}
    mrml.write_job_inputs(task, tmp_path, settings, input_node=node)
    rc, _, _, err = _run(task, tmp_path, settings)
    assert rc == 0, err
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    out = mrml.job_result_to_scene(scene, task, jobs.read_outputs(task, tmp_path), settings, input_node=node)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n + 1
    assert out.GetName().startswith(direct.GetName())  # the scene makes the second name unique
    np.testing.assert_allclose(mrml.node_ijk_to_ras(out), mrml.node_ijk_to_ras(direct))
    a, b = slicer.util.arrayFromVolume(out), slicer.util.arrayFromVolume(direct)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    assert mrml.acquisition_from_node(out) == mrml.acquisition_from_node(direct)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)


def test_synth_background_run_with_a_second_input(tmp_path, se_slab):
    """The panel's synthesis from two scans as a background run: both inputs are written
    (each with its TE/TR), the command passes both, the result equals the in-process
    two-input synthesis and differs from the one-input one; the nodes are untouched; a
    second input on another grid is refused before anything runs."""
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    import slicer

    from MRISynthLib import mrml
    from MRISynthLib.physics.signal import SequenceParams

    t1 = read_volume(sample_path("MRISynthBrainWebT1w"))
    scene = mrml.new_scene()
    node = mrml.write_volume_node(scene, se_slab, "SE")
    mrml.set_acquisition(node, {"te": 0.05, "tr": 4.5})
    second = mrml.write_volume_node(scene, Volume(t1.array[43:46].astype(np.float32), t1.spacing, t1.origin,
                                                  t1.direction), "T1w")
    mrml.set_acquisition(second, {"te": 0.015, "tr": 0.5})
    before = [slicer.util.arrayFromVolume(n).copy() for n in (node, second)]
    target = SequenceParams("ir", 0.12, 9.0, ti=2.5)
    one, _ = mrml.synthesize_node(scene, node, target, device="cpu")
    two, _ = mrml.synthesize_node(scene, node, target, device="cpu", second_node=second)
    settings = {"sequence": "ir", "te": 0.12, "tr": 9.0, "ti": 2.5, "device": "cpu", "second_input": True}
    with pytest.raises(ValueError, match="disagree"):
        mrml.write_job_inputs("synth", tmp_path, {**settings, "second_input": False}, input_node=node,
                              second_node=second)
    moved = mrml.write_volume_node(scene, Volume(before[1], t1.spacing, (0.0, 0.0, 0.0), t1.direction), "moved")
    mrml.set_acquisition(moved, {"te": 0.015, "tr": 0.5})
    with pytest.raises(ValueError, match="voxel grid"):
        mrml.write_job_inputs("synth", tmp_path, settings, input_node=node, second_node=moved)
    mrml.write_job_inputs("synth", tmp_path, settings, input_node=node, second_node=second)
    assert read_volume(tmp_path / jobs.SECOND_INPUT).acquisition == pytest.approx({"te": 0.015, "tr": 0.5})
    args = jobs.command("synth", tmp_path, {**settings, "assist": True})
    assert [args[i + 1] for i, a in enumerate(args) if a == "--input"] == [
        str(tmp_path / jobs.INPUT["synth"]), str(tmp_path / jobs.SECOND_INPUT)]
    assert "--assist" not in args                       # assistance is for one input only
    assert "--assist" in jobs.command("synth", tmp_path, {**settings, "second_input": False, "assist": True})
    rc, _, _, err = _run("synth", tmp_path, settings)
    assert rc == 0, err
    out, _ = mrml.job_result_to_scene(scene, "synth", jobs.read_outputs("synth", tmp_path), settings, input_node=node)
    a, b, c = (slicer.util.arrayFromVolume(n) for n in (out, two, one))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    assert np.abs(a - c).max() > 0.01 * float(np.abs(c).max())  # the second input entered the run
    np.testing.assert_allclose(mrml.node_ijk_to_ras(out), mrml.node_ijk_to_ras(node))
    for n, arr in zip((node, second), before):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(n), arr)
