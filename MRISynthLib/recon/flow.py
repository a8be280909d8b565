"""Reconstruction with a normalizing-flow prior: optimise over the flow's latent z.

For multi-coil k-space y = M F S x + noise and a flow G: z -> image in [0, 1] (seed 004),

    min_z  ||A(c G(z) e^{i phi}) - y||^2 + lambda ||G(z)||_1 - beta log p(G(z))

with A = M F S the same SENSE operator as every other method
(:mod:`MRISynthLib.physics.sense`), Adam over z, z initialised from the flow's latent of
the zero-filled magnitude. The variants are ``l1+logprob`` (the seed's best), ``l1``
(beta = 0) and ``logprob`` (lambda = 0).

The flow models magnitudes; complex data enter through the operator with the image's
phase phi taken from a low-resolution CG-SENSE image of the fully sampled k-space centre
(``phase="estimate"``; ``"zero"`` treats the object as real, as seed 004 did). Intensities:
k-space is divided by s0, the 99.9th percentile of a CG-SENSE magnitude, so the image is
about [0, 1] like the flow's training data, and a scalar c (init 1) is optimised with z
so that a wrong s0 does not bias the result. log p is the flow's continuous density on
[0, 1]^N in nats (per image), so lambda and beta are per-image weights in these units.

Grey levels: a prior trained on images quantised to 2^b levels k / (2^b - 1) saw them
dequantised, (k + u) / 2^b with u ~ U[0, 1), so a level's image value sits at the centre of
its bin in the flow's space. With ``bits`` set (the prior's bit depth, from its model card)
the image is therefore m = clip((2^b G(z) - 1/2) / (2^b - 1), 0, 1), the inverse of that
map, and z starts from the flow's latent of the zero-filled image mapped to bin centres;
the L1 term acts on m and log p on G(z), i.e. the prior's density of m's bin centres
(up to a constant). ``bits=None`` takes m = G(z) (a prior of continuous images).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..physics.sense import sense_forward
from ..tasks import Cancelled
from . import classical as C

VARIANTS = ("l1+logprob", "l1", "logprob")


@dataclass
class FlowSolverConfig:
    lamda: float = 0.05
    beta: float = 1e-3
    iters: int = 300
    lr: float = 0.05
    phase: str = "estimate"     # or "zero"
    bits: Optional[int] = None  # the prior's bit depth (see the module text); None: continuous

    def to_dict(self):
        return asdict(self)


def weights_for(variant: str, cfg: FlowSolverConfig):
    """(lambda, beta) of a variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown flow variant {variant!r}; choose from {VARIANTS}")
    return (0.0 if variant == "logprob" else cfg.lamda), (0.0 if variant == "l1" else cfg.beta)


def to_prior_space(m, bits: Optional[int]):
    """Image values in [0, 1] -> the flow's space: the centres of the dequantisation bins."""
    if not bits:
        return m
    levels = 2 ** int(bits)
    return (m * (levels - 1) + 0.5) / levels


def from_prior_space(g, bits: Optional[int], clip: bool = True):
    """The flow's space -> image values: the inverse of :func:`to_prior_space`, clipped to
    [0, 1] (torch tensors) unless ``clip`` is False (then numpy arrays work too)."""
    if not bits:
        return g
    levels = 2 ** int(bits)
    m = (g * levels - 0.5) / (levels - 1)
    return m.clamp(0.0, 1.0) if clip else m


def _centre_mask(mask: np.ndarray) -> np.ndarray:
    """The mask restricted to its fully sampled block around the k-space centre."""
    sx, sy = C.acs_region(mask, mask.shape)
    out = np.zeros_like(mask)
    out[sx, sy] = mask[sx, sy]
    return out


def prepare(kspace: np.ndarray, maps: np.ndarray, mask: np.ndarray, phase: str = "estimate"):
    """Per slice: (scale s0, phase map, zero-filled magnitude / s0) from the data alone."""
    if phase not in ("estimate", "zero"):
        raise ValueError("phase must be 'estimate' or 'zero'")
    cg = C.cg_sense(kspace, maps, mask, lamda=1e-2, iters=15)
    s0 = float(np.percentile(np.abs(cg), 99.9)) or 1.0
    if phase == "estimate":
        ph = np.angle(C.cg_sense(kspace, maps, _centre_mask(mask), lamda=1e-2, iters=15)).astype(np.float32)
    else:
        ph = np.zeros(mask.shape, np.float32)
    zf = np.abs(C.zero_filled(kspace, maps, mask)) / s0
    return s0, ph, zf.astype(np.float32)


def objective_terms(flow, z, c, y, maps, mask, phase, size, bits: Optional[int] = None):
    """(data ||A x - y||^2, ||m||_1, log p(G(z))) per image, and the image x = c m e^{i phi},
    m = G(z) mapped to image values (:func:`from_prior_space`)."""
    g, ld = flow.inverse(z, size)   # ld = log|det dG/dz|
    m = from_prior_space(g[:, 0], bits)
    logp = flow.base_log_prob(z) - ld  # change of variables: log p(x) = log p(z) - log|det dG/dz|
    x = c[:, None, None] * torch.polar(m, phase) if phase is not None else c[:, None, None] * m.to(y.dtype)
    r = sense_forward(x, maps, mask) - y
    data = (r.abs() ** 2).flatten(1).sum(1)
    return data, m.abs().flatten(1).sum(1), logp, x


def flow_reconstruct(flow, kspace: np.ndarray, maps: np.ndarray, mask: np.ndarray, variant: str = "l1+logprob",
                     cfg: FlowSolverConfig = FlowSolverConfig(), device=None, progress: bool = False,
                     cancel: Optional[Callable[[], bool]] = None,
                     progress_callback: Optional[Callable[[float], None]] = None, history: Optional[list] = None,
                     snapshot: Optional[Callable[[int, np.ndarray], None]] = None, snapshot_every: int = 100):
    """k-space (B, C, H, W) complex, maps (B, C, H, W), masks (B, H, W) or (H, W) ->
    complex images (B, H, W). All slices are solved together (independent problems).
    ``history`` (a list) receives the mean objective per iteration; ``snapshot(it, images)``
    is called with the current images (as returned at the end) after every
    ``snapshot_every`` iterations, e.g. to follow the error against the iteration count."""
    lamda, beta = weights_for(variant, cfg)
    k = np.asarray(kspace)
    if k.ndim == 3:
        k = k[None]
    b, _, h, w = k.shape
    maps = np.broadcast_to(np.asarray(maps), k.shape)
    mask = np.broadcast_to(np.asarray(mask, np.float32), (b, h, w))
    flow.check_shape(h, w)
    dev = next(flow.parameters()).device if device is None else torch.device(device)
    prep = [prepare(k[i], maps[i], mask[i], cfg.phase) for i in range(b)]
    s0 = np.array([p[0] for p in prep], np.float32)
    t = lambda a: torch.from_numpy(np.array(a)).to(dev)  # noqa: E731
    y = t((k / s0[:, None, None, None]).astype(np.complex64))
    mp, mk = t(maps.astype(np.complex64)), t(mask)
    phase = t(np.stack([p[1] for p in prep])) if cfg.phase == "estimate" else None
    with torch.no_grad():
        z0, _ = flow(to_prior_space(t(np.clip(np.stack([p[2] for p in prep]), 0.0, 1.0)), cfg.bits)[:, None])
    z = z0.clone().requires_grad_(True)
    logc = torch.zeros(b, device=dev, requires_grad=True)
    opt = torch.optim.Adam([z, logc], lr=cfg.lr)
    for p in flow.parameters():
        p.requires_grad_(False)
    try:
        for it in tqdm(range(cfg.iters), desc=f"flow {variant}", unit="it", disable=not progress):
            if cancel is not None and cancel():
                raise Cancelled("reconstruction cancelled")
            data, l1, logp, x = objective_terms(flow, z, logc.exp(), y, mp, mk, phase, (h, w), cfg.bits)
            obj = data + lamda * l1 - beta * logp
            if snapshot is not None and it > 0 and it % snapshot_every == 0:   # x of the current z
                snapshot(it, (x.detach().cpu().numpy() * s0[:, None, None]).astype(np.complex64))
            opt.zero_grad(set_to_none=True)
            obj.sum().backward()
            opt.step()
            if history is not None:
                history.append(float(obj.detach().mean()))
            if progress_callback is not None:
                progress_callback((it + 1) / cfg.iters)
        with torch.no_grad():
            x = objective_terms(flow, z, logc.exp(), y, mp, mk, phase, (h, w), cfg.bits)[3]
    finally:
        for p in flow.parameters():
            p.requires_grad_(True)
    out = (x.cpu().numpy() * s0[:, None, None]).astype(np.complex64)
    if snapshot is not None and cfg.iters % snapshot_every == 0:
        snapshot(cfg.iters, out)
    return out

