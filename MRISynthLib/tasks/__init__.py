"""Volume-level entry points shared by the command line, the Slicer logic and the console."""
import warnings

import numpy as np


class Cancelled(Exception):
    """Raised when a caller's cancel callback asks a long task to stop."""


def check_image_array(arr) -> None:
    """A 2D image or 3D volume of finite real numbers (warns about negative values)."""
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or a 3D volume, got shape {arr.shape}")
    if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"expected a real-valued image, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("the input contains NaN or inf")
    if arr.min() < 0:
        warnings.warn("the input has negative values; MR magnitudes are >= 0 (negatives are clipped)")
