"""Digital phantoms: tissue fractions on a voxel grid, rendered into MR images.

A :class:`Phantom` holds, for every voxel, the fraction of each tissue label it contains
(partial volume). Rendering a contrast sums the signal of each tissue weighted by its
fraction, which is what a real voxel containing several tissues gives; ``maps()`` also
returns effective PD/T1/T2 maps (PD is the fraction-weighted PD; relaxation *rates* are
PD-and-fraction-weighted averages, because the early signal decay of a mixture follows
the weighted mean rate).

Arrays follow SimpleITK's order (z, y, x) and LPS geometry: x towards the patient's
left, y posterior, z superior; ``spacing`` and ``origin`` are in millimetres, (x, y, z).

BrainWeb orientation. In ``BrainModel.mat`` ``Anatomy[a, l, k]``, ``a`` runs anterior to
posterior and ``k`` runs from the top of the head (k = 0) down to the neck (k = 179): the
large head cross-sections with a small, posterior brain part (cerebellum) are at high
k. The left-right direction of ``l`` cannot be told from this nearly symmetric model; we
take ``l`` increasing towards the patient's left. :func:`brainweb_labels` returns
``Anatomy[:, :, ::-1].transpose(2, 0, 1)`` so that z increases superiorly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..config import data_file
from .signal import SequenceParams
from .tissues import N_LABELS, TissueTable, get_table

BRAINWEB_SPACING = (1.0, 1.0, 1.0)
# The seed paper's MRiLab grid: 108 x 90 x 90 voxels of 2 mm.
MRILAB_VOXEL_MM = 2.0


def overlap_matrix(n_in: int, d_in: float, n_out: int, d_out: float) -> np.ndarray:
    """Weights (n_out, n_in): fraction of output voxel o covered by input voxel i.

    Both grids are centred on the same point. Rows sum to the fraction of the output
    voxel that lies inside the input field of view (1 inside, less at the border).
    """
    start_in = -n_in * d_in / 2.0
    start_out = -n_out * d_out / 2.0
    e_in = start_in + d_in * np.arange(n_in + 1)
    e_out = start_out + d_out * np.arange(n_out + 1)
    lo = np.maximum(e_out[:-1, None], e_in[None, :-1])
    hi = np.minimum(e_out[1:, None], e_in[None, 1:])
    return (np.clip(hi - lo, 0.0, None) / d_out).astype(np.float64)


def resample_partial_volume(arr: np.ndarray, spacing_in: Sequence[float], spacing_out: Sequence[float],
                            shape_out: Optional[Sequence[int]] = None) -> np.ndarray:
    """Box-filter resampling of (..., z, y, x) data (exact partial-volume averaging).

    ``spacing_*`` are (x, y, z) in mm like SimpleITK. ``shape_out`` (z, y, x) defaults to
    the field of view divided by the new spacing, rounded.
    """
    nd = len(spacing_in)
    if shape_out is None:
        shape_out = [int(round(arr.shape[-nd + a] * spacing_in[nd - 1 - a] / spacing_out[nd - 1 - a]))
                     for a in range(nd)]
    out = arr.astype(np.float32)
    for a in range(nd):
        axis = arr.ndim - nd + a
        s_in = spacing_in[nd - 1 - a]
        s_out = spacing_out[nd - 1 - a]
        w = overlap_matrix(out.shape[axis], s_in, int(shape_out[a]), s_out).astype(np.float32)
        out = np.moveaxis(np.tensordot(w, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out


def render_fractions(fractions: np.ndarray, seq: SequenceParams, table) -> np.ndarray:
    """Image of tissue fractions (labels, ...) for one acquisition: the sum over tissues of
    fraction x the tissue's signal (tissues without PD give nothing)."""
    lut = get_table(table).lookup(fractions.shape[0])
    s = np.asarray(seq.signal(lut["pd"], lut["t1"], lut["t2"], lut["t2star"]), dtype=np.float64)
    s = np.where(lut["pd"] > 0, s, 0.0).astype(np.float32)
    return np.tensordot(s, fractions, axes=1)


@dataclass
class Phantom:
    """Tissue fractions (labels, z, y, x) with LPS geometry."""

    fractions: np.ndarray
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    name: str = "phantom"
    table: TissueTable = field(default_factory=lambda: get_table("mrilab"))

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.fractions.shape[1:])

    @classmethod
    def from_labels(cls, labels: np.ndarray, **kw) -> "Phantom":
        n = max(N_LABELS, int(labels.max()) + 1)
        frac = np.zeros((n,) + labels.shape, dtype=np.float32)
        for lab in np.unique(labels):
            frac[lab] = labels == lab
        return cls(fractions=frac, **kw)

    def resampled(self, voxel_mm=None, shape=None) -> "Phantom":
        """Partial-volume resampling to a new voxel size (mm, scalar or (x, y, z)) or shape."""
        if voxel_mm is None and shape is None:
            raise ValueError("give voxel_mm or shape")
        if voxel_mm is None:
            fov = [self.shape[2 - i] * self.spacing[i] for i in range(3)]
            voxel = tuple(fov[i] / shape[2 - i] for i in range(3))
        else:
            voxel = tuple(np.broadcast_to(np.asarray(voxel_mm, float), (3,)).tolist())
        frac = resample_partial_volume(self.fractions, self.spacing, voxel, shape)
        # keep the grid centred where it was
        centre = [self.origin[i] + (self.shape[2 - i] - 1) * self.spacing[i] / 2 for i in range(3)]
        origin = tuple(centre[i] - (frac.shape[3 - i] - 1) * voxel[i] / 2 for i in range(3))
        return Phantom(frac, spacing=voxel, origin=origin, name=self.name, table=self.table)

    def _tissue_values(self, table: Optional[TissueTable]):
        lut = (get_table(table) if table is not None else self.table).lookup(self.fractions.shape[0])
        return lut

    def maps(self, table=None) -> Dict[str, np.ndarray]:
        """Effective PD, T1, T2, T2* maps (seconds); background voxels are 0."""
        lut = self._tissue_values(table)
        f = self.fractions
        pd = np.tensordot(lut["pd"].astype(np.float32), f, axes=1)
        out = {"pd": pd}
        w = f * lut["pd"].astype(np.float32)[:, None, None, None]
        wsum = np.maximum(w.sum(0), 1e-12)
        for k in ("t1", "t2", "t2star"):
            rate = np.where(lut[k] > 0, 1.0 / np.maximum(lut[k], 1e-12), 0.0).astype(np.float32)
            r = np.tensordot(rate, w, axes=1) / wsum
            out[k] = np.where(pd > 0, 1.0 / np.maximum(r, 1e-6), 0.0).astype(np.float32)
        out["pd"] = pd.astype(np.float32)
        return out

    def render(self, seq: SequenceParams, table=None) -> np.ndarray:
        """Image of this phantom for one acquisition (sum over tissues of fraction x signal)."""
        return render_fractions(self.fractions, seq, table if table is not None else self.table)

    def geometry(self) -> dict:
        return {"spacing": tuple(self.spacing), "origin": tuple(self.origin),
                "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}


def brainweb_labels() -> np.ndarray:
    """BrainWeb labels as (z, y, x) uint8 with z superior, y posterior (see module doc)."""
    import scipy.io as sio

    path = data_file("brainweb/BrainModel.mat")
    anatomy = sio.loadmat(str(path))["Anatomy"]
    if anatomy.shape != (216, 180, 180):
        raise ValueError(f"unexpected BrainModel.mat shape {anatomy.shape}")
    return np.ascontiguousarray(anatomy[:, :, ::-1].transpose(2, 0, 1))


def brainweb_phantom(voxel_mm=None, shape=None, table="mrilab") -> Phantom:
    """The BrainWeb model at 1 mm, or partial-volume resampled to ``voxel_mm``/``shape``.

    ``brainweb_phantom(voxel_mm=2.0)`` is the seed paper's 108 x 90 x 90 MRiLab grid
    (as (z, y, x) = (90, 108, 90)).
    """
    labels = brainweb_labels()
    n = labels.shape
    origin = tuple(-(n[2 - i] - 1) * BRAINWEB_SPACING[i] / 2 for i in range(3))
    ph = Phantom.from_labels(labels, spacing=BRAINWEB_SPACING, origin=origin, name="brainweb",
                             table=get_table(table))
    if voxel_mm is not None or shape is not None:
        ph = ph.resampled(voxel_mm=voxel_mm, shape=shape)
    return ph


def mni152_phantom(voxel_mm=None, table="mrilab_full") -> Phantom:
    """A second anatomy from the MNI ICBM152 2009a grey/white-matter probability maps.

    CSF is the intracranial space not taken by GM/WM: intracranial mask = holes filled in
    the closed (GM + WM > 0.5) mask, dilated by 2 mm; CSF fraction = mask x (1 - GM - WM).
    Extracranial head tissue (scalp, muscle) is the T1 template's normalised intensity
    outside the mask, given the muscle/skin label (5). Reoriented to LPS (identity
    direction).
    """
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    def load(name):
        img = sitk.DICOMOrient(sitk.ReadImage(str(data_file(f"mni152/{name}"))), "LPS")
        return img, sitk.GetArrayFromImage(img).astype(np.float32)

    gm_img, gm = load("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    _, wm = load("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    _, t1 = load("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm, wm = gm / 255.0, wm / 255.0
    total = np.clip(gm + wm, 0, 1)
    scale = np.where(gm + wm > 1, 1.0 / np.maximum(gm + wm, 1e-6), 1.0)
    gm, wm = gm * scale, wm * scale
    brain = ndi.binary_closing(total > 0.5, iterations=3)
    brain = ndi.binary_fill_holes(brain)
    icv = ndi.binary_dilation(brain, iterations=2)
    csf = icv * (1.0 - total)
    t1n = np.clip(t1 / np.percentile(t1[t1 > 0], 99), 0, 1)
    head = ndi.binary_fill_holes(ndi.binary_closing(t1n > 0.15, iterations=2))
    other = (~icv & head) * t1n * (1.0 - total)
    frac = np.zeros((N_LABELS,) + gm.shape, np.float32)
    frac[1], frac[2], frac[3], frac[5] = csf, gm, wm, other
    frac[0] = np.clip(1.0 - frac[1:].sum(0), 0, 1)
    ph = Phantom(frac, spacing=tuple(gm_img.GetSpacing()), origin=tuple(gm_img.GetOrigin()),
                 name="mni152", table=get_table(table))
    if voxel_mm is not None:
        ph = ph.resampled(voxel_mm=voxel_mm)
    return ph


def koma_brain_maps() -> Dict[str, np.ndarray]:
    """KomaMRI's 2D BrainWeb maps (``koma/brain.h5``), in seconds, shape (216, 180)."""
    import h5py

    with h5py.File(data_file("koma/brain.h5"), "r") as f:
        d = f["sample/data"][()]
    if d.ndim != 3 or d.shape[-1] < 3:
        raise ValueError(f"koma/brain.h5 sample/data has unexpected shape {d.shape}")
    pd = d[..., 0]
    # KomaMRI stores rates in 1/ms
    t1 = np.where(d[..., 1] > 0, 1e-3 / np.maximum(d[..., 1], 1e-12), 0.0)
    t2 = np.where(d[..., 2] > 0, 1e-3 / np.maximum(d[..., 2], 1e-12), 0.0)
    r2s = d[..., 3] if d.shape[-1] > 3 else np.zeros_like(pd)
    t2s = np.where(r2s > 0, 1e-3 / np.maximum(r2s, 1e-12), t2)
    return {k: v.astype(np.float32) for k, v in dict(pd=pd, t1=t1, t2=t2, t2star=t2s).items()}


def render_maps(maps: Dict[str, np.ndarray], seq: SequenceParams) -> np.ndarray:
    """Render one acquisition from per-voxel maps (pd, t1, t2[, t2star])."""
    return np.asarray(seq.signal(maps["pd"], maps["t1"], maps["t2"], maps.get("t2star")), dtype=np.float32)


def bias_field(shape: Sequence[int], rng: np.random.Generator, strength: float = 0.2,
               order: int = 2) -> np.ndarray:
    """A smooth multiplicative field with mean ~1 and values within 1 +/- ``strength``.

    Sum of random separable cosines of low order (up to ``order`` half-periods per axis)
    over the field of view, rescaled so that its largest deviation from 1 is ``strength``.
    """
    if not 0 <= strength < 1:
        raise ValueError("bias strength must be in [0, 1)")
    grids = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape], indexing="ij")
    field = np.zeros(shape, np.float64)
    for idx in np.ndindex(*([order + 1] * len(shape))):
        if sum(idx) == 0:
            continue
        term = np.ones(shape)
        for g, k in zip(grids, idx):
            term = term * np.cos(k * g)
        field += rng.standard_normal() / (1 + sum(idx)) * term
    dev = np.abs(field).max()
    if dev > 0:
        field *= strength / dev
    return (1.0 + field).astype(np.float32)


def noise_sigma(image: np.ndarray, snr: float) -> float:
    """Noise standard deviation for an SNR defined as mean foreground signal / sigma.

    Foreground: voxels above 10% of the image's 99th percentile.
    """
    if not np.isfinite(snr) or snr <= 0:
        raise ValueError("SNR must be a positive number")
    mag = np.abs(image)
    fg = mag > 0.1 * np.percentile(mag, 99)
    return float(mag[fg].mean() / snr) if fg.any() else 0.0


def add_noise(image: np.ndarray, snr: float, rng: np.random.Generator, kind: str = "rician") -> np.ndarray:
    """Add noise at a given SNR: ``rician`` (magnitude of signal + complex Gaussian) or
    ``complex`` (complex Gaussian, returns a complex array; sigma per real/imag part)."""
    sigma = noise_sigma(image, snr)
    n = sigma * (rng.standard_normal(image.shape) + 1j * rng.standard_normal(image.shape))
    if kind == "rician":
        return np.abs(image + n).astype(np.float32)
    if kind == "complex":
        return (image + n).astype(np.complex64)
    raise ValueError("noise kind must be 'rician' or 'complex'")
