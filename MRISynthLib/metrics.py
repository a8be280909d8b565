"""Image-quality metrics (numpy): PSNR, MAE, NRMSE, SSIM."""
from __future__ import annotations

import numpy as np


def psnr(pred, target, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB for a fixed data range (255 for 8-bit images)."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range ** 2 / mse)


def mae(pred, target) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))))


def nrmse(pred, target) -> float:
    t = np.asarray(target, np.float64)
    return float(np.linalg.norm(np.asarray(pred, np.float64) - t) / max(np.linalg.norm(t), 1e-12))


def ssim(pred, target, data_range: float = None, win: int = 7) -> float:
    """Mean SSIM with a uniform ``win`` x ``win`` window (as scikit-image's default)."""
    from scipy.ndimage import uniform_filter

    x = np.asarray(pred, np.float64)
    y = np.asarray(target, np.float64)
    if data_range is None:
        data_range = float(y.max() - y.min()) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = uniform_filter(x, win), uniform_filter(y, win)
    vx = cov_norm * (uniform_filter(x * x, win) - ux * ux)
    vy = cov_norm * (uniform_filter(y * y, win) - uy * uy)
    vxy = cov_norm * (uniform_filter(x * y, win) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean()) if s.ndim == 2 else float(s.mean())
