"""Cartesian sampling masks that report their exact acceleration.

Conventions: k-space is (..., kx, ky) with ky (phase encode) the last axis; 1D masks are
over ky and broadcast along kx. The DC line is ky = ny // 2 (centred FFTs). Every
generator is deterministic for a given ``seed``.

* :func:`variable_density_1d` - random lines drawn from a Gaussian density plus a uniform
  floor around fully sampled centre lines, the kt-FOCUSS / DC-CNN style density of the
  cine seed; exactly ``round(ny / R)`` lines.
* :func:`variable_density_kt` - the same, with a different draw per frame (ky-t).
* :func:`equispaced_acs` - fastMRI-style equispaced lines with a fully sampled
  auto-calibration (ACS) block, spacing adjusted so the total hits the acceleration.
* :func:`poisson_disc_2d` - variable-density Poisson-disc sampling of a 2D (ky, kz) or
  (kx, ky) plane with a fully sampled calibration square, exactly ``round(N / R)``
  samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class SamplingMask:
    """A boolean sampling pattern and what it is.

    ``array``: (ny,) for 1D, (nt, ny) for ky-t, (n1, n2) for 2D patterns.
    """

    array: np.ndarray
    kind: str
    center_lines: int = 0
    params: dict = field(default_factory=dict, compare=False)

    @property
    def n_sampled(self) -> int:
        return int(np.count_nonzero(self.array))

    @property
    def acceleration(self) -> float:
        """Exact acceleration: number of candidate samples / number sampled."""
        return self.array.size / max(self.n_sampled, 1)

    def per_frame_acceleration(self) -> np.ndarray:
        if self.kind != "kt":
            raise ValueError("per-frame acceleration is defined for ky-t masks")
        return self.array.shape[1] / self.array.sum(axis=1)

    def for_kspace(self, nx: int) -> np.ndarray:
        """Float mask broadcastable to k-space (..., nx, ny): 1D and ky-t masks gain a kx
        axis of length ``nx``; 2D masks are returned as they are."""
        a = self.array.astype(np.float32)
        if self.kind in ("vd1d", "equispaced"):
            return np.broadcast_to(a[None, :], (nx, a.shape[0])).copy()
        if self.kind == "kt":
            return np.broadcast_to(a[:, None, :], (a.shape[0], nx, a.shape[1])).copy()
        return a


def _check_accel(n: int, accel: float, n_center: int):
    if not np.isfinite(accel) or accel < 1:
        raise ValueError(f"acceleration must be >= 1, got {accel}")
    if n_center < 0 or n_center > n:
        raise ValueError(f"center lines must be in 0..{n}, got {n_center}")
    n_total = int(round(n / accel))
    if n_total < n_center:
        raise ValueError(f"acceleration {accel} leaves {n_total} lines, fewer than the {n_center} centre lines")
    return n_total


def _center_slice(n: int, n_center: int) -> slice:
    start = n // 2 - n_center // 2
    return slice(start, start + n_center)


def _vd_lines(ny: int, accel: float, n_center: int, rng: np.random.Generator, sigma: float,
              floor: float) -> np.ndarray:
    n_total = _check_accel(ny, accel, n_center)
    mask = np.zeros(ny, bool)
    mask[_center_slice(ny, n_center)] = True
    k = (np.arange(ny) - ny // 2) / (ny / 2)
    pdf = np.exp(-0.5 * (k / sigma) ** 2) + floor
    pdf[mask] = 0
    n_rand = n_total - n_center
    if n_rand > 0:
        idx = rng.choice(ny, size=n_rand, replace=False, p=pdf / pdf.sum())
        mask[idx] = True
    return mask


def variable_density_1d(ny: int, accel: float, n_center: int = 11, seed: int = 0,
                        sigma: float = 0.3, floor: float = 0.05) -> SamplingMask:
    """1D variable-density random lines with ``n_center`` fully sampled centre lines.

    The outer lines are drawn without replacement from p(k) ~ exp(-k^2 / 2 sigma^2) +
    floor, k in [-1, 1] across ky, so exactly ``round(ny / accel)`` lines are sampled.
    """
    rng = np.random.default_rng(seed)
    m = _vd_lines(ny, accel, n_center, rng, sigma, floor)
    return SamplingMask(m, "vd1d", n_center, dict(accel=accel, seed=seed, sigma=sigma, floor=floor))


def variable_density_kt(n_frames: int, ny: int, accel: float, n_center: int = 11, seed: int = 0,
                        sigma: float = 0.3, floor: float = 0.05) -> SamplingMask:
    """ky-t sampling: an independent variable-density draw for every frame."""
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    rng = np.random.default_rng(seed)
    m = np.stack([_vd_lines(ny, accel, n_center, rng, sigma, floor) for _ in range(n_frames)])
    return SamplingMask(m, "kt", n_center, dict(accel=accel, seed=seed, sigma=sigma, floor=floor))


def equispaced_acs(ny: int, accel: float, n_acs: int = None, center_fraction: float = 0.08,
                   seed: int = 0) -> SamplingMask:
    """fastMRI-style equispaced mask with a fully sampled ACS block.

    ``n_acs`` defaults to round(ny * center_fraction). The outer lines are equispaced with
    a spacing chosen so that the total count is close to ny / accel (as fastMRI's
    EquispacedMaskFractionFunc), with a random offset; the exact acceleration is reported.
    """
    if n_acs is None:
        n_acs = int(round(ny * center_fraction))
    n_total = _check_accel(ny, accel, n_acs)
    rng = np.random.default_rng(seed)
    mask = np.zeros(ny, bool)
    mask[_center_slice(ny, n_acs)] = True
    n_outer_target = n_total - n_acs
    if n_outer_target > 0:
        spacing = (ny - n_acs) / n_outer_target
        offset = rng.uniform(0, spacing)
        pos = np.round(offset + spacing * np.arange(ny)).astype(int)
        pos = pos[pos < ny]
        mask[pos] = True
    return SamplingMask(mask, "equispaced", n_acs, dict(accel=accel, seed=seed))


def poisson_disc_2d(shape: Tuple[int, int], accel: float, calib: int = 16, seed: int = 0,
                    density_power: float = 1.5, tol: float = 0.02, max_iter: int = 30) -> SamplingMask:
    """Variable-density Poisson-disc mask on a 2D plane with a calibration square.

    Dart throwing in a random order with a minimum distance r(k) = r0 (1 + 3 |k|^p)
    growing with the normalised distance |k| from the centre; r0 is refined until the
    count is within ``tol`` of round(N / accel), then points farthest out are dropped
    (or the nearest free candidates added) to make the count exact.
    """
    n1, n2 = shape
    n_total = _check_accel(n1 * n2, accel, 0)
    if calib * calib > n_total:
        raise ValueError("calibration region larger than the sample budget")
    rng = np.random.default_rng(seed)
    k1 = (np.arange(n1) - n1 // 2) / (n1 / 2)
    k2 = (np.arange(n2) - n2 // 2) / (n2 / 2)
    kr = np.sqrt(k1[:, None] ** 2 + k2[None, :] ** 2) / np.sqrt(2)
    order = rng.permutation(n1 * n2)
    calib_mask = np.zeros(shape, bool)
    calib_mask[_center_slice(n1, calib), _center_slice(n2, calib)] = True

    def throw(r0: float) -> np.ndarray:
        # A sample at p blocks every candidate closer than r(p); disk stencils are cached
        # per radius (quantised to 1/20 pixel), so an acceptance is one slice update.
        rad = r0 * (1 + 3 * kr ** density_power)
        pad = int(np.ceil(rad.max()))
        blocked = np.zeros((n1 + 2 * pad, n2 + 2 * pad), bool)
        m = np.zeros(shape, bool)
        stencils = {}

        def accept(i, j):
            q = int(round(rad[i, j] * 20))
            st = stencils.get(q)
            if st is None:
                r = q / 20.0
                ri = int(np.ceil(r))
                yy, xx = np.mgrid[-ri:ri + 1, -ri:ri + 1]
                st = stencils[q] = (ri, (yy ** 2 + xx ** 2) < r * r)
            ri, disk = st
            blocked[i + pad - ri:i + pad + ri + 1, j + pad - ri:j + pad + ri + 1] |= disk
            m[i, j] = True

        for i, j in zip(*np.nonzero(calib_mask)):
            accept(i, j)
        for flat in order:
            i, j = divmod(int(flat), n2)
            if not blocked[i + pad, j + pad]:
                accept(i, j)
        return m

    # density of saturated random sequential packing ~ 0.547 * 4 / (pi r^2): start there,
    # then rescale r0 by sqrt(count / target) (the count scales as r0^-2)
    inv = (1.0 / (1 + 3 * kr ** density_power) ** 2).sum()
    r0 = float(np.sqrt(0.547 * 4 / np.pi * inv / n_total))
    best = None
    for _ in range(max_iter):
        m = throw(r0)
        cnt = int(m.sum())
        if best is None or abs(cnt - n_total) < abs(int(best.sum()) - n_total):
            best = m
        if abs(cnt - n_total) <= tol * n_total:
            break
        r0 *= float(np.sqrt(cnt / n_total))
    m = best.copy()
    diff = int(m.sum()) - n_total
    if diff > 0:  # drop the outermost non-calibration samples
        cand = np.flatnonzero(m & ~calib_mask)
        drop = cand[np.argsort(-kr.ravel()[cand], kind="stable")[:diff]]
        m.ravel()[drop] = False
    elif diff < 0:  # add the innermost free candidates
        cand = np.flatnonzero(~m)
        add = cand[np.argsort(kr.ravel()[cand] + 1e-6 * rng.random(cand.size), kind="stable")[:-diff]]
        m.ravel()[add] = True
    return SamplingMask(m, "poisson2d", calib, dict(accel=accel, seed=seed, calib=calib))


MASK_KINDS = ("vd1d", "equispaced", "poisson2d")


def make_mask(kind: str, shape: Tuple[int, int], accel: float, center: int = None, seed: int = 0) -> SamplingMask:
    """One entry point for the static masks: ``kind`` in MASK_KINDS, ``shape`` (nx, ny)."""
    nx, ny = shape
    if kind == "vd1d":
        return variable_density_1d(ny, accel, n_center=11 if center is None else center, seed=seed)
    if kind == "equispaced":
        return equispaced_acs(ny, accel, n_acs=center, seed=seed)
    if kind == "poisson2d":
        return poisson_disc_2d((nx, ny), accel, calib=16 if center is None else center, seed=seed)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {MASK_KINDS}")
