"""MR signal equations: spin echo, inversion recovery and spoiled gradient echo.

Every function works on numpy arrays and on torch tensors (differentiable with respect
to the tissue maps and to the sequence parameters). Times are in seconds, flip angles in
degrees. Tissue inputs broadcast against sequence parameters, so a batch of parameters
of shape (B, 1, 1) renders a batch of images from maps of shape (H, W).

Invalid sequence parameters raise :class:`ValueError` before any arithmetic:
non-finite or negative times, TE >= TR, TI outside (0, TR - TE), flip angle outside
(0, 180] degrees.

Equations (ideal RF pulses, no stimulated echoes, steady state):

* spin echo, simple form:   S = PD (1 - e^{-TR/T1}) e^{-TE/T2}
* spin echo, exact 90-180:  S = PD (1 - 2 e^{-(TR - TE/2)/T1} + e^{-TR/T1}) e^{-TE/T2}
  (the refocusing pulse at TE/2 inverts the longitudinal magnetisation that recovered
  during the first TE/2; the two forms agree when TE << T1)
* inversion recovery (180-TI-90-180), exact:
  S = PD |1 - 2 e^{-TI/T1} + 2 e^{-(TR - TE/2)/T1} - e^{-TR/T1}| e^{-TE/T2}
  simple form: S = PD |1 - 2 e^{-TI/T1} + e^{-TR/T1}| e^{-TE/T2}
* spoiled gradient echo (FLASH):
  S = PD sin(a) (1 - E1) / (1 - cos(a) E1) e^{-TE/T2*},  E1 = e^{-TR/T1}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

try:  # torch is a runtime dependency, but the physics also serves numpy-only callers
    import torch
except ImportError:  # pragma: no cover
    torch = None

# Relaxation times are clamped to this floor so that background voxels (T1 = T2 = 0,
# PD = 0) give a zero signal instead of 0 * inf = NaN, also in gradients.
_TIME_FLOOR = 1e-6


def _is_torch(*xs: Any) -> bool:
    return torch is not None and any(isinstance(x, torch.Tensor) for x in xs)


def _as_numpy_for_check(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def _check_time(name: str, value: Any, allow_zero: bool = False) -> np.ndarray:
    arr = _as_numpy_for_check(value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (got NaN or inf)")
    if allow_zero:
        if np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0 s (got min {arr.min():g})")
    elif np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0 s (got min {arr.min():g})")
    if np.any(arr > 100):
        raise ValueError(f"{name} = {arr.max():g} s is implausible: times are in seconds")
    return arr


def validate_times(te: Any, tr: Any, ti: Any = None) -> None:
    """Check TE, TR (and TI) in seconds; raise ValueError with the reason."""
    te_a = _check_time("TE", te, allow_zero=True)
    tr_a = _check_time("TR", tr)
    if np.any(te_a >= tr_a):
        raise ValueError(f"TE must be shorter than TR (TE={te_a.max():g} s, TR={tr_a.min():g} s)")
    if ti is not None:
        ti_a = _check_time("TI", ti)
        if np.any(ti_a + te_a >= tr_a):
            raise ValueError("TI + TE must be shorter than TR for an inversion-recovery sequence")


def validate_flip(flip_deg: Any) -> None:
    arr = _as_numpy_for_check(flip_deg)
    if not np.all(np.isfinite(arr)):
        raise ValueError("flip angle must be finite")
    if np.any(arr <= 0) or np.any(arr > 180):
        raise ValueError(f"flip angle must be in (0, 180] degrees (got {arr.min():g}..{arr.max():g})")


def _validate_tissue(name: str, value: Any) -> None:
    arr = _as_numpy_for_check(value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} map contains NaN or inf")
    if np.any(arr < 0):
        raise ValueError(f"{name} map contains negative values")


class _Ops:
    """The handful of array functions the equations need, for numpy or torch."""

    def __init__(self, use_torch: bool):
        self.torch = use_torch

    def asarray(self, x: Any, like: Any = None):
        if self.torch:
            if isinstance(x, torch.Tensor):
                return x
            dtype = like.dtype if isinstance(like, torch.Tensor) and like.is_floating_point() else torch.float32
            device = like.device if isinstance(like, torch.Tensor) else None
            return torch.as_tensor(np.asarray(x, dtype=float), dtype=dtype, device=device)
        return np.asarray(x, dtype=np.result_type(np.asarray(x).dtype, np.float32))

    def exp(self, x):
        return torch.exp(x) if self.torch else np.exp(x)

    def clamp_min(self, x, lo):
        return torch.clamp(x, min=lo) if self.torch else np.maximum(x, lo)

    def abs(self, x):
        return torch.abs(x) if self.torch else np.abs(x)

    def sin(self, x):
        return torch.sin(x) if self.torch else np.sin(x)

    def cos(self, x):
        return torch.cos(x) if self.torch else np.cos(x)


def _prepare(tissue: dict, params: dict, validate: bool):
    use_torch = _is_torch(*tissue.values(), *[p for p in params.values() if p is not None])
    ops = _Ops(use_torch)
    like = next((v for v in list(tissue.values()) + list(params.values()) if _is_torch(v)), None)
    if validate:
        for k, v in tissue.items():
            _validate_tissue(k, v)
    t = {k: ops.asarray(v, like) for k, v in tissue.items()}
    p = {k: (None if v is None else ops.asarray(v, like)) for k, v in params.items()}
    for k in ("t1", "t2", "t2star"):
        if k in t:
            t[k] = ops.clamp_min(t[k], _TIME_FLOOR)
    return ops, t, p


def spin_echo(pd, t1, t2, te, tr, exact: bool = False, validate: bool = True):
    """Spin-echo magnitude signal. ``exact=True`` adds the refocusing-pulse term."""
    if validate:
        validate_times(te, tr)
    ops, t, p = _prepare({"pd": pd, "t1": t1, "t2": t2}, {"te": te, "tr": tr}, validate)
    e_tr = ops.exp(-p["tr"] / t["t1"])
    if exact:
        long = 1 - 2 * ops.exp(-(p["tr"] - p["te"] / 2) / t["t1"]) + e_tr
    else:
        long = 1 - e_tr
    return t["pd"] * long * ops.exp(-p["te"] / t["t2"])


def inversion_recovery(pd, t1, t2, te, tr, ti, exact: bool = True, magnitude: bool = True,
                       validate: bool = True):
    """Inversion-recovery spin echo (FLAIR: long TI nulling CSF; STIR: short TI nulling fat).

    ``magnitude=False`` returns the signed (phase-sensitive) signal.
    """
    if validate:
        validate_times(te, tr, ti)
    ops, t, p = _prepare({"pd": pd, "t1": t1, "t2": t2}, {"te": te, "tr": tr, "ti": ti}, validate)
    e_ti = ops.exp(-p["ti"] / t["t1"])
    e_tr = ops.exp(-p["tr"] / t["t1"])
    if exact:
        long = 1 - 2 * e_ti + 2 * ops.exp(-(p["tr"] - p["te"] / 2) / t["t1"]) - e_tr
    else:
        long = 1 - 2 * e_ti + e_tr
    s = t["pd"] * long * ops.exp(-p["te"] / t["t2"])
    return ops.abs(s) if magnitude else s


def spoiled_gre(pd, t1, t2star, te, tr, flip_deg, validate: bool = True):
    """Spoiled gradient echo (FLASH) steady-state signal; flip angle in degrees."""
    if validate:
        validate_times(te, tr)
        validate_flip(flip_deg)
    ops, t, p = _prepare({"pd": pd, "t1": t1, "t2star": t2star},
                         {"te": te, "tr": tr, "flip": flip_deg}, validate)
    a = p["flip"] * (math.pi / 180.0)
    e1 = ops.exp(-p["tr"] / t["t1"])
    return t["pd"] * ops.sin(a) * (1 - e1) / (1 - ops.cos(a) * e1) * ops.exp(-p["te"] / t["t2star"])


def ti_null(t1, tr=None, te: float = 0.0):
    """Inversion time that nulls a tissue of the given T1 (exact IR form when TR given).

    With TR -> infinity this is T1 ln 2. With finite TR (exact form):
    TI = -T1 ln((1 + 2 e^{-(TR-TE/2)/T1} - e^{-TR/T1}) / 2).
    """
    t1 = np.asarray(t1, dtype=float)
    if tr is None:
        return t1 * math.log(2.0)
    num = 1 + 2 * np.exp(-(tr - te / 2) / t1) - np.exp(-tr / t1)
    return -t1 * np.log(num / 2)


def ernst_angle(t1, tr) -> np.ndarray:
    """Flip angle (degrees) that maximises the spoiled-GRE signal: acos(e^{-TR/T1})."""
    return np.degrees(np.arccos(np.exp(-np.asarray(tr, float) / np.asarray(t1, float))))


SEQUENCES = ("se", "ir", "gre")


@dataclass(frozen=True)
class SequenceParams:
    """One acquisition: sequence type and its timing, validated on construction.

    Times in seconds, ``flip`` in degrees. ``se`` needs TE/TR, ``ir`` also TI,
    ``gre`` also a flip angle (T2* decay uses the tissue's T2*).
    """

    sequence: str
    te: float
    tr: float
    ti: Optional[float] = None
    flip: Optional[float] = None
    exact: bool = True
    name: str = field(default="", compare=False)

    def __post_init__(self):
        if self.sequence not in SEQUENCES:
            raise ValueError(f"sequence must be one of {SEQUENCES}, got {self.sequence!r}")
        validate_times(self.te, self.tr, self.ti if self.sequence == "ir" else None)
        if self.sequence == "ir" and self.ti is None:
            raise ValueError("an inversion-recovery sequence needs TI")
        if self.sequence == "gre":
            if self.flip is None:
                raise ValueError("a gradient-echo sequence needs a flip angle")
            validate_flip(self.flip)

    def signal(self, pd, t1, t2, t2star=None, validate: bool = True):
        """Render this acquisition from tissue values (arrays or tensors)."""
        if self.sequence == "se":
            return spin_echo(pd, t1, t2, self.te, self.tr, exact=self.exact, validate=validate)
        if self.sequence == "ir":
            return inversion_recovery(pd, t1, t2, self.te, self.tr, self.ti, exact=self.exact,
                                      validate=validate)
        return spoiled_gre(pd, t1, t2 if t2star is None else t2star, self.te, self.tr, self.flip,
                           validate=validate)

    def acquisition(self) -> dict:
        """{"te", "tr"} in seconds, with "ti" (inversion recovery) or "flip" (gradient echo)."""
        out = {"te": self.te, "tr": self.tr}
        if self.sequence == "ir" and self.ti is not None:
            out["ti"] = self.ti
        if self.sequence == "gre" and self.flip is not None:
            out["flip"] = self.flip
        return out

    def describe(self) -> str:
        s = f"{self.sequence.upper()} TE={self.te * 1e3:.4g} ms TR={self.tr * 1e3:.4g} ms"
        if self.ti is not None and self.sequence == "ir":
            s += f" TI={self.ti * 1e3:.4g} ms"
        if self.flip is not None and self.sequence == "gre":
            s += f" flip={self.flip:g} deg"
        return s


# Typical clinical protocols at 1.5-3 T, used by the demo and the translation data.
PRESETS = {
    "T1w": SequenceParams("se", te=0.015, tr=0.5, name="T1w"),
    "T2w": SequenceParams("se", te=0.1, tr=4.0, name="T2w"),
    "PDw": SequenceParams("se", te=0.015, tr=4.0, name="PDw"),
    "FLAIR": SequenceParams("ir", te=0.12, tr=9.0, ti=2.5, name="FLAIR"),
    "STIR": SequenceParams("ir", te=0.05, tr=4.0, ti=0.16, name="STIR"),
    "GRE": SequenceParams("gre", te=0.005, tr=0.025, flip=30.0, name="GRE"),
}
