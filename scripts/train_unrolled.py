#!/usr/bin/env python
"""Train an unrolled reconstruction network on multi-coil data simulated from SIAT slices.

    python scripts/train_unrolled.py --denoiser resnet --accel 4 --mask vd1d --scale 0.5 --steps 2000
    python scripts/train_unrolled.py --denoiser unet --loss unsupervised ...
    python scripts/train_unrolled.py ... --steps 2800 --schedule cosine --decay-from 1200   # resume and anneal
    python scripts/train_unrolled.py --flow-regime --bits 4 --center 6 --steps 1500   # the flow prior's data
    python scripts/train_unrolled.py --accel 8 --augment --separate --init-from unrolled-resnet-vd1d-r8-cpu \
        --out runs/unrolled_aug --steps 1500 --lr 5e-4 --schedule cosine --export unrolled-resnet-vd1d-r8-cpu
    python scripts/train_unrolled.py --accel 8 --augment --separate --unrolls 6 --cg-iters 4 --precision bf16 \
        --init-from unrolled-resnet-vd1d-r8-cpu --out runs/unrolled_u6 ...   # two unrolls added

Training slices 0-149, validation 150-159 (test slices 160-199 are never touched here).
Checkpoints and the loss log go to --out; re-running resumes. ``--export MODEL_ID`` ships
the weights (fp16 safetensors + catalog card); re-running with the same --steps only
exports.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.data.recon_data import (MulticoilConfig, load_siat, resampler, siat_split,  # noqa: E402
                                         simulate_multicoil)
from MRISynthLib.models.unrolled import UnrolledConfig  # noqa: E402
from MRISynthLib.training.common import run_origin  # noqa: E402
from MRISynthLib.training.unrolled import UnrolledTrainConfig, checkpoint_path, train_unrolled  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/unrolled")
    ap.add_argument("--denoiser", choices=["resnet", "unet"], default="resnet")
    ap.add_argument("--unrolls", type=int, default=4)
    ap.add_argument("--separate", action="store_true", help="separate weights per unroll")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--cg-iters", type=int, default=8, help="CG iterations of each data-consistency step")
    ap.add_argument("--augment", action="store_true",
                    help="simulate every batch afresh: new mask and noise, random global phase and left-right flip")
    ap.add_argument("--init-from", metavar="MODEL_ID",
                    help="start from a shipped network (same denoiser and width; shared weights may start "
                         "--separate, separate weights may start more --unrolls)")
    ap.add_argument("--loss", choices=["supervised", "unsupervised"], default="supervised")
    ap.add_argument("--mask", choices=["vd1d", "equispaced", "poisson2d"], default="vd1d")
    ap.add_argument("--accel", type=float, default=4.0)
    ap.add_argument("--coils", type=int, default=8)
    ap.add_argument("--snr", type=float, default=40.0)
    ap.add_argument("--scale", type=float, default=0.5, help="resize factor (0.25 = the seed's quarter scale)")
    ap.add_argument("--bits", type=int, default=None, help="bit scaling of the magnitude (4 or 8)")
    ap.add_argument("--center", type=int, default=None, help="fully sampled centre lines (default: the mask's)")
    ap.add_argument("--flow-regime", action="store_true",
                    help="train on the flow prior's data: real 80x64 magnitudes quantised to --bits (ignores --scale)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: --lr until --decay-from, then down to 5%% of it at --steps")
    ap.add_argument("--decay-from", type=int, default=0, help="step where the cosine decay starts")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the denoisers under bfloat16 autocast (about 2x faster on CPUs with AMX)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", metavar="MODEL_ID", help="ship the trained weights under this catalog id")
    a = ap.parse_args()
    mc = MulticoilConfig(n_coils=a.coils, snr=a.snr, mask_kind=a.mask, accel=a.accel, bits=a.bits, scale=a.scale,
                         center=a.center, seed=a.seed)
    tr, va, _ = siat_split(mc)
    if a.flow_regime and a.augment:
        raise SystemExit("--augment works on the SIAT regime, not --flow-regime")
    if a.flow_regime:
        from MRISynthLib.training.flow import FLOW_SIZE, flow_multicoil
        kw = dict(accel=a.accel, mask_kind=a.mask, center=6 if a.center is None else a.center, n_coils=a.coils,
                  snr=a.snr)
        train, val = flow_multicoil(tr, a.bits, seed=a.seed, **kw), flow_multicoil(va, a.bits, seed=a.seed + 1, **kw)
        out = Path(a.out) / f"flow{FLOW_SIZE[0]}x{FLOW_SIZE[1]}_{a.bits}bit_{a.mask}_R{a.accel:g}"
    else:
        train = resampler(load_siat(tr), mc) if a.augment else simulate_multicoil(load_siat(tr), mc)
        val = simulate_multicoil(load_siat(va), MulticoilConfig(**{**mc.__dict__, "seed": a.seed + 1}))
        out = Path(a.out) / f"{a.mask}_R{a.accel:g}_s{a.scale:g}"
    cfg = UnrolledConfig(denoiser=a.denoiser, unrolls=a.unrolls, shared=not a.separate, width=a.width,
                         cg_iters=a.cg_iters)
    tc = UnrolledTrainConfig(steps=a.steps, batch=a.batch, lr=a.lr, loss=a.loss, schedule=a.schedule,
                             decay_from=a.decay_from, seed=a.seed, threads=a.threads, precision=a.precision)
    init, origin = None, None
    if a.init_from:
        from MRISynthLib import catalog
        source = catalog.get_card(a.init_from)
        arch = source.architecture
        if (arch["denoiser"], arch["width"], arch["blocks"]) != (cfg.denoiser, cfg.width, cfg.blocks) \
                or (cfg.shared and not arch["shared"]) or arch["unrolls"] > cfg.unrolls \
                or (arch["unrolls"] < cfg.unrolls and (cfg.shared or arch["shared"])):
            raise SystemExit(f"{a.init_from} has another architecture ({arch}); cannot start from it")
        init = catalog.load_state_dict(source)
        origin = run_origin(checkpoint_path(out, cfg, tc), source)
    net = train_unrolled(cfg, train, out, tc, val=val, init_state=init, n_train=len(tr))
    print(f"checkpoints and loss log in {out}")
    if a.export:
        from MRISynthLib import catalog

        card = catalog.ship(
            a.export, "recon", cfg.to_dict(), net.state_dict(),
            citation="Deep basis pursuit / MoDL-style unrolling (Tamir et al. 2019, Aggarwal et al. 2019); "
                     "SIAT complex head slices",
            training={"data": f"SIAT slices 0-149{' magnitude' if a.flow_regime else ''}, {a.coils} birdcage coils, "
                              f"SNR {a.snr:g}, {a.mask} R={a.accel:g}, "
                              + ("80x64" if a.flow_regime else f"resize {a.scale:g}")
                              + (f", {a.bits}-bit" if a.bits else ""),
                      "mask_kind": a.mask, "acceleration": a.accel,
                      **({"regime": "flow80x64"} if a.flow_regime else {}), "loss": a.loss, "steps": a.steps,
                      "seed": a.seed,
                      "batch": a.batch, "lr": a.lr, "device": "cpu",
                      **({"precision": "bf16 autocast (denoisers)"} if a.precision == "bf16" else {}),
                      **({"augmentation": "every batch simulated afresh: new mask and noise, random global "
                                          "phase, left-right flips"} if a.augment else {}),
                      **({"continued_from": origin} if origin else {}),
                      "schedule": "constant" if a.schedule == "constant"
                      else (f"constant to step {a.decay_from}, then " if a.decay_from else "")
                      + f"cosine to 5 % at step {a.steps}"},
            description=f"Unrolled {a.denoiser} denoiser + CG data consistency, {cfg.unrolls} unrolls"
                        + ("" if cfg.shared else " (separate weights)"))
        print(f"shipped {card.weights} (sha256 {card.sha256[:12]}...)")


if __name__ == "__main__":
    main()
