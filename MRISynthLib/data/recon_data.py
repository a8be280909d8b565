"""Multi-coil training and test data simulated from real complex images (seed-004 layout).

Source: the 200 complex SIAT head slices (``siat/siat200.h5``, phase kept). Each slice is
optionally preprocessed as in seed 004 - bit scaling of the magnitude to ``bits`` bits
(phase kept) and area-resizing (real and imaginary parts separately) by ``scale`` - then
multiplied by simulated birdcage coil maps (resized the same way, so forward and adjoint
models stay consistent), Fourier transformed, given complex Gaussian noise at ``snr``
and undersampled (masks resized with nearest neighbour when they come from outside).

Split by slice: slices ``0 .. n_train-1`` train, the next ``n_val`` validate, the rest
test; no test slice is ever trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import data_file
from ..physics.masks import make_mask
from ..physics.sense import birdcage_maps, sense_forward


def load_siat(indices=None) -> np.ndarray:
    import h5py

    with h5py.File(data_file("siat/siat200.h5"), "r") as f:
        ds = f["images"]
        return ds[()] if indices is None else ds[np.sort(np.asarray(indices))]


def bit_scale(images: np.ndarray, bits: int) -> np.ndarray:
    """Quantise the magnitude (per image, max -> 2^bits - 1) keeping the phase; result in [0, 1]."""
    if bits < 1:
        raise ValueError("bits must be >= 1")
    mag = np.abs(images)
    mx = mag.reshape(len(mag), -1).max(1)[:, None, None]
    levels = 2 ** bits - 1
    q = np.round(mag / np.maximum(mx, 1e-12) * levels) / levels
    return (q * np.exp(1j * np.angle(images))).astype(np.complex64)


def area_resize(x: np.ndarray, scale: Optional[float] = None, size: Optional[tuple] = None) -> np.ndarray:
    """Area interpolation of (..., H, W) complex or real data (real/imag separately) by
    ``scale`` or to ``size`` (H', W')."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if size is None:
        size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    size = tuple(int(v) for v in size)

    def go(r):
        t = torch.from_numpy(np.ascontiguousarray(r.reshape((-1, 1, h, w)), dtype=np.float32))
        return F.interpolate(t, size=size, mode="area").numpy().reshape(x.shape[:-2] + size)

    if np.iscomplexobj(x):
        return (go(x.real) + 1j * go(x.imag)).astype(np.complex64)
    return go(x)


def nearest_resize(mask: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask."""
    h, w = mask.shape
    ii = (np.arange(shape[0]) * h / shape[0]).astype(int)
    jj = (np.arange(shape[1]) * w / shape[1]).astype(int)
    return mask[np.ix_(ii, jj)]


@dataclass
class MulticoilConfig:
    n_coils: int = 8
    snr: Optional[float] = 40.0
    mask_kind: str = "vd1d"
    accel: float = 4.0
    center: Optional[int] = None
    bits: Optional[int] = None
    scale: float = 1.0
    n_train: int = 150
    n_val: int = 10
    seed: int = 0
    same_mask: bool = False  # one mask for all slices (test sets) or one per slice


def simulate_multicoil(images: np.ndarray, cfg: MulticoilConfig):
    """Images (N, H, W) complex -> dict(imgs, maps, masks, ksp) in the seed-004 layout."""
    imgs = np.asarray(images).astype(np.complex64)
    if cfg.bits:
        imgs = bit_scale(imgs, cfg.bits)
    if cfg.scale != 1.0:
        imgs = area_resize(imgs, cfg.scale)
    n, h, w = imgs.shape
    maps0 = birdcage_maps(cfg.n_coils, (int(round(h / cfg.scale)), int(round(w / cfg.scale))))
    maps0 = area_resize(maps0, cfg.scale) if cfg.scale != 1.0 else maps0
    maps0 = maps0 / np.maximum(np.sqrt((np.abs(maps0) ** 2).sum(0, keepdims=True)), 1e-12)
    maps = np.broadcast_to(maps0, (n,) + maps0.shape).astype(np.complex64)
    rng = np.random.default_rng(cfg.seed)
    masks = np.stack([make_mask(cfg.mask_kind, (h, w), cfg.accel, center=cfg.center,
                                seed=cfg.seed if cfg.same_mask else cfg.seed * 100003 + i).for_kspace(h)
                      for i in range(n)]).astype(np.float32)
    full = sense_forward(imgs, maps)
    if cfg.snr:
        mag = np.abs(imgs)
        sigma = mag[mag > 0.1 * mag.max()].mean() / cfg.snr / np.sqrt(2)
        full = full + sigma * (rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape))
    ksp = (full * masks[:, None]).astype(np.complex64)
    return {"imgs": imgs, "maps": maps, "masks": masks, "ksp": ksp}


def resampler(images: np.ndarray, cfg: MulticoilConfig, flips: bool = True):
    """Training-time augmentation: a function ``draw(idx, rng)`` that simulates the slices
    ``images[idx]`` afresh at every call - a new mask of ``cfg``'s family and acceleration,
    new noise, a random global phase and (``flips``) a random left-right mirror - so the
    network does not learn one fixed mask and noise draw per training slice. Same pipeline
    as :func:`simulate_multicoil` (preprocessing, coils, SNR); returns its dict."""
    images = np.asarray(images)

    def draw(idx, rng: np.random.Generator):
        x = images[np.asarray(idx)] * np.exp(2j * np.pi * rng.uniform(size=len(idx)))[:, None, None]
        if flips:
            x = np.where(rng.uniform(size=len(idx))[:, None, None] < 0.5, x, x[..., ::-1])
        return simulate_multicoil(x, MulticoilConfig(**{**cfg.__dict__, "seed": int(rng.integers(2 ** 31)),
                                                        "same_mask": False}))
    return draw


def siat_split(cfg: MulticoilConfig):
    """Indices of the train, validation and test slices (split by slice)."""
    idx = np.arange(200)
    return idx[:cfg.n_train], idx[cfg.n_train:cfg.n_train + cfg.n_val], idx[cfg.n_train + cfg.n_val:]
