#!/usr/bin/env python
"""Write MRISynth's sample data (MRISynthLib/Resources/sample_data) from the BrainWeb model.

- three spin-echo volumes at 2 mm (the seed paper's MRiLab grid), Rician noise at SNR 60,
  stored as int16 like scanner data, with TE/TR in the NRRD header: the Default-to-Param
  input (TE 50 ms / TR 4.5 s), a T1-weighted (TE 15 ms / TR 500 ms) and a T2-weighted
  (TE 100 ms / TR 4 s) volume;
- a k-space file: 4 axial 1 mm T2-weighted slices with a smooth phase, 8 birdcage coils,
  SNR 40, variable-density 1D mask at R = 4 (fastMRI layout, geometry kept);
- a thumbnail per sample and ``samples.json`` with SHA256s.

The files are deterministic for a given seed; re-run after changing the simulator and
commit the result (the Library's CMakeLists is regenerated too).
"""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from MRISynthLib.data.download import sha256sum  # noqa: E402
from MRISynthLib.data.io import Volume, sequence_metadata, write_volume  # noqa: E402
from MRISynthLib.physics.phantoms import add_noise, brainweb_phantom  # noqa: E402
from MRISynthLib.physics.signal import PRESETS, SequenceParams  # noqa: E402
from MRISynthLib.sampledata import SAMPLE_DIR, Sample, save_samples  # noqa: E402
from MRISynthLib.tasks.recon import write_undersampled  # noqa: E402

VOLUMES = [
    ("MRISynthBrainWebSE", "BrainWeb SE\nTE 50 / TR 4500", SequenceParams("se", 0.05, 4.5, name="SE"),
     "Spin echo TE 50 ms / TR 4.5 s (the Default-to-Param input), BrainWeb, 2 mm, SNR 60"),
    ("MRISynthBrainWebT1w", "BrainWeb T1w\nTE 15 / TR 500", PRESETS["T1w"],
     "T1-weighted spin echo TE 15 ms / TR 500 ms, BrainWeb, 2 mm, SNR 60"),
    ("MRISynthBrainWebT2w", "BrainWeb T2w\nTE 100 / TR 4000", PRESETS["T2w"],
     "T2-weighted spin echo TE 100 ms / TR 4 s, BrainWeb, 2 mm, SNR 60"),
]


def thumbnail(img2d, path, size=128):
    from PIL import Image

    a = np.asarray(img2d, float)
    a = np.clip(a / max(np.percentile(a, 99.5), 1e-9), 0, 1)
    im = Image.fromarray((a * 255).astype(np.uint8)).resize((size, size * a.shape[0] // a.shape[1]),
                                                            Image.LANCZOS)
    canvas = Image.new("L", (size, size))
    canvas.paste(im, (0, (size - im.size[1]) // 2))
    canvas.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = SAMPLE_DIR
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    samples = []
    ph = brainweb_phantom(voxel_mm=2.0, table="mrilab_full")
    scale = None
    for name, title, seq, desc in VOLUMES:
        img = add_noise(ph.render(seq), 60, rng)
        scale = scale or 1000.0 / np.percentile(img, 99.9)  # one scale: relative intensities kept
        arr = np.clip(np.round(img * scale), 0, 32767).astype(np.int16)
        vol = Volume(arr, **ph.geometry(), metadata=sequence_metadata(seq))
        f = f"{name}.nrrd"
        write_volume(vol, out / f)
        thumbnail(arr[arr.shape[0] // 2], out / f"{name}.png")
        samples.append(Sample(name, title, f, sha256sum(out / f), "volume", f"{name}.png", desc, seq.acquisition()))
        print(f"{f}: {arr.shape}, {(out / f).stat().st_size / 1e6:.2f} MB")

    ph1 = brainweb_phantom(voxel_mm=None, table="mrilab_full")
    seq = PRESETS["T2w"]
    img = ph1.render(seq)
    z0 = img.shape[0] // 2 - 2
    slab = img[z0:z0 + 4]
    yy, xx = np.meshgrid(np.linspace(-1, 1, slab.shape[1]), np.linspace(-1, 1, slab.shape[2]), indexing="ij")
    phase = 0.8 * xx + 0.5 * yy ** 2 - 0.3 * xx * yy  # smooth, like B0/receive phase
    cplx = (slab / slab.max() * np.exp(1j * phase)[None]).astype(np.complex64)
    geo = ph1.geometry()
    origin = tuple(np.asarray(geo["origin"]) + np.asarray(geo["direction"]).reshape(3, 3)[:, 2] * geo["spacing"][2] * z0)
    vol = Volume(cplx, spacing=geo["spacing"], origin=origin, direction=geo["direction"])
    name, f = "MRISynthBrainWebKspace", "MRISynthBrainWebKspace.h5"
    sim = write_undersampled(vol, out / f, "vd1d", 4.0, 8, 40.0, seed=a.seed, source="BrainWeb T2w (MRISynth sample)")
    thumbnail(sim["reference"][1], out / f"{name}.png")
    samples.append(Sample(name, "BrainWeb k-space\n8 coils, R 4", f, sha256sum(out / f), "kspace", f"{name}.png",
                          f"Multi-coil k-space: 4 axial T2-weighted 1 mm slices {slab.shape[1:]}, 8 coils, SNR 40, "
                          f"variable-density mask, R {sim['acceleration']:.2f}", seq.acquisition()))
    print(f"{f}: kspace {sim['kspace'].shape}, {(out / f).stat().st_size / 1e6:.2f} MB")
    save_samples(samples)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "update_lib_cmake.py")], check=True)


if __name__ == "__main__":
    main()
