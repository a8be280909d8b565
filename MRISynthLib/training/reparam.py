"""Training of the re-parameterization models, in the paper's two phases.

Phase 1, :func:`train_autoencoder`: the END autoencoder learns to reconstruct varied
MR-like images. The paper pre-trained on Places-365, which is not available here; we
pre-train instead on (a) spin-echo images of the BrainWeb training slices at random
(TE, TR) with randomised tissue properties and (b) magnitudes of the first 150 SIAT
complex head slices (real scans; the last 50 are never used for training).

Phase 2, :func:`train_paramnet`: the autoencoder is frozen; Param-Net (Xavier/Glorot
initialised) is trained with MSE (or each image's log MSE, :func:`paramnet_loss`) and Adam
on the paper-protocol data set's training pairs and slices (or, :class:`ContinuousPairs`,
on its training slices at fresh continuous (TE, TR) values away from the held-out pairs).
Training is progressive: first at a reduced image size (the networks are fully
convolutional, so the same weights apply), then at the full 256 x 256.

Both are seeded, resumable (a checkpoint is written every ``ckpt_every`` steps and on
Ctrl-C), show a progress bar, and append to a CSV loss log.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .common import cosine_lr, resume, save_ckpt, start_run
from ..device import resolve_precision
from ..models.paramnet import ReparamConfig, ReparamModel, encode_params, xavier_init


class PaperData:
    """The paper-protocol HDF5 file loaded into memory, with its split."""

    def __init__(self, path):
        import h5py

        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != "mrisynth-paper-protocol":
                raise ValueError(f"{path} is not a paper-protocol data set (make it with `make-dataset`)")
            self.targets = f["targets"][()]
            self.defaults = f["defaults"][()]
            self.default_group = f["default_group"][()]
            self.te = f["te"][()].astype(np.float32)
            self.tr = f["tr"][()].astype(np.float32)
            self.pair_is_test = f["pair_is_test"][()]
            self.slice_is_test = f["slice_is_test"][()]
            self.slice_z = f["slice_z"][()]
            self.default_te = float(f.attrs["default_te"])
            self.default_tr = float(f.attrs["default_tr"])
        self.train_pairs = np.flatnonzero(~self.pair_is_test)
        self.test_pairs = np.flatnonzero(self.pair_is_test)
        self.train_slices = np.flatnonzero(~self.slice_is_test)
        self.test_slices = np.flatnonzero(self.slice_is_test)

    @staticmethod
    def to_unit(u8) -> torch.Tensor:
        """uint8 images -> float tensor in [-1, 1] with a channel axis."""
        return torch.from_numpy(np.asarray(u8, np.float32) / 127.5 - 1.0).unsqueeze(-3)

    def default_image(self, pair, sl):
        return self.defaults[self.default_group[pair], sl]

    def batch(self, mode: str, rng: np.random.Generator, n: int, test: bool = False):
        """A random batch: (input [-1, 1], params, target [-1, 1])."""
        pairs = self.test_pairs if test else self.train_pairs
        slices = self.test_slices if test else self.train_slices
        b = rng.choice(pairs, n)
        s = rng.choice(slices, n)
        tgt = self.targets[b, s]
        if mode == "d2p":
            inp = np.stack([self.default_image(bi, si) for bi, si in zip(b, s)])
            params = encode_params("d2p", self.te[b], self.tr[b])
        else:
            a = rng.choice(pairs, n)
            # one input in four is the default acquisition, the others another random pair
            use_default = rng.uniform(size=n) < 0.25
            inp = np.stack([self.default_image(bi, si) if d else self.targets[ai, si]
                            for ai, bi, si, d in zip(a, b, s, use_default)])
            in_te = np.where(use_default, self.default_te, self.te[a])
            in_tr = np.where(use_default, self.default_tr, self.tr[a])
            params = encode_params("p2p", self.te[b], self.tr[b], in_te, in_tr)
        return self.to_unit(inp), params, self.to_unit(tgt)


class ContinuousPairs:
    """Training pairs at fresh, continuous (TE, TR) values in every batch.

    The paper-protocol file holds 160 training (TE, TR) pairs; a network trained on them
    sees the parameter plane at 160 points only (D2P scored 0.8 dB better at 40 of them
    than at the held-out pairs, on the same held-out slices; after training on continuous
    pairs still 0.77 dB: it may be partly the two pair sets' difficulty). Here each training target
    (and each P2P input that is not the default acquisition) is rendered on the fly at a
    new (TE, TR) drawn like the file's pairs (:func:`sample_te_tr`), from the same training
    slices, phantom, tissue table, grid, resize and 8-bit display normalisation as the file
    (a rendered image is linear in the tissue fractions, so the fractions are resized once
    and each image is one weighted sum). The held-out pairs stay held out: a draw within
    ``exclude_te`` (relative) in TE *and* ``exclude_tr`` seconds in TR of any test pair is
    rejected, so no training image is within a few per cent of a test acquisition.
    Same ``batch`` interface as :class:`PaperData`; only noise-free, unjittered files.

    ``oversample``: ``(label, factor)`` draws the training slices that contain that tissue
    label (more than ``min_voxels`` voxels of it) ``factor`` times as often as the others.
    """

    def __init__(self, data: PaperData, path, exclude_te: float = 0.05, exclude_tr: float = 0.1, phantom=None,
                 oversample: Optional[tuple] = None, min_voxels: float = 5.0):
        import h5py
        import json

        from ..data.simulate import ProtocolConfig, protocol_phantom, resize_slices

        with h5py.File(path, "r") as f:
            cfg = ProtocolConfig(**json.loads(f.attrs["config"]))
        if cfg.jitter or cfg.snr is not None or cfg.bias > 0:
            raise ValueError("continuous pairs need a noise-free, unjittered paper-protocol file")
        self.data, self.cfg = data, cfg
        self.exclude_te, self.exclude_tr = float(exclude_te), float(exclude_tr)
        ph = phantom if phantom is not None else protocol_phantom(cfg)
        self.lut = ph.table.lookup(ph.fractions.shape[0])
        zs = data.slice_z[data.train_slices]
        frac = np.ascontiguousarray(ph.fractions[:, zs].transpose(1, 0, 2, 3))
        self.fractions = resize_slices(frac, cfg.size).astype(np.float32)      # (S, labels, H, W)
        self.slice_p = None
        if oversample is not None:
            label, factor = int(oversample[0]), float(oversample[1])
            if not 0 <= label < frac.shape[1] or not factor >= 1:
                raise ValueError(f"oversample needs a tissue label below {frac.shape[1]} and a factor >= 1, "
                                 f"got {oversample}")
            has = frac[:, label].sum(axis=(1, 2)) > min_voxels
            if not has.any():
                raise ValueError(f"no training slice contains tissue label {label}")
            w = np.where(has, factor, 1.0)
            self.slice_p = w / w.sum()
        self.test_te = data.te[data.test_pairs].astype(np.float64)
        self.test_tr = data.tr[data.test_pairs].astype(np.float64)

    def near_test(self, te, tr) -> np.ndarray:
        """Whether each (te, tr) lies in the excluded box around a held-out pair."""
        te, tr = np.atleast_1d(te)[:, None], np.atleast_1d(tr)[:, None]
        close = (np.abs(np.log(te / self.test_te)) < np.log1p(self.exclude_te)) & \
                (np.abs(tr - self.test_tr) < self.exclude_tr)
        return close.any(1)

    def draw(self, rng: np.random.Generator, n: int):
        """``n`` (TE, TR) pairs from the protocol's distribution, outside the excluded boxes."""
        from ..data.simulate import sample_te_tr

        te, tr = np.empty(0, np.float32), np.empty(0, np.float32)
        while len(te) < n:
            a, b = sample_te_tr(2 * n, rng, self.cfg.tr_range, self.cfg.te_range)
            keep = ~self.near_test(a, b)
            te, tr = np.concatenate([te, a[keep]]), np.concatenate([tr, b[keep]])
        return te[:n], tr[:n]

    def draw_slices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` training slices (indices into the training slices), uniformly or ``oversample``-d."""
        if self.slice_p is None:
            return rng.integers(len(self.fractions), size=n)
        return rng.choice(len(self.fractions), size=n, p=self.slice_p)

    def render_u8(self, slices, te, tr) -> np.ndarray:
        """8-bit images of training slices (indices into the training slices) at (te, tr)."""
        from ..data.simulate import normalize_8bit
        from ..physics.signal import SequenceParams

        lut = self.lut
        out = []
        for s, e, r in zip(slices, te, tr):
            seq = SequenceParams("se", float(e), float(r), exact=self.cfg.exact)
            w = np.asarray(seq.signal(lut["pd"], lut["t1"], lut["t2"], lut["t2star"]), np.float64)
            w = np.where(lut["pd"] > 0, w, 0.0).astype(np.float32)
            out.append(np.tensordot(w, self.fractions[s], axes=1))
        return normalize_8bit(np.stack(out))[0]

    def batch(self, mode: str, rng: np.random.Generator, n: int, test: bool = False):
        if test:
            return self.data.batch(mode, rng, n, test=True)
        s = self.draw_slices(rng, n)
        te, tr = self.draw(rng, n)
        tgt = self.render_u8(s, te, tr)
        d_te = np.full(n, self.data.default_te, np.float32)
        d_tr = np.full(n, self.data.default_tr, np.float32)
        if mode == "d2p":
            inp = self.render_u8(s, d_te, d_tr)
            params = encode_params("d2p", te, tr)
        else:
            a_te, a_tr = self.draw(rng, n)
            use_default = rng.uniform(size=n) < 0.25
            in_te, in_tr = np.where(use_default, d_te, a_te), np.where(use_default, d_tr, a_tr)
            inp = self.render_u8(s, in_te, in_tr)
            params = encode_params("p2p", te, tr, in_te, in_tr)
        return PaperData.to_unit(inp), params, PaperData.to_unit(tgt)


def _resize(x: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    if size is None or x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="area")


def random_affine(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, max_deg: float = 10.0,
                  scale=(0.9, 1.1), shift: float = 0.05):
    """The same random rotation, scaling and shift of each input and its target (images in
    [-1, 1], background -1), for anatomical variety. Bilinear interpolation of both images
    is consistent with the simulator: a rendered image is linear in the tissue fractions."""
    n = len(x)
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, n))
    s = rng.uniform(*scale, n)
    t = rng.uniform(-shift, shift, (n, 2)) * 2
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = (np.cos(a) / s, -np.sin(a) / s,
                                                                      np.sin(a) / s, np.cos(a) / s)
    theta[:, :, 2] = t
    grid = F.affine_grid(torch.from_numpy(theta), x.shape, align_corners=False)
    both = F.grid_sample(torch.cat([x, y], 1) + 1, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) - 1
    return both[:, :x.shape[1]], both[:, x.shape[1]:]


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 8
    lr: float = 1e-3
    low_res: int = 128           # size for the first part of training
    low_res_fraction: float = 0.6
    seed: int = 0
    ckpt_every: int = 200
    threads: Optional[int] = None
    affine: bool = False         # random rotation/scale/shift of Param-Net's training pairs
    precision: str = "fp32"      # "bf16" ("auto": bf16 on AMX CPUs): Param-Net under bfloat16 autocast
    loss: str = "mse"            # "log-mse": mean over the batch of each image's log MSE (see paramnet_loss)


PARAMNET_LOSSES = ("mse", "log-mse")


def _check_paramnet_loss(kind: str) -> None:
    if kind not in PARAMNET_LOSSES:
        raise ValueError(f"unknown Param-Net loss {kind!r} ({' or '.join(PARAMNET_LOSSES)})")


def paramnet_loss(out: torch.Tensor, y: torch.Tensor, kind: str = "mse"):
    """Param-Net's training loss and the batch's mean per-image PSNR (0-255 scale, images in
    [-1, 1]). ``"mse"``: the paper's mean squared error over the batch. ``"log-mse"``: the
    mean of each image's log MSE, i.e. minus the mean per-image PSNR up to a constant - the
    benchmark's metric, in which an image with small errors counts as much as one with large
    errors (plain MSE is dominated by the images with the largest errors)."""
    per = ((out - y) ** 2).flatten(1).mean(1)
    psnr = float((10 * torch.log10(4.0 / per.detach().clamp_min(1e-12))).mean())
    if kind == "mse":
        return per.mean(), psnr
    if kind == "log-mse":
        return torch.log(per + 1e-8).mean(), psnr
    _check_paramnet_loss(kind)


def _lr_at(step, total, base):
    # linear warm-up over 100 steps, cosine decay to 5% of the base rate
    warm = min(1.0, (step + 1) / 100)
    return warm * cosine_lr(base, step, total)


def autoencoder_pool(data: PaperData, n_sim: int = 600, n_siat: int = 150, size: int = 256, seed: int = 0,
                     progress: bool = True) -> np.ndarray:
    """Varied MR-like images (uint8) for autoencoder pre-training (see module doc)."""
    from ..config import data_file
    from ..data.simulate import away_from, brain_slices, normalize_8bit, resize_slices, sample_te_tr
    from ..physics.phantoms import Phantom, brainweb_phantom
    from ..physics.signal import SequenceParams
    from ..physics.tissues import jitter_table

    rng = np.random.default_rng(seed)
    ph = brainweb_phantom(voxel_mm=2.0, table="mrilab_full")
    # the data set's held-out slices (and their neighbours) stay out of pre-training too
    zs = away_from(brain_slices(ph, 60, coverage=0.95), data.slice_z[data.slice_is_test])
    imgs = []
    te, tr = sample_te_tr(n_sim, rng)
    for i in tqdm(range(n_sim), desc="AE pool: simulated", disable=not progress):
        z = int(rng.choice(zs))
        sub = Phantom(ph.fractions[:, z:z + 1], ph.spacing, ph.origin, table=ph.table)
        img = sub.render(SequenceParams("se", float(te[i]), float(tr[i])), jitter_table(ph.table, rng))[0]
        imgs.append(resize_slices(img, size))
    try:
        import h5py

        with h5py.File(data_file("siat/siat200.h5"), "r") as f:
            mags = np.abs(f["images"][:n_siat])
        imgs.extend(resize_slices(mags.astype(np.float32), size))
    except FileNotFoundError:
        pass
    u8, _ = normalize_8bit(np.stack(imgs))
    return u8


def train_autoencoder(cfg: ReparamConfig, pool: np.ndarray, out_dir, tc: TrainConfig, progress: bool = True):
    out_dir = start_run(out_dir, tc.threads, tc.seed)
    ae = ReparamModel(cfg).autoencoder
    xavier_init(ae)
    opt = torch.optim.Adam(ae.parameters(), lr=tc.lr)
    ckpt = out_dir / "autoencoder_ckpt.pt"
    start = resume(ckpt, ae, opt)
    rng = np.random.default_rng([tc.seed, start])
    log = open(out_dir / "autoencoder_loss.csv", "a", newline="")
    wr = csv.writer(log)
    ae.train()
    step = start
    try:
        for step in tqdm(range(start, tc.steps), desc="autoencoder", initial=start, total=tc.steps,
                         disable=not progress):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, tc.steps, tc.lr)
            size = tc.low_res if step < tc.low_res_fraction * tc.steps else None
            x = _resize(PaperData.to_unit(pool[rng.integers(0, len(pool), tc.batch)]), size)
            if rng.uniform() < 0.5:
                x = x.flip(-1)
            # at the reduced size the 8 stride-2 decoder steps overshoot the input size
            # (the bottleneck stays 1 x 1): compare at the input's size
            loss = F.mse_loss(_resize(ae(x), x.shape[-1]), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wr.writerow([step, f"{loss.item():.6f}", x.shape[-1]])
            if (step + 1) % tc.ckpt_every == 0:
                save_ckpt(ckpt, model=ae.state_dict(), opt=opt.state_dict(), step=step + 1)
                log.flush()
        step = max(start, tc.steps)
    finally:
        save_ckpt(ckpt, model=ae.state_dict(), opt=opt.state_dict(), step=step)
        log.close()
    return ae


def paramnet_checkpoint(out_dir, mode: str) -> Path:
    return Path(out_dir) / f"paramnet_{mode}_ckpt.pt"


def train_paramnet(cfg: ReparamConfig, data: PaperData, autoencoder_state: dict, out_dir, tc: TrainConfig,
                   progress: bool = True, paramnet_init: Optional[dict] = None) -> ReparamModel:
    """Phase 2. ``paramnet_init``: Param-Net weights to start from (continuing a trained
    model) instead of Xavier initialisation; a checkpoint in ``out_dir`` takes precedence."""
    bf16 = resolve_precision(tc.precision, "cpu") == "bf16"   # validates; training runs on the CPU
    _check_paramnet_loss(tc.loss)
    out_dir = start_run(out_dir, tc.threads, tc.seed)
    model = ReparamModel(cfg)
    model.autoencoder.load_state_dict(autoencoder_state)
    model.autoencoder.eval().requires_grad_(False)
    if paramnet_init is not None:
        model.paramnet.load_state_dict(paramnet_init)
    else:
        xavier_init(model.paramnet)
    opt = torch.optim.Adam(model.paramnet.parameters(), lr=tc.lr)
    ckpt = paramnet_checkpoint(out_dir, cfg.mode)
    start = resume(ckpt, model.paramnet, opt)
    rng = np.random.default_rng([tc.seed, start, 1])
    log = open(out_dir / f"paramnet_{cfg.mode}_loss.csv", "a", newline="")
    wr = csv.writer(log)
    model.paramnet.train()
    step = start
    t0 = time.time()
    try:
        bar = tqdm(range(start, tc.steps), desc=f"param-net {cfg.mode}", initial=start, total=tc.steps,
                   disable=not progress)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, tc.steps, tc.lr)
            size = tc.low_res if step < tc.low_res_fraction * tc.steps else None
            x, p, y = data.batch(cfg.mode, rng, tc.batch)
            x, y = _resize(x, size), _resize(y, size)
            if rng.uniform() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if tc.affine:
                x, y = random_affine(x, y, rng)
            # bf16: convolutions in bfloat16, weights, optimiser state and the loss in fp32
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x, p)
            loss, bpsnr = paramnet_loss(out.float(), y, tc.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            wr.writerow([step, f"{loss.item():.6f}", f"{bpsnr:.2f}", x.shape[-1], f"{time.time() - t0:.1f}"])
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.5f}", psnr=f"{bpsnr:.1f}")
            if (step + 1) % tc.ckpt_every == 0:
                save_ckpt(ckpt, model=model.paramnet.state_dict(), opt=opt.state_dict(), step=step + 1)
                log.flush()
        step = max(start, tc.steps)
    finally:
        save_ckpt(ckpt, model=model.paramnet.state_dict(), opt=opt.state_dict(), step=step)
        log.close()
    model.eval()
    return model
