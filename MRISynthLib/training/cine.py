"""Training and evaluation of the cine reconstructions (:mod:`MRISynthLib.models.dynamic`).

Data: a :class:`MRISynthLib.data.cine.CineSet` (train / val / test by source sequence).
Every training step draws ``batch`` training series and, for each, a fresh per-frame
variable-density mask (11 centre lines; acceleration drawn from ``accels``), a random
crop of ``crop`` rows along x (exact, because masks act along y only: the whole problem is
separable in x, see the models' module doc), a random cyclic shift of the frames, random
flips and a random global phase, and complex Gaussian k-space noise with standard deviation
up to ``noise`` (the image's largest magnitude is 1). The target is the noise-free series.

Loss L1 or L2 on the real and imaginary parts; Adam with optional weight decay; schedule
``constant``, ``cosine`` (to 5 % of lr) or ``plateau`` (halve when the validation loss has
not improved for 3 validations). Seeded, resumable (checkpoint every ``ckpt_every``
steps and on interruption), progress bar, CSV log of the training loss and, every
``val_every`` steps, the validation loss and PSNR; :func:`plot_curves` draws them.

Evaluation (:func:`evaluate`): fixed masks per test series (seed 1000 + index), k-space
noise 0.005, PSNR and SSIM of the magnitude per frame against the noise-free reference
(data range: the reference's largest magnitude), averaged over frames, then mean and
standard deviation over series.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.cine import CineSet
from ..metrics import psnr, ssim
from ..models.dynamic import DynamicConfig, build_dynamic, from_hybrid, to_hybrid
from ..physics.masks import variable_density_kt
from .common import cosine_lr, log_step, resume, save_ckpt, start_run

TEST_NOISE = 0.005
N_CENTER = 11


@dataclass
class CineTrainConfig:
    steps: int = 1000
    batch: int = 2
    crop: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "l1"              # "l1" or "l2"
    schedule: str = "cosine"      # "constant", "cosine" or "plateau"
    accels: Tuple[float, ...] = (5.0, 5.0, 8.0, 10.0)
    noise: float = 0.01
    seed: int = 0
    threads: Optional[int] = None
    ckpt_every: int = 100
    val_every: int = 100
    val_series: int = 8

    def to_dict(self):
        return asdict(self)


def kt_mask(frames: int, ny: int, accel: float, seed: int) -> np.ndarray:
    return variable_density_kt(frames, ny, accel, n_center=N_CENTER, seed=seed).array.astype(np.float32)


def undersample(images: np.ndarray, mask: np.ndarray, noise, rng: np.random.Generator) -> np.ndarray:
    """Hybrid k-space (x, ky) of a (..., T, H, W) series, noisy, zero where unsampled;
    ``noise`` a standard deviation, or one per series broadcastable to the k-space."""
    k = to_hybrid(torch.from_numpy(np.ascontiguousarray(images, np.complex64))).numpy()
    if np.any(noise):
        k = k + (noise / np.sqrt(2)) * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    return (k * mask[..., :, None, :]).astype(np.complex64)


def make_batch(imgs: np.ndarray, tc: CineTrainConfig, rng: np.random.Generator):
    """Augmented (k0, mask, target) tensors from a (B, T, H, W) stack of training series."""
    b, t, h, w = imgs.shape
    out_x, out_m = [], []
    for s in imgs:
        s = np.roll(s, int(rng.integers(t)), axis=0)
        if rng.random() < 0.5:
            s = s[:, ::-1]
        if rng.random() < 0.5:
            s = s[:, :, ::-1]
        if tc.crop and tc.crop < h:
            r0 = int(rng.integers(h - tc.crop + 1))
            s = s[:, r0:r0 + tc.crop]
        out_x.append(s * np.exp(1j * rng.uniform(0, 2 * np.pi)))
        out_m.append(kt_mask(t, w, float(rng.choice(tc.accels)), int(rng.integers(2 ** 31))))
    x = np.stack(out_x).astype(np.complex64)
    m = np.stack(out_m)
    k0 = undersample(x, m, rng.uniform(0, tc.noise, size=(b, 1, 1, 1)), rng)
    return torch.from_numpy(k0), torch.from_numpy(m), torch.from_numpy(x)


def loss_fn(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    d = torch.view_as_real(out - target)
    if kind == "l1":
        return d.abs().mean()
    if kind == "l2":
        return d.pow(2).mean()
    raise ValueError(f"unknown loss {kind!r}")


def test_inputs(cs: CineSet, accel: float, noise: float = TEST_NOISE, seed0: int = 1000):
    """Fixed (k0, masks) for every series of ``cs`` at acceleration ``accel``."""
    n, t, h, w = cs.images.shape
    masks = np.stack([kt_mask(t, w, accel, seed0 + i) for i in range(n)])
    rng = np.random.default_rng(seed0)
    return undersample(cs.images, masks, noise, rng), masks


@torch.no_grad()
def reconstruct(net, k0: np.ndarray, masks: np.ndarray, batch: int = 1, **kw) -> np.ndarray:
    net.eval()
    out = []
    for i in range(0, len(k0), batch):
        out.append(net(torch.from_numpy(k0[i:i + batch]), torch.from_numpy(masks[i:i + batch]), **kw).numpy())
    return np.concatenate(out)


def series_metrics(rec: np.ndarray, ref: np.ndarray) -> Tuple[float, float]:
    """Mean over frames of PSNR and SSIM of the magnitudes (data range: max |ref|)."""
    a, r = np.abs(rec), np.abs(ref)
    dr = float(r.max())
    return (float(np.mean([psnr(a[f], r[f], dr) for f in range(len(r))])),
            float(np.mean([ssim(a[f], r[f], dr) for f in range(len(r))])))


def summarize(recs: np.ndarray, refs: np.ndarray) -> Dict[str, float]:
    m = np.array([series_metrics(a, b) for a, b in zip(recs, refs)])
    return {"psnr": float(m[:, 0].mean()), "psnr_std": float(m[:, 0].std()),
            "ssim": float(m[:, 1].mean()), "ssim_std": float(m[:, 1].std()), "n": len(m)}


def zero_filled(k0: np.ndarray) -> np.ndarray:
    return from_hybrid(torch.from_numpy(k0)).numpy()


def train_cine(cfg: DynamicConfig, data: CineSet, out_dir, tc: CineTrainConfig, tag: str = None,
               progress: bool = True):
    """Train a dynamic network on ``data``'s training split; returns (net, log path)."""
    out_dir = start_run(out_dir, tc.threads, tc.seed)
    net = build_dynamic(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    tag = tag or f"cine_{cfg.arch}"
    ckpt = out_dir / f"{tag}_ckpt.pt"
    start = resume(ckpt, net, opt)
    sched_state = {"best": np.inf, "bad": 0, "lr": tc.lr}
    if ckpt.exists():
        sched_state.update(torch.load(ckpt, weights_only=False).get("sched", {}))
    train = data.subset("train").images
    val = data.subset("val")
    if tc.val_series and len(val.images) > tc.val_series:
        val = CineSet(val.images[:tc.val_series], val.sources[:tc.val_series], val.split[:tc.val_series])
    vk, vm = test_inputs(val, 5.0) if len(val.images) else (None, None)
    rng = np.random.default_rng([tc.seed, start])
    log_path = out_dir / f"{tag}_loss.csv"
    new = not log_path.exists() or start == 0
    log = open(log_path, "w" if new else "a", newline="")
    wr = csv.writer(log)
    if new:
        wr.writerow(["step", "train_loss", "val_loss", "val_psnr", "lr"])

    def set_lr(step):
        if tc.schedule == "cosine":
            lr = cosine_lr(tc.lr, step, tc.steps)
        elif tc.schedule == "plateau":
            lr = sched_state["lr"]
        else:
            lr = tc.lr
        for g in opt.param_groups:
            g["lr"] = lr
        return lr

    def save(s):
        save_ckpt(ckpt, model=net.state_dict(), opt=opt.state_dict(), step=s, config=cfg.to_dict(),
                  train=tc.to_dict(), sched=sched_state)

    step = start
    try:
        for step in tqdm(range(start, tc.steps), desc=tag, initial=start, total=tc.steps, disable=not progress):
            net.train()
            lr = set_lr(step)
            idx = rng.choice(len(train), tc.batch, replace=len(train) < tc.batch)
            k0, m, x = make_batch(train[idx], tc, rng)
            loss = loss_fn(tc.loss, net(k0, m), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            row = [step + 1, f"{loss.item():.6g}", "", "", f"{lr:.3g}"]
            if vk is not None and (step + 1) % tc.val_every == 0:
                rec = reconstruct(net, vk, vm)
                vloss = float(loss_fn(tc.loss, torch.from_numpy(rec), torch.from_numpy(val.images)))
                row[2], row[3] = f"{vloss:.6g}", f"{summarize(rec, val.images)['psnr']:.3f}"
                if vloss < sched_state["best"] - 1e-6:
                    sched_state.update(best=vloss, bad=0)
                else:
                    sched_state["bad"] += 1
                    if tc.schedule == "plateau" and sched_state["bad"] >= 3:
                        sched_state.update(lr=sched_state["lr"] * 0.5, bad=0)
            log_step(wr, log, row, step, tc.ckpt_every, save)
        step = max(start, tc.steps)
    finally:
        save(step)
        log.close()
    return net.eval(), log_path


def plot_curves(logs: Dict[str, Path], path) -> Path:
    """Training (smoothed) and validation loss curves of one or more runs, as a PNG."""
    from ..viz import _plt

    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, p in logs.items():
        rows = list(csv.DictReader(open(p)))
        st = np.array([int(r["step"]) for r in rows])
        tl = np.array([float(r["train_loss"]) for r in rows])
        k = max(1, len(tl) // 50)
        sm = np.convolve(tl, np.ones(k) / k, mode="valid")
        ax[0].plot(st[k - 1:], sm, label=name)
        v = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
        if v:
            ax[1].plot(*zip(*v), marker="o", ms=3, label=name)
    for a, t in zip(ax, ("training loss (smoothed)", "validation loss (R = 5)")):
        a.set_title(t)
        a.set_xlabel("step")
        a.set_yscale("log")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
