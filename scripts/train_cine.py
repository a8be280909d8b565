#!/usr/bin/env python
"""Train a cine (2D+time) reconstruction network on the simulated cine set.

    python scripts/train_cine.py --arch cascade --stages 5 --width 16 --steps 1200
    python scripts/train_cine.py --arch seed --steps 800 --weight-decay 1e-5
    python scripts/train_cine.py --arch seed --steps 300 --no-dropout --schedule constant --tag abl_nodrop

The simulated set (see MRISynthLib/data/cine.py) is generated once into --data (HDF5) and
reused; the training split only is used here (the validation split for the loss curve and
the plateau schedule). Checkpoints and loss log go to --out/<tag>; re-running resumes.
``--export MODEL_ID`` ships the weights (fp16 safetensors + catalog card).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.data.cine import CineSimConfig, load_cine_set, save_cine_set, simulate_cine_set  # noqa: E402
from MRISynthLib.models.dynamic import DynamicConfig  # noqa: E402
from MRISynthLib.training.cine import CineTrainConfig, train_cine  # noqa: E402

DATA = "runs/cine/cine_set.h5"


def cine_set(path=DATA, progress=True):
    p = Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        cfg = CineSimConfig(n_siat=100, n_brainweb=20, n_mni=20, n_ring=12)
        save_cine_set(p, simulate_cine_set(cfg, progress=progress), attrs={"config": repr(cfg)})
    return load_cine_set(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default="runs/cine")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--arch", choices=["seed", "cascade"], default="cascade")
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--width", type=int, default=16, help="cascade denoiser width")
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--unet-width", type=int, default=32)
    ap.add_argument("--no-dropout", action="store_true")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--loss", choices=["l1", "l2"], default="l1")
    ap.add_argument("--schedule", choices=["constant", "cosine", "plateau"], default="cosine")
    ap.add_argument("--accels", default="5,5,8,10", help="accelerations drawn per sample")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", metavar="MODEL_ID", help="ship the trained weights under this catalog id")
    a = ap.parse_args()
    data = cine_set(a.data)
    cfg = DynamicConfig(arch=a.arch, frames=data.images.shape[1], stages=a.stages, width=a.width, depth=a.depth,
                        unet_width=a.unet_width, dropout=0.0 if a.no_dropout else 0.3)
    tc = CineTrainConfig(steps=a.steps, batch=a.batch, crop=a.crop, lr=a.lr, weight_decay=a.weight_decay,
                         loss=a.loss, schedule=a.schedule, accels=tuple(float(x) for x in a.accels.split(",")),
                         seed=a.seed, threads=a.threads)
    tag = a.tag or f"{a.arch}" + (f"_k{a.stages}_w{a.width}" if a.arch == "cascade" else "")
    net, log = train_cine(cfg, data, Path(a.out) / tag, tc, tag=tag)
    print(f"checkpoints and loss log in {log.parent}")
    if a.export:
        from MRISynthLib import catalog

        card = catalog.ship(
            a.export, "cine", cfg.to_dict(), net.state_dict(),
            citation=("DC-CNN cascade (Schlemper et al., IEEE TMI 2018)" if a.arch == "cascade" else
                      "Seed 003: dual U-Net with attention + 3D ResNet") +
                     "; simulated cine from SIAT head slices, BrainWeb, MNI152, KomaMRI ring and PINCAT",
            training={"data": f"{a.data}: train split ({int((data.split == 'train').sum())} series, "
                              f"{data.images.shape[1]} frames, {data.images.shape[2]}x{data.images.shape[3]})",
                      "accelerations": a.accels, "loss": a.loss, "schedule": a.schedule, "steps": a.steps,
                      "seed": a.seed,
                      "batch": a.batch, "crop": a.crop, "lr": a.lr, "weight_decay": a.weight_decay,
                      "device": "cpu"},
            description=(f"Cine cascade: {a.stages} x (3D CNN, width {a.width}, depth {a.depth}) + "
                         "noise-aware k-space data consistency" if a.arch == "cascade" else
                         "Seed cine network: dual 2D U-Net (CBAM bottleneck) + 3D ResNet"))
        print(f"shipped {card.weights} (sha256 {card.sha256[:12]}...)")


if __name__ == "__main__":
    main()
