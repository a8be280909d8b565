"""Physics-informed synthesis: estimate PD/T1/T2 from ordinary scans, render any contrast.

Model (:class:`QuantNet`)
    Input: one or more co-registered images of a slice (up to ``n_inputs``), each with its
    acquisition (sequence type, TE, TR, TI, flip angle; :func:`encode_acquisition`), each
    image scaled so that its maximum is 1; renders come out in the first input's units.
    A U-Net (GroupNorm, SiLU) maps the stacked images and broadcast acquisition channels
    to per-voxel partial-volume *fractions* ``f_k(x)`` of K compartments plus "no tissue"
    (a softmax over K + 1 classes) and a smooth receive bias ``b(x)``. A global head then
    reads, for every compartment, the mean input intensity inside it and the acquisition
    codes, and predicts the compartment's PD, T1, T2 and T2*, plus one scalar ``g`` that
    converts PD to the input's (normalised) intensity units. The compartment densities
    are ``p_k(x) = b(x) PD_k f_k(x)``: the proton density compartment k contributes to x.

    Output ranges are enforced by the output layer: fractions in [0, 1] summing to 1,
    PD_k in [0, 1.2] (relative to water), b in [0.74, 1.35], T1 in [50 ms, 6 s], T2 in
    [5 ms, 3 s] and T2* in [1 ms, T2] (sigmoids in log space).

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
PD_MAX = 1.2
BIAS_LOG = 0.3
P_MAX = PD_MAX * math.exp(BIAS_LOG)


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
    (B, K) in seconds, and the PD -> intensity scale ``g`` (B,); from the network also the
    fraction logits (B, K + 1, H, W; class 0 = no tissue), ``pd`` (B, K) and ``bias``
    (B, H, W)."""
    p: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    t2s: torch.Tensor
    g: torch.Tensor
    logits: Optional[torch.Tensor] = None
    pd: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None


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
        self.f_out = nn.Conv2d(c + cfg.n_inputs, cfg.compartments + 2, 1)  # K + 1 classes, bias
        K, M = cfg.compartments, cfg.n_inputs
        hin = w[-1] + M * N_ACQ + K * (M + 1)
        self.head = nn.Sequential(nn.Linear(hin, cfg.head_width), nn.SiLU(),
                                  nn.Linear(cfg.head_width, cfg.head_width), nn.SiLU(),
                                  nn.Linear(cfg.head_width, 4 * K + 1))

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
        out = self.f_out(torch.cat([x, x_img], 1))[..., :H, :W]
        K = self.cfg.compartments
        logits = out[:, :K + 1]
        frac = torch.softmax(logits, 1)[:, 1:]
        bias = torch.exp(BIAS_LOG * torch.tanh(out[:, K + 1]))
        # per-compartment mean intensity of each input and compartment mass
        mass = frac.sum((-2, -1)) + 1e-3                                       # (B, K)
        means = torch.einsum("bkhw,bmhw->bkm", frac, images) / mass[..., None]  # (B, K, M)
        feats = torch.cat([bottleneck, acq.reshape(B, -1), means.reshape(B, -1),
                           torch.log(mass / (H * W))], 1)
        h = self.head(feats)
        t1 = _range(h[:, :K], *T1_RANGE)
        t2 = torch.minimum(_range(h[:, K:2 * K], *T2_RANGE), t1)
        t2s = torch.minimum(T2S_MIN + (t2 - T2S_MIN) * torch.sigmoid(h[:, 2 * K:3 * K] + 1.0), t2)
        pd = PD_MAX * torch.sigmoid(h[:, 3 * K:4 * K])
        g = torch.exp(h[:, 4 * K].clamp(-30.0, 30.0))
        p = bias[:, None] * pd[:, :, None, None] * frac
        return QuantMaps(p, t1, t2, t2s, g, logits, pd, bias)


def flip_averaged(net: "QuantNet", images: torch.Tensor, acq: torch.Tensor) -> QuantMaps:
    """The estimate of ``images`` averaged with the mirrored estimate of their mirror images
    (left-right, the last axis; the network was trained with random mirroring), two passes
    of the batch (on the CPU faster than one over the doubled batch): fractions
    (probabilities) and the receive bias are averaged per voxel, PD per compartment,
    relaxation times and the intensity scale geometrically (which keeps T2* <= T2 <= T1)."""
    q, m = net(images, acq), net(images.flip(-1), acq)
    frac = 0.5 * (torch.softmax(q.logits, 1) + torch.softmax(m.logits, 1).flip(-1))
    bias, pd = 0.5 * (q.bias + m.bias.flip(-1)), 0.5 * (q.pd + m.pd)
    p = bias[:, None] * pd[:, :, None, None] * frac[:, 1:]
    return QuantMaps(p, torch.sqrt(q.t1 * m.t1), torch.sqrt(q.t2 * m.t2), torch.sqrt(q.t2s * m.t2s),
                     torch.sqrt(q.g * m.g), torch.log(frac.clamp_min(1e-12)), pd, bias)


REFINE_LAM, REFINE_ITERS, REFINE_EPS = 1e-3, 3, 1e-2   # chosen on validation data: scripts/tune_synth_refine.py


def _fraction_update(f, base, scale, b, imgs, lam: float, eps: float, allowed=None):
    """One weighted least-squares update of the fractions ``f`` (B, K+1, H, W) towards the
    inputs ``imgs`` (B, M, H, W), whose model is ``scale_j b(x) sum_k f_k base_jk``
    (``base`` (B, M, K+1), ``scale`` (B, M)): per voxel

        min_f  lam sum_k (f_k - f~_k)^2 / (f~_k + eps) + sum_j (model_j(f) - image_j)^2,  sum_k f_k = sum_k f~_k,

    solved in closed form (an M x M system, or a (K+1) x (K+1) one when there are more
    inputs than classes: :func:`_class_space_delta`), then clipped at 0 and renormalised. With
    ``allowed`` (B, K+1, H, W) of 0/1 only those classes change (their sum is kept)."""
    w = f + eps if allowed is None else (f + eps) * allowed
    sw = w.sum(1)                                                               # (B, H, W)
    mean = torch.einsum("bmk,bkhw->bmhw", base, w) / sw[:, None]                # weighted mean intensity
    cb = scale[:, :, None, None] * b[:, None]                                   # (B, M, H, W)
    e = imgs - cb * torch.einsum("bmk,bkhw->bmhw", base, f)                     # residuals
    if imgs.shape[1] > base.shape[2]:
        delta = _class_space_delta(w, base, scale, b, mean, e, lam)
        return _clip_renormalise(f, f + delta, allowed)
    second = torch.einsum("bmk,bnk,bkhw->bmnhw", base, base, w)                 # sum_k w base_j base_l
    gram = cb[:, :, None] * cb[:, None] * (second - sw[:, None, None] * mean[:, :, None] * mean[:, None])
    M = imgs.shape[1]
    if M == 1:
        u = e / (1.0 + gram[:, 0] / lam)
    else:   # (I + G / lam) u = e, in double precision (the 2 x 2 determinant cancels in float32)
        gd, ed = gram.double() / lam, e.double()
        if M == 2:
            a, d, c = 1.0 + gd[:, 0, 0], 1.0 + gd[:, 1, 1], gd[:, 0, 1]
            det = (a * d - c * c).clamp_min(1.0)                                 # det(I + PSD) >= 1
            u = torch.stack([(d * ed[:, 0] - c * ed[:, 1]) / det, (a * ed[:, 1] - c * ed[:, 0]) / det], 1)
        else:
            mat = torch.eye(M, dtype=gd.dtype, device=gd.device) + gd.permute(0, 3, 4, 1, 2)
            u = torch.linalg.solve(mat, ed.permute(0, 2, 3, 1)[..., None])[..., 0].permute(0, 3, 1, 2)
        u = u.to(e.dtype)
    # delta_k = w_k sum_j cb_j (base_jk - mean_j) u_j / lam
    cu = cb * u                                                                 # (B, M, H, W)
    delta = w * (torch.einsum("bmk,bmhw->bkhw", base, cu) - (mean * cu).sum(1, keepdim=True)) / lam
    return _clip_renormalise(f, f + delta, allowed)


def _class_space_delta(w, base, scale, b, mean, e, lam: float):
    """The update of :func:`_fraction_update` for more inputs M than classes K + 1: by the
    push-through identity W A'^T (lam I + A' W A'^T)^-1 = (lam I + W A'^T A')^-1 W A'^T (A'
    the centred M x (K+1) model matrix) it is one symmetric (K+1) x (K+1) solve per voxel,
    D (lam I + D A'^T A' D) ^-1 D A'^T e with D = W^1/2, in place of the M x M one."""
    s2 = (scale * scale)[:, :, None]                                            # (B, M, 1)
    g0 = torch.einsum("bmk,bml->bkl", s2 * base, base)                          # sum_j s_j^2 base_j base_j^T
    v = torch.einsum("bmk,bmhw->bkhw", s2 * base, mean)                         # sum_j s_j^2 mean_j base_j
    c = (s2[:, :, :, None] * mean * mean).sum(1)                                # sum_j s_j^2 mean_j^2
    vd = v.double().permute(0, 2, 3, 1)                                         # (B, H, W, K+1)
    ata = (b * b).double()[..., None, None] * (g0.double()[:, None, None] - vd[..., :, None] - vd[..., None, :]
                                                + c.double()[..., None, None])  # (B, H, W, K+1, K+1)
    rhs = b[:, None] * (torch.einsum("bmk,bmhw->bkhw", scale[:, :, None] * base, e)
                        - (scale[:, :, None, None] * mean * e).sum(1, keepdim=True))    # A'^T e (B, K+1, H, W)
    d = w.double().sqrt().permute(0, 2, 3, 1)                                   # (B, H, W, K+1)
    mat = d[..., :, None] * ata * d[..., None, :]
    mat.diagonal(dim1=-2, dim2=-1).add_(lam)
    y = torch.linalg.solve(mat, (d * rhs.double().permute(0, 2, 3, 1))[..., None])[..., 0]
    return (d * y).permute(0, 3, 1, 2).to(w.dtype)


def _clip_renormalise(f, new, allowed):
    """Clip updated fractions at 0 and restore the sum of the classes that may change."""
    new = new.clamp_min(0.0)
    if allowed is None:   # clipping changed the sum: rescale to the old one
        return new * f.sum(1, keepdim=True) / new.sum(1, keepdim=True).clamp_min(1e-12)
    before, after = (f * allowed).sum(1, keepdim=True), (new * allowed).sum(1, keepdim=True)
    return new * (1 - allowed) + new * allowed * before / after.clamp_min(1e-12)   # the others stay as they were


def refine_fractions(q: QuantMaps, image: torch.Tensor, seq, lam: float = REFINE_LAM, iters: int = REFINE_ITERS,
                     eps: float = REFINE_EPS, top: Optional[int] = None, search_inputs: Optional[int] = None
                     ) -> QuantMaps:
    """Data-consistency refinement of the fractions against the input image(s).

    The estimate must reproduce the images it came from: with the estimated compartment
    intensities ``I_jk = c_j PD_k s(T1_k, T2_k, T2*_k; seq_j)`` input j is modelled as
    ``I_j(x) = b(x) sum_k f_k(x) I_jk`` (``I_j0 = 0`` for the "no tissue" class). In every
    voxel the fractions move from the network's ``f~`` to the solution of

        min_f  lam sum_k (f_k - f~_k)^2 / (f~_k + eps) + sum_j (I_j(x; f) - image_j(x))^2

    with their sum kept (closed form, an M x M or (K+1) x (K+1) solve per voxel, whichever
    is smaller; then clipped at 0 and
    renormalised), ``iters`` times, each around the last result. The weights
    ``1 / (f~_k + eps)`` let the classes present in a voxel take the correction (a few
    per cent of CSF too many in a grey-matter voxel, a wrong two-tissue split) while
    classes the network ruled out hardly move; with two inputs the two equations fix
    three-tissue mixtures. ``lam`` (in squared units of the normalised image) and ``eps``
    trade fidelity against the network's estimate: smaller values fit noise. ``top``: if
    given, only the network's ``top`` most likely classes of each voxel may change (the
    others cannot absorb part of the correction: better CSF maps, lower image scores on
    validation, see ``scripts/tune_synth_refine.py``).

    The first input's scale is ``c_0 = c g``, where ``c`` corrects the network's ``g``:
    the value in [0.7, 1.4] (searched on a grid, refined once, then at the vertex of a
    parabola through the best three; on every second voxel of each axis for images of
    64 x 64 voxels or more) that leaves the smallest residual after the update, since
    mixed voxels can absorb a wrong scale but pure ones cannot. Every further input was
    normalised to its own maximum, so its scale ``c_j`` is the least-squares fit of the
    estimate to it, re-fitted after every update. ``image``: (B, H, W) the first input, or
    (B, M, H, W) the inputs, as the network saw them (maximum 1); ``seq``: the
    acquisition, or a list of M acquisitions. ``search_inputs``: fit only the first that
    many inputs during the scale search (all inputs in the final update): with many
    inputs, e.g. predicted contrasts, the search then costs what it costs for one.
    """
    if q.logits is None:
        raise ValueError("refinement needs the network's fraction logits")
    imgs = image[:, None] if image.dim() == 3 else image                         # (B, M, H, W)
    seqs = list(seq) if isinstance(seq, (list, tuple)) else [seq]
    if len(seqs) != imgs.shape[1]:
        raise ValueError(f"{imgs.shape[1]} input image(s) but {len(seqs)} acquisition(s)")
    if lam <= 0 or eps <= 0 or iters < 1:
        raise ValueError("refinement needs lam > 0, eps > 0 and iters >= 1")
    f0 = torch.softmax(q.logits, 1)                                            # (B, K+1, H, W)
    allowed = None
    if top is not None:
        if not 2 <= top <= f0.shape[1]:
            raise ValueError(f"top must lie in [2, {f0.shape[1]}] (the classes a voxel's correction may use)")
        allowed = torch.zeros_like(f0).scatter(1, f0.topk(top, dim=1).indices, 1.0)
    b = q.bias
    base = torch.stack([torch.cat([torch.zeros_like(q.t1[:, :1]), q.pd * compartment_signals(q.t1, q.t2, q.t2s, sq)], 1)
                        for sq in seqs], 1)                                    # (B, M, K+1)

    def fit_scales(f, imgs, b, bs=base):  # least-squares scale of each input's render (B, M), and the renders
        model = b[:, None] * torch.einsum("bmk,bkhw->bmhw", bs, f)
        return (model * imgs).sum((-2, -1)) / (model * model).sum((-2, -1)).clamp_min(1e-12), model

    n_search = imgs.shape[1] if search_inputs is None else int(search_inputs)
    if not 1 <= n_search <= imgs.shape[1]:
        raise ValueError(f"search_inputs must lie in [1, {imgs.shape[1]}]")
    fitted = fit_scales(f0, imgs, b)[0]
    # the scale search runs on every second voxel of each axis (a global scalar per image;
    # 4 times less work), the final update on all voxels
    full = (f0, imgs, b, allowed)
    sub = full
    if imgs.shape[-2] * imgs.shape[-1] >= 64 * 64:
        sub = tuple(None if t is None else t[..., ::2, ::2] for t in full)

    def solve(c, n, data, m=None):  # c (B,): the first input's scale correction; m: inputs used
        f, im, bb, al = data
        im, bs = (im, base) if m is None else (im[:, :m], base[:, :m])
        first, rest = (q.g * c)[:, None], fitted[:, 1:im.shape[1]]
        for _ in range(n):
            f = _fraction_update(f, bs, torch.cat([first, rest], 1), bb, im, lam, eps, al)
            fit, model = fit_scales(f, im, bb, bs)
            rest = fit[:, 1:]     # further inputs: their scales re-fitted to the updated fractions
        res = im - torch.cat([first, rest], 1)[:, :, None, None] * model
        return f, (res * res).sum((1, 2, 3))

    lo = torch.full_like(q.g, math.log(0.7))
    hi = torch.full_like(q.g, math.log(1.4))
    for n_grid in (21, 11):
        grid = torch.stack([lo + (hi - lo) * k / (n_grid - 1) for k in range(n_grid)], 1)    # (B, n)
        err = torch.stack([solve(torch.exp(grid[:, k]), iters, sub, n_search)[1] for k in range(n_grid)], 1)
        k = err.argmin(1, keepdim=True)
        best = grid.gather(1, k)[:, 0]
        step = (hi - lo) / (n_grid - 1)
        lo, hi = best - step, best + step
    # the vertex of the parabola through the last grid's minimum and its neighbours
    e0, em, ep = err.gather(1, k)[:, 0], err.gather(1, (k - 1).clamp_min(0))[:, 0], \
        err.gather(1, (k + 1).clamp_max(err.shape[1] - 1))[:, 0]
    curv = ep - 2 * e0 + em
    shift = torch.where(curv > 0, 0.5 * step * (em - ep) / curv.clamp_min(1e-30), torch.zeros_like(curv))
    cand = best + shift.clamp(-step, step)
    better = solve(torch.exp(cand), iters, sub, n_search)[1] < e0
    c = torch.exp(torch.where(better, cand, best))
    frac, _ = solve(c, iters, full)
    p = b[:, None] * q.pd[:, :, None, None] * frac[:, 1:]
    return QuantMaps(p, q.t1, q.t2, q.t2s, q.g * c, torch.log(frac.clamp_min(1e-12)), q.pd, q.bias)


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
