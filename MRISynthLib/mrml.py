"""MRML <-> numpy helpers for the Slicer module (imports slicer and vtk, never Qt).

They run on real MRML nodes, in Slicer and in plain Python with the ``slicer-core``
package. Geometry: a volume node's IJK->RAS matrix is converted to the LPS
spacing/origin/direction of :class:`MRISynthLib.data.io.Volume` and back
(``diag(-1, -1, 1)``). Arrays from ``slicer.util.arrayFromVolume`` are (K, J, I) like
SimpleITK's, so no transposition is needed.

Dtype rules for scalar volume nodes: float32, float64 (stored as float32), int8/16/32 and
uint8/16/32 are kept; bool becomes uint8, int64/uint64 become int32 when their values fit
(else an error), float16 becomes float32; complex data is refused (store magnitude and
phase, or keep k-space in HDF5).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import slicer
import vtk

from .data.io import Volume, acquisition_from_tags, geometry_from_ijk_to_ras, ijk_to_ras

ALLOWED_DTYPES = {np.dtype(t) for t in ("float32", "int8", "uint8", "int16", "uint16", "int32", "uint32")}


def scalar_array_for_mrml(arr: np.ndarray) -> np.ndarray:
    """Convert an array to a dtype a scalar volume node can hold (see module doc)."""
    arr = np.asarray(arr)
    if np.iscomplexobj(arr):
        raise ValueError("complex arrays cannot be stored in a scalar volume; use magnitude/phase")
    if arr.dtype in ALLOWED_DTYPES:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype in (np.float64, np.float16):
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(np.int32)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"{arr.dtype} values do not fit in int32")
        return arr.astype(np.int32)
    raise ValueError(f"unsupported dtype {arr.dtype}")


def node_ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def volume_from_node(node) -> Volume:
    """A copy of a scalar volume node's voxels and geometry (LPS) as a Volume."""
    if node is None or node.GetImageData() is None:
        raise ValueError("the input volume node has no image data")
    arr = np.array(slicer.util.arrayFromVolume(node), copy=True)
    spacing, origin, direction = geometry_from_ijk_to_ras(node_ijk_to_ras(node))
    return Volume(arr, spacing, origin, direction)


def set_node_geometry(node, vol: Volume) -> None:
    m = ijk_to_ras(vol)
    vm = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            vm.SetElement(i, j, float(m[i, j]))
    node.SetIJKToRASMatrix(vm)


def write_volume_node(scene, vol: Volume, name: str, output_node=None, reference_node=None):
    """Put ``vol`` into ``output_node`` (or a new scalar volume node named ``name``).

    Refuses to write into ``reference_node`` (the input). The new node goes under the
    reference node's parent in the subject hierarchy (its study), when there is one. The
    node records no acquisition parameters; the caller sets them when it knows them.
    """
    if output_node is not None and reference_node is not None and output_node is reference_node:
        raise ValueError("the output volume must not be the input volume")
    arr = scalar_array_for_mrml(vol.array)
    if arr.ndim == 2:
        arr = arr[None]
        vol = Volume(arr, tuple(vol.spacing) + (1.0,) if len(vol.spacing) == 2 else vol.spacing,
                     tuple(vol.origin) + (0.0,) if len(vol.origin) == 2 else vol.origin,
                     (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) if len(vol.direction) == 4 else vol.direction)
    node = output_node or scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(arr))
    set_node_geometry(node, vol)
    set_acquisition(node, {})  # new voxels: a reused node's recorded TE/TR no longer hold
    if reference_node is not None:
        place_in_study(scene, node, reference_node)
    return node


def place_in_study(scene, node, reference_node) -> None:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    ref_item = sh.GetItemByDataNode(reference_node)
    if not ref_item:
        return
    parent = sh.GetItemParent(ref_item)
    if not parent:
        return
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:  # outside Slicer's application no plugin adds the item for us
        sh.CreateItem(parent, node)


def remove_node(scene, node) -> None:
    if node is not None and scene.IsNodePresent(node):
        scene.RemoveNode(node)


# acquisition parameters kept on a volume node (saved with the scene): seconds and degrees
ACQUISITION_ATTRIBUTES = {"te": "MRISynth.TE_s", "tr": "MRISynth.TR_s", "ti": "MRISynth.TI_s",
                          "flip": "MRISynth.flip_deg"}


def set_acquisition(node, acquisition: dict) -> None:
    """Record ``{"te", "tr", "ti", "flip"}`` (seconds, degrees) on a node; None values and
    missing keys remove the attribute."""
    for key, name in ACQUISITION_ATTRIBUTES.items():
        v = acquisition.get(key)
        if v is None:
            node.RemoveAttribute(name)
        else:
            node.SetAttribute(name, repr(float(v)))


def acquisition_from_node(node) -> dict:
    """TE/TR/TI/flip (seconds, degrees) of a volume node: the MRISynth attributes (set on
    sample data and on synthesized outputs), else the DICOM header when the node came from
    DICOM (needs Slicer's DICOM database); {} when neither is known."""
    out = {}
    for key, name in ACQUISITION_ATTRIBUTES.items():
        try:
            out[key] = float(node.GetAttribute(name))
        except (TypeError, ValueError):
            continue
    if out:
        return out
    try:
        uids = node.GetAttribute("DICOM.instanceUIDs")
        db = getattr(slicer, "dicomDatabase", None)
        if not uids or db is None:
            return {}
        first = uids.split()[0]
        # the database takes tags as "gggg,eeee"
        return acquisition_from_tags(lambda tag: db.instanceValue(first, tag.replace("|", ",")) or None)
    except Exception:  # a header we cannot read simply gives no defaults
        return {}


def _input_times(input_node, output_node, input_te, input_tr):
    """The input's TE/TR (given, else from the DICOM header); refuses an output node that
    is the input."""
    if output_node is not None and output_node is input_node:
        raise ValueError("the output volume must not be the input volume")
    acq = acquisition_from_node(input_node)
    input_te = acq.get("te") if input_te is None else input_te
    input_tr = acq.get("tr") if input_tr is None else input_tr
    if input_te is None or input_tr is None:
        raise ValueError("the input TE and TR are needed (the volume node does not record them)")
    return input_te, input_tr


def reparameterize_node(scene, input_node, target_te: float, target_tr: float, input_te: Optional[float] = None,
                        input_tr: Optional[float] = None, model="d2p", device="auto", output_node=None,
                        cancel=None, progress_callback=None):
    """Re-parameterize a scalar volume node into a new (or the given) output node.

    Input TE/TR default to the node's DICOM header. The input node is never modified;
    the output is written only after the whole volume is computed, so an error or a
    cancel leaves no partial node behind.
    """
    from .tasks.reparam import reparameterize

    input_te, input_tr = _input_times(input_node, output_node, input_te, input_tr)
    vol = volume_from_node(input_node)
    out = reparameterize(vol, input_te, input_tr, target_te, target_tr, model=model, device=device,
                         cancel=cancel, progress_callback=progress_callback)
    name = output_name("reparam", input_node.GetName(), target_te=target_te, target_tr=target_tr)
    node = write_volume_node(scene, out, name, output_node=output_node, reference_node=input_node)
    set_acquisition(node, {"te": target_te, "tr": target_tr})
    return node


def _second_input_times(input_node, second_node, output_node, second_te, second_tr):
    """The second synthesis input's TE/TR (given, else its header); refuses the first input
    or the output node as the second input."""
    if second_node is input_node:
        raise ValueError("the second input must be another volume than the first")
    return _input_times(second_node, output_node, second_te, second_tr)


def _check_same_grid(vol, other) -> None:
    if other.array.shape != vol.array.shape or not np.allclose(ijk_to_ras(other), ijk_to_ras(vol), atol=1e-3):
        raise ValueError("the second input must have the first input's voxel grid (dimensions, spacing, "
                         "origin and directions); resample it onto the first input first")


# the last synthesis input: (node id, node and image MTimes, TE, TR, model, device, assist) -> (Volume, estimate),
# so that a slider move neither copies the input out of the node nor hashes it again
_LAST_SYNTH: dict = {}


def synthesize_node(scene, input_node, target, input_te: Optional[float] = None, input_tr: Optional[float] = None,
                    model=None, device="auto", output_node=None, save_maps: bool = False, cancel=None,
                    progress_callback=None, second_node=None, second_te: Optional[float] = None,
                    second_tr: Optional[float] = None, assist: bool = False, null: Optional[str] = None):
    """Physics-informed synthesis of ``target`` (a :class:`SequenceParams`) from a spin-echo
    input node; returns ``(output_node, maps)`` where ``maps`` maps "pd"/"t1"/"t2"/"t2star"
    to new nodes when ``save_maps`` (PD relative to water, times in seconds).

    ``second_node``: an optional second spin-echo scan of the same voxel grid (another
    TE/TR, ``second_te``/``second_tr`` or its header); the estimate then fits both, which
    pins down mixtures of three tissues that one image cannot (see the README's synthesis
    table). Resample it onto the first input's grid first if it was acquired on another.
    ``assist``: with one input, also fit the spin echoes that the re-parameterization
    Param-Net predicts from it (:func:`MRISynthLib.tasks.synth.assisted_maps`). ``null``:
    ``"csf"`` or ``"fat"``: an inversion-recovery target's TI is replaced by the one that
    nulls that tissue as estimated (:func:`MRISynthLib.tasks.synth.nulled`; the node's
    name and recorded TI say which TI was used).

    The map estimate is cached by the library, so calling this again with another target
    (a slider move) only re-renders. The input nodes are never modified and nothing is
    added to the scene before the whole volume is computed.
    """
    from .physics.signal import SequenceParams
    from .tasks.synth import assisted_maps, check_null, estimate_maps, nulled

    if not isinstance(target, SequenceParams):
        raise TypeError("target must be a SequenceParams")
    check_null(target, null)
    if assist and second_node is not None:
        raise ValueError("Param-Net assistance takes one input; with a second scan both scans are fitted instead")
    input_te, input_tr = _input_times(input_node, output_node, input_te, input_tr)
    nodes, times = [input_node], [(input_te, input_tr)]
    if second_node is not None:
        times.append(_second_input_times(input_node, second_node, output_node, second_te, second_tr))
        nodes.append(second_node)
    key = tuple((n.GetID(), n.GetMTime(), n.GetImageData().GetMTime() if n.GetImageData() is not None else None)
                for n in nodes) + (tuple(times), model if model is None or isinstance(model, str) else id(model),
                                   str(device), bool(assist))
    if key in _LAST_SYNTH:
        vol, est = _LAST_SYNTH[key]
    else:
        vols = [volume_from_node(n) for n in nodes]
        vol = vols[0]
        for other in vols[1:]:
            _check_same_grid(vol, other)
        seqs = [SequenceParams("se", te, tr) for te, tr in times]
        if assist:
            est = assisted_maps(vol, seqs[0], model=model, device=device, cancel=cancel,
                                progress_callback=progress_callback)
        else:
            est = estimate_maps(vols if len(vols) > 1 else vol, seqs, model=model, device=device, cancel=cancel,
                                progress_callback=progress_callback)
        _LAST_SYNTH.clear()
        _LAST_SYNTH[key] = (vol, est)
    target = nulled(target, est, null)
    out = vol.with_array(est.render(target))
    name = output_name("synth", input_node.GetName(), sequence=target.sequence, te=target.te, tr=target.tr,
                       ti=target.ti, flip=target.flip)
    node = write_volume_node(scene, out, name, output_node=output_node, reference_node=input_node)
    set_acquisition(node, target.acquisition())
    maps = {}
    if save_maps:
        for key, arr in est.maps().items():
            maps[key] = write_volume_node(scene, vol.with_array(arr), f"{input_node.GetName()}_{key.upper()}",
                                          reference_node=input_node)
    return node, maps


def reconstruct_node(scene, input_node=None, kspace_file=None, method="cs", mask="vd1d", accel=4.0, coils=8,
                     snr=40.0, model=None, device="auto", output_node=None, cancel=None, progress_callback=None):
    """Static multi-coil reconstruction into a magnitude volume node.

    Either ``kspace_file`` (fastMRI or seed-004 HDF5; geometry from its attributes when
    present) or ``input_node``: k-space is then simulated from the node's voxels
    (birdcage coils, noise at ``snr``, a ``mask`` at acceleration ``accel``, as the
    ``undersample`` command does) and the result keeps the node's geometry. Nothing is
    added to the scene before the reconstruction has finished.
    """
    from .data.hdf5 import read_kspace_file
    from .tasks.recon import reconstruct, undersample_volume

    if output_node is not None and output_node is input_node:
        raise ValueError("the output volume must not be the input volume")
    if (input_node is None) == (kspace_file is None):
        raise ValueError("give either an input volume node or a k-space file")
    if kspace_file is not None:
        k, m, maps, attrs = read_kspace_file(kspace_file)
        geo = {}
        if "spacing" in attrs:
            geo = {key: tuple(np.asarray(attrs[key], float).tolist()) for key in ("spacing", "origin", "direction")}
        like = Volume(np.zeros(k.shape[:1] + k.shape[2:], np.float32), **geo)
        name = output_name("recon", None, method=method, kspace_file=kspace_file)
    else:
        like = volume_from_node(input_node)
        sim = undersample_volume(like.array.astype(np.float32), mask, accel, coils, snr)
        k, m, maps = sim["kspace"], sim["mask"], sim["maps"]
        name = output_name("recon", input_node.GetName(), method=method, mask=mask, accel=accel)
    img = reconstruct(k, mask=m, maps=maps, method=method, model=model, device=device, cancel=cancel,
                      progress_callback=progress_callback)
    return write_volume_node(scene, like.with_array(np.abs(img).astype(np.float32)), name,
                             output_node=output_node, reference_node=input_node)


def translate_node(scene, input_node, direction: str = "t1_to_t2", model=None, device="auto", output_node=None,
                   cancel=None, progress_callback=None):
    """T1w <-> T2w translation of a scalar volume node into a new (or the given) node.

    The input node is never modified; the output is written only after the whole volume
    is computed, so an error or a cancel leaves no partial node behind.
    """
    from .tasks.translate import translate

    if output_node is not None and output_node is input_node:
        raise ValueError("the output volume must not be the input volume")
    vol = volume_from_node(input_node)
    out = translate(vol, direction, model=model, device=device, cancel=cancel, progress_callback=progress_callback)
    node = write_volume_node(scene, out, output_name("translate", input_node.GetName(), direction=direction),
                             output_node=output_node, reference_node=input_node)
    set_acquisition(node, out.acquisition)     # the TE/TR the model's output imitates, if known
    return node


def sequence_from_node(seq_node):
    """Frames of a sequence node of scalar volumes -> (array [T, K, J, I] copy, :class:`Volume`
    with frame 0's geometry, numeric index values or None). All frames must share shape and
    geometry."""
    if seq_node is None or not seq_node.IsA("vtkMRMLSequenceNode"):
        raise ValueError("the input must be a sequence node")
    n = seq_node.GetNumberOfDataNodes()
    if n < 2:
        raise ValueError(f"the input sequence has {n} frame(s); a cine needs at least 2")
    frames, geom, values = [], None, []
    for i in range(n):
        node = seq_node.GetNthDataNode(i)
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError("every frame of the sequence must be a scalar volume")
        v = volume_from_node(node)
        if geom is None:
            geom = v
        elif v.array.shape != geom.array.shape or not np.allclose(node_ijk_to_ras(node), ijk_to_ras(geom), atol=1e-4):
            raise ValueError(f"frame {i} differs in size or geometry from frame 0")
        frames.append(v.array)
        try:
            values.append(float(seq_node.GetNthIndexValue(i)))
        except ValueError:
            values = None
            break
    return np.stack(frames), geom, values


def write_sequence_node(scene, frames: np.ndarray, geometry: Volume, name: str, reference_node=None,
                        index_values=None, index_name: str = "time", index_unit: str = "s", output_node=None):
    """A new (or the given, never the reference) sequence node of scalar volumes, one per frame
    [T, K, J, I] or [T, J, I], with ``geometry``; plus a sequence browser when Slicer's Sequences
    module is there (in Slicer, so that the views play it)."""
    if output_node is not None and output_node is reference_node:
        raise ValueError("the output sequence must not be the input sequence")
    frames = scalar_array_for_mrml(np.asarray(frames))
    if frames.ndim == 3:
        frames = frames[:, None]
    values = list(range(len(frames))) if index_values is None else list(index_values)
    seq = output_node or scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    seq.RemoveAllDataNodes()
    seq.SetIndexName(index_name)
    seq.SetIndexUnit(index_unit)
    seq.SetIndexType(seq.NumericIndex)
    tmp = slicer.vtkMRMLScalarVolumeNode()
    for f, val in zip(frames, values):
        slicer.util.updateVolumeFromArray(tmp, np.ascontiguousarray(f))
        set_node_geometry(tmp, geometry.with_array(f))
        seq.SetDataNodeAtValue(tmp, f"{val:g}")
    if reference_node is not None:
        place_in_study(scene, seq, reference_node)
    if hasattr(slicer, "modules") and hasattr(slicer.modules, "sequences"):  # pragma: no cover - Slicer only
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName(name + " browser"))
        browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    return seq


def cine_node(scene, input_node, method: str = "cascade", accel: float = 5.0, model=None, device="auto",
              output_node=None, cancel=None, progress_callback=None):
    """Cine reconstruction of a sequence node of fully sampled frames, undersampled
    retrospectively (ky-t variable density at ``accel``, phase encode along the frames' I axis),
    into a new sequence node of magnitude frames with the same geometry and index values.
    Nothing is added to the scene if the work fails or is cancelled."""
    from .tasks.cine import reconstruct_cine

    if output_node is not None and output_node is input_node:
        raise ValueError("the output sequence must not be the input sequence")
    frames, geom, values = sequence_from_node(input_node)
    data = frames[:, 0] if frames.shape[1] == 1 else frames
    rec = reconstruct_cine(data.astype(np.float32), method=method, model=model, device=device, accel=accel,
                           domain="image", cancel=cancel, progress_callback=progress_callback)
    return write_sequence_node(scene, rec, geom, output_name("cine", input_node.GetName(), method=method),
                               reference_node=input_node,
                               index_values=values, index_name=input_node.GetIndexName() or "time",
                               index_unit=input_node.GetIndexUnit() or "s", output_node=output_node)


def output_name(task: str, input_name: Optional[str], **s) -> str:
    """The name of a task's new output node (the scene makes it unique)."""
    if task == "reparam":
        return f"{input_name}_TE{s['target_te'] * 1e3:.0f}_TR{s['target_tr'] * 1e3:.0f}"
    if task == "synth":
        name = f"{input_name}_{s['sequence'].upper()}_TE{s['te'] * 1e3:.0f}_TR{s['tr'] * 1e3:.0f}"
        if s["sequence"] == "ir":
            name += f"_TI{s['ti'] * 1e3:.0f}"
        if s["sequence"] == "gre":
            name += f"_FA{s['flip']:g}"
        return name
    if task == "translate":
        return input_name + {"t1_to_t2": "_T2w", "t2_to_t1": "_T1w"}[s["direction"]]
    if task == "recon":
        if s.get("kspace_file") is not None:
            return f"{os.path.splitext(os.path.basename(str(s['kspace_file'])))[0]}_{s['method']}"
        return f"{input_name}_{s['mask']}R{s['accel']:g}_{s['method']}"
    if task == "cine":
        return f"{input_name}_{s['method']}"
    raise ValueError(f"unknown task {task!r}")


def write_job_inputs(task: str, workdir, settings: dict, input_node=None, kspace_file=None, second_node=None):
    """Write a background run's input from the scene into ``workdir`` (see
    :func:`MRISynthLib.jobs.write_inputs`); the nodes are only read. ``settings`` as for
    :func:`MRISynthLib.jobs.command`, plus input_te/input_tr (else the node's recorded
    TE/TR) and, for reconstruction from a volume, mask and accel. ``second_node``
    (synth only): a second spin echo of the same voxel grid as ``input_node`` (refused
    otherwise, as in :func:`synthesize_node`), with second_te/second_tr (else its own
    recorded TE/TR); ``settings["second_input"]`` must then be true."""
    from . import jobs

    if task == "cine":
        frames, geom, values = sequence_from_node(input_node)
        return jobs.write_inputs(task, workdir, frames=frames, geometry=geom, times=values)
    if task == "recon":
        if kspace_file is not None:
            return jobs.write_inputs(task, workdir, kspace_file=kspace_file)
        return jobs.write_inputs(task, workdir, volume_from_node(input_node),
                                 simulate={"mask_kind": settings["mask"], "accel": settings["accel"],
                                           "save_maps": True})  # the simulation's coil maps, as in-process
    acq = {}
    if task in ("reparam", "synth"):
        te, tr = _input_times(input_node, None, settings.get("input_te"), settings.get("input_tr"))
        acq = {"te": te, "tr": tr}
    if bool(settings.get("second_input")) != (second_node is not None):
        raise ValueError("settings['second_input'] and second_node disagree")
    vol = volume_from_node(input_node)
    second, second_acq = None, None
    if second_node is not None:
        if task != "synth":
            raise ValueError("only the synth task takes a second input")
        te2, tr2 = _second_input_times(input_node, second_node, None, settings.get("second_te"),
                                       settings.get("second_tr"))
        second, second_acq = volume_from_node(second_node), {"te": te2, "tr": tr2}
        _check_same_grid(vol, second)
    return jobs.write_inputs(task, workdir, vol, acquisition=acq, second_volume=second,
                             second_acquisition=second_acq)


def job_result_to_scene(scene, task: str, result, settings: dict, input_node=None, output_node=None):
    """Put a background run's :class:`~MRISynthLib.jobs.JobResult` into the scene exactly as
    the in-process functions above do (same names, geometry, study, recorded TE/TR); returns
    the output node (for synth: ``(node, maps)``)."""
    if task == "synth" and result.volume is not None and result.volume.acquisition.get("ti") is not None:
        settings = {**settings, "ti": result.volume.acquisition["ti"]}   # the TI used (--null sets its own)
    name = output_name(task, input_node.GetName() if input_node is not None else None, **settings)
    if task == "cine":
        return write_sequence_node(scene, result.frames, result.geometry, name, reference_node=input_node,
                                   index_values=result.times, index_name=input_node.GetIndexName() or "time",
                                   index_unit=input_node.GetIndexUnit() or "s", output_node=output_node)
    node = write_volume_node(scene, result.volume, name, output_node=output_node, reference_node=input_node)
    if task == "reparam":
        set_acquisition(node, {"te": settings["target_te"], "tr": settings["target_tr"]})
    if task in ("translate", "synth"):
        set_acquisition(node, result.volume.acquisition)
    if task == "synth":
        maps = {k: write_volume_node(scene, v, f"{input_node.GetName()}_{k.upper()}", reference_node=input_node)
                for k, v in result.maps.items()}
        return node, maps
    return node


def new_scene():
    """A fresh MRML scene (for the console and tests outside Slicer)."""
    return slicer.vtkMRMLScene()


__all__ = ["volume_from_node", "write_volume_node", "scalar_array_for_mrml", "place_in_study", "remove_node",
           "acquisition_from_node", "new_scene", "node_ijk_to_ras", "reparameterize_node", "synthesize_node",
           "reconstruct_node", "translate_node", "sequence_from_node", "write_sequence_node", "cine_node"]
