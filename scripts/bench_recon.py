#!/usr/bin/env python
"""Benchmark of static multi-coil reconstruction on held-out SIAT slices.

    python scripts/bench_recon.py --model unrolled-resnet-vd1d-r4-cpu --update-catalog \
        --figure docs/recon_r4.png
    python scripts/bench_recon.py --ckpt runs/unrolled/vd1d_R4_s0.5/unrolled_resnet_supervised_ckpt.pt
    python scripts/bench_recon.py --accel 8          # classical methods only at R = 8
    python scripts/bench_recon.py --sigpy-cs ...     # also time sigpy's L1WaveletRecon (same lambda, iterations)
    python scripts/bench_recon.py --tune-cs ...      # CS lambda chosen on the validation slices first
    python scripts/bench_recon.py --precision fp32 ...   # networks in fp32 (default auto: bf16 on CPUs with AMX)

Test slices: SIAT 160-199 (never trained on), simulated with the training settings
(8 coils, SNR 40, the given mask and acceleration, resize --scale), a different mask per
slice. Metrics on the magnitude, each slice scaled so its zero-filled image has 99th
percentile 1: PSNR and SSIM over the whole image (data range = the reference's maximum),
NRMSE inside the body mask (reference > 10% of its maximum). Time per slice on the CPU
(after one warm-up call per method; the methods take turns slice by slice).

``--tune-cs`` picks the CS lambda (and CG-SENSE's Tikhonov weight) that give the best mean PSNR on the
validation slices 150-159 (simulated with another seed) from a grid of factors of 2, and
uses them on the test slices; the chosen values are printed and stored with the results.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.data.recon_data import MulticoilConfig, load_siat, siat_split, simulate_multicoil  # noqa: E402
from MRISynthLib.metrics import psnr, ssim  # noqa: E402
from MRISynthLib.models.unrolled import UnrolledConfig, UnrolledNet  # noqa: E402
from MRISynthLib.recon import classical as C  # noqa: E402
from MRISynthLib.training.unrolled import normalise  # noqa: E402


def scores(rec, ref):
    rec, ref = np.abs(rec), np.abs(ref)
    body = ref > 0.1 * ref.max()
    return (psnr(rec, ref, data_range=ref.max()), ssim(rec, ref, data_range=ref.max()),
            np.linalg.norm((rec - ref)[body]) / np.linalg.norm(ref[body]))


def tune(run, v, what, grid=tuple(1e-3 * 2.0 ** k for k in range(-4, 5))):
    """The value of ``grid`` with the best mean PSNR of ``run(i, value)`` over the slices of ``v``."""
    best = None
    for lam in grid:
        p = float(np.mean([scores(run(i, lam), r)[0] for i, r in enumerate(v["imgs"])]))
        print(f"  {what} {lam:.3g}: validation PSNR {p:.2f} dB")
        if best is None or p > best[1]:
            best = (lam, p)
    print(f"{what}: {best[0]:.3g}\n")
    return best[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", default=[], help="unrolled checkpoint(s) to evaluate")
    ap.add_argument("--model", action="append", default=[], help="shipped unrolled model id(s) to evaluate")
    ap.add_argument("--update-catalog", action="store_true", help="store the --model results in the catalog")
    ap.add_argument("--mask", default="vd1d")
    ap.add_argument("--accel", type=float, default=4.0)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=20, help="number of test slices")
    ap.add_argument("--cs-lamda", type=float, default=2e-3)
    ap.add_argument("--tune-cs", action="store_true",
                    help="choose the CS lambda and the CG-SENSE weight on the validation slices (overrides --cs-lamda)")
    ap.add_argument("--cs-iters", type=int, default=100)
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="arithmetic of the networks' denoisers (auto: bf16 on CPUs with AMX, else fp32)")
    ap.add_argument("--figure", default=None)
    ap.add_argument("--sigpy-cs", action="store_true",
                    help="also time sigpy's L1WaveletRecon on the same problems (an independent CS implementation)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    from MRISynthLib.device import resolve_precision
    precision = resolve_precision(a.precision, "cpu")
    mc = MulticoilConfig(mask_kind=a.mask, accel=a.accel, scale=a.scale, seed=12345)
    test_idx = siat_split(mc)[2][:a.n]
    d = normalise(simulate_multicoil(load_siat(test_idx), mc))
    cg_lamda = 1e-2
    if a.tune_cs:
        v = normalise(simulate_multicoil(load_siat(siat_split(mc)[1]), MulticoilConfig(**{**mc.__dict__, "seed": 777})))
        a.cs_lamda = tune(lambda i, lam: C.l1_wavelet_cs(v["ksp"][i], v["maps"][i], v["masks"][i], lamda=lam,
                                                          iters=a.cs_iters), v, "L1-wavelet CS lambda")
        cg_lamda = tune(lambda i, lam: C.cg_sense(v["ksp"][i], v["maps"][i], v["masks"][i], lamda=lam, iters=30),
                        v, "CG-SENSE lambda")
    methods = {
        "zero-filled": lambda i: C.zero_filled(d["ksp"][i], d["maps"][i], d["masks"][i]),
        "CG-SENSE": lambda i: C.cg_sense(d["ksp"][i], d["maps"][i], d["masks"][i], lamda=cg_lamda, iters=30),
        "L1-wavelet CS": lambda i: C.l1_wavelet_cs(d["ksp"][i], d["maps"][i], d["masks"][i], lamda=a.cs_lamda,
                                                   iters=a.cs_iters),
    }
    if a.sigpy_cs:
        import sigpy.mri.app as sigpy_app

        methods["L1-wavelet CS (sigpy)"] = lambda i: sigpy_app.L1WaveletRecon(
            d["ksp"][i], d["maps"][i], a.cs_lamda, weights=d["masks"][i], max_iter=a.cs_iters, show_pbar=False).run()
    for ck in a.ckpt:
        st = torch.load(ck, weights_only=False)
        net = UnrolledNet(UnrolledConfig(**st["config"]))
        net.load_state_dict(st["model"])
        net.eval()

        def run(i, net=net):
            with torch.no_grad():
                t = lambda k: torch.from_numpy(np.ascontiguousarray(d[k][i:i + 1]))  # noqa: E731
                return net(t("ksp"), t("maps"), t("masks"), precision)[0].numpy()
        methods[f"unrolled {st['config']['denoiser']} (step {st['step']})"] = run
    from MRISynthLib.tasks.recon import load_unrolled
    for mid in a.model:
        net, _ = load_unrolled(mid, "cpu")

        def run(i, net=net):
            with torch.no_grad():
                t = lambda k: torch.from_numpy(np.ascontiguousarray(d[k][i:i + 1]))  # noqa: E731
                return net(t("ksp"), t("maps"), t("masks"), precision)[0].numpy()
        methods[mid] = run
    print(f"{len(test_idx)} held-out SIAT slices, {a.mask} R={a.accel:g}, {d['imgs'].shape[-2:]} pixels, 8 coils, "
          f"SNR 40; networks in {precision}\n")
    print(f"{'method':34s} {'PSNR dB':>14s} {'SSIM':>13s} {'NRMSE (body)':>16s} {'s/slice':>8s}")
    # slice by slice, every method in turn: a change in the machine's load during the run
    # then slows all methods alike instead of the ones that happen to run at that time
    recs, secs, results = {name: [] for name in methods}, dict.fromkeys(methods, 0.0), {}
    for f in methods.values():
        f(0)                                                  # warm-up (caches, thread pools)
    for i in range(len(test_idx)):
        for name, f in methods.items():
            t0 = time.perf_counter()
            recs[name].append(f(i))
            secs[name] += time.perf_counter() - t0
    for name, out in recs.items():
        dt = secs[name] / len(test_idx)
        s = np.array([scores(o, r) for o, r in zip(out, d["imgs"])])
        m, sd = s.mean(0), s.std(0)
        results[name] = {"psnr_mean": round(float(m[0]), 2), "psnr_std": round(float(sd[0]), 2),
                         "ssim_mean": round(float(m[1]), 3), "nrmse_body_mean": round(float(m[2]), 4),
                         "s_per_slice_cpu": round(dt, 3)}
        print(f"{name:34s} {m[0]:7.2f} +/- {sd[0]:4.2f} {m[1]:6.3f} +/- {sd[1]:4.3f} {m[2]:8.4f} +/- {sd[2]:5.4f} "
              f"{dt:8.3f}")
    results["L1-wavelet CS"]["lamda"] = a.cs_lamda
    results["CG-SENSE"]["lamda"] = cg_lamda
    cs = results["L1-wavelet CS"]
    sp = results.get("L1-wavelet CS (sigpy)")
    for name, r in results.items():
        if name.startswith("unrolled") or name in a.model:
            print(f"{name}: {r['psnr_mean'] - cs['psnr_mean']:+.2f} dB vs CS (target >= +2), "
                  f"{cs['s_per_slice_cpu'] / r['s_per_slice_cpu']:.1f}x faster (target >= 10x)"
                  + (f"; {sp['s_per_slice_cpu'] / r['s_per_slice_cpu']:.1f}x faster than sigpy's CS" if sp else ""))
    if a.update_catalog and a.model:
        from MRISynthLib import catalog
        cards = catalog.load_catalog()
        for mid in a.model:
            cards[mid].metrics = {**results[mid], "precision": precision,
                                  "test_set": f"SIAT slices {test_idx[0]}-{test_idx[-1]}, {a.mask} "
                                  f"R={a.accel:g}, scale {a.scale:g}", "cs": cs, "zero_filled": results["zero-filled"]}
        catalog.save_catalog(cards)
        print("catalog updated")
    if a.figure:
        from MRISynthLib.viz import montage
        recs.pop("L1-wavelet CS (sigpy)", None)     # the same image as ours (checked in the tests)
        ref = np.abs(d["imgs"][0])
        row = [ref] + [np.abs(r[0]) for r in recs.values()]
        err = [np.zeros_like(ref)] + [np.abs(np.abs(r[0]) - ref) for r in recs.values()]
        montage([row, err], a.figure, row_titles=["image", "|error|"], col_titles=["reference"] + list(recs),
                cmaps=["gray"] * len(row), robust=False)
        print(f"figure: {a.figure}")


if __name__ == "__main__":
    main()
