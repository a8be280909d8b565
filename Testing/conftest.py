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


def write_dicom_series(folder, arr, spacing=(0.9, 0.9, 2.5), tags=None):
    """Write (slices, y, x) int16 as one DICOM series; ``tags`` adds/overrides header values."""
    import SimpleITK as sitk

    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k])
        sl.SetSpacing(spacing[:2])
        t = {"0008|0060": "MR", "0020|000e": "1.2.3.4.5", "0020|000d": "1.2.3.4", "0020|0013": str(k + 1),
             "0020|0032": f"-10\\-20\\{spacing[2] * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
             "0018|0050": str(spacing[2]), "0028|0030": f"{spacing[0]}\\{spacing[1]}", "0008|0018": f"1.2.3.4.5.{k}"}
        t.update(tags or {})
        for key, val in t.items():
            sl.SetMetaData(key, val)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"s{k}.dcm"))
        w.Execute(sl)


@pytest.fixture(scope="session")
def tiny_p2p():
    """A small randomly initialised Param-to-Param model (no shipped weights needed)."""
    import torch

    from MRISynthLib.models.paramnet import ReparamConfig, ReparamModel, xavier_init

    torch.manual_seed(0)
    m = ReparamModel(ReparamConfig("p2p", widths="tiny"))
    xavier_init(m)
    return m.eval()
