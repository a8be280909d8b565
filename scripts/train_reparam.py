#!/usr/bin/env python
"""Train the re-parameterization models from scratch (both phases) and ship the weights.

    python scripts/train_reparam.py --out runs/reparam            # D2P and P2P, CPU widths
    python scripts/train_reparam.py --widths paper --steps 20000   # the paper's widths (GPU)
    python scripts/train_reparam.py --data runs/paper_ext.h5 --extra-slices 45 --continue-shipped \\
        --modes d2p --steps 5000 --lr 3e-4 --low-res-fraction 0 --out runs/reparam_ext --ship

Makes the paper-protocol data set if it is missing, pre-trains the END autoencoder,
trains Param-Net for each mode, and (with --ship) writes fp16 safetensors into
MRISynthLib/Resources/models with catalog entries (metrics are filled in by
scripts/bench_reparam.py --update-catalog). Re-running resumes from the checkpoints.

``--extra-slices N`` makes the data file (when missing) with N more training-only BrainWeb
slices (away from the held-out ones; the paper's slices, pairs and test set are
unchanged). ``--continue-shipped`` starts each mode from the shipped model (its frozen
autoencoder and its Param-Net) instead of training from scratch; the catalog card then
records what it continued from. ``--continuous-pairs`` trains on fresh (TE, TR) values
in every batch instead of the file's 160 training pairs (see ContinuousPairs);
``--oversample LABEL:FACTOR`` then draws the slices holding a tissue more often.
``--loss log-mse`` trains on each image's log MSE (the benchmark's mean per-image PSNR).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib import catalog  # noqa: E402
from MRISynthLib.data.simulate import ProtocolConfig, make_paper_dataset  # noqa: E402
from MRISynthLib.models.paramnet import ReparamConfig, WIDTHS, widen_paramnet_state  # noqa: E402
from MRISynthLib.training.common import run_origin  # noqa: E402
from MRISynthLib.training.reparam import (PARAMNET_LOSSES, ContinuousPairs, PaperData, TrainConfig, autoencoder_pool,  # noqa: E402
                                          paramnet_checkpoint, train_autoencoder, train_paramnet)

CITATION = ("Narang, Raj, Pop, Ebrahimi, 'Deep Learning-Based MR Image Re-parameterization', BIOENG 2022; "
            "BrainWeb (Cocosco et al. 1997) via MRiLab (Liu et al. 2017)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/paper.h5", help="paper-protocol HDF5 (made if missing)")
    ap.add_argument("--out", default="runs/reparam")
    ap.add_argument("--widths", default="cpu", choices=sorted(WIDTHS))
    ap.add_argument("--decoder-widths", default=None, choices=sorted(WIDTHS),
                    help="Param-Net widths (default: --widths); with --continue-shipped, wider than the shipped "
                         "model's widens it (same function at the start, see widen_paramnet_state)")
    ap.add_argument("--modes", default="d2p,p2p")
    ap.add_argument("--ae-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--low-res-fraction", type=float, default=0.8,
                    help="fraction of the steps trained at 128x128 before 256x256")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-slices", type=int, default=0,
                    help="training-only slices added when the data file is made")
    ap.add_argument("--continue-shipped", action="store_true",
                    help="start from the shipped models instead of from scratch")
    ap.add_argument("--affine", action="store_true",
                    help="random rotation/scale/shift of the training pairs (same warp for input and target)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: Param-Net trained under bfloat16 autocast (faster on CPUs with AMX)")
    ap.add_argument("--continuous-pairs", action="store_true",
                    help="train on fresh continuous (TE, TR) values rendered on the fly (away from the held-out "
                         "pairs) instead of the file's training pairs")
    ap.add_argument("--oversample", default=None, metavar="LABEL:FACTOR",
                    help="with --continuous-pairs: draw the training slices that contain this tissue label "
                         "FACTOR times as often (e.g. 8:3 for glial matter)")
    ap.add_argument("--loss", default="mse", choices=PARAMNET_LOSSES,
                    help="Param-Net loss: the paper's MSE, or each image's log MSE averaged over the batch "
                         "(the benchmark's mean per-image PSNR; see paramnet_loss)")
    ap.add_argument("--ship", action="store_true", help="export weights + catalog entries into the package")
    a = ap.parse_args()

    if not Path(a.data).exists():
        make_paper_dataset(a.data, ProtocolConfig(seed=0, extra_train_slices=a.extra_slices))
    data = PaperData(a.data)
    if a.oversample and not a.continuous_pairs:
        raise SystemExit("--oversample needs --continuous-pairs")
    oversample = None
    if a.oversample:
        try:
            label, factor = a.oversample.split(":")
            oversample = (int(label), float(factor))
        except ValueError:
            raise SystemExit(f"--oversample wants LABEL:FACTOR, such as 8:3, got {a.oversample!r}")
    train_data = ContinuousPairs(data, a.data, oversample=oversample) if a.continuous_pairs else data
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg0 = ReparamConfig("d2p", widths=a.widths)
    ae_file = out / "autoencoder.pt"
    t0 = time.time()
    if a.continue_shipped:
        ae_state = None  # each mode's own shipped autoencoder, below
    elif ae_file.exists():
        ae_state = torch.load(ae_file)
    else:
        pool = autoencoder_pool(data, seed=a.seed)
        ae = train_autoencoder(cfg0, pool, out, TrainConfig(steps=a.ae_steps, batch=a.batch, lr=a.lr, seed=a.seed,
                                                             threads=a.threads))
        ae_state = ae.state_dict()
        torch.save(ae_state, ae_file)
    ae_ckpt = out / "autoencoder_ckpt.pt"
    ae_steps = int(torch.load(ae_ckpt, weights_only=False)["step"]) if ae_ckpt.exists() else a.ae_steps
    if ae_state is not None:
        print(f"autoencoder ready ({ae_steps} steps, {time.time() - t0:.0f} s)")
    for mode in a.modes.split(","):
        cfg = ReparamConfig(mode, widths=a.widths, decoder_widths=a.decoder_widths)
        mid = f"reparam-{mode}-{a.widths}"
        init, origin, widened = None, None, None
        if a.continue_shipped:
            source = catalog.get_card(mid)
            shipped = ReparamConfig(**source.architecture)
            sd = catalog.load_state_dict(source)
            ae_state = {k.split(".", 1)[1]: v.float() for k, v in sd.items() if k.startswith("autoencoder.")}
            init = {k.split(".", 1)[1]: v.float() for k, v in sd.items() if k.startswith("paramnet.")}
            if a.decoder_widths is None:
                cfg = shipped
            elif shipped.to_dict() != cfg.to_dict():
                try:
                    init = widen_paramnet_state(init, shipped, cfg, seed=a.seed)
                except ValueError as e:
                    raise SystemExit(f"cannot continue the shipped {mid} at these widths: {e}")
                print(f"{mode}: widened the shipped Param-Net from {shipped.decoder_widths} to {cfg.decoder_widths}")
                widened = shipped.decoder_widths
            ae_steps = source.training.get("ae_steps")
            origin = run_origin(paramnet_checkpoint(out, mode), source)
        t1 = time.time()
        model = train_paramnet(cfg, train_data, ae_state, out, TrainConfig(steps=a.steps, batch=a.batch, lr=a.lr,
                                                                     seed=a.seed, threads=a.threads,
                                                                     low_res_fraction=a.low_res_fraction,
                                                                     affine=a.affine, precision=a.precision,
                                                                     loss=a.loss),
                               paramnet_init=init)
        print(f"{mode}: trained {a.steps} steps in {time.time() - t1:.0f} s")
        if a.ship:
            # metrics and timing are kept until bench_reparam.py --update-catalog measures them
            card = catalog.ship(
                mid, "reparam", cfg.to_dict(), model.state_dict(), citation=CITATION,
                description=("Default-to-Param: input at TE 50 ms / TR 4.5 s" if mode == "d2p"
                             else "Param-to-Param: input at any TE/TR") + f", {a.widths} widths"
                            + ("" if cfg.decoder_widths == cfg.widths
                               else f", Param-Net widths {'-'.join(map(str, cfg.decoder_widths))}"),
                training={"data": "paper protocol on BrainWeb (MRiLab table, 2 mm grid -> 256x256, 8-bit), "
                                  f"{len(data.te)} (TE,TR) pairs x {len(data.slice_z)} slices; "
                                  + (f"{len(data.train_slices)} train slices rendered on the fly at continuous "
                                     "(TE, TR) drawn like the file's pairs, none within "
                                     f"{train_data.exclude_te:.0%} in TE and {train_data.exclude_tr:g} s in TR of a "
                                     "held-out pair" if a.continuous_pairs
                                     else f"{len(data.train_pairs)} train pairs x {len(data.train_slices)} "
                                          "train slices")
                                  + ("; the slices beyond the paper's 24 are training-only, away from the "
                                     "held-out ones" if len(data.slice_z) > 24 else ""),
                          "autoencoder_pretraining": "BrainWeb spin-echo images with randomised tissues + 150 "
                                                     "SIAT magnitudes (Places-365 unavailable)",
                          "steps": a.steps, "ae_steps": ae_steps, "batch": a.batch, "lr": a.lr, "seed": a.seed,
                          "progressive": f"{a.low_res_fraction:.0%} of steps at 128x128, then 256x256",
                          "loss": "MSE" if a.loss == "mse" else "per-image log MSE", "optimizer": "Adam",
                          "augmentation": "left-right flips" + (", random rotation (+/-10 deg), scaling "
                                                                  "(0.9-1.1) and shift (+/-5 %)" if a.affine else ""),
                          "te_range_s": [0.02, 1.0], "tr_range_s": [1.2, 10.0], "device": "cpu",
                          **({"precision": "bf16 autocast (weights fp32)"} if a.precision == "bf16" else {}),
                          **({"oversampled_slices": f"training slices containing tissue label {oversample[0]} "
                                                    f"drawn {oversample[1]:g} times as often"} if oversample else {}),
                          **({"continued_from": origin} if origin else {}),
                          **({"widened_from_decoder_widths": widened} if widened else {})})
            print(f"shipped {card.weights} sha256={card.sha256}")


if __name__ == "__main__":
    main()
