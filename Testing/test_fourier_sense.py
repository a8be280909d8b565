import numpy as np
import pytest
import sigpy as sp
import sigpy.mri as mr
import torch

from MRISynthLib.physics import fourier as F
from MRISynthLib.physics import sense


def crandn(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex128)


def test_fft_roundtrip_parseval_and_centre(rng):
    x = crandn(rng, 3, 32, 24)
    k = F.fft2c(x)
    np.testing.assert_allclose(F.ifft2c(k), x, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(k), np.linalg.norm(x), rtol=1e-12)
    # a constant image puts all its energy at the centre sample (n // 2)
    k1 = F.fft2c(np.ones((32, 24)))
    assert np.unravel_index(np.argmax(np.abs(k1)), k1.shape) == (16, 12)
    assert abs(k1[16, 12]) == pytest.approx(np.sqrt(32 * 24))
    v = crandn(rng, 8, 10, 12)
    np.testing.assert_allclose(F.ifft3c(F.fft3c(v)), v, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(F.fft3c(v)), np.linalg.norm(v), rtol=1e-12)


def test_fft_matches_sigpy_and_torch(rng):
    x = crandn(rng, 2, 33, 20)  # odd size checks the shift convention
    np.testing.assert_allclose(F.fft2c(x), sp.fft(x, axes=(-2, -1)), atol=1e-10)
    np.testing.assert_allclose(F.ifft2c(x), sp.ifft(x, axes=(-2, -1)), atol=1e-10)
    np.testing.assert_allclose(F.fft2c(torch.from_numpy(x)).numpy(), F.fft2c(x), atol=1e-10)
    np.testing.assert_allclose(F.ifft3c(torch.from_numpy(x)).numpy(), sp.ifft(x, axes=(-3, -2, -1)), atol=1e-10)


def _dot(a, b):
    return np.vdot(a, b)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sense_adjoint_dot_product(rng, backend):
    maps = crandn(rng, 6, 20, 16)
    mask = (rng.uniform(size=(20, 16)) > 0.6).astype(np.float64)
    x = crandn(rng, 20, 16)
    y = crandn(rng, 6, 20, 16)
    if backend == "torch":
        A = sense.SenseOperator(torch.from_numpy(maps), torch.from_numpy(mask))
        ax = A.forward(torch.from_numpy(x)).numpy()
        ahy = A.adjoint(torch.from_numpy(y)).numpy()
    else:
        A = sense.SenseOperator(maps, mask)
        ax, ahy = A.forward(x), A.adjoint(y)
    lhs, rhs = _dot(ax, y), _dot(x, ahy)
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("shape", [(20, 16), (21, 15)])
def test_shifted_normal_is_the_normal_operator_in_ifftshifted_coordinates(rng, backend, shape):
    maps = crandn(rng, 5, *shape)
    mask = (rng.uniform(size=shape) > 0.5).astype(np.float64)
    x = crandn(rng, 2, *shape)
    ref = sense.SenseOperator(maps, mask).normal(x)
    if backend == "torch":
        maps, mask, x = (torch.from_numpy(v) for v in (maps, mask, x))
    out = F.fftshift2(sense.shifted_normal(maps, mask)(F.ifftshift2(x)))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-12)


def test_sense_matches_sigpy(rng):
    maps = crandn(rng, 4, 24, 18)
    mask = (rng.uniform(size=(24, 18)) > 0.5).astype(np.float64)
    x = crandn(rng, 24, 18)
    y = crandn(rng, 4, 24, 18)
    ref = mr.linop.Sense(maps, weights=mask)
    np.testing.assert_allclose(sense.sense_forward(x, maps, mask), ref * x, atol=1e-10)
    np.testing.assert_allclose(sense.sense_adjoint(y, maps, mask), ref.H * y, atol=1e-10)
    # batched torch version equals the numpy one
    xb = np.stack([x, 2 * x])
    out = sense.sense_forward(torch.from_numpy(xb), torch.from_numpy(maps), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(out[1], 2 * (ref * x), atol=1e-10)


def test_birdcage_maps_and_rss():
    maps = sense.birdcage_maps(8, (64, 48))
    assert maps.shape == (8, 64, 48) and maps.dtype == np.complex64
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, rtol=1e-5)
    # coils differ: each coil is most sensitive near its own position on the ring
    peaks = [np.unravel_index(np.argmax(np.abs(m)), m.shape) for m in maps]
    assert len(set(peaks)) == 8
    # with normalised maps, S^H S = I, so the fully sampled adjoint returns the image
    x = np.random.default_rng(0).standard_normal((64, 48)).astype(np.complex64)
    np.testing.assert_allclose(sense.sense_adjoint(sense.sense_forward(x, maps), maps), x, atol=1e-4)
    np.testing.assert_allclose(sense.rss(x[None] * maps), np.abs(x), rtol=1e-4)
    raw = sense.birdcage_maps(4, (16, 16), normalize=False)
    assert not np.allclose((np.abs(raw) ** 2).sum(0), 1.0)


def test_coil_compression_keeps_low_rank_energy(rng):
    base = crandn(rng, 2, 32, 32)
    mix = crandn(rng, 8, 2)
    ksp = np.tensordot(mix, base, axes=(1, 0))  # 8 coils, rank 2
    m = sense.coil_compression_matrix(ksp, 2)
    comp = sense.compress_coils(ksp, m)
    assert comp.shape == (2, 32, 32)
    assert np.linalg.norm(comp) == pytest.approx(np.linalg.norm(ksp), rel=1e-10)
    full = sense.compress_coils(ksp, sense.coil_compression_matrix(ksp, 8))
    assert np.linalg.norm(full) == pytest.approx(np.linalg.norm(ksp), rel=1e-10)
    with pytest.raises(ValueError):
        sense.coil_compression_matrix(ksp, 9)


def test_aliased_image_equals_single_coil_zero_filled(rng):
    m = crandn(rng, 32, 32)
    mask = np.zeros((32, 32))
    mask[:, ::2] = 1
    b = F.alias(m, mask)
    np.testing.assert_allclose(b, sense.sense_adjoint(sense.sense_forward(m, np.ones((1, 32, 32)), mask),
                                                      np.ones((1, 32, 32)), mask), atol=1e-12)
    # every other ky line: two half-intensity copies shifted by half the FOV along y
    np.testing.assert_allclose(b, 0.5 * (m + np.roll(m, 16, axis=1)), atol=1e-12)
