"""Networks for 2D+time (cine) reconstruction from ky-t undersampled k-space.

Conventions: a cine is (B, T, H, W) complex, H = x (readout, fully sampled), W = y (phase
encode, undersampled per frame). Masks are (B, T, W) or (T, W) over ky, broadcast along x.
Because the masks do not depend on kx, the data-consistency step works in hybrid space
(x, ky), a 1D centred FFT along y: it is exactly the 2D k-space step (the FFT along x is
unitary and commutes with the mask), and it lets training use crops along x.

* :class:`SeedDynamicNet`: the cine seed's architecture. Two 2D U-Nets, one for the real
  and one for the imaginary part of the zero-filled series, frames stacked as channels,
  LeakyReLU(0.1), dropout and channel and spatial attention (CBAM) at the bottleneck; then a
  lightweight 3D ResNet over (real/imag, T, H, W) for temporal fusion: one residual block
  per layer and a final 1x1x1 convolution.
* :class:`CineCascade`: the unrolled network the seed left as a TODO, in the spirit of
  DC-CNN (Schlemper et al. 2018): K stages of a spatio-temporal 3D CNN denoiser (residual),
  each followed by an exact data-consistency layer, noise-aware:
  k <- (1 - m) k + m (k + lambda k0) / (1 + lambda), lambda learned (lambda -> inf
  gives k = k0 on the sampled lines, the noise-free limit; ``exact=True`` forces it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..physics.fourier import fftnc, ifftnc
from .unrolled import pad_to_multiple


def to_hybrid(x):
    """Image (..., H, W) -> hybrid space (x, ky): centred orthonormal FFT along y."""
    return fftnc(x, (-1,))


def from_hybrid(k):
    return ifftnc(k, (-1,))


def _mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(T, W) or (B, T, W) mask -> broadcastable to (B, T, H, W)."""
    m = mask.to(like.real.dtype)
    if m.dim() == 2:
        m = m[None]
    return m[:, :, None, :]


def data_consistency(x: torch.Tensor, k0: torch.Tensor, mask: torch.Tensor, lam=None) -> torch.Tensor:
    """DC-CNN data consistency of image ``x`` with sampled hybrid k-space ``k0`` (zero where
    unsampled). ``lam`` None: sampled lines replaced exactly; else a noise-aware average."""
    k = to_hybrid(x)
    m = _mask(mask, k)
    if lam is None:
        kdc = (1 - m) * k + m * k0
    else:
        kdc = (1 - m) * k + m * (k + lam * k0) / (1 + lam)
    return from_hybrid(kdc)


def c2r(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W) complex -> (B, 2, T, H, W) real."""
    return torch.stack([x.real, x.imag], 1)


def r2c(x: torch.Tensor) -> torch.Tensor:
    return torch.complex(x[:, 0], x[:, 1])


# ----------------------------------------------------------------------------- seed net
class CBAM(nn.Module):
    """Channel attention (avg- and max-pooled MLP) then spatial attention (7x7 conv)."""

    def __init__(self, ch: int, reduction: int = 8):
        super().__init__()
        hid = max(ch // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(ch, hid, 1), nn.ReLU(inplace=True), nn.Conv2d(hid, ch, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        a = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(a)
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(s))


def _block2d(cin, cout, dropout):
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
              nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class FrameUNet(nn.Module):
    """2D U-Net with frames as channels (T in, T out), CBAM and channel dropout at the
    bottleneck, residual. No batch norm: training on small batches of crops and testing on
    whole images left its running statistics off (a first run with it did not beat
    zero-filled)."""

    def __init__(self, frames: int, width: int = 32, levels: int = 3, dropout: float = 0.3):
        super().__init__()
        ws = [width * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList()
        c = frames
        for w in ws:
            self.down.append(_block2d(c, w, 0.0))
            c = w
        self.mid = _block2d(ws[-1], ws[-1] * 2, dropout)
        self.att = CBAM(ws[-1] * 2)
        c = ws[-1] * 2
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for w in reversed(ws):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.dec.append(_block2d(2 * w, w, 0.0))
            c = w
        self.out = nn.Conv2d(c, frames, 1)
        self.levels = levels

    def forward(self, x):
        h, w = x.shape[-2:]
        y = pad_to_multiple(x, 2 ** self.levels)
        skips = []
        for blk in self.down:
            y = blk(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.att(self.mid(y))
        for up, dec, s in zip(self.up, self.dec, reversed(skips)):
            y = dec(torch.cat([up(y), s], 1))
        return x + self.out(y)[..., :h, :w]


class ResNet3D(nn.Module):
    """Lightweight 3D ResNet: head conv, ``layers`` layers of one residual block each, 1x1x1 out."""

    def __init__(self, width: int = 16, layers: int = 3):
        super().__init__()
        self.head = nn.Sequential(nn.Conv3d(2, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv3d(width, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                          nn.Conv3d(width, width, 3, padding=1)) for _ in range(layers))
        self.out = nn.Conv3d(width, 2, 1)

    def forward(self, x):
        h = self.head(x)
        for b in self.blocks:
            h = F.leaky_relu(h + b(h), 0.1)
        return x + self.out(h)


@dataclass
class DynamicConfig:
    arch: str = "cascade"        # "seed" or "cascade"
    frames: int = 20
    # seed net
    unet_width: int = 32
    unet_levels: int = 3
    dropout: float = 0.3
    resnet_width: int = 16
    resnet_layers: int = 3
    # cascade
    stages: int = 5
    width: int = 32
    depth: int = 5               # convolutions per denoiser
    shared: bool = False
    lam_init: float = 10.0
    exact_dc: bool = False

    def to_dict(self):
        return asdict(self)


class SeedDynamicNet(nn.Module):
    def __init__(self, cfg: DynamicConfig):
        super().__init__()
        self.cfg = cfg
        self.unet_re = FrameUNet(cfg.frames, cfg.unet_width, cfg.unet_levels, cfg.dropout)
        self.unet_im = FrameUNet(cfg.frames, cfg.unet_width, cfg.unet_levels, cfg.dropout)
        self.fuse = ResNet3D(cfg.resnet_width, cfg.resnet_layers)

    def forward(self, k0: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """k0: hybrid k-space (B, T, H, W) complex, zero where unsampled -> image (B, T, H, W)."""
        x = from_hybrid(k0 * _mask(mask, k0))
        y = torch.stack([self.unet_re(x.real), self.unet_im(x.imag)], 1)
        return r2c(self.fuse(y))


class STDenoiser(nn.Module):
    """Spatio-temporal CNN: ``depth`` 3x3x3 convolutions, LeakyReLU, residual on (2, T, H, W)."""

    def __init__(self, width: int = 32, depth: int = 5):
        super().__init__()
        layers, c = [], 2
        for _ in range(depth - 1):
            layers += [nn.Conv3d(c, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
            c = width
        layers.append(nn.Conv3d(c, 2, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.net(x)


class CineCascade(nn.Module):
    def __init__(self, cfg: DynamicConfig):
        super().__init__()
        self.cfg = cfg
        n = 1 if cfg.shared else cfg.stages
        self.denoisers = nn.ModuleList(STDenoiser(cfg.width, cfg.depth) for _ in range(n))
        self.lam_raw = nn.Parameter(torch.tensor(math.log(math.expm1(cfg.lam_init))))

    @property
    def lam(self):
        return F.softplus(self.lam_raw)

    def forward(self, k0: torch.Tensor, mask: torch.Tensor, stages: int = None) -> torch.Tensor:
        k0 = k0 * _mask(mask, k0)
        x = from_hybrid(k0)
        lam = None if self.cfg.exact_dc else self.lam
        for s in range(self.cfg.stages if stages is None else stages):
            d = self.denoisers[0 if self.cfg.shared else s]
            x = data_consistency(r2c(d(c2r(x))), k0, mask, lam)
        return x


def build_dynamic(cfg: DynamicConfig) -> nn.Module:
    if cfg.arch == "seed":
        return SeedDynamicNet(cfg)
    if cfg.arch == "cascade":
        return CineCascade(cfg)
    raise ValueError(f"unknown dynamic architecture {cfg.arch!r}")
