"""The module's parameter node survives a saved scene (real MRML scene from slicer-core).

slicer-core has no ``parameterNodeWrapper``; the test writes every field of
``MRISynthParameterNode`` the way the wrapper's serializers store them in a
vtkMRMLScriptedModuleNode (numbers, strings, booleans and paths as parameter strings,
nodes as node references), saves the scene with its volume and sequence nodes as files,
loads it into a fresh scene and reads every value back with the field's type.
"""
import ast
import pathlib

import numpy as np
import pytest

from conftest import ROOT

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

from MRISynthLib import mrml  # noqa: E402
from MRISynthLib.data.io import Volume  # noqa: E402

MOD = ROOT / "MRISynth/MRISynth.py"
SCALARS = {"str": str, "float": float, "int": int, "bool": bool, "pathlib.Path": pathlib.Path}
NODES = {"vtkMRMLScalarVolumeNode", "vtkMRMLSequenceNode"}


def _fields():
    """(name, annotation text, default value or None) of MRISynthParameterNode, in order."""
    tree = ast.parse(MOD.read_text())
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)}
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MRISynthParameterNode")
    out = []
    for n in cls.body:
        if not isinstance(n, ast.AnnAssign):
            continue
        default = None
        if n.value is not None:
            if isinstance(n.value, ast.Name):
                default = consts[n.value.id]
            elif isinstance(n.value, ast.Call):  # pathlib.Path()
                default = pathlib.Path()
            else:
                default = ast.literal_eval(n.value)
        out.append((n.target.id, ast.unparse(n.annotation), default))
    return out


def _changed(kind, default):
    """A value other than the default, of the same type."""
    return {"str": lambda d: d + " (changed)", "float": lambda d: d * 1.5 + 0.125, "int": lambda d: d + 3,
            "bool": lambda d: not d, "pathlib.Path": lambda d: pathlib.Path("/data/k space/case 1.h5")}[kind](default)


def _write(pn, name, kind, value):  # as the wrapper's serializers store them
    if kind in NODES:
        pn.SetNodeReferenceID(name, value.GetID() if value else None)
    else:
        pn.SetParameter(name, str(value))


def _read(pn, name, kind):
    if kind in NODES:
        return pn.GetNodeReference(name)
    raw = pn.GetParameter(name)
    return raw == "True" if kind == "bool" else SCALARS[kind](raw)


def _save(scene, node, path):
    """What Slicer's Save dialog does: a default storage node writes the data to ``path``."""
    st = node.CreateDefaultStorageNode()
    scene.AddNode(st)
    st.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(st.GetID())
    assert st.WriteData(node), f"could not write {path}"


def test_every_field_has_a_serializable_type_and_a_default_of_that_type():
    fields = _fields()
    assert len(fields) > 20
    for name, kind, default in fields:
        assert kind in SCALARS or kind in NODES, f"{name}: {kind} cannot be kept in a parameter node"
        if kind in SCALARS:
            assert default is not None, f"{name} has no default"
            want = (int, float) if kind == "float" else SCALARS[kind]
            assert isinstance(default, want), f"{name}: default {default!r} is not a {kind}"


def test_parameter_node_round_trip_through_a_saved_scene(tmp_path):
    scene = mrml.new_scene()
    vol = Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), spacing=(0.5, 0.6, 2.0), origin=(1.0, 2.0, 3.0))
    nodes = {"vtkMRMLScalarVolumeNode": [mrml.write_volume_node(scene, vol, "in"),
                                         mrml.write_volume_node(scene, vol.with_array(vol.array * 2), "out")]}
    mrml.set_acquisition(nodes["vtkMRMLScalarVolumeNode"][0], {"te": 0.05, "tr": 4.5})
    frames = np.random.default_rng(0).uniform(size=(4, 1, 6, 5)).astype(np.float32)
    geom = Volume(frames[0], spacing=(1.5, 1.5, 8.0), origin=(10.0, 20.0, 30.0))
    nodes["vtkMRMLSequenceNode"] = [mrml.write_sequence_node(scene, frames[:, 0], geom, "cine"),
                                    mrml.write_sequence_node(scene, frames[:, 0] * 3, geom, "cine out")]
    pn = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "MRISynth")
    pn.SetAttribute("ModuleName", "MRISynth")
    expected, used = {}, {k: 0 for k in NODES}
    for name, kind, default in _fields():
        if kind in NODES:
            value = nodes[kind][used[kind] % 2]
            used[kind] += 1
        else:
            value = _changed(kind, default)
        _write(pn, name, kind, value)
        expected[name] = (kind, value)
    for node in [n for group in nodes.values() for n in group]:
        _save(scene, node, tmp_path / (node.GetName().replace(" ", "_") + (
            ".seq.nrrd" if node.IsA("vtkMRMLSequenceNode") else ".nrrd")))
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()

    loaded = mrml.new_scene()
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Connect()
    pn2 = loaded.GetFirstNodeByName("MRISynth")
    assert pn2 is not None and pn2.GetAttribute("ModuleName") == "MRISynth"
    for name, (kind, value) in expected.items():
        got = _read(pn2, name, kind)
        if kind in NODES:
            assert got is not None and got.GetName() == value.GetName(), name
        elif kind == "float":
            assert got == pytest.approx(value), name
        else:
            assert got == value, name
    # the referenced data came back too: voxels, geometry and the recorded acquisition
    vin = pn2.GetNodeReference("inputVolume")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(vin), vol.array)
    np.testing.assert_allclose(mrml.node_ijk_to_ras(vin), mrml.node_ijk_to_ras(nodes["vtkMRMLScalarVolumeNode"][0]))
    assert mrml.acquisition_from_node(vin) == pytest.approx({"te": 0.05, "tr": 4.5})
    rec = mrml.sequence_from_node(pn2.GetNodeReference("inputSequence"))[0]
    np.testing.assert_allclose(rec, frames)
