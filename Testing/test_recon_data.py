import numpy as np
import pytest

from conftest import needs_data
from MRISynthLib.data import recon_data as R
from MRISynthLib.physics import sense


def test_bit_scaling_keeps_phase_and_quantises_magnitude(rng):
    x = (rng.uniform(0.1, 1, (2, 16, 16)) * np.exp(1j * rng.uniform(-3, 3, (2, 16, 16)))).astype(np.complex64)
    q = R.bit_scale(x, 4)
    levels = np.unique(np.round(np.abs(q) * 15, 4))
    assert np.allclose(levels, np.round(levels)) and len(levels) <= 16
    np.testing.assert_allclose(np.angle(q), np.angle(x), atol=1e-5)
    with pytest.raises(ValueError):
        R.bit_scale(x, 0)


def test_area_resize_and_nearest_mask(rng):
    x = rng.standard_normal((3, 32, 24)) + 1j * rng.standard_normal((3, 32, 24))
    y = R.area_resize(x, 0.25)
    assert y.shape == (3, 8, 6)
    np.testing.assert_allclose(y[0, 0, 0], x[0, :4, :4].mean(), rtol=1e-5)  # area = block mean
    m = np.zeros((32, 24))
    m[:, ::3] = 1
    assert R.nearest_resize(m, (8, 6)).shape == (8, 6)


def test_simulated_data_follow_the_forward_model(rng):
    imgs = (rng.standard_normal((3, 64, 48)) + 1j * rng.standard_normal((3, 64, 48))).astype(np.complex64)
    cfg = R.MulticoilConfig(n_coils=4, snr=None, accel=4, center=3, scale=0.5, bits=8)
    d = R.simulate_multicoil(imgs, cfg)
    assert d["imgs"].shape == (3, 32, 24) and d["maps"].shape == (3, 4, 32, 24) and d["ksp"].shape == (3, 4, 32, 24)
    np.testing.assert_allclose((np.abs(d["maps"][0]) ** 2).sum(0), 1, rtol=1e-4)
    np.testing.assert_allclose(d["ksp"], sense.sense_forward(d["imgs"], d["maps"], d["masks"]), atol=1e-5)
    for m in d["masks"]:
        assert m[0].sum() == round(24 / 4)
    assert not np.array_equal(d["masks"][0], d["masks"][1])  # a mask per slice by default
    same = R.simulate_multicoil(imgs, R.MulticoilConfig(n_coils=4, snr=None, same_mask=True, center=6))
    assert np.array_equal(same["masks"][0], same["masks"][2])


def test_split_is_by_slice_without_overlap():
    tr, va, te = R.siat_split(R.MulticoilConfig())
    assert len(tr) == 150 and len(va) == 10 and len(te) == 40
    assert not (set(tr) & set(te)) and not (set(va) & set(te))


@needs_data("siat/siat200.h5")
def test_siat_loads_complex_slices():
    x = R.load_siat([3, 1])
    assert x.shape == (2, 256, 256) and np.iscomplexobj(x)
    assert np.abs(x).max() == pytest.approx(1.0, rel=1e-3)


def test_resampler_draws_new_masks_and_noise_of_the_same_images(rng):
    imgs = (rng.standard_normal((3, 32, 32)) + 1j * rng.standard_normal((3, 32, 32))).astype(np.complex64)
    cfg = R.MulticoilConfig(n_coils=4, snr=20, accel=4, center=4, same_mask=True)
    draw = R.resampler(imgs, cfg)
    g = np.random.default_rng(0)
    a, b = draw([0, 2], g), draw([0, 2], g)
    assert a["imgs"].shape == (2, 32, 32) and a["ksp"].shape == (2, 4, 32, 32)
    assert not np.array_equal(a["masks"][0], b["masks"][0])          # a new mask every draw ...
    assert not np.array_equal(a["masks"][0], a["masks"][1])          # ... and per slice
    for d in (a, b):
        for out, src in zip(d["imgs"], imgs[[0, 2]]):                  # the same image, turned and maybe mirrored
            ph = np.vdot(src, out) / np.vdot(src, src)
            ph_f = np.vdot(src[:, ::-1], out) / np.vdot(src, src)
            assert max(abs(ph), abs(ph_f)) == pytest.approx(1, abs=1e-5)
        noise = d["ksp"] - sense.sense_forward(d["imgs"], d["maps"], d["masks"])
        assert np.abs(noise).max() > 0                                 # noise drawn at the configured SNR
    flips = [abs(np.vdot(imgs[0], draw([0], g)["imgs"][0])) > 0.5 * np.vdot(imgs[0], imgs[0]).real
             for _ in range(20)]
    assert 0 < sum(flips) < 20                                          # both mirrored and not
