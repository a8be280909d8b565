"""Training of the physics-informed synthesis network (:mod:`MRISynthLib.models.quantitative`).

Every sample is simulated on the fly from partial-volume tissue fractions (BrainWeb and
the MNI152 anatomy on a 2 mm grid, slices resized to ``size`` x ``size`` like the paper
protocol):

* tissue table: MRiLab or MRiLab+fat/glial, each tissue's PD/T1/T2/T2* jittered
  log-normally (:func:`MRISynthLib.physics.tissues.jitter_table`); the BrainWeb/KomaMRI
  table is never used, so that it can test generalisation to unseen tissue values;
* a smooth receive bias (up to +/-20 %) on 70 % of samples and Rician noise (SNR 20-200)
  on 70 %; half of the inputs are quantised to 8 bits like the paper-protocol files;
* one input image (70 %) or two; the first is the default TE 50 ms / TR 4.5 s spin echo
  35 % of the time, otherwise a random spin echo (paper range TR 1.2-10 s, TE 20 ms-1 s,
  or T1-weighted TR 0.3-1.2 s), an inversion recovery with random TI or a spoiled
  gradient echo;
* two random target acquisitions per step (spin echo, inversion recovery, gradient echo);
* random crops (default 128 x 128 of the 256 x 256 slices, for CPU speed; ``crop=0``
  trains on whole slices) and left-right mirroring.

Loss = rendered-image L1 on the targets (self-supervised through the signal equations,
relative to each target's maximum, floored at 2 % of the PD image's maximum) + map supervision where the simulator knows the
truth: soft cross-entropy of the partial-volume fractions, squared error of the
compartments' PD and of the receive bias (inside the head), and 0.1 x squared
log-error of the compartments' T1/T2/T2* (weighted by each compartment's mass in the
slice) and of the intensity scale.

Held out (never trained on): the paper-protocol test slices of BrainWeb and of MNI152
(every 5th of 24 slices spread over the brain, see :func:`held_out_z`) and their
neighbours +/-1.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.simulate import ProtocolConfig, away_from, brain_slices, brain_z, is_test_slice, resize_slices
from ..models.quantitative import QuantConfig, QuantMaps, QuantNet, encode_acquisition, render
from ..physics.phantoms import Phantom, add_noise, bias_field, brainweb_phantom, mni152_phantom
from ..physics.signal import SequenceParams
from ..physics.tissues import get_table, jitter_table
from .common import cosine_lr, log_step, resume, save_ckpt, start_run

DEFAULT_SEQ = SequenceParams("se", 0.05, 4.5)
LOSS_PARTS = ("render", "frac", "pd", "bias", "relax", "g")


@dataclass
class QuantTrainConfig:
    steps: int = 3000
    batch: int = 4
    lr: float = 1e-3
    size: int = 256
    crop: int = 128                 # train on random crops of this size (0: whole slices)
    seed: int = 0
    threads: Optional[int] = None
    ckpt_every: int = 100
    tables: Tuple[str, ...] = ("mrilab", "mrilab_full")
    anatomies: Tuple[str, ...] = ("brainweb", "mni152")
    w_frac: float = 1.0
    w_pd: float = 1.0
    w_bias: float = 1.0
    w_relax: float = 0.1
    w_g: float = 0.1


def load_anatomy(name: str, voxel_mm: float = 2.0) -> Phantom:
    if name == "brainweb":
        return brainweb_phantom(voxel_mm=voxel_mm)
    if name == "mni152":
        return mni152_phantom(voxel_mm=voxel_mm)
    raise ValueError(f"unknown anatomy {name!r}")


def held_out_z(ph: Phantom, cfg: ProtocolConfig = ProtocolConfig()) -> np.ndarray:
    """The paper-protocol test slices of a phantom (every 5th of 24, as in ``make-dataset``)."""
    zs = brain_slices(ph, cfg.n_slices)
    return zs[is_test_slice(len(zs), cfg)]


def train_z(ph: Phantom, margin: int = 1) -> np.ndarray:
    """Brain slices of a phantom minus the held-out ones and their +/-``margin`` neighbours."""
    return away_from(brain_z(ph), held_out_z(ph), margin)


def slice_fractions(ph: Phantom, zs: Sequence[int], size: int) -> np.ndarray:
    """(N, labels, size, size) fractions of the axial slices ``zs``, bilinear-resized."""
    f = ph.fractions[:, np.asarray(zs)].transpose(1, 0, 2, 3)
    return resize_slices(np.ascontiguousarray(f), size).astype(np.float32)


def random_acquisition(rng: np.random.Generator, default_p: float = 0.0) -> SequenceParams:
    u = rng.random()
    if u < default_p:
        return DEFAULT_SEQ
    u = rng.random()
    if u < 0.55:      # paper range
        tr = rng.uniform(1.2, 10.0)
        te = float(np.exp(rng.uniform(np.log(0.02), np.log(min(1.0, 0.9 * tr)))))
        return SequenceParams("se", te, tr)
    if u < 0.7:       # T1-weighted spin echo
        tr = rng.uniform(0.3, 1.2)
        te = float(np.exp(rng.uniform(np.log(0.01), np.log(0.05))))
        return SequenceParams("se", te, tr)
    if u < 0.9:       # inversion recovery: STIR .. FLAIR
        tr = rng.uniform(2.0, 10.0)
        te = float(np.exp(rng.uniform(np.log(0.01), np.log(0.15))))
        ti = float(np.exp(rng.uniform(np.log(0.05), np.log(min(3.0, 0.8 * (tr - te))))))
        return SequenceParams("ir", te, tr, ti=ti)
    tr = float(np.exp(rng.uniform(np.log(0.005), np.log(0.5))))
    te = float(np.exp(rng.uniform(np.log(0.002), np.log(min(0.03, 0.8 * tr)))))
    return SequenceParams("gre", te, tr, flip=float(rng.uniform(5, 90)))


@dataclass
class Sample:
    images: np.ndarray          # (M, H, W) normalised inputs (max 1), empty slots 0
    acq: np.ndarray             # (M, 8)
    p: np.ndarray               # (K, H, W) true compartment densities
    relax: np.ndarray           # (3, K) true T1, T2, T2* (1.0 where a compartment has no PD)
    present: np.ndarray         # (K,) compartment has PD in this table
    g: float                    # true PD -> first-input intensity scale
    frac: np.ndarray = None     # (K + 1, H, W) true fractions (class 0: no tissue)
    pd: np.ndarray = None       # (K,) true PD per compartment
    bias: np.ndarray = None     # (H, W) true receive bias
    table: object = None


def make_sample(frac: np.ndarray, rng: np.random.Generator, n_slots: int, table=None, seqs=None,
                n_inputs: Optional[int] = None, bias: Optional[bool] = None, snr="random",
                quantise: Optional[bool] = None, default_p: float = 0.35,
                tables: Sequence[str] = ("mrilab", "mrilab_full"), jitter: bool = True) -> Sample:
    """Simulate one training/test sample from a slice's fractions (labels, H, W)."""
    K = frac.shape[0] - 1
    if table is None:
        base = get_table(tables[rng.integers(len(tables))])
        table = jitter_table(base, rng) if jitter else base
    lut = table.lookup(frac.shape[0])
    H, W = frac.shape[-2:]
    recv = np.ones((H, W), np.float32)
    if bias if bias is not None else rng.random() < 0.7:
        recv = bias_field((H, W), rng, float(rng.uniform(0.05, 0.2))).astype(np.float32)
    p = (lut["pd"][1:, None, None].astype(np.float32) * frac[1:]) * recv
    present = lut["pd"][1:] > 0
    relax = np.stack([np.where(present, lut[k][1:], 1.0) for k in ("t1", "t2", "t2star")]).astype(np.float32)
    if seqs is None:
        n = n_inputs or (1 if rng.random() < 0.7 else 2)
        seqs = [random_acquisition(rng, default_p if j == 0 else 0.0) for j in range(n)]
    images = np.zeros((n_slots, H, W), np.float32)
    acq = np.zeros((n_slots, len(encode_acquisition(None))), np.float32)
    g = 1.0
    for j, sq in enumerate(seqs):
        s = np.asarray(sq.signal(np.ones(K), relax[0], relax[1], relax[2], validate=False), np.float32)
        img = np.tensordot(s * present, p, axes=1)
        if snr == "random":
            level = float(np.exp(rng.uniform(np.log(20), np.log(200)))) if rng.random() < 0.7 else None
        else:
            level = snr
        if level:
            img = add_noise(img, level, rng)
        c = float(img.max()) if img.max() > 0 else 1.0
        img = img / c
        if quantise if quantise is not None else rng.random() < 0.5:
            img = np.round(img * 255.0) / 255.0
        images[j] = img
        acq[j] = encode_acquisition(sq)
        if j == 0:
            g = 1.0 / c
    f = frac.astype(np.float32)
    f0 = np.clip(1.0 - f[1:].sum(0), 0, 1)   # "no tissue" class
    fr = np.concatenate([f0[None], f[1:]]) / np.maximum(f0 + f[1:].sum(0), 1e-6)[None]
    return Sample(images, acq, p.astype(np.float32), relax, present, g, fr.astype(np.float32),
                  lut["pd"][1:].astype(np.float32), np.asarray(recv, np.float32), table)


def collate(samples: List[Sample]):
    t = lambda a: torch.from_numpy(np.stack(a))  # noqa: E731
    return (t([s.images for s in samples]), t([s.acq for s in samples]), t([s.p for s in samples]),
            t([s.relax for s in samples]), t([s.present for s in samples]).float(),
            torch.tensor([s.g for s in samples], dtype=torch.float32),
            {"frac": t([s.frac for s in samples]), "pd": t([s.pd for s in samples]),
             "bias": t([s.bias for s in samples])})


def true_maps(p, relax, g) -> QuantMaps:
    return QuantMaps(p, relax[:, 0], relax[:, 1], relax[:, 2], g)


def quant_loss(q: QuantMaps, p, relax, present, g, targets: Sequence[SequenceParams], tc: QuantTrainConfig,
               extra: dict):
    """Total loss and its parts (see module doc); ``extra`` from :func:`collate`."""
    truth = true_maps(p * present[:, :, None, None], relax, g)
    # errors relative to the target's maximum, but never to less than 2 % of the PD image's
    # maximum: a target near a null point (all tissues dark) must not blow the loss up
    floor = 0.02 * g * (p * present[:, :, None, None]).sum(1).flatten(1).amax(1)
    l_render = 0.0
    for sq in targets:
        ref = render(truth, sq)
        scale = torch.maximum(ref.flatten(1).amax(1), floor).clamp_min(1e-6)[:, None, None]
        l_render = l_render + ((render(q, sq) - ref).abs() / scale).mean()
    l_render = l_render / max(len(targets), 1)
    zero = torch.zeros(())
    l_frac = l_pd = l_bias = zero
    if q.logits is not None:     # map supervision of the network's own outputs
        ftrue = extra["frac"]
        l_frac = -(ftrue * torch.log_softmax(q.logits, 1)).sum(1).mean()
        fmass = ftrue[:, 1:].sum((-2, -1))
        fmass = fmass / fmass.sum(1, keepdim=True).clamp_min(1e-6)
        l_pd = (((q.pd - extra["pd"]) ** 2) * fmass).sum(1).mean()
        head = (ftrue[:, 1:].sum(1) > 0.5).float()
        l_bias = (((q.bias - extra["bias"]) ** 2) * head).sum() / head.sum().clamp_min(1)
    mass = (p.sum((-2, -1)) * present)
    mass = mass / mass.sum(1, keepdim=True).clamp_min(1e-6)
    est = torch.stack([q.t1, q.t2, q.t2s], 1)
    l_relax = ((torch.log(est) - torch.log(relax)) ** 2 * mass[:, None]).sum((1, 2)).mean()
    l_g = ((torch.log(q.g) - torch.log(g)) ** 2).mean()
    total = (l_render + tc.w_frac * l_frac + tc.w_pd * l_pd + tc.w_bias * l_bias + tc.w_relax * l_relax
             + tc.w_g * l_g)
    parts = {"render": l_render, "frac": l_frac, "pd": l_pd, "bias": l_bias, "relax": l_relax, "g": l_g}
    return total, {k: float(v.detach()) for k, v in parts.items()}


def load_training_slices(tc: QuantTrainConfig) -> np.ndarray:
    out = []
    for name in tc.anatomies:
        ph = load_anatomy(name)
        out.append(slice_fractions(ph, train_z(ph), tc.size))
    return np.concatenate(out)


def train_quantitative(cfg: QuantConfig, out_dir, tc: QuantTrainConfig, fractions: Optional[np.ndarray] = None,
                       progress: bool = True) -> QuantNet:
    """Train (or resume) the network; checkpoints and ``quant_loss.csv`` in ``out_dir``."""
    out_dir = start_run(out_dir, tc.threads, tc.seed)
    frac = load_training_slices(tc) if fractions is None else fractions
    net = QuantNet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    ckpt = out_dir / "quant_ckpt.pt"
    start = resume(ckpt, net, opt)

    log = open(out_dir / "quant_loss.csv", "a", newline="")
    wr = csv.writer(log)
    if start == 0:
        wr.writerow(["step", "loss"] + list(LOSS_PARTS))
    step = start

    def save(s):
        save_ckpt(ckpt, model=net.state_dict(), opt=opt.state_dict(), step=s, config=cfg.to_dict(),
                  train_config=asdict(tc))

    try:
        for step in tqdm(range(start, tc.steps), desc="quantitative", initial=start, total=tc.steps,
                         disable=not progress):
            rng = np.random.default_rng([tc.seed, step])
            idx = rng.integers(len(frac), size=tc.batch)
            samples = []
            for i in idx:
                f = frac[i]
                if tc.crop and tc.crop < f.shape[-1]:
                    y0, x0 = rng.integers(0, f.shape[-2] - tc.crop + 1), rng.integers(0, f.shape[-1] - tc.crop + 1)
                    f = f[:, y0:y0 + tc.crop, x0:x0 + tc.crop]
                if rng.random() < 0.5:
                    f = f[:, :, ::-1]
                samples.append(make_sample(np.ascontiguousarray(f), rng, cfg.n_inputs, tables=tc.tables))
            images, acq, p, relax, present, g, extra = collate(samples)
            targets = [random_acquisition(rng) for _ in range(2)]
            for group in opt.param_groups:
                group["lr"] = cosine_lr(tc.lr, step, tc.steps)  # a resume with more steps stretches it
            q = net(images, acq)
            loss, parts = quant_loss(q, p, relax, present, g, targets, tc, extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            row = [step, f"{loss.item():.6g}"] + [f"{parts[k]:.5g}" for k in LOSS_PARTS]
            log_step(wr, log, row, step, tc.ckpt_every, save)
        step = max(start, tc.steps)
    finally:
        save(step)
        log.close()
    return net.eval()
