#!/usr/bin/env python
"""Benchmark of the normalizing-flow prior against zero-filled, CS and an unrolled network.

    python scripts/bench_flow.py --model flow-nsf-80x64-4bit-cpu --tune --update-catalog \
        --unrolled unrolled-resnet-flow80x64-r4-cpu --figure docs/flow_recon_4bit.png
    python scripts/bench_flow.py --ckpt runs/flow/4bit/flow_ckpt.pt --bits 4 --tune

Data (seed 004's regime): SIAT magnitudes area-resized to 80 x 64, scaled to max 1 and
quantised to --bits bits (real objects), 8 birdcage coils, SNR 40, 1D variable-density
masks at --accel with 6 centre lines, one mask per slice. Tuning (--tune) uses validation
slices 150-159 (never the test slices): CS lambda, then lambda for the L1-only variant,
beta for the log-prob-only variant and (lambda, beta) for the combined variant on a 3 x 3
grid around those two, each by PSNR at the same iteration count; the tuned values are
stored with the model (--update-catalog). Test: the
first --n of SIAT 160-199.

--curve N: instead of the test, validation PSNR of each variant (at the weights it would
use) every 100 Adam iterations up to N, and the L1 + log-prob gain over L1 only with each
variant stopped at its own best iteration count: how the comparison depends on when the
solver stops.

--prior-check: instead of the test, the prior's log-density (nats per pixel) on the
validation slices of the reference image, of the reference dequantised like the training
data, blurred (Gaussian, sigma 0.7 px) and with Gaussian noise (sigma 0.02), and of each
variant's reconstruction, each mapped to the prior's space as the solver maps its image
(recon.flow.to_prior_space): whether the prior ranks the true image above the solutions
the log-prob penalty moves towards.

Tuning (and a checkpoint without stored weights) solves with the image mapped to the
prior's grey-level bins (FlowSolverConfig.bits = the data's bit depth); otherwise the
model's stored settings decide.

Metrics on the magnitude: PSNR over the image (data range 1 = the reference's maximum),
SSIM, NRMSE over the image. Time per slice on this machine's CPU (the flow solver runs
all test slices as one batch; the time is the batch's time divided by the slices).
"""
import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MRISynthLib.metrics import nrmse, psnr, ssim  # noqa: E402
from MRISynthLib.models.flow import FlowConfig, ImageFlow  # noqa: E402
from MRISynthLib.recon import classical as C  # noqa: E402
from MRISynthLib.recon.flow import (VARIANTS, FlowSolverConfig, flow_reconstruct, from_prior_space,  # noqa: E402
                                    to_prior_space, weights_for)
from MRISynthLib.tasks.recon import flow_solver_config, load_flow, load_unrolled  # noqa: E402
from MRISynthLib.training.flow import flow_multicoil, validate_bpd, siat_magnitudes  # noqa: E402


def scores(rec, ref):
    rec = np.abs(rec)
    return psnr(rec, ref, data_range=1.0), ssim(rec, ref, data_range=1.0), nrmse(rec, ref)


def mean_psnr(recs, refs):
    return float(np.mean([scores(r, f)[0] for r, f in zip(recs, refs)]))


def run_flow(flow, d, variant, solver):
    return flow_reconstruct(flow, d["ksp"], d["maps"], d["masks"], variant, solver)


def cs(d, lamda, iters=100):
    return np.stack([C.l1_wavelet_cs(d["ksp"][i], d["maps"][i], d["masks"][i], lamda=lamda, iters=iters)
                     for i in range(len(d["ksp"]))])


LAMDAS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)   # the L1 weights tried for the L1-only variant
BETAS = (3e-5, 1e-4, 3e-4, 1e-3)          # the log-prob weights tried for the log-prob-only variant


def tune(flow, val, iters, lr, bits=None):
    """Each variant tuned by validation PSNR at the same iteration count: CS lambda; lambda
    of L1 only; beta of log-prob only; and the combined variant over the 3 x 3 grid around
    those two optima (lambda / 10, / 3, x 1; beta / 3, x 1, x 3), since the two penalties
    share the work."""
    ref = np.abs(val["imgs"])
    best = {}
    grid = {lam: mean_psnr(cs(val, lam), ref) for lam in (1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3)}
    best["cs_lamda"] = max(grid, key=grid.get)
    print("CS lambda:", {k: round(v, 2) for k, v in grid.items()})
    base = FlowSolverConfig(iters=iters, lr=lr, bits=bits)

    def flow_psnr(variant, lamda=0.0, beta=0.0):
        return mean_psnr(run_flow(flow, val, variant, FlowSolverConfig(**{**base.to_dict(), "lamda": lamda,
                                                                          "beta": beta})), ref)
    grid = {lam: flow_psnr("l1", lamda=lam) for lam in LAMDAS}
    print("L1-only lambda:", {k: round(v, 2) for k, v in grid.items()}, flush=True)
    best["lamda_l1"] = max(grid, key=grid.get)
    val_psnr = {"l1": grid[best["lamda_l1"]]}
    grid = {b: flow_psnr("logprob", beta=b) for b in BETAS}
    print("log-prob-only beta:", {k: round(v, 2) for k, v in grid.items()}, flush=True)
    best["beta_logprob"] = max(grid, key=grid.get)
    val_psnr["logprob"] = grid[best["beta_logprob"]]
    pairs = [(best["lamda_l1"] * f, best["beta_logprob"] * g) for f in (0.1, 1 / 3, 1.0) for g in (1 / 3, 1.0, 3.0)]
    grid = {(float(f"{lam:.3g}"), float(f"{b:.3g}")): flow_psnr("l1+logprob", lam, b) for lam, b in pairs}
    print("L1 + log-prob (lambda, beta):", {k: round(v, 2) for k, v in grid.items()}, flush=True)
    best["lamda"], best["beta"] = max(grid, key=grid.get)
    val_psnr["l1+logprob"] = grid[(best["lamda"], best["beta"])]
    best["variant"] = max(val_psnr, key=val_psnr.get)  # the default variant: best on validation
    return best


def validation_set(bits, a):
    """The validation slices (SIAT 150 on) of tuning and of the iteration curves."""
    return flow_multicoil(np.arange(150, 150 + a.n_val), bits, accel=a.accel, seed=777)


def psnr_curves(flow, bits, a, solvers, every=100):
    """Validation PSNR of each variant every ``every`` iterations up to ``a.curve``."""
    val = validation_set(bits, a)
    ref = np.abs(val["imgs"])
    curves = {}
    for v in VARIANTS:
        cfg = dataclasses.replace(solvers[v], iters=a.curve)
        curve = {}
        flow_reconstruct(flow, val["ksp"], val["maps"], val["masks"], v, cfg, snapshot_every=every,
                         snapshot=lambda it, x: curve.__setitem__(it, mean_psnr(x, ref)))
        curves[v] = curve
        lam, beta = weights_for(v, cfg)
        print(f"{v:11s} (lambda {lam:g}, beta {beta:g}): "
              + " ".join(f"{it}:{p:.2f}" for it, p in curve.items()), flush=True)
    best = {v: max(c, key=c.get) for v, c in curves.items()}
    print(f"\nvalidation slices 150-{149 + a.n_val}; PSNR dB at iteration (every {every})")
    for v, it in best.items():
        print(f"best {v}: {curves[v][it]:.2f} dB at {it} iterations")
    gain = curves["l1+logprob"][best["l1+logprob"]] - curves["l1"][best["l1"]]
    print(f"L1 + log-prob vs L1 only, each at its best iteration count: {gain:+.2f} dB")
    for it in curves["l1"]:
        print(f"  at {it:5d} iterations: {curves['l1+logprob'][it] - curves['l1'][it]:+.2f} dB")


def prior_check(flow, bits, a, solvers):
    """log p per pixel of the reference, perturbed references and each variant's result."""
    from scipy.ndimage import gaussian_filter

    from MRISynthLib.training.flow import dequantise
    val = validation_set(bits, a)
    ref = np.abs(val["imgs"]).astype(np.float32)
    rng = np.random.default_rng(0)

    def logp(x):   # per pixel, of values in the prior's space
        with torch.no_grad():
            return float(flow.log_prob(torch.from_numpy(np.asarray(x, np.float32))[:, None]).mean()) / ref[0].size

    deq = dequantise(ref, bits, rng)   # (k + u) / 2^b: already in the prior's space
    rows = {"reference": ref, "reference, dequantised": from_prior_space(deq, bits, clip=False),
            "reference, blurred (sigma 0.7 px)": np.stack([gaussian_filter(r, 0.7) for r in ref]),
            "reference + noise (sigma 0.02)": ref + rng.normal(0.0, 0.02, ref.shape).astype(np.float32)}
    for v in VARIANTS:
        rows[f"flow {v}"] = np.abs(run_flow(flow, val, v, solvers[v]))
    # each image as the solver's penalty sees it: mapped to the prior's space (recon.flow)
    prior_space = {name: deq if name == "reference, dequantised"
                   else to_prior_space(np.clip(imgs, 0.0, 1.0), solvers["l1"].bits) for name, imgs in rows.items()}
    print(f"\nvalidation slices 150-{149 + a.n_val}, {bits}-bit: the prior's log p (nats/pixel) and PSNR")
    for name, imgs in rows.items():
        print(f"{name:36s} log p {logp(prior_space[name]):7.3f}   PSNR {mean_psnr(imgs, ref):6.2f} dB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="shipped flow model id")
    src.add_argument("--ckpt", help="flow training checkpoint")
    ap.add_argument("--bits", type=int, help="bit depth of the data (default: the model's)")
    ap.add_argument("--accel", type=float, default=4.0)
    ap.add_argument("--n", type=int, default=20, help="test slices")
    ap.add_argument("--n-val", type=int, default=3, help="validation slices used for tuning")
    ap.add_argument("--iters", type=int, default=None, help="solver iterations (default: tuned/stored or 300)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--tune", action="store_true", help="tune lambda/beta on validation slices first")
    ap.add_argument("--unrolled", action="append", default=[], help="unrolled model id(s) to compare")
    ap.add_argument("--update-catalog", action="store_true")
    ap.add_argument("--figure", default=None, help="montage of the results with error maps")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("--curve", type=int, default=None, metavar="N",
                    help="only: validation PSNR of each variant every 100 iterations up to N")
    ap.add_argument("--prior-check", action="store_true",
                    help="only: the prior's log-density of the reference, perturbed references and the results")
    a = ap.parse_args()
    torch.set_num_threads(2)
    card = None
    if a.model:
        flow, card = load_flow(a.model, "cpu")
        bits = a.bits or int(card.training["bits"])
        stored = card.training.get("solver", {})
    else:
        st = torch.load(a.ckpt, weights_only=False)
        flow = ImageFlow(FlowConfig(**st["config"]))
        flow.load_state_dict(st["model"])
        flow.eval()
        bits = a.bits or st["train_config"]["bits"]
        stored = {}
    settings = {**stored, **({"iters": a.iters} if a.iters else {}), **({"lr": a.lr} if a.lr else {})}
    if a.tune or not stored:   # new tuning: the image mapped to the prior's grey-level bins (recon.flow)
        settings["bits"] = bits
    solver = flow_solver_config(settings)
    bpd = validate_bpd(flow, siat_magnitudes(np.arange(150, 160), bits), bits)
    print(f"flow prior: validation NLL {bpd:.3f} bits/dim ({bits}-bit SIAT 150-159)")
    default_variant = card.training.get("solver_variant", "l1+logprob") if card else "l1+logprob"
    if a.tune:
        t0 = time.perf_counter()
        val = validation_set(bits, a)
        best = tune(flow, val, solver.iters, solver.lr, solver.bits)
        settings.update({k: best[k] for k in ("cs_lamda", "lamda_l1", "beta_logprob", "lamda", "beta")})
        default_variant = best["variant"]
        print(f"tuned in {time.perf_counter() - t0:.0f} s: {best}")
    # each variant's weights as the task picks them (lamda_l1 / beta_logprob for the single-penalty ones)
    solvers = {v: flow_solver_config(settings, variant=v) for v in VARIANTS}
    solver, lamda_l1, beta_lp = solvers["l1+logprob"], solvers["l1"].lamda, solvers["logprob"].beta
    cs_lamda = settings.get("cs_lamda", 2e-3)
    if a.curve:
        return psnr_curves(flow, bits, a, solvers)
    if a.prior_check:
        return prior_check(flow, bits, a, solvers)
    test_idx = np.arange(160, 160 + a.n)
    d = flow_multicoil(test_idx, bits, accel=a.accel, seed=12345)
    ref = np.abs(d["imgs"])
    methods = {
        "zero-filled": lambda: np.stack([C.zero_filled(d["ksp"][i], d["maps"][i], d["masks"][i])
                                         for i in range(a.n)]),
        "L1-wavelet CS": lambda: cs(d, cs_lamda),
    }
    from MRISynthLib.training.unrolled import normalise
    for mid in a.unrolled:
        net, _ = load_unrolled(mid, "cpu")

        def run(net=net):
            dn = normalise(d)
            with torch.no_grad():
                t = lambda k: torch.from_numpy(np.ascontiguousarray(dn[k]))  # noqa: E731
                return net(t("ksp"), t("maps"), t("masks")).numpy() * dn["scale"]
        methods[f"unrolled ({mid})"] = run
    for variant in ("l1", "logprob", "l1+logprob"):
        methods[f"flow {variant}"] = lambda v=variant: run_flow(flow, d, v, solvers[v])
    print(f"\n{a.n} held-out SIAT slices (160-{159 + a.n}), 80x64 {bits}-bit magnitudes, 8 coils, SNR 40, "
          f"vd1d R={a.accel:g}; flow: {solver.iters} Adam iterations, lr {solver.lr:g}; L1 only: lambda {lamda_l1:g}; "
          f"log-prob only: beta {beta_lp:g}; L1 + log-prob: lambda {solver.lamda:g}, beta {solver.beta:g}; "
          f"CS lambda {cs_lamda:g}\n")
    print(f"{'method':44s} {'PSNR dB':>14s} {'SSIM':>6s} {'NRMSE':>7s} {'s/slice':>8s}")
    recs, results = {}, {}
    for name, f in methods.items():
        t0 = time.perf_counter()
        out = f()
        dt = (time.perf_counter() - t0) / a.n
        s = np.array([scores(o, r) for o, r in zip(out, ref)])
        recs[name] = out
        m, sd = s.mean(0), s.std(0)
        results[name] = {"psnr_mean": round(float(m[0]), 2), "psnr_std": round(float(sd[0]), 2),
                         "ssim_mean": round(float(m[1]), 3), "nrmse_mean": round(float(m[2]), 4),
                         "s_per_slice_cpu": round(dt, 3)}
        print(f"{name:44s} {m[0]:7.2f} +/- {sd[0]:4.2f} {m[1]:6.3f} {m[2]:7.4f} {dt:8.3f}", flush=True)
    gain = results["flow l1+logprob"]["psnr_mean"] - results["flow l1"]["psnr_mean"]
    print(f"\nL1 + log-prob vs L1 only: {gain:+.2f} dB (target >= +1 dB)")
    for name in results:
        if name.startswith("unrolled"):
            print(f"{name} vs flow L1 + log-prob: "
                  f"{results[name]['psnr_mean'] - results['flow l1+logprob']['psnr_mean']:+.2f} dB")
    if a.json:
        Path(a.json).write_text(json.dumps({"bits": bits, "val_bits_per_dim": round(bpd, 4), "results": results,
                                            "solver": solver.to_dict(), "lamda_l1": lamda_l1,
                                            "beta_logprob": beta_lp, "cs_lamda": cs_lamda}, indent=2))
    if a.update_catalog and card is not None:
        from MRISynthLib import catalog
        cards = catalog.load_catalog()
        c = cards[card.id]
        c.training = {**c.training, "val_bits_per_dim": round(bpd, 4), "solver_variant": default_variant,
                      "solver": {**solver.to_dict(), "lamda_l1": lamda_l1, "beta_logprob": beta_lp,
                                 "cs_lamda": cs_lamda}}
        c.metrics = {"test_set": f"SIAT slices 160-{159 + a.n}, 80x64 {bits}-bit, vd1d R={a.accel:g} (6 centre lines), "
                                 "8 coils, SNR 40", **{k: v for k, v in results.items()},
                     "l1_logprob_minus_l1_db": round(gain, 2)}
        c.timing = {"cpu_s_per_slice": results[f"flow {default_variant}"]["s_per_slice_cpu"],
                    "note": f"{solver.iters} iterations, {a.n} slices in one batch, 2 CPU threads"}
        catalog.save_catalog(cards)
        print("catalog updated")
    if a.figure:
        from MRISynthLib.viz import montage
        i = 0
        names = list(recs)
        row = [ref[i]] + [np.abs(recs[k][i]) for k in names]
        err = [np.zeros_like(ref[i])] + [np.abs(np.abs(recs[k][i]) - ref[i]) for k in names]
        titles = {(0, j + 1): f"{k.replace(' (', chr(10) + '(')}\n{psnr(np.abs(recs[k][i]), ref[i], data_range=1.0):.1f} dB"
                  for j, k in enumerate(names)}
        montage([row, err], a.figure, row_titles=["image (0-1)", "|error| (0-0.25)"],
                col_titles=["reference"] + [""] * len(names), cmaps=["gray"] * len(row), robust=False,
                panel_titles=titles, row_limits=[(0.0, 1.0), (0.0, 0.25)])
        print(f"figure: {a.figure}")


if __name__ == "__main__":
    main()
