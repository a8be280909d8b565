"""MRML logic on real MRML nodes (slicer-core package)."""
import numpy as np
import pytest
slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

from MRISynthLib import mrml  # noqa: E402
from MRISynthLib.data import io  # noqa: E402
from MRISynthLib.tasks import Cancelled  # noqa: E402


@pytest.fixture
def scene_and_node():
    scene = mrml.new_scene()
    rng = np.random.default_rng(0)
    vol = io.Volume(rng.uniform(0, 300, (4, 24, 20)).astype(np.float32), spacing=(0.8, 0.9, 2.5),
                    origin=(10.0, -5.0, 30.0), direction=(0, 1, 0, 1, 0, 0, 0, 0, -1))
    node = mrml.write_volume_node(scene, vol, "T2w")
    return scene, node, vol


@pytest.fixture
def tiny(tiny_p2p):
    return tiny_p2p


def test_node_roundtrip_keeps_geometry(scene_and_node):
    scene, node, vol = scene_and_node
    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(node), io.ijk_to_ras(vol), atol=1e-9)


def test_dtype_rules():
    assert mrml.scalar_array_for_mrml(np.zeros(3, np.float64)).dtype == np.float32
    assert mrml.scalar_array_for_mrml(np.zeros(3, bool)).dtype == np.uint8
    assert mrml.scalar_array_for_mrml(np.zeros(3, np.int64)).dtype == np.int32
    assert mrml.scalar_array_for_mrml(np.zeros(3, np.float16)).dtype == np.float32
    assert mrml.scalar_array_for_mrml(np.zeros(3, np.int16)).dtype == np.int16
    with pytest.raises(ValueError, match="complex"):
        mrml.scalar_array_for_mrml(np.zeros(3, np.complex64))
    with pytest.raises(ValueError, match="int32"):
        mrml.scalar_array_for_mrml(np.array([2 ** 40]))


def test_reparameterize_node_new_output_same_geometry_input_unchanged(scene_and_node, tiny):
    scene, node, vol = scene_and_node
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    n_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    out = mrml.reparameterize_node(scene, node, 0.1, 3.0, input_te=0.05, input_tr=4.5, model=tiny)
    assert out is not node and out.GetName().startswith("T2w_TE100_TR3000")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_before + 1
    np.testing.assert_allclose(mrml.node_ijk_to_ras(out), mrml.node_ijk_to_ras(node))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    arr = slicer.util.arrayFromVolume(out)
    assert arr.shape == before.shape and arr.dtype == np.float32
    # into a user-chosen node; never into the input
    target = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    assert mrml.reparameterize_node(scene, node, 0.1, 3.0, 0.05, 4.5, model=tiny, output_node=target) is target
    with pytest.raises(ValueError, match="must not be the input"):
        mrml.reparameterize_node(scene, node, 0.1, 3.0, 0.05, 4.5, model=tiny, output_node=node)
    with pytest.raises(ValueError, match="TE and TR are needed"):
        mrml.reparameterize_node(scene, node, 0.1, 3.0, model=tiny)


def test_cancel_and_errors_leave_no_partial_node(scene_and_node, tiny):
    scene, node, _ = scene_and_node
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(Cancelled):
        mrml.reparameterize_node(scene, node, 0.1, 3.0, 0.05, 4.5, model=tiny, cancel=lambda: True)
    with pytest.raises(ValueError, match="shorter than TR"):
        mrml.reparameterize_node(scene, node, 4.0, 3.0, 0.05, 4.5, model=tiny)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n


def test_output_goes_under_the_input_study():
    scene = mrml.new_scene()
    node = mrml.write_volume_node(scene, io.Volume(np.ones((2, 8, 8), np.float32)), "in")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateFolderItem(sh.CreateFolderItem(sh.GetSceneItemID(), "patient"), "study")
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, study)
    else:
        sh.CreateItem(study, node)
    out = mrml.write_volume_node(scene, io.Volume(np.zeros((2, 8, 8), np.float32)), "out", reference_node=node)
    assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study


def test_synthesize_node_output_maps_and_no_partial_node(scene_and_node):
    import torch

    from MRISynthLib.models.quantitative import QuantConfig, QuantNet
    from MRISynthLib.physics.signal import PRESETS

    scene, node, vol = scene_and_node
    torch.manual_seed(0)
    net = QuantNet(QuantConfig(widths=[8, 16], head_width=16))
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(Cancelled):
        mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, cancel=lambda: True)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n
    out, maps = mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, save_maps=True)
    assert out.GetName() == "T2w_IR_TE120_TR9000_TI2500" and set(maps) == {"pd", "t1", "t2", "t2star"}
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n + 5
    for m in [out, *maps.values()]:
        np.testing.assert_allclose(mrml.node_ijk_to_ras(m), mrml.node_ijk_to_ras(node))
        assert slicer.util.arrayFromVolume(m).shape == before.shape
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    # a slider move re-renders into the same node
    again, _ = mrml.synthesize_node(scene, node, PRESETS["T1w"], 0.05, 4.5, model=net, output_node=out)
    assert again is out and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n + 5
    assert mrml.acquisition_from_node(out) == pytest.approx(PRESETS["T1w"].acquisition())
    with pytest.raises(ValueError, match="must not be the input"):
        mrml.synthesize_node(scene, node, PRESETS["T1w"], 0.05, 4.5, model=net, output_node=node)


def test_synthesize_node_with_a_second_input(scene_and_node):
    """A second scan of the same grid enters the estimate (the render differs from one
    input's), its node is untouched; another grid or the same node is refused."""
    import torch

    from MRISynthLib.models.quantitative import QuantConfig, QuantNet
    from MRISynthLib.physics.signal import PRESETS

    scene, node, vol = scene_and_node
    torch.manual_seed(0)
    net = QuantNet(QuantConfig(widths=[8, 16], head_width=16))
    rng = np.random.default_rng(1)
    second = mrml.write_volume_node(scene, vol.with_array(rng.uniform(0, 200, vol.array.shape).astype(np.float32)),
                                    "T1w")
    before = np.array(slicer.util.arrayFromVolume(second), copy=True)
    one, _ = mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net)
    two, _ = mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, second_node=second,
                                  second_te=0.015, second_tr=0.6)
    a, b = slicer.util.arrayFromVolume(one), slicer.util.arrayFromVolume(two)
    assert a.shape == b.shape and not np.allclose(a, b)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(two), mrml.node_ijk_to_ras(node))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(second), before)
    shifted = mrml.write_volume_node(scene, io.Volume(before, vol.spacing, (0.0, 0.0, 0.0), vol.direction), "moved")
    with pytest.raises(ValueError, match="voxel grid"):
        mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, second_node=shifted,
                             second_te=0.015, second_tr=0.6)
    with pytest.raises(ValueError, match="another volume"):
        mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, second_node=node)
    with pytest.raises(ValueError, match="TE and TR"):
        mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, second_node=second)


def test_synthesize_node_with_param_net_assistance(scene_and_node):
    """``assist``: the estimate also fits the Param-Net's predictions (the render differs
    from the plain one), the input is untouched; with a second scan it is refused."""
    import torch

    from MRISynthLib.models.quantitative import QuantConfig, QuantNet
    from MRISynthLib.physics.signal import PRESETS

    scene, node, vol = scene_and_node
    torch.manual_seed(0)
    net = QuantNet(QuantConfig(widths=[8, 16], head_width=16))
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    plain, _ = mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, device="cpu")
    helped, _ = mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, device="cpu", assist=True)
    a, b = slicer.util.arrayFromVolume(plain), slicer.util.arrayFromVolume(helped)
    assert a.shape == b.shape and not np.allclose(a, b)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(helped), mrml.node_ijk_to_ras(node))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    second = mrml.write_volume_node(scene, vol, "T1w")
    with pytest.raises(ValueError, match="one input"):
        mrml.synthesize_node(scene, node, PRESETS["FLAIR"], 0.05, 4.5, model=net, second_node=second,
                             second_te=0.015, second_tr=0.6, assist=True)


def test_reconstruct_node_from_volume_and_from_file(scene_and_node, tmp_path):
    from MRISynthLib.cli import main
    from MRISynthLib.metrics import nrmse

    scene, node, vol = scene_and_node
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(Cancelled):
        mrml.reconstruct_node(scene, node, method="cg-sense", accel=1.5, cancel=lambda: True)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n
    zf = mrml.reconstruct_node(scene, node, method="zero-filled", accel=1.5, snr=0)
    cg = mrml.reconstruct_node(scene, node, method="cg-sense", accel=1.5, snr=0)
    assert cg.GetName() == "T2w_vd1dR1.5_cg-sense"
    np.testing.assert_allclose(mrml.node_ijk_to_ras(cg), mrml.node_ijk_to_ras(node))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    assert nrmse(slicer.util.arrayFromVolume(cg), before) < nrmse(slicer.util.arrayFromVolume(zf), before)
    # from a k-space file written by the undersample command: its stored geometry comes back
    src = io.write_volume(vol, tmp_path / "v.nrrd")
    h5 = tmp_path / "k.h5"
    assert main(["undersample", "-i", str(src), "-o", str(h5), "--accel", "2", "--center", "6", "--coils", "4"]) == 0
    out = mrml.reconstruct_node(scene, kspace_file=h5, method="zero-filled")
    assert out.GetName() == "k_zero-filled"
    np.testing.assert_allclose(mrml.node_ijk_to_ras(out), mrml.node_ijk_to_ras(node), atol=1e-6)
    with pytest.raises(ValueError, match="either"):
        mrml.reconstruct_node(scene, node, kspace_file=h5)


def test_translate_node_new_output_geometry_and_no_partial_node(scene_and_node):
    import torch

    from MRISynthLib.models.cyclegan import CycleGANConfig, Generators

    torch.manual_seed(0)
    gens = Generators(CycleGANConfig(size=32, ngf=4)).eval()
    scene, node, _ = scene_and_node
    mrml.set_acquisition(node, {"te": 0.1, "tr": 4.0})
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    out = mrml.translate_node(scene, node, "t2_to_t1", model=gens)
    assert out is not node and out.GetName().startswith("T2w_T1w")
    assert mrml.acquisition_from_node(out) == {}     # a module without a card: TE/TR unknown, not the input's
    np.testing.assert_allclose(mrml.node_ijk_to_ras(out), mrml.node_ijk_to_ras(node))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    assert slicer.util.arrayFromVolume(out).shape == before.shape
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n + 1
    with pytest.raises(Cancelled):
        mrml.translate_node(scene, node, model=gens, cancel=lambda: True)
    with pytest.raises(ValueError, match="direction"):
        mrml.translate_node(scene, node, "t1_to_pd", model=gens)
    with pytest.raises(ValueError, match="must not be the input"):
        mrml.translate_node(scene, node, model=gens, output_node=node)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n + 1


def test_acquisition_recorded_on_nodes_feeds_the_next_task(scene_and_node, tiny):
    scene, node, _ = scene_and_node
    assert mrml.acquisition_from_node(node) == {}
    mrml.set_acquisition(node, {"te": 0.05, "tr": 4.5})
    out = mrml.reparameterize_node(scene, node, 0.1, 3.0, model=tiny)  # TE/TR read from the node
    assert mrml.acquisition_from_node(out) == pytest.approx({"te": 0.1, "tr": 3.0})
    assert mrml.acquisition_from_node(node) == pytest.approx({"te": 0.05, "tr": 4.5})  # input untouched
    # writing other voxels into a node drops what it recorded
    mrml.write_volume_node(scene, io.Volume(np.zeros((2, 3, 4), np.float32)), "x", output_node=out)
    assert mrml.acquisition_from_node(out) == {}
    mrml.set_acquisition(node, {"te": None, "tr": 4.5})
    with pytest.raises(ValueError, match="TE and TR are needed"):
        mrml.reparameterize_node(scene, node, 0.1, 3.0, model=tiny)


def _cine_sequence(scene, frames=20, n=64):
    yy, xx = np.mgrid[:n, :n] / n - 0.5
    arr = np.stack([(np.hypot(yy, xx) < 0.25 + 0.05 * np.sin(2 * np.pi * f / frames)).astype(np.float32) * 100
                    for f in range(frames)])
    geom = io.Volume(arr[:1], spacing=(1.4, 1.4, 8.0), origin=(10.0, -5.0, 30.0), direction=(0, 1, 0, 1, 0, 0, 0, 0, -1))
    seq = mrml.write_sequence_node(scene, arr, geom, "cine", index_values=np.arange(frames) * 0.04)
    return seq, arr, geom


def test_sequence_node_round_trip_and_checks():
    scene = mrml.new_scene()
    seq, arr, geom = _cine_sequence(scene)
    frames, g, values = mrml.sequence_from_node(seq)
    np.testing.assert_array_equal(frames[:, 0], arr)
    np.testing.assert_allclose(io.ijk_to_ras(g), io.ijk_to_ras(geom))
    np.testing.assert_allclose(values, np.arange(20) * 0.04)
    assert seq.GetIndexName() == "time" and seq.GetIndexUnit() == "s"
    with pytest.raises(ValueError, match="sequence node"):
        mrml.sequence_from_node(mrml.write_volume_node(scene, geom, "vol"))
    other = io.Volume(arr[:1], spacing=(2.0, 1.4, 8.0))
    odd = mrml.write_sequence_node(scene, arr[:2], geom, "odd")
    tmp = slicer.vtkMRMLScalarVolumeNode()
    slicer.util.updateVolumeFromArray(tmp, arr[:1])
    mrml.set_node_geometry(tmp, other)
    odd.SetDataNodeAtValue(tmp, "5")
    with pytest.raises(ValueError, match="geometry"):
        mrml.sequence_from_node(odd)


def test_cine_node_new_sequence_geometry_input_unchanged_no_partial_node():
    import torch

    from MRISynthLib.models.dynamic import DynamicConfig, build_dynamic

    torch.manual_seed(0)
    net = build_dynamic(DynamicConfig(arch="cascade", frames=20, stages=2, width=4, depth=3)).eval()
    scene = mrml.new_scene()
    seq, arr, geom = _cine_sequence(scene)
    n = scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode")
    out = mrml.cine_node(scene, seq, method="cascade", accel=5.0, model=net)
    assert out is not seq and out.GetName().startswith("cine_cascade")
    rec, g, values = mrml.sequence_from_node(out)
    assert rec.shape == (20, 1, 64, 64) and rec.dtype == np.float32
    np.testing.assert_allclose(io.ijk_to_ras(g), io.ijk_to_ras(geom))
    np.testing.assert_allclose(values, np.arange(20) * 0.04)
    np.testing.assert_array_equal(mrml.sequence_from_node(seq)[0][:, 0], arr)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == n + 1
    with pytest.raises(Cancelled):
        mrml.cine_node(scene, seq, model=net, cancel=lambda: True)
    with pytest.raises(ValueError, match="must not be the input"):
        mrml.cine_node(scene, seq, method="zero-filled", output_node=seq)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == n + 1
    # a chosen output sequence is refilled, not duplicated
    again = mrml.cine_node(scene, seq, method="zero-filled", output_node=out)
    assert again is out and scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == n + 1
