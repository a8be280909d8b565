import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import ROOT, needs_data
from MRISynthLib.cli import build_parser, main
from MRISynthLib.data import io
from MRISynthLib.data.simulate import ProtocolConfig, make_paper_dataset, sample_te_tr
from MRISynthLib.physics.phantoms import Phantom
from MRISynthLib.physics.signal import spin_echo
from MRISynthLib.physics.tissues import get_table
from MRISynthLib.training.reparam import PaperData


def toy_phantom():
    z, y, x = np.mgrid[0:12, 0:20, 0:16]
    r = np.sqrt((y - 10) ** 2 + (x - 8) ** 2)
    labels = np.zeros((12, 20, 16), np.uint8)
    labels[r < 8] = 2
    labels[r < 5] = 3
    labels[r < 2] = 1
    labels[:2] = 0
    return Phantom.from_labels(labels, spacing=(2.0, 2.0, 2.0), table=get_table("mrilab"))


def test_te_tr_sampling_follows_the_protocol():
    te, tr = sample_te_tr(5000, np.random.default_rng(0))
    assert tr.min() >= 1.2 and tr.max() <= 10 and abs(np.mean(tr) - 5.6) < 0.2
    assert te.min() >= 0.02 and te.max() <= 1.0 and np.all(te < tr)
    assert np.median(te) < 0.2  # favours low TE


def test_paper_dataset_layout_split_physics_and_determinism(tmp_path):
    cfg = ProtocolConfig(n_pairs=6, n_slices=4, size=32, seed=3)
    p1 = make_paper_dataset(tmp_path / "a.h5", cfg, progress=False, phantom=toy_phantom())
    p2 = make_paper_dataset(tmp_path / "b.h5", cfg, progress=False, phantom=toy_phantom())
    with h5py.File(p1, "r") as f, h5py.File(p2, "r") as g:
        t = f["targets"][()]
        assert t.shape == (6, len(f["slice_z"]), 32, 32) and t.dtype == np.uint8
        assert f["defaults"].shape == (1,) + t.shape[1:]
        np.testing.assert_array_equal(t, g["targets"][()])
        assert t.max() == 255
        assert f["pair_is_test"][()].sum() == 1 and f["slice_is_test"][()].any()
        te, tr = f["te"][()], f["tr"][()]
        assert np.all(te < tr)
        # contrast follows the spin-echo equation: CSF/WM ratio of a central voxel pair
        tab = get_table("mrilab")
        k = 0
        sc = f["target_scale"][k, 1]
        img = t[k, 1].astype(float) / 255 * sc
        ratio = img[16, 16] / img[16, 10]  # CSF centre vs WM ring
        expect = (spin_echo(tab[1].pd, tab[1].t1, tab[1].t2, te[k], tr[k], exact=True)
                  / spin_echo(tab[3].pd, tab[3].t1, tab[3].t2, te[k], tr[k], exact=True))
        assert ratio == pytest.approx(expect, rel=0.1)
        assert f.attrs["default_te"] == 0.05 and f.attrs["default_tr"] == 4.5
    cfg_n = ProtocolConfig(n_pairs=3, n_slices=2, size=32, seed=3, snr=30, jitter=True)
    p3 = make_paper_dataset(tmp_path / "c.h5", cfg_n, progress=False, phantom=toy_phantom())
    with h5py.File(p3, "r") as f:
        assert f["defaults"].shape[0] == 3 and list(f["default_group"][()]) == [0, 1, 2]
    with pytest.raises(ValueError):
        ProtocolConfig(te_range=(2.0, 3.0))


def test_extra_training_slices_leave_the_paper_split_and_test_set_unchanged(tmp_path):
    base = ProtocolConfig(n_pairs=5, n_slices=4, size=32, seed=2, test_slice_every=3)
    ext = ProtocolConfig(**{**base.__dict__, "extra_train_slices": 3})
    pa = make_paper_dataset(tmp_path / "a.h5", base, progress=False, phantom=toy_phantom())
    pb = make_paper_dataset(tmp_path / "b.h5", ext, progress=False, phantom=toy_phantom())
    with h5py.File(pa, "r") as f, h5py.File(pb, "r") as g:
        n = len(f["slice_z"])
        for k in ("te", "tr", "pair_is_test"):
            np.testing.assert_array_equal(f[k][()], g[k][()])
        np.testing.assert_array_equal(f["slice_z"][()], g["slice_z"][:n])
        np.testing.assert_array_equal(f["slice_is_test"][()], g["slice_is_test"][:n])
        np.testing.assert_array_equal(f["targets"][()], g["targets"][:, :n])
        np.testing.assert_array_equal(f["defaults"][()], g["defaults"][:, :n])
        extra, test_z = g["slice_z"][n:], f["slice_z"][()][f["slice_is_test"][()]]
        assert len(extra) == 3 and not g["slice_is_test"][n:].any()
        assert not set(extra) & set(f["slice_z"][()])
        assert np.abs(extra[:, None] - test_z[None]).min() > 1  # not a held-out slice's neighbour
    assert list(PaperData(pb).train_slices) == list(PaperData(pa).train_slices) + [n, n + 1, n + 2]


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"demo", "simulate", "make-dataset", "fetch-data"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "MRISynthLib", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "MRISynth" in r.stdout


def test_simulate_from_maps_keeps_geometry_and_input(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shape = (3, 10, 12)
    geo = dict(spacing=(0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0), direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    maps = {"pd": rng.uniform(0.5, 1, shape), "t1": rng.uniform(0.5, 2, shape), "t2": rng.uniform(0.05, 0.2, shape)}
    paths = {}
    for k, v in maps.items():
        paths[k] = io.write_volume(io.Volume(v.astype(np.float32), **geo), tmp_path / f"{k}.nrrd")
    before = {k: p.read_bytes() for k, p in paths.items()}
    out = tmp_path / "se.nii.gz"
    rc = main(["simulate", "--pd", str(paths["pd"]), "--t1", str(paths["t1"]), "--t2", str(paths["t2"]),
               "--te", "0.08", "--tr", "2.5", "--output", str(out)])
    assert rc == 0
    v = io.read_volume(out)
    np.testing.assert_allclose(v.spacing, geo["spacing"])
    np.testing.assert_allclose(v.direction, geo["direction"], atol=1e-6)
    exp = spin_echo(maps["pd"], maps["t1"], maps["t2"], 0.08, 2.5, exact=True)
    np.testing.assert_allclose(v.array, exp, rtol=1e-5)
    assert all(p.read_bytes() == before[k] for k, p in paths.items())
    # invalid parameters: clear error, exit 2, no output file
    bad = tmp_path / "bad.nrrd"
    rc = main(["simulate", "--pd", str(paths["pd"]), "--t1", str(paths["t1"]), "--t2", str(paths["t2"]),
               "--te", "3.0", "--tr", "2.5", "--output", str(bad)])
    assert rc == 2 and "TE must be shorter than TR" in capsys.readouterr().err
    assert not bad.exists()
    rc = main(["simulate", "--pd", str(paths["pd"]), "--t1", str(paths["t1"]), "--t2", str(paths["t2"]),
               "--te", "0.01", "--tr", "2.5", "--output", str(paths["pd"])])
    assert rc == 2 and paths["pd"].read_bytes() == before["pd"]
    assert main(["simulate", "--te", "0.01", "--tr", "1", "--pd", str(paths["pd"]), "-o", str(bad)]) == 2


@needs_data("brainweb/BrainModel.mat")
def test_cli_simulate_make_dataset_and_demo_on_brainweb(tmp_path):
    out = tmp_path / "flair.nrrd"
    assert main(["simulate", "--preset", "FLAIR", "--voxel-mm", "4", "--snr", "30", "--output", str(out)]) == 0
    v = io.read_volume(out)
    assert v.array.shape == (45, 54, 45) and v.spacing == (4.0, 4.0, 4.0)
    ds = tmp_path / "d.h5"
    assert main(["make-dataset", "-o", str(ds), "--pairs", "3", "--slices", "2", "--size", "64", "--quiet"]) == 0
    with h5py.File(ds, "r") as f:
        assert f["targets"].shape == (3, 2, 64, 64)
    demo = tmp_path / "demo"
    assert main(["demo", "--output", str(demo), "--voxel-mm", "3", "--quiet", "--no-networks"]) == 0
    names = sorted(p.name for p in demo.iterdir())
    assert names == ["FLAIR.nrrd", "PDw.nrrd", "STIR.nrrd", "T1w.nrrd", "T2w.nrrd", "montage.png"]
    from PIL import Image
    im = Image.open(demo / "montage.png")
    assert im.size[0] > 500 and im.size[1] > 1000
    flair = io.read_volume(demo / "FLAIR.nrrd").array
    t2 = io.read_volume(demo / "T2w.nrrd").array
    # FLAIR nulls CSF: the brightest T2w voxels (CSF) are dark in FLAIR
    csf = t2 >= np.percentile(t2, 99.5)
    assert flair[csf].mean() < 0.3 * flair.max()


def test_fetch_data_from_a_local_mirror(tmp_path, monkeypatch):
    from MRISynthLib.data import download as D
    src = tmp_path / "mirror.mat"
    src.write_bytes(b"brain model bytes")
    monkeypatch.setitem(D.DATA_FILES, "brainweb", D.RemoteFile("brainweb/BrainModel.mat", src.as_uri(),
                                                               D.sha256sum(src), "test"))
    assert main(["fetch-data", "brainweb", "--target", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data/brainweb/BrainModel.mat").read_bytes() == b"brain model bytes"


@needs_data("brainweb/BrainModel.mat")
def test_demo_runs_the_shipped_networks(tmp_path, capsys):
    """The demo's second part: each shipped network's result is written with the
    acquisition it imitates and is closer to its physics reference than its input is."""
    from MRISynthLib.metrics import psnr
    demo = tmp_path / "demo"
    assert main(["demo", "--output", str(demo), "--voxel-mm", "3", "--quiet"]) == 0
    names = {p.name for p in demo.iterdir()}
    assert {"T2w_reparam.nrrd", "FLAIR_synth.nrrd", "T2w_translate.nrrd", "SE_TE50_TR4500.nrrd",
            "networks.png"} <= names
    printed = capsys.readouterr().out
    v = {n: io.read_volume(demo / f"{n}.nrrd") for n in ("T1w", "T2w", "FLAIR", "SE_TE50_TR4500", "T2w_reparam",
                                                         "FLAIR_synth", "T2w_translate")}
    assert v["T2w_reparam"].acquisition == pytest.approx({"te": 0.1, "tr": 4.0})
    assert v["FLAIR_synth"].acquisition["ti"] != pytest.approx(v["FLAIR"].acquisition["ti"])  # nulls its own CSF
    assert v["T2w_translate"].acquisition["te"] > 0.05
    head = v["T2w"].array > 0

    def db(a, b):
        f = [np.clip(x / np.percentile(x[head], 99.5) * 255, 0, 255)[head] for x in (a, b)]
        return psnr(*f)

    for res, src, ref in (("T2w_reparam", "SE_TE50_TR4500", "T2w"), ("FLAIR_synth", "T1w", "FLAIR"),
                          ("T2w_translate", "T1w", "T2w")):
        assert v[res].array.shape == v[ref].array.shape and v[res].spacing == v[ref].spacing
        assert f"{res}.nrrd, PSNR" in printed
        if res != "T2w_translate":
            gain = db(v[res].array, v[ref].array) - db(v[src].array, v[ref].array)
            assert gain > 4.0, (res, gain)
    # the CycleGAN is weak on PSNR (README): check the contrast order it must get right instead
    from MRISynthLib.physics.phantoms import brainweb_phantom
    lab = brainweb_phantom(voxel_mm=3.0, table="mrilab_full").fractions.argmax(0)
    csf, gm, wm = (float(v["T2w_translate"].array[lab == t].mean()) for t in (1, 2, 3))
    assert csf > gm > wm and csf > 1.5 * wm
    t1 = v["T1w"].array
    assert t1[lab == 1].mean() < t1[lab == 3].mean()
    # the synthesized FLAIR's CSF is dark (0.41 of grey matter with the preset-style TI from the
    # table's CSF T1, 0.30 with the TI that nulls the estimated CSF; the truth at 3 mm 0.19)
    fl = v["FLAIR_synth"].array
    assert fl[lab == 1].mean() < 0.35 * fl[lab == 2].mean()
