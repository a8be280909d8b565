#!/usr/bin/env python
"""Train the T1w <-> T2w CycleGAN on unpaired simulated slices.

    python scripts/train_cyclegan.py --protocol wide --steps 5500 --warm-steps 600 --lam-id 0 --frame-every 250
    python scripts/train_cyclegan.py --protocol wide --steps 9000 --warm-steps 600 --lam-id 0 --frame-every 500 \
        --gif-out docs/translate_progress.gif
    python scripts/train_cyclegan.py --out runs/cyclegan_std --init-from runs/cyclegan/cyclegan_ckpt.pt \
        --protocol standard --steps 16000 --warm-steps 600 --lam-id 0 --keep-every 1000
    python scripts/train_cyclegan.py --out runs/cyclegan_std --protocol standard --steps 16000 --warm-steps 600 \
        --lam-id 0 --export translate-cyclegan-cpu --export-from runs/cyclegan_std/snap_15000.pt
    python scripts/train_cyclegan.py --out runs/cyclegan_clean --init-generators translate-cyclegan-cpu --ndf 32 \
        --clean-targets --steps 9000 --lam-id 0 --keep-every 1000
    python scripts/train_cyclegan.py --out runs/cyclegan_clean2 --init-from runs/cyclegan_clean/snap_9000.pt \
        --ndf 32 --clean-targets --steps 13000 --lr 1e-4 --lam-id 0 --keep-every 1000 \
        --export translate-cyclegan-cpu --export-from runs/cyclegan_clean2/snap_12000.pt
    python scripts/train_cyclegan.py --out runs/cyclegan_struct --init-generators translate-cyclegan-cpu --ndf 32 \
        --clean-targets --lam-struct 5 --steps 6000 --lr 1e-4 --lam-id 0 --keep-every 1000 --seed 5
    python scripts/train_cyclegan.py --out runs/cyclegan_struct2 --init-from runs/cyclegan_struct/snap_6000.pt \
        --ndf 32 --clean-targets --lam-struct 5 --steps 10000 --lr 1e-4 --lam-id 0 --keep-every 1000 --seed 6
    python scripts/train_cyclegan.py --out runs/cyclegan_struct3 --init-from runs/cyclegan_struct2/snap_10000.pt \
        --ndf 32 --clean-targets --lam-struct 5 --steps 13000 --lr 5e-5 --lam-id 0 --keep-every 1000 --seed 7
    python scripts/train_cyclegan.py --out runs/cyclegan_struct2 --init-from runs/cyclegan_struct/snap_6000.pt \
        --ndf 32 --clean-targets --lam-struct 5 --steps 10000 --lr 1e-4 --lam-id 0 --keep-every 1000 --seed 6 \
        --export translate-cyclegan-cpu --export-from runs/cyclegan_struct2/snap_10000.pt

(the shipped model's commands: 600 warm-start steps, no identity loss, 5,500 steps on the
wide TE/TR protocol resumed to 9,000, which resumes the linear decay at 78 % of the
learning rate, then continued on the standard protocol with the decay of a 16,000-step
schedule; the step-15,000 snapshot, best on the validation slices, was shipped; then its
generators were trained 9,000 more steps with noise-free targets (--clean-targets) against
new ndf-32 discriminators, resumed to 13,000 at lr 1e-4, and the step-12,000 snapshot,
best on validation, was shipped; then those generators were trained with the MIND
structure-consistency loss (--lam-struct 5) against new ndf-32 discriminators, 6,000 steps
resumed to 10,000, then to 13,000 at lr 5e-5, and the step-10,000 snapshot, best on
validation, is shipped. With the
seed's identity weight 0.5 the warm-started generators fell back to copying their input
within 400 steps, and without the warm start they never left it in 2,000 steps on 2 CPU
cores)

Data and schedule: see MRISynthLib.training.cyclegan (BrainWeb by default; the MNI152
anatomy is then never seen and serves as the cross-anatomy test). Re-running resumes from
the checkpoint in --out; --export writes both generators as fp16 safetensors and the
catalog entry. progress.gif in --out shows the test predictions every --frame-every steps.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.models.cyclegan import WIDTHS, CycleGANConfig  # noqa: E402
from MRISynthLib.training.cyclegan import PROTOCOLS, CycleTrainConfig, train_cyclegan, write_gif  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/cyclegan")
    ap.add_argument("--width", choices=sorted(WIDTHS), default="cpu")
    ap.add_argument("--gan-mode", choices=["lsgan", "bce"], default="lsgan")
    ap.add_argument("--size", type=int, default=256, help="image size (a power of two; the paper's is 256)")
    ap.add_argument("--lam-id", type=float, default=0.5, help="identity loss weight, a fraction of lambda (10)")
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--warm-steps", type=int, default=0, help="unpaired warm-start steps (inversion matching)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--anatomies", default="brainweb", help="comma-separated: brainweb,mni152")
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="standard",
                    help="TE/TR ranges of the T1w and T2w domains (see MRISynthLib.training.cyclegan)")
    ap.add_argument("--init-from", default=None, metavar="CKPT",
                    help="continue from another run's checkpoint when --out has none (e.g. another protocol)")
    ap.add_argument("--init-generators", default=None, metavar="MODEL_ID",
                    help="start both generators from a shipped model (fresh discriminators) when --out has "
                         "no checkpoint")
    ap.add_argument("--clean-targets", action="store_true",
                    help="discriminators' real images and cycle targets noise-free (generator inputs noisy)")
    ap.add_argument("--lam-struct", type=float, default=0.0,
                    help="weight of the MIND structure-consistency loss between each input and its translation")
    ap.add_argument("--cycle-noise", type=float, default=0.0,
                    help="noise sigma (images in [-1, 1]) added to each translation before it is translated back "
                         "for the cycle loss: the cycle must go through what the translation visibly shows")
    ap.add_argument("--ndf", type=int, default=None, help="discriminator width (default: the --width's)")
    ap.add_argument("--frame-every", type=int, default=500)
    ap.add_argument("--keep-every", type=int, default=0, metavar="N",
                    help="also keep a copy of the checkpoint every N steps (snap_<step>.pt in --out)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gif-out", default=None, help="also write a half-size copy of progress.gif here")
    ap.add_argument("--export", default=None, metavar="MODEL_ID",
                    help="after training, ship the generators under this catalog id")
    ap.add_argument("--export-from", default=None, metavar="CKPT",
                    help="ship this checkpoint of the run (e.g. a snapshot chosen on the validation slices) "
                         "instead of its last one")
    a = ap.parse_args()
    cfg = CycleGANConfig(size=a.size, gan_mode=a.gan_mode,
                         **{**WIDTHS[a.width], **({"ndf": a.ndf} if a.ndf else {})})
    tc = CycleTrainConfig(steps=a.steps, lr=a.lr, lam_id=a.lam_id, warm_steps=a.warm_steps,
                          load_size=round(a.size * 286 / 256), anatomies=tuple(a.anatomies.split(",")),
                          frame_every=a.frame_every, threads=a.threads, seed=a.seed, protocol=a.protocol,
                          keep_every=a.keep_every, clean_targets=a.clean_targets,
                          lam_struct=a.lam_struct, cycle_noise=a.cycle_noise)
    init_g, origin = None, None
    if a.init_generators and not (Path(a.out) / "cyclegan_ckpt.pt").exists():
        from MRISynthLib.tasks.translate import load_model

        gen, card = load_model(a.init_generators, "cpu")
        if gen.cfg.ngf != cfg.ngf or gen.cfg.size != cfg.size:
            ap.error(f"{a.init_generators} has ngf {gen.cfg.ngf}, size {gen.cfg.size}; this run: "
                     f"ngf {cfg.ngf}, size {cfg.size}")
        init_g = {k: v.float() for k, v in gen.state_dict().items()}
        origin = {"model": card.id, "sha256": card.sha256, "steps": card.training.get("steps"),
                  "protocol": card.training.get("protocol", "wide"),
                  "note": "generators only; discriminators trained from scratch"}
    net = train_cyclegan(cfg, a.out, tc, init_from=a.init_from, init_generators=init_g, origin=origin)
    if a.gif_out:
        write_gif(Path(a.out) / "frames", Path(a.gif_out), scale=0.5)
        print(f"wrote {a.gif_out}")
    if a.export:
        from MRISynthLib.tasks.translate import export_model

        import dataclasses

        import torch

        extra = {}
        st = torch.load(a.export_from or Path(a.out) / "cyclegan_ckpt.pt", weights_only=False, map_location="cpu")
        if st.get("origin"):   # what the run started from (see train_cyclegan)
            extra["continued_from"] = st["origin"]
        if a.export_from:
            net.load_state_dict(st["model"])
            extra["schedule_steps"] = tc.steps
            extra["exported_checkpoint"] = Path(a.export_from).name
            tc = dataclasses.replace(tc, steps=int(st["step"]))
        card = export_model(net.eval(), a.export, tc, **extra)
        print(f"shipped {card.weights} (sha256 {card.sha256[:12]}...)")
    print(f"checkpoint, loss log and progress.gif in {a.out}")


if __name__ == "__main__":
    main()
