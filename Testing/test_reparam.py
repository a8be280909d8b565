import warnings

import numpy as np
import pytest
import torch

from conftest import write_dicom_series
from MRISynthLib import catalog
from MRISynthLib.data import io
from MRISynthLib.data.download import ChecksumError
from MRISynthLib.models.paramnet import (ENDAutoencoder, ReparamConfig, ReparamModel, encode_params,
                                         widen_paramnet_state, xavier_init)
from MRISynthLib.tasks import Cancelled
from MRISynthLib.tasks.reparam import reparameterize


def test_autoencoder_encoder_has_8_levels_and_reconstructs_size():
    ae = ENDAutoencoder([4, 4, 8, 8, 8, 8, 8, 8]).eval()
    x = torch.randn(2, 1, 256, 256)
    feats = ae.encoder(x)
    assert [f.shape[-1] for f in feats] == [128, 64, 32, 16, 8, 4, 2, 1]
    y = ae(x)
    assert y.shape == x.shape and y.abs().max() <= 1


@pytest.mark.parametrize("hw", [(256, 256), (100, 120), (300, 64)])
def test_reparam_model_any_size(tiny_p2p, hw):
    x = torch.rand(2, 1, *hw) * 2 - 1
    p = encode_params("p2p", torch.tensor([0.1, 0.08]), torch.tensor([3.0, 2.0]),
                      torch.tensor([0.05, 0.05]), torch.tensor([4.5, 4.5]))
    with torch.no_grad():
        y = tiny_p2p(x, p)
    assert y.shape == x.shape and y.abs().max() <= 1


def test_parameters_reach_the_output(tiny_p2p):
    # Default-to-Param: same image, different target parameters in one batch -> different outputs
    torch.manual_seed(1)
    m = ReparamModel(ReparamConfig("d2p", widths="tiny"))
    xavier_init(m)
    for mod in m.modules():  # non-trivial conditioning (the FiLM layers start at zero)
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.normal_(mod.weight, std=0.5)
    m.eval()
    x = torch.rand(1, 1, 256, 256).expand(2, -1, -1, -1)
    p = encode_params("d2p", torch.tensor([0.02, 0.5]), torch.tensor([1.5, 9.0]))
    assert p.shape == (2, 4)
    with torch.no_grad():
        y = m(x, p)
    assert (y[0] - y[1]).abs().mean() > 1e-3
    # broadcast: each sample's result equals running it alone
    with torch.no_grad():
        y1 = m(x[:1], p[1:])
    torch.testing.assert_close(y[1:], y1, atol=2e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="input TE"):
        encode_params("p2p", torch.tensor([0.1]), torch.tensor([3.0]))
    assert encode_params("p2p", *(torch.tensor([0.1]),) * 4).shape == (1, 8)
    with pytest.raises(ValueError):
        ReparamConfig("x2y")
    with pytest.raises(ValueError, match="width preset"):
        ReparamConfig("d2p", widths="huge")


@pytest.mark.parametrize("mode", ["d2p", "p2p"])
def test_widening_keeps_the_function_and_trains_the_new_channels(mode):
    torch.manual_seed(3)
    old_cfg = ReparamConfig(mode, widths="tiny")
    old = ReparamModel(old_cfg).eval()
    xavier_init(old)
    for prm in old.paramnet.parameters():       # FiLM and biases away from their zero init
        prm.data += 0.05 * torch.randn_like(prm)
    new_cfg = ReparamConfig(mode, widths="tiny", decoder_widths=[12, 16, 40, 32, 48, 32, 32, 36])
    new = ReparamModel(new_cfg).eval()
    new.autoencoder.load_state_dict(old.autoencoder.state_dict())
    new.paramnet.load_state_dict(widen_paramnet_state(old.paramnet.state_dict(), old_cfg, new_cfg))
    assert new.paramnet.head1.conv.weight.shape[0] == 12 and new.paramnet.blocks[2].c2.conv.weight.shape[0] == 48
    x = torch.rand(3, 1, 256, 256) * 2 - 1
    p = torch.randn(3, old_cfg.n_params)
    with torch.no_grad():
        torch.testing.assert_close(new(x, p), old(x, p), atol=1e-4, rtol=0)   # summation order
    # the zero weights from new channels into old ones get a gradient: the new channels can enter
    new.train()
    ((new(x, p) - x) ** 2).mean().backward()
    g = new.paramnet.blocks[7].c2.conv.weight.grad
    assert g[:8, 8:].abs().sum() > 0
    with pytest.raises(ValueError, match="narrow"):
        widen_paramnet_state(new.paramnet.state_dict(), new_cfg, old_cfg)
    with pytest.raises(ValueError, match="encoder"):
        widen_paramnet_state(old.paramnet.state_dict(), old_cfg, ReparamConfig(mode, widths="cpu"))


def test_a_few_training_steps_lower_the_loss(tmp_path):
    from test_simulate_cli import toy_phantom

    from MRISynthLib.data.simulate import ProtocolConfig, make_paper_dataset
    from MRISynthLib.training.reparam import PaperData, TrainConfig, train_paramnet

    p = make_paper_dataset(tmp_path / "d.h5", ProtocolConfig(n_pairs=12, n_slices=6, size=64, seed=1),
                           progress=False, phantom=toy_phantom())
    data = PaperData(p)
    cfg = ReparamConfig("d2p", widths="tiny")
    ae = ReparamModel(cfg).autoencoder.state_dict()
    torch.manual_seed(0)
    train_paramnet(cfg, data, ae, tmp_path / "run", TrainConfig(steps=40, batch=4, lr=2e-3, low_res_fraction=0,
                                                                ckpt_every=20), progress=False)
    rows = [line.split(",") for line in (tmp_path / "run/paramnet_d2p_loss.csv").read_text().splitlines()]
    losses = np.array([float(r[1]) for r in rows])
    assert losses[-10:].mean() < 0.5 * losses[:5].mean()
    # resumable: a second call continues from the checkpoint (no new steps when done)
    train_paramnet(cfg, data, ae, tmp_path / "run", TrainConfig(steps=40, batch=4, low_res_fraction=0),
                   progress=False)
    assert len((tmp_path / "run/paramnet_d2p_loss.csv").read_text().splitlines()) == 40
    # continuing a trained model: its Param-Net weights, not a fresh initialisation
    trained = train_paramnet(cfg, data, ae, tmp_path / "run", TrainConfig(steps=40), progress=False)
    cont = train_paramnet(cfg, data, ae, tmp_path / "cont", TrainConfig(steps=0), progress=False,
                          paramnet_init=trained.paramnet.state_dict())
    for k, v in trained.paramnet.state_dict().items():
        torch.testing.assert_close(cont.paramnet.state_dict()[k], v)


def test_log_mse_loss_is_minus_the_mean_per_image_psnr_and_trains(tmp_path):
    from test_simulate_cli import toy_phantom

    from MRISynthLib.data.simulate import ProtocolConfig, make_paper_dataset
    from MRISynthLib.metrics import psnr
    from MRISynthLib.training.reparam import PaperData, TrainConfig, paramnet_loss, train_paramnet

    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    # one image nearly right, two far off: MSE follows the bad ones, log-MSE the mean PSNR
    out = y + torch.tensor([0.01, 0.3, 0.5]).view(3, 1, 1, 1) * torch.randn(3, 1, 16, 16, generator=g)
    per_psnr = [psnr((o[0].numpy() + 1) * 127.5, (t[0].numpy() + 1) * 127.5) for o, t in zip(out, y)]
    mse, mean_psnr = paramnet_loss(out, y, "mse")
    log_mse, mean_psnr2 = paramnet_loss(out, y, "log-mse")
    assert mean_psnr == pytest.approx(np.mean(per_psnr), abs=1e-3) and mean_psnr2 == mean_psnr
    torch.testing.assert_close(mse, ((out - y) ** 2).mean())
    # in dB: 10 / ln 10 x the mean log MSE = 10 log10(4) - the mean per-image PSNR
    assert float(log_mse) * 10 / np.log(10) == pytest.approx(10 * np.log10(4.0) - mean_psnr, abs=1e-3)
    # the nearly right image's share of the gradient: about 1 % under MSE, most of it under
    # log-MSE (each image's gradient divided by its own MSE)
    for kind, share in (("mse", (0.0, 0.02)), ("log-mse", (0.9, 1.0))):
        o = out.clone().requires_grad_(True)
        paramnet_loss(o, y, kind)[0].backward()
        gn = o.grad.flatten(1).norm(dim=1)
        assert share[0] <= float(gn[0] / gn.sum()) <= share[1]
    with pytest.raises(ValueError, match="log-mse"):
        paramnet_loss(out, y, "l1")
    p = make_paper_dataset(tmp_path / "d.h5", ProtocolConfig(n_pairs=12, n_slices=6, size=64, seed=1),
                           progress=False, phantom=toy_phantom())
    cfg = ReparamConfig("d2p", widths="tiny")
    ae = ReparamModel(cfg).autoencoder.state_dict()
    with pytest.raises(ValueError, match="log-mse"):
        train_paramnet(cfg, PaperData(p), ae, tmp_path / "bad", TrainConfig(steps=1, loss="l1"), progress=False)
    torch.manual_seed(0)
    train_paramnet(cfg, PaperData(p), ae, tmp_path / "run", TrainConfig(steps=40, batch=4, lr=2e-3,
                                                                        low_res_fraction=0, loss="log-mse"),
                   progress=False)
    rows = [r.split(",") for r in (tmp_path / "run/paramnet_d2p_loss.csv").read_text().splitlines()]
    batch_psnr = np.array([float(r[2]) for r in rows])
    assert batch_psnr[-10:].mean() > batch_psnr[:5].mean() + 3


def test_continuous_pairs_render_like_the_file_and_keep_away_from_the_test_pairs(tmp_path):
    from test_simulate_cli import toy_phantom

    from MRISynthLib.data.simulate import ProtocolConfig, make_paper_dataset, sample_te_tr
    from MRISynthLib.training.reparam import ContinuousPairs, PaperData

    p = make_paper_dataset(tmp_path / "d.h5", ProtocolConfig(n_pairs=20, n_slices=6, size=64, seed=1),
                           progress=False, phantom=toy_phantom())
    data = PaperData(p)
    c = ContinuousPairs(data, p, phantom=toy_phantom())
    # on the fly, at the file's own training pairs: the file's 8-bit images, exactly
    pairs, sl = data.train_pairs[:6], np.arange(6) % len(data.train_slices)
    np.testing.assert_array_equal(c.render_u8(sl, data.te[pairs], data.tr[pairs]),
                                  data.targets[pairs, data.train_slices[sl]])
    np.testing.assert_array_equal(c.render_u8(sl[:2], [data.default_te] * 2, [data.default_tr] * 2),
                                  data.defaults[0, data.train_slices[sl[:2]]])
    # the box around each held-out pair: 5 % in TE and 0.1 s in TR
    te0, tr0 = data.te[data.test_pairs], data.tr[data.test_pairs]
    assert c.near_test(te0, tr0).all() and c.near_test(te0 * 1.04, tr0 + 0.09).all()
    assert not c.near_test(te0 * 1.06, tr0).any() and not c.near_test(te0, tr0 + 0.11).any()
    te, tr = c.draw(np.random.default_rng(0), 3000)
    assert len(te) == 3000 and not c.near_test(te, tr).any() and np.all(te < tr)
    a, b = sample_te_tr(3000, np.random.default_rng(0))
    assert 0 < c.near_test(a, b).mean() < 0.05   # the boxes exclude something, and little
    # batches: the same interface as the file's, fresh parameters every time
    rng = np.random.default_rng(1)
    for mode, n_params in (("d2p", 4), ("p2p", 8)):
        x, prm, y = c.batch(mode, rng, 5)
        assert x.shape == y.shape == (5, 1, 64, 64) and prm.shape == (5, n_params)
        assert torch.allclose(y.flatten(1).amax(1), torch.ones(5)) and y.min() >= -1
    assert not torch.equal(c.batch("d2p", rng, 5)[1], c.batch("d2p", rng, 5)[1])
    q = make_paper_dataset(tmp_path / "j.h5", ProtocolConfig(n_pairs=4, n_slices=6, size=32, jitter=True),
                           progress=False, phantom=toy_phantom())
    with pytest.raises(ValueError, match="noise-free"):
        ContinuousPairs(PaperData(q), q, phantom=toy_phantom())
    # oversampling the training slices that contain a tissue (here glial matter, label 8,
    # put into the upper half of the toy's slices)
    from MRISynthLib.physics.phantoms import Phantom
    from MRISynthLib.physics.tissues import get_table

    toy = toy_phantom()
    labels = toy.fractions.argmax(0).astype(np.uint8)
    labels[6:, 9:11, 7:9] = 8
    ph = Phantom.from_labels(labels, spacing=(2.0, 2.0, 2.0), table=get_table("mrilab"))
    has = np.isin(data.slice_z[data.train_slices], np.arange(6, 12))
    assert has.any() and not has.all()
    o = ContinuousPairs(data, p, phantom=ph, oversample=(8, 4), min_voxels=1)
    np.testing.assert_allclose(o.slice_p[has] / o.slice_p[~has].max(), 4.0)
    drawn = o.draw_slices(np.random.default_rng(0), 20000)
    expected = 4 * has.sum() / (4 * has.sum() + (~has).sum())
    assert abs(has[drawn].mean() - expected) < 0.02
    assert o.batch("d2p", np.random.default_rng(0), 3)[0].shape == (3, 1, 64, 64)
    assert c.slice_p is None and abs(has[c.draw_slices(np.random.default_rng(0), 20000)].mean() - has.mean()) < 0.02
    for bad in ((8, 0.5), (12, 2)):
        with pytest.raises(ValueError, match="factor"):
            ContinuousPairs(data, p, phantom=ph, oversample=bad)
    with pytest.raises(ValueError, match="no training slice"):
        ContinuousPairs(data, p, phantom=toy, oversample=(8, 2))


def test_flip_average_is_mirror_equivariant(tiny_p2p):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 100, (2, 48, 40)).astype(np.float32)
    args = (0.05, 4.5, 0.1, 3.0)
    avg = reparameterize(img, *args, model=tiny_p2p)
    np.testing.assert_allclose(reparameterize(img[:, :, ::-1].copy(), *args, model=tiny_p2p)[:, :, ::-1], avg,
                               rtol=1e-4, atol=1e-3)
    one = reparameterize(img, *args, model=tiny_p2p, flip_average=False)
    mirrored = reparameterize(img[:, :, ::-1].copy(), *args, model=tiny_p2p, flip_average=False)[:, :, ::-1]
    assert np.abs(one - mirrored).max() > 1e-2          # a single pass is not
    np.testing.assert_allclose(avg, 0.5 * (one + mirrored), rtol=1e-4, atol=1e-3)


def test_bf16_training_runs_the_convolutions_in_bf16_and_lowers_the_loss(tmp_path):
    from test_simulate_cli import toy_phantom

    from MRISynthLib.data.simulate import ProtocolConfig, make_paper_dataset
    from MRISynthLib.training import reparam as tr

    p = make_paper_dataset(tmp_path / "d.h5", ProtocolConfig(n_pairs=12, n_slices=6, size=64, seed=1),
                           progress=False, phantom=toy_phantom())
    data = tr.PaperData(p)
    cfg = ReparamConfig("d2p", widths="tiny")
    ae = ReparamModel(cfg).autoencoder.state_dict()
    with pytest.raises(ValueError, match="precision"):
        tr.train_paramnet(cfg, data, ae, tmp_path / "bad", tr.TrainConfig(steps=1, precision="fp16"),
                          progress=False)
    dtypes = set()
    real_init = tr.ReparamModel.__init__

    def init_with_hook(self, *args, **kwargs):  # record the Param-Net's convolution output dtypes
        real_init(self, *args, **kwargs)
        for mod in self.paramnet.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr.ReparamModel, "__init__", init_with_hook)
        model = tr.train_paramnet(cfg, data, ae, tmp_path / "run",
                                  tr.TrainConfig(steps=40, batch=4, lr=2e-3, low_res_fraction=0, precision="bf16"),
                                  progress=False)
    assert dtypes == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in model.paramnet.state_dict().values() if v.is_floating_point())
    losses = np.array([float(r.split(",")[1]) for r in
                       (tmp_path / "run/paramnet_d2p_loss.csv").read_text().splitlines()])
    assert np.isfinite(losses).all() and losses[-10:].mean() < 0.5 * losses[:5].mean()


def test_random_affine_warps_input_and_target_alike():
    from MRISynthLib.training.reparam import random_affine

    x = -torch.ones(4, 1, 48, 48)
    x[:, :, 10:30, 14:34] = 1.0
    y = 0.5 * x - 0.5  # a target that is a pixelwise function of the input
    xa, ya = random_affine(x, y, np.random.default_rng(0))
    assert xa.shape == x.shape and ya.shape == y.shape
    torch.testing.assert_close(ya, 0.5 * xa - 0.5)        # one warp for both
    assert torch.all(xa[..., 0, 0] == -1.0)                # background stays background
    assert (xa - x).abs().max() > 1.0                      # and the images did move


def test_weights_checksum_is_verified_and_download_is_cached(tmp_path, monkeypatch, tiny_p2p):
    w = tmp_path / "w.safetensors"
    sha = catalog.save_weights(tiny_p2p.state_dict(), w)
    monkeypatch.setattr(catalog, "MODELS_DIR", tmp_path / "shipped")
    monkeypatch.setenv("MRISYNTH_CACHE", str(tmp_path / "cache"))
    card = catalog.ModelCard(id="t", version="1", task="reparam", architecture=tiny_p2p.cfg.to_dict(),
                             weights="w.safetensors", sha256=sha, url=w.as_uri())
    sd = catalog.load_state_dict(card, progress=False)  # downloaded into the cache
    assert (tmp_path / "cache/models/w.safetensors").exists()
    net = ReparamModel(ReparamConfig(**card.architecture))
    net.load_state_dict(sd)
    for k, v in tiny_p2p.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(sd[k], v.half().float())
    bad = catalog.ModelCard(**{**card.__dict__, "sha256": "0" * 64})
    with pytest.raises(ChecksumError):
        catalog.load_state_dict(bad, progress=False)
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped/w.safetensors").write_bytes(w.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ChecksumError):
        catalog.load_state_dict(card, progress=False)


def test_catalog_roundtrip(tmp_path):
    c = catalog.ModelCard(id="a", version="1", task="reparam", architecture={"mode": "d2p"}, weights="a.st",
                          sha256="ab", metrics={"psnr_mean": 30.0})
    catalog.save_catalog({"a": c}, tmp_path / "cat.json")
    back = catalog.load_catalog(tmp_path / "cat.json")
    assert back["a"] == c
    with pytest.raises(ValueError, match="unknown model"):
        catalog.get_card("zzz", back)


def test_shipping_new_weights_keeps_the_previous_model_in_the_history(tmp_path):
    import torch

    lin = torch.nn.Linear(2, 1)
    c1 = catalog.ship("m", "reparam", {"w": 1}, lin.state_dict(), models_dir=tmp_path,
                      training={"steps": 100, "history": {"50": {"psnr_mean": 20.0}}})
    cards = catalog.load_catalog(tmp_path / "catalog.json")
    cards["m"].metrics = {"psnr_mean": 25.0}            # what a benchmark writes
    catalog.save_catalog(cards, tmp_path / "catalog.json")
    with torch.no_grad():
        lin.weight += 1.0
    c2 = catalog.ship("m", "reparam", {"w": 1}, lin.state_dict(), models_dir=tmp_path, training={"steps": 200})
    assert c2.sha256 != c1.sha256 and c2.training["steps"] == 200
    assert c2.training["history"] == {"50": {"psnr_mean": 20.0},
                                      "100": {"sha256": c1.sha256, "metrics": {"psnr_mean": 25.0}}}
    assert c2.metrics == {"psnr_mean": 25.0}            # kept until the benchmark measures again
    assert catalog.load_catalog(tmp_path / "catalog.json")["m"] == c2
    c3 = catalog.ship("m", "reparam", {"w": 1}, lin.state_dict(), models_dir=tmp_path)   # same weights
    assert c3.training == c2.training                  # nothing added, training carried over
    # a continued run names its origin (with that card's training); the origin's history,
    # already in the new card's own history, is not repeated inside continued_from
    with torch.no_grad():
        lin.weight += 1.0
    origin = {"id": "m", "sha256": c3.sha256, "training": {**c3.training, "history": {
        **c3.training["history"], "10": {"psnr_mean": 5.0}}}}
    c4 = catalog.ship("m", "reparam", {"w": 1}, lin.state_dict(), models_dir=tmp_path,
                      training={"steps": 300, "continued_from": origin})
    assert set(c4.training["history"]) == {"50", "100", "200"}
    assert c4.training["continued_from"]["training"]["history"] == {"10": {"psnr_mean": 5.0}}
    assert c4.training["continued_from"]["training"]["steps"] == 200


def test_shipping_keeps_two_replaced_stages_of_the_same_length(tmp_path):
    import torch

    lin = torch.nn.Linear(2, 1)
    shas = []
    for i in range(3):                                   # three stages of 200 steps each
        with torch.no_grad():
            lin.weight += 1.0
        shas.append(catalog.ship("m", "reparam", {"w": 1}, lin.state_dict(), models_dir=tmp_path,
                                 training={"steps": 200}, metrics={"psnr_mean": 20.0 + i}).sha256)
    hist = catalog.load_catalog(tmp_path / "catalog.json")["m"].training["history"]
    assert hist == {"200": {"sha256": shas[0], "metrics": {"psnr_mean": 20.0}},
                    "200#2": {"sha256": shas[1], "metrics": {"psnr_mean": 21.0}}}


def test_reparameterize_keeps_geometry_and_input(tiny_p2p):
    rng = np.random.default_rng(0)
    arr = rng.uniform(0, 500, (3, 40, 56)).astype(np.float32)
    vol = io.Volume(arr.copy(), spacing=(0.9, 0.9, 3.0), origin=(5.0, 6.0, 7.0),
                    direction=(0, 1, 0, 1, 0, 0, 0, 0, -1))
    out = reparameterize(vol, 0.05, 4.5, 0.1, 3.0, model=tiny_p2p)
    assert isinstance(out, io.Volume) and out.array.shape == arr.shape and out.array.dtype == np.float32
    assert out.spacing == vol.spacing and out.origin == vol.origin and out.direction == vol.direction
    np.testing.assert_array_equal(vol.array, arr)  # input untouched
    assert (out.array >= 0).all() and out.array.max() <= arr.max() + 1e-3
    one = reparameterize(arr[1], 0.05, 4.5, 0.1, 3.0, model=tiny_p2p)
    np.testing.assert_allclose(one, out.array[1], rtol=1e-4, atol=1e-3)  # slice-by-slice == 2D call
    zeros = reparameterize(np.zeros((2, 16, 16)), 0.05, 4.5, 0.1, 3.0, model=tiny_p2p)
    assert not zeros.any()


def test_reparameterize_validates_warns_and_cancels(tiny_p2p):
    img = np.ones((32, 32), np.float32)
    with pytest.raises(ValueError, match="shorter than TR"):
        reparameterize(img, 0.05, 4.5, 3.0, 3.0, model=tiny_p2p)
    with pytest.raises(ValueError, match="NaN"):
        reparameterize(np.full((8, 8), np.nan), 0.05, 4.5, 0.1, 3.0, model=tiny_p2p)
    with pytest.raises(ValueError, match="2D image or a 3D"):
        reparameterize(np.ones((2, 2, 8, 8)), 0.05, 4.5, 0.1, 3.0, model=tiny_p2p)
    with pytest.raises(ValueError, match="real-valued"):
        reparameterize(np.ones((8, 8), np.complex64), 0.05, 4.5, 0.1, 3.0, model=tiny_p2p)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        reparameterize(img, 0.05, 4.5, 0.005, 20.0, model=tiny_p2p)
    assert any("outside the trained range" in str(x.message) for x in w)
    with pytest.raises(Cancelled):
        reparameterize(np.ones((4, 16, 16)), 0.05, 4.5, 0.1, 3.0, model=tiny_p2p, batch_size=1,
                       cancel=lambda: True)


# --- the shipped models through the command line -------------------------------------

def test_shipped_models_are_in_the_catalog_and_verified():
    cards = {c.architecture["mode"]: c for c in catalog.list_models("reparam")}
    assert {"d2p", "p2p"} <= set(cards)
    for c in cards.values():
        assert c.shipped_path().exists() and c.shipped_path().stat().st_size < 10_000_000
        catalog.weights_path(c)  # verifies the SHA256


def test_cli_reparam_on_a_volume_png_and_dicom(tmp_path, capsys):
    from PIL import Image

    from MRISynthLib.cli import main
    from MRISynthLib.physics.signal import SequenceParams
    from test_simulate_cli import toy_phantom

    ph = toy_phantom()
    img = ph.render(SequenceParams("se", 0.05, 4.5))[4:7] * 1000  # 3 slices, 20 x 16
    vol = io.Volume(img.astype(np.float32), spacing=(2.0, 2.0, 4.0), origin=(1.0, 2.0, 3.0))
    src = io.write_volume(vol, tmp_path / "in.nrrd")
    before = src.read_bytes()
    out = tmp_path / "out.nrrd"
    for model in ("d2p", "p2p"):
        assert main(["reparam", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--te", "0.1",
                     "--tr", "2.0", "-o", str(out), "--model", model, "--quiet", "--device", "cpu"]) == 0
        r = io.read_volume(out)
        assert r.array.shape == img.shape and r.spacing == vol.spacing and r.origin == vol.origin
        assert np.isfinite(r.array).all() and r.array.max() > 0
        # what the task function gives, flip-averaged by default, one pass with --no-flip-average
        ref = reparameterize(img.astype(np.float32), 0.05, 4.5, 0.1, 2.0, model=model, device="cpu")
        np.testing.assert_allclose(r.array, ref, rtol=1e-4, atol=1e-3)
        assert main(["reparam", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--te", "0.1",
                     "--tr", "2.0", "-o", str(out), "--model", model, "--quiet", "--device", "cpu",
                     "--no-flip-average"]) == 0
        one = reparameterize(img.astype(np.float32), 0.05, 4.5, 0.1, 2.0, model=model, device="cpu",
                             flip_average=False)
        np.testing.assert_allclose(io.read_volume(out).array, one, rtol=1e-4, atol=1e-3)
        assert np.abs(one - ref).max() > 1e-2
    assert src.read_bytes() == before
    # 2D PNG in, PNG out in the 8-bit display range
    png = tmp_path / "in.png"
    Image.fromarray(io.to_uint8(img[1])).save(png)
    assert main(["reparam", "-i", str(png), "--input-te", "0.05", "--input-tr", "4.5", "--te", "0.02",
                 "--tr", "1.5", "-o", str(tmp_path / "out.png"), "--quiet", "--no-flip-average"]) == 0
    o = np.asarray(Image.open(tmp_path / "out.png"))
    assert o.shape == img[1].shape and o.dtype == np.uint8
    # DICOM: input TE/TR come from the header
    d = tmp_path / "dicom"
    d.mkdir()
    write_dicom_series(d, (img * 10).astype(np.int16), tags={"0018|0081": "50", "0018|0080": "4500"})
    assert main(["reparam", "-i", str(d), "--te", "0.1", "--tr", "3", "-o", str(tmp_path / "d.nii.gz"),
                 "--quiet"]) == 0
    assert "TE 50 ms / TR 4500 ms" in capsys.readouterr().out
    nd = tmp_path / "nohdr"
    nd.mkdir()
    write_dicom_series(nd, (img * 10).astype(np.int16))
    assert main(["reparam", "-i", str(nd), "--te", "0.1", "--tr", "3", "-o", str(tmp_path / "e.nrrd")]) == 2
    assert "--input-te" in capsys.readouterr().err
    # errors: bad model, bad times, overwrite of the input
    assert main(["reparam", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--te", "0.1", "--tr", "2",
                 "-o", str(out), "--model", "nope"]) == 2
    assert main(["reparam", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--te", "3", "--tr", "2",
                 "-o", str(out)]) == 2
    assert main(["reparam", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--te", "0.1", "--tr", "2",
                 "-o", str(src)]) == 2
    assert src.read_bytes() == before
