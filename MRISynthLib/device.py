"""Device choice: "auto" (CUDA if available, else CPU; Apple MPS only when asked by name)."""
from __future__ import annotations

import torch


def resolve_device(device=None) -> torch.device:
    if device is None or str(device).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA device is available; use --device cpu")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("Apple MPS was requested but is not available")
    return dev


def available_devices():
    """[(label, torch device string)] for a device chooser: Auto, each CUDA device, CPU."""
    out = [("Auto", "auto")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append((f"CUDA {i}: {torch.cuda.get_device_name(i)}", f"cuda:{i}"))
    out.append(("CPU", "cpu"))
    return out
