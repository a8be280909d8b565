"""Simulated 2D+time cine series for training and testing the dynamic reconstructions.

No real human cardiac cine training set exists here, so series are simulated, deterministic
from a seed, as complex (frames, H, W) arrays of one cardiac cycle (20 frames by default,
128 x 128), each scaled so that its largest magnitude is 1.

Sources (one "source sequence" per base image; splits never share a base image):

* ``siat``: the complex head slices (phase kept), k-space-cropped from 256 to 128;
* ``brainweb`` and ``mni152``: axial slices of the two anatomies rendered as spin-echo
  images with a random TE/TR, times a smooth random phase;
* ``ring``: the KomaMRI ``contracting_ring.phantom`` (myocardium-like annulus of 16,108
  spins) moved by its own motion description, rasterised per frame, around a bright blood
  pool that follows the inner wall, in a static body ellipse;
* ``pincat``: the PINCAT numerical cardiac phantom (50 frames of 128 x 128 magnitude),
  cut into 20-frame windows that start at frames 0, 15 and 30, times a smooth phase.

Motion model for the static sources (``siat``, ``brainweb``, ``mni152``), applied as a
backward warp with bilinear interpolation of the real and imaginary parts:

* a cardiac-like region: a centre c inside the object and a radius R (8-20 px at 128);
  at time t a pixel p shows the content of c + (p - c)(1 + s(t) w(|p - c|)), with
  w(r) = exp(-r^2 / 2R^2) and s(t) = A u(t), A in [0.15, 0.35]: the region contracts
  towards c in systole and relaxes back; u(t) is KomaMRI's periodic triangular time
  (0 -> 1 over ``asymmetry`` of the period, back to 0 at its end);
* respiratory shift: a global translation of up to 2 px (y) and 1 px (x), sinusoidal with
  0.2-0.35 cycles per cardiac cycle and a random phase (the cine is breath-held but never
  perfectly);
* a through-plane-like intensity change: the region's signal times
  1 + B u(t) w(|p - c|), B in [-0.2, 0.3] (inflow of fresh blood or tissue leaving
  the slice).

Ring motion (KomaMRI ``HeartBeat`` + ``Rotate``, both ``Periodic`` with period 1 s): a spin at
radius r moves radially by u(t) (C r_max - E (r_max - r)), with the circumferential strain
C and radial strain E of the phantom file (-0.4, 0.4) scaled by a random factor 0.3-0.6 to
stay physiological, and is rotated by u(t) times the file's yaw (30 deg) times the same
factor.

Splits (:func:`split_of`) are 4:1:2 train/validation/test by source sequence, seeded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..config import data_file
from ..physics.fourier import fft2c, ifft2c

N_FRAMES = 20
SIZE = 128
SPLITS = ("train", "val", "test")


def triangular_time(t: np.ndarray, period: float = 1.0, asymmetry: float = 0.5) -> np.ndarray:
    """KomaMRI's periodic triangular time: 0 -> 1 over ``asymmetry * period``, then back to 0."""
    if not 0 < asymmetry < 1:
        raise ValueError("asymmetry must be in (0, 1)")
    ph = np.mod(np.asarray(t, float), period) / period
    return np.where(ph < asymmetry, ph / asymmetry, (1 - ph) / (1 - asymmetry))


def smooth_phase(shape: Tuple[int, int], rng: np.random.Generator, strength: float = np.pi / 2) -> np.ndarray:
    """A smooth random phase map (low-order 2D polynomial), in radians."""
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    c = rng.normal(0, 1, 6) * strength / 2
    return c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * x ** 2 + c[5] * y ** 2


def kspace_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a complex (H, W) image to (size, size) by cropping or zero-padding its k-space
    (keeps the phase, no interpolation), with the intensity kept (not the energy)."""
    h, w = img.shape
    k = fft2c(img)
    out = np.zeros((size, size), np.complex128)

    def rng_(n_in, n_out):
        if n_in >= n_out:
            s = n_in // 2 - n_out // 2
            return slice(s, s + n_out), slice(0, n_out)
        s = n_out // 2 - n_in // 2
        return slice(0, n_in), slice(s, s + n_in)

    (si, so), (ti, to) = rng_(h, size), rng_(w, size)
    out[so, to] = k[si, ti]
    return ifft2c(out) * np.sqrt(size * size / (h * w))


def warp(img: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """Backward warp of a complex (H, W) image: out[p] = img[(sy[p], sx[p])] (bilinear)."""
    coords = np.stack([sy, sx])
    re = ndimage.map_coordinates(img.real, coords, order=1, mode="nearest")
    im = ndimage.map_coordinates(img.imag, coords, order=1, mode="nearest")
    return re + 1j * im


@dataclass
class MotionParams:
    center: Tuple[float, float]
    radius: float
    contraction: float
    asymmetry: float
    resp_amp: Tuple[float, float]
    resp_freq: float
    resp_phase: float
    inflow: float

    @classmethod
    def draw(cls, mag: np.ndarray, rng: np.random.Generator) -> "MotionParams":
        h, w = mag.shape
        yy, xx = np.mgrid[:h, :w]
        inner = (np.abs(yy - h / 2) < 0.3 * h) & (np.abs(xx - w / 2) < 0.3 * w)
        cand = np.flatnonzero(inner & (mag > 0.3 * mag.max()))
        if cand.size == 0:
            cand = np.flatnonzero(inner)
        cy, cx = divmod(int(rng.choice(cand)), w)
        scale = h / SIZE
        return cls(center=(float(cy), float(cx)), radius=float(rng.uniform(8, 20) * scale),
                   contraction=float(rng.uniform(0.15, 0.35)), asymmetry=float(rng.uniform(0.3, 0.5)),
                   resp_amp=(float(rng.uniform(0, 2) * scale), float(rng.uniform(0, 1) * scale)),
                   resp_freq=float(rng.uniform(0.2, 0.35)), resp_phase=float(rng.uniform(0, 2 * np.pi)),
                   inflow=float(rng.uniform(-0.2, 0.3)))


def deform_sequence(img: np.ndarray, mp: MotionParams, n_frames: int = N_FRAMES) -> np.ndarray:
    """A (n_frames, H, W) complex cine from a static complex image and a motion draw."""
    h, w = img.shape
    yy, xx = np.mgrid[:h, :w].astype(float)
    cy, cx = mp.center
    dy, dx = yy - cy, xx - cx
    wgt = np.exp(-(dy ** 2 + dx ** 2) / (2 * mp.radius ** 2))
    t = np.arange(n_frames) / n_frames
    u = triangular_time(t, 1.0, mp.asymmetry)
    out = np.empty((n_frames, h, w), np.complex128)
    for f in range(n_frames):
        s = 1 + mp.contraction * u[f] * wgt
        ry = mp.resp_amp[0] * np.sin(2 * np.pi * mp.resp_freq * t[f] + mp.resp_phase)
        rx = mp.resp_amp[1] * np.sin(2 * np.pi * mp.resp_freq * t[f] + mp.resp_phase + 1.0)
        fr = warp(img, cy + dy * s - ry, cx + dx * s - rx)
        out[f] = fr * (1 + mp.inflow * u[f] * wgt)
    return out


# ----------------------------------------------------------------------------- ring
@lru_cache(maxsize=1)
def _load_ring():
    import h5py

    with h5py.File(data_file("koma/contracting_ring.phantom"), "r") as f:
        x, y = f["position/x"][()], f["position/y"][()]
        rho = f["contrast/ρ"][()]
        hb = dict(f["motion/motion_1/action"].attrs)
        rot = dict(f["motion/motion_2/action"].attrs)
        asym = float(f["motion/motion_1/time"].attrs["asymmetry"])
    return x, y, rho, float(hb["circumferential_strain"]), float(hb["radial_strain"]), float(rot["yaw"]), asym


def ring_sequence(rng: np.random.Generator, n_frames: int = N_FRAMES, size: int = SIZE) -> np.ndarray:
    """A cine of the KomaMRI contracting ring with blood pool and body (see the module doc)."""
    x, y, rho, circ, rad, yaw, asym = _load_ring()
    k = rng.uniform(0.3, 0.6)
    circ, rad, yaw = circ * k, rad * k, yaw * k
    r = np.hypot(x, y)
    th = np.arctan2(y, x)
    rmax, rmin = r.max(), r.min()
    fov = rng.uniform(0.22, 0.3)                  # metres across the image
    px = size / fov
    c = np.array([size / 2, size / 2]) + rng.uniform(-0.12, 0.12, 2) * size
    t = np.arange(n_frames) / n_frames
    u = triangular_time(t, 1.0, asym)
    myo, blood, body = rng.uniform(0.25, 0.4), rng.uniform(0.7, 1.0), rng.uniform(0.3, 0.5)
    yy, xx = np.mgrid[:size, :size].astype(float)
    ell = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.36 * size)) ** 2 < 1
    ell = ndimage.gaussian_filter(ell.astype(float), 1.0)
    phase = np.exp(1j * smooth_phase((size, size), rng))
    out = np.empty((n_frames, size, size), np.complex128)
    for f in range(n_frames):
        dr = u[f] * (circ * rmax - rad * (rmax - r))
        rr = np.maximum(r + dr, 0)
        tt = th + np.deg2rad(yaw) * u[f]
        py, pxx = c[0] + rr * np.sin(tt) * px, c[1] + rr * np.cos(tt) * px
        dens, _, _ = np.histogram2d(py, pxx, bins=size, range=[[0, size], [0, size]], weights=rho)
        dens = ndimage.gaussian_filter(dens, 0.7)
        dens = np.clip(dens / max(np.percentile(dens[dens > 0], 90), 1e-12), 0, 1)
        r_in = max(rmin + u[f] * (circ * rmax - rad * (rmax - rmin)), 0) * px
        pool = np.hypot(yy - c[0], xx - c[1]) < r_in
        pool = ndimage.gaussian_filter(pool.astype(float), 0.7)
        img = body * ell * (1 - np.maximum(dens, pool))
        img = img + myo * dens + blood * pool * (1 - dens)
        out[f] = img * phase
    return out


# ----------------------------------------------------------------------------- sources
def _load_pincat() -> np.ndarray:
    from scipy.io import loadmat

    return loadmat(str(data_file("dynamic/Pincat.mat")))["X"].transpose(2, 0, 1).astype(np.float64)


PINCAT_STARTS = (0, 15, 30)


@dataclass
class CineSimConfig:
    n_siat: int = 60
    n_brainweb: int = 20
    n_mni: int = 20
    n_ring: int = 10
    pincat: bool = True
    n_frames: int = N_FRAMES
    size: int = SIZE
    seed: int = 0
    split_seed: int = 0
    ratios: Tuple[int, int, int] = (4, 1, 2)


@dataclass
class CineSet:
    images: np.ndarray                         # (N, T, H, W) complex64, max |.| = 1 per series
    sources: List[str]                         # "siat:17", "ring:3", ...
    split: np.ndarray                          # (N,) str, train / val / test
    params: List[dict] = field(default_factory=list)

    def subset(self, which: str) -> "CineSet":
        idx = np.flatnonzero(self.split == which)
        return CineSet(self.images[idx], [self.sources[i] for i in idx], self.split[idx],
                       [self.params[i] for i in idx] if self.params else [])


def split_of(n: int, ratios=(4, 1, 2), seed: int = 0) -> np.ndarray:
    """Assign n source sequences to train/val/test in the given ratio (seeded shuffle)."""
    tot = sum(ratios)
    n_tr = int(round(n * ratios[0] / tot))
    n_va = int(round(n * ratios[1] / tot))
    lab = np.array(["train"] * n_tr + ["val"] * n_va + ["test"] * (n - n_tr - n_va))
    return lab[np.random.default_rng(seed).permutation(n)]


def anatomy_images(name: str, n: int, size: int, rng: np.random.Generator) -> List[np.ndarray]:
    from ..physics.phantoms import render_fractions
    from ..physics.signal import SequenceParams
    from ..training.quantitative import load_anatomy, slice_fractions

    ph = load_anatomy(name)
    brain = ph.fractions[1:4].sum(0).sum(axis=(1, 2))
    zs = np.flatnonzero(brain > 0.2 * brain.max())
    zs = zs[np.linspace(0, len(zs) - 1, n).round().astype(int)]
    frac = slice_fractions(ph, zs, size)
    table = "mrilab" if name == "brainweb" else "mrilab_full"
    out = []
    for fr in frac:
        tr = rng.uniform(0.5, 4.0)
        te = rng.uniform(0.01, min(0.12, 0.5 * tr))
        img = render_fractions(fr, SequenceParams("se", te, tr), table)
        out.append(img * np.exp(1j * smooth_phase(img.shape, rng)))
    return out


def simulate_cine_set(cfg: CineSimConfig = CineSimConfig(), progress: bool = False) -> CineSet:
    """All source sequences of ``cfg``, deterministic from ``cfg.seed``."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    items: List[Tuple[str, object]] = []
    if cfg.n_siat:
        from .recon_data import load_siat

        idx = np.linspace(0, 199, cfg.n_siat).round().astype(int)
        for i, im in zip(idx, load_siat(idx)):
            items.append((f"siat:{i}", kspace_resize(im, cfg.size)))
    for name, n in (("brainweb", cfg.n_brainweb), ("mni152", cfg.n_mni)):
        if n:
            for j, im in enumerate(anatomy_images(name, n, cfg.size, rng)):
                items.append((f"{name}:{j}", im))
    for j in range(cfg.n_ring):
        items.append((f"ring:{j}", None))
    if cfg.pincat:
        for s in PINCAT_STARTS:
            items.append((f"pincat:{s}", None))
    pincat = _load_pincat() if cfg.pincat else None
    series, params = [], []
    for src, base in tqdm(items, desc="cine series", disable=not progress):
        kind = src.split(":")[0]
        if kind == "ring":
            seq = ring_sequence(rng, cfg.n_frames, cfg.size)
            p = {}
        elif kind == "pincat":
            s = int(src.split(":")[1])
            mag = pincat[s:s + cfg.n_frames]
            if mag.shape[1:] != (cfg.size, cfg.size):
                mag = np.stack([ndimage.zoom(m, cfg.size / m.shape[0], order=1) for m in mag])
            seq = mag * np.exp(1j * smooth_phase(mag.shape[1:], rng))[None]
            p = {}
        else:
            mp = MotionParams.draw(np.abs(base), rng)
            seq = deform_sequence(base, mp, cfg.n_frames)
            p = dict(mp.__dict__)
        seq = seq / max(np.abs(seq).max(), 1e-12)
        series.append(seq.astype(np.complex64))
        params.append(p)
    sources = [s for s, _ in items]
    # PINCAT windows overlap in time: one source for the split
    base = ["pincat" if s.startswith("pincat") else s for s in sources]
    bases = list(dict.fromkeys(base))
    lab = dict(zip(bases, split_of(len(bases), cfg.ratios, cfg.split_seed)))
    split = np.array([lab[b] for b in base])
    return CineSet(np.stack(series), sources, split, params)


def save_cine_set(path, cs: CineSet, attrs: Optional[Dict] = None):
    from .hdf5 import atomic_h5

    with atomic_h5(path) as f:
        f.create_dataset("images", data=cs.images, compression="gzip", compression_opts=1)
        f.create_dataset("sources", data=np.array(cs.sources, dtype="S"))
        f.create_dataset("split", data=cs.split.astype("S"))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def load_cine_set(path) -> CineSet:
    import h5py

    with h5py.File(path, "r") as f:
        return CineSet(f["images"][()], [s.decode() for s in f["sources"][()]],
                       f["split"][()].astype(str), [])
