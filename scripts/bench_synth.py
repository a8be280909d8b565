#!/usr/bin/env python
"""Benchmark of the physics-informed synthesis model against the Param-Net models.

    python scripts/bench_synth.py [--data runs/paper.h5] [--update-catalog]

On the re-parameterization test set (paper protocol, held-out slices x held-out (TE, TR)
pairs; made with `make-dataset` when missing) it prints PSNR (0-255, each prediction
display-normalised to max 255 and rounded like the 8-bit ground truth) and MAE of:

* Default-to-Param and Param-to-Param (the shipped Param-Net models),
* the synthesis model from the default input (TE 50 ms / TR 4.5 s),
* the synthesis model from the P2P input (another held-out pair, as Param-to-Param gets),
* the synthesis model from both inputs at once,
* the synthesis model from the default input and from the P2P input with Param-Net
  assistance (``assisted_maps``: the refinement also fits the spin echoes that the
  Default-to-Param / Param-to-Param model predicts from the input),

then generalisation (MNI152 test slices, never trained on; BrainWeb with the
BrainWeb/KomaMRI tissue table, never trained on), a diagnosis (the default-input renders
with the true per-compartment relaxation times, and with the simulator's true compartment
densities in place of the network's fractions x PD), the accuracy of the estimated PD/T1/T2
maps in pure grey matter, white matter and CSF voxels (fraction > 0.9), and timings: the
map estimate and the re-render of a 256 x 256 x 180 volume on the CPU (median of 20). It
writes the montage docs/synth_montage.png: one default input rendered as T1w, T2w, PDw,
FLAIR and STIR beside the simulator's truth.

``--no-timing`` leaves the timings out (the Param-Net assisted volume alone takes minutes)
and, with ``--update-catalog``, keeps the card's stored timings: for a rerun after new
weights of the same architectures, whose speed they do not change.
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reparam import PAPER, load_test_data, predict, stats, test_split  # noqa: E402
from MRISynthLib import catalog  # noqa: E402
from MRISynthLib.data.simulate import normalize_8bit  # noqa: E402
from MRISynthLib.device import cpu_name  # noqa: E402
from MRISynthLib.metrics import psnr  # noqa: E402
from MRISynthLib.models.quantitative import effective_maps  # noqa: E402
from MRISynthLib.physics.phantoms import Phantom, brainweb_phantom, mni152_phantom  # noqa: E402
from MRISynthLib.physics.signal import PRESETS, SequenceParams  # noqa: E402
from MRISynthLib.physics.tissues import get_table  # noqa: E402
from MRISynthLib.tasks import reparam as reparam_task  # noqa: E402
from MRISynthLib.tasks.synth import MapEstimate, assisted_maps, estimate_maps, load_model  # noqa: E402
from MRISynthLib.training.quantitative import held_out_z, slice_fractions  # noqa: E402

DEFAULT = SequenceParams("se", 0.05, 4.5)
TARGET_D2P = 36.0


def to_u8(img):
    m = float(img.max())
    return np.clip(np.round(img / (m if m > 0 else 1.0) * 255.0), 0, 255)


def render_truth(frac, table, seq):
    """The simulator's image of one slice's fractions (labels, H, W)."""
    return Phantom(frac[:, None], table=get_table(table)).render(seq)[0]


def generalisation(ph, zs, table, te, tr, size=256, assisted=False):
    """Default input -> each test pair on the given slices; returns (preds, truths) 8-bit.
    ``assisted``: with Default-to-Param assistance."""
    frac = slice_fractions(ph, zs, size)
    preds, gts = [], []
    for f in frac:
        x, _ = normalize_8bit(render_truth(f, table, DEFAULT))
        est = (assisted_maps if assisted else estimate_maps)(x.astype(np.float32), DEFAULT, use_cache=False)
        for t_e, t_r in zip(te, tr):
            seq = SequenceParams("se", float(t_e), float(t_r))
            preds.append(to_u8(est.render(seq)))
            gts.append(normalize_8bit(render_truth(f, table, seq))[0].astype(np.float64))
    return np.stack(preds), np.stack(gts)


def p2p_predictions(d, bb, ss, aa, estimate, default_image=None):
    """8-bit renders of each target (pair ``bb``, slice ``ss``) from the P2P input (pair
    ``aa`` of the same slice) alone and together with the default input;
    ``estimate(inputs, acquisitions)`` makes the map estimate, ``default_image(b, s)`` the
    default input (the data file's by default)."""
    default_image = default_image or d.default_image
    alone, both = [], []
    for b, s, a_ in zip(bb, ss, aa):
        x = d.targets[a_, s].astype(np.float32) / 255.0
        seq_in = SequenceParams("se", float(d.te[a_]), float(d.tr[a_]))
        tgt = SequenceParams("se", float(d.te[b]), float(d.tr[b]))
        alone.append(to_u8(estimate(x, seq_in).render(tgt)))
        pair = [default_image(b, s).astype(np.float32) / 255.0, x]
        both.append(to_u8(estimate(pair, [DEFAULT, seq_in]).render(tgt)))
    return np.stack(alone), np.stack(both)


def pure_voxel_errors(fracs, estimate, table="mrilab", tissues=(("CSF", 1), ("grey matter", 2), ("white matter", 3)),
                      keys=("pd", "t1", "t2")):
    """Median relative error of the estimated maps in pure (fraction > 0.9) voxels of each
    tissue, from the default input rendered from each slice's fractions with ``table``:
    {tissue: {key: error}}; ``estimate(image, acquisition)`` makes the map estimate."""
    lut = get_table(table).lookup(fracs.shape[1])
    relax = [np.where(lut["pd"][1:] > 0, lut[k][1:], 1.0) for k in ("t1", "t2", "t2star")]
    errs = {t: {k: [] for k in keys} for t, _ in tissues}
    for f in fracs:
        x, _ = normalize_8bit(render_truth(f, table, DEFAULT))
        m = estimate(x.astype(np.float32), DEFAULT).maps()
        truth = effective_maps(lut["pd"][1:, None, None] * f[1:], *relax)
        for name, lab in tissues:
            pure = f[lab] > 0.9
            for k in keys:
                errs[name][k].append(np.abs(m[k][pure] - truth[k][pure]) / truth[k][pure])
    return {t: {k: float(np.median(np.concatenate(v))) for k, v in e.items()} for t, e in errs.items()}


def diagnosis(d, ests, bb, ss, gts, fracs):
    """Which part of the default-input estimate limits it: the same renders with the true
    per-compartment T1/T2/T2* (network fractions and PD), and with the simulator's true
    compartment densities (fractions x PD; the network's relaxation times). ``fracs``: the
    true fractions (labels, H, W) of each test slice, keyed like ``ests``."""
    lut = get_table("mrilab").lookup()
    K = len(next(iter(ests.values())).t1)
    present = lut["pd"][1:K + 1] > 0
    true_rel = {k: lut[k][1:K + 1] for k in ("t1", "t2", "t2star")}
    with_rel, with_frac = {}, {}
    for s, e in ests.items():
        with_rel[s] = replace(e, **{f: np.where(present, true_rel[k], getattr(e, f)).astype(np.float32)
                                    for f, k in (("t1", "t1"), ("t2", "t2"), ("t2s", "t2star"))})
        dens = (fracs[s][1:K + 1] * lut["pd"][1:K + 1, None, None]).astype(np.float32)[:, None]
        with_frac[s] = MapEstimate(dens, np.ones(1, np.float32), e.t1, e.t2, e.t2s, is_2d=True)
    out = {}
    for name, es in (("true compartment T1/T2/T2*", with_rel), ("true compartment densities", with_frac)):
        pr = np.stack([to_u8(es[s].render(SequenceParams("se", float(d.te[b]), float(d.tr[b]))))
                       for b, s in zip(bb, ss)])
        out[name] = stats(pr, gts)
    return out


def time_volume(net, Z, t_est, t_assist, estimate, assisted) -> dict:
    """Re-render and map-estimate timings of a 256 x 256 x Z volume (printed; returned for the card);
    ``t_est`` / ``t_assist``: the test slices' single-slice estimate times."""
    K = net.cfg.compartments
    vol_est = MapEstimate(np.random.default_rng(0).uniform(0, 1, (K, Z, 256, 256)).astype(np.float32),
                          np.ones(Z, np.float32), np.linspace(0.3, 4, K).astype(np.float32),
                          np.linspace(0.03, 2, K).astype(np.float32), np.linspace(0.02, 1, K).astype(np.float32))
    timing = {"threads": torch.get_num_threads(), "cpu_model": cpu_name()}
    print(f"\nTiming (torch {torch.__version__}, {timing['threads']} threads of {timing['cpu_model']}, {K} compartments):")
    for nm in ("T2w", "FLAIR", "GRE"):
        vol_est.render(PRESETS[nm])
        ts = []
        for _ in range(20):
            t = time.perf_counter()
            vol_est.render(PRESETS[nm])
            ts.append(time.perf_counter() - t)
        timing[f"render_{nm}_ms"] = round(float(np.median(ts)) * 1e3, 1)
        print(f"  re-render {nm:5s} 256x256x{Z}: {np.median(ts) * 1e3:6.1f} ms (median of 20) | target <= 100 ms: "
              f"{'MET' if np.median(ts) <= 0.1 else 'NOT MET'}")
    del vol_est
    vol = np.random.default_rng(0).uniform(0, 100, (Z, 256, 256)).astype(np.float32)
    for prefix, label, est_fn, t_slices in (("", "map estimate", estimate, t_est),
                                            ("assisted_", "Param-Net assisted map estimate", assisted, t_assist)):
        t = time.perf_counter()
        est_fn(vol, DEFAULT)
        timing[f"{prefix}estimate_volume_s"] = round(time.perf_counter() - t, 2)
        timing[f"{prefix}estimate_slice_ms"] = round(float(np.median(t_slices)) * 1e3, 1)
        print(f"  {label}: {timing[f'{prefix}estimate_volume_s']:.2f} s per 256x256x{Z} volume, "
              f"{timing[f'{prefix}estimate_slice_ms']:.0f} ms for one 256x256 slice")
    return timing


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/paper.h5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--figure", default="docs/synth_montage.png")
    ap.add_argument("--update-catalog", action="store_true")
    ap.add_argument("--volume-slices", type=int, default=180)
    ap.add_argument("--no-timing", action="store_true", help="skip the timings; keep the catalog's (see above)")
    a = ap.parse_args()
    torch.manual_seed(0)
    d = load_test_data(a.data)
    net, card = load_model(a.model, "cpu")
    P, S = d.test_pairs, d.test_slices
    bb, ss, gts, aa = test_split(d, a.seed)   # the same test set and partners as bench_reparam.py

    rows, preds = {}, {}
    for mode in ("d2p", "p2p"):
        rnet, rcard = reparam_task.load_model(mode, "cpu")
        if mode == "d2p":
            x = np.stack([d.default_image(b, s) for b, s in zip(bb, ss)])
            pr = predict(rnet, mode, x, d.te[bb], d.tr[bb])
        else:
            pr = predict(rnet, mode, d.targets[aa, ss], d.te[bb], d.tr[bb], d.te[aa], d.tr[aa])
        preds[mode] = pr
        rows[f"{'Default' if mode == 'd2p' else 'Param'}-to-Param ({rcard.id})"] = stats(pr, gts)

    estimate = lambda x, sq: estimate_maps(x, sq, model=net, use_cache=False)  # noqa: E731
    assisted = lambda x, sq: assisted_maps(x, sq, model=net, use_cache=False)  # noqa: E731

    def from_default_input(estimator):
        """One estimate per test slice from its default input (timed), and its render of each target."""
        ests_, times = {}, []
        for s in S:
            t = time.perf_counter()
            ests_[s] = estimator(d.default_image(P[0], s).astype(np.float32) / 255.0, DEFAULT)
            times.append(time.perf_counter() - t)
        pr_ = np.stack([to_u8(ests_[s].render(SequenceParams("se", float(d.te[b]), float(d.tr[b]))))
                        for b, s in zip(bb, ss)])
        return ests_, times, pr_

    # synthesis from the default input: one estimate per slice, 40 renders each
    ests, t_est, preds["synth_default"] = from_default_input(estimate)
    rows[f"synthesis from the default input ({card.id})"] = r_def = stats(preds["synth_default"], gts)
    # from the P2P input, and from both
    preds["synth_p2p"], both = p2p_predictions(d, bb, ss, aa, estimate)
    rows[f"synthesis from the P2P input ({card.id})"] = r_p2p = stats(preds["synth_p2p"], gts)
    rows[f"synthesis from default + P2P inputs ({card.id})"] = r_both = stats(both, gts)
    # with Param-Net assistance (one input; d2p for the default input, p2p for the others)
    _, t_assist, preds["assist_default"] = from_default_input(assisted)
    rows["synthesis from the default input, Param-Net assisted (d2p)"] = r_def_a = stats(preds["assist_default"], gts)
    memo = {}
    for a_, s in sorted(set(zip(aa, ss))):
        memo[a_, s] = assisted(d.targets[a_, s].astype(np.float32) / 255.0,
                               SequenceParams("se", float(d.te[a_]), float(d.tr[a_])))
    preds["assist_p2p"] = np.stack([to_u8(memo[a_, s].render(SequenceParams("se", float(d.te[b]), float(d.tr[b]))))
                                    for b, s, a_ in zip(bb, ss, aa)])
    rows["synthesis from the P2P input, Param-Net assisted (p2p)"] = r_p2p_a = stats(preds["assist_p2p"], gts)

    print(f"\nTest set: {len(P)} held-out (TE, TR) pairs x {len(S)} held-out slices = {len(bb)} images "
          f"(256x256, 8-bit; data {a.data})\n")
    print(f"{'method':58s} {'PSNR dB (0-255)':>18s} {'MAE':>14s}")
    for name, r in rows.items():
        print(f"{name:58s} {r['psnr_mean']:8.2f} +/- {r['psnr_std']:5.2f} {r['mae_mean']:7.2f} +/- {r['mae_std']:4.2f}")
    p2p_row = rows[[k for k in rows if k.startswith("Param-to-Param")][0]]
    p2p_ref = p2p_row["psnr_mean"]
    print()
    for label, r in (("from the default input", r_def), ("from the default input, Param-Net assisted", r_def_a)):
        print(f"{label}: {r['psnr_mean']:.2f} dB | target >= {TARGET_D2P:.0f} dB: "
              f"{'MET' if r['psnr_mean'] >= TARGET_D2P else 'NOT MET'} | paper D2P {PAPER['d2p'][0]:.2f} dB")
    # from arbitrary inputs: both metrics of the protocol, and image by image
    pp = np.array([psnr(x, y) for x, y in zip(preds["p2p"], gts)])
    for label, key, r in (("from arbitrary inputs", "synth_p2p", r_p2p),
                          ("from arbitrary inputs, Param-Net assisted", "assist_p2p", r_p2p_a)):
        ps = np.array([psnr(x, y) for x, y in zip(preds[key], gts)])
        better = r["psnr_mean"] > p2p_ref and r["mae_mean"] < p2p_row["mae_mean"]
        print(f"{label}: {r['psnr_mean']:.2f} dB, MAE {r['mae_mean']:.2f} vs Param-to-Param "
              f"{p2p_ref:.2f} dB, MAE {p2p_row['mae_mean']:.2f}: "
              f"{'better (MET)' if better else 'NOT better in both (NOT MET)'}")
        print(f"  image by image: median PSNR {np.median(ps):.2f} vs {np.median(pp):.2f} dB; synthesis higher on "
              f"{int((ps > pp).sum())} of {len(ps)} images")

    # generalisation
    print("\nGeneralisation (default input -> the 40 test pairs):")
    gen = {}
    mni = mni152_phantom(voxel_mm=2.0)
    bw = brainweb_phantom(voxel_mm=2.0)
    te, tr = d.te[P], d.tr[P]
    for label, ph, table in (("MNI152 held-out test slices, MRiLab table (second anatomy)", mni, "mrilab"),
                             ("BrainWeb test slices, BrainWeb/KomaMRI table (unseen tissue values)", bw,
                              "brainweb_koma")):
        for with_assist in (False, True):
            p_, g_ = generalisation(ph, held_out_z(ph), table, te, tr, assisted=with_assist)
            key = label + (", Param-Net assisted" if with_assist else "")
            gen[key] = r = stats(p_, g_)
            print(f"  {key:90s} {r['psnr_mean']:6.2f} +/- {r['psnr_std']:5.2f} dB, MAE {r['mae_mean']:.2f}")

    # the BrainWeb test slices' true fractions (the data file's held-out slices)
    frac = slice_fractions(bw, d.slice_z[S], 256)
    print("\nDiagnosis, default input on the test set, with one part of the estimate replaced by the truth:")
    diag = diagnosis(d, ests, bb, ss, gts, dict(zip(S, frac)))
    for label, r in diag.items():
        print(f"  {label:70s} {r['psnr_mean']:6.2f} +/- {r['psnr_std']:5.2f} dB, MAE {r['mae_mean']:.2f}")

    # map accuracy on the BrainWeb test slices (MRiLab table, default input)
    print("\nMap accuracy, BrainWeb test slices (pure voxels, fraction > 0.9): median relative error")
    map_acc = {}
    for suffix, est_fn in (("", estimate), (", Param-Net assisted", assisted)):
        errs = pure_voxel_errors(frac, est_fn, tissues=(("grey matter", 2), ("white matter", 3), ("CSF", 1)))
        map_acc.update({name + suffix: {k: round(v, 4) for k, v in e.items()} for name, e in errs.items()})
    for name in map_acc:
        print(f"  {name:34s} PD {map_acc[name]['pd'] * 100:5.1f} %   T1 {map_acc[name]['t1'] * 100:5.1f} %   "
              f"T2 {map_acc[name]['t2'] * 100:5.1f} %")

    # timing
    timing = None if a.no_timing else time_volume(net, a.volume_slices, t_est, t_assist, estimate, assisted)

    # montage: one default input rendered as the presets, beside the truth
    from MRISynthLib.viz import montage
    f = frac[2]
    x, _ = normalize_8bit(render_truth(f, "mrilab_full", DEFAULT))
    est = estimate_maps(x.astype(np.float32), DEFAULT, model=net, use_cache=False)
    names = ["T1w", "T2w", "PDw", "FLAIR", "STIR"]
    r_raw = [est.render(PRESETS[n]) for n in names]
    t_raw = [render_truth(f, "mrilab_full", PRESETS[n]) for n in names]
    r_row = [to_u8(r) for r in r_raw]
    t_row = [normalize_8bit(t)[0].astype(np.float64) for t in t_raw]
    e_row = [np.abs(r - t) for r, t in zip(r_row, t_row)]
    # the montage's display normalisation (each image to its own maximum) shows a wrong
    # brightest tissue as a global scale error; give the error inside the head after one
    # least-squares scale, and the synthesized maximum against the truth's at that scale
    print("\nmontage slice (MRiLab+fat table), inside the head after one least-squares scale:")
    for n, r, t in zip(names, r_raw, t_raw):
        r, t = r.astype(np.float64), t.astype(np.float64)
        head = t > 0.05 * t.max()
        sc = (r[head] * t[head]).sum() / max((r[head] ** 2).sum(), 1e-12)
        print(f"  {n:5s} relative error {np.linalg.norm(sc * r[head] - t[head]) / np.linalg.norm(t[head]):.3f}, "
              f"max {sc * r.max() / t.max():.2f} x the truth's")
    grid = [[r, t, e] for r, t, e in zip(r_row, t_row, e_row)] + [[x, None, None]]
    montage(grid, a.figure, row_titles=[f"{n}\n{PRESETS[n].describe()}" for n in names] + ["input\nSE 50/4500 ms"],
            col_titles=["synthesized", "simulator truth", "|difference|"], cmaps=["gray", "gray", "magma"],
            robust=False, panel_titles={(len(names), 0): "the input (held-out slice)"},
            title="Physics-informed synthesis from one spin-echo input\n(BrainWeb test slice, MRiLab+fat table)")
    print(f"\nmontage: {a.figure}")

    if a.update_catalog:
        cards = catalog.load_catalog()
        c = cards[card.id]
        c.metrics = {"default_input": r_def, "p2p_input": r_p2p, "both_inputs": r_both,
                     "default_input_assisted": r_def_a, "p2p_input_assisted": r_p2p_a,
                     "test_set": f"{len(P)} held-out pairs x {len(S)} held-out slices",
                     "generalisation": gen, "map_median_relative_error": map_acc, "diagnosis": diag, "target_psnr": TARGET_D2P}
        if timing is not None:
            c.timing = {"cpu": timing}
        catalog.save_catalog(cards)
        print("catalog updated")


if __name__ == "__main__":
    main()
