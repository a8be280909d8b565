"""END autoencoder and Param-Net for TE/TR re-parameterization (Narang et al., BIOENG 2022).

Autoencoder (:class:`ENDAutoencoder`)
    Encoder: 8 convolutions 3x3, stride 2, each followed by batch norm and LeakyReLU(0.2);
    a 256 x 256 image becomes 128, 64, ..., 1 pixels; the 8 outputs are the image features.
    Decoder: 7 transposed convolutions 3x3, stride 2, with batch norm and ReLU (1 -> 128
    pixels), then the 3x3 convolution - made a stride-2 transposed convolution here so
    that 8 upsamplings undo 8 downsamplings and the output has the input's size - and a
    1x1 convolution, tanh output.

Param-Net (:class:`ParamNet`)
    Starts from the encoder's deepest (1 x 1) features. Block i = 1..8 upsamples with a
    3x3 stride-2 transposed convolution to the size of encoder layer 8 - i (layer 0 being
    the input image itself), stacks those encoder features (the image for block 8),
    applies a 3x3 convolution, stacks the acquisition parameters broadcast to that size,
    then two 3x3 convolutions; instance norm and LeakyReLU(0.2) follow every convolution.
    Two final 3x3 convolutions and tanh give the image. Parameters enter every block.
    Deviation: the instance norms are conditional (their scale and shift come from the
    parameters, see :class:`CondNorm`), because a plain instance norm after the
    parameter concatenation subtracts the parameters' constant contribution away.
    (The paper's text, "block i upsamples to the size of encoder layer 9 - i", is read
    with the input image as the last level, so every encoder output is used once.)

Parameter encoding: each (TE, TR) pair becomes 4 numbers, TE / 0.5 s - 1, TR / 5 s - 1,
ln(TE / 0.1 s) and ln(TR / 3 s); Default-to-Param gets the target pair (4 channels),
Param-to-Param the input pair then the target pair (8 channels).

Sizes: any 2D size works; inputs are padded (reflect) to a multiple of 2^8 = 256 and the
output is cropped back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

N_LEVELS = 8

WIDTHS = {
    # pix2pix-like widths of the paper: 64 up to 512 channels
    "paper": [64, 128, 256, 512, 512, 512, 512, 512],
    "small": [16, 32, 64, 128, 128, 128, 128, 128],
    "cpu": [8, 16, 32, 64, 64, 64, 64, 64],
    "tiny": [8, 16, 32, 32, 32, 32, 32, 32],
}


def _level_widths(widths, name: str) -> List[int]:
    """A preset name or a list of one channel count per level -> the list (validated)."""
    if isinstance(widths, str):
        if widths not in WIDTHS:
            raise ValueError(f"unknown width preset {widths!r}; choose from {sorted(WIDTHS)}")
        widths = WIDTHS[widths]
    if len(widths) != N_LEVELS:
        raise ValueError(f"{name} must list {N_LEVELS} channel counts")
    return list(widths)


@dataclass
class ReparamConfig:
    mode: str = "d2p"               # "d2p" (Default-to-Param) or "p2p" (Param-to-Param)
    widths: List[int] = field(default_factory=lambda: list(WIDTHS["small"]))
    decoder_widths: List[int] = None  # Param-Net widths per level; defaults to ``widths``

    def __post_init__(self):
        if self.mode not in ("d2p", "p2p"):
            raise ValueError("mode must be 'd2p' or 'p2p'")
        self.widths = _level_widths(self.widths, "widths")
        self.decoder_widths = _level_widths(self.widths if self.decoder_widths is None else self.decoder_widths,
                                            "decoder_widths")

    @property
    def n_params(self) -> int:
        return 4 if self.mode == "d2p" else 8

    def to_dict(self) -> dict:
        return asdict(self)


def encode_times(te: torch.Tensor, tr: torch.Tensor) -> torch.Tensor:
    """(B,) TE and TR in seconds -> (B, 4) features (see module doc)."""
    te = te.float().clamp_min(1e-4)
    tr = tr.float().clamp_min(1e-3)
    return torch.stack([te / 0.5 - 1, tr / 5.0 - 1, torch.log(te / 0.1), torch.log(tr / 3.0)], dim=1)


def encode_params(mode: str, target_te, target_tr, input_te=None, input_tr=None) -> torch.Tensor:
    p = encode_times(torch.as_tensor(target_te), torch.as_tensor(target_tr))
    if mode == "p2p":
        if input_te is None or input_tr is None:
            raise ValueError("Param-to-Param needs the input TE and TR")
        p = torch.cat([encode_times(torch.as_tensor(input_te), torch.as_tensor(input_tr)), p], dim=1)
    return p


class Encoder(nn.Module):
    def __init__(self, widths: Sequence[int], in_ch: int = 1):
        super().__init__()
        layers, c = [], in_ch
        for w in widths:
            layers.append(nn.Sequential(nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False),
                                        nn.BatchNorm2d(w), nn.LeakyReLU(0.2, inplace=True)))
            c = w
        self.layers = nn.ModuleList(layers)

    def forward(self, x) -> List[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def _up(cin, cout):
    return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)


class ENDAutoencoder(nn.Module):
    def __init__(self, widths: Sequence[int] = WIDTHS["small"]):
        super().__init__()
        widths = list(widths)
        self.encoder = Encoder(widths)
        dec = []
        rev = widths[::-1]  # deepest first
        c = rev[0]
        for w in rev[1:]:  # 7 upsamplings: 1 -> 128
            dec.append(nn.Sequential(_up(c, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True)))
            c = w
        self.decoder = nn.Sequential(*dec)
        self.last = nn.Sequential(_up(c, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, 1, 1), nn.Tanh())

    def forward(self, x):
        return self.last(self.decoder(self.encoder(x)[-1]))


class CondNorm(nn.Module):
    """Instance norm whose scale and shift are predicted from the parameters.

    A spatially constant map (the broadcast parameters) convolved and then instance-normed
    is removed by the normalisation's mean subtraction, so with plain instance norm the
    parameters could only reach the output through border effects. Predicting the
    norm's affine terms from the parameters (conditional instance norm, Dumoulin et al.
    2017) keeps the paper's normalisation and lets the parameters act everywhere.
    """

    def __init__(self, ch: int, n_params: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(ch, affine=False)
        self.film = nn.Linear(n_params, 2 * ch)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x, params):
        g, b = self.film(params).chunk(2, dim=1)
        return self.norm(x) * (1 + g[:, :, None, None]) + b[:, :, None, None]


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, n_params: int, up: bool = False):
        super().__init__()
        self.conv = _up(cin, cout) if up else nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = CondNorm(cout, n_params)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x, params):
        return self.act(self.norm(self.conv(x), params))


class ParamBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int, n_params: int):
        super().__init__()
        self.up = ConvNormAct(cin, cout, n_params, up=True)
        self.fuse = ConvNormAct(cout + skip, cout, n_params)
        self.c1 = ConvNormAct(cout + n_params, cout, n_params)
        self.c2 = ConvNormAct(cout, cout, n_params)

    def forward(self, x, skip, params):
        x = self.up(x, params)
        x = self.fuse(torch.cat([x, skip], 1), params)
        p = params[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.c2(self.c1(torch.cat([x, p], 1), params), params)


class ParamNet(nn.Module):
    def __init__(self, cfg: ReparamConfig):
        super().__init__()
        enc = cfg.widths
        dec = cfg.decoder_widths
        n_p = cfg.n_params
        blocks = []
        c = enc[-1] + n_p  # bottleneck features + parameters
        # block i targets encoder level 8 - i (i = 1..7) then the input image (level 0)
        for i in range(1, N_LEVELS + 1):
            lvl = N_LEVELS - i
            skip = enc[lvl - 1] if lvl >= 1 else 1
            out = dec[lvl - 1] if lvl >= 1 else dec[0]
            blocks.append(ParamBlock(c, skip, out, n_p))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.head1 = ConvNormAct(c, c, n_p)
        self.head2 = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, image, feats: List[torch.Tensor], params):
        x = torch.cat([feats[-1], params[:, :, None, None].expand(-1, -1, *feats[-1].shape[2:])], 1)
        skips = feats[:-1][::-1] + [image]  # levels 7..1, then the image
        for blk, s in zip(self.blocks, skips):
            x = blk(x, s, params)
        return torch.tanh(self.head2(self.head1(x, params)))


class ReparamModel(nn.Module):
    """Frozen END encoder + Param-Net. ``forward(image in [-1, 1], params) -> image``."""

    def __init__(self, cfg: ReparamConfig):
        super().__init__()
        self.cfg = cfg
        self.autoencoder = ENDAutoencoder(cfg.widths)
        self.paramnet = ParamNet(cfg)

    def forward(self, image, params):
        h, w = image.shape[-2:]
        m = 2 ** N_LEVELS
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            image = F.pad(image, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
        feats = self.autoencoder.encoder(image)
        out = self.paramnet(image, feats, params)
        if ph or pw:
            out = out[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
        return out


def xavier_init(module: nn.Module):
    """Xavier/Glorot-uniform weights and zero biases for every convolution (as the paper)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _embed(new: torch.Tensor, old: torch.Tensor, in_idx: Sequence[int], transposed: bool = False):
    """Copy ``old`` (out, in, ...) into the first outputs of ``new`` at input positions
    ``in_idx``, zeroing those outputs' weights from every other (new) input."""
    if transposed:           # ConvTranspose2d weights are (in, out, k, k)
        new, old = new.transpose(0, 1), old.transpose(0, 1)
    o = old.shape[0]
    new[:o] = 0
    new[:o, list(in_idx)] = old


def widen_paramnet_state(old_state: dict, old_cfg: ReparamConfig, new_cfg: ReparamConfig,
                         seed: int = 0) -> dict:
    """Param-Net weights for wider ``new_cfg.decoder_widths`` computing the same function.

    Net2Net-style widening (Chen et al. 2016) with zero outgoing weights: every old channel
    keeps its weights, the new channels get fresh Xavier weights from the old and new
    channels below them, and the weights from new channels into old ones start at zero,
    so the widened network's output equals the old one's and the new channels enter
    through training (the gradient of a zero weight is not zero). The encoder (frozen,
    ``widths``) and the mode must be the same; the decoder widths may only grow.
    """
    if old_cfg.mode != new_cfg.mode or list(old_cfg.widths) != list(new_cfg.widths):
        raise ValueError("widening keeps the mode and the encoder widths")
    if any(n < o for n, o in zip(new_cfg.decoder_widths, old_cfg.decoder_widths)):
        raise ValueError("widening cannot narrow a level")
    torch.manual_seed(seed)
    net = ParamNet(new_cfg)
    xavier_init(net)
    new = {k: v.detach().clone() for k, v in net.state_dict().items()}
    n_p = old_cfg.n_params
    old_blocks = ParamNet(old_cfg).blocks

    def conv(prefix, in_idx, transposed=False):
        _embed(new[prefix + ".weight"], old_state[prefix + ".weight"], in_idx, transposed)
        if prefix + ".bias" in old_state:
            b = new[prefix + ".bias"]
            b.zero_()
            b[:len(old_state[prefix + ".bias"])] = old_state[prefix + ".bias"]

    def norm(prefix, c_old, c_new):
        w, b = new[prefix + ".film.weight"], new[prefix + ".film.bias"]
        w.zero_()
        b.zero_()
        ow, ob = old_state[prefix + ".film.weight"], old_state[prefix + ".film.bias"]
        w[:c_old], w[c_new:c_new + c_old] = ow[:c_old], ow[c_old:]
        b[:c_old], b[c_new:c_new + c_old] = ob[:c_old], ob[c_old:]

    c_in_old = c_in_new = new_cfg.widths[-1] + n_p
    for i, (ob, nb) in enumerate(zip(old_blocks, net.blocks)):
        co, cn = ob.c2.conv.out_channels, nb.c2.conv.out_channels
        skip = ob.fuse.conv.in_channels - co
        pre = f"blocks.{i}."
        conv(pre + "up.conv", range(c_in_old), transposed=True)
        norm(pre + "up.norm", co, cn)
        conv(pre + "fuse.conv", [*range(co), *range(cn, cn + skip)])
        norm(pre + "fuse.norm", co, cn)
        conv(pre + "c1.conv", [*range(co), *range(cn, cn + n_p)])
        norm(pre + "c1.norm", co, cn)
        conv(pre + "c2.conv", range(co))
        norm(pre + "c2.norm", co, cn)
        c_in_old, c_in_new = co, cn
    conv("head1.conv", range(c_in_old))
    norm("head1.norm", c_in_old, c_in_new)
    conv("head2", range(c_in_old))
    return new
