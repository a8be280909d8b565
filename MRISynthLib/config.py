"""Where MRISynth finds its data and keeps its per-user cache.

One setting: the environment variable ``MRISYNTH_DATA`` points at the data folder
(the layout of the project's shared data: ``brainweb/``, ``koma/``, ``mni152/``, ``siat/``,
``dynamic/``). Without it, ``../shared/data`` beside the source checkout is used, then the
per-user cache (``MRISYNTH_CACHE`` or ``~/.cache/mrisynth``) where downloads land.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MRISYNTH_DATA"
CACHE_ENV = "MRISYNTH_CACHE"

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


class DataNotFoundError(FileNotFoundError):
    """A data file MRISynth needs is not in the data folder."""


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "mrisynth"


def data_dir() -> Path:
    """The data folder: ``$MRISYNTH_DATA``, else ``../shared/data`` beside the checkout,
    else the per-user cache's ``data`` folder."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    beside = REPO_DIR.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    return cache_dir() / "data"


def data_file(relpath: str) -> Path:
    """Path of a data file; raises DataNotFoundError saying how to provide it."""
    p = data_dir() / relpath
    if not p.exists():
        raise DataNotFoundError(
            f"{relpath} not found in the data folder {data_dir()}. Set {DATA_ENV} to the folder "
            f"holding it, or run `python -m MRISynthLib fetch-data` to download the public files."
        )
    return p
