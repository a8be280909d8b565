"""Static multi-coil reconstruction entry point and k-space simulation from image volumes.

:func:`undersample_volume` turns a magnitude (or complex) image volume into multi-coil
k-space in the fastMRI layout: simulated birdcage coil maps, centred orthonormal FFT,
complex Gaussian noise at a given SNR, then a sampling mask (the same mask for every
slice). The volume's geometry is kept as file attributes so that the reconstruction
comes back with it.

:func:`reconstruct` runs one method on k-space [slices, coils, kx, ky]: ``zero-filled``
(adjoint with maps, else RSS), ``cg-sense``, ``cs`` (L1-wavelet) and ``unrolled`` (a
catalog network, :mod:`MRISynthLib.models.unrolled`; each slice scaled like its training
data, zero-filled 99th percentile = 1) and ``flow`` (optimisation over the latent of a
normalizing-flow image prior, :mod:`MRISynthLib.recon.flow`; the variant and the weights
lambda, beta default to the ones tuned for the model and stored in its catalog card).
Maps are estimated from the auto-calibration region when not given; the mask is taken
from the non-zero k-space samples when not given.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..device import resolve_precision
from ..physics.masks import make_mask
from ..physics.phantoms import noise_sigma
from ..physics.sense import birdcage_maps, sense_forward
from ..recon import classical as C
from . import Cancelled

METHODS = ("zero-filled", "cg-sense", "cs", "unrolled", "flow")


ONE_D_MASKS = ("vd1d", "equispaced")

# Regularisation weights of the classical methods (data scaled so that the zero-filled
# image has 99th percentile 1), chosen on the validation slices at each acceleration and
# mask family by ``scripts/bench_recon.py --tune-cs``; the nearest acceleration is used.
TUNED_LAMDA = {("cs", "1d"): {4.0: 1e-3, 8.0: 2.5e-4}, ("cg-sense", "1d"): {4.0: 4e-3, 8.0: 5e-4},
               ("cs", "2d"): {4.0: 2e-3}, ("cg-sense", "2d"): {4.0: 1.6e-2}}


def default_lamda(method: str, mask: np.ndarray) -> float:
    """The tuned weight of ``method`` ("cs" or "cg-sense") for this mask's family, at the
    tuned acceleration nearest to the mask's (on a log scale)."""
    table = TUNED_LAMDA[(method, mask_family(mask))]
    accel = acceleration(mask)
    return table[min(table, key=lambda r: abs(np.log(r / accel)))]


def acceleration(mask: np.ndarray) -> float:
    """Samples in the grid per sampled point."""
    m = np.asarray(mask)
    return m.size / max(float((m > 0).sum()), 1.0)


def mask_family(mask: np.ndarray) -> str:
    """"1d" when every sampled phase-encode line is fully sampled along kx, else "2d"."""
    m = np.asarray(mask) > 0
    m2 = m.reshape(-1, m.shape[-2], m.shape[-1]) if m.ndim >= 2 else m[None, None]
    return "1d" if all((mi == mi[:1]).all() for mi in m2) else "2d"


def load_unrolled(model: Optional[str] = None, device=None, accel: Optional[float] = None,
                  family: Optional[str] = None):
    """A catalog unrolled network, cached per device. Without ``model``: among the shipped
    ones trained for the mask ``family`` ("1d" lines or "2d" Poisson disc; all when not
    given), the one trained at the acceleration closest to ``accel``, the best benchmarked
    (PSNR) among equals (the first one when ``accel`` is not given)."""
    from ..catalog import get_card, load_network, shipped_models
    from ..models.unrolled import UnrolledConfig, UnrolledNet

    if model is None:
        # the default skips models trained for a special regime (the flow comparison's 80 x 64 magnitudes)
        cands = [c for c in shipped_models("recon", "unrolled reconstruction") if not c.training.get("regime")]
        if family is not None:
            same = [c for c in cands
                    if (c.training.get("mask_kind", "vd1d") in ONE_D_MASKS) == (family == "1d")]
            cands = same or cands
        if accel:
            cands.sort(key=lambda c: (abs(np.log(float(c.training.get("acceleration", 4.0)) / accel)),
                                      -float(c.metrics.get("psnr_mean", -np.inf))))
        model = cands[0].id
    card = get_card(model)
    return load_network(card, lambda arch: UnrolledNet(UnrolledConfig(**arch)), device), card


def load_flow(model: Optional[str] = None, device=None, bits: Optional[int] = None):
    """A catalog flow prior (cached per device). Without ``model``: the shipped one for
    ``bits`` (the 8-bit one when not given: it fits images that are not quantised)."""
    from ..catalog import get_card, load_network, shipped_models
    from ..models.flow import FlowConfig, ImageFlow

    if model is None:
        cands = shipped_models("recon-flow", "flow prior")
        want = bits or 8
        cands.sort(key=lambda c: abs(int(c.training.get("bits", 8)) - want))
        model = cands[0].id
    card = get_card(model)
    return load_network(card, lambda arch: ImageFlow(FlowConfig(**arch)), device), card


def flow_solver_config(tuned: dict, lamda: Optional[float] = None, beta: Optional[float] = None,
                       iters: Optional[int] = None, variant: str = "l1+logprob"):
    """Solver settings: the defaults, then ``tuned`` (a model card's ``training['solver']``;
    its ``beta_logprob`` is the beta tuned for the log-prob-only variant and ``lamda_l1``
    the lambda tuned for the L1-only variant), then the arguments that are given."""
    from dataclasses import fields

    from ..recon.flow import FlowSolverConfig

    names = {f.name for f in fields(FlowSolverConfig)}
    cfg = {**FlowSolverConfig().to_dict(), **{k: v for k, v in tuned.items() if k in names}}
    if variant == "logprob" and "beta_logprob" in tuned:
        cfg["beta"] = tuned["beta_logprob"]
    if variant == "l1" and "lamda_l1" in tuned:
        cfg["lamda"] = tuned["lamda_l1"]
    for key, v in dict(lamda=lamda, beta=beta, iters=iters).items():
        if v is not None:
            cfg[key] = v
    return FlowSolverConfig(**cfg)


def undersample_volume(images: np.ndarray, mask_kind: str = "vd1d", accel: float = 4.0, n_coils: int = 8,
                       snr: Optional[float] = 40.0, center: Optional[int] = None, seed: int = 0):
    """Images (slices, x, y) -> dict(kspace [S, C, kx, ky], mask, maps, reference (S, x, y)).

    SNR is the mean foreground image magnitude over the per-sample noise standard deviation
    in image space (the FFT is orthonormal, so noise keeps its level).
    """
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected (slices, x, y) images, got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("the images contain NaN or inf")
    s, nx, ny = images.shape
    maps = birdcage_maps(n_coils, (nx, ny))
    m = make_mask(mask_kind, (nx, ny), accel, center=center, seed=seed)
    mask2d = m.for_kspace(nx)
    rng = np.random.default_rng(seed)
    k = sense_forward(images.astype(np.complex64), maps[None]).astype(np.complex64)
    if snr:
        sigma = noise_sigma(images, snr) / np.sqrt(2)
        k = k + sigma * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)).astype(np.complex64)
    k = k * mask2d
    fastmri_mask = m.array.astype(np.float32) if m.array.ndim == 1 else None
    return {"kspace": k.astype(np.complex64), "mask": mask2d.astype(np.float32), "mask_1d": fastmri_mask,
            "maps": np.broadcast_to(maps, (s,) + maps.shape).copy(), "reference": np.abs(images).astype(np.float32),
            "acceleration": m.acceleration, "mask_kind": mask_kind}


def write_undersampled(vol, path, mask_kind: str = "vd1d", accel: float = 4.0, n_coils: int = 8,
                       snr: Optional[float] = 40.0, center: Optional[int] = None, seed: int = 0,
                       save_maps: bool = False, source: str = ""):
    """Simulate undersampled multi-coil k-space from a :class:`~MRISynthLib.data.io.Volume`
    (slices along its first array axis; complex arrays keep their phase) and write it as a
    fastMRI-layout HDF5 file with the volume's geometry; returns :func:`undersample_volume`'s dict."""
    from ..data.hdf5 import write_fastmri

    arr = vol.array if np.iscomplexobj(vol.array) else vol.array.astype(np.float32)
    sim = undersample_volume(arr, mask_kind, accel, n_coils, snr, center=center, seed=seed)
    attrs = {"acquisition": "MRISynth simulated", "mask_kind": mask_kind, "acceleration": sim["acceleration"],
             "n_coils": n_coils, "snr": snr or 0.0, "spacing": np.asarray(vol.spacing, float),
             "origin": np.asarray(vol.origin, float), "direction": np.asarray(vol.direction, float),
             "source": source}
    extra = {"maps": sim["maps"].astype(np.complex64)} if save_maps else {}
    if sim["mask_1d"] is None:
        extra["mask_2d"] = sim["mask"]
    write_fastmri(path, sim["kspace"], mask=sim["mask_1d"], reconstruction_rss=sim["reference"], attrs=attrs,
                  extra=extra)
    return sim


def reconstruct(kspace: np.ndarray, mask: Optional[np.ndarray] = None, maps: Optional[np.ndarray] = None,
                method: str = "cs", lamda: Optional[float] = None, iters: Optional[int] = None,
                model=None, device=None, progress: bool = False, cancel: Optional[Callable[[], bool]] = None,
                progress_callback: Optional[Callable[[float], None]] = None, beta: Optional[float] = None,
                flow_variant: Optional[str] = None, batch: int = 8, precision: str = "auto") -> np.ndarray:
    """Reconstruct k-space [slices, coils, kx, ky] (or [coils, kx, ky]) -> complex (slices, x, y).

    ``flow``: ``lamda``/``beta``/``iters``/``flow_variant`` override the model's tuned
    settings; ``batch`` slices are solved together. ``unrolled``: ``precision`` of the
    denoisers, "auto" (bf16 on CPUs with AMX, else fp32), "fp32" or "bf16"."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    k = np.asarray(kspace)
    if k.ndim == 3:
        k = k[None]
    if k.ndim != 4 or not np.iscomplexobj(k):
        raise ValueError(f"k-space must be complex [slices, coils, kx, ky], got {k.dtype} {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError("k-space contains NaN or inf")
    s, c, nx, ny = k.shape
    if mask is None:
        mask = (np.abs(k).sum(axis=(0, 1)) > 0).astype(np.float32)
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 1:
        mask = np.broadcast_to(mask[None, :], (nx, ny))
    if mask.shape[-2:] != (nx, ny):
        raise ValueError(f"mask shape {mask.shape} does not match k-space {(nx, ny)}")
    if maps is not None:
        maps = np.asarray(maps)
        if maps.ndim == 3:
            maps = np.broadcast_to(maps, (s,) + maps.shape)
        if maps.shape != k.shape:
            raise ValueError(f"maps {maps.shape} must match k-space {k.shape}")
    for name, v in (("lamda", lamda), ("beta", beta)):
        if v is not None and not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if iters is not None and iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if method == "flow":
        return _reconstruct_flow(k, mask, maps, lamda, beta, iters, flow_variant, model, device, progress, cancel,
                                 progress_callback, batch)
    out = np.zeros((s, nx, ny), np.complex64)
    if method == "unrolled":
        from ..models.unrolled import UnrolledNet

        net = model if isinstance(model, UnrolledNet) else load_unrolled(model, device, acceleration(mask),
                                                                          mask_family(mask))[0]
        dev = next(net.parameters()).device
        precision = resolve_precision(precision, dev)
    scale = np.percentile(np.abs(C.zero_filled(k[s // 2], None, mask)), 99) or 1.0
    for i in tqdm(range(s), desc=method, unit="slice", disable=not progress):
        if cancel is not None and cancel():
            raise Cancelled("reconstruction cancelled")
        ki = k[i] / scale
        mi = mask if mask.ndim == 2 else mask[i]
        if method == "zero-filled":
            out[i] = C.zero_filled(ki, None if maps is None else maps[i], mi)
        else:
            sm = maps[i] if maps is not None else C.estimate_maps(ki, mi)
            if method == "unrolled":
                zf = np.abs(C.zero_filled(ki, sm, mi))
                sc = float(np.percentile(zf, 99)) or 1.0
                t = lambda a: torch.from_numpy(np.ascontiguousarray(a)[None]).to(dev)  # noqa: E731
                with torch.inference_mode():
                    y = net(t((ki / sc).astype(np.complex64)), t(sm.astype(np.complex64)), t(mi.astype(np.float32)),
                            precision)
                out[i] = y[0].cpu().numpy() * sc
            elif method == "cg-sense":
                out[i] = C.cg_sense(ki, sm, mi, lamda=default_lamda(method, mi) if lamda is None else lamda,
                                    iters=iters or 30)
            else:
                out[i] = C.l1_wavelet_cs(ki, sm, mi, lamda=default_lamda(method, mi) if lamda is None else lamda,
                                         iters=iters or 100)
        out[i] *= scale
        if progress_callback is not None:
            progress_callback((i + 1) / s)
    return out


def _reconstruct_flow(k, mask, maps, lamda, beta, iters, variant, model, device, progress, cancel,
                      progress_callback, batch):
    from ..models.flow import ImageFlow
    from ..recon.flow import flow_reconstruct

    tuned = {}
    if isinstance(model, ImageFlow):
        net = model
    else:
        net, card = load_flow(model, device)
        tuned = card.training.get("solver", {})
        variant = variant or card.training.get("solver_variant")
    variant = variant or "l1+logprob"
    solver = flow_solver_config(tuned, lamda, beta, iters, variant)
    s = k.shape[0]
    if maps is None:
        maps = np.stack([C.estimate_maps(k[i], mask if mask.ndim == 2 else mask[i]) for i in range(s)])
    masks = np.broadcast_to(mask, (s,) + k.shape[-2:])
    out = np.zeros((s,) + k.shape[-2:], np.complex64)
    for i0 in range(0, s, batch):
        sl = slice(i0, min(s, i0 + batch))
        n = sl.stop - sl.start

        def cb(f, i0=i0, n=n):
            if progress_callback is not None:
                progress_callback((i0 + f * n) / s)
        out[sl] = flow_reconstruct(net, k[sl], maps[sl], masks[sl], variant, solver, progress=progress,
                                   cancel=cancel, progress_callback=cb)
    return out
