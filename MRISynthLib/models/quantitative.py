"""Physics-informed synthesis: estimate PD/T1/T2 from ordinary scans, render any contrast.

Model (:class:`QuantNet`)
    Input: one or more co-registered images of a slice (up to ``n_inputs``), each with its
    acquisition (sequence type, TE, TR, TI, flip angle; :func:`encode_acquisition`), each
    image scaled so that its maximum is 1; renders come out in the first input's units.
    A U-Net (GroupNorm, SiLU) maps the stacked images and broadcast acquisition channels
    to per-voxel *compartment densities* ``p_k(x)``, k = 1..K: the proton density that
    compartment k contributes to voxel x (PD-weighted partial-volume fractions). A
    global head then reads, for every compartment, the mean input intensity inside it
    and the acquisition codes, and predicts the compartment's T1, T2 and T2*, plus one
    scalar ``g`` that converts PD to the input's (normalised) intensity units.

    Output ranges are enforced by the output layer: ``p_k`` in [0, 1.5] (PD relative to
    water, times a receive bias within +/-25 %), T1 in [50 ms, 6 s], T2 in [5 ms, 3 s]
    and T2* in [1 ms, T2] (sigmoids in log space).

Why compartments: a voxel of a real scan (and of the simulator) holds a mixture of
tissues; its signal is the sum over tissues of fraction x signal, which one mono-
exponential (PD, T1, T2) triple cannot reproduce across all TE/TR/TI (the analytic
"effective maps" oracle of the re-parameterization benchmark loses ~8 dB for exactly this
reason). With compartments the rendered image is

    S(x; seq) = g * sum_k p_k(x) * s(1, T1_k, T2_k, T2*_k; seq)

where ``s`` is the foundation's signal equation (:mod:`MRISynthLib.physics.signal`):
spin echo, inversion recovery (FLAIR, STIR, any TI) or spoiled gradient echo. A new
contrast is K scalars and one weighted sum of cached maps, which is what makes slider
re-rendering real time. Per-voxel effective maps (what ``--save-maps`` writes) follow
the simulator's own definition (:meth:`MRISynthLib.physics.phantoms.Phantom.maps`):
PD = sum_k p_k, and T1, T2, T2* as PD-weighted harmonic means (rates averaged).

Limits: T1/T2 are per compartment and per input (one value for each compartment in a
slice or volume), so a focal lesion appears as a mixture of the learned compartments
rather than with its own relaxation times; the transmit B1 field is not modelled (a
receive bias is absorbed in ``p_k``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..physics.signal import SequenceParams

N_ACQ = 8
T1_RANGE = (0.05, 6.0)
T2_RANGE = (0.005, 3.0)
T2S_MIN = 0.001
P_MAX = 1.5


def encode_acquisition(seq: Optional[SequenceParams]) -> np.ndarray:
    """8 numbers per acquisition: ln(TE/50 ms), ln(TR/4.5 s), TI/TR, flip/90, one-hot
    (se, ir, gre), present. ``None`` (no image in this slot) gives zeros."""
    if seq is None:
        return np.zeros(N_ACQ, np.float32)
    ti = seq.ti / seq.tr if seq.sequence == "ir" else 0.0
    flip = (seq.flip if seq.sequence == "gre" else 90.0) / 90.0
    onehot = [seq.sequence == s for s in ("se", "ir", "gre")]
    return np.array([math.log(seq.te / 0.05), math.log(seq.tr / 4.5), ti, flip, *onehot, 1.0], np.float32)


@dataclass
class QuantConfig:
    n_inputs: int = 2
    compartments: int = 9           # the BrainWeb labels 1..9
    widths: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    head_width: int = 128

    def to_dict(self):
        return asdict(self)


def _block(cin, cout):
    g = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(g, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(g, cout), nn.SiLU())


@dataclass
class QuantMaps:
    """Compartment densities ``p`` (B, K, H, W), per-compartment ``t1``, ``t2``, ``t2s``
    (B, K) in seconds, and the PD -> intensity scale ``g`` (B,)."""
    p: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    t2s: torch.Tensor
    g: torch.Tensor


def _range(x, lo, hi):
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.sigmoid(x))


class QuantNet(nn.Module):
    def __init__(self, cfg: QuantConfig = QuantConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        cin = cfg.n_inputs * (1 + N_ACQ)
        self.down = nn.ModuleList()
        c = cin
        for wi in w:
            self.down.append(_block(c, wi))
            c = wi
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for wi in reversed(w[:-1]):
            self.up_conv.append(nn.Conv2d(c, wi, 1))
            self.up.append(_block(2 * wi, wi))
            c = wi
        self.p_out = nn.Conv2d(c + cfg.n_inputs, cfg.compartments, 1)
        K, M = cfg.compartments, cfg.n_inputs
        hin = w[-1] + M * N_ACQ + K * (M + 1)
        self.head = nn.Sequential(nn.Linear(hin, cfg.head_width), nn.SiLU(),
                                  nn.Linear(cfg.head_width, cfg.head_width), nn.SiLU(),
                                  nn.Linear(cfg.head_width, 3 * K + 1))

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.cfg.widths) - 1)

    def forward(self, images: torch.Tensor, acq: torch.Tensor) -> QuantMaps:
        """images (B, M, H, W) normalised, acq (B, M, 8); unused slots are zeros."""
        B, M, H, W = images.shape
        if M != self.cfg.n_inputs or acq.shape != (B, M, N_ACQ):
            raise ValueError(f"expected {self.cfg.n_inputs} input slots and acquisition codes (B, M, {N_ACQ})")
        m = self.multiple
        ph, pw = (-H) % m, (-W) % m
        x_img = F.pad(images, (0, pw, 0, ph), mode="replicate") if ph or pw else images
        hp, wp = x_img.shape[-2:]
        a = acq[:, :, :, None, None].expand(B, M, N_ACQ, hp, wp).reshape(B, M * N_ACQ, hp, wp)
        x = torch.cat([x_img, a], 1)
        skips = []
        for i, blk in enumerate(self.down):
            if i:
                x = F.avg_pool2d(x, 2)
            x = blk(x)
            skips.append(x)
        bottleneck = x.mean((-2, -1))
        for conv, blk, s in zip(self.up_conv, self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = blk(torch.cat([conv(x), s], 1))
        p = P_MAX * torch.sigmoid(self.p_out(torch.cat([x, x_img], 1)))[..., :H, :W]
        # per-compartment mean intensity of each input and compartment mass
        mass = p.sum((-2, -1)) + 1e-3                                       # (B, K)
        means = torch.einsum("bkhw,bmhw->bkm", p, images) / mass[..., None]  # (B, K, M)
        feats = torch.cat([bottleneck, acq.reshape(B, -1), means.reshape(B, -1),
                           torch.log(mass / (H * W))], 1)
        h = self.head(feats)
        K = self.cfg.compartments
        t1 = _range(h[:, :K], *T1_RANGE)
        t2 = torch.minimum(_range(h[:, K:2 * K], *T2_RANGE), t1)
        t2s = T2S_MIN + (t2 - T2S_MIN) * torch.sigmoid(h[:, 2 * K:3 * K] + 1.0)
        g = torch.exp(h[:, 3 * K])
        return QuantMaps(p, t1, t2, t2s, g)


def compartment_signals(t1, t2, t2s, seq: SequenceParams):
    """Signal of unit PD per compartment for one acquisition (same shape as ``t1``)."""
    return seq.signal(torch.ones_like(t1), t1, t2, t2s, validate=False)


def render(q: QuantMaps, seq: SequenceParams) -> torch.Tensor:
    """Differentiable image (B, H, W) of the acquisition ``seq`` from the estimate."""
    s = compartment_signals(q.t1, q.t2, q.t2s, seq)
    return q.g[:, None, None] * torch.einsum("bk,bkhw->bhw", s, q.p)


def effective_maps(p, t1, t2, t2s) -> Dict[str, np.ndarray]:
    """Per-voxel PD and PD-weighted harmonic-mean T1/T2/T2* from compartments (numpy).

    ``p`` (K, ...) densities; ``t1``/``t2``/``t2s`` (K,) seconds. Voxels without PD get 0
    (the simulator's convention, :meth:`Phantom.maps`).
    """
    p = np.asarray(p, np.float32)
    pd = p.sum(0)
    out = {"pd": pd}
    safe = np.maximum(pd, 1e-12)
    for name, t in (("t1", t1), ("t2", t2), ("t2star", t2s)):
        rate = np.tensordot((1.0 / np.asarray(t, np.float64)).astype(np.float32), p, axes=1) / safe
        out[name] = np.where(pd > 1e-4, 1.0 / np.maximum(rate, 1e-6), 0.0).astype(np.float32)
    return out


def stack_inputs(images: Sequence[np.ndarray], seqs: Sequence[SequenceParams], n_slots: int):
    """Co-registered images (each (..., H, W)) and acquisitions -> (images (N, M, H, W), acq (N, M, 8)),
    with empty slots zero-filled. The first image must be present."""
    if not 1 <= len(images) <= n_slots or len(images) != len(seqs):
        raise ValueError(f"give 1 to {n_slots} input images, each with its acquisition")
    shape = np.shape(images[0])
    for im in images[1:]:
        if np.shape(im) != shape:
            raise ValueError(f"all inputs must have the same shape; got {shape} and {np.shape(im)}")
    lead = shape[:-2]
    n = int(np.prod(lead)) if lead else 1
    ims = np.zeros((n, n_slots) + tuple(shape[-2:]), np.float32)
    acq = np.zeros((n, n_slots, N_ACQ), np.float32)
    for j, (im, sq) in enumerate(zip(images, seqs)):
        ims[:, j] = np.asarray(im, np.float32).reshape((n,) + tuple(shape[-2:]))
        acq[:, j] = encode_acquisition(sq)
    return ims, acq
