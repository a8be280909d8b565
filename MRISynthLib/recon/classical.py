"""Classical multi-coil reconstructions on the SENSE model (numpy; torch for CG too).

Shapes: k-space ``y`` (C, kx, ky), coil maps ``maps`` (C, x, y), ``mask`` broadcastable
to (kx, ky). All operators come from :mod:`MRISynthLib.physics.sense` (no second copy
of the physics).

* :func:`zero_filled` - the adjoint S^H F^H M y with maps, or the root sum of squares of
  the coil images without.
* :func:`estimate_maps` - coil sensitivities from the auto-calibration (ACS) region: the
  fully sampled centre of k-space, Hann-windowed, gives low-resolution coil images whose
  ratio to their root sum of squares is the sensitivity (the low-resolution reference
  method of the original SENSE paper, Pruessmann et al. 1999); voxels below
  ``threshold`` x max of the low-resolution RSS get zero sensitivity.
* :func:`cg_sense` - min ||A x - y||^2 + lamda ||x||^2 by conjugate gradients on the
  normal equations (A^H A + lamda I) x = A^H y.
* :func:`l1_wavelet_cs` - min 1/2 ||A x - y||^2 + lamda ||W x||_1 by FISTA, with W the
  Daubechies-4 wavelet transform of PyWavelets (zero padding, as sigpy's
  ``L1WaveletRecon``; its proximal step is W^H soft(W x)), step 1 / max eig(A^H A).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..physics.fourier import _is_torch, ifft2c
from ..physics.sense import rss, sense_adjoint, sense_forward


def _scalar(x) -> float:
    return float(x.detach()) if _is_torch(x) else float(x)


def _vdot_real(a, b):
    if _is_torch(a):
        return (a.conj() * b).real.sum()
    return np.real(np.vdot(a, b))


def conjugate_gradient(normal: Callable, rhs, x0=None, iters: int = 30, tol: float = 1e-6):
    """Solve normal(x) = rhs for a Hermitian positive (semi-)definite operator.

    Stops after ``iters`` iterations or when ||r|| <= tol ||rhs||. Returns (x, residual
    norms). Works on numpy arrays and torch tensors (differentiable in torch).
    """
    x = rhs * 0 if x0 is None else x0
    r = rhs - normal(x) if x0 is not None else rhs
    p = r
    rr = _vdot_real(r, r)
    b_norm = _scalar(_vdot_real(rhs, rhs)) ** 0.5
    hist = [_scalar(rr) ** 0.5]
    for _ in range(iters):
        if hist[-1] <= tol * max(b_norm, 1e-30):
            break
        ap = normal(p)
        alpha = rr / _vdot_real(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = _vdot_real(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        hist.append(_scalar(rr) ** 0.5)
    return x, hist


def zero_filled(kspace: np.ndarray, maps: Optional[np.ndarray] = None, mask=None) -> np.ndarray:
    """Adjoint reconstruction with maps (complex), else RSS of the coil images (real)."""
    if maps is not None:
        return sense_adjoint(kspace, maps, mask)
    k = kspace if mask is None else kspace * mask
    return rss(ifft2c(k), axis=0)


def acs_region(mask: np.ndarray, shape) -> tuple:
    """The fully sampled block around the k-space centre of a (kx, ky) mask, as two slices."""
    m = np.broadcast_to(np.asarray(mask) > 0, shape)
    cx, cy = shape[0] // 2, shape[1] // 2

    def run(line, c):
        if not line[c]:
            return slice(c, c)
        lo, hi = c, c
        while lo - 1 >= 0 and line[lo - 1]:
            lo -= 1
        while hi + 1 < len(line) and line[hi + 1]:
            hi += 1
        return slice(lo, hi + 1)

    return run(m[:, cy], cx), run(m[cx, :], cy)


def estimate_maps(kspace: np.ndarray, mask=None, calib: Optional[int] = None, threshold: float = 0.05) -> np.ndarray:
    """Coil sensitivities from the ACS region (see module doc). ``calib`` caps the block size."""
    c, nx, ny = kspace.shape
    if mask is None:
        mask = np.abs(kspace).sum(0) > 0
    sx, sy = acs_region(mask, (nx, ny))
    if calib is not None:
        def cap(s, n):
            if s.stop - s.start <= calib:
                return s
            return slice(n // 2 - calib // 2, n // 2 - calib // 2 + calib)
        sx, sy = cap(sx, nx), cap(sy, ny)
    ax, ay = sx.stop - sx.start, sy.stop - sy.start
    if ax < 4 or ay < 4:
        raise ValueError(f"the fully sampled centre is only {ax} x {ay}; sensitivity estimation needs ACS lines")
    win = np.zeros((nx, ny))
    win[sx, sy] = np.outer(np.hanning(ax + 2)[1:-1], np.hanning(ay + 2)[1:-1])
    low = ifft2c(kspace * win)
    r = rss(low, axis=0)
    maps = low / np.maximum(r, 1e-12)
    maps[:, r < threshold * r.max()] = 0
    return maps.astype(np.complex64)


def max_eigenvalue(normal: Callable, shape, iters: int = 30, seed: int = 0, dtype=np.complex128) -> float:
    """Largest eigenvalue of a Hermitian operator by power iteration."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    lam = 0.0
    for _ in range(iters):
        y = normal(x)
        lam = float(np.linalg.norm(y))
        x = y / max(lam, 1e-30)
    return lam


def cg_sense(kspace, maps, mask=None, lamda: float = 1e-3, iters: int = 30, tol: float = 1e-6):
    """CG-SENSE with Tikhonov regularisation lamda ||x||^2."""

    def normal(x):
        return sense_adjoint(sense_forward(x, maps, mask), maps, mask) + lamda * x

    x, _ = conjugate_gradient(normal, sense_adjoint(kspace, maps, mask), iters=iters, tol=tol)
    return x


class Wavelet:
    """Orthogonal-filter wavelet transform of PyWavelets (mode "zero"), flattened."""

    def __init__(self, shape, wave: str = "db4", level: Optional[int] = None):
        import pywt

        self.pywt, self.shape, self.wave, self.level = pywt, tuple(shape), wave, level
        self.zshape = tuple(((s + 1) // 2) * 2 for s in shape)
        coeffs = pywt.wavedecn(np.zeros(self.zshape), wave, mode="zero", level=level)
        _, self.slices = pywt.coeffs_to_array(coeffs)

    def forward(self, x):
        z = np.zeros(self.zshape, dtype=x.dtype)
        z[tuple(slice(0, s) for s in self.shape)] = x
        arr, _ = self.pywt.coeffs_to_array(self.pywt.wavedecn(z, self.wave, mode="zero", level=self.level))
        return arr

    def adjoint(self, w):
        coeffs = self.pywt.array_to_coeffs(w, self.slices, output_format="wavedecn")
        z = self.pywt.waverecn(coeffs, self.wave, mode="zero")
        return z[tuple(slice(0, s) for s in self.shape)]


def soft_threshold(x, t):
    mag = np.abs(x)
    return x * np.maximum(1 - t / np.maximum(mag, 1e-30), 0)


def l1_wavelet_cs(kspace, maps, mask=None, lamda: float = 1e-3, iters: int = 100, wave: str = "db4",
                  callback: Optional[Callable[[int, np.ndarray], None]] = None):
    """L1-wavelet compressed sensing by FISTA (see module doc). Computes in the inputs'
    precision (complex64 inputs: single precision, as sigpy does; complex128: double)."""
    shape = maps.shape[1:]
    W = Wavelet(shape, wave)
    dtype = np.result_type(kspace, maps, np.complex64)

    def normal(x):
        return sense_adjoint(sense_forward(x, maps, mask), maps, mask)

    step = 1.0 / max_eigenvalue(normal, shape, dtype=dtype)
    aty = sense_adjoint(kspace, maps, mask)
    x = np.zeros(shape, dtype)
    z, t = x, 1.0
    for k in range(iters):
        g = z - step * (normal(z) - aty)
        x_new = W.adjoint(soft_threshold(W.forward(g), step * lamda))
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
        if callback is not None:
            callback(k, x)
    return x.astype(np.complex64)
