import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("MPLBACKEND", "Agg")

from MRISynthLib.config import data_dir  # noqa: E402


def _have(rel):
    return (data_dir() / rel).exists()


def needs_data(rel):
    """Skip (with the reason) when a shared data file is absent."""
    return pytest.mark.skipif(not _have(rel), reason=f"data file {rel} not found under {data_dir()} "
                                                      f"(set MRISYNTH_DATA)")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
