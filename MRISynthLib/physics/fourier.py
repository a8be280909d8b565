"""Centred, orthonormal Fourier transforms for numpy arrays and torch tensors.

``fftnc(x) = fftshift(fftn(ifftshift(x), norm="ortho"))`` over the given axes: the
k-space centre (DC) sits at index n // 2, and the transform is unitary (Parseval holds,
the inverse is the adjoint). These are the only FFTs the rest of MRISynth uses.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def fftnc(x, axes: Sequence[int]):
    axes = tuple(axes)
    if _is_torch(x):
        return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=axes), dim=axes, norm="ortho"),
                                  dim=axes)
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def ifftnc(x, axes: Sequence[int]):
    axes = tuple(axes)
    if _is_torch(x):
        return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=axes), dim=axes, norm="ortho"),
                                  dim=axes)
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)


def fft2c(x):
    """Centred orthonormal 2D FFT over the last two axes (kx, ky)."""
    return fftnc(x, (-2, -1))


def ifft2c(x):
    return ifftnc(x, (-2, -1))


def fft3c(x):
    """Centred orthonormal 3D FFT over the last three axes."""
    return fftnc(x, (-3, -2, -1))


def ifft3c(x):
    return ifftnc(x, (-3, -2, -1))


def alias(image, mask):
    """The aliased (zero-filled) image b = F^-1 U F m of a single-coil image."""
    return ifft2c(mask * fft2c(image))
