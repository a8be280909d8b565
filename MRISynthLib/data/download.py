"""Download public files with a progress bar, an SHA256 check and an atomic write.

Used for model weights that are not shipped and for the public data sets a first run
needs (the BrainWeb model as shipped by MRiLab). Files already present with the right
checksum are never downloaded again.
"""
from __future__ import annotations

import hashlib
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from tqdm.auto import tqdm

from ..config import data_dir
from ..fileutil import atomic_output


class ChecksumError(ValueError):
    """A file's SHA256 does not match the expected value."""


def sha256sum(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify(path, expected_sha256: str) -> None:
    got = sha256sum(path)
    if got.lower() != expected_sha256.lower():
        raise ChecksumError(f"{path}: SHA256 {got} does not match the expected {expected_sha256}")


def download(url: str, dest, sha256: str, progress: bool = True, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is already there.

    The file is streamed to a temporary file in the destination folder, verified, then
    renamed into place, so an interrupted or corrupt download never leaves a file at
    ``dest``. Offline or failing downloads raise ``OSError`` with the URL in the message.
    """
    dest = Path(dest)
    if dest.exists():
        verify(dest, sha256)
        return dest
    with atomic_output(dest, suffix=".part") as tmp:
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)
        except OSError as e:
            raise OSError(f"could not download {url}: {e} (offline? place the file at {dest} by hand)") from e
        with resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        verify(tmp, sha256)
    return dest


@dataclass(frozen=True)
class RemoteFile:
    relpath: str  # path inside the data folder
    url: str
    sha256: str
    citation: str


# Public sources of the data files a first run needs.
DATA_FILES: Dict[str, RemoteFile] = {
    "brainweb": RemoteFile(
        "brainweb/BrainModel.mat",
        "https://raw.githubusercontent.com/leoliuf/MRiLab/42b7c48dcb1d49893328d53df6b4c0751fdbcec3/Resources/BrainModel.mat",
        "891cfcf9489cad3d1588333480af82ef0a4487c8038ceeb9eff62a50c06401e5",
        "BrainWeb (Cocosco et al., NeuroImage 1997) as shipped by MRiLab (Liu et al., IEEE TMI 2017), BSD-2-Clause",
    ),
}


def fetch_data(name: str, target_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """Make sure a named public data file is in the data folder (download if missing)."""
    try:
        rf = DATA_FILES[name]
    except KeyError:
        raise ValueError(f"unknown data file {name!r}; known: {sorted(DATA_FILES)}") from None
    root = Path(target_dir) if target_dir is not None else data_dir()
    return download(rf.url, root / rf.relpath, rf.sha256, progress=progress)
