"""Training data and trainer for the neural-spline-flow image prior (seed 004's regime).

Images: magnitudes of the SIAT complex head slices (train 0-149, validation 150-159, the
test slices 160-199 never touched, the same split as the other reconstruction models)
and BrainWeb slices rendered at random spin-echo contrasts, area-resized to 80 x 64
(the seed's knee size; SIAT's square slices become anisotropic pixels), scaled to max 1
and quantised to 2^bits grey levels; optionally random affine copies of the SIAT training
slices (:func:`affine_copies`) against over-fitting their 150 images. Training dequantizes
with uniform noise, x = (k + u) / 2^bits, and reports the negative log-likelihood in bits per
dimension.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.flow import FlowConfig, ImageFlow
from .common import log_step, resume, save_ckpt, start_run

FLOW_SIZE = (80, 64)


def resize_magnitude(images: np.ndarray, size: Tuple[int, int] = FLOW_SIZE) -> np.ndarray:
    """|images| (N, H, W) area-resized to ``size``."""
    from ..data.recon_data import area_resize
    return area_resize(np.abs(np.asarray(images)).astype(np.float32), size=size)


def quantise(images: np.ndarray, bits: Optional[int]) -> np.ndarray:
    """Per image: max -> 1, then (if ``bits``) rounded to 2^bits - 1 steps; float32 in [0, 1]."""
    from ..data.recon_data import bit_scale

    x = np.asarray(images, np.float32)
    if bits:
        return bit_scale(x, bits).real.astype(np.float32)
    return (x / np.maximum(x.reshape(len(x), -1).max(1), 1e-12)[:, None, None]).astype(np.float32)


def siat_magnitudes(indices, bits: Optional[int], size=FLOW_SIZE) -> np.ndarray:
    from ..data.recon_data import load_siat
    return quantise(resize_magnitude(load_siat(indices), size), bits)


def affine_copies(images: np.ndarray, copies: int, rng: np.random.Generator, rotate: float = 10.0,
                  scale: float = 0.1, shift: float = 0.06) -> np.ndarray:
    """``copies`` randomly transformed versions of each magnitude image (N, H, W) at its own
    resolution: rotation U(-rotate, rotate) degrees, isotropic zoom U(1 - scale, 1 + scale)
    and a shift U(-shift, shift) of the image size per axis about the centre (bilinear,
    zeros outside). Returns (N * copies, H, W)."""
    from scipy.ndimage import affine_transform

    mags = np.abs(np.asarray(images)).astype(np.float32)
    h, w = mags.shape[-2:]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    out = []
    for img in mags:
        for _ in range(copies):
            a = np.deg2rad(rng.uniform(-rotate, rotate))
            z = rng.uniform(1 - scale, 1 + scale)
            m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / z  # output -> input coordinates
            t = centre + rng.uniform(-shift, shift, 2) * np.array([h, w])
            out.append(affine_transform(img, m, offset=centre - m @ t, order=1, mode="constant", cval=0.0))
    return np.stack(out).astype(np.float32) if out else np.zeros((0, h, w), np.float32)


def brainweb_magnitudes(n: int, bits: Optional[int], size=FLOW_SIZE, seed: int = 0) -> np.ndarray:
    """``n`` BrainWeb slices at random spin-echo contrasts (as the cine simulator draws them)."""
    from ..data.cine import anatomy_images

    imgs = anatomy_images("brainweb", n, 2 * size[0], np.random.default_rng(seed))
    return quantise(resize_magnitude(np.stack(imgs), size), bits)


def flow_training_images(bits: int, n_brainweb: int = 100, size=FLOW_SIZE, seed: int = 0, augment: int = 0):
    """(train, val) image arrays (N, H, W) in [0, 1]; ``augment`` random affine copies
    (:func:`affine_copies`, at the slices' full resolution) of each SIAT training slice are
    added to the training set."""
    from ..data.recon_data import MulticoilConfig, load_siat, siat_split

    tr, va, _ = siat_split(MulticoilConfig())
    siat = load_siat(tr)
    train = quantise(resize_magnitude(siat, size), bits)
    if augment:
        extra = affine_copies(siat, augment, np.random.default_rng([seed, 7]))
        train = np.concatenate([train, quantise(resize_magnitude(extra, size), bits)])
    if n_brainweb:
        train = np.concatenate([train, brainweb_magnitudes(n_brainweb, bits, size, seed)])
    return train, siat_magnitudes(va, bits, size)


@dataclass
class FlowTrainConfig:
    bits: int = 4
    steps: int = 1500
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 100
    grad_clip: float = 50.0
    seed: int = 0
    threads: Optional[int] = None
    ckpt_every: int = 100
    val_every: int = 100


def dequantise(x: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Quantised [0, 1] values k / (2^b - 1) -> (k + u) / 2^b, u ~ U[0, 1)."""
    levels = 2 ** bits
    k = np.round(x * (levels - 1))
    return ((k + rng.uniform(size=x.shape)) / levels).astype(np.float32)


@torch.no_grad()
def validate_bpd(flow: ImageFlow, images: np.ndarray, bits: int, seed: int = 1, batch: int = 16) -> float:
    rng = np.random.default_rng(seed)
    flow.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(dequantise(images[i:i + batch], bits, rng))[:, None]
        out.append(flow.bits_per_dim(x, 2 ** bits))
    return float(torch.cat(out).mean())


def train_flow(cfg: FlowConfig, train: np.ndarray, out_dir, tc: FlowTrainConfig,
               val: Optional[np.ndarray] = None, progress: bool = True,
               init_state: Optional[dict] = None) -> ImageFlow:
    """Maximum likelihood on dequantized images; Adam with warm-up then cosine decay;
    left-right flips (of the first image axis, the heads' left-right); resumable from
    ``out_dir``; loss log ``flow_loss.csv`` (step, train bits/dim, validation bits/dim).
    ``init_state``: weights of a trained flow of the same configuration to continue from
    (a fresh optimiser and schedule; the ActNorm layers keep their trained values)."""
    out_dir = start_run(out_dir, tc.threads, tc.seed)
    flow = ImageFlow(cfg)
    opt = torch.optim.Adam(flow.parameters(), lr=tc.lr)
    ckpt = out_dir / "flow_ckpt.pt"
    start = resume(ckpt, flow, opt)
    rng = np.random.default_rng([tc.seed, start])
    if start == 0 and init_state is not None:
        flow.load_state_dict(init_state)
    elif start == 0:  # data-dependent ActNorm initialisation on a larger batch
        flow.train()
        with torch.no_grad():
            flow(torch.from_numpy(dequantise(train[rng.choice(len(train), 64)], tc.bits, rng))[:, None])
    lr_at = lambda s: tc.lr * min(1.0, (s + 1) / tc.warmup) * 0.5 * (1 + math.cos(math.pi * s / tc.steps))  # noqa: E731
    log = open(out_dir / "flow_loss.csv", "a", newline="")
    wr = csv.writer(log)
    step = start

    def save(s):
        save_ckpt(ckpt, model=flow.state_dict(), opt=opt.state_dict(), step=s, config=cfg.to_dict(),
                  train_config=asdict(tc))

    try:
        bar = tqdm(range(start, tc.steps), desc=f"flow {tc.bits}-bit", initial=start, total=tc.steps,
                   disable=not progress)
        for step in bar:
            flow.train()
            x = train[rng.choice(len(train), tc.batch, replace=len(train) < tc.batch)]
            flip = rng.uniform(size=len(x)) < 0.5
            x = np.where(flip[:, None, None], x[:, ::-1, :], x)  # anatomical left-right (SIAT rows)
            x = torch.from_numpy(dequantise(x, tc.bits, rng))[:, None]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = flow.bits_per_dim(x, 2 ** tc.bits).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), tc.grad_clip)
            opt.step()
            row = [step, f"{loss.item():.5f}", ""]
            if val is not None and (step + 1) % tc.val_every == 0:
                row[2] = f"{validate_bpd(flow, val, tc.bits):.5f}"
                bar.set_postfix(val_bpd=row[2])
            log_step(wr, log, row, step, tc.ckpt_every, save)
        step = max(start, tc.steps)
    finally:
        save(step)
        log.close()
    return flow.eval()


def flow_multicoil(indices, bits: Optional[int], accel: float = 4.0, mask_kind: str = "vd1d", center: int = 6,
                   n_coils: int = 8, snr: Optional[float] = 40.0, seed: int = 12345):
    """Multi-coil data in the flow's regime: quantised 80 x 64 SIAT magnitudes (real
    objects) through the shared simulator (birdcage maps, SNR, one mask per slice)."""
    from ..data.recon_data import MulticoilConfig, simulate_multicoil

    imgs = siat_magnitudes(indices, bits).astype(np.complex64)
    return simulate_multicoil(imgs, MulticoilConfig(n_coils=n_coils, snr=snr, mask_kind=mask_kind, accel=accel,
                                                    center=center, seed=seed))
