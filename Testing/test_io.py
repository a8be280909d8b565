import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import write_dicom_series
from MRISynthLib.data import hdf5, io
from MRISynthLib.data.download import ChecksumError, download, sha256sum

ROT = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a 90-degree in-plane rotation


def _vol(rng, shape=(5, 7, 9)):
    return io.Volume(rng.standard_normal(shape).astype(np.float32), spacing=(0.8, 1.2, 3.0),
                     origin=(10.0, -20.5, 33.0), direction=ROT)


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".mha"])
def test_volume_roundtrip_keeps_geometry(tmp_path, rng, ext):
    v = _vol(rng)
    p = io.write_volume(v, tmp_path / f"v{ext}")
    r = io.read_volume(p)
    np.testing.assert_array_equal(r.array, v.array)
    np.testing.assert_allclose(r.spacing, v.spacing)
    np.testing.assert_allclose(r.origin, v.origin, atol=1e-5)
    np.testing.assert_allclose(r.direction, v.direction, atol=1e-6)
    assert oct(os.stat(p).st_mode)[-3:] != "600"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_ijk_to_ras_lps_conversion(rng):
    v = _vol(rng)
    m = io.ijk_to_ras(v)
    # voxel (i, j, k) = (1, 2, 3) through SimpleITK (LPS) then flipped to RAS
    img = v.to_sitk()
    lps = np.array(img.TransformIndexToPhysicalPoint((1, 2, 3)))
    np.testing.assert_allclose(m @ [1, 2, 3, 1], np.r_[io.lps_to_ras_point(lps), 1], atol=1e-9)
    sp, org, d = io.geometry_from_ijk_to_ras(m)
    np.testing.assert_allclose(sp, v.spacing)
    np.testing.assert_allclose(org, v.origin)
    np.testing.assert_allclose(d, v.direction, atol=1e-12)


def test_png_roundtrip_and_rgb_to_grey(tmp_path, rng):
    img = (rng.uniform(size=(20, 30)) * 255).astype(np.uint8)
    p = io.write_volume(io.Volume(img, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), tmp_path / "a.png")
    r = io.read_volume(p)
    assert r.array.shape == (20, 30) and r.is_2d
    np.testing.assert_array_equal(r.array, img)
    rgb = np.stack([img, img, img], -1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    g = io.read_volume(tmp_path / "rgb.png")
    assert g.array.shape == (20, 30)
    np.testing.assert_allclose(g.array, img, atol=1)
    # float 2D images are display-normalised to 8 bits on the way out
    f = io.write_volume(io.Volume(img.astype(np.float32) / 7, (1.0, 1.0), (0, 0), (1, 0, 0, 1)), tmp_path / "f.png")
    assert io.read_volume(f).array.max() == 255


def test_dicom_series_with_acquisition_parameters(tmp_path, rng):
    arr = (rng.uniform(size=(3, 16, 16)) * 1000).astype(np.int16)
    write_dicom_series(tmp_path, arr, tags={"0018|0081": "90", "0018|0080": "3000", "0018|0082": "", "0018|1314": "90"})
    v = io.read_volume(tmp_path)
    assert v.array.shape == (3, 16, 16)
    np.testing.assert_array_equal(v.array, arr)
    assert v.acquisition["te"] == pytest.approx(0.09) and v.acquisition["tr"] == pytest.approx(3.0)
    assert "ti" not in v.acquisition and v.acquisition["flip"] == 90
    np.testing.assert_allclose(v.spacing, (0.9, 0.9, 2.5), rtol=1e-5)
    one = io.read_volume(tmp_path / "s1.dcm")
    assert one.acquisition["tr"] == pytest.approx(3.0)


def test_write_refuses_input_and_bad_data_without_leaving_files(tmp_path, rng):
    v = _vol(rng)
    src = io.write_volume(v, tmp_path / "in.nrrd")
    before = src.read_bytes()
    with pytest.raises(ValueError, match="overwrite the input"):
        io.write_volume(v.with_array(v.array * 2), src, protect=[src])
    assert src.read_bytes() == before
    bad = v.with_array(np.full(v.array.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        io.write_volume(bad, tmp_path / "out.nrrd")
    with pytest.raises(ValueError, match="complex"):
        io.write_volume(v.with_array(v.array.astype(np.complex64)), tmp_path / "c.nrrd")
    with pytest.raises(ValueError, match="format"):
        io.write_volume(v, tmp_path / "x.xyz")
    assert sorted(os.listdir(tmp_path)) == ["in.nrrd"]
    with pytest.raises(FileNotFoundError):
        io.read_volume(tmp_path / "missing.nrrd")
    (tmp_path / "junk.nrrd").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        io.read_volume(tmp_path / "junk.nrrd")


def test_fastmri_layout_roundtrip_and_errors(tmp_path, rng):
    k = (rng.standard_normal((2, 4, 16, 12)) + 1j * rng.standard_normal((2, 4, 16, 12))).astype(np.complex64)
    mask = (rng.uniform(size=12) > 0.5).astype(np.float32)
    p = hdf5.write_fastmri(tmp_path / "f.h5", k, mask=mask, reconstruction_rss=np.abs(k).sum(1),
                           attrs={"acquisition": "SIM"})
    d = hdf5.read_fastmri(p)
    np.testing.assert_array_equal(d["kspace"], k)
    np.testing.assert_array_equal(d["mask"], mask)
    assert d["attrs"]["acquisition"] == "SIM" and d["reconstruction_rss"].shape == (2, 16, 12)
    assert hdf5.read_fastmri(p, slices=1)["kspace"].shape == (1, 4, 16, 12)
    single = hdf5.read_fastmri(hdf5.write_fastmri(tmp_path / "s.h5", k[:, 0]))
    assert single["kspace"].shape == (2, 1, 16, 12)
    import h5py
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["images"] = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match="kspace"):
        hdf5.read_fastmri(tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="mask length"):
        hdf5.write_fastmri(tmp_path / "m.h5", k, mask=np.ones(5))
    with pytest.raises(ValueError, match="complex"):
        hdf5.write_fastmri(tmp_path / "r.h5", np.abs(k))
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ValueError, match="HDF5"):
        hdf5.read_fastmri(tmp_path / "text.h5")


def test_seed004_layout_roundtrip_and_shape_checks(tmp_path, rng):
    imgs = (rng.standard_normal((3, 8, 8)) + 0j).astype(np.complex64)
    maps = np.ones((3, 2, 8, 8), np.complex64)
    masks = np.ones((3, 8, 8))
    p = hdf5.write_seed004(tmp_path / "d.h5", imgs, maps, masks, ksp=maps * 2)
    d = hdf5.read_seed004(p)
    np.testing.assert_array_equal(d["imgs"], imgs)
    assert d["maps"].shape == (3, 2, 8, 8) and d["ksp"].shape == (3, 2, 8, 8)
    with pytest.raises(ValueError, match="maps"):
        hdf5.write_seed004(tmp_path / "e.h5", imgs, maps[:, :, :4], masks)
    with pytest.raises(ValueError, match="masks"):
        hdf5.write_seed004(tmp_path / "e.h5", imgs, maps, masks[:2])
    assert not (tmp_path / "e.h5").exists()
    with pytest.raises(ValueError, match="missing"):
        hdf5.read_seed004(hdf5.write_fastmri(tmp_path / "f.h5", maps[:, 0:1, :, :].squeeze(1)[:, None]))


def test_download_verifies_checksum_and_is_atomic(tmp_path, monkeypatch):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    good = sha256sum(src)
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(ChecksumError):
        download(src.as_uri(), dest, "0" * 64, progress=False)
    assert not dest.exists() and not list((tmp_path / "cache").iterdir())
    download(src.as_uri(), dest, good, progress=False)
    assert dest.read_bytes() == src.read_bytes()
    # present and verified: no second download
    import urllib.request

    def boom(*a, **k):
        raise AssertionError("downloaded again")
    with monkeypatch.context() as m:
        m.setattr(urllib.request, "urlopen", boom)
        assert download(src.as_uri(), dest, good, progress=False) == dest
    with pytest.raises(OSError, match="could not download"):
        download((tmp_path / "nope").as_uri(), tmp_path / "x.bin", good, progress=False)
