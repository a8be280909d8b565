"""Training of the unrolled reconstruction networks.

Supervised: image-space loss (MSE of real/imag) against the fully sampled image.
Unsupervised (k-space loss on held-back samples, SSDU-style): the sampled k-space is
split per step into a part given to the network (``1 - holdout``) and a held-back part;
the loss is the error of the network's k-space on the held-back samples only, so no fully
sampled image is needed.

Seeded, resumable (checkpoint every ``ckpt_every`` steps and on interruption), with a
progress bar and a CSV loss log (train loss, and validation NRMSE every ``val_every``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..device import resolve_precision
from ..models.unrolled import UnrolledConfig, UnrolledNet, expand_state
from ..physics.sense import sense_forward
from .common import cosine_lr, log_step, resume, save_ckpt, start_run


@dataclass
class UnrolledTrainConfig:
    steps: int = 2000
    batch: int = 4
    lr: float = 1e-3
    schedule: str = "constant"    # or "cosine": lr until decay_from, then cosine to 5 % at steps
    decay_from: int = 0
    loss: str = "supervised"      # or "unsupervised"
    holdout: float = 0.4          # unsupervised: fraction of sampled points held back
    seed: int = 0
    ckpt_every: int = 200
    val_every: int = 200
    threads: Optional[int] = None
    precision: str = "fp32"       # "bf16": the denoisers under bfloat16 autocast (training and validation)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def normalise(batch: Dict[str, np.ndarray]):
    """Scale each slice so that its zero-filled image has 99th percentile 1."""
    from ..physics.sense import sense_adjoint

    zf = np.abs(sense_adjoint(batch["ksp"], batch["maps"], batch["masks"]))
    s = np.percentile(zf.reshape(len(zf), -1), 99, axis=1).astype(np.float32)
    s = np.maximum(s, 1e-8)[:, None, None]
    return {"ksp": batch["ksp"] / s[:, None], "imgs": batch["imgs"] / s, "maps": batch["maps"],
            "masks": batch["masks"], "scale": s}


def checkpoint_path(out_dir, cfg: UnrolledConfig, tc: UnrolledTrainConfig) -> Path:
    return Path(out_dir) / f"unrolled_{cfg.denoiser}_{tc.loss}_ckpt.pt"


def train_unrolled(cfg: UnrolledConfig, train, out_dir, tc: UnrolledTrainConfig,
                   val: Optional[Dict[str, np.ndarray]] = None, progress: bool = True,
                   init_state: Optional[dict] = None, n_train: Optional[int] = None) -> UnrolledNet:
    """``train``: the fixed training set (dict in the seed-004 layout), or a function
    ``draw(idx, rng) -> dict`` that simulates slices ``idx`` (of ``n_train``) afresh at each
    step (:func:`~MRISynthLib.data.recon_data.resampler`). ``init_state``: weights to start
    from (a shipped network's; a shared-weight state also starts a separate-weight network)
    when there is no checkpoint to resume."""
    if tc.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {tc.schedule!r} (constant or cosine)")
    resolve_precision(tc.precision, "cpu")   # validates (and warns for emulated bf16); training runs on the CPU
    out_dir = start_run(out_dir, tc.threads, tc.seed)
    net = UnrolledNet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    tag = f"unrolled_{cfg.denoiser}_{tc.loss}"
    ckpt = checkpoint_path(out_dir, cfg, tc)
    start = resume(ckpt, net, opt)
    if start == 0 and init_state is not None:
        net.load_state_dict(expand_state(init_state, cfg))
    draw: Optional[Callable] = train if callable(train) else None
    if draw is None:
        train = normalise(train)
        n = len(train["imgs"])
    elif not n_train:
        raise ValueError("n_train is needed with a resampling training set")
    else:
        n = n_train
    val = normalise(val) if val is not None else None
    rng = np.random.default_rng([tc.seed, start])
    step = start
    log = open(out_dir / f"{tag}_loss.csv", "a", newline="")
    wr = csv.writer(log)

    def save(s):
        save_ckpt(ckpt, model=net.state_dict(), opt=opt.state_dict(), step=s, config=cfg.to_dict())

    try:
        for step in tqdm(range(start, tc.steps), desc=tag, initial=start, total=tc.steps, disable=not progress):
            idx = rng.choice(n, tc.batch, replace=False) if n >= tc.batch else rng.choice(n, tc.batch)
            batch = normalise(draw(idx, rng)) if draw is not None else {key: train[key][idx] for key in train}
            k, maps, mask, img = (_t(batch[key]) for key in ("ksp", "maps", "masks", "imgs"))
            for g in opt.param_groups:
                g["lr"] = tc.lr if tc.schedule == "constant" else cosine_lr(tc.lr, step, tc.steps, tc.decay_from)
            if tc.loss == "supervised":
                out = net(k, maps, mask, tc.precision)
                loss = (out - img).abs().pow(2).mean()
            else:
                keep = (torch.from_numpy(rng.uniform(size=mask.shape) > tc.holdout).float()) * mask
                held = mask - keep
                out = net(k * keep[:, None], maps, keep, tc.precision)
                pred = sense_forward(out, maps, held)
                loss = (pred - k * held[:, None]).abs().pow(2).sum() / held.sum().clamp_min(1) / k.shape[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            row = [step, f"{loss.item():.6g}", f"{net.mu.item():.4g}", ""]
            if val is not None and (step + 1) % tc.val_every == 0:
                row[3] = f"{validate(net, val, precision=tc.precision):.4f}"
            log_step(wr, log, row, step, tc.ckpt_every, save)
        step = max(start, tc.steps)
    finally:
        save(step)
        log.close()
    return net.eval()


@torch.no_grad()
def validate(net: UnrolledNet, data: Dict[str, np.ndarray], batch: int = 4, precision: str = "fp32") -> float:
    """Mean NRMSE of the magnitude over the given (normalised) slices."""
    errs = []
    for i in range(0, len(data["imgs"]), batch):
        sl = slice(i, i + batch)
        out = net(_t(data["ksp"][sl]), _t(data["maps"][sl]), _t(data["masks"][sl]), precision).abs().numpy()
        ref = np.abs(data["imgs"][sl])
        errs += [np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12) for o, r in zip(out, ref)]
    return float(np.mean(errs))
