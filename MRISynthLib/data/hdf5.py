"""HDF5 k-space files: the fastMRI layout and the seed-004 (DeepInPy) layout.

fastMRI layout: ``kspace`` complex [slices, coils, kx, ky] (single coil: [slices, kx, ky]),
centred; optional ``mask`` [ky] (1 = sampled); optional ``reconstruction_rss``
[slices, x, y]; file attributes (``acquisition``, ``max``, ``norm``, ...).

Seed-004 (DeepInPy) layout: ``imgs`` complex [N, x, y], ``maps`` complex [N, coils, x, y],
``masks`` [N, x, y], and optionally ``ksp`` complex [N, coils, x, y].

Readers check keys, ranks and matching shapes and raise ValueError naming the problem.
Writers write to a temporary file and rename it into place.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..fileutil import atomic_output


@contextmanager
def atomic_h5(path):
    """Open a temporary HDF5 file for writing and move it onto ``path`` on success."""
    import h5py

    with atomic_output(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


def _open(path):
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file: {e}") from e


def write_fastmri(path, kspace: np.ndarray, mask: Optional[np.ndarray] = None,
                  reconstruction_rss: Optional[np.ndarray] = None, attrs: Optional[dict] = None,
                  extra: Optional[Dict[str, np.ndarray]] = None) -> Path:
    kspace = np.asarray(kspace)
    if not np.iscomplexobj(kspace) or kspace.ndim not in (3, 4):
        raise ValueError("kspace must be complex [slices, (coils,) kx, ky]")
    if mask is not None and np.asarray(mask).shape[-1] != kspace.shape[-1]:
        raise ValueError(f"mask length {np.asarray(mask).shape[-1]} != ky size {kspace.shape[-1]}")
    with atomic_h5(path) as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64), compression="gzip", compression_opts=1)
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask))
        if reconstruction_rss is not None:
            f.create_dataset("reconstruction_rss", data=np.asarray(reconstruction_rss, np.float32))
        for k, v in (extra or {}).items():
            f.create_dataset(k, data=v)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return Path(path)


def read_fastmri(path, slices=None) -> Dict[str, object]:
    """Read a fastMRI-layout file: dict with ``kspace`` (always [slices, coils, kx, ky];
    single-coil files gain a coil axis of 1), ``mask`` (or None), ``reconstruction_rss``
    (or None), any ``maps``, and ``attrs``."""
    with _open(path) as f:
        if "kspace" not in f:
            raise ValueError(f"{path}: no 'kspace' dataset (keys: {sorted(f.keys())}); not a fastMRI-layout file")
        ds = f["kspace"]
        if ds.ndim not in (3, 4):
            raise ValueError(f"{path}: kspace has rank {ds.ndim}; expected [slices, (coils,) kx, ky]")
        ksp = ds[()] if slices is None else ds[slices]
        if not np.iscomplexobj(ksp):
            raise ValueError(f"{path}: kspace is {ksp.dtype}, expected complex")
        if ds.ndim == 3:
            ksp = ksp[:, None] if ksp.ndim == 3 else ksp[None]
        elif ksp.ndim == 3:  # one slice selected from a 4D dataset
            ksp = ksp[None]
        out = {"kspace": ksp, "mask": None, "reconstruction_rss": None, "maps": None,
               "attrs": dict(f.attrs)}
        if "mask" in f:
            m = f["mask"][()]
            if m.shape[-1] != ksp.shape[-1]:
                raise ValueError(f"{path}: mask length {m.shape[-1]} != ky size {ksp.shape[-1]}")
            out["mask"] = m
        if "reconstruction_rss" in f:
            out["reconstruction_rss"] = f["reconstruction_rss"][()] if slices is None else f["reconstruction_rss"][slices]
        if "maps" in f:
            out["maps"] = f["maps"][()] if slices is None else f["maps"][slices]
        return out


SEED004_KEYS = ("imgs", "maps", "masks")


def write_seed004(path, imgs, maps, masks, ksp=None, attrs: Optional[dict] = None) -> Path:
    imgs, maps, masks = np.asarray(imgs), np.asarray(maps), np.asarray(masks)
    _check_seed004(imgs, maps, masks, None if ksp is None else np.asarray(ksp), str(path))
    with atomic_h5(path) as f:
        f.create_dataset("imgs", data=imgs.astype(np.complex64))
        f.create_dataset("maps", data=maps.astype(np.complex64))
        f.create_dataset("masks", data=masks.astype(np.float32))
        if ksp is not None:
            f.create_dataset("ksp", data=np.asarray(ksp).astype(np.complex64))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return Path(path)


def _check_seed004(imgs, maps, masks, ksp, where):
    if imgs.ndim != 3:
        raise ValueError(f"{where}: imgs must be [N, x, y], got shape {imgs.shape}")
    if maps.ndim != 4 or maps.shape[0] != imgs.shape[0] or maps.shape[2:] != imgs.shape[1:]:
        raise ValueError(f"{where}: maps must be [N, coils, x, y] matching imgs {imgs.shape}, got {maps.shape}")
    if masks.shape != imgs.shape:
        raise ValueError(f"{where}: masks must be [N, x, y] like imgs {imgs.shape}, got {masks.shape}")
    if ksp is not None and ksp.shape != maps.shape:
        raise ValueError(f"{where}: ksp must match maps {maps.shape}, got {ksp.shape}")


def read_seed004(path) -> Dict[str, np.ndarray]:
    with _open(path) as f:
        missing = [k for k in SEED004_KEYS if k not in f]
        if missing:
            raise ValueError(f"{path}: missing {missing} (keys: {sorted(f.keys())}); not a seed-004 layout file")
        out = {k: f[k][()] for k in SEED004_KEYS}
        out["ksp"] = f["ksp"][()] if "ksp" in f else None
        out["attrs"] = dict(f.attrs)
    _check_seed004(out["imgs"], out["maps"], out["masks"], out["ksp"], str(path))
    return out


def read_kspace_file(path):
    """A fastMRI- or seed-004-layout file -> (kspace [S, C, kx, ky], mask, maps or None, attrs).

    fastMRI files may carry a 2D ``mask_2d`` (Poisson-disc masks) beside the 1D ``mask``.
    """
    import h5py

    with h5py.File(path, "r") as f:
        keys = set(f.keys())
        mask2d = f["mask_2d"][()] if "mask_2d" in f else None
    if "kspace" in keys:
        d = read_fastmri(path)
        mask = mask2d if mask2d is not None else d["mask"]
        return d["kspace"], mask, d["maps"], d["attrs"]
    if "ksp" in keys:
        d = read_seed004(path)
        return d["ksp"] * d["masks"][:, None], d["masks"][0], d["maps"], d["attrs"]
    raise ValueError(f"{path}: neither a fastMRI-layout ('kspace') nor a seed-004 ('ksp', 'maps', 'masks') file")


# ----------------------------------------------------------------------------- cine
def write_cine(path, kspace: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None,
               reconstruction: Optional[np.ndarray] = None, reference: Optional[np.ndarray] = None,
               attrs: Optional[dict] = None) -> Path:
    """A cine HDF5 file: ``kspace`` complex [frames, (coils,) kx, ky], ``mask`` [frames, ky],
    ``reconstruction`` [frames, x, y] (float32), ``reference`` (fully sampled magnitude)."""
    if kspace is None and reconstruction is None:
        raise ValueError("a cine file needs kspace or a reconstruction")
    if kspace is not None:
        kspace = np.asarray(kspace)
        if not np.iscomplexobj(kspace) or kspace.ndim not in (3, 4):
            raise ValueError("cine kspace must be complex [frames, (coils,) kx, ky]")
        if mask is not None and np.asarray(mask).shape != (kspace.shape[0], kspace.shape[-1]):
            raise ValueError(f"cine mask must be [frames, ky] = {(kspace.shape[0], kspace.shape[-1])}")
    with atomic_h5(path) as f:
        if kspace is not None:
            f.create_dataset("kspace", data=kspace.astype(np.complex64), compression="gzip", compression_opts=1)
        if mask is not None:
            f.create_dataset("mask", data=np.asarray(mask, np.float32))
        for name, arr in (("reconstruction", reconstruction), ("reference", reference)):
            if arr is not None:
                f.create_dataset(name, data=np.asarray(arr, np.float32), compression="gzip", compression_opts=1)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return Path(path)


def read_cine(path) -> Dict[str, object]:
    """Read a cine HDF5 file: dict with ``kspace`` [frames, (coils,) kx, ky] or None, ``mask``
    [frames, ky] or None, ``reconstruction`` / ``reference`` or None, ``attrs``."""
    with _open(path) as f:
        out = {k: (f[k][()] if k in f else None) for k in ("kspace", "mask", "reconstruction", "reference")}
        out["attrs"] = dict(f.attrs)
    k = out["kspace"]
    if k is None and out["reconstruction"] is None:
        raise ValueError(f"{path}: neither 'kspace' nor 'reconstruction' (not a cine file)")
    if k is not None:
        if not np.iscomplexobj(k) or k.ndim not in (3, 4):
            raise ValueError(f"{path}: kspace must be complex [frames, (coils,) kx, ky], got {k.dtype} {k.shape}")
        m = out["mask"]
        if m is not None and m.shape != (k.shape[0], k.shape[-1]):
            raise ValueError(f"{path}: mask {m.shape} must be [frames, ky] = {(k.shape[0], k.shape[-1])}")
    return out
