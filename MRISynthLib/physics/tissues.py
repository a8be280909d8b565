"""Tissue property tables for the BrainWeb labels, and their randomisation for training.

Labels (BrainWeb discrete model): 0 background, 1 CSF, 2 grey matter, 3 white matter,
4 fat, 5 muscle/skin, 6 skin, 7 skull, 8 glial matter, 9 connective tissue.

Two tables are provided:

``mrilab``
    MRiLab's brain table (``Phantom Parameter Table.xlsx``, sheet "Brain", and
    ``MakePhantom3.m``), which the seed re-parameterization paper simulated with.
    MRiLab leaves fat (4) and glial matter (8) out of its brain table, so those voxels
    have PD 0 there; ``mrilab_full`` fills them with MRiLab's fat values (water-fat sheet)
    and grey-matter values.
``brainweb_koma``
    The BrainWeb simulator values used by KomaMRI's ``brain_phantom2D`` (and present in
    ``koma/brain.h5``): CSF 2569/329 ms, GM 833/83 ms, WM 500/70 ms, fat 350/70 ms,
    muscle 900/47 ms, skin 569/329 ms (PD 0.7); skull has no signal. Connective tissue
    takes the muscle values and glial matter the grey-matter values (KomaMRI has no such
    class).

Randomisation (:func:`jitter_table`): each tissue's PD, T1, T2 and T2* are multiplied by
independent log-normal factors exp(sigma * N(0, 1)), with default sigma 0.10 for PD and
0.20 for T1, T2 and T2*, then clipped to physical ranges (PD <= 1.2, T2 <= T1,
T2* <= T2). The same factor set applies to every voxel of a tissue, which keeps the
image piecewise-smooth like a real scan while varying contrast between samples.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Mapping, Optional

import numpy as np

LABEL_NAMES = {
    0: "background", 1: "CSF", 2: "grey matter", 3: "white matter", 4: "fat",
    5: "muscle/skin", 6: "skin", 7: "skull", 8: "glial matter", 9: "connective tissue",
}
N_LABELS = 10


@dataclass(frozen=True)
class Tissue:
    """Properties of one tissue; times in seconds, PD relative to water (CSF ~ 1)."""

    pd: float
    t1: float
    t2: float
    t2star: float

    def __post_init__(self):
        for k in ("pd", "t1", "t2", "t2star"):
            v = getattr(self, k)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"tissue {k} must be finite and >= 0, got {v}")


@dataclass(frozen=True)
class TissueTable:
    name: str
    tissues: Mapping[int, Tissue]
    source: str = ""

    def lookup(self, n_labels: int = N_LABELS) -> Dict[str, np.ndarray]:
        """Arrays indexed by label: ``lut['t1'][label]``; labels not listed have PD 0."""
        lut = {k: np.zeros(n_labels, dtype=np.float64) for k in ("pd", "t1", "t2", "t2star")}
        for label, t in self.tissues.items():
            for k in lut:
                lut[k][label] = getattr(t, k)
        return lut

    def maps_from_labels(self, labels: np.ndarray) -> Dict[str, np.ndarray]:
        """Nearest-label maps (no partial volume) as float32 arrays of the labels' shape."""
        lut = self.lookup(max(N_LABELS, int(labels.max()) + 1))
        return {k: v[labels].astype(np.float32) for k, v in lut.items()}

    def __getitem__(self, label: int) -> Tissue:
        return self.tissues[label]


def _t(pd, t1, t2, t2s):
    return Tissue(pd=pd, t1=t1, t2=t2, t2star=t2s)


MRILAB = TissueTable(
    name="mrilab",
    source="MRiLab Resources/Phantom Parameter Table.xlsx, sheet Brain (as used by the seed paper)",
    tissues={
        1: _t(1.00, 4.5, 2.2, 1.1),
        2: _t(0.80, 0.95, 0.10, 0.05),
        3: _t(0.65, 0.60, 0.08, 0.04),
        5: _t(0.70, 1.1, 0.035, 0.0175),
        6: _t(0.60, 0.30, 0.03, 0.015),
        7: _t(0.05, 0.10, 0.01, 0.005),
        9: _t(0.75, 1.0, 0.042, 0.021),
    },
)

MRILAB_FULL = TissueTable(
    name="mrilab_full",
    source="MRiLab brain table plus its water-fat sheet for fat and grey-matter values for glial matter",
    tissues={**MRILAB.tissues, 4: _t(1.0, 0.33, 0.13, 0.065), 8: MRILAB.tissues[2]},
)

BRAINWEB_KOMA = TissueTable(
    name="brainweb_koma",
    source="BrainWeb simulator values as in KomaMRI brain_phantom2D (koma/brain.h5)",
    tissues={
        1: _t(1.00, 2.569, 0.329, 0.058),
        2: _t(0.86, 0.833, 0.083, 0.069),
        3: _t(0.77, 0.500, 0.070, 0.061),
        4: _t(1.00, 0.350, 0.070, 0.058),
        5: _t(1.00, 0.900, 0.047, 0.030),
        6: _t(0.70, 0.569, 0.329, 0.058),
        8: _t(0.86, 0.833, 0.083, 0.069),
        9: _t(1.00, 0.900, 0.047, 0.030),
    },
)

TABLES: Dict[str, TissueTable] = {t.name: t for t in (MRILAB, MRILAB_FULL, BRAINWEB_KOMA)}


def get_table(name_or_table) -> TissueTable:
    if isinstance(name_or_table, TissueTable):
        return name_or_table
    try:
        return TABLES[name_or_table]
    except KeyError:
        raise ValueError(f"unknown tissue table {name_or_table!r}; choose from {sorted(TABLES)}") from None


DEFAULT_JITTER = {"pd": 0.10, "t1": 0.20, "t2": 0.20, "t2star": 0.20}


def jitter_table(table, rng: np.random.Generator, sigma: Optional[Mapping[str, float]] = None,
                 ) -> TissueTable:
    """A randomised copy of ``table``: per-tissue log-normal factors (see module doc)."""
    table = get_table(table)
    sig = dict(DEFAULT_JITTER)
    if sigma:
        unknown = set(sigma) - set(sig)
        if unknown:
            raise ValueError(f"unknown jitter keys {sorted(unknown)}")
        sig.update(sigma)
    out = {}
    for label, t in table.tissues.items():
        f = {k: float(np.exp(sig[k] * rng.standard_normal())) for k in sig}
        pd = min(t.pd * f["pd"], 1.2)
        t1 = t.t1 * f["t1"]
        t2 = min(t.t2 * f["t2"], t1)
        t2s = min(t.t2star * f["t2star"], t2)
        out[label] = replace(t, pd=pd, t1=t1, t2=t2, t2star=t2s)
    return TissueTable(name=f"{table.name}+jitter", tissues=out, source=table.source)
