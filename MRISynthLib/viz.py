"""Montages and figures (matplotlib, Agg backend, imported lazily)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .fileutil import atomic_output


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("figures need matplotlib: pip install 'mrisynth[plots]'") from e
    return plt


def montage(images: Sequence[Sequence[np.ndarray]], path, row_titles: Optional[Sequence[str]] = None,
            col_titles: Optional[Sequence[str]] = None, title: Optional[str] = None,
            cmaps: Optional[Sequence[str]] = None, panel_inches: float = 2.4,
            robust: bool = True, panel_titles: Optional[dict] = None,
            row_limits: Optional[Sequence[Optional[tuple]]] = None,
            panel_limits: Optional[dict] = None) -> Path:
    """Save a grid of 2D images (rows x columns) as a PNG, written atomically.

    Each panel is windowed from min(0, its minimum) to its 99.9th percentile when
    ``robust`` (else min-max); ``cmaps`` gives one colour map per column (default grey);
    ``panel_titles`` maps (row, column) to a title above that panel; ``row_limits`` gives a
    fixed (low, high) window per row (None: per panel as above), so panels compare;
    ``panel_limits`` maps (row, column) to a fixed window for that panel (before ``row_limits``).
    """
    plt = _plt()
    nr, nc = len(images), max(len(r) for r in images)
    fig, axes = plt.subplots(nr, nc, figsize=(panel_inches * nc, panel_inches * nr + (0.4 if title else 0)),
                             squeeze=False)
    for i, row in enumerate(images):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j >= len(row) or row[j] is None:
                continue
            img = np.asarray(row[j], float)
            if panel_limits and (i, j) in panel_limits:
                lo, hi = panel_limits[(i, j)]
            elif row_limits and i < len(row_limits) and row_limits[i] is not None:
                lo, hi = row_limits[i]
            else:
                lo, hi = (min(0.0, img.min()), np.percentile(img, 99.9)) if robust else (img.min(), img.max())
            if hi <= lo:
                hi = lo + 1
            ax.imshow(img, cmap=(cmaps[j] if cmaps else "gray"), vmin=lo, vmax=hi, interpolation="nearest")
            if panel_titles and (i, j) in panel_titles:
                ax.set_title(panel_titles[(i, j)], fontsize=9)
            elif col_titles and i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=9)
            if row_titles and j == 0 and i < len(row_titles):
                ax.set_ylabel(row_titles[i], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_output(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


def orthogonal_views(vol: np.ndarray, flip_for_display: bool = True):
    """Central axial and coronal slices and a parasagittal slice (40% across, off the
    midline fissure) of a (z, y, x) LPS volume, superior up in coronal/sagittal views."""
    z, y = vol.shape[0] // 2, vol.shape[1] // 2
    x = int(vol.shape[2] * 0.4)
    ax, co, sa = vol[z], vol[:, y, :], vol[:, :, x]
    if flip_for_display:
        co, sa = co[::-1], sa[::-1]
    return [ax, co, sa]


def cine_gif(frames, path, panels: Optional[Sequence[np.ndarray]] = None, duration_ms: int = 60,
             scale: int = 2) -> Path:
    """An animated GIF of a cine [T, x, y] (or several side by side: ``panels``, each [T, x, y]),
    each panel windowed to its 99.9th percentile, one GIF frame per cine frame; atomic."""
    from PIL import Image

    series = [np.asarray(frames)] if panels is None else [np.asarray(p) for p in panels]
    t = series[0].shape[0]
    if any(s.ndim != 3 or s.shape[0] != t for s in series):
        raise ValueError("every panel must be [T, x, y] with the same number of frames")
    norm = [np.clip(s / max(float(np.percentile(s, 99.9)), 1e-12), 0, 1) for s in series]
    ims = []
    for f in range(t):
        row = np.concatenate([n[f] for n in norm], axis=1)
        im = Image.fromarray(np.round(row * 255).astype(np.uint8))
        ims.append(im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale != 1 else im)
    with atomic_output(path, suffix=".gif") as tmp:
        ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return Path(path)
