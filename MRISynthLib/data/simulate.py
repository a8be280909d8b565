"""Training-set generators built on the physics module.

:func:`make_paper_dataset` reproduces the seed re-parameterization paper's protocol
(Narang et al., BIOENG 2022): N random spin-echo (TE, TR) pairs with TR uniform in
1.2-10 s and TE in 20 ms - 1 s favouring low values (log-uniform, capped below TR), K axial
slices of the BrainWeb model on MRiLab's 108 x 90 x 90, 2 mm grid, each rendered with
partial volume, rescaled to 256 x 256 and display-normalised to 8 bits (per image, its
maximum maps to 255; the scale is stored), plus the default-parameter input (TE 50 ms,
TR 4.5 s) for every slice. Held-out slices and held-out (TE, TR) pairs are marked in the
file so that every model is tested on the same split.

HDF5 layout (one file):

=====================  =====================================  ==============================
dataset                shape / dtype                          meaning
=====================  =====================================  ==============================
``targets``            [pairs, slices, H, W] uint8            image at (te[p], tr[p])
``target_scale``       [pairs, slices] float32                signal at 255 (un-normalise)
``defaults``           [groups, slices, H, W] uint8           image at the default TE/TR
``default_scale``      [groups, slices] float32
``default_group``      [pairs] int32                          which ``defaults`` group a pair uses
``te``, ``tr``         [pairs] float32, seconds
``slice_z``            [slices] int32                         z index on the phantom grid
``pair_is_test``       [pairs] bool
``slice_is_test``      [slices] bool
=====================  =====================================  ==============================

Without tissue jitter or noise there is one default group; with them every pair has its
own tissue draw and noise, and so its own default images. Attributes record the whole
configuration (JSON in ``config``) and the seed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..physics.phantoms import Phantom, add_noise, bias_field, brainweb_phantom
from ..physics.signal import SequenceParams
from ..physics.tissues import jitter_table
from .hdf5 import atomic_h5

DEFAULT_TE = 0.05
DEFAULT_TR = 4.5
FORMAT_VERSION = 1


@dataclass
class ProtocolConfig:
    n_pairs: int = 200
    n_slices: int = 24
    size: int = 256
    voxel_mm: float = 2.0
    tr_range: Tuple[float, float] = (1.2, 10.0)
    te_range: Tuple[float, float] = (0.02, 1.0)
    default_te: float = DEFAULT_TE
    default_tr: float = DEFAULT_TR
    table: str = "mrilab"
    exact: bool = True
    test_slice_every: int = 5      # every 5th slice is held out
    test_pair_fraction: float = 0.2
    jitter: bool = False
    snr: Optional[float] = None
    bias: float = 0.0
    seed: int = 0
    phantom: str = "brainweb"
    extra_train_slices: int = 0    # more training-only slices (see extra_training_slices)

    def __post_init__(self):
        if self.n_pairs < 1 or self.n_slices < 1 or self.size < 8 or self.extra_train_slices < 0:
            raise ValueError("n_pairs, n_slices must be >= 1, size >= 8, extra_train_slices >= 0")
        lo, hi = self.tr_range
        if not 0 < lo < hi:
            raise ValueError("tr_range must be increasing and positive")
        if not 0 < self.te_range[0] < self.te_range[1]:
            raise ValueError("te_range must be increasing and positive")
        if self.te_range[0] >= lo:
            raise ValueError("the shortest TE must be below the shortest TR")
        SequenceParams("se", self.default_te, self.default_tr)  # validates


def sample_te_tr(n: int, rng: np.random.Generator, tr_range=(1.2, 10.0), te_range=(0.02, 1.0)):
    """TR uniform in ``tr_range``; TE log-uniform in [te_min, min(te_max, 0.9 TR)]."""
    tr = rng.uniform(*tr_range, size=n)
    te_hi = np.minimum(te_range[1], 0.9 * tr)
    u = rng.uniform(size=n)
    te = np.exp(np.log(te_range[0]) + u * (np.log(te_hi) - np.log(te_range[0])))
    return te.astype(np.float32), tr.astype(np.float32)


def brain_z(phantom: Phantom) -> np.ndarray:
    """Axial slice indices whose brain tissue (CSF, GM, WM) exceeds 5 % of the largest slice's."""
    brain = phantom.fractions[1:4].sum(0).sum(axis=(1, 2))
    return np.flatnonzero(brain > 0.05 * brain.max())


def brain_slices(phantom: Phantom, n: int, coverage: float = 0.8) -> np.ndarray:
    """``n`` axial slice indices spread over the central ``coverage`` of the brain extent."""
    zs = brain_z(phantom)
    lo, hi = zs.min(), zs.max()
    margin = (1 - coverage) / 2 * (hi - lo)
    return np.unique(np.round(np.linspace(lo + margin, hi - margin, n)).astype(int))


def is_test_slice(n_slices: int, cfg: "ProtocolConfig") -> np.ndarray:
    """The paper-protocol split of ``n_slices`` slices: every ``test_slice_every``-th is held out."""
    return (np.arange(n_slices) % cfg.test_slice_every) == (cfg.test_slice_every // 2)


def away_from(zs, held_out, margin: int = 1) -> np.ndarray:
    """The slice indices of ``zs`` more than ``margin`` slices away from every held-out one."""
    zs = np.asarray(zs)
    bad = {int(z) + d for z in held_out for d in range(-margin, margin + 1)}
    return np.array([z for z in zs if int(z) not in bad], dtype=zs.dtype)


def extra_training_slices(phantom: Phantom, zs: np.ndarray, is_test: np.ndarray, n: int,
                          margin: int = 1) -> np.ndarray:
    """Up to ``n`` more axial slices for training only, spread evenly over the brain slices
    that are not in ``zs`` and lie more than ``margin`` slices from a held-out one (the
    paper's 24 slices leave 19 for training; the model then over-fits their anatomy)."""
    cand = away_from(np.setdiff1d(brain_z(phantom), zs), zs[is_test], margin)
    if n >= len(cand):
        return cand
    return cand[np.unique(np.round(np.linspace(0, len(cand) - 1, n)).astype(int))]


def resize_slices(imgs: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (..., h, w) images to (size, size) (the paper's rescale)."""
    import torch
    import torch.nn.functional as F

    lead = imgs.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(imgs.reshape((-1, 1) + imgs.shape[-2:]), dtype=np.float32))
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.numpy().reshape(lead + (size, size))


def normalize_8bit(imgs: np.ndarray):
    """Per-image display normalisation: max -> 255; returns (uint8 images, scales)."""
    scale = imgs.reshape(imgs.shape[:-2] + (-1,)).max(-1)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    u8 = np.clip(np.round(imgs / scale[..., None, None] * 255.0), 0, 255).astype(np.uint8)
    return u8, scale


def protocol_phantom(cfg: ProtocolConfig) -> Phantom:
    """The phantom (with its tissue table) that a paper-protocol config names."""
    if cfg.phantom == "brainweb":
        return brainweb_phantom(voxel_mm=cfg.voxel_mm, table=cfg.table)
    if cfg.phantom == "mni152":
        from ..physics.phantoms import mni152_phantom
        from ..physics.tissues import get_table

        ph = mni152_phantom(voxel_mm=cfg.voxel_mm)
        ph.table = get_table(cfg.table)
        return ph
    raise ValueError(f"unknown phantom {cfg.phantom!r}")


def make_paper_dataset(path, cfg: ProtocolConfig = None, progress: bool = True, phantom: Phantom = None) -> Path:
    """Generate the paper-protocol data set into ``path`` (HDF5, written atomically)."""
    cfg = cfg or ProtocolConfig()
    rng = np.random.default_rng(cfg.seed)
    ph = phantom if phantom is not None else protocol_phantom(cfg)
    zs = brain_slices(ph, cfg.n_slices)
    slice_is_test = is_test_slice(len(zs), cfg)
    if cfg.extra_train_slices:
        # training-only slices; the paper's slices and their split (and so the test set) are unchanged
        zs = np.concatenate([zs, extra_training_slices(ph, zs, slice_is_test, cfg.extra_train_slices)])
        slice_is_test = np.concatenate([slice_is_test, np.zeros(len(zs) - len(slice_is_test), bool)])
    frac = ph.fractions[:, zs]  # (labels, slices, y, x)
    sub = Phantom(frac, ph.spacing, ph.origin, ph.name, ph.table)
    te, tr = sample_te_tr(cfg.n_pairs, rng, cfg.tr_range, cfg.te_range)
    per_pair = cfg.jitter or cfg.snr is not None or cfg.bias > 0
    n_groups = cfg.n_pairs if per_pair else 1
    n_test_pairs = int(round(cfg.test_pair_fraction * cfg.n_pairs))
    pair_is_test = np.zeros(cfg.n_pairs, bool)
    pair_is_test[rng.permutation(cfg.n_pairs)[:n_test_pairs]] = True
    default_seq = SequenceParams("se", cfg.default_te, cfg.default_tr, exact=cfg.exact)

    def degrade(img, r):
        if cfg.bias > 0:
            img = img * bias_field(img.shape, r, cfg.bias)
        if cfg.snr is not None:
            img = add_noise(img, cfg.snr, r)
        return img

    path = Path(path)
    S, H = len(zs), cfg.size
    with atomic_h5(path) as f:
        chunks = (1, 1, H, H)
        d_t = f.create_dataset("targets", (cfg.n_pairs, S, H, H), np.uint8, chunks=chunks, compression="gzip")
        d_ts = f.create_dataset("target_scale", (cfg.n_pairs, S), np.float32)
        d_d = f.create_dataset("defaults", (n_groups, S, H, H), np.uint8, chunks=chunks, compression="gzip")
        d_ds = f.create_dataset("default_scale", (n_groups, S), np.float32)
        f["default_group"] = (np.arange(cfg.n_pairs) if per_pair else np.zeros(cfg.n_pairs)).astype(np.int32)
        f["te"], f["tr"] = te, tr
        f["slice_z"] = zs.astype(np.int32)
        f["pair_is_test"], f["slice_is_test"] = pair_is_test, slice_is_test
        for p in tqdm(range(cfg.n_pairs), desc="simulating", disable=not progress):
            r = np.random.default_rng([cfg.seed, p])
            table = jitter_table(ph.table, r) if cfg.jitter else ph.table
            seq = SequenceParams("se", float(te[p]), float(tr[p]), exact=cfg.exact)
            img = degrade(sub.render(seq, table), r)
            u8, sc = normalize_8bit(resize_slices(img, H))
            d_t[p], d_ts[p] = u8, sc
            if per_pair or p == 0:
                g = p if per_pair else 0
                dimg = degrade(sub.render(default_seq, table), r)
                u8, sc = normalize_8bit(resize_slices(dimg, H))
                d_d[g], d_ds[g] = u8, sc
        f.attrs["format"] = "mrisynth-paper-protocol"
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(asdict(cfg))
        f.attrs["seed"] = cfg.seed
        f.attrs["default_te"], f.attrs["default_tr"] = cfg.default_te, cfg.default_tr
        f.attrs["phantom_shape"] = np.asarray(ph.shape)
        f.attrs["voxel_mm"] = cfg.voxel_mm
    return path


def read_paper_dataset_info(path) -> dict:
    """Config and array shapes of a paper-protocol file (checks the format tag)."""
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != "mrisynth-paper-protocol":
            raise ValueError(f"{path} is not a paper-protocol data set")
        return {"config": json.loads(f.attrs["config"]), "targets": f["targets"].shape,
                "defaults": f["defaults"].shape, "n_test_pairs": int(f["pair_is_test"][()].sum()),
                "n_test_slices": int(f["slice_is_test"][()].sum())}
