"""T1w <-> T2w CycleGAN: architecture, losses, data, training, task function and CLI."""
import math

import numpy as np
import pytest
import torch

from MRISynthLib.models.cyclegan import (CycleGAN, CycleGANConfig, Generators, ImagePool, PatchDiscriminator,
                                         UNetGenerator, discriminator_loss, from_model_range, gan_loss,
                                         generator_losses, intensity_scale, mind, structure_loss,
                                         to_model_range)
from MRISynthLib.physics.phantoms import render_fractions
from MRISynthLib.tasks import Cancelled
from MRISynthLib.training import cyclegan as tr


def test_paper_generator_bottleneck_and_patchgan_output():
    cfg = CycleGANConfig()                    # paper width: 256x256x1 -> 1x1x512
    g = UNetGenerator(cfg)
    feats = []
    g.down[-1].register_forward_hook(lambda m, i, o: feats.append(o.shape))
    with torch.inference_mode():
        y = g(torch.zeros(1, 1, 256, 256))
        d = PatchDiscriminator(cfg)(torch.zeros(2, 1, 256, 256))
    assert tuple(feats[0]) == (1, 512, 1, 1)
    assert tuple(y.shape) == (1, 1, 256, 256) and float(y.abs().max()) <= 1.0
    assert tuple(d.shape) == (2, 1, 30, 30)
    w = g.down[1][1].weight
    assert abs(float(w.detach().std()) - 0.02) < 0.002 and abs(float(w.detach().mean())) < 0.002   # N(0, 0.02) init
    with pytest.raises(ValueError, match="256x256"):
        g(torch.zeros(1, 1, 128, 128))
    with pytest.raises(ValueError, match="power of two"):
        CycleGANConfig(size=200)


def test_skip_connections_concatenate_encoder_features():
    cfg = CycleGANConfig(size=32, ngf=4, dropout=0.0)
    g = UNetGenerator(cfg).eval()
    enc = [blk[-1].out_channels if isinstance(blk[-1], torch.nn.Conv2d) else blk[-2].out_channels
           for blk in g.down]
    assert enc == [4, 8, 16, 32, 32]
    ins = [next(m for m in blk if isinstance(m, torch.nn.ConvTranspose2d)).in_channels for blk in g.up]
    assert ins == [32, 64, 32, 16, 8]          # innermost, then decoder + encoder features stacked


def test_gan_losses_on_known_logits():
    z = torch.zeros(3, 1, 30, 30)
    assert gan_loss(z, True, "bce").item() == pytest.approx(math.log(2))
    assert gan_loss(torch.full_like(z, 1.0), True, "lsgan").item() == pytest.approx(0.0)
    assert gan_loss(torch.full_like(z, 1.0), False, "lsgan").item() == pytest.approx(1.0)
    assert gan_loss(torch.full_like(z, 20.0), True, "bce").item() < 1e-8

    class Const(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, x):
            return torch.full((x.shape[0], 1, 30, 30), self.v)

    assert discriminator_loss(Const(0.0), z, z, "bce").item() == pytest.approx(2 * math.log(2))   # summed
    assert discriminator_loss(Const(1.0), z, z, "lsgan").item() == pytest.approx(1.0)
    # identity generators: no cycle or identity loss; the GAN terms are the discriminators' verdict
    net = CycleGAN(CycleGANConfig(size=32, ngf=4, ndf=4, gan_mode="lsgan"))
    net.g_ab = net.g_ba = torch.nn.Identity()
    net.d_a, net.d_b = Const(0.0), Const(0.5)
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    total, parts, fake_a, fake_b = generator_losses(net, a, b)
    assert parts["cycle_a"].item() == parts["cycle_b"].item() == parts["id_a"].item() == 0.0
    assert parts["gan_ab"].item() == pytest.approx(0.25) and parts["gan_ba"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(1.25)
    # a generator that halves its input: cycle L1 = 10 x mean|x - x/4|, identity 5 x mean|x - x/2|
    net.g_ab = net.g_ba = type("Half", (torch.nn.Module,), {"forward": lambda self, x: 0.5 * x})()
    _, parts, _, _ = generator_losses(net, a, b)
    assert parts["cycle_a"].item() == pytest.approx(10 * 0.75 * a.mean().item(), rel=1e-5)
    assert parts["id_b"].item() == pytest.approx(5 * 0.5 * b.mean().item(), rel=1e-5)


def test_image_pool_mixes_history():
    pool = ImagePool(3)
    first = pool.query(torch.arange(3.0).view(3, 1, 1, 1))
    assert torch.equal(first.flatten(), torch.arange(3.0))           # fills up, returns as is
    outs = torch.cat([pool.query(torch.full((1, 1, 1, 1), 10.0 + i)) for i in range(40)]).flatten()
    assert (outs < 10).any() and (outs >= 10).any()                   # old and new fakes both come back
    assert torch.equal(ImagePool(0).query(first), first)


def test_intensity_convention_round_trip():
    img = np.linspace(0, 200, 1000, dtype=np.float32).reshape(25, 40)
    s = intensity_scale(img)
    assert s == pytest.approx(np.percentile(img, 99.5))
    u = to_model_range(img, s)
    assert u.min() == -1.0 and u.max() == 1.0
    back = from_model_range(u, s)
    np.testing.assert_allclose(back[img <= s], img[img <= s], rtol=1e-5, atol=1e-3)


def _disc_fractions(n=4, size=32, shift=0):
    """Toy tissue fractions (labels, H, W): a CSF disc in GM in WM in background."""
    yy, xx = np.mgrid[:size, :size] - size / 2 + 0.5
    out = []
    for k in range(n):
        r = np.hypot(yy, xx + shift + k % 3 - 1)
        f = np.zeros((10, size, size), np.float32)
        f[1] = r < size * 0.15                            # CSF
        f[2] = (r >= size * 0.15) & (r < size * 0.28)     # GM
        f[3] = (r >= size * 0.28) & (r < size * 0.4)      # WM
        out.append(f)
    return np.stack(out)


def test_domains_are_disjoint_and_images_follow_the_contrast():
    zs = np.arange(10, 60)
    a, b = tr.split_domains(zs)
    assert len(a) and len(b) and not set(a) & set(b) and set(a) | set(b) == set(zs)
    f = _disc_fractions(1, 64)[0]
    rng = np.random.default_rng(0)
    t1, t2 = tr.random_image(f, "t1", rng), tr.random_image(f, "t2", rng)
    assert t1.shape == (64, 64) and t1.min() >= -1 and t1.max() <= 1
    csf, wm = f[1] > 0, f[3] > 0
    assert t1[wm].mean() > t1[csf].mean() + 0.5      # T1w: white matter bright, CSF dark
    assert t2[csf].mean() > t2[wm].mean() + 0.5      # T2w: the other way round


def test_inversion_match_reverses_order_and_takes_the_reference_histogram():
    rng = np.random.default_rng(0)
    x = np.zeros((20, 20), np.float32)
    x[4:16, 4:16] = rng.uniform(0.2, 1.0, (12, 12))
    ref = rng.normal(0.5, 0.1, 5000).clip(0.06, 1)
    y = tr.inversion_match(x, ref)
    head = x > 0.05
    assert np.all(y[~head] == 0)
    order = np.argsort(x[head])
    assert np.all(np.diff(y[head][order]) <= 1e-7)                  # brightest in -> darkest out
    assert abs(np.median(y[head]) - np.median(ref)) < 0.02
    assert abs(y[head].std() - ref.std()) < 0.02


def test_training_steps_lower_the_generator_loss_and_resume(tmp_path):
    cfg = CycleGANConfig(size=32, ngf=8, ndf=8)
    fa, fb = _disc_fractions(4, 32, 0), _disc_fractions(4, 32, 2)
    clean = {c: render_fractions(fa[0], tr.test_seq(c), "mrilab") for c in ("t1", "t2")}
    pair = {"t1_in": clean["t1"], "t2_in": clean["t2"], **clean}
    tc = tr.CycleTrainConfig(steps=60, lr=2e-3, load_size=36, ckpt_every=30, frame_every=30, threads=1,
                             warm_steps=5)
    tr.train_cyclegan(cfg, tmp_path, tc, domains=(fa, fb), frame_pair=pair, progress=False)
    rows = np.genfromtxt(tmp_path / "cyclegan_loss.csv", delimiter=",", names=True)
    assert len(rows) == 60
    assert np.isfinite(rows["warm"][:5]).all() and np.isnan(rows["g"][:5]).all()   # the warm start, then the game
    g = rows["g"][5:]
    assert g[-15:].mean() < 0.7 * g[:15].mean()
    assert (tmp_path / "progress.gif").exists() and len(list((tmp_path / "frames").glob("*.png"))) == 3
    from PIL import Image
    assert Image.open(tmp_path / "progress.gif").n_frames == 3
    # resume: a longer run continues from step 60
    tc2 = tr.CycleTrainConfig(steps=62, lr=2e-3, load_size=36, ckpt_every=30, frame_every=1000, threads=1)
    tr.train_cyclegan(cfg, tmp_path, tc2, domains=(fa, fb), frame_pair=pair, progress=False)
    st = torch.load(tmp_path / "cyclegan_ckpt.pt", weights_only=False)
    assert st["step"] == 62 and st["pool_a"].shape == (50, 1, 32, 32)   # the fake-image history is kept
    assert len(np.genfromtxt(tmp_path / "cyclegan_loss.csv", delimiter=",", names=True)) == 62
    # with the structure loss: its parts are logged; a log from before they existed keeps its columns
    tc3 = tr.CycleTrainConfig(steps=2, lr=2e-3, load_size=36, frame_every=1000, threads=1, lam_struct=1.0)
    tr.train_cyclegan(cfg, tmp_path / "s", tc3, domains=(fa, fb), frame_pair=pair, progress=False)
    rows = np.genfromtxt(tmp_path / "s" / "cyclegan_loss.csv", delimiter=",", names=True)
    assert (rows["struct_a"] > 0).all() and (rows["struct_b"] > 0).all()
    log = tmp_path / "cyclegan_loss.csv"
    old = [line.split(",") for line in log.read_text().splitlines()]
    log.write_text("\n".join(",".join(r[:9] + r[11:]) for r in old) + "\n")   # drop the struct columns
    tc4 = tr.CycleTrainConfig(steps=64, lr=2e-3, load_size=36, ckpt_every=30, frame_every=1000, threads=1)
    tr.train_cyclegan(cfg, tmp_path, tc4, domains=(fa, fb), frame_pair=pair, progress=False)
    rows = np.genfromtxt(log, delimiter=",", names=True)
    assert len(rows) == 64 and "struct_a" not in rows.dtype.names and np.isfinite(rows["d_a"][-2:]).all()


def test_protocols_set_the_acquisitions_of_training_images_and_test_pairs(monkeypatch):
    from MRISynthLib.physics.signal import spin_echo
    from MRISynthLib.physics.tissues import get_table

    for name, prot in tr.PROTOCOLS.items():
        for c, ((te0, te1), (tr0, tr1)) in prot.items():
            mid = tr.test_seq(c, 0.5, name)
            assert mid.te == pytest.approx((te0 + te1) / 2) and mid.tr == pytest.approx((tr0 + tr1) / 2)
            assert tr.test_seq(c, 0.0, name).te == pytest.approx(te0) and tr.test_seq(c, 1.0, name).tr == tr1
    with pytest.raises(ValueError, match="unknown protocol"):
        tr.test_seq("t2", 0.5, "clinical")
    # training images of a protocol follow its spin-echo contrast (white matter / CSF of
    # pure-tissue regions, up to the jitter, bias and noise of the training images)
    f = _disc_fractions(1, 64)[0]
    monkeypatch.setitem(tr.PROTOCOLS, "fixed", {"t1": ((0.012, 0.012), (0.5, 0.5)), "t2": ((0.1, 0.1), (4.0, 4.0))})
    t = get_table("mrilab")
    csf, wm = f[1] > 0, f[3] > 0
    for c, te, trep in (("t1", 0.012, 0.5), ("t2", 0.1, 4.0)):
        imgs = [tr.random_image(f, c, np.random.default_rng(s), ("mrilab",), "fixed") for s in range(8)]
        ratio = np.mean([(im[wm].mean() + 1) / (im[csf].mean() + 1) for im in imgs])   # (im + 1) ~ signal
        expect = spin_echo(t[3].pd, t[3].t1, t[3].t2, te, trep) / spin_echo(t[1].pd, t[1].t1, t[1].t2, te, trep)
        assert ratio == pytest.approx(expect, rel=0.1), c


def test_validation_pairs_are_held_out_of_training_and_differ_from_the_test_slices():
    from MRISynthLib.training.quantitative import held_out_z, load_anatomy, train_z

    ph = load_anatomy("brainweb")
    kw = dict(size=32, tables=("mrilab",), quantiles=(0.5,))
    val, test = tr.test_pairs("brainweb", slices="validation", **kw), tr.test_pairs("brainweb", **kw)
    np.testing.assert_array_equal(test["z"], held_out_z(ph))
    np.testing.assert_array_equal(val["z"], held_out_z(ph) + 1)
    assert not set(val["z"]) & set(train_z(ph)) and not set(val["z"]) & set(test["z"])
    # each pair's quantile and dominant tissue come with it (the benchmark's synthesis row and
    # tissue levels): CSF is where the fractions say, and the T2w image is brightest there
    assert (test["q"] == 0.5).all() and test["label"].shape == test["t2"].shape
    csf, wm = test["label"] == 1, test["label"] == 3
    assert csf.any() and wm.any() and test["t2"][csf].mean() > 1.5 * test["t2"][wm].mean()
    assert not (test["brain"] & (test["label"] > 3)).mean() > 0.01
    with pytest.raises(ValueError, match="slices"):
        tr.test_pairs("brainweb", slices="train", **kw)


def test_training_continues_from_another_runs_checkpoint(tmp_path):
    cfg = CycleGANConfig(size=32, ngf=8, ndf=8)
    fa, fb = _disc_fractions(2, 32, 0), _disc_fractions(2, 32, 2)
    clean = {c: render_fractions(fa[0], tr.test_seq(c, 0.5, "wide"), "mrilab") for c in ("t1", "t2")}
    pair = {"t1_in": clean["t1"], "t2_in": clean["t2"], **clean}
    first = tr.CycleTrainConfig(steps=4, load_size=36, frame_every=1000, threads=1, protocol="wide")
    tr.train_cyclegan(cfg, tmp_path / "a", first, domains=(fa, fb), frame_pair=pair, progress=False)
    second = tr.CycleTrainConfig(steps=8, load_size=36, frame_every=1000, threads=1, protocol="standard",
                                 ckpt_every=1, keep_every=2)
    tr.train_cyclegan(cfg, tmp_path / "b", second, domains=(fa, fb), frame_pair=pair, progress=False,
                      init_from=tmp_path / "a" / "cyclegan_ckpt.pt")
    st = torch.load(tmp_path / "b" / "cyclegan_ckpt.pt", weights_only=False)
    assert st["step"] == 8 and st["train_config"]["protocol"] == "standard"
    assert sorted(p.name for p in (tmp_path / "b").glob("snap_*.pt")) == ["snap_6.pt", "snap_8.pt"]
    assert torch.load(tmp_path / "b" / "snap_6.pt", weights_only=False)["step"] == 6
    assert len(np.genfromtxt(tmp_path / "b" / "cyclegan_loss.csv", delimiter=",", names=True)) == 4
    with pytest.raises(ValueError, match="multiple"):
        tr.train_cyclegan(cfg, tmp_path / "c", tr.CycleTrainConfig(steps=6, ckpt_every=4, keep_every=6),
                          domains=(fa, fb), frame_pair=pair, progress=False)
    with pytest.raises(ValueError, match="config"):
        tr.train_cyclegan(CycleGANConfig(size=32, ngf=4, ndf=8), tmp_path / "c", second, domains=(fa, fb),
                          frame_pair=pair, progress=False, init_from=tmp_path / "a" / "cyclegan_ckpt.pt")


@pytest.fixture(scope="module")
def tiny_gens():
    torch.manual_seed(0)
    return Generators(CycleGANConfig(size=32, ngf=4)).eval()


def test_translate_volume_shapes_range_geometry_and_input_untouched(tiny_gens):
    from MRISynthLib.data.io import Volume
    from MRISynthLib.tasks.translate import translate

    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 500, (3, 20, 45)).astype(np.float32)
    arr[1] = 0.0
    before = arr.copy()
    vol = Volume(arr, spacing=(0.8, 0.9, 3.0), origin=(1.0, 2.0, 3.0))
    out = translate(vol, "t2_to_t1", model=tiny_gens, batch_size=2)
    np.testing.assert_array_equal(arr, before)
    assert out.array.shape == arr.shape and out.array.dtype == np.float32
    assert out.spacing == vol.spacing and out.origin == vol.origin
    assert np.all(out.array[1] == 0)                            # an empty slice stays empty
    for z in (0, 2):
        assert 0 <= out.array[z].min() and out.array[z].max() <= np.percentile(arr[z], 99.5) * 1.0001
    two_d = translate(arr[0], "t1_to_t2", model=tiny_gens)
    assert two_d.shape == (20, 45)
    calls = []
    with pytest.raises(Cancelled):
        translate(arr, model=tiny_gens, batch_size=1, cancel=lambda: len(calls) > 0,
                  progress_callback=calls.append)
    assert calls == [pytest.approx(1 / 3)]


def test_translated_volume_records_the_acquisition_its_model_imitates(tiny_gens):
    from types import SimpleNamespace

    from MRISynthLib.data.io import Volume
    from MRISynthLib.tasks.translate import output_acquisition, translate

    card = SimpleNamespace(training={"te_tr_ranges_s": tr.PROTOCOLS["standard"]})
    assert output_acquisition(card, "t1_to_t2") == pytest.approx({"te": 0.1, "tr": 4.0})
    assert output_acquisition(card, "t2_to_t1") == pytest.approx({"te": 0.012, "tr": 0.5})
    assert output_acquisition(SimpleNamespace(training={}), "t1_to_t2") == {} and output_acquisition(None, "x") == {}
    vol = Volume(np.random.default_rng(0).uniform(0, 9, (2, 16, 16)).astype(np.float32),
                 acquisition={"te": 0.012, "tr": 0.5})
    assert translate(vol, "t1_to_t2", model=tiny_gens).acquisition == {}     # never the input's TE/TR
    assert vol.acquisition == {"te": 0.012, "tr": 0.5}
    shipped = translate(vol, "t1_to_t2")
    assert shipped.acquisition == pytest.approx({"te": 0.1, "tr": 4.0})


def test_translate_rejects_bad_input(tiny_gens):
    from MRISynthLib.tasks.translate import translate

    with pytest.raises(ValueError, match="direction"):
        translate(np.ones((8, 8)), "t1_to_flair", model=tiny_gens)
    with pytest.raises(ValueError, match="NaN"):
        translate(np.full((8, 8), np.nan), model=tiny_gens)
    with pytest.raises(ValueError, match="2D image or a 3D"):
        translate(np.ones((2, 2, 8, 8)), model=tiny_gens)


def test_shipped_model_and_cli_on_a_small_volume(tmp_path):
    import SimpleITK as sitk

    from MRISynthLib.catalog import list_models, weights_path
    from MRISynthLib.cli import main

    cards = list_models("translate")
    assert cards, "no shipped translation model"
    card = cards[0]
    assert weights_path(card).exists() and len(card.sha256) == 64
    assert {"t1_to_t2", "t2_to_t1"} <= set(card.metrics)
    f = _disc_fractions(3, 48)
    vol = np.stack([render_fractions(x, tr.test_seq("t1"), "mrilab") for x in f]) * 1000
    img = sitk.GetImageFromArray(vol.astype(np.float32))
    img.SetSpacing((1.1, 1.2, 4.0))
    img.SetOrigin((5.0, 6.0, 7.0))
    src, dst = tmp_path / "t1w.nrrd", tmp_path / "t2w.nrrd"
    sitk.WriteImage(img, str(src))
    assert main(["translate", "-i", str(src), "--direction", "t1_to_t2", "-o", str(dst), "--quiet"]) == 0
    from MRISynthLib.data.io import read_volume
    assert read_volume(dst).acquisition == pytest.approx({"te": 0.1, "tr": 4.0})   # the shipped model's T2w
    out = sitk.ReadImage(str(dst))
    assert out.GetSize() == img.GetSize() and out.GetSpacing() == img.GetSpacing()
    assert out.GetOrigin() == img.GetOrigin()
    y = sitk.GetArrayFromImage(out)
    m = f[1, 1] > 0.5, f[1, 3] > 0.5                           # CSF, WM of the middle slice
    assert y[1][m[0]].mean() > y[1][m[1]].mean()                # the T2w output has bright CSF
    with pytest.raises(SystemExit):
        main(["translate", "-i", str(src), "--direction", "flair", "-o", str(dst)])


def _halving_cyclegan():
    """A CycleGAN whose two generators halve their input, and random noisy inputs a, b with
    noise-free versions ca, cb (2 x 1 x 32 x 32 each)."""
    net = CycleGAN(CycleGANConfig(size=32, ngf=4, ndf=4))
    half = type("Half", (torch.nn.Module,), {"forward": lambda self, x: 0.5 * x})()
    net.g_ab = net.g_ba = half
    return net, [torch.rand(2, 1, 32, 32) for _ in range(4)]


def test_clean_targets_replace_the_cycle_and_identity_targets():
    net, (a, b, ca, cb) = _halving_cyclegan()
    _, plain, _, _ = generator_losses(net, a, b)
    _, same, _, _ = generator_losses(net, a, b, clean_a=a, clean_b=b)
    assert all(plain[k].item() == pytest.approx(same[k].item()) for k in plain)
    _, parts, fa, fb = generator_losses(net, a, b, clean_a=ca, clean_b=cb)
    assert parts["cycle_a"].item() == pytest.approx(10 * (0.25 * a - ca).abs().mean().item(), rel=1e-5)
    assert parts["cycle_b"].item() == pytest.approx(10 * (0.25 * b - cb).abs().mean().item(), rel=1e-5)
    assert parts["id_a"].item() == pytest.approx(5 * (0.5 * a - ca).abs().mean().item(), rel=1e-5)
    assert torch.equal(fb, 0.5 * a) and torch.equal(fa, 0.5 * b)      # the generators still get the noisy inputs


def test_cycle_noise_enters_only_the_way_back():
    net, (a, b, ca, cb) = _halving_cyclegan()
    torch.manual_seed(0)
    _, plain, fa0, fb0 = generator_losses(net, a, b, lam_id=0)
    _, off, _, _ = generator_losses(net, a, b, lam_id=0, cycle_noise=0.0)
    assert all(plain[k].item() == off[k].item() for k in plain)
    # inputs 0 and clean targets 0: the cycle is g(g(0) + n) = 0.5 n, its L1 0.5 sigma sqrt(2 / pi)
    z = torch.zeros(2, 1, 64, 64)
    _, parts, fa, fb = generator_losses(net, z, z, lam_id=0, cycle_noise=0.2)
    for k in ("cycle_a", "cycle_b"):
        assert parts[k].item() == pytest.approx(10 * 0.5 * 0.2 * (2 / np.pi) ** 0.5, rel=0.05)
    # the discriminators still see the clean translations, and the adversarial terms are unchanged
    assert torch.equal(fa, 0.5 * z) and torch.equal(fb, 0.5 * z)
    _, noisy, fa1, fb1 = generator_losses(net, a, b, lam_id=0, cycle_noise=0.2)
    assert torch.equal(fa1, fa0) and torch.equal(fb1, fb0)
    assert noisy["gan_ab"].item() == plain["gan_ab"].item() and noisy["cycle_a"].item() != plain["cycle_a"].item()


def test_mind_ignores_contrast_and_sees_structure():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 72, 72, generator=g), 9, 1)   # smooth texture, 64 x 64
    m = mind(x, eps=0.0)
    assert m.shape == (1, 8, 64, 64) and torch.allclose(m.amax(1), torch.ones(1, 64, 64))
    # with eps = 0 it is blind to any affine change of contrast, inversion included
    for a, b in ((3.0, 0.5), (-1.0, 0.0), (-0.2, 1.0)):
        assert torch.allclose(mind(a * x + b, eps=0.0), m, atol=1e-5)
    # but not to moving the structure (a 2-pixel shift) or to other structure
    shifted = torch.roll(x, 2, -1)
    assert structure_loss(shifted, x) > 20 * structure_loss(-x, x)
    assert structure_loss(torch.rand(1, 1, 64, 64, generator=g), x) > 0.1
    # a two-tissue image: inverting its contrast keeps the descriptor, a blurred edge does not
    step = -torch.ones(1, 1, 32, 32)
    step[..., 16:] = 0.6
    assert structure_loss(-step, step) < 1e-6
    assert structure_loss(-0.5 * step, step) < 1e-3      # eps: a weaker edge counts a little less
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(step, (3, 3, 3, 3), mode="replicate"), 7, 1)
    assert structure_loss(blurred, step) > 20 * structure_loss(-0.5 * step, step)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        mind(torch.zeros(2, 3, 8, 8))


def test_structure_loss_term_compares_each_translation_with_its_clean_input():
    net, (a, b, ca, cb) = _halving_cyclegan()
    _, parts, _, _ = generator_losses(net, a, b, lam_id=0)
    assert "struct_a" not in parts                               # off by default
    total, parts, _, _ = generator_losses(net, a, b, clean_a=ca, clean_b=cb, lam_id=0, lam_struct=2.0)
    assert parts["struct_a"].item() == pytest.approx(2 * structure_loss(0.5 * a, ca).item(), rel=1e-6)
    assert parts["struct_b"].item() == pytest.approx(2 * structure_loss(0.5 * b, cb).item(), rel=1e-6)
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-6)
    # and it trains: gradients reach a generator through it
    gen = UNetGenerator(CycleGANConfig(size=32, ngf=4))
    structure_loss(gen(a), ca).backward()
    assert gen.down[0][0].weight.grad.abs().sum() > 0


def test_random_image_with_clean_keeps_the_noisy_stream_and_drops_only_the_noise():
    f = _disc_fractions(1, 64)[0]
    noisy = tr.random_image(f, "t2", np.random.default_rng(3))
    n2, clean = tr.random_image(f, "t2", np.random.default_rng(3), with_clean=True)
    np.testing.assert_array_equal(noisy, n2)                    # same draw as without the clean copy
    bg = f.sum(0) == 0
    assert np.all(clean[bg] == -1.0) and (noisy[bg] > -1.0).mean() > 0.9   # air: no signal without noise
    head = ~bg
    assert np.abs(noisy[head] - clean[head]).mean() < 0.1       # the same image under the noise


def test_training_with_clean_targets_from_given_generators(tmp_path):
    cfg = CycleGANConfig(size=32, ngf=8, ndf=8)
    fa, fb = _disc_fractions(4, 32, 0), _disc_fractions(4, 32, 2)
    clean = {c: render_fractions(fa[0], tr.test_seq(c), "mrilab") for c in ("t1", "t2")}
    pair = {"t1_in": clean["t1"], "t2_in": clean["t2"], **clean}
    src = Generators(cfg)
    init = {k: v.clone() for k, v in src.state_dict().items()}
    tc = tr.CycleTrainConfig(steps=0, load_size=36, frame_every=1000, threads=1, clean_targets=True)
    net = tr.train_cyclegan(cfg, tmp_path / "a", tc, domains=(fa, fb), frame_pair=pair, progress=False,
                            init_generators=init)
    sd = net.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in init.items())           # both generators start from the given ones
    tc = tr.CycleTrainConfig(steps=3, load_size=36, frame_every=1000, threads=1, clean_targets=True)
    tr.train_cyclegan(cfg, tmp_path / "b", tc, domains=(fa, fb), frame_pair=pair, progress=False,
                      init_generators=init)
    st = torch.load(tmp_path / "b" / "cyclegan_ckpt.pt", weights_only=False)
    assert st["step"] == 3 and st["train_config"]["clean_targets"] is True
    assert not torch.equal(st["model"]["g_ab.down.0.0.weight"], init["g_ab.down.0.0.weight"])
    with pytest.raises(ValueError, match="does not fit"):
        tr.train_cyclegan(cfg, tmp_path / "c", tc, domains=(fa, fb), frame_pair=pair, progress=False,
                          init_generators={"g_ab.nope": torch.zeros(1)})


def test_exported_card_records_the_training_seed(tmp_path, monkeypatch):
    from MRISynthLib import catalog
    from MRISynthLib.tasks.translate import export_model

    monkeypatch.setattr(catalog, "MODELS_DIR", tmp_path)
    card = export_model(Generators(CycleGANConfig(size=32, ngf=4)), "t", tr.CycleTrainConfig(steps=3, seed=7))
    assert card.training["seed"] == 7 and card.training["steps"] == 3
    assert card.training["lam_struct"] == 0.0 and "MIND" not in card.training["loss"]
    assert (tmp_path / "t.safetensors").exists() and (tmp_path / "catalog.json").exists()
    card = export_model(Generators(CycleGANConfig(size=32, ngf=4)), "s", tr.CycleTrainConfig(lam_struct=5.0))
    assert card.training["lam_struct"] == 5.0 and "MIND structure consistency" in card.training["loss"]
    assert card.training["cycle_noise"] == 0.0 and "way back" not in card.training["loss"]
    card = export_model(Generators(CycleGANConfig(size=32, ngf=4)), "n", tr.CycleTrainConfig(cycle_noise=0.1))
    assert card.training["cycle_noise"] == 0.1 and "way back" in card.training["loss"]
