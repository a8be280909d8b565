#!/usr/bin/env python
"""Train the neural-spline-flow image prior on 80 x 64 magnitudes quantised to --bits bits.

    python scripts/train_flow.py --bits 4 --steps 1500
    python scripts/train_flow.py --bits 8 --augment 6 --brainweb 300 --steps 3500 --export flow-nsf-80x64-8bit-cpu

Training images: SIAT slices 0-149 (magnitude), --augment random affine copies of each, and
--brainweb BrainWeb slices at random spin-echo contrasts; validation: SIAT 150-159 (bits/dim printed every 100 steps). The
test slices 160-199 are never touched. Checkpoints and the loss log go to
--out/<bits>bit; re-running resumes. ``--export MODEL_ID`` ships the weights (fp16
safetensors + catalog card) and a montage of prior samples under docs/. ``--init-from
MODEL_ID`` continues a catalog flow (its architecture; a fresh optimiser and cosine
schedule), and the exported card records it under ``continued_from``:

    python scripts/train_flow.py --bits 4 --augment 6 --brainweb 300 --steps 3500 --lr 3e-4 \
        --init-from flow-nsf-80x64-4bit-cpu --out runs/flow_cont
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.models.flow import FlowConfig  # noqa: E402
from MRISynthLib.training.flow import (FLOW_SIZE, FlowTrainConfig, flow_training_images, train_flow,  # noqa: E402
                                       validate_bpd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/flow")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--flow-steps", type=int, default=4, help="coupling steps per level")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--brainweb", type=int, default=100, help="BrainWeb training slices")
    ap.add_argument("--augment", type=int, default=0,
                    help="random affine copies (rotation, zoom, shift) of each SIAT training slice")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", metavar="MODEL_ID", help="ship the trained weights under this catalog id")
    ap.add_argument("--init-from", metavar="MODEL_ID",
                    help="continue this catalog flow (its architecture replaces --levels/--flow-steps/--width/--bins)")
    ap.add_argument("--samples", default=None, help="PNG montage of prior samples (default docs/flow_samples_<b>bit.png "
                                                    "with --export)")
    a = ap.parse_args()
    train, val = flow_training_images(a.bits, a.brainweb, FLOW_SIZE, a.seed, a.augment)
    print(f"{len(train)} training and {len(val)} validation images of {FLOW_SIZE}, {a.bits}-bit")
    cfg = FlowConfig(levels=a.levels, steps=a.flow_steps, width=a.width, bins=a.bins)
    out = Path(a.out) / f"{a.bits}bit"
    tc = FlowTrainConfig(bits=a.bits, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, threads=a.threads)
    init, origin = None, None
    if a.init_from:
        from MRISynthLib import catalog
        from MRISynthLib.tasks.recon import load_flow
        from MRISynthLib.training.common import run_origin

        source = catalog.get_card(a.init_from)
        if source.task != "recon-flow":
            raise SystemExit(f"{a.init_from} is not a flow prior (task {source.task!r})")
        if int(source.training.get("bits", a.bits)) != a.bits:
            raise SystemExit(f"{a.init_from} was trained on {source.training['bits']}-bit images, not {a.bits}-bit")
        source_flow, _ = load_flow(a.init_from, "cpu")
        cfg, init = source_flow.cfg, source_flow.state_dict()
        origin = run_origin(out / "flow_ckpt.pt", source)
    flow = train_flow(cfg, train, out, tc, val=val, init_state=init)
    bpd = validate_bpd(flow, val, a.bits)
    n_params = sum(p.numel() for p in flow.parameters())
    print(f"validation NLL: {bpd:.3f} bits/dim ({n_params / 1e6:.2f} M parameters); checkpoints and loss log in {out}")
    samples = a.samples or (f"docs/flow_samples_{a.bits}bit.png" if a.export else None)
    if samples:
        from MRISynthLib.viz import montage
        s = flow.sample(8, FLOW_SIZE, temperature=0.7, generator=torch.Generator().manual_seed(0))[:, 0].numpy()
        montage([list(val[:4]) + list(s[:4]), [None] * 4 + list(s[4:])], samples,
                row_titles=["", ""], col_titles=["validation"] * 4 + ["prior sample T=0.7"] * 4,
                cmaps=["gray"] * 8, robust=False)
        print(f"samples: {samples}")
    if a.export:
        from MRISynthLib import catalog

        card = catalog.ship(
            a.export, "recon-flow", cfg.to_dict(), flow.state_dict(),
            citation="Neural spline flows (Durkan et al. 2019) in a multi-scale Glow layout (Kingma & Dhariwal 2018); "
                     "flow-prior reconstruction as in seed 004; SIAT complex head slices and BrainWeb",
            training={"data": "SIAT slices 0-149 magnitude"
                              + (f" (+ {a.augment} random affine copies each)" if a.augment else "")
                              + f" + {a.brainweb} BrainWeb spin-echo slices, "
                              f"{FLOW_SIZE[0]}x{FLOW_SIZE[1]}, {a.bits}-bit", "bits": a.bits, "size": list(FLOW_SIZE),
                      "steps": a.steps, "batch": a.batch, "augment": a.augment, "lr": a.lr, "seed": a.seed,
                      "device": "cpu",
                      "val_bits_per_dim": round(bpd, 4),
                      **({"continued_from": origin} if origin else {})},
            description=f"Normalizing-flow image prior ({cfg.levels} levels x {cfg.steps} RQS coupling steps, "
                        f"{cfg.bins} bins) for {a.bits}-bit {FLOW_SIZE[0]}x{FLOW_SIZE[1]} magnitudes")
        print(f"shipped {card.weights} (sha256 {card.sha256[:12]}...)")


if __name__ == "__main__":
    main()
