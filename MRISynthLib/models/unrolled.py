"""Unrolled reconstruction networks (MoDL / deep basis pursuit style).

x_0 = A^H y. For k = 1..K: z_k = D_k(x_{k-1}) (a CNN denoiser on the 2-channel real/imag
image, residual), then the data-consistency step

    x_k = argmin_x  mu ||A x - y||^2 + ||x - z_k||^2  =  (mu A^H A + I)^{-1} (mu A^H y + z_k)

solved by conjugate gradients on the SENSE operator of :mod:`MRISynthLib.physics.sense`.
``mu`` is learned (through a softplus, so it stays positive); as mu grows the sampled
k-space is reproduced exactly. Denoisers: a ResNet, and the seed's U-Net variant (3
levels, upsampling + 1x1 convolution in the expanding path). Weights can be shared across
unrolls or separate. The data are turned to a real, positive mean zero-filled value before
the unrolls and turned back after them, so the output follows a global phase of the data.
``precision="bf16"`` runs the denoisers under bfloat16 autocast (the data-consistency
steps stay complex64): about twice as fast on CPUs with AMX, the benchmark's PSNR within
0.01 dB of fp32.

Tensors: image (B, H, W) complex, maps (B, C, H, W) complex, mask (B, H, W) or (H, W).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..physics.fourier import fftshift2, ifftshift2
from ..physics.sense import sense_adjoint, shifted_normal
from ..recon.classical import conjugate_gradient


def c2r(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) complex -> (B, 2, H, W) real."""
    return torch.stack([x.real, x.imag], 1)


def r2c(x: torch.Tensor) -> torch.Tensor:
    return torch.complex(x[:, 0], x[:, 1])


class ResNetDenoiser(nn.Module):
    def __init__(self, width: int = 64, blocks: int = 5):
        super().__init__()
        self.head = nn.Conv2d(2, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                                  nn.Conv2d(width, width, 3, padding=1)) for _ in range(blocks))
        self.tail = nn.Conv2d(width, 2, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        for b in self.blocks:
            h = h + b(h)
        return x + self.tail(h)


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Zero-pad the last two axes at the end up to multiples of ``m`` (crop back with [..., :h, :w])."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class UNetDenoiser(nn.Module):
    """Seed-004 U-Net: 3 levels, max-pool down, bilinear upsampling + 1x1 conv up."""

    def __init__(self, width: int = 32, levels: int = 3):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

        ws = [width * 2 ** i for i in range(levels)]
        self.down = nn.ModuleList()
        c = 2
        for w in ws:
            self.down.append(block(c, w))
            c = w
        self.mid = block(ws[-1], ws[-1] * 2)
        c = ws[-1] * 2
        self.up_conv, self.up_block = nn.ModuleList(), nn.ModuleList()
        for w in reversed(ws):
            self.up_conv.append(nn.Conv2d(c, w, 1))
            self.up_block.append(block(2 * w, w))
            c = w
        self.out = nn.Conv2d(c, 2, 1)
        self.levels = levels

    def forward(self, x):
        h, w = x.shape[-2:]
        y = pad_to_multiple(x, 2 ** self.levels)
        skips = []
        for blk in self.down:
            y = blk(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.mid(y)
        for conv, blk, s in zip(self.up_conv, self.up_block, reversed(skips)):
            y = conv(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))
            y = blk(torch.cat([y, s], 1))
        y = self.out(y)[..., :h, :w]
        return x + y


PRECISIONS = ("fp32", "bf16")


@dataclass
class UnrolledConfig:
    denoiser: str = "resnet"   # "resnet" or "unet"
    unrolls: int = 4
    shared: bool = True
    width: int = 32
    blocks: int = 5            # ResNet blocks
    cg_iters: int = 8
    mu_init: float = 1.0

    def to_dict(self):
        return asdict(self)


def make_denoiser(cfg: UnrolledConfig) -> nn.Module:
    if cfg.denoiser == "resnet":
        return ResNetDenoiser(cfg.width, cfg.blocks)
    if cfg.denoiser == "unet":
        return UNetDenoiser(cfg.width)
    raise ValueError(f"unknown denoiser {cfg.denoiser!r}")


def data_consistency(z, aty, maps, mask, mu, iters: int = 8, x0=None):
    """(mu A^H A + I)^{-1} (mu A^H y + z) by CG, run in ifftshifted coordinates
    (:func:`~MRISynthLib.physics.sense.shifted_normal`: the same iterates, shifted, without
    shifting the coil data at every operator application)."""
    normal_s = shifted_normal(maps, mask)
    x, _ = conjugate_gradient(lambda v: mu * normal_s(v) + v, ifftshift2(mu * aty + z),
                              x0=None if x0 is None else ifftshift2(x0), iters=iters, tol=1e-7)
    return fftshift2(x)


def expand_state(state: dict, cfg: UnrolledConfig) -> dict:
    """A state dict of a trained network made fit for ``cfg`` with separate weights.

    From shared weights every unroll starts as the shared denoiser, so the network computes
    the same function as the one it came from until training separates them. From separate
    weights with fewer unrolls, the added unrolls start as copies of the last denoiser with
    its final layer zeroed: they begin as identities, so the network starts as the old one
    followed by further data-consistency steps."""
    n_old = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("denoisers."))
    if cfg.shared or n_old >= cfg.unrolls:
        return dict(state)
    last = list(make_denoiser(cfg).state_dict())[-2:]       # the final convolution's weight and bias
    out = {k: v for k, v in state.items() if not k.startswith("denoisers.")}
    for u in range(cfg.unrolls):
        for k, v in state.items():
            if k.startswith(f"denoisers.{min(u, n_old - 1)}."):
                name = k.split(".", 2)[2]
                new = n_old > 1 and u >= n_old
                out[f"denoisers.{u}.{name}"] = torch.zeros_like(v) if new and name in last else v.clone()
    return out


class UnrolledNet(nn.Module):
    def __init__(self, cfg: UnrolledConfig = UnrolledConfig()):
        super().__init__()
        self.cfg = cfg
        n = 1 if cfg.shared else cfg.unrolls
        self.denoisers = nn.ModuleList(make_denoiser(cfg) for _ in range(n))
        # softplus^-1(mu_init)
        self.mu_raw = nn.Parameter(torch.tensor(math.log(math.expm1(cfg.mu_init))))

    @property
    def mu(self):
        return F.softplus(self.mu_raw)

    @staticmethod
    def _layout(x):
        """Channels-last for inference: oneDNN's convolutions are faster that way on the CPU (same
        values); their backward is slower, so a pass that needs gradients keeps NCHW."""
        return x if torch.is_grad_enabled() else x.contiguous(memory_format=torch.channels_last)

    def forward(self, kspace, maps, mask, precision: str = "fp32"):
        """kspace (B, C, H, W) complex (zero where unsampled) -> image (B, H, W) complex.
        ``precision``: "fp32" or "bf16" (the denoisers under bfloat16 autocast)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        amp = (torch.autocast(kspace.device.type, dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())
        aty = sense_adjoint(kspace, maps, mask)
        # global phase normalisation: the denoiser sees the image turned so that its mean
        # zero-filled value is real and positive (as in the training data), and the result is
        # turned back. The network is then equivariant to a global phase of the data, which
        # real scans have arbitrarily (the denoiser alone is not: a phase of pi ruins it).
        rot = torch.sgn(aty.sum((-2, -1), keepdim=True))
        rot = torch.where(rot == 0, torch.ones_like(rot), rot)
        aty = aty * rot.conj()
        x = aty
        for k in range(self.cfg.unrolls):
            d = self.denoisers[0 if self.cfg.shared else k]
            with amp:
                z = d(self._layout(c2r(x)))
            z = r2c(z.float())
            x = data_consistency(z, aty, maps, mask, self.mu, self.cfg.cg_iters, x0=z)
        return x * rot
