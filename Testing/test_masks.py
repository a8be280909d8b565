import numpy as np
import pytest

from MRISynthLib.physics import masks as M


@pytest.mark.parametrize("ny, accel, nc", [(256, 4, 11), (256, 8, 11), (192, 5, 11), (100, 10, 6), (64, 1, 8)])
def test_variable_density_exact_acceleration_and_centre(ny, accel, nc):
    m = M.variable_density_1d(ny, accel, n_center=nc, seed=3)
    assert m.array.shape == (ny,) and m.array.dtype == bool
    assert m.n_sampled == round(ny / accel)
    assert m.acceleration == pytest.approx(ny / round(ny / accel))
    c = ny // 2
    assert m.array[c - nc // 2:c - nc // 2 + nc].all()
    # deterministic per seed, different for another seed
    assert np.array_equal(m.array, M.variable_density_1d(ny, accel, n_center=nc, seed=3).array)
    if accel > 1:
        assert not np.array_equal(m.array, M.variable_density_1d(ny, accel, n_center=nc, seed=4).array)


def test_variable_density_favours_the_centre():
    counts = np.zeros(256)
    for s in range(200):
        counts += M.variable_density_1d(256, 6, n_center=11, seed=s).array
    inner = counts[np.r_[100:122, 134:156]].mean()   # just outside the centre block
    outer = counts[np.r_[0:30, 226:256]].mean()
    assert inner > 2 * outer > 0


def test_kt_masks_differ_per_frame_with_exact_acceleration():
    m = M.variable_density_kt(20, 128, accel=5, n_center=11, seed=1)
    assert m.array.shape == (20, 128)
    np.testing.assert_array_equal(m.array.sum(1), round(128 / 5))
    np.testing.assert_allclose(m.per_frame_acceleration(), 128 / round(128 / 5))
    assert m.array[:, 64 - 5:64 - 5 + 11].all()
    assert len({tuple(r) for r in m.array}) == 20
    km = m.for_kspace(96)
    assert km.shape == (20, 96, 128) and np.array_equal(km[3, 10], m.array[3].astype(np.float32))


def test_equispaced_acs_like_fastmri():
    m = M.equispaced_acs(320, 4, center_fraction=0.08, seed=0)
    assert m.center_lines == 26
    assert m.array[160 - 13:160 + 13].all()
    assert abs(m.acceleration - 4) < 0.15
    outer = np.flatnonzero(m.array)
    gaps = np.diff(outer[outer < 147])
    # equispaced with the spacing widened so the ACS block's lines count towards R:
    # (320 - 26) / (80 - 26) = 5.44 lines
    assert set(gaps.tolist()) <= {5, 6}
    assert m.acceleration == 320 / m.n_sampled


@pytest.mark.parametrize("shape, accel, calib", [((64, 48), 4, 8), ((80, 64), 8, 8), ((96, 96), 6, 12)])
def test_poisson_disc_exact_count_calibration_and_spacing(shape, accel, calib):
    m = M.poisson_disc_2d(shape, accel, calib=calib, seed=2)
    n = shape[0] * shape[1]
    assert m.n_sampled == round(n / accel)
    assert m.acceleration == pytest.approx(n / round(n / accel))
    c0, c1 = shape[0] // 2 - calib // 2, shape[1] // 2 - calib // 2
    assert m.array[c0:c0 + calib, c1:c1 + calib].all()
    # variable density: the centre quarter is denser than the periphery
    a = m.array
    q0, q1 = shape[0] // 4, shape[1] // 4
    centre = a[q0:3 * q0, q1:3 * q1].mean()
    edge = np.concatenate([a[:q0].ravel(), a[3 * q0:].ravel()]).mean()
    assert centre > edge
    # Poisson-disc property: far from the centre no two samples are 4-neighbours
    ii, jj = np.nonzero(a)
    far = (np.abs(ii - shape[0] // 2) > shape[0] // 3) | (np.abs(jj - shape[1] // 2) > shape[1] // 3)
    pts = set(zip(ii[far].tolist(), jj[far].tolist()))
    assert not any((i + 1, j) in pts or (i, j + 1) in pts for i, j in pts)


def test_mask_errors_and_dispatch():
    with pytest.raises(ValueError, match="acceleration"):
        M.variable_density_1d(128, 0.5)
    with pytest.raises(ValueError, match="centre"):
        M.variable_density_1d(128, 32, n_center=11)
    with pytest.raises(ValueError, match="unknown mask"):
        M.make_mask("radial", (64, 64), 4)
    for kind in M.MASK_KINDS:
        m = M.make_mask(kind, (64, 64), 4, seed=1)
        k = m.for_kspace(64)
        assert k.shape == (64, 64) and abs(m.acceleration - 4) < 0.3
