"""A multi-scale rational-quadratic neural spline flow for single-channel images.

The density model of seed 004 (Durkan et al., "Neural Spline Flows", 2019, in the
multi-scale RealNVP/Glow layout of Dinh et al. 2017 and Kingma & Dhariwal 2018):

    x in [0, 1]^(C x H x W)  --logit-->  L levels of
        [squeeze 2x2 -> K x (ActNorm -> invertible 1x1 conv -> RQS coupling) -> split half]
    --> z (standard normal, the factored-out halves and the last level concatenated)

The rational-quadratic spline itself (bins, knots, its inverse and log-derivative) is
``zuko.transforms.MonotonicRQSTransform``: zuko is a small, tested, maintained flow
library whose transforms take their parameters as plain tensors, so they drop into a
convolutional coupling layer. Its ready-made flows are for vectors (MLP conditioners),
which is why the image architecture - squeeze, coupling masks, conditioner CNNs, 1x1
convolutions, ActNorm, multi-scale splits - is written here.

``forward(x)`` returns (z, log|det dz/dx|), ``inverse(z)`` returns (x, log|det dx/dz|),
``log_prob(x)`` is log p(x) in nats for x in [0, 1] (continuous density), and
``bits_per_dim`` is the usual dequantized discrete NLL. ``z`` is a flat vector per image
(``n_latent`` = C*H*W numbers). H and W must be divisible by 2^levels.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from zuko.transforms import MonotonicRQSTransform


@dataclass
class FlowConfig:
    channels: int = 1          # 1: magnitude; 2: real/imaginary
    levels: int = 3            # squeeze/split levels (H and W divisible by 2^levels)
    steps: int = 4             # coupling steps per level
    width: int = 64            # conditioner CNN width
    bins: int = 8              # spline bins
    bound: float = 5.0         # spline (co)domain [-B, B]; identity outside
    alpha: float = 0.05        # logit pre-processing: logit(alpha + (1 - 2 alpha) x)

    def to_dict(self):
        return asdict(self)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class ActNorm(nn.Module):
    """Per-channel affine y = (x - b) * exp(-logs), initialised from the first batch."""

    def __init__(self, c: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.register_buffer("ready", torch.tensor(False))

    def forward(self, x):
        if not bool(self.ready) and self.training:
            with torch.no_grad():
                self.bias.copy_(x.mean((0, 2, 3), keepdim=True))
                self.logs.copy_(x.std((0, 2, 3), keepdim=True).clamp_min(1e-3).log())
                self.ready.fill_(True)
        hw = x.shape[2] * x.shape[3]
        return (x - self.bias) * torch.exp(-self.logs), -self.logs.sum() * hw

    def inverse(self, y):
        hw = y.shape[2] * y.shape[3]
        return y * torch.exp(self.logs) + self.bias, self.logs.sum() * hw


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution (a learned channel mixing), orthogonal init."""

    def __init__(self, c: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=g))
        self.weight = nn.Parameter(q)

    def forward(self, x):
        hw = x.shape[2] * x.shape[3]
        return F.conv2d(x, self.weight[:, :, None, None]), torch.linalg.slogdet(self.weight)[1] * hw

    def inverse(self, y):
        hw = y.shape[2] * y.shape[3]
        w_inv = torch.linalg.inv(self.weight)
        return F.conv2d(y, w_inv[:, :, None, None]), -torch.linalg.slogdet(self.weight)[1] * hw


class SplineCoupling(nn.Module):
    """Channel coupling: the first half conditions an elementwise RQS of the second half."""

    def __init__(self, c: int, cfg: FlowConfig):
        super().__init__()
        self.c1 = c // 2
        self.c2 = c - self.c1
        self.bins, self.bound = cfg.bins, cfg.bound
        n_par = 3 * cfg.bins - 1
        self.net = nn.Sequential(
            nn.Conv2d(self.c1, cfg.width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.width, cfg.width, 1), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.width, self.c2 * n_par, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)  # identity at initialisation
        nn.init.zeros_(self.net[-1].bias)

    def _spline(self, x1):
        b, _, h, w = x1.shape
        p = self.net(x1).view(b, self.c2, 3 * self.bins - 1, h, w).permute(0, 1, 3, 4, 2)
        k = self.bins
        return MonotonicRQSTransform(p[..., :k], p[..., k:2 * k], p[..., 2 * k:], bound=self.bound)

    def forward(self, x):
        x1, x2 = x[:, :self.c1], x[:, self.c1:]
        y2, ladj = self._spline(x1).call_and_ladj(x2)
        return torch.cat([x1, y2], 1), ladj.flatten(1).sum(1)

    def inverse(self, y):
        y1, y2 = y[:, :self.c1], y[:, self.c1:]
        t = self._spline(y1)
        x2 = t.inv(y2)
        _, ladj = t.call_and_ladj(x2)
        return torch.cat([y1, x2], 1), -ladj.flatten(1).sum(1)


class FlowStep(nn.Module):
    def __init__(self, c: int, cfg: FlowConfig, seed: int):
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(c), InvConv1x1(c, seed), SplineCoupling(c, cfg)])

    def forward(self, x):
        total = 0.0
        for layer in self.layers:
            x, ld = layer(x)
            total = total + ld
        return x, total

    def inverse(self, y):
        total = 0.0
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y)
            total = total + ld
        return y, total


class ImageFlow(nn.Module):
    def __init__(self, cfg: FlowConfig = FlowConfig()):
        super().__init__()
        self.cfg = cfg
        self.levels = nn.ModuleList()
        c = cfg.channels
        for lv in range(cfg.levels):
            c *= 4
            self.levels.append(nn.ModuleList([FlowStep(c, cfg, seed=100 * lv + s) for s in range(cfg.steps)]))
            if lv < cfg.levels - 1:
                c -= c // 2

    # -- geometry -------------------------------------------------------------------
    def check_shape(self, h: int, w: int):
        m = 2 ** self.cfg.levels
        if h % m or w % m:
            raise ValueError(f"the flow needs image sizes divisible by {m}; got {h} x {w}")

    def latent_shapes(self, h: int, w: int) -> List[Tuple[int, int, int]]:
        """Shapes (c, h, w) of the factored-out parts, last level last."""
        shapes, c = [], self.cfg.channels
        for lv in range(self.cfg.levels):
            c, h, w = c * 4, h // 2, w // 2
            if lv < self.cfg.levels - 1:
                shapes.append((c // 2, h, w))
                c -= c // 2
            else:
                shapes.append((c, h, w))
        return shapes

    # -- pre-processing: [0, 1] <-> logit space ------------------------------------------
    def _to_logit(self, x):
        a = self.cfg.alpha
        p = a + (1 - 2 * a) * x
        y = torch.log(p) - torch.log1p(-p)
        ld = (math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, ld

    def _from_logit(self, y):
        a = self.cfg.alpha
        p = torch.sigmoid(y)
        x = (p - a) / (1 - 2 * a)
        ld = (F.logsigmoid(y) + F.logsigmoid(-y) - math.log(1 - 2 * a)).flatten(1).sum(1)
        return x, ld

    # -- directions ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        """x (B, C, H, W) in [0, 1] -> z (B, C*H*W), log|det dz/dx| (B,)."""
        self.check_shape(*x.shape[-2:])
        h, ld = self._to_logit(x)
        zs = []
        for lv, steps in enumerate(self.levels):
            h = squeeze(h)
            for st in steps:
                h, d = st(h)
                ld = ld + d
            if lv < self.cfg.levels - 1:
                c = h.shape[1] // 2
                zs.append(h[:, :c].flatten(1))
                h = h[:, c:]
        zs.append(h.flatten(1))
        return torch.cat(zs, 1), ld

    def inverse(self, z: torch.Tensor, size: Tuple[int, int]):
        """z (B, n_latent) -> x (B, C, H, W), log|det dx/dz| (B,)."""
        self.check_shape(*size)
        shapes = self.latent_shapes(*size)
        parts, i = [], 0
        for s in shapes:
            n = s[0] * s[1] * s[2]
            parts.append(z[:, i:i + n].view(-1, *s))
            i += n
        if i != z.shape[1]:
            raise ValueError(f"z has {z.shape[1]} numbers; a {size} image needs {i}")
        h = parts[-1]
        ld = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for lv in reversed(range(self.cfg.levels)):
            if lv < self.cfg.levels - 1:
                h = torch.cat([parts[lv], h], 1)
            for st in reversed(self.levels[lv]):
                h, d = st.inverse(h)
                ld = ld + d
            h = unsqueeze(h)
        x, d = self._from_logit(h)
        return x, ld + d

    @staticmethod
    def base_log_prob(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats for x in [0, 1] (continuous density)."""
        z, ld = self.forward(x)
        return self.base_log_prob(z) + ld

    def bits_per_dim(self, x: torch.Tensor, levels: int) -> torch.Tensor:
        """Discrete NLL in bits per dimension of (dequantized) data with ``levels`` grey
        levels mapped onto [0, 1] with bin width 1/levels."""
        d = x[0].numel()
        return (-self.log_prob(x) / d + math.log(levels)) / math.log(2)

    @torch.no_grad()
    def sample(self, n: int, size: Tuple[int, int], temperature: float = 0.7, generator=None) -> torch.Tensor:
        dev = next(self.parameters()).device
        n_lat = self.cfg.channels * size[0] * size[1]
        z = torch.randn(n, n_lat, generator=generator).to(dev) * temperature
        return self.inverse(z, size)[0].clamp(0, 1)
