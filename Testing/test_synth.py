"""Physics-informed synthesis: renderer, maps, ranges, cache, training, task and CLI."""
import numpy as np
import pytest
import torch

from MRISynthLib.models.quantitative import (P_MAX, T1_RANGE, T2_RANGE, QuantConfig, QuantMaps, QuantNet,
                                             effective_maps, encode_acquisition, flip_averaged, refine_fractions,
                                             render, stack_inputs)
from MRISynthLib.physics.phantoms import Phantom
from MRISynthLib.physics.signal import PRESETS, SequenceParams
from MRISynthLib.physics.tissues import get_table
from MRISynthLib.tasks import synth as synth_task
from MRISynthLib.training.quantitative import (QuantTrainConfig, collate, make_sample, quant_loss,
                                               random_acquisition, train_quantitative, true_maps)


TINY = QuantConfig(widths=[8, 16], head_width=16)
SEQS = [PRESETS[n] for n in ("T1w", "T2w", "PDw", "FLAIR", "STIR", "GRE")] + [
    SequenceParams("se", 0.05, 4.5, exact=False)]


def _fractions(rng, h=24, w=20):
    """Random partial-volume fractions over the 10 BrainWeb labels (sum 1 per voxel)."""
    f = rng.gamma(0.3, size=(10, h, w)).astype(np.float32)
    return f / f.sum(0, keepdims=True)


@pytest.mark.parametrize("seq", SEQS, ids=lambda s: s.describe())
def test_render_matches_phantom_rendering(rng, seq):
    """Compartment rendering == the simulator's sum over tissues of fraction x signal."""
    frac = _fractions(rng)
    table = get_table("mrilab_full")
    lut = table.lookup(10)
    ph = Phantom(frac[:, None], table=table)
    expected = ph.render(seq)[0]
    present = lut["pd"][1:] > 0
    p = torch.from_numpy(lut["pd"][1:, None, None].astype(np.float32) * frac[1:])[None]
    relax = [torch.from_numpy(np.where(present, lut[k][1:], 1.0).astype(np.float32))[None]
             for k in ("t1", "t2", "t2star")]
    got = render(QuantMaps(p, *relax, torch.ones(1)), seq)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_single_compartment_render_is_the_signal_equation(rng):
    pd = rng.uniform(0.5, 1.0, (1, 1, 8, 8)).astype(np.float32)
    t1, t2, t2s = 1.2, 0.09, 0.04
    for seq in SEQS:
        q = QuantMaps(torch.from_numpy(pd), torch.tensor([[t1]]), torch.tensor([[t2]]), torch.tensor([[t2s]]),
                      torch.tensor([2.0]))
        np.testing.assert_allclose(render(q, seq)[0].numpy(), 2.0 * seq.signal(pd[0, 0], t1, t2, t2s), rtol=1e-5)


def test_effective_maps_match_phantom_maps(rng):
    frac = _fractions(rng)
    table = get_table("mrilab")
    lut = table.lookup(10)
    truth = Phantom(frac[:, None], table=table).maps()
    present = lut["pd"][1:] > 0
    m = effective_maps(lut["pd"][1:, None, None] * frac[1:], *[np.where(present, lut[k][1:], 1.0)
                                                                for k in ("t1", "t2", "t2star")])
    for k in ("pd", "t1", "t2", "t2star"):
        np.testing.assert_allclose(m[k], truth[k][0], rtol=1e-4, atol=1e-6)


def test_output_ranges_hold_for_extreme_inputs():
    torch.manual_seed(0)
    net = QuantNet(TINY)
    with torch.no_grad():
        for p_ in net.parameters():
            p_.mul_(50.0)  # drive the output layer into saturation
    imgs = torch.cat([torch.zeros(1, 2, 32, 32), torch.full((1, 2, 32, 32), 1e4),
                      torch.rand(1, 2, 32, 32)])
    acq = torch.randn(3, 2, 8) * 100
    with torch.no_grad():
        q = net(imgs, acq)
    assert q.p.shape == (3, TINY.compartments, 32, 32)
    assert float(q.p.min()) >= 0 and float(q.p.max()) <= P_MAX * (1 + 1e-6)
    frac = torch.softmax(q.logits, 1)
    torch.testing.assert_close(frac.sum(1), torch.ones(3, 32, 32))
    assert float(q.bias.min()) >= 0.74 and float(q.bias.max()) <= 1.35 and float(q.pd.max()) <= 1.2 + 1e-6
    assert float(q.t1.min()) >= T1_RANGE[0] * 0.999 and float(q.t1.max()) <= T1_RANGE[1] * 1.001
    assert float(q.t2.min()) >= T2_RANGE[0] * 0.999 and bool((q.t2 <= q.t1).all())
    assert bool((q.t2s <= q.t2 + 1e-7).all()) and bool((q.t2s > 0).all()) and bool((q.g > 0).all())


def test_odd_sizes_are_padded_and_cropped():
    net = QuantNet(TINY).eval()
    with torch.no_grad():
        q = net(torch.rand(2, 2, 37, 29), torch.zeros(2, 2, 8))
    assert q.p.shape == (2, TINY.compartments, 37, 29)


def test_acquisition_encoding_and_input_stacking():
    a = encode_acquisition(SequenceParams("ir", 0.1, 9.0, ti=2.5))
    assert a[2] == pytest.approx(2.5 / 9.0) and list(a[4:]) == [0, 1, 0, 1]
    assert not encode_acquisition(None).any()
    ims, acq = stack_inputs([np.ones((3, 4, 5))], [PRESETS["T1w"]], 2)
    assert ims.shape == (3, 2, 4, 5) and not ims[:, 1].any() and acq[:, 1].sum() == 0 and (acq[:, 0, 7] == 1).all()
    with pytest.raises(ValueError):
        stack_inputs([np.ones((4, 5)), np.ones((4, 6))], [PRESETS["T1w"], PRESETS["T2w"]], 2)


def _sample_batch(seed=0, n=3, size=32):
    rng = np.random.default_rng(seed)
    return collate([make_sample(_fractions(rng, size, size), rng, 2) for _ in range(n)])


def test_loss_is_small_for_the_truth_and_falls_with_training():
    images, acq, p, relax, present, g, extra = _sample_batch()
    tc = QuantTrainConfig()
    targets = [PRESETS["T2w"], PRESETS["FLAIR"]]
    # the truth itself has zero render/map loss
    truth = true_maps(p * present[:, :, None, None], relax, g)
    _, parts = quant_loss(truth, p, relax, present, g, targets, tc, extra)
    assert parts["render"] < 1e-6 and parts["relax"] < 1e-9 and parts["g"] < 1e-9
    torch.manual_seed(0)
    net = QuantNet(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = quant_loss(net(images, acq), p, relax, present, g, targets, tc, extra)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_trainer_runs_and_resumes(tmp_path):
    rng = np.random.default_rng(1)
    frac = np.stack([_fractions(rng, 40, 40) for _ in range(3)])
    tc = QuantTrainConfig(steps=2, batch=2, crop=32, ckpt_every=1)
    train_quantitative(TINY, tmp_path, tc, fractions=frac, progress=False)
    tc.steps = 3
    train_quantitative(TINY, tmp_path, tc, fractions=frac, progress=False)
    rows = (tmp_path / "quant_loss.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step") and [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert torch.load(tmp_path / "quant_ckpt.pt", weights_only=False)["step"] == 3


def test_random_acquisitions_are_valid():
    rng = np.random.default_rng(3)
    kinds = {random_acquisition(rng).sequence for _ in range(300)}
    assert kinds == {"se", "ir", "gre"}


def test_estimate_cache_render_and_maps(rng):
    torch.manual_seed(0)
    net = QuantNet(TINY).eval()
    vol = rng.uniform(0, 50, (3, 24, 20)).astype(np.float32)
    vol[1] = 0.0  # an empty slice stays empty
    before = vol.copy()
    calls = []
    h = net.register_forward_hook(lambda *a: calls.append(1))
    seq = SequenceParams("se", 0.05, 4.5)
    synth_task.clear_cache()
    e1 = synth_task.estimate_maps(vol, seq, model=net)
    n1 = len(calls)
    e2 = synth_task.estimate_maps(vol, seq, model=net)
    assert e2 is e1 and len(calls) == n1            # cached: no second network pass
    e3 = synth_task.estimate_maps(vol * 2, seq, model=net)
    assert e3 is not e1 and len(calls) > n1
    h.remove()
    np.testing.assert_array_equal(vol, before)
    out = e1.render(PRESETS["FLAIR"])
    assert out.shape == vol.shape and out.dtype == np.float32 and not out[1].any()
    m = e1.maps()
    assert set(m) == {"pd", "t1", "t2", "t2star"} and m["t1"].shape == vol.shape
    assert (m["pd"] >= 0).all() and (m["t1"][m["pd"] > 1e-3] >= T1_RANGE[0] * 0.99).all()
    # one slice at the network's size: the cached render equals the differentiable one
    img = vol[0] / vol[0].max()
    big = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=(256, 256), mode="bilinear",
                                          align_corners=False, antialias=True)[0, 0].numpy()
    big = big / big.max()
    est = synth_task.estimate_maps(big, seq, model=net, use_cache=False, refine=False, flip_average=False)
    x, a = stack_inputs([big], [seq], 2)
    with torch.no_grad():
        q = net(torch.from_numpy(x), torch.from_numpy(a))
        ref = render(q, PRESETS["T2w"])[0].numpy()
    np.testing.assert_allclose(est.render(PRESETS["T2w"]), ref, rtol=2e-3, atol=1e-5)


def test_flip_averaged_estimate_is_mirror_equivariant(rng):
    torch.manual_seed(0)
    net = QuantNet(TINY).eval()
    seq = SequenceParams("se", 0.05, 4.5)
    x, a = stack_inputs([rng.uniform(0, 1, (2, 32, 24)).astype(np.float32)], [seq], 2)
    x, a = torch.from_numpy(x), torch.from_numpy(a)
    with torch.no_grad():
        q, qm = flip_averaged(net, x, a), flip_averaged(net, x.flip(-1), a)
        one, mir = net(x, a), net(x.flip(-1), a)
    torch.testing.assert_close(qm.p.flip(-1), q.p, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(qm.t1, q.t1)
    # the fractions are the mean of the two passes' probabilities; times the geometric mean
    ref = 0.5 * (torch.softmax(one.logits, 1) + torch.softmax(mir.logits, 1).flip(-1))
    torch.testing.assert_close(torch.exp(q.logits), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.t2, torch.sqrt(one.t2 * mir.t2))
    assert (q.t2s <= q.t2 + 1e-7).all() and (q.t2 <= q.t1 + 1e-7).all()
    assert (one.p.flip(-1) - mir.p).abs().max() > 1e-4      # one pass alone is not equivariant
    # the task function, refinement included, with and without averaging
    vol = rng.uniform(0, 50, (2, 24, 20)).astype(np.float32)
    e = synth_task.estimate_maps(vol, seq, model=net, use_cache=False)
    em = synth_task.estimate_maps(vol[:, :, ::-1].copy(), seq, model=net, use_cache=False)
    np.testing.assert_allclose(em.render(PRESETS["T2w"])[:, :, ::-1], e.render(PRESETS["T2w"]), rtol=1e-3, atol=1e-4)
    e1 = synth_task.estimate_maps(vol, seq, model=net, use_cache=False, flip_average=False)
    assert np.abs(e1.render(PRESETS["T2w"]) - e.render(PRESETS["T2w"])).max() > 1e-4


def test_estimate_rejects_bad_input():
    net = QuantNet(TINY)
    seq = SequenceParams("se", 0.05, 4.5)
    bad = np.ones((4, 4), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        synth_task.estimate_maps(bad, seq, model=net)
    with pytest.raises(ValueError, match="acquisition"):
        synth_task.estimate_maps([np.ones((4, 4))] * 2, [seq], model=net)
    with pytest.raises(ValueError, match="at most"):
        synth_task.estimate_maps([np.ones((4, 4))] * 3, [seq] * 3, model=net)
    with pytest.raises(ValueError):
        SequenceParams("se", 0.5, 0.4)  # TE >= TR never reaches the renderer


def test_refinement_recovers_two_tissue_partial_volume():
    """A hedged split between the right two classes and a 10 % wrong intensity scale are
    corrected by re-rendering the input (data consistency), to the scale search's
    precision (the hedge was off by 0.25)."""
    K, H, W = 3, 6, 8
    t = torch.linspace(0, 1, W).expand(H, W)                 # true WM fraction across the image
    true = torch.zeros(1, K + 1, H, W)
    true[0, 2], true[0, 3] = 1 - t, t                        # GM | WM mixture, no background
    pd = torch.tensor([[1.0, 0.8, 0.65]])
    relax = [torch.tensor([[4.5, 0.95, 0.6]]), torch.tensor([[2.2, 0.1, 0.08]]), torch.tensor([[1.1, 0.05, 0.04]])]
    seq = SequenceParams("se", 0.05, 4.5)
    truth = QuantMaps(pd[:, :, None, None] * true[:, 1:], *relax, torch.tensor([1.7]))
    image = render(truth, seq)
    hedged = 0.5 * true + 0.25 * torch.stack([torch.zeros(H, W), torch.zeros(H, W), torch.ones(H, W),
                                              torch.ones(H, W)])[None]
    q = QuantMaps(pd[:, :, None, None] * hedged[:, 1:], *relax, torch.tensor([1.7 * 0.9]), torch.log(hedged), pd, torch.ones(1, H, W))
    r = refine_fractions(q, image, seq, lam=1e-8, eps=1e-12, iters=1)
    assert abs(float(r.g) / 1.7 - 1) < 2e-3
    torch.testing.assert_close(torch.softmax(r.logits, 1), true, atol=5e-3, rtol=0)
    torch.testing.assert_close(render(r, seq), image, atol=2e-3, rtol=0)
    torch.testing.assert_close(render(r, PRESETS["FLAIR"]), render(truth, PRESETS["FLAIR"]), atol=2e-3, rtol=0)


def _three_tissue_case():
    """GM/WM/CSF mixtures and a row of each pure tissue (no background), and a network-like
    estimate that has the right classes but the wrong proportions and a 5 % wrong scale; two spin-echo inputs rendered
    from the truth, each normalised to its maximum."""
    K, H, W = 3, 6, 7
    g = torch.Generator().manual_seed(0)
    true = torch.zeros(1, K + 1, H, W)
    torch.manual_seed(0)
    true[0, 1:] = torch.distributions.Dirichlet(torch.ones(3)).sample((H, W)).permute(2, 0, 1)
    true[0, 1:, :3] = torch.eye(3)[:, :, None]               # a row of pure CSF, GM and WM each
    guess = torch.zeros_like(true)
    guess[0, 1:] = 0.6 * true[0, 1:] + 0.4 * torch.rand(3, H, W, generator=g)
    guess[0, 1:] /= guess[0, 1:].sum(0, keepdim=True)
    pd = torch.tensor([[1.0, 0.8, 0.65]])
    relax = [torch.tensor([[4.5, 0.95, 0.6]]), torch.tensor([[2.2, 0.1, 0.08]]), torch.tensor([[1.1, 0.05, 0.04]])]
    seqs = [SequenceParams("se", 0.05, 4.5), SequenceParams("se", 0.015, 0.6)]
    truth = QuantMaps(pd[:, :, None, None] * true[:, 1:], *relax, torch.tensor([1.0]))
    images = [render(truth, s) for s in seqs]
    g = 1.0 / images[0].amax()                               # PD -> the normalised first input
    truth = QuantMaps(truth.p, *relax, g.reshape(1))
    q = QuantMaps(pd[:, :, None, None] * guess[:, 1:], *relax, 1.05 * g.reshape(1), torch.log(guess.clamp_min(1e-12)),
                  pd, torch.ones(1, H, W))
    return true, truth, q, seqs, [im / im.amax() for im in images]


def test_refinement_with_two_inputs_resolves_three_tissue_mixtures():
    """One input cannot fix a three-tissue mixture (one equation, two unknowns); with a
    second contrast the refinement recovers the fractions, whatever that input's scale."""
    true, truth, q, seqs, images = _three_tissue_case()
    frac_err = lambda r: float((torch.softmax(r.logits, 1) - true).abs().max())  # noqa: E731
    flair_err = lambda r: float((render(r, PRESETS["FLAIR"]) - render(truth, PRESETS["FLAIR"])).abs().max())  # noqa: E731
    one = refine_fractions(q, images[0], seqs[0], lam=1e-4, eps=1e-6, iters=3)
    both = refine_fractions(q, torch.stack(images, 1), seqs, lam=1e-4, eps=1e-6, iters=3)
    assert frac_err(both) < 0.05 < 0.3 < frac_err(one)
    assert flair_err(both) < 0.1 * flair_err(one)
    torch.testing.assert_close(render(both, seqs[0]), images[0], atol=5e-3, rtol=0)
    # the second input's scale is fitted: a rescaled second image works as well
    again = refine_fractions(q, torch.stack([images[0], 0.37 * images[1]], 1), seqs, lam=1e-4, eps=1e-6, iters=3)
    assert frac_err(again) < 0.05


def test_refinement_top_k_moves_only_the_most_likely_classes():
    true, truth, q, seqs, images = _three_tissue_case()
    f0 = torch.softmax(q.logits, 1)
    f = torch.softmax(refine_fractions(q, images[0], seqs[0], top=2).logits, 1)
    inside = torch.zeros_like(f0, dtype=torch.bool).scatter(1, f0.topk(2, dim=1).indices, True)
    torch.testing.assert_close(f[~inside], f0[~inside], atol=2e-3, rtol=0)
    assert float((f - f0)[inside].abs().max()) > 0.05
    with pytest.raises(ValueError, match="top"):
        refine_fractions(q, images[0], seqs[0], top=1)


def test_refinement_keeps_fraction_sums_and_validates_arguments():
    true, truth, q, seqs, images = _three_tissue_case()
    r = refine_fractions(q, images[0] + 0.05 * torch.rand(images[0].shape), seqs[0])   # noisy input, defaults
    f = torch.softmax(r.logits, 1)
    assert float(f.min()) >= 0
    torch.testing.assert_close(f.sum(1), torch.ones_like(f.sum(1)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="acquisition"):
        refine_fractions(q, torch.stack(images, 1), seqs[:1])
    with pytest.raises(ValueError, match="lam > 0"):
        refine_fractions(q, images[0], seqs[0], lam=0.0)


def test_resume_with_fewer_steps_keeps_the_checkpoint_step(tmp_path):
    rng = np.random.default_rng(2)
    frac = np.stack([_fractions(rng, 40, 40) for _ in range(2)])
    train_quantitative(TINY, tmp_path, QuantTrainConfig(steps=3, batch=2, crop=32), fractions=frac, progress=False)
    train_quantitative(TINY, tmp_path, QuantTrainConfig(steps=1, batch=2, crop=32), fractions=frac, progress=False)
    assert torch.load(tmp_path / "quant_ckpt.pt", weights_only=False)["step"] == 3


def test_null_ti_nulls_the_estimated_compartment():
    """The nulling TI comes from the estimate's own T1 of CSF (compartment 0) or fat (3): a
    pure voxel of that compartment renders black, one of another does not."""
    k = 9
    t1 = np.array([4.0, 0.98, 0.6, 0.3, 1.1, 0.3, 0.1, 0.97, 1.0], np.float32)
    t2 = np.full(k, 0.08, np.float32)
    scaled = np.zeros((k, 1, 2, 2), np.float32)
    scaled[0, 0, 0, 0] = scaled[3, 0, 0, 1] = scaled[1, 0, 1, 0] = 1.0
    est = synth_task.MapEstimate(scaled, np.ones(1, np.float32), t1, t2, t2.copy())
    flair, stir = PRESETS["FLAIR"], PRESETS["STIR"]
    for tissue, target, px in (("csf", flair, (0, 0)), ("fat", stir, (0, 1))):
        seq = synth_task.nulled(target, est, tissue)
        assert seq.ti != target.ti and (seq.te, seq.tr) == (target.te, target.tr)
        out = est.render(seq)[0]
        assert abs(out[px]) < 1e-5 and abs(out[1, 0]) > 0.05
        assert abs(est.render(target)[0][px]) > 1e-3      # the preset's TI leaves it grey
    assert synth_task.nulled(flair, est, None) is flair
    with pytest.raises(ValueError, match="inversion-recovery"):
        synth_task.nulled(PRESETS["T2w"], est, "csf")
    with pytest.raises(ValueError, match="tissue must be one of"):
        est.null_ti("wm", 9.0, 0.1)


def test_cli_synth_with_the_shipped_model_writes_image_and_maps(tmp_path):
    from MRISynthLib.cli import main
    from MRISynthLib.data import io

    rng = np.random.default_rng(4)
    ph = Phantom(np.stack([_fractions(rng, 40, 48) for _ in range(3)], 1), table=get_table("mrilab"))
    img = ph.render(SequenceParams("se", 0.05, 4.5))
    vol = io.Volume(img.astype(np.float32), spacing=(0.9, 0.8, 3.0), origin=(5.0, -2.0, 1.0))
    src = io.write_volume(vol, tmp_path / "pd.nrrd")
    before = src.read_bytes()
    out = tmp_path / "flair.nrrd"
    assert main(["synth", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--preset", "FLAIR",
                 "-o", str(out), "--save-maps", "--quiet"]) == 0
    r = io.read_volume(out)
    assert r.array.shape == img.shape and r.spacing == vol.spacing and r.origin == vol.origin
    assert np.isfinite(r.array).all() and r.array.max() > 0
    for name in ("pd", "t1", "t2", "t2star"):
        m = io.read_volume(tmp_path / f"flair_{name}.nrrd")
        assert m.array.shape == img.shape and m.spacing == vol.spacing and (m.array >= 0).all()
    t1 = io.read_volume(tmp_path / "flair_t1.nrrd").array
    assert T1_RANGE[0] * 0.99 <= t1[t1 > 0].min() and t1.max() <= T1_RANGE[1] * 1.01
    assert src.read_bytes() == before
    # the CLI renders what the task function gives, flip-averaged by default or in one pass
    got = []
    for flag in ((), ("--no-flip-average",)):
        assert main(["synth", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--preset", "T2w",
                     "-o", str(tmp_path / "t2w.nrrd"), "--quiet", "--device", "cpu", *flag]) == 0
        ref = synth_task.estimate_maps(img.astype(np.float32), SequenceParams("se", 0.05, 4.5), device="cpu",
                                       flip_average=not flag).render(PRESETS["T2w"])
        got.append(io.read_volume(tmp_path / "t2w.nrrd").array)
        np.testing.assert_allclose(got[-1], ref, rtol=1e-4, atol=1e-6)
    assert np.abs(got[0] - got[1]).max() > 1e-3 * got[0].max()
    # a 2D PNG in, a PNG out; bad parameters fail cleanly
    png = io.write_volume(io.Volume(np.round(img[1] / img[1].max() * 255).astype(np.uint8)), tmp_path / "in.png")
    assert main(["synth", "-i", str(png), "--input-te", "0.05", "--input-tr", "4.5", "--sequence", "se",
                 "--te", "0.1", "--tr", "3", "-o", str(tmp_path / "t2.png"), "--quiet"]) == 0
    assert io.read_volume(tmp_path / "t2.png").array.shape == img[1].shape
    assert main(["synth", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--sequence", "se",
                 "--te", "3", "--tr", "2", "-o", str(tmp_path / "bad.nrrd")]) == 2
    assert not (tmp_path / "bad.nrrd").exists()
    # --null csf: the TI that nulls the estimated CSF, written to the header
    assert main(["synth", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--preset", "FLAIR",
                 "--null", "csf", "-o", str(tmp_path / "flair_null.nrrd"), "--quiet"]) == 0
    est = synth_task.estimate_maps(img.astype(np.float32), SequenceParams("se", 0.05, 4.5))
    ti = est.null_ti("csf", PRESETS["FLAIR"].tr, PRESETS["FLAIR"].te)
    got = io.read_volume(tmp_path / "flair_null.nrrd")
    assert got.acquisition["ti"] == pytest.approx(ti)
    np.testing.assert_allclose(got.array, est.render(SequenceParams("ir", PRESETS["FLAIR"].te, PRESETS["FLAIR"].tr,
                                                                    ti=ti)), rtol=1e-4, atol=1e-6)
    assert main(["synth", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--preset", "T2w",
                 "--null", "csf", "-o", str(tmp_path / "bad.nrrd")]) == 2
    assert not (tmp_path / "bad.nrrd").exists()


def test_exported_card_records_the_training_seed(tmp_path, monkeypatch):
    from MRISynthLib import catalog

    monkeypatch.setattr(catalog, "MODELS_DIR", tmp_path)
    card = synth_task.export_model(QuantNet(TINY), "q", QuantTrainConfig(steps=3, seed=7))
    assert card.training["seed"] == 7 and card.training["steps"] == 3
    assert (tmp_path / "q.safetensors").exists() and (tmp_path / "catalog.json").exists()


def test_task_refines_against_every_input():
    """With two inputs the task's estimate re-renders the second one too (the refinement
    uses both); from the first alone it does not know the second contrast as well."""
    rng = np.random.default_rng(6)
    ph = Phantom(np.stack([_fractions(rng, 40, 48) for _ in range(2)], 1), table=get_table("mrilab"))
    seqs = [SequenceParams("se", 0.05, 4.5), SequenceParams("se", 0.015, 0.6)]
    imgs = [ph.render(s).astype(np.float32) for s in seqs]

    def second_error(est):
        r = est.render(seqs[1])
        r = r * (r * imgs[1]).sum() / (r * r).sum()          # the second input's units
        return float(np.abs(r - imgs[1]).mean() / imgs[1].mean())

    one = synth_task.estimate_maps(imgs[0], seqs[0], use_cache=False, flip_average=False)
    both = synth_task.estimate_maps(imgs, seqs, use_cache=False, flip_average=False)
    assert second_error(both) < 0.75 * second_error(one)   # refined against the first input only: 0.88 x


def test_assisted_estimate_fits_the_predicted_contrasts(monkeypatch):
    """Param-Net assistance: the Param-Net is asked for every grid contrast from the input's
    TE/TR (d2p for the default acquisition, p2p otherwise) and each prediction enters the
    refinement. With an oracle in its place (the phantom's true spin echoes, at an arbitrary
    scale), contrasts far from the input render much closer to the truth than from the
    input alone; cached; bad settings are refused."""
    from MRISynthLib.tasks import reparam as reparam_task

    rng = np.random.default_rng(6)
    ph = Phantom(np.stack([_fractions(rng, 40, 48) for _ in range(2)], 1), table=get_table("mrilab"))
    seq = SequenceParams("se", 0.05, 4.5)
    img = ph.render(seq).astype(np.float32)
    calls = []

    def oracle(arr, in_te, in_tr, te, tr, model=None, progress_callback=None, **kw):
        calls.append((in_te, in_tr, te, tr, model, arr))
        if progress_callback is not None:
            progress_callback(1.0)
        return 3.7 * ph.render(SequenceParams("se", te, tr)).astype(np.float32)

    monkeypatch.setattr(reparam_task, "reparameterize", oracle)

    def error(est, s):
        r, t = est.render(s), ph.render(s)
        r = r * (r * t).sum() / (r * r).sum()
        return float(np.abs(r - t).mean() / t.mean())

    synth_task.clear_cache()
    one = synth_task.estimate_maps(img, seq, use_cache=False, flip_average=False)
    progress = []
    # perfect predictions deserve more weight than the default (chosen for the Param-Nets' errors)
    est = synth_task.assisted_maps(img, seq, flip_average=False, progress_callback=progress.append, weight=0.1)
    assert [c[2:4] for c in calls] == synth_task.assist_contrasts()
    assert all(c[:2] == (0.05, 4.5) and c[4] == "d2p" and np.array_equal(c[5], img) for c in calls)
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    # one report per Param-Net pass, then the estimate, which takes most of the bar (most of the time)
    assert len(progress) > len(calls) and progress[len(calls) - 1] < 0.5
    # (the relaxation times stay the network's, on this random-mixture phantom a few per cent
    # off: 0.73-0.77 x the one-input error at these contrasts)
    for s in (PRESETS["T1w"], PRESETS["FLAIR"], SequenceParams("se", 0.3, 10.0)):
        assert error(est, s) < 0.85 * error(one, s), s.describe()
    n = len(calls)
    assert synth_task.assisted_maps(img, seq, flip_average=False, weight=0.1) is est and len(calls) == n  # cached
    # the refinement's iteration count reaches estimate_maps (and the cache key)
    few = synth_task.assisted_maps(img, seq, flip_average=False, weight=0.1, refine_iters=1)
    assert few is not est and not np.allclose(few.render(PRESETS["T1w"]), est.render(PRESETS["T1w"]))
    other = SequenceParams("se", 0.015, 0.6)
    synth_task.assisted_maps(ph.render(other).astype(np.float32), other, use_cache=False, flip_average=False,
                             contrasts=[(0.1, 4.0)])
    assert calls[-1][:2] == (0.015, 0.6) and calls[-1][4] == "p2p"
    with pytest.raises(ValueError, match="spin-echo"):
        synth_task.assisted_maps(img, PRESETS["GRE"])
    with pytest.raises(ValueError, match="weight"):
        synth_task.assisted_maps(img, seq, weight=0.0)
    with pytest.raises(ValueError, match="contrast"):
        synth_task.assisted_maps(img, seq, contrasts=[])
    with pytest.raises(ValueError, match="shape"):
        synth_task.estimate_maps(img, seq, refine_extra=[(img[0], seq, 1.0)])
    with pytest.raises(ValueError, match="refine=True"):
        synth_task.estimate_maps(img, seq, refine=False, refine_extra=[(img, seq, 1.0)])


def test_cli_synth_assist_runs_the_assisted_estimate(tmp_path, capsys):
    from MRISynthLib.cli import main
    from MRISynthLib.data import io

    rng = np.random.default_rng(8)
    ph = Phantom(np.stack([_fractions(rng, 40, 48) for _ in range(2)], 1), table=get_table("mrilab"))
    img = ph.render(SequenceParams("se", 0.05, 4.5)).astype(np.float32)
    src = io.write_volume(io.Volume(img, spacing=(0.9, 0.8, 3.0)), tmp_path / "pd.nrrd")
    out = tmp_path / "flair.nrrd"
    assert main(["synth", "-i", str(src), "--input-te", "0.05", "--input-tr", "4.5", "--preset", "FLAIR",
                 "-o", str(out), "--assist", "--no-flip-average", "--quiet", "--device", "cpu"]) == 0
    assert "Param-Net assisted" in capsys.readouterr().out
    ref = synth_task.assisted_maps(img, SequenceParams("se", 0.05, 4.5), device="cpu", flip_average=False)
    np.testing.assert_allclose(io.read_volume(out).array, ref.render(PRESETS["FLAIR"]), rtol=1e-4, atol=1e-6)
    plain = synth_task.estimate_maps(img, SequenceParams("se", 0.05, 4.5), device="cpu", flip_average=False)
    assert np.abs(ref.render(PRESETS["FLAIR"]) - plain.render(PRESETS["FLAIR"])).max() > 1e-3 * img.max()
    t1 = io.write_volume(io.Volume(ph.render(PRESETS["T1w"]).astype(np.float32)), tmp_path / "t1.nrrd")
    assert main(["synth", "-i", str(src), "-i", str(t1), "--input-te", "0.05", "--input-te", "0.015", "--input-tr",
                 "4.5", "--input-tr", "0.5", "--preset", "FLAIR", "-o", str(tmp_path / "x.nrrd"), "--assist"]) == 2
    assert "one spin-echo input" in capsys.readouterr().err and not (tmp_path / "x.nrrd").exists()


@pytest.mark.parametrize("n_inputs", [1, 2, 3, 7])
def test_fraction_update_solves_the_constrained_least_squares(n_inputs):
    """One refinement update against a per-voxel KKT solve of
    min lam sum_k d_k^2 / w_k + sum_j (A d - e)_j^2 subject to sum_k d_k = 0, for one, two
    and three inputs (the M x M path) and for more inputs than classes (the class-space path)."""
    from MRISynthLib.models.quantitative import _fraction_update

    g = torch.Generator().manual_seed(n_inputs)
    B, K1, H, W, lam, eps = 2, 4, 3, 5, 1e-2, 1e-2
    f = torch.rand(B, K1, H, W, generator=g) + 0.5
    f = f / f.sum(1, keepdim=True)
    base = torch.rand(B, n_inputs, K1, generator=g)
    base[:, :, 0] = 0.0                                                  # the "no tissue" class
    scale = 0.5 + torch.rand(B, n_inputs, generator=g)
    b = 0.8 + 0.4 * torch.rand(B, H, W, generator=g)
    model = scale[:, :, None, None] * b[:, None] * torch.einsum("bmk,bkhw->bmhw", base, f)
    imgs = model + 0.01 * torch.randn(model.shape, generator=g)          # small residuals: no clipping
    got = _fraction_update(f, base, scale, b, imgs, lam, eps)
    fd, bd = f.double().numpy(), base.double().numpy()
    for i in range(B):
        for y in range(H):
            for x in range(W):
                A = (scale[i].double().numpy() * float(b[i, y, x]))[:, None] * bd[i]
                e = imgs[i, :, y, x].double().numpy() - A @ fd[i, :, y, x]
                kkt = np.zeros((K1 + 1, K1 + 1))
                kkt[:K1, :K1] = 2 * (lam * np.diag(1 / (fd[i, :, y, x] + eps)) + A.T @ A)
                kkt[:K1, K1] = kkt[K1, :K1] = 1.0
                d = np.linalg.solve(kkt, np.concatenate([2 * A.T @ e, [0.0]]))[:K1]
                np.testing.assert_allclose(got[i, :, y, x].double().numpy(), fd[i, :, y, x] + d, atol=2e-5)
