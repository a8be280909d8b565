"""T1w <-> T2w translation of 2D images and 3D volumes with the shipped CycleGAN generators.

Each slice (``array[z]`` in SimpleITK order, usually axial) is handled as in training:
negative values clipped, intensities divided by the slice's 99.5th percentile and mapped
to [-1, 1], zero-padded (centred) to a square and resized to the network size (256), then
translated; the output is resized back, cropped to the slice and scaled by the same
percentile, so it lies in the input's intensity range (the brightest tissue of the
translated contrast at the input's bright level). Slices are processed in batches;
empty slices stay empty. The input is never modified.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..catalog import ModelCard, get_card, load_network, shipped_models
from ..data.io import Volume
from ..device import resolve_device
from ..models.cyclegan import CycleGANConfig, Generators, from_model_range, intensity_scale, to_model_range
from . import Cancelled, check_image_array

DIRECTIONS = tuple(Generators.DIRECTIONS)


def load_model(model: Optional[str] = None, device=None) -> Tuple[Generators, ModelCard]:
    """Load (and cache per model and device) a catalog model; verifies the SHA256."""
    card = get_card(model or shipped_models("translate", "T1/T2 translation")[0].id)
    return load_network(card, lambda arch: Generators(CycleGANConfig(**arch)), device), card


def output_acquisition(card: Optional[ModelCard], direction: str) -> dict:
    """The spin-echo TE/TR (seconds) that a model's output imitates: the middle of the target
    contrast's TE and TR ranges in its training protocol; {} when the card does not say
    (or for a module without a card)."""
    ranges = (card.training.get("te_tr_ranges_s") or {}) if card is not None else {}
    target = ranges.get("t2" if direction == "t1_to_t2" else "t1")
    if not target:
        return {}
    (te0, te1), (tr0, tr1) = target
    return {"te": (te0 + te1) / 2, "tr": (tr0 + tr1) / 2}


def export_model(net: Generators, model_id: str, tc=None, metrics: Optional[dict] = None,
                 **training_extra) -> ModelCard:
    """Ship both generators as fp16 safetensors beside the catalog and add/replace the card.

    ``training_extra``: further training details for the card (e.g. ``continued_from``:
    the step and protocol of the checkpoint a run started from)."""
    from dataclasses import asdict

    from ..catalog import ship

    training = {"data": "unpaired T1w/T2w spin-echo slices simulated from partial-volume fractions "
                        "(alternating 4-slice blocks per domain), MRiLab and MRiLab+fat tables with jitter, "
                        "receive bias, Rician noise; paper-protocol test slices (+/-1) held out",
                "loss": f"{net.cfg.gan_mode} adversarial + cycle L1 x lambda + identity L1 x lambda x lam_id",
                "optimizer": "Adam (0.5, 0.999), constant then linear decay to 0 over the second half",
                "warm_start": "generators first fitted (L1) to the inversion-matched input against an unpaired "
                              "image of the other contrast"}
    if tc is not None:
        from ..training.cyclegan import PROTOCOLS

        training.update({k: v for k, v in asdict(tc).items()
                         if k in ("steps", "warm_steps", "batch", "lr", "lam", "lam_id", "pool", "anatomies", "protocol",
                                  "clean_targets", "seed", "lam_struct", "cycle_noise")})
        training["te_tr_ranges_s"] = PROTOCOLS[tc.protocol]
        if not tc.warm_steps:
            training.pop("warm_start")
        if tc.clean_targets:
            training["loss"] += ("; noisy inputs, noise-free images as the discriminators' reals and as the cycle "
                                 "targets")
        if tc.lam_struct:
            training["loss"] += " + MIND structure consistency of input and translation x lam_struct"
        if tc.cycle_noise:
            training["loss"] += "; noise of sigma cycle_noise added to each translation on the cycle's way back"
    training.update(training_extra)
    sd = net.generator_state_dict() if hasattr(net, "generator_state_dict") else net.state_dict()
    extra = {"metrics": metrics} if metrics else {}
    return ship(model_id, "translate", net.cfg.to_dict(), sd,
                citation="CycleGAN (Zhu et al. 2017), pix2pix U-Net/PatchGAN (Isola et al. 2017); "
                         "BrainWeb (Cocosco et al. 1997), MRiLab tissue tables (Liu et al. 2017)",
                training=training,
                description="U-Net generators for T1-weighted -> T2-weighted (t1_to_t2) and back (t2_to_t1).",
                **extra)


def _to_net(x: torch.Tensor, size: int) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Zero-pad (centred) to a square and resize to ``size``; returns the padding."""
    h, w = x.shape[-2:]
    n = max(h, w)
    pad = ((n - w) // 2, n - w - (n - w) // 2, (n - h) // 2, n - h - (n - h) // 2)
    if any(pad):
        x = F.pad(x, pad, value=-1.0)      # -1 is zero intensity in the model's range
    if n != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x, pad


def _from_net(y: torch.Tensor, h: int, w: int, pad) -> torch.Tensor:
    n = max(h, w)
    if y.shape[-1] != n:
        y = F.interpolate(y, size=(n, n), mode="bilinear", align_corners=False, antialias=True)
    return y[..., pad[2]:pad[2] + h, pad[0]:pad[0] + w]


def translate(volume: Union[np.ndarray, Volume], direction: str = "t1_to_t2",
              model: Union[str, Generators, None] = None, device=None, batch_size: int = 8,
              progress: bool = False, cancel: Optional[Callable[[], bool]] = None,
              progress_callback: Optional[Callable[[float], None]] = None):
    """Translate a T1-weighted image to T2-weighted (``t1_to_t2``) or back (``t2_to_t1``).

    ``volume``: a 2D image, a 3D volume (slices along axis 0) or a :class:`Volume` (a
    Volume comes back as float32 with the same geometry, its ``acquisition`` the TE/TR
    the model's output imitates, see :func:`output_acquisition`). ``model``: a catalog id, a
    :class:`Generators` module, or None for the shipped default. ``cancel`` is polled
    between batches (return True to stop: raises :class:`Cancelled`).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    arr = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    check_image_array(arr)
    if min(arr.shape[-2:]) < 2:
        raise ValueError(f"slices must be at least 2x2 pixels, got {arr.shape[-2:]}")
    card = None
    if isinstance(model, Generators):
        dev = resolve_device(device)
        nets = model.eval().to(dev)
    else:
        nets, card = load_model(model, device)
        dev = next(nets.parameters()).device
    gen, size = nets.generator(direction), nets.cfg.size

    slices = arr[None] if arr.ndim == 2 else arr
    n, h, w = slices.shape
    out = np.zeros((n, h, w), np.float32)
    bar = tqdm(total=n, desc=f"translating {direction}", unit="slice", disable=not progress)
    with torch.inference_mode():
        for s0 in range(0, n, batch_size):
            if cancel is not None and cancel():
                raise Cancelled("translation cancelled")
            chunk = np.clip(slices[s0:s0 + batch_size].astype(np.float32), 0, None)
            scales = np.array([intensity_scale(c) if c.max() > 0 else 0.0 for c in chunk], np.float32)
            u = np.stack([to_model_range(c, s if s > 0 else 1.0) for c, s in zip(chunk, scales)])
            x, pad = _to_net(torch.from_numpy(u)[:, None].to(dev), size)
            y = _from_net(gen(x), h, w, pad)[:, 0].float().cpu().numpy()
            for i, s in enumerate(scales):
                out[s0 + i] = from_model_range(y[i], s) if s > 0 else 0.0
            bar.update(len(chunk))
            if progress_callback is not None:
                progress_callback(min(1.0, (s0 + len(chunk)) / n))
    bar.close()
    res = out[0] if arr.ndim == 2 else out
    if isinstance(volume, Volume):
        v = volume.with_array(res)
        v.acquisition = output_acquisition(card, direction)    # never the input's TE/TR
        return v
    return res
