#!/usr/bin/env python
"""Benchmark of TE/TR re-parameterization on the held-out paper-protocol test set.

    python scripts/bench_reparam.py [--data runs/paper.h5] [--update-catalog]

The test set is the paper-protocol file's held-out (TE, TR) pairs x held-out slices
(40 x 5 = 200 images with the default data set). Prints PSNR (0-255 scale) and MAE,
mean +/- standard deviation over the test images, for

* identity: the input copied as the prediction,
* analytic oracle: the target rendered from the phantom's effective (partial-volume
  averaged) PD/T1/T2 maps with the signal equation - the ceiling of any method that
  estimates maps, since mixed voxels are not single-tissue,
* Default-to-Param (input: the default TE 50 ms / TR 4.5 s image),
* Param-to-Param (input: the same slice at another held-out pair, fixed by the seed),
  each as the task function runs it by default (every slice averaged with its mirror
  image) and in one pass,

beside the paper's Table 1 and the targets; then both models on the same held-out pairs
but 5 training slices (how much of the error is unseen anatomy) and on the held-out slices at
40 training pairs (how much is unseen parameters, or easier pairs); then CPU (and CUDA, when present) speed per
256x256 slice and per 256x256x180 volume (both ways), and writes an example figure.

``--validation`` prints only the shipped models' PSNR on validation data instead: both
neighbours of each held-out slice (no network trained on them) at 20 of the file's
training pairs, D2P from the default image and P2P from the same slice at another of the
20 pairs - the data on which training choices (such as the Param-Net's width) are made -
and, for each tissue, the share of the pixels holding it and their share of the squared error.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib import catalog  # noqa: E402
from MRISynthLib.data.simulate import ProtocolConfig, make_paper_dataset, normalize_8bit, resize_slices  # noqa: E402
from MRISynthLib.device import cpu_name  # noqa: E402
from MRISynthLib.metrics import mae, psnr  # noqa: E402
from MRISynthLib.models.paramnet import encode_params  # noqa: E402
from MRISynthLib.physics.phantoms import brainweb_phantom, render_maps  # noqa: E402
from MRISynthLib.physics.signal import SequenceParams  # noqa: E402
from MRISynthLib.tasks.reparam import forward, load_model, reparameterize  # noqa: E402
from MRISynthLib.training.reparam import PaperData  # noqa: E402

PAPER = {"d2p": (30.34, 1.04, 5.25), "p2p": (24.80, 1.68, 9.51)}
TARGET = {"d2p": 36.0, "p2p": 33.0}


def to_u8(y):
    return np.clip(np.round((y + 1) * 127.5), 0, 255)


def predict(net, mode, x_u8, te, tr, in_te=None, in_tr=None, batch=8, flip_average=True):
    """8-bit predictions; ``flip_average`` as in the task function (its default)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x_u8), batch):
            x = PaperData.to_unit(x_u8[i:i + batch])
            p = encode_params(mode, te[i:i + batch], tr[i:i + batch],
                              None if in_te is None else in_te[i:i + batch],
                              None if in_tr is None else in_tr[i:i + batch])
            out.append(to_u8(forward(net, x, p, flip_average)[:, 0].numpy()))
    return np.concatenate(out)


def stats(preds, gts):
    p = np.array([psnr(a, b) for a, b in zip(preds, gts)])
    m = np.array([mae(a, b) for a, b in zip(preds, gts)])
    return {"psnr_mean": round(float(p.mean()), 2), "psnr_std": round(float(p.std()), 2),
            "mae_mean": round(float(m.mean()), 2), "mae_std": round(float(m.std()), 2), "n": len(p)}


def load_test_data(path) -> PaperData:
    """The paper-protocol file (generated with the default seed when missing)."""
    if not Path(path).exists():
        make_paper_dataset(path, ProtocolConfig(seed=0))
    return PaperData(path)


def test_split(d: PaperData, seed: int = 0, slices=None, pairs=None):
    """Every held-out (pair, slice) as flat index arrays, the 8-bit truths, and the P2P
    inputs' pairs: each test pair takes another held-out pair's image of the same slice.
    ``slices``: other slices than the held-out ones (same pairs and partners); ``pairs``:
    other pairs than the held-out ones (partners drawn among them)."""
    rng = np.random.default_rng(seed)
    P = d.test_pairs if pairs is None else np.asarray(pairs)
    S = d.test_slices if slices is None else np.asarray(slices)
    bb, ss = np.meshgrid(P, S, indexing="ij")
    bb, ss = bb.ravel(), ss.ravel()
    partner = {b: rng.choice(P[P != b]) for b in P}
    return bb, ss, d.targets[bb, ss].astype(np.float64), np.array([partner[b] for b in bb])


def validation_slices(d: PaperData) -> np.ndarray:
    """The validation slices' z: both neighbours of each held-out slice."""
    return np.concatenate([d.slice_z[d.test_slices] + 1, d.slice_z[d.test_slices] - 1])


def validation_cases(d: PaperData, mode: str, n_pairs: int = 20, seed: int = 5):
    """The validation images (see the module doc): inputs, their (TE, TR) (P2P), targets' pairs, targets."""
    from bench_synth import DEFAULT, render_truth
    from MRISynthLib.training.quantitative import slice_fractions

    vp = np.random.default_rng(seed).choice(d.train_pairs, n_pairs, replace=False)
    zs = validation_slices(d)
    seqs = [SequenceParams("se", float(t), float(r)) for t, r in zip(d.te[vp], d.tr[vp])]
    rng = np.random.default_rng(7)
    x, in_te, in_tr, pairs, gts = [], [], [], [], []
    for f in slice_fractions(brainweb_phantom(voxel_mm=2.0), zs, 256):
        imgs = [normalize_8bit(render_truth(f, "mrilab", sq))[0] for sq in seqs]
        default = normalize_8bit(render_truth(f, "mrilab", DEFAULT))[0]
        for j in range(n_pairs):
            k = j if mode == "d2p" else int(rng.choice(np.delete(np.arange(n_pairs), j)))
            x.append(default if mode == "d2p" else imgs[k])
            in_te.append(d.te[vp[k]])
            in_tr.append(d.tr[vp[k]])
            pairs.append(vp[j])
            gts.append(imgs[j])
    return np.stack(x), np.array(in_te), np.array(in_tr), np.array(pairs), np.stack(gts).astype(np.float64)


def validate(d: PaperData, n_pairs: int = 20):
    """The validation scores, and where the squared error lies: for each tissue, the share
    of the pixels that hold any of it (fraction > 1 %) and their share of the squared error."""
    from MRISynthLib.physics.tissues import LABEL_NAMES
    from MRISynthLib.training.quantitative import slice_fractions

    print(f"Validation: both neighbours of each held-out slice x {n_pairs} training pairs (flip-averaged)")
    holds = np.repeat(slice_fractions(brainweb_phantom(voxel_mm=2.0), validation_slices(d), 256) > 0.01, n_pairs, axis=0)
    for mode in ("d2p", "p2p"):
        net, card = load_model(mode, "cpu")
        x, in_te, in_tr, pairs, gts = validation_cases(d, mode, n_pairs)
        pr = predict(net, mode, x, d.te[pairs], d.tr[pairs], *((in_te, in_tr) if mode == "p2p" else ()))
        r = stats(pr, gts)
        print(f"  {card.id} (Param-Net widths {'-'.join(map(str, card.architecture['decoder_widths']))}): "
              f"{r['psnr_mean']:.2f} +/- {r['psnr_std']:.2f} dB, MAE {r['mae_mean']:.2f} ({r['n']} images)")
        se = (pr - gts) ** 2
        print("    pixels holding each tissue: share of the pixels / of the squared error: " + ", ".join(
            f"{LABEL_NAMES[k]} {holds[:, k].mean():.1%} / {se[holds[:, k]].sum() / se.sum():.1%}"
            for k in range(1, holds.shape[1]) if holds[:, k].any()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/paper.h5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", default="docs/reparam_examples.png")
    ap.add_argument("--update-catalog", action="store_true")
    ap.add_argument("--volume-slices", type=int, default=180)
    ap.add_argument("--validation", action="store_true", help="only the validation scores (see above)")
    a = ap.parse_args()
    torch.manual_seed(0)
    d = load_test_data(a.data)
    if a.validation:
        return validate(d)
    import h5py
    with h5py.File(a.data, "r") as f:
        cfg = json.loads(f.attrs["config"])
    P, S = d.test_pairs, d.test_slices
    bb, ss, gts, aa = test_split(d, a.seed)

    rows = {}
    rows["identity (D2P input)"] = stats(np.stack([d.default_image(b, s) for b, s in zip(bb, ss)]), gts)
    rows["identity (P2P input)"] = stats(d.targets[aa, ss], gts)
    # analytic oracle from the effective maps on the same grid and resize
    ph = brainweb_phantom(voxel_mm=cfg["voxel_mm"], table=cfg["table"])
    maps = ph.maps()
    zs = d.slice_z
    oracle = []
    for b, s in zip(bb, ss):
        seq = SequenceParams("se", float(d.te[b]), float(d.tr[b]), exact=cfg["exact"])
        img = render_maps({k: v[zs[s]] for k, v in maps.items()}, seq)
        oracle.append(normalize_8bit(resize_slices(img, cfg["size"]))[0])
    rows["analytic oracle (effective maps)"] = stats(np.stack(oracle), gts)

    models = {mode: load_model(mode, "cpu") for mode in ("d2p", "p2p")}

    def run(mode, bb, ss, aa, flip=True):
        """8-bit predictions of the test split (bb, ss, aa): D2P from the default image,
        P2P from the same slice at pair ``aa``."""
        net = models[mode][0]
        if mode == "d2p":
            x = np.stack([d.default_image(b, s) for b, s in zip(bb, ss)])
            return predict(net, mode, x, d.te[bb], d.tr[bb], flip_average=flip)
        return predict(net, mode, d.targets[aa, ss], d.te[bb], d.tr[bb], d.te[aa], d.tr[aa], flip_average=flip)

    results, one_pass = {}, {}
    preds = {}
    for mode in ("d2p", "p2p"):
        card = models[mode][1]
        for flip in (True, False):
            pr = run(mode, bb, ss, aa, flip)
            if flip:
                preds[mode] = pr
                results[mode] = stats(pr, gts)
            else:
                one_pass[mode] = stats(pr, gts)
        name = f"{'Default' if mode == 'd2p' else 'Param'}-to-Param ({card.id})"
        rows[name] = results[mode]
        rows[f"  {mode.upper()}, one pass (no flip average)"] = one_pass[mode]

    # where the held-out error comes from: the same held-out pairs on training slices
    tr_s = d.train_slices[np.linspace(0, len(d.train_slices) - 1, len(S)).astype(int)]
    gap = {}
    tb, ts, tg, ta = test_split(d, a.seed, slices=tr_s)
    for mode in ("d2p", "p2p"):
        gap[mode] = stats(run(mode, tb, ts, ta), tg)
    # ... and the held-out slices at 40 of the file's training pairs (unseen pairs' cost)
    tr_p = d.train_pairs[np.linspace(0, len(d.train_pairs) - 1, len(P)).astype(int)]
    pair_gap = {}
    tb, ts, tg, ta = test_split(d, a.seed, pairs=tr_p)
    for mode in ("d2p", "p2p"):
        pair_gap[mode] = stats(run(mode, tb, ts, ta), tg)

    print(f"\nTest set: {len(P)} held-out (TE, TR) pairs x {len(S)} held-out slices = {len(bb)} images "
          f"(256x256, 8-bit; data {a.data})\n")
    print("(the models' rows: the task function's default, each slice averaged with its mirror image; "
          "below them one pass per slice)")
    print(f"{'method':44s} {'PSNR dB (0-255)':>18s} {'MAE':>14s}")
    for name, r in rows.items():
        print(f"{name:44s} {r['psnr_mean']:8.2f} +/- {r['psnr_std']:5.2f} {r['mae_mean']:7.2f} +/- {r['mae_std']:4.2f}")
    print()
    for mode in ("d2p", "p2p"):
        pm, ps, pmae = PAPER[mode]
        r = results[mode]
        ok = "MET" if r["psnr_mean"] >= TARGET[mode] else "NOT MET"
        print(f"{mode.upper()}: ours {r['psnr_mean']:.2f} +/- {r['psnr_std']:.2f} dB, MAE {r['mae_mean']:.2f} | "
              f"paper {pm:.2f} +/- {ps:.2f} dB, MAE {pmae:.2f} | target >= {TARGET[mode]:.0f} dB: {ok}")

    print(f"\nThe same held-out pairs on {len(tr_s)} training slices (z {', '.join(str(z) for z in d.slice_z[tr_s])}):")
    for mode in ("d2p", "p2p"):
        print(f"  {mode.upper()}: {gap[mode]['psnr_mean']:.2f} +/- {gap[mode]['psnr_std']:.2f} dB "
              f"(held-out slices {results[mode]['psnr_mean']:.2f}): unseen anatomy costs "
              f"{gap[mode]['psnr_mean'] - results[mode]['psnr_mean']:.2f} dB")
    print(f"The held-out slices at {len(tr_p)} of the data file's training (TE, TR) pairs (what unseen pairs "
          "cost, or what the two sets of pairs differ in difficulty: this does not separate the two):")
    for mode in ("d2p", "p2p"):
        print(f"  {mode.upper()}: {pair_gap[mode]['psnr_mean']:.2f} +/- {pair_gap[mode]['psnr_std']:.2f} dB "
              f"(held-out pairs {results[mode]['psnr_mean']:.2f}): "
              f"{pair_gap[mode]['psnr_mean'] - results[mode]['psnr_mean']:+.2f} dB")

    # speed
    timing = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"\nSpeed (torch {torch.__version__}, {torch.get_num_threads()} threads of {cpu_name()}):")
    for dev in devices:
        for mode in ("d2p", "p2p"):
            net, _ = load_model(mode, dev)
            x = torch.zeros(8, 1, 256, 256, device=dev)
            p = encode_params(mode, torch.full((8,), 0.1), torch.full((8,), 3.0), torch.full((8,), 0.05),
                              torch.full((8,), 4.5)).to(dev)
            vol = np.random.default_rng(0).uniform(0, 100, (a.volume_slices, 256, 256)).astype(np.float32)
            for flip in (True, False):
                with torch.inference_mode():
                    forward(net, x, p, flip)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    for _ in range(3):
                        forward(net, x, p, flip)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    per_slice = (time.perf_counter() - t) / 24
                t = time.perf_counter()
                reparameterize(vol, 0.05, 4.5, 0.1, 3.0, model=mode, device=dev, flip_average=flip)
                per_vol = time.perf_counter() - t
                key = f"{mode}_{dev}" + ("" if flip else "_one_pass")
                timing[key] = {"per_slice_ms": round(per_slice * 1e3, 1), "per_volume_s": round(per_vol, 2)}
                print(f"  {mode} on {dev}{'' if flip else ', one pass'}: {per_slice * 1e3:.1f} ms per 256x256 slice "
                      f"(batch 8), {per_vol:.2f} s per 256x256x{a.volume_slices} volume (end to end)")

    # figure: input, truth, D2P, |err|, P2P input, P2P, |err|
    from MRISynthLib.viz import montage
    picks = [int(i) for i in np.linspace(0, len(bb) - 1, 4).astype(int)]
    grid, names = [], []
    for i in picks:
        b, s = bb[i], ss[i]
        gt = gts[i]
        grid.append([d.default_image(b, s), gt, preds["d2p"][i], np.abs(preds["d2p"][i] - gt),
                     d.targets[aa[i], s], preds["p2p"][i], np.abs(preds["p2p"][i] - gt)])
        names.append(f"TE {d.te[b] * 1e3:.0f} ms\nTR {d.tr[b] * 1e3:.0f} ms")
    montage(grid, a.figure, row_titles=names,
            col_titles=["D2P input\n(50/4500 ms)", "ground truth", "D2P", "|D2P - truth|", "P2P input",
                        "P2P", "|P2P - truth|"],
            cmaps=["gray", "gray", "gray", "magma", "gray", "gray", "magma"], robust=False,
            title="TE/TR re-parameterization on held-out slices and (TE, TR) pairs")
    print(f"\nfigure: {a.figure}")

    if a.update_catalog:
        cards = catalog.load_catalog()
        for mode in ("d2p", "p2p"):
            c = cards[models[mode][1].id]
            c.metrics = {**results[mode], "test_set": f"{len(P)} held-out pairs x {len(S)} held-out slices",
                         "paper_psnr": PAPER[mode][0], "target_psnr": TARGET[mode],
                         "psnr_same_pairs_training_slices": gap[mode]["psnr_mean"],
                         "psnr_training_pairs_same_slices": pair_gap[mode]["psnr_mean"],
                         "psnr_one_pass": one_pass[mode]["psnr_mean"], "inference": "flip-averaged"}
            c.timing = {"cpu_model": cpu_name(), "threads": torch.get_num_threads(),
                        **{k.split("_", 1)[1]: v for k, v in timing.items() if k.startswith(mode)}}
        catalog.save_catalog(cards)
        print("catalog updated")


if __name__ == "__main__":
    main()
