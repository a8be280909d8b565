"""TE/TR re-parameterization of 2D images and 3D volumes with the shipped Param-Net models.

Each axial slice (``array[z]`` in SimpleITK order) is normalised like the training data
(its maximum maps to 255, then to [-1, 1]), resized to 256 x 256, passed through the
network in batches, resized back and scaled by the slice's maximum again. The output
therefore shows the target contrast with the brightest tissue at the input's brightest
intensity (the training images were display-normalised per image, so absolute
intensities across contrasts are not modelled).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..catalog import ModelCard, get_card, list_models, load_network
from ..data.io import Volume
from ..device import resolve_device
from ..models.paramnet import ReparamConfig, ReparamModel, encode_params
from ..physics.signal import validate_times
from . import Cancelled, check_image_array

DEFAULT_TE, DEFAULT_TR = 0.05, 4.5
TRAINED_TE = (0.02, 1.0)
TRAINED_TR = (1.2, 10.0)
NET_SIZE = 256



def resolve_model_id(model: str) -> str:
    """``d2p``/``p2p`` -> the catalog's model of that mode (an exact id passes through)."""
    if model in ("d2p", "p2p"):
        cands = [c for c in list_models("reparam") if c.architecture.get("mode") == model]
        if not cands:
            raise FileNotFoundError(f"no shipped re-parameterization model for mode {model!r}")
        return sorted(cands, key=lambda c: c.id)[0].id
    return model


def load_model(model: str = "d2p", device=None) -> Tuple[ReparamModel, ModelCard]:
    """Load (and cache per model and device) a catalog model; verifies the SHA256."""
    card = get_card(resolve_model_id(model))
    return load_network(card, lambda arch: ReparamModel(ReparamConfig(**arch)), device), card


def _warn_ranges(mode, input_te, input_tr, target_te, target_tr):
    def out(v, rng):
        return not (rng[0] * 0.999 <= v <= rng[1] * 1.001)

    if out(target_te, TRAINED_TE) or out(target_tr, TRAINED_TR):
        warnings.warn(f"target TE/TR ({target_te * 1e3:g} ms / {target_tr * 1e3:g} ms) lies outside the trained range "
                      f"TE {TRAINED_TE[0] * 1e3:g}-{TRAINED_TE[1] * 1e3:g} ms, TR {TRAINED_TR[0]:g}-{TRAINED_TR[1]:g} s")
    if mode == "d2p":
        if abs(input_te - DEFAULT_TE) > 0.1 * DEFAULT_TE or abs(input_tr - DEFAULT_TR) > 0.1 * DEFAULT_TR:
            warnings.warn("the Default-to-Param model expects an input acquired at TE 50 ms / TR 4.5 s; "
                          "use the p2p model for other inputs")
    elif out(input_te, TRAINED_TE) or out(input_tr, TRAINED_TR):
        warnings.warn("the input TE/TR lies outside the trained range")


def forward(net: ReparamModel, x: torch.Tensor, p: torch.Tensor, flip_average: bool = True) -> torch.Tensor:
    """The network on images in [-1, 1] (B, 1, H, W) with encoded parameters ``p``;
    ``flip_average``: the mean of the prediction and the mirrored prediction of the
    mirrored image (left-right, the last axis), two passes of the batch (on the CPU one
    pass over the doubled batch took 1.7 times as long as two)."""
    if not flip_average:
        return net(x, p)
    return 0.5 * (net(x, p) + net(x.flip(-1), p).flip(-1))


def reparameterize(volume: Union[np.ndarray, Volume], input_te: float, input_tr: float, target_te: float,
                   target_tr: float, model: Union[str, ReparamModel] = "d2p", device=None, batch_size: int = 8,
                   progress: bool = False, cancel: Optional[Callable[[], bool]] = None,
                   progress_callback: Optional[Callable[[float], None]] = None, flip_average: bool = True):
    """Synthesize the spin-echo image at (target_te, target_tr), times in seconds.

    ``volume``: a 2D image, a 3D volume (slices along axis 0) or a :class:`Volume` (a
    Volume comes back with the same geometry). ``model``: ``"d2p"``, ``"p2p"``, a catalog
    id, or a :class:`ReparamModel`. The input is never modified. ``cancel`` is polled
    between batches (return True to stop: raises :class:`Cancelled`). ``flip_average``:
    average the prediction of each slice with that of its mirror image (left-right, the
    last axis; the models were trained with random mirroring): twice the compute, +0.4 dB
    (D2P) and +0.5 dB (P2P) on the held-out test set (``scripts/bench_reparam.py``).
    """
    validate_times(input_te, input_tr)
    validate_times(target_te, target_tr)
    arr = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    check_image_array(arr)
    if isinstance(model, ReparamModel):
        net, mode = model.eval(), model.cfg.mode
        dev = resolve_device(device)
        net = net.to(dev)
    else:
        net, card = load_model(model, device)
        mode = card.architecture["mode"]
        dev = next(net.parameters()).device
    _warn_ranges(mode, input_te, input_tr, target_te, target_tr)

    slices = arr[None] if arr.ndim == 2 else arr
    h, w = slices.shape[1:]
    out = np.zeros(slices.shape, np.float32)
    n = len(slices)
    bar = tqdm(total=n, desc="re-parameterizing", unit="slice", disable=not progress)
    with torch.inference_mode():
        for s0 in range(0, n, batch_size):
            if cancel is not None and cancel():
                raise Cancelled("re-parameterization cancelled")
            chunk = np.clip(slices[s0:s0 + batch_size].astype(np.float32), 0, None)
            scale = chunk.reshape(len(chunk), -1).max(1)
            safe = np.where(scale > 0, scale, 1.0)
            # 8-bit quantisation as in training, then [-1, 1]
            u = np.round(chunk / safe[:, None, None] * 255.0) / 127.5 - 1.0
            x = torch.from_numpy(u).unsqueeze(1).to(dev)
            if (h, w) != (NET_SIZE, NET_SIZE):
                x = F.interpolate(x, size=(NET_SIZE, NET_SIZE), mode="bilinear", align_corners=False, antialias=True)
            b = len(chunk)
            p = encode_params(mode, torch.full((b,), float(target_te)), torch.full((b,), float(target_tr)),
                              torch.full((b,), float(input_te)), torch.full((b,), float(input_tr))).to(dev)
            y = forward(net, x, p, flip_average)
            if (h, w) != (NET_SIZE, NET_SIZE):
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            y = ((y[:, 0].float().cpu().numpy() + 1.0) / 2.0).clip(0, 1)
            out[s0:s0 + b] = y * np.where(scale > 0, scale, 0.0)[:, None, None]
            bar.update(b)
            if progress_callback is not None:
                progress_callback(min(1.0, (s0 + b) / n))
    bar.close()
    res = out[0] if arr.ndim == 2 else out
    if isinstance(volume, Volume):
        v = volume.with_array(res)
        v.acquisition = {"te": float(target_te), "tr": float(target_tr)}
        return v
    return res
