#!/usr/bin/env python
"""The cine seed's ablations on its own architecture (dual U-Net + 3D ResNet).

    python scripts/ablate_cine.py --steps 200

Variants, each trained from scratch for --steps on the training split with the same seed and
data, then tested at R = 5 on the test split exactly as ``bench_cine.py`` does:

* ``base``: dropout 0.3, cosine learning-rate decay, L1 loss;
* ``no-dropout``: dropout 0;
* ``constant-lr``: no learning-rate schedule;
* ``plateau-lr``: the seed's dynamic schedule (halve on a validation plateau);
* ``l2``: L2 (MSE) loss instead of L1.

Runs go to --out/abl_<variant> (resumable); the table is printed and written as JSON.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.models.dynamic import DynamicConfig  # noqa: E402
from MRISynthLib.training.cine import CineTrainConfig, train_cine  # noqa: E402
from bench_cine import run  # noqa: E402
from train_cine import DATA, cine_set  # noqa: E402

VARIANTS = {
    "base": ({}, {}),
    "no-dropout": ({"dropout": 0.0}, {}),
    "constant-lr": ({}, {"schedule": "constant"}),
    "plateau-lr": ({}, {"schedule": "plateau"}),
    "l2": ({}, {"loss": "l2"}),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default="runs/cine")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("runs/cine/ablation.json"))
    a = ap.parse_args()
    data = cine_set(a.data)
    test = data.subset("test")
    res = {}
    for name in a.variants.split(","):
        arch_kw, train_kw = VARIANTS[name]
        cfg = DynamicConfig(arch="seed", frames=data.images.shape[1], **arch_kw)
        tc = CineTrainConfig(steps=a.steps, threads=a.threads, val_every=max(a.steps // 8, 10), **train_kw)
        net, _ = train_cine(cfg, data, Path(a.out) / f"abl_{name}", tc, tag=f"abl_{name}")
        torch.set_num_threads(a.threads)
        r, _ = run("seed", test, 5.0, net)
        res[name] = r
        print(f"{name:<12} PSNR {r['psnr']:.2f} +/- {r['psnr_std']:.2f} dB  SSIM {r['ssim']:.3f} +/- {r['ssim_std']:.3f}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"steps": a.steps, "results": res}, indent=1))
    print(f"\n{'variant':<12} {'PSNR dB':>16} {'SSIM':>16}   ({a.steps} steps each, test split, R = 5)")
    for name, r in res.items():
        print(f"{name:<12} {r['psnr']:7.2f} +/- {r['psnr_std']:4.2f} {r['ssim']:7.3f} +/- {r['ssim_std']:.3f}")


if __name__ == "__main__":
    main()
