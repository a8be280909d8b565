"""Physics-informed synthesis of any contrast from ordinary scans (PD/T1/T2 estimation).

Two steps with a cache between them, so that a slider only re-renders:

1. :func:`estimate_maps` runs the network (:mod:`MRISynthLib.models.quantitative`) once
   per input (each slice normalised to maximum 1 per input image, resized to 256 x 256,
   batched), refines the partial-volume fractions so that the estimate re-renders the
   inputs (data consistency), and returns a :class:`MapEstimate`: compartment density volumes at the input's
   size, one T1/T2/T2* per compartment for the whole volume (the per-slice estimates
   averaged in log space, weighted by each compartment's mass in the slice), and the
   per-slice intensity scale folded into the densities. Estimates are cached per model,
   device and input (a hash of the voxels and the acquisitions).
2. :meth:`MapEstimate.render` evaluates the signal equation for the K compartments (K
   scalars) and forms one weighted sum of the cached volumes: milliseconds per volume.

Rendered images are in the first input's intensity units (the receive gain is whatever
the input had); :meth:`MapEstimate.maps` gives per-voxel PD (relative to water), T1, T2
and T2* in seconds.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..catalog import ModelCard, get_card, load_network, shipped_models
from ..data.io import Volume
from ..device import resolve_device
from ..models.quantitative import (REFINE_EPS, REFINE_ITERS, REFINE_LAM, QuantConfig, QuantNet, effective_maps,
                                   flip_averaged, refine_fractions, stack_inputs)
from ..physics.signal import SequenceParams, ti_null
from . import Cancelled, check_image_array

NET_SIZE = 256
_ESTIMATE_CACHE: "OrderedDict[str, MapEstimate]" = OrderedDict()
ESTIMATE_CACHE_SIZE = 2


def load_model(model: Optional[str] = None, device=None) -> Tuple[QuantNet, ModelCard]:
    """Load (and cache per model and device) a catalog model; verifies the SHA256."""
    card = get_card(model or shipped_models("synth", "physics-informed synthesis")[0].id)
    return load_network(card, lambda arch: QuantNet(QuantConfig(**arch)), device), card


NULL_COMPARTMENTS = {"csf": 0, "fat": 3}   # compartment k holds BrainWeb label k + 1


def _null_compartment(tissue: str) -> int:
    """The estimate's compartment of a nullable tissue (ValueError for any other name)."""
    if tissue not in NULL_COMPARTMENTS:
        raise ValueError(f"tissue must be one of {sorted(NULL_COMPARTMENTS)}, got {tissue!r}")
    return NULL_COMPARTMENTS[tissue]


def check_null(target: SequenceParams, tissue: Optional[str]) -> None:
    """ValueError unless ``tissue`` is None or a nullable tissue and ``target`` an inversion
    recovery (call it before the estimate's work)."""
    if tissue is None:
        return
    _null_compartment(tissue)
    if target.sequence != "ir":
        raise ValueError("nulling a tissue needs an inversion-recovery target (FLAIR, STIR, --sequence ir)")


def nulled(target: SequenceParams, est: "MapEstimate", tissue: Optional[str]) -> SequenceParams:
    """``target`` (an inversion recovery) with its TI replaced by the one that nulls ``tissue``
    as ``est`` estimates it (:meth:`MapEstimate.null_ti`); ``tissue`` None: ``target`` as is."""
    check_null(target, tissue)
    return target if tissue is None else replace(target, ti=est.null_ti(tissue, target.tr, target.te))


@dataclass
class MapEstimate:
    """Cached estimate for one input (2D image -> one slice)."""
    scaled: np.ndarray        # (K, Z, H, W) float32: compartment densities x slice intensity scale
    g: np.ndarray             # (Z,) intensity per unit PD for each slice (0 for empty slices)
    t1: np.ndarray            # (K,) seconds
    t2: np.ndarray
    t2s: np.ndarray
    is_2d: bool = False

    def compartment_signals(self, seq: SequenceParams) -> np.ndarray:
        return np.asarray(seq.signal(np.ones_like(self.t1), self.t1, self.t2, self.t2s, validate=False), np.float32)

    def render(self, seq: SequenceParams) -> np.ndarray:
        """Image of ``seq`` (any spin echo, inversion recovery or gradient echo)."""
        if not isinstance(seq, SequenceParams):
            raise TypeError("seq must be a SequenceParams (validated acquisition)")
        s = torch.from_numpy(self.compartment_signals(seq))
        k = self.scaled.shape[0]
        out = (s @ torch.from_numpy(self.scaled).view(k, -1)).view(self.scaled.shape[1:]).numpy()
        return out[0] if self.is_2d else out

    def null_ti(self, tissue: str, tr: float, te: float = 0.0) -> float:
        """The inversion time that nulls ``tissue`` (``"csf"`` or ``"fat"``: the compartments of
        BrainWeb labels 1 and 4) at this TR and TE, from the T1 this estimate gives it: what a
        technologist sets for FLAIR or STIR. A TI computed from a textbook T1 instead leaves the
        tissue grey wherever the estimate differs (CSF T1 is poorly determined by T1w/T2w
        inputs with short TR)."""
        ti = float(ti_null(float(self.t1[_null_compartment(tissue)]), tr, te))
        if not 0.0 < ti < tr - te:
            raise ValueError(f"no inversion time in (0, TR - TE) nulls the estimated {tissue} at TR {tr:g} s")
        return ti

    def maps(self) -> Dict[str, np.ndarray]:
        """Per-voxel PD (relative to water), T1, T2 and T2* (s) (see :func:`effective_maps`)."""
        inv = np.where(self.g > 0, 1.0 / np.maximum(self.g, 1e-30), 0.0).astype(np.float32)
        p = self.scaled * inv[None, :, None, None]
        m = effective_maps(p, self.t1, self.t2, self.t2s)
        return {k: (v[0] if self.is_2d else v) for k, v in m.items()}


def _key(arrays, seqs, card_key) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(card_key.encode())
    for a, s in zip(arrays, seqs):
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str, s)).encode())
        h.update(a.data)
    return h.hexdigest()


def _cache_get(key) -> Optional["MapEstimate"]:
    """The cached estimate of ``key`` (marked most recently used), or None."""
    if key is None or key not in _ESTIMATE_CACHE:
        return None
    _ESTIMATE_CACHE.move_to_end(key)
    return _ESTIMATE_CACHE[key]


def _cache_put(key, est) -> None:
    if key is not None:
        _ESTIMATE_CACHE[key] = est
        while len(_ESTIMATE_CACHE) > ESTIMATE_CACHE_SIZE:
            _ESTIMATE_CACHE.popitem(last=False)


def _as_seq(x) -> SequenceParams:
    if isinstance(x, SequenceParams):
        return x
    if isinstance(x, dict):
        return SequenceParams(**x)
    raise TypeError("each input acquisition must be a SequenceParams or a dict of its fields")


def estimate_maps(inputs: Union[np.ndarray, Volume, Sequence], acquisitions, model: Union[str, QuantNet, None] = None,
                  device=None, batch_size: int = 8, progress: bool = False, use_cache: bool = True,
                  refine: bool = True, refine_lam: float = REFINE_LAM, refine_iters: int = REFINE_ITERS,
                  refine_eps: float = REFINE_EPS, refine_top: Optional[int] = None,
                  cancel: Optional[Callable[[], bool]] = None,
                  progress_callback: Optional[Callable[[float], None]] = None,
                  flip_average: bool = True, refine_extra: Sequence = ()) -> MapEstimate:
    """Estimate compartment maps from one or more co-registered inputs.

    ``inputs``: an array/:class:`Volume` or a list of them (same shape; 2D or 3D with
    slices along axis 0); ``acquisitions``: a :class:`SequenceParams` (or a list, one per
    input). ``refine``: data-consistency refinement of the fractions against the inputs
    (:func:`MRISynthLib.models.quantitative.refine_fractions` with ``lam``, ``iters``,
    ``eps`` and ``top`` from ``refine_lam``, ``refine_iters``, ``refine_eps`` and
    ``refine_top``). ``flip_average``:
    average each slice's estimate with that of its mirror image
    (:func:`MRISynthLib.models.quantitative.flip_averaged`; twice the network's work).
    ``refine_extra``: ``(image, acquisition, weight)`` triples that only the refinement
    fits, each scaled freely and its squared residual weighted by ``weight`` (the network
    never sees them): predicted contrasts, e.g. the Param-Net's (:func:`assisted_maps`).
    Inputs are never modified.
    """
    ims = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    seqs = [_as_seq(s) for s in (acquisitions if isinstance(acquisitions, (list, tuple)) else [acquisitions])]
    arrs = [im.array if isinstance(im, Volume) else np.asarray(im) for im in ims]
    if len(arrs) != len(seqs):
        raise ValueError(f"{len(arrs)} input image(s) but {len(seqs)} acquisition(s)")
    for a in arrs:
        check_image_array(a)
    extra = [(np.asarray(im.array if isinstance(im, Volume) else im), _as_seq(sq), float(w))
             for im, sq, w in refine_extra]
    for im, _, w in extra:
        check_image_array(im)
        if im.shape != arrs[0].shape:
            raise ValueError(f"refine_extra images must have the input's shape {arrs[0].shape}; got {im.shape}")
        if not (w > 0 and np.isfinite(w)):
            raise ValueError("refine_extra weights must be positive")
    if extra and not refine:
        raise ValueError("refine_extra needs refine=True")
    if isinstance(model, QuantNet):
        net, card_key = model.eval(), f"object-{id(model)}"
        net = net.to(resolve_device(device))
    else:
        net, card = load_model(model, device)
        card_key = card.id + "@" + card.sha256
    dev = next(net.parameters()).device
    M = net.cfg.n_inputs
    if len(arrs) > M:
        raise ValueError(f"this model takes at most {M} input images")
    tag = f"{card_key}{dev}{refine}{refine_lam}/{refine_iters}/{refine_eps}/{refine_top}{flip_average}"
    tag += "".join(f"/extra{w!r}" for _, _, w in extra)
    key = _key(arrs + [e[0] for e in extra], seqs + [e[1] for e in extra], tag) if use_cache else None
    if (hit := _cache_get(key)) is not None:
        return hit

    is_2d = arrs[0].ndim == 2
    vols = [np.clip(a[None] if is_2d else a, 0, None) for a in arrs]
    extra_vols = [np.clip(im[None] if is_2d else im, 0, None) for im, _, _ in extra]
    Z, H, W = vols[0].shape
    K = net.cfg.compartments
    scaled = np.zeros((K, Z, H, W), np.float32)
    g_all = np.zeros(Z, np.float32)
    logs = np.zeros((3, K), np.float64)
    mass_tot = np.zeros(K, np.float64)
    bar = tqdm(total=Z, desc="estimating maps", unit="slice", disable=not progress)
    with torch.inference_mode():
        for z0 in range(0, Z, batch_size):
            if cancel is not None and cancel():
                raise Cancelled("map estimation cancelled")
            chunk = [v[z0:z0 + batch_size].astype(np.float32) for v in vols + extra_vols]
            b = len(chunk[0])
            mx = [c.reshape(b, -1).max(1) for c in chunk]
            normed = [c / np.where(m > 0, m, 1.0)[:, None, None] for c, m in zip(chunk, mx)]
            x, acq = stack_inputs(normed[:len(vols)], seqs, M)
            xt = torch.from_numpy(x).to(dev)
            if (H, W) != (NET_SIZE, NET_SIZE):
                xt = F.interpolate(xt, size=(NET_SIZE, NET_SIZE), mode="bilinear", align_corners=False, antialias=True)
            at = torch.from_numpy(acq).to(dev)
            q = flip_averaged(net, xt, at) if flip_average else net(xt, at)
            if refine:
                ims_t, ref_seqs = xt[:, :len(seqs)], list(seqs)
                if extra:
                    # each normalised to its maximum, then weighted: sqrt(w) on the image is w on
                    # its squared residual, since every further input's scale is fitted freely
                    ex = np.stack([n * np.sqrt(w) for n, (_, _, w) in zip(normed[len(vols):], extra)], 1)
                    ext = torch.from_numpy(ex).to(dev)
                    if (H, W) != (NET_SIZE, NET_SIZE):
                        ext = F.interpolate(ext, size=(NET_SIZE, NET_SIZE), mode="bilinear", align_corners=False,
                                            antialias=True)
                    ims_t, ref_seqs = torch.cat([ims_t, ext.to(ims_t.dtype)], 1), ref_seqs + [e[1] for e in extra]
                q = refine_fractions(q, ims_t, ref_seqs, refine_lam, refine_iters, refine_eps, refine_top,
                                     search_inputs=len(seqs))   # the scale search fits the real inputs only
            p = q.p
            if (H, W) != (NET_SIZE, NET_SIZE):
                p = F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False, antialias=True).clamp_min(0)
            p = p.float().cpu().numpy()
            g = (q.g.float().cpu().numpy() * mx[0]).astype(np.float32)
            g = np.where(mx[0] > 0, g, 0.0)
            g_all[z0:z0 + b] = g
            scaled[:, z0:z0 + b] = (p * g[:, None, None, None]).transpose(1, 0, 2, 3)
            mass = p.sum((-2, -1)) * (mx[0] > 0)[:, None]           # (b, K)
            for i, t in enumerate((q.t1, q.t2, q.t2s)):
                logs[i] += (np.log(t.float().cpu().numpy()) * mass).sum(0)
            mass_tot += mass.sum(0)
            bar.update(b)
            if progress_callback is not None:
                progress_callback(min(1.0, (z0 + b) / Z))
    bar.close()
    rel = np.exp(logs / np.maximum(mass_tot, 1e-12)).astype(np.float32)
    rel = np.where(mass_tot > 0, rel, 1.0).astype(np.float32)
    est = MapEstimate(scaled, g_all, rel[0], np.minimum(rel[1], rel[0]), np.minimum(rel[2], rel[1]), is_2d)
    _cache_put(key, est)
    return est


# Param-Net assistance (``assisted_maps``): the spin-echo contrasts the Param-Net predicts
# from the input, each fitted by the refinement with weight ASSIST_WEIGHT; refinement eps
# ASSIST_EPS and ASSIST_ITERS iterations (with 16 images the fractions take more
# iterations to settle than REFINE_ITERS, which was chosen for one or two inputs). Chosen on
# validation slices that no network was trained on (``scripts/tune_synth_refine.py --assist``).
ASSIST_TE = (0.02, 0.05, 0.12, 0.3, 0.7)
ASSIST_TR = (1.2, 3.0, 10.0)
ASSIST_WEIGHT = 0.003
ASSIST_EPS = 1e-3
ASSIST_ITERS = 10


def assist_contrasts(te=ASSIST_TE, tr=ASSIST_TR) -> list:
    """The (TE, TR) grid of predicted spin echoes, seconds."""
    return [(float(e), float(r)) for e in te for r in tr]


def assist_model_for(acquisition: SequenceParams) -> str:
    """``d2p`` for an input at the Default-to-Param acquisition (spin echo TE 50 ms, TR 4.5 s,
    within 10 %), else ``p2p``."""
    from .reparam import DEFAULT_TE, DEFAULT_TR

    default = abs(acquisition.te - DEFAULT_TE) <= 0.1 * DEFAULT_TE and abs(acquisition.tr - DEFAULT_TR) <= 0.1 * DEFAULT_TR
    return "d2p" if default else "p2p"


def assisted_maps(volume: Union[np.ndarray, Volume], acquisition, model: Union[str, QuantNet, None] = None,
                  assist_model=None, device=None, weight: float = ASSIST_WEIGHT, contrasts=None,
                  refine_eps: float = ASSIST_EPS, refine_iters: int = ASSIST_ITERS, progress: bool = False,
                  use_cache: bool = True, cancel: Optional[Callable[[], bool]] = None,
                  progress_callback: Optional[Callable[[float], None]] = None, flip_average: bool = True,
                  **estimate_kwargs) -> MapEstimate:
    """Map estimate of one spin-echo input, refined against the input *and* the spin echoes
    that the re-parameterization Param-Net predicts from it.

    One image fixes one equation per voxel, so mixtures of three tissues stay ambiguous;
    the Param-Net (trained end to end on such images) predicts the same slice at
    ``contrasts`` ((TE, TR) pairs; default :func:`assist_contrasts`, 15 spin echoes over
    the trained range), and :func:`estimate_maps` fits those too (``refine_extra``, each
    with ``weight`` and a free scale; the scale search uses the input only; ``refine_eps``
    and ``refine_iters`` as in :func:`estimate_maps`). The result is
    still one physical estimate: any SE/IR/GRE contrast, maps, cached re-renders.
    ``assist_model``: ``"d2p"``, ``"p2p"``, a catalog id or a model (default:
    :func:`assist_model_for` the acquisition). Costs one Param-Net pass per contrast
    (flip-averaged like the task function) on top of the estimate. Spin-echo inputs only
    (the Param-Nets are spin-echo models). ``estimate_kwargs`` go to :func:`estimate_maps`.
    """
    from .reparam import reparameterize

    seq = _as_seq(acquisition)
    if seq.sequence != "se":
        raise ValueError("Param-Net assistance needs a spin-echo input (the Param-Nets model spin echoes only)")
    if not (weight > 0 and np.isfinite(weight)):
        raise ValueError("the assistance weight must be positive")
    arr = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    check_image_array(arr)
    pairs = assist_contrasts() if contrasts is None else [(float(e), float(r)) for e, r in contrasts]
    if not pairs:
        raise ValueError("give at least one (TE, TR) contrast to predict")
    rmodel = assist_model or assist_model_for(seq)
    key = None
    if use_cache and isinstance(rmodel, str) and (model is None or isinstance(model, str)):
        tag = f"assist/{model}/{rmodel}/{device}/{weight!r}/{pairs}/{refine_eps!r}/{refine_iters}/{flip_average}/{sorted(estimate_kwargs.items())}"
        key = _key([arr], [seq], tag)
        if (hit := _cache_get(key)) is not None:
            return hit
    # progress in units of one Param-Net pass; the estimate costs about 10 passes plus 3 per
    # refinement iteration (profiled on 2 CPU threads: 15 passes 6.4 s, the estimate with 10
    # iterations 17 s), so the bar does not stall at the end
    est_units = 10 + 3 * int(refine_iters)
    n = len(pairs) + est_units
    bar = tqdm(total=n, desc="Param-Net assistance", unit="pass", disable=not progress)

    def stage(i, width=1):
        return None if progress_callback is None else (lambda f: progress_callback((i + width * f) / n))

    extra = []
    for i, (te, tr) in enumerate(pairs):
        pred = reparameterize(arr, seq.te, seq.tr, te, tr, model=rmodel, device=device, cancel=cancel,
                              progress_callback=stage(i), flip_average=flip_average)
        extra.append((pred, SequenceParams("se", te, tr), weight))
        bar.update(1)
    est = estimate_maps(arr, seq, model=model, device=device, use_cache=False, refine_eps=refine_eps,
                        refine_iters=refine_iters, refine_extra=extra, cancel=cancel,
                        progress_callback=stage(len(pairs), est_units), flip_average=flip_average, **estimate_kwargs)
    bar.update(est_units)
    bar.close()
    _cache_put(key, est)
    return est


def clear_cache() -> None:
    _ESTIMATE_CACHE.clear()


def synthesize(inputs, acquisitions, target: SequenceParams, model=None, device=None, progress: bool = False,
               cancel=None, progress_callback=None, null: Optional[str] = None):
    """Render ``target`` from the input(s); a :class:`Volume` first input gives a Volume back
    (its ``acquisition`` the rendered one). ``null``: ``"csf"`` or ``"fat"``: replace an
    inversion-recovery target's TI by the one that nulls that tissue as estimated
    (:func:`nulled`)."""
    if not isinstance(target, SequenceParams):
        target = _as_seq(target)
    check_null(target, null)   # before the estimate's work
    est = estimate_maps(inputs, acquisitions, model=model, device=device, progress=progress, cancel=cancel,
                        progress_callback=progress_callback)
    target = nulled(target, est, null)
    out = est.render(target)
    first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    if isinstance(first, Volume):
        v = first.with_array(out)
        v.acquisition = {k: getattr(target, k) for k in ("te", "tr", "ti", "flip") if getattr(target, k) is not None}
        return v
    return out


def maps_volumes(est: MapEstimate, like: Volume) -> Dict[str, Volume]:
    """The effective PD/T1/T2/T2* maps as Volumes with ``like``'s geometry."""
    return {k: like.with_array(v) for k, v in est.maps().items()}


def export_model(net: QuantNet, model_id: str, tc=None, metrics: Optional[dict] = None) -> ModelCard:
    """Ship ``net`` as fp16 safetensors beside the catalog and add/replace its card."""
    from dataclasses import asdict

    from ..catalog import ship

    training = {"data": "on-the-fly simulation: BrainWeb + MNI152 (2 mm grid, 256x256 slices), MRiLab and "
                        "MRiLab+fat tables with log-normal jitter, receive bias, Rician noise; paper-protocol "
                        "test slices (+/-1) held out",
                "loss": "rendered-image L1 (SE/IR/GRE targets) + compartment-density L1 + log-relaxation "
                        "and scale MSE", "optimizer": "Adam, cosine schedule"}
    if tc is not None:
        training.update({k: v for k, v in asdict(tc).items()
                         if k in ("steps", "batch", "lr", "crop", "size", "seed")})
    extra = {"metrics": metrics} if metrics else {}
    return ship(model_id, "synth", net.cfg.to_dict(), net.state_dict(),
                citation="MRISynth physics-informed synthesis; BrainWeb (Cocosco et al. 1997), MNI ICBM152 2009a "
                         "(Fonov et al. 2011), MRiLab tissue tables (Liu et al. 2017)",
                training=training,
                description="Estimates per-voxel compartment PD maps and per-compartment T1/T2/T2* from 1-2 "
                            "ordinary scans; renders spin echo, inversion recovery and gradient echo.", **extra)
