#!/usr/bin/env python
"""Benchmark the cine reconstructions on the test split of the simulated cine set.

    python scripts/bench_cine.py                       # shipped models, R = 5, 8, 10
    python scripts/bench_cine.py --update-catalog --figures docs

For each test series (its own fixed per-frame variable-density mask, 11 centre lines, seed
1000 + index; complex k-space noise 0.005): zero-filled, the seed network and the cascade,
each run through the product path (``reconstruct_cine``), PSNR and SSIM of the magnitude per
frame against the noise-free reference (data range: the reference's maximum), averaged over
frames, then mean +/- standard deviation over series; seconds per 20-frame series (CPU,
threads as set). The cascade is also evaluated truncated to its first k stages (how quality
grows with K). ``--figures DIR`` writes the mask and ky-t plots, aliased and fully sampled
frames, example frames with error maps, the training curves and a GIF of a reconstructed cycle.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.tasks.cine import load_cine_model, reconstruct_cine, undersample_cine  # noqa: E402
from MRISynthLib.training.cine import TEST_NOISE, kt_mask, series_metrics  # noqa: E402
from train_cine import DATA, cine_set  # noqa: E402


def run(method, test, accel, net=None, stages=None):
    recs, secs = [], []
    for i, x in enumerate(test.images):
        m = kt_mask(x.shape[0], x.shape[-1], accel, 1000 + i)
        und = undersample_cine(x, mask=m, noise=TEST_NOISE, seed=1000 + i)
        t0 = time.perf_counter()
        kw = {"stages": stages} if stages is not None else {}
        r = reconstruct_cine(und["kspace"], und["mask"], method=method, model=net, **kw)
        secs.append(time.perf_counter() - t0)
        recs.append(r)
    m = np.array([series_metrics(r, np.abs(x)) for r, x in zip(recs, test.images)])
    return {"psnr": float(m[:, 0].mean()), "psnr_std": float(m[:, 0].std()), "ssim": float(m[:, 1].mean()),
            "ssim_std": float(m[:, 1].std()), "s_per_series": float(np.median(secs)), "n": len(m)}, recs


def figures(out: Path, test, recs, accel):
    from MRISynthLib.physics.fourier import ifft2c
    from MRISynthLib.training.cine import plot_curves
    from MRISynthLib.viz import _plt, cine_gif, montage

    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    m = kt_mask(20, test.images.shape[-1], accel, 1000)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [1, 2]})
    ax[0].imshow(np.tile(m[0], (test.images.shape[-2], 1)).T, cmap="gray", aspect="auto")
    ax[0].set_title(f"frame 0 mask (R = {accel:g}, ky vertical)")
    ax[0].set_xlabel("kx")
    ax[0].set_ylabel("ky")
    ax[1].imshow(m.T, cmap="gray", aspect="auto", interpolation="nearest")
    ax[1].set_title("ky-t pattern: a new variable-density draw per frame")
    ax[1].set_xlabel("frame")
    ax[1].set_ylabel("ky")
    fig.tight_layout()
    fig.savefig(out / "cine_masks.png", dpi=110)
    plt.close(fig)
    i = int(np.argmax([s.startswith("ring") for s in test.sources]))
    j = 0
    x = test.images
    und = [undersample_cine(x[k], mask=kt_mask(20, x.shape[-1], accel, 1000 + k), noise=0) for k in (i, j)]
    rows = []
    for k, u in zip((i, j), und):
        al = np.abs(ifft2c(u["kspace"]))
        rows.append([np.abs(x[k][f]) for f in (0, 7, 14)] + [al[f] for f in (0, 7, 14)])
    montage(rows, out / "cine_aliased.png", col_titles=["full f0", "full f7", "full f14",
                                                        "aliased f0", "aliased f7", "aliased f14"],
            row_titles=[test.sources[i], test.sources[j]], title=f"b = F^-1 U F m at R = {accel:g}")
    ref = np.abs(x[i])
    f = 7
    cols = [("zero-filled", recs["zero-filled"][i]), ("seed net", recs["seed"][i]), ("cascade", recs["cascade"][i])]
    rows = [[ref[f]] + [c[1][f] for c in cols], [np.zeros_like(ref[f])] + [np.abs(c[1][f] - ref[f]) * 5 for c in cols]]
    montage(rows, out / "cine_example.png", col_titles=["reference"] + [c[0] for c in cols],
            row_titles=["frame 7", "|error| x 5"], robust=False,
            title=f"{test.sources[i]}, R = {accel:g} (PSNR per frame in the table)")
    cine_gif(None, out / "cine_cycle.gif", panels=[recs["zero-filled"][i], recs["seed"][i], recs["cascade"][i], ref],
             scale=1)
    logs = {p.parent.name: p for p in sorted(Path("runs/cine").glob("*/*_loss.csv"))
            if p.parent.name in ("seed", "cascade_k5_w16")}
    if logs:
        plot_curves(logs, out / "cine_curves.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--accels", default="5,8,10")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-series", type=int, default=None)
    ap.add_argument("--figures", type=Path, help="write figures here")
    ap.add_argument("--json", type=Path, default=Path("runs/cine/bench.json"))
    ap.add_argument("--update-catalog", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    test = cine_set(a.data).subset("test")
    if a.max_series:
        test.images = test.images[:a.max_series]
        test.sources = test.sources[:a.max_series]
    nets = {m: load_cine_model(m, device="cpu") for m in ("seed", "cascade")}
    res = {}
    print(f"test split: {len(test.images)} series x {test.images.shape[1]} frames, {test.images.shape[2:]}, "
          f"k-space noise {TEST_NOISE}")
    print(f"{'R':>4} {'method':<22} {'PSNR dB':>14} {'SSIM':>14} {'s/series':>9}")
    keep = {}
    for accel in [float(v) for v in a.accels.split(",")]:
        for method in ("zero-filled", "seed", "cascade"):
            net = nets[method][0] if method in nets else None
            r, recs = run(method, test, accel, net)
            res[f"R{accel:g}/{method}"] = r
            if accel == 5:
                keep[method] = recs
            print(f"{accel:4g} {method:<22} {r['psnr']:6.2f} +/- {r['psnr_std']:4.2f} "
                  f"{r['ssim']:6.3f} +/- {r['ssim_std']:.3f} {r['s_per_series']:9.3f}")
        if accel == 5:
            net = nets["cascade"][0]
            for k in range(1, net.cfg.stages):
                r, _ = run("cascade", test, accel, net, stages=k)
                res[f"R{accel:g}/cascade_first_{k}"] = r
                print(f"{accel:4g} {'cascade, first ' + str(k) + ' stage' + ('s' if k > 1 else ''):<22} "
                      f"{r['psnr']:6.2f} +/- {r['psnr_std']:4.2f} {r['ssim']:6.3f} +/- {r['ssim_std']:.3f} "
                      f"{r['s_per_series']:9.3f}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1))
    print(f"wrote {a.json}")
    if a.figures:
        figures(a.figures, test, keep, 5.0)
        print(f"figures in {a.figures}")
    if a.update_catalog:
        from MRISynthLib import catalog

        cards = catalog.load_catalog()
        for method, (net, card) in nets.items():
            c = cards[card.id]
            c.metrics = {"test_set": f"simulated cine test split ({len(test.images)} series, 20 frames, 128x128), "
                                     f"k-space noise {TEST_NOISE}",
                         **{k.split("/")[0]: {kk: round(v, 3) for kk, v in res[k].items() if kk != "n"}
                            for k in res if k.endswith("/" + method)},
                         "zero_filled": {k.split("/")[0]: round(res[k]["psnr"], 2) for k in res
                                         if k.endswith("/zero-filled")}}
            if method == "cascade":
                c.metrics["R5_psnr_first_k_stages"] = {k.rsplit("_", 1)[1]: round(v["psnr"], 2) for k, v in res.items()
                                                       if "/cascade_first_" in k}
            c.timing = {"cpu_s_per_series_2_threads": round(res[f"R5/{method}"]["s_per_series"], 3)}
        catalog.save_catalog(cards)
        print("catalog metrics updated")


if __name__ == "__main__":
    main()
