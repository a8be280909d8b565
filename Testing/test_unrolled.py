import numpy as np
import pytest
import torch

from MRISynthLib.models.unrolled import UnrolledConfig, UnrolledNet, UNetDenoiser, data_consistency
from MRISynthLib.physics import masks, sense
from MRISynthLib.physics.fourier import fft2c


def _problem(b=2, c=4, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    img = torch.stack([((yy - n / 2 + i) ** 2 + (xx - n / 2) ** 2 < (n / 3) ** 2).double() for i in range(b)])
    img = img * torch.exp(1j * 0.2 * torch.randn(b, 1, 1, generator=g, dtype=torch.float64))
    maps = torch.from_numpy(sense.birdcage_maps(c, (n, n)).astype(np.complex128)).expand(b, -1, -1, -1)
    mask = torch.from_numpy(masks.variable_density_1d(n, 3, n_center=8, seed=seed).for_kspace(n)).double()
    y = sense.sense_forward(img, maps, mask)
    return img, maps, mask, y


def test_data_consistency_is_exact_on_sampled_kspace_for_large_mu():
    img, maps1, mask, _ = _problem(c=1)
    maps1 = torch.ones_like(maps1)
    y = sense.sense_forward(img, maps1, mask)
    z = torch.randn_like(img)  # a wrong denoiser output
    aty = sense.sense_adjoint(y, maps1, mask)
    x = data_consistency(z, aty, maps1, mask, mu=torch.tensor(1e8, dtype=torch.float64), iters=20)
    kx = fft2c(x)
    m = mask.bool().expand_as(kx)
    assert torch.allclose(kx[m], y[:, 0][m], atol=1e-6)
    # exact closed form for a single coil: sampled (mu y + F z) / (mu + 1), unsampled F z
    mu = 1e4
    x = data_consistency(z, aty, maps1, mask, mu=torch.tensor(mu, dtype=torch.float64), iters=20)
    kx, kz = fft2c(x), fft2c(z)
    assert torch.allclose(kx[m], (mu * y[:, 0][m] + kz[m]) / (mu + 1), atol=1e-8)
    assert torch.allclose(kx[~m], kz[~m], atol=1e-8)
    # mu -> 0 returns the denoiser output
    x0 = data_consistency(z, aty, maps1, mask, mu=torch.tensor(1e-9, dtype=torch.float64), iters=5)
    assert torch.allclose(x0, z, atol=1e-6)


@pytest.mark.parametrize("n", [32, 27])
def test_data_consistency_equals_cg_on_the_centred_sense_operator(n):
    """The shift-free CG of data_consistency against CG written with the SENSE operators."""
    from MRISynthLib.recon.classical import conjugate_gradient

    img, maps, _, _ = _problem(n=n)
    mask = torch.from_numpy(masks.variable_density_1d(n, 3, n_center=6, seed=1).for_kspace(n)).double()
    y = sense.sense_forward(img, maps, mask) + 0.01 * torch.randn(2, 4, n, n, dtype=torch.complex128)
    aty = sense.sense_adjoint(y, maps, mask)
    z = img + 0.1 * torch.randn_like(img)
    mu = torch.tensor(2.0, dtype=torch.float64)
    ref, _ = conjugate_gradient(lambda v: mu * sense.sense_adjoint(sense.sense_forward(v, maps, mask), maps, mask) + v,
                                mu * aty + z, x0=z, iters=6, tol=1e-7)
    out = data_consistency(z, aty, maps, mask, mu, iters=6, x0=z)
    assert torch.allclose(out, ref, atol=1e-12)
    # gradients reach the denoiser output and mu through it
    z.requires_grad_(True)
    mu.requires_grad_(True)
    data_consistency(z, aty, maps, mask, mu, iters=3).abs().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and mu.grad is not None and mu.grad != 0


@pytest.mark.parametrize("den", ["resnet", "unet"])
def test_unrolled_shapes_and_weight_sharing(den):
    img, maps, mask, y = _problem(n=28)  # not a multiple of 8: the U-Net pads and crops
    shared = UnrolledNet(UnrolledConfig(denoiser=den, unrolls=3, width=8, blocks=2, shared=True)).double()
    sep = UnrolledNet(UnrolledConfig(denoiser=den, unrolls=3, width=8, blocks=2, shared=False)).double()
    n_sh = sum(p.numel() for p in shared.parameters())
    n_sep = sum(p.numel() for p in sep.parameters())
    assert n_sep - 1 == 3 * (n_sh - 1)
    out = shared(y, maps, mask)
    assert out.shape == img.shape and out.is_complex()
    with torch.no_grad():                     # the channels-last inference layout: same values
        assert torch.allclose(shared(y, maps, mask), out, atol=1e-10)
    assert UNetDenoiser(8)(torch.randn(1, 2, 28, 20)).shape == (1, 2, 28, 20)


def test_output_follows_a_global_phase_of_the_data():
    """A global phase of the k-space turns the output by the same phase (the denoiser alone
    is not equivariant; the network normalises the phase around it)."""
    torch.manual_seed(0)
    img, maps, mask, y = _problem(n=24)
    net = UnrolledNet(UnrolledConfig(unrolls=2, width=8, blocks=1, cg_iters=3)).double()
    with torch.no_grad():
        out = net(y, maps, mask)
        for theta in (np.pi, 2.0):
            turned = net(y * np.exp(1j * theta), maps, mask)
            assert torch.allclose(turned, out * np.exp(1j * theta), atol=1e-10)
        assert torch.isfinite(net(torch.zeros_like(y), maps, mask)).all()   # no phase to take: no NaN


def test_separate_weights_start_from_a_shared_network():
    from MRISynthLib.models.unrolled import expand_state

    img, maps, mask, y = _problem(n=24)
    shared = UnrolledNet(UnrolledConfig(unrolls=3, width=8, blocks=1, cg_iters=3)).double()
    sep = UnrolledNet(UnrolledConfig(unrolls=3, width=8, blocks=1, cg_iters=3, shared=False)).double()
    with torch.no_grad():
        assert not torch.allclose(sep(y, maps, mask), shared(y, maps, mask))
        sep.load_state_dict(expand_state(shared.state_dict(), sep.cfg))
        assert torch.allclose(sep(y, maps, mask), shared(y, maps, mask), atol=1e-12)
    again = expand_state(sep.state_dict(), sep.cfg)            # already separate: unchanged
    assert all(torch.equal(again[k], v) for k, v in sep.state_dict().items())


def test_added_unrolls_start_as_identities_after_the_trained_ones():
    from MRISynthLib.models.unrolled import c2r, expand_state

    torch.manual_seed(0)
    img, maps, mask, y = _problem(n=24)
    two = UnrolledNet(UnrolledConfig(unrolls=2, width=8, blocks=1, cg_iters=3, shared=False)).double()
    three = UnrolledNet(UnrolledConfig(unrolls=3, width=8, blocks=1, cg_iters=3, shared=False)).double()
    three.load_state_dict(expand_state(two.state_dict(), three.cfg))
    x = c2r(img)
    with torch.no_grad():
        for u in range(2):                                     # the trained unrolls are kept
            assert torch.equal(three.denoisers[u](x), two.denoisers[u](x))
        assert torch.equal(three.denoisers[2](x), x)           # the added one is the identity
        assert not torch.equal(three.denoisers[2].head(x), torch.zeros_like(three.denoisers[2].head(x)))
        # so the grown network is the old one followed by one more data-consistency step:
        # no farther from the data than the old one
        res = lambda out: (sense.sense_forward(out, maps, mask) - y).norm()  # noqa: E731
        assert res(three(y, maps, mask)) <= res(two(y, maps, mask)) * (1 + 1e-9)
    # the added unroll trains: its final layer gets a gradient
    loss = (three(y, maps, mask) - img).abs().pow(2).mean()
    loss.backward()
    assert three.denoisers[2].tail.weight.grad.abs().sum() > 0


def test_bf16_denoisers_stay_close_to_fp32():
    from MRISynthLib.device import native_bf16, resolve_precision
    from MRISynthLib.tasks.recon import reconstruct

    torch.manual_seed(0)
    img, maps, mask, y = _problem(n=32)
    net = UnrolledNet(UnrolledConfig(unrolls=2, width=16, blocks=2, cg_iters=4))
    y32, maps32, mask32 = y.to(torch.complex64), maps.to(torch.complex64), mask.float()
    with torch.no_grad():
        full = net(y32, maps32, mask32)
        half = net(y32, maps32, mask32, "bf16")
    assert not torch.equal(full, half)                        # the denoisers did run in bf16
    assert ((half - full).norm() / full.norm()).item() < 2e-2
    with pytest.raises(ValueError, match="precision"):
        net(y32, maps32, mask32, "fp16")
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("half", "cpu")
    # bf16 asked for on a CPU without AMX (emulated, slow) is honoured with a warning naming the CPU
    from unittest import mock
    import warnings
    with mock.patch("MRISynthLib.device.native_bf16", return_value=False), pytest.warns(UserWarning, match="without AMX"):
        assert resolve_precision("bf16", "cpu") == "bf16"
    with mock.patch("MRISynthLib.device.native_bf16", return_value=True), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cpu") == "bf16"
        assert resolve_precision("auto", "cpu") == "bf16"
    from MRISynthLib.device import cpu_name
    assert cpu_name().endswith(")") and torch.backends.cpu.get_cpu_capability() in cpu_name()
    # the task function passes the choice on
    k = y32[0].numpy()
    a = reconstruct(k, mask=mask32.numpy(), maps=maps32[0].numpy(), method="unrolled", model=net, precision="fp32")
    b = reconstruct(k, mask=mask32.numpy(), maps=maps32[0].numpy(), method="unrolled", model=net, precision="bf16")
    assert not np.array_equal(a, b) and np.linalg.norm(a - b) < 2e-2 * np.linalg.norm(a)
    with pytest.raises(ValueError, match="precision"):
        reconstruct(k, mask=mask32.numpy(), maps=maps32[0].numpy(), method="unrolled", model=net, precision="x")


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    img, maps, mask, y = _problem(b=4, n=32)
    net = UnrolledNet(UnrolledConfig(unrolls=2, width=8, blocks=2, cg_iters=4)).double()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = (net(y, maps, mask) - img).abs().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    assert net.mu.item() > 0


@pytest.mark.parametrize("loss", ["supervised", "unsupervised"])
def test_trainer_lowers_its_loss_and_resumes(tmp_path, loss):
    from MRISynthLib.training.unrolled import UnrolledTrainConfig, train_unrolled, validate, normalise

    img, maps, mask, y = _problem(b=4, n=24, seed=1)
    masks_b = mask.expand(4, -1, -1)
    data = {"imgs": img.numpy().astype(np.complex64), "maps": maps.numpy().astype(np.complex64),
            "masks": masks_b.numpy().astype(np.float32), "ksp": y.numpy().astype(np.complex64)}
    cfg = UnrolledConfig(unrolls=2, width=8, blocks=1, cg_iters=3)
    tc = UnrolledTrainConfig(steps=30, batch=2, lr=3e-3, loss=loss, ckpt_every=10, val_every=15)
    torch.manual_seed(0)
    net = train_unrolled(cfg, data, tmp_path, tc, val=data, progress=False)
    rows = [r.split(",") for r in (tmp_path / f"unrolled_resnet_{loss}_loss.csv").read_text().splitlines()]
    vals = [float(r[1]) for r in rows]
    assert np.mean(vals[-5:]) < np.mean(vals[:5])
    assert [r[3] for r in rows if r[3]]  # validation NRMSE logged
    assert validate(net, normalise(data)) < 1.0
    train_unrolled(cfg, data, tmp_path, tc, progress=False)  # already done: resumes at step 30
    assert len((tmp_path / f"unrolled_resnet_{loss}_loss.csv").read_text().splitlines()) == 30


def test_cosine_schedule_holds_then_anneals_and_resumes(tmp_path):
    from MRISynthLib.training.common import cosine_lr
    from MRISynthLib.training.unrolled import UnrolledTrainConfig, train_unrolled

    assert cosine_lr(1e-3, 5, 20, start=10) == 1e-3                       # held before the decay
    assert cosine_lr(1e-3, 10, 20, start=10) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 15, 20, start=10) == pytest.approx(0.525e-3)   # half way: mean of 1 and 0.05
    assert cosine_lr(1e-3, 20, 20, start=10) == pytest.approx(0.05e-3)
    assert cosine_lr(1e-3, 99, 20, start=10) == pytest.approx(0.05e-3)    # held at the floor after it

    img, maps, mask, y = _problem(b=2, n=24, seed=2)
    data = {"imgs": img.numpy().astype(np.complex64), "maps": maps.numpy().astype(np.complex64),
            "masks": mask.expand(2, -1, -1).numpy().astype(np.float32), "ksp": y.numpy().astype(np.complex64)}
    cfg = UnrolledConfig(unrolls=1, width=4, blocks=1, cg_iters=2)
    train_unrolled(cfg, data, tmp_path, UnrolledTrainConfig(steps=4, batch=2, lr=2e-3, ckpt_every=2), progress=False)
    lr_of = lambda: torch.load(tmp_path / "unrolled_resnet_supervised_ckpt.pt", weights_only=False)["opt"]["param_groups"][0]["lr"]  # noqa: E731,E501
    assert lr_of() == 2e-3                                                  # constant schedule
    tc = UnrolledTrainConfig(steps=8, batch=2, lr=2e-3, ckpt_every=2, schedule="cosine", decay_from=4)
    train_unrolled(cfg, data, tmp_path, tc, progress=False)                 # resumes at 4, anneals to 8
    assert lr_of() == pytest.approx(cosine_lr(2e-3, 7, 8, start=4))
    with pytest.raises(ValueError, match="schedule"):
        train_unrolled(cfg, data, tmp_path, UnrolledTrainConfig(steps=9, schedule="step"), progress=False)


def test_trainer_resamples_batches_and_starts_from_given_weights(tmp_path):
    from MRISynthLib.training.unrolled import UnrolledTrainConfig, train_unrolled

    img, maps, mask, y = _problem(b=4, n=24, seed=3)
    cfg = UnrolledConfig(unrolls=2, width=8, blocks=1, cg_iters=3)
    calls = []

    def draw(idx, rng):
        calls.append(np.array(idx))
        m = torch.from_numpy(masks.variable_density_1d(24, 3, n_center=6, seed=int(rng.integers(1000))).for_kspace(24))
        k = sense.sense_forward(img[idx], maps[idx], m.double())
        return {"imgs": img[idx].numpy().astype(np.complex64), "maps": maps[idx].numpy().astype(np.complex64),
                "masks": m.expand(len(idx), -1, -1).numpy().astype(np.float32), "ksp": k.numpy().astype(np.complex64)}

    start = UnrolledNet(cfg)
    with pytest.raises(ValueError, match="n_train"):
        train_unrolled(cfg, draw, tmp_path / "a", UnrolledTrainConfig(steps=1, batch=2), progress=False)
    net = train_unrolled(cfg, draw, tmp_path / "b", UnrolledTrainConfig(steps=3, batch=2, lr=0.0), progress=False,
                         init_state=start.state_dict(), n_train=4)
    assert len(calls) == 3 and all(len(c) == 2 and c.max() < 4 for c in calls)
    # lr 0: the trained network is the one it started from, not a fresh initialisation
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in net.state_dict().items())


def test_run_origin_is_remembered_while_the_checkpoint_exists(tmp_path):
    from types import SimpleNamespace

    from MRISynthLib.training.common import run_origin

    ckpt = tmp_path / "run" / "x_ckpt.pt"
    first = SimpleNamespace(id="m", sha256="aaa", training={"steps": 1})
    second = SimpleNamespace(id="m", sha256="bbb", training={"steps": 2})   # the card after this run's export
    assert run_origin(ckpt, first)["sha256"] == "aaa"
    ckpt.write_bytes(b"")                                                    # the run has a checkpoint now
    assert run_origin(ckpt, second) == {"id": "m", "sha256": "aaa", "training": {"steps": 1}}
    ckpt.unlink()                                                            # a fresh run starts from the card
    assert run_origin(ckpt, second)["sha256"] == "bbb"
