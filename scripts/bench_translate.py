#!/usr/bin/env python
"""Benchmark of the T1w <-> T2w CycleGAN on paired held-out slices.

    python scripts/bench_translate.py [--model ID | --ckpt runs/cyclegan/cyclegan_ckpt.pt] [--update-catalog]
    python scripts/bench_translate.py --protocol wide       # the test pairs at the wide TE/TR ranges
    python scripts/bench_translate.py --ckpt CKPT --slices validation   # to choose among checkpoints

Test pairs (MRISynthLib.training.cyclegan.test_pairs): the paper-protocol held-out slices
of BrainWeb (trained anatomy; the slices and their neighbours were never trained on) and
of MNI152 (cross-anatomy: never seen in training), each rendered as T1w and T2w spin echo
with two tissue tables at three TE/TR settings (the quartiles and middle of the ranges of
a protocol of MRISynthLib.training.cyclegan.PROTOCOLS; by default the one the model was
trained on); inputs with Rician noise (SNR 60),
references noise-free. Every image is put on the 0-255 scale of the model's convention
(its 99.5th percentile -> 255) and PSNR, SSIM (7x7 window) and MAE are computed over the
whole 256 x 256 slice (and PSNR also inside the brain: CSF + grey + white matter
fraction > 0.5), for:

* the CycleGAN generator of each direction,
* identity (the input itself),
* the CycleGAN on the middle TE/TR setting only (10 pairs, the least ambiguous target),
* an oracle that knows the anatomy and tissues but not the target TE/TR: the noise-free
  truth at the middle setting, scored against the two other settings (the T2w echo time is
  not visible in a T1w input, so this bounds what an unconditioned translator can score),
* intensity inversion with histogram matching (MRISynthLib.training.cyclegan.inversion_match):
  the input's head (above 5 % of its scale) inverted and matched to the intensity
  histogram of 40 unpaired training-domain images of the target contrast, background 0,
* the product's other route, physics-informed synthesis (``synth``): the shipped
  compartment model (MRISynthLib.tasks.synth) estimates the maps from the input with its
  true TE/TR, which a translator is not told (a user has it from the scan's header), and
  renders the target contrast at the middle setting, like the CycleGAN's output; that
  model was trained on other slices of both BrainWeb and MNI152, so for it MNI152 is not
  an unseen anatomy.

It prints the table, the CycleGAN's PSNR per tissue table of the pairs, the mean level
(0-255) of the CycleGAN's translations and of the truth in each tissue (the tissue of
largest fraction) on the trained anatomy, per tissue table: where the translations go
wrong; the fat and skull levels of MRiLab+fat T1w inputs, of their translations, of
those translated back (also with the translation's fat pixels overwritten by its skull
level) and of the true T2w images translated: whether the way back recovers fat that the
translation does not show, and whether from the fat pixels or from the anatomy around
them; the result against the targets (T1->T2 >= 30 dB and SSIM >= 0.92 on the trained anatomy), the CPU time to
translate a 180-slice 256 x 256 volume, and writes the montage docs/translate_montage.png
(input, translated, ground truth, |difference| for both directions on one BrainWeb and
one MNI152 slice).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib import catalog  # noqa: E402
from MRISynthLib.metrics import mae, psnr, ssim  # noqa: E402
from MRISynthLib.models.cyclegan import CycleGAN, CycleGANConfig, intensity_scale, to_model_range  # noqa: E402
from MRISynthLib.physics.tissues import LABEL_NAMES  # noqa: E402
from MRISynthLib.tasks.synth import estimate_maps  # noqa: E402
from MRISynthLib.tasks.translate import load_model, translate  # noqa: E402
from MRISynthLib.training.cyclegan import PROTOCOLS, inversion_match, load_domains, random_image  # noqa: E402
from MRISynthLib.training.cyclegan import test_pairs, test_seq  # noqa: E402
from MRISynthLib.viz import montage  # noqa: E402

TARGET_PSNR, TARGET_SSIM = 30.0, 0.92
TABLES = ("mrilab", "mrilab_full")    # the tissue tables of the test pairs (test_pairs' default)
PAIRS = {"t1_to_t2": ("t1_in", "t2"), "t2_to_t1": ("t2_in", "t1")}
LEVEL_TISSUES = (1, 2, 3, 4, 5, 7)   # CSF, grey and white matter, fat, muscle/skin, skull
SYNTH = "physics synthesis (input TE/TR given)"


def u8(img):
    """An image on the 0-255 scale of the model's convention."""
    s = intensity_scale(img)
    return (to_model_range(img, s) + 1.0) * 127.5


def evaluate(preds, refs, masks):
    p = [psnr(a, b) for a, b in zip(preds, refs)]
    pb = [psnr(a[m], b[m]) for a, b, m in zip(preds, refs, masks)]
    s = [ssim(a, b, data_range=255.0) for a, b in zip(preds, refs)]
    m = [mae(a, b) for a, b in zip(preds, refs)]
    return {"psnr": float(np.mean(p)), "psnr_std": float(np.std(p)), "ssim": float(np.mean(s)),
            "ssim_std": float(np.std(s)), "mae": float(np.mean(m)), "psnr_brain": float(np.mean(pb)), "n": len(p)}


def synthesized(images, qs, src, dst, protocol):
    """The ``synth`` route: maps estimated from each input at its own TE/TR (the inputs of
    one quantile share an acquisition and are estimated as one volume), the target contrast
    rendered at the middle setting."""
    out = np.zeros_like(images)
    for q in np.unique(qs):
        idx = np.flatnonzero(qs == q)
        est = estimate_maps(images[idx], test_seq(src, float(q), protocol), use_cache=False)
        out[idx] = est.render(test_seq(dst, 0.5, protocol))
    return out


def tissue_levels(preds, refs, labels):
    """{tissue: (mean prediction, mean truth)} over the pixels where it is the largest fraction."""
    p, r, lab = np.stack(preds), np.stack(refs), np.asarray(labels)
    return {t: (float(p[lab == t].mean()), float(r[lab == t].mean())) for t in LEVEL_TISSUES if (lab == t).any()}


def cycle_levels(tp, net, table="mrilab_full"):
    """Fat and skull levels (0-255) of the MRiLab+fat T1w inputs, of their T2w translations,
    of those translated back (as they are, and with the translation's fat pixels set to its
    mean skull level), and of the true T2w images translated to T1w: whether the way back
    recovers what the translation does not show, and from where."""
    idx = np.flatnonzero(tp["table"] == table)
    lab = tp["label"][idx]
    fwd = translate(tp["t1_in"][idx], "t1_to_t2", model=net, device="cpu")
    masked = np.stack([np.where(lb == 4, im[lb == 7].mean(), im) for im, lb in zip(fwd, lab)])
    imgs = {"input": tp["t1_in"][idx], "translation": fwd,
            "translated back": translate(fwd, "t2_to_t1", model=net, device="cpu"),
            "translated back with the translation's fat set to its skull level":
                translate(masked, "t2_to_t1", model=net, device="cpu"),
            "true T2w translated": translate(tp["t2"][idx], "t2_to_t1", model=net, device="cpu"),
            "true T1w": tp["t1"][idx]}
    return {k: {t: float(np.stack([u8(im) for im in v])[lab == t].mean()) for t in (4, 7)} for k, v in imgs.items()}


def load_generators(a):
    """(generators, name, the TE/TR protocol they were trained on; models from before
    protocols were named were trained on 'wide')."""
    if a.ckpt:
        st = torch.load(a.ckpt, weights_only=False, map_location="cpu")
        net = CycleGAN(CycleGANConfig(**st["config"]))
        net.load_state_dict(st["model"])
        return net.eval(), f"checkpoint {a.ckpt} (step {st['step']})", st["train_config"].get("protocol", "wide")
    net, card = load_model(a.model, "cpu")
    return net, card.id, card.training.get("protocol", "wide")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="catalog id (default: the shipped translation model)")
    ap.add_argument("--ckpt", default=None, help="evaluate a training checkpoint instead")
    ap.add_argument("--montage", default="docs/translate_montage.png")
    ap.add_argument("--update-catalog", action="store_true", help="store the metrics and timing in the model card")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                    help="TE/TR ranges of the test pairs (default: the model's training protocol)")
    ap.add_argument("--slices", choices=["test", "validation"], default="test",
                    help="validation: the slices above the test slices (held out of training), to choose checkpoints")
    a = ap.parse_args()
    if a.update_catalog and a.slices != "test":
        ap.error("--update-catalog stores test-slice results only")
    if a.threads:
        torch.set_num_threads(a.threads)
    net, name, trained_on = load_generators(a)
    protocol = a.protocol or trained_on
    print(f"model: {name} (trained on the {trained_on!r} TE/TR protocol); test pairs: {protocol!r} protocol "
          + ", ".join(f"{c.upper()}w TE {te[0] * 1e3:g}-{te[1] * 1e3:g} ms TR {tr[0]:g}-{tr[1]:g} s"
                      for c, (te, tr) in PROTOCOLS[protocol].items()))
    # reference histograms for the inversion baseline: unpaired training-domain images
    fa, fb = load_domains(("brainweb",))
    rng = np.random.default_rng(7)
    ref = {}
    for contrast, fr in (("t1", fa), ("t2", fb)):
        vals = []
        for i in rng.integers(len(fr), size=40):
            im = (random_image(fr[i], contrast, rng, protocol=protocol) + 1.0) / 2.0
            vals.append(im[im > 0.05])
        ref[contrast] = np.concatenate(vals)

    results, shown, by_table, levels = {}, {}, {}, {}
    for anatomy in ("brainweb", "mni152"):
        tp = test_pairs(anatomy, protocol=protocol, slices=a.slices, tables=TABLES)
        if anatomy == "brainweb":
            timing_slice = tp["t1_in"][len(tp["t1_in"]) // 2]
            cycle = cycle_levels(tp, net)
        for direction, (src, dst) in PAIRS.items():
            x = [u8(im) for im in tp[src]]
            y = [u8(im) for im in tp[dst]]
            pred = translate(tp[src], direction, model=net, device="cpu")
            pred = [u8(im) for im in pred]
            results[(anatomy, direction, "CycleGAN")] = evaluate(pred, y, tp["brain"])
            results[(anatomy, direction, "identity")] = evaluate(x, y, tp["brain"])
            inv = [inversion_match(im / 255.0, ref[dst[:2]]) * 255.0 for im in x]
            results[(anatomy, direction, "inversion + histogram matching")] = evaluate(inv, y, tp["brain"])
            syn = synthesized(tp[src], tp["q"], src[:2], dst, protocol)
            results[(anatomy, direction, SYNTH)] = evaluate([u8(im) for im in syn], y, tp["brain"])
            # the target TE/TR cannot be read from the input: the truth at the middle setting
            # (same slice and table) scored against every setting shows the ceiling this sets
            n_q = 3
            others = [i for i in range(len(y)) if i % n_q != n_q // 2]
            middle = [i for i in range(len(y)) if i % n_q == n_q // 2]
            results[(anatomy, direction, "CycleGAN, middle TE/TR only")] = evaluate(
                [pred[i] for i in middle], [y[i] for i in middle], tp["brain"][middle])
            results[(anatomy, direction, "oracle: truth at the middle TE/TR")] = evaluate(
                [y[i - i % n_q + n_q // 2] for i in others], [y[i] for i in others], tp["brain"][others])
            for table in TABLES:
                idx = np.flatnonzero(tp["table"] == table)
                by_table[(anatomy, direction, table)] = evaluate([pred[i] for i in idx], [y[i] for i in idx],
                                                                 tp["brain"][idx])["psnr"]
                if anatomy == "brainweb":
                    levels[(direction, table)] = tissue_levels([pred[i] for i in idx], [y[i] for i in idx],
                                                               tp["label"][idx])
            k = len(x) // 2
            shown[(anatomy, direction)] = (x[k], pred[k], y[k], np.abs(pred[k] - y[k]))

    print(f"\n{'anatomy':10s} {'direction':9s} {'method':38s} {'PSNR dB':>14s} {'SSIM':>13s} {'MAE':>6s} "
          f"{'brain PSNR':>10s}  n")
    for (anatomy, direction, method), r in results.items():
        print(f"{anatomy:10s} {direction:9s} {method:38s} {r['psnr']:6.2f} +/- {r['psnr_std']:4.2f} "
              f"{r['ssim']:.3f} +/- {r['ssim_std']:.3f} {r['mae']:6.2f} {r['psnr_brain']:10.2f}  {r['n']}")
    print("\nCycleGAN PSNR dB by the tissue table of the pair: "
          + "; ".join(f"{anat} {d.replace('_to_', '->').upper()} "
                      + ", ".join(f"{t} {by_table[(anat, d, t)]:.2f}" for t in TABLES)
                      for anat in ("brainweb", "mni152") for d in PAIRS))
    print("\nmean level (0-255) in each tissue on BrainWeb, CycleGAN / truth:")
    for (direction, table), lv in levels.items():
        print(f"  {direction.replace('_to_', '->').upper()} {table:12s} "
              + ", ".join(f"{LABEL_NAMES[t]} {p:.0f} / {r:.0f}" for t, (p, r) in lv.items()))
    print("cycle on BrainWeb MRiLab+fat T1w inputs, fat / skull level: "
          + "; ".join(f"{k} {v[4]:.0f} / {v[7]:.0f}" for k, v in cycle.items()))
    main_r = results[("brainweb", "t1_to_t2", "CycleGAN")]
    ok = main_r["psnr"] >= TARGET_PSNR and main_r["ssim"] >= TARGET_SSIM
    print(f"\ntarget T1->T2 on held-out BrainWeb pairs: >= {TARGET_PSNR:g} dB and SSIM >= {TARGET_SSIM}: "
          f"{main_r['psnr']:.2f} dB, SSIM {main_r['ssim']:.3f} -> {'MET' if ok else 'NOT MET'}")

    vol = np.stack([timing_slice] * 180)
    translate(vol[:8], "t1_to_t2", model=net, device="cpu")   # warm-up
    t0 = time.perf_counter()
    translate(vol, "t1_to_t2", model=net, device="cpu")
    t_vol = time.perf_counter() - t0
    print(f"CPU time to translate a 256x256x180 volume ({torch.get_num_threads()} threads): {t_vol:.1f} s "
          f"({t_vol / 180 * 1e3:.0f} ms/slice)")

    rows, titles = [], []
    for (anatomy, direction), imgs in shown.items():
        rows.append(list(imgs))
        titles.append(f"{anatomy} {direction.replace('_to_', '->').upper()}")
    montage(rows, a.montage, row_titles=titles, col_titles=["input", "translated", "ground truth", "|difference|"],
            cmaps=["gray", "gray", "gray", "magma"], robust=False,
            title="CycleGAN T1w <-> T2w on held-out slices (MNI152: never seen in training)")
    print(f"montage: {a.montage}")

    if a.update_catalog:
        if a.ckpt:
            raise SystemExit("--update-catalog needs a catalog model, not a checkpoint")
        cards = catalog.load_catalog()
        card = cards[name]
        card.metrics = {d: {anat: {"cyclegan": results[(anat, d, "CycleGAN")],
                                   "identity": results[(anat, d, "identity")],
                                   "inversion_histmatch": results[(anat, d, "inversion + histogram matching")],
                                   "synth_input_te_tr_given": results[(anat, d, SYNTH)]}
                            for anat in ("brainweb", "mni152")} for d in PAIRS}
        card.metrics["protocol"] = (f"held-out paired slices at the {protocol!r} TE/TR protocol, SNR-60 inputs vs "
                                    "noise-free references, 0-255 scale of the 99.5th percentile; mni152 never seen "
                                    "in the CycleGAN's training (the synth model's training had other mni152 slices)")
        card.timing = {"cpu_volume_256x256x180_s": round(t_vol, 2), "threads": torch.get_num_threads()}
        catalog.save_catalog(cards)
        print("catalog updated")


if __name__ == "__main__":
    main()
