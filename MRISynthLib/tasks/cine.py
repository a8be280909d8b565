"""Cine (2D+time) reconstruction entry points.

:func:`undersample_cine` makes ky-t undersampled k-space from a fully sampled series
(retrospective undersampling, for testing and demos); :func:`reconstruct_cine` reconstructs
it with a shipped network (``cascade``: the DC-CNN-style unrolled cascade; ``seed``: the
cine seed's dual U-Net + 3D ResNet) or zero-filled.

Conventions (as the static reconstruction): k-space is centred, orthonormal,
``[frames, (coils,) kx, ky]`` with ky (phase encode, the undersampled axis) last; the mask is
``[frames, ky]`` (1 = sampled). Image series are ``[frames, x, y]``, and for files with
several slices ``[frames, slices, x, y]``: the last axis is the phase-encode direction.
Multi-coil k-space is reconstructed coil by coil (each coil image is a cine of its own,
sampled with the same mask) and combined by root sum of squares.

Each series is scaled so that its zero-filled magnitude has maximum 1 (the networks were
trained on series of maximum magnitude 1) and scaled back afterwards.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..physics.fourier import fft2c
from ..physics.masks import variable_density_kt
from . import Cancelled

CINE_METHODS = ("cascade", "seed", "zero-filled")


def load_cine_model(method: str = "cascade", model: Optional[str] = None, device=None):
    """A catalog cine network (cached per device): ``model`` by id, else the shipped one of
    architecture ``method``."""
    from ..catalog import get_card, load_network, shipped_models
    from ..models.dynamic import DynamicConfig, build_dynamic

    if model is None:
        cands = [c for c in shipped_models("cine", "cine reconstruction") if c.architecture.get("arch") == method]
        if not cands:
            raise FileNotFoundError(f"no shipped cine model of architecture {method!r}")
        model = cands[0].id
    card = get_card(model)
    return load_network(card, lambda arch: build_dynamic(DynamicConfig(**arch)), device), card


def check_mask(mask, frames: int, ny: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != (frames, ny):
        raise ValueError(f"the cine mask must be [frames, ky] = {(frames, ny)}, got {m.shape}")
    if not np.all(np.isfinite(m)) or not np.all((m == 0) | (m == 1)):
        raise ValueError("the cine mask must hold only 0 and 1")
    if np.any(m.sum(axis=1) == 0):
        raise ValueError("every frame of the cine mask needs at least one sampled line")
    return m.astype(np.float32)


def undersample_cine(images: np.ndarray, accel: float = 5.0, center: int = 11, noise: float = 0.0,
                     seed: int = 0, mask: Optional[np.ndarray] = None) -> dict:
    """Fully sampled images [frames, (slices,) x, y] (real or complex) -> dict(kspace, mask,
    reference, acceleration): a new variable-density draw per frame (the same for every
    slice), complex Gaussian noise of standard deviation ``noise`` per k-space sample."""
    x = np.asarray(images)
    if x.ndim not in (3, 4) or x.shape[0] < 2:
        raise ValueError(f"expected a series [frames, (slices,) x, y] with >= 2 frames, got {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ValueError("the series must be finite numbers")
    t, ny = x.shape[0], x.shape[-1]
    if mask is None:
        m = variable_density_kt(t, ny, accel, n_center=center, seed=seed)
        mask, acc = m.array.astype(np.float32), m.acceleration
    else:
        mask = check_mask(mask, t, ny)
        acc = mask.size / mask.sum()
    k = fft2c(x.astype(np.complex64))
    if noise:
        rng = np.random.default_rng(seed)
        k = k + (noise / np.sqrt(2)) * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    mb = mask.reshape((t,) + (1,) * (x.ndim - 2) + (ny,))
    return {"kspace": (k * mb).astype(np.complex64), "mask": mask, "reference": np.abs(x).astype(np.float32),
            "acceleration": float(acc)}


def _series(k: np.ndarray, mask: np.ndarray, net, dev, **net_kw) -> np.ndarray:
    """One single-coil series, k-space (T, kx, ky) -> complex image (T, x, y)."""
    from ..models.dynamic import from_hybrid
    from ..physics.fourier import ifftnc

    hyb = ifftnc(k, (-2,))                     # (x, ky): the networks' hybrid space
    zf = from_hybrid(hyb)
    s = float(np.abs(zf).max()) or 1.0
    if net is None:
        return zf
    with torch.inference_mode():
        out = net(torch.from_numpy((hyb / s).astype(np.complex64))[None].to(dev),
                  torch.from_numpy(mask)[None].to(dev), **net_kw)
    return out[0].cpu().numpy() * s


def reconstruct_cine(kspace_or_images: np.ndarray, mask: Optional[np.ndarray] = None, method: str = "cascade",
                     model=None, device=None, accel: float = 5.0, domain: Optional[str] = None,
                     progress: bool = False, cancel: Optional[Callable[[], bool]] = None,
                     progress_callback: Optional[Callable[[float], None]] = None,
                     return_complex: bool = False, stages: Optional[int] = None) -> np.ndarray:
    """Reconstruct a cine.

    ``kspace_or_images``: k-space ``[frames, (coils,) kx, ky]`` (complex, ``domain="kspace"``,
    the default for complex input) or fully sampled images ``[frames, (slices,) x, y]``
    (``domain="image"``, the default for real input), which are undersampled first with
    ``mask`` or, without one, a variable-density draw at ``accel``. ``mask`` ``[frames, ky]``
    defaults, for k-space, to the lines holding non-zero samples in each frame.

    Returns the magnitude ``[frames, x, y]`` (``[frames, slices, x, y]`` for multi-slice
    images), float32; complex when ``return_complex`` (single coil only). ``stages``: run only
    the cascade's first stages (to study how quality grows with their number).
    """
    if method not in CINE_METHODS:
        raise ValueError(f"unknown cine method {method!r}; choose from {CINE_METHODS}")
    a = np.asarray(kspace_or_images)
    if a.ndim not in (3, 4):
        raise ValueError(f"expected [frames, (coils or slices,) x, y], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise ValueError("the input contains NaN, inf or non-numbers")
    domain = domain or ("kspace" if np.iscomplexobj(a) else "image")
    if domain not in ("kspace", "image"):
        raise ValueError("domain must be 'kspace' or 'image'")
    t, ny = a.shape[0], a.shape[-1]
    multi_slice = False
    if domain == "image":
        und = undersample_cine(a, accel=accel, mask=mask)
        k, mask = und["kspace"], und["mask"]
        multi_slice = a.ndim == 4
    else:
        k = a.astype(np.complex64)
        if mask is None:
            sampled = np.abs(k).reshape(t, -1, ny).sum(axis=1) > 0
            mask = sampled.astype(np.float32)
        mask = check_mask(mask, t, ny)
        k = k * mask.reshape((t,) + (1,) * (k.ndim - 2) + (ny,))
    if t < 3 and method != "zero-filled":
        raise ValueError("the networks need at least 3 frames")
    net, dev = None, None
    if method != "zero-filled":
        from ..models.dynamic import CineCascade, SeedDynamicNet

        net = model if isinstance(model, (CineCascade, SeedDynamicNet)) else load_cine_model(method, model, device)[0]
        dev = next(net.parameters()).device
        if method == "seed" and net.cfg.frames != t:
            raise ValueError(f"the seed network was trained on {net.cfg.frames} frames; this series has {t} "
                             "(use the cascade, which takes any number of frames)")
    parts = np.moveaxis(k, 1, 0) if k.ndim == 4 else k[None]  # (P, T, kx, ky): P coils or slices
    out = []
    for i, kp in enumerate(tqdm(parts, desc=f"cine {method}", unit="series", disable=not progress or len(parts) < 2)):
        if cancel is not None and cancel():
            raise Cancelled("cine reconstruction cancelled")
        out.append(_series(kp, mask, net, dev, **({"stages": stages} if stages and method == "cascade" else {})))
        if progress_callback is not None:
            progress_callback((i + 1) / len(parts))
    rec = np.stack(out)                                       # (P, T, x, y)
    if return_complex:
        if len(rec) != 1:
            raise ValueError("complex output is for single-coil, single-slice series")
        return rec[0].astype(np.complex64)
    if multi_slice:
        return np.abs(np.moveaxis(rec, 0, 1)).astype(np.float32)
    return np.sqrt((np.abs(rec) ** 2).sum(axis=0)).astype(np.float32)
