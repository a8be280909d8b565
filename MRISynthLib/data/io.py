"""Volume and image I/O through SimpleITK, keeping geometry, plus LPS <-> RAS helpers.

A :class:`Volume` is an array in SimpleITK order ((z, y, x) for 3D, (y, x) for 2D) with
LPS geometry: ``spacing`` and ``origin`` (x, y, z) in mm and a row-major 3x3
``direction``, exactly as SimpleITK reports them. Slicer works in RAS:
``origin_ras = diag(-1, -1, 1) @ origin_lps`` and the same for each direction column
(:func:`ijk_to_ras`).

Writes are atomic: the file is written under a temporary name in the target folder and
renamed into place, so a failed write never leaves half a file, and writing onto the
input file itself is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..fileutil import atomic_output

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")

# DICOM tags for acquisition parameters (values in ms and degrees in the header)
DICOM_TAGS = {
    "te": "0018|0081",
    "tr": "0018|0080",
    "ti": "0018|0082",
    "flip": "0018|1314",
}
# the same parameters in the header of volumes MRISynth writes (NRRD "key:=value" fields,
# MHA tags; NIfTI has no such fields): seconds and degrees
ACQUISITION_KEYS = {
    "te": "MRISynth_TE_s",
    "tr": "MRISynth_TR_s",
    "ti": "MRISynth_TI_s",
    "flip": "MRISynth_flip_deg",
}


def acquisition_metadata(acquisition: Dict[str, Optional[float]]) -> Dict[str, str]:
    """Header fields for ``{"te": s, "tr": s, "ti": s, "flip": deg}`` (None values left out)."""
    return {ACQUISITION_KEYS[k]: repr(float(v)) for k, v in acquisition.items() if v is not None}


def sequence_metadata(seq) -> Dict[str, str]:
    """Header fields describing a :class:`~MRISynthLib.physics.signal.SequenceParams`."""
    return {"MRISynth_sequence": seq.describe(), **acquisition_metadata(seq.acquisition())}


def acquisition_from_metadata(metadata: Dict[str, str]) -> Dict[str, float]:
    out = {}
    for key, field_name in ACQUISITION_KEYS.items():
        try:
            out[key] = float(metadata[field_name])
        except (KeyError, ValueError):
            continue
    return out


@dataclass
class Volume:
    array: np.ndarray
    spacing: Tuple[float, ...] = (1.0, 1.0, 1.0)
    origin: Tuple[float, ...] = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    metadata: Dict[str, str] = field(default_factory=dict)
    # acquisition parameters (seconds / degrees) when known, e.g. from DICOM
    acquisition: Dict[str, float] = field(default_factory=dict)

    @property
    def is_2d(self) -> bool:
        return self.array.ndim == 2

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry and metadata, new voxels (shape must match)."""
        if array.shape[-self.array.ndim:] != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return replace(self, array=array, metadata=dict(self.metadata), acquisition=dict(self.acquisition))

    def direction_matrix(self) -> np.ndarray:
        d = np.asarray(self.direction, float)
        n = int(round(np.sqrt(d.size)))
        return d.reshape(n, n)

    def to_sitk(self):
        import SimpleITK as sitk

        arr = self.array
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if np.iscomplexobj(arr):
            raise ValueError("complex arrays cannot be written as scalar volumes; write magnitude/phase")
        img = sitk.GetImageFromArray(arr)
        n = img.GetDimension()
        img.SetSpacing(tuple(float(s) for s in self.spacing[:n]))
        img.SetOrigin(tuple(float(o) for o in self.origin[:n]))
        d = self.direction_matrix()[:n, :n]
        img.SetDirection(tuple(d.ravel().tolist()))
        for k, v in self.metadata.items():
            img.SetMetaData(k, str(v))
        return img

    @classmethod
    def from_sitk(cls, img, acquisition: Optional[Dict[str, float]] = None) -> "Volume":
        import SimpleITK as sitk

        meta = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
        return cls(array=sitk.GetArrayFromImage(img), spacing=tuple(img.GetSpacing()),
                   origin=tuple(img.GetOrigin()), direction=tuple(img.GetDirection()),
                   metadata=meta, acquisition=dict(acquisition or {}))


def lps_to_ras_point(p) -> np.ndarray:
    return LPS_TO_RAS @ np.asarray(p, float)


def ijk_to_ras(vol: Volume) -> np.ndarray:
    """4x4 IJK->RAS matrix of a 3D volume (what Slicer's vtkMRMLVolumeNode holds)."""
    if vol.array.ndim != 3:
        raise ValueError("IJK->RAS is defined for 3D volumes")
    d = vol.direction_matrix()
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ d @ np.diag(vol.spacing)
    m[:3, 3] = LPS_TO_RAS @ np.asarray(vol.origin, float)
    return m


def geometry_from_ijk_to_ras(m: np.ndarray):
    """Inverse of :func:`ijk_to_ras`: (spacing, origin_lps, direction_lps row-major)."""
    m = np.asarray(m, float)
    a = LPS_TO_RAS @ m[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    direction = a / spacing
    origin = LPS_TO_RAS @ m[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def file_suffix(path: Path) -> str:
    """The lower-case file type suffix, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def acquisition_from_tags(get) -> Dict[str, float]:
    out = {}
    for key, tag in DICOM_TAGS.items():
        raw = get(tag)
        if raw is None or str(raw).strip() == "":
            continue
        try:
            v = float(str(raw).split("\\")[0])
        except ValueError:
            continue
        out[key] = v if key == "flip" else v / 1000.0
    return out


def read_dicom_series(folder) -> Volume:
    """Read a DICOM series (the first series in ``folder``) with TE/TR/TI/flip if present."""
    import SimpleITK as sitk

    folder = str(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not ids:
        raise ValueError(f"no DICOM series found in {folder}")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOn()
    img = reader.Execute()

    def get(tag):
        return reader.GetMetaData(0, tag) if reader.HasMetaDataKey(0, tag) else None

    return Volume.from_sitk(img, acquisition=acquisition_from_tags(get))


def read_volume(path) -> Volume:
    """Read NRRD, NIfTI, MHA, a single DICOM file, a DICOM folder, or a 2D PNG/JPG.

    2D RGB images are converted to grey (luminance). Raises FileNotFoundError or
    ValueError with the reason.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return read_dicom_series(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from e
    if img.GetNumberOfComponentsPerPixel() > 1:
        if file_suffix(path) in IMAGE_2D_SUFFIXES:
            arr = sitk.GetArrayFromImage(img).astype(np.float32)
            grey = arr[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
            out = sitk.GetImageFromArray(grey.astype(np.float32))
            out.CopyInformation(sitk.VectorIndexSelectionCast(img, 0))
            img = out
        else:
            raise ValueError(f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "a scalar volume is expected")
    if file_suffix(path) == ".dcm":
        acq = acquisition_from_tags(lambda t: img.GetMetaData(t) if img.HasMetaDataKey(t) else None)
    else:
        acq = acquisition_from_metadata({k: img.GetMetaData(k) for k in img.GetMetaDataKeys()})
    vol = Volume.from_sitk(img, acquisition=acq)
    if vol.array.ndim == 3 and vol.array.shape[0] == 1 and file_suffix(path) in IMAGE_2D_SUFFIXES:
        vol = Volume(vol.array[0], vol.spacing[:2], vol.origin[:2], (1.0, 0.0, 0.0, 1.0), vol.metadata)
    return vol


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(path, protect) -> None:
    """ValueError if ``path`` is (or links to) one of ``protect`` (a path or a list of them)."""
    path = Path(path)
    for p in ([protect] if isinstance(protect, (str, Path)) else (protect or [])):
        if _same_file(path, Path(p)) or path.resolve() == Path(p).resolve():
            raise ValueError(f"refusing to overwrite the input file {p}")


def write_volume(vol: Volume, path, protect=None, compress: bool = True) -> Path:
    """Write atomically. 2D images to PNG/JPG are scaled to their 8-bit display range
    unless already uint8. ``protect``: paths that must never be overwritten (the inputs).
    """
    import SimpleITK as sitk

    path = Path(path)
    check_not_input(path, protect)
    suffix = file_suffix(path)
    if suffix not in IMAGE_2D_SUFFIXES + VOLUME_SUFFIXES:
        raise ValueError(f"unsupported output format {suffix!r}; use one of {IMAGE_2D_SUFFIXES + VOLUME_SUFFIXES}")
    if np.issubdtype(vol.array.dtype, np.floating) and not np.all(np.isfinite(vol.array)):
        raise ValueError("refusing to write a volume containing NaN or inf")
    if suffix in IMAGE_2D_SUFFIXES:
        if vol.array.ndim != 2:
            raise ValueError(f"{suffix} output needs a 2D image, got shape {vol.array.shape}")
        arr = vol.array
        if arr.dtype != np.uint8:
            arr = to_uint8(arr)
        img = sitk.GetImageFromArray(arr)
    else:
        img = vol.to_sitk()
    with atomic_output(path, suffix="-" + path.name) as tmp:
        sitk.WriteImage(img, tmp, useCompression=compress and suffix not in (".jpg", ".jpeg"))
    return path


def to_uint8(arr: np.ndarray, lo: Optional[float] = None, hi: Optional[float] = None) -> np.ndarray:
    """Display-normalise to 0..255 (min..max, or the given window)."""
    a = np.asarray(arr, np.float64)
    lo = float(np.min(a)) if lo is None else lo
    hi = float(np.max(a)) if hi is None else hi
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.round((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- sequences
SEQUENCE_SUFFIX = ".seq.nrrd"
_NRRD_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.int16): "short",
               np.dtype(np.uint16): "ushort", np.dtype(np.uint8): "uchar", np.dtype(np.int32): "int"}


def is_sequence_path(path) -> bool:
    return str(path).lower().endswith(SEQUENCE_SUFFIX)


def read_sequence(path):
    """A Slicer volume sequence (``.seq.nrrd``: a NRRD whose first axis is a ``list`` of
    frames) -> (frames array [T, z, y, x], :class:`Volume` of frame 0 with the geometry,
    frame index values or None). SimpleITK reads the list axis as vector components."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from e
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() == 1:
        raise ValueError(f"{path} holds a single volume, not a sequence of frames")
    frames = np.moveaxis(arr, -1, 0)
    if frames.ndim == 3:                                   # 2D frames
        frames = frames[:, None]
    geom = Volume.from_sitk(sitk.VectorIndexSelectionCast(img, 0))
    if geom.array.ndim == 2:
        geom = Volume(geom.array[None], tuple(geom.spacing) + (1.0,), tuple(geom.origin) + (0.0,))
    values = None
    key = "axis 0 index values"
    for k in img.GetMetaDataKeys():
        if k.strip() == key:
            try:
                values = [float(v) for v in img.GetMetaData(k).split()]
            except ValueError:
                values = None
    return frames, geom, values


def write_sequence(frames: np.ndarray, geometry: Volume, path, protect=None, index_values=None,
                   index_name: str = "time", index_unit: str = "s") -> Path:
    """Write frames [T, z, y, x] (or [T, y, x]) with the 3D geometry of ``geometry`` as a Slicer
    volume sequence (``.seq.nrrd``, gzip), atomically; Slicer loads it as a sequence node."""
    import gzip

    path = Path(path)
    if not is_sequence_path(path):
        raise ValueError(f"a sequence is written as {SEQUENCE_SUFFIX}, got {path.name}")
    check_not_input(path, protect)
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"expected frames [T, z, y, x], got {a.shape}")
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    if a.dtype not in _NRRD_TYPES:
        raise ValueError(f"unsupported voxel type {a.dtype} for a sequence")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError("refusing to write frames containing NaN or inf")
    t = a.shape[0]
    d = geometry.direction_matrix()
    if d.shape != (3, 3):
        raise ValueError("the sequence geometry must be 3D")
    sp = np.asarray(geometry.spacing, float)
    cols = [d[:, j] * sp[j] for j in range(3)]
    fmt = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    values = list(range(t)) if index_values is None else list(index_values)
    if len(values) != t:
        raise ValueError("one index value per frame is needed")
    header = "\n".join([
        "NRRD0005", f"type: {_NRRD_TYPES[a.dtype]}", "dimension: 4", "space: left-posterior-superior",
        f"sizes: {t} {a.shape[3]} {a.shape[2]} {a.shape[1]}",
        "space directions: none " + " ".join(fmt(c) for c in cols),
        "kinds: list domain domain domain", f'labels: "{index_name}" "" "" ""', f'units: "{index_unit}" "" "" ""',
        "endian: little", "encoding: gzip", "space origin: " + fmt(geometry.origin),
        "measurement frame: (1,0,0) (0,1,0) (0,0,1)", "DataNodeClassName:=vtkMRMLScalarVolumeNode",
        "axis 0 index type:=numeric", "axis 0 index values:=" + " ".join(f"{v:g}" for v in values),
        "axis 0 quantity:=" + index_name, "axis 0 unit:=" + index_unit]) + "\n\n"
    data = np.ascontiguousarray(np.moveaxis(a, 0, -1)).astype(a.dtype.newbyteorder("<"), copy=False)
    with atomic_output(path, suffix="-" + path.name) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(gzip.compress(data.tobytes(), compresslevel=4))
    return path
