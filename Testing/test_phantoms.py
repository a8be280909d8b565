import numpy as np
import pytest

from conftest import needs_data
from MRISynthLib.physics import phantoms as P
from MRISynthLib.physics import tissues as T
from MRISynthLib.physics.signal import PRESETS, SequenceParams, spin_echo


def test_overlap_matrix_partial_volume():
    w = P.overlap_matrix(4, 1.0, 2, 2.0)
    np.testing.assert_allclose(w, [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    w = P.overlap_matrix(3, 1.0, 2, 1.5)  # output voxels straddle input voxel 1
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    np.testing.assert_allclose(P.overlap_matrix(10, 1.0, 7, 10 / 7).sum(1), 1.0)


def test_phantom_resampling_conserves_tissue_volume_and_renders_mixtures():
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[:, :, 3:] = 2  # GM on the right half
    labels[:, :, :3] = 3  # WM on the left half
    labels[:, :, 2] = 1   # a CSF column
    ph = P.Phantom.from_labels(labels, table=T.get_table("mrilab"))
    lo = ph.resampled(voxel_mm=(3.0, 2.0, 2.0))
    assert lo.shape == (2, 3, 2)
    np.testing.assert_allclose(lo.fractions.sum(0), 1.0, rtol=1e-6)
    vol_hi = ph.fractions.sum(axis=(1, 2, 3))
    vol_lo = lo.fractions.sum(axis=(1, 2, 3)) * 12  # voxel volume ratio
    np.testing.assert_allclose(vol_lo, vol_hi, rtol=1e-6)
    # a mixed voxel's signal is the fraction-weighted sum of the pure signals
    seq = SequenceParams("se", 0.02, 0.6)
    img = lo.render(seq)
    tab = T.get_table("mrilab")
    s = {k: spin_echo(tab[k].pd, tab[k].t1, tab[k].t2, 0.02, 0.6, exact=True) for k in (1, 3)}
    f = lo.fractions[:, 0, 0, 0]
    assert img[0, 0, 0] == pytest.approx(f[1] * s[1] + f[3] * s[3], rel=1e-5)
    m = lo.maps()
    assert m["pd"][0, 0, 0] == pytest.approx(f[1] * tab[1].pd + f[3] * tab[3].pd, rel=1e-5)
    assert tab[3].t1 < m["t1"][0, 0, 0] < tab[1].t1


def test_tables_and_jitter():
    mr = T.get_table("mrilab")
    assert mr[1].t1 == 4.5 and mr[2].t2 == 0.10 and 4 not in mr.tissues
    assert T.get_table("mrilab_full")[4].t1 == 0.33
    with pytest.raises(ValueError, match="unknown tissue table"):
        T.get_table("nope")
    a = T.jitter_table("mrilab", np.random.default_rng(5))
    b = T.jitter_table("mrilab", np.random.default_rng(5))
    c = T.jitter_table("mrilab", np.random.default_rng(6))
    assert a.tissues == b.tissues and a.tissues != c.tissues
    for lab, t in a.tissues.items():
        assert t.t2 <= t.t1 and t.t2star <= t.t2 and t.pd <= 1.2
    # factors spread as documented: log-ratios of T1 have sd ~ 0.2 over many draws
    r = np.random.default_rng(0)
    logs = [np.log(T.jitter_table("mrilab", r)[2].t1 / mr[2].t1) for _ in range(400)]
    assert 0.15 < np.std(logs) < 0.25


def test_bias_field_and_noise(rng):
    f = P.bias_field((32, 40), rng, strength=0.2)
    assert f.shape == (32, 40) and np.abs(f - 1).max() == pytest.approx(0.2, rel=1e-5)
    gy, gx = np.gradient(f)
    assert np.abs(gy).max() < 0.05 and np.abs(gx).max() < 0.05  # smooth
    img = np.zeros((200, 200), np.float32)
    img[50:150, 50:150] = 10.0
    noisy = P.add_noise(img, snr=20, rng=rng, kind="complex")
    sigma = np.std((noisy - img)[:40, :40].real)
    assert sigma == pytest.approx(10 / 20, rel=0.1)
    ric = P.add_noise(img, snr=20, rng=rng)
    assert ric.dtype == np.float32 and (ric >= 0).all()
    with pytest.raises(ValueError):
        P.add_noise(img, snr=0, rng=rng)


@needs_data("brainweb/BrainModel.mat")
def test_brainweb_orientation_grid_and_contrast():
    labels = P.brainweb_labels()
    assert labels.shape == (180, 216, 180)
    brain = np.isin(labels, [1, 2, 3]).sum(axis=(1, 2))
    head = (labels > 0).sum(axis=(1, 2))
    # z increases superiorly: the lowest slices (neck, face) have much head and little brain
    assert head[:15].mean() > 3 * head[-10:].mean()
    assert brain[:10].sum() < brain[100:110].sum()
    ph = P.brainweb_phantom(voxel_mm=2.0)
    assert ph.shape == (90, 108, 90)  # the seed paper's 108 x 90 x 90 MRiLab grid
    np.testing.assert_allclose(ph.fractions.sum(0), 1.0, atol=1e-5)
    # T1w: WM brighter than GM; T2w: CSF brightest; FLAIR: CSF dark
    full = P.brainweb_phantom(table="mrilab_full")
    z = 110
    lab = labels[z]
    t1w = full.render(PRESETS["T1w"])[z]
    t2w = full.render(PRESETS["T2w"])[z]
    mean = lambda img, l: img[lab == l].mean()
    assert mean(t1w, 3) > mean(t1w, 2) > mean(t1w, 1)
    assert mean(t2w, 1) > mean(t2w, 2) > mean(t2w, 3)
    maps = full.maps()
    assert maps["t1"][z][lab == 3].mean() == pytest.approx(0.6, rel=1e-5)
    assert maps["t2"][z][lab == 1].mean() == pytest.approx(2.2, rel=1e-5)


@needs_data("koma/brain.h5")
def test_koma_maps_match_brainweb_koma_table():
    m = P.koma_brain_maps()
    assert m["pd"].shape == (216, 180)
    fg = m["pd"] > 0
    triples = {(round(float(p), 2), round(float(a) * 1000), round(float(b) * 1000))
               for p, a, b in zip(m["pd"][fg], m["t1"][fg], m["t2"][fg])}
    tab = T.get_table("brainweb_koma")
    for lab in (1, 2, 3, 4, 5):
        t = tab[lab]
        key = (round(t.pd, 2), round(t.t1 * 1000), round(t.t2 * 1000))
        assert any(abs(k[0] - key[0]) < 0.01 and abs(k[1] - key[1]) <= 6 and abs(k[2] - key[2]) <= 1
                   for k in triples), (lab, key)


@needs_data("mni152/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
def test_mni152_second_anatomy():
    ph = P.mni152_phantom(voxel_mm=2.0)
    f = ph.fractions
    np.testing.assert_allclose(f.sum(0), 1.0, atol=1e-4)
    assert f[2].sum() > 0 and f[3].sum() > 0 and f[1].sum() > 0
    # CSF sits around/inside the brain, not far outside the head
    t2w = ph.render(PRESETS["T2w"])
    z = ph.shape[0] // 2
    assert t2w[z].max() > 0 and np.isfinite(t2w).all()
    assert ph.spacing == (2.0, 2.0, 2.0)
