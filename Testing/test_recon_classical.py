import numpy as np
import pytest
import torch

from MRISynthLib.physics import masks, sense
from MRISynthLib.recon import classical as C


def phantom(n=48):
    yy, xx = np.mgrid[:n, :n]
    img = (np.hypot(yy - n / 2, xx - n / 2 + 2) < n / 3) * 1.0 + (np.hypot(yy - n / 2 + 4, xx - n / 2 - 5) < n / 8) * 0.5
    return (img * np.exp(0.3j)).astype(np.complex128)


def test_cg_matches_a_direct_solve_and_converges():
    rng = np.random.default_rng(0)
    n = 8
    maps = sense.birdcage_maps(3, (n, n)).astype(np.complex128)
    mask = (rng.uniform(size=(n, n)) > 0.5).astype(float)
    y = sense.sense_forward(rng.standard_normal((n, n)) + 0j, maps, mask)
    lam = 0.05
    # dense matrix of A^H A + lam I from the operator
    cols = []
    for i in range(n * n):
        e = np.zeros(n * n, complex)
        e[i] = 1
        cols.append((sense.sense_adjoint(sense.sense_forward(e.reshape(n, n), maps, mask), maps, mask)).ravel())
    M = np.stack(cols, 1) + lam * np.eye(n * n)
    direct = np.linalg.solve(M, sense.sense_adjoint(y, maps, mask).ravel()).reshape(n, n)
    x = C.cg_sense(y, maps, mask, lamda=lam, iters=200, tol=1e-12)
    np.testing.assert_allclose(x, direct, atol=1e-8)
    _, hist = C.conjugate_gradient(lambda v: (M @ v.ravel()).reshape(n, n), direct * 0 + 1, iters=100, tol=1e-10)
    assert hist[-1] < 1e-8 * hist[0]
    # torch path (differentiable data consistency for the unrolled networks)
    Mt = torch.from_numpy(M)
    xt, _ = C.conjugate_gradient(lambda v: (Mt @ v.reshape(-1)).reshape(n, n), torch.ones(n, n, dtype=torch.complex128),
                                 iters=200, tol=1e-12)
    np.testing.assert_allclose(xt.numpy(), np.linalg.solve(M, np.ones(n * n)).reshape(n, n), atol=1e-8)


def test_l1_wavelet_cs_matches_sigpy_and_beats_zero_filled():
    sigpy_app = pytest.importorskip("sigpy.mri.app", reason="sigpy is the independent reference")
    n = 48
    img = phantom(n)
    maps = sense.birdcage_maps(4, (n, n)).astype(np.complex128)
    mask = masks.poisson_disc_2d((n, n), 4, calib=10, seed=0).array.astype(float)
    rng = np.random.default_rng(1)
    y = sense.sense_forward(img, maps, mask) + 0.01 * mask * (rng.standard_normal((4, n, n)) + 1j * rng.standard_normal((4, n, n)))
    lam = 0.005
    mine = C.l1_wavelet_cs(y, maps, mask, lamda=lam, iters=200)
    ref = sigpy_app.L1WaveletRecon(y, maps, lam, weights=mask, max_iter=200, show_pbar=False).run()
    assert np.linalg.norm(mine - ref) / np.linalg.norm(ref) < 1e-4
    zf = C.zero_filled(y, maps, mask)
    err = lambda x: np.linalg.norm(x - img) / np.linalg.norm(img)  # noqa: E731
    assert err(mine) < 0.6 * err(zf)
    # the objective decreases along the iterations
    W = C.Wavelet((n, n))
    objs = []
    C.l1_wavelet_cs(y, maps, mask, lamda=lam, iters=30, callback=lambda k, x: objs.append(
        0.5 * np.linalg.norm(sense.sense_forward(x, maps, mask) - y) ** 2 + lam * np.abs(W.forward(x)).sum()))
    assert objs[-1] < objs[0] and objs[-1] <= min(objs) * 1.001


def test_wavelet_adjoint_and_perfect_reconstruction():
    rng = np.random.default_rng(2)
    W = C.Wavelet((20, 26))
    x = rng.standard_normal((20, 26))
    np.testing.assert_allclose(W.adjoint(W.forward(x)), x, atol=1e-10)


def test_estimated_maps_match_the_true_ones_up_to_a_common_phase():
    n = 64
    img = phantom(n)
    maps = sense.birdcage_maps(6, (n, n)).astype(np.complex128)
    mask = masks.variable_density_1d(n, 3, n_center=20, seed=0).for_kspace(n)
    y = sense.sense_forward(img, maps, mask)
    sx, sy = C.acs_region(mask, (n, n))
    assert (sx.stop - sx.start, sy.stop - sy.start) == (n, 20)
    est = C.estimate_maps(y, mask)
    inside = np.abs(img) > 0.5
    inside[:, :4] = inside[:, -4:] = False
    coherence = np.abs((est.conj() * maps).sum(0))[inside]
    assert np.median(coherence) > 0.95
    # reconstruction with estimated maps is close to the one with true maps
    rec = C.cg_sense(y, est, mask, lamda=1e-4, iters=40)
    ref = C.cg_sense(y, maps, mask, lamda=1e-4, iters=40)
    assert np.linalg.norm(np.abs(rec)[inside] - np.abs(ref)[inside]) / np.linalg.norm(np.abs(ref)[inside]) < 0.1
    with pytest.raises(ValueError, match="ACS"):
        C.estimate_maps(y, masks.variable_density_1d(n, 3, n_center=2, seed=0).for_kspace(n))


def test_zero_filled_rss_without_maps():
    n = 32
    img = phantom(n)
    maps = sense.birdcage_maps(4, (n, n))
    y = sense.sense_forward(img, maps)
    np.testing.assert_allclose(C.zero_filled(y), np.abs(img), atol=1e-5)


def test_cli_undersample_then_recon_keeps_geometry_and_improves_on_zero_filled(tmp_path):
    from MRISynthLib.cli import main
    from MRISynthLib.data import io
    from MRISynthLib.data.hdf5 import read_fastmri
    from MRISynthLib.metrics import nrmse

    img = np.stack([np.abs(phantom(64)), np.abs(phantom(64))[::-1]]).astype(np.float32)
    vol = io.Volume(img, spacing=(0.9, 0.9, 5.0), origin=(1.0, 2.0, 3.0))
    src = io.write_volume(vol, tmp_path / "img.nrrd")
    h5 = tmp_path / "k.h5"
    assert main(["undersample", "-i", str(src), "-o", str(h5), "--accel", "3", "--coils", "6", "--snr", "60",
                 "--center", "16", "--save-maps"]) == 0
    d = read_fastmri(h5)
    assert d["kspace"].shape == (2, 6, 64, 64) and d["mask"].shape == (64,)
    assert d["attrs"]["acceleration"] == pytest.approx(64 / round(64 / 3))
    errs = {}
    for method in ("zero-filled", "cg-sense", "cs", "unrolled"):
        out = tmp_path / f"{method}.nrrd"
        assert main(["recon", "-i", str(h5), "-o", str(out), "--method", method, "--quiet",
                     "--phase", str(tmp_path / f"{method}_phase.nrrd")]) == 0
        r = io.read_volume(out)
        assert r.array.shape == img.shape and r.spacing == vol.spacing and r.origin == vol.origin
        errs[method] = nrmse(r.array, img)
    assert errs["cs"] < 0.8 * errs["zero-filled"] and errs["cg-sense"] < errs["zero-filled"]
    assert errs["unrolled"] < 0.8 * errs["zero-filled"]  # the shipped network, on a fastMRI-layout file
    # without the true maps, CG-SENSE with maps estimated from the 16 ACS lines still helps
    out = tmp_path / "est.nrrd"
    assert main(["recon", "-i", str(h5), "-o", str(out), "--method", "cg-sense", "--estimate-maps", "--quiet"]) == 0
    assert nrmse(io.read_volume(out).array, img) < errs["zero-filled"]
    bad = tmp_path / "bad.h5"
    import h5py
    with h5py.File(bad, "w") as f:
        f["x"] = np.zeros(3)
    assert main(["recon", "-i", str(bad), "-o", str(tmp_path / "x.nrrd")]) == 2


def test_unrolled_model_choice_follows_the_acceleration():
    from MRISynthLib.tasks.recon import load_unrolled

    assert load_unrolled(None, "cpu", accel=4.2)[1].training["acceleration"] == 4
    assert load_unrolled(None, "cpu", accel=7.5)[1].training["acceleration"] == 8
    # the mask family decides first: a 1D line mask never gets the Poisson-disc model, and back
    assert load_unrolled(None, "cpu", accel=4, family="1d")[1].training["mask_kind"] == "vd1d"
    assert load_unrolled(None, "cpu", accel=4, family="2d")[1].training["mask_kind"] == "poisson2d"
    from MRISynthLib.physics.masks import make_mask
    from MRISynthLib.tasks.recon import mask_family
    assert mask_family(make_mask("vd1d", (64, 80), 4).for_kspace(64)) == "1d"
    assert mask_family(make_mask("poisson2d", (64, 80), 4).for_kspace(64)) == "2d"


def test_classical_methods_default_to_the_weights_tuned_at_the_nearest_acceleration():
    from MRISynthLib.physics.masks import make_mask
    from MRISynthLib.tasks.recon import TUNED_LAMDA, default_lamda, reconstruct

    r4, r8 = (make_mask("vd1d", (64, 64), r, center=4, seed=1).for_kspace(64) for r in (4, 7.5))
    assert default_lamda("cs", r4) == TUNED_LAMDA[("cs", "1d")][4.0]
    assert default_lamda("cs", r8) == TUNED_LAMDA[("cs", "1d")][8.0] != TUNED_LAMDA[("cs", "1d")][4.0]
    assert default_lamda("cg-sense", r8) == TUNED_LAMDA[("cg-sense", "1d")][8.0]
    p4 = make_mask("poisson2d", (64, 64), 4, seed=1).for_kspace(64)
    assert default_lamda("cs", p4) == TUNED_LAMDA[("cs", "2d")][4.0]
    # reconstruct uses them when no lamda is given
    maps = sense.birdcage_maps(4, (64, 64))
    k = sense.sense_forward(phantom(64), maps, r8)
    for method in ("cs", "cg-sense"):
        default = reconstruct(k, mask=r8, maps=maps, method=method, iters=5)
        tuned = reconstruct(k, mask=r8, maps=maps, method=method, iters=5, lamda=default_lamda(method, r8))
        other = reconstruct(k, mask=r8, maps=maps, method=method, iters=5, lamda=0.05)
        np.testing.assert_allclose(default, tuned)
        assert not np.allclose(default, other)
