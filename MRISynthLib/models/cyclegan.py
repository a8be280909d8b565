"""CycleGAN for T1w <-> T2w translation (pix2pix/CycleGAN architecture, Zhu et al. 2017).

* :class:`UNetGenerator`: the pix2pix U-Net. A ``size`` x ``size`` x 1 image (size a power
  of two, 256 in the paper) is encoded by log2(size) 4x4 stride-2 convolutions down to
  1 x 1 x (8 ngf) (1x1x512 at the paper width ngf = 64) and decoded by as many 4x4
  stride-2 transposed convolutions, each concatenating the encoder features of its size
  (skip connections). Encoder: LeakyReLU(0.2), instance norm except on the first and the
  innermost layer (a 1x1 map has no spatial statistics); decoder: ReLU, instance norm,
  dropout 0.5 in the three blocks below the innermost (as pix2pix), tanh output.
* :class:`PatchDiscriminator`: the 70 x 70 PatchGAN: 4x4 convolutions ndf, 2ndf (stride 2),
  4ndf (stride 2), 8ndf (stride 1), 1 (stride 1); instance norm and LeakyReLU(0.2);
  a 256 x 256 input gives a 30 x 30 map of real/fake logits.
* weights drawn from N(0, 0.02) (the seed's random-normal initialisation).

Losses (:func:`gan_loss`, :func:`generator_losses`, :func:`discriminator_loss`):
adversarial binary cross-entropy on logits (``bce``, the seed's) or least squares
(``lsgan``, the CycleGAN paper's), cycle-consistency L1 x lambda (10), identity L1 x
lambda x lambda_id (0.5); with noise-free copies of the noisy inputs (simulated data) the
cycle and identity targets are the noise-free images (translate and denoise). Optional
structure consistency (``lam_struct``, Yang et al., "Unpaired brain MR-to-CT synthesis
using a structure-constrained CycleGAN", DLMIA 2018): L1 between the MIND descriptors
(:func:`mind`, Heinrich et al., Medical Image Analysis 2012) of each generator's input and
output. MIND describes every pixel by how similar its neighbourhood is to the
neighbourhoods a few pixels away, which does not depend on the contrast, so it asks the
translation to keep the input's edges and flat regions without asking for any intensity.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GAN_MODES = ("bce", "lsgan")


@dataclass
class CycleGANConfig:
    size: int = 256           # training/inference image size (a power of two >= 16)
    ngf: int = 64             # generator base width (paper: 64 -> 1x1x512 bottleneck)
    ndf: int = 64             # discriminator base width
    dropout: float = 0.5
    gan_mode: str = "lsgan"

    def __post_init__(self):
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 16, got {self.size}")
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}")
        if self.ngf < 1 or self.ndf < 1:
            raise ValueError("widths must be positive")

    @property
    def levels(self) -> int:
        return self.size.bit_length() - 1

    def to_dict(self) -> dict:
        return asdict(self)


WIDTHS = {"paper": {"ngf": 64, "ndf": 64}, "cpu": {"ngf": 16, "ndf": 16}}


def init_normal(module: nn.Module, std: float = 0.02) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _norm(c):
    return nn.InstanceNorm2d(c, affine=False)


class UNetGenerator(nn.Module):
    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        self.cfg = cfg
        L, g = cfg.levels, cfg.ngf
        ch = [min(g * 2 ** i, g * 8) for i in range(L)]        # encoder output widths
        self.down = nn.ModuleList()
        c_in = 1
        for i, c in enumerate(ch):
            layers = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=(i == 0 or i == L - 1)))
            if 0 < i < L - 1:
                layers.append(_norm(c))
            self.down.append(nn.Sequential(*layers))
            c_in = c
        self.up = nn.ModuleList()
        for j in range(L):          # j = 0 is the innermost decoder block
            i = L - 1 - j           # it produces the resolution of encoder level i - 1
            c_in_up = ch[i] if j == 0 else 2 * ch[i]
            last = i == 0
            c_out = 1 if last else ch[i - 1]
            layers = [nn.ReLU(), nn.ConvTranspose2d(c_in_up, c_out, 4, 2, 1, bias=last)]
            if last:
                layers.append(nn.Tanh())
            else:
                layers.append(_norm(c_out))
                if 1 <= j <= 3 and cfg.dropout > 0:
                    layers.append(nn.Dropout(cfg.dropout))
            self.up.append(nn.Sequential(*layers))
        init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.cfg.size, self.cfg.size):
            raise ValueError(f"expected {self.cfg.size}x{self.cfg.size} inputs, got {tuple(x.shape[-2:])}")
        skips = []
        for d in self.down:
            x = d(x)
            skips.append(x)
        y = self.up[0](skips[-1])
        for j in range(1, len(self.up)):
            y = self.up[j](torch.cat([y, skips[-1 - j]], 1))
        return y


class PatchDiscriminator(nn.Module):
    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        d = cfg.ndf
        self.net = nn.Sequential(
            nn.Conv2d(1, d, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), _norm(2 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * d, 4 * d, 4, 2, 1, bias=False), _norm(4 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * d, 8 * d, 4, 1, 1, bias=False), _norm(8 * d), nn.LeakyReLU(0.2),
            nn.Conv2d(8 * d, 1, 4, 1, 1))
        init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Generators(nn.Module):
    """The two generators (``g_ab``: T1 -> T2, ``g_ba``: T2 -> T1): what is shipped."""

    DIRECTIONS = {"t1_to_t2": "g_ab", "t2_to_t1": "g_ba"}

    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        self.cfg = cfg
        self.g_ab, self.g_ba = UNetGenerator(cfg), UNetGenerator(cfg)

    def generator(self, direction: str) -> UNetGenerator:
        try:
            return getattr(self, self.DIRECTIONS[direction])
        except KeyError:
            raise ValueError(f"direction must be one of {sorted(self.DIRECTIONS)}, got {direction!r}") from None

    def generators(self) -> List[nn.Parameter]:
        return list(self.g_ab.parameters()) + list(self.g_ba.parameters())


class CycleGAN(Generators):
    """Both generators and both discriminators (``d_a`` judges T1, ``d_b`` judges T2)."""

    def __init__(self, cfg: CycleGANConfig):
        super().__init__(cfg)
        self.d_a, self.d_b = PatchDiscriminator(cfg), PatchDiscriminator(cfg)

    def discriminators(self) -> List[nn.Parameter]:
        return list(self.d_a.parameters()) + list(self.d_b.parameters())

    def generator_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if k.startswith(("g_ab.", "g_ba."))}


def gan_loss(logits: torch.Tensor, real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Adversarial loss of discriminator logits against all-ones (real) or all-zeros."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"gan mode must be one of {GAN_MODES}")


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


def generator_losses(net: CycleGAN, real_a: torch.Tensor, real_b: torch.Tensor, lam: float = 10.0,
                     lam_id: float = 0.5, clean_a: Optional[torch.Tensor] = None,
                     clean_b: Optional[torch.Tensor] = None, lam_struct: float = 0.0,
                     cycle_noise: float = 0.0
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Total generator loss, its parts, and the fakes (for the discriminator step).

    ``clean_a`` / ``clean_b``: noise-free versions of the (noisy) inputs ``real_a`` /
    ``real_b``, when the data have them: the cycle and identity losses then ask for the
    noise-free image back, so the generators learn to translate *and* denoise (the
    discriminators should then judge the noise-free images as real). ``lam_struct`` > 0
    adds :func:`structure_loss` of each translation against its input (the noise-free
    one when given) times ``lam_struct``. ``cycle_noise`` > 0: Gaussian noise of this standard
    deviation (images in [-1, 1]) is added to each translation before it is translated
    back for the cycle loss (not to what the discriminators see), so that the cycle cannot
    be closed through a faint signal hidden in the translation (CycleGAN's
    "steganography", Chu et al. 2017; Bashkirova et al. 2019) but only through what the
    translation visibly shows."""
    mode = net.cfg.gan_mode
    ta = real_a if clean_a is None else clean_a
    tb = real_b if clean_b is None else clean_b
    fake_b, fake_a = net.g_ab(real_a), net.g_ba(real_b)
    parts = {
        "gan_ab": gan_loss(net.d_b(fake_b), True, mode),
        "gan_ba": gan_loss(net.d_a(fake_a), True, mode),
        "cycle_a": lam * F.l1_loss(net.g_ba(_noisy(fake_b, cycle_noise)), ta),
        "cycle_b": lam * F.l1_loss(net.g_ab(_noisy(fake_a, cycle_noise)), tb),
    }
    if lam_id > 0:
        parts["id_a"] = lam * lam_id * F.l1_loss(net.g_ba(real_a), ta)
        parts["id_b"] = lam * lam_id * F.l1_loss(net.g_ab(real_b), tb)
    if lam_struct > 0:
        parts["struct_a"] = lam_struct * structure_loss(fake_b, ta)
        parts["struct_b"] = lam_struct * structure_loss(fake_a, tb)
    return sum(parts.values()), parts, fake_a, fake_b


def mind(x: torch.Tensor, dilation: int = 2, sigma: float = 1.0, eps: float = 1e-3) -> torch.Tensor:
    """MIND descriptor (modality independent neighbourhood descriptor) of (B, 1, H, W) images.

    For the 8 neighbours at ``dilation`` pixels, the Gaussian-weighted (``sigma``) patch
    distance D_r = G * (x - x shifted by r)^2; the descriptor is exp(-D_r / V), V the mean of
    the 8 distances plus ``eps`` (which keeps noise-level texture from counting as structure
    in flat regions; images in [-1, 1]), normalised so that each pixel's largest entry is 1.
    Returns (B, 8, H, W). With ``eps`` = 0 it is invariant to x -> a x + b for any a != 0.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected (B, 1, H, W) images, got {tuple(x.shape)}")
    d, (h, w) = dilation, x.shape[-2:]
    xp = F.pad(x, (d, d, d, d), mode="replicate")
    shifts = [(dy * d, dx * d) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    dist = torch.cat([(x - xp[..., d + dy:d + dy + h, d + dx:d + dx + w]) ** 2 for dy, dx in shifts], 1)
    r = max(1, int(np.ceil(2 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    c = dist.shape[1]
    dist = F.conv2d(F.pad(dist, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    dist = F.conv2d(F.pad(dist, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    m = torch.exp(-dist / (dist.mean(1, keepdim=True) + eps))
    return m / m.amax(1, keepdim=True)


def structure_loss(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the MIND descriptors of a translation and its input."""
    return F.l1_loss(mind(output), mind(reference))


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, mode: str = "lsgan") -> torch.Tensor:
    """Real against ones plus generated (detached) against zeros, summed (as the seed)."""
    return gan_loss(disc(real), True, mode) + gan_loss(disc(fake.detach()), False, mode)


class ImagePool:
    """History of generated images (Shrivastava et al.; CycleGAN uses 50): the
    discriminator sees a mix of current and earlier fakes, which damps oscillation."""

    def __init__(self, size: int = 50, rng: random.Random = None):
        self.size, self.images, self.rng = size, [], rng or random.Random(0)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return images
        out = []
        for im in images.detach():
            im = im[None]
            if len(self.images) < self.size:
                self.images.append(im)
                out.append(im)
            elif self.rng.random() < 0.5:
                k = self.rng.randrange(self.size)
                out.append(self.images[k].clone())
                self.images[k] = im
            else:
                out.append(im)
        return torch.cat(out, 0)


# --- intensity convention shared by training and inference --------------------------------
NORM_PERCENTILE = 99.5


def intensity_scale(img) -> float:
    """The intensity that maps to +1: the image's 99.5th percentile (robust to noise spikes)."""
    s = float(np.percentile(img, NORM_PERCENTILE))
    return s if s > 0 else float(np.max(img)) or 1.0


def to_model_range(img, scale: float):
    """[0, scale] -> [-1, 1] (values above ``scale`` clipped)."""
    return (np.clip(np.asarray(img, np.float32) / scale, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def from_model_range(y, scale: float):
    """[-1, 1] -> [0, scale]."""
    return ((np.clip(np.asarray(y, np.float32), -1.0, 1.0) + 1.0) * 0.5 * scale).astype(np.float32)
