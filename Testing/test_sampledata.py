"""The shipped sample data: checksums, headers, the download path, and each task on them."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from MRISynthLib.data.download import ChecksumError, download
from MRISynthLib.data.io import Volume, read_volume, sequence_metadata, write_volume
from MRISynthLib.metrics import psnr
from MRISynthLib.physics.signal import SequenceParams
from MRISynthLib.sampledata import SAMPLE_DIR, load_samples, sample_path


def test_manifest_checksums_thumbnails_and_kinds():
    samples = load_samples()
    assert {s.kind for s in samples.values()} == {"volume", "kspace"}
    for s in samples.values():
        sample_path(s.name)  # raises ChecksumError on a mismatch
        assert s.thumbnail_path().is_file() and s.path().parent == SAMPLE_DIR
        assert s.checksum() == f"SHA256:{s.sha256}" and s.uri().startswith("file://")
    with pytest.raises(KeyError, match="no sample"):
        sample_path("nope")


def test_volume_samples_carry_their_acquisition_and_geometry():
    for s in load_samples().values():
        if s.kind != "volume":
            continue
        v = read_volume(s.path())
        assert v.array.dtype == np.int16 and v.array.ndim == 3
        assert v.spacing == pytest.approx((2.0, 2.0, 2.0))
        assert v.acquisition == pytest.approx(s.acquisition)


def test_header_acquisition_round_trip_and_outputs_describe_the_target(tmp_path):
    seq = SequenceParams("ir", 0.12, 9.0, ti=2.5)
    write_volume(Volume(np.ones((2, 3, 4), np.float32), metadata=sequence_metadata(seq)), tmp_path / "f.nrrd")
    assert read_volume(tmp_path / "f.nrrd").acquisition == pytest.approx({"te": 0.12, "tr": 9.0, "ti": 2.5})
    # the CLI reads TE/TR from the header and writes the target's (not the input's) into the output
    src = sample_path("MRISynthBrainWebSE")
    v = read_volume(src)
    small = tmp_path / "in.nrrd"
    write_volume(Volume(v.array[44:46], v.spacing, v.origin, v.direction, dict(v.metadata)), small)
    r = subprocess.run([sys.executable, "-m", "MRISynthLib", "reparam", "-i", str(small), "-o", str(tmp_path / "o.nrrd"),
                        "--te", "0.09", "--tr", "3.0", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_volume(tmp_path / "o.nrrd").acquisition == pytest.approx({"te": 0.09, "tr": 3.0})


def test_download_code_on_the_shipped_file(tmp_path):
    s = load_samples()["MRISynthBrainWebT1w"]
    dest = download(s.uri(), tmp_path / "cache" / s.file, s.sha256, progress=False)
    assert dest.read_bytes() == s.path().read_bytes()
    with pytest.raises(ChecksumError):
        download(s.uri(), tmp_path / "other" / s.file, "0" * 64, progress=False)
    assert not (tmp_path / "other" / s.file).exists() and not list((tmp_path / "other").glob(".tmp-*"))


def test_reparam_and_translation_on_the_samples_beat_copying_the_input():
    from MRISynthLib.tasks.reparam import reparameterize
    from MRISynthLib.tasks.translate import translate

    se, t1, t2 = (read_volume(sample_path(f"MRISynthBrainWeb{n}")).array[42:48].astype(np.float32)
                  for n in ("SE", "T1w", "T2w"))
    rng = float(t2.max())
    d2p = reparameterize(se, 0.05, 4.5, 0.1, 4.0, model="d2p", progress=False)
    assert psnr(d2p, t2, rng) > psnr(se, t2, rng) + 5
    gen = translate(t1, "t1_to_t2", progress=False)
    assert psnr(gen, t2, rng) > psnr(t1, t2, rng) + 2


def test_kspace_sample_reconstructs():
    from MRISynthLib.data.hdf5 import read_kspace_file
    from MRISynthLib.tasks.recon import reconstruct

    path = sample_path("MRISynthBrainWebKspace")
    k, mask, maps, attrs = read_kspace_file(path)
    assert k.shape == (4, 8, 216, 180) and maps is None and float(attrs["acceleration"]) == pytest.approx(4, rel=0.05)
    with h5py.File(path) as f:
        ref = f["reconstruction_rss"][1:2]
    zf = psnr(np.abs(reconstruct(k[1:2], mask=mask, method="zero-filled", progress=False)), ref, 1.0)
    cg = psnr(np.abs(reconstruct(k[1:2], mask=mask, method="cg-sense", progress=False)), ref, 1.0)
    net = psnr(np.abs(reconstruct(k[1:2], mask=mask, method="unrolled", progress=False)), ref, 1.0)
    assert cg > zf + 3 and net > zf + 5


def test_manifest_reads_before_the_dependencies_are_installed():
    """The module registers the samples at Slicer's startup, before torch/tqdm/scipy exist."""
    code = ("import sys\nfor m in ('tqdm', 'numpy', 'torch', 'scipy', 'h5py', 'SimpleITK'): sys.modules[m] = None\n"
            "import MRISynthLib.sampledata as s\nprint(len(s.load_samples()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == len(load_samples())
