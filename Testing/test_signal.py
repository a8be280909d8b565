import math

import numpy as np
import pytest
import torch

from MRISynthLib.physics import signal as S

PD, T1, T2 = 0.8, 0.95, 0.10


def test_spin_echo_limits():
    # TE -> 0: pure T1 saturation recovery, both forms
    for exact in (False, True):
        s = S.spin_echo(PD, T1, T2, te=1e-9, tr=0.7, exact=exact)
        assert s == pytest.approx(PD * (1 - math.exp(-0.7 / T1)), rel=1e-6)
    # TR -> infinity: pure T2 decay
    for exact in (False, True):
        s = S.spin_echo(PD, T1, T2, te=0.05, tr=99.0, exact=exact)
        assert s == pytest.approx(PD * math.exp(-0.05 / T2), rel=1e-9)
    # the refocusing term: exact form differs from the simple one when TE ~ TR
    simple = S.spin_echo(PD, T1, T2, te=0.4, tr=0.5)
    exact = S.spin_echo(PD, T1, T2, te=0.4, tr=0.5, exact=True)
    expected = PD * (1 - 2 * math.exp(-(0.5 - 0.2) / T1) + math.exp(-0.5 / T1)) * math.exp(-0.4 / T2)
    assert exact == pytest.approx(expected, rel=1e-9)
    assert abs(exact - simple) > 0.1 * simple


def test_inversion_recovery_null_point_and_limits():
    t1 = np.array([0.33, 0.95, 4.5])
    # infinite TR: null at T1 ln 2 (both forms)
    ti = S.ti_null(t1)
    s = S.inversion_recovery(1.0, t1, 0.1, te=1e-6, tr=90.0, ti=ti, exact=False)
    np.testing.assert_allclose(s, 0, atol=1e-6)
    # finite TR, exact form
    ti = S.ti_null(t1, tr=9.0, te=0.12)
    s = S.inversion_recovery(1.0, t1, 0.1, te=0.12, tr=9.0, ti=ti, exact=True)
    np.testing.assert_allclose(s, 0, atol=1e-6)
    # signed signal changes sign across the null point
    lo = S.inversion_recovery(1.0, 0.95, 0.1, 0.01, 5.0, 0.5, magnitude=False)
    hi = S.inversion_recovery(1.0, 0.95, 0.1, 0.01, 5.0, 0.9, magnitude=False)
    assert lo < 0 < hi
    # TI -> long (TR -> inf): like a spin echo with full recovery
    s = S.inversion_recovery(1.0, 0.95, 0.1, 0.02, 90.0, 80.0)
    assert s == pytest.approx(math.exp(-0.02 / 0.1), rel=1e-6)


def test_spoiled_gre_ernst_angle_and_limits():
    t1, tr = 0.9, 0.02
    ernst = S.ernst_angle(t1, tr)
    flips = np.linspace(1, 60, 2000)
    s = S.spoiled_gre(1.0, t1, 0.05, te=0.002, tr=tr, flip_deg=flips)
    assert flips[np.argmax(s)] == pytest.approx(ernst, abs=0.05)
    # 90 degrees: saturation recovery
    s90 = S.spoiled_gre(1.0, t1, 0.05, te=1e-9, tr=tr, flip_deg=90.0)
    assert s90 == pytest.approx(1 - math.exp(-tr / t1), rel=1e-6)
    # small flip limit ~ sin(a) (PD weighting)
    s_small = S.spoiled_gre(1.0, t1, 0.05, te=1e-9, tr=tr, flip_deg=0.01)
    assert s_small == pytest.approx(math.sin(math.radians(0.01)), rel=1e-3)


@pytest.mark.parametrize("kw, msg", [
    (dict(te=0.1, tr=0.1), "shorter than TR"),
    (dict(te=0.2, tr=0.1), "shorter than TR"),
    (dict(te=-0.01, tr=1.0), ">= 0"),
    (dict(te=float("nan"), tr=1.0), "finite"),
    (dict(te=0.01, tr=float("inf")), "finite"),
    (dict(te=0.01, tr=0.0), "> 0"),
    (dict(te=10.0, tr=500.0), "implausible"),
])
def test_invalid_times_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        S.spin_echo(1.0, 1.0, 0.1, **kw)


def test_invalid_ir_and_flip_raise():
    with pytest.raises(ValueError, match="TI"):
        S.inversion_recovery(1, 1, 0.1, te=0.1, tr=2.0, ti=1.95)
    with pytest.raises(ValueError, match="TI"):
        S.inversion_recovery(1, 1, 0.1, te=0.1, tr=2.0, ti=-1)
    for bad in (0.0, -5.0, 181.0, float("nan")):
        with pytest.raises(ValueError, match="flip"):
            S.spoiled_gre(1, 1, 0.05, te=0.005, tr=0.02, flip_deg=bad)
    with pytest.raises(ValueError, match="NaN"):
        S.spin_echo(np.array([1.0, np.nan]), 1, 0.1, 0.01, 1.0)
    with pytest.raises(ValueError, match="negative"):
        S.spin_echo(1.0, np.array([-1.0]), 0.1, 0.01, 1.0)
    with pytest.raises(ValueError, match="sequence"):
        S.SequenceParams("fse", 0.01, 1.0)
    with pytest.raises(ValueError, match="TI"):
        S.SequenceParams("ir", 0.01, 1.0)


def test_numpy_torch_agree_and_broadcast(rng):
    pd = rng.uniform(0, 1, (8, 8)).astype(np.float32)
    t1 = rng.uniform(0.3, 4, (8, 8)).astype(np.float32)
    t2 = rng.uniform(0.02, 0.3, (8, 8)).astype(np.float32)
    te = np.array([0.01, 0.05, 0.1], np.float32).reshape(3, 1, 1)
    tr = np.array([0.5, 2.0, 4.0], np.float32).reshape(3, 1, 1)
    n = S.spin_echo(pd, t1, t2, te, tr, exact=True)
    t = S.spin_echo(torch.from_numpy(pd), torch.from_numpy(t1), torch.from_numpy(t2),
                    torch.from_numpy(te), torch.from_numpy(tr), exact=True)
    assert n.shape == (3, 8, 8) and isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), n, rtol=1e-5)
    for i in range(3):
        np.testing.assert_allclose(n[i], S.spin_echo(pd, t1, t2, float(te[i, 0, 0]), float(tr[i, 0, 0]), exact=True), rtol=1e-5)
    ir_n = S.inversion_recovery(pd, t1, t2, 0.02, 6.0, 1.5)
    ir_t = S.inversion_recovery(torch.from_numpy(pd), t1, t2, 0.02, 6.0, 1.5)
    np.testing.assert_allclose(ir_t.numpy(), ir_n, rtol=1e-5)
    g_n = S.spoiled_gre(pd, t1, t2, 0.004, 0.03, 25.0)
    g_t = S.spoiled_gre(torch.from_numpy(pd), t1, t2, 0.004, 0.03, 25.0)
    np.testing.assert_allclose(g_t.numpy(), g_n, rtol=1e-5)


def test_background_voxels_give_zero_not_nan():
    z = np.zeros(4)
    assert np.all(S.spin_echo(z, z, z, 0.01, 1.0) == 0)
    t = torch.zeros(4, requires_grad=True)
    out = S.spin_echo(t, t, t, 0.01, 1.0).sum()
    out.backward()
    assert torch.isfinite(t.grad).all()


def test_torch_gradients_match_finite_differences():
    torch.manual_seed(0)
    pd = torch.rand(5, dtype=torch.float64) + 0.2
    t1 = torch.rand(5, dtype=torch.float64) + 0.5
    t2 = torch.rand(5, dtype=torch.float64) * 0.2 + 0.03
    te = torch.tensor(0.04, dtype=torch.float64)
    tr = torch.tensor(2.0, dtype=torch.float64)
    ti = torch.tensor(0.7, dtype=torch.float64)
    for f, args in [
        (lambda a, b, c, d, e: S.spin_echo(a, b, c, d, e, exact=True), (pd, t1, t2, te, tr)),
        (lambda a, b, c, d, e: S.inversion_recovery(a, b, c, d, e, ti, magnitude=False), (pd, t1, t2, te, tr)),
        (lambda a, b, c, d, e: S.spoiled_gre(a, b, c, d * 0.1, e * 0.01, 20.0), (pd, t1, t2, te, tr)),
    ]:
        args = tuple(x.clone().requires_grad_(True) for x in args)
        assert torch.autograd.gradcheck(f, args)


def test_sequence_params_render_and_presets():
    for name, seq in S.PRESETS.items():
        v = seq.signal(0.8, 0.95, 0.1, 0.05)
        assert np.isfinite(v) and v > 0, name
    se = S.SequenceParams("se", 0.09, 3.0)
    assert se.signal(0.8, 0.95, 0.1) == pytest.approx(S.spin_echo(0.8, 0.95, 0.1, 0.09, 3.0, exact=True))
    assert "TE=90 ms" in se.describe()
