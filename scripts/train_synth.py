#!/usr/bin/env python
"""Train the physics-informed synthesis network (PD/T1/T2 compartments + renderer).

    python scripts/train_synth.py --steps 3000                 # 128x128 crops (CPU)
    python scripts/train_synth.py --steps 3400 --crop 0        # then whole 256x256 slices

Samples are simulated on the fly (see MRISynthLib.training.quantitative); the paper-protocol
test slices of BrainWeb and MNI152 (and their neighbours) are never used. Re-running resumes
from the checkpoint in --out; --export writes the fp16 safetensors and the catalog entry.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.models.quantitative import QuantConfig  # noqa: E402
from MRISynthLib.training.quantitative import QuantTrainConfig, train_quantitative  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/synth")
    ap.add_argument("--widths", default="16,32,64,128")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", default=None, metavar="MODEL_ID",
                    help="after training, ship the weights under this catalog id")
    a = ap.parse_args()
    cfg = QuantConfig(widths=[int(w) for w in a.widths.split(",")])
    tc = QuantTrainConfig(steps=a.steps, batch=a.batch, lr=a.lr, crop=a.crop, threads=a.threads, seed=a.seed)
    net = train_quantitative(cfg, a.out, tc)
    if a.export:
        from MRISynthLib.tasks.synth import export_model

        card = export_model(net, a.export, tc)
        print(f"shipped {card.weights} (sha256 {card.sha256[:12]}...)")
    print(f"checkpoint and loss log in {a.out}")


if __name__ == "__main__":
    main()
