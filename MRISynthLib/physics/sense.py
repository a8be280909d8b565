"""The SENSE multi-coil model y = M F S x, its adjoint, coil maps and coil compression.

Shapes: image ``x`` (..., H, W); coil maps ``maps`` (..., C, H, W); k-space ``y``
(..., C, H, W); ``mask`` broadcastable to (..., H, W) (1 = sampled). Works on numpy
arrays and torch tensors (complex dtypes). The phase-encode direction is the last axis,
as in fastMRI.
"""
from __future__ import annotations

import numpy as np

from .fourier import _is_torch, fft2c, fft2u, ifft2c, ifft2u, ifftshift2


def _conj(x):
    return x.conj()


def _sum_coils(x, axis=-3):
    return x.sum(dim=axis) if _is_torch(x) else x.sum(axis=axis)


def _expand_coil(x):
    return x.unsqueeze(-3) if _is_torch(x) else x[..., None, :, :]


def sense_forward(x, maps, mask=None):
    """y = M F S x."""
    y = fft2c(_expand_coil(x) * maps)
    if mask is not None:
        y = y * _expand_coil(mask)
    return y


def sense_adjoint(y, maps, mask=None):
    """x = S^H F^H M^H y (sums over coils)."""
    if mask is not None:
        y = y * _expand_coil(mask)
    return _sum_coils(_conj(maps) * ifft2c(y))


def shifted_normal(maps, mask=None):
    """A^H A of :func:`sense_forward` acting on images in ifftshifted coordinates.

    With the centred FFT ``fft2c = fftshift2 . fft2u . ifftshift2`` and pointwise maps and
    mask, ``ifftshift2(A^H A x) = N(ifftshift2(x))`` where N uses the ifftshifted maps and
    mask and plain FFTs: the same FFTs of the same arrays, without four shifts of the coil
    data per application. Iterative solvers run in these coordinates and shift once at
    the start and end. Returns N (a function of an ifftshifted image).
    """
    s = ifftshift2(maps)
    s_conj = s.conj().resolve_conj() if _is_torch(s) else s.conj()
    mm = None if mask is None else _expand_coil(ifftshift2(_conj(mask) * mask))

    def normal(v):
        k = fft2u(_expand_coil(v) * s)
        if mm is not None:
            k = k * mm
        return _sum_coils(s_conj * ifft2u(k))

    return normal


class SenseOperator:
    """A = M F S with ``forward``, ``adjoint`` and ``normal`` (A^H A)."""

    def __init__(self, maps, mask=None):
        self.maps = maps
        self.mask = mask

    def forward(self, x):
        return sense_forward(x, self.maps, self.mask)

    def adjoint(self, y):
        return sense_adjoint(y, self.maps, self.mask)

    def normal(self, x):
        return self.adjoint(self.forward(x))

    __call__ = forward


def rss(coil_images, axis: int = -3):
    """Root sum of squares over the coil axis."""
    if _is_torch(coil_images):
        return (coil_images.abs() ** 2).sum(dim=axis).sqrt()
    return np.sqrt((np.abs(coil_images) ** 2).sum(axis=axis))


def birdcage_maps(n_coils: int, shape, radius: float = 1.5, normalize: bool = True,
                  dtype=np.complex64) -> np.ndarray:
    """Simulated sensitivities of ``n_coils`` loops evenly placed on a ring around the FOV.

    Each coil c at angle phi_c on a circle of ``radius`` (in units of the half field of
    view) sees a point p with magnitude 1 / |p - c| and phase phi_c + angle(p - c), the
    field of a long straight conductor (birdcage-like). With ``normalize`` the maps are
    divided by their root sum of squares, so sum_c |S_c|^2 = 1 everywhere (as ESPIRiT
    maps are), which makes S^H S the identity.
    """
    if n_coils < 1:
        raise ValueError("n_coils must be >= 1")
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    maps = np.empty((n_coils, h, w), np.complex128)
    for c in range(n_coils):
        phi = 2 * np.pi * c / n_coils
        cx, cy = radius * np.cos(phi), radius * np.sin(phi)
        dx, dy = xx - cx, yy - cy
        maps[c] = np.exp(1j * (phi + np.arctan2(dy, dx))) / np.hypot(dx, dy)
    if normalize:
        maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    return maps.astype(dtype)


def coil_compression_matrix(kspace: np.ndarray, n_virtual: int, coil_axis: int = -3) -> np.ndarray:
    """SVD (principal component) coil compression: a (n_virtual, C) matrix whose rows are
    the dominant eigenvectors of the coil covariance of ``kspace`` (Huang et al. 2008)."""
    k = np.moveaxis(np.asarray(kspace), coil_axis, 0)
    c = k.shape[0]
    if not 1 <= n_virtual <= c:
        raise ValueError(f"n_virtual must be in 1..{c}")
    data = k.reshape(c, -1)
    # eigenvectors of the coil covariance, strongest first; rows of U^H project onto them
    w, u = np.linalg.eigh(data @ data.conj().T)
    u = u[:, np.argsort(w)[::-1]]
    return u[:, :n_virtual].conj().T


def compress_coils(x: np.ndarray, matrix: np.ndarray, coil_axis: int = -3) -> np.ndarray:
    """Apply a compression matrix to k-space, coil images or coil maps along ``coil_axis``."""
    x = np.moveaxis(np.asarray(x), coil_axis, 0)
    out = np.tensordot(matrix, x, axes=(1, 0))
    return np.moveaxis(out, 0, coil_axis)
