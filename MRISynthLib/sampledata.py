"""Sample data shipped with MRISynth: small simulated brain volumes and a k-space file.

The files sit in ``MRISynthLib/Resources/sample_data`` with a manifest (``samples.json``:
name, title, file, SHA256, kind, acquisition parameters, thumbnail) written by
``scripts/make_sample_data.py`` from the BrainWeb model. The Slicer module registers them
with the Sample Data module (which copies them into Slicer's cache and checks the SHA256);
shell and console users get their verified paths from :func:`sample_path`. Everything is
simulated from BrainWeb (BSD-2-Clause, as shipped by MRiLab), so it may be redistributed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict

from .config import PACKAGE_DIR

SAMPLE_DIR = PACKAGE_DIR / "Resources" / "sample_data"
MANIFEST = SAMPLE_DIR / "samples.json"
KINDS = ("volume", "kspace")


@dataclass
class Sample:
    name: str                 # Sample Data name and node name
    title: str                # button text
    file: str
    sha256: str
    kind: str                 # "volume" (load into the scene) or "kspace" (HDF5 for reconstruction)
    thumbnail: str = ""
    description: str = ""
    acquisition: Dict[str, float] = field(default_factory=dict)   # te/tr/ti seconds, flip degrees

    def path(self) -> Path:
        return SAMPLE_DIR / self.file

    def thumbnail_path(self) -> Path:
        return SAMPLE_DIR / self.thumbnail

    def uri(self) -> str:
        return self.path().as_uri()

    def checksum(self) -> str:
        """In the ``<algo>:<digest>`` form Slicer's Sample Data module takes."""
        return f"SHA256:{self.sha256}"


def load_samples(path: Path = MANIFEST) -> Dict[str, Sample]:
    d = json.loads(Path(path).read_text())
    samples = {s["name"]: Sample(**s) for s in d["samples"]}
    for s in samples.values():
        if s.kind not in KINDS:
            raise ValueError(f"{path}: sample {s.name} has unknown kind {s.kind!r}")
    return samples


def save_samples(samples, path: Path = MANIFEST) -> None:
    Path(path).write_text(json.dumps({"version": 1, "samples": [asdict(s) for s in samples]}, indent=1) + "\n")


def sample_path(name: str, check: bool = True) -> Path:
    """The shipped file of sample ``name``, its SHA256 verified (ChecksumError otherwise)."""
    from .data.download import verify  # (tqdm; this module itself needs only the standard library)

    samples = load_samples()
    if name not in samples:
        raise KeyError(f"no sample {name!r}; there are: {', '.join(samples)}")
    p = samples[name].path()
    if check:
        verify(p, samples[name].sha256)
    return p
