"""Unpaired T1w/T2w data and the CycleGAN training loop (:mod:`MRISynthLib.models.cyclegan`).

Data, simulated on the fly with the foundation's physics from partial-volume tissue
fractions (axial slices on a 2 mm grid resized to 256 x 256):

* T1-weighted and T2-weighted spin echo with TE and TR uniform in the ranges of a named
  protocol (:data:`PROTOCOLS`): ``standard`` (T1w TE 10-14 ms, TR 450-550 ms; T2w TE
  90-110 ms, TR 3.5-4.5 s), the default, or ``wide`` (T1w TE 8-20 ms, TR 400-700 ms; T2w
  TE 80-120 ms, TR 3-6 s). An unconditioned translator cannot read the target's TE/TR
  from its input, so its output contrast is only defined up to the spread of the target
  domain (scripts/bench_translate.py prints the resulting ceiling: the true image at the
  middle setting scored against the quartile settings);
* tissue table MRiLab or MRiLab+fat/glial, jittered per sample (log-normal, 5 % PD,
  10 % T1/T2); a smooth receive bias (up to +/-10 %) on half of the samples; Rician noise
  at SNR 30-150 (log-uniform);
* unpaired: the training slices of each anatomy are split into alternating blocks of 4
  slices, T1w images come only from the even blocks and T2w images only from the odd
  ones, each with its own random tissue table and acquisition; the two domains never
  show the same anatomy;
* held out: the paper-protocol test slices (every 5th of 24, see
  :func:`MRISynthLib.training.quantitative.held_out_z`) and their neighbours +/-1 of every
  training anatomy, and the whole of any anatomy not in ``anatomies`` (cross-anatomy test);
* preprocessing as the seed: intensities to [-1, 1] (99.5th percentile -> 1), random
  jitter (resize to 286 x 286, random 256 x 256 crop) and left-right mirroring;
* ``clean_targets``: the simulator also keeps each image without its noise; the
  generators still get the noisy images, but the discriminators judge noise-free images as
  real and the cycle loss asks for the noise-free input back, so the generators learn to
  translate to noise-free images (the benchmark's references are noise-free) instead of
  copying or inventing noise;
* ``lam_struct``: the MIND structure-consistency loss of each translation against its
  (noise-free, with ``clean_targets``) input (:func:`MRISynthLib.models.cyclegan.structure_loss`);
* ``cycle_noise``: Gaussian noise added to each translation on the cycle's way back only
  (:func:`MRISynthLib.models.cyclegan.generator_losses`), against hidden-signal cycles.

Paired test slices (:func:`test_pairs`): the held-out slices rendered with both contrasts
(TE/TR at the quartiles and middle of the ranges above, the nominal MRiLab and
MRiLab+fat tables, no bias); the inputs carry Rician noise at SNR 60, the references are
noise-free.

Training: optionally ``warm_steps`` of an unpaired warm start (each generator fitted with
L1 to :func:`inversion_match` of its input against the other domain's image of the step:
no paired data; it moves the generators out of the copy-the-input state that cycle and
identity losses otherwise hold them in on a CPU budget), then the CycleGAN game with
Adam (lr 2e-4, betas 0.5/0.999) for both players, constant for the first half
of the steps, then linear decay to 0 (CycleGAN's schedule); image pools of 50 fakes;
losses in ``cyclegan_loss.csv``; a frame of the test predictions (first test pair, both
directions) every ``frame_every`` steps, collected in ``progress.gif``.
"""
from __future__ import annotations

import csv
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.cyclegan import CycleGAN, CycleGANConfig, ImagePool, discriminator_loss, generator_losses
from ..models.cyclegan import intensity_scale, to_model_range
from ..physics.phantoms import add_noise, bias_field, render_fractions
from ..physics.signal import SequenceParams
from ..physics.tissues import jitter_table
from .common import save_ckpt, start_run
from .quantitative import held_out_z, load_anatomy, slice_fractions, train_z

PROTOCOLS = {  # name -> contrast -> (TE range, TR range) in seconds
    "standard": {"t1": ((0.010, 0.014), (0.45, 0.55)), "t2": ((0.09, 0.11), (3.5, 4.5))},
    "wide": {"t1": ((0.008, 0.020), (0.4, 0.7)), "t2": ((0.08, 0.12), (3.0, 6.0))},
}
TEST_SNR = 60.0
JITTER = {"pd": 0.05, "t1": 0.10, "t2": 0.10, "t2star": 0.10}
LOSS_PARTS = ("warm", "g", "gan_ab", "gan_ba", "cycle_a", "cycle_b", "id_a", "id_b", "struct_a", "struct_b",
              "d_a", "d_b")


@dataclass
class CycleTrainConfig:
    steps: int = 10000
    batch: int = 1
    lr: float = 2e-4
    lam: float = 10.0
    lam_id: float = 0.5
    pool: int = 50
    load_size: int = 286          # jitter: resize to this, random crop back to the model size
    seed: int = 0
    threads: Optional[int] = None
    warm_steps: int = 0           # unpaired warm start: generators fitted to inversion_match first
    ckpt_every: int = 200
    frame_every: int = 500
    anatomies: Tuple[str, ...] = ("brainweb",)
    tables: Tuple[str, ...] = ("mrilab", "mrilab_full")
    protocol: str = "standard"    # a key of PROTOCOLS: the TE/TR ranges of both domains
    keep_every: int = 0           # also keep a copy of the checkpoint every this many steps (snap_<step>.pt)
    clean_targets: bool = False   # discriminators' real images and cycle targets noise-free (inputs noisy)
    lam_struct: float = 0.0       # weight of the MIND structure-consistency loss (0: off)
    cycle_noise: float = 0.0      # noise sigma added to translations before the cycle's way back


def _ranges(contrast: str, protocol: str):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol][contrast]


def random_image(frac: np.ndarray, contrast: str, rng: np.random.Generator,
                 tables: Sequence[str] = ("mrilab", "mrilab_full"), protocol: str = "standard",
                 with_clean: bool = False):
    """One randomised training image of a contrast (``t1``/``t2``) of a protocol, in [-1, 1];
    ``with_clean``: (noisy, noise-free) versions of the same image, each on its own scale."""
    (te0, te1), (tr0, tr1) = _ranges(contrast, protocol)
    seq = SequenceParams("se", float(rng.uniform(te0, te1)), float(rng.uniform(tr0, tr1)))
    table = jitter_table(tables[rng.integers(len(tables))], rng, JITTER)
    clean = render_fractions(frac, seq, table)
    if rng.random() < 0.5:
        clean = clean * bias_field(clean.shape, rng, float(rng.uniform(0.02, 0.1)))
    img = add_noise(clean, float(np.exp(rng.uniform(np.log(30), np.log(150)))), rng)
    noisy = to_model_range(img, intensity_scale(img))
    return (noisy, to_model_range(clean, intensity_scale(clean))) if with_clean else noisy


def inversion_match(x: np.ndarray, ref_values: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Intensity inversion with histogram matching (images on a [0, 1] scale).

    The head (``x`` > ``threshold``) is inverted and its rank order mapped onto the
    distribution of ``ref_values`` (head intensities of images of the other contrast,
    never of the same anatomy); the background stays 0. This is the classical baseline
    of the benchmark and the unpaired warm start of the generators.
    """
    x = np.asarray(x, np.float32)
    out = np.zeros_like(x)
    head = x > threshold
    n = int(head.sum())
    ref = np.sort(np.asarray(ref_values, np.float32).ravel())
    if n == 0 or ref.size == 0:
        return out
    ranks = np.argsort(np.argsort(-x[head], kind="stable"), kind="stable") / max(n - 1, 1)
    out[head] = ref[np.round(ranks * (ref.size - 1)).astype(int)]
    return out


def split_domains(zs: np.ndarray, block: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """Alternating blocks of ``block`` slices: (T1 slices, T2 slices), disjoint."""
    zs = np.asarray(zs)
    even = (zs // block) % 2 == 0
    return zs[even], zs[~even]


def load_domains(anatomies: Sequence[str], size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """Fractions of the T1-domain and T2-domain training slices of the given anatomies."""
    a, b = [], []
    for name in anatomies:
        ph = load_anatomy(name)
        za, zb = split_domains(train_z(ph))
        a.append(slice_fractions(ph, za, size))
        b.append(slice_fractions(ph, zb, size))
    return np.concatenate(a), np.concatenate(b)


def test_seq(contrast: str, q: float = 0.5, protocol: str = "standard") -> SequenceParams:
    """The acquisition at fraction ``q`` of a contrast's TE and TR ranges in a protocol."""
    (te0, te1), (tr0, tr1) = _ranges(contrast, protocol)
    return SequenceParams("se", te0 + q * (te1 - te0), tr0 + q * (tr1 - tr0))


def test_pairs(anatomy: str, size: int = 256, seed: int = 1234, tables: Sequence[str] = ("mrilab", "mrilab_full"),
               quantiles: Sequence[float] = (0.25, 0.5, 0.75), protocol: str = "standard",
               slices: str = "test") -> Dict[str, np.ndarray]:
    """Paired held-out slices: noisy inputs and noise-free references of both contrasts.

    For every held-out slice, tissue table and quantile ``q`` of the protocol's TE/TR
    ranges, the T1w and T2w images of the same anatomy and tissues. Returns ``{"t1_in", "t2_in", "t1",
    "t2"}``, each (N, size, size) float32 in physical units (PD = 1 for water), plus
    ``"z"`` (the slice of each pair), ``"q"`` (its quantile), ``"table"`` (its tissue
    table's name), ``"brain"`` (N, size, size)
    bool (CSF + grey + white matter fraction > 0.5) and ``"label"`` (N, size, size) uint8
    (the tissue of largest fraction, :data:`MRISynthLib.physics.tissues.LABEL_NAMES`);
    normalise with the model's convention before use.
    ``slices="validation"``: the slices just above the test slices instead (held out of
    training like them, never tested on), for choosing among checkpoints.
    """
    if slices not in ("test", "validation"):
        raise ValueError(f"slices must be 'test' or 'validation', got {slices!r}")
    ph = load_anatomy(anatomy)
    zs = held_out_z(ph) + (1 if slices == "validation" else 0)
    frac = slice_fractions(ph, zs, size)
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("t1_in", "t2_in", "t1", "t2", "z", "q", "table", "brain", "label")}
    for z, f in zip(zs, frac):
        brain = f[1:4].sum(0) > 0.5
        label = f.argmax(0).astype(np.uint8)
        for table in tables:
            for q in quantiles:
                for c in ("t1", "t2"):
                    clean = render_fractions(f, test_seq(c, q, protocol), table)
                    out[c].append(clean)
                    out[c + "_in"].append(add_noise(clean, TEST_SNR, rng))
                out["z"].append(z)
                out["q"].append(q)
                out["table"].append(table)
                out["brain"].append(brain)
                out["label"].append(label)
    res = {k: np.stack(out[k]).astype(np.float32) for k in ("t1_in", "t2_in", "t1", "t2")}
    res["z"], res["q"], res["table"] = np.asarray(out["z"]), np.asarray(out["q"], np.float64), np.asarray(out["table"])
    res["brain"], res["label"] = np.stack(out["brain"]), np.stack(out["label"])
    return res


def jitter_batch(x: torch.Tensor, rng: np.random.Generator, load_size: int, size: int) -> torch.Tensor:
    """Resize up to ``load_size``, random crop back to ``size``, random left-right mirror."""
    if load_size > size:
        x = F.interpolate(x, size=(load_size, load_size), mode="bilinear", align_corners=False)
        y0, x0 = (int(v) for v in rng.integers(0, load_size - size + 1, size=2))
        x = x[..., y0:y0 + size, x0:x0 + size]
    if rng.random() < 0.5:
        x = x.flip(-1)
    return x.contiguous()


def _frame(net: CycleGAN, pair: Dict[str, np.ndarray]) -> np.ndarray:
    """One GIF frame: [T1 in | T1->T2 | T2 truth] over [T2 in | T2->T1 | T1 truth], uint8."""
    rows = []
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        for src, dst, g in (("t1_in", "t2", net.g_ab), ("t2_in", "t1", net.g_ba)):
            x = to_model_range(pair[src], intensity_scale(pair[src]))
            y = g(torch.from_numpy(x)[None, None])[0, 0].numpy()
            t = to_model_range(pair[dst], intensity_scale(pair[dst]))
            rows.append(np.concatenate([x, y, t], 1))
    net.train(was_training)
    return np.round((np.concatenate(rows, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)


def write_gif(frames_dir: Path, out: Path, duration_ms: int = 400, scale: float = 1.0) -> Optional[Path]:
    """Collect the frames ``step_*.png`` of ``frames_dir`` into an animated GIF (atomic)."""
    from PIL import Image

    from ..fileutil import atomic_output

    files = sorted(Path(frames_dir).glob("step_*.png"))
    if not files:
        return None
    ims = [Image.open(f).convert("L") for f in files]
    if scale != 1.0:
        ims = [im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS) for im in ims]
    with atomic_output(out, suffix=".gif") as tmp:
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return out


def _warm_step(net: CycleGAN, opt_g, real_a: torch.Tensor, real_b: torch.Tensor) -> float:
    """One L1 step of both generators towards the inversion-matched image of their input,
    matched to the other domain's (unpaired) image of this step."""
    def pseudo(src, ref):
        u, r = ((src.numpy() + 1) / 2), ((ref.numpy() + 1) / 2)
        t = np.stack([inversion_match(u[i, 0], r[i % len(r), 0][r[i % len(r), 0] > 0.05]) for i in range(len(u))])
        return torch.from_numpy(t[:, None] * 2 - 1)

    loss = F.l1_loss(net.g_ab(real_a), pseudo(real_a, real_b)) + F.l1_loss(net.g_ba(real_b), pseudo(real_b, real_a))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return loss.item()


def train_cyclegan(cfg: CycleGANConfig, out_dir, tc: CycleTrainConfig, domains=None, frame_pair=None,
                   progress: bool = True, init_from=None, init_generators: Optional[dict] = None,
                   origin: Optional[dict] = None) -> CycleGAN:
    """Train (or resume) a CycleGAN; checkpoint, loss log, frames and GIF in ``out_dir``.

    ``domains``: (T1 fractions, T2 fractions) to use instead of :func:`load_domains`;
    ``frame_pair``: a dict like one entry of :func:`test_pairs` for the GIF frames;
    ``init_from``: another run's checkpoint to continue from (weights, optimisers, pools
    and step) when ``out_dir`` has none yet, e.g. to fine-tune on another protocol;
    ``init_generators``: a generator state dict (``g_ab.*``, ``g_ba.*``, as a shipped model
    holds) to start both generators from when ``out_dir`` has no checkpoint yet
    (discriminators, optimisers and pools start fresh, at step 0), with ``origin``
    describing where they came from (e.g. the model id and checksum).

    Every checkpoint keeps the run's ``origin`` (for the catalog card of an export): that
    ``origin``, or for a run continued from ``init_from`` that checkpoint's name, step,
    protocol and warm-up steps, with the origin it had in turn under ``continued_from``.
    """
    from PIL import Image

    if tc.keep_every % tc.ckpt_every:
        raise ValueError(f"keep_every ({tc.keep_every}) must be a multiple of ckpt_every ({tc.ckpt_every})")
    out_dir = start_run(out_dir, tc.threads, tc.seed)
    fa, fb = load_domains(tc.anatomies, cfg.size) if domains is None else domains
    if frame_pair is None:
        tp = test_pairs(tc.anatomies[0], cfg.size, tables=("mrilab",), quantiles=(0.5,), protocol=tc.protocol)
        mid = len(tp["t1"]) // 2
        frame_pair = {k: v[mid] for k, v in tp.items()}
    net = CycleGAN(cfg)
    opt_g = torch.optim.Adam(net.generators(), lr=tc.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(net.discriminators(), lr=tc.lr, betas=(0.5, 0.999))
    pool_a, pool_b = ImagePool(tc.pool, random.Random(tc.seed)), ImagePool(tc.pool, random.Random(tc.seed + 1))
    ckpt = out_dir / "cyclegan_ckpt.pt"
    start = 0
    if ckpt.exists() or init_from is not None:
        st = torch.load(ckpt if ckpt.exists() else init_from, weights_only=False)
        if st["config"] != cfg.to_dict():
            raise ValueError(f"checkpoint model config {st['config']} differs from {cfg.to_dict()}")
        net.load_state_dict(st["model"])
        opt_g.load_state_dict(st["opt_g"])
        opt_d.load_state_dict(st["opt_d"])
        for pool, key in ((pool_a, "pool_a"), (pool_b, "pool_b")):
            if st.get(key) is not None:
                pool.images = list(st[key].split(1))
        start = int(st["step"])
        if ckpt.exists():
            origin = st.get("origin")
        else:
            origin = {"checkpoint": Path(init_from).name, "step": start,
                      "protocol": st["train_config"].get("protocol", "wide"),
                      "warm_steps": st["train_config"].get("warm_steps", 0),
                      **({"continued_from": st["origin"]} if st.get("origin") else {})}
    elif init_generators is not None:
        missing, unexpected = net.load_state_dict(init_generators, strict=False)
        if unexpected or any(k.startswith(("g_ab.", "g_ba.")) for k in missing):
            raise ValueError(f"init_generators does not fit the generators: missing "
                             f"{[k for k in missing if k.startswith(('g_ab.', 'g_ba.'))][:3]}, "
                             f"unexpected {unexpected[:3]}")
    frames = out_dir / "frames"
    frames.mkdir(exist_ok=True)

    def lr_at(s):
        half = tc.steps / 2
        return tc.lr * (1.0 if s < half else max(0.0, (tc.steps - s) / half))

    log_path = out_dir / "cyclegan_loss.csv"
    new_log = not log_path.exists() or log_path.stat().st_size == 0
    columns = list(LOSS_PARTS)
    if not new_log:   # a resumed run keeps its log's columns (logs from before a loss part existed lack it)
        with open(log_path, newline="") as f:
            columns = next(csv.reader(f))[1:]
    log = open(log_path, "a", newline="")
    wr = csv.writer(log)
    if new_log:
        wr.writerow(["step"] + columns)

    def save(s):
        pools = {k: torch.cat(p.images) if p.images else None for k, p in (("pool_a", pool_a), ("pool_b", pool_b))}
        save_ckpt(ckpt, model=net.state_dict(), opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), step=s,
                  config=cfg.to_dict(), train_config=asdict(tc), origin=origin, **pools)
        if tc.keep_every and s > 0 and s % tc.keep_every == 0:
            shutil.copyfile(ckpt, out_dir / f"snap_{s}.pt")

    def add_frame(s):
        Image.fromarray(_frame(net, frame_pair)).save(frames / f"step_{s:07d}.png")
        write_gif(frames, out_dir / "progress.gif")

    if not any(frames.glob("step_*.png")):
        add_frame(start)
    net.train()
    step = start
    try:
        for step in tqdm(range(start, tc.steps), desc="cyclegan", initial=start, total=tc.steps,
                         disable=not progress):
            rng = np.random.default_rng([tc.seed, step])
            # (batch, 2, H, W): noisy and noise-free versions, jittered together
            a = np.stack([np.stack(random_image(fa[i], "t1", rng, tc.tables, tc.protocol, with_clean=True))
                          for i in rng.integers(len(fa), size=tc.batch)])
            b = np.stack([np.stack(random_image(fb[i], "t2", rng, tc.tables, tc.protocol, with_clean=True))
                          for i in rng.integers(len(fb), size=tc.batch)])
            a = jitter_batch(torch.from_numpy(a), rng, tc.load_size, cfg.size)
            b = jitter_batch(torch.from_numpy(b), rng, tc.load_size, cfg.size)
            real_a, real_b = a[:, :1], b[:, :1]
            clean_a, clean_b = (a[:, 1:], b[:, 1:]) if tc.clean_targets else (None, None)
            for o in (opt_g, opt_d):
                for group in o.param_groups:
                    group["lr"] = lr_at(step)
            if step < tc.warm_steps:
                w = _warm_step(net, opt_g, real_a, real_b)
                wr.writerow([step] + [f"{w:.5g}" if k == "warm" else "nan" for k in columns])
                if (step + 1) % tc.ckpt_every == 0:
                    save(step + 1)
                if (step + 1) % tc.frame_every == 0:
                    add_frame(step + 1)
                continue
            # generators (discriminators frozen)
            for p in net.discriminators():
                p.requires_grad_(False)
            loss_g, parts, fake_a, fake_b = generator_losses(net, real_a, real_b, tc.lam, tc.lam_id,
                                                             clean_a, clean_b, tc.lam_struct, tc.cycle_noise)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            # discriminators on pooled fakes
            for p in net.discriminators():
                p.requires_grad_(True)
            d_a = discriminator_loss(net.d_a, real_a if clean_a is None else clean_a, pool_a.query(fake_a),
                                     cfg.gan_mode)
            d_b = discriminator_loss(net.d_b, real_b if clean_b is None else clean_b, pool_b.query(fake_b),
                                     cfg.gan_mode)
            opt_d.zero_grad(set_to_none=True)
            (d_a + d_b).backward()
            opt_d.step()
            vals = {"g": loss_g.item(), "d_a": d_a.item(), "d_b": d_b.item(),
                    **{k: v.item() for k, v in parts.items()}}
            wr.writerow([step] + [f"{vals.get(k, 0.0):.5g}" if k in LOSS_PARTS else "nan" for k in columns])
            if (step + 1) % tc.ckpt_every == 0:
                save(step + 1)
                log.flush()
            if (step + 1) % tc.frame_every == 0:
                add_frame(step + 1)
        step = max(start, tc.steps)
    finally:
        save(step)
        log.close()
    return net.eval()
