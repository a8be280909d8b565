"""Centred, orthonormal Fourier transforms for numpy arrays and torch tensors.

``fftnc(x) = fftshift(fftn(ifftshift(x), norm="ortho"))`` over the given axes: the
k-space centre (DC) sits at index n // 2, and the transform is unitary (Parseval holds,
the inverse is the adjoint). These are the only FFTs the rest of MRISynth uses; the
uncentred ``fft2u``/``ifft2u`` serve operators that work in ifftshifted coordinates
(:func:`MRISynthLib.physics.sense.shifted_normal`).
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


def ifftshift2(x):
    """ifftshift over the last two axes (moves the centre index n // 2 to 0)."""
    return torch.fft.ifftshift(x, dim=(-2, -1)) if _is_torch(x) else np.fft.ifftshift(x, axes=(-2, -1))


def fftshift2(x):
    """fftshift over the last two axes (the inverse of :func:`ifftshift2`)."""
    return torch.fft.fftshift(x, dim=(-2, -1)) if _is_torch(x) else np.fft.fftshift(x, axes=(-2, -1))


def fft2u(x):
    """Orthonormal 2D FFT over the last two axes in uncentred (ifftshifted) coordinates:
    ``fft2c = fftshift2 . fft2u . ifftshift2``."""
    return torch.fft.fft2(x, norm="ortho") if _is_torch(x) else np.fft.fft2(x, norm="ortho")


def ifft2u(x):
    return torch.fft.ifft2(x, norm="ortho") if _is_torch(x) else np.fft.ifft2(x, norm="ortho")


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
