"""Normalizing-flow prior: invertibility, log-determinant, density, training, solver, CLI."""
import numpy as np
import pytest
import torch

from MRISynthLib.models.flow import FlowConfig, ImageFlow, squeeze, unsqueeze
from MRISynthLib.recon.flow import FlowSolverConfig, _centre_mask, flow_reconstruct, weights_for


def tiny_flow(levels=2, steps=2, width=8, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    f = ImageFlow(FlowConfig(levels=levels, steps=steps, width=width, bins=4))
    with torch.no_grad():  # move away from the identity initialisation
        for p in f.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return f.eval().to(dtype)


def test_squeeze_round_trip():
    x = torch.randn(2, 3, 8, 6)
    assert squeeze(x).shape == (2, 12, 4, 3)
    assert torch.equal(unsqueeze(squeeze(x)), x)


def test_flow_round_trip_and_opposite_log_dets():
    f = tiny_flow(levels=3)
    x = torch.rand(3, 1, 16, 24)
    z, ld = f(x)
    assert z.shape == (3, 16 * 24)
    xr, ld_inv = f.inverse(z, (16, 24))
    assert (xr - x).abs().max() < 1e-4
    assert torch.allclose(ld, -ld_inv, rtol=1e-4, atol=1e-2)
    assert (ld.abs() > 1).all()  # a non-trivial transform


def test_log_det_matches_exact_jacobian():
    f = tiny_flow(levels=2, dtype=torch.float64)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: f(v.view(1, 1, 4, 4))[0][0], x.flatten())
    exact = torch.linalg.slogdet(jac)[1]
    with torch.no_grad():
        ld = float(f(x)[1][0])
    assert abs(ld - float(exact)) < 1e-6 * max(1.0, abs(float(exact)))


def test_log_prob_is_a_density_in_one_dimension_limit():
    """For a 2x2 image the flow is a density on [0,1]^4 (up to the logit margin): a Monte
    Carlo estimate of its integral over the representable box is close to 1."""
    f = tiny_flow(levels=1, steps=1, dtype=torch.float64)
    a = f.cfg.alpha / (1 - 2 * f.cfg.alpha)
    lo, hi = -a, 1 + a
    g = torch.Generator().manual_seed(0)
    x = lo + (hi - lo) * torch.rand(200000, 1, 2, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        integral = f.log_prob(x).exp().mean() * (hi - lo) ** 4
    assert abs(float(integral) - 1) < 0.05


def test_shape_check_and_sampling():
    f = tiny_flow(levels=2)
    with pytest.raises(ValueError, match="divisible by 4"):
        f(torch.rand(1, 1, 10, 8))
    s = f.sample(2, (8, 12), generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 1, 8, 12) and s.min() >= 0 and s.max() <= 1


def test_training_lowers_bits_per_dim_and_resumes(tmp_path):
    from MRISynthLib.training.flow import FlowTrainConfig, train_flow, validate_bpd

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    imgs = np.stack([((xx - 8 - rng.integers(-2, 3)) ** 2 + (yy - 8) ** 2 < rng.integers(16, 40)).astype(np.float32)
                     * rng.choice([0.4, 0.7, 1.0]) for _ in range(32)])
    imgs = np.round(imgs * 15) / 15
    cfg = FlowConfig(levels=2, steps=2, width=16, bins=4)
    tc = FlowTrainConfig(bits=4, steps=40, batch=8, lr=3e-3, warmup=5, ckpt_every=20, val_every=20)
    untrained = validate_bpd(ImageFlow(cfg), imgs, 4)
    flow = train_flow(cfg, imgs, tmp_path, tc, val=imgs, progress=False)
    assert validate_bpd(flow, imgs, 4) < untrained - 0.5
    rows = (tmp_path / "flow_loss.csv").read_text().splitlines()
    assert len(rows) == 40
    tc.steps = 45
    train_flow(cfg, imgs, tmp_path, tc, progress=False)  # resumes at step 40
    assert len((tmp_path / "flow_loss.csv").read_text().splitlines()) == 45

    # continuing a trained flow in a new run starts from its weights (and keeps its ActNorm
    # values): the first steps of a small learning rate stay near its NLL, far below a fresh start
    tc2 = FlowTrainConfig(bits=4, steps=3, batch=8, lr=1e-5, warmup=1, ckpt_every=20, val_every=20)
    trained = validate_bpd(flow, imgs, 4)
    cont = train_flow(cfg, imgs, tmp_path / "cont", tc2, progress=False, init_state=flow.state_dict())
    fresh = train_flow(cfg, imgs, tmp_path / "fresh", tc2, progress=False)
    assert abs(validate_bpd(cont, imgs, 4) - trained) < 0.05 < validate_bpd(fresh, imgs, 4) - trained


def test_affine_copies_transform_about_the_centre():
    from MRISynthLib.training.flow import affine_copies

    yy, xx = np.mgrid[:40, :32]
    img = (((yy - 19.5) / 12) ** 2 + ((xx - 15.5) / 8) ** 2 < 1).astype(np.float32)  # centred ellipse
    rng = np.random.default_rng(0)
    same = affine_copies(img[None], 2, rng, rotate=0.0, scale=0.0, shift=0.0)
    assert same.shape == (2, 40, 32) and np.allclose(same, img, atol=1e-5)
    shifted = affine_copies(img[None], 1, np.random.default_rng(1), rotate=0.0, scale=0.0, shift=0.1)[0]
    com = lambda a: np.array([(a * yy).sum(), (a * xx).sum()]) / a.sum()  # noqa: E731
    assert 0.5 < np.abs(com(shifted) - com(img)).max() <= 0.1 * 40 + 0.5  # moved, within the shift range
    copies = affine_copies(img[None], 6, np.random.default_rng(2), rotate=30.0, scale=0.2, shift=0.0)
    areas = copies.sum((1, 2)) / img.sum()
    assert np.all(areas > 0.8 ** 2 - 0.05) and np.all(areas < 1.2 ** 2 + 0.05)  # zoom within its range
    assert all(np.abs(c - img).sum() > 5 for c in copies)  # each copy differs
    assert np.allclose(np.array([com(c) for c in copies]), com(img), atol=0.3)  # about the centre


def _problem(n=2, size=(16, 16), accel=2.0):
    from MRISynthLib.physics.masks import make_mask
    from MRISynthLib.physics.sense import birdcage_maps, sense_forward

    yy, xx = np.mgrid[:size[0], :size[1]]
    img = ((xx - size[1] / 2) ** 2 + (yy - size[0] / 2) ** 2 < 30).astype(np.float32) * 0.8 + 0.1
    imgs = np.stack([img] * n).astype(np.complex64)
    maps = np.broadcast_to(birdcage_maps(4, size), (n, 4) + size).astype(np.complex64)
    mask = make_mask("vd1d", size, accel, center=4, seed=1).for_kspace(size[0]).astype(np.float32)
    return imgs, maps, mask, sense_forward(imgs, maps, mask).astype(np.complex64)


@pytest.mark.parametrize("variant", ["l1+logprob", "l1", "logprob"])
def test_solver_lowers_its_objective(variant):
    f = tiny_flow(levels=2)
    imgs, maps, mask, k = _problem()
    hist = []
    out = flow_reconstruct(f, k, maps, mask, variant, FlowSolverConfig(lamda=0.01, beta=1e-3, iters=30, lr=0.05),
                           history=hist)
    assert out.shape == imgs.shape and out.dtype == np.complex64
    assert hist[-1] < hist[0] - 0.05 * abs(hist[0])
    assert all(p.requires_grad for p in f.parameters())  # the flow is left trainable


def test_solver_snapshots_follow_the_iterations():
    f = tiny_flow(levels=2)
    imgs, maps, mask, k = _problem()
    snaps = {}
    cfg = FlowSolverConfig(lamda=0.01, beta=1e-3, iters=20, lr=0.05)
    out = flow_reconstruct(f, k, maps, mask, "l1+logprob", cfg, snapshot_every=5,
                           snapshot=lambda it, x: snaps.__setitem__(it, x))
    assert sorted(snaps) == [5, 10, 15, 20]
    np.testing.assert_array_equal(snaps[20], out)                   # the last one is the result
    err = [np.linalg.norm(np.abs(snaps[i]) - np.abs(imgs)) for i in sorted(snaps)]
    assert not np.allclose(snaps[5], snaps[20]) and err[-1] < err[0]


def test_solver_log_prob_is_the_flows_density_of_the_image():
    """The penalty's log p(G(z)) is the change of variables the other way round: it must
    equal the flow's own log density of the image G(z) (not log p(z) + log|det dG/dz|)."""
    from MRISynthLib.recon.flow import objective_terms

    f = tiny_flow(levels=2, dtype=torch.float64)
    imgs, maps, mask, k = _problem(n=2)
    z = 0.7 * torch.randn(2, 16 * 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.no_grad():
        _, _, logp, _ = objective_terms(f, z, torch.ones(2, dtype=torch.float64), t(k.astype(np.complex128)),
                                        t(maps.astype(np.complex128)), t(np.broadcast_to(mask, (2, 16, 16))),
                                        None, (16, 16))
        x = f.inverse(z, (16, 16))[0]
        assert torch.allclose(logp, f.log_prob(x), rtol=1e-8, atol=1e-6)
        assert (f.inverse(z, (16, 16))[1].abs() > 1).all()  # the log-det matters here


def test_grey_levels_map_to_the_centres_of_the_priors_dequantisation_bins():
    """A b-bit prior saw level k / (2^b - 1) as (k + u) / 2^b: the image's levels sit at the
    bins' centres in the flow's space, the map back is clipped to [0, 1], and with ``bits``
    the solver's image is the mapped G(z) while log p stays the flow's density of G(z)."""
    from MRISynthLib.recon.flow import from_prior_space, objective_terms, to_prior_space
    from MRISynthLib.training.flow import dequantise

    levels = torch.arange(16, dtype=torch.float64) / 15
    centres = to_prior_space(levels, 4)
    deq = torch.from_numpy(dequantise(np.tile(levels.numpy(), (4000, 1)), 4, np.random.default_rng(0)))
    assert torch.allclose(centres, deq.double().mean(0), atol=0.002)        # the bins' means
    assert torch.allclose(from_prior_space(centres, 4), levels, atol=1e-12)  # round trip
    assert from_prior_space(torch.tensor([0.0, 1.0]), 4).tolist() == [0.0, 1.0]   # clipped, not -1/30
    assert to_prior_space(levels, None) is levels

    f = tiny_flow(levels=2, dtype=torch.float64)
    imgs, maps, mask, k = _problem(n=2)
    z = 0.7 * torch.randn(2, 16 * 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    args = (f, z, torch.ones(2, dtype=torch.float64), t(k.astype(np.complex128)), t(maps.astype(np.complex128)),
            t(np.broadcast_to(mask, (2, 16, 16))), None, (16, 16))
    with torch.no_grad():
        _, l1_c, lp_c, x_c = objective_terms(*args)
        _, l1_4, lp_4, x_4 = objective_terms(*args, bits=4)
        g = f.inverse(z, (16, 16))[0][:, 0]
    assert torch.equal(lp_c, lp_4)
    assert torch.allclose(x_c.real, g) and torch.allclose(x_4.real, from_prior_space(g, 4))
    assert torch.allclose(l1_4, from_prior_space(g, 4).abs().flatten(1).sum(1))
    assert not torch.allclose(x_c, x_4)


def test_solver_cancel_and_variant_check():
    from MRISynthLib.tasks import Cancelled

    with pytest.raises(ValueError, match="unknown flow variant"):
        weights_for("l2", FlowSolverConfig())
    assert weights_for("l1", FlowSolverConfig(lamda=0.1, beta=0.2)) == (0.1, 0.0)
    assert weights_for("logprob", FlowSolverConfig(lamda=0.1, beta=0.2)) == (0.0, 0.2)
    f = tiny_flow(levels=2)
    _, maps, mask, k = _problem(n=1)
    with pytest.raises(Cancelled):
        flow_reconstruct(f, k, maps, mask, cancel=lambda: True)


def test_centre_mask_keeps_the_contiguous_centre_lines():
    m = np.zeros((4, 16), np.float32)
    m[:, [1, 6, 7, 8, 9, 13]] = 1
    c = _centre_mask(m)
    assert np.flatnonzero(c[0]).tolist() == [6, 7, 8, 9]


def test_reconstruct_task_with_a_given_flow_validates_and_runs():
    from MRISynthLib.tasks.recon import reconstruct

    f = tiny_flow(levels=2)
    imgs, maps, mask, k = _problem(n=3)
    with pytest.raises(ValueError, match="beta must be"):
        reconstruct(k, mask, maps, method="flow", model=f, beta=-1.0)
    seen = []
    out = reconstruct(k, mask, maps, method="flow", model=f, iters=3, batch=2, progress_callback=seen.append)
    assert out.shape == (3, 16, 16) and np.all(np.isfinite(out))
    assert seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


def test_cli_recon_flow_with_the_shipped_prior(tmp_path):
    from MRISynthLib.cli import main
    from MRISynthLib.data import io
    from MRISynthLib.metrics import nrmse
    from MRISynthLib.training.flow import siat_magnitudes

    img = siat_magnitudes([170, 190], 8)  # held-out test slices, 80 x 64
    vol = io.Volume(img, spacing=(2.0, 3.2, 4.0), origin=(1.0, 2.0, 3.0))
    src = io.write_volume(vol, tmp_path / "img.nrrd")
    h5 = tmp_path / "k.h5"
    assert main(["undersample", "-i", str(src), "-o", str(h5), "--accel", "4", "--center", "6", "--save-maps"]) == 0
    errs = {}
    for method, extra in (("zero-filled", []), ("flow", ["--iters", "40", "--flow-variant", "l1+logprob"])):
        out = tmp_path / f"{method}.nrrd"
        assert main(["recon", "-i", str(h5), "-o", str(out), "--method", method, "--quiet"] + extra) == 0
        r = io.read_volume(out)
        assert r.array.shape == img.shape and r.spacing == vol.spacing and r.origin == vol.origin
        errs[method] = nrmse(r.array, img)
    assert errs["flow"] < 0.8 * errs["zero-filled"]
    assert main(["recon", "-i", str(h5), "-o", str(tmp_path / "x.nrrd"), "--method", "flow", "--beta", "-1"]) == 2


def test_solver_settings_come_from_the_card_then_the_arguments():
    from MRISynthLib.tasks.recon import flow_solver_config

    tuned = {"lamda": 0.002, "beta": 0.003, "iters": 150, "beta_logprob": 0.0007, "lamda_l1": 0.004,
             "cs_lamda": 0.001}
    c = flow_solver_config(tuned)
    assert (c.lamda, c.beta, c.iters) == (0.002, 0.003, 150)
    assert flow_solver_config(tuned, variant="logprob").beta == 0.0007
    assert flow_solver_config(tuned, variant="l1").lamda == 0.004
    c = flow_solver_config(tuned, lamda=0.1, beta=0.2, iters=5, variant="logprob")
    assert (c.lamda, c.beta, c.iters) == (0.1, 0.2, 5)
    assert c.bits is None and flow_solver_config({**tuned, "bits": 4}).bits == 4


def test_shipped_priors_store_their_bit_depth_with_the_tuned_weights():
    """The weights were tuned with the grey-level mapping of the prior's bit depth; the task
    must solve with the same mapping."""
    from MRISynthLib.catalog import get_card
    from MRISynthLib.tasks.recon import flow_solver_config

    for bits in (4, 8):
        card = get_card(f"flow-nsf-80x64-{bits}bit-cpu")
        assert card.training["bits"] == bits
        assert flow_solver_config(card.training["solver"]).bits == bits
